"""The evaluated runs of a profile: who each run is (from its run_config and folder name), which runs
the collapse guard excluded, and their ``eval/`` tables side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from edgekd.core import metrics as M
from edgekd.core.config import init_label
from edgekd.core.info import ARCH_LABELS, LESION_MARK
from edgekd.core.words import setting_words
from edgekd.stages.evaluate import model_name


def model_label(role: str, arch: str, words: str, split: str) -> str:
    """Human name of a model: ``ResNet-50 teacher``, ``ResNet-18 · no KD``, ``ResNet-18 · DKD (lesion split)``
    (``words``: :func:`setting_words` for a student, empty for a teacher)."""
    name = ARCH_LABELS.get(arch, arch)
    text = f"{name} teacher" if role == "teacher" else f"{name} · {words}"
    return text + (" (lesion split)" if split == LESION_MARK else "")


def run_identity(run: Path) -> dict:
    """Who a run is, from ``run_config.json`` (arch, seed, KD mode, split) and ``metrics.json`` (collapse),
    with the KD setting name taken from the folder (``student-<arch>-<setting>[-lesion]-s<seed>``)."""
    run = Path(run)
    cfg = json.loads((run / "run_config.json").read_text())
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    arch, seed = cfg["arch"], int(cfg["seed"])
    split = cfg["data"].get("split", "official")
    kd = cfg.get("kd")
    role = "student" if kd else "teacher"
    stem, suffix = f"{role}-{arch}", f"-s{seed}"
    if not (run.name.startswith(stem) and run.name.endswith(suffix)):
        raise ValueError(f"{run.name}: folder name does not match its run_config ({role}, {arch}, seed {seed})")
    parts = [p for p in run.name[len(stem) : len(run.name) - len(suffix)].split("-") if p]
    if split == LESION_MARK:
        if parts[-1:] != [LESION_MARK]:
            raise ValueError(f"{run.name}: a lesion-split run's folder needs '-{LESION_MARK}' before '{suffix}'")
        parts = parts[:-1]
    setting = "-".join(parts)
    if role == "student" and not setting:
        raise ValueError(f"{run.name}: a student folder names its KD setting (student-<arch>-<setting>-s<seed>)")
    collapsed = metrics.get("collapsed") or None
    return {
        "run_id": run.name, "model": model_name(run.name),
        "label": model_label(role, arch, setting_words(setting, kd, cfg["train"].get("epochs")), split),
        "role": role, "arch": arch, "setting": setting, "seed": seed, "split": split,
        "size": int(cfg["data"]["size"]), "kd_mode": (kd or {}).get("mode", "teacher"), "standardize": bool((kd or {}).get("standardize", False)),
        "tta_views": int(metrics.get("tta_views", 1)), "collapsed": collapsed, "valid": collapsed is None,
        "init": init_label(cfg["train"].get("pretrained")), "val_macro_f1": val_macro_f1(run), "path": run,
    }


def val_macro_f1(run: Path) -> float:
    """Macro-F1 of the run's validation predictions (``predictions.npz``): what every selection is made on."""
    with np.load(Path(run) / "predictions.npz") as z:
        return M.macro_f1(z["val_labels"], z["val_logits"].argmax(1))


def evaluated(profile_dir: Path) -> list[Path]:
    """The run folders of a profile that the evaluate stage finished (only those are aggregated)."""
    return [p.parent for p in sorted(Path(profile_dir).glob("*/run_config.json"))
            if (p.parent / "eval" / "metrics.csv").exists()]


def discover(profile_dir: Path) -> pd.DataFrame:
    """Evaluated runs of a profile, one row per run (:func:`run_identity`), teachers first."""
    rows = [run_identity(run) for run in evaluated(profile_dir)]
    if not rows:
        raise FileNotFoundError(f"no evaluated runs under {profile_dir} (run the evaluate stage first)")
    runs = distinct_labels(pd.DataFrame(rows))
    rank = {"role": {"teacher": 0, "student": 1}, "split": {LESION_MARK: 1}}
    return runs.sort_values(["split", "role", "arch", "setting", "seed"],
                            key=lambda col: col.map(rank[col.name]).fillna(0) if col.name in rank else col
                            ).reset_index(drop=True)


def distinct_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Names that tell models apart: where two models would share one (the same KD loss at two input sizes), each
    adds its input size, and where that is not enough its KD setting's label."""
    for extra in (lambda r: f", {r['size']} px", lambda r: f" ({r['setting']})"):
        shared = runs.groupby("label")["model"].transform("nunique") > 1
        if not shared.any():
            break
        runs.loc[shared, "label"] = [r["label"] + extra(r) for _, r in runs[shared].iterrows()]
    return runs


def excluded_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs flagged by the collapse guard, with their reason."""
    bad = runs[~runs["valid"]]
    return bad[["run_id", "label", "seed", "collapsed"]].rename(columns={"collapsed": "reason"}).reset_index(drop=True)


def having(runs: pd.DataFrame, relative: str) -> pd.DataFrame:
    """The runs whose folder holds ``relative`` (a stage output some runs lack)."""
    return runs[[(Path(p) / relative).exists() for p in runs["path"]]]


def eval_table(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """``eval/<name>.csv`` of every run, with the run's identity columns (those the table lacks)."""
    ident = ("run_id", "model", "label", "role", "arch", "setting", "split", "seed")
    frames = []
    for r in runs.itertuples():
        df = pd.read_csv(r.path / "eval" / f"{name}.csv")
        frames.append(df.assign(**{k: getattr(r, k) for k in ident if k not in df.columns}))
    return pd.concat(frames, ignore_index=True)
