"""The corruption suites by name and severity, and the validated plan of which to run (no torch, no images).

``source``: the source study's corruptions (additive Gaussian noise sigma, JPEG quality, contrast factor);
``medmnistc``: MedMNIST-C's DermaMNIST corruptions at levels 1..5, in its registry's order
(``medmnistc.corruptions.registry.CORRUPTIONS_DS["dermamnist"]``; ``tests/test_robustness.py`` checks the
names, order and levels against it). :mod:`edgekd.stages.robustness` applies them; the runner validates a
profile's ``robustness:`` block here, without importing the robustness stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
#: suite -> corruption -> severities, mildest first (``"medmnistc"``: levels 1..5).
SUITES: dict[str, dict[str, tuple]] = {
    "source": {"gaussian_noise": (0.1, 0.2, 0.3), "jpeg": (90, 70, 50), "contrast": (0.8, 0.6)},
    "medmnistc": {name: _LEVELS for name in (
        "pixelate", "jpeg_compression", "gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise",
        "defocus_blur", "motion_blur", "zoom_blur", "brightness_up", "brightness_down", "contrast_up",
        "contrast_down", "black_corner", "characters")},
}


def check(suite: str, name: str | None = None, severity: float | None = None) -> None:
    """Raise ValueError naming the bad suite, corruption or severity and the valid ones."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid suites: {sorted(SUITES)}")
    if name is None:
        return
    if name not in SUITES[suite]:
        others = [s for s in SUITES if name in SUITES[s]]
        hint = f" ({name!r} exists in suite {others[0]!r})" if others else ""
        raise ValueError(
            f"unknown corruption {name!r} in suite {suite!r}{hint}; "
            f"valid corruptions: {sorted(SUITES[suite])}"
        )
    if severity is not None and severity not in SUITES[suite][name]:
        raise ValueError(
            f"unknown severity {severity!r} for {suite}/{name}; "
            f"valid severities: {list(SUITES[suite][name])}"
        )


def _severity_list(suite: str, name: str, values: Any, flat: bool) -> list:
    """Validated severities of ``suite/name`` in the suite's order (mildest first)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"severities for {suite}/{name} must be a non-empty list, got {values!r}")
    for value in values:
        try:
            check(suite, name, value)
        except ValueError as exc:
            hint = (
                " (a list applies to every corruption of the suite; pass {corruption: [severities]}"
                " to choose them per corruption)"
                if flat
                else ""
            )
            raise ValueError(f"{exc}{hint}") from None
    return [severity for severity in SUITES[suite][name] if severity in values]


def robustness_plan(
    suites: Sequence[str], severities: Mapping[str, Any] | None = None
) -> dict[str, dict[str, list]]:
    """``suite -> corruption -> severities`` to evaluate, validated (ValueError naming the bad entry).

    ``severities`` maps a suite to a list of severities (applied to each of its corruptions) or
    to ``{corruption: [severities]}`` (only those corruptions); suites not in it run in full.
    """
    suites = [suites] if isinstance(suites, str) else list(dict.fromkeys(suites))
    if not suites:
        raise ValueError(f"suites is empty; valid suites: {sorted(SUITES)}")
    for suite in suites:
        check(suite)
    severities = dict(severities or {})
    for suite in severities:
        check(suite)
        if suite not in suites:
            raise ValueError(f"severities given for suite {suite!r}, which is not in suites {suites}")
    plan: dict[str, dict[str, list]] = {}
    for suite in suites:
        wanted = severities.get(suite)
        if wanted is None:
            plan[suite] = {name: list(values) for name, values in SUITES[suite].items()}
        elif isinstance(wanted, Mapping):
            if not wanted:
                raise ValueError(f"severities for suite {suite!r} name no corruption")
            for name in wanted:
                check(suite, name)
            plan[suite] = {name: _severity_list(suite, name, values, False) for name, values in wanted.items()}
        else:
            plan[suite] = {name: _severity_list(suite, name, wanted, True) for name in SUITES[suite]}
    return plan
