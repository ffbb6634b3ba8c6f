"""Shared fixtures and the test tiers.

Tiers (markers registered in pyproject.toml, applied here, never by hand for fixtures):

* ``data``: the test reads the real HAM10000 folder, through :func:`data_dir` or any fixture built on it
  (``arrays28``, ``tiny``, ``tiny_runs``, ``run_dir``, ``bundle``, ``isic``, ``smoke_outputs``, ...), or directly
  (:data:`READS_DEFAULT_DATA`); every nbval notebook cell too (the notebooks read the real data).
  ``pytest -m "not data" tests`` is the fast tier: it needs no data folder and runs in a few minutes.
* ``smoke``: the test reads the smoke profile's outputs (:func:`smoke_outputs`, the whole profile run end to end,
  the longest part of the suite); ``-m "not smoke"`` runs everything else, real data included.

The full tier (``bash scripts/test.sh``, what CI runs) runs everything. There the smoke profile starts in the
background as soon as the session starts (:func:`_smoke_in_background`), and the tests that read its outputs run
last, so that it runs while the unit tests and the notebooks do: the same work as before, overlapped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network from tests
os.environ.setdefault("MPLBACKEND", "Agg")
# Before torch loads (here, and in every process the tests start: they inherit it). OpenMP threads that wait for
# work sleep instead of spinning: two 2-thread torch processes on 2 cores (the smoke profile in the background and
# a test; two Dask workers) otherwise ran a training step 7-30x slower. Results are bitwise the same either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from edge_helpers import export_bundle, isic_folder, trained_run  # noqa: E402
from edgekd.core import info  # noqa: E402
from edgekd.pipeline.kernels import MALLOC_ENV  # noqa: E402

# The runner's malloc settings for every process the tests start (the smoke profile, the nbval and JupyterLab
# kernels): glibc reads them when a process starts, so they take effect in children, not in this process.
for _name, _value in MALLOC_ENV.items():
    os.environ.setdefault(_name, _value)
from edgekd.stages import data as D  # noqa: E402
from fake_bundle import fake_bundle  # noqa: E402

#: Tests that read the real HAM10000 folder without asking for :func:`data_dir` (they build a ``DataConfig``
#: whose ``data_dir`` is the default one, or run a profile that checks it), as ``file::test name``
#: (every parametrisation). A test that asks for ``data_dir`` (or a fixture built on it) needs no entry, nor one
#: marked ``@pytest.mark.usefixtures("data_dir")`` (the better way: it fails with the data_dir message).
READS_DEFAULT_DATA: frozenset[str] = frozenset({
    "test_train.py::test_training_is_deterministic_on_cpu",
    "test_train.py::test_collapse_guard_stops_a_broken_run",
    "test_train.py::test_phases_account_for_the_wall_time",
    "test_hostile.py::test_dry_run_writes_nothing",
})
#: The smoke profile's run may take this long (seconds from its start) before its tests fail: it shares the
#: machine with the rest of the suite (about 15 min on 2 idle cores, over 30 on a loaded machine).
SMOKE_TIMEOUT_S: int = 3600


# ----------------------------------------------------------------------------------------------- tiers


def _needs_data(item: pytest.Item) -> bool:
    if item.path.suffix == ".ipynb":  # an nbval cell: the notebooks run on the real data
        return True
    if "data_dir" in getattr(item, "fixturenames", ()):  # the fixture closure: direct or through other fixtures
        return True
    name = getattr(item, "originalname", item.name)
    return f"{item.path.name}::{name}" in READS_DEFAULT_DATA


def _needs_smoke(item: pytest.Item) -> bool:
    return "smoke_outputs" in getattr(item, "fixturenames", ())


def _rank(item: pytest.Item) -> int:
    """Where an item runs: the unit tests, then the nbval notebooks (they train the notebooks' demo runs), then the
    JupyterLab test (it reads those runs where they are finished), then the smoke profile's readers."""
    if _needs_smoke(item):
        return 3
    if item.path.name == "test_jupyterlab.py":
        return 2
    return 1 if item.path.suffix == ".ipynb" else 0


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``data`` and ``smoke`` items and order them by :func:`_rank` (stable: modules and notebooks keep their
    order), so that the smoke profile runs in the background while everything else runs."""
    for item in items:
        if _needs_data(item):
            item.add_marker(pytest.mark.data)
        if _needs_smoke(item):
            item.add_marker(pytest.mark.smoke)
    items.sort(key=_rank)


# ----------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def data_dir():
    """The real HAM10000 folder; a test of the full tier FAILS (not skips) without it."""
    path = info.default_data_dir()
    if not path.is_dir():
        pytest.fail(f"the real HAM10000 folder is needed at {path} (set ${info.DATA_ENV}); "
                    'without it run the fast tier: pytest -m "not data" tests')
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
    from edgekd.stages import train as T

    root = tmp_path_factory.mktemp("runs")
    data_cfg = D.DataConfig(**TINY_DATA)
    train_cfg = T.TrainConfig(**TINY_TRAIN)
    T.run_train(root / "teacher-resnet50-s0", "resnet50", 0, data_cfg, train_cfg)
    T.run_train(root / "student-resnet18-kd-s0", "resnet18", 0, data_cfg, train_cfg,
                T.KDConfig(alpha=0.5, temperature=4.0), root / "teacher-resnet50-s0")
    return {"teacher": root / "teacher-resnet50-s0", "student": root / "student-resnet18-kd-s0", "root": root}


# ----------------------------------------------------------------------------------------------- edge path
# test_bundle, test_predict and test_external share one trained run, its bundle and one ISIC-format folder
# (edge_helpers); a test that edits one works on a copy.


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, data_dir):
    """A finished ResNet-18 run trained on real 28 px images (:func:`edge_helpers.trained_run`)."""
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, run_dir):
    """The bundle of :func:`run_dir` made by the real ``edgekd-export`` (:func:`edge_helpers.export_bundle`)."""
    return export_bundle(tmp_path_factory.getbasetemp(), run_dir)


@pytest.fixture(scope="session")
def isic(tmp_path_factory, data_dir):
    """An ISIC-format folder of real HAM10000 test images: images, ground-truth CSV, split rows used."""
    return isic_folder(tmp_path_factory.getbasetemp(), data_dir)


@pytest.fixture(scope="session")
def fake_bundle_dir(tmp_path_factory):
    """A bundle exported from a run on synthetic data (no HAM10000 needed); copy it before editing it."""
    return fake_bundle(tmp_path_factory.mktemp("fake"))


# ----------------------------------------------------------------------------------------------- the smoke profile


class SmokeRun:
    """``python -m edgekd.pipeline.runner smoke --outputs OUT`` in its own process group, stdout and stderr to files."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.stdout, self.stderr = out.parent / f"{out.name}-runner.out", out.parent / f"{out.name}-runner.err"
        with open(self.stdout, "w") as so, open(self.stderr, "w") as se:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgekd.pipeline.runner", "smoke", "--outputs", str(out)],
                                         stdout=so, stderr=se, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()

    def wait(self) -> tuple[int, str, str]:
        """Its exit code (None after :data:`SMOKE_TIMEOUT_S`, when it is stopped), stdout and stderr."""
        try:
            code = self.proc.wait(timeout=max(1.0, SMOKE_TIMEOUT_S - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            code = None
        return code, self.stdout.read_text(), self.stderr.read_text()

    def stop(self) -> None:
        """End the runner and what it started (its process group), if it still runs."""
        if self.proc.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="session", autouse=True)
def _smoke_in_background(request, tmp_path_factory):
    """Start the smoke profile at the first test when a selected test reads its outputs; stop it at the end if it
    still runs (an interrupted session)."""
    if not any(_needs_smoke(item) for item in request.session.items):
        yield None
        return
    run = SmokeRun(tmp_path_factory.mktemp("outputs"))
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture(scope="session")
def smoke_outputs(_smoke_in_background, data_dir):
    """The smoke profile run end to end through papermill, as the README's test command does: its profile folder
    and the runner's stdout. The run started with the session (:func:`_smoke_in_background`); this waits for it."""
    run = _smoke_in_background
    code, out, err = run.wait()
    assert code == 0, f"smoke profile: exit {code}\n" + out[-3000:] + err[-3000:]
    return run.out / "smoke", out
