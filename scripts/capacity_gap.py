"""Does the stronger teacher give the smaller KD gain? The capacity-gap comparison (paper/results/studies/capacity_gap/).

Two published references trained the same from-scratch students with the same recipe and seeds (their no-KD
students are the same runs: the script checks that their test macro-F1 agree) and differ in the teacher: the
ImageNet-pretrained EfficientNet-Lite0 of the reference before the KD pilot (students distilled at T 4,
``paper/results/studies/pretrained_teacher_t4``) and the ResNet-50 from scratch of the one before it
(``paper/results/studies/scratch_teacher``). For each student and seed, the difference of the two KD gains
(Δ macro-F1 with the strong teacher minus Δ with the weak one, both against the same no-KD run) is the paired
unit; ``edgekd.core.stats.family_verdicts`` gives the paired t, the TOST against ±SESOI and the verdict, Holm over
the students (a secondary family of the analysis plan). No training, no torch: seconds on any machine.

    .venv/bin/python scripts/capacity_gap.py --out paper/results/studies/capacity_gap
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from edgekd.core import info, provenance, stats
from edgekd.core.files import file_digest
from edgekd.pipeline import publish

RESULTS = info.REPO_ROOT / "paper" / "results"
STRONG, WEAK = RESULTS / "studies" / "pretrained_teacher_t4", RESULTS / "studies" / "scratch_teacher"
SETTING, SPLIT = "kd", "official"
#: What this script writes into ``--out``; a folder holding any other file is refused.
WRITES: tuple[str, ...] = ("gap_seeds.csv", "gap.csv", "README.md", "provenance.json")


def _teacher(reference: Path) -> tuple[str, float]:
    perf = pd.read_csv(reference / "performance.csv")
    row = perf[perf["model"].str.startswith("teacher-")].iloc[0]
    return str(row["label"]), float(row["macro_f1"])


def gaps(strong: Path, weak: Path) -> pd.DataFrame:
    """Per student and seed present in both: each teacher's KD gain and their difference (strong − weak)."""
    frames = []
    for name, ref in (("strong", strong), ("weak", weak)):
        seeds = pd.read_csv(ref / "paired_kd_seeds.csv")
        seeds = seeds[(seeds["setting"] == SETTING) & (seeds["split"] == SPLIT)]
        frames.append(seeds.set_index(["arch", "student", "seed"])["d_macro_f1"].rename(f"gain_{name}"))
    both = pd.concat(frames, axis=1, join="inner").reset_index()
    both["gap"] = both["gain_strong"] - both["gain_weak"]
    return both


def same_baselines(strong: Path, weak: Path) -> None:
    """Refuse references whose no-KD students differ: then the two gains are not measured against the same runs."""
    perf = [pd.read_csv(r / "performance.csv").set_index("model")["macro_f1"] for r in (strong, weak)]
    shared = [m for m in perf[1].index if m.endswith("-nokd") and m in perf[0].index]
    if not shared or not np.allclose(perf[0][shared], perf[1][shared], rtol=0, atol=1e-12):
        raise ValueError(f"the no-KD students of {strong} and {weak} differ: their KD gains do not pair")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for " + ", ".join(WRITES))
    ap.add_argument("--strong", type=Path, default=STRONG, help="reference with the stronger teacher")
    ap.add_argument("--weak", type=Path, default=WEAK, help="reference with the weaker teacher")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if refusal := publish.foreign_files(args.out, WRITES):
            raise ValueError(refusal)
        same_baselines(args.strong, args.weak)
    except (OSError, ValueError) as exc:
        print(f"capacity_gap: error: {exc}", file=sys.stderr)
        return 2
    per_seed = gaps(args.strong, args.weak)
    family = {s: g["gap"].to_numpy() for s, g in per_seed.groupby("student", sort=True)}
    verdicts = stats.family_verdicts(family)
    table = pd.DataFrame([{"student": s, "seeds": v["n"], "gain_strong": per_seed.loc[per_seed["student"] == s, "gain_strong"].mean(),
                           "gain_weak": per_seed.loc[per_seed["student"] == s, "gain_weak"].mean(), "gap": v["mean"],
                           "ci_low": v["ci_low"], "ci_high": v["ci_high"], "p_holm": v["p_adjusted"],
                           "tost_p_holm": v["tost_p_adjusted"], "mde": v["mde"], "verdict": v["label"],
                           "seeds_smaller": int((family[s] < 0).sum())} for s, v in verdicts.items()])
    (strong_name, strong_f1), (weak_name, weak_f1) = _teacher(args.strong), _teacher(args.weak)
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed.to_csv(args.out / "gap_seeds.csv", index=False)
    table.to_csv(args.out / "gap.csv", index=False)
    (args.out / "README.md").write_text(f"""# The capacity gap: KD's gain under a stronger and a weaker teacher

Written by `scripts/capacity_gap.py` ({time.strftime("%Y-%m-%d", time.gmtime())}), no training:

    .venv/bin/python scripts/capacity_gap.py {" ".join(argv)}

The same from-scratch students, recipe and seeds (their no-KD runs are the same: checked), distilled with Hinton KD
from the stronger teacher ({strong_name}, test macro-F1 {strong_f1:.3f}) and from the weaker one ({weak_name},
{weak_f1:.3f}). Per student and seed, the gap is the KD gain (Δ test macro-F1 against the same no-KD run) with the
stronger teacher minus the gain with the weaker one; below 0, the stronger teacher helps less. The verdict is the
analysis plan's (paired t across seeds, TOST against ±{stats.SESOI}, Holm over the three students, a secondary
family); this comparison was not pre-declared before the runs, so it is exploratory.

{table.to_markdown(index=False, floatfmt=".4f")}

`gap_seeds.csv` holds every seed's two gains. Literature: Cho & Hariharan (ICCV 2019) and Mirzadeh et al. (AAAI
2020, teacher assistants) report that a much stronger teacher can distil worse; Stanton et al. (NeurIPS 2021) that
students often do not match their teachers; Beyer et al. (CVPR 2022) that patient, consistent distillation closes
much of the gap.
""")
    prov = {"script": "scripts/capacity_gap.py", "argv": argv, "git": provenance.git_commit(),
            "machine": provenance.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "inputs": {str(p.relative_to(info.REPO_ROOT)): file_digest(p) for ref in (args.strong, args.weak)
                       for p in (ref / "paired_kd_seeds.csv", ref / "performance.csv") if p.resolve().is_relative_to(info.REPO_ROOT)}}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
