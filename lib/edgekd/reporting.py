"""Figures and tables shared by the notebooks and the paper (no pyplot state; Figures are returned).

The aggregate stage (:func:`aggregate`) reads every evaluated run of a profile and writes tidy,
numeric CSVs, PNG figures and ``numbers.json`` (keys documented in :data:`NUMBERS`). Runs flagged
by the collapse guard (``metrics.json["collapsed"]``) are listed in ``excluded_runs.csv`` with their
reason and enter no mean, comparison, selection, front or figure. Across-seed intervals are
Student-t intervals of the mean, clipped to the metric's range (``clipped`` says where).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from edgekd import data as D
from edgekd import info, provenance
from edgekd import metrics as M
from edgekd.evaluation import model_name
from edgekd.files import clear_results


def montage(arrays: D.DermaArrays, per_class: int = 6, split: str = "train", seed: int = 0) -> Figure:
    """A grid of ``per_class`` random images of each class from ``split``."""
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(per_class * 1.1, info.NUM_CLASSES * 1.15))
    axes = fig.subplots(info.NUM_CLASSES, per_class, squeeze=False)
    for c, name in enumerate(info.CLASS_NAMES):
        idx = np.flatnonzero(arrays.labels[split] == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for j, ax in enumerate(axes[c]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(pick):
                ax.imshow(arrays.images[split][pick[j]])
        axes[c][0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle(f"DermaMNIST {split} images at {arrays.size} px")
    fig.tight_layout()
    return fig


def data_summary(cfg: D.DataConfig, arrays: D.DermaArrays, out_dir: Path) -> dict:
    """Counts, leakage report (when lesion ids are known) and a montage, written to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = arrays.counts()
    counts["total"] = counts.sum(axis=1)
    counts.to_csv(out_dir / "counts.csv", index_label="split")
    result: dict = {"counts": counts}
    if arrays.lesion_ids:
        leakage = D.leakage_report(D.split_table(arrays))
        leakage.to_csv(out_dir / "leakage.csv", index=False)
        result["leakage"] = leakage
    fig = montage(arrays)
    fig.savefig(out_dir / "montage.png", dpi=110)
    result["montage"] = fig
    return result


# ----------------------------------------------------------------------------- run identity

HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auc")
#: Metrics whose values lie in [0, 1]: their across-seed intervals are clipped to it.
BOUNDED: frozenset[str] = frozenset({*HEADLINE_METRICS, "ece", "ece_adaptive", "mce", "aurc"})
#: Name of the no-distillation KD setting every KD setting is paired with.
BASELINE: str = "nokd"
#: Folder-name marker of runs trained and tested on the lesion-grouped split.
LESION_MARK: str = "lesion"
ARCH_LABELS: dict[str, str] = {"resnet50": "ResNet-50", "resnet18": "ResNet-18", "mobilenetv2_100": "MobileNetV2",
                               "efficientnet_b0": "EfficientNet-B0"}
#: INT8 target: ORT INT8 at least this many times faster than ORT FP32 (batch 1, trained size) ...
INT8_SPEEDUP_TARGET: float = 2.0
#: ... with test macro-F1 no more than this much below FP32.
INT8_DELTA_F1_TARGET: float = -0.01


def model_label(role: str, arch: str, setting: str, split: str) -> str:
    """Human name of a model: ``ResNet-50 teacher``, ``ResNet-18 · no KD``, ``ResNet-18 · dkd (lesion split)``."""
    name = ARCH_LABELS.get(arch, arch)
    if role == "teacher":
        text = f"{name} teacher" + (f" ({setting})" if setting else "")
    else:
        text = f"{name} · " + ("no KD" if setting == BASELINE else setting)
    return text + (" (lesion split)" if split == LESION_MARK else "")


def run_identity(run: Path) -> dict:
    """Who a run is, from ``run_config.json`` (arch, seed, KD mode, split) and ``metrics.json`` (collapse),
    with the KD setting name taken from the folder (``student-<arch>-<setting>[-lesion]-s<seed>``)."""
    run = Path(run)
    cfg = json.loads((run / "run_config.json").read_text())
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    arch, seed = cfg["arch"], int(cfg["seed"])
    split = cfg["data"].get("split", "official")
    kd = cfg.get("kd")
    role = "student" if kd else "teacher"
    stem, suffix = f"{role}-{arch}", f"-s{seed}"
    if not (run.name.startswith(stem) and run.name.endswith(suffix)):
        raise ValueError(f"{run.name}: folder name does not match its run_config ({role}, {arch}, seed {seed})")
    parts = [p for p in run.name[len(stem) : len(run.name) - len(suffix)].split("-") if p]
    if split == LESION_MARK:
        if parts[-1:] != [LESION_MARK]:
            raise ValueError(f"{run.name}: a lesion-split run's folder needs '-{LESION_MARK}' before '{suffix}'")
        parts = parts[:-1]
    setting = "-".join(parts)
    if role == "student" and not setting:
        raise ValueError(f"{run.name}: a student folder names its KD setting (student-<arch>-<setting>-s<seed>)")
    collapsed = metrics.get("collapsed") or None
    return {
        "run_id": run.name, "model": model_name(run.name), "label": model_label(role, arch, setting, split),
        "role": role, "arch": arch, "setting": setting, "seed": seed, "split": split,
        "kd_mode": (kd or {}).get("mode", "teacher"), "standardize": bool((kd or {}).get("standardize", False)),
        "tta_views": int(metrics.get("tta_views", 1)), "collapsed": collapsed, "valid": collapsed is None,
        "path": run,
    }


def discover(profile_dir: Path) -> pd.DataFrame:
    """Evaluated runs of a profile, one row per run (:func:`run_identity`), teachers first."""
    rows = [run_identity(p.parent) for p in sorted(Path(profile_dir).glob("*/run_config.json"))
            if (p.parent / "eval" / "metrics.csv").exists()]  # only evaluated runs are aggregated
    if not rows:
        raise FileNotFoundError(f"no evaluated runs under {profile_dir} (run the evaluate stage first)")
    runs = pd.DataFrame(rows)
    rank = {"role": {"teacher": 0, "student": 1}, "split": {LESION_MARK: 1}}
    return runs.sort_values(["split", "role", "arch", "setting", "seed"],
                            key=lambda col: col.map(rank[col.name]).fillna(0) if col.name in rank else col
                            ).reset_index(drop=True)


def excluded_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs flagged by the collapse guard, with their reason."""
    bad = runs[~runs["valid"]]
    return bad[["run_id", "label", "seed", "collapsed"]].rename(columns={"collapsed": "reason"}).reset_index(drop=True)


# ----------------------------------------------------------------------------- across seeds


def seed_interval(values: Sequence[float], bounds: tuple[float, float] | None = None) -> dict:
    """Mean, sample std and t-interval across seeds (:func:`metrics.seed_summary`), clipped to ``bounds``."""
    s = M.seed_summary(values)
    low, high, clipped = s["ci_low"], s["ci_high"], False
    if bounds is not None and np.isfinite(low):
        clipped = bool(low < bounds[0] or high > bounds[1])
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"n_seeds": s["n"], "mean": s["mean"], "std": s["std"], "ci_low": low, "ci_high": high, "clipped": clipped}


def t_interval(values: Sequence[float], bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float]:
    """The across-seed t-interval of ``values`` clipped to ``bounds`` (the mean twice for one value): a seaborn
    ``errorbar``."""
    s = M.seed_summary(values)
    if s["n"] < 2:
        return s["mean"], s["mean"]
    return max(s["ci_low"], bounds[0]), min(s["ci_high"], bounds[1])


def unit_interval(values: Sequence[float]) -> tuple[float, float]:
    """:func:`t_interval` clipped to [0, 1], for metrics bounded there."""
    return t_interval(values, (0.0, 1.0))


def delta_interval(values: Sequence[float]) -> tuple[float, float]:
    """:func:`t_interval` clipped to [−1, 1], for differences of metrics bounded in [0, 1]."""
    return t_interval(values, (-1.0, 1.0))


def _bounds(metric: str, delta: bool = False) -> tuple[float, float] | None:
    if metric not in BOUNDED:
        return None
    return (-1.0, 1.0) if delta else (0.0, 1.0)


def _having(runs: pd.DataFrame, relative: str) -> pd.DataFrame:
    """The runs whose folder holds ``relative`` (a stage output some runs lack)."""
    return runs[[(Path(p) / relative).exists() for p in runs["path"]]]


def _eval_table(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """``eval/<name>.csv`` of every run, with the run's identity columns (those the table lacks)."""
    ident = ("run_id", "model", "label", "role", "arch", "setting", "split", "seed")
    frames = []
    for r in runs.itertuples():
        df = pd.read_csv(r.path / "eval" / f"{name}.csv")
        frames.append(df.assign(**{k: getattr(r, k) for k in ident if k not in df.columns}))
    return pd.concat(frames, ignore_index=True)


def seed_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and test metric: across-seed mean, std, clipped t-interval, and the mean bootstrap bounds."""
    df = _eval_table(runs, "metrics")
    rows = []
    for (model, label, metric), g in df.groupby(["model", "label", "metric"], sort=False):
        rows.append({"model": model, "label": label, "metric": metric, **seed_interval(g["value"], _bounds(metric)),
                     "boot_ci_low_mean": g["ci_low"].mean(), "boot_ci_high_mean": g["ci_high"].mean()})
    return pd.DataFrame(rows)


def performance_table(runs: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """Models x headline metrics (wide, numeric): ``<metric>``, ``<metric>_low``, ``<metric>_high``."""
    first = runs.drop_duplicates("model").set_index("model")
    rows = []
    for model, g in seeds.groupby("model", sort=False):
        g = g.set_index("metric")
        row = {"model": model, "label": first.loc[model, "label"], "role": first.loc[model, "role"],
               "split": first.loc[model, "split"], "seeds": int(g["n_seeds"].iloc[0])}
        for m in HEADLINE_METRICS:
            row |= {m: g.loc[m, "mean"], f"{m}_low": g.loc[m, "ci_low"], f"{m}_high": g.loc[m, "ci_high"]}
        row |= {"macro_f1_boot_low": g.loc["macro_f1", "boot_ci_low_mean"],
                "macro_f1_boot_high": g.loc["macro_f1", "boot_ci_high_mean"]}
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- KD against no KD

PAIRED_METRICS: tuple[str, ...] = ("macro_f1", "balanced_accuracy", "accuracy")


def _test_predictions(run: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(run) / "predictions.npz") as z:
        return z["test_labels"], z["test_logits"].argmax(1)


def _metric_values(run: Path) -> dict[str, float]:
    df = pd.read_csv(Path(run) / "eval" / "metrics.csv")
    return dict(zip(df["metric"], df["value"], strict=True))


def paired_kd(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each KD setting against the no-KD baseline of the same student arch, split and seed.

    Returns the per-seed deltas (KD − no KD) and, per arch, split and setting: the mean delta with
    its t-interval across seeds (clipped to [−1, 1]), and McNemar's test on the discordant counts
    pooled over seeds (b: only no-KD correct, c: only KD correct). Pairs with a collapsed member
    are dropped and counted in ``pairs_dropped``.
    """
    students = runs[runs["role"] == "student"]
    per_seed, rows = [], []
    for (arch, split), g in students.groupby(["arch", "split"], sort=False):
        base = g[g["setting"] == BASELINE].set_index("seed")
        for setting, gk in g[g["setting"] != BASELINE].groupby("setting", sort=False):
            pairs = [(r, base.loc[r.seed]) for r in gk.itertuples() if r.seed in base.index]
            kept = [(r, b) for r, b in pairs if r.valid and b["valid"]]
            if not kept:
                continue
            ys, pred_base, pred_kd = [], [], []
            for r, b in kept:
                mine, theirs = _metric_values(r.path), _metric_values(b["path"])
                per_seed.append({"arch": arch, "split": split, "setting": setting, "kd_mode": r.kd_mode,
                                 "student": ARCH_LABELS.get(arch, arch), "seed": r.seed,
                                 **{f"d_{m}": mine[m] - theirs[m] for m in PAIRED_METRICS}})
                y, pk = _test_predictions(r.path)
                yb, pb = _test_predictions(b["path"])
                if not np.array_equal(y, yb):
                    raise ValueError(f"{r.run_id} and {b['run_id']} were not tested on the same images")
                ys.append(y), pred_kd.append(pk), pred_base.append(pb)
            seeds = pd.DataFrame(per_seed[-len(kept):])
            row = {"arch": arch, "student": ARCH_LABELS.get(arch, arch), "split": split, "setting": setting,
                   "kd_mode": kept[0][0].kd_mode, "standardize": kept[0][0].standardize, "pairs": len(kept),
                   "pairs_dropped": len(pairs) - len(kept)}
            for m in PAIRED_METRICS:
                s = seed_interval(seeds[f"d_{m}"], _bounds(m, delta=True))
                row |= {f"d_{m}": s["mean"], f"d_{m}_low": s["ci_low"], f"d_{m}_high": s["ci_high"]}
            mc = M.mcnemar(np.concatenate(ys), np.concatenate(pred_base), np.concatenate(pred_kd))
            row |= {"b": mc["b"], "c": mc["c"], "mcnemar_p": mc["p_value"], "mcnemar_method": mc["method"]}
            rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(per_seed)


def paired_kd_figure(per_seed: pd.DataFrame) -> Figure:
    """Paired Δ (KD − no KD) per student and KD setting: mean with its t-interval across seeds, seeds as dots."""
    import seaborn as sns

    hue_order = list(dict.fromkeys(per_seed["setting"]))
    fig = Figure(figsize=(9, 1.2 + 0.55 * per_seed["student"].nunique() * max(1, len(hue_order)) ** 0.5),
                 layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(1, 2, sharey=True)
    dodge = 0.8 * (1 - 1 / len(hue_order))  # the point ranges sit on the per-seed dots (stripplot's dodge)
    titles = {"d_macro_f1": "Δ macro-F1 (KD − no KD)", "d_balanced_accuracy": "Δ balanced accuracy (KD − no KD)"}
    for ax, (col, title) in zip(axes, titles.items(), strict=True):
        ax.axvline(0, color="black", lw=0.8)
        sns.stripplot(per_seed, x=col, y="student", hue="setting", hue_order=hue_order, dodge=True, ax=ax,
                      palette="colorblind", alpha=0.35, size=4, legend=False, jitter=False)
        sns.pointplot(per_seed, x=col, y="student", hue="setting", hue_order=hue_order, dodge=dodge, ax=ax,
                      palette="colorblind", errorbar=delta_interval, linestyle="none", markers="D", capsize=0.15,
                      err_kws={"linewidth": 1.4})
        ax.set(xlabel=title, ylabel="")
    axes[0].get_legend().remove()
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), title="KD setting", frameon=False)
    return fig


def kd_hyperparameters(kd: dict) -> str:
    """The weights of a KD setting in words (only those its mode uses)."""
    mode = kd["mode"]
    if mode == "none":
        return "—"
    parts = [f"α {kd['alpha']:g}"]
    if mode == "hinton":
        parts.append(f"T {kd['temperature']:g}")
    elif mode == "dkd":
        parts += [f"T {kd['temperature']:g}", f"DKD α {kd['dkd_alpha']:g}", f"DKD β {kd['dkd_beta']:g}"]
    elif mode == "dist":
        parts += [f"T {kd['temperature']:g}", f"DIST β {kd['dist_beta']:g}", f"γ {kd['dist_gamma']:g}"]
    if kd.get("beta"):
        parts.append(f"AT β {kd['beta']:g}")
    if kd.get("standardize"):
        parts.append("logits standardised")
    return ", ".join(parts)


def ablation_table(runs: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """KD settings of the student arch with the most settings (official split), each paired against no KD."""
    if paired.empty:
        return pd.DataFrame()
    official = paired[paired["split"] != LESION_MARK]
    counts = official.groupby("arch", sort=False)["setting"].nunique()
    if counts.empty or counts.max() < 2:
        return pd.DataFrame()
    arch = counts.idxmax()
    table = official[official["arch"] == arch].copy()
    cfg = {r.setting: json.loads((r.path / "run_config.json").read_text())["kd"]
           for r in runs[(runs["arch"] == arch) & (runs["role"] == "student")].itertuples()}
    table.insert(4, "weights", [kd_hyperparameters(cfg[s]) for s in table["setting"]])
    return table.reset_index(drop=True)


def split_comparison(runs: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """The same model (role, arch, setting) trained and tested on the official and on the lesion split."""
    first = runs.drop_duplicates("model")
    lesion = first[first["split"] == LESION_MARK]
    rows = []
    for r in lesion.itertuples():
        match = first[(first["split"] != LESION_MARK) & (first["role"] == r.role) & (first["arch"] == r.arch)
                      & (first["setting"] == r.setting)]
        if match.empty:
            continue
        off = match.iloc[0]
        row = {"label": off["label"], "role": r.role}
        for key, model in (("official", off["model"]), ("lesion", r.model)):
            g = seeds[seeds["model"] == model].set_index("metric")
            row[f"{key}_seeds"] = int(g["n_seeds"].iloc[0])
            for m in ("accuracy", "macro_f1"):
                row |= {f"{key}_{m}": g.loc[m, "mean"], f"{key}_{m}_low": g.loc[m, "ci_low"],
                        f"{key}_{m}_high": g.loc[m, "ci_high"]}
        for m in ("accuracy", "macro_f1"):
            row[f"delta_{m}"] = row[f"lesion_{m}"] - row[f"official_{m}"]
        rows.append(row)
    return pd.DataFrame(rows)


def external_summary(runs: pd.DataFrame) -> tuple[pd.DataFrame, Figure] | None:
    """In-distribution against external test sets (``eval/external/<name>/metrics.csv``), across seeds."""
    frames = []
    for r in runs.itertuples():
        external = sorted((r.path / "eval" / "external").glob("*/metrics.csv"))
        if external:  # each external set, and the run's own test set beside it
            for path, name in [(r.path / "eval" / "metrics.csv", "in-distribution"),
                               *((p, p.parent.name) for p in external)]:
                frames.append(pd.read_csv(path).assign(test_set=name, model=r.model, label=r.label, seed=r.seed))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    df = df[df["metric"].isin(["accuracy", "balanced_accuracy", "macro_f1"])]
    rows = []
    for (model, label, test_set, metric), g in df.groupby(["model", "label", "test_set", "metric"], sort=False):
        rows.append({"model": model, "label": label, "test_set": test_set, "metric": metric,
                     **seed_interval(g["value"], _bounds(metric)),
                     "boot_ci_low_mean": g["ci_low"].mean(), "boot_ci_high_mean": g["ci_high"].mean()})
    table = pd.DataFrame(rows)
    return table, external_gap_figure(df[df["metric"] == "macro_f1"])


def external_gap_figure(per_seed: pd.DataFrame) -> Figure:
    """Macro-F1 per model on the in-distribution test set and each external set (mean, t-interval over seeds)."""
    import seaborn as sns

    fig = Figure(figsize=(8, 1.5 + 0.45 * per_seed["label"].nunique()), layout="constrained")
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    sns.pointplot(per_seed, x="value", y="label", hue="test_set", errorbar=unit_interval, dodge=0.4, linestyle="none",
                  palette="colorblind", capsize=0.15, ax=ax)
    ax.set(xlabel="test macro-F1", ylabel="", xlim=(0, 1))
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title="test set", frameon=False)
    return fig


# ----------------------------------------------------------------------------- calibration, classes, curves


def calibration_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and stage (before / after temperature scaling): NLL, Brier, ECE, adaptive ECE, MCE, T (seed means)."""
    df = _eval_table(runs, "calibration")
    cols = ["nll", "brier", "ece", "ece_adaptive", "mce", "temperature"]
    return df.groupby(["model", "label", "stage"], sort=False)[cols].mean().reset_index()


def operating_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Test-set operating points (fitted on val) averaged across seeds per model and rule."""
    df = _eval_table(runs, "operating_points")
    cols = ["accuracy", "balanced_accuracy", "macro_f1", "mel_sensitivity", "mel_specificity", "changed_fraction"]
    return df[df["split"] == "test"].groupby(["model", "label", "rule"], sort=False)[cols].mean().reset_index()


def _most(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows with the largest ``column`` (seeds, pairs): a one-seed ablation is not ranked against 3-seed means."""
    return rows[rows[column] == rows[column].max()]


def best_teacher(perf: pd.DataFrame) -> pd.Series | None:
    """The official-split teacher with the highest mean test macro-F1."""
    teachers = perf[(perf["role"] == "teacher") & (perf["split"] != LESION_MARK)]
    return None if teachers.empty else teachers.loc[teachers["macro_f1"].idxmax()]


def best_student(perf: pd.DataFrame, distilled: bool = False) -> pd.Series | None:
    """The official-split student with the highest mean test macro-F1 (the selection metric), among those
    run with the most seeds; with ``distilled``, among the KD settings only (not the no-KD baselines)."""
    students = perf[(perf["role"] == "student") & (perf["split"] != LESION_MARK)]
    if distilled:
        students = students[~students["model"].str.endswith(f"-{BASELINE}")]
    students = _most(students, "seeds")
    return None if students.empty else students.loc[students["macro_f1"].idxmax()]


#: The study's targets (3-seed means on the official test set), set before the runs: name -> (threshold, what).
TARGETS: dict[str, tuple[float, str]] = {
    "teacher_accuracy": (0.80, "teacher accuracy"),
    "teacher_macro_f1": (0.62, "teacher macro-F1"),
    "every_student_macro_f1": (0.55, "every student's macro-F1 (its lowest model)"),
    "distilled_accuracy": (0.80, "best distilled student's accuracy"),
    "distilled_macro_f1": (0.62, "best distilled student's macro-F1"),
    "kd_students_above_zero": (2 / 3, "students whose paired Δ macro-F1 interval (KD − no KD) lies above 0, "
                                      "under the best KD setting"),
}


def targets_table(perf: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Each of :data:`TARGETS` against what the runs reached: value, the model or setting it belongs to, met.

    The KD row's value is the share of student archs whose interval lies above 0 under the KD setting with
    the most such archs (ties: the larger mean Δ); ``count`` and ``of`` give the numbers behind it."""
    rows: list[dict] = []

    def add(name: str, value: float | None, who: str | None, **extra) -> None:
        threshold, what = TARGETS[name]
        met = value is not None and np.isfinite(value) and value >= threshold - 1e-12
        rows.append({"target": name, "what": what, "threshold": threshold, "value": value, "model": who,
                     "met": bool(met), **extra})

    def add_model(name: str, model: pd.Series | None, metric: str) -> None:
        add(name, None if model is None else model[metric], None if model is None else model["label"])

    students = perf[(perf["role"] == "student") & (perf["split"] != LESION_MARK)]
    teacher, best = best_teacher(perf), best_student(perf, distilled=True)
    add_model("teacher_accuracy", teacher, "accuracy")
    add_model("teacher_macro_f1", teacher, "macro_f1")
    add_model("every_student_macro_f1", None if students.empty else students.loc[students["macro_f1"].idxmin()], "macro_f1")
    add_model("distilled_accuracy", best, "accuracy")
    add_model("distilled_macro_f1", best, "macro_f1")
    kd = paired[paired["split"] != LESION_MARK] if len(paired) else paired
    if len(kd):
        archs = kd["arch"].nunique()
        by = (kd.assign(above=kd["d_macro_f1_low"] > 0).groupby("setting", sort=False)
              .agg(count=("above", "sum"), mean=("d_macro_f1", "mean")).sort_values(["count", "mean"], ascending=False))
        setting, top = by.index[0], by.iloc[0]
        add("kd_students_above_zero", int(top["count"]) / archs, setting, count=int(top["count"]), of=archs)
    else:
        add("kd_students_above_zero", None, None, count=0, of=0)
    return pd.DataFrame(rows)


def per_class_figure(runs: pd.DataFrame, models: list[str]) -> tuple[pd.DataFrame, Figure]:
    """Per-class test F1 of ``models``: bars are seed means, error bars the t-interval across seeds."""
    import seaborn as sns

    df = _eval_table(runs[runs["model"].isin(models)], "per_class")
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    order = [runs[runs["model"] == m]["label"].iloc[0] for m in models]
    sns.barplot(df, x="class", y="f1", hue="label", hue_order=order, order=list(info.CLASS_NAMES),
                errorbar=unit_interval, capsize=0.1, palette="colorblind", err_kws={"linewidth": 1}, ax=ax)
    ax.set(xlabel="", ylabel="test F1", ylim=(0, 1))
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False, fontsize=8)
    table = df.groupby(["model", "label", "class"], sort=False)[["precision", "recall", "f1"]].mean().reset_index()
    return table, fig


def per_class_delta_figure(runs: pd.DataFrame) -> tuple[pd.DataFrame, Figure]:
    """Per-class ΔF1 (student − teacher) of each official-split student: seed means with t-interval bars."""
    import seaborn as sns

    students = _having(runs[(runs["role"] == "student") & (runs["split"] != LESION_MARK)], "eval/teacher_vs_student.csv")
    df = _eval_table(students, "teacher_vs_student")
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    sns.barplot(df, x="class", y="delta_f1", hue="label", order=list(info.CLASS_NAMES), errorbar=delta_interval,
                capsize=0.1, palette="colorblind", err_kws={"linewidth": 1}, ax=ax)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="", ylabel="ΔF1 (student − teacher)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False, fontsize=8)
    table = df.groupby(["model", "label", "class"], sort=False)[["delta_f1", "delta_recall"]].mean().reset_index()
    return table, fig


def confusion_figure(runs: pd.DataFrame, models: list[str]) -> Figure:
    """Row-normalised test confusion matrices (mean over seeds) of ``models`` as heatmaps."""
    import seaborn as sns

    fig = Figure(figsize=(4.2 * len(models), 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models)))
    for ax, model in zip(axes, models, strict=True):
        g = runs[runs["model"] == model]
        cm = sum(pd.read_csv(p / "eval" / "confusion_normalised.csv", index_col=0) for p in g["path"]) / len(g)
        sns.heatmap(cm, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False, square=True, ax=ax,
                    annot_kws={"fontsize": 7})
        ax.set(title=g["label"].iloc[0], xlabel="predicted", ylabel="true")
    return fig


def training_curves_figure(runs: pd.DataFrame) -> Figure:
    """Train loss and val macro-F1 per epoch: seed mean with a t-interval band, one line per model."""
    import seaborn as sns

    hist = pd.concat(pd.read_csv(r.path / "history.csv").assign(label=r.label, seed=r.seed) for r in runs.itertuples())
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    with sns.axes_style("whitegrid"):
        ax1, ax2 = fig.subplots(1, 2)
    for ax, col, name, band in ((ax1, "train_loss", "train loss", t_interval),
                                (ax2, "val_macro_f1", "val macro-F1", unit_interval)):
        sns.lineplot(hist, x="epoch", y=col, hue="label", errorbar=band, marker=".", palette="tab10", ax=ax,
                     legend=ax is ax2)
        ax.set(xlabel="epoch", ylabel=f"{name} (mean over seeds)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sns.move_legend(ax2, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False, fontsize=8)
    return fig


def reliability_grid(runs: pd.DataFrame) -> Figure:
    """Reliability curves (first seed of each model), before and after temperature scaling."""
    first = runs.sort_values("seed").drop_duplicates("model")
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for r in first.itertuples():
        rel = pd.read_csv(r.path / "eval" / "reliability.csv")
        for ax, stage in zip(axes, ("before", "after"), strict=True):
            d = rel[(rel["stage"] == stage) & (rel["count"] > 0)]
            ax.plot(d["confidence"], d["accuracy"], marker=".", label=r.label)
    for ax, stage in zip(axes, ("before", "after"), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        ax.set(xlabel="confidence", title=f"{stage} temperature scaling", xlim=(0, 1), ylim=(0, 1))
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


# ----------------------------------------------------------------------------- Grad-CAM


def cam_layer(model, size: int, min_side: int = 4) -> tuple[str, int]:
    """The deepest feature stage (timm ``feature_info`` module name) whose map is at least ``min_side`` wide."""
    import torch

    with torch.no_grad():
        maps = model.forward_intermediates(torch.zeros(1, 3, size, size), indices=list(range(len(model.feature_info))),
                                           intermediates_only=True)
    sides = [int(m.shape[-1]) for m in maps]
    idx = max((i for i, s in enumerate(sides) if s >= min_side), default=0)
    return model.feature_info[idx]["module"], sides[idx]


def panel_models(runs: pd.DataFrame, perf: pd.DataFrame) -> list[str]:
    """Models shown side by side: the teachers, then per student arch its no-KD baseline and best KD setting
    (official split)."""
    official = perf[perf["split"] != LESION_MARK]
    chosen = list(official[official["role"] == "teacher"]["model"])
    students = runs[(runs["role"] == "student") & (runs["split"] != LESION_MARK)].drop_duplicates("model")
    for _, g in students.groupby("arch", sort=False):
        scores = official.set_index("model")["macro_f1"].reindex(g["model"])
        base = g[g["setting"] == BASELINE]["model"]
        kd = scores.drop(base, errors="ignore").dropna()
        chosen += list(base) + ([kd.idxmax()] if len(kd) else [])
    return chosen


def gradcam_panels(runs: pd.DataFrame, models: list[str], n_images: int = 4) -> tuple[Figure, pd.DataFrame]:
    """Grad-CAM (``pytorch_grad_cam``) of each model's first seed for the true class of a few test images.

    Each map is computed at the deepest stage with a map of at least 4x4 (a 1x1 map has no spatial
    content) and min-max scaled per image by the package before it is laid over the image.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from edgekd.inference import load_run

    first = runs[runs["model"].isin(models)].sort_values("seed").drop_duplicates("model").set_index("model").loc[models]
    cfg = json.loads((first["path"].iloc[0] / "run_config.json").read_text())
    arrays = D.load(D.DataConfig(**cfg["data"]))
    y = arrays.labels["test"]
    classes = [c for c in (info.MELANOMA, info.CLASS_NAMES.index("bcc"), info.CLASS_NAMES.index("bkl"),
                           info.CLASS_NAMES.index("nv")) if (y == c).any()][:n_images]
    pick = [int(np.flatnonzero(y == c)[0]) for c in classes]
    images = arrays.images["test"][pick]
    x = D.normalise(images)
    fig = Figure(figsize=(1.25 * (len(first) + 1), 1.35 * len(pick) + 0.5), layout="constrained")
    axes = fig.subplots(len(pick), len(first) + 1, squeeze=False)
    for i, img in enumerate(images):
        axes[i][0].imshow(img)
        axes[i][0].set_ylabel(info.CLASS_NAMES[y[pick[i]]], fontsize=8)
    axes[0][0].set_title("image", fontsize=7)
    layers = []
    for j, (model, r) in enumerate(first.iterrows(), start=1):
        net = load_run(r["path"]).model
        layer, side = cam_layer(net, images.shape[1])
        layers.append({"model": model, "label": r["label"], "layer": layer, "map_side": side})
        with GradCAM(model=net, target_layers=[net.get_submodule(layer)]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(y[k])) for k in pick])
        for i in range(len(pick)):
            axes[i][j].imshow(show_cam_on_image(images[i].astype(np.float32) / 255, maps[i], use_rgb=True,
                                                image_weight=0.5))
        axes[0][j].set_title(r["label"].replace(" · ", "\n"), fontsize=6)
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, pd.DataFrame(layers)


# ----------------------------------------------------------------------------- robustness


def robustness_summary(runs: pd.DataFrame) -> tuple[pd.DataFrame, Figure] | None:
    """Per model and suite: accuracy vs severity level averaged over corruptions and seeds."""
    frames = [pd.read_csv(r.path / "robustness" / "corruptions.csv").assign(model=r.model, label=r.label)
              for r in runs.itertuples() if (r.path / "robustness" / "corruptions.csv").exists()]
    if not frames:
        return None
    df = pd.concat(frames)
    level = "level" if "level" in df.columns else "severity"
    curves = df.groupby(["suite", "label", level], sort=False)[["accuracy", "macro_f1", "balanced_error"]].mean().reset_index()
    suites = list(dict.fromkeys(curves["suite"]))
    fig = Figure(figsize=(5 * len(suites), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(suites)))
    for ax, suite in zip(axes, suites, strict=True):
        for label, g in curves[curves["suite"] == suite].groupby("label", sort=False):
            ax.plot(g[level], g["accuracy"], marker="o", label=label)
        ax.set(title=f"{suite} suite", xlabel="severity level (0 = clean)", ylabel="accuracy")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    corrupted = df[df[level] > 0]
    keys = ["model", "label", "suite"]
    table = corrupted.groupby(keys, sort=False)[["accuracy", "macro_f1", "balanced_error"]].mean().reset_index()
    clean = df[df[level] == 0].groupby(keys, sort=False).agg(clean_accuracy=("accuracy", "mean"), images=("n", "max"))
    return table.join(clean, on=keys), fig


def be_rbe_summary(runs: pd.DataFrame) -> pd.DataFrame | None:
    """MedMNIST-C balanced error, BE and rBE (the ``mean`` row of each run): seed mean with a t-interval.

    Bootstrap bounds the stage writes (``<col>_ci_low`` / ``<col>_ci_high``) are averaged over seeds;
    ``note`` says which corruptions the mean covers (some need larger images).
    """
    frames = []
    for r in runs.itertuples():
        path = r.path / "robustness" / "medmnistc_be_rbe.csv"
        if path.exists():
            df = pd.read_csv(path)
            mean = df[df["corruption"] == "mean"]
            missing = {"balanced_error", "be", "rbe"} - set(df.columns)
            if len(mean) != 1 or missing:
                raise ValueError(f"{path} needs one 'mean' row and columns balanced_error, be, rbe (missing {sorted(missing)})")
            note = next(iter(df["note"].dropna()), "") if "note" in df else ""
            frames.append(mean.assign(model=r.model, label=r.label, note=note))
    if not frames:
        return None
    df = pd.concat(frames)
    rows = []
    for (model, label), g in df.groupby(["model", "label"], sort=False):
        row = {"model": model, "label": label, "seeds": len(g), "note": g["note"].iloc[0]}
        for col in ("balanced_error", "be", "rbe"):
            s = seed_interval(g[col], (0.0, 1.0) if col == "balanced_error" else None)
            row |= {col: s["mean"], f"{col}_low": s["ci_low"], f"{col}_high": s["ci_high"]}
            if f"{col}_ci_low" in g:
                row |= {f"{col}_boot_low": g[f"{col}_ci_low"].mean(), f"{col}_boot_high": g[f"{col}_ci_high"].mean()}
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- efficiency


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


def int8_reason(cpu: dict) -> str:
    """Why ORT INT8 may miss the speed-up target on this CPU, and what would help."""
    if not cpu["int8_instructions"]:
        return (f"this CPU ({cpu['cpu']}, {cpu['simd']}) has no VNNI or AMX-INT8 instructions, so ONNX Runtime's "
                "INT8 convolutions widen to 16 bits and gain little over FP32; a CPU with VNNI, per-channel weight "
                "scales, QDQ placement that keeps whole blocks in INT8 and operator fusion would help")
    return (f"this CPU ({cpu['cpu']}) has {cpu['int8_instructions']}, but at small inputs the quantise/dequantise "
            "nodes and unfused operators cost about as much as the 8-bit convolutions save; larger inputs, per-channel "
            "scales, QDQ placement and operator fusion would help")


def efficiency_summary(runs: pd.DataFrame) -> dict[str, pd.DataFrame | Figure] | None:
    """Model cost, the INT8 speed-up (ORT INT8 against ORT FP32 and eager FP32), backend accuracy and the Pareto front."""
    have = [r for r in runs.itertuples() if (r.path / "efficiency" / "model.csv").exists()]
    if not have:
        return None
    model = pd.concat(pd.read_csv(r.path / "efficiency" / "model.csv").assign(model=r.model, label=r.label) for r in have)
    backends = pd.concat(pd.read_csv(r.path / "efficiency" / "backends.csv").assign(model=r.model, label=r.label)
                         for r in have)
    acc = backends.groupby(["model", "label", "backend"], sort=False)[
        ["accuracy", "macro_f1", "delta_macro_f1_vs_eager", "max_abs_logit_diff_vs_eager", "file_bytes"]].mean().reset_index()
    first = model.drop_duplicates("model")
    cost = pd.DataFrame({
        "model": first["model"], "label": first["label"], "img_size": first["img_size"],
        "params_M": first["params"] / 1e6, "MMACs": first["macs"] / 1e6,
        "state_dict_MB": first["state_dict_bytes"] / 2**20, "onnx_MB": first["onnx_bytes"] / 2**20,
        "onnx_int8_MB": first["onnx_int8_bytes"] / 2**20, "peak_cpu_rss_mb": first["peak_cpu_rss_mb"],
    })
    result: dict = {"efficiency": cost.reset_index(drop=True), "backends": acc}
    lat = [pd.read_csv(r.path / "efficiency" / "latency.csv").assign(model=r.model, label=r.label)
           for r in have if (r.path / "efficiency" / "latency.csv").exists()]
    if not lat:
        return result
    lat = pd.concat(lat)
    b1 = lat[(lat["device"] == "cpu") & (lat["batch"] == 1) & (lat["size"] == lat["img_size"])]
    p50 = b1.pivot_table(index=["model", "label"], columns="backend", values="p50_ms", sort=False).reset_index()
    f1 = acc.pivot_table(index="model", columns="backend", values="macro_f1", sort=False)
    int8 = pd.DataFrame({
        "model": p50["model"], "label": p50["label"],
        "img_size": p50["model"].map(first.set_index("model")["img_size"]),
        "eager_ms": p50.get("eager"), "ort_fp32_ms": p50.get("ort_fp32"), "ort_int8_ms": p50.get("ort_int8"),
    })
    int8["speedup_vs_ort_fp32"] = int8["ort_fp32_ms"] / int8["ort_int8_ms"]
    int8["speedup_vs_eager"] = int8["eager_ms"] / int8["ort_int8_ms"]
    int8["delta_macro_f1"] = int8["model"].map(f1["ort_int8"] - f1["ort_fp32"])
    int8["target_met"] = (int8["speedup_vs_ort_fp32"] >= INT8_SPEEDUP_TARGET) & (int8["delta_macro_f1"] >= INT8_DELTA_F1_TARGET)
    result |= {"int8": int8, "latency": lat}
    pts = b1.merge(acc, on=["model", "label", "backend"], suffixes=("_latency", ""))[
        ["model", "label", "backend", "p50_ms", "p90_ms", "p99_ms", "macro_f1", "accuracy", "file_bytes"]]
    pts = pts.sort_values(["p50_ms", "macro_f1"], ascending=[True, False]).reset_index(drop=True)
    pts["pareto"] = pts["macro_f1"] > pts["macro_f1"].cummax().shift(fill_value=-np.inf)
    result |= {"pareto": pts, "pareto_fig": pareto_figure(pts)}
    return result


def pareto_figure(pts: pd.DataFrame) -> Figure:
    """Macro-F1 vs CPU p50 latency; bubble area ∝ file size; the Pareto front is joined."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    markers = dict(zip(["eager", "torchscript", "ort_fp32", "ort_int8"], "osD^", strict=True))
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(pts["label"]))}
    area = 20 + 400 * pts["file_bytes"] / pts["file_bytes"].max()
    for (label, backend), g in pts.groupby(["label", "backend"], sort=False):
        ax.scatter(g["p50_ms"], g["macro_f1"], s=area[g.index], marker=markers.get(backend, "o"),
                   color=colours[label], alpha=0.6, edgecolor="black", linewidth=0.5)
    front = pts[pts["pareto"]]
    ax.plot(front["p50_ms"], front["macro_f1"], color="black", lw=1, ls="--", label="Pareto front")
    for label, c in colours.items():
        ax.scatter([], [], color=c, label=label)
    for backend, mk in markers.items():
        ax.scatter([], [], marker=mk, color="grey", label=backend)
    ax.set_xscale("log")
    ax.set(xlabel="CPU latency p50, batch 1 (ms, log scale)", ylabel="test macro-F1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# ----------------------------------------------------------------------------- teacher and the whole stage

#: Teacher training settings listed in ``teacher_recipe.csv`` (run_config ``train`` keys).
RECIPE_KEYS: tuple[str, ...] = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "loss", "label_smoothing",
                                "balance", "augment", "crop_scale", "jitter", "ema", "tta", "stem_stride")


def teacher_recipe(runs: pd.DataFrame) -> pd.DataFrame:
    """Input size and training settings of each teacher model (its first seed's run_config)."""
    rows = []
    for r in runs[runs["role"] == "teacher"].drop_duplicates("model").itertuples():
        cfg = json.loads((r.path / "run_config.json").read_text())
        rows.append({"label": r.label, "img_size": cfg["data"]["size"], "split": r.split,
                     **{k: cfg["train"].get(k) for k in RECIPE_KEYS}, "tta_views": r.tta_views})
    return pd.DataFrame(rows)


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
    "teacher": "label of the valid official-split teacher with the highest mean test macro-F1",
    "teacher_accuracy": "its mean test accuracy",
    "teacher_macro_f1": "its mean test macro-F1",
    "teacher_tta_views": "dihedral views its test predictions average over (1 = no test-time augmentation)",
    "best_student": "label of the official-split student with the highest mean test macro-F1, among those with the most seeds",
    "best_student_model": "its model key (run folder without -s<seed>)",
    "best_student_accuracy": "its mean test accuracy",
    "best_student_macro_f1": "its mean test macro-F1",
    "best_student_macro_f1_low": "lower end of its across-seed t-interval (clipped to [0, 1])",
    "best_student_macro_f1_high": "upper end of that interval",
    "kd_comparisons": "official-split (student arch, KD setting) pairs with a valid no-KD baseline",
    "kd_positive": "of those, how many have a paired Δ macro-F1 interval above 0",
    "kd_negative": "of those, how many have a paired Δ macro-F1 interval below 0",
    "kd_best": "student and KD setting with the largest mean paired Δ macro-F1, among those with the most pairs",
    "kd_best_delta_macro_f1": "its mean paired Δ macro-F1 (KD − no KD)",
    "kd_best_delta_low": "lower end of its t-interval across seeds",
    "kd_best_delta_high": "upper end",
    "kd_best_pairs": "seeds paired in it",
    "kd_best_mcnemar_p": "McNemar p-value on its discordant counts pooled over seeds",
    "lesion_delta_macro_f1": "mean macro-F1 on the lesion split minus the official split, over the models run on both",
    "int8_models": "models with an INT8 latency measurement",
    "int8_target_met": "of those, how many meet the INT8 target (>= 2x ORT FP32 at the trained size, Δ macro-F1 >= −0.01)",
    "int8_speedup_median": "median ORT INT8 speed-up over ORT FP32 (batch 1, trained size)",
    "int8_speedup_eager_median": "median ORT INT8 speed-up over eager PyTorch FP32",
    "int8_reason": "why INT8 may miss the target on the aggregating machine, and what would help",
    "intervals_clipped": "across-seed intervals of the performance table clipped to [0, 1]",
    "targets": "number of the study's targets (TARGETS)",
    "targets_met": "of those, how many the runs meet",
}


def headline_numbers(profile: str, runs: pd.DataFrame, perf: pd.DataFrame, paired: pd.DataFrame,
                     splits: pd.DataFrame, int8: pd.DataFrame | None, clipped: int, targets: pd.DataFrame) -> dict:
    """The values of :data:`NUMBERS` (all computed, none typed)."""
    valid = runs[runs["valid"]]
    cfg = {r.role: json.loads((r.path / "run_config.json").read_text()) for r in runs[::-1].itertuples()}
    teacher, best = best_teacher(perf), best_student(perf)
    official = paired[paired["split"] != LESION_MARK] if len(paired) else paired
    most = _most(official, "pairs") if len(official) else official
    top = None if most.empty else most.loc[most["d_macro_f1"].idxmax()]
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
        "best_student": None, "best_student_model": None, "best_student_accuracy": None, "best_student_macro_f1": None,
        "best_student_macro_f1_low": None, "best_student_macro_f1_high": None,
        "kd_comparisons": len(official),
        "kd_positive": int((official["d_macro_f1_low"] > 0).sum()) if len(official) else 0,
        "kd_negative": int((official["d_macro_f1_high"] < 0).sum()) if len(official) else 0,
        "kd_best": None, "kd_best_delta_macro_f1": None, "kd_best_delta_low": None, "kd_best_delta_high": None,
        "kd_best_pairs": None, "kd_best_mcnemar_p": None,
        "lesion_delta_macro_f1": float(splits["delta_macro_f1"].mean()) if len(splits) else None,
        "int8_models": 0 if int8 is None else len(int8),
        "int8_target_met": 0 if int8 is None else int(int8["target_met"].sum()),
        "int8_speedup_median": None if int8 is None else _float(int8["speedup_vs_ort_fp32"].median()),
        "int8_speedup_eager_median": None if int8 is None else _float(int8["speedup_vs_eager"].median()),
        "int8_reason": int8_reason(cpu_int8_support()) if int8 is not None else None,
        "intervals_clipped": clipped,
        "targets": len(targets), "targets_met": int(targets["met"].sum()),
    }
    if teacher is not None:
        views = runs[runs["model"] == teacher["model"]]["tta_views"].max()
        out |= {"teacher": teacher["label"], "teacher_accuracy": _float(teacher["accuracy"]),
                "teacher_macro_f1": _float(teacher["macro_f1"]), "teacher_tta_views": int(views)}
    if best is not None:
        out |= {"best_student": best["label"], "best_student_model": best["model"],
                "best_student_accuracy": _float(best["accuracy"]), "best_student_macro_f1": _float(best["macro_f1"]),
                "best_student_macro_f1_low": _float(best["macro_f1_low"]),
                "best_student_macro_f1_high": _float(best["macro_f1_high"])}
    if top is not None:
        out |= {"kd_best": f"{top['student']} · {top['setting']}", "kd_best_delta_macro_f1": _float(top["d_macro_f1"]),
                "kd_best_delta_low": _float(top["d_macro_f1_low"]), "kd_best_delta_high": _float(top["d_macro_f1_high"]),
                "kd_best_pairs": int(top["pairs"]), "kd_best_mcnemar_p": _float(top["mcnemar_p"])}
    assert set(out) == set(NUMBERS), set(out) ^ set(NUMBERS)
    return out


def _float(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _save(obj: pd.DataFrame | Figure, out_dir: Path, name: str) -> None:
    if isinstance(obj, Figure):
        obj.savefig(out_dir / f"{name}.png", dpi=120)
    else:
        obj.to_csv(out_dir / f"{name}.csv", index=False)


#: Files a profile folder may hold for the paper beside the runs; the aggregate copies them when present.
EXTRA_FILES: dict[str, str] = {"data/counts.csv": "data_counts.csv", "data/leakage.csv": "leakage.csv",
                               "data/montage.png": "montage.png"}


def aggregate(profile_dir: Path, out_dir: Path) -> dict:
    """Paper-ready tables and figures for every evaluated run of a profile, written to ``out_dir``.

    Returns them by name (a figure's key ends in ``_fig``) with ``numbers`` (see :data:`NUMBERS`); also writes
    ``machine.json`` (:func:`edgekd.provenance.machine` of the machine the stages ran on).
    """
    profile_dir, out_dir = Path(profile_dir), Path(out_dir)
    runs = discover(profile_dir)
    clear_results(out_dir)
    valid = runs[runs["valid"]]
    res: dict = {"runs": runs.drop(columns="path"), "excluded_runs": excluded_runs(runs)}
    seeds = seed_metrics(valid) if len(valid) else pd.DataFrame(columns=["model", "label", "metric", "clipped"])
    perf = performance_table(valid, seeds) if len(valid) else pd.DataFrame(
        columns=["model", "label", "role", "split", "seeds", "accuracy", "macro_f1"])
    paired, per_seed = paired_kd(runs)
    splits = split_comparison(valid, seeds) if len(valid) else pd.DataFrame()
    res |= {"seed_metrics": seeds, "performance": perf, "targets": targets_table(perf, paired)}
    for name, table in (("paired_kd", paired), ("paired_kd_seeds", per_seed), ("kd_ablation", ablation_table(runs, paired)),
                        ("split_comparison", splits), ("teacher_recipe", teacher_recipe(runs))):
        if len(table):
            res[name] = table
    if len(per_seed) and (per_seed["split"] != LESION_MARK).any():
        res["paired_kd_fig"] = paired_kd_figure(per_seed[per_seed["split"] != LESION_MARK])
    int8 = None
    main = valid[valid["split"] != LESION_MARK]  # the lesion split has its own section
    if len(main):
        res |= {"calibration": calibration_summary(main), "operating_points": operating_summary(main),
                "reliability_fig": reliability_grid(main), "training_curves_fig": training_curves_figure(main)}
        best = best_student(perf)
        teachers = list(perf[(perf["role"] == "teacher") & (perf["split"] != LESION_MARK)]["model"])
        shown = teachers[:1] + ([best["model"]] if best is not None else [])
        if best is not None:
            arch = main[main["model"] == best["model"]]["arch"].iloc[0]
            base = main[(main["arch"] == arch) & (main["setting"] == BASELINE)]["model"]
            shown += [m for m in dict.fromkeys(base) if m not in shown]
        res["per_class"], res["per_class_fig"] = per_class_figure(main, shown)
        res["confusion_fig"] = confusion_figure(main, shown[:2])
        compared = _having(main[main["role"] == "student"], "eval/paired.csv")
        if teachers and len(compared):  # students against a usable teacher
            res["per_class_delta"], res["per_class_delta_fig"] = per_class_delta_figure(main)
            res["paired"] = _eval_table(compared, "paired").groupby(["model", "label"], sort=False)[
                ["agreement", "b", "c", "p_value", "teacher_accuracy", "student_accuracy"]].mean().reset_index()
        res["gradcam_fig"], res["gradcam_layers"] = gradcam_panels(main, panel_models(main, perf))
        external = external_summary(main)
        if external is not None:
            res["external"], res["external_gap_fig"] = external
        rob = robustness_summary(main)
        if rob is not None:
            res["robustness"], res["corruption_curves_fig"] = rob
        be = be_rbe_summary(main)
        if be is not None:
            res["be_rbe"] = be
        eff = efficiency_summary(main)
        if eff is not None:
            res |= eff
            int8 = eff.get("int8")
    for src, name in EXTRA_FILES.items():
        if (profile_dir / src).exists():
            shutil.copy(profile_dir / src, out_dir / name)
    for name, obj in res.items():
        _save(obj, out_dir, re.sub(r"_fig$", "", name))
    perf_clipped = int(seeds[seeds["metric"].isin(HEADLINE_METRICS)]["clipped"].sum()) if len(seeds) else 0
    res["numbers"] = headline_numbers(profile_dir.name, runs, perf, paired, splits, int8, perf_clipped, res["targets"])
    (out_dir / "numbers.json").write_text(json.dumps(res["numbers"], indent=2))
    (out_dir / "machine.json").write_text(json.dumps(provenance.machine(), indent=2))  # the machine the stages ran on
    return res
