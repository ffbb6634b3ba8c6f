"""DermaMNIST arrays: online through ``medmnist``, offline from raw HAM10000, validated.

The npz layout is MedMNIST's: ``{split}_images`` (N, S, S, 3) uint8 and ``{split}_labels`` (N, 1).
Offline arrays follow DermaMNIST's recipe: centre square crop of the frame, then resize.
"""

from __future__ import annotations

import functools
import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from edgekd import info
from edgekd.config import check_fields
from edgekd.files import atomic_write
from edgekd.preprocess import centre_square_resize, check_images, to_input  # noqa: F401  (re-exported)

SOURCES: tuple[str, ...] = ("raw", "medmnist", "npz")
SPLIT_MODES: tuple[str, ...] = ("official", "lesion")
AUGMENTS: tuple[str, ...] = ("none", "flip", "dihedral")
#: Number of distinct views each augmentation produces (dihedral group D4 = 8).
AUGMENT_VIEWS: dict[str, int] = {"none": 1, "flip": 2, "dihedral": 8}
SPLIT_COLUMNS: tuple[str, ...] = ("split", "index", "image_id", "lesion_id", "label", "dx")


class DataError(ValueError):
    """Raised when data on disk is missing, corrupt or inconsistent."""


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


def check_size(size: int) -> int:
    """Return ``size`` if DermaMNIST publishes it, else raise."""
    if size not in info.SIZES:
        raise ValueError(f"image size {size!r} is not one of the DermaMNIST sizes {info.SIZES}")
    return int(size)


def raw_paths(root: str | Path | None) -> dict[str, Path]:
    """Paths of the raw HAM10000 folder's parts; raise ``DataError`` if any is missing."""
    base = Path(root) if root is not None else info.default_data_dir()
    if not base.is_dir():
        raise DataError(
            f"data folder {base} does not exist; pass data_dir or set ${info.DATA_ENV} "
            "to the raw HAM10000 folder (images/, HAM10000_metadata.csv, dermamnist_split.csv)"
        )
    paths = {key: base / name for key, name in info.RAW_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise DataError(f"data folder {base} lacks {', '.join(missing)}")
    return paths


def read_split(root: str | Path | None = None) -> pd.DataFrame:
    """Read and validate ``dermamnist_split.csv`` against the metadata and the image folder."""
    paths = raw_paths(root)
    split = pd.read_csv(paths["split"])
    if tuple(split.columns) != SPLIT_COLUMNS:
        raise DataError(f"{paths['split']} has columns {list(split.columns)}, expected {list(SPLIT_COLUMNS)}")
    meta = pd.read_csv(paths["metadata"]).set_index("image_id")
    problems: list[str] = []
    for name, n in info.SPLIT_SIZES.items():
        idx = np.sort(split.loc[split["split"] == name, "index"].to_numpy())
        if len(idx) != n or not np.array_equal(idx, np.arange(n)):
            problems.append(f"split {name!r} has {len(idx)} rows with indices not 0..{n - 1}")
    if split["image_id"].duplicated().any():
        problems.append(f"{int(split['image_id'].duplicated().sum())} image ids are used more than once")
    unknown = ~split["image_id"].isin(meta.index)
    if unknown.any():
        problems.append(f"{int(unknown.sum())} image ids are not in the metadata, e.g. {split.loc[unknown, 'image_id'].iloc[0]}")
    else:
        dx = meta.loc[split["image_id"], "dx"].to_numpy()
        bad_dx = dx != split["dx"].to_numpy()
        bad_label = np.asarray(info.CLASS_NAMES)[split["label"].clip(0, info.NUM_CLASSES - 1)] != split["dx"].to_numpy()
        bad_lesion = meta.loc[split["image_id"], "lesion_id"].to_numpy() != split["lesion_id"].to_numpy()
        for what, bad in (("dx", bad_dx), ("label", bad_label), ("lesion_id", bad_lesion)):
            if bad.any():
                problems.append(f"{int(bad.sum())} rows disagree with the metadata on {what}")
    files = {p.stem for p in paths["images"].glob("*.jpg")}
    absent = ~split["image_id"].isin(files)
    if absent.any():
        problems.append(f"{int(absent.sum())} images of the split are not in {paths['images']}, e.g. {split.loc[absent, 'image_id'].iloc[0]}")
    if problems:
        raise DataError(f"{paths['split']} does not match the data: " + "; ".join(problems))
    return split.sort_values(["split", "index"]).reset_index(drop=True)


def load_image(path: Path, size: int) -> np.ndarray:
    """One raw image through DermaMNIST's recipe (:func:`edgekd.preprocess.centre_square_resize`)."""
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


def source_fingerprint(root: str | Path | None) -> str:
    """Digest of a raw folder's contents: the split file's and the metadata's bytes, and every image's name and bytes.

    Any replaced or truncated image, or another folder's data, gives another fingerprint; a byte-identical copy
    (a re-download, ``cp`` without ``-p``, a re-mounted share: new mtimes) gives the same one, so it keeps every
    finished stage fresh. Reading the bytes takes about 0.5 s for the 10,015 images (54 MB); the runner asks once
    per stage, so within a process the digest is reused while no file's path, size or mtime has changed (one stat
    per file).
    """
    paths = raw_paths(root)
    files = (paths["split"], paths["metadata"], *sorted(paths["images"].glob("*.jpg")))
    return _content_digest(tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in (f.stat(),)))


@functools.lru_cache(maxsize=8)
def _content_digest(signature: tuple[tuple[str, int, int], ...]) -> str:
    """:func:`source_fingerprint` of the files in ``signature`` (split, metadata, then the sorted images)."""
    (split, _, _), (metadata, _, _), *images = signature
    h = hashlib.sha256()
    for path in (split, metadata):
        h.update(Path(path).read_bytes())
    for path, _, _ in images:
        payload = Path(path).read_bytes()
        h.update(f"{Path(path).name}:{len(payload)}\n".encode() + payload)
    return h.hexdigest()[:16]


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
        import medmnist

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


@dataclass
class DataConfig:
    """Which DermaMNIST arrays a run uses."""

    size: int = 28
    source: str = "raw"
    data_dir: str | None = None
    cache_dir: str | None = None
    split: str = "official"
    split_seed: int = 0
    subset: dict[str, int] | None = None

    def __post_init__(self) -> None:
        check_fields(self, "data config")
        check_size(self.size)
        if self.source not in SOURCES:
            raise ValueError(f"data source {self.source!r} is not one of {SOURCES}")
        if self.split not in SPLIT_MODES:
            raise ValueError(f"split {self.split!r} is not one of {SPLIT_MODES}")
        if self.split_seed < 0:
            raise ValueError(f"data config: split_seed must be >= 0, got {self.split_seed}")
        for name, n in (self.subset or {}).items():
            if name not in info.SPLITS or n < 2:
                raise ValueError(f"subset must map splits {info.SPLITS} to image counts >= 2, got {self.subset}")
            if n > info.SPLIT_SIZES[name]:
                raise ValueError(f"data config: subset.{name} is {n}, more than the {info.SPLIT_SIZES[name]} "
                                 f"images of the {name} split")

    def check_source(self) -> None:
        """Fail fast when the data cannot be found (no download, no decoding)."""
        if self.source == "raw":
            raw_paths(self.data_dir)
        elif self.source == "npz" and not (self.data_dir and Path(self.data_dir).is_file()):
            raise DataError(f"npz file {self.data_dir} does not exist")


def resolution_note(cfg: DataConfig) -> str | None:
    """A warning when ``cfg`` asks for more pixels than the offline source has, else None.

    The raw images here are 200x150 copies of HAM10000's 600x450 frames: the centre square is
    150 px, so 224 px inputs are upsampled and 128 px ones a downsample of 150 px.
    """
    side = min(info.RAW_FRAME)
    if cfg.source == "raw" and cfg.size > side:
        return (f"{cfg.size} px asks for more pixels than the source has: the raw images are {info.RAW_FRAME[0]}x"
                f"{info.RAW_FRAME[1]}, so their {side} px centre square is upsampled to {cfg.size} px")
    return None


def fingerprint(cfg: DataConfig) -> str:
    """What the arrays of ``cfg`` are made from: the raw folder's :func:`source_fingerprint`, an npz
    file's size and mtime, or the official npz (which ``medmnist`` checks by md5)."""
    if cfg.source == "raw":
        return source_fingerprint(cfg.data_dir)
    if cfg.source == "npz":
        st = Path(cfg.data_dir).stat()
        return hashlib.sha256(f"{Path(cfg.data_dir).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"medmnist-{cfg.size}"


def load(cfg: DataConfig) -> DermaArrays:
    """The arrays ``cfg`` describes: source, split mode, then subset."""
    arrays = get_dermamnist(cfg.size, cfg.source, cfg.data_dir, cfg.cache_dir)
    if cfg.split == "lesion":
        arrays = lesion_grouped_split(arrays, cfg.split_seed)
    return subset(arrays, cfg.subset, seed=cfg.split_seed) if cfg.subset else arrays


def lesion_grouped_split(arrays: DermaArrays, seed: int = 0) -> DermaArrays:
    """Re-split all images so that no lesion has images in two splits (stratified by class)."""
    from sklearn.model_selection import StratifiedGroupKFold

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
    from sklearn.model_selection import train_test_split

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


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC images -> float32 NCHW tensor (:func:`edgekd.preprocess.to_input`)."""
    return torch.from_numpy(to_input(np.asarray(images)))


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


def dihedral(x: torch.Tensor, view: int) -> torch.Tensor:
    """View ``view`` in 0..7 of the dihedral group on NCHW ``x``: rotate by 90°·(view % 4), then flip if view >= 4."""
    out = torch.rot90(x, view % 4, dims=(2, 3))
    return torch.flip(out, dims=(3,)) if view >= 4 else out


def apply_views(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample dihedral view to a batch (views: int tensor of len N)."""
    out = torch.empty_like(x)
    for v in views.unique().tolist():
        m = views == v
        out[m] = dihedral(x[m], int(v))
    return out


def random_resized_crop(x: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image random-resized crop of NCHW ``x`` back to its size (bilinear, one ``grid_sample``).

    Each crop covers an area fraction drawn from U(min_scale, 1) with a log-uniform aspect ratio in
    [3/4, 4/3] (sides capped at the image), at a uniform position inside the image.
    """
    n = len(x)
    area = min_scale + (1.0 - min_scale) * torch.rand(n, generator=generator)
    log_r = (torch.rand(n, generator=generator) * 2 - 1) * np.log(4 / 3)
    w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
    h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = torch.nn.functional.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors from U(1 - strength, 1 + strength).

    ``x`` is normalised (ImageNet statistics); the jitter acts on the [0, 1] image and is clipped there.
    """
    n = len(x)
    mean = torch.tensor(info.MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(info.STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    b, c, s = (1 + (torch.rand(3, n, 1, 1, 1, generator=generator) * 2 - 1) * strength).to(x.device, x.dtype)
    img = (x * std + mean) * b
    img = (img - img.mean((1, 2, 3), keepdim=True)) * c + img.mean((1, 2, 3), keepdim=True)
    grey = (img * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    img = ((img - grey) * s + grey).clamp(0.0, 1.0)
    return (img - mean) / std


def views_of(augment: str) -> list[int]:
    """Dihedral view indices an augmentation draws from ('flip' uses views 0 and 4)."""
    if augment not in AUGMENTS:
        raise ValueError(f"augmentation {augment!r} is not one of {AUGMENTS}")
    return [0, 4] if augment == "flip" else list(range(AUGMENT_VIEWS[augment]))


def sample_views(n: int, augment: str, generator: torch.Generator) -> torch.Tensor:
    """Random view indices for ``n`` images under ``augment`` ('flip' uses views 0 and 4)."""
    if augment not in AUGMENTS:
        raise ValueError(f"augmentation {augment!r} is not one of {AUGMENTS}")
    k = AUGMENT_VIEWS[augment]
    v = torch.randint(0, k, (n,), generator=generator)
    return v * 4 if augment == "flip" else v
