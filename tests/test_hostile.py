"""Hostile input against every command: one test (or a parametrised family) for each numbered case of the safety
issue, each of which failed on the code before it (d65240a).

Nothing a user points the tools at is destroyed (cases 1-3 and edgekd-publish), an edited or damaged bundle never
gives a silent answer (4-6), errors are named with the documented exit codes (7-10), and the smaller items (11)
and the security hygiene hold. Round two (issue 33, the last section; each of its tests failed on 1792f56): --force never
overwrites a command's own inputs, export replaces only a bundle whose hashes verify, a bundle cannot lie about its
model, macro-F1 covers the classes present, and damaged inputs are named with exit 2. Fixtures are made in ``tmp_path``; the bundle is ``fake_bundle_dir``, exported from a
run on synthetic data, so no trained model is needed. The CLIs run as ``python -m edgekd.<module>`` so that they use
the ``edgekd`` on ``sys.path`` (``PYTHONPATH`` first): the same tests then run against an older checkout.
"""

from __future__ import annotations

import builtins
import csv
import dataclasses
import fcntl
import hashlib
import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image, ImageFile
from sklearn.metrics import f1_score

from edgekd.core import calibration as C
from edgekd.core import files as F
from edgekd.core import info
from edgekd.core import metrics as M
from edgekd.core.info import CLASS_NAMES
from edgekd.core.models import create_model
from edgekd.core.provenance import git_commit
from edgekd.edge import predict as P
from edgekd.pipeline import bench, publish
from edgekd.pipeline import plan as PL
from edgekd.pipeline import runner as R
from edgekd.pipeline.kernels import IPCKernelManager
from edgekd.stages import data as D
from edgekd.stages import export as B
from edgekd.stages import train as T

# ======================================================================================================================
# Cases 1, 4, 5, 6, 9 (bundle): edgekd-export and the bundle edgekd-predict opens.
#
# Hostile bundles: edgekd-export replaces only a folder it wrote itself, and edgekd-predict refuses an edited,
# damaged, inconsistent or out-of-range bundle with exit 2 and a message, before it scores any image.
#
# The CLIs run as ``python -m edgekd.stages.export`` / ``python -m edgekd.edge.predict`` so that they use the ``edgekd``
# on ``sys.path`` (``PYTHONPATH`` first), which lets these tests run against an older checkout too.
# Every edit is made on a copy of the session's synthetic-data bundle (``fake_bundle_dir``).
# ======================================================================================================================


Edit = Callable[[Path], Path]
OPERATING_POINTS: tuple[str, ...] = ("temperature", "melanoma_threshold", "abstain_threshold")


def run_module(module: str, *args: str | Path) -> subprocess.CompletedProcess:
    """``python -m module args`` in a fresh process (environment inherited)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=600)


def export_cli(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str]:
    """``edgekd-export args`` run by its ``main`` in this process: its exit code and stderr. The refusals below come
    before any work, so a fresh interpreter would add only its imports (torch, timm, onnx: seconds) to each case;
    the command itself as a process is tested where the synthetic bundle is made (:mod:`fake_bundle`)."""
    capsys.readouterr()
    rc = B.main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.fixture
def bundle(tmp_path: Path, fake_bundle_dir: Path) -> Path:
    """A private copy of the synthetic-data bundle."""
    return Path(shutil.copytree(fake_bundle_dir, tmp_path / "bundle"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64 random RGB PNG."""
    path = tmp_path_factory.mktemp("image") / "lesion.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def read(folder: Path) -> dict:
    return json.loads((folder / "bundle.json").read_text())


def write(folder: Path, manifest: dict, reseal: bool = True) -> None:
    """Write ``bundle.json``; ``reseal``: with ``manifest_sha256`` recomputed, as the issue specifies it."""
    if reseal:
        body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
        manifest = {**body, "manifest_sha256": hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()}
    (folder / "bundle.json").write_text(json.dumps(manifest, indent=2))


def relist(folder: Path, manifest: dict, name: str) -> None:
    """Record the current sha256 and size of ``folder/name`` in ``manifest``."""
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def set_model_metadata(path: Path, **props: str | None) -> dict[str, str]:
    """Set (None: delete) ``edgekd.<key>`` metadata props of the ONNX file ``path``; returns all its props."""
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    for key, value in props.items():
        if value is None:
            del meta[f"edgekd.{key}"]
        else:
            meta[f"edgekd.{key}"] = value
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return meta


def consistent_model_edit(**props: str | None) -> Edit:
    """Edit ``model.onnx``'s metadata and repeat the edit everywhere bundle.json records it: the file's sha256,
    ``onnx_metadata``, ``operating_points``, ``preprocess.size`` and ``manifest_sha256`` (a careful forger)."""

    def edit(folder: Path) -> Path:
        meta = set_model_metadata(folder / "model.onnx", **props)
        manifest = read(folder)
        relist(folder, manifest, "model.onnx")
        manifest["onnx_metadata"] = {k: v for k, v in meta.items() if k != "edgekd.precision"}
        for key, value in props.items():
            if key in OPERATING_POINTS and value is not None:
                try:
                    manifest["operating_points"][key] = float(value)
                except ValueError:
                    manifest["operating_points"][key] = value
            if key == "input_size":
                manifest["preprocess"]["size"] = int(value) if value.isdecimal() else value
        write(folder, manifest)
        return folder

    return edit


def json_edit(change: Callable[[dict], None], reseal: bool) -> Edit:
    """Edit bundle.json only, with or without a recomputed ``manifest_sha256``."""

    def edit(folder: Path) -> Path:
        manifest = read(folder)
        change(manifest)
        write(folder, manifest, reseal)
        return folder

    return edit


def set_temperature(value: float) -> Callable[[dict], None]:
    """The temperature edited where bundle.json states it (onnx_metadata and operating_points)."""

    def change(manifest: dict) -> None:
        manifest["onnx_metadata"]["edgekd.temperature"] = repr(value)
        manifest["operating_points"]["temperature"] = value

    return change


def assert_refused(bundle_arg: Path, image: Path, tmp_path: Path, message: str) -> str:
    """edgekd-predict exits 2 with ``message`` on stderr, no traceback and no predictions written."""
    out = tmp_path / "pred.csv"
    res = run_module("edgekd.edge.predict", bundle_arg, image, "--out", out)
    assert res.returncode == P.EXIT_USAGE, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and message in res.stderr, res.stderr
    assert not out.exists()
    return res.stderr


# ------------------------------------------------------------------------------------ export (case 1)

def unrelated_folder(folder: Path, bundle: Path) -> list[str]:
    folder.mkdir()
    (folder / "bundle.json").write_text('{"title": "my thesis build settings"}\n')
    (folder / "thesis.tex").write_text("\\chapter{Results}\n")
    (folder / "chapters").mkdir()
    (folder / "chapters" / "one.tex").write_text("one\n")
    return ["bundle.json", "chapters", "thesis.tex"]


def bundle_with_a_stranger(folder: Path, bundle: Path) -> list[str]:
    shutil.copytree(bundle, folder)
    (folder / "notes.txt").write_text("my notes\n")
    return ["notes.txt"]


@pytest.mark.parametrize("make", [unrelated_folder, bundle_with_a_stranger])
def test_export_replaces_only_a_bundle_it_wrote(make, tmp_path, bundle, fake_bundle_dir, capsys):
    """A folder holding anything but a complete bundle is refused (exit 2, the entries listed) and left as it was,
    and the check comes before the run is even read (a missing run gives the folder's message)."""
    out = tmp_path / "out"
    listed = make(out, bundle)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc, err = export_cli(capsys, fake_bundle_dir.parent / "run", "--out", out, "--no-int8", "--n-resamples", "20")
    assert rc == 2, err
    assert "Traceback" not in err and all(name in err for name in listed), err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=listed[-1]):
        B.run_export(tmp_path / "no-such-run", out)


def test_export_builds_in_a_fresh_temporary_folder_and_replaces_its_bundle(tmp_path, bundle, fake_bundle_dir):
    """The temporary folder is made by mkdtemp, never a predictable name that is deleted first; an earlier bundle
    is replaced whole (here by one without INT8) and no temporary folder is left behind."""
    planted = tmp_path / f".bundle.tmp-{os.getpid()}"
    planted.mkdir()
    (planted / "precious.txt").write_text("not the exporter's\n")
    B.run_export(fake_bundle_dir.parent / "run", bundle, int8=False, n_resamples=20)
    assert (planted / "precious.txt").read_text() == "not the exporter's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [planted.name, "bundle"]
    assert sorted(p.name for p in bundle.iterdir()) == ["MODEL_CARD.md", "bundle.json", "model.onnx"]
    assert P.open_bundle(bundle).warnings == ()


# ------------------------------------------------------------------------- operating point (case 4)

EDITED = "was edited after export: its content no longer matches manifest_sha256"
EDITED_JSON = {
    "temperature -1 in bundle.json": (json_edit(set_temperature(-1.0), reseal=False), EDITED),
    "documented operating_points.temperature 50": (
        json_edit(lambda m: m["operating_points"].update(temperature=50.0), reseal=False), EDITED),
    "melanoma threshold 1.5 in onnx_metadata": (
        json_edit(lambda m: m["onnx_metadata"].update({"edgekd.melanoma_threshold": "1.5"}), reseal=False), EDITED),
    "resealed operating_points.temperature 50": (
        json_edit(lambda m: m["operating_points"].update(temperature=50.0), reseal=True),
        "bundle.json's operating_points.temperature (50.0) disagrees with the metadata of"),
    "resealed temperature -1": (json_edit(set_temperature(-1.0), reseal=True),
                                "bundle.json's onnx_metadata disagrees with the metadata of"),
    "resealed abstain threshold 0.99": (
        json_edit(lambda m: m["operating_points"].update(abstain_threshold=0.99), reseal=True),
        "bundle.json's operating_points.abstain_threshold (0.99) disagrees"),
    "resealed preprocess.size 64": (json_edit(lambda m: m["preprocess"].update(size=64), reseal=True),
                                    "bundle.json's preprocess.size (64) disagrees"),
}


@pytest.mark.parametrize("case", list(EDITED_JSON))
def test_bundle_json_cannot_change_the_operating_point(case, tmp_path, bundle, image):
    """bundle.json is covered by manifest_sha256, and even resealed it must state what the model's own metadata
    (covered by the model's sha256) states: the settings have one source of truth."""
    edit, message = EDITED_JSON[case]
    assert_refused(edit(bundle), image, tmp_path, message)


OUT_OF_RANGE = {
    "temperature -1": ({"temperature": "-1.0"}, "states temperature '-1.0': it must be a finite number in [0.05, 20.0]"),
    "temperature 0": ({"temperature": "0.0"}, "states temperature '0.0'"),
    "temperature nan": ({"temperature": "nan"}, "states temperature 'nan'"),
    "temperature 50": ({"temperature": "50.0"}, "states temperature '50.0'"),
    "temperature abc": ({"temperature": "abc"}, "states temperature 'abc'"),
    "melanoma threshold 1.5": ({"melanoma_threshold": "1.5"}, "states melanoma_threshold '1.5': a probability threshold must be in [0, 1]"),
    "abstain threshold inf": ({"abstain_threshold": "inf"}, "states abstain_threshold 'inf'"),
    "input size 32": ({"input_size": "32"}, "states input size '32': edgekd models take one of 28, 64, 128, 224 px"),
    "input size abc": ({"input_size": "abc"}, "states input size 'abc'"),
    "input size 64 for a 28 px graph": ({"input_size": "64"}, "takes input ['batch', 3, 28, 28], but its metadata states 64 px"),
    "temperature key missing": ({"temperature": None}, "lacks the metadata edgekd.temperature"),
    "class names not JSON": ({"class_names": "akiec,bcc"}, "states class_names akiec,bcc, this predictor implements"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_out_of_range_settings_are_refused_even_in_a_consistent_bundle(case, tmp_path, bundle, image):
    """A forger who edits the model's metadata and every hash consistently still gets no inverted, NaN, all-abstain
    or never-melanoma predictions: the settings used are range-checked (exit 2, the setting named)."""
    props, message = OUT_OF_RANGE[case]
    assert_refused(consistent_model_edit(**props)(bundle), image, tmp_path, message)


def test_temperature_range_is_the_one_export_fits_in():
    assert P.TEMPERATURE_RANGE == C.T_BOUNDS


def test_bundle_without_manifest_sha256_must_be_re_exported(tmp_path, bundle, image):
    manifest = read(bundle)
    manifest.pop("manifest_sha256", None)
    write(bundle, {**manifest, "version": B.VERSION}, reseal=False)
    assert_refused(bundle, image, tmp_path, "has no manifest_sha256, so its settings cannot be verified: re-export")
    write(bundle, {**manifest, "version": 1}, reseal=True)
    assert_refused(bundle, image, tmp_path, f"is bundle format version 1, this predictor reads version {B.VERSION}: re-export")


# ------------------------------------------------------------------------------ single .onnx (case 5)

def edit_model_only(folder: Path) -> Path:
    set_model_metadata(folder / "model.onnx", temperature="-1.0")
    return folder / "model.onnx"


def edit_card_pass_model(folder: Path) -> Path:
    (folder / "MODEL_CARD.md").write_text("# Validated medical device\n")
    return folder / "model.onnx"


def rename_model(folder: Path) -> Path:
    return Path(shutil.copy(folder / "model.onnx", folder / "renamed.onnx"))


BESIDE = {
    "model.onnx edited, passed directly": (edit_model_only, "model.onnx does not match its sha256 in bundle.json"),
    "card edited, model.onnx passed": (edit_card_pass_model, "MODEL_CARD.md does not match its sha256 in bundle.json"),
    "unlisted .onnx in a bundle folder": (rename_model, "renamed.onnx is not listed in the bundle.json beside it"),
}


@pytest.mark.parametrize("case", list(BESIDE))
def test_onnx_beside_its_bundle_json_gets_the_bundle_checks(case, tmp_path, bundle, image):
    edit, message = BESIDE[case]
    assert_refused(edit(bundle), image, tmp_path, message)


def test_onnx_alone_is_used_with_a_warning(tmp_path, bundle, image):
    alone = tmp_path / "alone"
    alone.mkdir()
    model = Path(shutil.copy(bundle / "model.onnx", alone / "model.onnx"))
    assert P.open_bundle(model).warnings == (f"{model} is used without its bundle.json: its integrity is unverified",)
    assert P.open_bundle(bundle).warnings == () and P.open_bundle(bundle / "model.onnx").warnings == ()
    res = run_module("edgekd.edge.predict", model, image, "--out", tmp_path / "pred.csv")
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------- listed files (case 6)

def edit_card(folder: Path) -> Path:
    card = folder / "MODEL_CARD.md"
    card.write_text(card.read_text().replace("Not a medical device", "Validated medical device"))
    return folder


def flip_int8(folder: Path) -> Path:
    with open(folder / "model_int8.onnx", "r+b") as fh:
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\xff" * 8)
    return folder


def delete_int8(folder: Path) -> Path:
    (folder / "model_int8.onnx").unlink()
    return folder


LISTED = {
    "model card edited": (edit_card, "MODEL_CARD.md does not match its sha256 in bundle.json"),
    "int8 model damaged, fp32 used": (flip_int8, "model_int8.onnx does not match its sha256 in bundle.json"),
    "int8 model missing, fp32 used": (delete_int8, "model_int8.onnx is listed in bundle.json but missing"),
}


@pytest.mark.parametrize("case", list(LISTED))
def test_every_listed_file_is_checked(case, tmp_path, bundle, image):
    edit, message = LISTED[case]
    assert_refused(edit(bundle), image, tmp_path, message)


# ---------------------------------------------------------------------------- damaged files (case 9)

def truncate_json(folder: Path) -> Path:
    text = (folder / "bundle.json").read_text()
    (folder / "bundle.json").write_text(text[: len(text) // 2])
    return folder


def json_not_a_dict(folder: Path) -> Path:
    (folder / "bundle.json").write_text("[]\n")
    return folder


def truncate_listed_model(folder: Path) -> Path:
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    manifest = read(folder)
    relist(folder, manifest, "model.onnx")
    write(folder, manifest)
    return folder


def truncate_alone_model(folder: Path) -> Path:
    alone = folder.parent / "alone"
    alone.mkdir()
    data = (folder / "model.onnx").read_bytes()
    (alone / "model.onnx").write_bytes(data[: len(data) // 2])
    return alone / "model.onnx"


DAMAGED = {
    "bundle.json truncated": (truncate_json, "bundle.json cannot be read as JSON"),
    "bundle.json not an object": (json_not_a_dict, "bundle.json is not an edgekd bundle manifest"),
    "model.onnx truncated, hashes updated": (truncate_listed_model, "model.onnx cannot be loaded by onnxruntime"),
    "lone .onnx truncated": (truncate_alone_model, "model.onnx cannot be loaded by onnxruntime"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_files_exit_2_without_a_traceback(case, tmp_path, bundle, image):
    edit, message = DAMAGED[case]
    assert_refused(edit(bundle), image, tmp_path, message)


# ------------------------------------------------------------------------------------------ provenance

def test_git_commit_does_not_rewrite_the_index(tmp_path):
    """git_commit reads HEAD and dirtiness without refreshing .git/index, even when its stat data is stale."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for args in (["init", "-q"], ["add", "f.txt"], ["-c", "commit.gpgsign=false", "commit", "-qm", "one"]):
        if args[0] == "add":
            (repo / "f.txt").write_text("a\n")
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    stat = (repo / "f.txt").stat()
    os.utime(repo / "f.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns - 100 * 10**9))  # index stat data now stale
    index = repo / ".git" / "index"
    before = (index.stat().st_mtime_ns, index.read_bytes())
    state = git_commit(repo)
    assert (index.stat().st_mtime_ns, index.read_bytes()) == before
    assert state["dirty"] is False and len(state["commit"]) == 40
    (repo / "f.txt").write_text("b\n")
    assert git_commit(repo)["dirty"] is True


# ======================================================================================================================
# Cases 2, 4 (non-finite output), 7, 8, 9 (labels, outputs), 11 (inputs): edgekd-predict's inputs and outputs.
#
# edgekd-predict against hostile inputs and outputs: it never overwrites an input or a file it did not write,
# refuses bad outputs and labels with exit 2 before any inference, streams rows in input order into a temporary
# file that never outlives a failure, and skips (with a message) what it cannot score: non-finite model output,
# decompression bombs, images that run out of memory, non-files, unreadable files.
#
# Runs on the data-free ``fake_bundle_dir`` (a 28 px ResNet-18 on synthetic data) with Pillow-made images.
# ======================================================================================================================


#: The predictions header, spelled out (an earlier run's file starts with it).
HEADER = ",".join(["image", "pred", *(f"p_{c}" for c in CLASS_NAMES), "abstain", "melanoma_flag", "note"])


def photo(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, **save) -> Path:
    """A noise RGB image of ``size`` (w, h) saved at ``path`` (format from its suffix)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, **save)
    return path


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """``python -m edgekd.edge.predict`` in a fresh process (the environment inherited)."""
    return subprocess.run([sys.executable, "-m", "edgekd.edge.predict", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def run(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str, str]:
    """``predict.main`` in this process: exit status, stdout, stderr."""
    rc = P.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def leftovers(folder: Path) -> list[str]:
    """Temporary files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """``tmp_path/photos``: a.png, b.png, c.png."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, name in enumerate("abc"):
        photo(folder / f"{name}.png", seed=seed)
    return folder


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("image,label\na,mel\nb,nv\nc,bcc\n")
    return path


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any image is decoded."""
    def decode(*args, **kwargs):
        raise AssertionError("an image was decoded before the outputs were checked")

    monkeypatch.setattr(P, "read_image", decode)


# ------------------------------------------------------------------------------- case 2: outputs

def _refusal(case: str, tmp: Path, photos: Path, labels: Path) -> tuple[list[str | Path], Path, str]:
    """Arguments after the bundle for ``case``, the file that must survive unchanged, and the expected message."""
    single = tmp / "single"
    single.mkdir()
    lone = photo(single / "lone.png", seed=9)
    if case == "out is the labels file":
        return [photos, "--labels", labels, "--out", labels], labels, "is the labels file"
    if case == "out is a symlink to the labels file":
        (tmp / "link.csv").symlink_to(labels)
        return [photos, "--labels", labels, "--out", tmp / "link.csv"], labels, "is the labels file"
    if case == "out is an input file":
        return [lone, photos, "--out", lone], lone, "is the input"
    if case == "out is an image in an input folder":
        return [photos, "--out", photos / "a.png"], photos / "a.png", "would be read as an image of the input folder"
    if case == "metrics is an input file":
        labels.write_text(labels.read_text() + "lone,df\n")
        return [lone, photos, "--labels", labels, "--out", tmp / "p.csv", "--metrics", lone], lone, "is the input"
    if case == "out is a folder":
        (tmp / "folder").mkdir()
        return [photos, "--out", tmp / "folder"], labels, "is a folder: name a file"
    assert case == "out and metrics are the same file"
    return ([photos, "--labels", labels, "--out", tmp / "p.csv", "--metrics", tmp / "p.csv"], labels,
            "is the same file as --out")


@pytest.mark.parametrize("case", ["out is the labels file", "out is a symlink to the labels file", "out is an input file",
                                  "out is an image in an input folder", "metrics is an input file", "out is a folder",
                                  "out and metrics are the same file"])
def test_outputs_never_overwrite_inputs_or_labels(case, tmp_path, fake_bundle_dir, photos, labels, no_decoding, capsys):
    """Issue case 2: an output that is an input, the labels, a folder or the other output: exit 2 before decoding."""
    args, kept, message = _refusal(case, tmp_path, photos, labels)
    before = kept.read_bytes()
    rc, out, err = run(capsys, fake_bundle_dir, *args)
    assert rc == P.EXIT_USAGE, out + err
    assert "edgekd-predict: error:" in err and message in err, err
    assert kept.read_bytes() == before
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p_metrics.csv").exists()
    assert leftovers(tmp_path) == [] and leftovers(photos) == []


def test_a_csv_beside_the_images_of_an_input_folder_is_allowed(tmp_path, fake_bundle_dir, photos, capsys):
    """A predictions CSV in the folder being scored is not an image of it: `edgekd-predict BUNDLE .` works."""
    rc, out, err = run(capsys, fake_bundle_dir, photos, "--out", photos / "predictions.csv")
    assert rc == P.EXIT_OK, out + err
    assert (photos / "predictions.csv").read_text().startswith("image,pred,")


def test_existing_outputs_are_overwritten_only_if_ours_or_forced(tmp_path, fake_bundle_dir, photos, labels, capsys):
    """Issue case 2: a file that is not an earlier output of the tool needs --force; an earlier output is replaced."""
    notes = tmp_path / "notes.csv"
    notes.write_text("my ground truth, not a predictions file\n")
    rc, _, err = run(capsys, fake_bundle_dir, photos, "--out", notes)
    assert rc == P.EXIT_USAGE and "refusing to overwrite it; use --force" in err, err
    assert notes.read_text() == "my ground truth, not a predictions file\n"

    metrics = tmp_path / "m.csv"
    metrics.write_text("metric;value\n")  # not this tool's header either
    rc, _, err = run(capsys, fake_bundle_dir, photos, "--labels", labels, "--out", tmp_path / "p.csv", "--metrics", metrics)
    assert rc == P.EXIT_USAGE and f"--metrics {metrics} exists and is not a file edgekd-predict wrote" in err, err
    assert metrics.read_text() == "metric;value\n" and not (tmp_path / "p.csv").exists()

    rc, _, err = run(capsys, fake_bundle_dir, photos, "--labels", labels, "--out", notes, "--metrics", metrics, "--force")
    assert rc == P.EXIT_OK, err
    assert notes.read_text().splitlines()[0] == HEADER and metrics.read_text().splitlines()[0] == "metric,value"
    # an earlier output of the tool is replaced without --force
    rc, _, err = run(capsys, fake_bundle_dir, photos, "--labels", labels, "--out", notes, "--metrics", metrics)
    assert rc == P.EXIT_OK, err
    assert [r["image"] for r in rows(notes)] == ["a", "b", "c"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["under a regular file", "in a folder that takes no new file"])
def test_unwritable_out_is_refused_before_inference(case, tmp_path, fake_bundle_dir, photos, no_decoding, capsys):
    """Issue case 9: an --out that cannot be created is exit 2 before any decoding, and leaves no temporary file."""
    if case == "under a regular file":
        (tmp_path / "file.txt").write_text("a file, not a folder\n")
        out, message = tmp_path / "file.txt" / "p.csv", f"{tmp_path / 'file.txt'} is not a folder"
    else:  # /proc/self refuses new files even to root, unlike a chmod 0o555 folder
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc")
        out, message = Path("/proc/self/p.csv"), "no file can be created in /proc/self"
    rc, _, err = run(capsys, fake_bundle_dir, photos, "--out", out)
    assert rc == P.EXIT_USAGE, err
    assert f"--out {out} cannot be written: {message}" in err, err
    assert leftovers(tmp_path) == [] and not out.exists()


# ----------------------------------------------------------------------- case 4: non-finite output

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_output_is_an_error_for_that_image(bad, tmp_path, fake_bundle_dir, photos, labels, monkeypatch, capsys):
    """Issue case 4: a NaN or infinite logit gives image b a skipped row and no scores; it is left out of the metrics."""
    real_run = ort.InferenceSession.run

    def poisoned(self, names, feeds, *args, **kwargs):
        outputs = real_run(self, names, feeds, *args, **kwargs)
        if not poisoned.done:  # the first batch holds a and b
            outputs[0][1, 2] = bad
            poisoned.done = True
        return outputs

    poisoned.done = False
    monkeypatch.setattr(ort.InferenceSession, "run", poisoned)
    out = tmp_path / "p.csv"
    rc, stdout, err = run(capsys, fake_bundle_dir, photos, "--labels", labels, "--out", out, "--batch", "2")
    assert rc == P.EXIT_OK, err
    assert f"skipped {photos / 'b.png'}: model produced non-finite output" in err
    assert "2 of 3 images scored, 1 skipped (0 unreadable, 1 non-finite model output)" in stdout
    table = {r["image"]: r for r in rows(out)}
    assert list(table) == ["a", "b", "c"]
    assert table["b"]["note"] == "skipped: model produced non-finite output"
    assert all(table["b"][k] == "" for k in ("pred", "abstain", "melanoma_flag", *(f"p_{c}" for c in CLASS_NAMES)))
    for name in "ac":
        probs = np.array([float(table[name][f"p_{c}"]) for c in CLASS_NAMES])
        assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0)
    metrics = {r["metric"]: float(r["value"]) for r in rows(tmp_path / "p_metrics.csv")}
    assert metrics["n"] == 2


# ---------------------------------------------------------------- case 7: streaming, order, failures

def test_one_image_out_of_memory_is_skipped_and_rows_keep_input_order(tmp_path, fake_bundle_dir, monkeypatch, capsys):
    """Issue cases 7 and 11: a MemoryError while decoding one image skips that image only; rows follow the input order."""
    folder = tmp_path / "in"
    folder.mkdir()
    huge = photo(folder / "huge.png", size=(77, 55), seed=3)
    inputs = [photo(folder / "c.png", seed=2), folder / "notes.jpg", huge, photo(folder / "a.png", seed=0)]
    inputs[1].write_text("not an image\n")
    real_load = ImageFile.ImageFile.load

    def load(self):
        if self.size == (77, 55):
            raise MemoryError
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    out = tmp_path / "out" / "p.csv"
    rc, stdout, err = run(capsys, fake_bundle_dir, *inputs, "--out", out, "--batch", "4")
    assert rc == P.EXIT_OK, err
    assert f"skipped {huge}: cannot be decoded: out of memory" in err
    assert "2 of 4 images scored, 2 skipped (unreadable)" in stdout
    table = rows(out)
    assert [r["image"] for r in table] == ["c", "notes", "huge", "a"]
    assert [r["pred"] != "" for r in table] == [True, False, False, True]
    assert table[2]["note"] == "skipped: cannot be decoded: out of memory"
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.csv"]


def test_rows_stream_to_a_temporary_file_removed_on_failure(tmp_path, fake_bundle_dir, photos, monkeypatch):
    """Issue case 7: each batch's rows are flushed to a temporary file beside --out before the next batch runs;
    a failure removes it and leaves an earlier --out as it was."""
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    out.write_bytes(f"{HEADER}\r\nearlier,run\r\n".encode())
    for name in "de":
        photo(photos / f"{name}.png", seed=ord(name))
    real_run = ort.InferenceSession.run
    seen: list[dict[str, str]] = []

    def failing(self, names, feeds, *args, **kwargs):
        seen.append({p.name: p.read_text() for p in out.parent.iterdir() if p != out})
        if len(seen) == 3:
            raise RuntimeError("onnxruntime failed")
        return real_run(self, names, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", failing)
    with pytest.raises(RuntimeError, match="onnxruntime failed"):
        P.main([str(fake_bundle_dir), str(photos), "--out", str(out), "--batch", "2"])
    (name, text), = seen[2].items()  # before the third batch: one temporary file holding the first two batches
    assert name.endswith(".tmp") and text.splitlines()[0] == HEADER
    assert [line.split(",")[0] for line in text.splitlines()[1:]] == ["a", "b", "c", "d"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.csv"]
    assert out.read_bytes() == f"{HEADER}\r\nearlier,run\r\n".encode()


# ------------------------------------------------------------------------ case 8: decompression bombs

def test_decompression_bomb_is_skipped_before_decoding(tmp_path, fake_bundle_dir):
    """Issue case 8: a 13300 x 13300 PNG of a few hundred KB is skipped by its header size; the other image is scored."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("1", (13300, 13300)).save(folder / "bomb.png")
    assert (folder / "bomb.png").stat().st_size < 1_000_000
    photo(folder / "good.png")
    out = tmp_path / "p.csv"
    res = cli(fake_bundle_dir, folder, "--out", out)
    assert res.returncode == P.EXIT_OK, res.stderr
    message = "image is 13300x13300 px (177 megapixels), above the limit of 40 megapixels"
    assert f"skipped {folder / 'bomb.png'}: {message}" in res.stderr, res.stderr
    assert "DecompressionBombWarning" not in res.stderr  # the size is checked here, Pillow's warning adds nothing
    assert "1 of 2 images scored, 1 skipped (unreadable)" in res.stdout
    table = {r["image"]: r for r in rows(out)}
    assert message in table["bomb"]["note"] and table["bomb"]["pred"] == ""
    assert table["good"]["pred"] in CLASS_NAMES


def test_large_jpeg_is_decoded_at_reduced_scale_small_ones_exactly(tmp_path, fake_bundle_dir, capsys):
    """Issue case 8: a 4400 x 3300 JPEG decodes at 1/2 scale with a note (its shorter side stays >= 1024 px);
    HAM10000-size JPEGs (600 x 450) and a 2100 x 2000 one (halving would go under 1024) decode at full scale."""
    folder = tmp_path / "in"
    folder.mkdir()
    grad = np.linspace(0, 255, 4400, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(grad, (3300, 1))] * 3, axis=-1)).save(folder / "large.jpg", quality=90)
    photo(folder / "ham.jpg", size=(600, 450))
    photo(folder / "edge.jpg", size=(2100, 2000))
    rc, _, err = run(capsys, fake_bundle_dir, folder, "--out", tmp_path / "p.csv")
    assert rc == P.EXIT_OK, err
    table = {r["image"]: r for r in rows(tmp_path / "p.csv")}
    assert table["large"]["note"] == "JPEG decoded at 1/2 scale" and table["large"]["pred"] in CLASS_NAMES
    assert table["ham"]["note"] == "" and table["edge"]["note"] == ""
    assert err.count("decoded at") == 1 and f"note {folder / 'large.jpg'}: JPEG decoded at 1/2 scale" in err


# --------------------------------------------------------------------------------- case 9: labels

LABEL_CASES = {
    "superscript digit": ("image,label\na,\u00b2\nb,nv\nc,bcc\n", "unknown classes"),
    "arabic-indic digit": ("image,label\na,\u0663\nb,nv\nc,bcc\n", "line 2 (a: \u0663)"),
    "200 KB field": ("image,label\na," + "x" * 200_000 + "\nb,nv\nc,bcc\n", "field larger than field limit"),
}


@pytest.mark.parametrize("case", [*LABEL_CASES, "over 16 MiB"])
def test_bad_labels_exit_2_with_a_message(case, tmp_path, fake_bundle_dir, photos):
    """Issue cases 9 and 11: non-ASCII digits, a huge field and a huge file are exit 2 with a message, never a traceback."""
    labels = tmp_path / "labels.csv"
    if case == "over 16 MiB":
        labels.write_text("image,label\na,mel\nb,nv\nc,bcc\n")
        with open(labels, "r+b") as fh:
            fh.truncate(16 * 2**20 + 1)  # sparse: cheap to make
        message = "is 16777217 bytes (16.0 MiB), above the limit of 16777216 bytes"
    else:
        labels.write_text(LABEL_CASES[case][0], encoding="utf-8")
        message = LABEL_CASES[case][1]
    res = cli(fake_bundle_dir, photos, "--labels", labels, "--out", tmp_path / "p.csv")
    assert res.returncode == P.EXIT_USAGE, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert f"edgekd-predict: error: labels CSV {labels}" in res.stderr and message in res.stderr, res.stderr
    assert not (tmp_path / "p.csv").exists()


# ---------------------------------------------------------------------------- case 11: folder entries

def test_folder_entries_that_are_not_files_are_counted(tmp_path, fake_bundle_dir, capsys):
    """Issue case 11: a looping or broken symlink or a folder named like an image gets a skipped row; other non-files
    are counted as ignored."""
    folder = tmp_path / "in"
    folder.mkdir()
    photo(folder / "good.png")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "sub.jpg").mkdir()
    (folder / "plain").mkdir()
    (folder / "readme.txt").write_text("ignored\n")
    out = tmp_path / "p.csv"
    rc, stdout, err = run(capsys, fake_bundle_dir, folder, "--out", out)
    assert rc == P.EXIT_OK, err
    assert ("1 of 4 images scored, 3 skipped (unreadable), 1 folder files ignored (not .jpg/.jpeg/.png), "
            "1 other folder entries ignored") in stdout, stdout
    notes = {r["image"]: r["note"] for r in rows(out)}
    assert notes == {"broken": "skipped: not a regular file: a broken or looping symlink", "good": "",
                     "loop": "skipped: not a regular file: a broken or looping symlink",
                     "sub": "skipped: not a regular file: a folder"}
    assert f"skipped {folder / 'sub.jpg'}: not a regular file: a folder" in err


def test_permission_denied_is_not_called_corrupt(tmp_path, fake_bundle_dir, photos, monkeypatch, capsys):
    """Issue case 11: a file that cannot be opened is reported as such (as root, where chmod 000 does not stop a
    read, the open is made to fail as it would)."""
    locked = photos / "b.png"
    locked.chmod(0)
    if os.geteuid() == 0:
        real_open = builtins.open

        def denying(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(file) == locked:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denying)
    try:
        rc, stdout, err = run(capsys, fake_bundle_dir, photos, "--out", tmp_path / "p.csv")
    finally:
        locked.chmod(0o644)
    assert rc == P.EXIT_OK, err
    assert f"skipped {locked}: cannot be read: permission denied" in err
    assert {r["image"]: r["note"] for r in rows(tmp_path / "p.csv")}["b"] == "skipped: cannot be read: permission denied"


def test_exif_orientation_is_noted(tmp_path, fake_bundle_dir, capsys):
    """Issue case 11: an EXIF orientation other than 1 is not applied, and the row says so."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, orientation in (("rotated", 6), ("upright", 1)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        photo(folder / f"{name}.jpg", seed=orientation, exif=exif)
    rc, _, err = run(capsys, fake_bundle_dir, folder, "--out", tmp_path / "p.csv")
    assert rc == P.EXIT_OK, err
    notes = {r["image"]: r["note"] for r in rows(tmp_path / "p.csv")}
    assert notes["rotated"] == ("EXIF orientation 6 not applied: scored as stored (training images carry no orientation; "
                                "models are trained with flips and rotations)")
    assert notes["upright"] == ""


def test_formula_like_cells_are_quoted(tmp_path, fake_bundle_dir, capsys):
    """Issue case 11: an image id a spreadsheet would run as a formula is written with a leading quote."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["=1+1", "+cmd", "-2", "@SUM(A1)", "plain"]
    for seed, name in enumerate(names):
        photo(folder / f"{name}.png", seed=seed)
    rc, _, err = run(capsys, fake_bundle_dir, folder, "--out", tmp_path / "p.csv")
    assert rc == P.EXIT_OK, err
    written = [r["image"] for r in rows(tmp_path / "p.csv")]
    assert sorted(written) == sorted(["'=1+1", "'+cmd", "'-2", "'@SUM(A1)", "plain"])


# ------------------------------------------------------------------------------------- bundle warnings

def test_bundle_warnings_are_printed(tmp_path, fake_bundle_dir, photos, monkeypatch, capsys):
    """Every line of the opened bundle's warnings reaches stderr, and an .onnx file alone warns."""
    real_open = P.open_bundle
    monkeypatch.setattr(P, "open_bundle", lambda *a, **k: dataclasses.replace(real_open(*a, **k), warnings=("one", "two")))
    rc, _, err = run(capsys, fake_bundle_dir, photos, "--out", tmp_path / "p.csv")
    assert rc == P.EXIT_OK, err
    assert "edgekd-predict: warning: one\nedgekd-predict: warning: two\n" in err
    monkeypatch.setattr(P, "open_bundle", real_open)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(fake_bundle_dir / "model.onnx", alone / "model.onnx")
    rc, _, err = run(capsys, alone / "model.onnx", photos, "--out", tmp_path / "p.csv")
    assert rc == P.EXIT_OK, err
    assert f"edgekd-predict: warning: {alone / 'model.onnx'}" in err


# ======================================================================================================================
# Cases 3, 10, 11 (dry run, lock) and the hygiene items: the runner, training checkpoints, kernels.
#
# Hostile profiles and files against the runner and the training loop: nothing outside the outputs root is
# deleted, bad values are named before any compute, a dry run writes nothing, one runner per outputs folder,
# checkpoints load without unpickling code, and kernel sockets live in a private folder.
# ======================================================================================================================


def _profile(tmp_path: Path, **edits) -> Path:
    """The smoke profile with ``dotted.key=value`` edits (missing mappings created), written to ``tmp_path``."""
    prof = yaml.safe_load((PL.PARAMS_DIR / "smoke.yaml").read_text())
    for dotted, value in edits.items():
        node = prof
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[int(leaf) if isinstance(node, list) else leaf] = value
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def _victim(folder: Path) -> Path:
    """A folder with ``keep.txt`` and ``keepdir/inner.txt`` that no runner may delete."""
    (folder / "keepdir").mkdir(parents=True)
    (folder / "keep.txt").write_text("keep")
    (folder / "keepdir" / "inner.txt").write_text("keep")
    return folder


def _intact(folder: Path) -> bool:
    return (folder / "keep.txt").read_text() == "keep" and (folder / "keepdir" / "inner.txt").read_text() == "keep"


@pytest.fixture
def no_compute(monkeypatch):
    """Stub the data check and the notebook execution (``execute`` still clears what the stage owns), so that
    code without the guards fails in seconds instead of running notebooks; returns the executed keys."""
    executed: list[str] = []

    def execute(spec, log=print):
        R.clear_owned(spec)
        executed.append(spec.key)
        return 0.0

    monkeypatch.setattr(R, "check_inputs", lambda *a, **k: None)
    monkeypatch.setattr(R, "execute", execute)
    return executed


# ----------------------------------------------------------------------------- case 3: nothing outside the root


@pytest.mark.parametrize("edits, message", [
    ({"name": "../victim_root"}, r"name: '\.\./victim_root' is not a plain name"),
    ({"name": "/tmp/edgekd-victim"}, r"name: '/tmp/edgekd-victim' is not a plain name"),
    ({"name": ".."}, r"name: '\.\.' is not a plain name"),
    ({"name": "."}, r"name: '\.' is not a plain name"),
    ({"name": 7}, r"name: 7 is not a plain name"),
    ({"students.seeds": ["0/../../x"]}, r"students.seeds: must be a non-empty list of non-negative integers, got \['0/\.\./\.\./x'\]"),
    ({"teacher.seeds": ["0/../../x"]}, r"teacher.seeds: must be a non-empty list .* got \['0/\.\./\.\./x'\]"),
    ({"students.archs": ["../resnet18"]}, r"students.archs: '\.\./resnet18' is not a plain name"),
    ({"teacher.arch": "/resnet50"}, r"teacher.arch: '/resnet50' is not a plain name"),
    ({"students.kd.0.name": "../kdat"}, r"students.kd.name: '\.\./kdat' is not a plain name"),
    ({"lesion": {"seeds": ["0/../x"]}}, r"lesion.seeds: must be a non-empty list .* got \['0/\.\./x'\]"),
    ({"lesion": {"archs": ["../resnet18"]}}, r"lesion.archs: '\.\./resnet18' is not a plain name"),
    ({"export": {"models": ["../../student-resnet18-kdat"]}}, r"export.models: '\.\./\.\./student-resnet18-kdat' is not a plain name"),
])
def test_path_components_are_checked_before_anything_is_written(tmp_path, edits, message):
    outputs = tmp_path / "outputs"
    with pytest.raises(R.ConfigError, match=message):
        R.expand(R.load_profile(_profile(tmp_path, **edits)), outputs)
    assert not outputs.exists()


def test_cli_refuses_a_profile_name_outside_outputs_and_the_victim_survives(tmp_path, capsys, no_compute):
    """``name: ../victim_root`` with ``--only data`` deleted ``victim_root/data/{keep.txt,keepdir}``."""
    victim = _victim(tmp_path / "victim_root" / "data")
    path = _profile(tmp_path, name="../victim_root")
    assert R.main([str(path), "--outputs", str(tmp_path / "outputs"), "--only", "data", "--no-estimate"]) == 2
    assert "name: '../victim_root' is not a plain name" in capsys.readouterr().err
    assert _intact(victim) and no_compute == []
    assert not (tmp_path / "outputs").exists()


def test_a_stage_folder_the_runner_did_not_write_is_never_cleared(tmp_path, capsys, no_compute):
    """``--outputs ~`` with ``name: Documents`` made ``~/Documents/data`` the data stage's folder, and a rerun cleared
    it: a folder with neither the stage's marker nor its executed notebook is refused before anything runs."""
    victim = _victim(tmp_path / "outputs" / "smoke" / "data")
    args = [str(_profile(tmp_path)), "--outputs", str(tmp_path / "outputs"), "--only", "data", "--no-estimate"]
    assert R.main(args) == 2
    assert "hold files this runner did not write" in capsys.readouterr().err
    assert _intact(victim) and no_compute == []
    (victim / "keep.txt").unlink()
    shutil.rmtree(victim / "keepdir")
    assert R.main(args) == 0 and no_compute == ["data:data"]  # an empty folder is the runner's to use


@pytest.mark.parametrize("stage", ["data", "teacher", "evaluate", "aggregate"])
def test_clear_owned_refuses_a_stage_folder_outside_the_outputs_root(tmp_path, stage):
    """A hand-built spec whose folder is outside its outputs root deletes nothing, finished or not."""
    root = (tmp_path / "outputs").resolve()
    root.mkdir()
    victim = _victim(tmp_path / "victim")
    spec = R.RunSpec("x", stage, victim, {}, outputs_root=root)
    if spec.stage_dir != victim:  # evaluate owns <run>/eval
        _victim(spec.stage_dir)
    (spec.stage_dir / f".done-{stage}.json").write_text("{}")  # a finished stage: it would clear all it owns
    with pytest.raises(ValueError, match="not inside"):  # files.OutsideRoot
        R.clear_owned(spec)
    assert _intact(victim) and _intact(spec.stage_dir)
    # the same through a symlink inside the root: a linked run folder's contents resolve outside it
    link = root / "smoke" / "teacher-resnet50-s0"
    link.parent.mkdir()
    link.symlink_to(victim, target_is_directory=True)
    (link / ".done-teacher.json").write_text("{}")
    with pytest.raises(ValueError, match="not inside"):
        R.clear_owned(R.RunSpec("teacher-resnet50-s0", "teacher", link, {}, outputs_root=root))
    assert _intact(victim)


def test_remove_stays_inside_its_root_and_never_follows_links(tmp_path):
    root = tmp_path / "outputs"
    victim = _victim(tmp_path / "victim")
    run = root / "smoke" / "run"
    run.mkdir(parents=True)
    (run / "dir_link").symlink_to(victim, target_is_directory=True)
    (run / "file_link").symlink_to(victim / "keep.txt")
    (run / "best.pt").write_text("x")
    for outside in (victim / "keep.txt", victim / "keepdir", root / ".." / "victim", root, tmp_path):
        with pytest.raises(F.OutsideRoot):
            F.remove(outside, root)
    F.remove(run / "dir_link", root)  # the link goes, never its target
    F.remove(run / "file_link", root)
    F.remove(run / "best.pt", root)
    assert list(run.iterdir()) == [] and _intact(victim)
    with pytest.raises(F.OutsideRoot):  # a folder outside the root is refused before it is created
        F.clear_results(tmp_path / "elsewhere", root)
    assert not (tmp_path / "elsewhere").exists()
    (run / "dir_link").symlink_to(victim, target_is_directory=True)
    F.clear_results(run)  # a notebook's call without a root: the folder itself bounds it
    assert list(run.iterdir()) == [] and _intact(victim)


# ----------------------------------------------------------------------------- case 10: types and ranges


@pytest.mark.parametrize("edits, message", [
    ({"train.epochs": 2.5}, r"epochs must be an integer, got 2\.5 \(float\)"),
    ({"train.epochs": True}, r"epochs must be an integer, got True \(bool\)"),
    ({"train.lr": float("inf")}, r"lr must be a finite number, got inf"),
    ({"train.threads": -4}, r"threads must be null or >= 1, got -4"),
    ({"train.threads": "two"}, r"threads must be an integer or null, got 'two' \(str\)"),
    ({"train.batch_size": 64.5}, r"batch_size must be an integer, got 64\.5"),
    ({"train.eval_batch_size": 0}, r"eval_batch_size must be >= 1, got 0"),
    ({"train.progress": "no"}, r"progress must be true or false, got 'no'"),
    ({"teacher.seeds": ["1"]}, r"teacher.seeds: must be a non-empty list of non-negative integers, got \['1'\]"),
    ({"students.seeds": [0, "1"]}, r"students.seeds: .* got \[0, '1'\]"),
    ({"students.seeds": [True]}, r"students.seeds: .* got \[True\]"),
    ({"students.seeds": [-1]}, r"students.seeds: .* got \[-1\]"),
    ({"data.subset.train": 10**9}, r"subset.train is 1000000000, more than the 7007 images of the train split"),
    ({"data.subset.val": 2.5}, r"subset must be a mapping of strings to integers or null, got \{.*'val': 2\.5"),
    ({"data.split_seed": -1}, r"split_seed must be >= 0, got -1"),
    ({"students.kd.0.alpha": "0.5"}, r"alpha must be a finite number, got '0\.5' \(str\)"),
    ({"students.kd.0.standardize": 1}, r"standardize must be true or false, got 1"),
    ({"students.arch_train.resnet18": [1]}, r"train overrides must be a mapping of TrainConfig settings, got \[1\]"),
    ({"evaluate.n_resamples": 2.5}, r"evaluate: n_resamples must be an integer, got 2\.5"),
    ({"efficiency.repeats": 0}, r"efficiency: repeats must be >= 1, got 0"),
    ({"efficiency.warmup": -1}, r"efficiency: warmup must be >= 0, got -1"),
    ({"efficiency.calib_images": "32"}, r"efficiency: calib_images must be an integer, got '32'"),
    ({"efficiency.threads": 1.5}, r"efficiency: threads must be an integer, got 1\.5"),
    ({"efficiency.batch_sizes": [1, 0]}, r"efficiency: batch_sizes must be >= 1 \(each entry\), got \[1, 0\]"),
    ({"efficiency.latency_seeds": [True]}, r"efficiency: latency_seeds must be a list of integers, got \[True\]"),
    ({"robustness.max_images": 0}, r"robustness: max_images must be >= 1, got 0"),
    ({"robustness.seeds": ["0"]}, r"robustness: seeds must be a list of integers or null, got \['0'\]"),
    ({"export.n_resamples": True}, r"export: n_resamples must be an integer, got True"),
    ({"export.coverage": 1.5}, r"export: coverage must lie in \(0, 1\], got 1\.5"),
    ({"aggregate": {"out_dir": "/tmp/victim"}}, r"aggregate: takes no parameters .* got \['out_dir'\]"),
])
def test_bad_values_are_named_before_any_compute(tmp_path, edits, message):
    with pytest.raises(R.ConfigError, match=message):
        R.expand(R.load_profile(_profile(tmp_path, **edits)), tmp_path / "outputs")


@pytest.mark.parametrize("source, message", [
    ("name: broken\ndata: {size: 28\nteacher: {}\nstudents: {}\n", r"not valid YAML: .* at line \d+, column \d+"),
    ("just some words\n", r"a profile must be a mapping of keys .* got a str"),
    ("- name: smoke\n", r"a profile must be a mapping of keys .* got a list"),
    ({"students": []}, r"students: must be a mapping of its settings, got \[\]"),
    ({"students": None}, r"students: must be a mapping of its settings, got None"),
    ({"data": None}, r"data: must be a mapping of its settings, got None"),
    ({"teacher": None}, r"teacher: must be a mapping of its settings, got None"),
    ({"evaluate": [200]}, r"evaluate: must be a mapping of its settings or null, got \[200\]"),
])
def test_cli_names_broken_profiles(tmp_path, capsys, source, message):
    """Exit 2 and a message saying what is expected, never a traceback; nothing written. ``source``: the
    profile's text, or edits of the smoke profile."""
    if isinstance(source, str):
        path = tmp_path / "profile.yaml"
        path.write_text(source)
    else:
        path = _profile(tmp_path, **source)
    assert R.main([str(path), "--outputs", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekd-run: error:") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- case 11: dry run and lock


def test_dry_run_writes_nothing(tmp_path, capsys):
    outputs = tmp_path / "outputs"
    assert R.main(["smoke", "--outputs", str(outputs), "--dry-run"]) == 0
    assert not outputs.exists()  # no cache, no lock, no folder
    out = capsys.readouterr().out
    assert "every image is decoded and checked when the runner executes" in out and "new" in out


def test_a_second_runner_on_the_same_outputs_is_refused(tmp_path, capsys, no_compute):
    outputs = tmp_path / "outputs"
    lock = outputs / "smoke" / ".edgekd-run.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as held:  # the first runner, in this process
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        assert R.main(["smoke", "--outputs", str(outputs), "--only", "data", "--no-estimate"]) == 2
        err = capsys.readouterr().err
        assert str(lock) in err and f"pid {os.getpid()}" in err
        assert no_compute == []  # nothing cleared or executed
        with pytest.raises(R.ConfigError, match="holds the lock"):
            R.run_profile("smoke", outputs, only=["data"], estimate=False)
    # once released, a runner takes the lock and runs
    rows = R.run_profile("smoke", outputs, only=["data"], estimate=False, log=lambda *_: None)
    assert [r["status"] for r in rows] == ["ran"] and no_compute == ["data:data"]


# ----------------------------------------------------------------------------- security hygiene


class _Payload:
    """Unpickling this creates ``path``: proof that a checkpoint ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def _arrays() -> D.DermaArrays:
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s, n in zip(info.SPLITS, (32, 14, 14), strict=True)}
    labels = {s: np.arange(len(x)) % info.NUM_CLASSES for s, x in images.items()}
    return D.DermaArrays(images, labels)


def test_checkpoints_load_with_weights_only_and_a_pickle_is_refused(tmp_path):
    arrays = _arrays()
    cfg = T.TrainConfig(epochs=1, batch_size=16, stem_stride=2, progress=False, threads=2, collapse="warn", ema=0.5)
    run = tmp_path / "teacher"
    T.seed_everything(0)
    T.fit(create_model("resnet18", 28, stem_stride=2), arrays, cfg, run, 0)
    ck = torch.load(run / "last.pt", weights_only=True)  # a real resume state: tensors, numbers, strings only
    assert {"model", "opt", "sched", "ema", "gen", "torch_rng", "history", "config"} <= set(ck)
    (run / "run_config.json").write_text('{"arch": "resnet18", "data": {"size": 28}, "train": {"stem_stride": 2}}')
    cache = T.teacher_cache(run, arrays, "dihedral", False, torch.device("cpu"))
    (path,) = run.glob("teacher_cache_*.pt")
    assert torch.equal(torch.load(path, weights_only=True)["logits"], cache["logits"])
    assert torch.equal(T.teacher_cache(run, arrays, "dihedral", False, torch.device("cpu"))["logits"], cache["logits"])

    marker = tmp_path / "code-ran"
    torch.save({**cache, "payload": _Payload(marker)}, path)  # a planted teacher cache
    with pytest.raises(pickle.UnpicklingError):
        T.teacher_cache(run, arrays, "dihedral", False, torch.device("cpu"))
    torch.save({"resume_key": "", "payload": _Payload(marker)}, run / "last.pt")  # a planted resume state
    with pytest.raises(pickle.UnpicklingError):
        T.fit(create_model("resnet18", 28, stem_stride=2), arrays, cfg, run, 0)
    assert not marker.exists()


def test_kernel_sockets_live_in_a_private_folder():
    manager = IPCKernelManager()
    folder = Path(manager.ip).parent
    st = folder.stat()
    assert folder != Path(tempfile.gettempdir()) / "edgekd-kernels"  # not a fixed path another user can plant
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert len(f"{manager.ip}-65535") < 100  # a unix socket path's limit (ports are appended to the name)
    assert Path(IPCKernelManager().ip).parent == folder  # one folder per process


# ======================================================================================================================
# No command replaces a folder it did not write: edgekd-publish.
#
# edgekd-publish replaces only an earlier publication of the same profile.
# ======================================================================================================================


def test_publish_never_replaces_a_folder_it_did_not_write(smoke_outputs, tmp_path):
    """A results/<profile> folder holding a user's file is refused (exit 2), whole; a planted staging folder survives."""
    root, _ = smoke_outputs
    results = tmp_path / "results"
    (results / "smoke" / "chapters").mkdir(parents=True)
    (results / "smoke" / "thesis.tex").write_text("years of work")
    (results / ".smoke.publishing").mkdir()
    (results / ".smoke.publishing" / "precious.txt").write_text("keep")
    assert publish.main(["smoke", "--outputs", str(root.parent), "--results", str(results)]) == 2
    assert (results / "smoke" / "thesis.tex").read_text() == "years of work" and (results / "smoke" / "chapters").is_dir()
    with pytest.raises(publish.NotPublishable, match=r"not an earlier publication of 'smoke' \(it also holds chapters, thesis.tex\)"):
        publish.publish("smoke", root.parent, results)
    (results / "smoke" / "thesis.tex").unlink()
    (results / "smoke" / "chapters").rmdir()
    assert publish.main(["smoke", "--outputs", str(root.parent), "--results", str(results)]) == 0  # an empty folder is fine
    assert publish.main(["smoke", "--outputs", str(root.parent), "--results", str(results)]) == 0  # and its own publication
    assert (results / ".smoke.publishing" / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in results.iterdir()) == [".smoke.publishing", "smoke"]


def test_publish_refuses_a_profile_name_that_leaves_the_results_folder(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    with pytest.raises(publish.NotPublishable, match="would publish outside"):
        publish.publish("../victim", tmp_path / "outputs", tmp_path / "results")
    assert (victim / "keep.txt").read_text() == "keep"


def test_bench_never_overwrites_a_file_it_did_not_write(tmp_path, capsys):
    """edgekd-bench --csv: a file that is not an earlier bench CSV is refused (exit 2) before any model is built."""
    notes = tmp_path / "notes.csv"
    notes.write_text("my measurements\n")
    assert bench.main(["--untrained", "--repeats", "1", "--warmup", "0", "--csv", str(notes)]) == 2
    assert notes.read_text() == "my measurements\n"
    assert "is not a CSV edgekd-bench wrote" in capsys.readouterr().err
    assert bench.main(["--untrained", "--repeats", "1", "--warmup", "0", "--csv", str(tmp_path)]) == 2
    earlier = tmp_path / "bench.csv"
    earlier.write_text(",".join(bench.CSV_COLUMNS) + "\n")
    assert bench.csv_refusal(earlier, force=False) is None and bench.csv_refusal(notes, force=True) is None
    # --ops writes <csv stem>_ops.csv beside it: a foreign file there (reached through "..") is refused too
    (tmp_path / "sub").mkdir()
    ops = tmp_path / "bench_ops.csv"
    ops.write_text("my operator notes\n")
    argv = ["--untrained", "--repeats", "1", "--warmup", "0", "--ops", "1", "--csv", str(tmp_path / "sub" / ".." / "bench.csv")]
    assert bench.main(argv) == 2
    assert ops.read_text() == "my operator notes\n" and "bench_ops.csv exists and is not a CSV" in capsys.readouterr().err


# ======================================================================================================================
# Round two (issue 33): --force never overwrites a command's own inputs, a bundle is replaced only when its hashes
# verify, no silent wrong answers, and damaged inputs get exit 2 with a one-line message rather than a traceback.
# ======================================================================================================================


def assert_clean_refusal(rc: int, err: str, message: str) -> None:
    """Exit 2, ``message`` on stderr, no traceback."""
    assert rc == 2, err
    assert message in err and "Traceback" not in err, err


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- data loss: --force and inputs

def _force_case(case: str, tmp: Path, bundle: Path, photos: Path, labels: Path) -> list[str | Path]:
    """edgekd-predict arguments for ``case``: each names one of the command's own inputs as an output, with --force."""
    if case == "out is the bundle's model.onnx":
        return [bundle, photos, "--out", bundle / "model.onnx"]
    if case == "out is the bundle's model_int8.onnx (int8)":
        return [bundle, photos, "--backend", "int8", "--out", bundle / "model_int8.onnx"]
    if case == "out is bundle.json, the model passed":
        return [bundle / "model.onnx", photos, "--out", bundle / "bundle.json"]
    if case == "metrics is the bundle's card":
        return [bundle, photos, "--labels", labels, "--out", tmp / "p.csv", "--metrics", bundle / "MODEL_CARD.md"]
    assert case == "out is a hard link to an input image"
    os.link(photos / "a.png", tmp / "linked.csv")
    return [bundle, photos, "--out", tmp / "linked.csv"]


@pytest.mark.parametrize("case", ["out is the bundle's model.onnx", "out is the bundle's model_int8.onnx (int8)",
                                  "out is bundle.json, the model passed", "metrics is the bundle's card",
                                  "out is a hard link to an input image"])
def test_force_never_overwrites_the_commands_own_inputs(case, tmp_path, bundle, photos, labels, capsys):
    """Like ``cp -f`` refusing "are the same file": the bundle's files and the input images (by inode too) are never
    outputs, --force or not (exit 2 before decoding, nothing changed)."""
    args = _force_case(case, tmp_path, bundle, photos, labels)
    before, images = snapshot(bundle), snapshot(photos)
    rc, out, err = run(capsys, *args, "--force")
    assert_clean_refusal(rc, out + err, "refusing to overwrite an input (even with --force)")
    assert snapshot(bundle) == before and snapshot(photos) == images


@pytest.fixture
def profile_dir(tmp_path: Path, fake_bundle_dir: Path) -> Path:
    """A profile folder for edgekd-bench: the synthetic run as the seed-0 teacher and the seed-0 ``kd`` student."""
    folder = tmp_path / "profile"
    for name in ("teacher-resnet18-s0", "student-resnet18-kd-s0"):
        shutil.copytree(fake_bundle_dir.parent / "run", folder / name, ignore=shutil.ignore_patterns("tb", "last.pt"))
    return folder


@pytest.fixture
def no_benchmark(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """edgekd-bench's timing replaced by an empty table (the CSV is still written); the names it was asked to time."""
    called: list[str] = []

    def fake(candidates, *args, **kwargs):
        called.extend(c.name for c in candidates)
        return pd.DataFrame(columns=list(bench.CSV_COLUMNS))

    monkeypatch.setattr(bench, "benchmark", fake)
    return called


@pytest.mark.parametrize("case", ["the run's best.pt", "a hard link to the run's best.pt"])
def test_bench_force_never_overwrites_a_benchmarked_run(case, tmp_path, profile_dir, no_benchmark, capsys):
    """edgekd-bench --csv RUN/best.pt --force on the run it benchmarks: exit 2 before any model is loaded."""
    best = profile_dir / "student-resnet18-kd-s0" / "best.pt"
    target = best
    if case != "the run's best.pt":
        target = tmp_path / "bench.csv"
        os.link(best, target)
    before = best.read_bytes()
    rc = bench.main(["--profile-dir", str(profile_dir), "--csv", str(target), "--force"])
    assert_clean_refusal(rc, capsys.readouterr().err, "best.pt of the benchmarked run")
    assert best.read_bytes() == before and no_benchmark == []


def test_bench_csv_in_a_missing_folder_is_refused_before_any_work(tmp_path, no_benchmark, capsys):
    target = tmp_path / "missing" / "bench.csv"
    rc = bench.main(["--untrained", "--repeats", "1", "--warmup", "0", "--csv", str(target)])
    assert_clean_refusal(rc, capsys.readouterr().err, f"its folder {target.parent} does not exist")
    assert no_benchmark == [] and not target.parent.exists()


def test_bench_names_a_truncated_checkpoint(profile_dir, tmp_path, no_benchmark, capsys):
    best = profile_dir / "student-resnet18-kd-s0" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    rc = bench.main(["--profile-dir", str(profile_dir), "--csv", str(tmp_path / "b.csv")])
    assert_clean_refusal(rc, capsys.readouterr().err, f"{best} cannot be loaded as a checkpoint")
    assert no_benchmark == [] and not (tmp_path / "b.csv").exists()


# ------------------------------------------------------------------ data loss: export replaces verified bundles

def annotated_card(folder: Path, bundle: Path) -> str:
    shutil.copytree(bundle, folder)
    with open(folder / "MODEL_CARD.md", "a") as fh:
        fh.write("\nMy notes: validated on our clinic's images in March.\n")
    return "MODEL_CARD.md does not match its sha256"


def hand_written_manifest(folder: Path, bundle: Path) -> str:
    folder.mkdir()
    (folder / "bundle.json").write_text('{"format": "edgekd-bundle", "files": {"thesis.tex": {}}}\n')
    (folder / "thesis.tex").write_text("\\chapter{Results}\n")
    return "thesis.tex"


def resealed_without_int8(folder: Path, bundle: Path) -> str:
    """A bundle whose manifest was edited (a file dropped) and resealed: its hashes no longer describe the folder."""
    shutil.copytree(bundle, folder)
    manifest = read(folder)
    del manifest["files"]["model_int8.onnx"]
    write(folder, manifest, reseal=False)
    return "was edited after export"


@pytest.mark.parametrize("make", [annotated_card, hand_written_manifest, resealed_without_int8])
def test_export_replaces_only_a_bundle_whose_hashes_verify(make, tmp_path, fake_bundle_dir, capsys):
    """A folder is replaced only when bundle.json's manifest_sha256 and every listed file's sha256 verify (the check
    edgekd-predict makes); otherwise exit 2, the reason named, and the folder left as it was."""
    out = tmp_path / "out"
    message = make(out, fake_bundle_dir)
    before = snapshot(out)
    rc, err = export_cli(capsys, fake_bundle_dir.parent / "run", "--out", out, "--no-int8", "--n-resamples", "20")
    assert_clean_refusal(rc, err, message)
    assert snapshot(out) == before


def test_export_refuses_the_current_folder_before_any_work(tmp_path, fake_bundle_dir, capsys, monkeypatch):
    """``edgekd-export RUN --out .`` in an empty folder: exit 2 naming the current folder, nothing left behind."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    rc, err = export_cli(capsys, fake_bundle_dir.parent / "run", "--out", ".", "--no-int8", "--n-resamples", "20")
    assert_clean_refusal(rc, err, "is the current folder or holds it")
    assert list(here.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def planted_pickle(run: Path) -> str:
    torch.save({"payload": _Payload(run.parent / "code-ran")}, run / "best.pt")
    return f"{run / 'best.pt'} cannot be loaded as a checkpoint: it holds objects other than tensors"


def truncated_checkpoint(run: Path) -> str:
    (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:4096])
    return f"{run / 'best.pt'} cannot be loaded as a checkpoint (damaged or truncated)"


def other_architecture(run: Path) -> str:
    torch.save(create_model("mobilenetv2_100", 28, stem_stride=2).state_dict(), run / "best.pt")
    return f"{run / 'best.pt'} does not hold the weights of a resnet18 at 28 px"


def empty_config(run: Path) -> str:
    (run / "run_config.json").write_text("{}")
    return f"{run / 'run_config.json'} lacks arch, data, train"


@pytest.mark.parametrize("damage", [planted_pickle, truncated_checkpoint, other_architecture, empty_config])
def test_export_names_a_damaged_run(damage, tmp_path, fake_bundle_dir, capsys):
    run_dir = Path(shutil.copytree(fake_bundle_dir.parent / "run", tmp_path / "run", ignore=shutil.ignore_patterns("tb")))
    message = damage(run_dir)
    rc, err = export_cli(capsys, run_dir, "--out", tmp_path / "bundle", "--no-int8", "--n-resamples", "20")
    assert_clean_refusal(rc, err, message)
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bundle").exists()
    assert not (tmp_path / "code-ran").exists()


# ------------------------------------------------------------------------ silent wrong answers: the bundle

def widen(model: Path, width: int) -> None:
    """Give the ONNX model ``model`` ``width`` outputs (its 7 logits times a 7 x width matrix), metadata kept."""
    graph_model = onnx.load(str(model))
    graph = graph_model.graph
    logits, batch = graph.output[0].name, graph.output[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    weights = np.random.default_rng(0).standard_normal((len(CLASS_NAMES), width)).astype(np.float32)
    graph.initializer.append(onnx.numpy_helper.from_array(weights, "widen_w"))
    graph.node.append(onnx.helper.make_node("MatMul", [logits, "widen_w"], ["wide_logits"]))
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info("wide_logits", onnx.TensorProto.FLOAT, [batch, width]))
    onnx.save(graph_model, str(model))


def wide_alone(folder: Path, width: int = 10) -> Path:
    alone = folder.parent / "alone"
    alone.mkdir()
    model = Path(shutil.copy(folder / "model.onnx", alone / "model.onnx"))
    widen(model, width)
    return model


def wide_in_bundle(width: int) -> Edit:
    def edit(folder: Path) -> Path:
        widen(folder / "model.onnx", width)
        manifest = read(folder)
        relist(folder, manifest, "model.onnx")
        write(folder, manifest)
        return folder

    return edit


def int8_as_fp32(folder: Path) -> Path:
    shutil.copy(folder / "model_int8.onnx", folder / "model.onnx")
    manifest = read(folder)
    relist(folder, manifest, "model.onnx")
    write(folder, manifest)
    return folder


def duplicate_operating_points(folder: Path) -> Path:
    """bundle.json with operating_points stated twice; manifest_sha256 verifies for the last (json's) reading."""
    text = (folder / "bundle.json").read_text()
    (folder / "bundle.json").write_text(text.replace("{", '{"operating_points": {"temperature": 50.0}, ', 1))
    return folder


BUNDLE_LIES = {
    "10 outputs, alone": (wide_alone, "gives output ['batch', 10], not (batch, 7)"),
    "10 outputs, hashes recomputed": (wide_in_bundle(10), "gives output ['batch', 10], not (batch, 7)"),
    "3 outputs, hashes recomputed": (wide_in_bundle(3), "gives output ['batch', 3], not (batch, 7)"),
    "int8 graph as model.onnx": (int8_as_fp32, "own edgekd.precision metadata is 'int8', but bundle.json states precision 'fp32'"),
    "another architecture's graph": (consistent_model_edit(arch="mobilenetv2_100"),
                                     "own edgekd.arch metadata is 'mobilenetv2_100', but bundle.json states arch 'resnet18'"),
    "operating_points stated twice": (duplicate_operating_points, "states the key operating_points twice"),
}


@pytest.mark.parametrize("case", list(BUNDLE_LIES))
def test_the_bundle_cannot_lie_about_what_runs(case, tmp_path, bundle, image):
    """The output width equals the number of classes (checked at load), the graph's own edgekd.arch and
    edgekd.precision agree with bundle.json, and bundle.json states no key twice."""
    edit, message = BUNDLE_LIES[case]
    assert_refused(edit(bundle), image, tmp_path, message)


# ---------------------------------------------------------------------- silent wrong answers: the numbers

def test_macro_f1_over_the_classes_present_equals_sklearn():
    """An outside set with only mel and nv: macro-F1 over those 2 classes, as sklearn's f1_score gives for them
    (a perfect model scores 1, not 0.29); where every class is present the 7-class figure is unchanged."""
    mel, nv = CLASS_NAMES.index("mel"), CLASS_NAMES.index("nv")
    y = np.array([mel, nv, nv, mel, nv, nv, mel, nv])
    pred = np.array([mel, nv, mel, mel, nv, nv, nv, nv])
    for guess in (y, pred):
        expected = f1_score(y, guess, average="macro")
        assert P.macro_f1(y, guess) == pytest.approx(expected, abs=1e-12)
        assert M.macro_f1(y, guess, M.scored_classes(y)) == pytest.approx(expected, abs=1e-12)
    assert P.macro_f1(y, y) == 1.0
    full = np.arange(70) % len(CLASS_NAMES)
    guess = np.roll(full, 3) * (np.arange(70) % 4 != 0) + full * (np.arange(70) % 4 == 0)
    assert list(M.scored_classes(full)) == list(range(len(CLASS_NAMES)))
    assert P.macro_f1(full, guess) == M.macro_f1(full, guess) == f1_score(full, guess, labels=list(range(7)), average="macro")


def test_predict_names_the_classes_its_macro_f1_covers(tmp_path, fake_bundle_dir, photos, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\na,mel\nb,nv\nc,nv\n")
    out = tmp_path / "p.csv"
    rc, stdout, err = run(capsys, fake_bundle_dir, photos, "--labels", labels, "--out", out)
    assert rc == P.EXIT_OK, err
    assert "macro-F1 over 2 of 7 classes (mel, nv)" in stdout
    pred = [CLASS_NAMES.index(r["pred"]) for r in rows(out)]
    y = [CLASS_NAMES.index(c) for c in ("mel", "nv", "nv")]
    metrics = {r["metric"]: float(r["value"]) for r in rows(tmp_path / "p_metrics.csv")}
    expected = f1_score(y, pred, labels=sorted(set(y)), average="macro", zero_division=0)  # over the labels' classes
    assert metrics["macro_f1"] == pytest.approx(expected, abs=1e-12)


def test_publish_refuses_a_symlink_in_the_aggregate(tmp_path, monkeypatch):
    """An aggregate CSV that is a symlink to an outside file is not published with that file's content."""
    agg = tmp_path / "outputs" / "smoke" / "aggregate"
    agg.mkdir(parents=True)
    (agg / "numbers.json").write_text("{}\n")
    secret = tmp_path / "secret.csv"
    secret.write_text("private,data\n")
    (agg / "seed_metrics.csv").symlink_to(secret)
    monkeypatch.setattr(publish, "check_complete", lambda *args: None)
    monkeypatch.setattr(publish, "collect_provenance", lambda *args: {"profile": "smoke"})
    with pytest.raises(publish.NotPublishable, match=r"holds symlinks \(seed_metrics.csv\)"):
        publish.publish("smoke", tmp_path / "outputs", tmp_path / "results")
    assert not (tmp_path / "results" / "smoke").exists()


def test_an_animated_gif_is_noted_as_scored_on_its_first_frame(tmp_path, fake_bundle_dir, capsys):
    frames = [Image.fromarray(np.full((64, 64, 3), v, dtype=np.uint8)) for v in (40, 200)]
    gif = tmp_path / "moving.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    rc, _, err = run(capsys, fake_bundle_dir, gif, "--out", tmp_path / "p.csv")
    assert rc == P.EXIT_OK, err
    assert "animated image: scored on its first frame only" in rows(tmp_path / "p.csv")[0]["note"]


# ----------------------------------------------------------------------- tracebacks and exit codes

def test_a_closed_stdout_is_quiet_and_every_file_is_written(tmp_path, fake_bundle_dir, photos, labels):
    """``edgekd-predict ... | head -1``: stdout closed before anything is printed; the files are written, the exit
    status is the normal one, and no BrokenPipeError is shown."""
    out = tmp_path / "p.csv"
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.edge.predict", str(fake_bundle_dir), str(photos),
                             "--labels", str(labels), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == P.EXIT_OK, err
    assert "BrokenPipe" not in err and "Traceback" not in err, err
    assert len(rows(out)) == 3 and rows(tmp_path / "p_metrics.csv")[0]["metric"] == "n"


@pytest.mark.parametrize("case", ["fifo", "/dev/zero"])
def test_a_special_file_input_is_not_a_regular_file(case, tmp_path, fake_bundle_dir, capsys):
    if case == "fifo":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("needs /dev/zero")
    rc, out, err = run(capsys, fake_bundle_dir, path, "--out", tmp_path / "p.csv")
    assert_clean_refusal(rc, out + err, f"input {path} is not a regular file")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("case", ["seed 2**32", "300-character name", "duplicate key", "invalid UTF-8",
                                  "outputs root is a file", "outputs root is /proc/self"])
def test_the_dry_run_refuses_what_would_fail_later(case, tmp_path, monkeypatch, capsys):
    """Each of these passed the dry run and failed later (training, the first folder, the first write), or gave a
    codec error naming no file: now exit 2 with the file and the problem named, in the dry run."""
    path = _profile(tmp_path)
    if case == "seed 2**32":
        path, message = _profile(tmp_path, **{"students.seeds": [0, 2**32]}), "each below 2**32"
    elif case == "300-character name":
        path, message = _profile(tmp_path, name="n" * 300), "has 300 characters, more than 100"
    elif case == "duplicate key":
        text = path.read_text().replace("epochs: 2\n", "epochs: 2\n  epochs: 200\n", 1)
        assert text.count("epochs: 200") == 1
        path.write_text(text)
        message = "duplicate key 'epochs' at line"
    elif case == "invalid UTF-8":
        path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
        message = f"{path}: not UTF-8 text"
    elif case == "outputs root is a file":
        (tmp_path / "outputs").write_text("a file\n")
        monkeypatch.setenv(info.OUTPUTS_ENV, str(tmp_path / "outputs"))
        message = f"outputs root {tmp_path / 'outputs'} cannot be written: {tmp_path / 'outputs'} is not a folder"
    else:
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc")
        monkeypatch.setenv(info.OUTPUTS_ENV, "/proc/self")
        message = "outputs root /proc/self cannot be written: no file can be created in /proc/self"
    rc = R.main([str(path), "--dry-run"] + ([] if case.startswith("outputs root") else ["--outputs", str(tmp_path / "out")]))
    err = capsys.readouterr().err
    assert_clean_refusal(rc, err, message)
    assert err.startswith("edgekd-run: error:") and not (tmp_path / "out").exists()
