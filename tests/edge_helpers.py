"""Helpers shared by test_bundle, test_predict and test_external: a small trained run, its bundle and an
ISIC-format folder of real HAM10000 test images, each made once per session (the session's base temp
folder is the cache).

The run is a ResNet-18 without KD (no teacher needed) trained 3 epochs on 700 real 28 px images with
class-balanced batches, so that it predicts every class on test: agreement, thresholds and per-class
checks then mean something, which they do not for a model that predicts 'nv' for nearly everything.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from edgekd.stages import data as D
from edgekd.stages import train as T

#: ISIC 2018 ground-truth column order (a permutation of the DermaMNIST order).
ISIC_ORDER: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
BIN: Path = Path(sys.executable).parent
RUN_DATA = {"size": 28, "source": "raw", "subset": {"train": 700, "val": 210, "test": 210}}
RUN_TRAIN = {"epochs": 3, "batch_size": 32, "lr": 2e-3, "stem_stride": 2, "warmup_epochs": 0.5, "balance": "sampler",
             "threads": 1, "progress": False, "collapse": "warn"}


def trained_run(base: Path) -> Path:
    """``base/edge-runs/student-resnet18-nokd-s0``: a finished run (about 20 s on one core)."""
    run_dir = base / "edge-runs" / "student-resnet18-nokd-s0"
    if not (run_dir / "metrics.json").is_file():
        T.run_train(run_dir, "resnet18", 0, D.DataConfig(**RUN_DATA), T.TrainConfig(**RUN_TRAIN), T.KDConfig(mode="none"))
    return run_dir


def isic_folder(base: Path, data_dir: Path, n: int = 60) -> tuple[Path, Path, pd.DataFrame]:
    """``base/isic/images`` holding copies of the original JPEGs of ``n`` class-stratified TEST-split images
    and ``base/isic/ground_truth.csv`` (ISIC one-hot, 1.0 / 0.0); returns both paths and the split rows used."""
    root = base / "isic"
    images, csv = root / "images", root / "ground_truth.csv"
    split = D.read_split(data_dir)
    test = split[split["split"] == "test"].reset_index(drop=True)
    rows = test.iloc[D.stratified_indices(test["label"].to_numpy(), n, seed=0)].reset_index(drop=True)
    if not csv.is_file():
        images.mkdir(parents=True, exist_ok=True)
        for image_id in rows["image_id"]:
            shutil.copyfile(data_dir / "images" / f"{image_id}.jpg", images / f"{image_id}.jpg")
        onehot = pd.DataFrame({c: (rows["dx"] == c.lower()).astype(float) for c in ISIC_ORDER})
        onehot.insert(0, "image", rows["image_id"])
        onehot.to_csv(csv, index=False)
    return images, csv, rows


def export_bundle(base: Path, run_dir: Path) -> Path:
    """``base/bundle``: the bundle of ``run_dir`` made by the real ``edgekd-export`` CLI (200 bootstrap resamples)."""
    out = base / "bundle"
    if not (out / "bundle.json").is_file():
        res = subprocess.run([str(BIN / "edgekd-export"), str(run_dir), "--out", str(out), "--n-resamples", "200"],
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "edgekd-export: wrote" in res.stdout
    return out
