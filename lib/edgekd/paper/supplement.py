"""The manuscript's supplement (``paper/index.qmd``, after the references), section by section, S1 to S11: the data
and the lesion split, the training recipes, the KD pilot, every model's test performance beside the field's
numbers, the paired comparisons in full, calibration and operating points, robustness, efficiency, training curves
and Grad-CAM, the excluded runs, and reproduction and provenance.

The main text cites these tables and figures; keeping them out of it keeps the paper to the venue's length, and
keeping them here, in the paper's order, lets a reader find the code behind each one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from edgekd.core import info
from edgekd.core import stats as ST
from edgekd.core.info import ARCH_LABELS
from edgekd.core.words import kd_setting_words, setting_words
from edgekd.paper import sources
from edgekd.paper.format import DASH, Columns, and_list, ci_col, col, count, finite, human, md_table, num, ratio, signed, span
from edgekd.paper.shared import PAIRED_NOTE, figure, official, paired_columns, power_rows, shown, verdict_cell
from edgekd.paper.sources import Source
from edgekd.pipeline import plan, reproduce


def missing(src: Source, what: str) -> str:
    return f"*No {what} in this profile's results: that stage was not run for `{src.profile}`.*\n"


# ----------------------------------------------------------------------------- S1: data and the lesion split


def data_counts(src: Source) -> str:
    df = src.csv("data_counts.csv")
    return md_table(df, {"Split": col("split", str), **{c: col(c) for c in df.columns if c not in ("split", "total")},
                         "Total": col("total")}, "Images per split and class (DermaMNIST order).", label="data-counts")


def leakage_paragraph(src: Source) -> str:
    leak = src.csv("leakage.csv").set_index("splits")
    return (f"DermaMNIST splits by image, not by lesion [@abhishek2025investigating]: in the data used here, "
            f"{num(int(leak.loc['any', 'lesions']))} of {num(int(leak.loc['any', 'total_lesions']))} lesions have images "
            f"in more than one split ({num(int(leak.loc['train-test', 'lesions']))} cross train and test; @tbl-leakage).\n")


def leakage(src: Source) -> str:
    df = src.csv("leakage.csv")
    return md_table(df, {"Splits": col("splits", str), "Lesions shared": col("lesions"), "Their images": col("images")},
                    "Lesions (and their images) with images in more than one split.", label="leakage")


def split_table(src: Source, earlier: bool = False) -> str:
    """The official against the lesion-grouped split (``earlier``: the table is an earlier reference's, not this
    study's runs, and its caption says so)."""
    df = src.csv("split_comparison.csv")
    return md_table(df, {"Model": col("label", str), "Seeds (official / lesion)":
                         lambda r: f"{int(r['official_seeds'])} / {int(r['lesion_seeds'])}",
                         "Macro-F1, official": ci_col("official_macro_f1"), "Macro-F1, lesion": ci_col("lesion_macro_f1"),
                         "Δ macro-F1": col("delta_macro_f1", signed), "Accuracy, official": ci_col("official_accuracy"),
                         "Accuracy, lesion": ci_col("lesion_accuracy"), "Δ accuracy": col("delta_accuracy", signed)},
                    ("From the previous reference (a ResNet-50 teacher trained from scratch), not this study's runs: "
                     if earlier else "") + "the same models trained and tested on the official split and on the "
                    "lesion-grouped split (Δ = lesion − official).", label="split")


# ----------------------------------------------------------------------------- S2: training recipes


#: How ``arms.csv``'s ``init`` reads in the paper.
INIT_NAMES: dict[str, str] = {"scratch": "random (from scratch)", "imagenet": "ImageNet (pinned wheel)"}


def _value(x, digits: int | None = None) -> str:
    """A CSV value in words: yes/no, an integer, a float (``digits`` decimals, else 4 significant), or "—"."""
    if isinstance(x, (bool, np.bool_)) or (isinstance(x, str) and x in ("True", "False")):
        return "yes" if str(x) == "True" else "no"
    if not finite(x):
        return DASH
    if isinstance(x, (float, np.floating)):
        if float(x).is_integer():
            return num(int(x))
        return num(x, digits) if digits is not None else f"{float(x):.4g}"
    return num(x) if isinstance(x, (int, np.integer)) else str(x)


def arms(src: Source) -> str:
    """What each arm of the study gets that the shared recipe (:func:`student_recipe`) does not say once for all:
    its starting weights, its loss and its seeds."""
    df = official(src.csv("arms.csv"))
    runs = src.csv("runs.csv")  # arms.csv has no column for logit standardisation; each run records it
    standardised = set(runs.loc[runs["standardize"].astype(str) == "True", "model"])

    def loss(r: pd.Series) -> str:
        if r["kd_mode"] in ("teacher", "none"):
            return "cross-entropy"
        return "cross-entropy and " + kd_setting_words({"mode": r["kd_mode"], "alpha": r["alpha"],
                                                         "temperature": r["temperature"],
                                                         "standardize": r["model"] in standardised})

    return md_table(df, {"Model": col("label", str), "Starts from": lambda r: INIT_NAMES.get(r["init"], r["init"]),
                         "Loss": loss, "Seeds": col("seeds", _value)},
                    "What each arm gets beyond the shared recipe (@tbl-student-recipe"
                    + ("; the teacher's in @tbl-teacher-recipe" if src.has("teacher_recipe.csv") else "")
                    + "). Students distil the teacher's logits cached on the same augmented views at the teacher's "
                    "own input size.",
                    text=("Starts from", "Loss"), label="arms")


RECIPE_NAMES: dict[str, str] = {
    "img_size": "Input size (px)", "split": "Split", "epochs": "Epochs", "batch_size": "Batch size",
    "lr": "Peak learning rate", "optimizer": "Optimiser", "weight_decay": "Weight decay", "loss": "Loss",
    "label_smoothing": "Label smoothing", "balance": "Class rebalancing", "augment": "Augmentation",
    "crop_scale": "Random-resized-crop minimum scale", "jitter": "Colour/brightness jitter", "ema": "Exponential moving average (EMA) of the weights: decay",
    "tta": "Test-time augmentation", "stem_stride": "Stem stride", "tta_views": "Views averaged at test time",
    "pretrained": "Initial weights", "warmup_epochs": "Linear warm-up (epochs)", "drop_rate": "Dropout before the classifier",
    "head_init_std": "Classifier initialisation (standard deviation)",
    "cpu_amp": "bfloat16 (bf16) autocast on the CPU",
    "threads": "CPU threads per run", "kd": "Distillation",
}


#: Recipe values in words (the teacher's and the students' recipe tables).
VALUE_NAMES: dict[str, str] = {
    "adamw": "AdamW", "sgd": "SGD (Nesterov momentum 0.9)", "ce": "cross-entropy", "focal": "focal loss",
    "dihedral": "random dihedral view (1\u00a0of\u00a08)", "flip": "random horizontal flip", "weights": "class-balanced loss weights",
    "sampler": "class-balanced sampling",
}


#: What an unset (null) recipe setting means.
UNSET_NAMES: dict[str, str] = {"head_init_std": "timm's default", "stem_stride": "the architecture's own",
                               "threads": "torch's default"}


#: The students' training settings (TrainConfig fields) in their recipe table, in order.
STUDENT_RECIPE_KEYS: tuple[str, ...] = (
    "pretrained", "epochs", "batch_size", "optimizer", "lr", "warmup_epochs", "weight_decay", "loss", "label_smoothing",
    "balance", "augment", "crop_scale", "jitter", "ema", "drop_rate", "head_init_std", "stem_stride", "cpu_amp",
    "threads", "tta",
)


def _recipe_value(key: str, x) -> str:
    """A recipe setting's value in words (:data:`VALUE_NAMES`; the initial weights as in :data:`INIT_NAMES`)."""
    if key == "pretrained":
        return INIT_NAMES.get(x or "scratch", str(x))
    if x is None and key in UNSET_NAMES:
        return UNSET_NAMES[key]
    return VALUE_NAMES.get(x, x) if isinstance(x, str) else _value(x)


def student_recipe(src: Source) -> str:
    """The students' full training recipe: the profile that produced the results (:func:`sources.profile`), expanded
    by the runner's own configuration code into each run's settings; one column per group of arms that train alike."""
    found = sources.profile(src)
    if found is None:
        return (f"*The profile that produced these results (sha256 `{str(src.provenance.get('profile_sha256'))[:12]}`) "
                "is neither this checkout's file nor in its git history, so the students' full recipe cannot be stated "
                "here; @tbl-arms gives each arm's epochs, learning rate and KD loss.*\n")
    prof = found[0]
    groups: dict[tuple, dict] = {}
    for spec in plan.expand(prof, info.outputs_dir()):
        par = spec.parameters
        if spec.stage != "student" or par["data"]["split"] != "official":
            continue
        key = (par["data"]["size"], *(repr(par["train"][k]) for k in STUDENT_RECIPE_KEYS))
        group = groups.setdefault(key, {"img_size": par["data"]["size"], **par["train"], "arms": {}})
        words = setting_words(spec.setting, par["kd"], par["train"]["epochs"])
        group["arms"].setdefault(ARCH_LABELS.get(par["arch"], par["arch"]), {})[words] = par["kd"]
    heads = []
    for group in groups.values():
        settings = dict.fromkeys(s for kds in group["arms"].values() for s in kds)
        heads.append(f"{', '.join(group['arms'])} ({', '.join(settings)})")
        group["kd"] = "; ".join(kd_setting_words(kd) for kd in
                                {s: kd for kds in group["arms"].values() for s, kd in kds.items()}.values())
    keys = ("img_size", *STUDENT_RECIPE_KEYS, "kd")
    rows = pd.DataFrame({"setting": [RECIPE_NAMES.get(k, k) for k in keys], "key": keys})
    columns: Columns = {"Setting": col("setting", str)}
    for head, group in zip(heads, groups.values(), strict=True):
        columns[head] = lambda r, group=group: _recipe_value(r["key"], group[r["key"]])
    table = md_table(rows, columns, "Every student run's settings, from the study's configuration as the pipeline "
                     "expands it into each run's; one column per group of arms that train alike.", text=tuple(heads),
                     label="student-recipe")
    return ("@tbl-student-recipe gives the students' full training recipe. The learning rate rises linearly to its peak "
            "over the warm-up epochs and then decays to zero along a half cosine, step by step; weight decay applies to "
            "the weights of convolutions and linear layers, not to biases or normalisation parameters.\n\n" + table)


def collapse_paragraph(src: Source, n_excluded: int) -> str:
    """Why every student's classifier starts small: the development study's diagnosis of the students that
    collapsed in an earlier profile (``collapse_diagnosis.csv``; validation numbers, seed 0, 64 px), and what the
    collapse guard flagged in this run (``n_excluded`` runs)."""
    df = src.csv("collapse_diagnosis.csv").set_index("variant")

    def f1(name: str, col: str = "val_macro_f1") -> str:
        return num(df.loc[name, col])

    now = ("" if not n_excluded else
           f" In this study it still flagged {count(n_excluded, 'run')}, listed under excluded runs.")
    return (
        "**Why the students' classifiers start small.** In an earlier configuration, before this initialisation was "
        "set, MobileNetV2 and EfficientNet-B0 trained from scratch collapsed to the *nv* prior, and a development study "
        "traced the cause. timm initialises their classifiers uniformly in ±1/√(classes): for 7 "
        "classes a weight standard deviation of 0.22, against 0.026 for ResNet-18's, so their first logits are large "
        "and the early loss several times that of a uniform guess; with few steps at a learning rate of 3·10⁻³ on data "
        "that is 67% *nv* they ended "
        "near the *nv* prior. Trained 6 epochs at 64 px (seed 0, validation macro-F1), "
        f"MobileNetV2 reached {f1('base-mobilenetv2_100')} with timm's initialisation and {f1('mb-head')} with a "
        f"classifier initialised at standard deviation 0.01; EfficientNet-B0 {f1('base-efficientnet_b0')} and {f1('eb-head')}. "
        f"A lower learning rate (10⁻³) did not help ({f1('mb-lr1')} and {f1('eb-lr1')}). Eval-mode BatchNorm was not "
        f"the cause: for MobileNetV2 with timm's initialisation, batch statistics give {f1('base-mobilenetv2_100', 'val_macro_f1_batch_bn')} "
        f"and running statistics re-estimated on the training images {f1('base-mobilenetv2_100', 'val_macro_f1_reestimated_bn')}, "
        f"against {f1('base-mobilenetv2_100', 'val_macro_f1_eval_bn')} in eval mode. Since then every student's "
        "classifier is initialised at standard deviation 0.01, the inputs are 64 px (at 28 px with a stride-2 stem "
        "the last stages ran on 1×1 maps), and the collapse guard stops any run that still collapses." + now
    )


def _ensemble_words(members: str) -> str:
    """An ensemble of the teacher study in words (``efficientnet_lite0-128-e8 + ...`` -> "ensemble of EfficientNet-Lite0
    at 128 px, 8 epochs, and ...")."""
    def words(member: str) -> str:
        arch, size, epochs = member.strip().split("-")
        return f"{ARCH_LABELS.get(arch, arch)} at {size} px, {epochs.removeprefix('e')} epochs"
    return "ensemble of " + " and ".join(words(m) for m in members.split("+"))


def teacher_choice(src: Source) -> str:
    """How the teacher was chosen: the validation study's variants and ensemble (validation split only)."""
    df = src.csv("variants.csv").sort_values("val_macro_f1", ascending=False)
    ens = src.csv("ensembles.csv") if src.has("ensembles.csv") else pd.DataFrame()
    rows = pd.concat([df.assign(name=[f"{ARCH_LABELS.get(a, a)}" + ("" if p == "imagenet" else ", random init")
                                      for a, p in zip(df["arch"], df["pretrained"].fillna(""), strict=True)]),
                      ens.assign(name=ens.get("members", pd.Series(dtype=str)).map(_ensemble_words),
                                 val_macro_f1=ens.get("val_macro_f1_tta"), val_acc=ens.get("val_acc_tta"))],
                     ignore_index=True)
    best = df.iloc[0]
    return (md_table(rows, {"Variant": col("name", str), "Input (px)": col("size", _value), "Epochs": col("epochs", _value),
                            "Learning rate": col("lr", _value),
                            "Device": lambda r: {"cpu": "CPU"}.get(r["device"], r["device"]) if isinstance(r["device"], str) else DASH,
                            "Val accuracy": col("val_acc"),
                            "Val macro-F1": col("val_macro_f1"), "Val macro-F1, 8 views": col("val_macro_f1_tta")},
                    "How the teacher was chosen: validation split only, seed 0, "
                    "the pipeline's own training loop; ensemble rows average 8 views of each member.",
                    text=("Variant", "Device"), label="teacher-choice")
            + f"\n\nThe chosen teacher is the variant with the highest validation macro-F1: "
              f"{ARCH_LABELS.get(best['arch'], best['arch'])} from ImageNet at {int(best['size'])} px, {int(best['epochs'])} "
              f"epochs, learning rate {best['lr']:g} (validation macro-F1 {num(best['val_macro_f1'])} in this selection "
              "run; the teacher retrained with this recipe for the study is in @tbl-performance); the test set was not "
              "loaded for this choice.\n")


def teacher_recipe(src: Source) -> str:
    df = src.csv("teacher_recipe.csv").set_index("label")
    rows = pd.DataFrame({"setting": [RECIPE_NAMES.get(k, k) for k in df.columns], "key": df.columns})
    columns: Columns = {"Setting": col("setting", str)}
    for label in df.index:
        columns[label] = lambda r, label=label: _recipe_value(r["key"], df.loc[label, r["key"]])
    return md_table(rows, columns, "The teacher's recipe (its run's configuration).", text=tuple(df.index),
                    label="teacher-recipe")


# ----------------------------------------------------------------------------- S3: choosing the KD settings on validation


def kd_pilot(src: Source, results: Source) -> str:
    """The KD pilot (validation only): each setting's validation scores beside the no-KD student, the settings the
    plan's rule chose for the main table, and how soft the teacher's targets are at the pilot's temperatures; a note
    when ``results`` (the paper's runs) were run before the pilot, so with the settings it replaced."""
    table = src.csv("pilot.csv")
    choice = src.json("choice.json")
    by_name = table.set_index("setting")
    table = table.assign(words=[kd_setting_words(r) for _, r in table.iterrows()],
                         flagged=table["collapsed"].map(lambda c: finite(c) and bool(c)))
    arch = ARCH_LABELS.get(table["arch"].iloc[0], table["arch"].iloc[0])
    out = md_table(table, {"KD setting": col("words", str), "Val accuracy": col("val_acc"),
                           "Val macro-F1": col("val_macro_f1"), "Δ vs no KD": col("delta_vs_nokd", signed),
                           "Best epoch": col("best_epoch"),
                           "Flagged": lambda r: "collapsed" if r["flagged"] else DASH},
                   f"The KD pilot: {arch}, seed {int(table['seed'].iloc[0])}, scored on the validation split "
                   "only (1,003 images; no test number was read). Δ is against the no-KD student of the same seed. "
                   "α weighs the cross-entropy against the teacher's term.", text=("KD setting", "Flagged"),
                   label="kd-pilot")
    hinton, current = by_name.loc[choice["hinton"]], src.provenance["current"]
    chosen = [kd_setting_words(by_name.loc[name]) for name in choice["main_table"] if name in by_name.index]
    out += (f"\n\nThe analysis plan's rule, fixed before the pilot ran, keeps Hinton's loss at T {current['temperature']:g} "
            f"and α {current['alpha']:g} unless another Hinton setting beats it on validation by at least "
            f"{num(src.provenance['margin'], 2)}, half the smallest effect of interest, since one seed's validation "
            f"macro-F1 moves by about that much. It chose Hinton at T {hinton['temperature']:g}, α "
            f"{hinton['alpha']:g}; the main table runs {'; '.join(chosen)}. One seed cannot separate settings closer "
            "than the seed spread, so the pilot chooses; it does not test.")
    kd = table[(table["mode"] != "none") & ~table["flagged"]]
    if len(kd):
        above, n = int((kd["delta_vs_nokd"] > 0).sum()), len(kd)
        share = "none" if above == 0 else "all" if above == n else str(above)
        out += (f" On validation, {share} of the {n} KD settings scored above the no-KD student (Δ from "
                f"{signed(kd['delta_vs_nokd'].min())} to {signed(kd['delta_vs_nokd'].max())}); whether KD helps is the "
                "main table's question, on test, over seeds.")
    out += "\n"
    ran, piloted = (pd.to_datetime(x.provenance.get("date"), utc=True) for x in (results, src))
    if finite(ran) and finite(piloted) and ran < piloted:
        out += (f"\n*The results below were run before the pilot ({ran:%Y-%m-%d}), with the KD settings of the profile "
                "at that time; the next reference runs the pilot's choice.*\n")
    if src.has("teacher_softness.csv"):
        soft = src.csv("teacher_softness.csv")
        out += "\n" + md_table(soft, {"T": col("temperature", lambda x: f"{x:g}"),
                                       "Mean top-class probability": col("mean_top_prob"),
                                       "Entropy, share of uniform": col("entropy_share")},
                              "How soft the teacher's targets are at each of the pilot's temperatures: over every "
                              "training view and image its students distil.",
                              label="teacher-softness")
    return out


# ----------------------------------------------------------------------------- S4: every model's test performance


#: How the performance table's intervals are made (the Methods say the same).
PERFORMANCE_NOTE: str = ("95% interval from the seeds-and-images bootstrap of Statistics, which covers training seeds "
                         "and test-set sampling; with 1 seed it is the test-image bootstrap alone, and the model is "
                         "marked *1 seed*.")


def performance(src: Source) -> str:
    """Test performance of every model: the mean over its seeds with the hierarchical interval."""
    df = official(src.csv("performance.csv"))
    hb = "macro_f1_hb_low" in df  # references made before the hierarchical interval show the t-interval

    def seeds(r: pd.Series) -> str:
        return "1 seed" if r["seeds"] == 1 else f"{int(r['seeds'])}"

    columns = {"Model": col("label", str), "Seeds": seeds}
    for name, metric in (("Accuracy", "accuracy"), ("Balanced accuracy", "balanced_accuracy"), ("Macro-F1", "macro_f1"),
                         ("AUC (one-vs-rest)", "auc")):
        columns[name] = ci_col(metric, kind="hb" if hb else "")
    note = PERFORMANCE_NOTE if hb else "95% t-interval across seeds (this reference predates the hierarchical interval)."
    return md_table(df, columns, "Test performance (official split): mean over seeds. " + note, text=("Seeds",), label="performance")


def bare_teacher(label: str) -> str:
    """A teacher's label without its role (``EfficientNet-Lite0 teacher`` -> ``EfficientNet-Lite0``), for text that
    already says "the teacher"."""
    return label.removesuffix(" teacher")


#: Published test accuracy on DermaMNIST at 64 px (MedMNIST+, Doerrich et al. 2024; ImageNet-pretrained).
MEDMNIST_PLUS_64PX_ACC: dict[str, float] = {"resnet18": 0.764, "best": 0.795}


MEDMNIST_PLUS_224PX_ACC: dict[str, float] = {"resnet18": 0.823, "best": 0.847}


#: The field's published DermaMNIST / HAM10000 numbers (test accuracy, macro-F1 where published), with what
#: they were measured on: source, model, input px, split, pretrained, accuracy, macro-F1, note.
FIELD: tuple[tuple, ...] = (
    ("MedMNIST v2 [@yang2023medmnist]", "ResNet-18", 28, "official", "no", 0.735, None, ""),
    ("MedMNIST v2 [@yang2023medmnist]", "AutoML (best)", 28, "official", "—", 0.768, None, ""),
    ("MedMNIST+ [@doerrich2024rethinking]", "ResNet-18", 64, "official", "ImageNet", MEDMNIST_PLUS_64PX_ACC["resnet18"], None, ""),
    ("MedMNIST+ [@doerrich2024rethinking]", "best model", 64, "official", "ImageNet", MEDMNIST_PLUS_64PX_ACC["best"], None, ""),
    ("MedMNIST+ [@doerrich2024rethinking]", "ResNet-18", 224, "official", "ImageNet", MEDMNIST_PLUS_224PX_ACC["resnet18"], None, ""),
    ("MedMNIST+ [@doerrich2024rethinking]", "best model", 224, "official", "ImageNet", MEDMNIST_PLUS_224PX_ACC["best"], None, ""),
    ("the source study", "ResNet-50 teacher", None, "image-level, own", "—", 0.893, 0.834, "not comparable †"),
    ("the source study", "ResNet-18 · KD", None, "image-level, own", "—", 0.852, 0.755, "not comparable †"),
    ("the source study", "EfficientNet-B0 · KD", None, "image-level, own", "—", 0.81, 0.656, "not comparable †"),
    ("the source study", "MobileNetV2 · KD", None, "image-level, own", "—", 0.784, 0.541, "not comparable †"),
)


def context(src: Source) -> str:
    """The field's published numbers beside this run's teacher and best student (:data:`FIELD`)."""
    n = src.numbers
    rows = [dict(zip(("source", "model", "px", "split", "pretrained", "acc", "f1", "note"), r, strict=True)) for r in FIELD]
    arms = src.csv("arms.csv").set_index("label") if src.has("arms.csv") else None

    def ours(label: str | None, acc, f1, what: str) -> None:
        if label is None:
            return
        init = px = None
        if arms is not None and label in arms.index:
            init, px = INIT_NAMES.get(arms.loc[label, "init"], arms.loc[label, "init"]), int(arms.loc[label, "img_size"])
        rows.append({"source": "this paper", "model": label, "px": px, "split": "official", "pretrained": init or DASH,
                     "acc": acc, "f1": f1, "note": what})

    ours(n["teacher"], n["teacher_accuracy"], n["teacher_macro_f1"], "1 seed")
    ours(n["best_student"], n["best_student_accuracy"], n["best_student_macro_f1"],
         f"chosen on validation; mean of {count(src.csv('performance.csv').set_index('label').loc[n['best_student'], 'seeds'], 'seed')}"
         if n["best_student"] else "")
    return md_table(pd.DataFrame(rows), {"Source": col("source", str), "Model": col("model", str),
                                         "Input (px)": col("px", _value), "Split": col("split", str),
                                         "Pretrained": col("pretrained", str), "Test accuracy": col("acc"),
                                         "Test macro-F1": col("f1"), "Note": col("note", str)},
                    "Published DermaMNIST / HAM10000 numbers beside ours (test set; — where not published). † The source "
                    "study drew its own random image split and test set (by image, so with the lesion leakage of "
                    "@tbl-leakage, on other images), reported one seed and applied a flipped temperature scaling; its "
                    "numbers are not comparable with any other row.",
                    text=("Model", "Split", "Pretrained", "Note"), label="field")


def per_class_table(src: Source) -> str:
    """Per-class test precision and recall of the models in the per-class figure (means over seeds): a row per model
    and metric, a column per class, so that the models' names sit in rows, not in narrow headers."""
    df = src.csv("per_class.csv")
    long = df.melt(id_vars=["label", "class"], value_vars=["precision", "recall"], var_name="metric")
    wide = long.pivot_table(index=["label", "metric"], columns="class", values="value", sort=False).reset_index()
    columns: Columns = {"Model": col("label", str), "Metric": col("metric", human)}
    columns |= {c: col(c) for c in info.CLASS_NAMES if c in wide}
    return md_table(wide, columns, "Per-class test precision and recall of the teacher, the best student (chosen on "
                    "validation) and its no-KD baseline: means over each model's seeds.", text=("Metric",),
                    label="per-class")


# ----------------------------------------------------------------------------- S5: the paired comparisons in full


def equal_compute(src: Source) -> str:
    df = official(src.csv("equal_compute.csv"))
    return md_table(df, paired_columns(against=True),
                    "KD minus the equal-compute control: no KD trained for the KD student's epochs plus its share of "
                    "the teacher's training, paired by seed. " + PAIRED_NOTE,
                    text=("KD method", "Against", "Verdict"), label="equal-compute")


def _measured(r: pd.Series) -> bool:
    """Whether a run measures the target: a counted target needs something to count, any other a value."""
    return bool(r["of"]) if finite(r.get("of")) else finite(r.get("value"))


def _by(src: Source, r: pd.Series) -> str:
    """Who reached a target, in words: a model's label, or for a counted KD row the KD method of its setting."""
    if not isinstance(r.get("model"), str):
        return DASH
    if finite(r.get("of")) and src.has("paired_kd.csv"):
        methods = official(src.csv("paired_kd.csv")).drop_duplicates("setting").set_index("setting")
        if r["model"] in methods.index and "method" in methods.columns:
            return str(methods.loc[r["model"], "method"])
    return str(r["model"])


def targets(src: Source) -> str:
    """The study's targets (:data:`edgekd.stages.aggregate.TARGETS`) against what this run reached; a target no run
    measures (a control the profile does not train) is "not measured", not missed."""
    df = src.csv("targets.csv")

    def counted(r: pd.Series) -> bool:  # the KD row counts students
        return finite(r.get("of"))

    def need(r: pd.Series) -> str:  # a no-break space keeps the sign with its number
        if isinstance(r.get("strict"), bool | np.bool_) and r["strict"]:  # the value must exceed the threshold
            return f">\u00a0{r['threshold']:g}"
        if not counted(r):
            return f"≥\u00a0{r['threshold']:.2f}"
        if not r["of"]:
            return "all of them" if r["threshold"] >= 1 else f"≥\u00a0{r['threshold']:.0%} of them"
        return f"≥\u00a0{round(r['threshold'] * r['of'])} of {int(r['of'])}"

    def got(r: pd.Series) -> str:
        if not counted(r):
            return ratio(r["value"]) if "speedup" in str(r["target"]) else num(r["value"])
        return f"{int(r['count'])} of {int(r['of'])}" if r["of"] else DASH

    def met(r: pd.Series) -> str:
        return ("yes" if r["met"] else "no") if _measured(r) else "not measured"

    return md_table(df, {"Target": col("what", str), "Required": need, "Reached": got,
                         "By": lambda r: _by(src, r), "Met": met},
                    "The study's targets (official test set; means over seeds, 1 seed where a model has one), set "
                    "on 2026-11-27, before these runs, against what they reached. "
                    "The best student is the one of any kind with the highest validation macro-F1; KD rows count "
                    "students whose hierarchical interval (seeds, then test images) lies above 0; — where no usable "
                    "run measures the target.", text=("By", "Met"), label="targets")


def targets_paragraph(src: Source) -> str:
    """What each missed target reached, and on what evidence, from this run's tables."""
    n, t = src.numbers, src.csv("targets.csv").set_index("target")
    if n["targets_met"] == n["targets"]:
        return f"This run meets all {n['targets']} of the study's targets (@tbl-targets)."
    row = t.loc
    why = []
    if not (row["teacher_accuracy", "met"] and row["teacher_macro_f1", "met"]):
        if not finite(row["teacher_macro_f1", "value"]):
            why.append("**The teacher**: no teacher run is usable in this study.")
        else:
            why.append(f"**The teacher**, {bare_teacher(row['teacher_macro_f1', 'model'])} (1 seed), reaches accuracy "
                       f"{num(row['teacher_accuracy', 'value'])} and macro-F1 {num(row['teacher_macro_f1', 'value'])}, "
                       f"against the required {row['teacher_accuracy', 'threshold']:.2f} and "
                       f"{row['teacher_macro_f1', 'threshold']:.2f}; MedMNIST+'s best model at 224 px, "
                       f"ImageNet-pretrained, reaches accuracy {MEDMNIST_PLUS_224PX_ACC['best']:.3f} [@doerrich2024rethinking].")
    if not (row["student_accuracy", "met"] and row["student_macro_f1", "met"]):
        if not finite(row["student_macro_f1", "value"]):
            why.append("**The best student**: no student run is usable in this study.")
        else:
            why.append(f"**The best student**, chosen on validation macro-F1, is {row['student_macro_f1', 'model']}: "
                       f"accuracy {num(row['student_accuracy', 'value'])} and macro-F1 "
                       f"{num(row['student_macro_f1', 'value'])} at {n['size']} px, against the required "
                       f"{row['student_accuracy', 'threshold']:.2f} and {row['student_macro_f1', 'threshold']:.2f}. "
                       f"The accuracy target is above MedMNIST+'s best ImageNet-pretrained model at 64 px "
                       f"({MEDMNIST_PLUS_64PX_ACC['best']:.3f}) [@doerrich2024rethinking]: meeting it would beat the best published "
                       "result at that input size.")
    if not row["every_student_macro_f1", "met"]:
        worst = t.loc["every_student_macro_f1"]
        why.append("**Every student**: no student run is usable in this study." if not finite(worst["value"]) else
                   f"**The weakest student**, {worst['model']}, reaches macro-F1 {num(worst['value'])} in "
                   f"{n['student_epochs']} epochs; "
                   + ("no run collapsed." if not n["n_excluded"] else f"{n['n_excluded']} collapsed runs are excluded."))
    kd = t.loc["kd_scratch_students_above_zero"]
    if not kd["met"]:
        why.append("**KD against no KD**: no KD run has a usable no-KD partner of the same seed." if not kd["of"] else
                   f"**KD against no KD** (equal epochs): with {_by(src, kd)}, {int(kd['count'])} of {int(kd['of'])} "
                   f"from-scratch students {'has' if kd['count'] == 1 else 'have'} a seeds-and-images interval above 0.")
    ec = t.loc["kd_above_equal_compute"]
    if not ec["met"] and _measured(ec):
        why.append(f"**KD against the equal-compute control**: KD is not above no KD trained for the same compute: "
                   f"0 of {int(ec['of'])} students have a seeds-and-images interval above 0.")
    d8, s8 = t.loc["int8_edge_delta_macro_f1"], t.loc["int8_edge_speedup_low"]
    if not (d8["met"] and s8["met"]):
        why.append("**INT8**: this study has no INT8 measurement of a pretrained KD student." if not finite(d8["value"])
                   else f"**INT8** ({d8['model']}): Δ macro-F1 {signed(d8['value'])} against ORT FP32 (required ≥ "
                        f"{d8['threshold']:g}); the lower end of its speed-up interval is "
                        + (f"{s8['value']:.2f}× (required above 1)." if finite(s8["value"]) else "not measured."))
    unmeasured = [str(r["what"]) for _, r in t.iterrows() if not _measured(r)]
    scope = (f"the {n['targets'] - len(unmeasured)} targets it can measure (@tbl-targets); of the study's "
             f"{n['targets']}, {count(len(unmeasured), 'target')} had no run here ({'; '.join(unmeasured)})"
             if unmeasured else f"the study's {n['targets']} targets (@tbl-targets)")
    return (f"This run meets {n['targets_met']} of {scope}. What each missed one reached:\n\n"
            + "\n".join(f"- {w}" for w in why) + "\n")


#: the teacher variant of ``scripts/kd_power.py`` trained with the profile's own recipe (its ``PROFILE_TEACHER``)
PROFILE_TEACHER = "t2"


#: the settings of ``scripts/kd_power.py`` in words
KD_POWER_SETTINGS: dict[str, str] = {"kd_t2": "KD, the recipe's teacher", "kd_strong": "KD, best teacher on validation",
                                     "nokd16": "no KD, 2× epochs", "kd16": "KD, the recipe's teacher, 2× epochs"}
#: the GPU study's ResNet-50 teacher variants in words
KD_POWER_TEACHERS: dict[str, str] = {"t2": "stride-2 stem (the recipe's)", "t1": "stride-1 stem",
                                     "t1long": "stride-1 stem, 2× epochs"}


def _kd_power_pairs(src: Source) -> pd.DataFrame:
    """Both pairings of the study in one frame, with the baseline each setting is compared with."""
    against = {"paired.csv": "no KD", "paired_vs_nokd16.csv": "no KD, 2× epochs",
               "kd16/paired_vs_nokd16.csv": "no KD, 2× epochs"}  # kd16/: a later run of KD for 2× epochs
    frames = [src.csv(name).assign(against=label) for name, label in against.items() if src.has(name)]
    return pd.concat(frames, ignore_index=True)


def _above(rows: pd.DataFrame) -> int:
    return int((rows["d_macro_f1_low"] > 0).sum())


def _below(rows: pd.DataFrame) -> int:
    return int((rows["d_macro_f1_high"] < 0).sum())


def _pairs_range(df: pd.DataFrame) -> str:
    low, high = int(df["pairs"].min()), int(df["pairs"].max())
    return f"{low}–{high}" if low != high else str(low)


def _kd_power_teachers(src: Source) -> tuple[pd.DataFrame, str]:
    """The study's teachers indexed by variant (``t2``, ``t1``, ...) and the variant it took as the strong one
    (the best on validation, recorded in its provenance)."""
    runs = src.csv("runs.csv")
    teachers = runs[runs["kind"].str.startswith("teacher")]
    return teachers.set_index(teachers["kind"].str.split(":").str[1]), src.provenance.get("strong_teacher") or PROFILE_TEACHER


def kd_power_paragraph(src: Source) -> str:
    """What the GPU study says, computed from its tables: KD against no KD at the same epochs, against a
    no-KD student trained twice as long, and how strong its teachers were (validation chooses, test reports)."""
    df = _kd_power_pairs(src)
    runs = src.csv("runs.csv")
    teachers, strong = _kd_power_teachers(src)
    students = runs[runs["kind"].str.startswith("student")]
    epochs = int(students.loc[students["kind"] == "student:nokd", "epochs"].iloc[0])
    short = df[df["against"] == "no KD"]
    n = short["student"].nunique()

    kd, longer = short[short["setting"] == "kd_t2"], short[short["setting"] == "nokd16"]
    vs_long = df[(df["against"] != "no KD") & (df["setting"] == "kd_t2")]
    bigger = int((longer.set_index("student")["d_macro_f1"] > kd.set_index("student")["d_macro_f1"]).sum())
    pairs = _pairs_range(df)
    r18_long = students[(students["arch"] == "resnet18") & (students["kind"] == "student:nokd16")]["test_macro_f1"].mean()
    reading = (": much of KD's gain here stands in for training the students longer"
               if _below(vs_long) and not _above(vs_long) else "")
    same = df[df["setting"] == "kd16"]
    if len(same):
        reading += (". At the same budget, KD for twice the epochs against no KD for twice the epochs: "
                    + "; ".join(f"{r.student} Δ macro-F1 {signed(r.d_macro_f1)} [{signed(r.d_macro_f1_low)}, "
                                f"{signed(r.d_macro_f1_high)}] over {int(r.pairs)} seeds" for r in same.itertuples()))
    gain = teachers.loc[strong, "val_macro_f1"] - teachers.loc[PROFILE_TEACHER, "val_macro_f1"]
    tv = "; ".join(f"{KD_POWER_TEACHERS.get(k, k)}, {num(v)}" for k, v in teachers["val_macro_f1"].items())
    machine = src.provenance.get("machine") or {}
    sides = [f"below it for {_below(vs_long)} of {n} students"] * bool(_below(vs_long)) + [
        f"above it for {_above(vs_long)} of {n}"] * bool(_above(vs_long))
    versus = " and ".join(sides) if sides else "neither above nor below it for any student"
    return (
        f"A larger study on one borrowed graphics processing unit (GPU), {machine.get('gpu', 'unnamed')}, running "
        f"the pipeline's own training and pairing code on the previous, from-scratch recipe at 64 px, trained "
        f"{len(students)} student runs, {pairs} seeds per setting, Hinton KD at T 4, α 0.5. With that recipe's "
        f"teacher, KD beats the no-KD student at the same {epochs} epochs for {_above(kd)} of {n} students (Δ macro-F1 "
        f"interval above 0). But training the no-KD student for twice the epochs gains more on average for {bigger} "
        f"of {n} students ({_above(longer)} of {n} intervals above 0), and against that longer baseline KD at "
        f"{epochs} epochs is {versus}{reading}. Its {count(len(teachers), 'ResNet-50 teacher')} reached validation "
        f"macro-F1 {tv}: the best on "
        f"validation ({KD_POWER_TEACHERS.get(strong, strong)}) is {signed(gain)} over the recipe's, and its test macro-F1 is "
        f"{num(teachers.loc[strong, 'test_macro_f1'])}, against {num(r18_long)} for a no-KD ResNet-18 trained "
        f"{2 * epochs} epochs. A stronger teacher was the lever that study left open, and this study's pretrained teacher "
        "pulls it. GPU training runs other kernels, in bf16 for every model, so these runs are not the CPU runs above; "
        "they answer the design question, not the headline numbers."
    )


def kd_power_table(src: Source) -> str:
    """The GPU study's paired comparisons: each setting against no KD, and KD against no KD trained twice as long;
    the analysis plan's verdict where the study kept the per-seed deltas (its comparisons against no KD)."""
    df = _kd_power_pairs(src)
    if src.has("paired_seeds.csv"):
        found = ST.kd_verdicts(src.csv("paired_seeds.csv")).rename(columns={"label": "verdict_label"})
        df = df.merge(found[["arch", "split", "setting", "verdict_label"]].assign(against="no KD"),
                      on=["arch", "split", "setting", "against"], how="left")
    return md_table(df, {"Student": col("student", str),
                         "Setting": lambda r: KD_POWER_SETTINGS.get(r["setting"], r["setting"]),
                         "Against": col("against", str), "Pairs": col("pairs"),
                         "Δ macro-F1": ci_col("d_macro_f1", sign=True),
                         "Δ balanced accuracy": ci_col("d_balanced_accuracy", sign=True), "Verdict": verdict_cell},
                    "The GPU study: paired test-set differences, seeds paired as in the main "
                    "comparison (mean Δ with its 95% t-interval across seeds; the verdict of the analysis plan, each "
                    "setting a Holm family over its students, where the study kept each seed's Δ; the comparisons "
                    "against the 2× baseline kept no per-seed Δ, so they have no verdict). Hinton KD at T 4, α 0.5; "
                    "the best teacher on validation is the ResNet-50 with the highest validation macro-F1 among three "
                    "recipes. Seeds that had not finished by the study's deadline are "
                    "missing from both members of their pair.", text=("Setting", "Against", "Verdict"), label="kd-power")


def seeds_needed(power: Source, src: Source) -> str:
    """How many seeds each KD comparison would need (``scripts/power.py`` on this reference's per-seed differences):
    the MDE today, and the seeds for 80% power at the smallest effect of interest and for a half-width within it."""
    df = power_rows(power, src)
    margin = num(power.provenance["margin"], 2)
    return md_table(df, {"Student": col("student", str), "KD method": col("method", str), "Seeds": col("n"),
                         "Standard deviation of Δ across seeds": col("sd", lambda x: num(x, 3)),
                         "MDE at these seeds": col("mde_now", lambda x: num(x, 3)),
                         f"Seeds for 80% power at Δ {margin}": col("seeds_power_0.02"),
                         "Same, Holm's strictest step": col("seeds_power_0.02_alpha_m"),
                         f"Seeds for a half-width ≤ {margin}": col("seeds_hw_0.02"), "Verdict": col("label", str)},
                    "Seeds and power for each KD comparison, from this reference's per-seed differences: the "
                    "standard deviation of the paired Δ macro-F1, the minimum detectable effect (MDE) of the paired t "
                    "at 80% power with today's seeds, and the seeds that 80% power at the smallest effect of interest "
                    "would need (at α 0.05, and at Holm's strictest step of the method's family), or that a 95% "
                    "t-interval no wider than ± that effect would need (the sample standard deviation taken as the true one).",
                    text=("KD method", "Verdict"), label="seeds-needed")


# ----------------------------------------------------------------------------- S6: calibration and operating points


def calibration(src: Source) -> str:
    df = src.csv("calibration.csv")
    wide = df.pivot_table(index=["model", "label"], columns="stage", values=["nll", "brier", "ece", "ece_adaptive",
                                                                             "temperature"], sort=False)
    wide.columns = [f"{m}_{s}" for m, s in wide.columns]
    wide = wide.reset_index()

    def arrow(m: str) -> Callable[[pd.Series], str]:
        return lambda r: f"{num(r[f'{m}_before'])} → {num(r[f'{m}_after'])}"

    return md_table(wide, {"Model": col("label", str), "Temperature": col("temperature_after", lambda x: num(x, 2)),
                           "NLL": arrow("nll"), "Brier": arrow("brier"), "ECE": arrow("ece"),
                           "Adaptive ECE": arrow("ece_adaptive")},
                    "Test calibration before → after temperature scaling fitted on validation (means over seeds; "
                    "ECE with 15 equal-width bins, adaptive ECE with 15 equal-mass bins).", label="calibration")


def operating(src: Source) -> str:
    df = src.csv("operating_points.csv").set_index(["model", "rule"])
    models = df.reset_index().drop_duplicates("model")[["model", "label"]]

    def get(rule: str, metric: str) -> Callable[[pd.Series], str]:
        return lambda r: num(df.loc[(r["model"], rule), metric]) if (r["model"], rule) in df.index else DASH

    return md_table(models, {"Model": col("label", str), "Macro-F1, argmax": get("argmax", "macro_f1"),
                             "Macro-F1, class offsets": get("class_offsets", "macro_f1"),
                             "Decisions changed by offsets": get("class_offsets", "changed_fraction"),
                             "Melanoma sensitivity, screening": get("mel_screening", "mel_sensitivity"),
                             "Melanoma specificity, screening": get("mel_screening", "mel_specificity")},
                    "Operating points fitted on validation and applied unchanged to test (means over seeds): "
                    "macro-F1-optimal class offsets, and a melanoma threshold reaching 0.90 sensitivity on validation.",
                    label="operating-points")


# ----------------------------------------------------------------------------- S7: robustness


def robustness_intro() -> str:
    return ("Corruptions act on the 8-bit image at the model's input size before normalisation, deterministically per "
            "image and seed: the source study's suite (additive Gaussian noise, JPEG, contrast) and MedMNIST-C's "
            "dermatoscopy suite [@disalvo2024medmnistc], scored by balanced error and, as MedMNIST-C scores it, by "
            "balanced error (BE) and relative balanced error (rBE), both normalised by the package's AlexNet "
            "baseline. Only the "
            "teacher and the students with and without Hinton's KD were run under corruption.\n")


SUITE_NAMES: dict[str, str] = {"source": "source suite", "medmnistc": "MedMNIST-C"}


def _rests_on(df: pd.DataFrame) -> str:
    """"1 seed, 300 images" (or the range) for the robustness tables' captions."""
    seeds, images = sorted({int(x) for x in df["seeds"]}), sorted({int(x) for x in df["images"]})

    def span(values: list[int], unit: str) -> str:
        text = f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}–{values[-1]:,}"
        return f"{text} {unit}{'' if values == [1] else 's'}"

    return f"{span(seeds, 'seed')} and {span(images, 'class-stratified test image')} per model"


def _over_seeds(df: pd.DataFrame) -> str:
    """" and over seeds" where some model has more than one, else nothing: a caption never averages over 1 seed."""
    return " and over seeds" if "seeds" not in df or (df["seeds"].fillna(1) > 1).any() else ""


def robustness_caption(src: Source) -> str:
    """The corruption curves' caption, with what they rest on."""
    df = src.csv("robustness.csv")
    rests = f" ({_rests_on(df)})" if "seeds" in df else ""
    return ("Balanced accuracy against severity, one row per architecture, averaged over the corruptions of each "
            f"suite{_over_seeds(df)}{rests}; macro-F1 is in @tbl-robustness. Accuracy alone would reward a model that drifts "
            "towards the majority class as images degrade." if "seeds" in df else "Accuracy against severity, averaged over the corruptions of "
            "each suite and over seeds.")


def robustness(src: Source) -> str:
    df = src.csv("robustness.csv")
    if "seeds" not in df:  # a reference made before balanced accuracy was the primary metric
        df = df.assign(seeds=np.nan, balanced_accuracy=1 - df["balanced_error"], clean_balanced_accuracy=np.nan)
    suites = list(dict.fromkeys(df["suite"]))
    wide = df.pivot_table(index=["model", "label"], columns="suite", values=["balanced_accuracy", "macro_f1"], sort=False)
    wide.columns = [f"{m}_{s}" for m, s in wide.columns]
    first = df.drop_duplicates("model").set_index("model")
    wide = wide.reset_index().join(first[["clean_balanced_accuracy", "seeds", "images"]], on="model")
    columns: Columns = {"Model": col("label", str), "Clean balanced accuracy, same images": col("clean_balanced_accuracy")}
    for suite in suites:
        name = SUITE_NAMES.get(suite, suite)
        columns |= {f"Balanced accuracy, {name}": col(f"balanced_accuracy_{suite}"),
                    f"Macro-F1, {name}": col(f"macro_f1_{suite}")}
    rests = f"; {_rests_on(df)}" if df["seeds"].notna().all() else ""
    return md_table(wide, columns, "Balanced accuracy and macro-F1 under corruption: mean over every corruption and "
                    f"severity of each suite (a corruption run at more severities weighs more){_over_seeds(df)}{rests}.",
                    label="robustness")


def _coverage(note: str) -> str:
    """The robustness stage's coverage note in words: "partial: levels [1, 3, 5] of [1, 2, 3, 4, 5], ..." ->
    "severities 1, 3 and 5 of 5 were run, ..."."""
    found = re.match(r"partial: levels \[([\d, ]+)\] of \[([\d, ]+)\](.*)", note)
    if not found:
        return note
    done, every = found.group(1).split(", "), found.group(2).split(", ")
    return f"severities {and_list(done)} of {len(every)} were run{found.group(3)}"


def be_rbe(src: Source) -> str:
    df = src.csv("be_rbe.csv")
    boot = "be_boot_low" in df
    one = bool((df["seeds"] == 1).all())

    def ci(name: str) -> Callable[[pd.Series], str]:  # with 1 seed there is no t-interval: the image bootstrap
        return ci_col(name, kind="boot") if one and boot else ci_col(name)

    columns: Columns = {"Model": col("label", str), "Seeds": col("seeds"),
                        "Balanced error": ci("balanced_error"), "BE (÷ AlexNet)": ci("be"), "rBE (÷ AlexNet)": ci("rbe")}
    if boot and not one:
        columns["rBE, bootstrap"] = lambda r: f"[{num(r['rbe_boot_low'])},\u00a0{num(r['rbe_boot_high'])}]"
    note = _coverage(df["note"].dropna().iloc[0]) if df["note"].notna().any() else ""
    how = ("1 seed per model, with the 95% percentile bootstrap interval over its test images" if one and boot else
           "mean over seeds with its t-interval" + (" and the mean per-run bootstrap interval over test images"
                                                   if boot else ""))
    return md_table(df, columns, "MedMNIST-C balanced error, BE and rBE (normalised by the package's AlexNet "
                    f"baseline): {how}. Read rBE from its interval: intervals that overlap do not order two models"
                    + (f". Coverage: {note}." if note else "."), label="be-rbe")


def _corruption_name(name: str) -> str:
    return human(name).replace("Jpeg", "JPEG")


def _teacher_or_kd(df: pd.DataFrame) -> pd.Series:
    """The rows of the teacher and the KD students (the per-corruption tables' split)."""
    return df["label"].str.contains("teacher") | ~df["label"].str.contains("no KD|nokd")


def per_corruption(src: Source) -> str:
    """Balanced accuracy per corruption (rows) and model (columns), averaged over the severities: one table for the
    teacher and the KD students, one for the no-KD students (so that each fits the page)."""
    df = src.csv("robustness_corruptions.csv")
    kd = _teacher_or_kd(df)
    shared = {c for c, suites in df.groupby("corruption")["suite"].nunique().items() if suites > 1}  # in two suites

    def name(r: pd.Series) -> str:  # the suite only where two suites share the corruption's name
        what = _corruption_name(r["corruption"])
        return f"{what} ({SUITE_NAMES.get(r['suite'], r['suite'])})" if r["corruption"] in shared else what

    suites = " and ".join(SUITE_NAMES.get(s, s) for s in dict.fromkeys(df["suite"]))
    tables = []
    for part, what, label in ((df[kd], "the teacher and the students with Hinton's KD", "corruptions-kd"),
                              (df[~kd], "the no-KD students", "corruptions-nokd")):
        if part.empty:
            continue
        wide = part.pivot_table(index=["suite", "corruption"], columns="label", values="balanced_accuracy",
                                sort=False).reset_index()
        columns: Columns = {"Corruption": name}
        columns |= {label: col(label, lambda x: num(x, 2)) for label in dict.fromkeys(part["label"])}
        tables.append(md_table(wide, columns, f"Balanced accuracy of {what} under each corruption of the {suites} "
                               f"(in that order), averaged over its severity levels ({_rests_on(part)}).",
                               text=("Corruption",), label=label))
    return "\n\n".join(tables)


def corruption_refs(src: Source) -> list[str]:
    """The per-corruption tables :func:`per_corruption` writes for these results."""
    if not src.has("robustness_corruptions.csv"):
        return []
    kd = _teacher_or_kd(src.csv("robustness_corruptions.csv"))
    return (["@tbl-corruptions-kd"] if kd.any() else []) + (["@tbl-corruptions-nokd"] if (~kd).any() else [])


# ----------------------------------------------------------------------------- S8: efficiency


def _run_words(run_id: str) -> str:
    """A run's folder name in words for a table of one run per architecture (``student-resnet18-kd-s0`` ->
    "ResNet-18 student, seed 0")."""
    role, arch, *_, seed = run_id.split("-")
    return f"{ARCH_LABELS.get(arch, arch)} {role}, seed {seed.removeprefix('s')}"


def int8_ops(src: Source) -> str:
    """What ORT's profiler says about INT8 against FP32: kernel time per call and the quantise/dequantise share."""
    ops = src.csv("bench_int8_ops.csv")
    rows = []
    for model, g in ops.groupby("model", sort=False):
        kernel = g.groupby("variant")["ms_per_call"].sum()
        int8 = g[g["variant"] == "ort_int8"]
        conv = g[g["op_type"].str.contains("Conv")].groupby("variant")["ms_per_call"].sum()
        rows.append({"model": _run_words(model), "fp32_ms": kernel.get("ort_fp32"), "int8_ms": kernel.get("ort_int8"),
                     "qdq_share": int8.loc[int8["qdq"].astype(str).str.lower() == "true", "share"].sum(),
                     "conv_fp32_ms": conv.get("ort_fp32"), "conv_int8_ms": conv.get("ort_int8")})
    table = pd.DataFrame(rows)
    calls, threads = int(ops["calls"].iloc[0]), int(ops["threads"].iloc[0])

    def ms(x: float) -> str:
        return num(x, 3)

    conv_speedup = table["conv_fp32_ms"] / table["conv_int8_ms"]
    qdq = table["qdq_share"]
    int8_ops = ops[(ops["variant"] == "ort_int8") & (ops["qdq"].astype(str).str.lower() != "true")
                   & ~ops["op_type"].str.contains("Conv")]
    other = int8_ops.loc[int8_ops["share"].idxmax()] if len(int8_ops) else None
    verdict = ("so quantise/dequantise overhead explains a large part of what INT8 does not gain" if qdq.max() >= 0.2
               else "so quantise/dequantise overhead is not the main cost")
    largest = (f" The largest other INT8 cost is {other['op_type']} in the {_run_words(other['model'])}: {other['share']:.0%} of its "
               "kernel time, element-wise work that the FP32 graph fuses or does not have." if other is not None else "")
    text = ("In ONNX Runtime's profile of an earlier reference's seed-0 models (the same architectures, so the same "
            f"exported graphs), the nodes that quantise activations to INT8 and back (QuantizeLinear and "
            f"DequantizeLinear) take {qdq.min():.0%}–{qdq.max():.0%} "
            f"of the INT8 models' kernel time, and the INT8 convolutions run {conv_speedup.min():.2f}–"
            f"{conv_speedup.max():.2f}× as fast as the FP32 ones, {verdict}.{largest} The profiler adds its own cost "
            "to every node, so a graph with more nodes looks slower than it is: read the shares within a graph, not "
            "the milliseconds; the latencies above are the measurement.\n\n")
    return text + md_table(table, {"Model": col("model", str), "FP32 kernels (ms)": col("fp32_ms", ms),
                            "INT8 kernels (ms)": col("int8_ms", ms), "Convolutions, FP32 (ms)": col("conv_fp32_ms", ms),
                            "Convolutions, INT8 (ms)": col("conv_int8_ms", ms),
                            "Quantise / dequantise share of INT8": col("qdq_share", lambda x: f"{x:.0%}")},
                    f"ONNX Runtime's own profiler on an earlier reference's seed-0 models: kernel time per batch-1 call "
                    f"({threads} threads; each node's median over {calls:,} profiled "
                    "calls, summed) of each model's FP32 and INT8 graphs, the convolutions' part of it, and the share "
                    "of the INT8 kernel time spent quantising and dequantising.", label="int8-ops")


def cost(src: Source) -> str:
    """Each model's parameters, MACs and file sizes, at the input size it was trained and measured at (the teacher's
    and the students' differ, and MACs scale with the input's area)."""
    df = src.csv("efficiency.csv")
    sizes = sorted({int(x) for x in df["img_size"]})
    at = f"at {sizes[0]} px" if len(sizes) == 1 else "at each model's own input size"
    return md_table(df, {"Model": col("label", str), "Input (px)": col("img_size", lambda x: f"{int(x)}"),
                         "Parameters (M)": col("params_M", lambda x: num(x, 2)),
                         "MACs (M)": col("MMACs", lambda x: num(x, 1)),
                         "ONNX FP32 (MB)": col("onnx_MB", lambda x: num(x, 1)),
                         "ONNX INT8 (MB)": col("onnx_int8_MB", lambda x: num(x, 1))},
                    f"Model cost {at} (MACs per image at batch 1; two floating-point operations per "
                    "multiply–accumulate).", label="cost")


#: The latency backends in words.
BACKEND_NAMES: dict[str, str] = {"ort_int8": "ORT INT8", "ort_fp32": "ORT FP32", "torchscript": "TorchScript FP32",
                                 "eager": "eager PyTorch FP32"}


def pareto(src: Source) -> str:
    df = src.csv("pareto.csv")
    front = df[df["pareto"].astype(str).str.lower() == "true"]
    if "val_macro_f1" not in df:  # a reference made before the front was chosen on validation
        return md_table(front, {"Model": col("label", str), "Backend": col("backend", lambda b: BACKEND_NAMES.get(b, b)),
                                "p50 (ms)": col("p50_ms", lambda x: num(x, 2)), "Macro-F1": col("macro_f1")},
                        "The Pareto-optimal models and backends on test macro-F1 of the seed-0 run.", text=("Backend",))
    sized = "size" in df  # each point at its model's input size, timed once per architecture and size
    return md_table(front, {"Model": col("label", str), "Backend": col("backend", lambda b: BACKEND_NAMES.get(b, b)),
                            **({"Input (px)": col("size")} if sized else {}), "Seeds": col("seeds"),
                            "p50 (ms)": col("p50_ms", lambda x: num(x, 2)), "p99 (ms)": col("p99_ms", lambda x: num(x, 2)),
                            "Validation macro-F1": col("val_macro_f1"), "Test macro-F1": col("macro_f1"),
                            "File (MB)": lambda r: num(r["file_bytes"] / 2**20, 1)},
                    "The Pareto-optimal models and backends, chosen on validation: no other point is both faster and "
                    "better on mean validation macro-F1. p50 and p99 are the median and the 99th-percentile latency "
                    "over repeated calls at batch 1, each backend timed on its own (not interleaved). Test macro-F1 is the mean over the model's seeds plus the "
                    "backend's change against eager PyTorch, measured on seed 0 (INT8 is not run on validation)."
                    + (" Each point runs at its model's input size; its latency is the median over the runs that "
                       "timed that architecture at that size (the same graph whatever the weights)." if sized else ""),
                    text=("Backend",), label="pareto")


def input_sizes(src: Source) -> str | None:
    """The students trained at more than one input size, in ONNX Runtime INT8: what the larger input buys on validation
    and test macro-F1 and what it costs in latency (None when no architecture has two sizes)."""
    df = src.csv("pareto.csv")
    if "size" not in df or "role" not in df:
        return None
    rows = df[(df["role"] == "student") & (df["backend"] == "ort_int8")]
    rows = rows[rows.groupby("arch")["size"].transform("nunique") > 1].sort_values(["arch", "size", "label"])
    if rows.empty:
        return None
    return md_table(rows, {"Student": col("label", str), "Input (px)": col("size"), "Seeds": col("seeds"),
                           "Validation macro-F1": col("val_macro_f1"), "Test macro-F1": col("macro_f1"),
                           "ORT INT8 p50 (ms)": col("p50_ms", lambda x: num(x, 2))},
                    "Students trained at more than one input size, each a point of the front, in ONNX Runtime INT8: "
                    "what a larger input buys and what it costs. Test macro-F1 is the seed mean plus INT8's change "
                    "(measured on seed 0); latency at batch 1, that architecture's at that size.",
                    label="input-sizes")


def teacher_recipe_student(src: Source) -> str | None:
    """A KD student with its teacher's architecture, weights, input size, epochs and learning rate: against the
    teacher it is KD against no KD with everything else equal (self-distillation). None when there is none."""
    if not (src.has("arms.csv") and src.has("performance.csv")):
        return None
    arms, perf = src.csv("arms.csv"), src.csv("performance.csv").set_index("model")
    recipe = ["arch", "init", "img_size", "epochs", "lr"]
    arms["arch"] = arms["model"].map(perf["arch"])
    teachers = arms[(arms["role"] == "teacher") & (arms["split"] == "official")]
    if teachers.empty:
        return None
    t = teachers.iloc[0]
    same = arms[(arms["role"] == "student") & (arms["kd_mode"] != "none")
                & (arms[recipe] == t[recipe]).all(axis=1)]
    if same.empty or t["model"] not in perf.index:
        return None
    s, tp = same.iloc[0], perf.loc[t["model"]]
    sp = perf.loc[s["model"]]
    seeds = "1 seed" if int(s["seeds"]) == 1 else f"{int(s['seeds'])} seeds"
    return (f"{s['label']} has its teacher's recipe: the same network and ImageNet weights, {int(t['img_size'])} px, "
            f"{int(t['epochs'])} epochs at learning rate {t['lr']:g}, with KD added. Against the teacher it is therefore "
            f"self-distillation at equal epochs ({seeds}): validation macro-F1 {sp['val_macro_f1']:.3f} against "
            f"{tp['val_macro_f1']:.3f}, test macro-F1 {sp['macro_f1']:.3f} against {tp['macro_f1']:.3f} (intervals in "
            "@tbl-performance).\n")


def gpu_paragraph(src: Source) -> str:
    """What the GPU latencies say, computed from ``gpu_latency.csv`` (batch 1, FP32, against the ResNet-50 teacher)."""
    df = src.csv("gpu_latency.csv")
    parts = []
    for i, (size, g) in enumerate(df[(df["batch"] == 1)].groupby("size")):
        p50 = g.pivot_table(index="arch", columns="precision", values="p50_ms")
        reference = p50.loc["resnet50", "fp32"]
        rel = ", ".join(f"{ARCH_LABELS.get(a, a)} {p50.loc[a, 'fp32'] / reference:.2f}×" for a in p50.index if a != "resnet50")
        slower = int((p50["amp_fp16"] > p50["fp32"]).sum())
        fp16 = "16-bit floating point (FP16)" if i == 0 else "FP16"
        parts.append(f"at {size} px, batch 1, the students' median latency relative to ResNet-50's, the earlier "
                     f"teacher trained from scratch ({reference:.2f} ms), is {rel}; {fp16} autocast is slower than FP32 "
                     f"for {slower} of {len(p50)} models")
    return ("On a GPU every model timed answers in a few milliseconds, bound by kernel launches more than arithmetic: "
            + "; ".join(parts) + ". This was measured once on a borrowed GPU, not by the run above, and before the "
            "EfficientNet-Lite0 teacher and edge student were chosen, so neither is among the models timed.")


def gpu_latency(src: Source) -> str:
    """GPU latency of every architecture at the default (64 px) and paper (224 px) input sizes: p50 and p99
    of eager PyTorch in FP32 and under FP16 autocast, batch 1 and 32 (``gpu_latency.csv``)."""
    df = src.csv("gpu_latency.csv")
    wide = df.pivot_table(index=["profile", "arch", "size", "batch"], columns="precision",
                          values=["p50_ms", "p99_ms"], aggfunc="first", sort=False)
    wide.columns = [f"{stat}_{prec}" for stat, prec in wide.columns]
    wide = wide.reset_index()
    calls = int(df["timed_calls"].min())
    return md_table(wide, {"Model": lambda r: ARCH_LABELS.get(r["arch"], r["arch"]), "Input (px)": col("size"),
                           "Batch": col("batch"), "FP32 p50 (ms)": lambda r: num(r["p50_ms_fp32"], 2),
                           "FP32 p99 (ms)": lambda r: num(r["p99_ms_fp32"], 2),
                           "FP16 p50 (ms)": lambda r: num(r["p50_ms_amp_fp16"], 2),
                           "FP16 p99 (ms)": lambda r: num(r["p99_ms_amp_fp16"], 2)},
                    f"GPU latency on one {src.provenance.get('gpu', 'GPU')} (torch {src.provenance.get('torch', '?')}): "
                    f"eager PyTorch, inputs already on the GPU, logits copied back, {calls} timed calls after warming up "
                    "until steady (random weights, which do not change a convolutional network's latency). "
                    "64 px as in this study and 224 px, ImageNet's usual size; the stem stride is 2 in both.",
                    label="gpu-latency")


# ----------------------------------------------------------------------------- S9: training curves, classes and Grad-CAM


def _yes(flag) -> str:
    return "yes" if bool(flag) else "no"


def learning_curve(study: Source) -> str:
    """The learning-curve pilot: what the plan's rule says of the fixed budget, KD against no KD at both budgets, the
    table of every student and the figure of its per-epoch validation curves."""
    table, kd = study.csv("learning_curve.csv"), study.csv("kd_by_budget.csv")
    budget, longer = int(table["budget_epochs"].iloc[0]), int(table["long_epochs"].iloc[0])
    margin = num(study.provenance.get("margin", ST.SESOI / 2), 2)
    rising = table[~table["plateau_at_budget"].astype(bool)]
    still = (f"all were still learning at {budget} epochs" if len(rising) == len(table) else
             f"{len(rising)} of the {len(table)} were still learning at {budget} epochs" if len(rising) else
             f"none of the {len(table)} was still learning at {budget} epochs")
    gains = f" (validation macro-F1 {span(rising['gain'], signed, ' to ')} higher after {longer})" if len(rising) else ""
    flat = int(table["flat_by_long"].astype(bool).sum())
    kd_words = and_list([f"{ARCH_LABELS.get(r.arch, r.arch)} {signed(r.kd_minus_nokd_budget)} → "
                         f"{signed(r.kd_minus_nokd_long)}" for r in kd.itertuples()])
    text = (f"**Longer training, on validation.** Each from-scratch student was trained once more for {longer} epochs "
            f"instead of the main job's {budget}, with and without KD (seed 0; the main job's recipe, "
            f"schedule and teacher otherwise), and read with a rule the analysis plan fixed before any of these numbers "
            f"was read: the budget counts as a plateau if the longer run's validation macro-F1 (at its best epoch) "
            f"exceeds it by less than {margin}. Of these {len(table)} runs, {still}{gains}; {flat} of them changed by "
            f"less than {margin} over the last third of the longer run. KD minus no KD on validation went, from "
            f"{budget} to {longer} epochs: {kd_words} (one seed each, so descriptive only; @fig-learning-curve, "
            "@tbl-learning-curve).\n\n")
    table = table.assign(best=[f"{int(a)} / {int(b)}" for a, b in zip(table["best_epoch_budget"],
                                                                         table["best_epoch_long"], strict=True)])
    return text + md_table(table, {"Student": col("label", str), f"{budget} epochs": col("val_budget"),
                                   f"{longer} epochs": col("val_long"), "Gain": col("gain", signed),
                                   f"Best epoch ({budget} / {longer})": col("best", str),
                                   "Flat over the last third": col("flat_by_long", _yes)},
                           f"Validation macro-F1 of the from-scratch students at the main job's {budget} epochs and at "
                           f"{longer} (seed 0, best epoch of each run), and whether the longer run still rose over its "
                           f"last third (by {margin} or more).", text=("Flat over the last third",),
                           label="learning-curve") + "\n" + figure(
        study, "learning_curve.png", f"Validation macro-F1 per epoch of the from-scratch students trained for {longer} "
        f"epochs (lines) and for the main job's {budget} (thin lines with markers), with and without KD, seed 0.")


def teacher_agreement(src: Source) -> str:
    """How often each student predicts what the teacher predicts on test (means over seeds). The per-seed McNemar p
    the aggregate also keeps is left out: a mean of p-values is not a test."""
    df = src.csv("paired.csv")
    teacher = span(df["teacher_accuracy"], num, " to ")
    return md_table(df, {"Student": col("label", str), "Agreement with the teacher": col("agreement"),
                         "Student accuracy": col("student_accuracy")},
                    f"Top-1 agreement with the teacher on test, and the student's accuracy (means over seeds); the "
                    f"teacher's test accuracy is {teacher}.", label="teacher-agreement")


def gradcam_note(src: Source) -> str:
    """What the Grad-CAM maps can and cannot show, from each model's map side and input size."""
    layers = src.csv("gradcam_layers.csv")
    cells = ("; ".join(f"{r.label}: {int(r.size) // int(r.map_side)} px" for r in layers.itertuples())
             if "size" in layers else "")
    return ("Each map shows where, in the chosen layer, evidence for the true class raised its score. The maps are "
            "coarse: one cell of a 4×4 map covers a quarter of the image's side" + (f" ({cells})" if cells else "")
            + ", so they can separate lesion from surrounding skin, but not show which structures inside a lesion "
            "(network, dots, streaks) a model used. Each map comes from the deepest stage whose map is at least 4×4: "
            "a deeper stage, where a model has one, would be 2×2 or smaller at these input sizes and show only "
            "quadrants. For the same reason, agreement between the teacher's and a student's maps says little about "
            "whether they use the same features.")


# ----------------------------------------------------------------------------- S10: excluded runs


def excluded(src: Source) -> str:
    df = src.csv("excluded_runs.csv")
    return md_table(df, {"Run": col("label", str), "Seed": col("seed"),
                         "What the collapse guard saw": lambda r: str(r["reason"]).split(". Likely causes")[0]},
                    "Runs excluded from every table, mean, comparison and figure.", text=("What the collapse guard saw",),
                    label="excluded")


# ----------------------------------------------------------------------------- S11: reproduction and provenance


def _elapsed(prov: dict) -> str:
    """The runner's elapsed wall time in words, where the provenance records it (summed over resumed segments)."""
    seconds, runs = prov.get("elapsed_wall_time_s"), prov.get("invocations")
    if not finite(seconds):
        return ""
    hours, minutes = divmod(round(seconds / 60), 60)
    return (f", {hours} h {minutes:02d} min of elapsed time from the runner's start to its end"
            + (f", summed over {runs} invocations" if runs and runs > 1 else ""))


def source_note(src: Source) -> str:
    """The paper's first lines: which folder it reads, and the provenance of those results."""
    prov, machine = src.provenance, src.provenance.get("machine") or {}
    git = prov.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10] + (" with uncommitted changes" if git.get("dirty") else "")
    gpu = machine.get("gpu") or "no GPU"
    where = (f"this checkout's own run in `{shown(src.path)}`" if src.kind == "outputs" else
             f"the published reference in `{shown(src.path)}`")
    when = src.numbers.get("generated", "")
    threads = count(machine["torch_threads"], "CPU thread") if finite(machine.get("torch_threads")) else "? CPU threads"
    return (f"**Results** of profile `{src.profile}`: {where}, aggregated {when}. Code at commit `{commit}`; "
            f"machine {machine.get('cpu', 'unknown CPU')} ({machine.get('cores', '?')} cores, {gpu}), "
            f"torch {machine.get('torch', '?')} ({threads} by default); profile sha256 "
            f"`{str(prov.get('profile_sha256', ''))[:12]}`; {prov.get('total_wall_time_s', 0):,.0f} s of stage wall "
            "time summed over the workers" + _elapsed(prov) + "." + _machines(prov) + " The tables below have the "
            "details.")


def _machines(prov: dict) -> str:
    """Where the steps ran on more than one kind of machine, which and how many steps each (results are bitwise the
    same within one kind of CPU only); nothing where the markers that record it name one (older markers do not)."""
    machines = [m for m in prov.get("run_machines") or [] if m.get("cpu")]
    if len(machines) < 2:
        return ""
    kinds = "; ".join(f"{count(m['steps'], 'step')} on {m['cpu']}"
                      + (f" ({m['cpu_capability']})" if m.get("cpu_capability") else "") for m in machines)
    return f" Its steps ran on {len(machines)} kinds of machine: {kinds}."


def reproduction(src: Source) -> str:
    """The reproduction report as an appendix: this run against the published reference."""
    reference = info.results_root() / src.profile
    if src.kind == "published":
        return (f"This rendering reads the published reference itself. After `edgekd-run {src.profile}`, this "
                "appendix compares every headline number of the new run with it (and `edgekd-run` prints the same "
                "report).\n")
    if not (reference / "seed_metrics.csv").exists():
        return (f"There is no published reference for `{src.profile}` (`{shown(reference)}`): "
                f"`edgekd-publish {src.profile}` writes one from a complete run.\n")
    table = reproduce.compare(reference, src.path, src.provenance.get("machine"))
    text = f"Against `{shown(reference)}`: {reproduce.summary(table)}.\n\n"
    return text + md_table(table, {"Model": col("label", str), "Metric": col("metric", human),
                                   "Reference": col("reference", lambda x: num(x, 4)),
                                   "Reproduced": col("reproduced", lambda x: num(x, 4)),
                                   "Δ": col("delta", lambda x: signed(x, 4)),
                                   "Reference interval": lambda r: (f"[{num(r['ref_ci_low'])},\u00a0{num(r['ref_ci_high'])}]"
                                                                    if finite(r["ref_ci_low"]) else DASH),
                                   "Verdict": col("verdict", str)},
                           "Every headline number of this run against the published reference.", text=("Verdict",),
                           label="reproduction")


def _code(value) -> str:
    """A provenance value as code (a key, a platform string or a path: build metadata, not prose)."""
    return f"`{value}`" if value not in (None, DASH) else DASH


#: The provenance's machine facts in words (a library's version is in the versions table, not here).
MACHINE_NAMES: dict[str, str] = {"cpu": "CPU", "cpu_capability": "CPU instruction set", "cores": "CPU cores",
                                 "gpu": "GPU", "os": "Operating system", "python": "Python",
                                 "torch": "PyTorch build", "torch_threads": "PyTorch threads by default"}


def provenance_tables(src: Source) -> str:
    """The machine (in words; libraries once, in the versions table), the library versions and the stage times."""
    versions = src.provenance.get("versions") or {}
    machine = pd.DataFrame([(MACHINE_NAMES.get(k, k), DASH if v is None else str(v))
                            for k, v in (src.provenance.get("machine") or {}).items()
                            if k not in versions or str(v) != str(versions[k])], columns=["k", "v"])  # a build tag stays
    versions = pd.DataFrame([(k, v or DASH) for k, v in versions.items()], columns=["k", "v"])
    times = pd.DataFrame([{"stage": k, **v} for k, v in (src.provenance.get("stage_wall_time_s") or {}).items()])
    out = [md_table(machine, {"Machine": col("k", str), "Value": col("v", _code)}, "The machine that produced the results.",
                    text=("Value",), label="machine"),
           md_table(versions, {"Library": col("k", _code), "Version": col("v", str)}, "Library versions.", text=("Version",),
                    label="versions")]
    if len(times):
        out.append(md_table(times, {"Stage": col("stage", str), "Runs": col("runs"),
                                    "Wall time of its finished runs (s)": col("wall_time_s", lambda x: num(x, 0)),
                                    "Last runner invocation (s)": lambda r: num(r.get("last_invocation_s"), 0)},
                            "Wall time per stage (from the runs' markers, and the runner's timing table for the last invocation).",
                            label="stage-times"))
    return "\n".join(out)
