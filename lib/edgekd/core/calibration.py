"""Calibration metrics (NLL, Brier, ECE/MCE), reliability diagrams and temperature scaling.

Conventions: ``y`` int labels (N,), ``probs`` (N, K) rows summing to 1, ``logits`` (N, K).
Top-label metrics use confidence = max probability and correctness of the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import optimize, special

#: Bounds on the temperature searched by :func:`fit_temperature`.
T_BOUNDS: tuple[float, float] = (0.05, 20.0)


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    p_true = probs[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(p_true, 1e-12, None))))


def brier(y: np.ndarray, probs: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of sum_k (p_k - onehot_k)^2, range [0, 2]."""
    onehot = np.eye(probs.shape[1])[y]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def _top_label(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (max prob) and correctness (0/1 float) of the argmax prediction."""
    return probs.max(1), (probs.argmax(1) == y).astype(float)


def _bins(conf: np.ndarray, n_bins: int, adaptive: bool) -> np.ndarray:
    """Bin index per image.

    Equal width: bins (lo, hi] on [0, 1] (a confidence of exactly 0 goes to the first bin).
    Adaptive: sort by confidence (stable) and split into ``n_bins`` nearly equal groups;
    tied confidences may straddle a group boundary.
    """
    if adaptive:
        idx = np.empty(len(conf), dtype=int)
        for b, members in enumerate(np.array_split(np.argsort(conf, kind="mergesort"), n_bins)):
            idx[members] = b
        return idx
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)


def _bin_stats(
    y: np.ndarray, probs: np.ndarray, n_bins: int, adaptive: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin count, mean confidence and accuracy (NaN for empty bins)."""
    conf, correct = _top_label(y, probs)
    idx = _bins(conf, n_bins, adaptive)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, minlength=n_bins) / count
        acc = np.bincount(idx, correct, minlength=n_bins) / count
    return count, mean_conf, acc


def ece(y: np.ndarray, probs: np.ndarray, n_bins: int = 15, adaptive: bool = False) -> float:
    """Top-label expected calibration error: sum_b (n_b / N) |acc_b - conf_b|.

    ``adaptive=False``: equal-width bins (lo, hi]; ``adaptive=True``: equal-mass bins.
    """
    count, conf, acc = _bin_stats(y, probs, n_bins, adaptive)
    full = count > 0
    return float(np.sum(count[full] * np.abs(acc[full] - conf[full])) / count.sum())


def mce(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label maximum calibration error over non-empty equal-width bins."""
    count, conf, acc = _bin_stats(y, probs, n_bins)
    return float(np.max(np.abs(acc - conf)[count > 0]))


def reliability_table(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """One row per equal-width bin: bin_lo, bin_hi, count, mean confidence, accuracy."""
    count, conf, acc = _bin_stats(y, probs, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {
            "bin_lo": edges[:-1],
            "bin_hi": edges[1:],
            "count": count,
            "confidence": conf,
            "accuracy": acc,
        }
    )


def plot_reliability(
    y: np.ndarray,
    probs: np.ndarray,
    n_bins: int = 15,
    title: str = "Reliability diagram",
    ax: Sequence[Axes] | None = None,
) -> Figure:
    """Reliability diagram (accuracy per confidence bin) above a confidence histogram.

    ``ax``: optional pair of axes (diagram, histogram); a new two-panel figure otherwise.
    """
    if ax is None:
        fig = Figure(figsize=(4, 5), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        top, bottom = ax
    table = reliability_table(y, probs, n_bins)
    centres = (table["bin_lo"] + table["bin_hi"]).to_numpy() / 2
    width = 1.0 / n_bins
    top.bar(centres, table["accuracy"].fillna(0), width, edgecolor="black", label="accuracy")
    gap = (table["confidence"] - table["accuracy"]).fillna(0)
    top.bar(
        centres,
        gap,
        width,
        bottom=table["accuracy"].fillna(0),
        color="tab:red",
        alpha=0.3,
        label="gap",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    top.set(
        xlim=(0, 1),
        ylim=(0, 1),
        ylabel="accuracy",
        title=f"{title} (ECE {ece(y, probs, n_bins):.3f})",
    )
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centres, table["count"], width, edgecolor="black", color="tab:gray")
    bottom.set(xlim=(0, 1), xlabel="confidence", ylabel="count")
    return top.figure


def apply_temperature(logits: np.ndarray, T: float) -> np.ndarray:
    """Softmax of ``logits / T``."""
    if T <= 0:
        raise ValueError("temperature must be positive")
    return special.softmax(np.asarray(logits, dtype=float) / T, axis=1)


def _nll_at(logits: np.ndarray, y: np.ndarray, T: float) -> float:
    """Mean NLL of softmax(logits / T), computed stably with log-softmax."""
    logp = special.log_softmax(np.asarray(logits, dtype=float) / T, axis=1)
    return float(-np.mean(logp[np.arange(len(y)), y]))


def fit_temperature(logits_val: np.ndarray, y_val: np.ndarray) -> float:
    """Temperature minimising validation NLL of softmax(logits / T).

    Bounded Brent search over log T in [log 0.05, log 20]; NLL is convex in 1/T, hence
    unimodal in log T, so the search finds the global minimum inside the bounds.
    """
    res = optimize.minimize_scalar(
        lambda log_t: _nll_at(logits_val, y_val, float(np.exp(log_t))),
        bounds=tuple(np.log(T_BOUNDS)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def calibration_report(y: np.ndarray, logits: np.ndarray, T: float) -> pd.DataFrame:
    """Calibration metrics before (T = 1) and after temperature scaling with ``T``."""
    rows = []
    for stage, temp in (("before", 1.0), ("after", T)):
        probs = apply_temperature(logits, temp)
        rows.append(
            {
                "stage": stage,
                "nll": nll(y, probs),
                "brier": brier(y, probs),
                "ece": ece(y, probs),
                "ece_adaptive": ece(y, probs, adaptive=True),
                "mce": mce(y, probs),
                "temperature": float(temp),
            }
        )
    return pd.DataFrame(rows)
