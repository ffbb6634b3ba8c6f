"""Jupyter kernels for the notebooks the runner and the paper execute."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

from edgekd.core import info

#: glibc malloc settings for every kernel the runner and the paper start (they replace what the parent has,
#: such as the ``MALLOC_TRIM_THRESHOLD_=65536`` a Dask nanny sets for its workers). glibc serves a block above
#: its mmap threshold (at most 32 MiB) with a fresh mmap, zero-filled by page faults and unmapped when freed:
#: every batch's larger activations paid that again. No mmap, and freed memory kept on the heap (up to 1 GiB
#: before it is trimmed), measured on the 2-core machine with one thread: a 128 px EfficientNet-Lite0 predicts
#: 1,024 images at batch 512 in 5.6 s instead of 22.0 s (16 s of it system time), and a MobileNetV2 training step
#: (batch 128, 64 px) takes 0.58 s instead of 0.74 s. Other C libraries ignore these variables.
MALLOC_ENV: dict[str, str] = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(64 << 20),
}
#: What every kernel the runner and the paper start gets: :data:`MALLOC_ENV`; OpenMP threads that wait for work
#: sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``: two 2-thread torch kernels on 2 cores, as two Dask workers
#: run, took a training step 7-30x slower with the spinning default, and the results are bitwise the same, which
#: tests/test_runner.py checks by training one run under each policy); and training progress as text
#: (:data:`edgekd.core.info.TEXT_PROGRESS_ENV`).
KERNEL_ENV: dict[str, str] = {**MALLOC_ENV, "OMP_WAIT_POLICY": "PASSIVE", info.TEXT_PROGRESS_ENV: "1"}


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
    started with :data:`KERNEL_ENV`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(transport="ipc", ip=str(socket_dir() / uuid.uuid4().hex[:16]), **kwargs)

    async def _async_interrupt_kernel(self) -> None:
        """Interrupt, except while shutting down: jupyter_client interrupts every kernel before its shutdown request,
        and ipykernel logs that as ``ERROR | KeyboardInterrupt caught in kernel`` after every successful notebook.
        A kernel still busy at shutdown is stopped by the shutdown request, or killed when that times out."""
        if not self.shutting_down:
            await super()._async_interrupt_kernel()

    async def start_kernel(self, **kw) -> None:
        env = kw.pop("env", None) or os.environ
        await super().start_kernel(env={**env, **KERNEL_ENV}, **kw)
