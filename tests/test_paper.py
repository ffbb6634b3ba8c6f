"""The manuscript: the aggregate's statistics on hand-made runs, qmd parsing, the browser check itself, and the
smoke profile's paper (HTML and PDF) rendered from its outputs and checked in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from scipy.special import softmax

from edgekd.core import calibration as C
from edgekd.core import info
from edgekd.core import metrics as M
from edgekd.core import stats as ST
from edgekd.paper import closing, render, results, shared, supplement
from edgekd.paper import format as FM
from edgekd.paper import sources as SR
from edgekd.stages import aggregate as A
from edgekd.stages import figures as FG
from edgekd.stages import runs as RN
from edgekd.stages import tables as TB

# ----------------------------------------------------------------------------- hand-made runs


def fake_run(root, name, arch, seed, y, pred, mode=None, split="official", collapsed=None):
    """A run folder with what the aggregate reads for pairing: run_config, metrics.json, predictions, eval/metrics.csv
    and eval/calibration.csv (a wrong prediction is less confident in a run of another seed, so ECE differs)."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    kd = None if mode is None else {"mode": mode, "alpha": 0.5, "temperature": 4.0, "beta": 0.0, "standardize": False}
    (run / "run_config.json").write_text(json.dumps({"arch": arch, "seed": seed, "data": {"size": 28, "split": split},
                                                     "train": {"epochs": 1}, "kd": kd}))
    (run / "metrics.json").write_text(json.dumps({"collapsed": collapsed, "tta_views": 1}))
    logits = 5.0 * np.eye(info.NUM_CLASSES)[pred]
    np.savez(run / "predictions.npz", val_logits=logits, val_labels=y, test_logits=logits, test_labels=y)
    probs = softmax(logits, axis=1)
    values = [fn(y, probs) for fn in M.HEADLINE.values()]
    pd.DataFrame({"metric": list(M.HEADLINE), "value": values, "ci_low": values, "ci_high": values}).to_csv(
        run / "eval" / "metrics.csv", index=False)
    C.calibration_report(y, logits * (1 + seed / 4), 2.0).to_csv(run / "eval" / "calibration.csv", index=False)
    return run


def noisy(y, rng, rate):
    """``y`` with a fraction ``rate`` of labels replaced at random."""
    pred = y.copy()
    flip = rng.random(len(y)) < rate
    pred[flip] = rng.integers(0, info.NUM_CLASSES, flip.sum())
    return pred


@pytest.fixture()
def profile(tmp_path):
    """Teacher, ResNet-18 with KD and no KD over 3 seeds (no-KD seed 2 collapsed), a lesion pair."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, info.NUM_CLASSES, 300)
    fake_run(tmp_path, "teacher-resnet50-s0", "resnet50", 0, y, noisy(y, rng, 0.2))
    preds = {}
    for seed in range(3):
        preds[("kd", seed)] = noisy(y, rng, 0.30)
        preds[("nokd", seed)] = noisy(y, rng, 0.40)
        fake_run(tmp_path, f"student-resnet18-kd-s{seed}", "resnet18", seed, y, preds[("kd", seed)], "hinton")
        fake_run(tmp_path, f"student-resnet18-nokd-s{seed}", "resnet18", seed, y, preds[("nokd", seed)], "none",
                 collapsed="100% of its validation predictions are 'nv'" if seed == 2 else None)
    fake_run(tmp_path, "teacher-resnet50-lesion-s0", "resnet50", 0, y, noisy(y, rng, 0.5), split="lesion")
    fake_run(tmp_path, "student-resnet18-kd-lesion-s0", "resnet18", 0, y, noisy(y, rng, 0.6), "hinton", split="lesion")
    return tmp_path, y, preds


def test_run_identity_comes_from_run_config_and_the_folder(profile):
    root, _, _ = profile
    lesion = RN.run_identity(root / "student-resnet18-kd-lesion-s0")
    assert (lesion["role"], lesion["arch"], lesion["setting"], lesion["split"], lesion["seed"]) == \
        ("student", "resnet18", "kd", "lesion", 0)
    assert lesion["label"] == "ResNet-18 · KD (lesion split)" and lesion["model"] == "student-resnet18-kd-lesion"
    teacher = RN.run_identity(root / "teacher-resnet50-s0")
    assert (teacher["role"], teacher["setting"], teacher["kd_mode"], teacher["valid"]) == ("teacher", "", "teacher", True)
    assert RN.run_identity(root / "student-resnet18-nokd-s2")["valid"] is False
    shutil.move(root / "student-resnet18-kd-s1", root / "student-resnet18-kd-s7")  # folder and config disagree
    with pytest.raises(ValueError, match="does not match its run_config"):
        RN.run_identity(root / "student-resnet18-kd-s7")


def test_kd_is_paired_by_seed_with_the_pre_declared_verdict_and_collapsed_pairs_dropped(profile):
    root, y, preds = profile
    runs = RN.discover(root)
    assert list(runs["run_id"][:2]) == ["teacher-resnet50-s0", "student-resnet18-kd-s0"]  # official split first
    summary, per_seed = TB.paired_kd(runs)
    official = summary[summary["split"] == "official"].iloc[0]
    assert (official["setting"], official["pairs"], official["pairs_dropped"]) == ("kd", 2, 1)
    deltas = [M.macro_f1(y, preds[("kd", s)]) - M.macro_f1(y, preds[("nokd", s)]) for s in (0, 1)]
    assert np.allclose(per_seed[per_seed["split"] == "official"]["d_macro_f1"], deltas)
    half = stats.t.ppf(0.975, 1) * np.std(deltas, ddof=1) / np.sqrt(2)
    assert official["d_macro_f1"] == pytest.approx(np.mean(deltas))
    assert official["d_macro_f1_low"] == pytest.approx(max(np.mean(deltas) - half, -1.0))
    # the analysis plan's test: the paired t across seeds (scipy's), the TOST and the verdict; no McNemar
    assert official["t_p"] == pytest.approx(stats.ttest_1samp(deltas, 0.0).pvalue)
    assert official["t_p_holm"] == pytest.approx(official["t_p"])  # the only student of its setting: a family of one
    assert official["verdict_label"] == ST.verdict(deltas)["label"]
    assert not {"b", "c", "mcnemar_p"} & set(summary.columns)
    ece = {(k, s): pd.read_csv(root / f"student-resnet18-{k}-s{s}" / "eval" / "calibration.csv").set_index("stage")["ece"]
           for k in ("kd", "nokd") for s in (0, 1)}
    seeds = per_seed[per_seed["split"] == "official"]
    for stage in ("before", "after"):
        assert np.allclose(seeds[f"d_ece_{stage}"], [ece[("kd", s)][stage] - ece[("nokd", s)][stage] for s in (0, 1)])
        assert official[f"d_ece_{stage}"] == pytest.approx(seeds[f"d_ece_{stage}"].mean())
    assert (summary["split"] == "lesion").sum() == 0  # the lesion student has no lesion no-KD partner


def test_equal_compute_control_is_a_baseline_never_a_kd_setting(profile):
    """A second no-KD setting (no KD for longer) is not paired as if it distilled, nor is it the best *distilled*
    student; KD is paired against it in the equal-compute table, by seed, as against the baseline."""
    root, y, preds = profile
    rng = np.random.default_rng(1)
    longer = {s: noisy(y, rng, 0.25) for s in range(3)}
    for seed in range(3):
        fake_run(root, f"student-resnet18-nokd_2x-s{seed}", "resnet18", seed, y, longer[seed], "none")
    runs = RN.discover(root)
    assert TB.controls(runs) == ["nokd_2x"]
    summary, _ = TB.paired_kd(runs)
    assert set(summary["setting"]) == {"kd"}
    control, per_seed = TB.paired_kd(runs, "nokd_2x")
    row = control[control["split"] == "official"].iloc[0]
    deltas = [M.macro_f1(y, preds[("kd", s)]) - M.macro_f1(y, longer[s]) for s in range(3)]
    assert (row["setting"], row["pairs"]) == ("kd", 3) and row["d_macro_f1"] == pytest.approx(np.mean(deltas))
    valid = runs[runs["valid"]]
    perf = TB.performance_table(valid, TB.seed_metrics(valid))
    perf.loc[perf["model"] == "student-resnet18-nokd_2x", "macro_f1"] = 0.99
    assert A.best_student(perf)["model"] == "student-resnet18-nokd_2x"
    assert A.best_student(perf, distilled=True)["model"] == "student-resnet18-kd"


def test_collapsed_runs_enter_no_mean_and_best_student_is_by_macro_f1(profile):
    root, y, preds = profile
    runs = RN.discover(root)
    valid = runs[runs["valid"]]
    seeds = TB.seed_metrics(valid)
    perf = TB.performance_table(valid, seeds)
    nokd = perf.set_index("model").loc["student-resnet18-nokd"]
    assert nokd["seeds"] == 2 and nokd["macro_f1"] == pytest.approx(np.mean([M.macro_f1(y, preds[("nokd", s)])
                                                                             for s in (0, 1)]))
    assert list(RN.excluded_runs(runs)["run_id"]) == ["student-resnet18-nokd-s2"]
    # a student with the higher accuracy but the lower macro-F1 is not the best student
    perf.loc[perf["model"] == "student-resnet18-nokd", "accuracy"] = 0.99
    assert A.best_student(perf)["model"] == "student-resnet18-kd"


def test_best_student_is_chosen_on_validation_never_on_test_and_distilled_excludes_no_kd(profile):
    root, _, _ = profile
    runs = RN.discover(root)
    valid = runs[runs["valid"]]
    perf = TB.performance_table(valid, TB.seed_metrics(valid))
    val = {m: valid.loc[valid["model"] == m, "val_macro_f1"].mean() for m in perf["model"]}  # collapsed runs excluded
    assert perf.set_index("model")["val_macro_f1"].to_dict() == pytest.approx(val)
    assert A.best_student(perf)["model"] == perf[perf["role"] == "student"].set_index("model")["val_macro_f1"].idxmax()
    # a test macro-F1 of 0.99 does not make a student the best: only validation does
    other = "student-resnet18-nokd" if A.best_student(perf)["model"] != "student-resnet18-nokd" else "student-resnet18-kd"
    perf.loc[perf["model"] == other, "macro_f1"] = 0.99
    assert A.best_student(perf)["model"] != other
    perf.loc[perf["model"] == "student-resnet18-nokd", "val_macro_f1"] = 0.98
    assert A.best_student(perf)["model"] == "student-resnet18-nokd"
    assert A.best_student(perf, distilled=True)["model"] == "student-resnet18-kd"


def test_largest_kd_gain_is_chosen_on_validation_among_the_comparisons_with_most_pairs():
    paired = pd.DataFrame([
        {"student": "A", "setting": "kd", "pairs": 3, "d_val_macro_f1": 0.01, "d_macro_f1": 0.09},  # best on test
        {"student": "B", "setting": "kd", "pairs": 3, "d_val_macro_f1": 0.03, "d_macro_f1": 0.00},  # best on val
        {"student": "C", "setting": "kd", "pairs": 1, "d_val_macro_f1": 0.20, "d_macro_f1": 0.20},  # fewer pairs
    ])
    assert A.largest_kd_gain(paired)["student"] == "B"
    assert A.largest_kd_gain(paired.iloc[:0]) is None


def _perf_row(model, label, role, kd_mode, init="scratch", split="official", seeds=3, val=0.5, acc=0.5, f1=0.5):
    arch = model.split("-")[1]
    return {"model": model, "label": label, "role": role, "arch": arch, "kd_mode": kd_mode, "init": init, "split": split,
            "seeds": seeds, "val_macro_f1": val, "accuracy": acc, "macro_f1": f1}


def _pair(arch, setting, low, d=0.02, split="official", baseline="nokd"):
    return {"arch": arch, "student": arch.upper(), "split": split, "setting": setting, "method": setting.upper(),
            "baseline": baseline,
            "d_macro_f1": d, "d_macro_f1_hb_low": low}


def test_targets_table_measures_each_target_on_the_right_model():
    perf = pd.DataFrame([
        _perf_row("teacher-lite-s", "T", "teacher", "teacher", init="imagenet", seeds=1, acc=0.87, f1=0.73),
        _perf_row("teacher-lite-lesion", "T (lesion)", "teacher", "teacher", split="lesion", seeds=1, acc=0.99, f1=0.99),
        _perf_row("student-a-nokd", "A · no KD", "student", "none", val=0.60, acc=0.90, f1=0.72),
        _perf_row("student-a-kd", "A · kd", "student", "hinton", val=0.62, acc=0.80, f1=0.63),
        _perf_row("student-b-kd", "B · kd", "student", "hinton", val=0.50, acc=0.70, f1=0.54),
        _perf_row("student-c-kd", "C · kd", "student", "hinton", val=0.50, acc=0.70, f1=0.56),
        _perf_row("student-lite-kd", "Lite · kd", "student", "hinton", init="imagenet", seeds=1, val=0.55, acc=0.95, f1=0.95),
        _perf_row("student-lite-kd_128px", "Lite · kd_128px", "student", "hinton", init="imagenet", seeds=1, val=0.5,
                  acc=0.9, f1=0.9),
    ])
    paired = pd.DataFrame([_pair("a", "kd", 0.01), _pair("b", "kd", -0.01), _pair("c", "kd", 0.02),
                           _pair("lite", "kd", 0.5), _pair("a", "lskd", 0.4, split="lesion")])
    equal = pd.DataFrame([_pair("a", "kd", -0.02, baseline="nokd_eq")])
    int8 = pd.DataFrame([  # the edge model is the pretrained KD student at its smallest size, not the 128 px one
        {"model": "student-lite-kd_128px", "label": "Lite · kd_128px", "img_size": 128, "delta_macro_f1": 0.0,
         "speedup_low": 5.0},
        {"model": "student-a-kd", "label": "A · kd", "img_size": 64, "delta_macro_f1": 0.0, "speedup_low": 3.0},
        {"model": "student-lite-kd", "label": "Lite · kd", "img_size": 64, "delta_macro_f1": -0.005, "speedup_low": 1.02}])
    t = A.targets_table(perf, paired, equal, int8).set_index("target")
    assert list(t.index) == list(A.TARGETS)
    assert (t.loc["teacher_accuracy", "value"], t.loc["teacher_accuracy", "met"]) == (0.87, True)
    assert (t.loc["teacher_macro_f1", "value"], t.loc["teacher_macro_f1", "met"]) == (0.73, False)
    # the best student is A · kd by validation (0.62), not Lite (test 0.95) nor A · no KD (test accuracy 0.90)
    assert (t.loc["student_macro_f1", "model"], t.loc["student_macro_f1", "value"]) == ("A · kd", 0.63)
    assert not t.loc["student_macro_f1", "met"] and not t.loc["student_accuracy", "met"]
    assert (t.loc["every_student_macro_f1", "model"], t.loc["every_student_macro_f1", "met"]) == ("B · kd", False)
    kd = t.loc["kd_scratch_students_above_zero"]  # the pretrained Lite student and the lesion pair do not count
    assert (kd["model"], kd["count"], kd["of"], kd["met"]) == ("kd", 2, 3, True)
    ec = t.loc["kd_above_equal_compute"]
    assert (ec["count"], ec["of"], ec["met"]) == (0, 1, False)
    equal.loc[0, "d_macro_f1_hb_low"] = 0.001
    assert A.targets_table(perf, paired, equal, int8).set_index("target").loc["kd_above_equal_compute", "met"]
    # INT8: the pretrained KD student's row, not the from-scratch one's 3x
    assert t.loc["int8_edge_speedup_low", "value"] == 1.02 and t.loc["int8_edge_speedup_low", "met"]
    assert t.loc["int8_edge_delta_macro_f1", "met"]
    int8.loc[2, ["delta_macro_f1", "speedup_low"]] = (-0.02, 1.0)
    t = A.targets_table(perf, paired, equal, int8).set_index("target")
    assert not t.loc["int8_edge_speedup_low", "met"] and not t.loc["int8_edge_delta_macro_f1", "met"]
    assert not A.targets_table(perf, paired.iloc[:0], equal, None).set_index("target").loc[
        "kd_scratch_students_above_zero", "met"]


def test_targets_text_says_why_and_never_shows_nan_where_a_target_has_no_usable_run(tmp_path):
    perf = pd.DataFrame([_perf_row("student-a-kd", "A · kd", "student", "hinton", seeds=2, acc=0.6, f1=0.15)])
    table = A.targets_table(perf, pd.DataFrame(), pd.DataFrame(), None)  # no usable teacher, no KD pair, no INT8
    table.to_csv(tmp_path / "targets.csv", index=False)
    numbers = {"targets": len(table), "targets_met": 0, "teacher_epochs": 2, "student_epochs": 2, "size": 28,
               "n_excluded": 3, "n_seeds": 2}
    src = SR.Source("smoke", tmp_path, "published", numbers, {})
    text = supplement.targets(src) + supplement.targets_paragraph(src)
    assert "nan" not in text.lower() and "None" not in text
    assert "no teacher run is usable" in text and "no KD run has a usable no-KD partner" in text
    assert "no INT8 measurement of a pretrained KD student" in text
    # a target no run measures is "not measured", not missed, and the count leaves it out
    assert "This run meets 0 of the 3 targets it can measure (@tbl-targets); of the study's 9, 6 targets had no run " in text
    assert ("| students whose KD Δ macro-F1 against the equal-compute no-KD control has a seeds-and-images interval "
            "above 0 | all of them | — | — | not measured |") in text
    assert "**The weakest student**, A · kd, reaches macro-F1 0.150 in 2 epochs; 3 collapsed runs are excluded." in text
    assert "| macro-F1 of that student | ≥\u00a00.70 | 0.150 | A · kd | no |" in text


def test_intervals_respect_the_metric_range():
    clipped = TB.seed_interval([0.97, 0.99, 1.0], (0.0, 1.0))
    assert clipped["clipped"] and clipped["ci_high"] == 1.0 and clipped["ci_low"] < clipped["mean"]
    free = TB.seed_interval([0.97, 0.99, 1.0])
    assert not free["clipped"] and free["ci_high"] > 1.0
    half = stats.t.ppf(0.975, 1) * np.std([0.0, 0.02], ddof=1) / np.sqrt(2)
    assert FG.unit_interval([0.0, 0.02]) == (0.0, pytest.approx(0.01 + half))


def test_figures_name_kd_methods_in_words_and_tell_one_architectures_settings_apart_by_line():
    """The paired figure's legend is the methods' names, not the profile's labels; within one architecture, whose
    shades are close, every KD setting has its own line pattern and no KD and the teacher are solid."""
    per_seed = pd.DataFrame([{"student": "EfficientNet-Lite0", "setting": s, "method": m, "seed": k,
                              "d_macro_f1": 0.01 * k, "d_balanced_accuracy": 0.0}
                             for s, m in (("kd", "KD"), ("lskd", "logit-standardised KD"), ("dkd", "DKD")) for k in (0, 1)])
    fig = FG.paired_kd_figure(per_seed)
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert legend == ["KD", "logit-standardised KD", "DKD"]
    labels = [f"EfficientNet-Lite0 · {s}" for s in ("no KD", "KD", "logit-standardised KD", "DKD", "DIST")]
    dashes = [FG.model_dashes(label) for label in labels]
    assert dashes[0] == "" == FG.model_dashes("EfficientNet-Lite0 teacher") and len(set(map(str, dashes))) == 5
    scores = pd.DataFrame([{"label": "ResNet-18 · KD", "test_set": t, "value": v} for t in ("in-distribution",
                           "isic2018_test_half") for v in (0.5, 0.6)])
    legend = [t.get_text() for t in FG.external_gap_figure(scores).axes[0].get_legend().get_texts()]
    assert legend == ["official test split", "ISIC 2018 test, 759 images"]


def test_lesion_split_is_set_beside_the_official_split(profile):
    root, _, _ = profile
    runs = RN.discover(root)
    valid = runs[runs["valid"]]
    table = TB.split_comparison(valid, TB.seed_metrics(valid)).set_index("label")
    assert list(table.index) == ["ResNet-50 teacher", "ResNet-18 · KD"]
    row = table.loc["ResNet-18 · KD"]
    assert (row["official_seeds"], row["lesion_seeds"]) == (3, 1)
    assert row["delta_macro_f1"] == pytest.approx(row["lesion_macro_f1"] - row["official_macro_f1"])


def test_cells_never_show_nan_or_booleans():
    assert [FM.num(x) for x in (float("nan"), None, True, False, -0.0001, 3)] == ["—", "—", "yes", "no", "0.000", "3"]
    assert FM.interval(0.5, float("nan"), float("nan")) == "0.500"
    assert FM.interval(0.01, -0.02, 0.04, sign=True) == '+0.010<br><span class="ci">[-0.020,\u00a0+0.040]</span>'
    table = FM.md_table(pd.DataFrame({"a": ["x"], "b": [np.nan]}), {"A": FM.col("a", str), "B": FM.col("b")}, "Cap.")
    assert table.splitlines()[2] == "| x | — |"


def _plain(table: str) -> str:
    """A markdown table without the span that keeps model names on one line."""
    return table.replace('<span class="name">', "").replace("</span>", "")


def test_gpu_benchmark_table_and_paragraph_come_from_its_csv(tmp_path, monkeypatch):
    monkeypatch.setenv(info.RESULTS_ENV, str(tmp_path))
    assert SR.gpu() is None  # no benchmark committed: the paper shows no GPU section
    folder = tmp_path / "gpu"
    folder.mkdir()
    rows = [{"profile": "default", "arch": arch, "size": 64, "stem_stride": 2, "batch": b, "precision": prec,
             "p50_ms": p50 * (1 if b == 1 else 1.5), "p99_ms": p50 * 2, "timed_calls": 200}
            for arch, fp32, fp16 in (("resnet50", 2.0, 2.5), ("resnet18", 1.0, 0.8))
            for b in (1, 32) for prec, p50 in (("fp32", fp32), ("amp_fp16", fp16))]
    pd.DataFrame(rows).to_csv(folder / "gpu_latency.csv", index=False)
    (folder / "environment.json").write_text(json.dumps({"gpu": "Some GPU", "torch": "2.x"}))
    src = SR.gpu()
    text = supplement.gpu_paragraph(src)
    assert "relative to ResNet-50's, the earlier teacher trained from scratch (2.00 ms), is ResNet-18 0.50×" in text
    assert "slower than FP32 for 1 of 2 models" in text and "neither is among the models timed" in text
    table = _plain(supplement.gpu_latency(src))
    assert "nan" not in table and "Some GPU" in table and "200 timed calls" in table
    assert "| ResNet-18 | 64 | 32 | 1.50 | 2.00 | 1.20 | 1.60 |" in table.splitlines()


def test_kd_power_paragraph_and_table_come_from_its_tables(tmp_path, monkeypatch):
    monkeypatch.setenv(info.RESULTS_ENV, str(tmp_path))
    assert SR.kd_power() is None  # no study committed: the paper says so instead
    folder = tmp_path / "studies" / "kd_power"
    folder.mkdir(parents=True)

    def pair(student: str, setting: str, d: float, low: float, high: float) -> dict:
        return {"student": student, "setting": setting, "pairs": 4, "d_macro_f1": d, "d_macro_f1_low": low,
                "d_macro_f1_high": high, "d_balanced_accuracy": d, "d_balanced_accuracy_low": low,
                "d_balanced_accuracy_high": high, "mcnemar_p": 0.01}

    pd.DataFrame([pair("A", "kd_t2", 0.05, 0.01, 0.09), pair("A", "nokd16", 0.08, 0.02, 0.1),
                  pair("B", "kd_t2", 0.02, -0.01, 0.05), pair("B", "nokd16", 0.01, -0.02, 0.04)]
                 ).to_csv(folder / "paired.csv", index=False)
    pd.DataFrame([pair("A", "kd_t2", -0.03, -0.05, -0.01), pair("B", "kd_t2", 0.01, -0.02, 0.04)]
                 ).to_csv(folder / "paired_vs_nokd16.csv", index=False)
    runs = [{"kind": "teacher:t2", "arch": "resnet50", "epochs": 16, "val_macro_f1": 0.55, "test_macro_f1": 0.57},
            {"kind": "teacher:t1", "arch": "resnet50", "epochs": 16, "val_macro_f1": 0.60, "test_macro_f1": 0.61}]
    runs += [{"kind": f"student:{k}", "arch": "resnet18", "epochs": e, "val_macro_f1": 0.5, "test_macro_f1": f}
             for k, e, f in (("nokd", 8, 0.50), ("nokd16", 16, 0.58), ("nokd16", 16, 0.56))]
    pd.DataFrame(runs).to_csv(folder / "runs.csv", index=False)
    (folder / "provenance.json").write_text(json.dumps({"strong_teacher": "t1", "machine": {"gpu": "Some GPU"}}))
    text = supplement.kd_power_paragraph(SR.kd_power())
    assert "(GPU), Some GPU, running" in text and "3 student runs, 4 seeds per setting" in text
    assert "same 8 epochs for 1 of 2 students" in text  # only A's interval lies above 0
    assert "gains more on average for 1 of 2 students (1 of 2 intervals above 0)" in text
    assert "is below it for 1 of 2 students: much of KD's gain" in text  # no "and above for 0"
    assert ("2 ResNet-50 teachers reached validation macro-F1 stride-2 stem (the recipe's), 0.550; stride-1 stem, "
            "0.600: the best on validation (stride-1 stem) is +0.050") in text
    assert "test macro-F1 is 0.610, against 0.570 for a no-KD ResNet-18 trained 16 epochs" in text
    assert "At the same budget" not in text  # no run of KD for twice the epochs yet
    assert not text.startswith("**")  # no bold lead repeating the section's heading
    (folder / "kd16").mkdir()
    pd.DataFrame([pair("A", "kd16", -0.001, -0.02, 0.015)]).to_csv(folder / "kd16" / "paired_vs_nokd16.csv", index=False)
    text = supplement.kd_power_paragraph(SR.kd_power())
    assert "At the same budget, KD for twice the epochs against no KD for twice the epochs: A Δ macro-F1 -0.001 " \
           "[-0.020, +0.015] over 4 seeds" in text
    table = _plain(supplement.kd_power_table(SR.kd_power()))
    assert len([line for line in table.splitlines() if line.startswith("| A ")]) == 4 and "nan" not in table
    assert "| B | KD, the recipe's teacher | no KD, 2× epochs | 4 |" in table


# ----------------------------------------------------------------------------- qmd and the browser check


def test_split_qmd_keeps_order_and_drops_chunk_options():
    text = "---\ntitle: T\n---\n\nIntro *text*.\n\n```{python}\n#| echo: false\nx = 1\n```\n\nMiddle.\n\n```{python}\ny = 2\n```\n"
    meta, nb = render.split_qmd(text)
    assert meta == {"title": "T"}
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "markdown", "code"]
    assert nb.cells[1].source == "x = 1" and nb.cells[2].source == "Middle."


def test_browser_check_finds_each_defect(tmp_path):
    png = tmp_path / "dot.png"
    from PIL import Image

    Image.new("RGB", (4, 4), "red").save(png)
    html = tmp_path / "bad.html"
    html.write_text(f"""<html><body style="max-width:600px;padding:0 10px">
      <figure><img src="{png.name}"><figcaption>fine</figcaption></figure><p>png</p>
      <img src="missing.png">
      <table><tbody><tr><td>model</td><td>nan</td></tr></tbody></table>
      <table><tbody><tr><td>model</td><td>True</td></tr></tbody></table>
      <table style="width:2000px"><tbody><tr><td>wide</td><td>1</td></tr></tbody></table>
    </body></html>""")
    found = " | ".join(render.problems(render.browser_check(html)))
    for defect in ("1/2 figures loaded", "1/3 tables filled", "wider than the text column", "literal nan", "stray words"):
        assert defect in found, (defect, found)


def test_crossref_numbers_figures_and_tables_in_order_and_links_each_reference():
    table = FM.md_table(pd.DataFrame({"a": [1]}), {"A": FM.col("a")}, "What each arm gets.", label="arms")
    auto = FM.md_table(pd.DataFrame({"a": [2]}), {"A": FM.col("a")}, "Images per split and class (DermaMNIST order).")
    assert table.endswith(": What each arm gets. {#tbl-arms}\n")
    assert auto.endswith("{#tbl-images-per-split-and-class}\n")
    md = ("See @fig-paired-kd, @tbl-arms and @tbl-gone [@guo2017calibration]; mail a@tbl-arms.\n\n" + table + "\n"
          + shared.figure(SR.Source("p", info.REPO_ROOT, "published", {}, {}), "paired_kd.png", "Paired Δ, clipped to [−1, 1].")
          + "\n" + auto)
    out = render.crossref(md)
    assert "See [Figure\u00a01](#fig-paired-kd), [Table\u00a01](#tbl-arms) and ?\\@tbl-gone [@guo2017calibration]" in out
    assert "mail a@tbl-arms." in out  # not a reference: no word character may precede the @
    assert ": []{#tbl-arms}Table\u00a01: What each arm gets.\n" in out
    assert ": []{#tbl-images-per-split-and-class}Table\u00a02: Images per split" in out
    assert re.search(r"^!\[Figure\u00a01: Paired Δ, clipped to \[−1, 1\]\.\]\(\S+paired_kd\.png\)\{#fig-paired-kd\}$", out, re.M)
    with pytest.raises(ValueError, match="#tbl-arms is given twice"):
        render.crossref(table + "\n" + table)


def test_renderer_says_which_ran_and_why(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    assert render.renderer() == (render.FALLBACK, "no quarto binary on PATH (the conda route, environment.yml, installs it)")
    monkeypatch.setattr(render.shutil, "which", lambda name: f"/opt/conda/bin/{name}")
    assert render.renderer() == (render.QUARTO, "/opt/conda/bin/quarto")
    assert render.renderer(force_fallback=True) == (render.FALLBACK, "--fallback was given")
    clean = {"images": 1, "images_loaded": 1, "tables": 1, "tables_filled": 1, "empty_cells": 0, "errors": 0,
             **dict.fromkeys(("too_wide", "nan", "stray_words", "broken", "repeated_headings", "unresolved_refs",
                              "broken_intervals", "broken_names", "code_in_prose", "undefined_abbreviations",
                              "unknown_abbreviations"), [])}
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    monkeypatch.setattr(render, "render", lambda profile, force_fallback: tmp_path / "index.html")
    monkeypatch.setattr(render, "write_pdf", lambda html, pdf: pdf)
    monkeypatch.setattr(render, "main_text_pages", lambda pdf: 1)
    monkeypatch.setattr(render, "check", lambda html: {"screen": clean})
    assert render.main(["--profile", "default"]) == 0
    out = capsys.readouterr().out
    assert "edgekd-paper: rendering with the pandoc fallback: no quarto binary on PATH" in out
    assert "paper.pdf with the pandoc fallback" in out


def test_counts_read_in_words_with_thousands_separators():
    assert [FM.count(n, "interval") for n in (0, 1, 2, 1006)] == ["no interval", "1 interval", "2 intervals",
                                                                 "1,006 intervals"]
    assert FM.count(1, "CPU thread") == "1 CPU thread" and FM.count(3, "analysis", "analyses") == "3 analyses"
    assert (FM.num(1006), FM.num(8113.4, 0), FM.num(1234.5678, 1)) == ("1,006", "8,113", "1,234.6")
    assert supplement.bare_teacher("EfficientNet-Lite0 teacher") == "EfficientNet-Lite0"
    src = SR.Source("default", info.REPO_ROOT, "published", {}, {"machine": {"torch_threads": 1}})
    assert "(1 CPU thread by default)" in supplement.source_note(src)


def _page(tmp_path, body: str):
    html = tmp_path / "page.html"
    html.write_text(f'<html><body style="max-width:600px;padding:0 10px">{body}</body></html>')
    return render.browser_check(html)


def test_browser_check_finds_numbers_and_words_broken_across_lines(tmp_path):
    cells = ('<table><tbody><tr><td>model</td><td style="width:1px;{wrap}">p &lt;&nbsp;0.001</td>'
             '<td style="width:1px;{wrap}">standardised</td><td>1,006</td></tr></tbody></table>')
    bad = _page(tmp_path, cells.format(wrap="overflow-wrap:anywhere"))
    assert any("0.001" in b for b in bad["broken"]) and any("standardised" in b for b in bad["broken"]), bad["broken"]
    assert "numbers or words broken across lines" in " | ".join(render.problems(bad))
    good = _page(tmp_path, cells.format(wrap="overflow-wrap:normal") + "<p>" + "A long paragraph that wraps. " * 40 + "</p>"
                 + '<p><code style="display:inline-block;width:20px;overflow-wrap:anywhere">paper/results/x</code></p>')
    assert good["broken"] == []


def test_browser_check_finds_headings_repeated_within_their_section(tmp_path):
    bad = _page(tmp_path, """<h2>Results</h2><h3>The previous teacher: could that setup have shown a gain?</h3>
      <p><strong>Could this setup have shown a gain?</strong> A larger study ...</p>
      <h3>Does a stronger teacher give a larger gain?</h3>
      <table><caption>Table 2: Does a stronger teacher give a larger gain? ResNet-18's Δ.</caption>
      <tbody><tr><td>a</td><td>1</td></tr></tbody></table>
      <h3>Robustness</h3><p>text</p><h3>Robustness</h3><p>See ?@tbl-gone.</p>""")
    assert len(bad["repeated_headings"]) == 3, bad["repeated_headings"]
    assert bad["unresolved_refs"] == ["?@tbl-gone"]
    found = " | ".join(render.problems(bad))
    assert "3 headings repeated within their section" in found and "1 unresolved cross-references" in found
    good = _page(tmp_path, """<h2>Methods</h2><h3>The teacher</h3><p>text</p>
      <h2>Results</h2><h3>The study's targets</h3><ul><li><strong>The teacher</strong>, Lite0, misses.</li></ul>
      <h3>The teacher</h3><p><strong>Why the students' classifiers start small.</strong> In an earlier profile ...</p>
      <h3>External validation</h3><table><caption>Table 1: External validation (means over seeds).</caption>
      <tbody><tr><td>a</td><td>1</td></tr></tbody></table>""")
    assert good["repeated_headings"] == [] and good["unresolved_refs"] == []


def test_student_recipe_is_read_from_the_profile_that_made_the_results():
    path = info.REPO_ROOT / "params" / "smoke.yaml"
    prov = {"profile_file": "params/smoke.yaml", "profile_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    text = supplement.student_recipe(SR.Source("smoke", info.REPO_ROOT, "outputs", {}, prov))
    assert "| Setting | ResNet\u201118, MobileNetV2 (KD + attention transfer, no KD) |" in text  # words, as the labels
    prof = yaml.safe_load(path.read_text())
    assert f"| Epochs | {prof['train']['epochs']} |" in text and f"| Batch size | {prof['train']['batch_size']} |" in text
    assert f"| Peak learning rate | {prof['train']['lr']:g} |" in text and "| Optimiser | AdamW |" in text
    assert "| Distillation | Hinton, T 4, α 0.5, attention transfer β 100; no KD |" in text
    assert "{#tbl-student-recipe}" in text and "params/" not in text  # the file is the provenance's, not the prose's
    unknown = SR.Source("smoke", info.REPO_ROOT, "published", {}, {**prov, "profile_sha256": "0" * 64})
    assert SR.profile(unknown) is None and "cannot be stated" in supplement.student_recipe(unknown)


def test_ethics_licence_and_code_sections_come_from_the_results(tmp_path):
    pd.DataFrame([{"split": "train", "nv": 3, "mel": 1, "total": 4}, {"split": "test", "nv": 1, "mel": 1, "total": 2}]
                 ).to_csv(tmp_path / "data_counts.csv", index=False)
    pd.DataFrame([{"arch": "efficientnet_lite0", "init": "imagenet"}, {"arch": "resnet18", "init": "scratch"}]
                 ).to_csv(tmp_path / "runs.csv", index=False)
    src = SR.Source("smoke", tmp_path, "published", {}, {"git": {"commit": "a" * 40, "dirty": False}})
    use = closing.intended_use(src)
    assert "not medical devices" in use and "(75% of the training images are melanocytic nevi)" in use
    licence = closing.data_licence(src)
    assert "HAM10000 (6 dermatoscopic images)" in licence and "CC BY-NC 4.0" in licence and "CC BY 4.0" in licence
    assert "[@tschandl2018dataverse]" in licence and "[@yang2023medmnist]" in licence
    assert info.PRETRAINED["efficientnet_lite0"].package in licence
    code = closing.code_availability(src)
    assert f"commit `{'a' * 40}`" in code and "`PROFILE=smoke bash scripts/main.sh`" in code and "MIT licence" in code


def test_collapse_paragraph_is_the_historical_diagnosis_and_says_what_this_run_flagged():
    studies = SR.studies()
    if studies is None or not studies.has("collapse_diagnosis.csv"):
        pytest.skip("no committed development studies")
    none, some = supplement.collapse_paragraph(studies, 0), supplement.collapse_paragraph(studies, 2)
    assert none.startswith("**Why the students' classifiers start small.** In an earlier configuration")
    assert none.endswith("any run that still collapses.") and some.endswith("still flagged 2 runs, listed under "
                                                                            "excluded runs.")
    assert "collapsed.**" not in none


# ----------------------------------------------------------------------------- the smoke paper


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def rendered(smoke_outputs, tmp_path_factory, monkeypatch_module):
    """The smoke paper rendered from its outputs (HTML and PDF)."""
    root, _ = smoke_outputs
    monkeypatch_module.setenv(info.OUTPUTS_ENV, str(root.parent))
    monkeypatch_module.setenv(info.RESULTS_ENV, str(tmp_path_factory.mktemp("no_results")))
    out = tmp_path_factory.mktemp("paper")
    html = render.render_fallback("smoke", out_dir=out)
    return html, render.write_pdf(html, out / "paper.pdf")


def test_smoke_paper_passes_the_browser_check_on_screen_and_in_print(rendered):
    html, _ = rendered
    for media, report in render.check(html).items():
        print(media, "headless Chromium saw:", {k: v for k, v in report.items() if k != "headings"})
        assert render.problems(report) == [], media
        assert report["images"] >= 6 and report["tables"] >= 8
    headings = render.browser_check(html)["headings"]
    main = ["Abstract", "Introduction", "Related work", "Methods", "Results", "Discussion", "Limitations", "Conclusion",
            "References"]  # the venue paper's sections, in order, then the supplement
    assert [h for h in headings if h in main] == main
    supplement = [h for h in headings[headings.index("References") + 1:] if h.startswith("Supplement S")]
    assert len(supplement) == 11, supplement
    for heading in ("test performance", "calibration and operating points", "robustness", "efficiency",
                    "Grad-CAM", "excluded runs", "reproduction and provenance"):
        assert any(heading in h for h in supplement), heading


def test_smoke_paper_numbers_and_exclusions_come_from_outputs(rendered, smoke_outputs):
    html = " ".join(rendered[0].read_text().split())
    root, _ = smoke_outputs
    agg = root / "aggregate"
    numbers = json.loads((agg / "numbers.json").read_text())
    assert set(numbers) == set(A.NUMBERS)
    assert "Results</strong> of profile <code>smoke</code>: this checkout’s own run" in html
    assert f"{numbers['n_valid']} of {numbers['n_runs']} runs usable" in html
    runs = pd.read_csv(agg / "runs.csv")
    excluded = runs[~runs["valid"]]
    assert len(excluded) == numbers["n_excluded"]
    if len(excluded):
        assert f"{len(excluded)} of {len(runs)} runs are excluded" in html
        perf = pd.read_csv(agg / "performance.csv")
        gone = set(excluded["model"]) - set(runs[runs["valid"]]["model"])
        assert not gone & set(perf["model"])  # a model whose every run collapsed is in no table
    if numbers["best_student"]:
        assert f"{numbers['best_student_macro_f1']:.3f}" in html
    targets = pd.read_csv(agg / "targets.csv")
    measured = int(sum(bool(r["of"]) if pd.notna(r["of"]) else pd.notna(r["value"]) for _, r in targets.iterrows()))
    assert (f"meets {numbers['targets_met']} of the study’s {numbers['targets']} targets" if measured == len(targets)
            else f"meets {numbers['targets_met']} of the {measured} targets it can measure") in html
    if measured < len(targets):
        assert f"of the study’s {numbers['targets']}, {len(targets) - measured} target" in html
    assert html.count("What each missed one reached") == int(not targets["met"].all())


def test_smoke_paper_numbers_its_figures_and_tables_and_lists_subsections(rendered):
    html = " ".join(rendered[0].read_text().split())
    text = re.sub(r"<[^>]+>", "", html)
    assert "Figure 1: " in text and "Table 1: " in text and "?@" not in text and "{#" not in text
    assert re.search(r'<a href="#tbl-arms">Table \d+</a> lists what each arm gets', html)
    assert re.search(r'with examples in <a href="#fig-montage">Figure \d+</a>', html)
    toc = html[html.index('id="TOC"'):html.index("</nav>")]
    for heading in ("Data, teacher and students", "Intended use and ethics", "Data, licences and code",
                    "Supplement S2: training recipes"):
        assert heading in toc, heading
    # every table and figure of the supplement is referred to from the main text (before the references)
    body = html[html.index("</nav>"):]
    main, supplement = body.split('id="refs"', 1)
    for found in sorted(set(re.findall(r'id="((?:tbl|fig)-[\w-]+)"', supplement))):
        assert f'href="#{found}"' in main, found


def test_smoke_paper_cites_its_references(rendered):
    html = " ".join(rendered[0].read_text().split())
    refs = html[html.index('id="refs"'):]
    for author in ("Tschandl", "Yang", "Doerrich", "Di Salvo", "Hinton", "Zagoruyko", "Zhao", "Huang", "Sun", "Guo",
                   "Abhishek"):
        assert author in refs, author
    assert "The HAM10000 dataset" in re.sub(r"<[^>]+>", "", refs)  # titles as written, not "Ham10000"
    assert html.count('href="#ref-') >= 11


def test_smoke_pdf_has_every_figure_on_a_page_with_content(rendered, tmp_path):
    html, pdf = rendered
    assert pdf.stat().st_size > 100_000
    listing = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True).stdout
    pages = sorted({int(line.split()[0]) for line in listing.splitlines()[2:] if line.split()[2] == "image"})
    assert len(pages) >= 4
    n_images = sum(1 for line in listing.splitlines()[2:] if line.split()[2] == "image")
    assert n_images >= render.browser_check(html)["images"]
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pngs = sorted(tmp_path.glob("page-*.png"))
    from PIL import Image

    for page in pages:
        pixels = np.asarray(Image.open(pngs[page - 1]).convert("L"))
        assert (pixels < 200).mean() > 0.02, f"page {page} of {pdf} has a figure but is almost blank"


def test_capacity_gap_reads_the_committed_study_and_counts_the_seed_pairs():
    gap = SR.capacity_gap()
    assert gap is not None
    table = gap.csv("gap.csv")
    text = results.capacity_gap(gap)
    assert f"in {int(table['seeds_smaller'].sum())} of {int(table['seeds'].sum())} seed pairs" in text
    assert "{#tbl-capacity-gap}" in text and all(v in text for v in table["verdict"])
    assert "@cho2019efficacy" in text  # the literature a reviewer expects


def test_students_at_two_sizes_and_the_teacher_recipe_student(tmp_path):
    """The input-size table lists the students trained at more than one size (INT8 rows only); the student with its
    teacher's recipe plus KD is named against the teacher, and a student at another size is not."""
    arms = pd.DataFrame([
        {"model": "teacher-lite", "label": "Lite teacher", "role": "teacher", "split": "official", "init": "imagenet",
         "img_size": 128, "epochs": 8, "lr": 0.001, "kd_mode": "teacher", "seeds": 1},
        {"model": "student-lite-kd", "label": "Lite · kd", "role": "student", "split": "official", "init": "imagenet",
         "img_size": 64, "epochs": 8, "lr": 0.001, "kd_mode": "hinton", "seeds": 1},
        {"model": "student-lite-kd_128px", "label": "Lite · kd_128px", "role": "student", "split": "official",
         "init": "imagenet", "img_size": 128, "epochs": 8, "lr": 0.001, "kd_mode": "hinton", "seeds": 1}])
    arms.to_csv(tmp_path / "arms.csv", index=False)
    perf = pd.DataFrame({"model": arms["model"], "arch": "lite", "val_macro_f1": [0.70, 0.60, 0.72],
                         "macro_f1": [0.71, 0.62, 0.69]})
    perf.to_csv(tmp_path / "performance.csv", index=False)
    pareto = pd.DataFrame([{"model": m, "label": lab, "arch": "lite", "role": r, "backend": b, "size": z, "seeds": 1,
                            "val_macro_f1": 0.6, "macro_f1": 0.6, "p50_ms": 1.0 + z / 64}
                           for m, lab, r, z in (("teacher-lite", "Lite teacher", "teacher", 128),
                                                ("student-lite-kd", "Lite · kd", "student", 64),
                                                ("student-lite-kd_128px", "Lite · kd_128px", "student", 128))
                           for b in ("ort_fp32", "ort_int8")])
    pareto.to_csv(tmp_path / "pareto.csv", index=False)
    src = SR.Source("p", tmp_path, "published", {}, {})
    table = _plain(supplement.input_sizes(src))
    assert '<span class="name">Lite · kd</span>' in supplement.input_sizes(src)  # a model's name never wraps
    body = [line for line in table.splitlines() if line.startswith("| Lite")]
    assert [line.split("|")[1].strip() for line in body] == ["Lite · kd", "Lite · kd_128px"]  # no teacher, INT8 only
    text = supplement.teacher_recipe_student(src)
    assert text.startswith("Lite · kd_128px has its teacher's recipe") and "0.720 against 0.700" in text
    arms.loc[2, "lr"] = 0.002  # another recipe: no longer the teacher's
    arms.to_csv(tmp_path / "arms.csv", index=False)
    assert supplement.teacher_recipe_student(src) is None


def test_kd_calibration_formats_the_aggregates_paired_columns(tmp_path):
    """The calibration table and its sentence only format what the aggregate wrote (``paired_kd.csv``: each arm's
    seed means beside the paired Δ ECE); a reference without those columns has no such table."""
    calibration = {"temperature_kd": 1.61, "temperature_nokd": 1.04, "ece_before_kd": 0.071, "ece_before_nokd": 0.018,
                   "ece_after_kd": 0.021, "ece_after_nokd": 0.019, "d_ece_before": 0.053, "d_ece_before_low": 0.031,
                   "d_ece_before_high": 0.075, "d_ece_after": 0.002, "d_ece_after_low": -0.004,
                   "d_ece_after_high": 0.008}
    row = {"arch": "resnet18", "student": "ResNet-18", "split": "official", "setting": "kd", "method": "KD",
           "pairs": 3, **calibration}
    pd.DataFrame([row, {**row, "split": "lesion", "d_ece_before": 0.5}]).to_csv(tmp_path / "paired_kd.csv", index=False)
    pd.DataFrame([{"model": "teacher-efficientnet_lite0", "stage": "after", "temperature": 1.4}]).to_csv(
        tmp_path / "calibration.csv", index=False)
    src = SR.Source("default", tmp_path, "published", {}, {})
    rows = shared.kd_calibration_rows(src)
    assert len(rows) == 1 and rows.loc[0, "t_kd"] == 1.61 and rows.loc[0, "d_ece_before"] == 0.053  # official only
    text = results.kd_calibration(src)
    assert "by +0.053 before temperature scaling" in text and "{#tbl-kd-calibration}" in text  # one pair: no range
    assert "1.61 for the KD student and 1.04 for its no-KD twin (1.40 for the teacher)" in text
    assert "its interval lies above 0" in text and "made the student's raw probabilities more confident" in text
    assert "shrinks the difference in the comparison" in text
    assert "0.071 / 0.018" in text and "[+0.031,\u00a0+0.075]" in text

    assert closing.calibration_paragraph(src).startswith("**Calibration.** Distillation made the raw probabilities "
                                                         "less calibrated in 1 of 1 comparison")
    better = {"d_ece_before": -0.05, "d_ece_before_low": -0.07, "d_ece_before_high": -0.03}
    pd.DataFrame([{**row, **better}]).to_csv(tmp_path / "paired_kd.csv", index=False)
    assert "better calibrated in 1 of 1 comparison" in closing.calibration_paragraph(src)
    assert "its interval lies below 0" in results.kd_calibration(src)

    pd.DataFrame([{k: v for k, v in row.items() if k not in calibration}]).to_csv(tmp_path / "paired_kd.csv", index=False)
    assert shared.kd_calibration_rows(src).empty and results.kd_calibration(src) is None
    assert closing.calibration_paragraph(src) is None




def test_verdicts_are_read_from_the_aggregate_and_a_table_without_them_is_refused(tmp_path):
    """The paper formats the aggregate's verdicts and never makes one; a paired table without them is refused by
    name rather than shown without its verdicts."""
    row = {"arch": "resnet18", "student": "ResNet-18", "split": "official", "setting": "kd", "pairs": 3}
    src = SR.Source("default", tmp_path, "published", {}, {})
    written = {"t_p_holm": 0.2, "tost_p_holm": 0.9, "mde": 0.08, "verdict_label": "inconclusive, MDE = 0.080"}
    pd.DataFrame([{**row, **written}, {**row, "split": "lesion", **written}]).to_csv(tmp_path / "paired_kd.csv",
                                                                                      index=False)
    found = shared.verdicts(src)
    assert len(found) == 1 and found.iloc[0]["verdict_label"] == "inconclusive, MDE = 0.080"  # official only
    pd.DataFrame([row]).to_csv(tmp_path / "paired_kd.csv", index=False)
    with pytest.raises(ValueError, match="has no t_p_holm, tost_p_holm, mde, verdict_label: it predates"):
        shared.verdicts(src)


def test_discussion_names_the_comparisons_whose_two_intervals_disagree_or_that_holm_left_inconclusive():
    base = {"student": "ResNet-18", "setting": "kd", "method": "KD", "pairs": 3, "t_p_holm": 0.2,
            "verdict_label": "inconclusive, MDE = 0.05"}
    rows = pd.DataFrame([
        {**base, "d_macro_f1_low": -0.023, "d_macro_f1_high": -0.021, "d_macro_f1_hb_low": -0.053,
         "d_macro_f1_hb_high": 0.004, "verdict_label": "loss"},                      # only the t-interval excludes 0
        {**base, "student": "EfficientNet-B0", "d_macro_f1_low": -0.025, "d_macro_f1_high": 0.09,
         "d_macro_f1_hb_low": 0.001, "d_macro_f1_hb_high": 0.067},                  # only the bootstrap excludes 0
        {**base, "student": "MobileNetV2", "pairs": 5, "t_p_holm": 0.108, "d_macro_f1_low": 0.003,
         "d_macro_f1_high": 0.045, "d_macro_f1_hb_low": 0.002, "d_macro_f1_hb_high": 0.05},  # both; Holm undoes it
        {**base, "student": "Lite0", "d_macro_f1_low": -0.05, "d_macro_f1_high": 0.05, "d_macro_f1_hb_low": -0.04,
         "d_macro_f1_hb_high": 0.04},                                                 # settled: both include 0
    ])
    text = closing.intervals_disagree(rows)
    assert text.startswith("**Where the verdicts are least settled.** For ResNet-18 with KD (3 seeds), only the "
                           "t-interval across seeds, [-0.023,\u00a0-0.021], excludes 0; the bootstrap over seeds and "
                           "test images gives [-0.053,\u00a0+0.004].")
    assert ("For EfficientNet-B0 with KD (3 seeds), only the bootstrap over seeds and test images, "
            "[+0.001,\u00a0+0.067], excludes 0") in text
    assert "For MobileNetV2 with KD (5 seeds), the unadjusted t-interval" in text and "raises p to 0.108" in text
    assert "Lite0" not in text
    assert closing.intervals_disagree(rows.iloc[[3]]) == ""


def test_captions_say_what_their_rows_rest_on_one_seed_and_each_models_input_size(tmp_path):
    rows = [{"model": m, "label": m, "suite": "source", "seeds": 1, "images": 300, "macro_f1": 0.5,
             "balanced_error": 0.4, "balanced_accuracy": 0.6, "clean_balanced_accuracy": 0.7} for m in ("a", "b")]
    pd.DataFrame(rows).to_csv(tmp_path / "robustness.csv", index=False)
    pd.DataFrame([{"label": "Teacher", "img_size": 128, "params_M": 3.4, "MMACs": 125.4, "onnx_MB": 12.9,
                   "onnx_int8_MB": 3.6}, {"label": "Student", "img_size": 64, "params_M": 3.4, "MMACs": 31.3,
                                          "onnx_MB": 12.9, "onnx_int8_MB": 3.6}]).to_csv(tmp_path / "efficiency.csv",
                                                                                      index=False)
    src = SR.Source("default", tmp_path, "published", {}, {})
    one = supplement.robustness_caption(src) + supplement.robustness(src)
    assert "over seeds" not in one and "(1 seed and 300 class-stratified test images per model)" in one
    pd.DataFrame([{**rows[0], "seeds": 3}, rows[1]]).to_csv(tmp_path / "robustness.csv", index=False)
    assert "suite and over seeds (1–3 seeds" in supplement.robustness_caption(src)
    cost = supplement.cost(src)
    assert "Model cost at each model's own input size" in cost and "Teacher</span> | 128 |" in cost and "Student</span> | 64 |" in cost


@pytest.mark.parametrize(("delta", "low", "high", "label", "reading"), [
    (0.03, 0.01, 0.05, "gain", "supports the input-size explanation"),
    (0.002, -0.01, 0.014, "equivalent within ±0.02", "speaks against the input-size explanation"),
    (0.01, -0.05, 0.07, "inconclusive, MDE = 0.080", "settles neither explanation"),
])
def test_teacher_size_sentence_reads_the_verdict_as_the_plan_fixed(tmp_path, delta, low, high, label, reading):
    pd.DataFrame([{"seeds": 3, "delta": delta, "ci_low": low, "ci_high": high, "mde": 0.08, "verdict": label,
                   "tost_p": 0.044, "teacher_val_64px": 0.679, "teacher_val_128px": 0.723}]).to_csv(
        tmp_path / "teacher_size.csv")
    text = closing.teacher_size(SR.Source("teacher_size", tmp_path, "published", {}, {}))
    assert f"by {FM.signed(delta)} {FM.bracket(low, high)} over 3 seeds, {label}" in text and reading in text
    assert "0.679" in text and "0.723" in text and "exploratory" in text
    assert ("two one-sided tests (p = 0.044" in text) == label.startswith("equivalent")


def test_arms_table_names_logit_standardisation_from_the_runs(tmp_path):
    """arms.csv has no standardisation column: the table reads it from runs.csv, so the two Hinton arms differ."""
    arm = {"role": "student", "split": "official", "init": "imagenet", "kd_mode": "hinton", "alpha": 0.5,
           "temperature": 2.0, "seeds": 3}
    pd.DataFrame([{**arm, "model": "student-l0-kd", "label": "L0 · KD"},
                  {**arm, "model": "student-l0-lskd", "label": "L0 · LSKD"}]).to_csv(tmp_path / "arms.csv", index=False)
    pd.DataFrame({"model": ["student-l0-kd", "student-l0-lskd"], "standardize": [False, True]}).to_csv(
        tmp_path / "runs.csv", index=False)
    rows = [line for line in supplement.arms(SR.Source("x", tmp_path, "published", {}, {})).splitlines() if "· " in line]
    assert ["standardised logits" in line for line in rows] == [False, True]


def test_a_signed_bound_that_rounds_to_zero_keeps_its_side_of_zero() -> None:
    """An interval counted as below 0 must not print as reaching 0: [-0.013, -0.000], not [-0.013, 0.000]."""
    assert FM.signed(-0.00028) == "-0.000" and FM.signed(0.0004) == "+0.000" and FM.signed(0.0) == "0.000"
    assert FM.bracket(-0.013361, -0.000278) == "[-0.013,\u00a0-0.000]"


def test_the_seeds_needed_are_shown_only_for_the_reference_the_power_study_read(tmp_path) -> None:
    """The committed power study describes the published reference; a reference with other per-seed differences gets
    neither its table nor the Discussion's sentence."""
    published = info.results_root() / "default"
    src = SR.Source("default", published, "published", {}, {})
    power = SR.power(src)
    assert power is not None
    assert "would take" in closing._seeds_needed(power, src)
    assert "{#tbl-seeds-needed}" in supplement.seeds_needed(power, src)
    for name in ("paired_kd.csv", "paired_kd_seeds.csv"):
        shutil.copy(published / name, tmp_path / name)
    with open(tmp_path / "paired_kd_seeds.csv", "a") as f:
        f.write("\n")
    assert SR.power(SR.Source("default", tmp_path, "published", {}, {})) is None
