"""Evaluation stage: files written, everything fitted on val only, recomputable test numbers, seed tables."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import softmax
from sklearn import metrics as skm

from edgekd.core import calibration as C
from edgekd.core import metrics as M
from edgekd.core.info import CLASS_NAMES, MELANOMA, NUM_CLASSES, REPO_ROOT
from edgekd.stages import evaluate as V

PRIOR = np.array([0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05])
COMMON = {"metrics.csv", "per_class.csv", "confusion.csv", "confusion_normalised.csv", "top_confusions.csv",
          "calibration.csv", "reliability.csv", "reliability.png", "operating_points.csv", "operating_points.json",
          "class_offsets.csv", "risk_coverage.csv", "risk_coverage.png", "probs.npz"}
STUDENT_ONLY = {"teacher_vs_student.csv", "paired.csv", "per_class_f1.png"}


def write_predictions(run_dir, model_seed: int, test_scale: float = 1.0, label_seed: int = 0) -> dict:
    """A synthetic ``predictions.npz``: imbalanced labels, prior-biased logits, sharper on test by ``test_scale``."""
    run_dir.mkdir(parents=True)
    labels = np.random.default_rng(label_seed)
    rng = np.random.default_rng(model_seed)
    out = {}
    for split, n, scale in (("val", 300, 1.0), ("test", 400, test_scale)):
        y = labels.choice(NUM_CLASSES, n, p=PRIOR)
        logits = rng.normal(size=(n, NUM_CLASSES)) + 1.5 * np.log(PRIOR)
        logits[np.arange(n), y] += 2.0
        out[f"{split}_logits"], out[f"{split}_labels"] = (scale * logits).astype(np.float32), y
    np.savez_compressed(run_dir / "predictions.npz", **out)
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Evaluated synthetic teacher and student runs on the same images."""
    root = tmp_path_factory.mktemp("synthetic")
    teacher, student = root / "teacher-resnet50-s0", root / "student-resnet18-kd-s0"
    pred_t = write_predictions(teacher, 1)
    pred_s = write_predictions(student, 2, test_scale=3.0)
    return {
        "teacher": teacher, "student": student, "pred_t": pred_t, "pred_s": pred_s,
        "res_t": V.run_evaluate(teacher, n_resamples=100, seed=3),
        "res_s": V.run_evaluate(student, teacher, n_resamples=100, seed=3),
    }


def _copy_run(src, dst):
    """Copy a finished run's predictions and config, so evaluation never writes into a shared fixture."""
    dst.mkdir()
    for name in ("predictions.npz", "run_config.json"):
        shutil.copy(src / name, dst / name)
    return dst


def test_real_runs_write_every_file(tiny_runs, tmp_path):
    teacher = _copy_run(tiny_runs["teacher"], tmp_path / "teacher-resnet50-s0")
    student = _copy_run(tiny_runs["student"], tmp_path / "student-resnet18-kd-s0")
    res_t = V.run_evaluate(teacher, n_resamples=20)
    res_s = V.run_evaluate(student, teacher, n_resamples=20)
    assert {p.name for p in (teacher / "eval").iterdir()} == COMMON
    assert {p.name for p in (student / "eval").iterdir()} == COMMON | STUDENT_ONLY
    assert set(res_s) - set(res_t) == {"teacher_vs_student", "paired", "per_class_f1_fig"}
    saved = pd.read_csv(student / "eval" / "metrics.csv")
    pd.testing.assert_frame_equal(saved, res_s["metrics"])
    assert list(saved["metric"]) == [*M.HEADLINE, "nll", "brier", "aurc"]


def test_temperature_fitted_on_val_only(synthetic):
    pred, ev = synthetic["pred_s"], synthetic["student"] / "eval"
    cal = pd.read_csv(ev / "calibration.csv").set_index("stage")
    T_val = C.fit_temperature(pred["val_logits"], pred["val_labels"])
    T_test = C.fit_temperature(pred["test_logits"], pred["test_labels"])
    assert cal.loc["after", "temperature"] == pytest.approx(T_val, rel=1e-9)
    assert abs(T_val - T_test) > 0.5  # the test logits are sharper: fitting there would differ
    expected = C.calibration_report(pred["test_labels"], pred["test_logits"], T_val).set_index("stage")
    pd.testing.assert_frame_equal(cal, expected, check_exact=False, rtol=1e-9)
    probs = np.load(ev / "probs.npz")
    assert float(probs["temperature"]) == pytest.approx(T_val, rel=1e-12)
    np.testing.assert_allclose(probs["test_probs_calibrated"], C.apply_temperature(pred["test_logits"], T_val))
    np.testing.assert_allclose(probs["val_probs"], softmax(pred["val_logits"].astype(float), axis=1))
    rel = pd.read_csv(ev / "reliability.csv")
    assert rel.groupby("stage")["count"].sum().to_dict() == {"after": 400, "before": 400}


def test_operating_points_recompute_from_saved_values(synthetic):
    ev = synthetic["student"] / "eval"
    fitted = json.loads((ev / "operating_points.json").read_text())
    probs = np.load(ev / "probs.npz")
    y_val, y, p_val, p = probs["val_labels"], probs["test_labels"], probs["val_probs"], probs["test_probs"]
    offsets = np.array([fitted["offsets"][c] for c in CLASS_NAMES])
    np.testing.assert_array_equal(offsets, M.fit_class_offsets(y_val, np.log(p_val)))  # fitted on val
    assert fitted["melanoma_threshold"] == M.melanoma_threshold(y_val, p_val, 0.90)
    table = pd.read_csv(ev / "operating_points.csv").set_index(["rule", "split"])

    pred = np.argmax(np.log(p) + offsets, axis=1)
    row = table.loc[("class_offsets", "test")]
    assert row["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert row["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert row["macro_f1"] == pytest.approx(skm.f1_score(y, pred, labels=range(NUM_CLASSES), average="macro"))
    assert row["changed_fraction"] == pytest.approx(np.mean(pred != p.argmax(1)))
    assert row["changed_fraction"] > 0
    assert table.loc[("argmax", "test"), "changed_fraction"] == 0
    assert table.loc[("argmax", "test"), "macro_f1"] == pytest.approx(
        skm.f1_score(y, p.argmax(1), labels=range(NUM_CLASSES), average="macro"))

    flag, mel = p[:, MELANOMA] >= fitted["melanoma_threshold"], y == MELANOMA
    screen = table.loc[("mel_screening", "test")]
    assert screen["mel_sensitivity"] == pytest.approx(flag[mel].mean())
    assert screen["mel_specificity"] == pytest.approx((~flag[~mel]).mean())
    assert screen["threshold"] == fitted["melanoma_threshold"]
    assert table.loc[("mel_screening", "val"), "mel_sensitivity"] >= 0.90
    assert table.loc[("argmax", "test"), "mel_sensitivity"] == pytest.approx((p.argmax(1)[mel] == MELANOMA).mean())


def test_bootstrap_intervals_bracket_point_values(synthetic):
    pred, table = synthetic["pred_s"], synthetic["res_s"]["metrics"]
    y, probs = pred["test_labels"], softmax(pred["test_logits"].astype(float), axis=1)
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert (table["ci_low"] < table["ci_high"]).all()
    pd.testing.assert_frame_equal(table.head(len(M.HEADLINE)), M.bootstrap_table(y, probs, 100, 3))
    values = table.set_index("metric")["value"]
    assert values["nll"] == pytest.approx(C.nll(y, probs))
    assert values["aurc"] == pytest.approx(M.aurc(y, probs))
    pd.testing.assert_frame_equal(synthetic["res_s"]["risk_coverage"], M.risk_coverage(y, probs))


def test_teacher_comparison_only_for_students(synthetic):
    assert not (synthetic["teacher"] / "eval" / "paired.csv").exists()
    assert "paired" not in synthetic["res_t"]
    y = synthetic["pred_s"]["test_labels"]
    p_t, p_s = (softmax(synthetic[k]["test_logits"].astype(float), axis=1) for k in ("pred_t", "pred_s"))
    paired = pd.read_csv(synthetic["student"] / "eval" / "paired.csv").iloc[0]
    test = M.mcnemar(y, p_t.argmax(1), p_s.argmax(1))
    assert (paired["b"], paired["c"], paired["method"]) == (test["b"], test["c"], test["method"])
    assert paired["p_value"] == pytest.approx(test["p_value"])
    assert paired["agreement"] == pytest.approx(np.mean(p_t.argmax(1) == p_s.argmax(1)))
    assert paired["teacher_accuracy"] == pytest.approx(np.mean(p_t.argmax(1) == y))
    delta = pd.read_csv(synthetic["student"] / "eval" / "teacher_vs_student.csv")
    pd.testing.assert_frame_equal(delta, M.per_class_delta(y, p_t, p_s), check_exact=False)


def test_teacher_on_other_images_is_refused(tmp_path):
    write_predictions(tmp_path / "teacher-resnet50-s0", 1, label_seed=5)
    write_predictions(tmp_path / "student-resnet18-kd-s0", 2)
    with pytest.raises(ValueError, match="same images"):
        V.run_evaluate(tmp_path / "student-resnet18-kd-s0", tmp_path / "teacher-resnet50-s0", n_resamples=10)
    assert not (tmp_path / "student-resnet18-kd-s0" / "eval").exists()  # refused before writing anything
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        V.run_evaluate(tmp_path / "missing")


def _fake_eval(profile, run, metrics: dict[str, tuple[float, float, float]], temperature: float) -> None:
    ev = profile / run / "eval"
    ev.mkdir(parents=True)
    pd.DataFrame([{"metric": k, "value": v, "ci_low": lo, "ci_high": hi} for k, (v, lo, hi) in metrics.items()]).to_csv(
        ev / "metrics.csv", index=False)
    pd.DataFrame({"stage": ["before", "after"], "ece": [0.2, 0.05], "temperature": [1.0, temperature]}).to_csv(
        ev / "calibration.csv", index=False)


def test_seed_table_t_interval_and_bootstrap_means(tmp_path):
    _fake_eval(tmp_path, "student-resnet18-kd-s0", {"accuracy": (0.70, 0.65, 0.75), "macro_f1": (0.40, 0.3, 0.5)}, 1.5)
    _fake_eval(tmp_path, "student-resnet18-kd-s1", {"accuracy": (0.76, 0.70, 0.80), "macro_f1": (0.50, 0.4, 0.6)}, 2.5)
    _fake_eval(tmp_path, "teacher-resnet50-s0", {"accuracy": (0.80, 0.75, 0.85)}, 1.2)
    (tmp_path / "data").mkdir()  # a folder without eval/ is ignored
    table = V.seed_table(tmp_path).set_index(["model", "metric"])
    row = table.loc[("student-resnet18-kd", "accuracy")]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx(0.73)
    assert row["std"] == pytest.approx(np.std([0.70, 0.76], ddof=1))
    low, high = stats.t.interval(0.95, df=1, loc=0.73, scale=stats.sem([0.70, 0.76]))
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert (row["boot_ci_low_mean"], row["boot_ci_high_mean"]) == (pytest.approx(0.675), pytest.approx(0.775))
    assert table.loc[("student-resnet18-kd", "macro_f1"), "mean"] == pytest.approx(0.45)
    teacher = table.loc[("teacher-resnet50", "accuracy")]
    assert teacher["n_seeds"] == 1 and np.isnan(teacher["std"]) and np.isnan(teacher["ci_low"])

    cal = V.seed_table(tmp_path, "calibration").set_index(["model", "stage", "metric"])
    assert cal.loc[("student-resnet18-kd", "after", "temperature"), "mean"] == pytest.approx(2.0)
    assert cal.loc[("student-resnet18-kd", "before", "ece"), "n_seeds"] == 2
    assert "boot_ci_low_mean" not in cal


def test_seed_table_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*/eval/metrics.csv"):
        V.seed_table(tmp_path)
    with pytest.raises(ValueError, match="is not one of"):
        V.seed_table(tmp_path, "robustness")
    assert V.model_name("student-mobilenetv2_100-nokd-s12") == "student-mobilenetv2_100-nokd"


def test_notebook_runs_with_papermill(tiny_runs, tmp_path):
    pm = pytest.importorskip("papermill")
    teacher = _copy_run(tiny_runs["teacher"], tmp_path / "teacher-resnet50-s0")
    student = _copy_run(tiny_runs["student"], tmp_path / "student-resnet18-kd-s0")
    notebooks = REPO_ROOT / "notebooks"
    nb = pm.execute_notebook(str(notebooks / "04_evaluate.ipynb"), str(student / "evaluate.ipynb"), cwd=str(notebooks),
                             parameters={"run_dir": str(student), "teacher_dir": str(teacher), "n_resamples": 20},
                             progress_bar=False)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # reliability, risk-coverage, teacher vs student per-class F1
    assert STUDENT_ONLY <= {p.name for p in (student / "eval").iterdir()}
