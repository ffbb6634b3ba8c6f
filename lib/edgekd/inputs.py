"""Image files and labels CSVs from outside the training data: numpy, Pillow and the standard library only (no torch).

Shared by the edge predictor (:mod:`edgekd.predict`) and the external test sets (:mod:`edgekd.external`),
so both read images and labels the same way.

Images. A folder contributes its ``.jpg`` / ``.jpeg`` / ``.png`` files (not recursive); a file named
explicitly is always tried. An image's id is its file name without the suffix (ISIC style,
``ISIC_0024306``). :func:`read_image` decodes one with the training recipe (:mod:`edgekd.preprocess`):

* converted, with a note: greyscale, palette, CMYK (plain conversion, no colour management), RGBA
  (alpha dropped), 16-bit PNG (scaled to 8 bit), images smaller than the model input (upsampled);
* skipped (:class:`UnreadableImage`): a file Pillow cannot identify, a corrupt or truncated file, an
  image mode with no RGB meaning, and images whose shorter side is under :data:`MIN_SIDE` px: a 1x1
  (or 8x8) image can be centre-cropped and resized, but the result is a flat colour that says
  nothing about a lesion, so a probability for it would be meaningless.

Labels. A CSV with an ``image`` column and either one-hot class columns (ISIC ground truth:
``MEL,NV,BCC,AKIEC,BKL,DF,VASC`` in any order and case) or one ``label`` column holding a class
name or a DermaMNIST index (0 akiec ... 6 vasc). Every problem raises :class:`InputError` naming
the offending lines, before any image is decoded.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgekd.info import CLASS_NAMES
from edgekd.preprocess import centre_square_resize

#: Suffixes a folder's images must have (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
#: Images whose shorter side is below this are skipped (see the module docstring).
MIN_SIDE: int = 16
#: Image modes :func:`read_image` converts, with the note it gives (None: nothing to say).
MODE_NOTES: dict[str, str | None] = {
    "RGB": None,
    "RGBX": None,
    "YCbCr": None,
    "L": "greyscale converted to RGB",
    "1": "1-bit image converted to RGB",
    "LA": "greyscale converted to RGB, alpha dropped",
    "P": "palette image converted to RGB",
    "PA": "palette image converted to RGB, alpha dropped",
    "RGBA": "alpha channel dropped",
    "CMYK": "CMYK converted to RGB (no colour management)",
    "I;16": "16-bit greyscale scaled to 8 bit",
    "I;16B": "16-bit greyscale scaled to 8 bit",
    "I;16L": "16-bit greyscale scaled to 8 bit",
    "I": "32-bit greyscale scaled to 8 bit by its maximum",
}
#: Most problem lines an error message lists.
MAX_LISTED: int = 10


class InputError(ValueError):
    """Bad arguments or labels, found before any inference."""


class UnreadableImage(ValueError):
    """An image file that cannot be scored (the batch goes on without it)."""


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def image_id(name: str) -> str:
    """The id of an image file name or labels entry: the name without an image suffix (``ISIC_1.jpg`` -> ``ISIC_1``)."""
    name = name.strip()
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name


def find_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """The image files named by ``inputs`` (files and folders) in order, and the folder files ignored for their suffix.

    Raises InputError for a path that does not exist, no image at all, or two files with the same id.
    """
    files: list[Path] = []
    ignored: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file())
            files += [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
            ignored += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"input {path} does not exist")
    files = list(dict.fromkeys(files))  # a file named twice is scored once
    if not files:
        raise InputError("no image files (.jpg, .jpeg, .png) among the inputs")
    by_id: dict[str, list[str]] = {}
    for path in files:
        by_id.setdefault(image_id(path.name), []).append(str(path))
    clashes = [f"{key} ({' and '.join(paths)})" for key, paths in by_id.items() if len(paths) > 1]
    if clashes:
        raise InputError(f"{len(clashes)} image ids are used by more than one file: {_listed(clashes)}")
    return files, ignored


def _png_bit_depth(path: Path) -> int:
    """Bit depth in a PNG file's IHDR chunk (byte 24)."""
    with open(path, "rb") as fh:
        head = fh.read(25)
    return head[24] if len(head) == 25 else 8


def read_image(path: str | Path, size: int) -> tuple[np.ndarray, str]:
    """Decode ``path`` and apply the training recipe at ``size``: uint8 (size, size, 3) and a note ('' if none).

    Raises UnreadableImage (see the module docstring for what is converted and what is skipped).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return _prepare(im, path, size)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"corrupt or truncated image: {exc}") from None


def _prepare(im: Image.Image, path: Path, size: int) -> tuple[np.ndarray, str]:
    """The checks and conversions of :func:`read_image` on a decoded image."""
    if im.mode not in MODE_NOTES:
        raise UnreadableImage(f"image mode {im.mode} has no RGB conversion")
    notes = [MODE_NOTES[im.mode]]
    if im.format == "PNG" and im.mode in ("RGB", "RGBA") and _png_bit_depth(path) == 16:
        notes.append("16-bit PNG reduced to 8 bit")
    side = min(im.size)
    if side < MIN_SIDE:
        raise UnreadableImage(f"image is {im.size[0]}x{im.size[1]} px; its shorter side must be at least {MIN_SIDE} px")
    if side < size:
        notes.append(f"upsampled: its centre square is {side} px, the model takes {size} px")
    return centre_square_resize(im, size), "; ".join(n for n in notes if n)


# ------------------------------------------------------------------------------------------ labels

def _class_index(value: str) -> int | None:
    """Class index of a label cell: a class name (any case) or a DermaMNIST index; None if neither."""
    value = value.strip()
    if value.lower() in CLASS_NAMES:
        return CLASS_NAMES.index(value.lower())
    if value.isdigit() and int(value) < len(CLASS_NAMES):
        return int(value)
    return None


def _one_hot_index(cells: Sequence[str]) -> int | None:
    """Index of the single 1 among 0/1 cells (``1``, ``1.0``, ``0``...); None unless exactly one is 1 and the rest 0."""
    try:
        values = [float(c) for c in cells]
    except ValueError:
        return None
    if any(v not in (0.0, 1.0) for v in values) or sum(values) != 1.0:
        return None
    return values.index(1.0)


def read_labels(path: str | Path) -> dict[str, int]:
    """``{image id: class index}`` from a labels CSV (ISIC one-hot or ``image,label``), in file order.

    Raises InputError naming the offending lines: unreadable file, unknown or missing columns,
    unknown classes, rows that are not one-hot, empty or duplicate ids.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"labels CSV {path} cannot be read: {exc}") from None
    rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(io.StringIO(text)), 1) if any(c.strip() for c in row)]
    if not rows:
        raise InputError(f"labels CSV {path} is empty")
    names = rows[0][1]
    header = [c.lower() for c in names]
    expected = f"expected image,label or image plus one-hot columns {','.join(c.upper() for c in CLASS_NAMES)}"
    if header.count("image") != 1 or len(set(header)) != len(header):
        raise InputError(f"labels CSV {path}: header {names} needs exactly one 'image' column and no repeated column ({expected})")
    others = [c for c in header if c != "image"]
    if others != ["label"]:
        unknown = [name for name, c in zip(names, header, strict=True) if c not in (*CLASS_NAMES, "image")]
        missing = [c.upper() for c in CLASS_NAMES if c not in others]
        if unknown or missing:
            what = "; ".join(part for part in (f"unknown columns {unknown}" if unknown else "",
                                               f"missing columns {missing}" if missing else "") if part)
            raise InputError(f"labels CSV {path}: {what} ({expected})")
    problems: dict[str, list[str]] = {}
    labels: dict[str, int] = {}
    first_line: dict[str, int] = {}
    at = header.index("image")
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            problems.setdefault(f"rows with {len(header)} fields expected", []).append(f"line {line}")
            continue
        key = image_id(cells[at])
        values = [c for i, c in enumerate(cells) if i != at]
        if others == ["label"]:
            label = _class_index(values[0])
            bad = f"unknown classes (use one of {', '.join(CLASS_NAMES)} or an index 0-{len(CLASS_NAMES) - 1})"
        else:
            hot = _one_hot_index(values)
            label = None if hot is None else CLASS_NAMES.index(others[hot])
            bad = "rows that are not one-hot (exactly one 1, the rest 0)"
        if not key:
            problems.setdefault("empty image ids", []).append(f"line {line}")
        elif key in first_line:
            problems.setdefault("duplicate image ids", []).append(f"line {line} ({key}, first on line {first_line[key]})")
        elif label is None:
            problems.setdefault(bad, []).append(f"line {line} ({key}: {','.join(values)})")
        else:
            labels[key] = label
        first_line.setdefault(key, line)
    if problems:
        raise InputError(f"labels CSV {path}: " + "; ".join(f"{what}: {_listed(where)}" for what, where in problems.items()))
    if not labels:
        raise InputError(f"labels CSV {path} has a header but no rows")
    return labels


def match_labels(ids: Sequence[str], labels: dict[str, int], source: str = "the labels CSV") -> np.ndarray:
    """Labels of ``ids`` (int64, in their order); InputError naming images without a label and labels without an image."""
    no_label = [i for i in ids if i not in labels]
    present = set(ids)
    no_image = [key for key in labels if key not in present]
    problems = []
    if no_label:
        problems.append(f"{len(no_label)} images have no row in {source}: {_listed(no_label)}")
    if no_image:
        problems.append(f"{len(no_image)} rows of {source} have no image among the inputs: {_listed(no_image)}")
    if problems:
        raise InputError("; ".join(problems))
    return np.array([labels[i] for i in ids], dtype=np.int64)
