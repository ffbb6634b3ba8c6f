"""Model size, FLOPs, export (TorchScript, ONNX, ONNX INT8), inference backends and benchmarks.

Backends take float32 NCHW inputs already normalised (:func:`edgekd.stages.data.to_input`) and
return ``(N, classes)`` logits as numpy arrays.

ONNX export uses the legacy TorchScript-based exporter (``dynamo=False``): with torch 2.14 the
default dynamo exporter cannot emit opset 17 (it falls back to opset 18 after a failed version
conversion) and writes weights to a separate ``.onnx.data`` file, whereas the legacy exporter
gives a single self-contained opset-17 file with a dynamic batch axis and matches eager
PyTorch to ~1e-6 on timm CNNs. It is deprecated upstream and emits a warning.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import psutil
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image
from timm.layers import Conv2dSame, get_same_padding
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgekd.core import metrics as M
from edgekd.core.config import EfficiencyConfig
from edgekd.core.files import clear_results
from edgekd.core.inference import load_run
from edgekd.stages import data as D
from edgekd.stages.data import stratified_indices, to_input

#: Inference backends understood by :func:`load_backend`.
BACKENDS: tuple[str, ...] = ("eager", "torchscript", "ort_fp32", "ort_int8")
#: File written by :func:`export_all` for each artefact.
EXPORT_FILES: dict[str, str] = {
    "state_dict": "state_dict.pt",
    "torchscript": "model.ts",
    "onnx": "model.onnx",
    "onnx_int8": "model_int8.onnx",
}
#: Artefact whose file size is reported for each backend.
BACKEND_FILES: dict[str, str] = {
    "eager": "state_dict",
    "torchscript": "torchscript",
    "ort_fp32": "onnx",
    "ort_int8": "onnx_int8",
}

Backend = Callable[[np.ndarray], np.ndarray]
_MB = 1024.0**2


def _eval_copy(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Deep copy of ``model`` in eval mode on ``device`` (the caller's model is left untouched)."""
    return copy.deepcopy(model).to(device).eval()


def static_same_padding(model: nn.Module, img_size: int) -> nn.Module:
    """Replace timm's ``Conv2dSame`` (TensorFlow "same" padding, computed from the input's shape at run time)
    by a fixed ``ZeroPad2d`` and a plain ``Conv2d`` for ``img_size`` inputs, in place; returns ``model``.

    The numbers are the same; the ONNX graph then has constant pads instead of shape arithmetic, which
    onnxruntime's INT8 quantisation mis-handles (a 5x5 depthwise convolution on a 2x2 map failed there).
    """
    shapes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            shapes[name] = tuple(inputs[0].shape[-2:])
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model(_example(img_size).to(next(model.parameters()).device))
    for hook in hooks:
        hook.remove()
    for name, (ih, iw) in shapes.items():
        conv = model.get_submodule(name)
        ph = get_same_padding(ih, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pw = get_same_padding(iw, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                          conv.groups, conv.bias is not None).to(conv.weight.device)
        plain.load_state_dict(conv.state_dict())
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf,
                nn.Sequential(nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), plain))
    return model


def _example(img_size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)
    )


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def flops_macs(model: nn.Module, img_size: int) -> dict[str, int]:
    """FLOPs and MACs of one forward pass at batch 1, counted by ``FlopCounterMode``.

    ``FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of matmul/conv/attention ops only
    (biases, norms and activations are not counted), so ``macs = flops // 2``.
    """
    device = next(model.parameters()).device
    model = _eval_copy(model, device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    flops = int(counter.get_total_flops())
    return {"flops": flops, "macs": flops // 2}


def state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of ``torch.save(model.state_dict())``."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


#: Warnings of the export path that say nothing about these models, silenced where they arise (so that a notebook
#: shows no stderr box for them): TorchScript's deprecation (TorchScript stays a measured backend while torch ships
#: it) and the ONNX exporter's note that it cannot constant-fold a strided Slice (the graph is exported unfolded, and
#: every export is checked against eager PyTorch on the test split).
EXPORT_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.\w+` is deprecated"),
    (UserWarning, r"Constant folding - Only steps=1 can be constant folded"),
)


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence :data:`EXPORT_WARNINGS` (and only those) inside the block."""
    with warnings.catch_warnings():
        for category, message in EXPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def export_torchscript(model: nn.Module, img_size: int, path: str | Path) -> Path:
    """Trace ``model`` (eval, CPU) at ``img_size``, freeze it (weights inlined as constants, BatchNorm
    folded) and save it as TorchScript; returns ``path``."""
    path = Path(path)
    with torch.no_grad(), quiet_export():
        traced = torch.jit.freeze(torch.jit.trace(_eval_copy(model), _example(img_size)))
    traced.save(str(path))
    return path


def export_onnx(
    model: nn.Module, img_size: int, path: str | Path, opset: int = 17
) -> Path:
    """Export ``model`` (eval, CPU) to a single ONNX file, input ``input`` / output ``logits``.

    The batch axis is dynamic; height and width are fixed at ``img_size``. BatchNorm is folded
    into the convolutions and identical initialisers are stored once, so an untrained timm model
    (last BN of each block zero-initialised) gives a file smaller than its parameter count. TensorFlow
    "same" padding (the EfficientNet-Lite weights) is exported as constant pads (:func:`static_same_padding`).
    """
    path = Path(path)
    with quiet_export():
        torch.onnx.export(
            static_same_padding(_eval_copy(model), img_size),
            (_example(img_size),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


class _CalibrationReader(CalibrationDataReader):
    """Feeds calibration images to ``quantize_static`` in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._batches = iter(
            {
                input_name: np.ascontiguousarray(
                    images[i : i + batch_size], dtype=np.float32
                )
            }
            for i in range(0, len(images), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(
    onnx_path: str | Path,
    calib_images: np.ndarray,
    out_path: str | Path,
    batch_size: int = 32,
    per_channel: bool = True,
    reduce_range: bool = False,
) -> Path:
    """Static INT8 quantisation with onnxruntime: QDQ format, uint8 activations, int8 weights.

    ``calib_images`` are float32 NCHW *normalised* inputs (MinMax calibration). The model first
    goes through ``quant_pre_process`` (shape inference and graph optimisation). Per-channel
    weight scales are the default because ResNet-style convolutions vary a lot across output
    channels; ``reduce_range`` (7-bit weights) helps on x86 CPUs without VNNI.
    """
    calib_images = np.asarray(calib_images, dtype=np.float32)
    if calib_images.ndim != 4 or len(calib_images) == 0:
        raise ValueError(
            f"calib_images must be a non-empty (N, C, H, W) array, got {calib_images.shape}"
        )
    out_path = Path(out_path)
    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(
            str(prepared),
            str(out_path),
            _CalibrationReader(input_name, calib_images, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return out_path


def export_all(
    model: nn.Module,
    img_size: int,
    out_dir: str | Path,
    calib_images: np.ndarray | None = None,
    opset: int = 17,
) -> dict[str, Path]:
    """Write state_dict, TorchScript, ONNX and (given calibration inputs) INT8 ONNX to ``out_dir``.

    Returns ``{artefact: path}`` with the keys of :data:`EXPORT_FILES`; ``calib_images`` as in
    :func:`quantize_int8`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: out_dir / name for key, name in EXPORT_FILES.items()}
    torch.save(model.state_dict(), paths["state_dict"])
    export_torchscript(model, img_size, paths["torchscript"])
    export_onnx(model, img_size, paths["onnx"], opset)
    if calib_images is None:
        del paths["onnx_int8"]
    else:
        quantize_int8(paths["onnx"], calib_images, paths["onnx_int8"])
    return paths


def file_sizes(paths: Mapping[str, str | Path]) -> dict[str, int]:
    """``{name: size in bytes}`` for each file in ``paths``."""
    return {key: Path(path).stat().st_size for key, path in paths.items()}


def _torch_backend(module: nn.Module, device: torch.device, amp: bool) -> Backend:
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def run(x: np.ndarray | torch.Tensor) -> np.ndarray:
        inputs = torch.as_tensor(x).to(device, non_blocking=True)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp_dtype, enabled=amp),
        ):
            logits = module(inputs)
        return logits.float().cpu().numpy()

    return run


def ort_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """CPU onnxruntime session with ``threads`` intra-op threads, sequential execution, full graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_backend(
    name: str,
    source: nn.Module | str | Path,
    threads: int = 1,
    device: str = "cpu",
    amp: bool = False,
) -> Backend:
    """Callable mapping float32 NCHW inputs to numpy logits.

    ``source``: the model for ``eager``, a ``.ts`` file for ``torchscript``, an ONNX file for
    ``ort_fp32`` / ``ort_int8`` (see :func:`export_all`). ``threads`` sets onnxruntime's intra-op
    threads (torch threads are process-wide: :func:`latency` sets them). ``device`` and ``amp``
    (autocast, float16 on CUDA, bfloat16 on CPU) apply to the torch backends; onnxruntime runs
    on CPU. Torch backends also accept torch tensors, e.g. already on ``device``.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {list(BACKENDS)}")
    if name == "eager":
        if not isinstance(source, nn.Module):
            raise TypeError(
                f"backend 'eager' needs an nn.Module, got {type(source).__name__}"
            )
        return _torch_backend(_eval_copy(source, device), torch.device(device), amp)
    if isinstance(source, nn.Module):
        raise TypeError(f"backend {name!r} needs a file path, got an nn.Module")
    if name == "torchscript":
        with quiet_export():
            module = torch.jit.load(str(source), map_location=device).eval()
        return _torch_backend(module, torch.device(device), amp)
    if device != "cpu" or amp:
        raise ValueError(f"backend {name!r} runs on CPU without amp")
    session = ort_session(source, threads)
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(
            None, {input_name: np.ascontiguousarray(x, dtype=np.float32)}
        )[0]

    return run


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
    cpu_model = _eval_copy(model)
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
                    inputs = _example(size, batch).numpy()
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
                        inputs = _example(size, batch).cuda()
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
    x = _example(size, 1).numpy()
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


def calibration_images(arrays: D.DermaArrays, n: int) -> np.ndarray:
    """Class-stratified, deterministic subset of ``n`` TRAIN images (uint8 NHWC) for INT8 calibration."""
    return arrays.images["train"][stratified_indices(arrays.labels["train"], n, seed=0)]


def backend_logits(fn: Backend, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``fn`` on uint8 NHWC ``images``, normalised (:func:`to_input`) one batch at a time."""
    return np.concatenate([fn(to_input(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])


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

    Exports the best checkpoint with :func:`export_all` into ``run_dir/export/`` (INT8 calibrated
    on ``calib_images`` TRAIN images, :func:`calibration_images`) and writes to
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
