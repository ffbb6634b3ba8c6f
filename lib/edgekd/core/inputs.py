"""Image files and labels CSVs from outside the training data: numpy, Pillow and the standard library only (no torch).

Shared by the edge predictor (:mod:`edgekd.edge.predict`) and the external test sets (:mod:`edgekd.stages.external`),
so both read images and labels the same way.

Images. A folder contributes its entries named ``.jpg`` / ``.jpeg`` / ``.png`` (not recursive; an
entry with such a name that is not a regular file, such as a folder or a broken or looping symlink,
is listed too and then skipped with a message, so it never vanishes from the counts); a file named
explicitly is always tried. An image's id is its file name without the suffix (ISIC style,
``ISIC_0024306``). :func:`read_image` decodes one with the training recipe (:mod:`edgekd.core.preprocess`):

* converted, with a note: greyscale, palette, CMYK (plain conversion, no colour management), RGBA
  (alpha dropped), 16-bit PNG (scaled to 8 bit), images smaller than the model input (upsampled);
* noted, scored on its first frame: an animated GIF or PNG;
* noted, scored as stored: an EXIF orientation other than 1 is not applied (training images carry
  none; the models are trained with flips and rotations);
* a JPEG much larger than the model input is decoded at a reduced DCT scale (Pillow's ``draft``,
  1/2 to 1/8, with a note), but only while its shorter side stays at least :data:`DRAFT_MIN_SIDE`
  px and :data:`DRAFT_FACTOR` times the model input, so images of HAM10000's size (600x450) decode
  exactly as in training;
* skipped (:class:`UnreadableImage`): an entry that is not a regular file, a file that cannot be
  opened (permission denied), a file Pillow cannot identify, a corrupt or truncated file or any other
  decoding error (running out of memory included), an image mode with no RGB meaning, an image of
  more than :data:`MAX_PIXELS` pixels by its header (checked before decoding: a 500 KB PNG can hold a
  13300x13300 image that takes gigabytes to decode), and images whose shorter side is under
  :data:`MIN_SIDE` px: a 1x1 (or 8x8) image can be centre-cropped and resized, but the result is a
  flat colour that says nothing about a lesion, so a probability for it would be meaningless.

Labels. A CSV with an ``image`` column and either one-hot class columns (ISIC ground truth:
``MEL,NV,BCC,AKIEC,BKL,DF,VASC`` in any order and case) or one ``label`` column holding a class
name or a DermaMNIST index (0 akiec ... 6 vasc, ASCII digits only). A file over
:data:`MAX_LABELS_BYTES` is refused by its size before it is read. Every problem raises
:class:`InputError` naming the offending lines, before any image is decoded.
"""

from __future__ import annotations

import csv
import io
import stat
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgekd.core.info import CLASS_NAMES
from edgekd.core.preprocess import centre_square_resize

#: Suffixes a folder's images must have (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
#: Images whose shorter side is below this are skipped (see the module docstring).
MIN_SIDE: int = 16
#: Images with more pixels than this (width x height in the file's header) are skipped before decoding.
#: The largest real dermoscopic images are about 6,000 x 4,000 (24 megapixels); Pillow's own limit is 89.
MAX_PIXELS: int = 40_000_000
#: A JPEG is decoded at a reduced scale only while its shorter side stays at least this many px ...
DRAFT_MIN_SIDE: int = 1024
#: ... and at least this many times the model's input size.
DRAFT_FACTOR: int = 4
#: Labels CSVs larger than this (bytes) are refused unread; ISIC 2018's ground-truth files are under 1 MB.
MAX_LABELS_BYTES: int = 16 * 2**20
#: EXIF tag of the image orientation (1: as stored).
EXIF_ORIENTATION: int = 0x0112
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


def listed(items: Sequence[str]) -> str:
    """Up to :data:`MAX_LISTED` of ``items``, comma-separated, and how many more there are (for error messages)."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def image_id(name: str) -> str:
    """The id of an image file name or labels entry: the name without an image suffix (``ISIC_1.jpg`` -> ``ISIC_1``)."""
    name = name.strip()
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name


def find_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """The images named by ``inputs`` (files, and folder entries with an image suffix, regular files or not)
    in order, and the folder entries ignored (no image suffix: other files, subfolders, special files).

    Raises InputError for a path that does not exist or is not a regular file or folder, no image at all, or two
    files with the same id.
    """
    files: list[Path] = []
    ignored: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            entries = sorted(path.iterdir())
            files += [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
            ignored += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        elif path.is_file():
            files.append(path)
        elif path.exists():  # a FIFO, /dev/zero: reading it would block or never end
            raise InputError(f"input {path} is not a regular file: {_not_regular(path)}")
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
        raise InputError(f"{len(clashes)} image ids are used by more than one file: {listed(clashes)}")
    return files, ignored


def _not_regular(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (None when it is one)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a broken or looping symlink" if path.is_symlink() else "missing"
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a special file (device, pipe or socket)"


def _exif_orientation(im: Image.Image) -> int | None:
    """The EXIF orientation of ``im`` (None if absent or unreadable: a damaged EXIF block changes no pixel)."""
    try:
        return im.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on damaged data
        return None


def _decode(im: Image.Image, size: int) -> str:
    """Check the header size of ``im``, reduce a large JPEG's decoding scale, decode; the note of the reduction ('' if none)."""
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise UnreadableImage(f"image is {w}x{h} px ({w * h / 1e6:.0f} megapixels), above the limit of "
                              f"{MAX_PIXELS / 1e6:.0f} megapixels (edgekd.core.inputs.MAX_PIXELS); not decoded")
    keep = max(DRAFT_FACTOR * size, DRAFT_MIN_SIDE)
    if im.format == "JPEG" and min(w, h) >= 2 * keep:
        im.draft(None, (keep, keep))
    im.load()
    return f"JPEG decoded at 1/{round(w / im.size[0])} scale" if im.size != (w, h) else ""


def read_image(path: str | Path, size: int) -> tuple[np.ndarray, str]:
    """Decode ``path`` and apply the training recipe at ``size``: uint8 (size, size, 3) and a note ('' if none).

    Raises UnreadableImage (see the module docstring for what is converted and what is skipped).
    """
    path = Path(path)
    kind = _not_regular(path)
    if kind:
        raise UnreadableImage(f"not a regular file: {kind}")
    try:
        handle = open(path, "rb")
    except PermissionError:
        raise UnreadableImage("cannot be read: permission denied") from None
    except OSError as exc:
        raise UnreadableImage(f"cannot be read: {exc.strerror or exc}") from None
    with handle:
        head = handle.read(25)
        handle.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is checked below
                im = Image.open(handle)
            with im:
                note = _decode(im, size)
                return _prepare(im, head, size, note)
        except UnreadableImage:
            raise
        except UnidentifiedImageError:
            raise UnreadableImage("not an image Pillow can read") from None
        except Image.DecompressionBombError as exc:
            raise UnreadableImage(f"image too large: {exc} (edgekd.core.inputs.MAX_PIXELS: {MAX_PIXELS / 1e6:.0f} megapixels)") from None
        except MemoryError:
            raise UnreadableImage("cannot be decoded: out of memory") from None
        except PermissionError:
            raise UnreadableImage("cannot be read: permission denied") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise UnreadableImage(f"corrupt or truncated image: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any other decoder failure skips this file, not the run
            raise UnreadableImage(f"cannot be decoded: {type(exc).__name__}: {exc}") from None


def _prepare(im: Image.Image, head: bytes, size: int, note: str) -> tuple[np.ndarray, str]:
    """The checks and conversions of :func:`read_image` on a decoded image whose file starts with ``head``."""
    if im.mode not in MODE_NOTES:
        raise UnreadableImage(f"image mode {im.mode} has no RGB conversion")
    notes = [MODE_NOTES[im.mode]]
    if im.format == "PNG" and im.mode in ("RGB", "RGBA") and len(head) == 25 and head[24] == 16:  # IHDR bit depth
        notes.append("16-bit PNG reduced to 8 bit")
    side = min(im.size)
    if side < MIN_SIDE:
        raise UnreadableImage(f"image is {im.size[0]}x{im.size[1]} px; its shorter side must be at least {MIN_SIDE} px")
    if side < size:
        notes.append(f"upsampled: its centre square is {side} px, the model takes {size} px")
    notes.append(note)
    if getattr(im, "is_animated", False):  # a GIF or APNG: only its first frame is decoded
        notes.append("animated image: scored on its first frame only")
    orientation = _exif_orientation(im)
    if orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} not applied: scored as stored (training images carry no "
                     "orientation; models are trained with flips and rotations)")
    return centre_square_resize(im, size), "; ".join(n for n in notes if n)


# ------------------------------------------------------------------------------------------ labels

def _class_index(value: str) -> int | None:
    """Class index of a label cell: a class name (any case) or a DermaMNIST index; None if neither."""
    value = value.strip()
    if value.lower() in CLASS_NAMES:
        return CLASS_NAMES.index(value.lower())
    if value.isascii() and value.isdigit() and int(value) < len(CLASS_NAMES):
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

    Raises InputError naming the offending lines: unreadable, not a regular file or over
    :data:`MAX_LABELS_BYTES`, not CSV, unknown or missing columns, unknown classes, rows that are not
    one-hot, empty or duplicate ids.
    """
    path = Path(path)
    try:
        st = path.stat()
        n_bytes = st.st_size
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"labels CSV {path} is not a regular file")
        if n_bytes > MAX_LABELS_BYTES:
            raise InputError(f"labels CSV {path} is {n_bytes} bytes ({n_bytes / 2**20:.1f} MiB), above the limit of "
                             f"{MAX_LABELS_BYTES} bytes ({MAX_LABELS_BYTES / 2**20:.0f} MiB, edgekd.core.inputs.MAX_LABELS_BYTES)")
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"labels CSV {path} cannot be read: {exc}") from None
    reader = csv.reader(io.StringIO(text))
    try:
        rows = [(n, [c.strip() for c in row]) for n, row in enumerate(reader, 1) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise InputError(f"labels CSV {path} is not a valid CSV file: line {reader.line_num}: {exc}") from None
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
        raise InputError(f"labels CSV {path}: " + "; ".join(f"{what}: {listed(where)}" for what, where in problems.items()))
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
        problems.append(f"{len(no_label)} images have no row in {source}: {listed(no_label)}")
    if no_image:
        problems.append(f"{len(no_image)} rows of {source} have no image among the inputs: {listed(no_image)}")
    if problems:
        raise InputError("; ".join(problems))
    return np.array([labels[i] for i in ids], dtype=np.int64)
