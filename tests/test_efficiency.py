"""Tests for edgekd.stages.efficiency: counts, exports, backend parity, INT8, latency, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from edgekd.core.info import NUM_CLASSES
from edgekd.pipeline import bench as BN
from edgekd.pipeline.kernels import MALLOC_ENV
from edgekd.stages import backends as BK
from edgekd.stages import efficiency as E
from edgekd.stages import tables as TB
from edgekd.stages.data import to_input

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning"
)

SIZE = 28


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    """timm resnet18 with trained-looking BatchNorm statistics.

    timm zero-initialises the last BN of each block, which makes residual branches inert (a weak
    parity test) and their folded ONNX weights identical (deduplicated, shrinking the file).
    """
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=NUM_CLASSES)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(
    resnet18: nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    return BK.export_all(resnet18, SIZE, tmp_path_factory.mktemp("resnet18"))


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    images = np.random.default_rng(0).integers(
        0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8
    )
    return to_input(images)


def _tiny(seed: int = 0) -> nn.Module:
    """Small CNN with a scaled-up head so that its logits are well separated."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, NUM_CLASSES),
    )
    with torch.no_grad():
        model[-1].weight.mul_(10.0)
    return model.eval()


def test_exports_silence_only_the_explained_warnings(resnet18: nn.Module, tmp_path: Path) -> None:
    """TorchScript's deprecation and the ONNX Slice note are silenced (no stderr box in a notebook); other
    warnings still show."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        BK.export_torchscript(resnet18, 28, tmp_path / "m.pt")
        BK.export_onnx(resnet18, 28, tmp_path / "m.onnx")
        with BK.quiet_export():
            warnings.warn("`torch.jit.trace` is deprecated.", FutureWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    # DeprecationWarnings raised outside __main__ are hidden by Python's default filters, in a notebook too
    assert [str(w.message) for w in seen if not issubclass(w.category, DeprecationWarning)] == ["something else"]


def test_count_params() -> None:
    assert E.count_params(nn.Linear(10, 5)) == 10 * 5 + 5
    assert E.count_params(nn.Conv2d(3, 8, 3, bias=False)) == 8 * 3 * 3 * 3


def test_flops_macs_linear_and_conv() -> None:
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    assert E.flops_macs(linear, 4) == {"flops": 2 * 48 * 5, "macs": 48 * 5}
    # 8 output channels x 10 x 10 positions, each 3 * 3 * 3 multiply-accumulates.
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert E.flops_macs(conv, 10) == {"flops": 2 * 800 * 27, "macs": 800 * 27}
    strided = nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1)
    assert E.flops_macs(strided, 8)["macs"] == 4 * 4 * 4 * 27


def test_flops_leaves_model_mode(resnet18: nn.Module) -> None:
    resnet18.train()
    try:
        macs = E.flops_macs(resnet18, SIZE)["macs"]
        assert resnet18.training
    finally:
        resnet18.eval()
    assert macs > 0


def test_export_files_and_sizes(resnet18: nn.Module, exported: dict[str, Path]) -> None:
    assert set(exported) == {"state_dict", "torchscript", "onnx"}
    sizes = BK.file_sizes(exported)
    weight_bytes = 4 * E.count_params(resnet18)
    for key in ("state_dict", "torchscript", "onnx"):
        assert weight_bytes * 0.95 < sizes[key] < weight_bytes * 1.2, key
    assert (
        abs(E.state_dict_bytes(resnet18) - sizes["state_dict"]) < 0.01 * weight_bytes
    )


def test_ort_fp32_matches_eager(
    resnet18: nn.Module, exported: dict[str, Path], inputs: np.ndarray
) -> None:
    with torch.no_grad():
        reference = resnet18(torch.from_numpy(inputs)).numpy()
    onnx_fn = BK.load_backend("ort_fp32", exported["onnx"], threads=1)
    for batch in (inputs[:1], inputs):  # batch axis is dynamic (exported at batch 2)
        logits = onnx_fn(batch)
        assert logits.shape == (len(batch), NUM_CLASSES)
        assert np.abs(logits - reference[: len(batch)]).max() < 1e-4
    assert np.abs(BK.load_backend("eager", resnet18)(inputs) - reference).max() < 1e-6


def test_torchscript_matches_eager(
    resnet18: nn.Module, exported: dict[str, Path], inputs: np.ndarray
) -> None:
    with torch.no_grad():
        reference = resnet18(torch.from_numpy(inputs)).numpy()
    logits = BK.load_backend("torchscript", exported["torchscript"])(inputs)
    assert logits.shape == reference.shape
    assert np.abs(logits - reference).max() < 1e-4


def test_int8_agrees_with_fp32(tmp_path: Path) -> None:
    model = _tiny()
    images = np.random.default_rng(1).integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    x = to_input(images)
    paths = BK.export_all(model, 16, tmp_path, calib_images=x[:32])
    fp32 = BK.load_backend("ort_fp32", paths["onnx"])(x[32:])
    int8 = BK.load_backend("ort_int8", paths["onnx_int8"])(x[32:])
    assert int8.shape == fp32.shape
    assert not np.array_equal(int8, fp32)  # really quantised
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9
    assert np.abs(int8 - fp32).max() < 0.1 * (fp32.max() - fp32.min())


def test_unknown_backend_and_wrong_sources(resnet18: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"'tensorrt'.*ort_int8"):
        BK.load_backend("tensorrt", resnet18)
    with pytest.raises(TypeError):
        BK.load_backend("eager", "model.onnx")
    with pytest.raises(TypeError):
        BK.load_backend("ort_fp32", resnet18)
    with pytest.raises(ValueError, match="'tensorrt'"):
        E.benchmark_model(resnet18, SIZE, backends=("eager", "tensorrt"))


def test_latency_stats() -> None:
    threads = torch.get_num_threads()
    x = np.ones((4, 3, 8, 8), dtype=np.float32)
    stats = E.latency(lambda a: np.sort(a, axis=None), x, warmup=2, repeats=15, threads=1)
    assert torch.get_num_threads() == threads
    assert set(stats) == {"mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_ips",
                          "warmup_calls", "timed_calls"}
    assert stats["timed_calls"] == 15 and stats["warmup_calls"] >= 2
    assert np.isnan(stats["p99_ms"])  # 15 calls cannot resolve a 99th percentile
    assert all(value > 0 for name, value in stats.items() if name != "p99_ms")
    assert stats["p50_ms"] <= stats["p90_ms"]
    assert stats["throughput_ips"] == pytest.approx(4 / (stats["mean_ms"] / 1e3))
    full = E.latency(lambda a: np.sort(a, axis=None), x, warmup=2, repeats=E.MIN_CALLS_P99, threads=1)
    assert full["p50_ms"] <= full["p90_ms"] <= full["p99_ms"]
    with pytest.raises(ValueError):
        E.latency(lambda a: a, x, repeats=0)


#: Measures a transient 80 MB allocation and a no-op; prints both results as JSON.
_PEAK = ("import json, numpy as np\n"
         "from edgekd.stages import efficiency as E\n"
         "big = E.peak_memory(lambda _: float(np.ones(80 * 1024**2 // 8).sum()), None)\n"
         "print(json.dumps([big, E.peak_memory(lambda _: 0, None)]))")


def test_peak_memory_sees_a_transient_allocation() -> None:
    """In a process with glibc's default allocator: a test process that inherited the runner's malloc settings
    (MALLOC_ENV, which keeps freed memory resident, as pytest-xdist's workers do) can serve the allocation from
    memory already resident, which the measurement rightly does not count."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", _PEAK], env=env, capture_output=True, text=True, check=True).stdout
    big, small = json.loads(out.strip().splitlines()[-1])
    assert 70 < big["cpu_rss_peak_mb"] < 200
    assert big["cuda_peak_mb"] is None or big["cuda_peak_mb"] >= 0
    assert small["cpu_rss_peak_mb"] < 20


def test_benchmark_model_rows(tmp_path: Path) -> None:
    images = np.random.default_rng(2).integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)
    df = E.benchmark_model(
        _tiny(),
        16,
        batch_sizes=(1, 2),
        sizes=(16, 16),
        warmup=1,
        repeats=2,
        calib_images=images,
        work_dir=tmp_path,
        cuda=False,
    )
    assert len(df) == len(BK.BACKENDS) * 2
    assert set(df["backend"]) == set(BK.BACKENDS)
    assert set(df["batch"]) == {1, 2} and set(df["size"]) == {16}
    assert (df["file_bytes"] > 0).all() and (df["mean_ms"] > 0).all()
    assert (df.loc[df["backend"] == "ort_int8", "precision"] == "int8").all()
    assert (tmp_path / "16" / "model_int8.onnx").exists()
    with pytest.raises(ValueError, match="calib_images"):
        E.benchmark_model(_tiny(), 16, backends=("ort_int8",), sizes=(16,))


def test_int8_passes_interleave_fp32_and_int8_and_the_interval_is_the_order_statistics(tmp_path: Path) -> None:
    model = _tiny().eval()
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16), dtype=np.float32)
    paths = BK.export_all(model, 16, tmp_path, calib_images=x)
    table = E.int8_passes(paths, 16, threads=1, passes=4, warmup=1, repeats=5)
    assert list(table["pass"]) == [0, 1, 2, 3] and list(table["first"]) == ["ort_fp32", "ort_int8"] * 2
    assert np.allclose(table["speedup"], table["ort_fp32_p50_ms"] / table["ort_int8_p50_ms"])
    # 9 passes: (2nd, 8th) smallest covers the median with 1 - 2 P(Bin(9, 1/2) <= 1) = 0.961; (3rd, 7th) only 0.82
    values = [1.4, 0.9, 1.3, 1.1, 1.25, 1.2, 1.35, 1.0, 1.15]
    got = TB.speedup_interval(values)
    assert (got["speedup_median"], got["speedup_low"], got["speedup_high"]) == (1.2, 1.0, 1.35)
    assert np.isnan(TB.speedup_interval(values[:3])["speedup_low"])  # 3 passes cannot reach 95%


def test_ort_op_profile_splits_kernel_time_by_operator_and_flags_the_qdq_nodes(tmp_path: Path) -> None:
    """edgekd-bench --ops: ORT's own profiler, per operator type, for an FP32 model and its INT8 quantisation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, NUM_CLASSES)).eval()
    fp32 = BK.export_onnx(model, 32, tmp_path / "m.onnx")
    calib = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    int8 = BK.quantize_int8(fp32, to_input(calib), tmp_path / "m_int8.onnx")
    tables = {name: BN.op_profile(path, 32, 1, 5, tmp_path / name) for name, path in (("fp32", fp32), ("int8", int8))}
    for table in tables.values():
        assert table["share"].sum() == pytest.approx(1.0) and (table["ms_per_call"] > 0).all()
        assert set(table.columns) >= {"op_type", "nodes", "ms_per_call", "share", "qdq"}
    assert "Conv" in set(tables["fp32"]["op_type"]) and not tables["fp32"]["qdq"].any()
    assert tables["int8"]["qdq"].any()  # the INT8 model quantises its input at least
