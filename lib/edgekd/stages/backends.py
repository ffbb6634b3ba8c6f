"""The deployable forms of a trained model, and each as an inference backend: TorchScript, ONNX and static INT8 ONNX.

Export (the bundle), evaluation checks and the latency benchmark all read a model through these backends, so the
conversion lives here, apart from the latency measurement (:mod:`edgekd.stages.efficiency`): a change to how latency
is timed leaves every export and evaluation fresh.

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
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from timm.layers import Conv2dSame, get_same_padding
from torch import nn

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


def eval_copy(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
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
        model(example_input(img_size).to(next(model.parameters()).device))
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


def example_input(img_size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)
    )


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
        traced = torch.jit.freeze(torch.jit.trace(eval_copy(model), example_input(img_size)))
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
            static_same_padding(eval_copy(model), img_size),
            (example_input(img_size),),
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
    reduce_range: bool = True,
) -> Path:
    """Static INT8 quantisation with onnxruntime: QDQ format, uint8 activations, int8 weights.

    ``calib_images`` are float32 NCHW *normalised* inputs (MinMax calibration). The model first
    goes through ``quant_pre_process`` (shape inference and graph optimisation). Per-channel
    weight scales are the default because ResNet-style convolutions vary a lot across output
    channels. ``reduce_range`` (7-bit weights) is the default: onnxruntime's u8s8 kernels on x86 CPUs without VNNI
    (many laptops, and this project's current 2-core machines) add pairs of 8-bit products in 16 bits and saturate.
    A 1-epoch ResNet-18 at 28 px quantised with 8-bit weights agreed with its FP32 model on 91.0 % of 210 test images
    there (largest logit difference 1.33); with 7-bit weights on 98.1 % (0.30). One INT8 model then behaves alike on
    every CPU, the exporting machine's or the user's.
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
        return _torch_backend(eval_copy(source, device), torch.device(device), amp)
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


def calibration_images(arrays: D.DermaArrays, n: int) -> np.ndarray:
    """Class-stratified, deterministic subset of ``n`` TRAIN images (uint8 NHWC) for INT8 calibration."""
    return arrays.images["train"][stratified_indices(arrays.labels["train"], n, seed=0)]


def backend_logits(fn: Backend, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``fn`` on uint8 NHWC ``images``, normalised (:func:`to_input`) one batch at a time."""
    return np.concatenate([fn(to_input(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])
