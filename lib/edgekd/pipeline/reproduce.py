"""Compare a reproduced aggregate with a published reference, number by number.

Both folders hold the aggregate stage's ``seed_metrics.csv`` (per model and metric: the across-seed
mean and its t-interval); the reference also holds ``provenance.json`` (:mod:`edgekd.pipeline.publish`). For
every model and headline metric :func:`compare` gives the reference and reproduced means, their
difference, whether the reproduced mean lies within the reference's across-seed interval, and a
one-line verdict. Where the two machines differ (CPU, GPU, thread count, library versions), a
difference is attributed to them: floating-point reductions are not bitwise stable across those.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from edgekd.core import provenance

#: Metrics compared (the paper's headline metrics).
METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
#: Machine facts (``provenance.machine()`` keys) that change floating-point results when they differ, in the words the
#: reproduction report (and the paper's provenance section) shows them.
MACHINE_KEYS: dict[str, str] = {"cpu": "CPU", "cpu_capability": "instruction set", "gpu": "GPU",
                                "torch_threads": "PyTorch threads", "torch": "PyTorch", "timm": "timm", "numpy": "NumPy",
                                "onnxruntime": "ONNX Runtime"}
VERDICTS: dict[str, str] = {
    "identical": "bitwise identical",
    "within": "within seed noise",
    "outside": "outside the reference's seed interval",
    "no_interval": "differs; the reference has one seed, so no seed interval",
    "missing": "missing in the reproduction",
    "new": "not in the reference",
}


def read_machine(folder: Path) -> dict | None:
    """The machine a results folder came from: ``provenance.json``'s ``machine``, else the aggregate's
    ``machine.json``, else None."""
    prov, machine = Path(folder) / "provenance.json", Path(folder) / "machine.json"
    if prov.exists():
        return json.loads(prov.read_text()).get("machine")
    return json.loads(machine.read_text()) if machine.exists() else None


def machine_differences(reference: dict | None, reproduced: dict | None) -> list[str]:
    """``fact: reference → reproduced`` for each :data:`MACHINE_KEYS` entry that differs, the fact in words."""
    if reference is None or reproduced is None:
        return []
    return [f"{words}: {reference.get(k)} → {reproduced.get(k)}" for k, words in MACHINE_KEYS.items()
            if reference.get(k) != reproduced.get(k)]


def compare(reference_dir: Path, reproduced_dir: Path, reproduced_machine: dict | None = None) -> pd.DataFrame:
    """Per model and headline metric: reference, reproduced, delta, within the reference's interval, verdict.

    ``reproduced_machine`` defaults to :func:`read_machine` of ``reproduced_dir``, else this machine's.
    The table's ``attrs["machine_differences"]`` lists how the machines differ.
    """
    ref = pd.read_csv(Path(reference_dir) / "seed_metrics.csv")
    rep = pd.read_csv(Path(reproduced_dir) / "seed_metrics.csv")
    if reproduced_machine is None:
        reproduced_machine = read_machine(reproduced_dir) or provenance.machine()
    diffs = machine_differences(read_machine(reference_dir), reproduced_machine)
    keys = ["model", "metric"]
    both = ref[ref["metric"].isin(METRICS)].merge(rep[rep["metric"].isin(METRICS)], on=keys, how="outer",
                                                  suffixes=("_ref", "_rep"), indicator="side")
    rows = []
    for r in both.itertuples():
        reference, reproduced = r.mean_ref, r.mean_rep
        low, high = r.ci_low_ref, r.ci_high_ref
        within = bool(low <= reproduced <= high) if np.isfinite(low) and np.isfinite(reproduced) else None
        if r.side == "left_only":
            verdict = VERDICTS["missing"]
        elif r.side == "right_only":
            verdict = VERDICTS["new"]
        elif reference == reproduced:
            verdict = VERDICTS["identical"]
        else:
            verdict = VERDICTS["within" if within else "outside" if within is False else "no_interval"]
            verdict += "; likely hardware or thread differences" if diffs else "; same machine and library versions"
        rows.append({"model": r.model, "label": r.label_ref if isinstance(r.label_ref, str) else r.label_rep,
                     "metric": r.metric, "reference": reference, "reproduced": reproduced,
                     "delta": reproduced - reference, "ref_ci_low": low, "ref_ci_high": high, "within_ci": within,
                     "verdict": verdict})
    table = pd.DataFrame(rows)
    table.attrs["machine_differences"] = diffs
    return table


def summary(table: pd.DataFrame) -> str:
    """One line: how many numbers are identical, within seed noise, outside, missing; and how the machines differ."""
    def count(key: str) -> int:
        return int(table["verdict"].str.startswith(VERDICTS[key]).sum())

    parts = [f"{count('identical')} bitwise identical", f"{count('within')} within seed noise",
             f"{count('outside')} outside the reference's seed interval"]
    parts += [f"{count(k)} {VERDICTS[k]}" for k in ("no_interval", "missing", "new") if count(k)]
    diffs = table.attrs.get("machine_differences") or []
    machines = f"; machines differ ({'; '.join(diffs)})" if diffs else "; same machine and library versions"
    return f"{len(table)} numbers: " + ", ".join(parts) + machines


def format_report(table: pd.DataFrame, title: str) -> str:
    """The comparison as plain text: a title, the summary line and one line per number."""
    def num(x: float) -> str:
        return f"{x:.4f}" if np.isfinite(x) else "—"

    lines = [title, summary(table)]
    width = max((len(str(x)) for x in table["label"]), default=5)
    for r in table.itertuples():
        interval = f"[{num(r.ref_ci_low)}, {num(r.ref_ci_high)}]" if np.isfinite(r.ref_ci_low) else "—"
        delta = f"{r.delta:+.4f}" if np.isfinite(r.delta) else "—"
        lines.append(f"  {r.label:<{width}}  {r.metric:<17} ref {num(r.reference)}  now {num(r.reproduced)}  "
                     f"Δ {delta:>8}  ref CI {interval:<16}  {r.verdict}")
    return "\n".join(lines)
