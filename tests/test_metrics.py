"""Tests for edgekd.core.metrics against sklearn / scipy references and hand-computed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats
from scipy.special import log_softmax, softmax
from sklearn import metrics as skm

from edgekd.core import metrics as M
from edgekd.core.info import CLASS_NAMES, MELANOMA, NUM_CLASSES
from edgekd.stages import evaluate as V

LABELS = list(range(NUM_CLASSES))


def random_case(n: int, seed: int, boost: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels and softmax probabilities with some signal."""
    rng = np.random.default_rng(seed)
    y = rng.choice(NUM_CLASSES, n, p=[0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05])
    logits = rng.normal(size=(n, NUM_CLASSES))
    logits[np.arange(n), y] += boost
    return y, softmax(logits, axis=1)


def onehot_probs(pred: list[int] | np.ndarray) -> np.ndarray:
    """Probabilities whose argmax is ``pred``."""
    return np.eye(NUM_CLASSES)[pred] * 0.9 + 0.1 / NUM_CLASSES


def mel_probs(p_mel: list[float]) -> np.ndarray:
    """Rows with p(mel) = ``p_mel`` and the rest spread evenly."""
    p = np.asarray(p_mel, dtype=float)
    out = np.repeat(((1 - p) / (NUM_CLASSES - 1))[:, None], NUM_CLASSES, axis=1)
    out[:, MELANOMA] = p
    return out


def top_probs(conf: list[float]) -> np.ndarray:
    """Rows with max probability ``conf`` on class 0."""
    c = np.asarray(conf)
    return np.column_stack([c] + [(1 - c) / (NUM_CLASSES - 1)] * (NUM_CLASSES - 1))


def test_headline_metrics_match_sklearn() -> None:
    y, probs = random_case(800, 0)
    pred = probs.argmax(1)
    got = {name: fn(y, probs) for name, fn in M.HEADLINE.items()}
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred)) == M.accuracy(y, pred)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred)) == M.balanced_accuracy(y, pred)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro")) == M.macro_f1(y, pred)
    assert got["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"), abs=1e-12)
    assert 0.4 < got["accuracy"] < 0.9
    # a class never predicted nor present still counts (as 0) in the macro average over all 7 classes
    assert M.macro_f1(np.array([0, 1]), np.array([0, 1])) == pytest.approx(2 / 7)


def test_ovr_auc_is_medmnist_mean_of_binary_aucs() -> None:
    y, probs = random_case(600, 1)
    per_class = [skm.roc_auc_score(y == c, probs[:, c]) for c in LABELS]
    assert M.ovr_auc(y, probs) == pytest.approx(np.mean(per_class), abs=1e-12)
    assert M.ovr_auc(y, probs) == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr"), abs=1e-12
    )
    tied = np.round(probs, 1)  # many ties: each counts 1/2, as in sklearn
    per_class = [skm.roc_auc_score(y == c, tied[:, c]) for c in LABELS]
    assert M.ovr_auc(y, tied) == pytest.approx(np.mean(per_class), abs=1e-12)


def test_ovr_auc_skips_absent_class() -> None:
    y, probs = random_case(400, 2)
    keep = y != 6
    y, probs = y[keep], probs[keep]
    per_class = [skm.roc_auc_score(y == c, probs[:, c]) for c in range(6)]
    assert M.ovr_auc(y, probs) == pytest.approx(np.mean(per_class), abs=1e-12)
    assert math.isnan(M.ovr_auc(np.zeros(3, int), probs[:3]))


def test_macro_f1_from_counts_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 300)  # classes 5, 6 absent from y
    pred = rng.integers(0, 6, 300)  # class 6 never predicted
    ref = skm.f1_score(y, pred, labels=LABELS, average="macro", zero_division=0)
    assert M.macro_f1_from_counts(M.confusion_counts(y, pred)) == pytest.approx(ref)


def test_per_class_table_matches_sklearn() -> None:
    y, probs = random_case(500, 4)
    table = M.per_class_table(y, probs)
    p, r, f, s = skm.precision_recall_fscore_support(
        y, probs.argmax(1), labels=LABELS, zero_division=0
    )
    assert table["class"].tolist() == list(CLASS_NAMES)
    np.testing.assert_allclose(table[["precision", "recall", "f1"]].to_numpy().T, [p, r, f])
    assert table["support"].tolist() == s.tolist()


def test_confusion_and_top_confusions_hand_case() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([1, 1, 2, 0, 1, 2])
    raw, norm = M.confusion(y, pred)
    np.testing.assert_array_equal(raw.to_numpy(), skm.confusion_matrix(y, pred, labels=LABELS))
    assert raw.loc["akiec", "bcc"] == 2 and list(raw.index) == list(CLASS_NAMES)
    np.testing.assert_allclose(norm.loc["akiec"].to_numpy()[:3], [0, 2 / 3, 1 / 3])
    assert norm.loc["bcc", "bcc"] == 0.5 and norm.loc["df"].isna().all()
    top = M.top_confusions(y, pred, k=2)
    assert top[["true", "predicted", "count"]].values.tolist() == [
        ["akiec", "bcc", 2],
        ["bcc", "akiec", 1],
    ]
    np.testing.assert_allclose(top["rate"], [2 / 3, 1 / 2])
    assert len(M.top_confusions(y, pred, k=10)) == 3


def test_bootstrap_ci_accuracy_close_to_normal_approximation() -> None:
    y, probs = random_case(2000, 5)
    acc_fn = M.HEADLINE["accuracy"]
    point, low, high = M.bootstrap_ci(y, probs, acc_fn, n_resamples=2000, seed=0)
    acc = skm.accuracy_score(y, probs.argmax(1))
    assert point == pytest.approx(acc) and low < point < high
    normal_width = 2 * stats.norm.ppf(0.975) * math.sqrt(acc * (1 - acc) / len(y))
    assert high - low == pytest.approx(normal_width, rel=0.15)
    assert M.bootstrap_ci(y, probs, acc_fn, 2000, seed=0) == (point, low, high)
    narrow = M.bootstrap_ci(y, probs, acc_fn, 2000, seed=0, confidence=0.5)
    assert low < narrow[1] < narrow[2] < high


@pytest.mark.parametrize("n, classes, subset", [(400, NUM_CLASSES, False), (60, 4, False), (300, 5, True)])
def test_bootstrap_table_rows_equal_bootstrap_ci_of_the_sklearn_functions_bitwise(n, classes, subset) -> None:
    """The vectorised table scores every resample with count_metrics; each row must be exactly what the reference
    function's own bootstrap gives (same draws, sklearn per resample), classes absent or not."""
    rng = np.random.default_rng(n)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, NUM_CLASSES))
    logits[np.arange(n), y] += 1.0
    probs = softmax(logits, axis=1)
    labels = M.scored_classes(y) if subset else M.LABELS
    table = M.bootstrap_table(y, probs, n_resamples=200, seed=7, labels=labels).set_index("metric")
    assert list(table.index) == ["accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auc"]
    for name, fn in M.headline(labels).items():
        expected = M.bootstrap_ci(y, probs, fn, n_resamples=200, seed=7)
        assert tuple(table.loc[name, ["value", "ci_low", "ci_high"]].astype(float)) == expected, name


def test_count_metrics_of_a_batch_equal_sklearn_per_resample_bitwise() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, NUM_CLASSES - 2, (50, 80))  # two classes never occur
    pred = np.where(rng.random((50, 80)) < 0.5, y, rng.integers(0, NUM_CLASSES, (50, 80)))
    got = M.count_metrics(M.batch_confusion_counts(y, pred), labels=np.arange(3))
    for i in range(50):
        assert got["accuracy"][i] == skm.accuracy_score(y[i], pred[i])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert got["balanced_accuracy"][i] == skm.balanced_accuracy_score(y[i], pred[i])
        assert got["macro_f1"][i] == skm.f1_score(y[i], pred[i], labels=range(3), average="macro", zero_division=0)
        assert got["weighted_f1"][i] == skm.f1_score(y[i], pred[i], labels=LABELS, average="weighted", zero_division=0)
    assert np.array_equal(M.batch_confusion_counts(y, pred)[7], M.confusion_counts(y[7], pred[7]))


def test_seed_summary() -> None:
    s = M.seed_summary([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t_{0.975, 2} * std / sqrt(n), std = 1
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert s["ci_low"] == pytest.approx(2 - half) and s["ci_high"] == pytest.approx(2 + half)
    vals = [0.71, 0.74, 0.69, 0.73, 0.70]
    ref = stats.t.interval(0.9, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
    s = M.seed_summary(vals, confidence=0.9)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(ref)
    one = M.seed_summary([0.8])
    assert (
        one["mean"] == 0.8
        and one["n"] == 1
        and math.isnan(one["ci_low"])
        and math.isnan(one["std"])
    )


def biased_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model biased against minority class 3 (argmax never predicts it)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(NUM_CLASSES, n, p=[0.1, 0.1, 0.15, 0.05, 0.15, 0.35, 0.1])
    logits = rng.normal(size=(n, NUM_CLASSES))
    logits[np.arange(n), y] += 2.5
    logits[:, 3] -= 4.0
    return y, logits


def test_zero_offsets_reproduce_argmax() -> None:
    _, logits = biased_logits(300, 0)
    np.testing.assert_array_equal(M.apply_offsets(logits, np.zeros(NUM_CLASSES)), logits.argmax(1))


def test_class_offsets_rescue_minority_class() -> None:
    y_val, logits_val = biased_logits(1000, 1)
    logp_val = log_softmax(logits_val, axis=1)
    assert not np.any(logp_val.argmax(1) == 3)
    base = skm.f1_score(y_val, logp_val.argmax(1), labels=LABELS, average="macro", zero_division=0)
    offsets = M.fit_class_offsets(y_val, logp_val)
    pred = M.apply_offsets(logp_val, offsets)
    tuned = skm.f1_score(y_val, pred, labels=LABELS, average="macro", zero_division=0)
    assert tuned > base + 0.05 and offsets[3] > 1.0 and np.sum(pred == 3) > 10
    np.testing.assert_array_equal(
        M.fit_class_offsets(y_val, logits_val), offsets
    )  # logits == logprobs
    y_test, logits_test = biased_logits(1000, 2)  # applied unchanged to an independent draw
    f1_test = [
        skm.f1_score(y_test, M.apply_offsets(logits_test, o), average="macro")
        for o in (np.zeros(NUM_CLASSES), offsets)
    ]
    assert f1_test[1] > f1_test[0]


def test_class_offsets_keep_zero_when_nothing_helps() -> None:
    y = np.array([0, 1, 2, 3, 4, 5, 6])
    logits = np.eye(NUM_CLASSES) * 5  # already perfect: no offset strictly improves
    np.testing.assert_array_equal(M.fit_class_offsets(y, logits), np.zeros(NUM_CLASSES))


def test_melanoma_threshold_hand_cases() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    y = np.array([MELANOMA] * 10 + [0, 5])
    probs = mel_probs(scores + [0.95, 0.01])  # negatives do not affect the threshold
    assert M.melanoma_threshold(y, probs, 0.90) == 0.1  # 9 of 10 above
    assert M.melanoma_threshold(y, probs, 0.85) == 0.1
    assert M.melanoma_threshold(y, probs, 0.80) == 0.2
    assert M.melanoma_threshold(y, probs, 1.0) == 0.05
    tied = mel_probs([0.5, 0.5, 0.3, 0.2])
    assert M.melanoma_threshold(np.full(4, MELANOMA), tied, 0.25) == 0.5
    with pytest.raises(ValueError):
        M.melanoma_threshold(np.zeros(4, int), tied)


def test_melanoma_threshold_is_largest_meeting_target() -> None:
    y, probs = random_case(1000, 8)
    t = M.melanoma_threshold(y, probs, 0.9)
    assert M.screening_report(y, probs, t)["sensitivity"] >= 0.9
    assert M.screening_report(y, probs, np.nextafter(t, 1))["sensitivity"] < 0.9


def test_screening_report_hand_case() -> None:
    y = np.array([MELANOMA, MELANOMA, MELANOMA, 0, 1, 2])
    probs = mel_probs([0.9, 0.5, 0.2, 0.6, 0.1, 0.3])
    r = M.screening_report(y, probs, 0.5)  # p >= t is positive
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (2, 1, 2, 1)
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["specificity"] == pytest.approx(2 / 3)
    assert r["threshold"] == 0.5


def test_risk_coverage_and_aurc_hand_case() -> None:
    probs = top_probs([0.9, 0.8, 0.7, 0.6])
    y = np.array([0, 1, 0, 1])  # correct, wrong, correct, wrong
    rc = M.risk_coverage(y, probs)
    np.testing.assert_allclose(rc["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rc["risk"], [0, 1 / 2, 1 / 3, 1 / 2])
    assert M.aurc(y, probs) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    ordered = M.aurc(np.array([0, 0, 1, 1]), probs)  # errors have the lowest confidence
    reversed_ = M.aurc(np.array([1, 1, 0, 0]), probs)
    assert ordered == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    assert reversed_ == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4) and ordered < reversed_


def test_risk_coverage_ties_are_grouped() -> None:
    probs = top_probs([0.9, 0.7, 0.7, 0.6])
    y = np.array([0, 1, 0, 1])
    rc = M.risk_coverage(y, probs)
    np.testing.assert_allclose(rc["coverage"], [0.25, 0.75, 1.0])
    np.testing.assert_allclose(rc["risk"], [0, 1 / 3, 1 / 2])
    assert M.aurc(y, probs) == pytest.approx(0.5 * 1 / 3 + 0.25 * 1 / 2)
    swap = [0, 2, 1, 3]
    assert M.aurc(y[swap], probs[swap]) == M.aurc(y, probs)


def test_per_class_delta_hand_case() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    delta = M.per_class_delta(y, onehot_probs(y), onehot_probs([0, 1, 1, 1, 2, 0]))
    np.testing.assert_allclose(delta["f1_teacher"][:3], [1, 1, 1])
    np.testing.assert_allclose(delta["f1_student"][:3], [0.5, 0.8, 2 / 3])
    np.testing.assert_allclose(delta["delta_f1"][:3], [-0.5, -0.2, -1 / 3])
    np.testing.assert_allclose(delta["rel_gap"][:3], [-0.5, -0.2, -1 / 3])
    np.testing.assert_allclose(delta["delta_recall"][:3], [-0.5, 0, -0.5])
    assert delta["rel_gap"][3:].isna().all() and delta["class"].tolist() == list(CLASS_NAMES)


def test_agreement() -> None:
    assert M.agreement(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 0])) == 0.5


def test_mcnemar_exact_hand_case() -> None:
    y = np.zeros(10, int)
    a = np.array([0] * 5 + [1] + [0] * 3 + [1])  # b: a right, b wrong (5); c: 1
    b = np.array([1] * 5 + [0] + [0] * 3 + [1])
    r = M.mcnemar(y, a, b)
    assert (r["b"], r["c"], r["method"]) == (5, 1, "exact")
    assert r["p_value"] == pytest.approx(2 * (1 + 6) / 2**6)  # 2 P(X <= 1), X ~ Bin(6, 1/2)
    assert r["statistic"] == 1
    assert M.mcnemar(y, y, y)["p_value"] == 1.0


def test_mcnemar_chi2_hand_case_and_switch() -> None:
    def case(b: int, c: int) -> dict:
        y = np.zeros(b + c + 5, int)
        pa = np.r_[np.zeros(b), np.ones(c), np.zeros(5)].astype(int)
        pb = np.r_[np.ones(b), np.zeros(c), np.zeros(5)].astype(int)
        return M.mcnemar(y, pa, pb)

    r = case(30, 10)
    assert r["method"] == "chi2_cc" and r["statistic"] == pytest.approx(19**2 / 40)
    assert r["p_value"] == pytest.approx(math.erfc(math.sqrt(19**2 / 40 / 2)))  # chi2(1) tail
    assert case(14, 10)["method"] == "exact" and case(15, 10)["method"] == "chi2_cc"


def test_plot_per_class_f1() -> None:
    rng = np.random.default_rng(9)
    table = pd.DataFrame(
        [
            {"model": m, "class": c, "f1": rng.uniform()}
            for m in ("teacher", "student")
            for c in CLASS_NAMES
        ]
    )
    fig = V.plot_per_class_f1(table)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, table["f1"])  # teacher bars first, then student
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASS_NAMES)


# ----------------------------------------------------------------------------- hierarchical bootstrap, Holm


def _noisy(y: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    pred = y.copy()
    flip = rng.random(len(y)) < rate
    pred[flip] = rng.integers(0, NUM_CLASSES, flip.sum())
    return pred


def test_hierarchical_delta_with_one_seed_is_the_paired_image_bootstrap_of_sklearns_f1():
    rng = np.random.default_rng(3)
    y = rng.integers(0, NUM_CLASSES, 400)
    a, b = _noisy(y, 0.5, rng), _noisy(y, 0.3, rng)
    got = M.hierarchical_delta(y, [a], [b], n_resamples=300, seed=7)
    ref_rng, deltas = np.random.default_rng(7), []
    for _ in range(300):  # the same draws, scored by sklearn
        ref_rng.integers(0, 1, 1)
        idx = ref_rng.integers(0, len(y), len(y))
        deltas.append(skm.f1_score(y[idx], b[idx], average="macro", labels=range(NUM_CLASSES), zero_division=0)
                      - skm.f1_score(y[idx], a[idx], average="macro", labels=range(NUM_CLASSES), zero_division=0))
    point = (skm.f1_score(y, b, average="macro", labels=range(NUM_CLASSES), zero_division=0)
             - skm.f1_score(y, a, average="macro", labels=range(NUM_CLASSES), zero_division=0))
    assert got["delta"] == pytest.approx(point)
    assert (got["low"], got["high"]) == pytest.approx((np.quantile(deltas, 0.025), np.quantile(deltas, 0.975)))
    assert got["low"] > 0 and got["p_value"] < 0.01 and got["positive"] == 1


def test_hierarchical_delta_widens_when_seeds_disagree_and_is_zero_for_equal_arms():
    rng = np.random.default_rng(0)
    y = rng.integers(0, NUM_CLASSES, 600)
    base = [_noisy(y, 0.4, rng) for _ in range(3)]
    same = M.hierarchical_delta(y, base, base, n_resamples=200)
    assert (same["delta"], same["low"], same["high"], same["p_value"], same["positive"]) == (0, 0, 0, 1.0, 0)
    # one seed far better, one far worse: the seed draw must dominate the interval
    mixed = [_noisy(y, 0.1, rng), _noisy(y, 0.7, rng), base[2]]
    wide = M.hierarchical_delta(y, base, mixed, n_resamples=500)
    pooled = M.hierarchical_delta(np.tile(y, 3), [np.concatenate(base)], [np.concatenate(mixed)], n_resamples=500)
    assert wide["high"] - wide["low"] > 3 * (pooled["high"] - pooled["low"])
    assert wide["low"] < 0 < wide["high"]
    with pytest.raises(ValueError, match="same \\(seeds, images\\)"):
        M.hierarchical_delta(y, base, base[:2])


def test_holm_step_down():
    # hand-worked: sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert M.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert M.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert M.holm([0.2]) == pytest.approx([0.2])


def test_balanced_accuracy_skips_a_predicted_class_absent_from_the_labels_without_a_warning():
    """A bootstrap resample that drew no image of a rare class: sklearn's value (recall over the present classes),
    and no warning for the notebook to show in red."""
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = M.balanced_accuracy(y, pred)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = skm.balanced_accuracy_score(y, pred)
    assert value == expected == 0.75
