"""The operating points a deployed model applies, fitted on validation only: its temperature, the melanoma threshold
for a target sensitivity and the abstention threshold for a target coverage, and what they give on a labelled set.

The bundle (:mod:`edgekd.stages.export`) writes them into the model's metadata and the external-set evaluation
(:mod:`edgekd.stages.external`) scores outside images at them; both read them from here, so that neither depends on
the other's code.
"""

from __future__ import annotations

import math

import numpy as np

from edgekd.core import calibration as C
from edgekd.core import metrics as M
from edgekd.core.config import COVERAGE
from edgekd.stages import evaluate as V


def abstain_threshold(confidence: np.ndarray, coverage: float = COVERAGE) -> float:
    """Largest threshold t such that at least ``coverage`` of ``confidence`` is >= t (keep if max prob >= t)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    ranked = np.sort(np.asarray(confidence, dtype=float))[::-1]
    return float(ranked[math.ceil(coverage * len(ranked) - 1e-9) - 1])


def fit_deployment(logits_val: np.ndarray, y_val: np.ndarray, coverage: float = COVERAGE) -> dict[str, float]:
    """Temperature, melanoma threshold and abstention threshold fitted on validation logits.

    The temperature minimises validation NLL (:func:`edgekd.core.calibration.fit_temperature`); both thresholds
    act on the temperature-scaled probabilities: melanoma is flagged when p_mel >= ``melanoma_threshold``
    (validation sensitivity >= :data:`edgekd.stages.evaluate.TARGET_SENSITIVITY`), an image is abstained on when
    its max probability < ``abstain_threshold`` (validation coverage >= ``coverage``).
    """
    T = C.fit_temperature(logits_val, y_val)
    probs = C.apply_temperature(logits_val, T)
    return {"temperature": T,
            "melanoma_threshold": M.melanoma_threshold(y_val, probs, V.TARGET_SENSITIVITY),
            "target_sensitivity": V.TARGET_SENSITIVITY,
            "abstain_threshold": abstain_threshold(probs.max(1), coverage),
            "coverage": coverage}


def operating_report(y: np.ndarray, probs: np.ndarray, fitted: dict[str, float]) -> dict[str, float]:
    """Melanoma sensitivity / specificity and coverage / selective accuracy of calibrated ``probs`` at ``fitted``."""
    screen = M.screening_report(y, probs, fitted["melanoma_threshold"])
    kept = probs.max(1) >= fitted["abstain_threshold"]
    return {"mel_sensitivity": screen["sensitivity"], "mel_specificity": screen["specificity"],
            "coverage": float(kept.mean()),
            "selective_accuracy": M.accuracy(y[kept], probs[kept].argmax(1)) if kept.any() else float("nan")}
