"""Classification metrics, bootstrap intervals, operating points, teacher-vs-student comparisons.

Conventions: ``y`` int labels (N,), ``probs`` (N, NUM_CLASSES) rows summing to 1, ``pred`` (N,).
Macro averages run over all ``NUM_CLASSES`` labels; a class with no support and no predictions
scores 0 (sklearn ``zero_division=0``). A labelled set without some classes (an outside set) is scored over the
classes present in its labels instead (:func:`scored_classes`), fixed for all of its bootstrap resamples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

from edgekd.core.info import CLASS_NAMES, MELANOMA, NUM_CLASSES

LABELS = np.arange(NUM_CLASSES)
MetricFn = Callable[[np.ndarray, np.ndarray], float]


def ovr_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUC as MedMNIST's ``getAUC``: mean of the per-class binary AUCs.

    Each binary AUC is the Mann-Whitney statistic from average ranks (ties count 1/2), which is
    much faster than sklearn inside a bootstrap. Classes with no positives or no negatives
    (e.g. in a resample) are skipped; NaN if none is defined.
    """
    ranks = stats.rankdata(probs, axis=0)
    aucs = []
    for c in LABELS:
        pos = y == c
        n_pos = int(pos.sum())
        n_neg = len(y) - n_pos
        if n_pos and n_neg:
            aucs.append((ranks[pos, c].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of ``pred`` equal to ``y`` (sklearn)."""
    return float(skm.accuracy_score(y, pred))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y`` (sklearn; the ISIC challenge metric).

    A class that is predicted but absent from ``y`` (a bootstrap resample of a small test set that drew none of a
    rare class) has no recall and is left out, which is the definition; sklearn says so with a warning per
    resample, which is silenced here (and only that one).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        return float(skm.balanced_accuracy_score(y, pred))


def f1(y: np.ndarray, pred: np.ndarray, average: str = "macro", labels: np.ndarray = LABELS) -> float:
    """F1 over ``labels`` (default all ``NUM_CLASSES``; sklearn, ``zero_division=0``), ``average``d."""
    return float(skm.f1_score(y, pred, labels=labels, average=average, zero_division=0))


def macro_f1(y: np.ndarray, pred: np.ndarray, labels: np.ndarray = LABELS) -> float:
    """Macro-F1 over ``labels`` (default all ``NUM_CLASSES``: the project's selection metric)."""
    return f1(y, pred, "macro", labels)


def scored_classes(y: np.ndarray) -> np.ndarray:
    """The classes a set with labels ``y`` is macro-averaged over: all ``NUM_CLASSES`` where every class is present
    (the headline figure), else the classes present in ``y``, so that classes with neither labels nor predictions
    do not count as F1 0 (a perfect model on an nv / mel set would get 0.29)."""
    present = np.unique(y)
    return LABELS if len(present) == NUM_CLASSES else present


def headline(labels: np.ndarray = LABELS) -> dict[str, MetricFn]:
    """Label-based metrics reported with bootstrap intervals, macro-F1 over ``labels``: name -> fn(y, probs)."""
    return {
        "accuracy": lambda y, p: accuracy(y, p.argmax(1)),
        "balanced_accuracy": lambda y, p: balanced_accuracy(y, p.argmax(1)),
        "macro_f1": lambda y, p: macro_f1(y, p.argmax(1), labels),
        "weighted_f1": lambda y, p: f1(y, p.argmax(1), "weighted"),
        "auc": ovr_auc,
    }


#: The headline metrics over all classes: name -> fn(y, probs).
HEADLINE: dict[str, MetricFn] = headline()


def per_class_table(y: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """One row per class: precision, recall, F1 and support of the argmax prediction."""
    p, r, f, s = skm.precision_recall_fscore_support(
        y, probs.argmax(1), labels=LABELS, zero_division=0
    )
    return pd.DataFrame({"class": CLASS_NAMES, "precision": p, "recall": r, "f1": f, "support": s})


def confusion_counts(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(K, K) confusion counts, rows = true class, columns = predicted class."""
    flat = np.bincount(np.asarray(y) * NUM_CLASSES + np.asarray(pred), minlength=NUM_CLASSES**2)
    return flat.reshape(NUM_CLASSES, NUM_CLASSES)


def batch_confusion_counts(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(..., K, K) confusion counts of label arrays ``y`` and ``pred`` of shape (..., N): one matrix per leading index
    (a bootstrap's resamples), as :func:`confusion_counts` of each."""
    y, pred = np.asarray(y), np.asarray(pred)
    lead = y.shape[:-1]
    offset = np.arange(int(np.prod(lead, dtype=int))).reshape(*lead, 1) * NUM_CLASSES**2
    flat = np.bincount((offset + y * NUM_CLASSES + pred).ravel(), minlength=max(1, offset.size) * NUM_CLASSES**2)
    return flat.reshape(*lead, NUM_CLASSES, NUM_CLASSES)


def count_metrics(cm: np.ndarray, labels: np.ndarray = LABELS) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 over ``labels`` and weighted F1 (over every class) from confusion counts
    ``cm`` of shape (..., K, K), each of shape (...): the values sklearn gives (:data:`HEADLINE`, bitwise, by the same
    arithmetic in the same order), without its per-call checks, so a bootstrap scores all its resamples at once.
    Balanced accuracy is over the classes present in the labels; F1 counts 0/0 as 0."""
    cm = np.asarray(cm)
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    support, predicted = cm.sum(-1), cm.sum(-2)
    denom = (support + predicted).astype(float)
    f1_per = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    return {"accuracy": tp.sum(-1) / cm.sum((-2, -1)),
            "balanced_accuracy": recall.sum(-1) / present.sum(-1),
            "macro_f1": f1_per[..., np.asarray(labels)].mean(-1),
            "weighted_f1": (f1_per * support).sum(-1) / support.sum(-1)}


def macro_f1_from_counts(cm: np.ndarray) -> float:
    """Macro F1 from a confusion matrix (fast path for threshold search; 0/0 counts as 0)."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)  # 2 tp + fp + fn
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)))


def confusion(y: np.ndarray, pred: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw and true-row-normalised confusion matrices by class name (NaN row if no support)."""
    cm = confusion_counts(y, pred)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.full(cm.shape, np.nan), where=rows > 0)
    index = pd.Index(CLASS_NAMES, name="true")
    columns = pd.Index(CLASS_NAMES, name="predicted")
    return pd.DataFrame(cm, index, columns), pd.DataFrame(norm, index, columns)


def top_confusions(y: np.ndarray, pred: np.ndarray, k: int = 5) -> pd.DataFrame:
    """The ``k`` most frequent off-diagonal (true, predicted) pairs; rate = count / true support."""
    raw, norm = confusion(y, pred)
    t, p = np.nonzero((raw.to_numpy() > 0) & ~np.eye(NUM_CLASSES, dtype=bool))
    df = pd.DataFrame(
        {
            "true": [CLASS_NAMES[i] for i in t],
            "predicted": [CLASS_NAMES[j] for j in p],
            "count": raw.to_numpy()[t, p],
            "rate": norm.to_numpy()[t, p],
        }
    )
    df = df.sort_values(["count", "rate"], ascending=False, kind="mergesort")
    return df.head(k).reset_index(drop=True)


def percentile_bootstrap(
    y: np.ndarray,
    probs: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float | np.ndarray],
    n_resamples: int,
    seed: int,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``statistic(y[idx], probs[idx])`` over resampled image indices."""
    res = stats.bootstrap(
        (np.arange(len(y)),),
        lambda idx: statistic(y[idx], probs[idx]),
        n_resamples=n_resamples,
        vectorized=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def bootstrap_ci(
    y: np.ndarray,
    probs: np.ndarray,
    metric_fn: MetricFn,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Point value and percentile bootstrap interval of ``metric_fn(y, probs)``.

    ``scipy.stats.bootstrap`` with ``method='percentile'`` on the image indices, so labels and
    probabilities are resampled together (paired).
    """
    low, high = percentile_bootstrap(y, probs, metric_fn, n_resamples, seed, confidence)
    return float(metric_fn(y, probs)), float(low), float(high)


def bootstrap_table(y: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int, labels: np.ndarray = LABELS) -> pd.DataFrame:
    """Headline metrics (macro-F1 over ``labels``) with 95% percentile bootstrap intervals.

    All metrics share one set of resamples; each row equals ``bootstrap_ci`` with the same seed and the
    :func:`headline` function (the same draws of ``scipy.stats.bootstrap``, scored by :func:`count_metrics`, which
    gives sklearn's values, and :func:`ovr_auc`). The point values are the reference implementations'.
    """
    fns = headline(labels)

    def all_resamples(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        counts = count_metrics(batch_confusion_counts(y[idx], probs[idx].argmax(-1)), labels)
        auc = np.array([ovr_auc(y[i], probs[i]) for i in idx.reshape(-1, idx.shape[-1])]).reshape(idx.shape[:-1])
        return np.stack([auc if name == "auc" else counts[name] for name in fns])

    res = stats.bootstrap((np.arange(len(y)),), all_resamples, n_resamples=n_resamples, vectorized=True,
                          confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    return pd.DataFrame({"metric": list(fns), "value": [float(fn(y, probs)) for fn in fns.values()],
                         "ci_low": res.confidence_interval.low, "ci_high": res.confidence_interval.high})


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std and Student-t interval for the mean across seeds.

    With a single value ``std``, ``ci_low`` and ``ci_high`` are NaN (no spread to estimate).
    """
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        raise ValueError("seed_summary needs at least one value")
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * std / np.sqrt(n) if n > 1 else np.nan
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def apply_offsets(logprobs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Predicted class after adding per-class ``offsets`` to log-probabilities (or logits)."""
    return np.argmax(logprobs + offsets, axis=1)


def fit_class_offsets(
    y_val: np.ndarray,
    logprobs_val: np.ndarray,
    grid: np.ndarray | None = None,
    n_passes: int = 3,
) -> np.ndarray:
    """Per-class additive offsets maximising validation macro-F1 by coordinate ascent.

    Logits or log-probabilities give the same result (they differ by a per-row constant).
    Each pass tries every ``grid`` value (default -5..5 step 0.1) for each class in turn and
    keeps a change only if it strictly raises macro-F1, so ties keep the current offset and
    the result is deterministic. Stops early when a pass changes nothing.
    """
    grid = np.round(np.linspace(-5, 5, 101), 10) if grid is None else np.asarray(grid, dtype=float)
    offsets = np.zeros(NUM_CLASSES)
    best = macro_f1_from_counts(confusion_counts(y_val, apply_offsets(logprobs_val, offsets)))
    for _ in range(n_passes):
        changed = False
        for c in LABELS:
            trial = offsets.copy()
            for value in grid:
                trial[c] = value
                score = macro_f1_from_counts(
                    confusion_counts(y_val, apply_offsets(logprobs_val, trial))
                )
                if score > best + 1e-12:
                    best, offsets[c], changed = score, value, True
        if not changed:
            break
    return offsets


def melanoma_threshold(
    y_val: np.ndarray, probs_val: np.ndarray, target_sensitivity: float = 0.90
) -> float:
    """Largest t such that validation melanoma sensitivity of ``p_mel >= t`` is >= target."""
    if not 0 < target_sensitivity <= 1:
        raise ValueError("target_sensitivity must be in (0, 1]")
    pos = np.sort(probs_val[y_val == MELANOMA, MELANOMA])
    if len(pos) == 0:
        raise ValueError("no melanoma images in the validation labels")
    candidates = pos[::-1]  # descending: sensitivity grows along this list
    sens = (len(pos) - np.searchsorted(pos, candidates, side="left")) / len(pos)
    return float(candidates[np.argmax(sens >= target_sensitivity)])


def screening_report(y: np.ndarray, probs: np.ndarray, t: float) -> dict[str, float]:
    """Melanoma-vs-rest screening at threshold ``t`` (positive when ``p_mel >= t``)."""
    flag = probs[:, MELANOMA] >= t
    mel = y == MELANOMA
    tp, fn = int(np.sum(flag & mel)), int(np.sum(~flag & mel))
    tn, fp = int(np.sum(~flag & ~mel)), int(np.sum(flag & ~mel))
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "threshold": float(t),
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
    }


def risk_coverage(y: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Selective risk (error rate of kept images) vs coverage, keeping the most confident first.

    Confidence is the max probability. Tied confidences are kept or rejected together, so
    there is one point per distinct confidence value (ordering-independent).
    """
    conf = probs.max(1)
    order = np.argsort(-conf, kind="mergesort")
    errors = np.cumsum(probs.argmax(1)[order] != y[order])
    sorted_conf = conf[order]
    last_of_tie = np.r_[sorted_conf[1:] != sorted_conf[:-1], True]
    kept = np.arange(1, len(y) + 1)[last_of_tie]
    return pd.DataFrame({"coverage": kept / len(y), "risk": errors[last_of_tie] / kept})


def aurc(y: np.ndarray, probs: np.ndarray) -> float:
    """Area under the risk-coverage curve: sum of risk x coverage step (mean risk@k if no ties)."""
    rc = risk_coverage(y, probs)
    steps = np.diff(np.r_[0.0, rc["coverage"].to_numpy()])
    return float(np.sum(steps * rc["risk"].to_numpy()))


def per_class_delta(
    y: np.ndarray, probs_teacher: np.ndarray, probs_student: np.ndarray
) -> pd.DataFrame:
    """Per-class F1 and recall of teacher and student.

    ``delta_* = student - teacher``; ``rel_gap = delta_f1 / f1_teacher`` (NaN if f1_teacher is 0).
    """
    t, s = per_class_table(y, probs_teacher), per_class_table(y, probs_student)
    delta_f1 = s["f1"] - t["f1"]
    return pd.DataFrame(
        {
            "class": CLASS_NAMES,
            "f1_teacher": t["f1"],
            "f1_student": s["f1"],
            "delta_f1": delta_f1,
            "rel_gap": np.divide(
                delta_f1, t["f1"], out=np.full(NUM_CLASSES, np.nan), where=t["f1"] > 0
            ),
            "recall_teacher": t["recall"],
            "recall_student": s["recall"],
            "delta_recall": s["recall"] - t["recall"],
        }
    )


def hierarchical_delta(
    y: np.ndarray,
    preds_a: Sequence[np.ndarray],
    preds_b: Sequence[np.ndarray],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """Mean paired Δ macro-F1 (B − A) over seeds, with a hierarchical percentile bootstrap over seeds and images.

    ``preds_a[i]`` and ``preds_b[i]`` are the two arms of seed ``i`` on the same test images ``y``. Each
    resample draws the seeds with replacement, then the test images with replacement, once, shared by every
    drawn seed and both arms (they are one test set), and averages the drawn seeds' paired differences. So
    the interval covers both sources of variation: training seeds and test-set sampling. With one seed it is
    the paired image bootstrap. ``p_value`` is the two-sided bootstrap p of Δ = 0 (twice the smaller tail,
    with the (count + 1) / (n + 1) correction); ``positive`` counts seeds whose own Δ is above 0.
    """
    y = np.asarray(y)
    a, b = np.asarray(preds_a), np.asarray(preds_b)
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] != len(y) or len(a) == 0:
        raise ValueError(f"need the same (seeds, images) predictions for both arms on {len(y)} images, "
                         f"got {a.shape} and {b.shape}")
    k, n = a.shape
    rng = np.random.default_rng(seed)
    per_seed = np.array([macro_f1_from_counts(confusion_counts(y, pb)) - macro_f1_from_counts(confusion_counts(y, pa))
                         for pa, pb in zip(a, b, strict=True)])
    deltas = np.empty(n_resamples)
    for r in range(n_resamples):
        seeds = rng.integers(0, k, k)
        idx = rng.integers(0, n, n)
        yy = y[idx]
        d = {s: macro_f1_from_counts(confusion_counts(yy, b[s, idx])) - macro_f1_from_counts(confusion_counts(yy, a[s, idx]))
             for s in set(seeds.tolist())}
        deltas[r] = np.mean([d[s] for s in seeds])
    tail = (1 - confidence) / 2
    below, above = np.sum(deltas <= 0), np.sum(deltas >= 0)
    return {"delta": float(per_seed.mean()), "low": float(np.quantile(deltas, tail)),
            "high": float(np.quantile(deltas, 1 - tail)),
            "p_value": float(min(1.0, 2 * (min(below, above) + 1) / (n_resamples + 1))),
            "seeds": int(k), "positive": int(np.sum(per_seed > 0)), "n_resamples": int(n_resamples)}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of images where the two models' top-1 predictions coincide."""
    return float(np.mean(np.asarray(pred_a) == np.asarray(pred_b)))


def mcnemar(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict[str, float | int | str]:
    """McNemar test on paired correctness; b = only A correct, c = only B correct.

    Exact two-sided binomial test (statistic = min(b, c)) when b + c < 25, otherwise
    chi-square with Edwards' continuity correction, (|b - c| - 1)^2 / (b + c), 1 d.o.f.
    """
    ok_a, ok_b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    b, c = int(np.sum(ok_a & ~ok_b)), int(np.sum(~ok_a & ok_b))
    if b + c < 25:
        stat, method = min(b, c), "exact"
        p = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    else:
        stat, method = (abs(b - c) - 1) ** 2 / (b + c), "chi2_cc"
        p = stats.chi2.sf(stat, 1)
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(p), "method": method}
