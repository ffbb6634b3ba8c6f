"""Jupyter kernels for the notebooks the runner and the paper execute."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Variables a Dask nanny sets for its worker processes that must not reach the kernels a worker starts.
#: ``MALLOC_TRIM_THRESHOLD_`` (Dask sets 65536) turns off glibc's adaptive mmap threshold, so every
#: allocation above 128 KiB (most tensors) is mmap-ed, page-faulted in and unmapped again: a training
#: kernel under Dask spent a third of its CPU time in the kernel, at about 200 mmap/munmap pairs a second.
WORKER_ONLY_ENV: tuple[str, ...] = ("MALLOC_TRIM_THRESHOLD_",)


@contextmanager
def kernel_environment() -> Iterator[None]:
    """``os.environ`` without :data:`WORKER_ONLY_ENV` while kernels are started inside it (restored after)."""
    saved = {k: os.environ.pop(k) for k in WORKER_ONLY_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def ipc_kernel_manager() -> type:
    """An ipykernel manager class on IPC sockets (no 'running over TCP without encryption' warning per notebook),
    each kernel on its own socket path in the temp folder (kernels of concurrent runs never cross)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs) -> None:
            folder = Path(tempfile.gettempdir()) / "edgekd-kernels"
            folder.mkdir(exist_ok=True)
            super().__init__(transport="ipc", ip=str(folder / uuid.uuid4().hex), **kwargs)

    return IPCKernelManager
