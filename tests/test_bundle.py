"""edgekd-export: the bundle's files, hashes and modes, the values fitted on val, the test metrics, the
ONNX metadata that makes each model file self-describing, and the generated model card."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from edgekd.core import calibration as C
from edgekd.core import metrics as M
from edgekd.core.inference import load_run, predict, read_config
from edgekd.core.info import CLASS_LONG_NAMES, CLASS_NAMES, MELANOMA
from edgekd.core.preprocess import RECIPE, to_input
from edgekd.core.provenance import file_digest, git_commit
from edgekd.stages import data as D
from edgekd.stages import evaluate as V
from edgekd.stages import export as B
from edgekd.stages import operating as OP


@pytest.fixture(scope="module")
def manifest(bundle):
    return json.loads((bundle / "bundle.json").read_text())


def test_files_hashes_and_modes(bundle, manifest):
    assert sorted(p.name for p in bundle.iterdir()) == ["MODEL_CARD.md", "bundle.json", "model.onnx", "model_int8.onnx"]
    assert sorted(manifest["files"]) == ["MODEL_CARD.md", "model.onnx", "model_int8.onnx"]
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_digest(bundle / name) and entry["bytes"] == (bundle / name).stat().st_size
    assert (bundle / "model_int8.onnx").stat().st_size < 0.4 * (bundle / "model.onnx").stat().st_size
    mask = os.umask(0)
    os.umask(mask)
    for path in bundle.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    assert bundle.stat().st_mode & 0o777 == 0o777 & ~mask
    assert not list(bundle.parent.glob(f".{bundle.name}.tmp-*"))


def test_manifest_describes_the_run(bundle, manifest, run_dir):
    cfg = read_config(run_dir)
    run = manifest["source_run"]
    assert (manifest["format"], manifest["version"], manifest["arch"]) == (B.FORMAT, B.VERSION, cfg["arch"])
    assert (run["run_id"], run["seed"], run["path"], run["kd"]) == (run_dir.name, 0, str(run_dir.resolve()), "none")
    assert run["git"] == git_commit() and run["best_pt_sha256"] == file_digest(run_dir / "best.pt")
    assert manifest["tta"] is False and run["tta_views"] == 1
    assert manifest["preprocess"] == {**RECIPE, "size": 28}
    assert [c["name"] for c in manifest["classes"]] == list(CLASS_NAMES)
    assert [c["long_name"] for c in manifest["classes"]] == [CLASS_LONG_NAMES[c] for c in CLASS_NAMES]
    assert manifest["data"]["subset"] == cfg["data"]["subset"] and "CC BY-NC 4.0" in manifest["data"]["licence"]
    assert manifest["robustness"] == B.NOT_MEASURED and manifest["latency"] == B.NOT_MEASURED


def test_fitted_values_and_test_metrics(manifest, run_dir):
    """Temperature and thresholds are fitted on val as the evaluate stage does; test numbers use them unchanged."""
    pred = V.load_predictions(run_dir)
    ops = manifest["operating_points"]
    T = C.fit_temperature(pred["val_logits"], pred["val_labels"])
    assert ops["temperature"] == T and ops["fitted_on"] == "val"
    y_val, probs_val = pred["val_labels"], C.apply_temperature(pred["val_logits"], T)
    assert ops["melanoma_threshold"] == M.melanoma_threshold(y_val, probs_val, V.TARGET_SENSITIVITY)
    assert M.screening_report(y_val, probs_val, ops["melanoma_threshold"])["sensitivity"] >= V.TARGET_SENSITIVITY
    conf = probs_val.max(1)
    assert np.mean(conf >= ops["abstain_threshold"]) >= 0.9 > np.mean(conf > ops["abstain_threshold"])
    assert ops["val"]["coverage"] == np.mean(conf >= ops["abstain_threshold"])

    y, probs = pred["test_labels"], C.apply_temperature(pred["test_logits"], T)
    test = manifest["test"]
    assert test["n"] == len(y) and test["n_resamples"] == 200
    expected = V.metrics_table(y, probs, 200, 0)
    pd.testing.assert_frame_equal(pd.DataFrame(test["metrics"]), expected, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(pd.DataFrame(test["calibration"]), C.calibration_report(y, pred["test_logits"], T),
                                  check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(pd.DataFrame(manifest["per_class"]), M.per_class_table(y, probs), check_dtype=False)
    screen = M.screening_report(y, probs, ops["melanoma_threshold"])
    assert test["operating"]["mel_sensitivity"] == screen["sensitivity"]
    assert test["operating"]["coverage"] == np.mean(probs.max(1) >= ops["abstain_threshold"])
    before, after = test["calibration"]
    assert (before["stage"], after["stage"]) == ("before", "after") and after["temperature"] == T


def test_onnx_files_are_self_describing(bundle, manifest, run_dir):
    """Each .onnx carries the essentials in its metadata, has a dynamic batch and matches eager PyTorch."""
    ops = manifest["operating_points"]
    arrays = D.load(D.DataConfig(**read_config(run_dir)["data"]))
    x = to_input(arrays.images["val"][:5])
    saved = V.load_predictions(run_dir)["val_logits"][:5]
    for precision, name in B.MODEL_FILES.items():
        model = onnx.load(str(bundle / name))
        props = {p.key: p.value for p in model.metadata_props}
        assert props == {**manifest["onnx_metadata"], "edgekd.precision": precision}
        assert json.loads(props["edgekd.class_names"]) == list(CLASS_NAMES)
        assert int(props["edgekd.input_size"]) == 28 and props["edgekd.tta"] == "false"
        assert json.loads(props["edgekd.mean"]) == list(RECIPE["mean"]) and json.loads(props["edgekd.std"]) == list(RECIPE["std"])
        assert json.loads(props["edgekd.scale"]) == RECIPE["scale"] and "centre square" in props["edgekd.crop"]
        for key in ("temperature", "melanoma_threshold", "abstain_threshold"):
            assert float(props[f"edgekd.{key}"]) == ops[key]
        assert int(props["edgekd.melanoma_class_index"]) == MELANOMA and "Not a medical device" in props["edgekd.notice"]
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 28, 28]
        session = ort.InferenceSession(str(bundle / name), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(session.run(None, {"input": x[:1]})[0], logits[:1], atol=1e-5)
        if precision == "fp32":
            np.testing.assert_allclose(logits, saved, atol=1e-4)
    backends = manifest["backends"]
    assert backends["onnx_fp32"]["argmax_agreement_vs_eager"] == 1.0
    assert backends["onnx_fp32"]["max_abs_logit_diff_vs_eager"] < 1e-4
    assert 0 < backends["onnx_int8"]["max_abs_logit_diff_vs_eager"] < 1.0


def test_model_card_is_generated_from_the_manifest(bundle, manifest):
    card = (bundle / "MODEL_CARD.md").read_text()
    assert card == B.model_card(manifest)
    for text in ("Not a medical device", "CC BY-NC 4.0", "HAM10000", "DermaMNIST", "trained and tested on a subset",
                 "## Robustness\n\nnot measured yet", "## Latency\n\nnot measured yet", "edgekd-predict", "95%"):
        assert text in card, text
    metrics = {r["metric"]: r for r in manifest["test"]["metrics"]}
    acc = metrics["accuracy"]
    assert f"| accuracy | {acc['value']:.3f} | {acc['ci_low']:.3f} to {acc['ci_high']:.3f} |" in card
    assert f"T = {manifest['operating_points']['temperature']:.4f}" in card
    weakest = min((r for r in manifest["per_class"] if r["support"] > 0), key=lambda r: r["f1"])
    assert f"Weakest classes (lowest F1): {weakest['class']} ({weakest['f1']:.3f})" in card


def test_stage_summaries_reach_the_card(tmp_path, manifest):
    """Robustness and latency come from the stages' CSVs when they exist."""
    run = tmp_path / "run"
    (run / "robustness").mkdir(parents=True)
    (run / "efficiency").mkdir()
    assert B.robustness_summary(run) == B.NOT_MEASURED and B.latency_summary(run, 28) == B.NOT_MEASURED
    pd.DataFrame({"suite": ["source"] * 3, "corruption": ["clean", "jpeg", "jpeg"], "severity": [0, 90, 50],
                  "level": [0, 1, 2], "n": [70] * 3, "accuracy": [0.6, 0.5, 0.4], "macro_f1": [0.5, 0.45, 0.3],
                  "balanced_error": [0.5] * 3}).to_csv(run / "robustness" / "corruptions.csv", index=False)
    pd.DataFrame({"backend": ["ort_fp32", "ort_int8", "ort_int8", "eager"], "device": ["cpu"] * 4, "size": [28, 28, 224, 28],
                  "batch": [1, 1, 1, 1], "threads": [2] * 4, "p50_ms": [2.0, 0.5, 9.0, 7.0]}).to_csv(run / "efficiency" / "latency.csv", index=False)
    robust, latency = B.robustness_summary(run), B.latency_summary(run, 28)
    assert robust["source"] == {"n_images": 70, "clean_macro_f1": 0.5, "mean_corrupted_macro_f1": pytest.approx(0.375),
                                "cells": 2, "worst": "jpeg (severity 50)", "worst_macro_f1": 0.3}
    assert latency["p50_ms"] == {"ort_fp32_batch1": 2.0, "ort_int8_batch1": 0.5} and latency["threads"] == 2
    card = B.model_card({**manifest, "robustness": robust, "latency": latency})
    assert "| source | 70 | 0.500 | 0.375 | jpeg (severity 50) | 0.300 |" in card
    assert "| ort_int8_batch1 | 0.500 |" in card and "not measured yet" not in card


def test_abstain_threshold():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    assert OP.abstain_threshold(conf, 0.9) == 0.1
    assert OP.abstain_threshold(conf, 0.5) == 0.5
    assert OP.abstain_threshold(conf, 1.0) == 0.05
    ties = np.array([0.8, 0.5, 0.5, 0.5, 0.2])
    assert OP.abstain_threshold(ties, 0.4) == 0.5  # ties are kept together: coverage 0.8 >= 0.4
    seventy = np.linspace(1, 0.3, 70)
    assert np.sum(seventy >= OP.abstain_threshold(seventy, 0.9)) == 63  # 0.9 * 70 is 63.000000000000007 in floats
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="coverage"):
            OP.abstain_threshold(conf, bad)


def test_tta_run_gets_single_view_numbers(tmp_path, run_dir):
    """For a run with test-time augmentation the bundle's logits are recomputed with one view."""
    run = load_run(run_dir)
    arrays = D.load(D.DataConfig(**run.config["data"]))
    saved = V.load_predictions(run_dir)
    plain = B.single_view_logits(run, arrays)
    assert all(np.array_equal(plain[s], saved[f"{s}_logits"]) for s in ("val", "test"))

    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tb", "eval"))
    cfg = read_config(copy)
    cfg["train"]["tta"] = True
    (copy / "run_config.json").write_text(json.dumps(cfg))
    tta = load_run(copy)
    assert len(tta.tta_views) == 8
    np.savez(copy / "predictions.npz", **{f"{s}_logits": predict(tta.model, arrays.images[s], views=tta.tta_views)[0]
                                          for s in ("val", "test")}, val_labels=saved["val_labels"], test_labels=saved["test_labels"])
    single = B.single_view_logits(tta, arrays)
    for s in ("val", "test"):
        np.testing.assert_allclose(single[s], saved[f"{s}_logits"], atol=1e-5)
        assert not np.allclose(single[s], V.load_predictions(copy)[f"{s}_logits"], atol=1e-3)


def test_export_refuses_to_clobber_and_reports_bad_runs(tmp_path, run_dir, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a bundle"):
        B.run_export(run_dir, other)
    assert (other / "keep.txt").read_text() == "mine"
    assert B.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]) == 2
    assert "is not a finished run" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit):
        B.main([str(run_dir), "--out", str(tmp_path / "b"), "--coverage", "0"])
    assert os.listdir(tmp_path) == ["notes"]
