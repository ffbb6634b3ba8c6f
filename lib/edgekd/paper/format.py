"""Table cells and markdown tables for the manuscript: numbers, differences, p-values and intervals as
text, and pandoc pipe tables (an interval is raw HTML under its value). Cells that do not apply read "—";
no ``nan`` or ``True``/``False`` reaches the page."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from edgekd.core import info

#: The paper's abbreviations and their words, in one place: the browser check
#: (:func:`edgekd.paper.render.browser_check`) wants each one's first use to define it, "expected calibration error
#: (ECE)" or "ECE (expected calibration error)". "F1" is left out: macro-F1 is the metric's name.
ABBREVIATIONS: dict[str, str] = {
    "KD": "knowledge distillation",
    "DKD": "decoupled knowledge distillation",
    "DIST": "distillation from a stronger teacher",
    "ECE": "expected calibration error",
    "NLL": "negative log-likelihood",
    "MACs": "multiply–accumulate operations",
    "FLOPs": "floating-point operations",
    "ORT": "ONNX Runtime",
    "ONNX": "Open Neural Network Exchange",
    "INT8": "8-bit integer",
    "FP32": "32-bit floating point",
    "FP16": "16-bit floating point",
    "EMA": "exponential moving average",
    "BE": "balanced error",
    "rBE": "relative balanced error",
    "QDQ": "quantise–dequantise",
    "TOST": "two one-sided tests",
    "MDE": "minimum detectable effect",
    "CPU": "central processing unit",
    "GPU": "graphics processing unit",
    "SD": "standard deviation",
    "KL": "Kullback–Leibler",
    "AUC": "area under the receiver operating characteristic curve",
    **info.CLASS_LONG_NAMES,  # HAM10000's class codes
}
#: Tokens of capitals (and digits) that are names, not abbreviations to define: a data set and its archive
#: (HAM10000, ISIC), hardware makers and products (NVIDIA, AMD, EPYC, HBM3), instruction sets (AVX, AVX2, AVX512,
#: AVX512F, VNNI, AMX), an image format (JPEG), units (MB, GB), licences (MIT; CC BY-NC, Creative Commons' own codes), a
#: method's name (Grad-CAM), a time zone (UTC) and a publisher (ML Illustrated, who converted the Lite0 weights). Mixed-case names (DermaMNIST, MedMNIST, ImageNet, PyTorch, PyPI) are no such token
#: and need no entry.
EXEMPT_CAPS: frozenset[str] = frozenset({
    "HAM10000", "ISIC", "NVIDIA", "AMD", "EPYC", "HBM3", "AVX2", "AVX512", "JPEG", "MB", "GB", "MIT", "CC", "BY", "NC",
    "CAM", "UTC", "ML", "AVX", "VNNI", "AMX", "AVX512F",
})

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
    return f"{0.0 if round(value, digits) == 0 else value:,.{digits}f}"  # never "-0.000"; 1,006.5 as 1,006


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` ``noun`` in words: "no interval", "1 interval", "1,006 intervals" (``plural`` where not noun + s)."""
    n = int(n)
    if n == 0:
        return f"no {noun}"
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def signed(x, digits: int = 3) -> str:
    """A difference with its sign; only an exact zero goes without one, so that an interval bound that rounds to zero
    ("-0.000") still shows on which side of 0 it lies."""
    if not finite(x):
        return DASH
    return num(0.0, digits) if float(x) == 0 else f"{float(x):+.{digits}f}"


def span(values: pd.Series, fmt: Callable = num, sep: str = "–") -> str:
    """The range of ``values`` as printed ("0.71–0.78"), or the one value where both ends print alike."""
    low, high = fmt(values.min()), fmt(values.max())
    return low if low == high else f"{low}{sep}{high}"


def pvalue(p) -> str:
    if not finite(p):
        return DASH
    return "<\u00a00.001" if p < 0.001 else f"{p:.3f}"  # no line break inside


def ratio(x) -> str:
    return f"{x:.2f}×" if finite(x) else DASH


def bracket(low, high, digits: int = 3) -> str:
    """A signed interval ``[low, high]`` in running text, never broken at its comma."""
    return f"[{signed(low, digits)},\u00a0{signed(high, digits)}]"


def interval(mean, low, high, digits: int = 3, sign: bool = False) -> str:
    """``mean`` with ``[low, high]`` on a second, smaller line (the mean alone where no interval exists)."""
    text = signed(mean, digits) if sign else num(mean, digits)
    if text == DASH or not (finite(low) and finite(high)):
        return text
    fmt = signed if sign else num
    return f'{text}<br><span class="ci">[{fmt(low, digits)},\u00a0{fmt(high, digits)}]</span>'  # never broken


def ci_col(prefix: str, sign: bool = False, kind: str = "") -> Callable[[pd.Series], str]:
    """A column of ``prefix`` with its ``prefix_low`` / ``prefix_high`` interval (``prefix_<kind>_low`` ... with
    ``kind``, e.g. ``hb`` for the hierarchical bootstrap)."""
    k = f"_{kind}" if kind else ""
    return lambda r: interval(r[prefix], r[f"{prefix}{k}_low"], r[f"{prefix}{k}_high"], sign=sign)


def col(name: str, fmt: Callable = num) -> Callable[[pd.Series], str]:
    return lambda r: fmt(r[name])


def label_of(caption: str, words: int = 5) -> str:
    """A cross-reference label from a caption's first ``words`` words (``Images per split and class.`` ->
    ``images-per-split-and-class``), for a table no text refers to."""
    return "-".join(re.findall(r"[a-z0-9]+", caption.lower())[:words])


#: Table columns that hold a model's name: their cells never wrap (``.name`` in paper/paper.css).
NAME_COLUMNS: frozenset[str] = frozenset({"Model", "Student", "KD method"})

#: Hyphenated names a line must not break inside (a browser breaks after a hyphen): the architectures' and one method's;
#: :func:`glue` keeps them whole and the paper's browser check looks for any that broke.
HYPHENATED_NAMES: tuple[str, ...] = tuple(sorted({n for n in (*info.ARCH_LABELS.values(), "logit-standardised")
                                                  if "-" in n}, key=len, reverse=True))
_HYPHENATED = re.compile("|".join(re.escape(n) for n in HYPHENATED_NAMES))
#: A symbol and its value ("T 2", "α 0.5", "MDE = 0.076", "p = 0.044"), which a line must not split.
_SYMBOL_VALUE = re.compile(r"(?<![\w\u00a0])(T|α|β|MDE =|p =|→) (?=[−+\-]?\d)")
#: A pair of values such as "0.064 / 0.022" (KD / no KD), which reads as one.
_VALUE_PAIR = re.compile(r"(?<=\d) / (?=[−+\-]?\d)")


def and_list(items: Sequence[str]) -> str:
    """Items in a sentence: "a", "a and b", "a, b and c"."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def glue(text: str) -> str:
    """``text`` with its hyphenated names in the no-wrap ``.name`` span, each symbol joined to its value and each
    pair of values ("0.064 / 0.022") joined by no-break spaces, so that none is split at a line's end (a table cell or
    generated prose)."""
    def prose(part: str) -> str:
        part = _SYMBOL_VALUE.sub(lambda m: m.group(1).replace(" ", "\u00a0") + "\u00a0", part)
        part = _VALUE_PAIR.sub("\u00a0/\u00a0", part)
        return _HYPHENATED.sub(lambda m: f'<span class="name">{m.group(0)}</span>', part)

    def line(text: str) -> str:
        parts = text.split("`")  # code spans (odd parts) stay as they are
        return "`".join(prose(p) if i % 2 == 0 else p for i, p in enumerate(parts))

    # A table's header row (the line above its alignment row) may wrap: its names head narrow columns.
    lines = text.split("\n")
    header = {i - 1 for i, s in enumerate(lines) if re.match(r"\|[:-]+\|", s)}
    return "\n".join(s if i in header else line(s) for i, s in enumerate(lines))


def md_table(rows: pd.DataFrame, columns: Columns, caption: str, text: tuple[str, ...] = (),
             label: str | None = None) -> str:
    """A pipe table: the first column and the ``text`` columns left-aligned, numbers right-aligned; empty cells "—".

    Its caption carries the cross-reference label ``#tbl-<label>`` (:func:`label_of` the caption where none is
    given), so that Quarto and the fallback (:func:`edgekd.paper.render.crossref`) number it and ``@tbl-<label>``
    refers to it."""
    def cell(value: str) -> str:
        value = str(value).strip().replace("|", "\\|").replace("\n", " ")
        return value or DASH

    align = [":--" if i == 0 or name in text else "--:" for i, name in enumerate(columns)]
    # A header may wrap at its spaces (it heads a narrow column) but not inside a hyphenated name: a no-break hyphen
    heads = [_HYPHENATED.sub(lambda m: m.group(0).replace("-", "\u2011"), name) for name in columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    def named(name: str, value: str) -> str:
        return f'<span class="name">{value}</span>' if name in NAME_COLUMNS and value != DASH else value

    lines += ["| " + " | ".join(named(name, cell(f(r))) for name, f in columns.items()) + " |" for _, r in rows.iterrows()]
    return "\n".join(lines) + f"\n\n: {caption} {{#tbl-{label or label_of(caption)}}}\n"


def human(name: str) -> str:
    """A column name in words (``macro_f1`` -> ``Macro-F1``)."""
    known = {"macro_f1": "Macro-F1", "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "auc": "AUC"}
    return known.get(name, name.replace("_", " ").strip().capitalize())
