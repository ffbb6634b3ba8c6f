"""Tests for edgekd.core.calibration against netcal, sklearn and hand-computed cases."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from netcal.metrics import ECE, MCE
from scipy.special import softmax
from sklearn.metrics import brier_score_loss, log_loss

from edgekd.core import calibration as C
from edgekd.core.info import NUM_CLASSES

LABELS = list(range(NUM_CLASSES))


def random_case(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and softmax probabilities (about 40% accuracy at scale 2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    logits = rng.normal(size=(n, NUM_CLASSES)) * scale
    logits[np.arange(n), y] += scale / 2
    return y, softmax(logits, axis=1)


def sampled_case(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from softmax(true logits), so T = 1 is calibrated."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, NUM_CLASSES)) * 2.0
    y = np.argmax(true_logits + rng.gumbel(size=true_logits.shape), axis=1)
    return true_logits, y


def test_nll_matches_sklearn_log_loss() -> None:
    y, probs = random_case(500, 2.0, 0)
    assert C.nll(y, probs) == pytest.approx(log_loss(y, probs, labels=LABELS), rel=1e-10)


def test_nll_hand_case_and_clipping() -> None:
    probs = np.array([[0.5, 0.5, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1.0]])
    assert C.nll(np.array([0, 6]), probs) == pytest.approx(math.log(2) / 2)
    assert C.nll(np.array([2, 6]), probs) == pytest.approx(-math.log(1e-12) / 2)


def test_brier_hand_case() -> None:
    probs = np.array([[0.5, 0.5, 0, 0, 0, 0, 0], [0.2, 0, 0, 0, 0, 0.8, 0]])
    # image 1: 0.25 + 0.25 = 0.5; image 2 (true 0): 0.64 + 0.64 = 1.28
    assert C.brier(np.array([0, 0]), probs) == pytest.approx((0.5 + 1.28) / 2)
    onehot = np.eye(NUM_CLASSES)[[3, 4]]
    assert C.brier(np.array([3, 4]), onehot) == 0.0
    assert C.brier(np.array([4, 3]), onehot) == pytest.approx(2.0)


@pytest.mark.skipif(
    "scale_by_half" not in inspect.signature(brier_score_loss).parameters,
    reason="multiclass brier_score_loss needs sklearn>=1.7",
)
def test_brier_matches_sklearn_multiclass() -> None:
    y, probs = random_case(400, 2.0, 1)
    # sklearn's multiclass Brier keeps the [0, 2] scale (no halving) as ours does.
    assert C.brier(y, probs) == pytest.approx(
        brier_score_loss(y, probs, labels=LABELS), rel=1e-10
    )


@pytest.mark.parametrize(
    ("n", "scale", "n_bins"), [(1000, 2.0, 15), (777, 4.0, 15), (500, 1.0, 10)]
)
def test_ece_and_mce_match_netcal(n: int, scale: float, n_bins: int) -> None:
    y, probs = random_case(n, scale, n)
    assert C.ece(y, probs, n_bins) == pytest.approx(ECE(bins=n_bins).measure(probs, y), abs=1e-6)
    assert C.mce(y, probs, n_bins) == pytest.approx(MCE(bins=n_bins).measure(probs, y), abs=1e-6)


def test_adaptive_ece_matches_netcal_equal_mass_when_divisible() -> None:
    # netcal's equal_intervals=False uses quantile edges; with distinct confidences and N a
    # multiple of n_bins they give exactly the same equal-size groups as ours.
    true_logits, y = sampled_case(1500, 3)
    probs = softmax(true_logits, axis=1)  # calibrated: bin gaps of both signs
    ref = ECE(bins=15, equal_intervals=False).measure(probs, y)
    assert C.ece(y, probs, 15, adaptive=True) == pytest.approx(ref, abs=1e-6)
    assert C.ece(y, probs, 15, adaptive=True) != pytest.approx(C.ece(y, probs, 15), abs=1e-3)


def _top_probs(conf: list[float]) -> np.ndarray:
    """Rows with max probability ``conf`` on class 0, the rest spread evenly."""
    c = np.asarray(conf)
    return np.column_stack([c] + [(1 - c) / (NUM_CLASSES - 1)] * (NUM_CLASSES - 1))


def test_ece_equal_width_hand_case_and_right_closed_bins() -> None:
    probs = _top_probs([0.5, 0.6, 0.7, 0.9])
    y = np.array([0, 1, 0, 0])  # correct, wrong, correct, correct
    table = C.reliability_table(y, probs, n_bins=4)
    # bins (0,.25], (.25,.5], (.5,.75], (.75,1]: 0.5 falls in bin 1 (right-closed)
    assert table["count"].tolist() == [0, 1, 2, 1]
    assert table["confidence"].iloc[2] == pytest.approx(0.65)
    assert table["accuracy"].iloc[2] == pytest.approx(0.5)
    assert np.isnan(table["accuracy"].iloc[0])
    expected = (1 * abs(1 - 0.5) + 2 * abs(0.5 - 0.65) + 1 * abs(1 - 0.9)) / 4
    assert C.ece(y, probs, n_bins=4) == pytest.approx(expected)
    assert C.mce(y, probs, n_bins=4) == pytest.approx(0.5)


def test_adaptive_ece_hand_case() -> None:
    probs = _top_probs([0.95, 0.3, 0.9, 0.4, 0.5])
    y = np.array([0, 0, 1, 1, 0])
    # sorted conf 0.3(c) 0.4(w) 0.5(c) 0.9(w) 0.95(c) -> groups of 2, 2, 1
    expected = (2 * abs(0.5 - 0.35) + 2 * abs(0.5 - 0.7) + 1 * abs(1 - 0.95)) / 5
    assert C.ece(y, probs, n_bins=3, adaptive=True) == pytest.approx(expected)


def test_reliability_table_consistent_with_ece() -> None:
    y, probs = random_case(600, 2.0, 4)
    t = C.reliability_table(y, probs)
    assert len(t) == 15 and t["count"].sum() == 600
    assert t["bin_lo"].iloc[0] == 0.0 and t["bin_hi"].iloc[-1] == 1.0
    full = t[t["count"] > 0]
    weighted = np.sum(full["count"] * (full["accuracy"] - full["confidence"]).abs()) / 600
    assert weighted == pytest.approx(C.ece(y, probs))


def test_plot_reliability_two_axes() -> None:
    y, probs = random_case(300, 2.0, 5)
    fig = C.plot_reliability(y, probs, n_bins=10, title="demo")
    assert isinstance(fig, Figure)
    top, bottom = fig.axes
    assert "demo" in top.get_title()
    heights = [patch.get_height() for patch in bottom.patches]
    assert heights == C.reliability_table(y, probs, 10)["count"].tolist()


def test_apply_temperature() -> None:
    logits = np.array([[1.0, 2.0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(C.apply_temperature(logits, 2.0), softmax(logits / 2, axis=1))
    with pytest.raises(ValueError):
        C.apply_temperature(logits, 0.0)


def test_temperature_recovers_overconfidence() -> None:
    true_logits, y = sampled_case(10000, 0)
    logits = true_logits * 3
    T = C.fit_temperature(logits, y)
    assert T == pytest.approx(3.0, rel=0.10)
    assert C.nll(y, C.apply_temperature(logits, T)) < C.nll(
        y, C.apply_temperature(logits, 1.0)
    )


def test_fitted_temperature_is_nll_minimum() -> None:
    true_logits, y = sampled_case(3000, 1)
    logits = true_logits * 2

    def nll_at(t: float) -> float:
        return C.nll(y, C.apply_temperature(logits, t))

    T = C.fit_temperature(logits, y)
    assert nll_at(T) <= nll_at(0.9 * T) and nll_at(T) <= nll_at(1.1 * T)
    assert nll_at(T) <= nll_at(0.99 * T) + 1e-9 and nll_at(T) <= nll_at(1.01 * T) + 1e-9


def test_temperature_underconfident_below_one() -> None:
    true_logits, y = sampled_case(5000, 2)
    T = C.fit_temperature(true_logits / 2, y)
    assert T < 1.0
    assert T == pytest.approx(0.5, rel=0.10)


def test_calibration_report() -> None:
    true_logits, y = sampled_case(2000, 3)
    logits = true_logits * 3
    T = C.fit_temperature(logits, y)
    rep = C.calibration_report(y, logits, T)
    assert rep["stage"].tolist() == ["before", "after"]
    assert rep["temperature"].tolist() == [1.0, T]
    before, after = rep.iloc[0], rep.iloc[1]
    assert before["nll"] == pytest.approx(C.nll(y, softmax(logits, axis=1)))
    assert after["ece"] == pytest.approx(C.ece(y, softmax(logits / T, axis=1)))
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert {"brier", "ece_adaptive", "mce"} <= set(rep.columns)
