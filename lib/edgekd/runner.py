"""Run a profile from ``params/*.yaml``: expand it into papermill runs and execute them in order.

Every run is one executed notebook kept in ``outputs/<profile>/<run>/<stage>.ipynb``. A run is
finished when its ``.done-<stage>.json`` marker holds the same parameter hash; rerunning skips it.
All parameters are validated, and the data checked, before any run starts.
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
}
PROFILE_KEYS: frozenset[str] = frozenset({"name", "description", "data", "train", "teacher", "students"})
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
    depends: list[str] = field(default_factory=list)

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
        """Hash of the parameters and the notebook's source: what makes a finished run reusable."""
        h = hashlib.sha256(json.dumps(self.parameters, sort_keys=True, default=str).encode())
        h.update(self.notebook.read_bytes())
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
        teachers[seed] = RunSpec(rid, "teacher", root / rid, params, ["data"])
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
        kd = asdict(_build(KDConfig, {k: v for k, v in setting.items() if k != "name"}, f"students.kd[{setting['name']}]"))
        for arch in archs:
            for seed in students.get("seeds", [0]):
                # Each student distils from the teacher of its own seed when there is one, else the first.
                t = teachers.get(seed, teachers[t_seeds[0]])
                rid = f"student-{arch}-{setting['name']}-s{seed}"
                params = {
                    "run_dir": str(root / rid), "arch": arch, "seed": seed, "data": data, "train": s_train,
                    "kd": kd, "teacher_dir": str(t.run_dir),
                }
                specs.append(RunSpec(rid, "student", root / rid, params, [t.run_id]))
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError("profile expands to duplicate run ids (repeated archs or seeds?)")
    return specs


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


def run_profile(name_or_path: str | Path, outputs: Path | None = None, dry_run: bool = False, log=print) -> list[dict]:
    """Validate, check data, then execute every unfinished run of a profile in order."""
    prof = load_profile(name_or_path)
    outputs = Path(outputs) if outputs is not None else info.outputs_dir()
    specs = expand(prof, outputs)
    check_inputs(prof)
    summary = []
    for spec in specs:
        if spec.is_done():
            log(f"[skip] {spec.run_id} ({spec.stage}): finished with the same parameters")
            summary.append({"run_id": spec.run_id, "stage": spec.stage, "status": "skipped", "wall_time_s": 0.0})
            continue
        if dry_run:
            summary.append({"run_id": spec.run_id, "stage": spec.stage, "status": "pending", "wall_time_s": 0.0})
            continue
        wall = execute(spec, log)
        summary.append({"run_id": spec.run_id, "stage": spec.stage, "status": "ran", "wall_time_s": wall})
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m edgekd.runner PROFILE``."""
    ap = argparse.ArgumentParser(prog="edgekd-run", description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="profile name in params/ (smoke, default, cpu64, paper) or a YAML path")
    ap.add_argument("--outputs", type=Path, default=None, help=f"outputs root (default ${info.OUTPUTS_ENV} or outputs/)")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the runs without executing them")
    args = ap.parse_args(argv)
    try:
        summary = run_profile(args.profile, args.outputs, args.dry_run)
    except (ConfigError, D.DataError, ValueError) as exc:
        print(f"edgekd-run: error: {exc}", file=sys.stderr)
        return 2
    for row in summary:
        print(f"{row['status']:>8}  {row['wall_time_s']:8.1f}s  {row['run_id']} ({row['stage']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
