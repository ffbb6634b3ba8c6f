"""KD settings and test sets in words, for what a reader meets: model names in every table and figure, and the paper's
descriptions of a setting. A reader never meets a profile's label (``kd``, ``lskd``, ``nokd_eq``) or folder name."""

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


def kd_weights(kd: Mapping) -> str:
    """Every weight of a KD setting that its mode uses ("α 0.5, T 4, DKD α 1, DKD β 8"), for the KD-mode ablation's
    table; "—" without KD."""
    mode = kd["mode"]
    if mode == "none":
        return "—"
    parts = [f"α {kd['alpha']:g}"]
    if mode == "hinton":
        parts.append(f"T {kd['temperature']:g}")
    elif mode == "dkd":
        parts += [f"T {kd['temperature']:g}", f"DKD α {kd['dkd_alpha']:g}", f"DKD β {kd['dkd_beta']:g}"]
    elif mode == "dist":
        parts += [f"T {kd['temperature']:g}", f"DIST β {kd['dist_beta']:g}", f"γ {kd['dist_gamma']:g}"]
    if kd.get("beta"):
        parts.append(f"attention transfer β {kd['beta']:g}")
    if kd.get("standardize"):
        parts.append("logits standardised")
    return ", ".join(parts)


#: The test sets in words, for the figures and the paper (a profile names an external set by its folder).
TEST_SET_NAMES: dict[str, str] = {"in-distribution": "official test split", "isic2018_test_half": "ISIC 2018 test, 759 images"}
