"""DermaMNIST arrays: online through ``medmnist``, offline from raw HAM10000, validated.

The npz layout is MedMNIST's: ``{split}_images`` (N, S, S, 3) uint8 and ``{split}_labels`` (N, 1).
Offline arrays follow DermaMNIST's recipe: centre square crop of the frame, then resize.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import medmnist
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from edgekd.core import info
from edgekd.core.config import SOURCES, DataConfig, check_size
from edgekd.core.files import atomic_write
from edgekd.core.preprocess import centre_square_resize, check_images, to_input  # noqa: F401  (re-exported)
from edgekd.core.source import DataError, raw_paths, read_split, source_fingerprint


@dataclass
class DermaArrays:
    """Images, labels and (when known) lesion ids for each split."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    lesion_ids: dict[str, np.ndarray] = field(default_factory=dict)
    image_ids: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.images["train"].shape[1])

    def counts(self) -> pd.DataFrame:
        """Per-split, per-class image counts."""
        rows = {s: np.bincount(self.labels[s], minlength=info.NUM_CLASSES) for s in info.SPLITS}
        return pd.DataFrame(rows, index=list(info.CLASS_NAMES)).T


def load_image(path: Path, size: int) -> np.ndarray:
    """One raw image through DermaMNIST's recipe (:func:`edgekd.core.preprocess.centre_square_resize`)."""
    try:
        with Image.open(path) as im:
            im.load()
            return centre_square_resize(im, size)
    except (OSError, SyntaxError) as exc:
        raise DataError(f"image {path} is truncated or corrupt: {exc}") from exc


def build_npz(root: str | Path | None, size: int, out: Path) -> Path:
    """Build a MedMNIST-layout npz at ``size`` from raw HAM10000; written atomically, uncompressed
    (it is a cache: loading it then costs a copy, not a decompression)."""
    check_size(size)
    split = read_split(root)
    folder = raw_paths(root)["images"]
    arrays: dict[str, np.ndarray] = {}
    for name in info.SPLITS:
        rows = split[split["split"] == name]
        arrays[f"{name}_images"] = np.stack([load_image(folder / f"{i}.jpg", size) for i in rows["image_id"]])
        arrays[f"{name}_labels"] = rows["label"].to_numpy(dtype=np.uint8)[:, None]
    atomic_write(out, lambda fh: np.savez(fh, **arrays))
    return out


def load_npz(path: str | Path, size: int | None = None) -> DermaArrays:
    """Load and validate a MedMNIST-layout DermaMNIST npz."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    try:
        with np.load(path) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"npz file {path} is truncated or corrupt: {exc}") from exc
    images, labels = {}, {}
    for name, n in info.SPLIT_SIZES.items():
        x, y = raw.get(f"{name}_images"), raw.get(f"{name}_labels")
        if x is None or y is None:
            raise DataError(f"npz file {path} lacks {name}_images or {name}_labels")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[0] != n or x.shape[3] != 3 or x.shape[1] != x.shape[2]:
            raise DataError(f"npz file {path}: {name}_images has shape {x.shape} {x.dtype}, expected ({n}, S, S, 3) uint8")
        if size is not None and x.shape[1] != size:
            raise DataError(f"npz file {path} holds {x.shape[1]} px images, expected {size} px")
        y = y.reshape(-1).astype(np.int64)
        if len(y) != n or y.min() < 0 or y.max() >= info.NUM_CLASSES:
            raise DataError(f"npz file {path}: {name}_labels are not {n} labels in 0..{info.NUM_CLASSES - 1}")
        images[name], labels[name] = x, y
    return DermaArrays(images, labels)


def cache_path(size: int, fingerprint: str, cache_dir: str | Path | None = None) -> Path:
    """Where the offline build of DermaMNIST at ``size`` from the source with ``fingerprint`` is cached."""
    base = Path(cache_dir) if cache_dir is not None else info.outputs_dir() / "cache"
    return base / f"dermamnist_{size}_{fingerprint}.npz"


def get_dermamnist(
    size: int,
    source: str = "raw",
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> DermaArrays:
    """DermaMNIST at ``size`` from ``source`` ('raw' folder, 'medmnist' download, or an 'npz' file)."""
    check_size(size)
    if source not in SOURCES:
        raise ValueError(f"data source {source!r} is not one of {SOURCES}")
    if source == "medmnist":
        root = Path(data_dir) if data_dir is not None else Path.home() / ".medmnist"
        root.mkdir(parents=True, exist_ok=True)
        medmnist.DermaMNIST(split="train", size=size, root=str(root), download=True)
        suffix = "" if size == 28 else f"_{size}"
        return load_npz(root / f"dermamnist{suffix}.npz", size)
    if source == "npz":
        if data_dir is None:
            raise ValueError("source 'npz' needs data_dir to name the npz file")
        return load_npz(data_dir, size)
    split = read_split(data_dir)
    path = cache_path(size, source_fingerprint(data_dir), cache_dir)
    if not path.exists():
        build_npz(data_dir, size, path)
    arrays = load_npz(path, size)
    for name in info.SPLITS:
        rows = split[split["split"] == name]
        if not np.array_equal(rows["label"].to_numpy(), arrays.labels[name]):
            raise DataError(f"cached {path} disagrees with the split file on {name} labels; delete it to rebuild")
        arrays.lesion_ids[name] = rows["lesion_id"].to_numpy()
        arrays.image_ids[name] = rows["image_id"].to_numpy()
    return arrays


def load(cfg: DataConfig) -> DermaArrays:
    """The arrays ``cfg`` describes: source, split mode, then subset."""
    arrays = get_dermamnist(cfg.size, cfg.source, cfg.data_dir, cfg.cache_dir)
    if cfg.split == "lesion":
        arrays = lesion_grouped_split(arrays, cfg.split_seed)
    return subset(arrays, cfg.subset, seed=cfg.split_seed) if cfg.subset else arrays


def lesion_grouped_split(arrays: DermaArrays, seed: int = 0) -> DermaArrays:
    """Re-split all images so that no lesion has images in two splits (stratified by class)."""
    if not arrays.lesion_ids:
        raise DataError("a lesion-grouped split needs lesion ids: use source 'raw' with dermamnist_split.csv")
    x = np.concatenate([arrays.images[s] for s in info.SPLITS])
    y = np.concatenate([arrays.labels[s] for s in info.SPLITS])
    groups = np.concatenate([arrays.lesion_ids[s] for s in info.SPLITS])
    ids = np.concatenate([arrays.image_ids[s] for s in info.SPLITS])
    # 10 folds: 7 train, 1 val, 2 test, matching the official 70/10/20 proportions.
    folds = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
    fold_of = np.empty(len(y), dtype=int)
    for k, (_, test_idx) in enumerate(folds.split(x[:, :1, :1, 0], y, groups)):
        fold_of[test_idx] = k
    parts = {"train": fold_of < 7, "val": fold_of == 7, "test": fold_of >= 8}
    return DermaArrays(
        images={s: x[m] for s, m in parts.items()},
        labels={s: y[m] for s, m in parts.items()},
        lesion_ids={s: groups[m] for s, m in parts.items()},
        image_ids={s: ids[m] for s, m in parts.items()},
    )


def split_table(arrays: DermaArrays) -> pd.DataFrame:
    """One row per image: split, image_id, lesion_id, label (needs lesion ids)."""
    if not arrays.lesion_ids:
        raise DataError("lesion ids are unknown for this source: use source 'raw' with dermamnist_split.csv")
    return pd.concat(
        pd.DataFrame({"split": s, "image_id": arrays.image_ids[s], "lesion_id": arrays.lesion_ids[s], "label": arrays.labels[s]})
        for s in info.SPLITS
    ).reset_index(drop=True)


def leakage_report(split: pd.DataFrame) -> pd.DataFrame:
    """Lesions whose images fall in more than one split: one row per split pair, plus 'any'."""
    sets = {s: set(split.loc[split["split"] == s, "lesion_id"]) for s in info.SPLITS}
    rows = []
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sets[a] & sets[b]
        images = split[split["lesion_id"].isin(shared) & split["split"].isin((a, b))]
        rows.append({"splits": f"{a}-{b}", "lesions": len(shared), "images": len(images)})
    per_lesion = split.groupby("lesion_id")["split"].nunique()
    crossing = per_lesion[per_lesion > 1].index
    rows.append({
        "splits": "any",
        "lesions": len(crossing),
        "images": int(split["lesion_id"].isin(crossing).sum()),
    })
    report = pd.DataFrame(rows)
    report["total_lesions"] = split["lesion_id"].nunique()
    return report


def subset(arrays: DermaArrays, sizes: dict[str, int], seed: int = 0) -> DermaArrays:
    """A class-stratified subset with ``sizes[split]`` images per split (for smoke runs)."""
    out = DermaArrays({}, {}, {}, {})
    for name in info.SPLITS:
        n_all = len(arrays.labels[name])
        n = min(int(sizes.get(name, n_all)), n_all)
        idx = np.arange(n_all)
        if n < n_all:
            idx, _ = train_test_split(idx, train_size=n, stratify=arrays.labels[name], random_state=seed)
            idx = np.sort(idx)
        out.images[name], out.labels[name] = arrays.images[name][idx], arrays.labels[name][idx]
        for attr in ("lesion_ids", "image_ids"):
            src = getattr(arrays, attr)
            if name in src:
                getattr(out, attr)[name] = src[name][idx]
    return out


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic class-stratified subset of ``n`` of ``labels``.

    Classes get images in proportion to their counts (largest remainders); when ``n`` is at least
    the number of classes, a class left empty takes one image from the largest share. All images
    when ``n >= len(labels)``.
    """
    labels = np.asarray(labels).reshape(-1)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota, kind="stable")[: n - take.sum()]] += 1
    if n >= len(classes):
        for empty in np.flatnonzero(take == 0):
            take[np.argmax(take)] -= 1
            take[empty] = 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(chosen))
