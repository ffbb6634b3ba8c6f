"""Image preprocessing shared by training and deployment: numpy and Pillow only (no torch).

The one recipe, defined here and nowhere else:

1. decode to 8-bit RGB (greyscale, palette, CMYK and RGBA images are converted; alpha is dropped);
2. take the centre square of the frame (DermaMNIST's crop) and resize it to ``size`` x ``size``
   with bicubic resampling;
3. scale to [0, 1], subtract the ImageNet mean and divide by its std, channels first.

:data:`RECIPE` states it as data, for ``bundle.json`` and ONNX metadata. The edge predictor
(:mod:`edgekd.edge.predict`) imports this module, so it must never import torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgekd.core import info

#: The preprocessing a model expects, as stored in a bundle.
RECIPE: dict = {
    "decode": "RGB, 8 bit per channel (greyscale/palette/CMYK converted, alpha dropped; 16-bit scaled to 8 bit)",
    "crop": "centre square (side = min(width, height))",
    "resize": "bicubic to size x size",
    "scale": 1.0 / 255.0,
    "mean": list(info.MEAN),
    "std": list(info.STD),
    "layout": "NCHW float32",
}


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of ``image``: 16-bit greyscale is scaled down, alpha is dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert("L") clips 16-bit values at 255; scale by the format's range instead.
        scale = 65535.0 if image.mode.startswith("I;16") else max(1.0, float(np.asarray(image).max()))
        grey = np.clip(np.asarray(image, dtype=np.float64) / scale * 255.0, 0, 255)
        image = Image.fromarray(np.rint(grey).astype(np.uint8))
    return image.convert("RGB")


def centre_square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Centre square crop, then bicubic resize to ``size`` (uint8 HWC RGB)."""
    rgb = to_rgb(image)
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def check_images(images: np.ndarray) -> None:
    """Raise ValueError unless ``images`` is a uint8 numpy array of shape ``(N, H, W, 3)``."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"images must be a uint8 numpy array, got {type(images).__name__} {getattr(images, 'dtype', '')}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` images -> float32 ``(N, 3, H, W)`` model input, ImageNet-normalised."""
    check_images(images)
    x = images.astype(np.float32) * np.float32(RECIPE["scale"])
    x = (x - np.asarray(info.MEAN, np.float32)) / np.asarray(info.STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
