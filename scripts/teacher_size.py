"""Does the pretrained teacher teach less because it sees larger images? (paper/analysis_plan.md, "The teacher's
input size"; written to paper/results/studies/teacher_size/).

The ``teacher_size`` profile distils the default's ResNet-18 students, with the default's recipe, Hinton setting
and seeds, from the ImageNet-pretrained EfficientNet-Lite0 teacher fine-tuned at the students' 64 px; the
``teacher_size_128`` profile retrains, on the same machine, the default's 128 px teacher and those students. Per
seed, Δ = validation macro-F1 with the 64 px teacher minus that with the 128 px teacher (each student's no-KD twin
of the same seed gives the gains beside it); ``edgekd.core.stats.verdict`` reads Δ with the plan's three-way rule,
one comparison in its own family. The 128 px side's runs are also set beside the published default reference's
(``reproduction.csv``): training is bitwise reproducible within one kind of CPU, and this shows whether across
kinds too. Only validation numbers are read. No training: seconds on any machine, after both profiles.

    .venv/bin/python scripts/teacher_size.py --out paper/results/studies/teacher_size
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch  # noqa: F401  (provenance.machine() reads the CPU's instruction set from a loaded torch)

from edgekd.core import info, provenance, stats
from edgekd.core.files import atomic_write, file_digest
from edgekd.pipeline import plan, publish, reproduce
from edgekd.stages import tuning as TU

ARCH, SETTING, BASELINE = "resnet18", "kd", "nokd"
#: What this script writes into ``--out``; a folder holding any other file is refused.
WRITES: tuple[str, ...] = ("teacher_size_seeds.csv", "teacher_size.csv", "reproduction.csv", "README.md",
                           "provenance.json")


def _run(folder: Path) -> tuple[dict, dict]:
    """A finished run's ``metrics.json`` and ``run_config.json``; refuses an unfinished or collapsed run."""
    metrics, config = folder / "metrics.json", folder / "run_config.json"
    if not (metrics.is_file() and config.is_file()):
        raise ValueError(f"{folder} is not a finished run (no metrics.json or run_config.json)")
    m = json.loads(metrics.read_text())
    if m.get("collapsed"):
        raise ValueError(f"{folder} collapsed ({m['collapsed']}): it is not a usable run")
    return m, json.loads(config.read_text())


#: What the two students of a seed may differ in: their teacher and its cache folder.
FREE: tuple[str, ...] = ("teacher_dir", "cache_dir")


def pairs(large: Path, small: Path) -> pd.DataFrame:
    """Per seed that the small side trained: the validation macro-F1 of the student with the 64 px teacher, with the
    128 px teacher and without one, the two gains and Δ; refuses a seed whose two KD students differ in more than
    their teacher."""
    rows = []
    for folder in sorted(small.glob(f"student-{ARCH}-{SETTING}-s*")):
        seed = folder.name.rsplit("-s", 1)[1]
        with_small, small_cfg = _run(folder)
        with_large, large_cfg = _run(large / folder.name)
        nokd, _ = _run(large / f"student-{ARCH}-{BASELINE}-s{seed}")
        if TU.recipe(small_cfg, FREE) != TU.recipe(large_cfg, FREE):
            raise ValueError(f"{folder} and {large / folder.name} differ in more than their teacher: they do not pair")
        rows.append({"seed": int(seed), "val_kd_64px_teacher": with_small["val_macro_f1"],
                     "val_kd_128px_teacher": with_large["val_macro_f1"], "val_nokd": nokd["val_macro_f1"],
                     "gain_64px_teacher": with_small["val_macro_f1"] - nokd["val_macro_f1"],
                     "gain_128px_teacher": with_large["val_macro_f1"] - nokd["val_macro_f1"],
                     "delta": with_small["val_macro_f1"] - with_large["val_macro_f1"]})
    if not rows:
        raise ValueError(f"{small} holds no finished student-{ARCH}-{SETTING}-s* run: run the teacher_size profile first")
    return pd.DataFrame(rows).sort_values("seed", ignore_index=True)


def reproduction(large: Path, reference: Path) -> pd.DataFrame:
    """Each run of the 128 px side beside the published default reference's run of the same id: validation macro-F1
    here and there, and whether the two are bitwise equal; refuses a reference made from another default profile."""
    prov = json.loads((reference / "provenance.json").read_text())
    profile = plan.PARAMS_DIR / "default.yaml"
    if prov.get("profile_sha256") != file_digest(profile):
        raise ValueError(f"{reference} was not made from this {profile}: its runs are not the same runs")
    published = pd.read_csv(reference / "runs.csv").set_index("run_id")["val_macro_f1"]
    rows = []
    for folder in sorted(p for p in large.iterdir() if p.name.startswith(("teacher-", "student-"))):
        if folder.name not in published.index:
            raise ValueError(f"{reference} holds no run {folder.name}: the two profiles differ")
        here, there = _run(folder)[0]["val_macro_f1"], float(published[folder.name])
        rows.append({"run_id": folder.name, "val_here": here, "val_reference": there, "difference": here - there,
                     "bitwise": here == there})
    return pd.DataFrame(rows)


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _teacher_val(profile_dir: Path) -> float:
    return _run(profile_dir / "teacher-efficientnet_lite0-s0")[0]["val_macro_f1"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for " + ", ".join(WRITES))
    ap.add_argument("--large", type=Path, default=info.outputs_dir() / "teacher_size_128",
                    help="the teacher_size_128 profile's outputs (the 128 px teacher, its students and their no-KD twins)")
    ap.add_argument("--small", type=Path, default=info.outputs_dir() / "teacher_size",
                    help="the teacher_size profile's outputs (the 64 px teacher and its students)")
    ap.add_argument("--reference", type=Path, default=info.results_root() / "default",
                    help="the published default reference, set beside the 128 px side's runs")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if refusal := publish.foreign_files(args.out, WRITES):
            raise ValueError(refusal)
        per_seed = pairs(args.large, args.small)
        teachers = {"64px": _teacher_val(args.small), "128px": _teacher_val(args.large)}
        reproduced = reproduction(args.large, args.reference)
        reference_machine = reproduce.read_machine(args.reference) or {}
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
    _write(args.out / "reproduction.csv", reproduced.to_csv(index=False))
    machine = provenance.machine()
    _write(args.out / "README.md", f"""# The teacher's input size: KD from a 64 px and a 128 px teacher

Written by `scripts/teacher_size.py` ({time.strftime("%Y-%m-%d", time.gmtime())}), no training, validation only:

    .venv/bin/python scripts/teacher_size.py {" ".join(argv)}

The default's ResNet-18 students (Hinton KD, the default's setting, recipe and seeds) distilled from the
ImageNet-pretrained EfficientNet-Lite0 teacher fine-tuned at the students' 64 px (validation macro-F1
{teachers["64px"]:.3f}) and at 128 px ({teachers["128px"]:.3f}), both sides trained on one machine
({machine["cpu"]}, {machine["cpu_capability"]}, {machine["cores"]} cores). Per seed, Δ is the student's validation
macro-F1 with the 64 px teacher minus that with the 128 px one; the verdict is the analysis plan's rule for this
pre-declared, exploratory comparison (paired t across seeds, TOST against ±{stats.SESOI}, one comparison in its own
family).

{table.to_markdown(index=False, floatfmt=".4f")}

`teacher_size_seeds.csv` holds every seed's scores and gains against the no-KD student of the same seed.

The 128 px side's runs have the published default reference's run parameters; that reference was trained on
another machine ({reference_machine.get("cpu")}, {reference_machine.get("cpu_capability")}). Its validation macro-F1 beside
theirs (`reproduction.csv`), bitwise equal in {int(reproduced["bitwise"].sum())} of {len(reproduced)} runs:

{reproduced.to_markdown(index=False, floatfmt=".4f")}
""")
    prov = {"script": "scripts/teacher_size.py", "argv": argv, "git": provenance.git_commit(),
            "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "inputs": {str(p): file_digest(p) for root in (args.large, args.small)
                       for p in sorted(root.glob("*/metrics.json"))}
            | {str(args.reference / name): file_digest(args.reference / name)
               for name in ("runs.csv", "provenance.json")}}
    _write(args.out / "provenance.json", json.dumps(prov, indent=2) + "\n")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
