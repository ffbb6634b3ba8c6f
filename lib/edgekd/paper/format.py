"""Table cells and markdown tables for the manuscript: numbers, differences, p-values and intervals as
text, and pandoc pipe tables (an interval is raw HTML under its value). Cells that do not apply read "—";
no ``nan`` or ``True``/``False`` reaches the page."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

#: A table column: header -> cell text of a row.
Columns = dict[str, Callable[[pd.Series], str]]
DASH: str = "—"


def finite(x) -> bool:
    """A value to show: not None, NaN, NA or infinite."""
    return x is not None and not (isinstance(x, float) and not np.isfinite(x)) and not pd.isna(x)


def num(x, digits: int = 3) -> str:
    """A number, or "—"; booleans read yes/no."""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if not finite(x):
        return DASH
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    value = float(x)
    return f"{0.0 if round(value, digits) == 0 else value:.{digits}f}"  # never "-0.000"


def signed(x, digits: int = 3) -> str:
    """A difference with its sign (zero without one)."""
    if not finite(x):
        return DASH
    return num(0.0, digits) if round(float(x), digits) == 0 else f"{float(x):+.{digits}f}"


def pvalue(p) -> str:
    if not finite(p):
        return DASH
    return "<\u00a00.001" if p < 0.001 else f"{p:.3f}"  # no line break inside


def ratio(x) -> str:
    return f"{x:.2f}×" if finite(x) else DASH


def interval(mean, low, high, digits: int = 3, sign: bool = False) -> str:
    """``mean`` with ``[low, high]`` on a second, smaller line (the mean alone where no interval exists)."""
    text = signed(mean, digits) if sign else num(mean, digits)
    if text == DASH or not (finite(low) and finite(high)):
        return text
    fmt = signed if sign else num
    return f'{text}<br><span class="ci">[{fmt(low, digits)}, {fmt(high, digits)}]</span>'


def ci_col(prefix: str, sign: bool = False) -> Callable[[pd.Series], str]:
    """A column of ``prefix`` with its ``prefix_low`` / ``prefix_high`` interval."""
    return lambda r: interval(r[prefix], r[f"{prefix}_low"], r[f"{prefix}_high"], sign=sign)


def col(name: str, fmt: Callable = num) -> Callable[[pd.Series], str]:
    return lambda r: fmt(r[name])


def md_table(rows: pd.DataFrame, columns: Columns, caption: str, text: tuple[str, ...] = ()) -> str:
    """A pipe table: the first column and the ``text`` columns left-aligned, numbers right-aligned; empty cells "—"."""
    def cell(value: str) -> str:
        value = str(value).strip().replace("|", "\\|").replace("\n", " ")
        return value or DASH

    align = [":--" if i == 0 or name in text else "--:" for i, name in enumerate(columns)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(f(r)) for f in columns.values()) + " |" for _, r in rows.iterrows()]
    return "\n".join(lines) + f"\n\n: {caption}\n"


def human(name: str) -> str:
    """A column name in words (``macro_f1`` -> ``Macro-F1``)."""
    known = {"macro_f1": "Macro-F1", "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "auc": "AUC"}
    return known.get(name, name.replace("_", " ").strip().capitalize())
