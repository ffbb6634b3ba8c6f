"""How many seeds each KD-vs-no-KD comparison needs, and what today's seeds can say (paper/results/studies/power/).

Reads a published reference's per-seed paired deltas (``paired_kd_seeds.csv``: KD student minus the no-KD student
of the same architecture and seed, on the test split) and, where present, its per-model seed summaries
(``seed_metrics.csv``, with ``runs.csv`` naming the models), and for each comparison writes to ``power.csv``:
the seed SD of the paired Δ macro-F1, today's Student-t interval, the minimum detectable Δ (MDE) at 3 and 5 seeds
(80 % power, α 0.05 two-sided, exact noncentral t), the seeds needed for an interval half-width of 0.02 and 0.03
and for 80 % power at Δ = 0.02 (the SESOI), and today's pre-declared verdict (``edgekd.core.stats.family_verdicts``,
Holm over the students of one KD setting on one split). A comparison with one seed has no SD of its own: its
planning numbers use the family's pooled seed SD (``planning_sd_basis`` says which).

    .venv/bin/python scripts/power.py --out paper/results/studies/power
    .venv/bin/python scripts/power.py --reference paper/results/studies/kd_power --seeds-file paired_seeds.csv --out DIR

No training, no torch: seconds on any machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from edgekd.core import info, provenance, stats
from edgekd.core.files import file_digest
from edgekd.pipeline import publish

ALPHA, POWER, SESOI = 0.05, 0.8, stats.SESOI
#: the reference the plan's numbers come from
DEFAULT_REFERENCE = info.REPO_ROOT / "paper" / "results" / "default"
BASELINE = "nokd"
METRIC = "macro_f1"
#: What this script writes into ``--out``; a folder holding any other file is refused.
WRITES: tuple[str, ...] = ("power.csv", "README.md", "provenance.json")


def _int(value: float | int) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def pooled_sd(groups: list[np.ndarray]) -> float:
    """Pooled seed SD of the paired Δ over the comparisons with at least 2 seeds (df-weighted variances)."""
    usable = [g for g in groups if len(g) > 1]
    df = sum(len(g) - 1 for g in usable)
    return math.sqrt(sum((len(g) - 1) * g.var(ddof=1) for g in usable) / df) if df else math.nan


def arm_sd(reference: Path) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(arch, setting, split) -> (mean, seed SD, seeds) of test macro-F1, from seed_metrics.csv and runs.csv."""
    seed_file, runs_file = reference / "seed_metrics.csv", reference / "runs.csv"
    if not (seed_file.is_file() and runs_file.is_file()):
        return {}
    seeds = pd.read_csv(seed_file)
    seeds = seeds[seeds["metric"] == METRIC].set_index("model")
    runs = pd.read_csv(runs_file, keep_default_na=False).drop_duplicates("model")
    out = {}
    for r in runs.itertuples():
        if r.model in seeds.index:
            s = seeds.loc[r.model]
            out[(r.arch, r.setting, r.split)] = (float(s["mean"]), float(s["std"]), int(s["n_seeds"]))
    return out


def table(deltas: pd.DataFrame, arms: dict, margin: float = SESOI) -> pd.DataFrame:
    """One row per comparison (arch, split, setting): the seed-level numbers and the family's verdicts."""
    rows = []
    for (split, setting), fam in deltas.groupby(["split", "setting"], sort=False):
        members = {arch: g.sort_values("seed")["d_macro_f1"].to_numpy(float) for arch, g in fam.groupby("arch", sort=False)}
        verdicts = stats.family_verdicts(members, margin, ALPHA, POWER)
        pooled = pooled_sd(list(members.values()))
        for arch, d in members.items():
            g = fam[fam["arch"] == arch]
            t, v = stats.paired_t(d), verdicts[arch]
            own = len(d) > 1
            plan_sd = t["sd"] if own else pooled
            # one-sided 80 % upper confidence limit of the seed SD (chi-square, n − 1 df): the SD of 3 seeds is itself uncertain
            ucl = t["sd"] * math.sqrt((len(d) - 1) / sps.chi2.ppf(0.2, len(d) - 1)) if own else math.nan
            kd, nokd = arms.get((arch, setting, split)), arms.get((arch, BASELINE, split))
            ok = np.isfinite(plan_sd)
            rows.append({
                "arch": arch, "student": g["student"].iloc[0], "split": split, "setting": setting,
                "kd_mode": g["kd_mode"].iloc[0] if "kd_mode" in g else None,
                "family": f"{setting} on {split}", "family_size": len(members), "n": len(d),
                "seeds": " ".join(str(s) for s in sorted(g["seed"])),
                "mean": t["mean"], "sd": t["sd"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                "half_width": (t["ci_high"] - t["ci_low"]) / 2,
                "sd_kd": kd[1] if kd else math.nan, "sd_nokd": nokd[1] if nokd else math.nan,
                "planning_sd": plan_sd, "planning_sd_basis": "own seeds" if own else "family pooled" if ok else "none",
                "mde_3": stats.mde(plan_sd, 3, ALPHA, POWER) if ok else math.nan,
                "mde_5": stats.mde(plan_sd, 5, ALPHA, POWER) if ok else math.nan,
                "seeds_hw_0.02": stats.seeds_needed(plan_sd, 0.02) if ok else None,
                "seeds_hw_0.03": stats.seeds_needed(plan_sd, 0.03) if ok else None,
                "seeds_power_0.02": stats.seeds_for_power(plan_sd, SESOI, ALPHA, POWER) if ok else None,
                # Holm's strictest step tests at alpha / m: enough seeds there make the comparison's power hold in any order
                "seeds_power_0.02_alpha_m": stats.seeds_for_power(plan_sd, SESOI, ALPHA / len(members), POWER) if ok else None,
                "sd_ucl80": ucl,
                "seeds_power_0.02_ucl80": stats.seeds_for_power(ucl, SESOI, ALPHA, POWER) if own else None,
                "p": v["p"], "p_holm": v["p_adjusted"], "tost_p": v["tost_p"], "tost_p_holm": v["tost_p_adjusted"],
                "mde_now": v["mde"], "verdict": v["verdict"], "label": v["label"],
            })
            if kd and nokd and kd[2] == nokd[2] == len(d) and abs(kd[0] - nokd[0] - t["mean"]) > 1e-9:
                raise ValueError(f"{arch} {setting}: arm means differ by {kd[0] - nokd[0]}, the paired deltas by {t['mean']}")
    out = pd.DataFrame(rows)
    for col in ("seeds_hw_0.02", "seeds_hw_0.03", "seeds_power_0.02", "seeds_power_0.02_alpha_m", "seeds_power_0.02_ucl80"):
        out[col] = out[col].astype("Int64")
    return out


def _fmt(v: object, digits: int = 3) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


SHOWN = {"student": "student", "family": "family", "n": "n", "mean": "Δ", "sd": "seed SD", "half_width": "t half-width",
         "mde_3": "MDE 3 seeds", "mde_5": "MDE 5 seeds", "seeds_hw_0.02": "seeds ±0.02", "seeds_hw_0.03": "seeds ±0.03",
         "seeds_power_0.02": "seeds 80 % at 0.02", "seeds_power_0.02_alpha_m": "same, at α/m",
         "seeds_power_0.02_ucl80": "same, SD at its 80 % UCL", "label": "verdict"}


def markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(SHOWN.values()) + " |", "|" + "---|" * len(SHOWN)]
    for r in df.to_dict("records"):
        cells = [_fmt(r[k], 4 if k in ("mean", "sd") else 3) for k in SHOWN]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(df: pd.DataFrame) -> str:
    """One line per comparison, from the table: today's interval, both tests, the verdict, the seeds it needs."""
    lines = []
    for r in df.to_dict("records"):
        if r["n"] < 2:
            lines.append(f"- {r['student']} ({r['family']}): one seed, Δ {r['mean']:+.3f}, no seed-level test. With the seed SD pooled "
                         f"over the family's other students ({r['planning_sd']:.3f}) it would need {_fmt(r['seeds_power_0.02'])} seeds for "
                         f"{POWER * 100:.0f} % power at Δ = {SESOI}.")
            continue
        lines.append(f"- {r['student']} ({r['family']}): Δ {r['mean']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] over "
                     f"{r['n']} seeds; paired-t p {r['p']:.3f} (Holm {r['p_holm']:.3f}), TOST p {r['tost_p']:.3f} "
                     f"(Holm {r['tost_p_holm']:.3f}): {r['label']}. {POWER * 100:.0f} % power at Δ = {SESOI} needs "
                     f"{_fmt(r['seeds_power_0.02'])} seeds ({_fmt(r['seeds_power_0.02_alpha_m'])} at Holm's strictest step, "
                     f"{_fmt(r['seeds_power_0.02_ucl80'])} if the seed SD is at its 80 % upper limit).")
    return "\n".join(lines)


def readme(df: pd.DataFrame, argv: list[str], reference: Path, seeds_file: str) -> str:
    try:
        source = reference.resolve().relative_to(info.REPO_ROOT)
    except ValueError:
        source = reference
    return f"""# Seeds and power for the KD comparisons

Written by `scripts/power.py` ({time.strftime("%Y-%m-%d", time.gmtime())}), no training:

    .venv/bin/python scripts/power.py {" ".join(argv)}

from `{source}/{seeds_file}` (per-seed paired Δ macro-F1, KD minus no-KD of the same
architecture and seed, on the test split) and that reference's `seed_metrics.csv` (each arm's seed SD). The
statistics are `edgekd.core.stats`: the paired t across seeds, TOST against ±{SESOI} (the SESOI), the exact
noncentral-t power, and the pre-declared three-way verdict with Holm over the students of one KD setting on one
split (the family). The analysis plan is `paper/analysis_plan.md`.

{markdown(df)}

What it shows:

{findings(df)}

Columns of `power.csv` (Δ is macro-F1, KD minus no-KD):

- `n`, `seeds`, `mean`, `sd`: the paired seeds, their mean Δ and sample SD; `ci_low`, `ci_high`, `half_width`: the
  95 % Student-t interval today. `sd_kd`, `sd_nokd`: each arm's own seed SD of macro-F1 (pairing helps where `sd`
  is below √(sd_kd² + sd_nokd²)).
- `planning_sd`: the SD the planning columns use: the comparison's own, or, with one seed, the family's pooled SD.
- `mde_3`, `mde_5`: the smallest true mean Δ the two-sided paired t-test (α {ALPHA}) finds with {POWER * 100:.0f} % power at 3 and
  5 seeds. `seeds_hw_0.02`, `seeds_hw_0.03`: seeds for a 95 % t-interval half-width ≤ 0.02, ≤ 0.03 (plug-in SD).
  `seeds_power_0.02`: seeds for {POWER * 100:.0f} % power at Δ = {SESOI}; `seeds_power_0.02_alpha_m`: the same at
  α/m, Holm's strictest step in a family of m comparisons. `sd_ucl80`, `seeds_power_0.02_ucl80`: the same
  with the SD at its one-sided 80 % upper confidence limit (an SD from 3 seeds is itself uncertain by a factor of ~2).
- `p`, `p_holm`, `tost_p`, `tost_p_holm`: paired-t and TOST p, raw and Holm-adjusted within the family;
  `mde_now`: the MDE at today's n and SD; `verdict`, `label`: the pre-declared verdict.
- `provenance.json`: command line, commit, machine, date and the inputs' sha256.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for " + ", ".join(WRITES))
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="a published reference's folder")
    ap.add_argument("--seeds-file", default="paired_kd_seeds.csv", help="its per-seed paired deltas")
    ap.add_argument("--margin", type=float, default=SESOI, help="the SESOI of the equivalence test")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if refusal := publish.foreign_files(args.out, WRITES):
        print(f"power: error: {refusal}", file=sys.stderr)
        return 2
    try:
        deltas, sd = pd.read_csv(args.reference / args.seeds_file), arm_sd(args.reference)
    except (OSError, ValueError, KeyError) as exc:
        print(f"power: error: {args.reference} is not a published reference with {args.seeds_file}: {exc}",
              file=sys.stderr)
        return 2
    df = table(deltas, sd, args.margin)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "power.csv", index=False)
    (args.out / "README.md").write_text(readme(df, argv, args.reference, args.seeds_file))
    inputs = [args.reference / n for n in (args.seeds_file, "seed_metrics.csv", "runs.csv")]
    prov = {"script": "scripts/power.py", "argv": argv, "git": provenance.git_commit(), "machine": provenance.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "alpha": ALPHA, "power": POWER, "margin": args.margin,
            "inputs": {str(p.resolve().relative_to(info.REPO_ROOT)) if p.resolve().is_relative_to(info.REPO_ROOT) else str(p):
                       file_digest(p) for p in inputs if p.is_file()}}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    cols = ["student", "family", "n", "mean", "sd", "half_width", "mde_3", "mde_5", "seeds_hw_0.02", "seeds_hw_0.03",
            "seeds_power_0.02", "seeds_power_0.02_alpha_m", "seeds_power_0.02_ucl80", "label"]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
