"""Tensor views of image batches: normalisation, the dihedral views, and the training augmentations (torch)."""

from __future__ import annotations

import numpy as np
import torch

from edgekd.core import info
from edgekd.core.config import AUGMENTS
from edgekd.core.preprocess import to_input

#: Number of distinct views each augmentation produces (dihedral group D4 = 8).
AUGMENT_VIEWS: dict[str, int] = {"none": 1, "flip": 2, "dihedral": 8}


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC images -> float32 NCHW tensor (:func:`edgekd.core.preprocess.to_input`)."""
    return torch.from_numpy(to_input(np.asarray(images)))


def dihedral(x: torch.Tensor, view: int) -> torch.Tensor:
    """View ``view`` in 0..7 of the dihedral group on NCHW ``x``: rotate by 90°·(view % 4), then flip if view >= 4."""
    out = torch.rot90(x, view % 4, dims=(2, 3))
    return torch.flip(out, dims=(3,)) if view >= 4 else out


def apply_views(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample dihedral view to a batch (views: int tensor of len N)."""
    out = torch.empty_like(x)
    for v in views.unique().tolist():
        m = views == v
        out[m] = dihedral(x[m], int(v))
    return out


def random_resized_crop(x: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image random-resized crop of NCHW ``x`` back to its size (bilinear, one ``grid_sample``).

    Each crop covers an area fraction drawn from U(min_scale, 1) with a log-uniform aspect ratio in
    [3/4, 4/3] (sides capped at the image), at a uniform position inside the image.
    """
    n = len(x)
    area = min_scale + (1.0 - min_scale) * torch.rand(n, generator=generator)
    log_r = (torch.rand(n, generator=generator) * 2 - 1) * np.log(4 / 3)
    w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
    h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = torch.nn.functional.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors from U(1 - strength, 1 + strength).

    ``x`` is normalised (ImageNet statistics); the jitter acts on the [0, 1] image and is clipped there.
    """
    n = len(x)
    mean = torch.tensor(info.MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(info.STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    b, c, s = (1 + (torch.rand(3, n, 1, 1, 1, generator=generator) * 2 - 1) * strength).to(x.device, x.dtype)
    img = (x * std + mean) * b
    img = (img - img.mean((1, 2, 3), keepdim=True)) * c + img.mean((1, 2, 3), keepdim=True)
    grey = (img * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    img = ((img - grey) * s + grey).clamp(0.0, 1.0)
    return (img - mean) / std


def views_of(augment: str) -> list[int]:
    """Dihedral view indices an augmentation draws from ('flip' uses views 0 and 4)."""
    if augment not in AUGMENTS:
        raise ValueError(f"augmentation {augment!r} is not one of {AUGMENTS}")
    return [0, 4] if augment == "flip" else list(range(AUGMENT_VIEWS[augment]))


def sample_views(n: int, augment: str, generator: torch.Generator) -> torch.Tensor:
    """Random view indices for ``n`` images under ``augment`` ('flip' uses views 0 and 4)."""
    if augment not in AUGMENTS:
        raise ValueError(f"augmentation {augment!r} is not one of {AUGMENTS}")
    k = AUGMENT_VIEWS[augment]
    v = torch.randint(0, k, (n,), generator=generator)
    return v * 4 if augment == "flip" else v
