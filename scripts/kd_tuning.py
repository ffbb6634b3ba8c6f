"""The KD pilot's result: validation table and the pre-declared choice (paper/results/studies/kd_tuning/).

Reads the students of the pilot profile's folder (``params/kd_tuning.yaml``, run with ``edgekd-run kd_tuning``),
builds ``edgekd.stages.tuning.pilot_table`` from their validation predictions (no test number is read) and applies
``edgekd.stages.tuning.choose``, the rule of ``paper/analysis_plan.md``. Writes ``pilot.csv``, ``choice.json``,
``README.md`` and ``provenance.json``, and ``teacher_softness.csv``: the teacher's targets at the pilot's temperatures,
from the logit cache its students read (the training views):

    .venv/bin/edgekd-run kd_tuning --executor dask --workers 2
    .venv/bin/python scripts/kd_tuning.py --runs outputs/kd_tuning --out paper/results/studies/kd_tuning

Settings of the profile with no finished run are listed as missing; the choice is made on what finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from edgekd.core import provenance
from edgekd.pipeline import publish
from edgekd.pipeline.plan import load_profile
from edgekd.stages import tuning as TU

PROFILE = "kd_tuning"
#: What this script writes into ``--out``; a folder holding any other file is refused.
WRITES: tuple[str, ...] = ("pilot.csv", "teacher_softness.csv", "choice.json", "README.md", "provenance.json")


def teacher_logits(runs: Path) -> np.ndarray | None:
    """The pilot teacher's cached logits on the training views (views x images x classes), or None before a
    distilling student has built the cache."""
    caches = sorted(runs.glob("teacher-*/teacher_cache_*.pt"))
    return torch.load(caches[0], weights_only=True)["logits"].numpy() if caches else None


def readme(table: pd.DataFrame, choice: dict, missing: list[str], argv: list[str], softness: pd.DataFrame | None) -> str:
    cols = ["setting", "mode", "temperature", "alpha", "beta", "standardize", "val_acc", "val_macro_f1",
            "delta_vs_nokd", "best_epoch", "collapsed"]
    lines = "\n".join(f"- {r}" for r in choice["reasons"])
    return f"""# The KD pilot, on validation

Written by `scripts/kd_tuning.py` ({time.strftime("%Y-%m-%d", time.gmtime())}):

    .venv/bin/python scripts/kd_tuning.py {" ".join(argv)}

One student architecture and seed under every KD setting of the pilot profile, each beside its no-KD twin, scored
on the official validation split (1,003 images); no test number was read. The rule is the analysis plan's, fixed
before the pilot ran (`edgekd.stages.tuning.choose`; margin {TU.MARGIN:.2f}, half the smallest effect of interest).
One seed cannot separate settings closer than about the seed spread of validation macro-F1, which is why a
setting must beat another by the margin to replace it.

{table[cols].to_markdown(index=False, floatfmt=".4f")}

Decisions:

{lines}

The teacher's targets at each temperature, over its logit cache (every training view and image): mean top-class
probability and mean entropy as a share of the uniform distribution's.

{softness.to_markdown(index=False, floatfmt=".4f") if softness is not None else "No cache was built (no distilling student ran)."}

Main table: {", ".join(choice["main_table"])}.
Missing (no finished run): {", ".join(missing) or "none"}. Excluded by the collapse guard: {", ".join(choice["excluded"]) or "none"}.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="the pilot profile's folder (outputs/kd_tuning)")
    ap.add_argument("--out", type=Path, required=True, help="folder for " + ", ".join(WRITES))
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if refusal := publish.foreign_files(args.out, WRITES):
            raise ValueError(refusal)
        table = TU.pilot_table(args.runs)
        choice = TU.choose(table)
    except (FileNotFoundError, ValueError) as exc:
        print(f"kd_tuning: error: {exc}", file=sys.stderr)
        return 2
    planned = [k["name"] for k in load_profile(PROFILE)["students"]["kd"]]
    missing = [name for name in planned if name not in set(table["setting"])]
    logits = teacher_logits(args.runs)
    temperatures = sorted({float(t) for t in table.loc[table["mode"] != "none", "temperature"]})
    softness = TU.teacher_softness(logits, temperatures) if logits is not None else None
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "pilot.csv", index=False)
    if softness is not None:
        softness.to_csv(args.out / "teacher_softness.csv", index=False)
    (args.out / "choice.json").write_text(json.dumps(choice, indent=2) + "\n")
    (args.out / "README.md").write_text(readme(table, choice, missing, argv, softness))
    prov = {"script": "scripts/kd_tuning.py", "argv": argv, "git": provenance.git_commit(),
            "machine": provenance.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "margin": TU.MARGIN, "current": TU.CURRENT, "missing": missing}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("\n".join(choice["reasons"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
