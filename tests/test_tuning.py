"""The KD pilot's table (validation only) and the analysis plan's pre-declared choice (edgekd.stages.tuning)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import special, stats
from sklearn.metrics import f1_score

from edgekd.core import info
from edgekd.core.config import KDConfig
from edgekd.paper import sources as SR
from edgekd.paper import supplement
from edgekd.stages import tuning as TU

N_VAL = 70


def _run(root, setting: str, kd: KDConfig, correct: int, seed: int = 0, collapsed: str | None = None,
         finished: bool = True):
    """A finished student folder whose first ``correct`` validation images are predicted right; its test logits are
    NaN, so a table that read them would show it."""
    run = root / f"student-efficientnet_lite0-{setting}-s{seed}"
    run.mkdir(parents=True)
    cfg = {"arch": "efficientnet_lite0", "seed": seed, "data": {"size": 64, "split": "official"},
           "train": {"pretrained": "imagenet"}, "kd": asdict(kd)}
    (run / "run_config.json").write_text(json.dumps(cfg))
    y = np.arange(N_VAL) % 7
    pred = np.where(np.arange(N_VAL) < correct, y, (y + 1) % 7)
    np.savez(run / "predictions.npz", val_labels=y, val_logits=np.eye(7)[pred], test_labels=y,
             test_logits=np.full((N_VAL, 7), np.nan))
    if finished:
        (run / "metrics.json").write_text(json.dumps({"best_epoch": 3, "collapsed": collapsed, "test_macro_f1": 0.99}))
    return run, f1_score(y, pred, average="macro")


def test_pilot_table_reads_validation_predictions_against_the_no_kd_twin(tmp_path):
    _, base = _run(tmp_path, "nokd", KDConfig(mode="none"), 40)
    _, t4 = _run(tmp_path, "t4_a05", KDConfig(temperature=4.0, alpha=0.5), 50)
    _, dkd = _run(tmp_path, "dkd", KDConfig(mode="dkd"), 35)
    _run(tmp_path, "t8_a05", KDConfig(temperature=8.0), 60, finished=False)  # still training: not in the table
    table = TU.pilot_table(tmp_path).set_index("setting")
    assert sorted(table.index) == ["dkd", "nokd", "t4_a05"]
    assert table.loc["t4_a05", "val_macro_f1"] == pytest.approx(t4)
    assert table.loc["t4_a05", "delta_vs_nokd"] == pytest.approx(t4 - base)
    assert table.loc["dkd", "delta_vs_nokd"] == pytest.approx(dkd - base) and table.loc["dkd", "delta_vs_nokd"] < 0
    assert table["val_acc"].notna().all() and "test_macro_f1" not in table.columns
    (tmp_path / "student-efficientnet_lite0-nokd-s0" / "metrics.json").unlink()
    with pytest.raises(ValueError, match="no finished no-KD student"):
        TU.pilot_table(tmp_path)


def test_pilot_table_needs_a_finished_student(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished student"):
        TU.pilot_table(tmp_path)


def _row(setting, f1, mode="hinton", temperature=4.0, alpha=0.5, beta=0.0, standardize=False, collapsed=None):
    return {"setting": setting, "mode": mode, "temperature": temperature, "alpha": alpha, "beta": beta,
            "standardize": standardize, "val_macro_f1": f1, "collapsed": collapsed}


def _grid(**f1):
    rows = [_row("nokd", 0.60, mode="none"), _row("t4_a05", f1.get("t4_a05", 0.62)),
            _row("t2_a09", f1.get("t2_a09", 0.62), temperature=2.0, alpha=0.9),
            _row("t8_a05", f1.get("t8_a05", 0.61), temperature=8.0, collapsed=f1.get("t8_collapsed")),
            _row("dkd", 0.55, mode="dkd"), _row("dist", 0.58, mode="dist", temperature=1.0),
            _row("lskd", f1.get("lskd", 0.62), temperature=2.0, standardize=True),
            _row("at", f1.get("at", 0.62), beta=1000.0)]
    return pd.DataFrame(rows)


def test_the_current_setting_stays_unless_another_beats_it_by_the_margin():
    assert TU.MARGIN == pytest.approx(0.01)
    kept = TU.choose(_grid(t2_a09=0.62 + 0.009))
    assert kept["hinton"] == "t4_a05" and "stays" in kept["reasons"][0]
    replaced = TU.choose(_grid(t2_a09=0.62 + 0.011))
    assert (replaced["hinton"], replaced["temperature"], replaced["alpha"]) == ("t2_a09", 2.0, 0.9)
    assert "replaces" in replaced["reasons"][0]


def test_dkd_and_dist_always_run_and_the_extras_join_only_by_the_margin():
    plain = TU.choose(_grid())
    assert plain["main_table"] == ["t4_a05", "dkd", "dist"]  # worse on validation, and still in
    both = TU.choose(_grid(lskd=0.635, at=0.625))
    assert both["main_table"] == ["t4_a05", "dkd", "dist", "lskd"]
    assert any(r.startswith("at: +0.005") and r.endswith("left out") for r in both["reasons"])


def test_a_collapsed_run_is_never_chosen_and_is_named():
    out = TU.choose(_grid(t8_a05=0.9, t8_collapsed="100% of its validation predictions are 'nv'"))
    assert out["hinton"] == "t4_a05" and out["excluded"] == ["t8_a05"]
    with pytest.raises(ValueError, match="current Hinton setting"):
        TU.choose(_grid()[lambda t: t["setting"] != "t4_a05"])


def test_the_script_writes_the_study_and_refuses_an_empty_folder(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "study"
    script = [sys.executable, str(info.REPO_ROOT / "scripts" / "kd_tuning.py"), "--runs", str(runs), "--out", str(out)]
    runs.mkdir()
    res = subprocess.run(script, capture_output=True, text=True)
    assert res.returncode == 2 and "no finished student" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    _run(runs, "nokd", KDConfig(mode="none"), 40)
    _run(runs, "t4_a05", KDConfig(temperature=4.0, alpha=0.5), 50)
    _run(runs, "t2_a05", KDConfig(temperature=2.0, alpha=0.5), 60)
    res = subprocess.run(script, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    choice = json.loads((out / "choice.json").read_text())
    assert choice["hinton"] == "t2_a05" and choice["main_table"] == ["t2_a05"]
    assert sorted(pd.read_csv(out / "pilot.csv")["setting"]) == ["nokd", "t2_a05", "t4_a05"]
    readme = (out / "README.md").read_text()
    assert "Missing (no finished run): t1_a05, t8_a05" in readme and "dkd: no finished" in readme
    assert not (out / "teacher_softness.csv").exists() and "No cache was built" in readme
    logits = torch.from_numpy(np.random.default_rng(1).normal(0, 2, (8, 30, 7)).astype(np.float32))
    (runs / "teacher-efficientnet_lite0-s0").mkdir()
    torch.save({"fingerprint": "f", "logits": logits, "maps": []}, runs / "teacher-efficientnet_lite0-s0" / "teacher_cache_x.pt")
    assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    softness = pd.read_csv(out / "teacher_softness.csv")
    assert list(softness["temperature"]) == [2.0, 4.0] and (softness["n"] == 240).all()  # the KD students' T
    pd.testing.assert_frame_equal(softness, TU.teacher_softness(logits.numpy(), [2.0, 4.0]), check_dtype=False)

    # The paper's section reads what the script wrote, and names the settings in words, never by profile label.
    pilot = SR.Source("kd_tuning", out, "published", {}, json.loads((out / "provenance.json").read_text()))
    later = SR.Source("default", tmp_path, "published", {}, {"date": "2099-01-01T00:00:00Z"})
    text = supplement.kd_pilot(pilot, later)
    assert "{#tbl-kd-pilot}" in text and "{#tbl-teacher-softness}" in text
    assert "| Hinton, T 2, α 0.5 |" in text and "| no KD |" in text
    assert "keeps Hinton's loss at T 4 and α 0.5 unless" in text and "at least 0.01" in text
    assert "It chose Hinton at T 2, α 0.5; the main table runs Hinton, T 2, α 0.5." in text
    assert "On validation, all of the 2 KD settings scored above the no-KD student (Δ from +0.1" in text
    assert not any(label in text for label in ("t2_a05", "t4_a05", "nokd")) and "run before the pilot" not in text
    earlier = SR.Source("default", tmp_path, "published", {}, {"date": "2026-11-27T23:52:23Z"})
    assert "*The results below were run before the pilot (2026-11-27), with the KD settings" in supplement.kd_pilot(pilot, earlier)


def test_teacher_softness_equals_scipy_entropy_and_softmax():
    logits = np.random.default_rng(0).normal(0, 3, (8, 50, 7))  # views x images x classes, as the logit cache
    table = TU.teacher_softness(logits, [1.0, 4.0])
    for t, row in zip([1.0, 4.0], table.itertuples(), strict=True):
        probs = special.softmax(logits.reshape(-1, 7) / t, axis=1)
        assert row.mean_top_prob == pytest.approx(probs.max(1).mean(), rel=1e-12)
        assert row.mean_entropy_nats == pytest.approx(stats.entropy(probs, axis=1).mean(), rel=1e-12)
        assert row.entropy_share == pytest.approx(row.mean_entropy_nats / np.log(7)) and row.n == 400
    assert table["mean_top_prob"].is_monotonic_decreasing and table["entropy_share"].between(0, 1).all()
