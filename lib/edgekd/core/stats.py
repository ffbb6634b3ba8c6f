"""Seed-level inference for paired KD-vs-no-KD comparisons at 3-5 seeds: t-interval, TOST, power, the verdict.

Why not only a bootstrap: with 3 seeds a percentile bootstrap over seeds can draw only 10 distinct seed
multisets, and its spread is the divide-by-n SD with near-normal quantiles, so it understates the seed
variance (the t quantile at 2 degrees of freedom is 4.30, not 1.96). The Student-t interval and test are
exact under normal seed-to-seed variation and stay honest at small n; the noncentral t gives their exact
power. Every input is the vector of per-seed paired deltas (KD − no-KD of the same seed, e.g. Δ macro-F1
on the official test split); one value per seed.

The pre-declared decision rule (:func:`verdict`, applied to a family by :func:`family_verdicts`):

1. fewer than 2 seeds: ``inconclusive`` (no seed spread to test against);
2. Holm-adjusted paired-t p < α: ``gain`` if the mean Δ > 0, ``loss`` if < 0;
3. else Holm-adjusted TOST p < α: ``equivalent`` (the effect lies within ±margin, the SESOI);
4. else ``inconclusive``, with the minimum detectable Δ (MDE) at this n and seed SD.

A difference can be both significant and inside ±margin; it is then called a gain or loss (rule 2 comes
first) and ``within_margin`` says it is smaller than the SESOI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from edgekd.core.metrics import holm

#: Smallest effect size of interest: Δ macro-F1 (about 1 % of the 2,005 test images' worth of macro-F1).
SESOI = 0.02
#: Verdict labels.
GAIN, LOSS, EQUIVALENT, INCONCLUSIVE = "gain", "loss", "equivalent", "inconclusive"


def _deltas(deltas: Sequence[float]) -> np.ndarray:
    """The per-seed deltas as a 1-D float array; refuses empty, nested or non-finite input (a NaN delta is a
    missing run, which must be dropped or its pair removed upstream, never averaged over silently)."""
    d = np.asarray(deltas, dtype=float)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"need a 1-D sequence of at least one per-seed delta, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"per-seed deltas must be finite, got {d.tolist()}")
    return d


def _check_level(name: str, value: float, high: float = 1.0) -> None:
    if not (0 < value < high):
        raise ValueError(f"{name} must lie in (0, {high}), got {value}")


def _check_margin(margin: float) -> None:
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive finite number, got {margin}")


def _moments(d: np.ndarray) -> tuple[int, float, float, float]:
    """n, mean, sample SD and standard error of the mean (SD and SE are NaN with one seed)."""
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return n, float(d.mean()), sd, sd / math.sqrt(n)


def paired_t(deltas: Sequence[float], confidence: float = 0.95) -> dict[str, float | int]:
    """Mean paired Δ across seeds, its Student-t interval and the two-sided one-sample t-test of Δ = 0.

    Equals ``scipy.stats.ttest_1samp(deltas, 0)`` (``p``) and its ``confidence_interval(confidence)``.
    With one seed every spread-based value is NaN. Identical deltas (SD 0) give a zero-width interval and
    p = 0 (or NaN if they are all 0), as numpy's division gives.
    """
    _check_level("confidence", confidence)
    d = _deltas(deltas)
    n, mean, sd, se = _moments(d)
    df = n - 1
    if n < 2:
        t = p = half = math.nan
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = float(np.divide(mean, se))
        p = float(2 * sps.t.sf(abs(t), df)) if not math.isnan(t) else math.nan
        half = float(sps.t.ppf(0.5 + confidence / 2, df) * se)
    return {"mean": mean, "sd": sd, "n": n, "df": df, "se": se, "t": t, "p": p,
            "ci_low": mean - half, "ci_high": mean + half, "confidence": confidence}


def tost(deltas: Sequence[float], margin: float = SESOI, alpha: float = 0.05) -> dict[str, float | int | bool]:
    """Two one-sided t-tests of equivalence within ±``margin`` on the paired seed deltas (Schuirmann 1987).

    ``p_lower`` tests H0: Δ ≤ −margin against Δ > −margin, ``p_upper`` tests H0: Δ ≥ +margin against
    Δ < +margin; ``p`` = the larger. ``equivalent`` (p < alpha) is the same as the (1 − 2·alpha) t-interval,
    also returned, lying inside (−margin, +margin). With one seed p is NaN and nothing is equivalent.
    """
    _check_margin(margin)
    _check_level("alpha", alpha, 0.5)
    d = _deltas(deltas)
    n, mean, sd, se = _moments(d)
    if n < 2:
        p_lower = p_upper = math.nan
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            p_lower = float(sps.t.sf(np.divide(mean + margin, se), n - 1))
            p_upper = float(sps.t.cdf(np.divide(mean - margin, se), n - 1))
    p = max(p_lower, p_upper) if n > 1 else math.nan
    ci = paired_t(d, 1 - 2 * alpha)
    return {"mean": mean, "sd": sd, "n": n, "margin": margin, "alpha": alpha, "p_lower": p_lower,
            "p_upper": p_upper, "p": p, "equivalent": bool(p < alpha), "ci_low": ci["ci_low"],
            "ci_high": ci["ci_high"], "confidence": 1 - 2 * alpha}


def _check_design(sd: float, n: int | None = None) -> None:
    if not (np.isfinite(sd) and sd >= 0):
        raise ValueError(f"sd must be a finite number >= 0, got {sd}")
    if n is not None and (int(n) != n or n < 2):
        raise ValueError(f"a t-test needs an integer n >= 2 seeds, got {n}")


def power_t(effect: float, sd: float, n: int, alpha: float = 0.05, two_sided: bool = True) -> float:
    """Exact power of the one-sample t-test of Δ = 0 with ``n`` seeds when the true mean Δ is ``effect`` and the
    seed SD is ``sd``: the noncentral t with df n − 1 and noncentrality effect·√n / sd (normal seed spread).

    Two-sided power counts both rejection tails; one-sided tests Δ > 0. SD 0 gives power 1 (0 effect: alpha).
    """
    _check_design(sd, n)
    _check_level("alpha", alpha)
    df = n - 1
    if sd == 0:  # the test statistic is ±inf (certain rejection on its side) or 0/0 (treated as the null)
        if effect == 0:
            return alpha
        return 1.0 if two_sided or effect > 0 else 0.0
    nc = effect * math.sqrt(n) / sd
    if two_sided:  # the lower tail P(T <= -c; nc) as P(T >= c; -nc): scipy's nct.cdf far in a tail can be NaN
        crit = sps.t.ppf(1 - alpha / 2, df)
        return float(sps.nct.sf(crit, df, nc) + sps.nct.sf(crit, df, -nc))
    return float(sps.nct.sf(sps.t.ppf(1 - alpha, df), df, nc))


def mde(sd: float, n: int, alpha: float = 0.05, power: float = 0.8, two_sided: bool = True) -> float:
    """Minimum detectable mean paired Δ: the effect the t-test with ``n`` seeds of SD ``sd`` finds with ``power``.

    Solved exactly on the noncentral t (brentq on the standardised effect), not with the normal shortcut
    (z_{1−α/2} + z_power)·sd/√n, which at n = 3 understates it by half (1.62·sd against 3.26·sd).
    """
    _check_design(sd, n)
    _check_level("alpha", alpha)
    _check_level("power", power)
    if power <= alpha:
        raise ValueError(f"power {power} must exceed alpha {alpha} (a zero effect already has power alpha)")
    if sd == 0:
        return 0.0

    def gap(d: float) -> float:
        return power_t(d, 1.0, n, alpha, two_sided) - power

    high = 1.0
    while gap(high) < 0:
        high *= 2
    return float(sd * optimize.brentq(gap, 0.0, high, xtol=1e-12, rtol=1e-12))


def half_width(sd: float, n: int, confidence: float = 0.95) -> float:
    """Plug-in half-width t_{(1+c)/2, n−1}·sd/√n of the Student-t interval of the mean Δ with ``n`` seeds."""
    _check_design(sd, n)
    _check_level("confidence", confidence)
    return float(sps.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def seeds_needed(sd: float, half_width_target: float, confidence: float = 0.95, n_max: int = 100_000) -> int:
    """Smallest n (>= 2) whose plug-in t-interval half-width is <= ``half_width_target``.

    It uses the SD as if known; the realised half-width scatters around it (its expected SD is a little smaller).
    """
    _check_design(sd)
    if not (np.isfinite(half_width_target) and half_width_target > 0):
        raise ValueError(f"half_width_target must be a positive finite number, got {half_width_target}")
    return _smallest_n(lambda n: half_width(sd, n, confidence) <= half_width_target, n_max)


def seeds_for_power(sd: float, effect: float = SESOI, alpha: float = 0.05, power: float = 0.8,
                    two_sided: bool = True, n_max: int = 100_000) -> int:
    """Smallest n (>= 2) at which the t-test detects a true mean Δ of ``effect`` with at least ``power``."""
    _check_design(sd)
    if not (np.isfinite(effect) and effect != 0):
        raise ValueError(f"effect must be a non-zero finite number, got {effect}")
    _check_level("power", power)
    return _smallest_n(lambda n: power_t(effect, sd, n, alpha, two_sided) >= power, n_max)


def _smallest_n(ok: Callable[[int], bool], n_max: int) -> int:
    """Smallest n in [2, n_max] with ``ok(n)`` for a condition monotone in n: doubling, then bisection."""
    if ok(2):
        return 2
    low, high = 2, 4
    while not ok(high):
        if high >= n_max:
            raise ValueError(f"more than n_max = {n_max} seeds would be needed")
        low, high = high, min(2 * high, n_max)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


def verdict(deltas: Sequence[float], margin: float = SESOI, alpha: float = 0.05, p_adjusted: float | None = None,
            tost_p_adjusted: float | None = None, power: float = 0.8) -> dict:
    """The pre-declared three-way verdict of one KD-vs-no-KD comparison (the module docstring's rule).

    ``p_adjusted`` and ``tost_p_adjusted`` are the Holm-adjusted paired-t and TOST p of this comparison within
    its family (:func:`family_verdicts` supplies them); left out, the comparison is its own family of one.
    ``mde`` is the minimum detectable Δ at this n and seed SD (two-sided, at the nominal alpha and ``power``:
    the most lenient Holm step; NaN below 2 seeds). ``label`` is the text a table shows.
    """
    _check_margin(margin)
    _check_level("alpha", alpha, 0.5)
    t = paired_t(deltas)
    e = tost(deltas, margin, alpha)
    p = t["p"] if p_adjusted is None else float(p_adjusted)
    p_eq = e["p"] if tost_p_adjusted is None else float(tost_p_adjusted)
    n, sd = t["n"], t["sd"]
    detectable = mde(sd, n, alpha, power) if n >= 2 else math.nan
    if n >= 2 and p < alpha and t["mean"] != 0:
        call = GAIN if t["mean"] > 0 else LOSS
    elif n >= 2 and p_eq < alpha:
        call = EQUIVALENT
    else:
        call = INCONCLUSIVE
    label = {GAIN: "gain", LOSS: "loss", EQUIVALENT: f"equivalent within ±{margin:g}"}.get(call)
    if label is None:
        label = f"inconclusive, MDE = {detectable:.3f}" if n >= 2 else "inconclusive, fewer than 2 seeds"
    return {"verdict": call, "label": label, "mean": t["mean"], "sd": sd, "n": n, "ci_low": t["ci_low"],
            "ci_high": t["ci_high"], "p": t["p"], "p_adjusted": p, "tost_p": e["p"], "tost_p_adjusted": p_eq,
            "within_margin": bool(n >= 2 and p_eq < alpha), "margin": margin, "alpha": alpha, "mde": detectable,
            "power": power}


def family_verdicts(family: Mapping[str, Sequence[float]], margin: float = SESOI, alpha: float = 0.05,
                    power: float = 0.8) -> dict[str, dict]:
    """:func:`verdict` of every comparison of one Holm family (e.g. the students of one KD method on the official
    split), with the paired-t p's and the TOST p's each Holm-adjusted over the family (``edgekd.core.metrics.holm``).

    A pre-declared member with fewer than 2 seeds stays in the family (its p counts as 1 in the adjustment, so it
    still costs the others their share of alpha); its own adjusted p's are NaN (it was not tested).
    """
    names = list(family)

    def adjust(raw: list[float]) -> list[float]:
        adjusted = holm([1.0 if math.isnan(p) else p for p in raw]) if raw else []
        return [math.nan if math.isnan(p) else float(a) for p, a in zip(raw, adjusted, strict=True)]

    adj_t = adjust([paired_t(family[k])["p"] for k in names])
    adj_e = adjust([tost(family[k], margin, alpha)["p"] for k in names])
    return {k: verdict(family[k], margin, alpha, a, b, power) | {"family_size": len(names)}
            for k, a, b in zip(names, adj_t, adj_e, strict=True)}


def kd_verdicts(per_seed: pd.DataFrame, metric: str = "d_macro_f1", family: Sequence[str] = ("split", "setting"),
                comparison: Sequence[str] = ("arch",), margin: float = SESOI, alpha: float = 0.05,
                power: float = 0.8) -> pd.DataFrame:
    """:func:`family_verdicts` of a table of per-seed paired deltas (one row per comparison and seed, as the
    aggregate's ``paired_kd_seeds.csv``): one Holm family per ``family`` value (the students of one KD setting on one
    split), one comparison per ``comparison`` value inside it. One row per comparison: the keys, ``n``, ``mean``,
    ``sd``, the 95 % t-interval (``ci_low``, ``ci_high``), ``t_p`` and ``t_p_holm``, ``tost_p`` and ``tost_p_holm``,
    ``mde``, ``verdict`` and ``label``. The tables and the paper read verdicts from here, so they cannot disagree."""
    keys = [*family, *comparison]
    rows = []
    for fam, group in per_seed.groupby(list(family), sort=False):
        members = {key: g[metric].to_numpy(float) for key, g in group.groupby(list(comparison), sort=False)}
        for key, v in family_verdicts(members, margin, alpha, power).items():
            rows.append(dict(zip(keys, (*fam, *key), strict=True)) | {
                "n": v["n"], "mean": v["mean"], "sd": v["sd"], "ci_low": v["ci_low"], "ci_high": v["ci_high"],
                "t_p": v["p"], "t_p_holm": v["p_adjusted"], "tost_p": v["tost_p"], "tost_p_holm": v["tost_p_adjusted"],
                "mde": v["mde"], "verdict": v["verdict"], "label": v["label"]})
    columns = [*keys, "n", "mean", "sd", "ci_low", "ci_high", "t_p", "t_p_holm", "tost_p", "tost_p_holm", "mde",
               "verdict", "label"]
    return pd.DataFrame(rows, columns=columns)
