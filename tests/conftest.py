"""Shared fixtures and the test tiers.

Tiers (markers registered in pyproject.toml, applied here, never by hand for fixtures):

* ``data``: the test reads the real HAM10000 folder, through :func:`data_dir` or any fixture built on it
  (``arrays28``, ``tiny``, ``tiny_runs``, ``run_dir``, ``bundle``, ``isic``, ``smoke_outputs``, ...), or directly
  (:data:`READS_DEFAULT_DATA`); every nbval notebook cell too (the notebooks read the real data).
  ``pytest -m "not data" tests`` is the fast tier: it needs no data folder and runs in a few minutes.
* ``smoke``: the test reads the smoke profile's outputs (:func:`smoke_outputs`, the whole profile run end to end,
  the longest part of the suite); ``-m "not smoke"`` runs everything else, real data included.

The full tier (``bash scripts/test.sh``, what CI runs) runs everything, on two pytest-xdist workers. The smoke
profile starts in the background when collection ends (:func:`pytest_collection_finish`, once for all workers), and the
tests that read its outputs run last, so that it runs while the unit tests and the notebooks do. The notebooks and
the JupyterLab test run in order on one worker (:func:`_scope`); a plain ``pytest`` without ``-n`` runs the same
tests in the same order in one process.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network from tests
os.environ.setdefault("MPLBACKEND", "Agg")
# Before torch loads (here, and in every process the tests start: they inherit it). OpenMP threads that wait for
# work sleep instead of spinning: two 2-thread torch processes on 2 cores (the smoke profile in the background and
# a test; two Dask workers) otherwise ran a training step 7-30x slower. Results are bitwise the same either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One intra-op thread in every process that does not set its own (the notebooks' demo runs under nbval and in
# JupyterLab, the tests' trainings): the suite keeps two or three torch processes busy on two cores, where a second
# thread per process only adds synchronisation (a 64 px EfficientNet-Lite0 training step: 35 % more CPU time for
# the same wall time beside other work). Runs that fix their threads (the profiles' `threads`) keep them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


#: Modules whose tests share session fixtures that train and export (``run_dir``, ``bundle``): one pytest-xdist
#: worker runs each module's tests, in order, and builds them once.
SHARED_BUILD_MODULES: frozenset[str] = frozenset({"tests/test_bundle.py", "tests/test_predict.py", "tests/test_external.py"})


def _scope(nodeid: str) -> str:
    """The pytest-xdist work unit of a test (one worker runs a unit's tests in their order): the notebooks (nbval)
    and the JupyterLab test, which reads the demo runs nbval trained, form one; each module of
    :data:`SHARED_BUILD_MODULES` one; every other test is a unit of its own, so that both workers share the rest."""
    path = nodeid.split("::", 1)[0]
    if path.endswith(".ipynb") or path == "tests/test_jupyterlab.py":
        return "notebooks"
    return path if path in SHARED_BUILD_MODULES else nodeid


class Scheduling(LoadScopeScheduling):
    """pytest-xdist's scope scheduling with :func:`_scope` as the scope; its default order (units with more tests
    first) starts the notebooks, the suite's longest chain of its own, at once. (Its ``xdist_group`` marker cannot
    be used: it renames node ids, which pytest 9 no longer allows.)"""

    def _split_scope(self, nodeid: str) -> str:
        return _scope(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> Scheduling:
    """Every run with ``-n`` schedules by :func:`_scope` (scripts/test.sh runs two workers)."""
    return Scheduling(config, log)


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
    """``python -m edgekd.pipeline.runner smoke --outputs OUT`` in its own process group, stdout and stderr to files,
    its exit code to a file when it ends: any pytest process (one of pytest-xdist's workers, or the only one) waits
    for it by reading that file, and the process that ends the session stops it if it still runs."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.stdout, self.stderr = out.parent / f"{out.name}-runner.out", out.parent / f"{out.name}-runner.err"
        self.code_file, self.pid_file = out.parent / f"{out.name}-runner.exit", out.parent / f"{out.name}-runner.pid"

    def start(self) -> None:
        """Start the run in the background (its shell writes the exit code when the runner ends)."""
        script = '"$0" -m edgekd.pipeline.runner smoke --outputs "$1" > "$2" 2> "$3"; echo $? > "$4.part" && mv "$4.part" "$4"'
        proc = subprocess.Popen(["bash", "-c", script, sys.executable, str(self.out), str(self.stdout), str(self.stderr),
                                 str(self.code_file)], stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(f"{proc.pid} {time.time()}\n")

    def wait(self) -> tuple[int | None, str, str]:
        """Its exit code (None after :data:`SMOKE_TIMEOUT_S` from its start, when it is stopped), stdout and stderr."""
        started = float(self.pid_file.read_text().split()[1])
        while not self.code_file.exists():
            if time.time() - started > SMOKE_TIMEOUT_S:
                self.stop()
                return None, self.stdout.read_text(), self.stderr.read_text()
            time.sleep(1.0)
        return int(self.code_file.read_text()), self.stdout.read_text(), self.stderr.read_text()

    def stop(self) -> None:
        """End the runner and what it started (its process group), if it was started and still runs."""
        if not self.pid_file.exists() or self.code_file.exists():
            return
        pgid = int(self.pid_file.read_text().split()[0])
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            for _ in range(20):
                time.sleep(1.0)
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return


def _shared_root(config: pytest.Config) -> Path:
    """The session's base temporary folder that every pytest-xdist worker shares (a worker's own is inside it)."""
    base = config._tmp_path_factory.getbasetemp()  # pytest's own factory: no fixture exists at session finish
    return base.parent if hasattr(config, "workerinput") else base


def _smoke_run(config: pytest.Config) -> SmokeRun:
    return SmokeRun(_shared_root(config) / "outputs")


#: How much lower the pytest processes run than the smoke profile (``os.nice``), once it has started: its runs are
#: the suite's longest chain (its readers wait for all of it), so they get the CPU first and the tests fill the rest.
TESTS_NICE: int = 5


def pytest_collection_finish(session: pytest.Session) -> None:
    """When a selected test reads the smoke profile's outputs, start the profile in the background: once per session,
    by the first pytest process to get here (a lock in the shared folder; with pytest-xdist every worker collects),
    so that it runs while everything else does; then lower this process's priority below it (:data:`TESTS_NICE`;
    what it starts inherits that). A hook, not a fixture: nbval's notebook cells request no fixtures."""
    if not any(_needs_smoke(item) for item in session.items):
        return
    run = _smoke_run(session.config)
    with open(run.out.parent / "outputs-runner.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not run.pid_file.exists():
            run.start()
    os.nice(TESTS_NICE)


@pytest.fixture(scope="session")
def _smoke_in_background(request) -> SmokeRun:
    """The smoke profile's run that :func:`pytest_collection_finish` started."""
    return _smoke_run(request.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The session's last process (pytest-xdist's controller, or the only one) stops the smoke run if it still runs
    (an interrupted session); a worker never does, since another may still be waiting for it."""
    if not hasattr(session.config, "workerinput"):
        _smoke_run(session.config).stop()


@pytest.fixture(scope="session")
def smoke_outputs(_smoke_in_background, data_dir):
    """The smoke profile run end to end through papermill, as the README's test command does: its profile folder
    and the runner's stdout. The run started with the session (:func:`_smoke_in_background`); this waits for it."""
    run = _smoke_in_background
    code, out, err = run.wait()
    assert code == 0, f"smoke profile: exit {code}\n" + out[-3000:] + err[-3000:]
    return run.out / "smoke", out
