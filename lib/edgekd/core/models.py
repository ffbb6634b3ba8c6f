"""Model factory over ``timm`` (teacher and students), with a small-input stem and stage features."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from edgekd.core import info

#: Stage indices of ``forward_intermediates`` used for attention transfer: its feature stages
#: 0..4 sit at reductions 1, 2, 4, 8, 16 relative to the stem's output for all four architectures
#: (ResNet: act1, layer1..4; MobileNetV2 / EfficientNet-B0: blocks 0, 1, 2, 4, 6), so the same
#: indices match teacher and students. Stages 1, 2, 3 are at 1/2, 1/4 and 1/8 of the stem's output
#: (a 64 px input with ``stem_stride`` 2 gives 16x16, 8x8 and 4x4 maps; 28 px gives 7x7, 4x4, 2x2).
AT_STAGES: tuple[int, ...] = (1, 2, 3)
#: Standard deviation of the re-initialised classifier weights (see :func:`init_head`).
HEAD_INIT_STD: float = 0.01


class PretrainedUnavailable(RuntimeError):
    """Raised when ``pretrained=True`` but the weights cannot be had (e.g. no network)."""


def check_arch(arch: str) -> str:
    """Return ``arch`` if it is one of the project's architectures, else raise."""
    if arch not in info.ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {info.ARCHS}")
    return arch


def default_stem_stride(img_size: int) -> int:
    """Stem stride 1 for 28 and 64 px inputs (keeps feature maps above 1x1), 2 otherwise."""
    return 1 if img_size <= 64 else 2


def set_stem_stride(model: nn.Module, stride: int) -> None:
    """Set the stride of the first convolution (ResNet ``conv1``, EfficientNet/MobileNet ``conv_stem``)."""
    stem = getattr(model, "conv1", None) or getattr(model, "conv_stem", None)
    if not isinstance(stem, nn.Conv2d):
        raise ValueError(f"{type(model).__name__} has no conv1/conv_stem to adapt")
    stem.stride = (stride, stride)


def create_model(
    arch: str,
    img_size: int,
    num_classes: int = info.NUM_CLASSES,
    pretrained: bool = False,
    stem_stride: int | None = None,
    drop_rate: float = 0.0,
    weights_file: str | Path | None = None,
    head_init_std: float | None = None,
) -> nn.Module:
    """Build ``arch`` through timm for ``img_size`` inputs.

    ``stem_stride`` None picks ``default_stem_stride(img_size)``. ``pretrained`` loads timm's
    ImageNet weights (from the local Hugging Face cache, or ``weights_file``) and raises
    ``PretrainedUnavailable`` with a clear message when they cannot be had. ``head_init_std``
    re-initialises the classifier (:func:`init_head`); None keeps timm's initialisation.
    """
    check_arch(arch)
    if img_size not in info.SIZES:
        raise ValueError(f"image size {img_size!r} is not one of {info.SIZES}")
    kwargs: dict = {"num_classes": num_classes, "drop_rate": drop_rate}
    if pretrained:
        if weights_file is not None:
            if not Path(weights_file).is_file():
                raise PretrainedUnavailable(f"weights file {weights_file} does not exist")
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights_file)}
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as exc:  # timm/huggingface_hub raise many types when offline
            raise PretrainedUnavailable(
                f"pretrained weights for {arch!r} could not be loaded ({type(exc).__name__}: {exc}). "
                "This machine may have no network: fetch them once into the Hugging Face cache "
                "where a network exists, pass weights_file=..., or use pretrained=False."
            ) from exc
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
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
