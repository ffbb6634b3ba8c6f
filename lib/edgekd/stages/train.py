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
import os
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
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

from edgekd.core import augment as AU
from edgekd.core import info, provenance, source
from edgekd.core import metrics as M
from edgekd.core.config import COLLAPSE_SHARE, KDConfig, TrainConfig
from edgekd.core.files import atomic_write
from edgekd.core.inference import autocast, load_run, predict, read_config, resolve_device, tta_views
from edgekd.core.losses import DistillLoss, attention_map, class_balanced_weights, make_ce
from edgekd.core.models import AT_STAGES, create_model, forward_with_stages
from edgekd.stages import data as D


class CollapsedRun(RuntimeError):
    """A trained model whose validation predictions are (nearly) constant: a failed run, not a result."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` through :func:`edgekd.core.files.atomic_write`: a kill never leaves a half-written file."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def write_json(obj: dict, path: Path) -> None:
    """Write ``obj`` as JSON atomically (:func:`edgekd.core.files.atomic_write`)."""
    text = json.dumps(obj, indent=2, default=str).encode()
    atomic_write(path, lambda fh: fh.write(text))


def score(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 (:mod:`edgekd.core.metrics`) and mean CE of ``logits`` against ``labels``."""
    pred = logits.argmax(1)
    ce = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    return {"acc": M.accuracy(labels, pred), "macro_f1": M.macro_f1(labels, pred), "loss": ce}


def teacher_cache(teacher_dir: Path, arrays: D.DermaArrays, augment: str, with_maps: bool, device: torch.device) -> dict:
    """Teacher logits (V, N, C) and attention maps (V, N, HW) for each augmentation view of each train image.

    The finite augmentations (dihedral views) make the teacher's outputs cacheable: it is run once per
    view and image, in float32 whatever the students' autocast, and shared by every student and seed
    (at any input size: the teacher sees its own size of the same views).
    Saved beside the teacher and keyed by the sha256 of its ``best.pt`` (a retrained teacher gets a new
    cache, and the caches of its old weights are deleted), the data, the views, the stages and the device.
    """
    stages = AT_STAGES if with_maps else ()
    weights = provenance.file_digest(Path(teacher_dir) / "best.pt")
    t_data = read_config(teacher_dir)["data"]
    fingerprint = {
        "teacher_sha256": weights,
        "teacher_size": int(t_data["size"]),
        "n_train": len(arrays.labels["train"]),
        "labels_sum": int((arrays.labels["train"] * np.arange(1, len(arrays.labels["train"]) + 1)).sum()),
        "views": AU.views_of(augment),
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
        t_arrays = teacher_arrays(Path(teacher_dir), t_data, arrays)  # loaded only when the cache is built
        n_views = max(AU.AUGMENT_VIEWS.values())
        logits_all, maps_all = None, []
        for v in AU.views_of(augment):
            logits, maps = predict(teacher, t_arrays.images["train"], device=device, views=(v,), stages=stages)
            if logits_all is None:
                logits_all = torch.zeros(n_views, *logits.shape)
                maps_all = [torch.zeros(n_views, *m.shape, dtype=torch.float16) for m in maps]
            logits_all[v] = torch.from_numpy(logits)
            for j, m in enumerate(maps):
                maps_all[j][v] = torch.from_numpy(m)
        cache = {"fingerprint": fingerprint, "logits": logits_all, "maps": maps_all}
        atomic_save(cache, path)
        return cache


def build_teacher_cache(teacher_dir: str | Path, augment: str, maps: bool, device: str, threads: int | None) -> None:
    """Build (or find) the logit cache that students training with ``augment`` (``maps``: attention maps too) read,
    as a step of its own right after the teacher, on the teacher's own images. Students that start together then
    read it instead of one building it while the others wait on its lock."""
    if threads:
        torch.set_num_threads(threads)
    arrays = D.load(D.DataConfig(**read_config(teacher_dir)["data"]))
    teacher_cache(Path(teacher_dir), arrays, augment, maps, resolve_device(device))


def teacher_arrays(teacher_dir: Path, data: dict, arrays: D.DermaArrays) -> D.DermaArrays:
    """The students' ``arrays``, or the same images at the teacher's own input size (its run's ``data`` config)
    when it was trained at another.

    The dihedral views commute with the resize, so view ``v`` of the teacher's image is the view ``v`` the
    student sees. The two must hold the same training images in the same order (checked on the labels and
    image ids), else the teacher's logits would belong to other images.
    """
    if int(data["size"]) == arrays.size:
        return arrays
    own = D.load(D.DataConfig(**data))
    same_ids = (arrays.image_ids.get("train") is None or own.image_ids.get("train") is None
                or np.array_equal(arrays.image_ids["train"], own.image_ids["train"]))
    if not (np.array_equal(arrays.labels["train"], own.labels["train"]) and same_ids):
        raise ValueError(f"the teacher {teacher_dir} was trained at {data['size']} px on other training images than the "
                         f"students' {arrays.size} px arrays (labels or image ids differ): its logits cannot be distilled")
    return own


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


@dataclass
class _BatchLoss:
    """A batch's loss: the hard-label ``ce`` alone, or ``criterion`` (:class:`DistillLoss`) against the teacher's
    outputs, read from ``cache`` (by view and image) or computed by the live ``teacher``; ``stages``: the AT stages."""

    ce: nn.Module
    criterion: DistillLoss | None = None
    teacher: nn.Module | None = None
    cache: dict | None = None
    stages: tuple[int, ...] = ()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """The student's logits, the loss and its parts on batch ``x`` (views ``v`` of train images ``idx``)."""
        logits, feats = forward_with_stages(model, x, self.stages)
        if self.criterion is None:
            loss = self.ce(logits, y)
            return logits, loss, {"ce": loss.item()}
        if self.cache is not None:
            t_logits = self.cache["logits"][v, idx].to(device)
            t_maps = [m[v, idx].to(device) for m in self.cache["maps"]]
        else:
            with torch.no_grad():
                t_out, t_feats = forward_with_stages(self.teacher, x, self.stages)
            t_logits, t_maps = t_out.float(), [attention_map(f) for f in t_feats]
        loss, parts = self.criterion(logits, y, t_logits, feats, t_maps)
        return logits, loss, parts


@dataclass
class _State:
    """What ``last.pt`` saves and a resume restores: the weights, optimizer, schedule, EMA and data-order generator."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    ema: ModelEmaV3 | None
    gen: torch.Generator

    @property
    def evaluated(self) -> nn.Module:
        """The weights validated and saved as ``best.pt``: the EMA's with ``ema``."""
        return self.ema.module if self.ema is not None else self.model


def _batch_loss(ce: nn.Module, arrays: D.DermaArrays, cfg: TrainConfig, kd: KDConfig | None, teacher_dir: Path | None,
                device: torch.device) -> _BatchLoss:
    """CE alone, or (``kd`` distilling) :class:`DistillLoss` with the teacher's cache built or the teacher loaded."""
    if kd is None or not kd.distills:
        return _BatchLoss(ce)
    if teacher_dir is None:
        raise ValueError(f"kd mode {kd.mode!r} needs a teacher_dir")
    criterion = DistillLoss(ce, kd)
    stages = AT_STAGES if kd.beta > 0 else ()
    if not kd.teacher_cache:
        teacher = load_run(Path(teacher_dir), device)
        if teacher.size != arrays.size:
            raise ValueError(f"the teacher {teacher_dir} takes {teacher.size} px inputs and the students {arrays.size} px: "
                             "a live teacher sees the students' batches, so set kd teacher_cache: true (the cache runs "
                             "the teacher on its own size of the same views)")
        return _BatchLoss(ce, criterion, teacher=teacher.model, stages=stages)
    if not cfg.cacheable_views:
        raise ValueError("the teacher cache holds the dihedral views only: with crop_scale < 1 or jitter > 0 "
                         "set kd teacher_cache: false to run the teacher on each augmented batch")
    tick = time.time()
    cache = teacher_cache(Path(teacher_dir), arrays, cfg.augment, kd.beta > 0, device)
    print(f"teacher cache ready in {time.time() - tick:.1f}s", flush=True)
    if kd.teacher_views == "mean":
        views = AU.views_of(cfg.augment)
        cache["logits"][:] = cache["logits"][views].mean(0)
    return _BatchLoss(ce, criterion, cache=cache, stages=stages)


def _optimizer(model: nn.Module, cfg: TrainConfig,
               steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW or Nesterov SGD (weight decay on the >= 2-d parameters only) and its warmup-cosine schedule."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps))


def _resume(last: Path, key: str, config: dict, state: _State, device: torch.device) -> tuple[int, float, list[dict]]:
    """Restore ``state`` from ``last`` when it was written under ``key``; returns the first epoch, best val
    macro-F1 and history so far. A checkpoint with another key is deleted, and training starts over."""
    if not last.exists():
        return 0, -1.0, []
    ck = torch.load(last, map_location=device, weights_only=True)
    if ck.get("resume_key") != key:
        print(f"not resuming from {last}: it was written by another configuration or training code "
              f"({_config_change(ck.get('config'), config)}); starting over", flush=True)
        last.unlink()
        return 0, -1.0, []
    state.model.load_state_dict(ck["model"])
    state.opt.load_state_dict(ck["opt"])
    state.sched.load_state_dict(ck["sched"])
    if state.ema is not None:
        state.ema.load_state_dict(ck["ema"])
    # RNG states must be CPU ByteTensors; map_location moved them to ``device``.
    state.gen.set_state(ck["gen"].cpu())
    torch.set_rng_state(ck["torch_rng"].cpu())
    if device.type == "cuda" and ck.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), device)
    start = ck["epoch"] + 1
    print(f"resuming from {last} after epoch {start}", flush=True)
    return start, ck["best"], ck["history"]


def _train_epoch(state: _State, batch_loss: _BatchLoss, arrays: D.DermaArrays, sample_w: torch.Tensor | None,
                 cfg: TrainConfig, epoch: int, steps: int, device: torch.device) -> dict[str, float]:
    """One pass of ``steps`` batches in an order and views drawn from ``state.gen``; returns the epoch's
    ``train_*`` means (loss and its parts, per image) and ``train_acc``."""
    model, opt, sched, ema, gen = state.model, state.opt, state.sched, state.ema, state.gen
    images = arrays.images["train"]
    labels = torch.from_numpy(arrays.labels["train"])
    n = len(labels)
    amp = cfg.amp_on(device)
    model.train()
    order = (
        torch.multinomial(sample_w, n, replacement=True, generator=gen)
        if sample_w is not None
        else torch.randperm(n, generator=gen)
    )
    views = AU.sample_views(n, cfg.augment, gen)
    sums: dict[str, float] = {}
    seen = correct = 0
    # A widget in JupyterLab; text where the runner asks for it (papermill keeps text) and outside Jupyter.
    bar_type = tqdm if os.environ.get(info.TEXT_PROGRESS_ENV) else auto_tqdm
    bar = bar_type(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   mininterval=5.0, file=sys.stdout)
    for step in bar:
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        v = views[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = AU.apply_views(AU.normalise(images[idx.numpy()]), v)
        if cfg.crop_scale < 1:
            x = AU.random_resized_crop(x, cfg.crop_scale, gen)
        if cfg.jitter > 0:
            x = AU.colour_jitter(x, cfg.jitter, gen)
        x = x.to(device, non_blocking=True)
        y = labels[idx].to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits, loss, parts = batch_loss(model, x, y, v, idx, device)
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
    return {**{f"train_{k}": s / seen for k, s in sums.items()}, "train_acc": correct / seen}


def _validate(model: nn.Module, arrays: D.DermaArrays, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """``val_*`` scores (:func:`score`) of ``model`` and ``val_top_share``, the share of its most predicted class."""
    val_logits, _ = predict(model, arrays.images["val"], cfg.eval_batch_size, device, amp=cfg.amp_on(device))
    val = score(arrays.labels["val"], val_logits)
    return {**{f"val_{k}": s for k, s in val.items()},
            "val_top_share": float(np.bincount(val_logits.argmax(1), minlength=info.NUM_CLASSES).max() / len(val_logits))}


def _checkpoint(last: Path, state: _State, device: torch.device, epoch: int, best: float, history: list[dict],
                key: str, config: dict) -> None:
    """Write the resume state after ``epoch`` to ``last``, recording ``key`` and ``config`` (:func:`_resume`)."""
    atomic_save(
        {"model": state.model.state_dict(), "opt": state.opt.state_dict(), "sched": state.sched.state_dict(),
         "ema": state.ema.state_dict() if state.ema is not None else None, "gen": state.gen.get_state(),
         "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
         "epoch": epoch, "best": best, "history": history, "resume_key": key, "config": config},
        last,
    )


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
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ce, sample_w = build_objective(cfg, arrays.labels["train"])
    batch_loss = _batch_loss(ce.to(device), arrays, cfg, kd, teacher_dir, device)
    n = len(arrays.labels["train"])
    steps = n // cfg.batch_size + (1 if n % cfg.batch_size >= 2 else 0)
    opt, sched = _optimizer(model, cfg, steps)
    ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None
    state = _State(model, opt, sched, ema, torch.Generator().manual_seed(seed))
    config, last = _describe(cfg, kd), run_dir / "last.pt"
    start, best, history = _resume(last, resume_key, config, state, device)

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start)
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        train = _train_epoch(state, batch_loss, arrays, sample_w, cfg, epoch, steps, device)
        tick = time.time()
        val = _validate(state.evaluated, arrays, cfg, device)
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **train, **val,
               "epoch_time_s": time.time() - t0, "val_time_s": time.time() - tick}
        history.append(row)
        for k, value in row.items():
            if k != "epoch":
                writer.add_scalar(k, value, epoch + 1)
        if row["val_macro_f1"] > best:
            best = row["val_macro_f1"]
            atomic_save(state.evaluated.state_dict(), run_dir / "best.pt")
        pd.DataFrame(history).to_csv(run_dir / "history.csv", index=False)
        _checkpoint(last, state, device, epoch, best, history, resume_key, config)
        print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val acc {row['val_acc']:.4f}, "
              f"val macro-F1 {row['val_macro_f1']:.4f} ({row['epoch_time_s']:.1f}s)", flush=True)
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
    h.update(provenance.library_digest(["stages.train"]).encode())
    if teacher_dir is not None and (Path(teacher_dir) / "best.pt").exists():
        h.update(provenance.file_digest(Path(teacher_dir) / "best.pt").encode())
    return h.hexdigest()[:16]


def trained_key(config: dict, teacher_dir: Path | None) -> dict:
    """What a finished run must have been trained from to be read instead of trained again: its configuration, the
    training code and the teacher's weights (:func:`resume_key`) and the content of its data."""
    return {"resume_key": resume_key(config, teacher_dir), "data": source.fingerprint(D.DataConfig(**config["data"]))}


def finished_as(run_dir: Path, config: dict, key: dict) -> dict | None:
    """The metrics of the finished run in ``run_dir`` when it was trained from ``config`` and ``key``
    (:func:`trained_key`) and its ``best.pt`` is the one it recorded, else None (it is then trained)."""
    try:
        old = json.loads((run_dir / "run_config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if (old != config or not isinstance(metrics, dict) or metrics.get("trained_key") != key
            or not (run_dir / "predictions.npz").is_file() or not (run_dir / "best.pt").is_file()
            or metrics.get("best_sha256") != provenance.file_digest(run_dir / "best.pt")):
        return None
    return metrics


def run_train(
    run_dir: str | Path,
    arch: str,
    seed: int,
    data_cfg: D.DataConfig,
    train_cfg: TrainConfig,
    kd: KDConfig | None = None,
    teacher_dir: str | Path | None = None,
) -> dict:
    """Train one teacher (``kd`` None) or student run end to end; returns its metrics.

    A finished run in ``run_dir`` trained from the same configuration, data, training code and teacher is read, not
    trained again (a notebook run twice, or the JupyterLab and nbval tests of one checkout): the result would be
    bitwise the same. Any difference, or a ``best.pt`` other than the one it recorded, trains it again.
    """
    t0 = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    teacher = Path(teacher_dir) if teacher_dir and kd is not None and kd.distills else None
    arrays = D.load(data_cfg)
    phases = {"load_data": time.time() - t0}
    seed_everything(seed)  # weight initialisation depends on the seed too
    model = create_model(arch, data_cfg.size, pretrained=train_cfg.pretrained, stem_stride=train_cfg.stem_stride,
                         drop_rate=train_cfg.drop_rate, head_init_std=train_cfg.head_init_std)
    # ``weights``: the ImageNet checkpoint (package, file, sha256, normalisation) the run started from, if any.
    config = {"arch": arch, "seed": seed, "data": asdict(data_cfg), "train": asdict(train_cfg),
              "kd": asdict(kd) if kd else None, "teacher_dir": str(teacher) if teacher else None,
              "weights": getattr(model, "pretrained", None)}
    key = trained_key(config, teacher)
    done = finished_as(run_dir, config, key)
    if done is not None:
        print(f"{run_dir} is a finished run of these settings, data, code and teacher: read, not trained again "
              "(delete the folder to train it anew)", flush=True)
        return done
    write_json(config, run_dir / "run_config.json")
    tick = time.time()
    history = fit(model, arrays, train_cfg, run_dir, seed, kd, teacher, key["resume_key"])
    phases["fit"] = time.time() - tick
    phases["epochs"] = float(history["epoch_time_s"].sum()) if len(history) else 0.0
    phases["validation"] = float(history["val_time_s"].sum()) if "val_time_s" in history else 0.0
    tick = time.time()
    metrics = finish(model, arrays, run_dir, train_cfg, time.time() - t0, phases)
    metrics["phases_s"]["finish"] = time.time() - tick
    metrics["wall_time_s"] = time.time() - t0
    metrics["trained_key"], metrics["best_sha256"] = key, provenance.file_digest(run_dir / "best.pt")
    write_json(metrics, run_dir / "metrics.json")
    return metrics
