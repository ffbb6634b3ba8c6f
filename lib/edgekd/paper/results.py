"""The manuscript's Results (``paper/index.qmd``), in its order: whether distillation helps (the paired verdicts), the
capacity gap, the external test set, calibration, the edge model, and the pointer to what only the supplement shows.

The main text carries the answers and their intervals; the full tables are in :mod:`edgekd.paper.supplement`, which
the supplement pointer reads to name only the tables this rendering has.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from edgekd.core import info
from edgekd.core.info import INT8_DELTA_F1_TARGET, INT8_SPEEDUP_TARGET
from edgekd.core.words import TEST_SET_NAMES
from edgekd.paper import sources
from edgekd.paper.format import (
    DASH,
    Columns,
    bracket,
    ci_col,
    col,
    count,
    finite,
    interval,
    md_table,
    num,
    pvalue,
    ratio,
    signed,
    span,
)
from edgekd.paper.shared import (
    PAIRED_NOTE,
    counted,
    external_macro_f1,
    kd_calibration_facts,
    kd_calibration_rows,
    method,
    paired_columns,
    verdict_kind,
    verdicts,
)
from edgekd.paper.sources import Source
from edgekd.paper.supplement import corruption_refs, input_sizes

# ----------------------------------------------------------------------------- Does distillation help?


def paired_summary(src: Source) -> str:
    """The primary result in words: each comparison's verdict, and where the full table is."""
    df = verdicts(src)
    def ci(r: pd.Series) -> str:
        low, high = r["d_macro_f1_low"], r["d_macro_f1_high"]
        return f" {bracket(low, high)}" if finite(low) and finite(high) else ""

    open_ = df["verdict_label"].map(verdict_kind) == "inconclusive"
    lines = [f"{r['student']}, {method(r)}: {signed(r['d_macro_f1'])}{ci(r)} over {count(int(r['pairs']), 'seed')}, "
             f"{r['verdict_label'] if isinstance(r['verdict_label'], str) else DASH}" for _, r in df[~open_].iterrows()]
    if open_.any():  # the table gives each inconclusive one; the prose gives what they could have detected
        mde = df.loc[open_, "mde"]
        lines.append(f"the inconclusive {'one has an MDE' if open_.sum() == 1 else 'ones have MDEs'} of "
                     f"{span(mde, num, ' to ')}")
    return (f"By the pre-declared test of KD against no KD, {counted(df['verdict_label'])} "
            "(@fig-paired-kd, @tbl-paired-kd; with the seeds-and-images bootstrap and balanced accuracy in "
            "@tbl-paired-kd-full): " + "; ".join(lines) + ".\n")


def paired(src: Source, full: bool = False) -> str:
    """KD against no KD at equal epochs: the pre-declared test and verdict (``full``: with the seeds-and-images
    bootstrap, the seeds' signs and balanced accuracy, for the supplement)."""
    df = verdicts(src)
    caption = ("KD minus no KD at equal epochs, paired by seed: @tbl-paired-kd with the seeds-and-images bootstrap "
               "(Statistics), the seeds' signs and balanced accuracy." if full else
               "KD minus no KD at equal epochs, paired by seed (same initialisation and data order). "
               + PAIRED_NOTE.split(" Beside it")[0])
    return md_table(df, paired_columns(full=full), caption,
                    text=("KD method", "Verdict"), label="paired-kd-full" if full else "paired-kd")


# ----------------------------------------------------------------------------- Does a stronger teacher give a larger gain?


def capacity_gap(gap: Source) -> str:
    """The capacity-gap study: each from-scratch student's KD gain under the stronger and the weaker teacher, paired
    by seed, with the plan's verdict (``paper/results/studies/capacity_gap``)."""
    df = gap.csv("gap.csv")
    table = md_table(df, {"Student": col("student", str), "Seeds": col("seeds"),
                          "Gain, stronger teacher": col("gain_strong", signed),
                          "Gain, weaker teacher": col("gain_weak", signed),
                          "Difference [95% t]": lambda r: f"{signed(r['gap'])} {bracket(r['ci_low'], r['ci_high'])}",
                          "p (Holm)": col("p_holm", pvalue), "Verdict": col("verdict", str),
                          "Seeds with the smaller gain": lambda r: f"{int(r['seeds_smaller'])} of {int(r['seeds'])}"},
                     "KD's gain (Δ test macro-F1 against the same no-KD run) under the pretrained EfficientNet-Lite0 "
                     "teacher and under the previous ResNet-50 teacher trained from scratch, both with Hinton's loss at "
                     "T 4, α 0.5; the difference is stronger minus weaker, paired by seed (an exploratory family of "
                     "three, Holm-adjusted).", text=("Verdict",), label="capacity-gap")
    smaller = int(df["seeds_smaller"].sum())
    return (f"The pretrained teacher is much stronger than the previous one trained from scratch, yet in "
            f"{smaller} of {int(df['seeds'].sum())} seed pairs the student gained less from it (@tbl-capacity-gap). "
            "The comparison uses the runs made before the KD pilot, where both teachers distilled at T 4, so that only "
            "the teacher differs; it was planned after those runs, so it is exploratory. A much stronger teacher "
            "distilling worse is the capacity gap the literature reports [@cho2019efficacy; @mirzadeh2020improved]."
            "\n\n" + table)


# ----------------------------------------------------------------------------- The external test set


def external(src: Source) -> str:
    """Macro-F1 on the official test set and on each external set, per model (means over seeds with the t-interval
    across seeds), and the change; a sentence on the range of the change."""
    wide, sets = external_macro_f1(src)
    columns: Columns = {"Model": col("label", str),
                        "Official test": lambda r: interval(r["mean|in-distribution"], r["ci_low|in-distribution"],
                                                            r["ci_high|in-distribution"])}
    for name in sets:
        columns |= {TEST_SET_NAMES.get(name, name): lambda r, s=name: interval(r[f"mean|{s}"], r[f"ci_low|{s}"],
                                                                               r[f"ci_high|{s}"]),
                    f"Δ, {TEST_SET_NAMES.get(name, name)}": col(f"gap|{name}", signed)}
    gaps = wide[[f"gap|{s}" for s in sets]].stack()
    text = ("The external test set is a class-stratified half (759 images) of the 1,512 test images of the "
            "International Skin Imaging Collaboration (ISIC) 2018 challenge [@codella2019skin], from the same "
            "institutions as HAM10000 but none of its images, square-cropped and resized by another chain. On it, "
            f"macro-F1 changes by {signed(gaps.min())} to {signed(gaps.max())} against the official test set "
            "(@tbl-external, @fig-external-gap). It was scored once, after every choice was made.\n\n")
    return text + md_table(wide, columns, "Each model's macro-F1 on HAM10000's official split and on ISIC 2018 "
                           "images: mean over seeds with the 95% t-interval across seeds (none for a model with 1 seed).", label="external")


# ----------------------------------------------------------------------------- Calibration


def _interval_sides(facts: dict) -> str:
    """Where the pairs' Δ ECE intervals lie relative to 0, in words at any number of pairs."""
    worse, better, n = facts["worse"], facts["better"], facts["pairs"]
    if n == 1:
        return f"its interval lies {'above' if worse else 'below' if better else 'across'} 0"
    sides = [f"above 0 for {worse}"] * bool(worse) + [f"below 0 for {better}"] * bool(better)
    return f"the interval lies {' and '.join(sides)} of the {n} comparisons" if sides else "every interval includes 0"


def kd_calibration(src: Source) -> str | None:
    """KD's effect on calibration, before and after temperature scaling, and what the fitted temperatures say of it;
    None where the reference has no KD pair with calibration tables."""
    df = kd_calibration_rows(src)
    if df.empty:
        return None
    teacher = src.csv("calibration.csv").query("stage == 'after'")
    teacher = teacher[teacher["model"].str.startswith("teacher-")]["temperature"]
    facts, one = kd_calibration_facts(df), len(df) == 1
    students, twins = ("student", "its no-KD twin") if one else ("students", "their no-KD twins")
    whose = "student's" if one else "students'"
    text = (f"Paired by seed, KD changes test ECE by {span(df['d_ece_before'], signed, ' to ')} before temperature "
            f"scaling and by {span(df['d_ece_after'], signed, ' to ')} after it (@tbl-kd-calibration); "
            f"{_interval_sides(facts)}. The temperatures fitted on validation are "
            f"{span(df['t_kd'], lambda x: num(x, 2))} for the KD {students} and "
            f"{span(df['t_nokd'], lambda x: num(x, 2))} for {twins}"
            + (f" ({num(teacher.mean(), 2)} for the teacher)" if len(teacher) else ""))
    if facts["hotter"] or facts["cooler"]:
        text += (f". A higher fitted temperature means raw probabilities more confident than validation supports, so "
                 f"distillation made the {whose} raw probabilities {'more' if facts['hotter'] else 'less'} "
                 "confident than without it. The distillation term matches the student's softened outputs to the "
                 "teacher's, so a student can take on the teacher's confidence as well as its ranking of the classes.")
    else:
        text += ", neither consistently higher nor lower with KD."
    pairs = "the comparison" if one else "every comparison"
    text += (f" One temperature fitted on validation shrinks the difference in {pairs}." if facts["shrinks"] else
             f" Temperature scaling does not shrink the difference in {pairs}.")
    table = md_table(df, {"Student": col("student", str), "KD method": method, "Pairs": col("pairs"),
                          "Temperature, KD / no KD": lambda r: f"{num(r['t_kd'], 2)} / {num(r['t_nokd'], 2)}",
                          "ECE before, KD / no KD": lambda r: f"{num(r['ece_before_kd'])} / {num(r['ece_before_nokd'])}",
                          "Δ ECE before": ci_col("d_ece_before", sign=True),
                          "ECE after, KD / no KD": lambda r: f"{num(r['ece_after_kd'])} / {num(r['ece_after_nokd'])}",
                          "Δ ECE after": ci_col("d_ece_after", sign=True)},
                     "KD against no KD in calibration on test, before and after temperature scaling fitted on "
                     "validation: means over the paired seeds (so a no-KD student's values differ between rows with "
                     "different pairs); Δ is KD minus no KD paired by seed, with its 95% t-interval across those "
                     "seeds.", text=("KD method",), label="kd-calibration")
    return text + "\n\n" + table


# ----------------------------------------------------------------------------- The edge model: INT8, latency and the Pareto front


def edge_summary(src: Source) -> str:
    """The edge model in words: INT8's cost in macro-F1 and its speed-up with the interval, and the latency target."""
    n = src.numbers
    parts = []
    if n.get("edge_model") and n.get("edge_speedup_low") is not None:
        faster = "faster: the interval excludes 1" if n["edge_speedup_low"] > 1 else "not shown to be faster"
        parts.append(f"The edge model, {n['edge_model']}, in ORT INT8, changes test macro-F1 by "
                     f"{signed(n['edge_delta_macro_f1'])} against ORT FP32"
                     f" and runs {ratio(n['edge_speedup_median'])} [{ratio(n['edge_speedup_low'])},\u00a0"
                     f"{ratio(n['edge_speedup_high'])}] as fast at batch 1 ({faster}; the median over interleaved "
                     "passes with its distribution-free interval).")
    if src.has("int8.csv"):
        # References before the interleaved passes decided the target have no "speedup" column: their median is one-pass
        passes = " (each model's interleaved passes)" if "speedup" in src.csv("int8.csv") else ""
        parts.append(f"Across the {count(n['int8_models'], 'exported model')}, INT8 runs a median "
                     f"{ratio(n['int8_speedup_median'])} as fast as ORT FP32{passes}, and {n['int8_target_met']} "
                     f"{'meets' if n['int8_target_met'] == 1 else 'meet'} the study's earlier target of at least "
                     f"{INT8_SPEEDUP_TARGET:g}× with a loss below {-INT8_DELTA_F1_TARGET:g} macro-F1 (@tbl-int8); the "
                     "speed-up over eager PyTorch is mostly the runtime, not quantisation.")
        if n["int8_target_met"] < n["int8_models"] and n.get("int8_reason"):
            parts.append(f"Where INT8 gains less, the likely reason is that {n['int8_reason']}.")
    if src.has("pareto.png"):
        parts.append("@fig-pareto sets accuracy against latency; every model's cost in parameters, file size and "
                     "multiply–accumulate operations (MACs) is in @tbl-cost.")
    return " ".join(parts) + "\n" if parts else "*No efficiency measurement in this study.*\n"


def int8(src: Source) -> str:
    df = src.csv("int8.csv")

    def ms(name: str) -> Callable[[pd.Series], str]:
        return col(name, lambda x: num(x, 2))

    def passes(r: pd.Series) -> str:
        if not finite(r.get("speedup_median")):
            return DASH
        return (f"{ratio(r['speedup_median'])} [{ratio(r['speedup_low'])},\u00a0{ratio(r['speedup_high'])}]"
                if finite(r["speedup_low"]) else f"{ratio(r['speedup_median'])} (too few passes for an interval)")

    return md_table(df, {"Model": col("label", str), "Input (px)": col("img_size"), "Eager FP32 (ms)": ms("eager_ms"),
                         "ORT FP32 (ms)": ms("ort_fp32_ms"), "ORT INT8 (ms)": ms("ort_int8_ms"),
                         "INT8 speed-up over ORT FP32, one pass": col("speedup_vs_ort_fp32", ratio),
                         "INT8 speed-up over ORT FP32, interleaved passes [95%]": passes,
                         "INT8 speed-up over eager": col("speedup_vs_eager", ratio),
                         "Δ macro-F1 (INT8 − FP32)": col("delta_macro_f1", signed), f"≥ {INT8_SPEEDUP_TARGET:g}×": col("target_met")},
                    "CPU latency, the median (p50) over repeated calls at batch 1 and each model's input size. The "
                    "one-pass speed-up divides the two p50 columns, timed one after the other; the interleaved passes "
                    "alternate ORT FP32 and INT8 (the median per pass; the median over passes with its "
                    "distribution-free 95% interval), so a drift in the machine's speed reaches both. The last column "
                    f"is the older ≥ {INT8_SPEEDUP_TARGET:g}× target with Δ macro-F1 ≥\u00a0{INT8_DELTA_F1_TARGET:g}"
                    + (", read from the interleaved passes where they ran." if "speedup" in df else
                       ", read from the one-pass speed-up."), label="int8")


def supplement_pointer(src: Source) -> str:
    """What only the supplement shows, section by section, each table and figure referred to from here."""
    has = src.has
    parts = [
        ("S1", "the data", ["@tbl-data-counts", "@fig-montage"] + (["@tbl-leakage"] if has("leakage.csv") else [])
         + (["@tbl-split"] if has("split_comparison.csv") or sources.scratch_teacher() is not None else [])),
        ("S2", "the training recipes", ["@tbl-arms", "@tbl-student-recipe"]
         + (["@tbl-teacher-choice"] if sources.pretrained_study() is not None else [])
         + (["@tbl-teacher-recipe"] if has("teacher_recipe.csv") else [])),
        ("S3", "the KD pilot", ["@tbl-kd-pilot", "@tbl-teacher-softness"] if sources.kd_tuning() is not None else []),
        ("S4", "every model's test performance", (["@tbl-performance", "@tbl-field"] if src.numbers["n_valid"] else [])
         + (["@fig-per-class", "@fig-confusion", "@tbl-per-class"] if has("per_class.png") else [])
         + (["@fig-external-gap"] if has("external_gap.png") else [])),
        ("S5", "the paired comparisons in full", (["@tbl-paired-kd-full"] if has("paired_kd.csv") else [])
         + (["@tbl-equal-compute"] if has("equal_compute.csv") else []) + (["@tbl-targets"] if has("targets.csv") else [])
         + (["@tbl-seeds-needed"] if sources.power(src) is not None else [])
         + (["@tbl-kd-power"] if sources.kd_power() is not None else [])),
        ("S6", "calibration", ["@tbl-calibration", "@fig-reliability", "@tbl-operating-points"] if has("calibration.csv") else []),
        ("S7", "robustness", (["@fig-corruption-curves", "@tbl-robustness"] if has("robustness.csv") else [])
         + (["@tbl-be-rbe"] if has("be_rbe.csv") else [])
         + corruption_refs(src)),
        ("S8", "efficiency", (["@tbl-int8-ops"] if sources.int8_ops() is not None else [])
         + (["@tbl-cost"] if has("efficiency.csv") else []) + (["@tbl-pareto"] if has("pareto.csv") else [])
         + (["@tbl-input-sizes"] if has("pareto.csv") and input_sizes(src) is not None else [])
         + (["@tbl-gpu-latency"] if sources.gpu() is not None else [])),
        ("S9", "training curves, classes and Grad-CAM", (["@fig-training-curves"] if has("training_curves.png") else [])
         + (["@fig-per-class-delta", "@tbl-teacher-agreement"] if has("per_class_delta.png") else [])
         + (["@fig-gradcam"] if has("gradcam.png") else [])),
        ("S10", "excluded runs", ["@tbl-excluded"] if src.numbers["n_excluded"] else []),
        ("S11", "provenance", (["@tbl-reproduction"] if src.kind == "outputs"
                               and (info.results_root() / src.profile / "seed_metrics.csv").exists() else [])
         + ["@tbl-machine", "@tbl-versions"] + (["@tbl-stage-times"] if src.provenance.get("stage_wall_time_s") else [])),
    ]
    return ("The supplement holds the rest: " + "; ".join(f"{what} ({s}: {', '.join(refs)})" for s, what, refs in parts if refs)
            + ".\n")
