"""Jupyter kernels for the notebooks the runner and the paper execute."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path


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
