"""Run a profile (``edgekd-run``): execute the stale stages of its plan with papermill, sequentially or on Dask.

Bookkeeping, so that no trained work is lost and no stale result is kept (what each stage owns, and when
it is fresh: :mod:`edgekd.pipeline.plan`):

* **Clearing.** A stage that reruns clears only what it owns, and nothing outside the outputs root
  (:func:`edgekd.core.files.remove`).
* **One runner per profile folder.** A run (not ``--dry-run``, which writes nothing) holds the lock
  ``<outputs>/<profile>/.edgekd-run.lock``; a second runner there exits with status 2, naming the lock and its pid.
* **Resume.** A killed training run resumes from ``last.pt`` only when the checkpoint came from the
  same configuration and training code (see :func:`edgekd.stages.train.fit`).
* **Failures.** A failed run (a notebook error, a :class:`~edgekd.stages.train.CollapsedRun`) does not stop
  the runs that do not depend on it; its dependants are skipped and the runner exits with status 1.

Runs execute sequentially or on Dask ``distributed`` (a LocalCluster, or a scheduler address;
training runs can ask for a GPU resource). Before training, the runner times a few training steps
of each architecture on this machine and prints its estimate; a progress bar shows the sweep's
elapsed time and ETA; at the end a stage-by-stage time table goes to ``<profile>/timings.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import papermill as pm
from dask.distributed import Client, LocalCluster, as_completed

from edgekd.core import info, source
from edgekd.core.config import DataConfig
from edgekd.core.files import OutsideRoot, atomic_write, check_inside, clear_results, remove, unwritable
from edgekd.core.models import check_weights
from edgekd.core.weights import PretrainedUnavailable
from edgekd.pipeline import progress, publish
from edgekd.pipeline.kernels import KERNEL_ENV, IPCKernelManager
from edgekd.pipeline.plan import (
    INVOCATIONS_FILE,
    NOTEBOOKS_DIR,
    STAGES,
    Blocked,
    ConfigError,
    RunSpec,
    _sha,
    _some,
    data_config,
    expand,
    external_sets,
    load_profile,
    ran_on,
    status_table,
)
from edgekd.pipeline.progress import critical_paths
from edgekd.stages import data as D
from edgekd.stages import external as X

#: The lock a running runner holds in its profile's folder: one runner per profile and outputs root.
LOCK_FILE: str = ".edgekd-run.lock"
EXECUTORS: tuple[str, ...] = ("sequential", "dask")


def check_inputs(prof: dict, outputs: Path, decode: bool = True) -> None:
    """Check the data before any run: the folder (or npz file) and the split file, and each external set's images
    and labels (every image has a label and every label an image); with ``decode``, also that
    every image decodes (building the cache under the outputs root, by source). Without ``decode`` (a dry
    run) nothing is written."""
    cfg = DataConfig(**data_config(prof, Path(outputs).resolve()))
    source.check_source(cfg)
    for ext in external_sets(prof):  # labelled_files checks the folder and file first
        try:
            X.labelled_files(ext)
        except ValueError as exc:
            raise ConfigError(f"external: {exc}") from None
    if decode:
        D.load(cfg)
    elif cfg.source == "raw":
        source.read_split(cfg.data_dir)


def check_brought_weights(specs: list[RunSpec], download: bool = True) -> None:
    """Find, verify and fit the hub or file weights of every training run among ``specs`` that is not fresh
    (:func:`edgekd.core.models.check_weights`), each source once, before any compute: one ConfigError names every
    source that is missing or wrong, with its first run. ``download``: fetch hub weights missing from the cache (a dry
    run does not)."""
    seen: set[str] = set()
    memo: dict = {}
    errors = []
    for spec in specs:
        pretrained = spec.parameters["train"]["pretrained"] if spec.trains else None
        key = json.dumps([spec.parameters.get("arch"), pretrained], sort_keys=True)
        if not isinstance(pretrained, dict) or key in seen or spec.status(memo)[0] == "fresh":
            continue
        seen.add(key)
        try:
            check_weights(spec.parameters["arch"], pretrained, download)
        except PretrainedUnavailable as exc:
            errors.append(f"{spec.run_id}: {exc}")
    if errors:
        raise ConfigError("; ".join(errors))


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[Path]:
    """Hold the exclusive lock :data:`LOCK_FILE` in ``root`` (created if needed) for the ``with`` block, its
    holder's pid written in it; a ConfigError naming the file and that pid while another runner holds it."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(f"another runner is working on {root}: it holds the lock {path} (pid {holder}); "
                              "wait for it to finish or stop it") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield path


def foreign_entries(spec: RunSpec) -> list[str]:
    """Names in ``spec``'s folder that a rerun of a non-training stage would delete although no run of that stage
    wrote the folder (it has neither the stage's marker nor its executed notebook); [] when the folder is new,
    empty or the stage's own. A training stage deletes only after its own marker, so it never has any."""
    folder = spec.stage_dir
    if spec.trains or not folder.is_dir() or spec.marker.exists() or spec.output_notebook.exists():
        return []
    return sorted(p.name for p in folder.iterdir())


def clear_owned(spec: RunSpec) -> None:
    """Delete what ``spec``'s stage owns before it reruns.

    Training keeps an unfinished run's files (``last.pt`` resumes when it matches); once a training
    stage has finished, rerunning it means its inputs changed, and everything it owns goes. Every deletion
    goes through :func:`edgekd.core.files.remove` inside the spec's outputs root: a stage folder outside it is
    refused (:class:`edgekd.core.files.OutsideRoot`) before anything is deleted.
    """
    if spec.outputs_root is None:
        raise OutsideRoot(f"{spec.key}: no outputs root to delete inside")
    check_inside(spec.stage_dir, spec.outputs_root)
    if foreign_entries(spec):
        raise ConfigError(f"{spec.key}: {spec.stage_dir} holds files this runner did not write; nothing was deleted")
    if spec.trains:
        if spec.recorded() is None:
            return
        for path in spec.owned():
            remove(path, spec.outputs_root)
        return
    clear_results(spec.stage_dir, spec.outputs_root)
    for stale in spec.stage_dir.glob(".done-*.json"):
        remove(stale, spec.outputs_root)


def execute(spec: RunSpec, log=print) -> float:
    """Execute one run with papermill, clearing only what its stage owns; returns its wall time in seconds."""
    clear_owned(spec)
    spec.stage_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pm.execute_notebook(
        str(spec.notebook), str(spec.output_notebook), parameters=spec.parameters,
        cwd=str(spec.notebooks_dir), progress_bar=False, kernel_name="python3",
        kernel_manager_class=IPCKernelManager,
    )
    wall = time.time() - t0
    mark = {"digest": None, "components": spec.components(), "wall_time_s": wall,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": ran_on()}
    mark["digest"] = _sha(json.dumps(mark["components"], sort_keys=True).encode())
    text = json.dumps(mark, indent=1).encode()
    atomic_write(spec.marker, lambda fh: fh.write(text))
    return wall


def _after(spec: RunSpec, *upstream_results: float) -> float:
    """Dask task: execute ``spec`` once its upstream tasks (passed as arguments) have finished."""
    return execute(spec)


def reads_cache(spec: RunSpec) -> bool:
    """Whether ``spec`` is a student that distils from its teacher's logit cache (a no-KD student never waits for it)."""
    kd = spec.parameters.get("kd") or {}
    return spec.stage == "student" and spec.teacher is not None and kd.get("mode", "none") != "none" and bool(kd.get("teacher_cache"))


def cache_requests(specs: list[RunSpec]) -> dict[str, list[dict]]:
    """Per teacher run key, the logit caches its distilling students among ``specs`` read (one per augmentation,
    attention maps or not, device and threads): :func:`edgekd.stages.train.build_teacher_cache`'s arguments."""
    out: dict[str, list[dict]] = {}
    for s in filter(reads_cache, specs):
        kd, train = s.parameters["kd"], s.parameters["train"]
        request = {"teacher_dir": str(s.teacher.run_dir), "augment": train["augment"], "maps": kd["beta"] > 0,
                   "device": train["device"], "threads": train["threads"]}
        if request not in out.setdefault(s.teacher.key, []):
            out[s.teacher.key].append(request)
    return out


#: Runs :func:`edgekd.stages.train.build_teacher_cache` with its arguments as JSON (``sys.argv[1]``).
_CACHE_CODE: str = "import json, sys; from edgekd.stages import train; train.build_teacher_cache(**json.loads(sys.argv[1]))"


def _cache(request: dict, *upstream_results: float) -> float | str:
    """Dask task: build a teacher's logit cache in a process of its own with :data:`KERNEL_ENV` (not in the Dask
    worker, whose nanny's malloc settings slow large tensors); its seconds, or why it failed: the students then
    build the cache themselves, as without this step."""
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", _CACHE_CODE, json.dumps(request)], env={**os.environ, **KERNEL_ENV},
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        return (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
    return time.time() - t0


def run_dask(specs: list[RunSpec], scheduler: str | None = None, workers: int = 2, gpu: bool = False,
             on_done=None, seconds: dict[str, float] | None = None, log=print) -> dict[str, float | Exception]:
    """Execute ``specs`` on Dask distributed, respecting dependencies; wall time (or the error) per run key.

    ``scheduler`` None starts a LocalCluster of ``workers`` single-threaded processes. With ``gpu``,
    training runs request the worker resource ``GPU=1`` (LocalCluster workers get one GPU each
    where CUDA is present; on a real cluster start workers with ``--resources GPU=1``). When several runs are
    ready, the one with the longest :func:`critical_paths` under the estimate ``seconds`` starts first (ties: plan
    order), so that the longest run does not start last while the other workers idle. Each teacher's logit caches
    (:func:`cache_requests`) are built as a step of their own right after it, before its students start.
    """
    paths = critical_paths(specs, seconds or {})
    requests = cache_requests(specs)
    cluster = None
    if scheduler is None:
        resources = {"GPU": 1} if gpu else None
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, resources=resources)
    client = Client(scheduler or cluster)
    try:
        futures, keys, caches = {}, {}, {}

        def submit_caches(teacher: str, after: list, priority: int) -> None:
            for i, request in enumerate(requests.get(teacher, [])):
                caches[(teacher, i)] = client.submit(_cache, request, *after, key=f"edgekd-cache-{teacher}-{i}", pure=False,
                                                     priority=priority, resources={"GPU": 1} if gpu else None)

        for teacher in set(requests) - {s.key for s in specs}:  # a fresh teacher: its caches may be missing all the same
            submit_caches(teacher, [], len(specs) * (len(specs) + 1))
        for order, spec in enumerate(specs):
            ups = [futures[u.key] for u in (*spec.upstream, *spec.after) if u.key in futures]
            if reads_cache(spec):
                ups += [caches[k] for k in caches if k[0] == spec.teacher.key]
            res = {"GPU": 1} if gpu and spec.trains else None
            priority = round(paths[spec.key]) * (len(specs) + 1) + len(specs) - order
            futures[spec.key] = client.submit(_after, spec, *ups, key=f"edgekd-{spec.key}", pure=False, resources=res,
                                              priority=priority)
            keys[futures[spec.key].key] = spec
            submit_caches(spec.key, [futures[spec.key]], priority)  # right after the teacher, before its students
        results: dict[str, float | Exception] = {}
        for future in as_completed(list(futures.values())):
            spec = keys[future.key]
            try:
                results[spec.key] = future.result()
            except Exception as exc:  # noqa: BLE001 - reported per run, dependants are cancelled by Dask
                results[spec.key] = exc
            if on_done is not None:
                on_done(spec, results[spec.key])
        for (teacher, _), future in caches.items():
            done = future.result() if future.status == "finished" else None
            if isinstance(done, float):
                log(f"[cache] {teacher}: logit cache ready in {done:.0f}s, before its students started")
            elif done is not None:
                log(f"[cache] {teacher}: the cache step failed ({done}); its students built the cache themselves")
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _exclusive(specs: list[RunSpec]) -> set[str]:
    """Keys of the timing stages and of every stage downstream of one: they run after the parallel part."""
    out: set[str] = set()
    for spec in specs:
        if STAGES[spec.stage].timed or any(u.key in out for u in (*spec.upstream, *spec.after)):
            out.add(spec.key)
    return out


def run_profile(
    name_or_path: str | Path,
    outputs: Path | None = None,
    dry_run: bool = False,
    executor: str = "sequential",
    scheduler: str | None = None,
    workers: int = 2,
    gpu: bool = False,
    only: list[str] | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    estimate: bool = True,
    log=print,
) -> list[dict]:
    """Validate, check data, then execute every stage that is not fresh (sequentially or on Dask).

    ``only`` restricts execution to some stages (e.g. ``["data", "teacher", "student"]``); a stage
    whose upstream is not fresh and not among them is refused. Returns one row per run and stage:
    status (fresh / ran / failed / blocked, or with ``dry_run`` fresh / stale / new), why, wall time.
    """

    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r} is not one of {EXECUTORS}")
    unknown = [st for st in only or [] if st not in STAGES]
    if unknown:
        raise ConfigError(f"--only: unknown stages {unknown}; expected some of {list(STAGES)}")
    prof = load_profile(name_or_path)
    outputs = Path(outputs) if outputs is not None else info.outputs_dir()
    reason = unwritable(outputs)  # in a dry run too: it must be a folder (or creatable) that takes new files
    if reason:
        raise ConfigError(f"outputs root {outputs} cannot be written: {reason}")
    all_specs = expand(prof, outputs, notebooks_dir)
    specs = [s for s in all_specs if not only or s.stage in only]
    check_brought_weights(specs, download=not dry_run)  # hub and file weights: there, unchanged, of the right arch
    check_inputs(prof, outputs, decode=False)  # the data folder and split file, before anything is written
    # A run holds the lock before anything is cleared or executed; a dry run writes nothing, not even the lock.
    with contextlib.nullcontext() if dry_run else run_lock(outputs.resolve() / prof["name"]):
        if not dry_run:
            check_inputs(prof, outputs)
        note = source.resolution_note(DataConfig(**prof["data"]))
        if note:
            log(f"[warn] {note}")
        table = status_table(specs)
        todo = [s for s, st in zip(specs, table["status"], strict=True) if st != "fresh"]
        todo_keys, memo = {s.key for s in todo}, {}
        for s in todo:
            missing = [u.key for u in s.upstream if u.key not in todo_keys and u.status(memo)[0] != "fresh"]
            if missing:
                raise ConfigError(f"{s.key} depends on {', '.join(missing)}, which is not fresh and not selected by --only")
        foreign = [f"{s.stage_dir} ({_some(names)})" for s in todo if (names := foreign_entries(s))]
        if foreign:
            raise ConfigError(f"{len(foreign)} stage folder(s) hold files this runner did not write, which a rerun would "
                              f"delete: {_some(foreign)}; move them away (or choose another --outputs); nothing was changed")
        if dry_run:
            log("[dry-run] data folder and split file checked; every image is decoded and checked when the runner "
                "executes (a dry run writes nothing)")
            return [{**row, "wall_time_s": 0.0} for row in table.to_dict("records")]
        return _execute_todo(prof["name"], outputs, specs, table, todo, executor, scheduler, workers, gpu, estimate, log)


def _execute_todo(name: str, outputs: Path, specs: list[RunSpec], table: pd.DataFrame, todo: list[RunSpec],
                  executor: str, scheduler: str | None, workers: int, gpu: bool, estimate: bool, log) -> list[dict]:
    """Execute the ``todo`` runs of :func:`run_profile` (sequentially or on Dask), write ``timings.csv`` and log the
    stage table and the reproduction report; one summary row per spec of ``specs`` (``table``: their status)."""
    for row in table.itertuples():
        if row.status == "fresh":
            log(f"[fresh] {row.run_id} ({row.stage})")
    root = outputs.resolve() / name
    invocation = Invocation(root, executor, workers) if todo else None
    plan = progress.Plan(todo, measure=estimate)
    parallel = executor == "dask" and bool(todo)
    exclusive = _exclusive(todo) if parallel else set()
    log(plan.describe(workers if executor == "dask" else 1, frozenset(exclusive)))
    tracker = progress.Tracker(plan, log, workers if parallel else 1, frozenset(exclusive))

    def done(spec: RunSpec, result: float | Exception) -> None:
        tracker.done(spec, result)
        invocation.step(result)

    results: dict[str, float | Exception] = {}
    sequential = todo
    if parallel:
        results = run_dask([s for s in todo if s.key not in exclusive], scheduler, workers, gpu, on_done=done,
                           seconds=plan.seconds, log=log)
        sequential = [s for s in todo if s.key in exclusive]
    if sequential:
        failed: set[str] = {k for k, r in results.items() if isinstance(r, Exception)}
        for spec in sequential:
            blocked = list(dict.fromkeys(u.key for u in (*spec.upstream, *spec.after) if u.key in failed))
            if blocked:
                results[spec.key] = Blocked(f"upstream {_some(blocked)} failed")
                failed.add(spec.key)
                done(spec, results[spec.key])
                continue
            tracker.start(spec)
            try:
                results[spec.key] = execute(spec, log)
            except Exception as exc:  # noqa: BLE001 - a failed run is reported; independent runs go on
                results[spec.key] = exc
                failed.add(spec.key)
            done(spec, results[spec.key])
    summary = []
    for s, row in zip(specs, table.itertuples(), strict=True):
        res = results.get(s.key)
        if res is None:
            status, why, wall = "fresh", "", 0.0
        elif isinstance(res, Exception):
            status = "blocked" if isinstance(res, Blocked) else "failed"
            why, wall = f"{type(res).__name__}: {str(res)[:500]}", 0.0
        else:
            status, why, wall = "ran", row.why, float(res)
        summary.append({"run_id": s.run_id, "stage": s.stage, "status": status, "why": why, "wall_time_s": wall})
    if todo:
        tracker.close()
        frame = pd.DataFrame(summary)
        root.mkdir(parents=True, exist_ok=True)
        frame.assign(estimate_s=[plan.seconds.get(s.key, 0.0) for s in specs]).to_csv(root / "timings.csv", index=False)
        invocation.finish(frame)
        log(progress.stage_table(frame))
    report = publish.reproduction_report(name, outputs)
    if report:
        log(report)
    return summary


class Invocation:
    """This runner invocation's row of the profile's :data:`edgekd.pipeline.plan.INVOCATIONS_FILE` (the file only
    grows: every segment of a resumed main job counts). The row is written when the work starts and rewritten after
    every finished step, so a segment that is killed (a session that ends) still counts up to its last step."""

    def __init__(self, root: Path, executor: str, workers: int) -> None:
        self.path, self.tick = root / INVOCATIONS_FILE, time.monotonic()
        self.earlier = pd.read_csv(self.path).to_dict("records") if self.path.exists() else []
        self.row = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "elapsed_s": 0.0,
                    "executor": executor, "workers": workers if executor == "dask" else 1, "ran": 0, "failed": 0,
                    "finished": False}
        self._write()

    def step(self, result: float | Exception) -> None:
        """Count one finished step (a failure or a blocked run as failed) and the time so far."""
        self.row["failed" if isinstance(result, Exception) else "ran"] += 1
        self._write()

    def finish(self, frame: pd.DataFrame) -> None:
        """The final row, with the counts of the summary ``frame``."""
        self.row.update(ran=int((frame["status"] == "ran").sum()),
                        failed=int(frame["status"].isin(["failed", "blocked"]).sum()), finished=True)
        self._write()

    def _write(self) -> None:
        self.row["elapsed_s"] = round(time.monotonic() - self.tick, 1)
        frame = pd.DataFrame([*self.earlier, self.row])
        atomic_write(self.path, lambda fh: frame.to_csv(fh, index=False))


def main(argv: list[str] | None = None) -> int:
    """``python -m edgekd.pipeline.runner PROFILE``."""
    ap = argparse.ArgumentParser(prog="edgekd-run", description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="profile name in params/ (smoke, default, cpu64, paper) or a YAML path")
    ap.add_argument("--outputs", type=Path, default=None, help=f"outputs root (default ${info.OUTPUTS_ENV} or outputs/)")
    ap.add_argument("--dry-run", action="store_true", help="validate, and list each run and stage as fresh, stale or new, and why")
    ap.add_argument("--executor", choices=EXECUTORS, default="sequential", help="run sequentially or on Dask distributed")
    ap.add_argument("--scheduler", default=None, help="Dask scheduler address (default: start a LocalCluster)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    ap.add_argument("--gpu", action="store_true", help="Dask: training runs request the worker resource GPU=1")
    ap.add_argument("--only", default=None, help="comma-separated stages to execute (default: all of the profile's)")
    ap.add_argument("--no-estimate", action="store_true", help="skip timing a few training steps for the estimate")
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else None
    try:
        summary = run_profile(args.profile, args.outputs, args.dry_run, args.executor, args.scheduler, args.workers,
                              args.gpu, only, estimate=not args.no_estimate)
    except (ConfigError, source.DataError, ValueError) as exc:
        print(f"edgekd-run: error: {exc}", file=sys.stderr)
        return 2
    width = max((len(r["run_id"]) for r in summary), default=10)
    for row in summary:
        print(f"{row['status']:>8}  {row['wall_time_s']:8.1f}s  {row['run_id']:<{width}}  {row['stage']:<10}  {row['why']}")
    failed = [r for r in summary if r["status"] in ("failed", "blocked")]
    if failed:
        print(f"edgekd-run: {len(failed)} run(s) failed or were blocked; their notebooks (with the error) are in the run folders",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
