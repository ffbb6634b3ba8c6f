"""The aggregate's tables (tidy, numeric): means and t-intervals across seeds, KD against no KD paired by
seed, the lesion split, external sets, calibration, operating points, robustness and efficiency.

Across-seed intervals are Student-t intervals of the mean, clipped to the metric's range (``clipped`` says where).
The performance table's headline intervals (``*_hb_*``) also cover test-set sampling: a hierarchical bootstrap
that draws seeds, then test images (:func:`hierarchical_interval`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats
from scipy.special import softmax

from edgekd.core import metrics as M
from edgekd.core import stats as ST
from edgekd.core.info import ARCH_LABELS, INT8_DELTA_F1_TARGET, INT8_SPEEDUP_TARGET, LESION_MARK
from edgekd.core.words import BASELINE, kd_weights
from edgekd.stages.figures import corruption_curves_figure, external_gap_figure, pareto_figure
from edgekd.stages.runs import eval_table

HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auc")
#: Metrics whose values lie in [0, 1]: their across-seed intervals are clipped to it.
BOUNDED: frozenset[str] = frozenset({*HEADLINE_METRICS, "ece", "ece_adaptive", "mce", "aurc"})
#: The hierarchical bootstraps (seeds, then test images) of the headline metrics and of the paired Δ macro-F1:
#: resamples and seed.
HB_RESAMPLES: int = 2000
HB_SEED: int = 0


# ----------------------------------------------------------------------------- across seeds


def seed_interval(values: Sequence[float], bounds: tuple[float, float] | None = None) -> dict:
    """Mean, sample std and t-interval across seeds (:func:`metrics.seed_summary`), clipped to ``bounds``."""
    s = M.seed_summary(values)
    low, high, clipped = s["ci_low"], s["ci_high"], False
    if bounds is not None and np.isfinite(low):
        clipped = bool(low < bounds[0] or high > bounds[1])
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"n_seeds": s["n"], "mean": s["mean"], "std": s["std"], "ci_low": low, "ci_high": high, "clipped": clipped}


def _bounds(metric: str) -> tuple[float, float] | None:
    return (0.0, 1.0) if metric in BOUNDED else None


def seed_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and test metric: across-seed mean, std, clipped t-interval, and the mean bootstrap bounds."""
    df = eval_table(runs, "metrics")
    rows = []
    for (model, label, metric), g in df.groupby(["model", "label", "metric"], sort=False):
        rows.append({"model": model, "label": label, "metric": metric, **seed_interval(g["value"], _bounds(metric)),
                     "boot_ci_low_mean": g["ci_low"].mean(), "boot_ci_high_mean": g["ci_high"].mean()})
    return pd.DataFrame(rows)


def hierarchical_interval(y: np.ndarray, probs: Sequence[np.ndarray], n_resamples: int = 2000, seed: int = 0,
                          confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile interval of each headline metric's mean over a model's seeds, from a hierarchical bootstrap.

    ``probs[i]`` are seed ``i``'s test probabilities on the images ``y``. Each resample draws the seeds with
    replacement, then the test images with replacement, once, shared by every drawn seed (they are one test set),
    and averages the drawn seeds' metrics: the interval covers training seeds and test-set sampling, as
    :func:`metrics.hierarchical_delta` does for a paired difference. With one seed it is the image bootstrap.
    """
    y = np.asarray(y)
    preds = [np.asarray(p).argmax(1) for p in probs]
    k, n = len(preds), len(y)
    rng = np.random.default_rng(seed)
    draws = {m: np.empty(n_resamples) for m in HEADLINE_METRICS}
    for r in range(n_resamples):
        seeds = rng.integers(0, k, k)
        idx = rng.integers(0, n, n)
        yy = y[idx]
        per = {s: M.count_metrics(M.confusion_counts(yy, preds[s][idx])) | {"auc": M.ovr_auc(yy, probs[s][idx])}
               for s in set(seeds.tolist())}
        for m, values in draws.items():
            values[r] = np.mean([per[s][m] for s in seeds])
    tail = (1 - confidence) / 2
    return {m: (float(np.nanquantile(v, tail)), float(np.nanquantile(v, 1 - tail))) for m, v in draws.items()}


def _test_logits(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """A run's test labels and logits (``predictions.npz``)."""
    with np.load(Path(run) / "predictions.npz") as z:
        return z["test_labels"], z["test_logits"]


def performance_table(runs: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """Models x headline metrics (wide, numeric): ``<metric>`` (mean over seeds) with ``<metric>_hb_low`` and
    ``_hb_high`` (:func:`hierarchical_interval`: seeds, then test images; the reported interval) and
    ``<metric>_low``, ``_high`` (the t-interval across seeds alone); ``init`` (scratch or the pretrained weights)
    and ``val_macro_f1`` (mean over seeds), on which models are selected."""
    first = runs.drop_duplicates("model").set_index("model")
    rows = []
    for model, g in seeds.groupby("model", sort=False):
        g = g.set_index("metric")
        row = {"model": model, "label": first.loc[model, "label"], "role": first.loc[model, "role"],
               "arch": first.loc[model, "arch"], "kd_mode": first.loc[model, "kd_mode"], "init": first.loc[model, "init"],
               "split": first.loc[model, "split"],
               "seeds": int(g["n_seeds"].iloc[0]), "val_macro_f1": runs.loc[runs["model"] == model, "val_macro_f1"].mean()}
        tested = [(y, softmax(logits.astype(float), axis=1))
                  for y, logits in map(_test_logits, runs.loc[runs["model"] == model, "path"])]
        if any(not np.array_equal(y, tested[0][0]) for y, _ in tested):
            raise ValueError(f"the seeds of {model} were not tested on the same images")
        hb = hierarchical_interval(tested[0][0], [p for _, p in tested], HB_RESAMPLES, HB_SEED)
        for m in HEADLINE_METRICS:
            row |= {m: g.loc[m, "mean"], f"{m}_hb_low": hb[m][0], f"{m}_hb_high": hb[m][1],
                    f"{m}_low": g.loc[m, "ci_low"], f"{m}_high": g.loc[m, "ci_high"]}
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- KD against no KD


PAIRED_METRICS: tuple[str, ...] = ("macro_f1", "balanced_accuracy", "accuracy")
#: The pre-declared test's columns of a paired table (:func:`edgekd.core.stats.kd_verdicts`).
VERDICT_COLUMNS: tuple[str, ...] = ("t_p", "t_p_holm", "tost_p", "tost_p_holm", "mde", "verdict", "label")
#: Calibration paired by seed: ECE before and after temperature scaling (fitted on each run's validation split).
PAIRED_CALIBRATION: tuple[str, ...] = ("ece_before", "ece_after")
#: Each arm's own calibration, averaged over the kept pairs' seeds (``<value>_kd`` and ``<value>_nokd``): what the
#: paper's calibration table shows beside the paired Δ ECE.
ARM_CALIBRATION: tuple[str, ...] = (*PAIRED_CALIBRATION, "temperature")


def _metric_values(run: Path) -> dict[str, float]:
    """The run's test metrics (``eval/metrics.csv``), its ECE before and after temperature scaling, and the
    temperature fitted on validation."""
    df = pd.read_csv(Path(run) / "eval" / "metrics.csv")
    cal = pd.read_csv(Path(run) / "eval" / "calibration.csv").set_index("stage")
    return dict(zip(df["metric"], df["value"], strict=True)) | {
        "ece_before": cal.loc["before", "ece"], "ece_after": cal.loc["after", "ece"],
        "temperature": cal.loc["after", "temperature"]}


def controls(runs: pd.DataFrame) -> list[str]:
    """The no-KD settings other than the baseline (e.g. an equal-compute ``nokd_2x``: no KD for longer)."""
    students = runs[(runs["role"] == "student") & (runs["kd_mode"] == "none")]
    return [s for s in dict.fromkeys(students["setting"]) if s != BASELINE]


def paired_kd(runs: pd.DataFrame, baseline: str = BASELINE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each KD setting (one that distils) against the no-KD setting ``baseline`` of the same student arch,
    split, input size and seed (a KD student at another size has no pair).

    Returns the per-seed deltas (KD − no KD; ECE before and after temperature scaling too) and, per arch, split and
    setting: the mean delta with its t-interval across seeds (clipped to [−1, 1]); the analysis plan's pre-declared
    verdict on Δ macro-F1 (:func:`edgekd.core.stats.family_verdicts`: the paired t across seeds and the TOST against
    ±SESOI, each Holm-adjusted over the students of one setting and split, the family; ``t_p``, ``t_p_holm``,
    ``tost_p``, ``tost_p_holm``, ``mde``, ``verdict``, ``verdict_label``); and, beside it, the hierarchical bootstrap
    interval over seeds and test images (:func:`metrics.hierarchical_delta`, ``*_hb_*``, ``hb_p``, ``hb_p_holm``),
    which also carries the test set's noise, with the seeds whose own Δ is above 0 (``seeds_positive``); and each
    arm's own ECE before and after scaling and fitted temperature, averaged over the kept seeds
    (:data:`ARM_CALIBRATION`, ``*_kd`` and ``*_nokd``). Pairs with a collapsed member are dropped and counted in
    ``pairs_dropped``.
    """
    students = runs[runs["role"] == "student"]
    per_seed, rows = [], []
    for (arch, split, _), g in students.groupby(["arch", "split", "size"], sort=False):
        base = g[g["setting"] == baseline].set_index("seed")
        for setting, gk in g[g["kd_mode"] != "none"].groupby("setting", sort=False):
            pairs = [(r, base.loc[r.seed]) for r in gk.itertuples() if r.seed in base.index]
            kept = [(r, b) for r, b in pairs if r.valid and b["valid"]]
            if not kept:
                continue
            ys, pred_base, pred_kd = [], [], []
            for r, b in kept:
                mine, theirs = _metric_values(r.path), _metric_values(b["path"])
                per_seed.append({"arch": arch, "split": split, "setting": setting, "kd_mode": r.kd_mode,
                                 "method": r.label.removeprefix(f"{ARCH_LABELS.get(arch, arch)} · "),
                                 "student": ARCH_LABELS.get(arch, arch), "seed": r.seed,
                                 **{f"d_{m}": mine[m] - theirs[m] for m in PAIRED_METRICS + PAIRED_CALIBRATION},
                                 "d_val_macro_f1": r.val_macro_f1 - b["val_macro_f1"],
                                 **{f"{m}_kd": mine[m] for m in ARM_CALIBRATION},
                                 **{f"{m}_nokd": theirs[m] for m in ARM_CALIBRATION}})
                (y, lk), (yb, lb) = _test_logits(r.path), _test_logits(b["path"])
                pk, pb = lk.argmax(1), lb.argmax(1)
                if not np.array_equal(y, yb):
                    raise ValueError(f"{r.run_id} and {b['run_id']} were not tested on the same images")
                ys.append(y), pred_kd.append(pk), pred_base.append(pb)
            seeds = pd.DataFrame(per_seed[-len(kept):])
            row = {"arch": arch, "student": ARCH_LABELS.get(arch, arch), "split": split, "setting": setting,
                   "method": seeds["method"].iloc[0],
                   "kd_mode": kept[0][0].kd_mode, "standardize": kept[0][0].standardize, "pairs": len(kept),
                   "pairs_dropped": len(pairs) - len(kept)}
            for m in PAIRED_METRICS + PAIRED_CALIBRATION:
                s = seed_interval(seeds[f"d_{m}"], (-1.0, 1.0))  # a difference of two values in [0, 1]
                row |= {f"d_{m}": s["mean"], f"d_{m}_low": s["ci_low"], f"d_{m}_high": s["ci_high"]}
            row["d_val_macro_f1"] = seeds["d_val_macro_f1"].mean()  # what a "largest gain" is chosen on
            row |= {f"{m}_{arm}": seeds[f"{m}_{arm}"].mean() for m in ARM_CALIBRATION for arm in ("kd", "nokd")}
            hb = M.hierarchical_delta(ys[0], pred_base, pred_kd, HB_RESAMPLES, HB_SEED)
            row |= {"d_macro_f1_hb_low": hb["low"], "d_macro_f1_hb_high": hb["high"], "hb_p": hb["p_value"],
                    "seeds_positive": hb["positive"]}
            rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        # One test per question (KD against this baseline, per setting and split), Holm over its students.
        table["hb_p_holm"] = table.groupby(["split", "setting"], sort=False)["hb_p"].transform(M.holm)
        verdicts = ST.kd_verdicts(pd.DataFrame(per_seed))[["arch", "split", "setting", *VERDICT_COLUMNS]]
        table = table.merge(verdicts.rename(columns={"label": "verdict_label"}), on=["arch", "split", "setting"],
                            how="left", validate="one_to_one")
    return table, pd.DataFrame(per_seed)


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
    table.insert(4, "weights", [kd_weights(cfg[s]) for s in table["setting"]])
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


# ----------------------------------------------------------------------------- external sets, calibration, operating points


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


def calibration_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and stage (before / after temperature scaling): NLL, Brier, ECE, adaptive ECE, MCE, T (seed means)."""
    df = eval_table(runs, "calibration")
    cols = ["nll", "brier", "ece", "ece_adaptive", "mce", "temperature"]
    return df.groupby(["model", "label", "stage"], sort=False)[cols].mean().reset_index()


def operating_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Test-set operating points (fitted on val) averaged across seeds per model and rule."""
    df = eval_table(runs, "operating_points")
    cols = ["accuracy", "balanced_accuracy", "macro_f1", "mel_sensitivity", "mel_specificity", "changed_fraction"]
    return df[df["split"] == "test"].groupby(["model", "label", "rule"], sort=False)[cols].mean().reset_index()


# ----------------------------------------------------------------------------- robustness


#: Robustness metrics, primary first: balanced accuracy and macro-F1 do not reward predicting the majority class.
ROBUSTNESS_METRICS: tuple[str, ...] = ("balanced_accuracy", "macro_f1", "accuracy")


def _corruption_rows(runs: pd.DataFrame) -> pd.DataFrame | None:
    frames = [pd.read_csv(r.path / "robustness" / "corruptions.csv").assign(model=r.model, label=r.label, run=r.run_id,
                                                                             role=r.role, arch=r.arch)
              for r in runs.itertuples() if (r.path / "robustness" / "corruptions.csv").exists()]
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    if "level" not in df.columns:
        df["level"] = df["severity"]
    return df.assign(balanced_accuracy=1.0 - df["balanced_error"])


def robustness_summary(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, Figure] | None:
    """Per model and suite: :data:`ROBUSTNESS_METRICS` under corruption (mean over the suite's corruptions and
    severities, then seeds) beside the clean ones, with the seeds and test images it rests on; per model and
    corruption: the same averaged over severities; and the curves against severity (balanced accuracy, macro-F1)."""
    df = _corruption_rows(runs)
    if df is None:
        return None
    metrics = list(ROBUSTNESS_METRICS)
    fig = corruption_curves_figure(df.groupby(["suite", "role", "arch", "label", "level"], sort=False)[metrics]
                                   .mean().reset_index())
    keys = ["model", "label", "suite"]
    corrupted = df[df["level"] > 0]
    table = corrupted.groupby(keys, sort=False)[metrics].mean().reset_index()
    clean = df[df["level"] == 0].groupby(keys, sort=False).agg(
        **{f"clean_{m}": (m, "mean") for m in metrics}, images=("n", "max"), seeds=("run", "nunique"))
    per_corruption = (corrupted.groupby([*keys, "corruption"], sort=False)[metrics].mean().reset_index()
                      .join(clean[["seeds", "images"]], on=keys))
    return table.join(clean, on=keys), per_corruption, fig


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


def speedup_interval(speedups: Sequence[float], confidence: float = 0.95) -> dict:
    """Median INT8 speed-up over interleaved passes with its distribution-free interval (order statistics,
    ``scipy.stats.quantile_test``: exact binomial coverage of at least ``confidence``; NaN with too few passes)."""
    v = np.asarray(speedups, dtype=float)
    ci = stats.quantile_test(v, q=float(np.median(v)), p=0.5).confidence_interval(confidence)
    return {"passes": len(v), "speedup_median": float(np.median(v)), "speedup_low": float(ci.low),
            "speedup_high": float(ci.high), "confidence": confidence}


def int8_op_summary(ops: pd.DataFrame) -> pd.DataFrame:
    """Per model of an operator profile (``edgekd-bench --ops``, one row per model, variant and operator type): the
    FP32 and INT8 kernel time per call, the convolutions' part of each, the share of the INT8 kernel time spent
    quantising and dequantising, and the largest other INT8 operator (type and share), the cost quantisation adds
    outside the convolutions. Shares compare within one graph; the profiler's per-node cost inflates the sums."""
    rows = []
    for model, g in ops.groupby("model", sort=False):
        qdq = g["qdq"].astype(str).str.lower() == "true"
        conv = g["op_type"].str.contains("Conv")
        kernel = g.groupby("variant")["ms_per_call"].sum()
        conv_ms = g[conv].groupby("variant")["ms_per_call"].sum()
        int8 = g["variant"] == "ort_int8"
        other = g[int8 & ~qdq & ~conv]
        top = other.loc[other["share"].idxmax()] if len(other) else None
        rows.append({"model": model, "fp32_ms": kernel.get("ort_fp32", np.nan), "int8_ms": kernel.get("ort_int8", np.nan),
                     "conv_fp32_ms": conv_ms.get("ort_fp32", np.nan), "conv_int8_ms": conv_ms.get("ort_int8", np.nan),
                     "qdq_share": g.loc[int8 & qdq, "share"].sum(),
                     "other_op": None if top is None else top["op_type"],
                     "other_share": np.nan if top is None else top["share"]})
    table = pd.DataFrame(rows)
    return table.assign(conv_speedup=table["conv_fp32_ms"] / table["conv_int8_ms"])


def efficiency_summary(runs: pd.DataFrame, perf: pd.DataFrame) -> dict[str, pd.DataFrame | Figure] | None:
    """Model cost, the INT8 speed-up (ORT INT8 against ORT FP32 and eager FP32), backend accuracy and the Pareto front.

    A front point is a model (its mean over seeds in ``perf``) on one backend at batch 1: its test macro-F1 is the
    seed mean plus the backend's change against eager PyTorch, measured on the run whose efficiency was measured
    (seed 0). The front is chosen on validation: the mean validation macro-F1 of the model (a backend is not run
    on validation; its test change is shown), never on test.
    """
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
    lat = [pd.read_csv(r.path / "efficiency" / "latency.csv").assign(model=r.model, label=r.label, arch=r.arch)
           for r in have if (r.path / "efficiency" / "latency.csv").exists()]
    if not lat:
        return result
    lat = pd.concat(lat)
    cpu1 = lat[(lat["device"] == "cpu") & (lat["batch"] == 1)]
    # One latency per architecture, input size and backend (the same graph whatever its weights): the median over
    # the runs that timed it, so that two models of one architecture at one size never show two latencies.
    quantiles = [c for c in ("p50_ms", "p90_ms", "p99_ms") if c in cpu1.columns]
    pooled = cpu1.groupby(["arch", "size", "backend"], sort=False)[quantiles].median()
    pooled["timings"] = cpu1.groupby(["arch", "size", "backend"], sort=False).size()
    b1 = cpu1[cpu1["size"] == cpu1["img_size"]].drop(columns=quantiles).merge(
        pooled.reset_index(), on=["arch", "size", "backend"], how="left")
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
    passes = {r.model: pd.read_csv(r.path / "efficiency" / "int8_passes.csv")["speedup"]
              for r in have if (r.path / "efficiency" / "int8_passes.csv").exists()}
    interval = pd.DataFrame([{"model": m, **speedup_interval(v)} for m, v in passes.items()],
                            columns=["model", "passes", "speedup_median", "speedup_low", "speedup_high", "confidence"])
    int8 = int8.merge(interval, on="model", how="left")
    # The speed-up the study reports: the interleaved passes' median where they ran (FP32 and INT8 alternate, so drift
    # in the machine's speed hits both), else the ratio of the two separately timed p50s.
    int8["speedup"] = int8["speedup_median"].fillna(int8["speedup_vs_ort_fp32"])
    int8["target_met"] = (int8["speedup"] >= INT8_SPEEDUP_TARGET) & (int8["delta_macro_f1"] >= INT8_DELTA_F1_TARGET)
    int8["faster"] = int8["speedup_low"] > 1  # the interval of the interleaved passes' median excludes 1
    result |= {"int8": int8, "latency": lat}
    pts = b1.merge(acc, on=["model", "label", "backend"], suffixes=("_latency", ""))[
        ["model", "label", "arch", "backend", "size", "p50_ms", "p90_ms", "p99_ms", "timings", "delta_macro_f1_vs_eager",
         "file_bytes"]]
    means = perf.set_index("model")
    pts = pts.assign(role=pts["model"].map(means["role"]), seeds=pts["model"].map(means["seeds"]), val_macro_f1=pts["model"].map(means["val_macro_f1"]),
                     macro_f1=pts["model"].map(means["macro_f1"]) + pts["delta_macro_f1_vs_eager"])
    pts = pts.sort_values(["p50_ms", "val_macro_f1"], ascending=[True, False]).reset_index(drop=True)
    pts["pareto"] = pts["val_macro_f1"] > pts["val_macro_f1"].cummax().shift(fill_value=-np.inf)
    result |= {"pareto": pts, "pareto_fig": pareto_figure(pts)}
    return result


# ----------------------------------------------------------------------------- teacher


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


def arms(runs: pd.DataFrame) -> pd.DataFrame:
    """What each model (arm) gets: role, the weights it starts from, input size, epochs, learning rate, KD loss and
    seeds, from its first seed's run_config (the Methods' "what each arm gets")."""
    rows = []
    for r in runs.drop_duplicates("model").itertuples():
        cfg = json.loads((r.path / "run_config.json").read_text())
        kd = cfg.get("kd") or {}
        rows.append({"model": r.model, "label": r.label, "role": r.role, "setting": r.setting, "split": r.split,
                     "init": r.init, "img_size": cfg["data"]["size"], "epochs": cfg["train"]["epochs"],
                     "lr": cfg["train"].get("lr"), "kd_mode": r.kd_mode, "alpha": kd.get("alpha"),
                     "temperature": kd.get("temperature"),
                     "seeds": int(runs.loc[runs["model"] == r.model, "seed"].nunique())})
    return pd.DataFrame(rows)
