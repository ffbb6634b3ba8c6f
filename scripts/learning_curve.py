"""Do the from-scratch students reach a plateau in the main job's 8 epochs? (paper/analysis_plan.md, "The
learning-curve pilot"; written to paper/results/studies/learning_curve/).

The ``learning_curve`` profile trains the default's from-scratch students, with and without KD, seed 0, for 24
epochs with the default's recipe otherwise; each is paired with the default's run of the same name at 8 epochs
(``edgekd.stages.tuning.learning_curve`` refuses a pair that differs in more than the epochs) and read with the
plan's rule. The 8-epoch runs are also checked against the published default reference (their validation macro-F1
bitwise equal to its ``runs.csv``). Only validation numbers are read. No training: seconds on any machine, after

    .venv/bin/edgekd-run learning_curve --executor dask --workers 2
    .venv/bin/python scripts/learning_curve.py --out paper/results/studies/learning_curve
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch  # noqa: F401  (provenance.machine() reads the CPU's instruction set from a loaded torch)

from edgekd.core import info, provenance
from edgekd.core.files import atomic_write, file_digest
from edgekd.paper import sources as SR
from edgekd.pipeline import publish
from edgekd.stages import tuning as TU

#: What this script writes into ``--out``; a folder holding any other file is refused.
WRITES: tuple[str, ...] = ("learning_curve.csv", "kd_by_budget.csv", "curves.csv", "learning_curve.png", "README.md",
                           "provenance.json")


def published(table: pd.DataFrame, reference: Path) -> pd.Series:
    """Whether each budget run's validation macro-F1 equals, bitwise, the published reference's run of the same id
    (:func:`edgekd.paper.sources.extended_runs`, the paper's own test); refuses a reference that lacks one of them."""
    runs = pd.read_csv(reference / "runs.csv").set_index("run_id")["val_macro_f1"]
    same = SR.extended_runs(table, runs)
    if missing := [i for i in same.index if i not in runs.index]:
        raise ValueError(f"{reference} holds no run {', '.join(missing)}: the budget runs are not the reference's")
    return pd.Series(same.to_numpy(), index=table.index)


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for " + ", ".join(WRITES))
    ap.add_argument("--long", type=Path, default=info.outputs_dir() / "learning_curve",
                    help="the learning_curve profile's outputs (the longer runs)")
    ap.add_argument("--budget", type=Path, default=info.outputs_dir() / "default",
                    help="the default profile's outputs (the same students at the main job's budget)")
    ap.add_argument("--reference", type=Path, default=info.results_root() / "default",
                    help="the published default reference, whose runs the budget runs must be")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if refusal := publish.foreign_files(args.out, WRITES):
            raise ValueError(refusal)
        table, curves = TU.learning_curve(args.long, args.budget)
        table["published"] = published(table, args.reference)
    except (OSError, ValueError, KeyError) as exc:
        print(f"learning_curve: error: {exc}", file=sys.stderr)
        return 2
    kd = TU.kd_by_budget(table)
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "learning_curve.csv", table.to_csv(index=False).encode())
    _write(args.out / "kd_by_budget.csv", kd.to_csv(index=False).encode())
    _write(args.out / "curves.csv", curves.to_csv(index=False).encode())
    TU.learning_curve_figure(curves).savefig(args.out / "learning_curve.png", dpi=150, metadata={"Software": None})
    machine = provenance.machine()
    cols = ["label", "seed", "val_budget", "val_long", "gain", "plateau_at_budget", "late_rise", "flat_by_long",
            "best_epoch_budget", "best_epoch_long", "collapsed", "published"]
    _write(args.out / "README.md", f"""# The learning-curve pilot: the from-scratch students at 8 and at 24 epochs

Written by `scripts/learning_curve.py` ({time.strftime("%Y-%m-%d", time.gmtime())}), no training, validation only:

    .venv/bin/python scripts/learning_curve.py {" ".join(argv)}

Each from-scratch student of the default profile, with the default's KD setting and without KD, seed 0, trained for
more epochs with the default's recipe otherwise (the `learning_curve` profile, on {machine["cpu"]},
{machine["cpu_capability"]}, {machine["cores"]} cores), beside the default's run of the same student at its budget.
The rule is the analysis plan's, fixed before any of these numbers was read: the budget counts as a plateau if the
longer run's validation macro-F1 (each run's best epoch) exceeds it by less than {TU.MARGIN:.2f}; the longer run is
flat if its best over the last third of its epochs exceeds its best before by less than {TU.MARGIN:.2f}.
`published` says whether the budget run's validation macro-F1 is bitwise the published reference's.

{table[cols].to_markdown(index=False, floatfmt=".4f")}

KD minus no KD on validation at each budget (one seed: descriptive, no test):

{kd.to_markdown(index=False, floatfmt=".4f")}

`curves.csv` holds every run's validation macro-F1 per epoch; `learning_curve.png` plots them.
""".encode())
    prov = {"script": "scripts/learning_curve.py", "argv": argv, "git": provenance.git_commit(),
            "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "margin": TU.MARGIN,
            "inputs": {str(p): file_digest(p) for root in (args.long, args.budget) for r in table.itertuples()
                       for p in (root / f"student-{r.arch}-{r.setting}-s{r.seed}" / name
                                 for name in ("metrics.json", "predictions.npz", "history.csv"))}
            | {str(args.reference / "runs.csv"): file_digest(args.reference / "runs.csv")}}
    _write(args.out / "provenance.json", (json.dumps(prov, indent=2) + "\n").encode())
    print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(kd.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
