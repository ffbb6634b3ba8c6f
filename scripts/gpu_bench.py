"""GPU benchmark (a figure-printing benchmark, not a test): eager PyTorch latency of every model of the
default and paper profiles on a CUDA device, and the runner's training-time plan of the paper profile there.

    python scripts/gpu_bench.py --out DIR [--repeats 200]

Writes ``DIR/gpu_latency.csv`` (profile, arch, input size, stem stride, batch, fp32 / fp16 autocast, p50 /
p90 / p99 ms over ``--repeats`` timed calls after warming up until steady, :func:`edgekd.stages.efficiency.latency`),
``DIR/paper_plan.json`` (measured training and inference speed per architecture and the runner's planned
minutes per stage for the paper profile, exactly what ``edgekd-run paper`` prints first) and
``DIR/environment.json``. Weights are random: a CNN's latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from edgekd.core import provenance  # noqa: E402
from edgekd.core.models import create_model  # noqa: E402
from edgekd.pipeline import plan, progress  # noqa: E402
from edgekd.stages import backends, efficiency  # noqa: E402

PROFILES = ("default", "paper")


def models_of(profile: str) -> list[dict]:
    """Architecture, input size and stem stride of every distinct model the profile trains."""
    prof = plan.load_profile(profile)
    with tempfile.TemporaryDirectory() as tmp:
        specs = plan.expand(prof, Path(tmp))
    seen, out = set(), []
    for s in specs:
        if s.trains:
            p = s.parameters
            key = (p["arch"], p["data"]["size"], p["train"]["stem_stride"])
            if key not in seen:
                seen.add(key)
                out.append({"profile": profile, "arch": key[0], "size": key[1], "stem_stride": key[2]})
    return out


def latency_table(repeats: int, batches: tuple[int, ...]) -> pd.DataFrame:
    rows = []
    for profile in PROFILES:
        for m in models_of(profile):
            model = create_model(m["arch"], m["size"], stem_stride=m["stem_stride"]).eval()
            for amp in (False, True):
                fn = backends.load_backend("eager", model, device="cuda", amp=amp)
                for batch in batches:
                    x = torch.randn(batch, 3, m["size"], m["size"], device="cuda")
                    stats = efficiency.latency(fn, x, warmup=10, repeats=repeats)
                    rows.append({**m, "batch": batch, "precision": "amp_fp16" if amp else "fp32", **stats})
                    print(f"{profile:<8} {m['arch']:<16} {m['size']:>3} px b{batch:<3} {rows[-1]['precision']:<8} "
                          f"p50 {stats['p50_ms']:7.3f} p90 {stats['p90_ms']:7.3f} p99 {stats['p99_ms']:7.3f} ms "
                          f"({stats['throughput_ips']:8.0f} img/s)", flush=True)
    return pd.DataFrame(rows)


def paper_plan() -> dict:
    """The runner's plan of the paper profile on this machine (training speed measured, other stages rough)."""
    with tempfile.TemporaryDirectory() as tmp:
        specs = plan.expand(plan.load_profile("paper"), Path(tmp))
        estimate = progress.Plan(specs)
    print(estimate.describe(1), flush=True)
    return {"runs": len(specs), "total_min": estimate.total / 60, "per_stage_min": (estimate.per_stage / 60).round(2).to_dict(),
            "speeds_img_s": {f"{k[0]}@{k[1]}px": {"train": v.train_ips, "inference": v.infer_ips}
                             for k, v in estimate.speeds.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device here; this benchmark measures a GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    start = time.time()
    env = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "git": provenance.git_commit(), "machine": provenance.machine()}
    print(json.dumps(env), flush=True)
    table = latency_table(args.repeats, tuple(args.batches))
    table.to_csv(args.out / "gpu_latency.csv", index=False)
    (args.out / "paper_plan.json").write_text(json.dumps(paper_plan(), indent=2))
    env["wall_s"] = round(time.time() - start, 1)
    (args.out / "environment.json").write_text(json.dumps(env, indent=2))
    print(f"gpu_bench: wrote {args.out} in {env['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
