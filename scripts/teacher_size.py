"""Does the pretrained teacher teach less because it sees larger images? (paper/analysis_plan.md, "The teacher's
input size"; written to paper/results/studies/teacher_size/).

The ``teacher_size`` profile distils the default's ResNet-18 students, with the default's recipe, Hinton setting
and seeds, from the ImageNet-pretrained EfficientNet-Lite0 teacher fine-tuned at the students' 64 px; the default
distils them from the same teacher fine-tuned at 128 px. Per seed, Δ = validation macro-F1 with the 64 px teacher
minus that with the 128 px teacher (each student's no-KD twin of the same seed gives the gains beside it);
``edgekd.core.stats.verdict`` reads Δ with the plan's three-way rule, one comparison in its own family. Only
validation numbers are read. No training, no torch: seconds on any machine, after both profiles have run.

    .venv/bin/python scripts/teacher_size.py --out paper/results/studies/teacher_size
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from edgekd.core import info, provenance, stats
from edgekd.core.files import atomic_write, file_digest

ARCH, SETTING, BASELINE = "resnet18", "kd", "nokd"
#: What this script writes into ``--out``; a folder holding anything else is refused.
WRITES: tuple[str, ...] = ("teacher_size_seeds.csv", "teacher_size.csv", "README.md", "provenance.json")


def _run(folder: Path) -> tuple[dict, dict]:
    """A finished run's ``metrics.json`` and ``run_config.json``; refuses an unfinished or collapsed run."""
    metrics, config = folder / "metrics.json", folder / "run_config.json"
    if not (metrics.is_file() and config.is_file()):
        raise ValueError(f"{folder} is not a finished run (no metrics.json or run_config.json)")
    m = json.loads(metrics.read_text())
    if m.get("collapsed"):
        raise ValueError(f"{folder} collapsed ({m['collapsed']}): it is not a usable run")
    return m, json.loads(config.read_text())


def _recipe(config: dict) -> dict:
    """A run's recipe without the teacher it distils and its cache folder: equal for the two students of a seed."""
    data = {k: v for k, v in config.get("data", {}).items() if k != "cache_dir"}
    return {**{k: v for k, v in config.items() if k != "teacher_dir"}, "data": data}


def pairs(default: Path, test: Path) -> pd.DataFrame:
    """Per seed that the test profile trained: the validation macro-F1 of the student with the 64 px teacher, with the
    128 px teacher and without one, the two gains and Δ; refuses a seed whose two KD students differ in more than
    their teacher."""
    rows = []
    for folder in sorted(test.glob(f"student-{ARCH}-{SETTING}-s*")):
        seed = folder.name.rsplit("-s", 1)[1]
        small, small_cfg = _run(folder)
        large, large_cfg = _run(default / folder.name)
        nokd, _ = _run(default / f"student-{ARCH}-{BASELINE}-s{seed}")
        if _recipe(small_cfg) != _recipe(large_cfg):
            raise ValueError(f"{folder} and {default / folder.name} differ in more than their teacher: they do not pair")
        rows.append({"seed": int(seed), "val_kd_64px_teacher": small["val_macro_f1"],
                     "val_kd_128px_teacher": large["val_macro_f1"], "val_nokd": nokd["val_macro_f1"],
                     "gain_64px_teacher": small["val_macro_f1"] - nokd["val_macro_f1"],
                     "gain_128px_teacher": large["val_macro_f1"] - nokd["val_macro_f1"],
                     "delta": small["val_macro_f1"] - large["val_macro_f1"]})
    if not rows:
        raise ValueError(f"{test} holds no finished student-{ARCH}-{SETTING}-s* run: run the teacher_size profile first")
    return pd.DataFrame(rows).sort_values("seed", ignore_index=True)


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _teacher_val(profile_dir: Path) -> float:
    return _run(profile_dir / "teacher-efficientnet_lite0-s0")[0]["val_macro_f1"]


def out_refusal(out: Path) -> str | None:
    """Why ``out`` must not be written: it is not a folder, or it holds a file this script does not write."""
    if out.exists() and not out.is_dir():
        return f"{out} exists and is not a folder"
    foreign = sorted(p.name for p in out.iterdir() if p.name not in WRITES) if out.is_dir() else []
    return f"{out} holds files this script did not write ({', '.join(foreign)}): refusing to write there" if foreign else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for " + ", ".join(WRITES))
    ap.add_argument("--default", type=Path, default=info.outputs_dir() / "default",
                    help="the default profile's outputs (the 128 px teacher's students)")
    ap.add_argument("--test", type=Path, default=info.outputs_dir() / "teacher_size",
                    help="the teacher_size profile's outputs (the 64 px teacher's students)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        refusal = out_refusal(args.out)
        if refusal:
            raise ValueError(refusal)
        per_seed = pairs(args.default, args.test)
        teachers = {"64px": _teacher_val(args.test), "128px": _teacher_val(args.default)}
    except (OSError, ValueError, KeyError) as exc:
        print(f"teacher_size: error: {exc}", file=sys.stderr)
        return 2
    v = stats.verdict(per_seed["delta"].to_numpy())
    table = pd.DataFrame([{"seeds": v["n"], "gain_64px_teacher": per_seed["gain_64px_teacher"].mean(),
                           "gain_128px_teacher": per_seed["gain_128px_teacher"].mean(), "delta": v["mean"],
                           "ci_low": v["ci_low"], "ci_high": v["ci_high"], "p": v["p"], "tost_p": v["tost_p"],
                           "mde": v["mde"], "verdict": v["label"], "teacher_val_64px": teachers["64px"],
                           "teacher_val_128px": teachers["128px"]}])
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "teacher_size_seeds.csv", per_seed.to_csv(index=False))
    _write(args.out / "teacher_size.csv", table.to_csv(index=False))
    _write(args.out / "README.md", f"""# The teacher's input size: KD from a 64 px and a 128 px teacher

Written by `scripts/teacher_size.py` ({time.strftime("%Y-%m-%d", time.gmtime())}), no training, validation only:

    .venv/bin/python scripts/teacher_size.py {" ".join(argv)}

The default's ResNet-18 students (Hinton KD, the default's setting, recipe and seeds) distilled from the
ImageNet-pretrained EfficientNet-Lite0 teacher fine-tuned at the students' 64 px (validation macro-F1
{teachers["64px"]:.3f}) and at 128 px ({teachers["128px"]:.3f}). Per seed, Δ is the student's validation macro-F1
with the 64 px teacher minus that with the 128 px one; the verdict is the analysis plan's rule for this pre-declared,
exploratory comparison (paired t across seeds, TOST against ±{stats.SESOI}, one comparison in its own family).

{table.to_markdown(index=False, floatfmt=".4f")}

`teacher_size_seeds.csv` holds every seed's scores and gains against the no-KD student of the same seed.
""")
    prov = {"script": "scripts/teacher_size.py", "argv": argv, "git": provenance.git_commit(),
            "machine": provenance.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "inputs": {str(p): file_digest(p) for root in (args.default, args.test)
                       for p in sorted(root.glob("*/metrics.json"))}}
    _write(args.out / "provenance.json", json.dumps(prov, indent=2) + "\n")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
