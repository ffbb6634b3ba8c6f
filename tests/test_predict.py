"""edgekd-predict: numpy metrics against the references, the torch-free import path, bad inputs and labels,
and the end-to-end check that the CLI's metrics equal evaluate_external's on the same images."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from edge_helpers import BIN
from edgekd.core import calibration as C
from edgekd.core import metrics as M
from edgekd.core.info import CLASS_NAMES, MELANOMA, NUM_CLASSES
from edgekd.core.inputs import MIN_SIDE
from edgekd.edge import predict as P
from edgekd.stages.external import ExternalSet, deployed_metrics, evaluate_external
from edgekd.stages.operating import fit_deployment


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """The installed ``edgekd-predict`` in a fresh process."""
    return subprocess.run([str(BIN / "edgekd-predict"), *map(str, args)], capture_output=True, text=True, timeout=600)


def read_metrics(path: Path) -> dict[str, float]:
    return pd.read_csv(path).set_index("metric")["value"].to_dict()


# ------------------------------------------------------------------------------------ numpy metrics

def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities with the awkward cases: absent classes, tied scores, confidences on bin edges."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    present = rng.choice(NUM_CLASSES, size=int(rng.integers(1, NUM_CLASSES + 1)), replace=False)
    y = rng.choice(present, size=n)
    probs = rng.dirichlet(np.full(NUM_CLASSES, rng.uniform(0.2, 3.0)), size=n)
    if seed % 3 == 0:  # coarse values: many exact ties in every column
        probs = np.round(probs, 1) + 1e-3
        probs /= probs.sum(1, keepdims=True)
    if seed % 4 == 1:  # top-label confidences exactly on ECE bin edges k / 15
        k = rng.integers(3, 16, size=n)
        probs = np.full((n, NUM_CLASSES), 0.0)
        probs[np.arange(n), rng.integers(0, NUM_CLASSES, n)] = k / 15
        rest = (1 - k / 15) / (NUM_CLASSES - 1)
        probs[probs == 0] = np.repeat(rest, NUM_CLASSES - 1)
    return y, probs


@pytest.mark.parametrize("seed", range(24))
def test_numpy_metrics_equal_the_references(seed):
    y, probs = _random_case(seed)
    pred = probs.argmax(1)
    assert P.accuracy(y, pred) == pytest.approx(M.accuracy(y, pred), abs=1e-9)
    assert P.balanced_accuracy(y, pred) == pytest.approx(M.balanced_accuracy(y, pred), abs=1e-9)
    assert P.macro_f1(y, pred) == pytest.approx(M.macro_f1(y, pred, M.scored_classes(y)), abs=1e-9)
    assert P.ovr_auc(y, probs) == pytest.approx(M.ovr_auc(y, probs), abs=1e-9, nan_ok=True)
    assert P.ece(y, probs) == pytest.approx(C.ece(y, probs), abs=1e-9)
    # the CLI's whole metric set against external.deployed_metrics (sklearn / scipy references)
    fitted = {"melanoma_threshold": float(np.quantile(probs[:, MELANOMA], 0.4)),
              "abstain_threshold": float(np.quantile(probs.max(1), 0.2))}
    mine = P.edge_metrics(y, probs, fitted["melanoma_threshold"], fitted["abstain_threshold"])
    for name, fn in deployed_metrics(fitted, M.scored_classes(y)).items():
        assert mine[name] == pytest.approx(fn(y, probs), abs=1e-9, nan_ok=True), name


def test_numpy_metrics_catch_a_wrong_answer():
    """The comparison above can fail: one changed prediction or other bin edges change the numbers."""
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    pred = np.array([0, 1, 2, 1, 1, 0, 0, 2])
    conf = np.array([0.9, 0.55, 0.62, 0.71, 0.48, 0.83, 0.35, 0.66])
    probs = np.tile(((1 - conf) / (NUM_CLASSES - 1))[:, None], NUM_CLASSES)
    probs[np.arange(len(y)), pred] = conf
    wrong = pred.copy()
    wrong[0] = 3
    assert P.macro_f1(y, wrong) != pytest.approx(M.macro_f1(y, pred, M.scored_classes(y)), abs=1e-3)
    assert P.balanced_accuracy(y, wrong) != pytest.approx(M.balanced_accuracy(y, pred), abs=1e-3)
    assert P.ece(y, probs, n_bins=10) != pytest.approx(C.ece(y, probs), abs=1e-3)
    assert P.ovr_auc(y, probs[:, ::-1]) != pytest.approx(M.ovr_auc(y, probs), abs=1e-3)


def test_calibrated_probs_and_ranks():
    logits = np.random.default_rng(0).normal(0, 4, (50, NUM_CLASSES)).astype(np.float32)
    np.testing.assert_allclose(P.calibrated_probs(logits, 0.7), C.apply_temperature(logits, 0.7), atol=1e-12)
    np.testing.assert_array_equal(P.average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0])


# ----------------------------------------------------------------------------------- end to end

def auc_slack(scores: np.ndarray, y: np.ndarray, within: float) -> float:
    """How far float noise of size ``within`` can move the macro one-vs-rest AUC: each (positive, negative) pair of a
    class whose scores lie within it may swap, which moves that class's AUC by 1 / (n_pos * n_neg)."""
    shares = []
    for c in range(NUM_CLASSES):
        pos, neg = scores[y == c, c], scores[y != c, c]
        if len(pos) and len(neg):
            shares.append(np.sum(np.abs(pos[:, None] - neg[None, :]) <= within) / (len(pos) * len(neg)))
    return float(np.mean(shares))


def test_auc_slack_counts_the_pairs_that_can_swap():
    y = np.array([0, 0, 1, 1])
    scores = np.zeros((4, NUM_CLASSES))
    scores[:, 0] = [0.9, 0.5, 0.5 + 1e-9, 0.1]
    scores[:, 1] = 1 - scores[:, 0]
    assert auc_slack(scores, y, 1e-6) == pytest.approx((1 / 4 + 1 / 4) / 2)  # class 0 and class 1 see the one pair


def test_predict_cli_equals_evaluate_external(tmp_path, bundle, isic, run_dir):
    """The real CLI on an ISIC-format folder prints the metrics evaluate_external writes for the same images.

    The bundle's FP32 ONNX model and the eager PyTorch model differ by float noise (~1e-7 in the logits);
    the two sides share the val-fitted temperature and thresholds exactly. Every metric compared here is
    then equal to 1e-6 unless an image sits within that noise of a decision boundary: a near-tie between
    two classes (accuracy, balanced accuracy, F1), of a confidence and an ECE bin edge, or of a score and a
    threshold. The test measures the noise and those margins first, so a failure below is a real
    disagreement, not an ill-posed comparison. Two images' scores of a class within the noise may swap AUC
    ranks (each swap moves the AUC by 1 / (n_pos * n_neg), far above 1e-6): the AUC may differ by exactly
    what those pairs allow (:func:`auc_slack`; none on most machines, some where training rounds otherwise).
    """
    images, csv, rows = isic
    out = tmp_path / "pred.csv"
    res = cli(bundle, images, "--labels", csv, "--out", out, "--backend", "fp32")
    assert res.returncode == 0, res.stderr
    assert "60 of 60 images scored, 0 skipped" in res.stdout
    assert "first prediction" in res.stdout and "images/s" in res.stdout
    mine = read_metrics(tmp_path / "pred_metrics.csv")
    assert set(mine) == set(P.METRICS)

    run = tmp_path / "run"  # a copy: the session's run stays as training left it
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("tb", "eval"))
    table = evaluate_external(run, [ExternalSet("isic", images, csv)], n_resamples=50, device="cpu")
    ext = run / "eval" / "external" / "isic"
    probs = pd.read_csv(ext / "predictions.csv")
    eager = probs[[f"p_{c}" for c in CLASS_NAMES]].to_numpy()
    y = np.array([CLASS_NAMES.index(c) for c in probs["label"]])
    fitted = json.loads((ext / "operating_points.json").read_text())
    manifest = json.loads((bundle / "bundle.json").read_text())
    for key in ("temperature", "melanoma_threshold", "abstain_threshold"):
        assert manifest["operating_points"][key] == fitted[key]  # the same fit, bit for bit

    pred = pd.read_csv(out).set_index("image").loc[probs["image"]]
    onnx = pred[[f"p_{c}" for c in CLASS_NAMES]].to_numpy()
    noise = np.abs(onnx - eager).max()
    assert noise < 1e-5  # ONNX FP32 vs eager, after temperature scaling
    top2 = np.sort(eager, 1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 2 * noise, "an argmax near-tie: accuracy is ill-posed at this noise"
    assert all(np.array_equal(np.unique(eager[:, c]), np.sort(eager[:, c])) for c in range(NUM_CLASSES))
    assert np.abs(eager.max(1)[:, None] - np.linspace(0, 1, P.ECE_BINS + 1)).min() > noise, "a confidence on an ECE bin edge"
    assert np.abs(eager[:, MELANOMA] - fitted["melanoma_threshold"]).min() > noise
    assert np.abs(eager.max(1) - fitted["abstain_threshold"]).min() > noise

    deployed = table[table["table"] == "deployed"].set_index("metric")["value"]
    assert set(deployed.index) == set(P.METRICS) - {"n"}
    slack = {"auc": auc_slack(eager, y, 2 * noise)}
    for name, value in deployed.items():
        assert mine[name] == pytest.approx(value, abs=1e-6 + slack.get(name, 0.0), nan_ok=True), name
    assert mine["n"] == len(rows) == table["n"].iloc[0]
    # argmax metrics agree with the evaluate-stage table too (temperature does not move the argmax)
    headline = table[table["table"] == "metrics"].set_index("metric")["value"]
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert mine[name] == pytest.approx(headline[name], abs=1e-6)
    # and the per-image decisions
    assert (pred["pred"].to_numpy() == np.array(CLASS_NAMES)[eager.argmax(1)]).all()
    assert (pred["melanoma_flag"].to_numpy() == (eager[:, MELANOMA] >= fitted["melanoma_threshold"])).all()
    assert (pred["abstain"].to_numpy() == (eager.max(1) < fitted["abstain_threshold"])).all()
    assert mine["accuracy"] == pytest.approx(np.mean(eager.argmax(1) == y))


def test_onnx_file_alone_and_label_format_give_the_same_result(tmp_path, bundle, isic):
    """The .onnx file's metadata is enough, and image,label (names or indices) reads as the one-hot CSV."""
    images, csv, rows = isic
    res = cli(bundle, images, "--labels", csv, "--out", tmp_path / "a.csv")
    assert res.returncode == 0, res.stderr
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(bundle / "model.onnx", alone / "renamed.onnx")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"label": [str(i) if k % 2 else CLASS_NAMES[i].upper() for k, i in enumerate(rows["label"])],
                  "image": rows["image_id"] + ".jpg"}).to_csv(labels, index=False)
    res = cli(alone / "renamed.onnx", images, "--labels", labels, "--out", tmp_path / "b.csv")
    assert res.returncode == 0, res.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
    assert read_metrics(tmp_path / "a_metrics.csv") == read_metrics(tmp_path / "b_metrics.csv")


def test_int8_agrees_with_fp32(tmp_path, bundle, isic):
    """INT8 follows FP32: same predictions on nearly every image, log-probabilities close relative to their spread.

    The issue's bar is >= 99% agreement. Trained ResNet-18 bundles meet it on the 2,005 test images
    (99.2% at 28 px after 6 epochs, 99.1% at 64 px after 4; ``bundle.json`` ``backends`` records it for every
    export). The 20-second model of these tests has small margins between classes and was measured at
    97.8% on the full test split (96.7% on these 60), so the bar here is 95%: still far above what a broken
    quantisation gives. The model predicts several classes (asserted), so agreement is not trivial, and the
    log-probability check catches an INT8 model that is off even where the argmax survives.
    """
    images, csv, _ = isic
    for backend in ("fp32", "int8"):
        res = cli(bundle, images, "--out", tmp_path / f"{backend}.csv", "--backend", backend)
        assert res.returncode == 0, res.stderr
        assert f"{backend} model" in res.stdout
    fp32, int8 = (pd.read_csv(tmp_path / f"{b}.csv") for b in ("fp32", "int8"))
    assert fp32["pred"].nunique() >= 4, "the FP32 model predicts (nearly) one class: agreement would mean little"
    assert (fp32["pred"] == int8["pred"]).mean() >= 0.95
    cols = [f"p_{c}" for c in CLASS_NAMES]
    logp32, logp8 = np.log(fp32[cols].to_numpy()), np.log(int8[cols].to_numpy())
    assert np.abs(logp8 - logp32).max() < 0.25 * (logp32 - logp32.mean(1, keepdims=True)).std()
    backends = json.loads((bundle / "bundle.json").read_text())["backends"]
    assert backends["onnx_int8"]["argmax_agreement_vs_eager"] >= 0.95  # on the run's 210 test images


def test_predict_imports_no_torch(tmp_path, bundle, isic):
    """A full prediction run with labels in a fresh interpreter loads no torch, scipy, sklearn or pandas."""
    images, csv, _ = isic
    code = (f"import sys; from edgekd.edge.predict import main; rc = main([{str(bundle)!r}, {str(images)!r}, '--labels', {str(csv)!r}, "
            f"'--out', {str(tmp_path / 'p.csv')!r}]); "
            "print('RC', rc, 'LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'sklearn', 'pandas'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert "RC 0 LOADED []" in res.stdout, res.stdout + res.stderr
    assert (tmp_path / "p_metrics.csv").is_file()


# ------------------------------------------------------------------------------------- bad images

def _png16(array: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, data_dir, isic):
    """One good image, every convertible oddity made from it, and every unreadable kind."""
    folder = tmp_path_factory.mktemp("bad")
    src = isic[0] / sorted(p.name for p in isic[0].iterdir())[0]
    jpeg = src.read_bytes()
    rgb = Image.open(src).convert("RGB")
    rgb.save(folder / "good.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    rgb.convert("L").save(folder / "grey.png")
    rgba = rgb.copy()
    rgba.putalpha(90)
    rgba.save(folder / "rgba.png")
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(grey16).save(folder / "grey16.png")
    (folder / "rgb16.png").write_bytes(_png16(np.asarray(rgb, dtype=np.uint16) * 257))
    Image.new("RGB", (1, 1), (200, 120, 90)).save(folder / "one_pixel.png")
    rgb.resize((MIN_SIDE - 1, 40)).save(folder / "too_small.png")
    (folder / "notes.jpg").write_text("this is a text file with an image suffix\n")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 6 // 10])
    garbage = np.random.default_rng(0).integers(0, 256, len(jpeg) // 2, dtype=np.uint8).tobytes()
    (folder / "corrupt.jpg").write_bytes(jpeg[:700] + garbage)
    (folder / "README.txt").write_text("not an image suffix: ignored\n")
    return folder


def test_bad_images_get_messages_and_the_batch_goes_on(tmp_path, bundle, bad_folder):
    out = tmp_path / "p.csv"
    res = cli(bundle, bad_folder, "--out", out, "--batch", "3")
    assert res.returncode == 0, res.stderr
    skipped = {"notes": "not an image Pillow can read", "truncated": "corrupt or truncated image",
               "corrupt": "corrupt or truncated image", "one_pixel": "shorter side must be at least",
               "too_small": "shorter side must be at least"}
    converted = {"cmyk": "CMYK converted to RGB", "grey": "greyscale converted to RGB", "rgba": "alpha channel dropped",
                 "grey16": "16-bit greyscale scaled to 8 bit", "rgb16": "16-bit PNG reduced to 8 bit"}
    for name, message in skipped.items():
        assert f"skipped {bad_folder / name}" in res.stderr and message in res.stderr, name
    for name, message in converted.items():
        assert f"note {bad_folder / name}" in res.stderr and message in res.stderr, name
    assert "6 of 11 images scored, 5 skipped (unreadable), 1 folder files ignored" in res.stdout
    table = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert len(table) == 11
    for name, message in skipped.items():
        assert table.loc[name, "note"].startswith("skipped: ") and message in table.loc[name, "note"]
        assert table.loc[name, "pred"] == ""
    for name, message in converted.items():
        assert message in table.loc[name, "note"] and table.loc[name, "pred"] in CLASS_NAMES
    assert table.loc["good", "note"] == ""
    cols = [f"p_{c}" for c in CLASS_NAMES]
    probs = table[cols].replace("", np.nan).astype(float)
    # alpha dropped and 16-bit scaled back give the very same pixels as the 8-bit RGB original
    np.testing.assert_allclose(probs.loc["rgba"], probs.loc["good"], atol=1e-6)
    np.testing.assert_allclose(probs.loc["rgb16"], probs.loc["good"], atol=1e-6)
    np.testing.assert_allclose(probs.loc["grey16"], probs.loc["grey"], atol=1e-6)


def test_nothing_readable_exits_1(tmp_path, bundle, bad_folder):
    res = cli(bundle, bad_folder / "notes.jpg", bad_folder / "one_pixel.png", "--out", tmp_path / "p.csv")
    assert res.returncode == P.EXIT_NOTHING_SCORED
    assert "0 of 2 images scored, 2 skipped" in res.stdout


# ------------------------------------------------------------------------------------- bad labels

LABEL_CASES = {
    "unknown column": ("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC,SCC\n{a},1,0,0,0,0,0,0,0\n", "unknown columns ['SCC']"),
    "missing column": ("image,MEL,NV,BCC,AKIEC,BKL,DF\n{a},1,0,0,0,0,0\n", "missing columns ['VASC']"),
    "no image column": ("name,label\n{a},mel\n", "exactly one 'image' column"),
    "unknown class": ("image,label\n{a},mel\n{b},melanomaX\n", "unknown classes"),
    "index out of range": ("image,label\n{a},7\n{b},mel\n", "line 2 ({a}: 7)"),
    "not one-hot": ("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n{a},1,1,0,0,0,0,0\n{b},0.5,0,0,0,0,0,0\n", "line 3 ({b}: 0.5,0,0,0,0,0,0)"),
    "duplicate id": ("image,label\n{a},mel\n{b},nv\n{a}.jpg,nv\n", "duplicate image ids: line 4 ({a}, first on line 2)"),
    "short row": ("image,label\n{a},mel,extra\n", "rows with 2 fields expected: line 2"),
    "empty": ("", "is empty"),
    "header only": ("image,label\n", "has a header but no rows"),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_bad_labels_fail_before_inference(case, tmp_path, bundle, isic, monkeypatch, capsys):
    images, _, rows = isic
    a, b = rows["image_id"].iloc[0], rows["image_id"].iloc[1]
    text, message = (part.format(a=a, b=b) for part in LABEL_CASES[case])
    labels = tmp_path / "labels.csv"
    labels.write_text(text)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded before the labels were checked")

    monkeypatch.setattr(P, "read_image", no_decoding)
    assert P.main([str(bundle), str(images), "--labels", str(labels), "--out", str(tmp_path / "p.csv")]) == P.EXIT_USAGE
    err = capsys.readouterr().err
    assert "edgekd-predict: error: labels CSV" in err and message in err, err
    assert not (tmp_path / "p.csv").exists()


def test_labels_and_images_missing_on_either_side(tmp_path, bundle, isic, monkeypatch, capsys):
    images, csv, rows = isic
    table = pd.read_csv(csv)
    table = pd.concat([table.iloc[2:], table.iloc[:1].assign(image="ISIC_9999999")])  # drops 2 rows, adds a stranger
    labels = tmp_path / "labels.csv"
    table.to_csv(labels, index=False)
    monkeypatch.setattr(P, "read_image", lambda *a, **k: pytest.fail("decoded before the labels were checked"))
    assert P.main([str(bundle), str(images), "--labels", str(labels), "--out", str(tmp_path / "p.csv")]) == P.EXIT_USAGE
    err = capsys.readouterr().err
    first, second = sorted(rows["image_id"].iloc[:2])
    assert f"2 images have no row in {labels}: " in err and first in err and second in err
    assert f"1 rows of {labels} have no image among the inputs: ISIC_9999999" in err


def test_bad_arguments_and_bundles(tmp_path, bundle, isic, capsys):
    images, csv, _ = isic
    out = str(tmp_path / "p.csv")
    assert P.main([str(bundle), str(tmp_path / "nowhere"), "--out", out]) == P.EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert P.main([str(tmp_path), str(images), "--out", out]) == P.EXIT_USAGE
    assert "not a bundle folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert P.main([str(bundle), str(empty), "--out", out]) == P.EXIT_USAGE
    assert "no image files" in capsys.readouterr().err
    clash = tmp_path / "clash"
    clash.mkdir()
    first = sorted(images.iterdir())[0]
    shutil.copy(first, clash / f"{first.stem}.png")
    assert P.main([str(bundle), str(images), str(clash), "--out", out]) == P.EXIT_USAGE
    assert f"1 image ids are used by more than one file: {first.stem}" in capsys.readouterr().err

    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    with open(damaged / "model.onnx", "r+b") as fh:
        fh.seek(-16, io.SEEK_END)
        fh.write(b"\0" * 16)
    assert P.main([str(damaged), str(images), "--out", out]) == P.EXIT_USAGE
    assert "does not match its sha256" in capsys.readouterr().err
    shutil.copy(bundle / "model.onnx", damaged / "model.onnx")
    manifest = json.loads((bundle / "bundle.json").read_text())
    del manifest["files"]["model_int8.onnx"]
    (damaged / "bundle.json").write_text(json.dumps(manifest))
    assert P.main([str(damaged), str(images), "--out", out, "--backend", "int8"]) == P.EXIT_USAGE
    assert "bundle.json was edited after export" in capsys.readouterr().err
    manifest["manifest_sha256"] = P.manifest_digest(manifest)  # the edit resealed: the later checks still refuse it
    (damaged / "bundle.json").write_text(json.dumps(manifest))
    assert P.main([str(damaged), str(images), "--out", out, "--backend", "int8"]) == P.EXIT_USAGE
    assert "has no int8 model" in capsys.readouterr().err
    manifest["onnx_metadata"]["edgekd.mean"] = "[0.5, 0.5, 0.5]"
    manifest["manifest_sha256"] = P.manifest_digest(manifest)
    (damaged / "bundle.json").write_text(json.dumps(manifest))
    assert P.main([str(damaged), str(images), "--out", out]) == P.EXIT_USAGE
    assert "onnx_metadata disagrees with the metadata of" in capsys.readouterr().err
    assert not Path(out).exists()
    with pytest.raises(SystemExit) as exit_info:
        P.main([str(bundle), str(images), "--batch", "0"])
    assert exit_info.value.code == P.EXIT_USAGE
    res = cli(bundle, images, "--labels", tmp_path / "none.csv")
    assert res.returncode == P.EXIT_USAGE and "cannot be read" in res.stderr


def test_fit_deployment_matches_the_thresholds_predict_applies():
    """The thresholds the CLI applies are the ones fit_deployment fits (sensitivity / coverage met on val)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, NUM_CLASSES, 400)
    logits = rng.normal(0, 2, (400, NUM_CLASSES)) + 2.5 * np.eye(NUM_CLASSES)[y]
    fitted = fit_deployment(logits, y, 0.8)
    probs = P.calibrated_probs(logits, fitted["temperature"])
    values = P.edge_metrics(y, probs, fitted["melanoma_threshold"], fitted["abstain_threshold"])
    assert values["mel_sensitivity"] >= 0.9 and values["coverage"] >= 0.8
    assert values["coverage"] < 0.8 + 2 / 400  # the largest threshold that keeps 80%, not a lower one
