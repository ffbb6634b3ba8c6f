"""Jupyter kernels for the notebooks the runner and the paper execute."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

#: Variables a Dask nanny sets for its worker processes that must not reach the kernels started there.
#: ``MALLOC_TRIM_THRESHOLD_`` (Dask sets 65536) turns off glibc's adaptive mmap threshold, so every
#: allocation above 128 KiB (most tensors) is mmap-ed, page-faulted in and unmapped again: a training
#: kernel under Dask spent a third of its CPU time in the kernel, at about 200 mmap/munmap pairs a second.
WORKER_ONLY_ENV: tuple[str, ...] = ("MALLOC_TRIM_THRESHOLD_",)


#: Each process's kernel socket folder, by pid (a forked child makes its own).
_SOCKET_DIRS: dict[int, Path] = {}


def socket_dir() -> Path:
    """This process's private folder for kernel sockets: made by ``mkdtemp`` (owner only, mode 0700) in the
    temp folder, with a short name (a unix socket path has about 100 characters), removed at exit.

    Not a fixed shared path: another user cannot pre-create it, read the sockets or plant links in it.
    """
    pid = os.getpid()
    if pid not in _SOCKET_DIRS:
        _SOCKET_DIRS[pid] = Path(tempfile.mkdtemp(prefix="edgekd-k-"))
        atexit.register(_remove, _SOCKET_DIRS[pid], pid)
    return _SOCKET_DIRS[pid]


def _remove(folder: Path, pid: int) -> None:
    """Remove ``folder`` at exit of the process that made it (not of a forked child that inherited the hook)."""
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


class IPCKernelManager(AsyncKernelManager):
    """An ipykernel manager on IPC sockets (no 'running over TCP without encryption' warning per notebook), each
    kernel on its own socket path in this process's :func:`socket_dir` (kernels of concurrent runs never cross),
    started without :data:`WORKER_ONLY_ENV`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(transport="ipc", ip=str(socket_dir() / uuid.uuid4().hex[:16]), **kwargs)

    async def start_kernel(self, **kw) -> None:
        env = kw.pop("env", None) or os.environ
        await super().start_kernel(env={k: v for k, v in env.items() if k not in WORKER_ONLY_ENV}, **kw)
