"""KD settings in words, for what a reader meets: model names in every table and figure, and the paper's
descriptions of a setting. A reader never meets a profile's label (``kd``, ``lskd``, ``nokd_eq``)."""

from __future__ import annotations

from collections.abc import Mapping

#: The no-distillation setting every KD setting is paired with.
BASELINE: str = "nokd"
#: A KD loss in words, as a model's name shows it.
KD_NAMES: dict[str, str] = {"hinton": "KD", "dkd": "DKD", "dist": "DIST"}
#: A KD loss in words, where a setting is described with its hyper-parameters.
KD_LOSS_NAMES: dict[str, str] = {"none": "no KD", "hinton": "Hinton", "dkd": "DKD", "dist": "DIST"}


def setting_words(setting: str, kd: Mapping | None, epochs: int | None = None) -> str:
    """A student's KD setting in words, for its name: "no KD", "KD", "logit-standardised KD", "KD + attention
    transfer", "DKD", "DIST"; a setting that trains alone but is not the baseline says its ``epochs`` ("no KD,
    14 epochs", the equal-compute control)."""
    mode = (kd or {}).get("mode", "none")
    if mode == "none":
        return "no KD" if setting == BASELINE or epochs is None else f"no KD, {epochs} epochs"
    words = KD_NAMES.get(mode, mode)
    if kd.get("standardize"):
        words = f"logit-standardised {words}"
    if kd.get("beta"):
        words += " + attention transfer"
    return words


def kd_setting_words(kd: Mapping) -> str:
    """A KD setting with the hyper-parameters that distinguish it ("Hinton, T 2, α 0.5, standardised logits")."""
    mode = kd["mode"]
    if mode == "none":
        return "no KD"
    words = f"{KD_LOSS_NAMES.get(mode, mode)}, T {kd['temperature']:g}" + (f", α {kd['alpha']:g}" if mode == "hinton" else "")
    if kd.get("standardize"):
        words += ", standardised logits"
    if kd.get("beta"):
        words += f", attention transfer β {kd['beta']:g}"
    return words
