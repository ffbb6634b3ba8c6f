"""Runner: profile expansion, bad input caught before compute, and the smoke profile end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from edgekd import runner as R


def _profile(tmp_path, **edits):
    prof = yaml.safe_load((R.PARAMS_DIR / "smoke.yaml").read_text())
    for dotted, value in edits.items():
        node = prof
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(leaf) if isinstance(node, list) else leaf] = value
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def test_smoke_expands_teacher_before_students(tmp_path):
    specs = R.expand(R.load_profile("smoke"), tmp_path)
    stages = [s.stage for s in specs]
    assert stages[:2] == ["data", "teacher"] and set(stages[2:]) == {"student"}
    students = [s for s in specs if s.stage == "student"]
    assert len(students) == 3 * 2 * 2  # archs x seeds x KD settings
    assert all(s.parameters["teacher_dir"] == str(specs[1].run_dir) for s in students)
    assert {s.parameters["kd"]["mode"] for s in students} == {"hinton", "none"}


def test_every_profile_is_valid(tmp_path):
    for path in R.PARAMS_DIR.glob("*.yaml"):
        assert R.expand(R.load_profile(path), tmp_path), path


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"students.archs": ["resnet18", "resnet1000"]}, "unknown architecture 'resnet1000'"),
        ({"teacher.arch": "vgg16"}, "unknown architecture 'vgg16'"),
        ({"students.kd.0.alpha": 1.5}, "alpha must lie in"),
        ({"students.kd.0.alpha": -0.1}, "alpha must lie in"),
        ({"students.kd.0.temperature": 0.0}, "temperature T must be > 0"),
        ({"students.kd.0.beta": -1.0}, "beta must be >= 0"),
        ({"data.size": 32}, "not one of the DermaMNIST sizes"),
        ({"data.data_dir": "/nonexistent/ham10000"}, "does not exist"),
        ({"train.epochs": 0}, "epochs must be >= 1"),
        ({"students.kd.0.gamma": 2}, "unexpected keyword"),
    ],
)
def test_bad_profile_fails_before_any_output(tmp_path, edits, message):
    path = _profile(tmp_path, **edits)
    outputs = tmp_path / "outputs"
    with pytest.raises(ValueError, match=message):
        R.run_profile(path, outputs)
    assert not outputs.exists()


def test_cli_reports_bad_input(tmp_path, capsys):
    path = _profile(tmp_path, **{"students.kd.0.temperature": -1})
    assert R.main([str(path), "--outputs", str(tmp_path / "out")]) == 2
    assert "temperature T must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_profile(tmp_path):
    with pytest.raises(R.ConfigError, match="known profiles"):
        R.load_profile("no-such-profile")


@pytest.fixture(scope="session")
def smoke_outputs(tmp_path_factory):
    """The smoke profile run end to end through papermill, as the README's test command does."""
    out = tmp_path_factory.mktemp("outputs")
    res = subprocess.run([sys.executable, "-m", "edgekd.runner", "smoke", "--outputs", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out / "smoke", res.stdout


def test_smoke_profile_end_to_end(smoke_outputs):
    root, _ = smoke_outputs
    specs = R.expand(R.load_profile("smoke"), root.parent)
    for spec in specs:
        assert spec.output_notebook.exists(), spec.run_id
        assert spec.is_done(), spec.run_id
    for spec in specs:
        if spec.stage in ("teacher", "student"):
            metrics = json.loads((spec.run_dir / "metrics.json").read_text())
            hist = pd.read_csv(spec.run_dir / "history.csv")
            assert len(hist) == 2 and 1 <= metrics["best_epoch"] <= 2
            assert 0 <= metrics["test_acc"] <= 1
    assert (root / "data" / "montage.png").exists()
    leakage = pd.read_csv(root / "data" / "leakage.csv")
    assert set(leakage["splits"]) == {"train-val", "train-test", "val-test", "any"}


def test_rerun_skips_finished_runs(smoke_outputs):
    root, _ = smoke_outputs
    res = subprocess.run([sys.executable, "-m", "edgekd.runner", "smoke", "--outputs", str(root.parent)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().endswith(")") and "s  " in ln]
    assert lines and all(ln.split()[0] == "skipped" for ln in lines), res.stdout

