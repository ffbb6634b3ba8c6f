"""A data-free bundle for the hostile-input tests: a synthetic DermaMNIST npz (the official split sizes at
28 px, each class its own mean colour plus noise), a ResNet-18 trained one epoch on a small subset of it,
and that run exported by the real ``edgekd-export``. Nothing here reads HAM10000, so these tests run
without the data folder; the numbers mean nothing, only the files and their checks matter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from edgekd.core import info
from edgekd.stages import data as D
from edgekd.stages import train as T

BIN: Path = Path(sys.executable).parent
SIZE: int = 28
TRAIN = {"epochs": 1, "batch_size": 32, "lr": 2e-3, "stem_stride": 2, "warmup_epochs": 0.0, "threads": 1,
         "progress": False, "collapse": "warn"}


def synthetic_npz(path: Path, size: int = SIZE, seed: int = 0) -> Path:
    """A MedMNIST-layout npz with the official split sizes: class c is a flat colour ``c * 36`` plus noise."""
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in info.SPLIT_SIZES.items():
        y = rng.integers(0, info.NUM_CLASSES, n)
        x = rng.integers(0, 40, (n, size, size, 3)) + (y * 30)[:, None, None, None]
        arrays[f"{split}_images"] = x.astype(np.uint8)
        arrays[f"{split}_labels"] = y[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def data_config(base: Path) -> D.DataConfig:
    """The synthetic data, a small subset of it."""
    return D.DataConfig(size=SIZE, source="npz", data_dir=str(synthetic_npz(base / "synthetic.npz")),
                        subset={"train": 140, "val": 70, "test": 70})


def fake_run(base: Path) -> Path:
    """``base/run``: a finished ResNet-18 run on the synthetic data (a few seconds on one core)."""
    run_dir = base / "run"
    if not (run_dir / "metrics.json").is_file():
        T.run_train(run_dir, "resnet18", 0, data_config(base), T.TrainConfig(**TRAIN), T.KDConfig(mode="none"))
    return run_dir


def fake_bundle(base: Path) -> Path:
    """``base/bundle``: :func:`fake_run` exported by ``edgekd-export`` (FP32 and INT8), run as ``python -m edgekd.stages.export``
    so that it is the ``edgekd`` on ``sys.path`` (``PYTHONPATH`` first), not necessarily the installed one."""
    out = base / "bundle"
    if not (out / "bundle.json").is_file():
        res = subprocess.run([sys.executable, "-m", "edgekd.stages.export", str(fake_run(base)), "--out", str(out), "--n-resamples", "20",
                              "--calib-images", "32"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out
