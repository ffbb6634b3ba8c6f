"""The aggregate stage (:func:`run_aggregate`): every evaluated run of a profile in, the paper's tables and
figures out, with the study's targets (:data:`TARGETS`) and its headline numbers (:data:`NUMBERS`).

It writes tidy, numeric CSVs (:mod:`edgekd.stages.tables`), PNG figures (:mod:`edgekd.stages.figures`) and
``numbers.json``. Runs flagged by the collapse guard (``metrics.json["collapsed"]``) are listed in
``excluded_runs.csv`` with their reason and enter no mean, comparison, selection, front or figure.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from edgekd.core import info, provenance
from edgekd.core.files import clear_results
from edgekd.core.info import ARCH_LABELS, INT8_DELTA_F1_TARGET, LESION_MARK
from edgekd.core.words import BASELINE
from edgekd.stages.figures import (
    confusion_figure,
    gradcam_panels,
    paired_kd_figure,
    per_class_delta_figure,
    per_class_figure,
    reliability_grid,
    training_curves_figure,
)
from edgekd.stages.runs import discover, eval_table, evaluated, excluded_runs, having
from edgekd.stages.tables import (
    ablation_table,
    arms,
    be_rbe_summary,
    calibration_summary,
    controls,
    efficiency_summary,
    external_summary,
    operating_summary,
    paired_kd,
    performance_table,
    robustness_summary,
    seed_metrics,
    split_comparison,
    teacher_recipe,
)

# ----------------------------------------------------------------------------- the best models and the study's targets


def _most(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows with the largest ``column`` (seeds, pairs): a one-seed ablation is not ranked against 3-seed means."""
    return rows[rows[column] == rows[column].max()]


def best_teacher(perf: pd.DataFrame) -> pd.Series | None:
    """The official-split teacher with the highest validation macro-F1 (chosen on validation, never on test)."""
    teachers = perf[(perf["role"] == "teacher") & (perf["split"] != LESION_MARK)]
    return None if teachers.empty else teachers.loc[teachers["val_macro_f1"].idxmax()]


def best_student(perf: pd.DataFrame, distilled: bool = False) -> pd.Series | None:
    """The official-split student with the highest validation macro-F1 (mean over its seeds): chosen on
    validation, never on test; with ``distilled``, among the KD settings only (not the no-KD baselines)."""
    students = perf[(perf["role"] == "student") & (perf["split"] != LESION_MARK)]
    if distilled:
        students = students[students["kd_mode"] != "none"]
    return None if students.empty else students.loc[students["val_macro_f1"].idxmax()]


def largest_kd_gain(paired: pd.DataFrame) -> pd.Series | None:
    """The KD comparison with the largest mean validation Δ macro-F1 among those with the most seed pairs: chosen on
    validation, never on test."""
    most = _most(paired, "pairs") if len(paired) else paired
    return None if most.empty else most.loc[most["d_val_macro_f1"].idxmax()]


#: The study's targets (official test set; 3-seed means unless the model has fewer seeds), set by issue 21
#: (2026-11-27) before the pretrained-teacher default was run. A value meets its target when it is at least the
#: threshold, or above it where the target is ``strict``.
@dataclass(frozen=True)
class Target:
    """One target: the threshold, what it measures, and whether the value must exceed it (``strict``) or reach it."""

    threshold: float
    what: str
    strict: bool = False


TARGETS: dict[str, Target] = {
    "teacher_accuracy": Target(0.86, "teacher accuracy"),
    "teacher_macro_f1": Target(0.74, "teacher macro-F1"),
    "student_accuracy": Target(0.84, "accuracy of the best student of any kind (chosen on validation macro-F1)"),
    "student_macro_f1": Target(0.70, "macro-F1 of that student"),
    "every_student_macro_f1": Target(0.55, "every student's macro-F1 (its lowest model)"),
    "kd_scratch_students_above_zero": Target(2 / 3, "from-scratch students whose paired Δ macro-F1 (KD − no KD, "
                                                    "equal epochs) has a seeds-and-images interval above 0"),
    "kd_above_equal_compute": Target(1, "students whose KD Δ macro-F1 against the equal-compute no-KD control has a "
                                        "seeds-and-images interval above 0"),
    "int8_edge_delta_macro_f1": Target(INT8_DELTA_F1_TARGET, "Δ macro-F1 of the pretrained KD student's INT8 model "
                                                             "against ORT FP32"),
    "int8_edge_speedup_low": Target(1.0, "lower end of the interval of its INT8 speed-up over ORT FP32 (interleaved "
                                         "passes; above 1: faster)", strict=True),
}


def _above(table: pd.DataFrame) -> pd.Series:
    return table["d_macro_f1_hb_low"] > 0


def edge_int8(perf: pd.DataFrame, int8: pd.DataFrame | None) -> pd.Series | None:
    """The INT8 row of the edge model: the pretrained student distilled with KD at its smallest input size (its
    seed-0 run's efficiency)."""
    if int8 is None or not len(int8):
        return None
    edge = perf[(perf["role"] == "student") & (perf["init"] != "scratch") & (perf["kd_mode"] != "none")]
    rows = int8[int8["model"].isin(edge["model"])].sort_values("img_size", kind="stable")
    return None if rows.empty else rows.iloc[0]


def targets_table(perf: pd.DataFrame, paired: pd.DataFrame, equal_compute: pd.DataFrame,
                  int8: pd.DataFrame | None) -> pd.DataFrame:
    """Each of :data:`TARGETS` against what the runs reached: value, the model or setting it belongs to, met.

    KD rows use the hierarchical (seeds, then images) interval of :func:`tables.paired_kd` under the KD
    setting with the most students above 0 (ties: the larger mean Δ); ``count`` and ``of`` give the numbers."""
    rows: list[dict] = []

    def add(name: str, value: float | None, who: str | None, **extra) -> None:
        t = TARGETS[name]
        met = value is not None and np.isfinite(value) and (value > t.threshold if t.strict else
                                                             value >= t.threshold - 1e-12)
        rows.append({"target": name, "what": t.what, "threshold": t.threshold, "strict": t.strict, "value": value,
                     "model": who, "met": bool(met), **extra})

    def add_model(name: str, model: pd.Series | None, metric: str) -> None:
        add(name, None if model is None else model[metric], None if model is None else model["label"],
            seeds=None if model is None else int(model["seeds"]))

    students = perf[(perf["role"] == "student") & (perf["split"] != LESION_MARK)]
    teacher, best = best_teacher(perf), best_student(perf)
    add_model("teacher_accuracy", teacher, "accuracy")
    add_model("teacher_macro_f1", teacher, "macro_f1")
    add_model("student_accuracy", best, "accuracy")
    add_model("student_macro_f1", best, "macro_f1")
    add_model("every_student_macro_f1", None if students.empty else students.loc[students["macro_f1"].idxmin()], "macro_f1")
    scratch = set(students.loc[students["init"] == "scratch", "arch"])
    kd = paired[(paired["split"] != LESION_MARK) & paired["arch"].isin(scratch)] if len(paired) else paired
    if len(kd):
        archs = kd["arch"].nunique()
        by = (kd.assign(above=_above(kd)).groupby("setting", sort=False)
              .agg(count=("above", "sum"), mean=("d_macro_f1", "mean")).sort_values(["count", "mean"], ascending=False))
        setting, top = by.index[0], by.iloc[0]
        add("kd_scratch_students_above_zero", int(top["count"]) / archs, setting, count=int(top["count"]), of=archs)
    else:
        add("kd_scratch_students_above_zero", None, None, count=0, of=0)
    ec = equal_compute[equal_compute["split"] != LESION_MARK] if len(equal_compute) else equal_compute
    above = ec[_above(ec)] if len(ec) else ec
    add("kd_above_equal_compute", len(above) if len(ec) else None,
        ", ".join(f"{r.student} · {r.method} vs {r.baseline}" for r in above.itertuples()) or None,
        count=len(above), of=len(ec))
    edge = edge_int8(perf, int8)
    add("int8_edge_delta_macro_f1", None if edge is None else edge["delta_macro_f1"], None if edge is None else edge["label"])
    add("int8_edge_speedup_low", None if edge is None else edge.get("speedup_low"), None if edge is None else edge["label"])
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- headline numbers


def cpu_int8_support() -> dict:
    """This CPU's model and whether it has 8-bit dot-product instructions (VNNI / AMX-INT8)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    found = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    simd = next((f.upper() for f in ("avx512f", "avx2", "avx") if f in flags), "unknown SIMD")
    return {"cpu": provenance.cpu_model(), "int8_instructions": ", ".join(found), "simd": simd}


#: The CPU's 8-bit instruction sets in words (the CPU flag names are code).
INT8_INSTRUCTION_NAMES: dict[str, str] = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8"}


def int8_reason(cpu: dict) -> str:
    """Why ORT INT8 may miss the speed-up target on this CPU, and what would help (in words: the paper quotes it)."""
    if not cpu["int8_instructions"]:
        return (f"this CPU ({cpu['cpu']}) has no 8-bit dot-product instructions (VNNI or AMX-INT8), so ONNX Runtime's "
                "INT8 convolutions widen to 16 bits and gain little over FP32; a CPU with them, per-channel weight "
                "scales, quantisation nodes placed so that whole blocks stay in INT8, and operator fusion would help")
    names = ", ".join(INT8_INSTRUCTION_NAMES.get(f, f) for f in cpu["int8_instructions"].split(", "))
    return (f"this CPU ({cpu['cpu']}) has 8-bit dot-product instructions ({names}), but at small inputs the 8-bit "
            "convolutions save little per call, and activations that run as separate quantised element-wise "
            "operators (SiLU's sigmoid and multiply, squeeze-and-excitation) can cost more than that; ONNX Runtime's "
            "operator profile shows where the time goes. Larger inputs and activations that fuse into the "
            "convolution (ReLU6, as in EfficientNet-Lite) would help")


#: Every key of ``numbers.json`` and what it holds (the abstract and the text read them; None where not applicable).
NUMBERS: dict[str, str] = {
    "generated": "UTC time the aggregate stage ran",
    "profile": "profile name (outputs/<profile>)",
    "size": "input size in px of the runs",
    "source_frame": "width x height of the source images read (px)",
    "n_runs": "evaluated runs",
    "n_valid": "runs that entered the tables (not collapsed)",
    "n_excluded": "runs excluded because the collapse guard flagged them",
    "n_seeds": "most seeds of any model",
    "student_archs": "names of the student architectures",
    "teacher_epochs": "epochs of the (first) teacher",
    "student_epochs": "epochs of the first student",
    "teacher": "label of the valid official-split teacher with the highest validation macro-F1",
    "teacher_accuracy": "its mean test accuracy",
    "teacher_macro_f1": "its mean test macro-F1",
    "teacher_tta_views": "dihedral views its test predictions average over (1 = no test-time augmentation)",
    "teacher_seeds": "its training seeds",
    "teacher_macro_f1_low": "lower end of its hierarchical bootstrap interval (with 1 seed: test images only)",
    "teacher_macro_f1_high": "upper end",
    "best_student": "label of the official-split student with the highest mean validation macro-F1 (chosen on validation)",
    "best_student_model": "its model key (run folder without -s<seed>)",
    "best_student_accuracy": "its mean test accuracy",
    "best_student_macro_f1": "its mean test macro-F1",
    "best_student_macro_f1_low": "lower end of its hierarchical bootstrap interval (seeds, then test images)",
    "best_student_macro_f1_high": "upper end of that interval",
    "kd_comparisons": "official-split (student arch, KD setting) pairs with a valid no-KD baseline",
    "kd_positive": "of those, how many have a hierarchical (seeds, then images) Δ macro-F1 interval above 0",
    "kd_negative": "of those, how many have one below 0",
    "kd_best": "student and KD setting with the largest mean paired Δ validation macro-F1, among those with the most pairs",
    "kd_best_delta_macro_f1": "its mean paired Δ macro-F1 (KD − no KD)",
    "kd_best_delta_low": "lower end of its 95% t-interval across seeds (None with one seed)",
    "kd_best_delta_high": "upper end",
    "kd_best_pairs": "seeds paired in it",
    "kd_best_seeds_positive": "of those seeds, how many have a paired Δ macro-F1 above 0",
    "kd_best_p": "its paired-t p across seeds (the analysis plan's test), Holm-adjusted over the students of its KD setting",
    "ec_comparisons": "official-split KD settings paired against an equal-compute no-KD control (students x controls)",
    "ec_positive": "of those, how many have a hierarchical Δ macro-F1 interval above 0",
    "ec_negative": "of those, how many have one below 0",
    "edge_model": "label of the pretrained KD student whose INT8 model is the edge deliverable",
    "edge_delta_macro_f1": "its INT8 − ORT FP32 test macro-F1",
    "edge_speedup_median": "median ORT INT8 speed-up over ORT FP32 over its interleaved passes (batch 1)",
    "edge_speedup_low": "lower end of that median's distribution-free 95% interval",
    "edge_speedup_high": "upper end",
    "lesion_delta_macro_f1": "mean macro-F1 on the lesion split minus the official split, over the models run on both",
    "int8_models": "models with an INT8 latency measurement",
    "int8_target_met": "of those, how many meet the INT8 target (>= 2x ORT FP32 at the trained size, Δ macro-F1 >= −0.01)",
    "int8_speedup_median": "median over the models of ORT INT8's speed-up over ORT FP32 (batch 1, trained size; each "
                           "model's interleaved passes where measured, else its two p50s)",
    "int8_speedup_eager_median": "median ORT INT8 speed-up over eager PyTorch FP32",
    "int8_reason": "why INT8 may miss the target on the aggregating machine, and what would help",
    "targets": "number of the study's targets (TARGETS)",
    "targets_met": "of those, how many the runs meet",
}


def headline_numbers(profile: str, runs: pd.DataFrame, perf: pd.DataFrame, paired: pd.DataFrame,
                     equal_compute: pd.DataFrame, splits: pd.DataFrame, int8: pd.DataFrame | None,
                     targets: pd.DataFrame) -> dict:
    """The values of :data:`NUMBERS` (all computed, none typed)."""
    valid = runs[runs["valid"]]
    cfg = {r.role: json.loads((r.path / "run_config.json").read_text()) for r in runs[::-1].itertuples()}
    teacher, best = best_teacher(perf), best_student(perf)
    official = paired[paired["split"] != LESION_MARK] if len(paired) else paired
    ec = equal_compute[equal_compute["split"] != LESION_MARK] if len(equal_compute) else equal_compute
    edge = edge_int8(perf, int8)
    top = largest_kd_gain(official)
    out = {
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "profile": profile,
        "size": int(next(iter(cfg.values()))["data"]["size"]),
        "source_frame": f"{info.RAW_FRAME[0]}x{info.RAW_FRAME[1]}",
        "n_runs": len(runs), "n_valid": len(valid), "n_excluded": int((~runs["valid"]).sum()),
        "n_seeds": int(runs.groupby("model")["seed"].nunique().max()),
        "student_archs": [ARCH_LABELS.get(a, a) for a in dict.fromkeys(runs[runs["role"] == "student"]["arch"])],
        "teacher_epochs": int(cfg["teacher"]["train"]["epochs"]) if "teacher" in cfg else None,
        "student_epochs": int(cfg["student"]["train"]["epochs"]) if "student" in cfg else None,
        "teacher": None, "teacher_accuracy": None, "teacher_macro_f1": None, "teacher_tta_views": None,
        "teacher_seeds": None, "teacher_macro_f1_low": None, "teacher_macro_f1_high": None,
        "best_student": None, "best_student_model": None, "best_student_accuracy": None, "best_student_macro_f1": None,
        "best_student_macro_f1_low": None, "best_student_macro_f1_high": None,
        "kd_comparisons": len(official),
        "kd_positive": int((official["d_macro_f1_hb_low"] > 0).sum()) if len(official) else 0,
        "kd_negative": int((official["d_macro_f1_hb_high"] < 0).sum()) if len(official) else 0,
        "kd_best": None, "kd_best_delta_macro_f1": None, "kd_best_delta_low": None, "kd_best_delta_high": None,
        "kd_best_pairs": None, "kd_best_seeds_positive": None, "kd_best_p": None,
        "ec_comparisons": len(ec),
        "ec_positive": int((ec["d_macro_f1_hb_low"] > 0).sum()) if len(ec) else 0,
        "ec_negative": int((ec["d_macro_f1_hb_high"] < 0).sum()) if len(ec) else 0,
        "edge_model": None if edge is None else edge["label"],
        "edge_delta_macro_f1": None if edge is None else _float(edge["delta_macro_f1"]),
        "edge_speedup_median": None if edge is None else _float(edge.get("speedup_median")),
        "edge_speedup_low": None if edge is None else _float(edge.get("speedup_low")),
        "edge_speedup_high": None if edge is None else _float(edge.get("speedup_high")),
        "lesion_delta_macro_f1": float(splits["delta_macro_f1"].mean()) if len(splits) else None,
        "int8_models": 0 if int8 is None else len(int8),
        "int8_target_met": 0 if int8 is None else int(int8["target_met"].sum()),
        "int8_speedup_median": None if int8 is None else _float(int8["speedup"].median()),
        "int8_speedup_eager_median": None if int8 is None else _float(int8["speedup_vs_eager"].median()),
        "int8_reason": int8_reason(cpu_int8_support()) if int8 is not None else None,
        "targets": len(targets), "targets_met": int(targets["met"].sum()),
    }
    if teacher is not None:
        views = runs[runs["model"] == teacher["model"]]["tta_views"].max()
        out |= {"teacher": teacher["label"], "teacher_accuracy": _float(teacher["accuracy"]),
                "teacher_macro_f1": _float(teacher["macro_f1"]), "teacher_tta_views": int(views),
                "teacher_seeds": int(teacher["seeds"]), "teacher_macro_f1_low": _float(teacher["macro_f1_hb_low"]),
                "teacher_macro_f1_high": _float(teacher["macro_f1_hb_high"])}
    if best is not None:
        out |= {"best_student": best["label"], "best_student_model": best["model"],
                "best_student_accuracy": _float(best["accuracy"]), "best_student_macro_f1": _float(best["macro_f1"]),
                "best_student_macro_f1_low": _float(best["macro_f1_hb_low"]),
                "best_student_macro_f1_high": _float(best["macro_f1_hb_high"])}
    if top is not None:
        out |= {"kd_best": f"{top['student']} · {top['method']}", "kd_best_delta_macro_f1": _float(top["d_macro_f1"]),
                "kd_best_delta_low": _float(top["d_macro_f1_low"]), "kd_best_delta_high": _float(top["d_macro_f1_high"]),
                "kd_best_pairs": int(top["pairs"]), "kd_best_seeds_positive": int(top["seeds_positive"]),
                "kd_best_p": _float(top["t_p_holm"])}
    assert set(out) == set(NUMBERS), set(out) ^ set(NUMBERS)
    return out


def _float(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


# ----------------------------------------------------------------------------- the whole stage


def _save(obj: pd.DataFrame | Figure, out_dir: Path, name: str) -> None:
    if isinstance(obj, Figure):
        obj.savefig(out_dir / f"{name}.png", dpi=120)
    else:
        obj.to_csv(out_dir / f"{name}.csv", index=False)


#: Files a profile folder may hold for the paper beside the runs; the aggregate copies them when present.
EXTRA_FILES: dict[str, str] = {"data/counts.csv": "data_counts.csv", "data/leakage.csv": "leakage.csv",
                               "data/montage.png": "montage.png"}


def run_aggregate(profile_dir: Path, out_dir: Path) -> dict:
    """Paper-ready tables and figures for every evaluated run of a profile, written to ``out_dir``.

    Returns them by name (a figure's key ends in ``_fig``) with ``numbers`` (see :data:`NUMBERS`); also writes
    ``machine.json`` (:func:`edgekd.core.provenance.machine` of the machine the stages ran on).
    """
    profile_dir, out_dir = Path(profile_dir), Path(out_dir)
    runs = discover(profile_dir)
    clear_results(out_dir)
    valid = runs[runs["valid"]]
    res: dict = {"runs": runs.drop(columns="path"), "excluded_runs": excluded_runs(runs)}
    seeds = seed_metrics(valid) if len(valid) else pd.DataFrame(columns=["model", "label", "metric", "clipped"])
    perf = performance_table(valid, seeds) if len(valid) else pd.DataFrame(
        columns=["model", "label", "role", "arch", "kd_mode", "init", "split", "seeds", "val_macro_f1", "accuracy", "macro_f1"])
    paired, per_seed = paired_kd(runs)
    # KD against each no-KD control (the equal-compute one: no KD for the extra epochs the teacher cost)
    control = [paired_kd(runs, c)[0].assign(baseline=c) for c in controls(runs)]
    equal_compute = pd.concat(control, ignore_index=True) if control else pd.DataFrame()
    splits = split_comparison(valid, seeds) if len(valid) else pd.DataFrame()
    res |= {"seed_metrics": seeds, "performance": perf}
    for name, table in (("paired_kd", paired), ("paired_kd_seeds", per_seed), ("equal_compute", equal_compute),
                        ("kd_ablation", ablation_table(runs, paired)),
                        ("split_comparison", splits), ("teacher_recipe", teacher_recipe(runs)), ("arms", arms(runs))):
        if len(table):
            res[name] = table
    if len(per_seed) and (per_seed["split"] != LESION_MARK).any():
        res["paired_kd_fig"] = paired_kd_figure(per_seed[per_seed["split"] != LESION_MARK])
    int8 = None
    main = valid[valid["split"] != LESION_MARK]  # the lesion split has its own section
    if len(main):
        res |= {"calibration": calibration_summary(main), "operating_points": operating_summary(main),
                "reliability_fig": reliability_grid(main), "training_curves_fig": training_curves_figure(main)}
        # The teacher, the best student and its no-KD baseline, each chosen on validation (per-class and Grad-CAM panels)
        best, teacher = best_student(perf), best_teacher(perf)
        teachers = [] if teacher is None else [teacher["model"]]
        shown = teachers + ([best["model"]] if best is not None else [])
        if best is not None:
            arch = main[main["model"] == best["model"]]["arch"].iloc[0]
            base = main[(main["arch"] == arch) & (main["setting"] == BASELINE)]["model"]
            shown += [m for m in dict.fromkeys(base) if m not in shown]
        res["per_class"], res["per_class_fig"] = per_class_figure(main, shown)
        res["confusion_fig"] = confusion_figure(main, shown[:2])
        compared = having(main[main["role"] == "student"], "eval/paired.csv")
        if teachers and len(compared):  # students against a usable teacher
            res["per_class_delta"], res["per_class_delta_fig"] = per_class_delta_figure(main)
            res["paired"] = eval_table(compared, "paired").groupby(["model", "label"], sort=False)[
                ["agreement", "b", "c", "p_value", "teacher_accuracy", "student_accuracy"]].mean().reset_index()
        res["gradcam_fig"], res["gradcam_layers"] = gradcam_panels(main, shown)
        external = external_summary(main)
        if external is not None:
            res["external"], res["external_gap_fig"] = external
        rob = robustness_summary(main)
        if rob is not None:
            res["robustness"], res["robustness_corruptions"], res["corruption_curves_fig"] = rob
        be = be_rbe_summary(main)
        if be is not None:
            res["be_rbe"] = be
        eff = efficiency_summary(main, perf)
        if eff is not None:
            res |= eff
            int8 = eff.get("int8")
    res["targets"] = targets_table(perf, paired, equal_compute, int8)
    for src, name in EXTRA_FILES.items():
        if (profile_dir / src).exists():
            shutil.copy(profile_dir / src, out_dir / name)
    for name, obj in res.items():
        _save(obj, out_dir, re.sub(r"_fig$", "", name))
    res["numbers"] = headline_numbers(profile_dir.name, runs, perf, paired, equal_compute, splits, int8, res["targets"])
    (out_dir / "numbers.json").write_text(json.dumps(res["numbers"], indent=2))
    (out_dir / "machine.json").write_text(json.dumps(provenance.machine(), indent=2))  # the machine the stages ran on
    return res


def published(profile: str) -> dict:
    """The published reference ``paper/results/<profile>`` by the names :func:`run_aggregate` returns: each table as
    a DataFrame, each figure (``<name>_fig``) as the path of its PNG, and ``numbers``."""
    folder = info.results_root() / profile
    if not (folder / "numbers.json").is_file():
        raise FileNotFoundError(f"{folder} holds no published results (numbers.json): see `edgekd-publish --help`")
    res: dict = {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}
    res |= {f"{p.stem}_fig": p for p in sorted(folder.glob("*.png"))}
    res["numbers"] = json.loads((folder / "numbers.json").read_text())
    return res


def aggregate_or_published(profile_dir: Path, out_dir: Path, profile: str | None) -> tuple[dict, str]:
    """:func:`run_aggregate` over the evaluated runs under ``profile_dir``; where there are none, the published
    reference of ``profile`` (:func:`published`, nothing written), or with ``profile`` None the FileNotFoundError.
    Returns the results and a sentence saying which."""
    if profile is not None and not evaluated(profile_dir):
        return published(profile), (
            f"**No evaluated runs under `{profile_dir}`**, so this shows the published reference "
            f"`paper/results/{profile}` (read-only; nothing is written). To aggregate runs of your own, run "
            f"02_teacher, 03_student and 04_evaluate, or `.venv/bin/edgekd-run <profile>`.")
    return run_aggregate(Path(profile_dir), Path(out_dir)), f"Aggregated the evaluated runs under `{profile_dir}` into `{out_dir}`."

