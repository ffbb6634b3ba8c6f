"""The helpers that more than one part of the manuscript (``paper/index.qmd``) uses, and only those.

The paper's parts live in their own modules, in the paper's order: :mod:`edgekd.paper.front` (byline, abstract),
:mod:`edgekd.paper.methods`, :mod:`edgekd.paper.results`, :mod:`edgekd.paper.closing` (discussion to code
availability) and :mod:`edgekd.paper.supplement` (S1 to S11). What two of them need, the official-split filter, the
analysis plan's verdicts and the clause that counts them, the paired table's columns, the KD students' calibration
against their no-KD twins, the data's image counts and resolution, a figure and a path as the reader sees it, lives
here once, so that every part reads a number the same way. Every function returns markdown
(:mod:`edgekd.paper.format`), so Quarto and the pandoc fallback render the same text; no raw column name reaches the
page.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from edgekd.core import info
from edgekd.core.info import LESION_MARK
from edgekd.paper.format import DASH, Columns, and_list, bracket, ci_col, col, pvalue, signed
from edgekd.paper.sources import Source


def official(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["split"] != LESION_MARK] if "split" in df else df


#: The verdict columns of ``paired_kd.csv`` that the paper formats (of ``edgekd.stages.tables.VERDICT_COLUMNS``, its
#: ``label`` as ``verdict_label``).
_FORMATTED_VERDICTS: tuple[str, ...] = ("t_p_holm", "tost_p_holm", "mde", "verdict_label")


def verdicts(src: Source) -> pd.DataFrame:
    """The official-split paired rows with the analysis plan's verdicts, as the aggregate tabulated them: the paper
    formats them and never recomputes one. A paired table without them (an aggregate older than the plan) is refused."""
    df = official(src.csv("paired_kd.csv"))
    if len(df) and (missing := [c for c in _FORMATTED_VERDICTS if c not in df.columns]):
        raise ValueError(f"{src.path / 'paired_kd.csv'} has no {', '.join(missing)}: it predates the analysis plan's "
                         f"verdicts; rerun the aggregate stage of profile {src.profile}")
    return df


def verdict_kind(label) -> str:
    """The plan's verdict (gain, loss, equivalent, inconclusive) of a verdict label as tables show it
    ("equivalent within ±0.02", "inconclusive, MDE = 0.076")."""
    return str(label).split(",")[0].split(" within")[0]


def counted(verdicts: pd.Series) -> str:
    """The verdicts of a family of comparisons in one clause that reads at any count: "of the 7 comparisons, 2 show
    a gain, 1 is equivalent within ±0.02 and 4 are inconclusive"; "all 4 are inconclusive"; "the 1 comparison shows
    a gain"."""
    kinds = verdicts.map(verdict_kind)
    one = {"gain": "shows a gain", "loss": "shows a loss", "equivalent": "is equivalent within ±0.02",
           "inconclusive": "is inconclusive"}
    many = {"gain": "show a gain", "loss": "show a loss", "equivalent": "are equivalent within ±0.02",
            "inconclusive": "are inconclusive"}
    n = len(kinds)
    found = [(k, int((kinds == k).sum())) for k in one if (kinds == k).any()]
    if n == 1:
        return f"the 1 comparison {one[found[0][0]]}"
    if len(found) == 1:
        return f"all {n} comparisons {many[found[0][0]]}"
    parts = [f"{k_n} {(one if k_n == 1 else many)[k]}" for k, k_n in found]
    return f"of the {n} comparisons, " + and_list(parts)


def power_rows(power: Source, src: Source) -> pd.DataFrame:
    """The power study's row for each of ``src``'s official KD comparisons, with the reference's student and method
    names (the study names a method by its profile label)."""
    names = verdicts(src)[["arch", "split", "setting", "student", "method"]]
    return names.merge(power.csv("power.csv").drop(columns="student"), on=["arch", "split", "setting"], how="inner")


def image_counts(src: Source) -> tuple[int, float] | None:
    """All images of the data and the training split's share of *nv* (``data_counts.csv``), if the results have it."""
    if not src.has("data_counts.csv"):
        return None
    counts = src.csv("data_counts.csv").set_index("split")
    return int(counts["total"].sum()), counts.loc["train", "nv"] / counts.loc["train", "total"]


def resolution_note(size: int) -> str:
    """What the input size means relative to the source images read (200×150 copies of HAM10000)."""
    w, h = info.RAW_FRAME
    side = min(w, h)
    how = ("a downsample of" if size < side else "an upsample of" if size > side else "exactly")
    return (f"The HAM10000 images read here are {w}×{h} px copies (the original dermatoscopic images are 600×450), "
            f"so DermaMNIST's centre square crop is {side}×{side} px and the {size} px input is {how} it.")


def figure(src: Source, name: str, caption: str, label: str | None = None) -> str:
    """A PNG of the results folder as a captioned figure, numbered and referred to as ``@fig-<label>`` (by default
    its file name: ``paired_kd.png`` -> ``fig-paired-kd``)."""
    label = label or Path(name).stem.replace("_", "-")
    return f"![{caption}]({(src.path / name).resolve()}){{#fig-{label}}}\n"


def method(r: pd.Series) -> str:
    """The KD method of a paired row in words (references made before the paired tables named it show its label)."""
    return r["method"] if isinstance(r.get("method"), str) else r["setting"]


def _hb(r: pd.Series) -> str:
    return f"{signed(r['d_macro_f1'])} {bracket(r['d_macro_f1_hb_low'], r['d_macro_f1_hb_high'])}"


def verdict_cell(r: pd.Series) -> str:
    label = r.get("verdict_label")
    return label if isinstance(label, str) else DASH


#: How the paired tables' interval and test are made (the Methods say the same).
PAIRED_NOTE: str = ("The pre-declared test (the analysis plan) is the paired t across seeds: the mean Δ macro-F1 with "
                    "its 95% t-interval, and its two-sided p, Holm-adjusted over the students of the same KD setting; "
                    "the verdict adds the equivalence test against ±0.02 and, when neither test decides, the minimum "
                    "detectable Δ. Beside it, a hierarchical percentile bootstrap (2,000 resamples: the paired seeds, "
                    "then the test images, shared by both arms) also carries the test set's noise.")


def paired_columns(against: bool = False, full: bool = True) -> Columns:
    columns: Columns = {"Student": col("student", str), "KD method": method,
                        **({"Against": col("baseline", str)} if against else {}), "Pairs": col("pairs"),
                        "Δ macro-F1, t across seeds": ci_col("d_macro_f1", sign=True),
                        "p, paired t (Holm)": lambda r: pvalue(r.get("t_p_holm")), "Verdict": verdict_cell}
    if full:
        columns |= {"Δ macro-F1 [seeds × images]": _hb,
                    "Seeds Δ > 0": lambda r: f"{int(r['seeds_positive'])} of {int(r['pairs'])}",
                    "Δ balanced accuracy": ci_col("d_balanced_accuracy", sign=True)}
    return columns


#: The aggregate's per-pair calibration columns (``edgekd.stages.tables.paired_kd``): each arm's seed means and the
#: paired Δ ECE with its t-interval; the fitted temperatures are renamed ``t_kd`` and ``t_nokd``.
KD_CALIBRATION_COLUMNS: tuple[str, ...] = (
    "temperature_kd", "temperature_nokd", "ece_before_kd", "ece_before_nokd", "ece_after_kd", "ece_after_nokd",
    "d_ece_before", "d_ece_before_low", "d_ece_before_high", "d_ece_after", "d_ece_after_low", "d_ece_after_high")


def kd_calibration_rows(src: Source) -> pd.DataFrame:
    """Per KD-vs-no-KD pair on the official split: each arm's fitted temperature and ECE before and after scaling
    (means over the paired seeds) and the paired Δ ECE with its t-interval, as the aggregate wrote them in
    ``paired_kd.csv``; empty where the reference has no such columns (no valid KD pair, as in a smoke run whose
    students collapsed, or a reference published before the aggregate tabulated them)."""
    if not src.has("paired_kd.csv"):
        return pd.DataFrame()
    df = official(src.csv("paired_kd.csv"))
    if df.empty or not set(KD_CALIBRATION_COLUMNS) <= set(df.columns):
        return pd.DataFrame()
    return df[["student", "setting", "method", "pairs", *KD_CALIBRATION_COLUMNS]].rename(
        columns={"temperature_kd": "t_kd", "temperature_nokd": "t_nokd"}).reset_index(drop=True)


def kd_calibration_facts(df: pd.DataFrame) -> dict[str, int | bool]:
    """What the calibration rows (:func:`kd_calibration_rows`) say, for the sentences that state it: the pairs whose
    Δ ECE before scaling lies above 0 (KD less calibrated) or below 0 (interval excluding 0), whether every KD
    student's fitted temperature is above (or below) its no-KD twin's, and whether scaling shrinks |Δ ECE| in every
    pair."""
    return {"pairs": len(df), "worse": int((df["d_ece_before_low"] > 0).sum()),
            "better": int((df["d_ece_before_high"] < 0).sum()),
            "hotter": bool((df["t_kd"] > df["t_nokd"]).all()), "cooler": bool((df["t_kd"] < df["t_nokd"]).all()),
            "shrinks": bool((df["d_ece_after"].abs() < df["d_ece_before"].abs()).all())}


def shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(info.REPO_ROOT)) if path.is_relative_to(info.REPO_ROOT) else str(path)


def external_macro_f1(src: Source) -> tuple[pd.DataFrame, list[str]]:
    """Macro-F1 per model on the official test set and on each external set (``external.csv``): one row per model with
    ``mean|<set>``, ``ci_low|<set>``, ``ci_high|<set>`` and, for each external set, ``gap|<set>`` (external minus
    official); and the external sets' names. The abstract and the results read the same numbers from here."""
    df = src.csv("external.csv").query("metric == 'macro_f1'")
    sets = [s for s in dict.fromkeys(df["test_set"]) if s != "in-distribution"]
    wide = df.pivot_table(index=["model", "label"], columns="test_set", values=["mean", "ci_low", "ci_high"],
                          sort=False)
    wide.columns = [f"{stat}|{test_set}" for stat, test_set in wide.columns]
    wide = wide.reset_index()
    for name in sets:
        wide[f"gap|{name}"] = wide[f"mean|{name}"] - wide["mean|in-distribution"]
    return wide, sets
