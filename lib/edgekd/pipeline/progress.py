"""The runner's estimate, progress bar and time table, from speeds measured on this machine.

Before a sweep, :class:`Plan` times a few training steps (and an inference pass) of every
architecture and input size the sweep trains, on this machine with the run's own settings, and
turns them into seconds per run. Machines of the same kind differ 2-5x in speed, so the estimate
is measured, never assumed. :class:`Tracker` shows a progress bar over the estimated seconds (its
rate calibrates the ETA as runs finish) and logs one line per finished run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from edgekd.core import augment as AU
from edgekd.core import info
from edgekd.core.config import TrainConfig
from edgekd.core.corruptions import robustness_plan
from edgekd.core.inference import autocast, resolve_device
from edgekd.core.models import create_model
from edgekd.pipeline.plan import Blocked, key_metric

#: Seconds a papermill run spends outside its own work (kernel start, imports, data load).
KERNEL_OVERHEAD_S: float = 12.0
#: Rough per-run seconds of the stages that do not train (scaled by the measured inference speed).
EVALUATE_S: float = 20.0
AGGREGATE_S: float = 60.0
#: Corrupting one image once (MedMNIST-C suites, PIL/ImageMagick) on a reference core, seconds.
CORRUPT_S_PER_IMAGE: float = 2e-3


@dataclass(frozen=True)
class Speed:
    """Measured images per second of one training step and of eval-mode inference."""

    train_ips: float
    infer_ips: float


def measure_speed(arch: str, size: int, train: dict, seconds: float = 2.0) -> Speed:
    """Time training steps and inference of ``arch`` at ``size`` with the run's batch size, threads,
    device, channels_last and autocast settings, on random inputs (a couple of seconds each)."""

    cfg = TrainConfig(**train)
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = resolve_device(cfg.device)
        model = create_model(arch, size, stem_stride=cfg.stem_stride).to(device)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        x = torch.randn(cfg.batch_size, 3, size, size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, info.NUM_CLASSES, (cfg.batch_size,), device=device)

        def step() -> None:
            with autocast(device, cfg.amp_on(device)):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def infer() -> None:
            with torch.no_grad():
                model(x)

        return Speed(_rate(step, cfg.batch_size, seconds, model.train), _rate(infer, cfg.batch_size, seconds / 2, model.eval))
    finally:
        torch.set_num_threads(previous)


def _rate(fn, batch: int, seconds: float, mode) -> float:
    mode()
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - t0)


def _split_sizes(data: dict) -> dict[str, int]:
    subset = data.get("subset") or {}
    return {s: min(subset.get(s, n), n) for s, n in info.SPLIT_SIZES.items()}


def critical_paths(specs: list, seconds: dict[str, float]) -> dict[str, float]:
    """Per run key, its estimated seconds plus the longest chain of estimated seconds that waits on it (among
    ``specs``): the longer, the sooner it should start. A run without an estimate counts one second."""
    waiting: dict[str, list] = {s.key: [] for s in specs}
    for s in specs:
        for u in (*s.upstream, *s.after):
            if u.key in waiting:
                waiting[u.key].append(s)
    out: dict[str, float] = {}

    def path(s) -> float:
        if s.key not in out:
            out[s.key] = seconds.get(s.key, 1.0) + max((path(d) for d in waiting[s.key]), default=0.0)
        return out[s.key]

    for s in specs:
        path(s)
    return out


def simulate(specs: list, seconds: dict[str, float], workers: int, priority: dict[str, float]) -> float:
    """Seconds until ``specs`` are done on ``workers`` workers that each take, whenever one is free, the ready run of
    highest ``priority`` (what Dask does with the runner's priorities), every run lasting its estimate."""
    keys = {s.key for s in specs}
    needs = {s.key: {u.key for u in (*s.upstream, *s.after) if u.key in keys} for s in specs}
    order = {s.key: i for i, s in enumerate(specs)}
    done_at: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    now = 0.0
    while len(done_at) < len(specs):
        started = {k for _, k in running}
        ready = [k for k in needs if k not in done_at and k not in started and needs[k] <= done_at.keys()]
        ready.sort(key=lambda k: (-priority.get(k, 0.0), order[k]))
        while ready and len(running) < workers:
            key = ready.pop(0)
            running.append((now + seconds.get(key, 0.0), key))
        running.sort()
        now, key = running.pop(0)
        done_at[key] = now
    return now


class Plan:
    """Estimated seconds of every run to execute (``measure=False``: nothing is timed, no estimate)."""

    def __init__(self, specs: list, measure: bool = True) -> None:
        self.specs = specs
        self.speeds: dict[tuple, Speed] = {}
        self.seconds: dict[str, float] = {}
        trained = [t for t in map(self._trained, specs) if t is not None]
        self.measured = measure and bool(trained)
        if not self.measured:
            return
        for p in trained:
            if self._key(p) not in self.speeds:
                self.speeds[self._key(p)] = measure_speed(p["arch"], p["data"]["size"], p["train"])
        cached_teachers: set[str] = set()
        for spec in specs:
            self.seconds[spec.key] = self._estimate(spec, cached_teachers)

    @staticmethod
    def _trained(spec) -> dict | None:
        """Parameters of the training run a spec trains or works on (None for data and aggregate)."""
        if "arch" in spec.parameters:
            return spec.parameters
        ups = [u for u in spec.upstream if "arch" in u.parameters]
        return ups[0].parameters if ups and spec.stage != "aggregate" else None

    @staticmethod
    def _key(p: dict) -> tuple:
        t = p["train"]
        return (p["arch"], p["data"]["size"], t["stem_stride"], t["batch_size"], t["channels_last"], t["cpu_amp"],
                t["amp"], t["threads"], t["device"])

    def _estimate(self, spec, cached_teachers: set[str]) -> float:
        if spec.stage == "data":
            return 30.0
        if spec.stage == "aggregate":
            return AGGREGATE_S
        p = self._trained(spec)
        speed = self.speeds[self._key(p)]
        n = _split_sizes(p["data"])
        views = len(AU.views_of(p["train"]["augment"]))
        if spec.stage in ("teacher", "student"):
            epochs = p["train"]["epochs"]
            seconds = epochs * (n["train"] / speed.train_ips + n["val"] / speed.infer_ips)
            seconds += (n["val"] + n["test"]) * (views if p["train"]["tta"] else 1) / speed.infer_ips
            kd = p.get("kd") or {}
            teacher = p.get("teacher_dir")
            if kd.get("mode", "none") != "none" and kd.get("teacher_cache") and teacher not in cached_teachers:
                cached_teachers.add(teacher)
                seconds += views * n["train"] / (speed.infer_ips / 3)  # the teacher: about 3x the student's cost
            return KERNEL_OVERHEAD_S + seconds
        if spec.stage == "evaluate":
            return KERNEL_OVERHEAD_S + EVALUATE_S
        if spec.stage == "export":  # bootstrap, ONNX and INT8 export, both backends on test
            return KERNEL_OVERHEAD_S + EVALUATE_S + 4 * n["test"] / speed.infer_ips
        if spec.stage == "robustness":
            plan = robustness_plan(spec.parameters["suites"], spec.parameters["severities"])
            cells = sum(len(sev) for corruptions in plan.values() for sev in corruptions.values())
            images = spec.parameters["max_images"] or n["test"]
            return KERNEL_OVERHEAD_S + cells * images * (1 / speed.infer_ips + CORRUPT_S_PER_IMAGE / 4)
        if spec.stage == "efficiency":
            seconds = 20.0 + 4 * n["test"] / speed.infer_ips
            if spec.parameters.get("latency"):
                calls = spec.parameters["warmup"] + spec.parameters["repeats"]
                sizes = spec.parameters["sizes"] or [p["data"]["size"], 224]
                for size in sizes:
                    for batch in spec.parameters["batch_sizes"]:
                        seconds += 4 * calls * batch * (size / p["data"]["size"]) ** 2 / speed.infer_ips
            return KERNEL_OVERHEAD_S + seconds
        return KERNEL_OVERHEAD_S

    def wall(self, workers: int, exclusive: frozenset[str] = frozenset(), priority: dict[str, float] | None = None) -> float:
        """Estimated wall seconds on ``workers`` workers: the parallel runs scheduled by ``priority`` (default the
        runner's, :func:`critical_paths`), then the ``exclusive`` runs one after another."""
        shared = [s for s in self.specs if s.key not in exclusive]
        order = priority if priority is not None else critical_paths(shared, self.seconds)
        alone = sum(self.seconds.get(s.key, 0.0) for s in self.specs if s.key in exclusive)
        return simulate(shared, self.seconds, workers, order) + alone

    @property
    def per_stage(self) -> pd.Series:
        """Planned seconds per stage (the part of each run key after ':')."""
        return pd.Series(self.seconds, dtype=float).groupby(lambda k: k.split(":")[1]).sum()

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))

    def describe(self, workers: int = 1, exclusive: frozenset[str] = frozenset()) -> str:
        """The measured speeds and the estimate, for the log before the sweep starts; with ``workers`` > 1, the time the
        runner's schedule takes (longest critical path first, the ``exclusive`` runs one at a time after)."""
        if not self.specs:
            return "[plan] nothing to run: every stage is fresh"
        if not self.measured:
            return f"[plan] {len(self.specs)} run(s) to execute (no estimate: nothing trains, or --no-estimate)"
        lines = [f"[plan] {len(self.specs)} run(s) to execute; training speed measured on this machine:"]
        for (arch, size, *_), sp in self.speeds.items():
            lines.append(f"[plan]   {arch:<16} {size:>3} px: train {sp.train_ips:7.1f} img/s, inference {sp.infer_ips:7.1f} img/s")
        for stage, seconds in self.per_stage.items():
            lines.append(f"[plan]   {stage:<11} ~{seconds / 60:6.1f} min")
        lines.append(f"[plan] estimated total ~{self.total / 60:.0f} min of work (training speed of the first seconds; "
                     "other stages roughly)" + (f", about {self.wall(workers, exclusive) / 60:.0f} min on {workers} "
                                                 "parallel workers, longest first" if workers > 1 else ""))
        return "\n".join(lines)


class Tracker:
    """Progress over the sweep: a bar on a terminal, and on every finished run one log line with the
    run's time and key metric, the runs done, the elapsed time and the ETA (see :meth:`eta`)."""

    def __init__(self, plan: Plan, log=print, workers: int = 1, exclusive: frozenset[str] = frozenset()) -> None:

        self.plan, self.log, self.workers, self.exclusive = plan, log, max(1, workers), exclusive
        self.total = plan.total if plan.measured else float(len(plan.specs))
        self.bar = tqdm(total=self.total, file=sys.stderr, disable=None if plan.specs else True, mininterval=5,
                        bar_format="{l_bar}{bar}| [{elapsed}<{remaining}] {postfix}")
        self.t0, self.count = time.time(), 0
        self.left = {spec.key: plan.seconds.get(spec.key, 0.0) if plan.measured else 1.0 for spec in plan.specs}
        self.ran_s, self.ran_planned = 0.0, 0.0

    def eta(self) -> float:
        """Seconds left: the planned work left, scaled by how long the finished training runs really took against
        their plan (which absorbs parallel runs slowing each other; the plan as it is until one finishes), spread
        over the workers except for the stages that run one at a time."""
        speed = self.ran_s / self.ran_planned if self.ran_planned > 0 else 1.0
        shared = sum(v for k, v in self.left.items() if k not in self.exclusive)
        alone = sum(v for k, v in self.left.items() if k in self.exclusive)
        return speed * (shared / self.workers + alone)

    def start(self, spec) -> None:
        self.bar.set_postfix_str(f"{spec.run_id} ({spec.stage})", refresh=True)

    def done(self, spec, result: float | Exception) -> None:
        step = self.left.pop(spec.key, 0.0)
        self.count += 1
        self.bar.update(step)
        if not isinstance(result, Exception) and step > 0 and spec.trains:
            self.ran_s, self.ran_planned = self.ran_s + float(result), self.ran_planned + step
        elapsed = time.time() - self.t0
        where = f"[{self.count}/{len(self.plan.specs)}, {_clock(elapsed)} elapsed, ETA {_clock(self.eta())}]"
        if isinstance(result, Blocked):
            self.log(f"[blocked] {spec.run_id} {spec.stage}: {result} {where}")
        elif isinstance(result, Exception):
            self.log(f"[FAILED] {spec.run_id} {spec.stage}: {type(result).__name__}: {_last_line(result)} {where}")
        else:
            self.log(f"[done] {spec.run_id} {spec.stage} {result:.0f}s {key_metric(spec)} {where}".replace("  ", " "))

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def _last_line(exc: Exception) -> str:
    """The most telling line of an error (a papermill error's last traceback line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not set(ln.strip()) <= set("-")]
    return (lines[-1] if lines else "")[:300]


def stage_table(summary: pd.DataFrame) -> str:
    """Runs and seconds per stage (what ran in this invocation)."""
    ran = summary[summary["status"] == "ran"]
    if ran.empty:
        return "[time] nothing ran"
    table = ran.groupby("stage", sort=False)["wall_time_s"].agg(runs="size", total_s="sum", mean_s="mean").reset_index()
    table.loc[len(table)] = ["all", int(table["runs"].sum()), float(table["total_s"].sum()), float(np.nan)]
    text = table.to_string(index=False, float_format=lambda v: f"{v:.1f}")
    return "[time] stage times of this invocation (also in timings.csv):\n" + text
