"""Type and range checks of configuration values against type hints (standard library only).

The configuration dataclasses (:class:`edgekd.train.TrainConfig`, :class:`~edgekd.train.KDConfig`,
:class:`edgekd.data.DataConfig`) call :func:`check_fields` first thing in ``__post_init__``; the runner
checks the profile's per-stage blocks with :func:`check_values` and :func:`check_minima`. YAML makes
``2.5``, ``true``, ``.inf`` and ``"1"`` easy to write where an integer count is meant: each is refused
with the key and the value named, never coerced or clamped.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping


def mismatch(value: object, hint: object) -> str | None:
    """What ``hint`` expects, in words, when ``value`` does not match it; None when it matches.

    ``int`` refuses bools and floats; ``float`` takes ints but refuses bools and non-finite values;
    ``X | None`` takes None; ``list[X]`` and ``dict[K, V]`` check every item. Other hints are not checked.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if any(mismatch(value, a) is None for a in options):
            return None
        return " or ".join([_describe(a) for a in options] + (["null"] if type(None) in args else []))
    return None if _matches(value, hint) else _describe(hint)


def _matches(value: object, hint: object) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(mismatch(v, args[0]) is None for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            mismatch(k, args[0]) is None and mismatch(v, args[1]) is None for k, v in value.items())
    return True


def _describe(hint: object) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(hint, str(hint))


def _plural(hint: object) -> str:
    return {bool: "booleans", int: "integers", float: "finite numbers", str: "strings"}.get(hint, _describe(hint))


def check_values(values: Mapping[str, object], hints: Mapping[str, object], where: str) -> None:
    """Raise ValueError (``where: key must be ..., got value``) for the first of ``values`` that does not
    match its hint in ``hints``; keys without a hint are not checked."""
    for key, hint in hints.items():
        if key in values:
            expected = mismatch(values[key], hint)
            if expected is not None:
                raise ValueError(f"{where}: {key} must be {expected}, got {_show(values[key])}")


def check_fields(obj: object, where: str) -> None:
    """:func:`check_values` of a dataclass instance's fields against its type hints."""
    hints = typing.get_type_hints(type(obj))
    check_values({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, hints, where)


def check_minima(values: Mapping[str, object], minima: Mapping[str, int], where: str) -> None:
    """Raise ValueError when a number in ``values`` (or any number of a list there) is below its minimum;
    None and absent keys pass. Run after the type checks."""
    for key, low in minima.items():
        value = values.get(key)
        items = value if isinstance(value, list) else [value]
        if any(v is not None and v < low for v in items):
            each = " (each entry)" if isinstance(value, list) else ""
            raise ValueError(f"{where}: {key} must be >= {low}{each}, got {_show(value)}")


def _show(value: object) -> str:
    """``'1' (str)``, ``2.5 (float)``: the value, and for a scalar its type (what YAML made of it)."""
    return repr(value) if isinstance(value, (list, dict)) else f"{value!r} ({type(value).__name__})"
