"""Figures and tables shared by the notebooks and the paper (no pyplot state; Figures are returned)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from edgekd import data as D
from edgekd import info


def montage(arrays: D.DermaArrays, per_class: int = 6, split: str = "train", seed: int = 0) -> Figure:
    """A grid of ``per_class`` random images of each class from ``split``."""
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(per_class * 1.1, info.NUM_CLASSES * 1.15))
    axes = fig.subplots(info.NUM_CLASSES, per_class, squeeze=False)
    for c, name in enumerate(info.CLASS_NAMES):
        idx = np.flatnonzero(arrays.labels[split] == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for j, ax in enumerate(axes[c]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(pick):
                ax.imshow(arrays.images[split][pick[j]])
        axes[c][0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle(f"DermaMNIST {split} images at {arrays.size} px")
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame, title: str = "") -> Figure:
    """Training loss and validation accuracy / macro-F1 per epoch."""
    fig = Figure(figsize=(9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(history["epoch"], history["train_loss"], marker="o", label="train loss")
    ax1.plot(history["epoch"], history["val_loss"], marker="o", label="val CE")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax2.plot(history["epoch"], history["val_acc"], marker="o", label="val accuracy")
    ax2.plot(history["epoch"], history["val_macro_f1"], marker="o", label="val macro-F1")
    best = history.loc[history["val_macro_f1"].idxmax()]
    ax2.axvline(best["epoch"], color="grey", ls="--", label=f"best epoch {int(best['epoch'])}")
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def data_summary(cfg: D.DataConfig, arrays: D.DermaArrays, out_dir: Path) -> dict:
    """Counts, leakage report (when lesion ids are known) and a montage, written to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = arrays.counts()
    counts["total"] = counts.sum(axis=1)
    counts.to_csv(out_dir / "counts.csv", index_label="split")
    result: dict = {"counts": counts}
    if arrays.lesion_ids:
        leakage = D.leakage_report(D.split_table(arrays))
        leakage.to_csv(out_dir / "leakage.csv", index=False)
        result["leakage"] = leakage
    fig = montage(arrays)
    fig.savefig(out_dir / "montage.png", dpi=110)
    result["montage"] = fig
    return result
