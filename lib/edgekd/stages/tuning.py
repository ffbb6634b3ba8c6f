"""The validation pilots of ``paper/analysis_plan.md``: the KD pilot's table and its pre-declared choice, and the
learning-curve pilot's plateau rule. Neither reads a test number.

A pilot profile trains one student architecture and seed under many KD settings beside its no-KD twin
(``params/kd_tuning.yaml``). :func:`pilot_table` reads each finished student's validation macro-F1 from its saved
validation predictions (the number every selection in the project is made on) and never a test number;
:func:`choose` applies the plan's rule to it. The learning-curve profile (``params/learning_curve.yaml``) trains
the from-scratch students for more epochs; :func:`learning_curve` pairs each with the main job's run at its budget.
All are plain functions of the run folders, so the rules are tested on synthetic runs before the pilots' own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from edgekd.core import calibration as C
from edgekd.core import info, provenance
from edgekd.core import metrics as M
from edgekd.core.stats import SESOI
from edgekd.core.words import BASELINE
from edgekd.stages.figures import line_style, model_colour
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


#: What may differ between a learning-curve pilot's run and the budget run it is read against: the epochs, and the
#: folders of its teacher and of the data cache (the teacher itself must be the same network: its ``best.pt``).
CURVE_FREE: tuple[str, ...] = ("epochs", "teacher_dir", "cache_dir")


def recipe(config: dict, free: tuple[str, ...]) -> dict:
    """A run's configuration (``run_config.json``) without the keys ``free``, at its top level and in its sections:
    equal for two runs that pair when only those differ."""
    return {k: ({kk: vv for kk, vv in v.items() if kk not in free} if isinstance(v, dict) else v)
            for k, v in config.items() if k not in free}


def _teacher_weights(config: dict) -> str | None:
    """sha256 of the ``best.pt`` of the teacher a run distilled from (None without one); refuses a teacher folder
    that is gone, since the two runs could then not be shown to share it."""
    if not config.get("teacher_dir"):
        return None
    best = Path(config["teacher_dir"]) / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best} is missing: the run's teacher cannot be compared")
    return provenance.file_digest(best)


def _curve_run(run: Path) -> tuple[dict, pd.DataFrame]:
    """A finished pilot or budget run: its ``run_config.json`` and ``history.csv``; refuses an unfinished one."""
    if not (run / "metrics.json").is_file():
        raise FileNotFoundError(f"{run} is not a finished run (no metrics.json)")
    return json.loads((run / "run_config.json").read_text()), pd.read_csv(run / "history.csv")


def learning_curve(long_dir: str | Path, budget_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The learning-curve pilot read with the plan's rule (``paper/analysis_plan.md``, "The learning-curve pilot").

    Each finished student of ``long_dir`` (trained for more epochs) is paired with the student of the same folder
    name in ``budget_dir`` (the main job's, at its budget); a pair whose runs differ in more than the epochs (or
    distil from teachers with different weights) is refused. Per pair: validation macro-F1 of each run as trained
    (its best epoch, from its saved validation predictions), ``gain`` (long minus budget) and ``plateau_at_budget``
    (gain under :data:`MARGIN`); ``late_rise``, the long run's best validation macro-F1 over its last third of epochs
    minus its best before, and ``flat_by_long`` (under :data:`MARGIN`); each run's best epoch, and the collapse guard's
    flag. Returns that table and the per-epoch validation curves of both runs (``arch, setting, label, seed, epochs,
    epoch, val_macro_f1``)."""
    rows, curves = [], []
    for cfg_path in sorted(Path(long_dir).glob("student-*/run_config.json")):
        long_run = cfg_path.parent
        if not (long_run / "metrics.json").is_file():
            continue  # unfinished
        budget_run = Path(budget_dir) / long_run.name
        (long_cfg, long_hist), (budget_cfg, budget_hist) = _curve_run(long_run), _curve_run(budget_run)
        if (recipe(long_cfg, CURVE_FREE) != recipe(budget_cfg, CURVE_FREE)
                or _teacher_weights(long_cfg) != _teacher_weights(budget_cfg)):
            raise ValueError(f"{long_run} and {budget_run} differ in more than their epochs: they do not pair")
        ident, budget_ident = run_identity(long_run), run_identity(budget_run)
        epochs = {"long": int(long_cfg["train"]["epochs"]), "budget": int(budget_cfg["train"]["epochs"])}
        if epochs["long"] <= epochs["budget"] or len(long_hist) != epochs["long"] or len(budget_hist) != epochs["budget"]:
            raise ValueError(f"{long_run}: {len(long_hist)} epochs of {epochs['long']} against {budget_run}'s "
                             f"{len(budget_hist)} of {epochs['budget']}: not a longer run of the same student")
        f1 = {"long": ident["val_macro_f1"], "budget": budget_ident["val_macro_f1"]}
        split = epochs["long"] - epochs["long"] // 3
        curve = long_hist["val_macro_f1"]
        late_rise = float(curve.iloc[split:].max() - curve.iloc[:split].max())
        rows.append({"arch": ident["arch"], "setting": ident["setting"], "label": ident["label"], "seed": ident["seed"],
                     "budget_epochs": epochs["budget"], "long_epochs": epochs["long"],
                     "val_budget": f1["budget"], "val_long": f1["long"], "gain": f1["long"] - f1["budget"],
                     "plateau_at_budget": f1["long"] - f1["budget"] < MARGIN, "late_rise": late_rise,
                     "flat_by_long": late_rise < MARGIN,
                     "best_epoch_budget": int(budget_hist["val_macro_f1"].idxmax()) + 1,
                     "best_epoch_long": int(curve.idxmax()) + 1,
                     "collapsed": budget_ident["collapsed"] or ident["collapsed"]})
        for which, hist in (("budget", budget_hist), ("long", long_hist)):
            curves.append(pd.DataFrame({"arch": ident["arch"], "setting": ident["setting"], "label": ident["label"],
                                        "seed": ident["seed"],
                                        "epochs": epochs[which], "epoch": hist["epoch"],
                                        "val_macro_f1": hist["val_macro_f1"]}))
    if not rows:
        raise FileNotFoundError(f"no finished student under {long_dir}")
    return (pd.DataFrame(rows).sort_values(["arch", "setting", "seed"], ignore_index=True),
            pd.concat(curves, ignore_index=True))


def kd_by_budget(table: pd.DataFrame) -> pd.DataFrame:
    """From :func:`learning_curve`'s table: per architecture and seed, validation macro-F1 with KD minus without at the
    budget and at the longer run, and the change (descriptive: one seed, no test). Architectures without both a KD and
    a no-KD pair are left out."""
    rows = []
    for (arch, seed), g in table.groupby(["arch", "seed"], sort=True):
        by = g.set_index("setting")
        if BASELINE not in by.index:
            continue
        for setting in by.index.drop(BASELINE):
            at = {w: by.loc[setting, f"val_{w}"] - by.loc[BASELINE, f"val_{w}"] for w in ("budget", "long")}
            rows.append({"arch": arch, "setting": setting, "seed": seed,
                         "budget_epochs": int(by.loc[setting, "budget_epochs"]),
                         "long_epochs": int(by.loc[setting, "long_epochs"]), "kd_minus_nokd_budget": at["budget"],
                         "kd_minus_nokd_long": at["long"], "change": at["long"] - at["budget"]})
    return pd.DataFrame(rows, columns=["arch", "setting", "seed", "budget_epochs", "long_epochs",
                                       "kd_minus_nokd_budget", "kd_minus_nokd_long", "change"])


def learning_curve_figure(curves: pd.DataFrame) -> Figure:
    """Validation macro-F1 per epoch of :func:`learning_curve`'s runs, one panel per architecture: the longer runs as
    lines in each model's colour and pattern (:func:`edgekd.stages.figures.line_style`), the budget runs as thin lines
    with markers in the same colour, so that the epoch where the budget ends reads off the panel."""
    archs = [a for a in info.ARCH_LABELS if a in set(curves["arch"])]
    fig = Figure(figsize=(10, 2.8), layout="constrained")
    axes = fig.subplots(1, len(archs), sharey=True, squeeze=False)[0]
    for ax, arch in zip(axes, archs, strict=True):
        panel = curves[curves["arch"] == arch]
        for (label, epochs), c in panel.groupby(["label", "epochs"], sort=True):
            words = label.partition(" · ")[2]
            style = line_style(label) if epochs == panel["epochs"].max() else {"color": model_colour(label), "marker": "o", "markersize": 3,
                                                      "linewidth": 0.8}
            ax.plot(c["epoch"], c["val_macro_f1"], label=f"{words}, {epochs} epochs", **style)
        ax.set(title=info.ARCH_LABELS[arch], xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, frameon=False, loc="lower right")
    axes[0].set_ylabel("validation macro-F1")
    return fig
