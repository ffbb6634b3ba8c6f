"""The learning-curve pilot read with the analysis plan's rule (edgekd.stages.tuning.learning_curve), on synthetic
runs: pairing by folder, the refusals, the gain and plateau flags, KD against no KD at each budget, and the script."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from edgekd.core import info
from edgekd.paper import closing, supplement
from edgekd.paper import sources as SR
from edgekd.paper.format import signed
from edgekd.stages import tuning as TU

N_VAL = 70


def _teacher(root, weights: float = 1.0):
    folder = root / "teacher-efficientnet_lite0-s0"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.full((3,), weights)}, folder / "best.pt")
    return folder


def _run(root, setting: str, epochs: int, correct: int, curve: list[float], teacher=None, lr: float = 0.003,
         arch: str = "resnet18"):
    """A finished student with ``epochs`` epochs of validation macro-F1 ``curve`` (history.csv) whose first ``correct``
    validation images are predicted right; its test logits are NaN, so a reader of them would show it."""
    run = root / f"student-{arch}-{setting}-s0"
    run.mkdir(parents=True)
    kd = {"mode": "none"} if setting == "nokd" else {"mode": "hinton", "alpha": 0.5, "temperature": 2.0}
    cfg = {"arch": arch, "seed": 0, "data": {"size": 64, "split": "official", "cache_dir": str(root / "cache")},
           "train": {"epochs": epochs, "lr": lr}, "kd": kd, "teacher_dir": str(teacher) if teacher else None}
    (run / "run_config.json").write_text(json.dumps(cfg))
    y = np.arange(N_VAL) % 7
    pred = np.where(np.arange(N_VAL) < correct, y, (y + 1) % 7)
    np.savez(run / "predictions.npz", val_labels=y, val_logits=np.eye(7)[pred], test_labels=y,
             test_logits=np.full((N_VAL, 7), np.nan))
    pd.DataFrame({"epoch": range(1, len(curve) + 1), "val_macro_f1": curve}).to_csv(run / "history.csv", index=False)
    (run / "metrics.json").write_text(json.dumps({"best_epoch": int(np.argmax(curve)) + 1, "collapsed": None}))
    return run, f1_score(y, pred, average="macro")


def _pilot(tmp_path, long_correct: dict, long_curve: list[float] | None = None):
    """Budget runs (8 epochs) and longer runs (24) of ResNet-18 with and without KD, each pair sharing a teacher."""
    budget, long = tmp_path / "default", tmp_path / "learning_curve"
    f1 = {}
    for root, epochs, correct in ((budget, 8, {"kd": 40, "nokd": 38}), (long, 24, long_correct)):
        teacher = _teacher(root)
        for setting in ("kd", "nokd"):
            curve = long_curve if (epochs == 24 and long_curve) else list(np.linspace(0.3, 0.6, epochs))
            f1[(epochs, setting)] = _run(root, setting, epochs, correct[setting], curve, teacher)[1]
    return budget, long, f1


def test_the_rule_reads_validation_against_the_budget_run(tmp_path):
    flat_late = list(np.linspace(0.3, 0.7, 16)) + [0.70] * 8  # no rise in the last third
    budget, long, f1 = _pilot(tmp_path, {"kd": 50, "nokd": 38}, flat_late)
    table, curves = TU.learning_curve(long, budget)
    t = table.set_index("setting")
    assert t.loc["kd", "val_budget"] == pytest.approx(f1[(8, "kd")])
    assert t.loc["kd", "val_long"] == pytest.approx(f1[(24, "kd")])
    assert t.loc["kd", "gain"] == pytest.approx(f1[(24, "kd")] - f1[(8, "kd")]) and t.loc["kd", "gain"] > TU.MARGIN
    assert not t.loc["kd", "plateau_at_budget"] and t.loc["nokd", "plateau_at_budget"]  # nokd: same score, gain 0
    assert t.loc["kd", "late_rise"] == pytest.approx(0.0) and t.loc["kd", "flat_by_long"]
    assert (t["best_epoch_long"] == 16).all() and (t["best_epoch_budget"] == 8).all()
    assert list(t["label"]) == ["ResNet-18 · KD", "ResNet-18 · no KD"]
    assert sorted(curves.groupby(["setting", "epochs"]).size().items()) == [
        (("kd", 8), 8), (("kd", 24), 24), (("nokd", 8), 8), (("nokd", 24), 24)]
    kd = TU.kd_by_budget(table).iloc[0]
    assert kd["kd_minus_nokd_budget"] == pytest.approx(f1[(8, "kd")] - f1[(8, "nokd")])
    assert kd["kd_minus_nokd_long"] == pytest.approx(f1[(24, "kd")] - f1[(24, "nokd")])
    assert kd["change"] == pytest.approx(kd["kd_minus_nokd_long"] - kd["kd_minus_nokd_budget"])


def test_a_late_rise_over_the_margin_is_not_flat(tmp_path):
    rising = list(np.linspace(0.3, 0.6, 16)) + [0.6 + 1.5 * TU.MARGIN] * 8
    _, long, _ = _pilot(tmp_path, {"kd": 40, "nokd": 38}, rising)
    table, _ = TU.learning_curve(long, tmp_path / "default")
    assert np.allclose(table["late_rise"], 1.5 * TU.MARGIN) and not table["flat_by_long"].any()


def test_runs_that_differ_in_more_than_their_epochs_do_not_pair(tmp_path):
    budget, long, _ = _pilot(tmp_path, {"kd": 40, "nokd": 38})
    cfg_path = long / "student-resnet18-nokd-s0" / "run_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "train": {**cfg["train"], "lr": 0.01}}))
    with pytest.raises(ValueError, match="differ in more than their epochs"):
        TU.learning_curve(long, budget)
    cfg_path.write_text(json.dumps(cfg))
    _teacher(long, weights=2.0)  # another teacher network in the longer runs' teacher folder
    with pytest.raises(ValueError, match="differ in more than their epochs"):
        TU.learning_curve(long, budget)


def test_a_budget_run_that_is_missing_or_not_shorter_is_refused(tmp_path):
    budget, long, _ = _pilot(tmp_path, {"kd": 40, "nokd": 38})
    (budget / "student-resnet18-kd-s0" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        TU.learning_curve(long, budget)
    with pytest.raises(ValueError, match="not a longer run"):
        TU.learning_curve(budget, long)  # the two swapped
    with pytest.raises(FileNotFoundError, match="no finished student"):
        TU.learning_curve(tmp_path / "empty", budget)


def test_the_script_writes_the_study_and_checks_the_budget_runs_against_the_reference(tmp_path):
    budget, long, f1 = _pilot(tmp_path, {"kd": 50, "nokd": 40})
    reference, out = tmp_path / "reference", tmp_path / "study"
    reference.mkdir()
    ids = ["student-resnet18-kd-s0", "student-resnet18-nokd-s0"]
    pd.DataFrame({"run_id": ids, "val_macro_f1": [f1[(8, "kd")], f1[(8, "nokd")] + 1e-12]}).to_csv(
        reference / "runs.csv", index=False)
    script = [sys.executable, str(info.REPO_ROOT / "scripts" / "learning_curve.py"), "--long", str(long),
              "--budget", str(budget), "--reference", str(reference), "--out", str(out)]
    res = subprocess.run(script, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out / "learning_curve.csv").set_index("setting")
    assert table.loc["kd", "published"] and not table.loc["nokd", "published"]  # one bit off is not the reference's
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ("learning_curve.csv", "kd_by_budget.csv", "curves.csv", "learning_curve.png", "README.md", "provenance.json"))
    assert "test" not in " ".join(pd.read_csv(out / "curves.csv").columns)
    pd.DataFrame({"run_id": ids[:1], "val_macro_f1": [f1[(8, "kd")]]}).to_csv(reference / "runs.csv", index=False)
    res = subprocess.run(script, capture_output=True, text=True)
    assert res.returncode == 2 and "holds no run student-resnet18-nokd-s0" in res.stderr and "Traceback" not in res.stderr


def test_the_paper_shows_the_study_beside_the_reference_it_extended_only(tmp_path, monkeypatch):
    budget, long, f1 = _pilot(tmp_path, {"kd": 60, "nokd": 38})
    results = tmp_path / "results"
    reference, out = results / "default", results / "studies" / "learning_curve"
    reference.mkdir(parents=True)
    ids = ["student-resnet18-kd-s0", "student-resnet18-nokd-s0"]
    runs = pd.DataFrame({"run_id": ids, "val_macro_f1": [f1[(8, "kd")], f1[(8, "nokd")]]})
    runs.to_csv(reference / "runs.csv", index=False)
    script = [sys.executable, str(info.REPO_ROOT / "scripts" / "learning_curve.py"), "--long", str(long),
              "--budget", str(budget), "--reference", str(reference), "--out", str(out)]
    assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    monkeypatch.setenv(info.RESULTS_ENV, str(results))
    src = SR.Source("default", reference, "published", {"student_epochs": 8}, {})
    study = SR.learning_curve(src)
    assert study is not None

    text = supplement.learning_curve(study)
    gain_kd = f1[(24, "kd")] - f1[(8, "kd")]
    assert "{#tbl-learning-curve}" in text and "{#fig-learning-curve}" in text
    assert "24 epochs instead of the main job's 8" in text and "1 of the 2 were still learning at 8 epochs" in text
    assert f"(validation macro-F1 {signed(gain_kd)} higher after 24)" in text
    assert f"ResNet-18 {signed(f1[(8, 'kd')] - f1[(8, 'nokd')])} → {signed(f1[(24, 'kd')] - f1[(24, 'nokd')])}" in text
    assert not any(label in text for label in ("nokd", "learning_curve.csv", "resnet18"))
    assert f"validation macro-F1 by {signed(gain_kd)} in 1 of 2 runs" in closing.longer_training(study)

    # Another reference (one run's score one bit off): the study describes runs that are not its own, so it is not shown.
    runs.assign(val_macro_f1=[f1[(8, "kd")], np.nextafter(f1[(8, "nokd")], 1)]).to_csv(reference / "runs.csv", index=False)
    assert SR.learning_curve(src) is None
