"""What the stage notebooks display: chosen columns of wide tables, a sentence where a result is absent, a figure
file as an image, and the headline numbers with their meaning."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

#: Headline metrics of the performance view, and their column names there.
METRICS: dict[str, str] = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro-F1",
                           "auc": "AUC"}


def say(text: str) -> Markdown:
    """A sentence rendered as Markdown (what a notebook says instead of a bare string or None)."""
    return Markdown(text)


def show(value: object, missing: str) -> None:
    """Display ``value`` (a PNG file as its image), or the sentence ``missing`` where it is None or an empty table."""
    if value is None or (isinstance(value, pd.DataFrame) and value.empty):
        display(say(f"*{missing}*"))
    else:
        display(Image(filename=str(value)) if isinstance(value, Path) and value.suffix == ".png" else value)


def pick(table: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """The ``columns`` of ``table`` that it has, renamed to their display names."""
    return table[[c for c in columns if c in table.columns]].rename(columns=dict(columns))


def dashes(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its missing cells shown as a dash (a target no run measures, a model with no interval)."""
    return table.astype(object).where(table.notna(), "—")


def interval(value: float, low: float, high: float) -> str:
    """``0.812 [0.790, 0.833]``; the value alone where the interval is missing."""
    if pd.isna(value):
        return "—"
    return f"{value:.3f}" if pd.isna(low) or pd.isna(high) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def performance(perf: pd.DataFrame) -> pd.DataFrame:
    """One row per model: seeds, validation macro-F1 and each headline metric with its interval over seeds and test
    images (the hierarchical bootstrap where the table has it, else the t-interval across seeds)."""
    out = pick(perf, {"label": "Model", "seeds": "Seeds", "val_macro_f1": "Validation macro-F1"})
    for m, name in METRICS.items():
        if m in perf:
            lo, hi = (f"{m}_hb_low", f"{m}_hb_high") if f"{m}_hb_low" in perf else (f"{m}_low", f"{m}_high")
            out[f"{name} [95%]"] = [interval(v, a, b) for v, a, b in zip(perf[m], perf[lo], perf[hi], strict=True)]
    return out.round(3)


def paired_kd(paired: pd.DataFrame) -> pd.DataFrame:
    """KD against no KD per student and setting: seed pairs, the mean Δ macro-F1 with its t-interval across seeds,
    the pre-declared test's Holm-adjusted p and verdict (where the table has them), and the seeds whose own Δ is
    above 0."""
    out = pick(paired, {"student": "Student", "setting": "KD setting", "pairs": "Seed pairs"})
    out["Δ macro-F1 [95% t]"] = [interval(v, a, b) for v, a, b in
                                 zip(paired["d_macro_f1"], paired["d_macro_f1_low"], paired["d_macro_f1_high"], strict=True)]
    return out.join(pick(paired, {"t_p_holm": "p, paired t (Holm)", "verdict_label": "Verdict",
                                  "seeds_positive": "Seeds with Δ > 0"}).round(3))


def by_level(corruptions: pd.DataFrame, metric: str = "macro_f1") -> pd.DataFrame:
    """One row per suite and corruption, one column per severity level (0 = clean): ``metric`` at a glance."""
    return corruptions.pivot_table(index=["suite", "corruption"], columns="level", values=metric, sort=False).round(3)


def run_summary(metrics: Mapping[str, object]) -> pd.DataFrame:
    """What a training run reached (its ``metrics.json``), in words: best epoch, validation and test scores, time."""
    return pd.DataFrame.from_dict({
        "best epoch (chosen on validation macro-F1)": f"{metrics['best_epoch']} of {metrics['epochs']}",
        "validation accuracy": f"{metrics['val_acc']:.3f}", "validation macro-F1": f"{metrics['val_macro_f1']:.3f}",
        "test accuracy": f"{metrics['test_acc']:.3f}", "test macro-F1": f"{metrics['test_macro_f1']:.3f}",
        "collapsed": metrics.get("collapsed") or "no", "wall time (s)": f"{metrics['wall_time_s']:.0f}",
    }, orient="index", columns=["run"])


def numbers(values: Mapping[str, object], meanings: Mapping[str, str]) -> pd.DataFrame:
    """The headline numbers that apply (not None), one per row, with what each holds (``meanings``, such as
    :data:`edgekd.stages.aggregate.NUMBERS`)."""
    def text(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return ", ".join(map(str, v)) if isinstance(v, list) else str(v)

    rows = [{"number": k, "value": text(v), "meaning": meanings.get(k, "")} for k, v in values.items()
            if v is not None and not isinstance(v, dict)]
    return pd.DataFrame(rows).set_index("number")
