"""File-system helpers shared by every stage: atomic writes with ordinary modes, and clearing a stage's results.

Everything the project deletes before a rerun goes through :func:`remove`, which refuses any path that
does not lie strictly inside the root it is given (symlinks resolved).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

#: Files a stage folder keeps when its results are cleared: the executed notebook and the runner's markers.
BOOKKEEPING: tuple[str, ...] = ("*.ipynb", ".done-*.json")


def _umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a binary handle to a unique temporary file beside ``path``, then move it into
    place with ``os.replace``: a kill never leaves a half-written ``path``. Creates the parent folder.

    The file gets the mode any other new file gets (0666 less the umask), not ``mkstemp``'s 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OutsideRoot(ValueError):
    """A path to delete (or to clear) that does not lie strictly inside the root it must stay in."""


def check_inside(path: Path, root: Path) -> None:
    """Raise :class:`OutsideRoot` unless ``path`` lies strictly inside ``root`` (resolved): a symlink where the
    link itself lies (its parent resolved), any other path resolved."""
    path, base = Path(path), Path(root).resolve()
    where = path.parent.resolve() / path.name if path.is_symlink() else path.resolve()
    if base not in where.parents:
        raise OutsideRoot(f"refusing to delete {path}: it resolves to {where}, which is not inside {base}")


def remove(path: Path, root: Path) -> None:
    """Delete ``path``: a folder with its contents, a file, or a symlink (unlinked, never followed); the one
    deleting function, refused (:class:`OutsideRoot`) unless ``path`` lies strictly inside ``root``."""
    path = Path(path)
    check_inside(path, root)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clear_results(folder: Path, root: Path | None = None) -> None:
    """Delete everything in ``folder`` except the runner's bookkeeping (:data:`BOOKKEEPING`), creating it if needed.

    A stage function calls this on its own output folder before writing, so a rerun never mixes
    files from an earlier result with the new ones. Each entry goes through :func:`remove` with ``root``
    (default ``folder`` itself), so nothing outside it is touched: a symlink in ``folder`` is unlinked, its
    target kept. With ``root``, a ``folder`` outside ``root`` is refused before it is created.
    """
    folder = Path(folder)
    if root is not None:
        check_inside(folder, root)
    folder.mkdir(parents=True, exist_ok=True)
    keep = {p for pattern in BOOKKEEPING for p in folder.glob(pattern)}
    for entry in folder.iterdir():
        if entry not in keep:
            remove(entry, folder if root is None else root)


def replace_folder(new: Path, dest: Path, aside: Path) -> None:
    """Move the finished folder ``new`` to ``dest``; what was at ``dest`` is first moved to ``aside`` (beside it, a
    path that does not exist yet) and moved back if the move fails. The caller decides that ``dest`` may go."""
    if dest.exists():
        os.replace(dest, aside)
    try:
        os.replace(new, dest)
    except OSError:
        if aside.exists():
            os.replace(aside, dest)
        raise


def file_digest(path: Path) -> str:
    """sha256 (full hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_line_is(path: Path, line: str) -> bool:
    """Whether the file at ``path`` can be read and its first line is exactly ``line`` (how a command recognises a
    file it wrote before, which it may replace)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(line.encode()) + 2)
    except OSError:
        return False
    return head.partition(b"\n")[0].removesuffix(b"\r") == line.encode()


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names, symlinks followed; None where nothing is there. Two paths with the
    same identity are the same file (a hard link or a symlink included), as ``cp`` tells "are the same file"."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def input_index(inputs: Mapping[Path, str]) -> dict[Path | tuple[int, int], str]:
    """``inputs`` (path -> what it is) keyed by resolved path and by :func:`identity`, for :func:`which_input`
    (``realpath``, which never raises: an input may be a looping symlink, skipped later)."""
    index: dict[Path | tuple[int, int], str] = {}
    for path, what in inputs.items():
        index.setdefault(Path(os.path.realpath(path)), what)
        same = identity(path)
        if same is not None:
            index.setdefault(same, what)
    return index


def which_input(path: Path, index: Mapping[Path | tuple[int, int], str]) -> str | None:
    """What the input that ``path`` is (same resolved path, or same file by :func:`identity`) is, from
    :func:`input_index`; None when it is no input. A command never writes over its own inputs, even when forced."""
    same = identity(path)
    return index.get(Path(os.path.realpath(path))) or (index.get(same) if same is not None else None)


def unwritable(folder: Path) -> str | None:
    """Why no new file can be created in ``folder`` (None if one can): ``folder``, or where it does not exist yet its
    nearest existing ancestor, must be a folder that accepts a new file (tried with an anonymous temporary file,
    which leaves nothing behind)."""
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"no file can be created in {folder}: {exc.strerror or exc}"
    return None
