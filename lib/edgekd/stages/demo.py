"""The stage notebooks' standalone demo: one home for their default parameters, and what builds a missing demo run.

Opened on its own, each stage notebook runs a small real study in a few minutes at most on a 2-core CPU: a
class-stratified 1,500 / 350 / 350-image subset of the official DermaMNIST split at 64 px, EfficientNet-Lite0 from
its ImageNet weights as the teacher (``02_teacher``) and as its distilled student (``03_student``), 2 epochs each.
The later notebooks read that student; opened first, they train it (and its teacher) with these same defaults and
say so. Paths are relative to the notebooks folder, the kernel's working directory.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgekd.core.config import KDConfig, TrainConfig
from edgekd.stages import data as D
from edgekd.stages import train as T

#: Where the notebooks' own runs go (the runner passes each stage a profile's folders instead).
ROOT: str = "../outputs/notebooks"
#: The demo data: the official split, subsampled per class so that every class has images to show.
DATA: dict = {"size": 64, "source": "raw", "data_dir": None, "split": "official",
              "subset": {"train": 1500, "val": 350, "test": 350}}
#: The demo recipe of teacher and student: ImageNet weights, 2 short epochs, horizontal flips.
TRAIN: dict = {"epochs": 2, "batch_size": 64, "lr": 0.002, "warmup_epochs": 0.5, "augment": "flip",
               "pretrained": "imagenet"}
ARCH: str = "efficientnet_lite0"
SEED: int = 0
#: The student's distillation: Hinton KD, half cross-entropy and half the softened teacher.
KD: dict = {"mode": "hinton", "alpha": 0.5, "temperature": 4.0}
TEACHER_DIR: str = f"{ROOT}/teacher-{ARCH}-s{SEED}"
STUDENT_DIR: str = f"{ROOT}/student-{ARCH}-kd-s{SEED}"
#: The folders the data, aggregate and export notebooks write.
DATA_DIR: str = f"{ROOT}/data"
AGGREGATE_DIR: str = f"{ROOT}/aggregate"
BUNDLE_DIR: str = f"{ROOT}/bundles/student-{ARCH}-kd"


def finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished training run (its ``metrics.json`` is written last)."""
    return all((Path(run_dir) / name).is_file() for name in ("run_config.json", "best.pt", "metrics.json"))


def ensure_run(run_dir: str | Path) -> str:
    """Say which run a notebook reads: ``run_dir`` when it is finished; the demo teacher or student trained now with
    this module's defaults when it is one of them and unfinished. Any other run folder is read as it is (the stage
    names what it lacks); a missing one is a FileNotFoundError that names what makes it."""
    run_dir = Path(run_dir)
    if finished(run_dir):
        return f"Reading the finished run `{run_dir}`."
    demo = {Path(TEACHER_DIR).resolve(): "teacher", Path(STUDENT_DIR).resolve(): "student"}
    role = demo.get(run_dir.resolve())
    if role is None and run_dir.is_dir():
        return f"Reading the run `{run_dir}`."
    if role is None:
        raise FileNotFoundError(
            f"{run_dir} is not a finished run: run its profile first (.venv/bin/edgekd-run <profile>), or leave "
            f"run_dir at the demo default {STUDENT_DIR!r}, which this notebook then trains")
    tick = time.time()
    built = []
    if not finished(TEACHER_DIR):
        T.run_train(TEACHER_DIR, ARCH, SEED, D.DataConfig(**DATA), TrainConfig(**TRAIN))
        built.append(f"the teacher `{TEACHER_DIR}`")
    if role == "student":
        T.run_train(STUDENT_DIR, ARCH, SEED, D.DataConfig(**DATA), TrainConfig(**TRAIN), KDConfig(**KD), TEACHER_DIR)
        built.append(f"the student `{STUDENT_DIR}`")
    return (f"`{run_dir}` was missing, so this notebook trained {' and '.join(built)} with the demo defaults of "
            f"02_teacher and 03_student ({time.time() - tick:.0f} s). Next time it reads them.")
