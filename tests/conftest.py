"""Shared fixtures: the real HAM10000 folder (never downloaded) and small real subsets of it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network from tests
os.environ.setdefault("MPLBACKEND", "Agg")

from edgekd import data as D  # noqa: E402
from edgekd import info  # noqa: E402
from fake_bundle import fake_bundle  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    path = info.default_data_dir()
    if not path.is_dir():
        pytest.fail(f"the real HAM10000 folder is needed at {path} (set ${info.DATA_ENV})")
    return path


@pytest.fixture(scope="session")
def arrays28(data_dir):
    """Full DermaMNIST at 28 px built offline from the raw images (cached under outputs/cache)."""
    return D.get_dermamnist(28, "raw", data_dir)


@pytest.fixture(scope="session")
def tiny(arrays28):
    """A stratified 28 px subset small enough to train on in seconds."""
    return D.subset(arrays28, {"train": 96, "val": 48, "test": 48})


TINY_DATA = {"size": 28, "source": "raw", "subset": {"train": 140, "val": 70, "test": 70}}
TINY_TRAIN = {"epochs": 1, "batch_size": 32, "lr": 2e-3, "stem_stride": 2, "progress": False, "collapse": "warn"}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, data_dir):
    """Finished tiny runs (real data, 1 epoch): a resnet50 teacher and a resnet18 KD student."""
    from edgekd import train as T

    root = tmp_path_factory.mktemp("runs")
    data_cfg = D.DataConfig(**TINY_DATA)
    train_cfg = T.TrainConfig(**TINY_TRAIN)
    T.train_run(root / "teacher-resnet50-s0", "resnet50", 0, data_cfg, train_cfg)
    T.train_run(root / "student-resnet18-kd-s0", "resnet18", 0, data_cfg, train_cfg,
                T.KDConfig(alpha=0.5, temperature=4.0), root / "teacher-resnet50-s0")
    return {"teacher": root / "teacher-resnet50-s0", "student": root / "student-resnet18-kd-s0", "root": root}


@pytest.fixture(scope="session")
def fake_bundle_dir(tmp_path_factory):
    """A bundle exported from a run on synthetic data (no HAM10000 needed); copy it before editing it."""
    return fake_bundle(tmp_path_factory.mktemp("fake"))


@pytest.fixture(scope="session")
def smoke_outputs(tmp_path_factory):
    """The smoke profile run end to end through papermill, as the README's test command does."""
    out = tmp_path_factory.mktemp("outputs")
    res = subprocess.run([sys.executable, "-m", "edgekd.runner", "smoke", "--outputs", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out / "smoke", res.stdout
