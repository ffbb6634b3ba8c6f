"""File-system helpers shared by every stage: atomic writes with ordinary modes, and clearing a stage's results."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
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


def clear_results(folder: Path) -> None:
    """Delete everything in ``folder`` except the runner's bookkeeping (:data:`BOOKKEEPING`), creating it if needed.

    A stage function calls this on its own output folder before writing, so a rerun never mixes
    files from an earlier result with the new ones; it never touches anything outside ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keep = {p for pattern in BOOKKEEPING for p in folder.glob(pattern)}
    for entry in folder.iterdir():
        if entry in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
