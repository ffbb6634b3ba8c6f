"""Evaluation stage: metrics, calibration, operating points and teacher-vs-student comparisons of a run.

Glue over :mod:`edgekd.core.metrics` and :mod:`edgekd.core.calibration`. Everything fitted (temperature,
class offsets, melanoma threshold) is fitted on the validation split and applied unchanged to test.
Tidy CSVs, PNG figures and the fitted values go to ``<run_dir>/eval/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy.special import log_softmax, softmax

from edgekd.core import calibration as C
from edgekd.core import metrics as M
from edgekd.core.config import EvaluateConfig
from edgekd.core.files import clear_results
from edgekd.core.info import CLASS_NAMES, MELANOMA, NUM_CLASSES

EVAL_DIR: str = "eval"
#: Validation melanoma sensitivity the screening threshold must reach.
TARGET_SENSITIVITY: float = 0.90
#: Metrics added to ``metrics.csv`` beside ``metrics.HEADLINE``: name -> fn(y, probs).
EXTRA_METRICS: dict[str, M.MetricFn] = {"nll": C.nll, "brier": C.brier, "aurc": M.aurc}
#: Per-run tables :func:`seed_table` can summarise -> their key columns besides the model.
SEED_TABLES: dict[str, tuple[str, ...]] = {"metrics": ("metric",), "calibration": ("stage", "metric")}


def load_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The ``predictions.npz`` of a finished run (val/test logits and labels)."""
    path = Path(run_dir) / "predictions.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a finished run")
    with np.load(path) as z:
        return {k: z[k] for k in ("val_logits", "val_labels", "test_logits", "test_labels")}


def metrics_table(y: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int, labels: np.ndarray = M.LABELS) -> pd.DataFrame:
    """Headline (macro-F1 over ``labels``) and extra metrics with 95% percentile bootstrap intervals over images.

    With the same ``seed`` every metric is computed on the same resamples.
    """
    rows = [M.bootstrap_table(y, probs, n_resamples, seed, labels)]
    for name, fn in EXTRA_METRICS.items():
        value, low, high = M.bootstrap_ci(y, probs, fn, n_resamples, seed)
        rows.append(pd.DataFrame({"metric": [name], "value": [value], "ci_low": [low], "ci_high": [high]}))
    return pd.concat(rows, ignore_index=True)


def _rule_row(rule: str, split: str, y: np.ndarray, pred: np.ndarray, argmax: np.ndarray) -> dict:
    """Multiclass scores of a decision rule's predictions and how often it overrides argmax."""
    onehot = np.eye(NUM_CLASSES)[pred]
    scores = {k: M.HEADLINE[k](y, onehot) for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    mel = M.screening_report(y, onehot, 1.0)  # flags melanoma exactly when the rule predicts it
    return {"rule": rule, "split": split, **scores, "mel_sensitivity": mel["sensitivity"],
            "mel_specificity": mel["specificity"], "changed_fraction": float(np.mean(pred != argmax))}


def operating_points(pred: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict]:
    """Argmax, macro-F1-optimal class offsets and the melanoma screening point, fitted on val.

    Returns one row per rule and split, and the fitted ``offsets`` and ``melanoma_threshold``.
    ``changed_fraction`` is the fraction of images whose decision differs from argmax (for the
    screening rule: melanoma flagged vs argmax predicting melanoma).
    """
    logp = {s: log_softmax(pred[f"{s}_logits"].astype(float), axis=1) for s in ("val", "test")}
    probs = {s: softmax(pred[f"{s}_logits"].astype(float), axis=1) for s in ("val", "test")}
    offsets = M.fit_class_offsets(pred["val_labels"], logp["val"])
    threshold = M.melanoma_threshold(pred["val_labels"], probs["val"], TARGET_SENSITIVITY)
    rows = []
    for split in ("val", "test"):
        y, argmax = pred[f"{split}_labels"], probs[split].argmax(1)
        rows.append(_rule_row("argmax", split, y, argmax, argmax))
        rows.append(_rule_row("class_offsets", split, y, M.apply_offsets(logp[split], offsets), argmax))
        screen = M.screening_report(y, probs[split], threshold)
        flag = probs[split][:, MELANOMA] >= threshold
        rows.append({"rule": "mel_screening", "split": split, "mel_sensitivity": screen["sensitivity"],
                     "mel_specificity": screen["specificity"], "threshold": threshold,
                     "changed_fraction": float(np.mean(flag != (argmax == MELANOMA)))})
    table = pd.DataFrame(rows)
    fitted = {"offsets": dict(zip(CLASS_NAMES, offsets.tolist(), strict=True)), "melanoma_threshold": threshold,
              "target_sensitivity": TARGET_SENSITIVITY}
    return table, fitted


def reliability_figure(y: np.ndarray, probs: np.ndarray, probs_cal: np.ndarray, T: float, n_bins: int) -> Figure:
    """Reliability diagrams with confidence histograms before and after temperature scaling."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, height_ratios=[3, 1])
    C.plot_reliability(y, probs, n_bins, "Before (T = 1)", ax=axes[:, 0])
    C.plot_reliability(y, probs_cal, n_bins, f"After (T = {T:.2f})", ax=axes[:, 1])
    return fig


def risk_coverage_figure(rc: pd.DataFrame, aurc: float) -> Figure:
    """Selective risk against coverage (most confident images kept first)."""
    ax = Figure(figsize=(4.5, 3.2), layout="constrained").add_subplot()
    ax.step(rc["coverage"], rc["risk"], where="pre")
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage", ylabel="selective risk",
           title=f"Risk-coverage (AURC {aurc:.3f})")
    return ax.figure


def plot_per_class_f1(table: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Grouped per-class F1 bars from a long table (model, class, f1), models in table order."""
    if ax is None:
        ax = Figure(figsize=(8, 3.5), layout="constrained").add_subplot()
    models = list(dict.fromkeys(table["model"]))
    classes = [c for c in CLASS_NAMES if c in set(table["class"])]
    width = 0.8 / len(models)
    x = np.arange(len(classes))
    for i, model in enumerate(models):
        f1 = table[table["model"] == model].set_index("class")["f1"].reindex(classes)
        ax.bar(x + (i - (len(models) - 1) / 2) * width, f1.to_numpy(), width, label=model)
    ax.set_xticks(x, classes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend(fontsize="small", ncols=min(len(models), 4))
    return ax.figure


def compare_teacher(
    y: np.ndarray, probs_teacher: np.ndarray, probs_student: np.ndarray, names: tuple[str, str]
) -> dict[str, pd.DataFrame | Figure]:
    """Per-class deltas, paired test (teacher = A, student = B) and per-class F1 bars on test."""
    pred_t, pred_s = probs_teacher.argmax(1), probs_student.argmax(1)
    paired = {"agreement": M.agreement(pred_t, pred_s), **M.mcnemar(y, pred_t, pred_s),
              "teacher_accuracy": float(np.mean(pred_t == y)), "student_accuracy": float(np.mean(pred_s == y))}
    long = pd.concat([M.per_class_table(y, p).assign(model=name)
                      for name, p in zip(names, (probs_teacher, probs_student), strict=True)])
    return {"teacher_vs_student": M.per_class_delta(y, probs_teacher, probs_student),
            "paired": pd.DataFrame([paired]), "per_class_f1_fig": plot_per_class_f1(long)}


def run_evaluate(
    run_dir: str | Path,
    teacher_dir: str | Path | None = None,
    n_resamples: int = EvaluateConfig.n_resamples,
    seed: int = EvaluateConfig.seed,
    n_bins: int = 15,
) -> dict[str, pd.DataFrame | Figure]:
    """Evaluate a finished run on test, writing tables and figures to ``run_dir/eval/``.

    ``teacher_dir`` (students): also compare with the teacher on the same test images.
    ``n_bins`` sets the reliability table and diagrams (``calibration.csv`` uses its 15 bins).
    Returns the tables and figures by name (a figure's key ends in ``_fig``).
    """
    run_dir = Path(run_dir)
    pred = load_predictions(run_dir)
    teacher = load_predictions(teacher_dir) if teacher_dir is not None else None
    if teacher is not None and not np.array_equal(teacher["test_labels"], pred["test_labels"]):
        raise ValueError(f"{teacher_dir} and {run_dir} were not tested on the same images")
    out = run_dir / EVAL_DIR
    clear_results(out)  # no stale files from an earlier evaluation
    y, y_val = pred["test_labels"], pred["val_labels"]
    probs = softmax(pred["test_logits"].astype(float), axis=1)
    probs_val = softmax(pred["val_logits"].astype(float), axis=1)
    T = C.fit_temperature(pred["val_logits"], y_val)
    probs_cal = C.apply_temperature(pred["test_logits"], T)
    argmax = probs.argmax(1)

    res: dict[str, pd.DataFrame | Figure] = {"metrics": metrics_table(y, probs, n_resamples, seed),
                                             "per_class": M.per_class_table(y, probs)}
    res["confusion"], res["confusion_normalised"] = M.confusion(y, argmax)
    res["top_confusions"] = M.top_confusions(y, argmax)
    res["calibration"] = C.calibration_report(y, pred["test_logits"], T)
    res["reliability"] = pd.concat([C.reliability_table(y, p, n_bins).assign(stage=s)
                                    for s, p in (("before", probs), ("after", probs_cal))], ignore_index=True)
    res["reliability_fig"] = reliability_figure(y, probs, probs_cal, T, n_bins)
    res["operating_points"], fitted = operating_points(pred)
    res["class_offsets"] = pd.DataFrame({"class": CLASS_NAMES, "offset": list(fitted["offsets"].values())})
    res["risk_coverage"] = M.risk_coverage(y, probs)
    aurc = float(res["metrics"].set_index("metric").loc["aurc", "value"])
    res["risk_coverage_fig"] = risk_coverage_figure(res["risk_coverage"], aurc)
    np.savez_compressed(out / "probs.npz", val_probs=probs_val, test_probs=probs, test_probs_calibrated=probs_cal,
                        val_labels=y_val, test_labels=y, temperature=T)
    (out / "operating_points.json").write_text(json.dumps({**fitted, "temperature": T}, indent=2))

    if teacher is not None:
        probs_t = softmax(teacher["test_logits"].astype(float), axis=1)
        res |= compare_teacher(y, probs_t, probs, (Path(teacher_dir).name, run_dir.name))

    for name, item in res.items():
        if isinstance(item, Figure):
            item.savefig(out / f"{name.removesuffix('_fig')}.png", dpi=120)
        else:
            item.to_csv(out / f"{name}.csv", index=name.startswith("confusion"))
    return res


def model_name(run_name: str) -> str:
    """Run folder name without its trailing ``-s<seed>`` (``student-resnet18-kd-s1`` -> ``student-resnet18-kd``)."""
    return re.sub(r"-s\d+$", "", run_name)


def seed_table(profile_dir: str | Path, table: str = "metrics") -> pd.DataFrame:
    """Across-seed summary of every run's ``eval/<table>.csv`` under ``profile_dir``.

    One row per model (and stage, for ``calibration``) and metric: n_seeds, mean, std and the
    Student-t 95% interval of the mean (``metrics.seed_summary``); for ``metrics`` also the mean
    of the per-run bootstrap bounds (boot_ci_low_mean, boot_ci_high_mean).
    """
    if table not in SEED_TABLES:
        raise ValueError(f"table {table!r} is not one of {tuple(SEED_TABLES)}")
    paths = sorted(Path(profile_dir).glob(f"*/{EVAL_DIR}/{table}.csv"))
    if not paths:
        raise FileNotFoundError(f"no */{EVAL_DIR}/{table}.csv under {profile_dir}")
    frames = []
    for path in paths:
        df = pd.read_csv(path)
        if table == "calibration":
            df = df.melt(id_vars="stage", var_name="metric", value_name="value")
        frames.append(df.assign(model=model_name(path.parents[1].name)))
    keys = ["model", *SEED_TABLES[table]]
    rows = []
    for key, group in pd.concat(frames, ignore_index=True).groupby(keys, sort=False):
        s = M.seed_summary(group["value"])
        row = {**dict(zip(keys, key, strict=True)), "n_seeds": s["n"], "mean": s["mean"], "std": s["std"],
               "ci_low": s["ci_low"], "ci_high": s["ci_high"]}
        if "ci_low" in group:
            row |= {"boot_ci_low_mean": group["ci_low"].mean(), "boot_ci_high_mean": group["ci_high"].mean()}
        rows.append(row)
    return pd.DataFrame(rows)
