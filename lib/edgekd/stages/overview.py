"""What the data stage shows: class counts, the lesion-leakage report and a montage of each class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from edgekd.core import info
from edgekd.stages import data as D


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
