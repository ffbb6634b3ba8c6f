"""Jupyter kernels for the notebooks the runner and the paper execute."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

#: Variables a Dask nanny sets for its worker processes that must not reach the kernels started there.
#: ``MALLOC_TRIM_THRESHOLD_`` (Dask sets 65536) turns off glibc's adaptive mmap threshold, so every
#: allocation above 128 KiB (most tensors) is mmap-ed, page-faulted in and unmapped again: a training
#: kernel under Dask spent a third of its CPU time in the kernel, at about 200 mmap/munmap pairs a second.
WORKER_ONLY_ENV: tuple[str, ...] = ("MALLOC_TRIM_THRESHOLD_",)


def ipc_kernel_manager() -> type:
    """An ipykernel manager class on IPC sockets (no 'running over TCP without encryption' warning per notebook),
    each kernel on its own socket path in the temp folder (kernels of concurrent runs never cross), started
    without :data:`WORKER_ONLY_ENV`."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs) -> None:
            folder = Path(tempfile.gettempdir()) / "edgekd-kernels"
            folder.mkdir(exist_ok=True)
            super().__init__(transport="ipc", ip=str(folder / uuid.uuid4().hex), **kwargs)

        async def start_kernel(self, **kw) -> None:
            env = kw.pop("env", None) or os.environ
            await super().start_kernel(env={k: v for k, v in env.items() if k not in WORKER_ONLY_ENV}, **kw)

    return IPCKernelManager
