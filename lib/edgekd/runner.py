"""Run a profile from ``params/*.yaml``: expand it into papermill runs and execute them in order.

Every run is one executed notebook kept in ``outputs/<profile>/<run>/<stage>.ipynb``. A run is
finished when its ``.done-<stage>.json`` marker holds the same digest (its parameters, its notebook
and the digests of the runs it depends on); rerunning skips it. All parameters are validated, and
the data checked, before any run starts. Runs execute sequentially, or on Dask ``distributed``
(a LocalCluster, or a scheduler address for a real cluster; training runs can ask for a GPU resource).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from edgekd import data as D
from edgekd import info
from edgekd.models import check_arch
from edgekd.train import KDConfig, TrainConfig

#: Notebook of each stage, in execution order.
STAGES: dict[str, str] = {
    "data": "01_data.ipynb",
    "teacher": "02_teacher.ipynb",
    "student": "03_student.ipynb",
    "evaluate": "04_evaluate.ipynb",
    "robustness": "05_robustness.ipynb",
    "efficiency": "06_efficiency.ipynb",
    "aggregate": "07_aggregate.ipynb",
}
#: Stages that train (the ones a GPU resource is requested for on Dask).
TRAIN_STAGES: frozenset[str] = frozenset({"teacher", "student"})
#: Stages run on every trained run, and their parameter defaults.
PER_RUN_STAGES: dict[str, dict] = {
    "evaluate": {"n_resamples": 1000, "seed": 0},
    "robustness": {"suites": ["source", "medmnistc"], "severities": None, "max_images": None, "seed": 0},
    "efficiency": {"latency_seeds": [0], "threads": 2, "batch_sizes": [1, 32], "sizes": None,
                   "warmup": 5, "repeats": 30, "calib_images": 256},
}
PROFILE_KEYS: frozenset[str] = frozenset(
    {"name", "description", "data", "train", "teacher", "students", "stages", "aggregate", *PER_RUN_STAGES}
)
EXECUTORS: tuple[str, ...] = ("sequential", "dask")
NOTEBOOKS_DIR: Path = info.REPO_ROOT / "notebooks"
PARAMS_DIR: Path = info.REPO_ROOT / "params"


class ConfigError(ValueError):
    """A profile that cannot run, reported before any compute."""


@dataclass
class RunSpec:
    """One papermill execution: ``stage`` notebook with ``parameters``, writing into ``run_dir``."""

    run_id: str
    stage: str
    run_dir: Path
    parameters: dict
    upstream: list[RunSpec] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.run_id}:{self.stage}"

    @property
    def notebook(self) -> Path:
        return NOTEBOOKS_DIR / STAGES[self.stage]

    @property
    def output_notebook(self) -> Path:
        return self.run_dir / f"{self.stage}.ipynb"

    @property
    def marker(self) -> Path:
        return self.run_dir / f".done-{self.stage}.json"

    def digest(self) -> str:
        """Hash of the parameters, the notebook's source and the upstream digests."""
        h = hashlib.sha256(json.dumps(self.parameters, sort_keys=True, default=str).encode())
        h.update(self.notebook.read_bytes())
        for up in self.upstream:
            h.update(up.digest().encode())
        return h.hexdigest()[:16]

    def is_done(self) -> bool:
        if not self.marker.exists():
            return False
        return json.loads(self.marker.read_text()).get("digest") == self.digest()


def profile_path(name_or_path: str | Path) -> Path:
    """``smoke`` -> ``params/smoke.yaml``; a path is taken as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    return PARAMS_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str | Path) -> dict:
    """Read a profile YAML and check its top-level keys."""
    path = profile_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {name_or_path!r} not found at {path}; known profiles: {known}")
    prof = yaml.safe_load(path.read_text()) or {}
    unknown = set(prof) - PROFILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(PROFILE_KEYS)}")
    for key in ("name", "data", "teacher", "students"):
        if key not in prof:
            raise ConfigError(f"{path}: missing key {key!r}")
    return prof


def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    out.update(override or {})
    return out


def _build(kind: type, values: dict, where: str):
    try:
        return kind(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def expand(prof: dict, outputs: Path) -> list[RunSpec]:
    """Validate ``prof`` and expand it into runs: data, teachers, then students (arch x KD x seed)."""
    name = prof["name"]
    root = (outputs / name).resolve()
    stages = _stages(prof)
    data_cfg = _build(D.DataConfig, dict(prof["data"]), "data")
    data = asdict(data_cfg)
    base_train = dict(prof.get("train") or {})
    specs = [RunSpec("data", "data", root / "data", {"run_dir": str(root / "data"), "data": data})]

    teacher = prof["teacher"]
    t_arch = teacher.get("arch", info.TEACHER_ARCH)
    try:
        check_arch(t_arch)
    except ValueError as exc:
        raise ConfigError(f"teacher: {exc}") from exc
    t_train = asdict(_build(TrainConfig, _merge(base_train, teacher.get("train")), "teacher.train"))
    t_seeds = list(teacher.get("seeds", [0]))
    teachers: dict[int, RunSpec] = {}
    for seed in t_seeds:
        rid = f"teacher-{t_arch}-s{seed}"
        params = {"run_dir": str(root / rid), "arch": t_arch, "seed": seed, "data": data, "train": t_train}
        teachers[seed] = RunSpec(rid, "teacher", root / rid, params, [specs[0]])
    specs += teachers.values()

    students = prof["students"]
    archs = list(students.get("archs", info.STUDENT_ARCHS))
    for arch in archs:
        try:
            check_arch(arch)
        except ValueError as exc:
            raise ConfigError(f"students: {exc}") from exc
    s_train = asdict(_build(TrainConfig, _merge(base_train, students.get("train")), "students.train"))
    kd_settings = students.get("kd") or [{"name": "kd", "mode": "hinton"}]
    names = [k.get("name") for k in kd_settings]
    if None in names or len(set(names)) != len(names):
        raise ConfigError(f"students.kd: every setting needs a unique 'name', got {names}")
    for setting in kd_settings:
        where = f"students.kd[{setting['name']}]"
        kd = asdict(_build(KDConfig, {k: v for k, v in setting.items() if k not in ("name", "archs")}, where))
        # A setting's own ``archs`` (e.g. an ablation on one student) must be among students.archs.
        setting_archs = setting.get("archs", archs)
        if not isinstance(setting_archs, list) or not setting_archs or not set(setting_archs) <= set(archs):
            raise ConfigError(f"{where}: archs must be a non-empty list drawn from students.archs {archs}, got {setting_archs!r}")
        for arch in setting_archs:
            for seed in students.get("seeds", [0]):
                # Each student distils from the teacher of its own seed when there is one, else the first.
                t = teachers.get(seed, teachers[t_seeds[0]])
                rid = f"student-{arch}-{setting['name']}-s{seed}"
                params = {
                    "run_dir": str(root / rid), "arch": arch, "seed": seed, "data": data, "train": s_train,
                    "kd": kd, "teacher_dir": str(t.run_dir),
                }
                specs.append(RunSpec(rid, "student", root / rid, params, [t]))
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError("profile expands to duplicate run ids (repeated archs or seeds?)")
    specs += _per_run_specs(prof, stages, specs)
    if "aggregate" in stages:
        agg = root / "aggregate"
        params = {"profile_dir": str(root), "out_dir": str(agg), **(prof.get("aggregate") or {})}
        specs.append(RunSpec("aggregate", "aggregate", agg, params, [s for s in specs if s.stage in PER_RUN_STAGES]))
    return [s for s in specs if s.stage in stages]


def _stages(prof: dict) -> list[str]:
    stages = list(prof.get("stages") or STAGES)
    unknown = [st for st in stages if st not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; expected some of {list(STAGES)}")
    return stages


def _stage_params(prof: dict, stage: str) -> dict:
    given = dict(prof.get(stage) or {})
    unknown = set(given) - set(PER_RUN_STAGES[stage])
    if unknown:
        raise ConfigError(f"{stage}: unknown keys {sorted(unknown)}; allowed: {sorted(PER_RUN_STAGES[stage])}")
    params = {**PER_RUN_STAGES[stage], **given}
    if stage == "evaluate" and not (isinstance(params["n_resamples"], int) and params["n_resamples"] >= 10):
        raise ConfigError(f"evaluate: n_resamples must be an integer >= 10, got {params['n_resamples']!r}")
    if stage == "robustness":
        from edgekd.robustness import robustness_plan

        try:
            robustness_plan(params["suites"], params["severities"])
        except ValueError as exc:
            raise ConfigError(f"robustness: {exc}") from exc
    return params


def _per_run_specs(prof: dict, stages: list[str], specs: list[RunSpec]) -> list[RunSpec]:
    """Evaluation, robustness and efficiency runs (those in ``stages``) for every trained run."""
    out = []
    for stage in PER_RUN_STAGES:
        if stage not in stages:
            continue
        params = _stage_params(prof, stage)
        for trained in (s for s in specs if s.stage in TRAIN_STAGES):
            p = {"run_dir": str(trained.run_dir)}
            upstream = [trained]
            if stage == "evaluate":
                teacher = trained.upstream[0] if trained.stage == "student" else None
                p["teacher_dir"] = str(teacher.run_dir) if teacher else None
                upstream += [teacher] if teacher else []
                p.update(params)
            elif stage == "efficiency":
                p.update({k: v for k, v in params.items() if k != "latency_seeds"})
                p["latency"] = trained.parameters["seed"] in params["latency_seeds"]
            else:
                p.update(params)
            out.append(RunSpec(trained.run_id, stage, trained.run_dir, p, upstream))
    return out


def check_inputs(prof: dict) -> None:
    """Check the data before any run: folder, split file, and every image/npz decodes (cached)."""
    cfg = D.DataConfig(**prof["data"])
    cfg.check_source()
    D.load(cfg)


def execute(spec: RunSpec, log=print) -> float:
    """Execute one run with papermill (resuming a killed one); returns its wall time in seconds."""
    import papermill as pm

    digest = spec.digest()
    if spec.marker.exists():  # finished with other parameters: stale, start again
        shutil.rmtree(spec.run_dir)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f"[run] {spec.run_id} ({spec.stage}) -> {spec.output_notebook}")
    pm.execute_notebook(
        str(spec.notebook), str(spec.output_notebook), parameters=spec.parameters,
        cwd=str(NOTEBOOKS_DIR), progress_bar=False, kernel_name="python3",
    )
    wall = time.time() - t0
    spec.marker.write_text(json.dumps({"digest": digest, "wall_time_s": wall, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    log(f"[done] {spec.run_id} ({spec.stage}) in {wall:.1f}s")
    return wall


def _after(spec: RunSpec, *upstream_results: float) -> float:
    """Dask task: execute ``spec`` once its upstream tasks (passed as arguments) have finished."""
    return execute(spec)


def run_dask(specs: list[RunSpec], scheduler: str | None = None, workers: int = 2, gpu: bool = False) -> dict[str, float]:
    """Execute ``specs`` on Dask distributed, respecting dependencies; returns wall time per run key.

    ``scheduler`` None starts a LocalCluster of ``workers`` single-threaded processes. With ``gpu``,
    training runs request the worker resource ``GPU=1`` (LocalCluster workers get one GPU each
    where CUDA is present; on a real cluster start workers with ``--resources GPU=1``).
    """
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        resources = {"GPU": 1} if gpu else None
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, resources=resources)
    client = Client(scheduler or cluster)
    try:
        futures = {}
        for spec in specs:
            ups = [futures[u.key] for u in spec.upstream if u.key in futures]
            res = {"GPU": 1} if gpu and spec.stage in TRAIN_STAGES else None
            futures[spec.key] = client.submit(_after, spec, *ups, key=f"edgekd-{spec.key}", pure=False, resources=res)
        return dict(zip(futures, client.gather(list(futures.values())), strict=True))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_profile(
    name_or_path: str | Path,
    outputs: Path | None = None,
    dry_run: bool = False,
    executor: str = "sequential",
    scheduler: str | None = None,
    workers: int = 2,
    gpu: bool = False,
    only: list[str] | None = None,
    log=print,
) -> list[dict]:
    """Validate, check data, then execute every unfinished run of a profile (sequentially or on Dask).

    ``only`` restricts execution to some stages (e.g. ``["data", "teacher", "student"]``).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r} is not one of {EXECUTORS}")
    unknown = [st for st in only or [] if st not in STAGES]
    if unknown:
        raise ConfigError(f"--only: unknown stages {unknown}; expected some of {list(STAGES)}")
    prof = load_profile(name_or_path)
    outputs = Path(outputs) if outputs is not None else info.outputs_dir()
    specs = [s for s in expand(prof, outputs) if not only or s.stage in only]
    check_inputs(prof)
    todo = [s for s in specs if not s.is_done()]
    pending = {s.key for s in todo}
    for spec in specs:
        if spec.key not in pending:
            log(f"[skip] {spec.run_id} ({spec.stage}): finished with the same parameters")
    walls: dict[str, float] = {}
    if not dry_run and executor == "dask" and todo:
        walls = run_dask(todo, scheduler, workers, gpu)
    elif not dry_run:
        walls = {spec.key: execute(spec, log) for spec in todo}
    status = "pending" if dry_run else "ran"
    return [
        {"run_id": s.run_id, "stage": s.stage, "status": status if s.key in pending else "skipped", "wall_time_s": walls.get(s.key, 0.0)}
        for s in specs
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m edgekd.runner PROFILE``."""
    ap = argparse.ArgumentParser(prog="edgekd-run", description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="profile name in params/ (smoke, default, cpu64, paper) or a YAML path")
    ap.add_argument("--outputs", type=Path, default=None, help=f"outputs root (default ${info.OUTPUTS_ENV} or outputs/)")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the runs without executing them")
    ap.add_argument("--executor", choices=EXECUTORS, default="sequential", help="run sequentially or on Dask distributed")
    ap.add_argument("--scheduler", default=None, help="Dask scheduler address (default: start a LocalCluster)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    ap.add_argument("--gpu", action="store_true", help="Dask: training runs request the worker resource GPU=1")
    ap.add_argument("--only", default=None, help="comma-separated stages to execute (default: all of the profile's)")
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else None
    try:
        summary = run_profile(args.profile, args.outputs, args.dry_run, args.executor, args.scheduler, args.workers,
                              args.gpu, only)
    except (ConfigError, D.DataError, ValueError) as exc:
        print(f"edgekd-run: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a notebook failed: papermill keeps it, with the error, in the run folder
        print(f"edgekd-run: a run failed: {type(exc).__name__}: {str(exc)[:2000]}", file=sys.stderr)
        return 1
    for row in summary:
        print(f"{row['status']:>8}  {row['wall_time_s']:8.1f}s  {row['run_id']} ({row['stage']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
