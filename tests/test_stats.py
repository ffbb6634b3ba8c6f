"""Tests for edgekd.core.stats against scipy's references (ttest_1samp, its confidence interval, nct), hand values,
a Monte-Carlo power check, the verdict's decision rule, and scripts/power.py on the published reference."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps

from edgekd.core import info, stats
from edgekd.core.metrics import holm

CASES = [[0.021, 0.005, 0.022], [0.048, -0.043, 0.024], [-0.0145, -0.0022, -0.0082], [0.01, 0.03],
         [0.004, -0.011, 0.007, 0.019, -0.002], list(np.random.default_rng(3).normal(0.01, 0.02, 8))]


def load_power_script():
    spec = importlib.util.spec_from_file_location("power_script", info.REPO_ROOT / "scripts" / "power.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- paired t


@pytest.mark.parametrize("deltas", CASES)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_paired_t_is_scipys_one_sample_t(deltas, confidence):
    ref = sps.ttest_1samp(deltas, 0)
    ci = ref.confidence_interval(confidence)
    got = stats.paired_t(deltas, confidence)
    assert got["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert got["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert got["mean"] == pytest.approx(np.mean(deltas))
    assert got["sd"] == pytest.approx(np.std(deltas, ddof=1))
    assert got["n"] == len(deltas) and got["df"] == len(deltas) - 1


def test_paired_t_uses_t_not_normal_quantiles_at_three_seeds():
    """A naive interval mean ± 1.96·SE is 2.2 times too narrow at n = 3 (t_{0.975, 2} = 4.303)."""
    d = [0.02, -0.01, 0.005]
    got = stats.paired_t(d)
    se = np.std(d, ddof=1) / math.sqrt(3)
    assert (got["ci_high"] - got["ci_low"]) / 2 == pytest.approx(4.302652729911275 * se, rel=1e-9)
    assert (got["ci_high"] - got["ci_low"]) / 2 > 2.1 * 1.959963984540054 * se
    assert got["p"] == pytest.approx(2 * sps.t.sf(abs(np.mean(d)) / se, 2))
    assert got["p"] > 2 * sps.norm.sf(abs(np.mean(d)) / se)  # the normal p would be smaller


def test_one_seed_has_no_interval():
    got = stats.paired_t([0.03])
    assert got["mean"] == 0.03 and got["n"] == 1
    assert all(math.isnan(got[k]) for k in ("sd", "se", "t", "p", "ci_low", "ci_high"))


@pytest.mark.parametrize("bad", [[0.01, float("nan"), 0.02], [0.01, float("inf")], [], [[0.01, 0.02]]])
def test_missing_or_malformed_deltas_are_refused(bad):
    for fn in (stats.paired_t, stats.tost, stats.verdict):
        with pytest.raises(ValueError):
            fn(bad)


def test_identical_deltas_give_a_zero_width_interval():
    got = stats.paired_t([0.01, 0.01, 0.01])
    assert got["ci_low"] == got["ci_high"] == pytest.approx(0.01) and got["p"] == 0.0


# ---------------------------------------------------------------- TOST


@pytest.mark.parametrize("deltas", CASES)
@pytest.mark.parametrize("margin", [0.01, 0.02, 0.05])
def test_tost_is_two_one_sided_scipy_tests(deltas, margin):
    lower = sps.ttest_1samp(deltas, popmean=-margin, alternative="greater").pvalue
    upper = sps.ttest_1samp(deltas, popmean=margin, alternative="less").pvalue
    got = stats.tost(deltas, margin, 0.05)
    assert got["p_lower"] == pytest.approx(lower, rel=1e-10)
    assert got["p_upper"] == pytest.approx(upper, rel=1e-10)
    assert got["p"] == pytest.approx(max(lower, upper), rel=1e-10)
    ci = sps.ttest_1samp(deltas, 0).confidence_interval(0.90)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_tost_equivalence_is_the_90_percent_interval_inside_the_margin():
    rng = np.random.default_rng(0)
    agree = 0
    for _ in range(400):
        n = int(rng.integers(2, 7))
        d = rng.normal(rng.uniform(-0.02, 0.02), rng.uniform(0.001, 0.02), n)
        got = stats.tost(d, 0.02, 0.05)
        inside = -0.02 < got["ci_low"] and got["ci_high"] < 0.02
        assert got["equivalent"] == inside
        agree += inside
    assert 20 < agree < 380  # both outcomes were exercised


def test_tost_refuses_a_non_positive_margin_and_finds_nothing_with_one_seed():
    for margin in (0.0, -0.02, float("nan")):
        with pytest.raises(ValueError):
            stats.tost([0.01, 0.0, 0.005], margin)
    got = stats.tost([0.0])
    assert math.isnan(got["p"]) and got["equivalent"] is False


# ---------------------------------------------------------------- power, MDE, seeds


def test_power_is_the_noncentral_t_and_a_known_value():
    # R: pwr.t.test(n = 10, d = 1, sig.level = 0.05, type = "one.sample") gives power 0.8030969
    assert stats.power_t(1.0, 1.0, 10) == pytest.approx(0.8030969, abs=1e-6)
    n, effect, sd = 5, 0.02, 0.015
    nc, crit = effect * math.sqrt(n) / sd, sps.t.ppf(0.975, n - 1)
    hand = sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)
    assert stats.power_t(effect, sd, n) == pytest.approx(hand, rel=1e-9)
    assert stats.power_t(effect, sd, n, two_sided=False) == pytest.approx(sps.nct.sf(sps.t.ppf(0.95, n - 1), n - 1, nc))
    assert stats.power_t(0.0, sd, n) == pytest.approx(0.05, rel=1e-9)  # a zero effect is rejected at rate alpha
    assert stats.power_t(-effect, sd, n) == pytest.approx(stats.power_t(effect, sd, n))


@pytest.mark.parametrize("n, effect, sd", [(3, 0.03, 0.01), (4, 0.02, 0.015), (5, 0.02, 0.03)])
def test_power_matches_a_monte_carlo_t_test(n, effect, sd):
    draws = np.random.default_rng(1234).normal(effect, sd, (5000, n))
    rejected = np.mean(sps.ttest_1samp(draws, 0, axis=1).pvalue < 0.05)
    assert rejected == pytest.approx(stats.power_t(effect, sd, n), abs=0.03)


def test_power_is_not_the_normal_approximation_at_four_seeds():
    """Φ(d·√n − z) says 0.76 where the t-test's real power (and the simulation above) is about 0.45."""
    naive = sps.norm.cdf(0.02 / 0.015 * 2 - sps.norm.ppf(0.975))
    assert naive > 0.75 and stats.power_t(0.02, 0.015, 4) < 0.5


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("two_sided", [True, False])
def test_mde_solves_the_power_equation(n, two_sided):
    sd = 0.017
    m = stats.mde(sd, n, 0.05, 0.8, two_sided)
    assert stats.power_t(m, sd, n, 0.05, two_sided) == pytest.approx(0.8, abs=1e-9)
    assert stats.mde(2 * sd, n, 0.05, 0.8, two_sided) == pytest.approx(2 * m)


def test_mde_at_three_seeds_is_twice_the_normal_shortcut():
    shortcut = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) / math.sqrt(3)
    exact = stats.mde(1.0, 3)
    assert exact == pytest.approx(3.264, abs=1e-3) and exact > 1.9 * shortcut
    assert stats.mde(1.0, 3, two_sided=False) < exact
    assert stats.mde(0.0, 3) == 0.0


@pytest.mark.parametrize("kwargs", [{"sd": 0.01, "n": 1}, {"sd": 0.01, "n": 2.5}, {"sd": float("nan"), "n": 3},
                                    {"sd": -0.01, "n": 3}, {"sd": 0.01, "n": 3, "power": 0.04},
                                    {"sd": 0.01, "n": 3, "alpha": 0.0}])
def test_mde_refuses_impossible_designs(kwargs):
    with pytest.raises(ValueError):
        stats.mde(**kwargs)


@pytest.mark.parametrize("sd, target", [(0.02, 0.02), (0.035, 0.02), (0.035, 0.03), (0.004, 0.02), (0.0, 0.02)])
def test_seeds_needed_is_the_smallest_n_with_that_half_width(sd, target):
    n = stats.seeds_needed(sd, target)
    assert sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= target
    assert n == 2 or sps.t.ppf(0.975, n - 2) * sd / math.sqrt(n - 1) > target


def test_seeds_needed_uses_t_quantiles():
    """With sd = half-width the normal rule 1.96/√n <= 1 says 4 seeds; the t-interval needs 7."""
    assert stats.seeds_needed(0.02, 0.02) == 7
    with pytest.raises(ValueError):
        stats.seeds_needed(0.02, 0.0)


@pytest.mark.parametrize("sd", [0.005, 0.015, 0.035, 0.06])
def test_seeds_for_power_is_the_smallest_n_with_that_power(sd):
    n = stats.seeds_for_power(sd, 0.02, 0.05, 0.8)
    assert stats.power_t(0.02, sd, n) >= 0.8
    assert n == 2 or stats.power_t(0.02, sd, n - 1) < 0.8
    assert stats.mde(sd, n) <= 0.02 + 1e-12


def test_seeds_for_power_hand_value():
    # d = 0.5: the one-sample t-test needs 34 (pwr.t.test gives n = 33.37 for power 0.8)
    assert stats.seeds_for_power(0.04, 0.02) == 34


# ---------------------------------------------------------------- verdict


def test_verdict_gain_loss_equivalent_inconclusive():
    gain = stats.verdict([0.05, 0.06, 0.055, 0.052])
    assert gain["verdict"] == "gain" and gain["label"] == "gain" and gain["p_adjusted"] < 0.05
    loss = stats.verdict([-0.05, -0.06, -0.055, -0.052])
    assert loss["verdict"] == "loss"
    eq = stats.verdict([0.001, -0.002, 0.0005, 0.0015, -0.001])
    assert eq["verdict"] == "equivalent" and eq["label"] == "equivalent within ±0.02" and eq["tost_p"] < 0.05
    wide = [0.048, -0.043, 0.024]
    inc = stats.verdict(wide)
    sd = np.std(wide, ddof=1)
    assert inc["verdict"] == "inconclusive"
    assert inc["mde"] == pytest.approx(stats.mde(sd, 3)) and inc["label"] == f"inconclusive, MDE = {inc['mde']:.3f}"


def test_verdict_gain_takes_precedence_over_equivalence():
    """A significant difference smaller than the SESOI is a gain, flagged as within the margin."""
    got = stats.verdict([0.005, 0.0052, 0.0049, 0.0051])
    assert got["verdict"] == "gain" and got["within_margin"] is True


def test_verdict_with_one_seed_is_inconclusive():
    got = stats.verdict([0.03])
    assert got["verdict"] == "inconclusive" and math.isnan(got["mde"]) and math.isnan(got["p"])
    assert got["label"] == "inconclusive, fewer than 2 seeds"


def test_verdict_refuses_a_non_positive_margin():
    with pytest.raises(ValueError):
        stats.verdict([0.01, 0.02, 0.0], margin=0.0)
    with pytest.raises(ValueError):
        stats.verdict([0.01, 0.02, 0.0], margin=-0.02)


def test_verdict_uses_the_adjusted_p_it_is_given():
    d = [0.03, 0.035, 0.028]
    assert stats.verdict(d)["verdict"] == "gain"
    held = stats.verdict(d, p_adjusted=0.2)
    assert held["verdict"] == "inconclusive" and held["p"] < 0.05 and held["p_adjusted"] == 0.2


def test_family_verdicts_holm_adjust_both_tests_over_the_family():
    family = {"a": [0.03, 0.035, 0.026], "b": [0.02, 0.028, 0.015], "c": [0.0, 0.001, -0.001, 0.0005], "d": [0.02]}
    got = stats.family_verdicts(family)
    raw_t = [stats.paired_t(family[k])["p"] for k in family]
    raw_e = [stats.tost(family[k])["p"] for k in family]
    expect_t = holm([1.0 if math.isnan(p) else p for p in raw_t])
    expect_e = holm([1.0 if math.isnan(p) else p for p in raw_e])
    assert [got[k]["p_adjusted"] for k in "abc"] == pytest.approx(list(expect_t[:3]))
    assert [got[k]["tost_p_adjusted"] for k in "abc"] == pytest.approx(list(expect_e[:3]))
    assert math.isnan(got["d"]["p_adjusted"]) and math.isnan(got["d"]["tost_p_adjusted"])  # one seed: untested
    assert all(v["family_size"] == 4 for v in got.values())
    assert got["b"]["p"] < 0.05 and got["b"]["verdict"] == "inconclusive"  # significant alone, not after Holm
    assert got["a"]["verdict"] == "gain" and got["d"]["verdict"] == "inconclusive"


# ---------------------------------------------------------------- scripts/power.py


def test_power_script_on_the_published_reference(tmp_path):
    script = load_power_script()
    assert script.main(["--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "power.csv")
    assert (tmp_path / "README.md").is_file()
    seeds = pd.read_csv(info.REPO_ROOT / "paper" / "results" / "default" / "paired_kd_seeds.csv")
    assert len(table) == seeds.groupby(["arch", "split", "setting"]).ngroups
    row = table[table["arch"] == "resnet18"].iloc[0]
    d = seeds.loc[seeds["arch"] == "resnet18", "d_macro_f1"]
    assert row["n"] == len(d) and row["sd"] == pytest.approx(d.std(ddof=1))
    assert row["mde_3"] == pytest.approx(stats.mde(d.std(ddof=1), 3))
    assert row["seeds_hw_0.02"] == stats.seeds_needed(d.std(ddof=1), 0.02)
    assert set(table["verdict"]) <= {"gain", "loss", "equivalent", "inconclusive"}


def test_kd_verdicts_holm_within_each_setting_and_split_never_across():
    rng = np.random.default_rng(3)
    rows = [{"arch": arch, "split": "official", "setting": setting, "seed": seed,
             "d_macro_f1": shift + rng.normal(0, 0.005)}
            for setting, shifts in (("kd", (0.05, 0.0, -0.01)), ("dkd", (0.002, 0.03, 0.0)))
            for arch, shift in zip(("a", "b", "c"), shifts, strict=True) for seed in range(4)]
    per_seed = pd.DataFrame(rows)
    table = stats.kd_verdicts(per_seed).set_index(["setting", "arch"])
    assert len(table) == 6
    for setting in ("kd", "dkd"):
        family = {a: per_seed[(per_seed["setting"] == setting) & (per_seed["arch"] == a)]["d_macro_f1"].to_numpy()
                  for a in "abc"}
        raw = [sps.ttest_1samp(family[a], 0.0).pvalue for a in "abc"]
        assert np.allclose(table.loc[setting, "t_p"].to_numpy(), raw)
        assert np.allclose(table.loc[setting, "t_p_holm"].to_numpy(), holm(raw))  # a family of 3, not of 6
        expected = stats.family_verdicts(family)
        assert [table.loc[(setting, a), "label"] for a in "abc"] == [expected[a]["label"] for a in "abc"]
    assert table.loc[("kd", "a"), "verdict"] == stats.GAIN and table.loc[("dkd", "b"), "verdict"] == stats.GAIN


def test_capacity_gap_pairs_the_two_teachers_gains_by_seed_and_refuses_different_baselines(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gap_script", info.REPO_ROOT / "scripts" / "capacity_gap.py")
    gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap)
    assert gap.main(["--out", str(tmp_path / "out")]) == 0
    seeds = pd.read_csv(tmp_path / "out" / "gap_seeds.csv")
    strong = pd.read_csv(gap.STRONG / "paired_kd_seeds.csv").query("setting == 'kd' and split == 'official'")
    row = seeds.iloc[0]
    mine = strong[(strong["arch"] == row["arch"]) & (strong["seed"] == row["seed"])]["d_macro_f1"].item()
    assert row["gain_strong"] == mine and row["gap"] == pytest.approx(row["gain_strong"] - row["gain_weak"])
    table = pd.read_csv(tmp_path / "out" / "gap.csv").set_index("student")
    for student, g in seeds.groupby("student"):
        assert table.loc[student, "gap"] == pytest.approx(g["gap"].mean())
        assert table.loc[student, "verdict"] == stats.family_verdicts(
            {s: h["gap"].to_numpy() for s, h in seeds.groupby("student")})[student]["label"]
    other = tmp_path / "other"
    other.mkdir()
    for name in ("paired_kd_seeds.csv", "performance.csv"):
        (other / name).write_bytes((gap.WEAK / name).read_bytes())
    perf = pd.read_csv(other / "performance.csv")
    perf.loc[perf["model"].str.endswith("-nokd"), "macro_f1"] += 0.01  # another baseline: the gains do not pair
    perf.to_csv(other / "performance.csv", index=False)
    assert gap.main(["--out", str(tmp_path / "refused"), "--weak", str(other)]) == 2
    assert "differ" in capsys.readouterr().err and not (tmp_path / "refused").exists()
