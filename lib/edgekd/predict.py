"""edgekd-predict: score image files with an exported bundle, on numpy, Pillow and onnxruntime only (no torch).

``edgekd-predict BUNDLE INPUT... [--labels CSV] [--out predictions.csv] [--backend fp32|int8] [--batch N]``

BUNDLE is a bundle folder (:mod:`edgekd.bundle`) or one of its ``.onnx`` files, which carries the
same settings in its metadata. INPUT are image files and folders (:mod:`edgekd.inputs`). Each image
is preprocessed as in training (:mod:`edgekd.preprocess`), scored, and its probabilities are
temperature-scaled with the bundle's temperature. ``predictions.csv`` has one row per input:
``image, pred, p_<class>..., abstain, melanoma_flag, note`` (``abstain`` = max probability below
the bundle's abstention threshold, ``melanoma_flag`` = p_mel at or above its melanoma threshold;
a skipped file has empty scores and the reason in ``note``).

With ``--labels`` (ISIC one-hot or ``image,label``) it also prints and writes (``--metrics``) the
metrics of the scored images, implemented here in numpy (``tests/test_predict.py`` checks them
against :mod:`edgekd.metrics` and :mod:`edgekd.calibration`). Labels and inputs are checked before
any inference. Exit status: 0 done, 1 no image could be scored, 2 bad arguments, bundle or labels.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgekd import info
from edgekd.inputs import InputError, UnreadableImage, find_images, image_id, match_labels, read_image, read_labels
from edgekd.preprocess import RECIPE, to_input

#: Model file of each backend inside a bundle folder.
BACKEND_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
#: Equal-width bins of the top-label ECE (as :func:`edgekd.calibration.ece`).
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


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int = info.NUM_CLASSES) -> float:
    """Mean F1 over all ``n_classes`` (a class with no support and no predictions scores 0)."""
    scores = []
    for c in range(n_classes):
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

@dataclass
class Bundle:
    """What the predictor needs from a bundle: an onnxruntime session and the settings the model was exported with."""

    model: Path
    session: ort.InferenceSession
    size: int
    temperature: float
    melanoma_threshold: float
    abstain_threshold: float


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_bundle(path: str | Path, backend: str = "fp32", threads: int = 0) -> Bundle:
    """A bundle folder (``bundle.json`` and ``backend``'s model, checked against its sha256) or an ``.onnx``
    file of one (settings from its metadata), opened on CPU with ``threads`` intra-op threads (0: onnxruntime's default).

    Raises InputError when the bundle is missing or damaged, lacks the backend, or states another
    class list or preprocessing than this version of :mod:`edgekd.preprocess` implements.
    """
    path = Path(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if path.is_dir():
        if not (path / "bundle.json").is_file():
            raise InputError(f"{path} is not a bundle folder (no bundle.json); make one with edgekd-export")
        manifest = json.loads((path / "bundle.json").read_text())
        model = path / BACKEND_FILES[backend]
        if model.name not in manifest["files"]:
            raise InputError(f"bundle {path} has no {backend} model ({model.name}); export it with INT8")
        if not model.is_file() or _sha256(model) != manifest["files"][model.name]["sha256"]:
            raise InputError(f"{model} is missing or does not match its sha256 in bundle.json: the bundle is damaged or was edited")
        meta = manifest["onnx_metadata"]
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    elif path.suffix == ".onnx" and path.is_file():
        model = path
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        if "edgekd.temperature" not in meta:
            raise InputError(f"{path} carries no edgekd metadata: export the run with edgekd-export")
    else:
        raise InputError(f"bundle {path} is neither a bundle folder nor an .onnx file")
    stated = {"class_names": list(info.CLASS_NAMES), "mean": RECIPE["mean"], "std": RECIPE["std"], "scale": RECIPE["scale"]}
    for key, value in stated.items():
        if json.loads(meta[f"edgekd.{key}"]) != value:
            raise InputError(f"bundle {path} states {key} {meta[f'edgekd.{key}']}, this predictor implements {value}")
    return Bundle(model, session, int(meta["edgekd.input_size"]), float(meta["edgekd.temperature"]),
                  float(meta["edgekd.melanoma_threshold"]), float(meta["edgekd.abstain_threshold"]))


# ------------------------------------------------------------------------------------------ runtime

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
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """Write a CSV through a temporary file beside ``path`` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgekd-predict", description=__doc__.splitlines()[0],
                                 epilog="Exit status: 0 done, 1 no image could be scored, 2 bad arguments, bundle or labels.")
    ap.add_argument("bundle", type=Path, help="bundle folder (edgekd-export) or one of its .onnx files")
    ap.add_argument("inputs", nargs="+", type=Path, help="image files (JPEG/PNG) and folders of them")
    ap.add_argument("--labels", type=Path, help="labels CSV: ISIC one-hot (image,MEL,NV,...) or image,label")
    ap.add_argument("--out", type=Path, default=Path("predictions.csv"), help="predictions CSV (default predictions.csv)")
    ap.add_argument("--metrics", type=Path, help="metrics CSV with --labels (default: <out>_metrics.csv)")
    ap.add_argument("--backend", choices=tuple(BACKEND_FILES), default="fp32",
                    help="fp32 (model.onnx, default: the model the bundle's metrics describe) or int8 (model_int8.onnx)")
    ap.add_argument("--batch", type=int, default=32, help="images per inference call (default 32)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default 0: its default)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``edgekd-predict``: write the predictions CSV (and metrics with ``--labels``); see the module docstring."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 0:
        ap.error("--batch must be >= 1 and --threads >= 0")
    try:
        files, ignored = find_images(args.inputs)
        ids = [image_id(p.name) for p in files]
        labels = match_labels(ids, read_labels(args.labels), str(args.labels)) if args.labels else None
        bundle = open_bundle(args.bundle, args.backend, args.threads)
    except InputError as exc:
        print(f"edgekd-predict: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    input_name = bundle.session.get_inputs()[0].name
    classes = list(info.CLASS_NAMES)
    rows: list[list] = []
    scored, probs_all, skipped = [], [], 0
    first, tick = None, time.perf_counter()
    for start in range(0, len(files), args.batch):
        pixels, kept = [], []
        for i in range(start, min(start + args.batch, len(files))):
            try:
                image, note = read_image(files[i], bundle.size)
            except UnreadableImage as exc:
                skipped += 1
                print(f"skipped {files[i]}: {exc}", file=sys.stderr)
                rows.append([ids[i], "", *[""] * len(classes), "", "", f"skipped: {exc}"])
                continue
            if note:
                print(f"note {files[i]}: {note}", file=sys.stderr)
            pixels.append(image)
            kept.append((i, note))
        if not pixels:
            continue
        logits = bundle.session.run(None, {input_name: to_input(np.stack(pixels))})[0]
        first = first if first is not None else seconds_since_process_start()
        probs = calibrated_probs(logits, bundle.temperature)
        for (i, note), p in zip(kept, probs, strict=True):
            rows.append([ids[i], classes[int(p.argmax())], *(f"{v:.10g}" for v in p), int(p.max() < bundle.abstain_threshold),
                         int(p[info.MELANOMA] >= bundle.melanoma_threshold), note])
            scored.append(i)
        probs_all.append(probs)
    elapsed = time.perf_counter() - tick
    _write_csv(args.out, ["image", "pred", *(f"p_{c}" for c in classes), "abstain", "melanoma_flag", "note"], rows)
    memory = peak_rss_mb()
    print(f"edgekd-predict: {len(scored)} of {len(files)} images scored, {skipped} skipped (unreadable), "
          f"{len(ignored)} folder files ignored (not .jpg/.jpeg/.png); {args.backend} {bundle.model.name}, {bundle.size} px")
    print(f"  {elapsed:.2f} s for decoding and inference ({len(scored) / elapsed:.1f} images/s)"
          + (f"; first prediction {first:.2f} s after process start" if first is not None else "")
          + (f"; peak RSS {memory:.0f} MiB" if memory is not None else ""))
    print(f"  wrote {args.out}")
    if not scored:
        return EXIT_NOTHING_SCORED
    if labels is not None:
        values = edge_metrics(labels[scored], np.concatenate(probs_all), bundle.melanoma_threshold, bundle.abstain_threshold)
        path = args.metrics or args.out.with_name(f"{args.out.stem}_metrics.csv")
        _write_csv(path, ["metric", "value"], [[k, repr(values[k])] for k in METRICS])
        print(f"  metrics on {len(scored)} labelled images (temperature {bundle.temperature:.4g}, melanoma threshold "
              f"{bundle.melanoma_threshold:.4g}, abstain below {bundle.abstain_threshold:.4g}):")
        for k in METRICS:
            print(f"    {k:<20} {values[k]:.4f}")
        print(f"  wrote {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
