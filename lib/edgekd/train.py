"""A plain training loop (after nanoGPT) for the teacher and the distilled students.

Seeded and deterministic on CPU at a fixed thread count; channels_last everywhere, bf16 autocast
on CUDA (``amp``) and optionally on CPUs that compute bf16 natively (``cpu_amp``); an EMA of the
weights (``ema``); a checkpoint every epoch and resume after a kill, but only from a checkpoint
written by the same configuration and training code; the best epoch is chosen on val macro-F1,
never on test; a run whose validation predictions collapse onto one class fails loudly
(:class:`CollapsedRun`) instead of entering the tables.
"""

from __future__ import annotations

import fcntl
import hashlib
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
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from edgekd import data as D
from edgekd import info, provenance
from edgekd import metrics as M
from edgekd.config import check_fields
from edgekd.files import atomic_write
from edgekd.inference import autocast, load_run, predict, resolve_device, tta_views
from edgekd.losses import (
    BALANCE_MODES,
    CE_KINDS,
    LOGIT_TERMS,
    DistillLoss,
    attention_map,
    check_kd,
    class_balanced_weights,
    logit_term,
    make_ce,
)
from edgekd.models import AT_STAGES, create_model, forward_with_stages

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
KD_MODES: tuple[str, ...] = (*LOGIT_TERMS, "none")
#: What a collapsed run does: fail (the default), or finish flagged as collapsed (tiny smoke runs).
COLLAPSE_ACTIONS: tuple[str, ...] = ("error", "warn")
TEACHER_VIEWS: tuple[str, ...] = ("same", "mean")
#: A run is collapsed when this share of its validation predictions (or more) is one class.
COLLAPSE_SHARE: float = 0.90


class CollapsedRun(RuntimeError):
    """A trained model whose validation predictions are (nearly) constant: a failed run, not a result."""


@dataclass
class TrainConfig:
    """Optimisation, augmentation and loss settings shared by teacher and students."""

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
    crop_scale: float = 1.0
    jitter: float = 0.0
    ema: float = 0.0
    tta: bool = False
    head_init_std: float | None = None
    drop_rate: float = 0.0
    stem_stride: int | None = None
    amp: bool = True
    cpu_amp: bool = False
    channels_last: bool = True
    threads: int | None = None
    eval_batch_size: int = 512
    device: str = "auto"
    progress: bool = True
    collapse: str = "error"

    def __post_init__(self) -> None:
        check_fields(self, "train config")
        checks = {
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 2": self.batch_size >= 2,
            "lr must be > 0": self.lr > 0,
            "weight_decay must be >= 0": self.weight_decay >= 0,
            "warmup_epochs must be >= 0": self.warmup_epochs >= 0,
            "label_smoothing must lie in [0, 1)": 0 <= self.label_smoothing < 1,
            "focal_gamma must be >= 0": self.focal_gamma >= 0,
            "stem_stride must be 1, 2 or null": self.stem_stride in (None, 1, 2),
            "crop_scale must lie in (0, 1]": 0 < self.crop_scale <= 1,
            "jitter must lie in [0, 1)": 0 <= self.jitter < 1,
            "ema must be 0 (off) or a decay in (0, 1)": 0 <= self.ema < 1,
            "head_init_std must be null or > 0": self.head_init_std is None or self.head_init_std > 0,
            "threads must be null or >= 1": self.threads is None or self.threads >= 1,
            "eval_batch_size must be >= 1": self.eval_batch_size >= 1,
        }
        for message, ok in checks.items():
            if not ok:  # each message starts with its field's name
                raise ValueError(f"train config: {message}, got {getattr(self, message.split()[0])!r}")
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("loss", self.loss, CE_KINDS),
            ("balance", self.balance, BALANCE_MODES),
            ("augment", self.augment, D.AUGMENTS),
            ("collapse", self.collapse, COLLAPSE_ACTIONS),
        ):
            if value not in allowed:
                raise ValueError(f"train config: {name} {value!r} is not one of {allowed}")

    def amp_on(self, device: torch.device) -> bool:
        """Whether training on ``device`` uses bf16 autocast (``amp`` on CUDA, ``cpu_amp`` on CPU)."""
        return self.amp if device.type == "cuda" else self.cpu_amp

    @property
    def cacheable_views(self) -> bool:
        """True when every training input is one of the augmentation's dihedral views (no crop, no jitter)."""
        return self.crop_scale == 1.0 and self.jitter == 0.0


@dataclass
class KDConfig:
    """Distillation settings.

    ``mode``: 'hinton', 'dkd' or 'dist' (the logit term, see :mod:`edgekd.losses`), or 'none' (the same
    student trained without a teacher). ``alpha`` weighs CE against the logit term, ``beta`` the
    attention transfer; ``standardize`` z-scores both networks' logits first (KL-based terms only).
    ``teacher_views``: 'same' distils the teacher's logits on the student's own view of the image,
    'mean' their average over all the augmentation's views (a test-time-augmented teacher).
    """

    mode: str = "hinton"
    alpha: float = 0.5
    temperature: float = 4.0
    beta: float = 0.0
    standardize: bool = False
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    teacher_views: str = "same"
    teacher_cache: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "kd config")
        if self.mode not in KD_MODES:
            raise ValueError(f"kd mode {self.mode!r} is not one of {KD_MODES}")
        if self.teacher_views not in TEACHER_VIEWS:
            raise ValueError(f"kd teacher_views {self.teacher_views!r} is not one of {TEACHER_VIEWS}")
        if self.standardize and self.mode == "dist":
            raise ValueError("kd standardize applies to the KL-based modes (hinton, dkd), not 'dist'")
        if self.teacher_views == "mean" and not self.teacher_cache:
            raise ValueError("kd teacher_views 'mean' needs teacher_cache: true (the views are averaged from the cache)")
        check_kd(self.alpha, self.temperature, self.beta)
        if self.mode in LOGIT_TERMS:
            self.term()  # validates the mode's own weights

    @property
    def distills(self) -> bool:
        return self.mode != "none"

    def term(self) -> nn.Module:
        """The logit-distillation term of this setting."""
        return logit_term(self.mode, self.temperature, self.dkd_alpha, self.dkd_beta, self.dist_beta, self.dist_gamma)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` through :func:`edgekd.files.atomic_write`: a kill never leaves a half-written file."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def write_json(obj: dict, path: Path) -> None:
    """Write ``obj`` as JSON atomically (:func:`edgekd.files.atomic_write`)."""
    text = json.dumps(obj, indent=2, default=str).encode()
    atomic_write(path, lambda fh: fh.write(text))


def score(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 (:mod:`edgekd.metrics`) and mean CE of ``logits`` against ``labels``."""
    pred = logits.argmax(1)
    ce = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    return {"acc": M.accuracy(labels, pred), "macro_f1": M.macro_f1(labels, pred), "loss": ce}


def teacher_cache(teacher_dir: Path, arrays: D.DermaArrays, augment: str, with_maps: bool, device: torch.device) -> dict:
    """Teacher logits (V, N, C) and attention maps (V, N, HW) for each augmentation view of each train image.

    The finite augmentations (dihedral views) make the teacher's outputs cacheable: it is run once per
    view and image, in float32 whatever the students' autocast, and shared by every student and seed.
    Saved beside the teacher and keyed by the sha256 of its ``best.pt`` (a retrained teacher gets a new
    cache, and the caches of its old weights are deleted), the data, the views, the stages and the device.
    """
    stages = AT_STAGES if with_maps else ()
    weights = provenance.file_digest(Path(teacher_dir) / "best.pt")
    fingerprint = {
        "teacher_sha256": weights,
        "size": arrays.size,
        "n_train": len(arrays.labels["train"]),
        "labels_sum": int((arrays.labels["train"] * np.arange(1, len(arrays.labels["train"]) + 1)).sum()),
        "views": D.views_of(augment),
        "stages": list(stages),
        "device": device.type,
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(teacher_dir) / f"teacher_cache_{weights[:12]}_{augment}{'_at' if with_maps else ''}_{key}.pt"
    # Students started at the same time (a parallel executor) wait for one of them to build the cache.
    with open(Path(teacher_dir) / ".teacher_cache.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            cache = torch.load(path, weights_only=True)
            if cache["fingerprint"] == fingerprint:
                return cache
        for stale in Path(teacher_dir).glob("teacher_cache_*.pt"):
            if not stale.name.startswith(f"teacher_cache_{weights[:12]}_"):
                stale.unlink()  # made from weights the teacher no longer has
        teacher = load_run(teacher_dir, device).model
        n_views = max(D.AUGMENT_VIEWS.values())
        logits_all, maps_all = None, []
        for v in D.views_of(augment):
            logits, maps = predict(teacher, arrays.images["train"], device=device, views=(v,), stages=stages)
            if logits_all is None:
                logits_all = torch.zeros(n_views, *logits.shape)
                maps_all = [torch.zeros(n_views, *m.shape, dtype=torch.float16) for m in maps]
            logits_all[v] = torch.from_numpy(logits)
            for j, m in enumerate(maps):
                maps_all[j][v] = torch.from_numpy(m)
        cache = {"fingerprint": fingerprint, "logits": logits_all, "maps": maps_all}
        atomic_save(cache, path)
        return cache


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


def collapse_reason(labels: np.ndarray, logits: np.ndarray) -> str | None:
    """Why a model counts as collapsed, or None: ``COLLAPSE_SHARE`` of its predictions are one class,
    or its macro-F1 is no better than always predicting the most frequent class."""
    pred = logits.argmax(1)
    counts = np.bincount(pred, minlength=info.NUM_CLASSES)
    top = int(counts.argmax())
    share = counts[top] / len(pred)
    majority = int(np.bincount(labels, minlength=info.NUM_CLASSES).argmax())
    constant = M.macro_f1(labels, np.full_like(labels, majority))
    f1 = M.macro_f1(labels, pred)
    if share < COLLAPSE_SHARE and f1 > constant:
        return None
    return (f"{share:.0%} of its validation predictions are '{info.CLASS_NAMES[top]}' and its val macro-F1 is {f1:.3f} "
            f"(constant predictor: {constant:.3f}). Likely causes: a learning rate too high for the schedule (the loss "
            "diverged, or one class absorbed every prediction), an over-confident initial classifier, or BatchNorm "
            "statistics estimated on tiny feature maps; see history.csv")


def fit(
    model: nn.Module,
    arrays: D.DermaArrays,
    cfg: TrainConfig,
    run_dir: Path,
    seed: int,
    kd: KDConfig | None = None,
    teacher_dir: Path | None = None,
    resume_key: str = "",
) -> pd.DataFrame:
    """Train ``model`` (optionally distilled from ``teacher_dir``); resumes from ``run_dir/last.pt``.

    Writes ``last.pt`` and ``history.csv`` each epoch, ``best.pt`` (the EMA weights with ``ema``) on
    each val macro-F1 improvement, and TensorBoard events under ``tb/``. ``last.pt`` records
    ``resume_key``: a checkpoint with another key (another configuration or training code) is not
    resumed; training starts over and says why. Returns the history.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = cfg.amp_on(device)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = arrays.images["train"]
    labels = torch.from_numpy(arrays.labels["train"])
    ce, sample_w = build_objective(cfg, arrays.labels["train"])
    ce = ce.to(device)

    distill = kd is not None and kd.distills
    teacher, cache = None, None
    if distill:
        if teacher_dir is None:
            raise ValueError(f"kd mode {kd.mode!r} needs a teacher_dir")
        criterion = DistillLoss(ce, kd.term(), kd.alpha, kd.beta, kd.standardize)
        if kd.teacher_cache:
            if not cfg.cacheable_views:
                raise ValueError("the teacher cache holds the dihedral views only: with crop_scale < 1 or jitter > 0 "
                                 "set kd teacher_cache: false to run the teacher on each augmented batch")
            tick = time.time()
            cache = teacher_cache(Path(teacher_dir), arrays, cfg.augment, kd.beta > 0, device)
            print(f"teacher cache ready in {time.time() - tick:.1f}s", flush=True)
            if kd.teacher_views == "mean":
                views = D.views_of(cfg.augment)
                cache["logits"][:] = cache["logits"][views].mean(0)
        else:
            teacher = load_run(Path(teacher_dir), device).model
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
    ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None
    gen = torch.Generator().manual_seed(seed)

    history: list[dict] = []
    start, best = 0, -1.0
    last = run_dir / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location=device, weights_only=True)
        if ck.get("resume_key") != resume_key:
            print(f"not resuming from {last}: it was written by another configuration or training code "
                  f"({_config_change(ck.get('config'), _describe(cfg, kd))}); starting over", flush=True)
            last.unlink()
        else:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            if ema is not None:
                ema.load_state_dict(ck["ema"])
            # RNG states must be CPU ByteTensors; map_location moved them to ``device``.
            gen.set_state(ck["gen"].cpu())
            torch.set_rng_state(ck["torch_rng"].cpu())
            if device.type == "cuda" and ck.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), device)
            start, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
            print(f"resuming from {last} after epoch {start}", flush=True)
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
            x = D.apply_views(D.normalise(images[idx.numpy()]), v)
            if cfg.crop_scale < 1:
                x = D.random_resized_crop(x, cfg.crop_scale, gen)
            if cfg.jitter > 0:
                x = D.colour_jitter(x, cfg.jitter, gen)
            x = x.to(device, non_blocking=True)
            y = labels[idx].to(device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits, feats = forward_with_stages(model, x, stages)
                if distill:
                    if cache is not None:
                        t_logits = cache["logits"][v, idx].to(device)
                        t_maps = [m[v, idx].to(device) for m in cache["maps"]]
                    else:
                        with torch.no_grad():
                            t_out, t_feats = forward_with_stages(teacher, x, stages)
                        t_logits, t_maps = t_out.float(), [attention_map(f) for f in t_feats]
                    loss, parts = criterion(logits, y, t_logits, feats, t_maps)
                else:
                    loss = ce(logits, y)
                    parts = {"ce": loss.item()}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model, step=epoch * steps + step)
            b = len(y)
            seen += b
            correct += int((logits.argmax(1) == y).sum())
            for k, val in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + val * b
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", refresh=False)
        evaluated = ema.module if ema is not None else model
        tick = time.time()
        val_logits, _ = predict(evaluated, arrays.images["val"], cfg.eval_batch_size, device, amp=amp)
        val = score(arrays.labels["val"], val_logits)
        row = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            **{f"train_{k}": s / seen for k, s in sums.items()},
            "train_acc": correct / seen,
            **{f"val_{k}": s for k, s in val.items()},
            "val_top_share": float(np.bincount(val_logits.argmax(1), minlength=info.NUM_CLASSES).max() / len(val_logits)),
            "epoch_time_s": time.time() - t0,
            "val_time_s": time.time() - tick,
        }
        history.append(row)
        for k, val_ in row.items():
            if k != "epoch":
                writer.add_scalar(k, val_, epoch + 1)
        if val["macro_f1"] > best:
            best = val["macro_f1"]
            atomic_save(evaluated.state_dict(), run_dir / "best.pt")
        pd.DataFrame(history).to_csv(run_dir / "history.csv", index=False)
        atomic_save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "ema": ema.state_dict() if ema is not None else None, "gen": gen.get_state(),
             "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
             "epoch": epoch, "best": best, "history": history, "resume_key": resume_key, "config": _describe(cfg, kd)},
            last,
        )
        print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val acc {val['acc']:.4f}, "
              f"val macro-F1 {val['macro_f1']:.4f} ({row['epoch_time_s']:.1f}s)", flush=True)
    writer.close()
    return pd.DataFrame(history)


def _describe(cfg: TrainConfig, kd: KDConfig | None) -> dict:
    return {"train": asdict(cfg), "kd": asdict(kd) if kd else None}


def _config_change(old: dict | None, new: dict) -> str:
    """``train.lr 0.003 -> 0.01, ...``: what differs between two :func:`_describe` dicts."""
    if not old:
        return "no configuration recorded"
    changes = [f"{part}.{k} {(old.get(part) or {}).get(k)!r} -> {v!r}"
               for part in ("train", "kd") for k, v in (new.get(part) or {}).items()
               if (old.get(part) or {}).get(k) != v]
    return ", ".join(changes) or "same settings, other training code or teacher"


def finish(model: nn.Module, arrays: D.DermaArrays, run_dir: Path, cfg: TrainConfig, wall_s: float,
           phases: dict[str, float] | None = None) -> dict:
    """Reload the best-val epoch, check it did not collapse, save val/test logits and the run's summary metrics.

    The saved logits are computed in float32 even when training used autocast, averaged over the
    augmentation's views with ``tta``. A collapsed model (:func:`collapse_reason`) raises
    :class:`CollapsedRun` before any prediction or metric is written, or with ``collapse: warn`` is
    written with its reason in ``metrics.json`` (``collapsed``), which keeps it out of the aggregate tables.
    """
    device = resolve_device(cfg.device)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=True))
    views = tta_views(asdict(cfg))
    out: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        out[f"{split}_logits"], _ = predict(model, arrays.images[split], cfg.eval_batch_size, device, views=views, amp=False)
        out[f"{split}_labels"] = arrays.labels[split]
    collapsed = collapse_reason(out["val_labels"], out["val_logits"])
    if collapsed and cfg.collapse == "error":
        raise CollapsedRun(f"run {run_dir.name} collapsed: {collapsed}")
    if collapsed:
        print(f"WARNING: run {run_dir.name} collapsed ({collapsed}); it is flagged and kept out of the tables", flush=True)
    np.savez_compressed(run_dir / "predictions.npz", **out)
    history = pd.read_csv(run_dir / "history.csv")
    best = history.loc[history["val_macro_f1"].idxmax()]
    val, test = score(out["val_labels"], out["val_logits"]), score(out["test_labels"], out["test_logits"])
    metrics = {
        "best_epoch": int(best["epoch"]),
        "val_acc": val["acc"],
        "val_macro_f1": val["macro_f1"],
        "test_acc": test["acc"],
        "test_macro_f1": test["macro_f1"],
        "tta_views": len(views),
        "collapsed": collapsed,
        "epochs": int(history["epoch"].max()),
        "train_time_s": float(history["epoch_time_s"].sum()),
        "wall_time_s": wall_s,
        "phases_s": phases or {},
    }
    write_json(metrics, run_dir / "metrics.json")
    if (run_dir / "last.pt").exists():
        (run_dir / "last.pt").unlink()  # the resume state is spent once the run is finished
    return metrics


def resume_key(config: dict, teacher_dir: Path | None) -> str:
    """What a resumable checkpoint must match: the run's configuration, the training code and the teacher's weights."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(provenance.library_digest(["train"]).encode())
    if teacher_dir is not None and (Path(teacher_dir) / "best.pt").exists():
        h.update(provenance.file_digest(Path(teacher_dir) / "best.pt").encode())
    return h.hexdigest()[:16]


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
    teacher = Path(teacher_dir) if teacher_dir and kd is not None and kd.distills else None
    arrays = D.load(data_cfg)
    phases = {"load_data": time.time() - t0}
    config = {"arch": arch, "seed": seed, "data": asdict(data_cfg), "train": asdict(train_cfg),
              "kd": asdict(kd) if kd else None, "teacher_dir": str(teacher) if teacher else None}
    write_json(config, run_dir / "run_config.json")
    seed_everything(seed)  # weight initialisation depends on the seed too
    model = create_model(arch, data_cfg.size, stem_stride=train_cfg.stem_stride, drop_rate=train_cfg.drop_rate,
                         head_init_std=train_cfg.head_init_std)
    tick = time.time()
    history = fit(model, arrays, train_cfg, run_dir, seed, kd, teacher, resume_key(config, teacher))
    phases["fit"] = time.time() - tick
    phases["epochs"] = float(history["epoch_time_s"].sum()) if len(history) else 0.0
    phases["validation"] = float(history["val_time_s"].sum()) if "val_time_s" in history else 0.0
    tick = time.time()
    metrics = finish(model, arrays, run_dir, train_cfg, time.time() - t0, phases)
    metrics["phases_s"]["finish"] = time.time() - tick
    metrics["wall_time_s"] = time.time() - t0
    write_json(metrics, run_dir / "metrics.json")
    return metrics
