"""edgekd-predict: score image files with an exported bundle, on numpy, Pillow and onnxruntime only (no torch).

``edgekd-predict BUNDLE INPUT... [--labels CSV] [--out predictions.csv] [--metrics CSV] [--force]
[--backend fp32|int8] [--batch N] [--threads N]``

BUNDLE is a bundle folder (:mod:`edgekd.stages.export`) or one of its ``.onnx`` files, which carries the
same settings in its metadata. INPUT are image files and folders (:mod:`edgekd.core.inputs`). Each image
is preprocessed as in training (:mod:`edgekd.core.preprocess`), scored, and its probabilities are
temperature-scaled with the bundle's temperature. ``predictions.csv`` has one row per input, in
input order: ``image, pred, p_<class>..., abstain, melanoma_flag, note`` (``abstain`` = max
probability below the bundle's abstention threshold, ``melanoma_flag`` = p_mel at or above its
melanoma threshold). A skipped file has empty scores and the reason in ``note``: an image that cannot
be read or decoded within the limits of :mod:`edgekd.core.inputs` (:data:`~edgekd.core.inputs.MAX_PIXELS`
pixels by its header, JPEGs decoded at a reduced scale where much larger than the model input), or
one for which the model produced a NaN or infinite logit or probability (an error for that image,
never a prediction; it is left out of the metrics). Text cells (``image``, ``pred``, ``note``) that
start with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return get a leading ``'``, so that a
spreadsheet shows them as text instead of running them as a formula.

With ``--labels`` (ISIC one-hot or ``image,label``; at most :data:`~edgekd.core.inputs.MAX_LABELS_BYTES`)
it also prints and writes (``--metrics``, default ``<out>_metrics.csv``) the metrics of the scored
images, implemented here in numpy (``tests/test_predict.py`` checks them against
:mod:`edgekd.core.metrics` and :mod:`edgekd.core.calibration`).

What it writes. Inputs, labels and outputs are checked before the bundle is opened and before any
inference. ``--out`` and the metrics file must not be an input file, an image path of an input folder,
the labels file (symlinks resolved), a folder, or the same file; their folder must exist or be
creatable, and accept a new file. An existing file is overwritten only if its first line is this
tool's header (an earlier ``predictions.csv``, resp. ``metric,value``), or with ``--force``. Rows
are streamed into a temporary file beside ``--out``, flushed after every batch, which replaces
``--out`` when all images are done and is removed on any failure: ``--out`` is never half-written,
and an earlier file stays as it was until then.

Exit status: 0 done, 1 no image could be scored (the predictions CSV is still written), 2 bad
arguments, bundle, labels or outputs (a message, and nothing written).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnxruntime as ort

from edgekd.core import info
from edgekd.core.files import atomic_write, file_digest, first_line_is, input_index, unwritable, which_input
from edgekd.core.inputs import (
    IMAGE_SUFFIXES,
    InputError,
    UnreadableImage,
    find_images,
    image_id,
    match_labels,
    read_image,
    read_labels,
)
from edgekd.core.preprocess import RECIPE, to_input

try:  # Unix only: peak memory is reported where it exists
    import resource
except ImportError:
    resource = None

#: Model file of each backend inside a bundle folder.
BACKEND_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
#: Equal-width bins of the top-label ECE (as :func:`edgekd.core.calibration.ece`).
ECE_BINS: int = 15
#: Metrics printed and written with ``--labels``, in order.
METRICS: tuple[str, ...] = ("n", "accuracy", "balanced_accuracy", "macro_f1", "auc", "ece", "mel_sensitivity",
                            "mel_specificity", "coverage", "selective_accuracy")
EXIT_OK, EXIT_NOTHING_SCORED, EXIT_USAGE = 0, 1, 2


# ----------------------------------------------------------------------------------------- metrics

def calibrated_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of correct predictions."""
    return float(np.mean(y == pred))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (the ISIC challenge metric)."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def scored_classes(y: np.ndarray) -> np.ndarray:
    """All classes where ``y`` has every class, else those present in ``y`` (as :func:`edgekd.core.metrics.scored_classes`):
    a class with neither labels nor predictions must not count as F1 0."""
    present = np.unique(y)
    return np.arange(info.NUM_CLASSES) if len(present) == info.NUM_CLASSES else present


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean F1 over :func:`scored_classes` of ``y`` (a class with support and no true positive scores 0)."""
    scores = []
    for c in scored_classes(y):
        tp, fp, fn = np.sum((pred == c) & (y == c)), np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def ovr_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Macro mean of the one-vs-rest AUCs of the classes with positives and negatives (NaN if none)."""
    aucs = []
    for c in range(probs.shape[1]):
        pos = y == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos and n_neg:
            aucs.append((average_ranks(probs[:, c])[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def ece(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error over equal-width confidence bins (lo, hi]."""
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    full = count > 0
    gap = np.abs(np.bincount(bins, correct, n_bins)[full] / count[full] - np.bincount(bins, conf, n_bins)[full] / count[full])
    return float(np.sum(count[full] * gap) / count.sum())


def edge_metrics(y: np.ndarray, probs: np.ndarray, melanoma_threshold: float, abstain_threshold: float) -> dict[str, float]:
    """The metrics of :data:`METRICS` for labels ``y`` and calibrated ``probs`` at the bundle's operating points."""
    pred = probs.argmax(axis=1)
    mel, flag = y == info.MELANOMA, probs[:, info.MELANOMA] >= melanoma_threshold
    kept = probs.max(axis=1) >= abstain_threshold
    return {
        "n": float(len(y)),
        "accuracy": accuracy(y, pred),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "macro_f1": macro_f1(y, pred),
        "auc": ovr_auc(y, probs),
        "ece": ece(y, probs),
        "mel_sensitivity": float(np.mean(flag[mel])) if mel.any() else float("nan"),
        "mel_specificity": float(np.mean(~flag[~mel])) if (~mel).any() else float("nan"),
        "coverage": float(np.mean(kept)),
        "selective_accuracy": accuracy(y[kept], pred[kept]) if kept.any() else float("nan"),
    }


# ------------------------------------------------------------------------------------------ bundle

#: Manifest format and version written by :mod:`edgekd.stages.export` and read here.
FORMAT: str = "edgekd-bundle"
VERSION: int = 2
#: Temperatures edgekd-export can fit (:data:`edgekd.core.calibration.T_BOUNDS`; that module needs scipy).
TEMPERATURE_RANGE: tuple[float, float] = (0.05, 20.0)
#: The operating point: read from the model's ``edgekd.*`` metadata, repeated in ``bundle.json``.
OPERATING_POINTS: tuple[str, ...] = ("temperature", "melanoma_threshold", "abstain_threshold")
#: ``edgekd.*`` metadata keys the predictor reads.
REQUIRED_METADATA: tuple[str, ...] = ("class_names", "mean", "std", "scale", "input_size", *OPERATING_POINTS)


@dataclass
class Bundle:
    """What the predictor needs from a bundle: an onnxruntime session and the settings the model was exported with.

    ``warnings``: one line each, for the caller to print (an ``.onnx`` file used without its ``bundle.json``).
    """

    model: Path
    session: ort.InferenceSession
    size: int
    temperature: float
    melanoma_threshold: float
    abstain_threshold: float
    warnings: tuple[str, ...] = ()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``manifest`` without its ``manifest_sha256``."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class DuplicateKey(ValueError):
    """A JSON object that states one key twice (``json`` would silently keep the last value)."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` for ``json.loads``: the pairs as a dict, DuplicateKey naming a key stated twice."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


def read_manifest(folder: Path) -> dict:
    """``folder/bundle.json``, checked: this format and version, unedited since export (``manifest_sha256``),
    and every file it lists present with its recorded sha256. Raises InputError otherwise."""
    path = folder / "bundle.json"
    try:
        manifest = json.loads(path.read_text(), object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        raise InputError(f"{path} states the key {exc} twice: the bundle was edited; re-export it") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path} cannot be read as JSON ({exc}): the bundle is damaged or truncated; re-export it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path} is not an edgekd bundle manifest (no format {FORMAT!r}): make bundles with edgekd-export")
    if manifest.get("version") != VERSION:
        raise InputError(f"{path} is bundle format version {manifest.get('version')!r}, this predictor reads version {VERSION}: "
                         "re-export the run with this edgekd-export")
    if "manifest_sha256" not in manifest:
        raise InputError(f"{path} has no manifest_sha256, so its settings cannot be verified: re-export the run with this edgekd-export")
    if manifest["manifest_sha256"] != manifest_digest(manifest):
        raise InputError(f"{path} was edited after export: its content no longer matches manifest_sha256")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(entry, dict) and "sha256" in entry for entry in files.values()):
        raise InputError(f"{path} does not list its files with their sha256: the bundle is damaged; re-export it")
    for name, entry in files.items():
        file = folder / name
        if not file.is_file():
            raise InputError(f"{file} is listed in bundle.json but missing: the bundle is incomplete; re-export it")
        if file_digest(file) != entry["sha256"]:
            raise InputError(f"{file} does not match its sha256 in bundle.json: the bundle is damaged or was edited")
    return manifest


def _session(model: Path, threads: int) -> ort.InferenceSession:
    """``model`` opened by onnxruntime on CPU with ``threads`` intra-op threads; InputError if it cannot be loaded."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...), not only RuntimeError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{model} cannot be loaded by onnxruntime (damaged, truncated or not an ONNX model): {reason}") from exc


def _number(text: str) -> float:
    """``text`` as a float, NaN where it is not a number (the range checks then refuse it)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def model_settings(meta: dict[str, str], model: Path) -> dict[str, int | float]:
    """Input size, temperature and thresholds from ``model``'s ``edgekd.*`` metadata ``meta``, checked against the
    classes and preprocessing this predictor implements and against the ranges edgekd-export produces."""
    if not any(key.startswith("edgekd.") for key in meta):
        raise InputError(f"{model} carries no edgekd metadata: export the run with edgekd-export")
    missing = [f"edgekd.{key}" for key in REQUIRED_METADATA if f"edgekd.{key}" not in meta]
    if missing:
        raise InputError(f"{model} lacks the metadata {', '.join(missing)}: it was edited or not made by edgekd-export")
    stated = {"class_names": list(info.CLASS_NAMES), "mean": RECIPE["mean"], "std": RECIPE["std"], "scale": RECIPE["scale"]}
    for key, value in stated.items():
        try:
            ok = json.loads(meta[f"edgekd.{key}"]) == value
        except ValueError:
            ok = False
        if not ok:
            raise InputError(f"{model} states {key} {meta[f'edgekd.{key}']}, this predictor implements {value}")
    size = meta["edgekd.input_size"]
    if not size.isdecimal() or int(size) not in info.SIZES:
        raise InputError(f"{model} states input size {size!r}: edgekd models take one of {', '.join(map(str, info.SIZES))} px")
    values = {key: _number(meta[f"edgekd.{key}"]) for key in OPERATING_POINTS}
    low, high = TEMPERATURE_RANGE
    if not low <= values["temperature"] <= high:
        raise InputError(f"{model} states temperature {meta['edgekd.temperature']!r}: it must be a finite number in "
                         f"[{low}, {high}] (the range edgekd-export fits in)")
    for key in ("melanoma_threshold", "abstain_threshold"):
        if not 0 <= values[key] <= 1:
            raise InputError(f"{model} states {key} {meta[f'edgekd.{key}']!r}: a probability threshold must be in [0, 1]")
    return {"size": int(size), **values}


def _check_agreement(manifest: dict, meta: dict[str, str], settings: dict[str, int | float], model: Path) -> None:
    """Refuse a ``bundle.json`` that states another operating point or metadata than the model it lists, or another
    architecture or precision than the graph's own ``edgekd.arch`` / ``edgekd.precision`` (an INT8 graph copied over
    ``model.onnx``, another network's graph, with the hashes recomputed)."""
    precision = {name: backend for backend, name in BACKEND_FILES.items()}.get(model.name)
    for key, stated in (("arch", manifest.get("arch")), ("precision", precision)):
        if stated is not None and meta.get(f"edgekd.{key}") != stated:
            raise InputError(f"{model}'s own edgekd.{key} metadata is {meta.get(f'edgekd.{key}')!r}, but bundle.json states "
                             f"{key} {stated!r} for it: the bundle is inconsistent; re-export it")
    own = {key: value for key, value in meta.items() if key.startswith("edgekd.") and key != "edgekd.precision"}
    listed = manifest.get("onnx_metadata") if isinstance(manifest.get("onnx_metadata"), dict) else {}
    differ = sorted(key for key in own.keys() | listed.keys() if own.get(key) != listed.get(key))
    if differ:
        raise InputError(f"bundle.json's onnx_metadata disagrees with the metadata of {model} on "
                         + ", ".join(f"{key} ({listed.get(key)!r} vs {own.get(key)!r})" for key in differ[:3])
                         + ": the bundle is inconsistent; re-export it")
    ops = manifest.get("operating_points") if isinstance(manifest.get("operating_points"), dict) else {}
    pre = manifest.get("preprocess") if isinstance(manifest.get("preprocess"), dict) else {}
    pairs = {f"operating_points.{key}": (ops.get(key), settings[key]) for key in OPERATING_POINTS}
    for name, (stated, used) in {**pairs, "preprocess.size": (pre.get("size"), settings["size"])}.items():
        if stated != used:
            raise InputError(f"bundle.json's {name} ({stated!r}) disagrees with the metadata of {model} ({used!r}): "
                             "the bundle is inconsistent; re-export it")


def open_bundle(path: str | Path, backend: str = "fp32", threads: int = 0) -> Bundle:
    """A bundle folder (``backend``'s model) or one of its ``.onnx`` files, opened on CPU with ``threads`` intra-op
    threads (0: onnxruntime's default).

    The settings come from the model's own ``edgekd.*`` metadata (:func:`model_settings`). Where the model has a
    ``bundle.json`` (in the folder, or beside the ``.onnx`` file) the whole bundle is checked (:func:`read_manifest`)
    and must state the same settings; an ``.onnx`` file without one is used with a warning (``Bundle.warnings``).
    Raises InputError when the bundle is missing, damaged, edited or out of range, or lacks the backend.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "bundle.json").is_file():
            raise InputError(f"{path} is not a bundle folder (no bundle.json); make one with edgekd-export")
        model, manifest, warnings = path / BACKEND_FILES[backend], read_manifest(path), ()
        if model.name not in manifest["files"]:
            raise InputError(f"bundle {path} has no {backend} model ({model.name}); export it with INT8")
    elif path.suffix == ".onnx" and path.is_file():
        model = path
        if (path.parent / "bundle.json").is_file():
            manifest, warnings = read_manifest(path.parent), ()
            if model.name not in manifest["files"]:
                raise InputError(f"{model} is not listed in the bundle.json beside it: move it out of the bundle folder or re-export")
        else:
            manifest, warnings = None, (f"{model} is used without its bundle.json: its integrity is unverified",)
    else:
        raise InputError(f"bundle {path} is neither a bundle folder nor an .onnx file")
    session = _session(model, threads)
    meta = session.get_modelmeta().custom_metadata_map
    settings = model_settings(meta, model)
    if manifest is not None:
        _check_agreement(manifest, meta, settings, model)
    shape, size = session.get_inputs()[0].shape, settings["size"]
    if len(shape) != 4 or any(isinstance(dim, int) and dim != want for dim, want in zip(shape[1:], (3, size, size), strict=True)):
        raise InputError(f"{model} takes input {shape}, but its metadata states {size} px (batch, 3, {size}, {size})")
    out = session.get_outputs()[0].shape
    if len(out) != 2 or out[1] != info.NUM_CLASSES:
        raise InputError(f"{model} gives output {out}, not (batch, {info.NUM_CLASSES}): one logit per class of "
                         f"{', '.join(info.CLASS_NAMES)} is needed")
    return Bundle(model, session, size, settings["temperature"], settings["melanoma_threshold"],
                  settings["abstain_threshold"], warnings)


# ------------------------------------------------------------------------------------------ runtime

#: The predictions CSV's header: its first line, by which an earlier predictions file is recognised.
PREDICTIONS_HEADER: tuple[str, ...] = ("image", "pred", *(f"p_{c}" for c in info.CLASS_NAMES), "abstain", "melanoma_flag", "note")
#: The metrics CSV's header.
METRICS_HEADER: tuple[str, ...] = ("metric", "value")
#: First characters that make a spreadsheet read a cell as a formula (OWASP's list): such text cells get a leading ``'``.
FORMULA_START: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux ``/proc``, 10 ms resolution); None elsewhere."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (None where ``resource`` is unavailable, as on Windows)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


@dataclass
class Scores:
    """What scoring gave: the input positions scored (in order), their calibrated probabilities, the skipped counts."""

    scored: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    unreadable: int = 0
    non_finite: int = 0
    first: float | None = None  # seconds from process start to the first prediction

    @property
    def skipped(self) -> int:
        """Images with a row but no scores."""
        return self.unreadable + self.non_finite


def text_cell(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows as text: a leading ``'`` where it would start a formula."""
    return f"'{text}" if text.startswith(FORMULA_START) else text


def bundle_files(path: Path) -> dict[Path, str]:
    """The files that opening the bundle ``path`` reads, as inputs no output may overwrite: a bundle folder's files,
    or an ``.onnx`` file and the files of the bundle folder it lies in (where a ``bundle.json`` is beside it)."""
    folder = path if path.is_dir() else path.parent if (path.parent / "bundle.json").is_file() else None
    files = {path: f"the bundle's model {path}"} if path.is_file() else {}
    if folder is not None:
        files |= {p: f"the bundle's file {p}" for p in sorted(folder.iterdir()) if p.is_file()}
    return files


def check_outputs(outputs: Sequence[tuple[str, Path, Sequence[str]]], inputs: dict[Path, str], folders: Sequence[Path],
                  force: bool) -> None:
    """Refuse each ``(option, path, header)`` output that is one of the ``inputs`` (path -> what it is: images, labels,
    the bundle's files; symlinks resolved, hard links by inode) even with ``force``, the other output, would be an
    image of an input folder of ``folders``, is a folder or special file, cannot be created, or exists without starting
    with ``header`` (an earlier output of this tool) unless ``force``. Raises InputError."""
    protected = input_index(inputs)
    folders = {p.resolve(): p for p in folders}
    taken: dict[Path, str] = {}
    for option, path, header in outputs:
        where, source = path.resolve(), which_input(path, protected)
        if where.is_dir():
            raise InputError(f"{option} {path} is a folder: name a file")
        if where.parent in folders and where.suffix.lower() in IMAGE_SUFFIXES:
            raise InputError(f"{option} {path} would be read as an image of the input folder {folders[where.parent]}: "
                             "write it elsewhere")
        if source:
            raise InputError(f"{option} {path} is {source}: refusing to overwrite an input (even with --force)")
        if where in taken:
            raise InputError(f"{option} {path} is the same file as {taken[where]}: give them different paths")
        taken[where] = f"{option} {path}"
        if where.exists() and not where.is_file():
            raise InputError(f"{option} {path} exists and is not a regular file")
        reason = unwritable(path.parent)
        if reason:
            raise InputError(f"{option} {path} cannot be written: {reason}")
        if where.is_file() and not force and not first_line_is(where, ",".join(header)):
            raise InputError(f"{option} {path} exists and is not a file edgekd-predict wrote (its first line is not "
                             f"{','.join(header)!r}): refusing to overwrite it; use --force to replace it")


def _skipped_row(image: str, path: Path, reason: str) -> list:
    """The row of an image that got no scores; the reason is printed to stderr too."""
    print(f"skipped {path}: {reason}", file=sys.stderr)
    return [text_cell(image), "", *[""] * info.NUM_CLASSES, "", "", text_cell(f"skipped: {reason}")]


def _scored_row(image: str, p: np.ndarray, note: str, bundle: Bundle) -> list:
    """The row of an image with calibrated probabilities ``p``."""
    return [text_cell(image), text_cell(info.CLASS_NAMES[int(p.argmax())]), *(f"{v:.10g}" for v in p),
            int(p.max() < bundle.abstain_threshold), int(p[info.MELANOMA] >= bundle.melanoma_threshold), text_cell(note)]


def score_batches(files: Sequence[Path], ids: Sequence[str], bundle: Bundle, batch: int,
                  emit: Callable[[list[list]], None]) -> Scores:
    """Decode and score ``files`` ``batch`` at a time, passing each batch's rows, in input order, to ``emit``.

    An unreadable image and an image whose logits or probabilities are not finite get a skipped row and
    no scores.
    """
    input_name = bundle.session.get_inputs()[0].name
    scores = Scores()
    for start in range(0, len(files), batch):
        positions = range(start, min(start + batch, len(files)))
        rows: dict[int, list] = {}
        pixels, kept = [], []
        for i in positions:
            try:
                image, note = read_image(files[i], bundle.size)
            except UnreadableImage as exc:
                scores.unreadable += 1
                rows[i] = _skipped_row(ids[i], files[i], str(exc))
                continue
            if note:
                print(f"note {files[i]}: {note}", file=sys.stderr)
            pixels.append(image)
            kept.append((i, note))
        if pixels:
            logits = bundle.session.run(None, {input_name: to_input(np.stack(pixels))})[0]
            scores.first = scores.first if scores.first is not None else seconds_since_process_start()
            with np.errstate(all="ignore"):
                probs = calibrated_probs(logits, bundle.temperature)
            finite = np.isfinite(logits).all(axis=1) & np.isfinite(probs).all(axis=1)
            for (i, note), p, ok in zip(kept, probs, finite, strict=True):
                if ok:
                    rows[i] = _scored_row(ids[i], p, note, bundle)
                    scores.scored.append(i)
                    scores.probs.append(p)
                else:
                    scores.non_finite += 1
                    rows[i] = _skipped_row(ids[i], files[i], "model produced non-finite output")
        emit([rows[i] for i in positions])
    return scores


def write_predictions(path: Path, files: Sequence[Path], ids: Sequence[str], bundle: Bundle, batch: int) -> Scores:
    """Score ``files`` into the predictions CSV at ``path``: rows are streamed, flushed after every batch, into a
    temporary file beside it that replaces ``path`` at the end and is removed on any failure (:func:`atomic_write`)."""
    done: list[Scores] = []

    def write(handle: BinaryIO) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(PREDICTIONS_HEADER)

        def emit(rows: list[list]) -> None:
            writer.writerows(rows)
            text.flush()

        done.append(score_batches(files, ids, bundle, batch, emit))
        text.detach()  # atomic_write closes the handle

    atomic_write(path, write)
    return done[0]


def _write_csv(path: Path, header: Sequence[str], rows: list[list]) -> None:
    """Write a CSV through a unique temporary file beside ``path`` (:func:`atomic_write`: never half-written)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, lambda fh: fh.write(buffer.getvalue().encode("utf-8")))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgekd-predict", description=__doc__.splitlines()[0],
                                 epilog="Exit status: 0 done, 1 no image could be scored, 2 bad arguments, bundle, "
                                        "labels or outputs.")
    ap.add_argument("bundle", type=Path, help="bundle folder (edgekd-export) or one of its .onnx files")
    ap.add_argument("inputs", nargs="+", type=Path, help="image files (JPEG/PNG) and folders of them")
    ap.add_argument("--labels", type=Path, help="labels CSV: ISIC one-hot (image,MEL,NV,...) or image,label")
    ap.add_argument("--out", type=Path, default=Path("predictions.csv"), help="predictions CSV (default predictions.csv)")
    ap.add_argument("--metrics", type=Path, help="metrics CSV with --labels (default: <out>_metrics.csv)")
    ap.add_argument("--force", action="store_true",
                    help="overwrite existing --out / --metrics files that edgekd-predict did not write")
    ap.add_argument("--backend", choices=tuple(BACKEND_FILES), default="fp32",
                    help="fp32 (model.onnx, default: the model the bundle's metrics describe) or int8 (model_int8.onnx)")
    ap.add_argument("--batch", type=int, default=32, help="images per inference call (default 32)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default 0: its default)")
    return ap


def _print_summary(args: argparse.Namespace, n_files: int, ignored: Sequence[Path], scores: Scores, bundle: Bundle,
                   elapsed: float) -> None:
    """The counts, timing and memory of a prediction run, on stdout."""
    skipped = (f"{scores.skipped} skipped (unreadable)" if not scores.non_finite else
               f"{scores.skipped} skipped ({scores.unreadable} unreadable, {scores.non_finite} non-finite model output)")
    others = sum(not p.is_file() for p in ignored)
    memory = peak_rss_mb()
    print(f"edgekd-predict: {len(scores.scored)} of {n_files} images scored, {skipped}, "
          f"{len(ignored) - others} folder files ignored (not .jpg/.jpeg/.png)"
          + (f", {others} other folder entries ignored (subfolders, broken symlinks, special files)" if others else "")
          + f"; {args.backend} {bundle.model.name}, {bundle.size} px")
    print(f"  {elapsed:.2f} s for decoding and inference ({len(scores.scored) / elapsed:.1f} images/s)"
          + (f"; first prediction {scores.first:.2f} s after process start" if scores.first is not None else "")
          + (f"; peak RSS {memory:.0f} MiB" if memory is not None else ""))
    print(f"  wrote {args.out}")


def _print_metrics(path: Path, y: np.ndarray, values: dict[str, float], bundle: Bundle) -> None:
    """The metrics ``values`` of the scored images with labels ``y``, written to ``path``, on stdout."""
    classes = scored_classes(y)
    scope = ("" if len(classes) == info.NUM_CLASSES else f"; macro-F1 over {len(classes)} of {info.NUM_CLASSES} classes "
             f"({', '.join(info.CLASS_NAMES[c] for c in classes)}), those in the labels")
    print(f"  metrics on {len(y)} labelled images (temperature {bundle.temperature:.4g}, melanoma threshold "
          f"{bundle.melanoma_threshold:.4g}, abstain below {bundle.abstain_threshold:.4g}{scope}):")
    for k in METRICS:
        print(f"    {k:<20} {values[k]:.4f}")
    print(f"  wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """``edgekd-predict``: write the predictions CSV (and metrics with ``--labels``); see the module docstring."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 0:
        ap.error("--batch must be >= 1 and --threads >= 0")
    metrics = (args.metrics or args.out.with_name(f"{args.out.stem}_metrics.csv")) if args.labels else None
    outputs = [("--out", args.out, PREDICTIONS_HEADER)] + ([("--metrics", metrics, METRICS_HEADER)] if metrics else [])
    try:
        files, ignored = find_images(args.inputs)
        ids = [image_id(p.name) for p in files]
        labels = match_labels(ids, read_labels(args.labels), str(args.labels)) if args.labels else None
        inputs = {p: f"the input {p}" for p in files} | bundle_files(args.bundle)
        if args.labels:
            inputs[args.labels] = f"the labels file {args.labels}"
        check_outputs(outputs, inputs, [p for p in args.inputs if p.is_dir()], args.force)
        bundle = open_bundle(args.bundle, args.backend, args.threads)
    except InputError as exc:
        print(f"edgekd-predict: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for line in bundle.warnings:
        print(f"edgekd-predict: warning: {line}", file=sys.stderr)
    tick = time.perf_counter()
    scores = write_predictions(args.out, files, ids, bundle, args.batch)
    elapsed = time.perf_counter() - tick
    values = None
    if labels is not None and metrics is not None and scores.scored:  # every file is written before anything is printed
        y = labels[scores.scored]
        values = edge_metrics(y, np.stack(scores.probs), bundle.melanoma_threshold, bundle.abstain_threshold)
        _write_csv(metrics, METRICS_HEADER, [[k, repr(values[k])] for k in METRICS])
    try:
        _print_summary(args, len(files), ignored, scores, bundle, elapsed)
        if values is not None:
            _print_metrics(metrics, y, values, bundle)
        sys.stdout.flush()
    except BrokenPipeError:  # stdout closed early (``| head -1``): the files are written, the rest of the text is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK if scores.scored else EXIT_NOTHING_SCORED


if __name__ == "__main__":
    sys.exit(main())
