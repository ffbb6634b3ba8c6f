"""Model size, FLOPs, memory and latency of every inference backend (:mod:`edgekd.stages.backends`), and the
efficiency stage that measures them for a trained run.
"""

from __future__ import annotations

import gc
import io
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgekd.core import metrics as M
from edgekd.core.config import EfficiencyConfig
from edgekd.core.files import clear_results
from edgekd.core.inference import load_run
from edgekd.stages import data as D
from edgekd.stages.backends import (
    BACKEND_FILES,
    BACKENDS,
    Backend,
    backend_logits,
    calibration_images,
    eval_copy,
    example_input,
    export_all,
    file_sizes,
    load_backend,
)
from edgekd.stages.data import to_input

_MB = 1024.0**2


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def flops_macs(model: nn.Module, img_size: int) -> dict[str, int]:
    """FLOPs and MACs of one forward pass at batch 1, counted by ``FlopCounterMode``.

    ``FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of matmul/conv/attention ops only
    (biases, norms and activations are not counted), so ``macs = flops // 2``.
    """
    device = next(model.parameters()).device
    model = eval_copy(model, device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    flops = int(counter.get_total_flops())
    return {"flops": flops, "macs": flops // 2}


def state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of ``torch.save(model.state_dict())``."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _cuda_sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


#: Fewest timed calls for which a p99 is reported (with fewer, the "p99" would be the maximum).
MIN_CALLS_P99: int = 100
#: Warm-up ends when the median of the last ``STEADY_WINDOW`` calls is within ``STEADY_TOLERANCE`` of the window before.
STEADY_WINDOW: int = 5
STEADY_TOLERANCE: float = 0.10
#: Most warm-up calls (and seconds) spent waiting for steady timings.
MAX_WARMUP_CALLS: int = 200
MAX_WARMUP_S: float = 20.0


def _timed(fn: Backend, inputs: np.ndarray | torch.Tensor) -> float:
    start = time.perf_counter()
    fn(inputs)
    _cuda_sync()
    return time.perf_counter() - start


def warm_up(fn: Backend, inputs: np.ndarray | torch.Tensor, least: int = 2) -> int:
    """Call ``fn`` until its timings are steady; returns the number of warm-up calls.

    At least ``least`` calls, then until the median of the last :data:`STEADY_WINDOW` calls is within
    :data:`STEADY_TOLERANCE` of the median of the window before (JIT executors such as TorchScript's
    profiling executor re-optimise during their first calls), at most :data:`MAX_WARMUP_CALLS` calls
    or :data:`MAX_WARMUP_S` seconds.
    """
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MAX_WARMUP_CALLS and time.perf_counter() - start < MAX_WARMUP_S:
        times.append(_timed(fn, inputs))
        if len(times) >= max(least, 2 * STEADY_WINDOW):
            last, before = np.median(times[-STEADY_WINDOW:]), np.median(times[-2 * STEADY_WINDOW : -STEADY_WINDOW])
            if abs(last - before) <= STEADY_TOLERANCE * before:
                break
    return len(times)


def latency(
    fn: Backend,
    inputs: np.ndarray | torch.Tensor,
    warmup: int = 10,
    repeats: int = MIN_CALLS_P99,
    threads: int | None = None,
) -> dict[str, float]:
    """Wall-clock latency of ``fn(inputs)`` over ``repeats`` calls, after warming up until steady.

    Warm-up: at least ``warmup`` calls, then until timings are steady (:func:`warm_up`); the number
    of warm-up calls is returned as ``warmup_calls``. ``p99_ms`` is NaN unless ``repeats`` >=
    :data:`MIN_CALLS_P99`. ``threads`` fixes ``torch.set_num_threads`` during the measurement
    (restored afterwards); CUDA is synchronised around each call when initialised.
    ``throughput_ips`` is images per second at the mean latency.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        calls = warm_up(fn, inputs, warmup)
        times = np.array([_timed(fn, inputs) for _ in range(repeats)])
    finally:
        torch.set_num_threads(previous)
    times_ms = times * 1e3
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    mean_ms = float(times_ms.mean())
    return {
        "mean_ms": mean_ms,
        "std_ms": float(times_ms.std(ddof=1)) if repeats > 1 else 0.0,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99) if repeats >= MIN_CALLS_P99 else float("nan"),
        "throughput_ips": len(inputs) / (mean_ms / 1e3),
        "warmup_calls": calls,
        "timed_calls": repeats,
    }


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} missing from /proc/self/status")


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _sampled_peak(
    fn: Backend, inputs: np.ndarray | torch.Tensor, interval_s: float = 1e-3
) -> int:
    """Peak RSS in bytes while ``fn`` runs, sampled every ``interval_s`` by psutil in a thread."""
    process = psutil.Process()
    peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn(inputs)
    finally:
        done.set()
        sampler.join()
    return max(peak, process.memory_info().rss)


def peak_memory(
    fn: Backend, inputs: np.ndarray | torch.Tensor
) -> dict[str, float | str | None]:
    """Peak memory added by one call ``fn(inputs)``.

    ``cpu_rss_peak_mb`` = peak resident set size during the call minus the RSS just before it.
    On Linux the peak is the kernel's exact high-water mark (``VmHWM`` in ``/proc/self/status``,
    reset beforehand by writing ``5`` to ``/proc/self/clear_refs``; ``method="vmhwm"``);
    elsewhere RSS is sampled every millisecond by psutil (``method="psutil_sampling"``, may miss
    spikes shorter than that). Memory already resident before the call (allocator caches, the
    ORT arena grown by earlier calls) is not counted: measure the first call after loading a
    backend to include its working-set growth. ``cuda_peak_mb`` is the peak of torch's CUDA
    allocator above its level before the call (None without CUDA; onnxruntime allocations are
    not seen).
    """
    gc.collect()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    rss_before = psutil.Process().memory_info().rss
    if _reset_rss_peak():
        method = "vmhwm"
        fn(inputs)
        peak = _proc_status_kb("VmHWM") * 1024
    else:
        method = "psutil_sampling"
        peak = _sampled_peak(fn, inputs)
    cuda_peak = None
    if cuda:
        torch.cuda.synchronize()
        cuda_peak = (torch.cuda.max_memory_allocated() - cuda_before) / _MB
    return {
        "cpu_rss_before_mb": rss_before / _MB,
        "cpu_rss_peak_mb": max(peak - rss_before, 0) / _MB,
        "cuda_peak_mb": cuda_peak,
        "method": method,
    }


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``(N, H, W, 3)`` images to ``size`` x ``size`` (PIL bicubic)."""
    if images.shape[1:3] == (size, size):
        return images
    return np.stack(
        [
            np.asarray(
                Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)
            )
            for im in images
        ]
    )


def benchmark_model(
    model: nn.Module,
    img_size: int,
    backends: Iterable[str] = BACKENDS,
    batch_sizes: Sequence[int] = (1, 32),
    sizes: Sequence[int] | None = None,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    calib_images: np.ndarray | None = None,
    work_dir: str | Path | None = None,
    cuda: bool = True,
    exported: Mapping[int, Mapping[str, Path]] | None = None,
) -> pd.DataFrame:
    """Latency table: one row per backend x batch size x input size (default ``(img_size, 224)``).

    CPU rows use ``threads`` torch / onnxruntime intra-op threads. ``ort_int8`` needs
    ``calib_images`` (uint8 NHWC, resized to each input size, normalised by ``to_input``).
    Exports go to ``work_dir/<size>/`` (a temporary folder when None), except for sizes in
    ``exported`` (``{size: export_all(...) paths}`` made with the same calibration images), which are
    timed as they are. With ``cuda`` and a GPU,
    eager fp32 and AMP (float16) rows are added with ``device="cuda"`` (inputs already on the GPU).
    Columns: ``backend, device, precision, img_size, size, batch, threads, file_bytes`` and the
    :func:`latency` statistics; inputs are random normal (values do not affect CNN latency).
    """
    backends = list(backends)
    for name in backends:
        if name not in BACKENDS:
            raise ValueError(
                f"unknown backend {name!r}; valid backends: {list(BACKENDS)}"
            )
    if "ort_int8" in backends and calib_images is None:
        raise ValueError("backend 'ort_int8' needs calib_images")
    sizes = list(dict.fromkeys(sizes if sizes is not None else (img_size, 224)))
    cpu_model = eval_copy(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        for size in sizes:
            if exported is not None and size in exported:
                paths = dict(exported[size])
            else:
                calib = to_input(resize_images(calib_images, size)) if "ort_int8" in backends else None
                paths = export_all(cpu_model, size, root / str(size), calib)
            sizes_bytes = file_sizes(paths)
            for name in backends:
                source = cpu_model if name == "eager" else paths[BACKEND_FILES[name]]
                fn = load_backend(name, source, threads=threads)
                precision = "int8" if name == "ort_int8" else "fp32"
                for batch in batch_sizes:
                    inputs = example_input(size, batch).numpy()
                    stats = latency(fn, inputs, warmup, repeats, threads)
                    rows.append(
                        {
                            "backend": name,
                            "device": "cpu",
                            "precision": precision,
                            "img_size": img_size,
                            "size": size,
                            "batch": batch,
                            "threads": threads,
                            "file_bytes": sizes_bytes[BACKEND_FILES[name]],
                            **stats,
                        }
                    )
            if cuda and torch.cuda.is_available():
                for amp in (False, True):
                    fn = load_backend("eager", model, device="cuda", amp=amp)
                    for batch in batch_sizes:
                        inputs = example_input(size, batch).cuda()
                        rows.append(
                            {
                                "backend": "eager",
                                "device": "cuda",
                                "precision": "amp_fp16" if amp else "fp32",
                                "img_size": img_size,
                                "size": size,
                                "batch": batch,
                                "threads": threads,
                                "file_bytes": sizes_bytes["state_dict"],
                                **latency(fn, inputs, warmup, repeats),
                            }
                        )
    return pd.DataFrame(rows)


def int8_passes(paths: Mapping[str, Path], size: int, threads: int, passes: int, warmup: int, repeats: int) -> pd.DataFrame:
    """ORT FP32 against ORT INT8 at batch 1 in ``passes`` interleaved passes: per pass, each backend's median
    of ``repeats`` calls (after warming up) and their ratio ``speedup`` (FP32 / INT8).

    The backends alternate which goes first, so a slow drift of the machine falls on both; the spread of
    the per-pass ratios is the speed-up's uncertainty (the aggregate's distribution-free interval of their
    median), which one pass per backend cannot show.
    """
    fns = {name: load_backend(name, paths[BACKEND_FILES[name]], threads=threads) for name in ("ort_fp32", "ort_int8")}
    x = example_input(size, 1).numpy()
    rows = []
    for i in range(passes):
        order = list(fns) if i % 2 == 0 else list(fns)[::-1]
        ms = {name: latency(fns[name], x, warmup, repeats, threads)["p50_ms"] for name in order}
        rows.append({"pass": i, "first": order[0], "size": size, "batch": 1, "threads": threads, "repeats": repeats,
                     "ort_fp32_p50_ms": ms["ort_fp32"], "ort_int8_p50_ms": ms["ort_int8"],
                     "speedup": ms["ort_fp32"] / ms["ort_int8"]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ efficiency stage

#: How ``model.csv`` counts operations.
COUNT_NOTE: str = "macs = multiply-accumulates of conv/linear at batch 1; flops = 2 * macs (FlopCounterMode)"


def _check_positive(**values: int | Sequence[int] | None) -> None:
    """Raise ValueError naming the first value (or sequence item) that is not a positive integer."""
    for name, value in values.items():
        items = [] if value is None else list(value) if isinstance(value, Sequence) else [value]
        if isinstance(value, Sequence) and not items:
            raise ValueError(f"{name} must not be empty")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < 1:
                raise ValueError(f"{name} must hold positive integers, got {value!r}")


def _model_row(run: str, arch: str, model: nn.Module, size: int, bytes_of: dict[str, int], one: np.ndarray) -> dict:
    """``model.csv``'s row: params, MACs and FLOPs, file bytes, and the peak memory of one eager FP32 batch-1 call."""
    cpu_memory = peak_memory(load_backend("eager", model), one)
    cuda_peak = None
    if torch.cuda.is_available():
        cuda_peak = peak_memory(load_backend("eager", model, device="cuda"), torch.from_numpy(one).cuda())["cuda_peak_mb"]
    return {
        "run": run,
        "arch": arch,
        "img_size": size,
        "params": count_params(model),
        **flops_macs(model, size),
        "count_note": COUNT_NOTE,
        **{f"{key}_bytes": value for key, value in bytes_of.items()},
        "peak_cpu_rss_mb": cpu_memory["cpu_rss_peak_mb"],
        "memory_method": cpu_memory["method"],
        "peak_cuda_mb": cuda_peak,
    }


def _backends_table(model: nn.Module, paths: dict[str, Path], bytes_of: dict[str, int], images: np.ndarray,
                    labels: np.ndarray, threads: int) -> pd.DataFrame:
    """``backends.csv``: per backend on ``images``, accuracy, macro-F1 and their deltas, logit difference and
    arg-max agreement against eager FP32, and the peak CPU RSS of its first batch."""
    first = images[:256]
    rows, logits = [], {}
    for name in BACKENDS:
        fn = load_backend(name, model if name == "eager" else paths[BACKEND_FILES[name]], threads=threads)
        memory = peak_memory(fn, to_input(first))
        logits[name] = backend_logits(fn, images)
        pred = logits[name].argmax(1)
        scores = {"acc": M.accuracy(labels, pred), "macro_f1": M.macro_f1(labels, pred)}
        rows.append(
            {
                "backend": name,
                "precision": "int8" if name == "ort_int8" else "fp32",
                "file_bytes": bytes_of[BACKEND_FILES[name]],
                "n": len(labels),
                "accuracy": scores["acc"],
                "macro_f1": scores["macro_f1"],
                "max_abs_logit_diff_vs_eager": float(np.abs(logits[name] - logits["eager"]).max()),
                "argmax_agreement_vs_eager": float((logits[name].argmax(1) == logits["eager"].argmax(1)).mean()),
                "peak_cpu_rss_mb": memory["cpu_rss_peak_mb"],
                "memory_batch": len(first),
            }
        )
    backends = pd.DataFrame(rows)
    eager = backends.iloc[0]
    backends.insert(7, "delta_macro_f1_vs_eager", backends["macro_f1"] - eager["macro_f1"])
    backends.insert(8, "delta_accuracy_vs_eager", backends["accuracy"] - eager["accuracy"])
    return backends


def run_efficiency(
    run_dir: str | Path,
    latency: bool = True,
    threads: int = EfficiencyConfig.threads,
    batch_sizes: Sequence[int] = tuple(EfficiencyConfig().batch_sizes),
    sizes: Sequence[int] | None = EfficiencyConfig.sizes,
    warmup: int = EfficiencyConfig.warmup,
    repeats: int = EfficiencyConfig.repeats,
    calib_images: int = EfficiencyConfig.calib_images,
    passes: int = EfficiencyConfig.passes,
) -> dict:
    """Efficiency stage of a finished run: exports, size and cost, accuracy per backend, latency.

    Exports the best checkpoint with :func:`edgekd.stages.backends.export_all` into ``run_dir/export/`` (INT8 calibrated
    on ``calib_images`` TRAIN images, :func:`edgekd.stages.backends.calibration_images`) and writes to
    ``run_dir/efficiency/``:

    * ``model.csv``: params, MACs and FLOPs (:data:`COUNT_NOTE`), file bytes of each export, and
      the peak memory of one eager FP32 batch-1 call (CPU RSS; CUDA when available);
    * ``backends.csv``: per backend on the run's test split, accuracy, macro-F1, the max absolute
      logit difference, arg-max agreement and macro-F1 / accuracy deltas against eager FP32, and
      the peak CPU RSS of its first batch;
    * ``latency.csv`` (when ``latency``): :func:`benchmark_model` at ``batch_sizes`` x ``sizes``
      (None: trained size and 224; other sizes run the same weights), ``threads`` threads;
    * ``int8_passes.csv`` (when ``latency`` and ``passes``): :func:`int8_passes` at the trained size.

    Returns the tables (``model``, ``backends``, ``latency`` and ``int8_passes`` or None), ``files`` and
    ``timings_s``.
    """
    start = time.perf_counter()
    _check_positive(threads=threads, batch_sizes=batch_sizes, sizes=sizes, repeats=repeats, calib_images=calib_images)
    for name, value in (("warmup", warmup), ("passes", passes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    model, config = run.model, run.config
    arrays = D.load(D.DataConfig(**config["data"]))
    size = arrays.size
    calib = calibration_images(arrays, calib_images)
    timings: dict[str, float] = {}

    out_dir = run_dir / "efficiency"
    clear_results(out_dir)
    tick = time.perf_counter()
    paths = export_all(model, size, out_dir / "export", to_input(calib))
    timings["export"] = time.perf_counter() - tick
    bytes_of = file_sizes(paths)
    model_row = _model_row(run_dir.name, config["arch"], model, size, bytes_of, to_input(arrays.images["test"][:1]))
    tick = time.perf_counter()
    backends = _backends_table(model, paths, bytes_of, arrays.images["test"], arrays.labels["test"], threads)
    timings["backends"] = time.perf_counter() - tick

    files = {"model": out_dir / "model.csv", "backends": out_dir / "backends.csv", **paths}
    model_table = pd.DataFrame([model_row])
    model_table.to_csv(files["model"], index=False)
    backends.to_csv(files["backends"], index=False)
    latency_table = None
    if latency:
        tick = time.perf_counter()
        latency_table = benchmark_model(
            model, size, batch_sizes=batch_sizes, sizes=sizes, threads=threads,
            warmup=warmup, repeats=repeats, calib_images=calib, exported={size: paths},
        )
        timings["latency"] = time.perf_counter() - tick
        files["latency"] = out_dir / "latency.csv"
        latency_table.to_csv(files["latency"], index=False)
    passes_table = None
    if latency and passes:
        tick = time.perf_counter()
        passes_table = int8_passes(paths, size, threads, passes, warmup, repeats)
        timings["int8_passes"] = time.perf_counter() - tick
        files["int8_passes"] = out_dir / "int8_passes.csv"
        passes_table.to_csv(files["int8_passes"], index=False)
    timings["total"] = time.perf_counter() - start
    return {"model": model_table, "backends": backends, "latency": latency_table, "int8_passes": passes_table,
            "files": files, "timings_s": timings}
