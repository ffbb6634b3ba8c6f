"""Model factory over ``timm`` (teacher and students), with a small-input stem and stage features."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from edgekd import info

#: Stage indices of ``forward_intermediates`` used for attention transfer. All four supported
#: architectures expose five stages at reductions 2, 4, 8, 16, 32, so the same indices match.
AT_STAGES: tuple[int, ...] = (1, 2, 3)


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
) -> nn.Module:
    """Build ``arch`` through timm for ``img_size`` inputs.

    ``stem_stride`` None picks ``default_stem_stride(img_size)``. ``pretrained`` loads timm's
    ImageNet weights (from the local Hugging Face cache, or ``weights_file``) and raises
    ``PretrainedUnavailable`` with a clear message when they cannot be had.
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
    return model


def forward_with_stages(
    model: nn.Module, x: torch.Tensor, stages: tuple[int, ...] = AT_STAGES
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the feature maps of ``stages`` in one forward pass."""
    final, inter = model.forward_intermediates(x, indices=max(stages) + 1 if stages else 1)
    return model.forward_head(final), [inter[i] for i in stages]
