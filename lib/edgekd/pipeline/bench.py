"""INT8 benchmark of a profile: ONNX Runtime INT8 against ONNX Runtime FP32 (and eager PyTorch), in one process.

For the seed-0 teacher and the seed-0 student of each architecture (first KD setting), the three
backends are timed on the same machine with the same threads, batch and repeats, after warming up
until steady, and the INT8 model's test macro-F1 is compared with FP32. Targets: INT8 at least 2x
faster than ORT FP32 at the profile's input size (the effect of quantisation itself, not of leaving
PyTorch), and a macro-F1 drop of at most 0.01. The ratio to eager PyTorch is reported beside it.
It prints figures (PASS / MISS per target) and, where INT8 misses, what the CPU offers; it is not a test.

``python -m edgekd.pipeline.bench [--profile-dir outputs/default] [--threads 2] [--batch 1] [--repeats 50]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch
import yaml
from torch import nn

from edgekd.core import info
from edgekd.core import metrics as M
from edgekd.core.files import first_line_is, input_index, unwritable, which_input
from edgekd.core.inference import load_run, read_config
from edgekd.core.models import create_model
from edgekd.core.provenance import cpu_model
from edgekd.stages import backends as BK
from edgekd.stages import data as D
from edgekd.stages import efficiency as E
from edgekd.stages import tables as TB

#: Target per column: speedup at least, macro-F1 delta at least (i.e. a drop of at most 0.01).
TARGETS: dict[str, float] = {
    "int8_vs_ort_fp32": 2.0,
    "int8_delta_macro_f1": -0.01,
}
#: PASS / MISS column of each target.
VERDICTS: dict[str, str] = {
    "int8_vs_ort_fp32": "int8_2x",
    "int8_delta_macro_f1": "f1_drop_0.01",
}
COLUMNS: tuple[str, ...] = ("model", "eager_fp32_ms", "ort_fp32_ms", "ort_int8_ms", "int8_vs_ort_fp32",
                            "int8_vs_eager", "int8_delta_macro_f1", *VERDICTS.values())
#: Every column of the CSV, in order; its first line is how an earlier ``bench_int8.csv`` is recognised.
CSV_COLUMNS: tuple[str, ...] = (*COLUMNS, "img_size", "threads", "batch", "warmup", "repeats")


@dataclass
class Candidate:
    """A model to benchmark: a finished run (``run_dir``) or a random-init one."""

    name: str
    model: nn.Module
    img_size: int
    run_dir: Path | None = None


def _finished(path: Path) -> bool:
    return (path / "run_config.json").is_file() and (path / "best.pt").is_file()


def _first_kd_name(profile_dir: Path, kd_names: Sequence[str]) -> str:
    """The profile's first KD setting (``params/<folder name>.yaml``), else 'kd', else the first name."""
    params = info.REPO_ROOT / "params" / f"{profile_dir.name}.yaml"
    if params.is_file():
        settings = (yaml.safe_load(params.read_text()) or {}).get("students", {}).get("kd") or []
        if settings and settings[0].get("name") in kd_names:
            return settings[0]["name"]
    return "kd" if "kd" in kd_names else sorted(kd_names)[0]


def find_runs(profile_dir: str | Path, kd: str | None = None) -> list[Path]:
    """Seed-0 runs to benchmark: ``teacher-*-s0`` then ``student-<arch>-<kd>-s0`` per architecture.

    ``kd`` defaults to the profile's first KD setting. Raises FileNotFoundError when the folder
    has no finished teacher or student (a run is finished with ``run_config.json`` and ``best.pt``).
    """
    profile_dir = Path(profile_dir)
    if not profile_dir.is_dir():
        raise FileNotFoundError(f"profile folder {profile_dir} does not exist (run the profile first, or use --untrained)")
    teachers = sorted(p for p in profile_dir.glob("teacher-*-s0") if _finished(p))
    students: dict[tuple[str, str], Path] = {}
    for path in sorted(profile_dir.glob("student-*-s0")):
        if _finished(path):
            arch = read_config(path)["arch"]
            students[(arch, path.name.removeprefix(f"student-{arch}-").removesuffix("-s0"))] = path
    if not teachers or not students:
        raise FileNotFoundError(
            f"{profile_dir} has no finished seed-0 {'teacher' if not teachers else 'student'} run "
            "(teacher-*-s0 / student-*-s0 with run_config.json and best.pt); run the profile first, or use --untrained"
        )
    kd_names = sorted({name for _, name in students})
    kd = kd or _first_kd_name(profile_dir, kd_names)
    if kd not in kd_names:
        raise FileNotFoundError(f"no finished seed-0 student with KD setting {kd!r} in {profile_dir}; found {kd_names}")
    archs = sorted({arch for arch, name in students if name == kd}, key=info.ARCHS.index)
    return [teachers[0], *(students[(arch, kd)] for arch in archs)]


def _onnx_paths(candidate: Candidate, calib: np.ndarray, tmp: Path) -> tuple[Path, Path]:
    """The run's exported FP32 and INT8 ONNX models when present, else both exported into ``tmp``."""
    if candidate.run_dir is not None:
        export = candidate.run_dir / "efficiency" / "export"
        fp32, int8 = export / BK.EXPORT_FILES["onnx"], export / BK.EXPORT_FILES["onnx_int8"]
        if fp32.is_file() and int8.is_file():
            return fp32, int8
    fp32 = BK.export_onnx(candidate.model, candidate.img_size, tmp / f"{candidate.name}.onnx")
    return fp32, BK.quantize_int8(fp32, D.to_input(calib), tmp / f"{candidate.name}_int8.onnx")


def _verdict(value: float, target: float) -> str:
    return "n/a" if np.isnan(value) else "PASS" if value >= target else "MISS"


def benchmark(
    candidates: Sequence[Candidate],
    data: dict[str, D.DermaArrays | None],
    threads: int,
    batch: int,
    warmup: int,
    repeats: int,
    calib_images: int,
) -> pd.DataFrame:
    """One row per candidate (the teacher first): median latencies, speedups, INT8 macro-F1 delta.

    ``data[name]`` holds the candidate's arrays (INT8 calibration on TRAIN, macro-F1 on test), or
    None for random-init models: calibration then uses random images and the delta is NaN.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for candidate in candidates:
            arrays = data[candidate.name]
            size = candidate.img_size
            if arrays is None:
                calib = np.random.default_rng(0).integers(0, 256, (calib_images, size, size, 3), dtype=np.uint8)
            else:
                calib = BK.calibration_images(arrays, calib_images)
            fp32_path, int8_path = _onnx_paths(candidate, calib, Path(tmp))
            fns = {"eager_fp32": BK.load_backend("eager", candidate.model),
                   "ort_fp32": BK.load_backend("ort_fp32", fp32_path, threads=threads),
                   "ort_int8": BK.load_backend("ort_int8", int8_path, threads=threads)}
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
            row = {"model": candidate.name, "img_size": size}
            row |= {f"{name}_ms": E.latency(fn, x, warmup, repeats, threads)["p50_ms"] for name, fn in fns.items()}
            row["int8_delta_macro_f1"] = float("nan")
            if arrays is not None:
                images, labels = arrays.images["test"], arrays.labels["test"]
                f1 = {name: M.macro_f1(labels, BK.backend_logits(fns[name], images).argmax(1)) for name in ("ort_fp32", "ort_int8")}
                row["int8_delta_macro_f1"] = f1["ort_int8"] - f1["ort_fp32"]
            rows.append(row)
    table = pd.DataFrame(rows)
    table["int8_vs_ort_fp32"] = table["ort_fp32_ms"] / table["ort_int8_ms"]
    table["int8_vs_eager"] = table["eager_fp32_ms"] / table["ort_int8_ms"]
    for column, target in TARGETS.items():
        table[VERDICTS[column]] = [_verdict(value, target) for value in table[column]]
    table[["threads", "batch", "warmup", "repeats"]] = threads, batch, warmup, repeats
    return table[list(CSV_COLUMNS)]


def int8_note(table: pd.DataFrame) -> str:
    """Why INT8 may miss its 2x target on this CPU, and what would help (printed only when it misses)."""
    if (table[VERDICTS["int8_vs_ort_fp32"]] != "MISS").all():
        return ""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    return ("  INT8 misses 2x here. " + (
        "This CPU has VNNI (int8 dot products), so the 8-bit kernels are not the limit: at small inputs they save "
        "little per call, and activations left as separate quantised element-wise operators (SiLU, squeeze-and-"
        "excitation) can cost more than that; --ops profiles where the time goes. "
        if vnni else "This CPU has no VNNI: int8 convolutions run on AVX2 and gain little over FP32. ")
        + "What helps: larger inputs or batches, activations that fuse into the convolution (ReLU6, as in "
        "EfficientNet-Lite), per-channel weights (on here), and a CPU with VNNI or AMX.")


#: ONNX Runtime operator types that quantise or dequantise: what the INT8 model pays on top of its 8-bit kernels.
QDQ_OPS: frozenset[str] = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
#: Columns of ``bench_int8_ops.csv`` (``--ops``).
OPS_COLUMNS: tuple[str, ...] = ("model", "variant", "op_type", "nodes", "ms_per_call", "share", "qdq", "calls", "threads")


def op_profile(path: Path, size: int, threads: int, calls: int, prefix: Path) -> pd.DataFrame:
    """Per operator type of the ONNX model at ``path``: kernel milliseconds per batch-1 call (the sum over its nodes
    of each node's median over ``calls`` profiled calls, so that the first, cold calls do not count), its share of
    the kernel time and its node count, from ORT's own profiler (``SessionOptions.enable_profiling``; the trace is
    written under ``prefix``). Sessions as :func:`BK.ort_session`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling, options.profile_file_prefix = True, str(prefix)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)}
    for _ in range(calls):
        session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    kernels = pd.DataFrame([{"node": e["name"], "op_type": e["args"]["op_name"], "us": e["dur"]} for e in trace
                            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")])
    per_node = kernels.groupby(["op_type", "node"])["us"].median().reset_index()
    table = per_node.groupby("op_type").agg(nodes=("node", "size"), us=("us", "sum")).reset_index()
    table["ms_per_call"] = table["us"] / 1e3
    table["share"] = table["us"] / table["us"].sum()
    table["qdq"] = table["op_type"].isin(QDQ_OPS)
    return table.drop(columns="us").sort_values("ms_per_call", ascending=False).assign(calls=calls, threads=threads)


def ops_table(candidates: Sequence[Candidate], data: dict[str, D.DermaArrays | None], threads: int, calls: int,
              calib_images: int) -> pd.DataFrame:
    """:func:`op_profile` of each candidate's ORT FP32 and INT8 models (its exported ones when present)."""
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for candidate in candidates:
            arrays, size = data[candidate.name], candidate.img_size
            calib = (np.random.default_rng(0).integers(0, 256, (calib_images, size, size, 3), dtype=np.uint8)
                     if arrays is None else BK.calibration_images(arrays, calib_images))
            paths = dict(zip(("ort_fp32", "ort_int8"), _onnx_paths(candidate, calib, Path(tmp)), strict=True))
            for variant, path in paths.items():
                table = op_profile(path, size, threads, calls, Path(tmp) / f"{candidate.name}_{variant}")
                frames.append(table.assign(model=candidate.name, variant=variant))
    return pd.concat(frames, ignore_index=True)[list(OPS_COLUMNS)]


def run_files(runs: Sequence[Path]) -> dict[Path, str]:
    """Every file of the run folders ``runs`` (checkpoints, configs, exported models): inputs no CSV may overwrite."""
    return {p: f"{p.relative_to(run)} of the benchmarked run {run}" for run in runs for p in sorted(run.rglob("*")) if p.is_file()}


def csv_refusal(path: Path | None, force: bool, columns: Sequence[str] = CSV_COLUMNS,
                inputs: Mapping[Path, str] | None = None) -> str | None:
    """Why the CSV must not be written (None if it may): one of the ``inputs`` (path -> what it is; same path or same
    file), even with ``force``; not a regular file; an existing file whose first line is not this tool's header
    (``columns``), unless ``force``; a folder that does not exist or takes no new file. Checked before any model is
    loaded, so that a benchmark is never run to be lost."""
    if path is None:
        return None
    source = which_input(path, input_index(inputs or {}))
    if source:
        return f"{path} is {source}: refusing to overwrite an input (even with --force)"
    if path.exists() or path.is_symlink():
        if not path.is_file():
            return f"{path} exists and is not a regular file"
        if not force and not first_line_is(path, ",".join(columns)):
            return f"{path} exists and is not a CSV edgekd-bench wrote: refusing to overwrite it; use --force to replace it"
    if not path.parent.is_dir():
        return f"{path} cannot be written: its folder {path.parent} does not exist or is not a folder"
    reason = unwritable(path.parent)
    return f"{path} cannot be written: {reason}" if reason else None


def main(argv: list[str] | None = None) -> int:
    """``python -m edgekd.pipeline.bench``: print the INT8 benchmark table, write ``bench_int8.csv``."""
    ap = argparse.ArgumentParser(prog="edgekd-bench", description=__doc__.splitlines()[0])
    ap.add_argument("--profile-dir", type=Path, default=info.outputs_dir() / "default",
                    help="folder of a finished profile (default: <outputs>/default)")
    ap.add_argument("--kd", default=None, help="KD setting name of the students (default: the profile's first)")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads (default 2)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up calls per backend (default 10)")
    ap.add_argument("--repeats", type=int, default=100, help="timed calls per backend (default 100)")
    ap.add_argument("--calib-images", type=int, default=256, help="TRAIN images for INT8 calibration when no export exists")
    ap.add_argument("--untrained", action="store_true", help="random-init models (no runs needed; latency only)")
    ap.add_argument("--size", type=int, default=28, help="input size with --untrained (default 28)")
    ap.add_argument("--stem-stride", type=int, default=2, help="stem stride with --untrained (default 2, as the default profile)")
    ap.add_argument("--csv", type=Path, default=None, help="CSV path (default <profile-dir>/bench_int8.csv; none with --untrained)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --csv that edgekd-bench did not write")
    ap.add_argument("--ops", type=int, default=0, metavar="CALLS",
                    help="also profile each model's ORT FP32 and INT8 operators over CALLS batch-1 calls with ORT's "
                         "profiler, and write bench_int8_ops.csv beside the CSV (default 0: not profiled)")
    args = ap.parse_args(argv)
    if min(args.threads, args.batch, args.repeats, args.calib_images) < 1 or min(args.warmup, args.ops) < 0:
        ap.error("--threads, --batch, --repeats and --calib-images must be >= 1, --warmup and --ops >= 0")
    target = args.csv or (None if args.untrained else args.profile_dir / "bench_int8.csv")
    try:
        runs = [] if args.untrained else find_runs(args.profile_dir, args.kd)
    except (FileNotFoundError, ValueError) as exc:
        print(f"edgekd-bench: error: {exc}", file=sys.stderr)
        return 2
    inputs = run_files(runs)
    refusal = csv_refusal(target, args.force, CSV_COLUMNS, inputs) or (
        csv_refusal(target.with_name(target.stem + "_ops.csv"), args.force, OPS_COLUMNS, inputs) if args.ops and target else None)
    if refusal:
        print(f"edgekd-bench: error: {refusal}", file=sys.stderr)
        return 2
    try:
        if args.untrained:
            torch.manual_seed(0)
            candidates = [Candidate(arch, create_model(arch, args.size, stem_stride=args.stem_stride).eval(), args.size)
                          for arch in info.ARCHS]
            data: dict[str, D.DermaArrays | None] = {c.name: None for c in candidates}
            csv = args.csv
        else:
            candidates, data, loaded = [], {}, {}
            for run_dir in runs:
                config = read_config(run_dir)
                candidates.append(Candidate(run_dir.name, load_run(run_dir).model, config["data"]["size"], run_dir))
                key = json.dumps(config["data"], sort_keys=True)  # the data after the cheaper checkpoint
                if key not in loaded:
                    loaded[key] = D.load(D.DataConfig(**config["data"]))
                data[run_dir.name] = loaded[key]
            csv = args.csv or args.profile_dir / "bench_int8.csv"
        print(f"edgekd-bench: {'UNTRAINED random-init models (latency only, no accuracy)' if args.untrained else args.profile_dir}")
        print(f"  cpu {cpu_model()}, {args.threads} threads, batch {args.batch}, warm-up {args.warmup}, {args.repeats} repeats; "
              f"latency = median ms per call; torch {torch.__version__}, onnxruntime {ort.__version__}")
        table = benchmark(candidates, data, args.threads, args.batch, args.warmup, args.repeats, args.calib_images)
        ops = ops_table(candidates, data, args.threads, args.ops, args.calib_images) if args.ops else None
    except (FileNotFoundError, ValueError) as exc:
        print(f"edgekd-bench: error: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table[list(COLUMNS)].to_string(index=False))
    print("  targets: int8_vs_ort_fp32 >= 2 (quantisation's own speedup, same runtime), int8_delta_macro_f1 >= -0.01 "
          "(against ORT FP32); int8_vs_eager is reported beside it")
    note = int8_note(table)
    if note:
        print(note)
    if ops is not None:
        print("  ORT profiler, kernel ms per call (all, convolutions), the quantise/dequantise share of INT8 and its "
              "largest other INT8 operator:")
        print(TB.int8_op_summary(ops).to_string(index=False, float_format="{:.3f}".format))
    if csv is not None:
        table.to_csv(csv, index=False)
        print(f"  wrote {csv}")
        if ops is not None:
            ops_csv = csv.with_name(csv.stem + "_ops.csv")
            ops.to_csv(ops_csv, index=False)
            print(f"  wrote {ops_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
