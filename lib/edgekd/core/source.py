"""Where the images come from, without decoding them (no torch): the raw HAM10000 folder's parts, its
official DermaMNIST split file validated against the metadata, and the fingerprint that says whether
a run's data changed (the runner's ``data`` digest)."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from edgekd.core import info
from edgekd.core.config import DataConfig

SPLIT_COLUMNS: tuple[str, ...] = ("split", "index", "image_id", "lesion_id", "label", "dx")


class DataError(ValueError):
    """Raised when data on disk is missing, corrupt or inconsistent."""


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


def source_fingerprint(root: str | Path | None) -> str:
    """Digest of a raw folder's contents: the split file's and the metadata's bytes, and every image's name and bytes.

    Any replaced or truncated image, or another folder's data, gives another fingerprint; a byte-identical copy
    (a re-download, ``cp`` without ``-p``, a re-mounted share: new mtimes) gives the same one, so it keeps every
    finished stage fresh. Reading the bytes takes about 0.5 s for the 10,015 images (54 MB); the runner asks once
    per stage, so within a process the digest is reused while no file's path, size or mtime has changed (one stat
    per file).
    """
    paths = raw_paths(root)
    return folder_fingerprint(paths["images"], (paths["split"], paths["metadata"]), suffixes=(".jpg",))


def folder_fingerprint(folder: str | Path, heads: tuple[str | Path, ...], suffixes: tuple[str, ...] | None = None) -> str:
    """Digest of the bytes of the files ``heads`` (a labels or split file) and of every file in ``folder`` (name
    and bytes; those ending in ``suffixes`` when given, never hidden ones): :func:`source_fingerprint`'s rule, for
    any labelled image folder (an external test set too). Within a process it is reused while no file's path,
    size or mtime has changed."""
    head = tuple((str(f), st.st_size, st.st_mtime_ns) for f in heads for st in (Path(f).stat(),))
    # os.scandir, not Path.glob: the runner asks for every stage of a plan, and 10,015 Path objects and stats per
    # ask made a status table of the default profile take about 28 s.
    with os.scandir(folder) as entries:
        files = sorted((e.path, st.st_size, st.st_mtime_ns) for e in entries
                       if e.is_file() and not e.name.startswith(".") and (suffixes is None or e.name.endswith(suffixes))
                       for st in (e.stat(),))
    return _content_digest(head, tuple(files))


@functools.lru_cache(maxsize=16)
def _content_digest(heads: tuple[tuple[str, int, int], ...], files: tuple[tuple[str, int, int], ...]) -> str:
    """:func:`folder_fingerprint` of ``heads`` (their bytes) and the sorted ``files`` (name, length and bytes)."""
    h = hashlib.sha256()
    for path, _, _ in heads:
        h.update(Path(path).read_bytes())
    for path, _, _ in files:
        payload = Path(path).read_bytes()
        h.update(f"{Path(path).name}:{len(payload)}\n".encode() + payload)
    return h.hexdigest()[:16]


def fingerprint(cfg: DataConfig) -> str:
    """What the arrays of ``cfg`` are made from: the raw folder's :func:`source_fingerprint`, an npz
    file's size and mtime, or the official npz (which ``medmnist`` checks by md5)."""
    if cfg.source == "raw":
        return source_fingerprint(cfg.data_dir)
    if cfg.source == "npz":
        st = Path(cfg.data_dir).stat()
        return hashlib.sha256(f"{Path(cfg.data_dir).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"medmnist-{cfg.size}"


def check_source(cfg: DataConfig) -> None:
    """Fail fast when the data cannot be found (no download, no decoding)."""
    if cfg.source == "raw":
        raw_paths(cfg.data_dir)
    elif cfg.source == "npz" and not (cfg.data_dir and Path(cfg.data_dir).is_file()):
        raise DataError(f"npz file {cfg.data_dir} does not exist")


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
