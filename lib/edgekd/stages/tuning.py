"""The KD pilot's table and its pre-declared choice, on validation only (``paper/analysis_plan.md``, "KD pilot").

A pilot profile trains one student architecture and seed under many KD settings beside its no-KD twin
(``params/kd_tuning.yaml``). :func:`pilot_table` reads each finished student's validation macro-F1 from its saved
validation predictions (the number every selection in the project is made on) and never a test number;
:func:`choose` applies the plan's rule to it. Both are plain functions of the run folders, so the rule is tested
on synthetic runs before the pilot's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from edgekd.core import calibration as C
from edgekd.core import metrics as M
from edgekd.core.stats import SESOI
from edgekd.core.words import BASELINE
from edgekd.stages.runs import run_identity

#: The KD setting the main job ran before the pilot (Hinton, alpha 0.5, T 4): kept unless another beats it by MARGIN.
CURRENT: dict = {"mode": "hinton", "alpha": 0.5, "temperature": 4.0, "beta": 0.0, "standardize": False}
#: How far a setting must beat another on validation to replace it: half the smallest effect of interest, since
#: one seed's validation macro-F1 moves by about that much between seeds.
MARGIN: float = SESOI / 2
#: Methods the main table runs whatever the pilot says (the issue's ">= 3 KD methods"), beside the chosen Hinton.
ALWAYS: tuple[str, ...] = ("dkd", "dist")


def pilot_table(profile_dir: str | Path) -> pd.DataFrame:
    """One row per finished student of the pilot: its KD setting and hyper-parameters, validation accuracy and
    macro-F1, the difference to the no-KD student of the same architecture and seed, the best epoch and whether
    the collapse guard flagged it. Raises FileNotFoundError when no student has finished, ValueError without the
    no-KD twin (every row is read against it)."""
    rows = []
    for cfg_path in sorted(Path(profile_dir).glob("student-*/run_config.json")):
        run = cfg_path.parent
        if not (run / "metrics.json").is_file():
            continue  # unfinished
        ident = run_identity(run)
        kd = json.loads(cfg_path.read_text())["kd"]
        metrics = json.loads((run / "metrics.json").read_text())
        with np.load(run / "predictions.npz") as z:
            y, pred = z["val_labels"], z["val_logits"].argmax(1)
        rows.append({"setting": ident["setting"], "arch": ident["arch"], "seed": ident["seed"], "mode": kd["mode"],
                     "temperature": kd["temperature"], "alpha": kd["alpha"], "beta": kd["beta"],
                     "standardize": bool(kd.get("standardize", False)), "val_acc": M.accuracy(y, pred),
                     "val_macro_f1": M.macro_f1(y, pred), "best_epoch": int(metrics["best_epoch"]),
                     "collapsed": metrics.get("collapsed") or None})
    if not rows:
        raise FileNotFoundError(f"no finished student under {profile_dir}")
    table = pd.DataFrame(rows)
    base = table[table["setting"] == BASELINE].set_index(["arch", "seed"])["val_macro_f1"]
    missing = sorted({(a, s) for a, s in zip(table["arch"], table["seed"], strict=True)} - set(base.index))
    if missing:
        raise ValueError(f"no finished no-KD student ({BASELINE!r}) for {missing}: every KD setting is read against it")
    table["delta_vs_nokd"] = [f1 - base[(a, s)] for a, s, f1 in table[["arch", "seed", "val_macro_f1"]].itertuples(index=False)]
    return table.sort_values(["mode", "standardize", "beta", "temperature", "alpha"]).reset_index(drop=True)


def _is_current(row: pd.Series) -> bool:
    return all(row[k] == v for k, v in CURRENT.items())


def choose(table: pd.DataFrame) -> dict:
    """The plan's rule: the Hinton setting (no attention transfer, no standardisation) with the best validation
    macro-F1 replaces the current one (``CURRENT``) only if it beats it by at least ``MARGIN``; DKD and DIST join
    the main table at their papers' defaults whatever their score; logit standardisation and attention transfer
    join only if they beat the chosen Hinton setting by ``MARGIN``. A collapsed run is never chosen (it is a bug
    to find, and the table flags it). Returns the chosen names and one line of reason per decision."""
    valid = table[table["collapsed"].isna()]
    grid = valid[(valid["mode"] == "hinton") & (valid["beta"] == 0) & ~valid["standardize"]]
    current = grid[grid.apply(_is_current, axis=1)]
    if current.empty:
        raise ValueError("the pilot has no finished, uncollapsed run of the current Hinton setting "
                         f"{CURRENT}: nothing to compare the grid with")
    now = current.iloc[0]
    best = grid.loc[grid["val_macro_f1"].idxmax()]
    gain = best["val_macro_f1"] - now["val_macro_f1"]
    hinton = best if gain >= MARGIN else now
    reasons = [f"Hinton: {best['setting']} is best on validation ({best['val_macro_f1']:.3f}), "
               + (f"{gain:+.3f} over the current {now['setting']}: at least {MARGIN:.2f}, so it replaces it"
                  if gain >= MARGIN else
                  f"{gain:+.3f} over the current {now['setting']} ({now['val_macro_f1']:.3f}): under {MARGIN:.2f}, "
                  f"so the current setting stays")]
    chosen = [hinton["setting"]]
    for mode in ALWAYS:
        runs = valid[valid["mode"] == mode]
        if runs.empty:
            reasons.append(f"{mode}: no finished, uncollapsed run in the pilot; it runs at its paper's defaults")
            continue
        chosen.append(runs.iloc[0]["setting"])
        reasons.append(f"{runs.iloc[0]['setting']}: runs in the main table whatever the pilot says "
                       f"(validation {runs.iloc[0]['val_macro_f1']:.3f})")
    extras = valid[(valid["mode"] == "hinton") & ((valid["beta"] > 0) | valid["standardize"])]
    for _, row in extras.iterrows():
        over = row["val_macro_f1"] - hinton["val_macro_f1"]
        joins = over >= MARGIN
        chosen += [row["setting"]] if joins else []
        reasons.append(f"{row['setting']}: {over:+.3f} against the chosen Hinton setting, "
                       + ("at least" if joins else "under") + f" {MARGIN:.2f}: " + ("joins" if joins else "left out"))
    return {"hinton": hinton["setting"], "temperature": float(hinton["temperature"]), "alpha": float(hinton["alpha"]),
            "main_table": chosen, "reasons": reasons,
            "excluded": table.loc[table["collapsed"].notna(), "setting"].tolist()}


def teacher_softness(logits: np.ndarray, temperatures: list[float]) -> pd.DataFrame:
    """How soft a teacher's targets are at each temperature: the mean top-class probability and the mean entropy
    (in nats, and as a share of ``log C``, the uniform distribution's) of ``softmax(logits / T)`` over every view
    and image of its logit cache (``logits``: views x images x classes, or images x classes). A stronger teacher is
    more confident at the same T; the capacity-gap explanations (Cho & Hariharan 2019) turn on this number."""
    flat = np.asarray(logits, dtype=float).reshape(-1, np.shape(logits)[-1])
    rows = []
    for t in temperatures:
        probs = C.apply_temperature(flat, t)
        entropy = stats.entropy(probs, axis=1)
        rows.append({"temperature": float(t), "mean_top_prob": float(probs.max(1).mean()),
                     "mean_entropy_nats": float(entropy.mean()),
                     "entropy_share": float(entropy.mean() / np.log(flat.shape[1])), "n": len(flat)})
    return pd.DataFrame(rows)
