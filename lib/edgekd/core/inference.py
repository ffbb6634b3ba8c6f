"""Load a finished run and predict with it: one place for training, evaluation, robustness,
efficiency, the bundle export and the notebooks.

A run folder holds ``run_config.json`` (architecture, data, training and KD settings) and
``best.pt`` (the weights of the best validation epoch). :func:`load_run` rebuilds the model from
both; :func:`predict` runs it on uint8 images with the project's preprocessing
(:mod:`edgekd.core.preprocess`), optionally averaged over dihedral views (test-time augmentation).

Example::

    from edgekd.core.inference import load_run, predict
    run = load_run("outputs/default/student-resnet18-kd-s0")
    logits, _ = predict(run.model, images)          # images: uint8 (N, run.size, run.size, 3)
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.core import augment as AU
from edgekd.core.config import INFER_BATCH
from edgekd.core.losses import attention_map
from edgekd.core.models import create_model, forward_with_stages
from edgekd.core.preprocess import RECIPE

#: Keys of ``run_config.json`` that rebuilding a run's model needs (section -> keys; "" for the top level).
REQUIRED_CONFIG: dict[str, tuple[str, ...]] = {"": ("arch", "data", "train"), "data": ("size",), "train": ("stem_stride",)}


class RunError(ValueError):
    """A run folder whose ``run_config.json`` or ``best.pt`` is damaged, planted or from another run: named, never a
    traceback."""


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to many lines of advice), or its class name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]


@dataclass
class LoadedRun:
    """A finished run's model (eval mode) with its configuration and preprocessing."""

    run_dir: Path
    config: dict
    model: nn.Module
    preprocess: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.config["data"]["size"])

    @property
    def arch(self) -> str:
        return str(self.config["arch"])

    @property
    def tta_views(self) -> tuple[int, ...]:
        """Dihedral views its saved predictions average over ((0,) without test-time augmentation)."""
        return tta_views(self.config["train"])


def read_config(run_dir: str | Path) -> dict:
    """``run_config.json`` of a run folder, with the keys of :data:`REQUIRED_CONFIG`; RunError naming the file
    where it is not JSON or lacks one."""
    path = Path(run_dir) / "run_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run (needs run_config.json and best.pt)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise RunError(f"{path} cannot be read as JSON ({_first_line(exc)}): the run is damaged") from None
    missing: list[str] = []
    for section, keys in REQUIRED_CONFIG.items():
        block = config.get(section) if section and isinstance(config, dict) else config
        missing += [f"{section}.{key}" if section else key for key in keys if not isinstance(block, dict) or key not in block]
    if missing:
        raise RunError(f"{path} lacks {', '.join(missing)}: it is not a run_config.json that training wrote; the run is damaged")
    return config


def load_run(run_dir: str | Path, device: torch.device | str | None = None) -> LoadedRun:
    """Rebuild a finished run's model from ``run_config.json`` and ``best.pt`` (eval mode, on ``device``)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    weights = run_dir / "best.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run (needs run_config.json and best.pt)")
    model = create_model(cfg["arch"], cfg["data"]["size"], stem_stride=cfg["train"]["stem_stride"],
                         pretrained=cfg["train"].get("pretrained"), weights=False)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False, which would run the planted code
        raise RunError(f"{weights} cannot be loaded as a checkpoint: it holds objects other than tensors, which "
                       "torch.load(weights_only=True) refuses to unpickle; training never writes such a file") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise RunError(f"{weights} cannot be loaded as a checkpoint (damaged or truncated): {_first_line(exc)}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()]  # torch: a header, then what does not fit
        detail = lines[-1] if lines else type(exc).__name__
        raise RunError(f"{weights} does not hold the weights of a {cfg['arch']} at {cfg['data']['size']} px, as "
                       f"run_config.json states: {detail[:160]}{'...' if len(detail) > 160 else ''}") from None
    model = model.to(torch.device(device) if device is not None else torch.device("cpu")).eval()
    return LoadedRun(run_dir, cfg, model, {**RECIPE, "size": int(cfg["data"]["size"])})


def tta_views(train_cfg: dict) -> tuple[int, ...]:
    """The dihedral views averaged at test time: all of the augmentation's views with ``tta``, else (0,)."""
    if not train_cfg.get("tta"):
        return (0,)
    return tuple(AU.views_of(train_cfg.get("augment", "dihedral")))


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where ``enabled`` and the device runs bf16 natively (CUDA, or a CPU with AVX512-BF16/AMX)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and bf16_native(device))


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (so autocast speeds it up rather than emulating)."""
    if device.type == "cuda":
        return True
    cpu = getattr(torch.backends, "cpu", None)
    capability = cpu.get_cpu_capability() if cpu is not None else ""
    return "AVX512" in capability and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = INFER_BATCH,
    device: torch.device | None = None,
    views: tuple[int, ...] = (0,),
    stages: tuple[int, ...] = (),
    amp: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Eval-mode float32 logits of uint8 NHWC ``images``, averaged over dihedral ``views``.

    With ``stages`` (one view only) also the attention maps of those stages (float16, (N, H*W)).
    """
    if stages and len(views) != 1:
        raise ValueError("attention maps are returned for a single view")
    device = device or next(model.parameters()).device
    model.eval()
    logits, maps = [], [[] for _ in stages]
    for i in range(0, len(images), batch_size):
        x = AU.normalise(images[i : i + batch_size]).to(device)
        total = None
        for view in views:
            with autocast(device, amp):
                out, feats = forward_with_stages(model, AU.dihedral(x, view), stages)
            total = out.float() if total is None else total + out.float()
            for j, f in enumerate(feats):
                maps[j].append(attention_map(f).half().cpu())
        logits.append((total / len(views)).cpu())
    return torch.cat(logits).numpy(), [torch.cat(m).numpy() for m in maps]
