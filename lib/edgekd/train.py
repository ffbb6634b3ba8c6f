"""A plain training loop (after nanoGPT) for the teacher and the distilled students.

Seeded and deterministic on CPU; AMP (bf16) and channels_last on CUDA; a checkpoint every epoch
and resume after a kill; the best epoch is chosen on val macro-F1, never on test.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from tqdm import tqdm

from edgekd import data as D
from edgekd import info
from edgekd.losses import BALANCE_MODES, CE_KINDS, DistillLoss, attention_map, check_kd, class_balanced_weights, make_ce
from edgekd.models import AT_STAGES, create_model, forward_with_stages

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
KD_MODES: tuple[str, ...] = ("hinton", "none")


@dataclass
class TrainConfig:
    """Optimisation and loss settings shared by teacher and students."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    warmup_epochs: float = 1.0
    loss: str = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    balance: str = "none"
    augment: str = "dihedral"
    drop_rate: float = 0.0
    stem_stride: int | None = None
    amp: bool = True
    channels_last: bool = True
    threads: int | None = None
    eval_batch_size: int = 512
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 2": self.batch_size >= 2,
            "lr must be > 0": self.lr > 0,
            "weight_decay must be >= 0": self.weight_decay >= 0,
            "warmup_epochs must be >= 0": self.warmup_epochs >= 0,
            "label_smoothing must lie in [0, 1)": 0 <= self.label_smoothing < 1,
            "focal_gamma must be >= 0": self.focal_gamma >= 0,
            "stem_stride must be 1, 2 or null": self.stem_stride in (None, 1, 2),
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"train config: {message} (got {asdict(self)})")
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("loss", self.loss, CE_KINDS),
            ("balance", self.balance, BALANCE_MODES),
            ("augment", self.augment, D.AUGMENTS),
        ):
            if value not in allowed:
                raise ValueError(f"train config: {name} {value!r} is not one of {allowed}")


@dataclass
class KDConfig:
    """Distillation settings: ``mode`` 'hinton' (KD + optional AT) or 'none' (same student, no teacher)."""

    mode: str = "hinton"
    alpha: float = 0.5
    temperature: float = 4.0
    beta: float = 0.0
    teacher_cache: bool = True

    def __post_init__(self) -> None:
        if self.mode not in KD_MODES:
            raise ValueError(f"kd mode {self.mode!r} is not one of {KD_MODES}")
        check_kd(self.alpha, self.temperature, self.beta)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` through :func:`edgekd.data.atomic_write`: a kill never leaves a half-written file."""
    D.atomic_write(path, lambda fh: torch.save(obj, fh))


def write_json(obj: dict, path: Path) -> None:
    """Write ``obj`` as JSON atomically (:func:`edgekd.data.atomic_write`)."""
    text = json.dumps(obj, indent=2, default=str).encode()
    D.atomic_write(path, lambda fh: fh.write(text))


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    batch_size: int = 512,
    device: torch.device | None = None,
    view: int = 0,
    stages: tuple[int, ...] = (),
    amp: bool = True,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Eval-mode logits (float32) for uint8 NHWC ``images`` under dihedral ``view``, plus attention maps of ``stages``."""
    device = device or next(model.parameters()).device
    model.eval()
    images = torch.as_tensor(images)
    logits, maps = [], [[] for _ in stages]
    for i in range(0, len(images), batch_size):
        x = D.dihedral(D.normalise(images[i : i + batch_size]), view).to(device)
        with _autocast(device, amp):
            out, feats = forward_with_stages(model, x, stages) if stages else (model(x), [])
        logits.append(out.float().cpu())
        for j, f in enumerate(feats):
            maps[j].append(attention_map(f).half().cpu())
    return torch.cat(logits).numpy(), [torch.cat(m).numpy() for m in maps]


def score(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and mean CE of ``logits`` against ``labels``."""
    pred = logits.argmax(1)
    ce = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    return {
        "acc": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=range(info.NUM_CLASSES), zero_division=0)),
        "loss": ce,
    }


def views_of(augment: str) -> list[int]:
    """Dihedral view indices an augmentation draws from."""
    return [0, 4] if augment == "flip" else list(range(D.AUGMENT_VIEWS[augment]))


def teacher_cache(
    teacher_dir: Path, arrays: D.DermaArrays, augment: str, with_maps: bool, device: torch.device, amp: bool = True
) -> dict:
    """Teacher logits (V, N, C) and attention maps (V, N, HW) for each augmentation view of each train image.

    The finite augmentations (dihedral views) make the teacher's outputs cacheable: it is run once per
    view and image, shared by every student and seed. Saved beside the teacher and checked on load.
    """
    stages = AT_STAGES if with_maps else ()
    fingerprint = {
        "size": arrays.size,
        "n_train": len(arrays.labels["train"]),
        "labels_sum": int((arrays.labels["train"] * np.arange(1, len(arrays.labels["train"]) + 1)).sum()),
        "augment": augment,
        "stages": list(stages),
    }
    path = teacher_dir / f"teacher_cache_{augment}{'_at' if with_maps else ''}.pt"
    if path.exists():
        cache = torch.load(path, weights_only=False)
        if cache["fingerprint"] == fingerprint:
            return cache
    teacher = load_trained(teacher_dir, device)
    n_views = max(D.AUGMENT_VIEWS.values())
    logits_all, maps_all = None, []
    for v in views_of(augment):
        logits, maps = predict(teacher, arrays.images["train"], device=device, view=v, stages=stages, amp=amp)
        if logits_all is None:
            logits_all = torch.zeros(n_views, *logits.shape)
            maps_all = [torch.zeros(n_views, *m.shape, dtype=torch.float16) for m in maps]
        logits_all[v] = torch.from_numpy(logits)
        for j, m in enumerate(maps):
            maps_all[j][v] = torch.from_numpy(m)
    cache = {"fingerprint": fingerprint, "logits": logits_all, "maps": maps_all}
    atomic_save(cache, path)
    return cache


def load_trained(run_dir: Path, device: torch.device | None = None) -> nn.Module:
    """Rebuild a finished run's model from its ``run_config.json`` and ``best.pt``."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "run_config.json", run_dir / "best.pt"
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(f"{run_dir} is not a finished run (needs run_config.json and best.pt)")
    cfg = json.loads(cfg_path.read_text())
    model = create_model(cfg["arch"], cfg["data"]["size"], stem_stride=cfg["train"]["stem_stride"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device or torch.device("cpu")).eval()


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return f


def build_objective(cfg: TrainConfig, train_labels: np.ndarray) -> tuple[nn.Module, torch.Tensor | None]:
    """The hard-label loss and per-sample sampling weights; class rebalancing is applied exactly once.

    ``balance='weights'`` weights the loss (class-balanced, Cui et al.) and samples uniformly;
    ``balance='sampler'`` samples class-balanced with an unweighted loss; ``'none'`` does neither.
    """
    counts = np.bincount(train_labels, minlength=info.NUM_CLASSES)
    weights = class_balanced_weights(counts) if cfg.balance == "weights" else None
    sample_w = class_balanced_weights(counts)[torch.as_tensor(train_labels)] if cfg.balance == "sampler" else None
    return make_ce(cfg.loss, cfg.label_smoothing, cfg.focal_gamma, weights), sample_w


def fit(
    model: nn.Module,
    arrays: D.DermaArrays,
    cfg: TrainConfig,
    run_dir: Path,
    seed: int,
    kd: KDConfig | None = None,
    teacher_dir: Path | None = None,
) -> pd.DataFrame:
    """Train ``model`` (optionally distilled from ``teacher_dir``); resumes from ``run_dir/last.pt``.

    Writes ``last.pt`` and ``history.csv`` each epoch, ``best.pt`` on each val macro-F1 improvement,
    and TensorBoard events under ``tb/``. Returns the history.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model = model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.from_numpy(arrays.images["train"])
    labels = torch.from_numpy(arrays.labels["train"])
    ce, sample_w = build_objective(cfg, arrays.labels["train"])
    ce = ce.to(device)

    distill = kd is not None and kd.mode == "hinton"
    teacher, cache = None, None
    if distill:
        if teacher_dir is None:
            raise ValueError("kd mode 'hinton' needs a teacher_dir")
        criterion = DistillLoss(ce, kd.alpha, kd.temperature, kd.beta)
        if kd.teacher_cache:
            cache = teacher_cache(Path(teacher_dir), arrays, cfg.augment, kd.beta > 0, device, cfg.amp)
        else:
            teacher = load_trained(Path(teacher_dir), device)
    stages = AT_STAGES if distill and kd.beta > 0 else ()

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    n = len(labels)
    steps = n // cfg.batch_size + (1 if n % cfg.batch_size >= 2 else 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps))
    gen = torch.Generator().manual_seed(seed)

    history: list[dict] = []
    start, best = 0, -1.0
    last = run_dir / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        # RNG states must be CPU ByteTensors; map_location moved them to ``device``.
        gen.set_state(ck["gen"].cpu())
        torch.set_rng_state(ck["torch_rng"].cpu())
        if device.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), device)
        start, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start)
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        model.train()
        order = (
            torch.multinomial(sample_w, n, replacement=True, generator=gen)
            if sample_w is not None
            else torch.randperm(n, generator=gen)
        )
        views = D.sample_views(n, cfg.augment, gen)
        sums: dict[str, float] = {}
        seen = correct = 0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   mininterval=5.0, file=sys.stdout)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            v = views[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = D.apply_views(D.normalise(images[idx]), v).to(device, non_blocking=True)
            y = labels[idx].to(device)
            if device.type == "cuda" and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                logits, feats = forward_with_stages(model, x, stages) if stages else (model(x), [])
                if distill:
                    if cache is not None:
                        t_logits = cache["logits"][v, idx].to(device)
                        t_maps = [m[v, idx].to(device) for m in cache["maps"]]
                    else:
                        with torch.no_grad():
                            t_out, t_feats = forward_with_stages(teacher, x, stages) if stages else (teacher(x), [])
                        t_logits, t_maps = t_out.float(), [attention_map(f) for f in t_feats]
                    loss, parts = criterion(logits, y, t_logits, feats, t_maps)
                else:
                    loss = ce(logits, y)
                    parts = {"ce": loss.item()}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            b = len(y)
            seen += b
            correct += int((logits.argmax(1) == y).sum())
            for k, val in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + val * b
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", refresh=False)
        val_logits, _ = predict(model, arrays.images["val"], cfg.eval_batch_size, device, amp=cfg.amp)
        val = score(arrays.labels["val"], val_logits)
        row = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            **{f"train_{k}": s / seen for k, s in sums.items()},
            "train_acc": correct / seen,
            **{f"val_{k}": s for k, s in val.items()},
            "epoch_time_s": time.time() - t0,
        }
        history.append(row)
        for k, val_ in row.items():
            if k != "epoch":
                writer.add_scalar(k, val_, epoch + 1)
        if val["macro_f1"] > best:
            best = val["macro_f1"]
            atomic_save(model.state_dict(), run_dir / "best.pt")
        pd.DataFrame(history).to_csv(run_dir / "history.csv", index=False)
        atomic_save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
             "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
             "epoch": epoch, "best": best, "history": history},
            last,
        )
        print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val acc {val['acc']:.4f}, "
              f"val macro-F1 {val['macro_f1']:.4f} ({row['epoch_time_s']:.1f}s)", flush=True)
    writer.close()
    return pd.DataFrame(history)


def finish(model: nn.Module, arrays: D.DermaArrays, run_dir: Path, cfg: TrainConfig, wall_s: float) -> dict:
    """Reload the best-val epoch, save val/test logits and the run's summary metrics.

    The saved logits are computed in float32 even when training used AMP: bf16 keeps about three
    significant digits, too few for the calibration metrics computed from these logits.
    """
    device = resolve_device(cfg.device)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=True))
    out: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        out[f"{split}_logits"], _ = predict(model, arrays.images[split], cfg.eval_batch_size, device, amp=False)
        out[f"{split}_labels"] = arrays.labels[split]
    np.savez_compressed(run_dir / "predictions.npz", **out)
    history = pd.read_csv(run_dir / "history.csv")
    best = history.loc[history["val_macro_f1"].idxmax()]
    test = score(out["test_labels"], out["test_logits"])
    metrics = {
        "best_epoch": int(best["epoch"]),
        "val_acc": float(best["val_acc"]),
        "val_macro_f1": float(best["val_macro_f1"]),
        "test_acc": test["acc"],
        "test_macro_f1": test["macro_f1"],
        "epochs": int(history["epoch"].max()),
        "train_time_s": float(history["epoch_time_s"].sum()),
        "wall_time_s": wall_s,
    }
    write_json(metrics, run_dir / "metrics.json")
    if (run_dir / "last.pt").exists():
        (run_dir / "last.pt").unlink()  # the resume state is spent once the run is finished
    return metrics


def train_run(
    run_dir: str | Path,
    arch: str,
    seed: int,
    data_cfg: D.DataConfig,
    train_cfg: TrainConfig,
    kd: KDConfig | None = None,
    teacher_dir: str | Path | None = None,
) -> dict:
    """Train one teacher (``kd`` None) or student run end to end; returns its metrics."""
    t0 = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    arrays = D.load(data_cfg)
    config = {"arch": arch, "seed": seed, "data": asdict(data_cfg), "train": asdict(train_cfg),
              "kd": asdict(kd) if kd else None, "teacher_dir": str(teacher_dir) if teacher_dir else None}
    write_json(config, run_dir / "run_config.json")
    seed_everything(seed)  # weight initialisation depends on the seed too
    model = create_model(arch, data_cfg.size, stem_stride=train_cfg.stem_stride, drop_rate=train_cfg.drop_rate)
    fit(model, arrays, train_cfg, run_dir, seed, kd, Path(teacher_dir) if teacher_dir else None)
    return finish(model, arrays, run_dir, train_cfg, time.time() - t0)
