"""The aggregate's tables on small synthetic inputs: the hierarchical interval of the performance table, the
robustness summary's primary metrics and what it rests on, and the Pareto front chosen on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm

from edgekd.core import metrics as M
from edgekd.core.info import NUM_CLASSES
from edgekd.stages import tables as TB


def _noisy_probs(y: np.ndarray, flip: float, rng: np.random.Generator) -> np.ndarray:
    pred = y.copy()
    wrong = rng.random(len(y)) < flip
    pred[wrong] = rng.integers(0, NUM_CLASSES, wrong.sum())
    logits = rng.normal(0, 1, (len(y), NUM_CLASSES))
    logits[np.arange(len(y)), pred] += 4
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_count_metrics_match_sklearn_with_an_absent_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, NUM_CLASSES - 1, 300)  # the last class never occurs
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, NUM_CLASSES, 300))
    got = M.count_metrics(M.confusion_counts(y, pred))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    labels = range(NUM_CLASSES)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    assert got["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, labels=labels, average="weighted", zero_division=0))


def test_hierarchical_interval_with_one_seed_is_the_image_bootstrap_of_the_headline_metrics():
    rng = np.random.default_rng(1)
    y = rng.integers(0, NUM_CLASSES, 400)
    probs = _noisy_probs(y, 0.4, rng)
    got = TB.hierarchical_interval(y, [probs], n_resamples=200, seed=5)
    ref_rng, draws = np.random.default_rng(5), {m: [] for m in TB.HEADLINE_METRICS}
    for _ in range(200):  # the same draws, scored by the evaluation's own metric functions (sklearn)
        ref_rng.integers(0, 1, 1)
        idx = ref_rng.integers(0, len(y), len(y))
        for m in draws:
            draws[m].append(M.HEADLINE[m](y[idx], probs[idx]))
    for m, values in draws.items():
        assert got[m] == pytest.approx((np.quantile(values, 0.025), np.quantile(values, 0.975))), m


def test_hierarchical_interval_widens_when_seeds_disagree():
    rng = np.random.default_rng(2)
    y = rng.integers(0, NUM_CLASSES, 600)
    agree = [_noisy_probs(y, 0.4, rng) for _ in range(3)]
    disagree = [_noisy_probs(y, 0.05, rng), _noisy_probs(y, 0.75, rng), agree[2]]
    narrow = TB.hierarchical_interval(y, agree, n_resamples=300)["macro_f1"]
    wide = TB.hierarchical_interval(y, disagree, n_resamples=300)["macro_f1"]
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0])


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_robustness_summary_reports_balanced_accuracy_and_what_it_rests_on(tmp_path):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"student-s{seed}"
        rows = [{"suite": "source", "corruption": "clean", "severity": 0, "level": 0, "n": 300, "accuracy": 0.8,
                 "macro_f1": 0.6, "balanced_error": 0.3}]
        rows += [{"suite": "source", "corruption": c, "severity": s, "level": s, "n": 300, "accuracy": 0.7,
                  "macro_f1": 0.4 + 0.1 * seed, "balanced_error": 0.5} for c in ("noise", "jpeg") for s in (1, 2)]
        _write(run / "robustness" / "corruptions.csv", rows)
        runs.append({"path": run, "model": "student", "label": "Student", "run_id": run.name, "role": "student",
                     "arch": "resnet18"})
    table, per_corruption, _ = TB.robustness_summary(pd.DataFrame(runs))
    row = table.iloc[0]
    assert (row["seeds"], row["images"]) == (2, 300)
    assert row["balanced_accuracy"] == pytest.approx(0.5) and row["clean_balanced_accuracy"] == pytest.approx(0.7)
    assert row["macro_f1"] == pytest.approx(0.45)
    assert list(per_corruption["corruption"]) == ["noise", "jpeg"] and set(per_corruption["seeds"]) == {2}


def _efficiency_run(root: Path, name: str, p50: float, delta_int8: float, arch: str | None = None,
                    size: int = 64) -> dict:
    run = root / name
    _write(run / "efficiency" / "model.csv", [{"img_size": size, "params": 1e6, "macs": 1e8, "state_dict_bytes": 4e6,
                                              "onnx_bytes": 4e6, "onnx_int8_bytes": 1e6, "peak_cpu_rss_mb": 100}])
    _write(run / "efficiency" / "backends.csv", [
        {"backend": b, "accuracy": 0.8, "macro_f1": 0.0, "delta_macro_f1_vs_eager": d, "max_abs_logit_diff_vs_eager": 0,
         "file_bytes": 1e6} for b, d in (("eager", 0.0), ("ort_fp32", 0.0), ("ort_int8", delta_int8))])
    _write(run / "efficiency" / "latency.csv", [
        {"device": "cpu", "batch": 1, "size": size, "img_size": size, "backend": b, "p50_ms": p50 * f,
         "p90_ms": p50 * f, "p99_ms": p50 * f} for b, f in (("eager", 1.0), ("ort_fp32", 0.8), ("ort_int8", 0.5))])
    return {"path": run, "model": name, "label": name, "arch": arch or name}


def test_pareto_front_is_chosen_on_validation_and_shows_seed_means(tmp_path):
    runs = pd.DataFrame([_efficiency_run(tmp_path, "fast", 1.0, -0.01), _efficiency_run(tmp_path, "slow", 2.0, 0.0)])
    # "slow" is better on test but worse on validation: it must not be on the front
    perf = pd.DataFrame([{"model": "fast", "role": "student", "seeds": 3, "val_macro_f1": 0.60, "macro_f1": 0.50},
                         {"model": "slow", "role": "student", "seeds": 3, "val_macro_f1": 0.55, "macro_f1": 0.70}])
    pts = TB.efficiency_summary(runs, perf)["pareto"].set_index(["model", "backend"])
    assert pts.index[pts["pareto"]].tolist() == [("fast", "ort_int8")]
    assert len(pts) == 6
    assert pts.loc[("fast", "ort_int8"), "macro_f1"] == pytest.approx(0.49)  # seed mean + the INT8 change
    assert pts.loc[("slow", "eager"), "seeds"] == 3


def test_one_latency_per_architecture_and_input_size(tmp_path):
    """Two models of one architecture at one size are the same graph: both get the median of their timings, and a
    model at another size keeps its own."""
    runs = pd.DataFrame([_efficiency_run(tmp_path, "teacher", 1.0, 0.0, "lite0", 128),
                         _efficiency_run(tmp_path, "student", 3.0, 0.0, "lite0", 128),
                         _efficiency_run(tmp_path, "small", 0.5, 0.0, "lite0", 64)])
    perf = pd.DataFrame([{"model": m, "role": "student", "seeds": 1, "val_macro_f1": 0.5, "macro_f1": 0.5}
                         for m in ("teacher", "student", "small")])
    out = TB.efficiency_summary(runs, perf)
    pts = out["pareto"].set_index(["model", "backend"])
    assert pts.loc[("teacher", "eager"), "p50_ms"] == pts.loc[("student", "eager"), "p50_ms"] == pytest.approx(2.0)
    assert pts.loc[("teacher", "eager"), "timings"] == 2 and pts.loc[("small", "eager"), "timings"] == 1
    assert pts.loc[("small", "ort_int8"), "p50_ms"] == pytest.approx(0.25) and pts.loc[("small", "eager"), "size"] == 64
    assert out["int8"].set_index("model").loc["student", "ort_int8_ms"] == pytest.approx(1.0)


def test_int8_target_and_median_read_the_interleaved_passes_where_they_ran(tmp_path):
    """The separately timed p50s give FP32/INT8 = 1.6 for both models; one of them also has interleaved passes with a
    median of 2.2: its target (>= 2x) and the study's median speed-up must follow the passes, the other's the p50s."""
    runs = pd.DataFrame([_efficiency_run(tmp_path, "passed", 1.0, 0.0), _efficiency_run(tmp_path, "timed", 1.0, 0.0)])
    _write(tmp_path / "passed" / "efficiency" / "int8_passes.csv", [{"speedup": v} for v in (2.1, 2.2, 2.3)])
    perf = pd.DataFrame([{"model": m, "role": "student", "seeds": 1, "val_macro_f1": 0.5, "macro_f1": 0.5}
                         for m in ("passed", "timed")])
    int8 = TB.efficiency_summary(runs, perf)["int8"].set_index("model")
    assert int8["speedup_vs_ort_fp32"].tolist() == pytest.approx([1.6, 1.6])
    assert int8.loc["passed", "speedup"] == pytest.approx(2.2) and int8.loc["timed", "speedup"] == pytest.approx(1.6)
    assert int8["target_met"].tolist() == [True, False]


def test_a_kd_student_at_another_input_size_has_no_no_kd_pair():
    base = {"role": "student", "arch": "lite0", "split": "official", "seed": 0, "path": Path("/nonexistent")}
    runs = pd.DataFrame([{**base, "setting": "nokd", "kd_mode": "none", "size": 64},
                         {**base, "setting": "kd_128px", "kd_mode": "hinton", "size": 128}])
    per_seed, table = TB.paired_kd(runs)
    assert per_seed.empty and table.empty


def _evaluated_run(folder: Path, y: np.ndarray, logits: np.ndarray, macro_f1: float, ece: tuple[float, float],
                   temperature: float) -> Path:
    """A run folder with what :func:`TB.paired_kd` reads: test predictions, test metrics and calibration."""
    (folder / "eval").mkdir(parents=True)
    np.savez(folder / "predictions.npz", test_labels=y, test_logits=logits)
    pd.DataFrame({"metric": ["macro_f1", "balanced_accuracy", "accuracy"],
                  "value": [macro_f1, macro_f1 + 0.01, macro_f1 + 0.02]}).to_csv(folder / "eval" / "metrics.csv", index=False)
    pd.DataFrame({"stage": ["before", "after"], "ece": list(ece), "temperature": [1.0, temperature]}).to_csv(
        folder / "eval" / "calibration.csv", index=False)
    return folder


def test_paired_kd_carries_each_arms_calibration_over_the_kept_seeds(tmp_path):
    """The paper's calibration table only formats: each arm's ECE and fitted temperature are seed means over the
    pairs that enter the Δ (a pair with a collapsed member enters neither), and Δ ECE is their difference."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, NUM_CLASSES, 60)
    base = {"role": "student", "arch": "resnet18", "split": "official", "size": 64, "standardize": False}
    rows = []
    arms = {"kd": ("hinton", [(0.30, 0.05, 1.6), (0.20, 0.03, 1.4), (0.90, 0.50, 9.0)]),
            "nokd": ("none", [(0.10, 0.04, 1.1), (0.12, 0.02, 1.0), (0.11, 0.02, 1.0)])}
    for setting, (mode, values) in arms.items():
        for seed, (before, after, temperature) in enumerate(values):
            path = _evaluated_run(tmp_path / f"{setting}-s{seed}", y, rng.normal(size=(60, NUM_CLASSES)),
                                  0.5 + 0.01 * seed, (before, after), temperature)
            label = "ResNet-18 · " + ("KD" if setting == "kd" else "no KD")
            rows.append({**base, "setting": setting, "kd_mode": mode, "seed": seed, "path": path, "label": label,
                         "run_id": path.name, "val_macro_f1": 0.5, "valid": seed < 2 or setting == "nokd"})
    table, per_seed = TB.paired_kd(pd.DataFrame(rows))
    row = table.set_index("setting").loc["kd"]
    assert row["pairs"] == 2 and row["pairs_dropped"] == 1  # seed 2's KD run collapsed: out of every mean
    assert (row["temperature_kd"], row["temperature_nokd"]) == pytest.approx((1.5, 1.05))
    assert (row["ece_before_kd"], row["ece_before_nokd"]) == pytest.approx((0.25, 0.11))
    assert (row["ece_after_kd"], row["ece_after_nokd"]) == pytest.approx((0.04, 0.03))
    assert row["d_ece_before"] == pytest.approx(row["ece_before_kd"] - row["ece_before_nokd"])
    assert row["d_ece_after"] == pytest.approx(row["ece_after_kd"] - row["ece_after_nokd"])
    assert list(per_seed["seed"]) == [0, 1]


def test_int8_op_summary_sums_kernels_and_names_the_largest_other_int8_operator() -> None:
    """Per model: kernel and convolution sums per variant, the QDQ share of INT8 only, and the largest INT8 operator
    that is neither a convolution nor a quantise/dequantise node."""
    rows = [("m", "ort_fp32", "Conv", 2.0, 0.8, False), ("m", "ort_fp32", "Add", 0.5, 0.2, False),
            ("m", "ort_int8", "QLinearConv", 0.5, 0.5, False), ("m", "ort_int8", "QuantizeLinear", 0.1, 0.1, True),
            ("m", "ort_int8", "QLinearMul", 0.3, 0.3, False), ("m", "ort_int8", "QLinearAdd", 0.1, 0.1, False)]
    ops = pd.DataFrame(rows, columns=["model", "variant", "op_type", "ms_per_call", "share", "qdq"])
    got = TB.int8_op_summary(ops).iloc[0]
    assert (got["fp32_ms"], got["int8_ms"], got["conv_fp32_ms"], got["conv_int8_ms"]) == pytest.approx((2.5, 1.0, 2.0, 0.5))
    assert got["qdq_share"] == pytest.approx(0.1) and got["conv_speedup"] == pytest.approx(4.0)
    assert (got["other_op"], got["other_share"]) == ("QLinearMul", pytest.approx(0.3))
