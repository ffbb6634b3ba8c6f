"""External test sets: a trained run scored on labelled images from outside its training data.

A profile lists them as ``external: [{name: ..., images: FOLDER, labels: CSV}]``; the labels CSV is ISIC
one-hot or ``image,label`` and is read, like the images, by :mod:`edgekd.core.inputs` (the same code as
``edgekd-predict``). :func:`evaluate_external` scores a run on each set at the run's input size with its
test-time views and writes, per set, to ``<run_dir>/eval/external/<name>/``:

* ``metrics.csv``: :func:`edgekd.stages.evaluate.metrics_table` on the softmax probabilities, as the
  evaluate stage's ``eval/metrics.csv`` (same metrics, same bootstrap), so the two can be compared; a set
  without some classes has its macro-F1 over the classes in its labels (:func:`edgekd.core.metrics.scored_classes`);
* ``calibration.csv``: before / after temperature scaling with the temperature fitted on val;
* ``per_class.csv``: precision, recall, F1, support;
* ``deployed.csv``: what ``edgekd-predict`` prints for these images with the run's bundle: metrics of the
  temperature-scaled probabilities at the operating points fitted on val (:func:`edgekd.stages.operating.fit_deployment`),
  computed with the reference implementations of :mod:`edgekd.core.metrics` / :mod:`edgekd.core.calibration`, with
  bootstrap intervals;
* ``operating_points.json`` (the fitted values) and ``predictions.csv`` (calibrated probabilities per image).

Unlike ``edgekd-predict``, which skips unreadable files, an external set with an unreadable image is an
error: an evaluation must say exactly which images it scored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

from edgekd.core import calibration as C
from edgekd.core import metrics as M
from edgekd.core.config import COVERAGE, ExternalSet
from edgekd.core.files import clear_results
from edgekd.core.inference import load_run, predict, resolve_device
from edgekd.core.info import CLASS_NAMES
from edgekd.core.inputs import UnreadableImage, find_images, image_id, match_labels, read_image, read_labels
from edgekd.stages import evaluate as V
from edgekd.stages.operating import fit_deployment, operating_report

#: Folder of the external results inside a run folder.
EXTERNAL_DIR: str = f"{V.EVAL_DIR}/external"
#: Operating metrics of ``deployed.csv`` (the rest are ``metrics.HEADLINE`` entries and ECE).
OPERATING: tuple[str, ...] = ("mel_sensitivity", "mel_specificity", "coverage", "selective_accuracy")


def labelled_files(ext: ExternalSet) -> tuple[list[Path], np.ndarray]:
    """The set's image files (folder order) and their labels, without decoding an image: what the runner checks
    before any work. Raises ValueError (the set named) for a missing folder or file, a labels problem, an image
    without a label or a label without an image."""
    ext.check()  # its own message names the set
    try:
        files, _ = find_images([ext.images])
        labels = match_labels([image_id(p.name) for p in files], read_labels(ext.labels), str(ext.labels))
    except ValueError as exc:
        raise ValueError(f"external set {ext.name!r}: {exc}") from None
    return files, labels


def load_external(ext: ExternalSet, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images (N, size, size, 3) through the training recipe, their labels and image ids (folder order).

    Raises ValueError (the set named) for a labels problem, an image without a label or a label without
    an image, or any unreadable image.
    """
    files, labels = labelled_files(ext)
    ids = [image_id(p.name) for p in files]
    images, unreadable = [], []
    for path in files:
        try:
            images.append(read_image(path, size)[0])
        except UnreadableImage as exc:
            unreadable.append(f"{path.name} ({exc})")
    if unreadable:
        raise ValueError(f"external set {ext.name!r}: {len(unreadable)} images cannot be read: {'; '.join(unreadable[:10])}")
    return np.stack(images), labels, ids


def deployed_metrics(fitted: Mapping[str, float], labels: np.ndarray = M.LABELS) -> dict[str, M.MetricFn]:
    """``edgekd-predict``'s metrics as ``fn(y, calibrated probs)`` with the reference implementations, at ``fitted``
    (macro-F1 over ``labels``: :func:`edgekd.core.metrics.scored_classes` of the set)."""
    reference = M.headline(labels)
    fns: dict[str, M.MetricFn] = {k: reference[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc")}
    fns["ece"] = C.ece
    for key in OPERATING:
        fns[key] = lambda y, p, key=key: operating_report(y, p, dict(fitted))[key]
    return fns


def deployed_table(y: np.ndarray, probs: np.ndarray, fitted: Mapping[str, float], n_resamples: int, seed: int) -> pd.DataFrame:
    """:func:`deployed_metrics` of calibrated ``probs`` with percentile bootstrap intervals (same resamples per metric;
    macro-F1 over the classes of ``y``, :func:`edgekd.core.metrics.scored_classes`). The headline metrics come from
    :func:`edgekd.core.metrics.bootstrap_table` and the operating ones from one report per resample: the values each
    metric's own bootstrap gives, computed once."""
    labels = M.scored_classes(y)
    headline = M.bootstrap_table(y, probs, n_resamples, seed, labels).set_index("metric")
    found = {name: tuple(row) for name, row in headline[["value", "ci_low", "ci_high"]].iterrows()}

    def operating(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
        report = operating_report(yy, pp, dict(fitted))
        return np.array([report[k] for k in OPERATING])

    low, high = M.percentile_bootstrap(y, probs, operating, n_resamples, seed, 0.95)
    found |= dict(zip(OPERATING, zip(operating(y, probs), low, high, strict=True), strict=True))
    rows = []
    for name, fn in deployed_metrics(fitted, labels).items():
        value, ci_low, ci_high = found[name] if name in found else M.bootstrap_ci(y, probs, fn, n_resamples, seed)
        rows.append({"metric": name, "value": float(value), "ci_low": float(ci_low), "ci_high": float(ci_high)})
    return pd.DataFrame(rows)


def evaluate_external(
    run_dir: str | Path,
    sets: Sequence[ExternalSet],
    n_resamples: int = 1000,
    seed: int = 0,
    coverage: float = COVERAGE,
    device: str = "auto",
) -> pd.DataFrame:
    """Score the finished run ``run_dir`` on each external set and write its tables (see the module docstring).

    The temperature and operating points are fitted on the run's validation logits (``predictions.npz``),
    as the evaluate stage and the run's bundle do. Returns one long table: ``set, n, table`` (``metrics`` or
    ``deployed``), ``metric, value, ci_low, ci_high``. Call it after the evaluate stage, which clears ``eval/``.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir, resolve_device(device))
    saved = V.load_predictions(run_dir)
    fitted = fit_deployment(saved["val_logits"], saved["val_labels"], coverage)
    frames = []
    for ext in sets:
        images, y, ids = load_external(ext, run.size)
        logits = predict(run.model, images, views=run.tta_views)[0]
        probs, probs_cal = softmax(logits.astype(float), axis=1), C.apply_temperature(logits, fitted["temperature"])
        out = run_dir / EXTERNAL_DIR / ext.name
        clear_results(out)
        metrics = V.metrics_table(y, probs, n_resamples, seed, M.scored_classes(y))
        deployed = deployed_table(y, probs_cal, fitted, n_resamples, seed)
        metrics.to_csv(out / "metrics.csv", index=False)
        deployed.to_csv(out / "deployed.csv", index=False)
        C.calibration_report(y, logits, fitted["temperature"]).to_csv(out / "calibration.csv", index=False)
        M.per_class_table(y, probs).to_csv(out / "per_class.csv", index=False)
        pd.DataFrame({"image": ids, "label": [CLASS_NAMES[i] for i in y], "pred": [CLASS_NAMES[i] for i in probs_cal.argmax(1)],
                      **{f"p_{c}": probs_cal[:, i] for i, c in enumerate(CLASS_NAMES)}}).to_csv(out / "predictions.csv", index=False)
        (out / "operating_points.json").write_text(json.dumps({**fitted, "tta_views": len(run.tta_views), "images": str(ext.images),
                                                               "labels": str(ext.labels)}, indent=2))
        for table, frame in (("metrics", metrics), ("deployed", deployed)):
            frames.append(frame.assign(set=ext.name, n=len(y), table=table))
    columns = ["set", "n", "table", "metric", "value", "ci_low", "ci_high"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
