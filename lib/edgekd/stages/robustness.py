"""Image corruptions, corruption evaluation and MedMNIST-C BE/rBE scores.

Corruptions act on uint8 RGB images ``(N, H, W, 3)`` at the model's input size, *before*
normalisation (:func:`edgekd.stages.data.to_input`). Every image is corrupted with random numbers drawn from
``np.random.SeedSequence([seed, global_index, crc32("<suite>/<corruption>")])``, so an image's
result depends only on the seed, its global index and the corruption, never on batch composition.
The severity is not part of the seed: within one corruption, all severities of an image share
the same random draws (common random numbers), which makes severity curves smoother.

Two suites (:data:`SUITES`):

* ``"source"``: the source study's suite as the study states it (additive Gaussian noise,
  not a blur; in-memory JPEG; contrast about the per-image mean). Severities are the corruption
  parameters themselves (noise sigma on [0, 1], JPEG quality, contrast factor).
* ``"medmnistc"``: the MedMNIST-C DermaMNIST corruptions of the installed ``medmnistc`` package
  (``medmnistc/corruptions/registry.py``, ``CORRUPTIONS_DS["dermamnist"]``); severities are the
  levels 1..5 (the package indexes them 0..4). MedMNIST-C was built from 224 px images, so
  pixel-sized parameters (blur radii, text size) are strongest relative to the image at small
  input sizes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import random
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from medmnistc.corruptions.filter import MotionBlur, MotionImage
from medmnistc.corruptions.microscopy import Characters
from medmnistc.corruptions.noise import ImpulseNoise
from medmnistc.corruptions.registry import CORRUPTIONS_DS
from medmnistc.utils.baselines import BASELINES
from PIL import Image

from edgekd.core import info
from edgekd.core import metrics as M
from edgekd.core.config import RobustnessConfig
from edgekd.core.corruptions import SUITES, check, robustness_plan
from edgekd.core.files import atomic_write, clear_results
from edgekd.core.inference import LoadedRun, load_run, predict, resolve_device
from edgekd.stages import data as D
from edgekd.stages.data import check_images, stratified_indices

#: MedMNIST-C dataset key whose corruptions and baselines are used.
MEDMNISTC_DATASET: str = "dermamnist"
_MEDMNISTC = CORRUPTIONS_DS[MEDMNISTC_DATASET]
#: AlexNet balanced-error baseline shipped by ``medmnistc`` (``medmnistc/utils/baselines.py``).
DERMAMNIST_BASELINE: Mapping[str, Any] = BASELINES[MEDMNISTC_DATASET]

METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "balanced_error")


# --------------------------------------------------------------------------- source suite


def gaussian_noise(
    image: np.ndarray, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Additive noise: ``round(255 * clip(x / 255 + N(0, sigma^2), 0, 1))`` per pixel and channel."""
    x = image / 255.0 + rng.normal(0.0, sigma, size=image.shape)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG encode/decode in memory with PIL at ``quality`` (PIL's default chroma subsampling)."""
    del rng  # deterministic corruption
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """``x' = (x - m) * factor + m``, ``m`` = mean over all pixels and channels of the image.

    Computed in float on the 0..255 scale, then rounded and clipped to uint8.
    """
    del rng  # deterministic corruption
    x = image.astype(np.float64)
    m = x.mean()
    return np.clip(np.rint((x - m) * factor + m), 0, 255).astype(np.uint8)


#: The source suite's corruption functions (their severities: :data:`SUITES`).
_SOURCE: dict[str, Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "jpeg": jpeg,
    "contrast": contrast,
}

# ------------------------------------------------------------------------ medmnistc suite


@contextlib.contextmanager
def _global_random_state(seq: np.random.SeedSequence) -> Iterator[None]:
    """Seed ``np.random`` and ``random`` from ``seq`` inside the block, restore them afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np_seed, py_seed = seq.generate_state(2)
    np.random.seed(int(np_seed))
    random.seed(int(py_seed))
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _characters_min_width(max_letters: int) -> int:
    """Narrowest image ``Characters`` can handle: it draws x in ``[10, width - 8 * letters]``."""
    return 8 * max_letters + 10


def _motion_blur(image: Image.Image, radius_sigma: tuple[float, float]) -> np.ndarray:
    """``medmnistc`` ``MotionBlur.apply`` with the PNG blob decoded by PIL.

    The package decodes with ``np.fromstring``, whose binary mode NumPy 2 removed; the angle is
    drawn from the global ``np.random`` exactly as in the package.
    """
    radius, sigma = radius_sigma
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    with MotionImage(blob=buffer.getvalue()) as blurred:
        blurred.motion_blur(
            radius=radius, sigma=sigma, angle=np.random.uniform(-45, 45)
        )
        blob = blurred.make_blob("png")
    with Image.open(BytesIO(blob)) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def unsupported(suite: str, name: str, severity: float, height: int, width: int) -> str | None:
    """Why ``suite/name`` at ``severity`` cannot corrupt ``height`` x ``width`` images, or None if it can.

    Only ``medmnistc`` ``characters`` has a limit: it writes up to 10 letters 8 px apart (see
    :func:`_characters_min_width`), so it needs 58-90 px wide images and never runs at 28 px.
    """
    check(suite, name, severity)
    corruptor = _MEDMNISTC.get(name) if suite == "medmnistc" else None
    if isinstance(corruptor, Characters):
        min_width = _characters_min_width(corruptor.severity_params[int(severity) - 1][1])
        if width < min_width or height < 20:
            return (
                f"medmnistc 'characters' level {severity} needs images at least {min_width} px wide "
                f"and 20 px high; got {width}x{height}"
            )
    return None


def _medmnistc(
    image: np.ndarray, name: str, level: int, seq: np.random.SeedSequence
) -> np.ndarray:
    """Apply the ``medmnistc`` DermaMNIST corruption ``name`` at ``level`` (1-based)."""
    corruptor = _MEDMNISTC[name]
    params = corruptor.severity_params[level - 1]
    reason = unsupported("medmnistc", name, level, image.shape[0], image.shape[1])
    if reason is not None:
        raise ValueError(reason)
    pil = Image.fromarray(image)
    global_seq, generator_seq = seq.spawn(2)
    with _global_random_state(global_seq):
        if isinstance(corruptor, MotionBlur):
            out = _motion_blur(pil, params)
        elif isinstance(corruptor, ImpulseNoise):
            # The package reads ``self.rng``; set it on a copy, the registry instance is shared.
            corruptor = copy.copy(corruptor)
            corruptor.rng = np.random.default_rng(generator_seq)
            out = corruptor.apply(pil, level - 1)
        else:
            out = corruptor.apply(pil, level - 1)
    out = np.asarray(out)
    if out.shape != image.shape or out.dtype != np.uint8:
        raise RuntimeError(
            f"medmnistc {name!r} returned {out.dtype} {out.shape}, not {image.shape}"
        )
    return out


# ---------------------------------------------------------------------------- public API


def corrupt(
    images: np.ndarray,
    name: str,
    severity: float,
    seed: int,
    start_index: int = 0,
    *,
    suite: str = "source",
) -> np.ndarray:
    """Corrupt uint8 ``(N, H, W, 3)`` images; ``start_index`` is the global index of ``images[0]``.

    ``severity`` is a value of ``SUITES[suite][name]``. Results are identical whether the images
    are passed at once or in chunks with matching ``start_index``.
    """
    check_images(images)
    check(suite, name, severity)
    if seed < 0 or start_index < 0:
        raise ValueError(
            f"seed and start_index must be >= 0, got {seed}, {start_index}"
        )
    key = zlib.crc32(f"{suite}/{name}".encode())
    out = np.empty_like(images)
    for i, image in enumerate(images):
        seq = np.random.SeedSequence([seed, start_index + i, key])
        if suite == "source":
            out[i] = _SOURCE[name](image, severity, np.random.default_rng(seq))
        else:
            out[i] = _medmnistc(image, name, int(severity), seq)
    return out


def _scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": M.accuracy(labels, predictions),
        "macro_f1": M.macro_f1(labels, predictions),
        "balanced_error": 1.0 - M.balanced_accuracy(labels, predictions),
    }


PredictFn = Callable[[np.ndarray], np.ndarray]


def _predict(
    predict_fns: Mapping[str, PredictFn],
    images: np.ndarray,
    batch_size: int,
    transform: Callable[..., np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Arg-max predictions of every model; ``transform(batch, start_index=i)`` corrupts each batch."""
    predictions: dict[str, list[np.ndarray]] = {key: [] for key in predict_fns}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if transform is not None:
            batch = transform(batch, start_index=start)
        for key, predict_fn in predict_fns.items():
            logits = np.asarray(predict_fn(batch))
            if logits.ndim != 2 or len(logits) != len(batch):
                raise ValueError(
                    f"predict_fn must return (N, classes) logits, got {logits.shape}"
                )
            predictions[key].append(logits.argmax(axis=1))
    return {key: np.concatenate(chunks) for key, chunks in predictions.items()}


def evaluate_corruptions(
    predict_fn: PredictFn | Mapping[str, PredictFn],
    images: np.ndarray,
    labels: np.ndarray,
    suite: str,
    seed: int,
    batch_size: int = 256,
    corruptions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Score ``predict_fn`` (uint8 NHWC batch -> ``(N, 7)`` logits) on clean and corrupted images.

    One row per (corruption, severity) plus a ``clean`` row (severity 0, level 0); columns
    ``suite, corruption, severity, level, n, accuracy, macro_f1, balanced_error`` where ``level``
    is the 1-based rank of the severity, ``macro_f1`` averages over all ``info.NUM_CLASSES``
    classes (absent ones score 0) and ``balanced_error = 1 - balanced accuracy`` (sklearn, over
    the classes present in ``labels``, as MedMNIST-C computes it). ``corruptions`` restricts the suite's corruptions (default: all). A mapping
    ``{model_name: predict_fn}`` scores several models on the same corrupted batches (each batch
    is corrupted once) and adds a leading ``model`` column.
    """
    check_images(images)
    check(suite)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    names = list(SUITES[suite]) if corruptions is None else list(corruptions)
    for name in names:
        check(suite, name)
    several = isinstance(predict_fn, Mapping)
    predict_fns = dict(predict_fn) if several else {"": predict_fn}
    settings = [("clean", 0, 0, None)] + [
        (
            name,
            severity,
            level,
            functools.partial(
                corrupt, name=name, severity=severity, seed=seed, suite=suite
            ),
        )
        for name in names
        for level, severity in enumerate(SUITES[suite][name], start=1)
    ]
    rows = []
    for name, severity, level, transform in settings:
        for key, predictions in _predict(
            predict_fns, images, batch_size, transform
        ).items():
            row = {"model": key} if several else {}
            row |= {
                "suite": suite,
                "corruption": name,
                "severity": severity,
                "level": level,
                "n": len(images),
            }
            rows.append(row | _scores(labels, predictions))
    return pd.DataFrame(rows)


def be_rbe(
    df: pd.DataFrame,
    baseline: Mapping[str, Any] = DERMAMNIST_BASELINE,
    partial: bool = False,
) -> pd.DataFrame:
    """MedMNIST-C normalised balanced error (BE) and relative balanced error (rBE) per corruption.

    Definition as implemented by ``medmnistc.eval.Evaluator.populate_summary`` (MedMNIST-C, Di Salvo
    et al., arXiv:2406.17536), with E the balanced error (1 - balanced accuracy) and the AlexNet
    baseline of ``medmnistc/utils/baselines.py`` (``raw_scores`` already averaged over severities):

    * ``BE_c  = mean_s E(c, s) / E_AlexNet(c)``
    * ``rBE_c = (mean_s E(c, s) - E_clean) / (E_AlexNet(c) - E_AlexNet_clean)``

    ``df`` is :func:`evaluate_corruptions` output for the ``medmnistc`` suite (with a ``model``
    column, scores are computed per model); every corruption present must have all its
    severities, unless ``partial``: then each corruption averages the severities present (once
    each), which is no longer MedMNIST-C's score. A final ``mean`` row averages BE and rBE over the corruptions present (the
    package's overall scores when all 15 are present). MedMNIST-C test sets, hence the baseline,
    come from 224 px images (``medmnistc.dataset_manager`` uses ``size=224``).
    """
    if "model" in df.columns:
        parts = [
            be_rbe(rows.drop(columns="model"), baseline, partial).assign(model=key)
            for key, rows in df.groupby("model", sort=False)
        ]
        result = pd.concat(parts, ignore_index=True)
        return result[["model", *result.columns.drop("model")]]
    rows = df[df["suite"] == "medmnistc"]
    clean = rows[rows["corruption"] == "clean"]
    if len(clean) != 1:
        raise ValueError(f"need exactly one medmnistc clean row, found {len(clean)}")
    clean_error = float(clean["balanced_error"].iloc[0])
    raw, base_clean = baseline["raw_scores"], float(baseline["clean_score"])
    out = []
    for name, group in rows[rows["corruption"] != "clean"].groupby(
        "corruption", sort=False
    ):
        check("medmnistc", str(name))
        if name not in raw:
            raise ValueError(
                f"baseline has no corruption {name!r}; it has {sorted(raw)}"
            )
        expected = set(SUITES["medmnistc"][name])
        present = set(group["severity"])
        complete = present <= expected if partial else present == expected
        if not complete or len(group) != len(present):
            raise ValueError(
                f"{name!r} needs severities {'among ' if partial else ''}{sorted(expected)} once each, "
                f"got {list(group['severity'])}"
            )
        error = float(group["balanced_error"].mean())
        out.append(
            {
                "corruption": name,
                "balanced_error": error,
                "be": error / raw[name],
                "rbe": (error - clean_error) / (raw[name] - base_clean),
            }
        )
    if not out:
        raise ValueError("no medmnistc corruption rows in df")
    result = pd.DataFrame(out)
    mean = {
        "corruption": "mean",
        **result[["balanced_error", "be", "rbe"]].mean().to_dict(),
    }
    return pd.concat([result, pd.DataFrame([mean])], ignore_index=True)


def plot_corruption_curves(df: pd.DataFrame, metric: str = "accuracy") -> Figure:
    """``metric`` vs severity level (0 = clean), one line per corruption, for one model's rows."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {list(METRICS)}")
    if "model" in df.columns and df["model"].nunique() > 1:
        raise ValueError("df holds several models; plot one model's rows at a time")
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    several_suites = df["suite"].nunique() > 1
    for suite, rows in df.groupby("suite", sort=False):
        clean = rows[rows["corruption"] == "clean"]
        for name, group in rows[rows["corruption"] != "clean"].groupby(
            "corruption", sort=False
        ):
            group = pd.concat([clean, group]).sort_values("level")
            label = f"{suite}/{name}" if several_suites else str(name)
            ax.plot(group["level"], group[metric], marker="o", label=label)
    ax.set_xlabel("severity level (0 = clean)")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small", ncols=2)
    return fig


# ------------------------------------------------------------------------ robustness stage

#: Input size of the MedMNIST-C test sets behind the AlexNet baseline (``size=224``).
BASELINE_PX: int = 224


def default_cache_dir() -> Path:
    """Where corrupted test sets are cached: ``<outputs>/cache/corrupted``."""
    return info.outputs_dir() / "cache" / "corrupted"


def _selection_key(images: np.ndarray, indices: np.ndarray) -> str:
    """Digest of the selected images and their global indices (part of each cache file name)."""
    digest = hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()[:16]


def cached_corrupt(
    images: np.ndarray,
    indices: np.ndarray,
    suite: str,
    name: str,
    severity: float,
    seed: int,
    cache_dir: str | Path,
    key: str | None = None,
) -> tuple[np.ndarray, bool]:
    """:func:`corrupt` each image with its global index ``indices[i]``, cached on disk.

    The file ``<cache_dir>/<size>px/<suite>/<name>-sev<severity>-seed<seed>-<key>.npy`` is keyed
    by the images and indices (``key``, computed when None), so every model evaluated on the same
    test selection reuses it. Returns ``(corrupted, read_from_cache)``.
    """
    key = key or _selection_key(images, indices)
    path = Path(cache_dir) / f"{images.shape[1]}px" / suite / f"{name}-sev{severity}-seed{seed}-{key}.npy"
    if path.exists():
        try:
            cached = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            cached = None
        if cached is not None and cached.shape == images.shape and cached.dtype == np.uint8:
            return cached, True
    out = np.stack(
        [
            corrupt(images[i : i + 1], name, severity, seed, int(index), suite=suite)[0]
            for i, index in enumerate(indices)
        ]
    )
    atomic_write(path, lambda fh: np.save(fh, out, allow_pickle=False))
    return out, False


#: Bootstrap resamples of the test images behind the BE / rBE intervals.
BOOTSTRAP: int = 200


def balanced_errors(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """1 - balanced accuracy of each row of ``predictions`` (cells, images); the mean recall runs over the
    classes present in ``labels``, as ``sklearn.metrics.balanced_accuracy_score``."""
    present = np.unique(labels)
    correct = predictions == labels
    recall = np.stack([correct[:, labels == c].mean(1) for c in present], 1)
    return 1.0 - recall.mean(1)


def bootstrap_be_rbe(rows: pd.DataFrame, labels: np.ndarray, predictions: np.ndarray, n_resamples: int = BOOTSTRAP,
                     seed: int = 0) -> pd.DataFrame:
    """95% percentile-bootstrap intervals over test images of each corruption's balanced error, BE and rBE.

    ``rows`` are the ``medmnistc`` rows (clean first) and ``predictions`` their per-image predictions in
    the same order; every resample recomputes :func:`be_rbe` on the resampled images.
    """
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(labels), len(labels))
        resampled = rows.assign(balanced_error=balanced_errors(labels[idx], predictions[:, idx]))
        draws.append(be_rbe(resampled, partial=True).set_index("corruption")[["balanced_error", "be", "rbe"]])
    stacked = pd.concat(draws, keys=range(n_resamples))
    low = stacked.groupby(level=1, sort=False).quantile(0.025).add_suffix("_ci_low")
    high = stacked.groupby(level=1, sort=False).quantile(0.975).add_suffix("_ci_high")
    return low.join(high)


def _be_rbe_table(df: pd.DataFrame, skipped: pd.DataFrame, img_size: int, labels: np.ndarray,
                  predictions: dict[int, np.ndarray]) -> pd.DataFrame | None:
    """BE/rBE of the ``medmnistc`` rows with the AlexNet baseline, bootstrap intervals, and what it covers."""
    rows = df[df["suite"] == "medmnistc"]
    if (rows["corruption"] != "clean").sum() == 0:
        return None
    table = be_rbe(rows, partial=True)
    intervals = bootstrap_be_rbe(rows, labels, np.stack([predictions[i] for i in rows.index]))
    table = table.join(intervals, on="corruption")
    evaluated = rows.groupby("corruption")["level"].apply(list)
    notes, levels = [], []
    for name in table["corruption"]:
        if name == "mean":
            gone = sorted(set(skipped.loc[skipped["suite"] == "medmnistc", "corruption"]) - set(table["corruption"]))
            note = f"mean over {len(table) - 1} of {len(SUITES['medmnistc'])} corruptions"
            note += f"; skipped at {img_size} px: {', '.join(gone)}" if gone else ""
            levels.append("")
        else:
            done = sorted(evaluated[name])
            full = len(done) == len(SUITES["medmnistc"][name])
            note = "" if full else f"partial: levels {done} of {list(SUITES['medmnistc'][name])}, not comparable with MedMNIST-C"
            levels.append(",".join(str(level) for level in done))
        notes.append(note)
    return table.assign(levels=levels, img_size=img_size, baseline_px=BASELINE_PX, note=notes)


def _corruption_table(run: LoadedRun, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                      plan: dict[str, dict[str, list]], seed: int, cache_dir: Path, device: torch.device,
                      ) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, np.ndarray], dict[str, int], dict[str, float]]:
    """Scores of ``run`` on the clean images and on each corruption of ``plan``: the table (a clean row per suite,
    then one row per corruption and severity), the skipped cells, each row's per-image predictions (for the
    bootstrap), the cache's hits and computed sets, and the seconds spent corrupting and predicting."""
    size = int(images.shape[1])
    key = _selection_key(images, indices)
    timings = {"corrupt": 0.0, "predict": 0.0}
    predictions: dict[int, np.ndarray] = {}  # row of the table -> per-image predictions (for the bootstrap)

    def scores(batch: np.ndarray) -> dict[str, float]:
        tick = time.perf_counter()
        predicted = predict(run.model, batch, device=device, views=run.tta_views)[0].argmax(1)
        timings["predict"] += time.perf_counter() - tick
        predictions[len(rows)] = predicted
        return _scores(labels, predicted)

    rows, skipped, hits, computed = [], [], 0, 0
    clean_predictions = None
    for suite, corruptions in plan.items():
        if clean_predictions is None:
            clean = scores(images)
            clean_predictions = predictions[len(rows)]
        predictions[len(rows)] = clean_predictions
        rows.append({"suite": suite, "corruption": "clean", "severity": 0, "level": 0, "n": len(images), **clean})
        for name, values in corruptions.items():
            for severity in values:
                reason = unsupported(suite, name, severity, size, size)
                if reason is not None:
                    skipped.append({"suite": suite, "corruption": name, "severity": severity, "img_size": size, "reason": reason})
                    continue
                tick = time.perf_counter()
                corrupted, hit = cached_corrupt(images, indices, suite, name, severity, seed, cache_dir, key)
                timings["corrupt"] += time.perf_counter() - tick
                hits, computed = hits + hit, computed + (not hit)
                level = SUITES[suite][name].index(severity) + 1
                rows.append(
                    {"suite": suite, "corruption": name, "severity": severity, "level": level, "n": len(images), **scores(corrupted)}
                )
    skipped_table = pd.DataFrame(skipped, columns=["suite", "corruption", "severity", "img_size", "reason"])
    return pd.DataFrame(rows), skipped_table, predictions, {"hits": hits, "computed": computed}, timings


def _write_results(out_dir: Path, table: pd.DataFrame, skipped: pd.DataFrame, be_table: pd.DataFrame | None,
                   plan: dict[str, dict[str, list]], title: str) -> dict[str, Path]:
    """Replace ``out_dir``'s results with the tables and each suite's curves (``title`` with ``{suite}``)."""
    clear_results(out_dir)
    files = {"corruptions": out_dir / "corruptions.csv", "skipped": out_dir / "skipped.csv"}
    atomic_write(files["corruptions"], lambda fh: table.to_csv(fh, index=False))
    atomic_write(files["skipped"], lambda fh: skipped.to_csv(fh, index=False))
    if be_table is not None:
        files["be_rbe"] = out_dir / "medmnistc_be_rbe.csv"
        atomic_write(files["be_rbe"], lambda fh: be_table.to_csv(fh, index=False))
    for suite in plan:
        fig = plot_corruption_curves(table[table["suite"] == suite], "macro_f1")
        fig.axes[0].set_title(title.format(suite=suite))
        files[f"curves_{suite}"] = out_dir / f"curves_{suite}.png"
        fig.savefig(files[f"curves_{suite}"], dpi=120)
    return files


def run_robustness(
    run_dir: str | Path,
    suites: Sequence[str] = tuple(RobustnessConfig().suites),
    severities: Mapping[str, Any] | None = RobustnessConfig.severities,
    max_images: int | None = RobustnessConfig.max_images,
    seed: int = RobustnessConfig.seed,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Robustness stage of a finished run: its model on corrupted copies of its test split.

    ``max_images`` keeps a class-stratified subset of the test split (:func:`stratified_indices`
    with ``seed``); ``severities`` restricts suites as in :func:`robustness_plan`. Corrupted sets
    come from :func:`cached_corrupt` (``cache_dir`` default :func:`default_cache_dir`); cells a
    corruption cannot produce at this image size (:func:`unsupported`) are listed in
    ``skipped.csv``. Writes to ``run_dir/robustness/``: ``corruptions.csv`` (clean row per suite,
    then one row per corruption and severity), ``skipped.csv``, ``medmnistc_be_rbe.csv`` (AlexNet
    baseline, measured at 224 px) and ``curves_<suite>.png`` (macro-F1 vs level).

    Returns the tables (``corruptions``, ``skipped``, ``be_rbe`` or None), ``files``,
    ``indices`` (test images used), ``img_size``, ``cache`` (dir, hits, computed) and
    ``timings_s`` (corrupt, predict, total).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    plan = robustness_plan(suites, severities)
    for name, value, least in (("seed", seed, 0), ("max_images", 1 if max_images is None else max_images, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    device = resolve_device("auto")
    run = load_run(run_dir, device)
    arrays = D.load(D.DataConfig(**run.config["data"]))
    labels_all = arrays.labels["test"]
    indices = np.arange(len(labels_all)) if max_images is None else stratified_indices(labels_all, max_images, seed)
    images, labels = arrays.images["test"][indices], labels_all[indices]
    size = int(images.shape[1])
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    table, skipped_table, predictions, counts, timings = _corruption_table(run, images, labels, indices, plan, seed,
                                                                           cache_dir, device)
    be_table = _be_rbe_table(table, skipped_table, size, labels, predictions) if "medmnistc" in plan else None
    files = _write_results(run_dir / "robustness", table, skipped_table, be_table, plan,
                           f"{run.arch} {size} px, {{suite}} suite, n = {len(images)}")
    timings["total"] = time.perf_counter() - start
    return {
        "corruptions": table,
        "skipped": skipped_table,
        "be_rbe": be_table,
        "files": files,
        "indices": indices,
        "img_size": size,
        "cache": {"dir": cache_dir, **counts},
        "timings_s": timings,
    }
