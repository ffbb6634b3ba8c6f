"""Data: the official split, the offline DermaMNIST recipe, lesion leakage and bad-input errors."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from edgekd.core import augment as AU
from edgekd.core import info
from edgekd.stages import data as D


def test_split_file_matches_official_counts(data_dir):
    split = D.read_split(data_dir)
    for name in info.SPLITS:
        labels = split.loc[split["split"] == name, "label"]
        assert np.bincount(labels, minlength=7).tolist() == list(info.SPLIT_CLASS_COUNTS[name])
    assert len(split) == info.N_IMAGES == 10015


def test_offline_arrays_have_medmnist_layout(arrays28):
    for name, n in info.SPLIT_SIZES.items():
        assert arrays28.images[name].shape == (n, 28, 28, 3)
        assert arrays28.images[name].dtype == np.uint8
        assert arrays28.labels[name].shape == (n,)
    assert arrays28.counts().loc["test"].tolist() == list(info.SPLIT_CLASS_COUNTS["test"])


def test_centre_square_crop_then_resize(tmp_path):
    frame = np.zeros((150, 200, 3), np.uint8)
    frame[:, :25] = 255  # left and right 25 px bands lie outside the centre 150x150 square
    frame[:, 175:] = 255
    frame[:, 25:175] = 100
    Image.fromarray(frame).save(tmp_path / "x.png")
    out = D.load_image(tmp_path / "x.png", 28)
    assert out.shape == (28, 28, 3)
    assert np.abs(out.astype(int) - 100).max() <= 1  # no white band: it was cropped, not squashed


def test_leakage_report_counts_crossing_lesions(data_dir):
    report = D.leakage_report(D.read_split(data_dir)).set_index("splits")
    assert report.loc["any", "lesions"] == 1006  # the README's figure for the official split
    assert report.loc["any", "total_lesions"] == 7470
    assert report.loc["train-test", "lesions"] > 0


def test_lesion_grouped_split_has_no_crossing_lesion(arrays28):
    grouped = D.lesion_grouped_split(arrays28, seed=0)
    report = D.leakage_report(D.split_table(grouped)).set_index("splits")
    assert report.loc["any", "lesions"] == 0
    sizes = {s: len(grouped.labels[s]) for s in info.SPLITS}
    assert sum(sizes.values()) == info.N_IMAGES
    assert 0.65 < sizes["train"] / info.N_IMAGES < 0.75 and 0.15 < sizes["test"] / info.N_IMAGES < 0.25
    for s in info.SPLITS:
        assert (np.bincount(grouped.labels[s], minlength=7) > 0).all()


def test_dihedral_views_are_the_eight_symmetries():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = [AU.dihedral(x, v) for v in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(AU.dihedral(x, 0), x)
    mixed = AU.apply_views(x, torch.tensor([3, 5]))
    assert torch.equal(mixed[0], AU.dihedral(x[:1], 3)[0]) and torch.equal(mixed[1], AU.dihedral(x[1:], 5)[0])


def test_normalise_uses_imagenet_statistics():
    img = np.full((1, 2, 2, 3), 255, np.uint8)
    out = AU.normalise(img)
    assert out.shape == (1, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], (1 - torch.tensor(info.MEAN)) / torch.tensor(info.STD))


# ----------------------------------------------------------------------------- bad input


def _fake_raw(tmp_path, data_dir):
    """A raw folder of links to the real images, with editable copies of the CSV files."""
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    for p in (data_dir / "images").iterdir():
        (root / "images" / p.name).symlink_to(p)
    for name in ("HAM10000_metadata.csv", "dermamnist_split.csv"):
        shutil.copy(data_dir / name, root / name)
    return root


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.read_split(tmp_path / "nowhere")


def test_truncated_image_is_named(tmp_path, data_dir):
    root = _fake_raw(tmp_path, data_dir)
    first = pd.read_csv(root / "dermamnist_split.csv")["image_id"].iloc[0]
    target = root / "images" / f"{first}.jpg"
    payload = target.read_bytes()
    target.unlink()
    target.write_bytes(payload[: len(payload) // 3])
    out = tmp_path / "cache" / "dermamnist_28.npz"
    with pytest.raises(D.DataError, match=f"{first}.jpg is truncated or corrupt"):
        D.build_npz(root, 28, out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_npz_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "derma.npz"
    if damage == "garbage":
        path.write_bytes(b"not an npz at all" * 100)
    else:
        np.savez_compressed(path, train_images=np.zeros((10, 28, 28, 3), np.uint8))
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(D.DataError, match="truncated or corrupt"):
        D.load_npz(path)


def test_npz_with_wrong_layout_is_rejected(tmp_path):
    path = tmp_path / "derma.npz"
    np.savez(path, train_images=np.zeros((5, 28, 28, 3), np.uint8), train_labels=np.zeros((5, 1)))
    with pytest.raises(D.DataError, match="train_images"):
        D.load_npz(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.assign(label=s["label"].where(s.index != 3, (s["label"] + 1) % 7)), "disagree with the metadata on label"),
        (lambda s: s.drop(index=5), "indices not 0"),
        (lambda s: s.assign(image_id=s["image_id"].where(s.index != 7, "ISIC_9999999")), "not in the metadata"),
    ],
)
def test_split_file_that_does_not_match_images(tmp_path, data_dir, edit, message):
    root = _fake_raw(tmp_path, data_dir)
    split = pd.read_csv(root / "dermamnist_split.csv")
    edit(split).to_csv(root / "dermamnist_split.csv", index=False)
    with pytest.raises(D.DataError, match=message):
        D.read_split(root)


def test_image_missing_from_folder(tmp_path, data_dir):
    root = _fake_raw(tmp_path, data_dir)
    first = pd.read_csv(root / "dermamnist_split.csv")["image_id"].iloc[0]
    (root / "images" / f"{first}.jpg").unlink()
    with pytest.raises(D.DataError, match="not in .*images"):
        D.read_split(root)


@pytest.mark.parametrize("size", [27, 32, 100, 256])
def test_unsupported_size(size):
    with pytest.raises(ValueError, match="not one of the DermaMNIST sizes"):
        D.DataConfig(size=size)


# ----------------------------------------------------------------------------- to_input


def test_to_input_normalises_with_info_constants() -> None:
    images = np.zeros((2, 5, 6, 3), dtype=np.uint8)
    images[1, 2, 3] = (255, 0, 51)
    x = D.to_input(images)
    assert x.dtype == np.float32 and x.shape == (2, 3, 5, 6)
    expected = [
        (1.0 - info.MEAN[0]) / info.STD[0],
        -info.MEAN[1] / info.STD[1],
        (0.2 - info.MEAN[2]) / info.STD[2],
    ]
    np.testing.assert_allclose(x[1, :, 2, 3], expected, rtol=1e-6)
    np.testing.assert_allclose(
        x[0, :, 0, 0],
        [-m / s for m, s in zip(info.MEAN, info.STD, strict=True)],
        rtol=1e-6,
    )
    with pytest.raises(ValueError):
        D.to_input(images.astype(np.float32))


def test_stratified_indices_keeps_every_class_and_proportions() -> None:
    labels = np.repeat(np.arange(info.NUM_CLASSES), [66, 103, 220, 23, 223, 1341, 29])
    idx = D.stratified_indices(labels, 140, seed=0)
    assert len(idx) == 140 and len(set(idx)) == 140 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=info.NUM_CLASSES)
    assert counts.min() >= 1 and abs(counts[5] - 140 * 1341 / 2005) <= 1
    np.testing.assert_array_equal(idx, D.stratified_indices(labels, 140, seed=0))
    assert not np.array_equal(idx, D.stratified_indices(labels, 140, seed=1))
    assert len(D.stratified_indices(labels, 3)) == 3  # fewer than the classes
    np.testing.assert_array_equal(D.stratified_indices(labels[:10], 50), np.arange(10))
    with pytest.raises(ValueError):
        D.stratified_indices(labels, 0)
