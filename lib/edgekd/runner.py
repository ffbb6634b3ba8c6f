"""Run a profile from ``params/*.yaml``: expand it into papermill runs and execute the stale ones.

Bookkeeping, so that no trained work is lost and no stale result is kept:

* **Each stage owns a folder.** Training owns its run folder (``best.pt``, ``predictions.npz``, ...)
  minus the per-run stages' subfolders; ``evaluate`` owns ``<run>/eval/``, ``robustness``
  ``<run>/robustness/``, ``efficiency`` ``<run>/efficiency/``; ``data`` and ``aggregate`` their own
  folders. The executed notebook and the ``.done-<stage>.json`` marker live in the stage's folder. A
  stage that reruns clears only what it owns, and nothing outside the outputs root (:func:`edgekd.files.remove`).
* **Validation first.** Every profile value is checked (types, ranges, and the names that become folder
  names) before anything is written; a bad one is a :class:`ConfigError` naming the key and the value.
* **One runner per profile folder.** A run (not ``--dry-run``, which writes nothing) holds the lock
  ``<outputs>/<profile>/.edgekd-run.lock``; a second runner there exits with status 2, naming the lock and its pid.
* **Digests.** A stage is fresh when its marker records the same components as now: its parameters
  (outputs root written as ``<outputs>``, so a moved outputs folder stays fresh), its notebook, the
  source of the ``edgekd`` modules the notebook imports (:mod:`edgekd.provenance`), the pinned
  ``requirements.txt``, and the digests recorded by its upstream stages. A stage whose upstream
  reran is stale through that chain. ``--dry-run`` says which component changed.
* **Resume.** A killed training run resumes from ``last.pt`` only when the checkpoint came from the
  same configuration and training code (see :func:`edgekd.train.fit`).
* **Failures.** A failed run (a notebook error, a :class:`~edgekd.train.CollapsedRun`) does not stop
  the runs that do not depend on it; its dependants are skipped and the runner exits with status 1.

Runs execute sequentially or on Dask ``distributed`` (a LocalCluster, or a scheduler address;
training runs can ask for a GPU resource). Before training, the runner times a few training steps
of each architecture on this machine and prints its estimate; a progress bar shows the sweep's
elapsed time and ETA; at the end a stage-by-stage time table goes to ``<profile>/timings.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from edgekd import data as D
from edgekd import info, provenance, publish
from edgekd.config import check_minima, check_values
from edgekd.files import OutsideRoot, atomic_write, check_inside, clear_results, remove
from edgekd.kernels import ipc_kernel_manager
from edgekd.models import check_arch
from edgekd.train import KDConfig, TrainConfig

#: Notebook of each stage, in execution order.
STAGES: dict[str, str] = {
    "data": "01_data.ipynb",
    "teacher": "02_teacher.ipynb",
    "student": "03_student.ipynb",
    "export": "08_export.ipynb",
    "evaluate": "04_evaluate.ipynb",
    "robustness": "05_robustness.ipynb",
    "efficiency": "06_efficiency.ipynb",
    "aggregate": "07_aggregate.ipynb",
}
#: Stages that train (the ones a GPU resource is requested for on Dask).
TRAIN_STAGES: frozenset[str] = frozenset({"teacher", "student"})
#: Stages that time things: under Dask they run after every other stage, one at a time, so that no other
#: run shares the machine while they measure latency.
TIMING_STAGES: frozenset[str] = frozenset({"efficiency"})
#: Stages run on every trained run, and their parameter defaults.
PER_RUN_STAGES: dict[str, dict] = {
    "evaluate": {"n_resamples": 1000, "seed": 0},
    "robustness": {"suites": ["source", "medmnistc"], "severities": None, "max_images": None, "seed": 0,
                   "seeds": None, "settings": None},
    "efficiency": {"seeds": None, "settings": None, "latency_seeds": [0], "threads": 2, "batch_sizes": [1, 32],
                   "sizes": None, "warmup": 5, "repeats": 100, "calib_images": 256},
}
#: The export stage: one bundle per model (its best seed on val), written as soon as the model's seeds are trained.
EXPORT_DEFAULTS: dict = {"models": None, "coverage": 0.9, "n_resamples": 1000, "seed": 0}
#: Types of the per-stage and export parameters (:func:`edgekd.config.check_values`; ``robustness.severities``
#: is checked by :func:`edgekd.robustness.robustness_plan`).
STAGE_TYPES: dict[str, dict[str, object]] = {
    "evaluate": {"n_resamples": int, "seed": int},
    "robustness": {"suites": list[str], "max_images": int | None, "seed": int, "seeds": list[int] | None,
                   "settings": list[str] | None},
    "efficiency": {"seeds": list[int] | None, "settings": list[str] | None, "latency_seeds": list[int], "threads": int,
                   "batch_sizes": list[int], "sizes": list[int] | None, "warmup": int, "repeats": int,
                   "calib_images": int},
    "export": {"models": list[str] | None, "coverage": float, "n_resamples": int, "seed": int},
}
#: The least value of the per-stage counts and seeds (of every entry of a list).
STAGE_MINIMA: dict[str, dict[str, int]] = {
    "evaluate": {"n_resamples": 10, "seed": 0},
    "robustness": {"max_images": 1, "seed": 0, "seeds": 0},
    "efficiency": {"seeds": 0, "latency_seeds": 0, "threads": 1, "batch_sizes": 1, "sizes": 1, "warmup": 0, "repeats": 1,
                   "calib_images": 1},
    "export": {"n_resamples": 10, "seed": 0},
}
#: The folder inside a trained run that each per-run stage owns.
STAGE_DIRS: dict[str, str] = {"evaluate": "eval", "robustness": "robustness", "efficiency": "efficiency"}
PROFILE_KEYS: frozenset[str] = frozenset(
    {"name", "description", "data", "train", "teacher", "students", "lesion", "stages", "aggregate", "export",
     "external", *PER_RUN_STAGES}
)
#: Profile blocks that must be mappings, and those that may also be null (absent).
REQUIRED_BLOCKS: tuple[str, ...] = ("data", "teacher", "students")
OPTIONAL_BLOCKS: tuple[str, ...] = ("train", "lesion", "export", "aggregate", *PER_RUN_STAGES)
#: Keys of a KD setting that are not KDConfig fields: its name, the archs / seeds it runs on, its train overrides.
KD_SETTING_KEYS: frozenset[str] = frozenset({"name", "archs", "seeds", "train"})
#: A name that becomes a path component (profile name, archs, KD settings, export models): these characters,
#: and not '.' or '..'.
NAME_PATTERN: str = r"[A-Za-z0-9._-]+"
#: The lock a running runner holds in its profile's folder: one runner per profile and outputs root.
LOCK_FILE: str = ".edgekd-run.lock"
#: Marker of the lesion-split pair's run ids (``teacher-resnet50-lesion-s0``).
LESION_TAG: str = "-lesion"
EXECUTORS: tuple[str, ...] = ("sequential", "dask")
NOTEBOOKS_DIR: Path = info.REPO_ROOT / "notebooks"
PARAMS_DIR: Path = info.REPO_ROOT / "params"
#: Source of the library whose modules the digests hash (a test may point it at a copy).
LIB_DIR: Path = provenance.LIB_DIR
#: The outputs root in portable parameters.
ROOT_TOKEN: str = "<outputs>"


class ConfigError(ValueError):
    """A profile that cannot run, reported before any compute."""


class Blocked(RuntimeError):
    """A run not executed because a run it depends on failed."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class RunSpec:
    """One papermill execution: ``stage`` notebook with ``parameters`` for the run in ``run_dir``.

    ``upstream``: the stages whose results this one reads (their digests are part of its own);
    ``after``: stages it only waits for (training waits for the data check, but depends on the data's
    content through its ``data`` component, not on the data stage's notebook). ``setting`` and
    ``teacher``: a student's KD setting name and the teacher of its seed (for the evaluation's comparison,
    even where the student does not distil).
    """

    run_id: str
    stage: str
    run_dir: Path
    parameters: dict
    upstream: list[RunSpec] = field(default_factory=list)
    outputs_root: Path | None = None
    notebooks_dir: Path = NOTEBOOKS_DIR
    after: list[RunSpec] = field(default_factory=list)
    setting: str | None = None
    teacher: RunSpec | None = None

    @property
    def key(self) -> str:
        return f"{self.run_id}:{self.stage}"

    @property
    def stage_dir(self) -> Path:
        """The folder this stage owns: its outputs, executed notebook and marker."""
        return self.run_dir / STAGE_DIRS[self.stage] if self.stage in STAGE_DIRS else self.run_dir

    @property
    def notebook(self) -> Path:
        return self.notebooks_dir / STAGES[self.stage]

    @property
    def output_notebook(self) -> Path:
        return self.stage_dir / f"{self.stage}.ipynb"

    @property
    def marker(self) -> Path:
        return self.stage_dir / f".done-{self.stage}.json"

    def recorded(self) -> dict | None:
        """The marker's contents, or None when this stage never finished."""
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None

    def portable_parameters(self) -> str:
        """The parameters as JSON with the outputs root replaced by ``<outputs>``."""
        text = json.dumps(self.parameters, sort_keys=True, default=str)
        return text.replace(str(self.outputs_root), ROOT_TOKEN) if self.outputs_root else text

    def components(self) -> dict:
        """What this stage's result depends on, each as a digest (the upstream ones as recorded)."""
        notebook = self.notebook.read_bytes()
        modules = provenance.notebook_modules(self.notebook)
        out = {
            "params": _sha(self.portable_parameters().encode()),
            "notebook": _sha(notebook),
            "library": provenance.library_digest(modules, LIB_DIR),
            "requirements": provenance.requirements_digest(),
            "upstream": {u.key: (u.recorded() or {}).get("digest") for u in self.upstream},
        }
        if "data" in self.parameters:
            out["data"] = D.fingerprint(D.DataConfig(**self.parameters["data"]))
        return out

    def status(self) -> tuple[str, list[str]]:
        """('fresh' | 'stale' | 'new', reasons): new never finished; stale finished from other inputs."""
        mark = self.recorded()
        if mark is None:
            return "new", ["never finished"]
        stale_up = [u.key for u in self.upstream if u.status()[0] != "fresh"]
        now, then = self.components(), mark.get("components") or {}
        reasons = [name for name in ("params", "notebook", "library", "requirements", "data")
                   if now.get(name) != then.get(name)]
        changed_up = [k for k, v in now["upstream"].items() if v != (then.get("upstream") or {}).get(k)]
        if changed_up:
            reasons.append(f"upstream reran ({_some(changed_up)})")
        if stale_up:
            reasons.append(f"upstream not fresh ({_some(stale_up)})")
        return ("stale", reasons) if reasons else ("fresh", [])

    def owned(self) -> list[Path]:
        """What this stage deletes before it reruns: its folder, or for training the run folder less
        the per-run stages' folders."""
        if self.stage not in TRAIN_STAGES:
            return [self.stage_dir]
        if not self.run_dir.is_dir():
            return []
        return [p for p in self.run_dir.iterdir() if p.name not in STAGE_DIRS.values()]


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def profile_path(name_or_path: str | Path) -> Path:
    """``smoke`` -> ``params/smoke.yaml``; a path is taken as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    return PARAMS_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str | Path) -> dict:
    """Read a profile YAML and check that it is a mapping with the known top-level keys."""
    path = profile_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {name_or_path!r} not found at {path}; known profiles: {known}")
    try:
        prof = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML: {getattr(exc, 'problem', None) or exc}{at}") from None
    prof = {} if prof is None else prof
    if not isinstance(prof, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of keys {sorted(PROFILE_KEYS)}, "
                          f"got a {type(prof).__name__}: {str(prof)[:80]!r}")
    unknown = set(map(str, prof)) - PROFILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(PROFILE_KEYS)}")
    for key in ("name", *REQUIRED_BLOCKS):
        if key not in prof:
            raise ConfigError(f"{path}: missing key {key!r}")
    return prof


def path_name(value: object, key: str) -> str:
    """``value`` when it is safe as one path component (:data:`NAME_PATTERN`, not '.' or '..'), else a
    ConfigError naming ``key``: the one check of every profile value that becomes a folder or file name."""
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value) or value in (".", ".."):
        raise ConfigError(f"{key}: {value!r} is not a plain name (letters, digits, '.', '_', '-'; not '.' or '..'); "
                          "it becomes a folder name under the outputs root")
    return value


def _names(value: object, key: str) -> list[str]:
    """A non-empty list of :func:`path_name` names, else ConfigError."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: must be a non-empty list of names, got {value!r}")
    return [path_name(v, key) for v in value]


def _seeds(value: object, key: str) -> list[int]:
    """A non-empty list of non-negative integers (not bools or strings: a seed is part of run ids), else ConfigError."""
    if not isinstance(value, list) or not value or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value):
        raise ConfigError(f"{key}: must be a non-empty list of non-negative integers, got {value!r}")
    return value


def _check_blocks(prof: dict) -> None:
    """The profile's shape: a safe ``name``; ``data``, ``teacher`` and ``students`` mappings; the optional
    blocks mappings or null."""
    path_name(prof["name"], "name")
    for key in REQUIRED_BLOCKS:
        if not isinstance(prof[key], dict):
            raise ConfigError(f"{key}: must be a mapping of its settings, got {prof[key]!r}")
    for key in OPTIONAL_BLOCKS:
        if prof.get(key) is not None and not isinstance(prof[key], dict):
            raise ConfigError(f"{key}: must be a mapping of its settings or null, got {prof[key]!r}")


def _merge(base: dict, *overrides: dict | None, where: str) -> dict:
    """``base`` updated with each override (a mapping of TrainConfig settings, or null)."""
    out = copy.deepcopy(base)
    for override in overrides:
        if override is not None and not isinstance(override, dict):
            raise ConfigError(f"{where}: train overrides must be a mapping of TrainConfig settings, got {override!r}")
        out.update(override or {})
    return out


def _build(kind: type, values: dict, where: str):
    try:
        return kind(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _check_arch(arch: str, where: str) -> None:
    path_name(arch, where)
    try:
        check_arch(arch)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def data_config(prof: dict, outputs: Path, where: str = "data", **override) -> dict:
    """The profile's data settings, validated; the offline cache lives under the outputs root by default."""
    values = {"cache_dir": str(outputs / "cache"), **dict(prof["data"]), **override}
    if values["cache_dir"] is None:
        values["cache_dir"] = str(outputs / "cache")
    return asdict(_build(D.DataConfig, values, where))


def _teachers(prof: dict, data: dict, base_train: dict, root: Path, spec, data_spec: RunSpec, tag: str = "",
              seeds: list[int] | None = None) -> dict[int, RunSpec]:
    teacher = prof["teacher"]
    t_arch = teacher.get("arch", info.TEACHER_ARCH)
    _check_arch(t_arch, "teacher.arch")
    t_train = asdict(_build(TrainConfig, _merge(base_train, teacher.get("train"), where="teacher.train"), "teacher.train"))
    out: dict[int, RunSpec] = {}
    for seed in seeds or _seeds(teacher.get("seeds", [0]), "teacher.seeds"):
        rid = f"teacher-{t_arch}{tag}-s{seed}"
        params = {"run_dir": str(root / rid), "arch": t_arch, "seed": seed, "data": data, "train": t_train}
        out[seed] = spec(rid, "teacher", root / rid, params, [], after=[data_spec])
    return out


def _kd_settings(prof: dict) -> list[dict]:
    settings = prof["students"].get("kd") or [{"name": "kd", "mode": "hinton"}]
    if not isinstance(settings, list) or not all(isinstance(k, dict) for k in settings):
        raise ConfigError(f"students.kd: must be a list of settings (mappings of a name and KDConfig fields), got {settings!r}")
    names = [path_name(k.get("name"), "students.kd.name") for k in settings]
    if len(set(names)) != len(names) or not all(re.fullmatch(r"[a-z0-9_]+", n) for n in names):
        raise ConfigError(f"students.kd: every setting needs a unique 'name' of [a-z0-9_], got {names}")
    return settings


def _students(prof: dict, data: dict, base_train: dict, root: Path, spec, data_spec: RunSpec,
              teachers: dict[int, RunSpec], tag: str = "", select: dict | None = None) -> list[RunSpec]:
    """Student runs: arch x KD setting x seed; ``select`` (archs, kd names, seeds) narrows them (the lesion pair)."""
    students = prof["students"]
    archs = _names(students.get("archs", list(info.STUDENT_ARCHS)), "students.archs")
    for arch in archs:
        _check_arch(arch, "students.archs")
    all_seeds = _seeds(students.get("seeds", [0]), "students.seeds")
    arch_train = students.get("arch_train") or {}
    if not isinstance(arch_train, dict) or not set(arch_train) <= set(archs):
        raise ConfigError(f"students.arch_train: keys must be among students.archs {archs}, got {arch_train!r}")
    out = []
    for setting in _kd_settings(prof):
        where = f"students.kd[{setting['name']}]"
        kd = asdict(_build(KDConfig, {k: v for k, v in setting.items() if k not in KD_SETTING_KEYS}, where))
        # A setting's own ``archs`` / ``seeds`` (e.g. an ablation on one student) must be among the students'.
        setting_archs = setting.get("archs", archs)
        if not isinstance(setting_archs, list) or not setting_archs or not all(a in archs for a in setting_archs):
            raise ConfigError(f"{where}: archs must be a non-empty list drawn from students.archs {archs}, got {setting_archs!r}")
        setting_seeds = _seeds(setting.get("seeds", all_seeds), f"{where}.seeds")
        if not set(setting_seeds) <= set(all_seeds):
            raise ConfigError(f"{where}: seeds must be a non-empty list drawn from students.seeds {all_seeds}, got {setting_seeds!r}")
        if select is not None:
            if setting["name"] not in select["kd"]:
                continue
            setting_archs, setting_seeds = select["archs"], select["seeds"]
        for arch in setting_archs:
            train = asdict(_build(TrainConfig, _merge(base_train, students.get("train"), arch_train.get(arch),
                                                      setting.get("train"), where=f"{where}.train ({arch})"),
                                  f"{where}.train ({arch})"))
            for seed in setting_seeds:
                # Each student distils from the teacher of its own seed when there is one, else the first
                # (none for a lesion pair of no-KD students only: no lesion teacher is trained then).
                t = teachers.get(seed, next(iter(teachers.values()), None))
                distils = kd["mode"] != "none"
                rid = f"student-{arch}-{setting['name']}{tag}-s{seed}"
                params = {"run_dir": str(root / rid), "arch": arch, "seed": seed, "data": data, "train": train,
                          "kd": kd, "teacher_dir": str(t.run_dir) if distils else None}
                student = spec(rid, "student", root / rid, params, [t] if distils else [], after=[data_spec])
                student.setting, student.teacher = setting["name"], t
                out.append(student)
    return out


def _lesion_select(prof: dict) -> dict | None:
    """The profile's ``lesion`` block, validated: archs, KD setting names and seeds of the lesion-split pair."""
    block = prof.get("lesion")
    if block is None:
        return None
    archs = list(prof["students"].get("archs", info.STUDENT_ARCHS))
    names = [k["name"] for k in _kd_settings(prof)]
    sel = {"archs": _names(block.get("archs", archs[:1]), "lesion.archs"), "kd": _names(block.get("kd", names), "lesion.kd"),
           "seeds": _seeds(block.get("seeds", [0]), "lesion.seeds")}
    unknown = set(block) - {"archs", "kd", "seeds"}
    if unknown or not set(sel["archs"]) <= set(archs) or not set(sel["kd"]) <= set(names):
        raise ConfigError(f"lesion: archs must be among {archs}, kd among {names}, seeds a non-empty list "
                          f"(and no other keys); got {block!r}")
    return sel


def expand(prof: dict, outputs: Path, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[RunSpec]:
    """Validate ``prof`` and expand it into runs: data, teachers, students (arch x KD x seed), the optional
    lesion-split pair, the per-run stages and the aggregate, in execution order."""
    _check_blocks(prof)
    outputs = Path(outputs).resolve()
    root = outputs / prof["name"]
    stages = _stages(prof)

    def spec(run_id: str, stage: str, run_dir: Path, params: dict, upstream: list[RunSpec], after=()) -> RunSpec:
        return RunSpec(run_id, stage, run_dir, params, upstream, outputs, notebooks_dir, list(after))

    data = data_config(prof, outputs)
    base_train = dict(prof.get("train") or {})
    _build(TrainConfig, base_train, "train")  # named as the profile's own block, before it is merged into others
    data_spec = spec("data", "data", root / "data", {"run_dir": str(root / "data"), "data": data}, [])
    teachers = _teachers(prof, data, base_train, root, spec, data_spec)
    specs = [data_spec, *teachers.values()]
    students = _students(prof, data, base_train, root, spec, data_spec, teachers)
    select = _lesion_select(prof)
    if select is not None:
        # The same recipe, trained and tested on a lesion-grouped split (no lesion in two splits). Its
        # teacher comes right after the official one, so that a parallel executor trains both first.
        lesion = data_config(prof, outputs, "lesion", split="lesion")
        distils = any(k.get("mode", "hinton") != "none" for k in _kd_settings(prof) if k["name"] in select["kd"])
        l_teachers = (_teachers(prof, lesion, base_train, root, spec, data_spec, LESION_TAG, select["seeds"][:1])
                      if distils else {})
        specs += l_teachers.values()
        students += _students(prof, lesion, base_train, root, spec, data_spec, l_teachers, LESION_TAG, select)
    specs += students
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError("profile expands to duplicate run ids (repeated archs or seeds?)")
    if "export" in stages:
        specs = _with_exports(prof, specs, root, spec)
    specs += _per_run_specs(prof, stages, specs, outputs, spec)
    if "aggregate" in stages:
        if prof.get("aggregate"):
            raise ConfigError(f"aggregate: takes no parameters (the runner sets its profile_dir and out_dir), "
                              f"got {sorted(map(str, prof['aggregate']))}")
        agg = root / "aggregate"
        params = {"profile_dir": str(root), "out_dir": str(agg)}
        specs.append(spec("aggregate", "aggregate", agg, params, [s for s in specs if s.stage in PER_RUN_STAGES]))
    return [s for s in specs if s.stage in stages]


def model_of(run_id: str) -> str:
    """``student-resnet18-kd-s1`` -> ``student-resnet18-kd``: a run's model, its seeds pooled."""
    return re.sub(r"-s\d+$", "", run_id)


def _with_exports(prof: dict, specs: list[RunSpec], root: Path, spec) -> list[RunSpec]:
    """Insert one export spec per model (official split) right after its last seed's training spec."""
    given = dict(prof.get("export") or {})
    unknown = set(given) - set(EXPORT_DEFAULTS)
    if unknown:
        raise ConfigError(f"export: unknown keys {sorted(unknown)}; allowed: {sorted(EXPORT_DEFAULTS)}")
    params = {**EXPORT_DEFAULTS, **given}
    _check_stage_values(params, "export")
    if not 0 < params["coverage"] <= 1:
        raise ConfigError(f"export: coverage must lie in (0, 1], got {params['coverage']!r}")
    trained = [s for s in specs if s.stage in TRAIN_STAGES and LESION_TAG not in s.run_id]
    models = list(dict.fromkeys(model_of(s.run_id) for s in trained))
    chosen = [path_name(m, "export.models") for m in params["models"]] if params["models"] is not None else models
    if not set(chosen) <= set(models):
        raise ConfigError(f"export.models: must be a list drawn from {models}, got {chosen!r}")
    last = {model_of(s.run_id): s for s in trained}
    out = []
    for s in specs:
        out.append(s)
        model = model_of(s.run_id) if s.stage in TRAIN_STAGES else None
        if model in chosen and last[model] is s:
            seeds = [t for t in trained if model_of(t.run_id) == model]
            folder = root / "bundles" / model
            p = {"out_dir": str(folder), "run_dirs": [str(t.run_dir) for t in seeds],
                 **{k: v for k, v in params.items() if k != "models"}}
            out.append(spec(model, "export", folder, p, seeds))
    return out


def _stages(prof: dict) -> list[str]:
    stages = prof.get("stages") or list(STAGES)
    if not isinstance(stages, list):
        raise ConfigError(f"stages: must be a list of stages, some of {list(STAGES)}; got {stages!r}")
    unknown = [st for st in stages if not isinstance(st, str) or st not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; expected some of {list(STAGES)}")
    return stages


def _stage_params(prof: dict, stage: str) -> dict:
    given = dict(prof.get(stage) or {})
    unknown = set(given) - set(PER_RUN_STAGES[stage])
    if unknown:
        raise ConfigError(f"{stage}: unknown keys {sorted(unknown)}; allowed: {sorted(PER_RUN_STAGES[stage])}")
    params = {**PER_RUN_STAGES[stage], **given}
    _check_stage_values(params, stage)
    if stage == "robustness":
        from edgekd.robustness import robustness_plan

        try:
            robustness_plan(params["suites"], params["severities"])
        except ValueError as exc:
            raise ConfigError(f"robustness: {exc}") from exc
    return params


def _check_stage_values(params: dict, stage: str) -> None:
    """Types (:data:`STAGE_TYPES`) and least values (:data:`STAGE_MINIMA`) of a stage's parameters."""
    try:
        check_values(params, STAGE_TYPES[stage], stage)
        check_minima(params, STAGE_MINIMA[stage], stage)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _per_run_specs(prof: dict, stages: list[str], specs: list[RunSpec], outputs: Path, spec) -> list[RunSpec]:
    """Evaluation, robustness and efficiency runs (those in ``stages``) for every trained run."""
    out = []
    external = _external(prof)
    for stage in PER_RUN_STAGES:
        if stage not in stages:
            continue
        params = _stage_params(prof, stage)
        names = [k["name"] for k in _kd_settings(prof)]
        if params.get("settings") is not None and (not isinstance(params["settings"], list) or not set(params["settings"]) <= set(names)):
            raise ConfigError(f"{stage}.settings: must be a list drawn from the KD settings {names}, got {params['settings']!r}")
        for trained in (s for s in specs if s.stage in TRAIN_STAGES):
            p = {"run_dir": str(trained.run_dir)}
            upstream = [trained]
            seed = trained.parameters["seed"]
            if LESION_TAG in trained.run_id and stage != "evaluate":
                continue  # the lesion-split pair answers one question: how much the official split inflates scores
            if params.get("seeds") is not None and seed not in params["seeds"]:
                continue  # robustness / efficiency on the listed seeds only
            if params.get("settings") is not None and trained.setting is not None and trained.setting not in params["settings"]:
                continue  # ... and on the listed KD settings' students (the teacher always)
            if stage == "evaluate":
                teacher = trained.teacher
                p["teacher_dir"] = str(teacher.run_dir) if teacher else None
                upstream += [teacher] if teacher else []
                p.update(params)
                if external and LESION_TAG not in trained.run_id:
                    p["external"] = external
            elif stage == "efficiency":
                p.update({k: v for k, v in params.items() if k not in ("latency_seeds", "seeds", "settings")})
                p["latency"] = seed in params["latency_seeds"]
            else:
                p.update({k: v for k, v in params.items() if k not in ("seeds", "settings")})
                p["cache_dir"] = str(outputs / "cache" / "corrupted")
            out.append(spec(trained.run_id, stage, trained.run_dir, p, upstream))
    return out


def _external(prof: dict) -> list[dict]:
    """The profile's external test sets, validated (names, folders, labels CSVs), as plain dicts."""
    from edgekd.external import parse_external

    try:
        sets = parse_external(prof.get("external"), base=info.REPO_ROOT)
    except ValueError as exc:
        raise ConfigError(f"external: {exc}") from exc
    return [{"name": s.name, "images": str(s.images), "labels": str(s.labels)} for s in sets]


def check_inputs(prof: dict, outputs: Path, decode: bool = True) -> None:
    """Check the data before any run: the folder (or npz file) and the split file; with ``decode``, also that
    every image decodes (building the cache under the outputs root, by source). Without ``decode`` (a dry
    run) nothing is written."""
    cfg = D.DataConfig(**data_config(prof, Path(outputs).resolve()))
    cfg.check_source()
    if decode:
        D.load(cfg)
    elif cfg.source == "raw":
        D.read_split(cfg.data_dir)


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
    if spec.stage in TRAIN_STAGES or not folder.is_dir() or spec.marker.exists() or spec.output_notebook.exists():
        return []
    return sorted(p.name for p in folder.iterdir())


def clear_owned(spec: RunSpec) -> None:
    """Delete what ``spec``'s stage owns before it reruns.

    Training keeps an unfinished run's files (``last.pt`` resumes when it matches); once a training
    stage has finished, rerunning it means its inputs changed, and everything it owns goes. Every deletion
    goes through :func:`edgekd.files.remove` inside the spec's outputs root: a stage folder outside it is
    refused (:class:`edgekd.files.OutsideRoot`) before anything is deleted.
    """
    if spec.outputs_root is None:
        raise OutsideRoot(f"{spec.key}: no outputs root to delete inside")
    check_inside(spec.stage_dir, spec.outputs_root)
    if foreign_entries(spec):
        raise ConfigError(f"{spec.key}: {spec.stage_dir} holds files this runner did not write; nothing was deleted")
    if spec.stage in TRAIN_STAGES:
        if spec.recorded() is None:
            return
        for path in spec.owned():
            remove(path, spec.outputs_root)
        return
    clear_results(spec.stage_dir, spec.outputs_root)
    for stale in spec.stage_dir.glob(".done-*.json"):
        remove(stale, spec.outputs_root)


def key_metric(spec: RunSpec) -> str:
    """One number for the log line of a finished run: val macro-F1 of training, test macro-F1 of evaluation."""
    try:
        if spec.stage in TRAIN_STAGES:
            m = json.loads((spec.run_dir / "metrics.json").read_text())
            return f"val macro-F1 {m['val_macro_f1']:.3f}"
        if spec.stage == "evaluate":
            m = pd.read_csv(spec.stage_dir / "metrics.csv").set_index("metric")["value"]
            return f"test macro-F1 {m['macro_f1']:.3f}"
    except (OSError, KeyError, ValueError):
        pass
    return ""


def execute(spec: RunSpec, log=print) -> float:
    """Execute one run with papermill, clearing only what its stage owns; returns its wall time in seconds."""
    import papermill as pm

    clear_owned(spec)
    spec.stage_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pm.execute_notebook(
        str(spec.notebook), str(spec.output_notebook), parameters=spec.parameters,
        cwd=str(spec.notebooks_dir), progress_bar=False, kernel_name="python3",
        kernel_manager_class=ipc_kernel_manager(),
    )
    wall = time.time() - t0
    mark = {"digest": None, "components": spec.components(), "wall_time_s": wall,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    mark["digest"] = _sha(json.dumps(mark["components"], sort_keys=True).encode())
    text = json.dumps(mark, indent=1).encode()
    atomic_write(spec.marker, lambda fh: fh.write(text))
    return wall


def _after(spec: RunSpec, *upstream_results: float) -> float:
    """Dask task: execute ``spec`` once its upstream tasks (passed as arguments) have finished."""
    return execute(spec)


def run_dask(specs: list[RunSpec], scheduler: str | None = None, workers: int = 2, gpu: bool = False,
             on_done=None) -> dict[str, float | Exception]:
    """Execute ``specs`` on Dask distributed, respecting dependencies; wall time (or the error) per run key.

    ``scheduler`` None starts a LocalCluster of ``workers`` single-threaded processes. With ``gpu``,
    training runs request the worker resource ``GPU=1`` (LocalCluster workers get one GPU each
    where CUDA is present; on a real cluster start workers with ``--resources GPU=1``).
    """
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        resources = {"GPU": 1} if gpu else None
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, resources=resources)
    client = Client(scheduler or cluster)
    try:
        futures, keys = {}, {}
        for order, spec in enumerate(specs):
            ups = [futures[u.key] for u in (*spec.upstream, *spec.after) if u.key in futures]
            res = {"GPU": 1} if gpu and spec.stage in TRAIN_STAGES else None
            # earlier in the list runs first when several are ready: teachers (the longest runs) lead
            futures[spec.key] = client.submit(_after, spec, *ups, key=f"edgekd-{spec.key}", pure=False, resources=res,
                                              priority=len(specs) - order)
            keys[futures[spec.key].key] = spec
        results: dict[str, float | Exception] = {}
        for future in as_completed(list(futures.values())):
            spec = keys[future.key]
            try:
                results[spec.key] = future.result()
            except Exception as exc:  # noqa: BLE001 - reported per run, dependants are cancelled by Dask
                results[spec.key] = exc
            if on_done is not None:
                on_done(spec, results[spec.key])
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _exclusive(specs: list[RunSpec]) -> set[str]:
    """Keys of the timing stages and of every stage downstream of one: they run after the parallel part."""
    out: set[str] = set()
    for spec in specs:
        if spec.stage in TIMING_STAGES or any(u.key in out for u in (*spec.upstream, *spec.after)):
            out.add(spec.key)
    return out


def status_table(specs: list[RunSpec]) -> pd.DataFrame:
    """Per run and stage: fresh / stale / new, and why."""
    rows = []
    for s in specs:
        state, reasons = s.status()
        rows.append({"run_id": s.run_id, "stage": s.stage, "status": state, "why": "; ".join(reasons)})
    return pd.DataFrame(rows)


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
    all_specs = expand(prof, outputs, notebooks_dir)
    specs = [s for s in all_specs if not only or s.stage in only]
    check_inputs(prof, outputs, decode=False)  # the data folder and split file, before anything is written
    # A run holds the lock before anything is cleared or executed; a dry run writes nothing, not even the lock.
    with contextlib.nullcontext() if dry_run else run_lock(outputs.resolve() / prof["name"]):
        if not dry_run:
            check_inputs(prof, outputs)
        note = D.resolution_note(D.DataConfig(**prof["data"]))
        if note:
            log(f"[warn] {note}")
        table = status_table(specs)
        todo = [s for s, st in zip(specs, table["status"], strict=True) if st != "fresh"]
        todo_keys = {s.key for s in todo}
        for s in todo:
            missing = [u.key for u in s.upstream if u.key not in todo_keys and u.status()[0] != "fresh"]
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
    from edgekd import progress

    for row in table.itertuples():
        if row.status == "fresh":
            log(f"[fresh] {row.run_id} ({row.stage})")
    root = outputs.resolve() / name
    plan = progress.Plan(todo, measure=estimate)
    log(plan.describe(workers if executor == "dask" else 1))
    parallel = executor == "dask" and bool(todo)
    exclusive = _exclusive(todo) if parallel else set()
    tracker = progress.Tracker(plan, log, workers if parallel else 1, frozenset(exclusive))
    results: dict[str, float | Exception] = {}
    sequential = todo
    if parallel:
        results = run_dask([s for s in todo if s.key not in exclusive], scheduler, workers, gpu, on_done=tracker.done)
        sequential = [s for s in todo if s.key in exclusive]
    if sequential:
        failed: set[str] = {k for k, r in results.items() if isinstance(r, Exception)}
        for spec in sequential:
            blocked = list(dict.fromkeys(u.key for u in (*spec.upstream, *spec.after) if u.key in failed))
            if blocked:
                results[spec.key] = Blocked(f"upstream {_some(blocked)} failed")
                failed.add(spec.key)
                tracker.done(spec, results[spec.key])
                continue
            tracker.start(spec)
            try:
                results[spec.key] = execute(spec, log)
            except Exception as exc:  # noqa: BLE001 - a failed run is reported; independent runs go on
                results[spec.key] = exc
                failed.add(spec.key)
            tracker.done(spec, results[spec.key])
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
        log(progress.stage_table(frame))
    report = publish.reproduction_report(name, outputs)
    if report:
        log(report)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m edgekd.runner PROFILE``."""
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
    except (ConfigError, D.DataError, ValueError) as exc:
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
