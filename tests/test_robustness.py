"""Tests for edgekd.stages.robustness: corruptions, determinism, evaluation, BE/rBE, plots."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from medmnistc.corruptions.registry import CORRUPTIONS_DS
from medmnistc.utils.baselines import BASELINES
from PIL import Image

from edgekd.core import info
from edgekd.stages import robustness as RB


def _images(n: int = 4, size: int = 28, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus mild noise: image-like content for JPEG and blur."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(40, 200, 3)
        base = (
            a
            + 50 * ramp[None, :, None] * np.array([1.0, 0.5, -0.5])
            + 30 * ramp[:, None, None]
        )
        base = (
            base
            + np.array([0.0, b - a, c - a]) * 0.3
            + rng.normal(0, 4, (size, size, 3))
        )
        out.append(np.clip(np.rint(base), 0, 255))
    return np.stack(out).astype(np.uint8)


def _high_freq_energy(images: np.ndarray) -> float:
    x = images.astype(np.float64)
    return float((np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean())


# ------------------------------------------------------------------------- source suite


@pytest.mark.parametrize("sigma", [0.1, 0.2])
def test_gaussian_noise_is_zero_mean_noise_of_std_sigma(sigma: float) -> None:
    grey = np.full((1, 64, 64, 3), 128, dtype=np.uint8)
    diff = RB.corrupt(grey, "gaussian_noise", sigma, seed=0).astype(np.float64) - 128
    assert abs(diff.mean()) < 1.5
    # sigma = 0.2 loses ~1% of the mass to clipping at 2.5 sigma, which shrinks the std slightly.
    assert diff.std() == pytest.approx(sigma * 255, rel=0.04 if sigma == 0.1 else 0.07)


def test_gaussian_noise_adds_high_frequency_energy() -> None:
    images = _images()
    noisy = RB.corrupt(images, "gaussian_noise", 0.1, seed=0)
    assert _high_freq_energy(noisy) > 10 * _high_freq_energy(images)
    stronger = RB.corrupt(images, "gaussian_noise", 0.3, seed=0)
    assert _high_freq_energy(stronger) > _high_freq_energy(noisy)


def test_jpeg_error_grows_as_quality_drops() -> None:
    images = _images(size=32)
    errors = [
        np.abs(RB.corrupt(images, "jpeg", q, seed=0).astype(int) - images).mean()
        for q in RB.SUITES["source"]["jpeg"]
    ]
    assert RB.SUITES["source"]["jpeg"] == (90, 70, 50)
    assert 0 < errors[0] < errors[1] < errors[2]


def test_contrast_hand_computed() -> None:
    image = np.array(
        [[[[0, 10, 20], [30, 40, 50]], [[60, 70, 80], [90, 100, 110]]]], dtype=np.uint8
    )
    # Mean over all 12 values = 55; x' = (x - 55) * 0.6 + 55.
    expected = np.array(
        [[[[22, 28, 34], [40, 46, 52]], [[58, 64, 70], [76, 82, 88]]]], dtype=np.uint8
    )
    np.testing.assert_array_equal(RB.corrupt(image, "contrast", 0.6, seed=3), expected)
    flat = np.full((1, 4, 4, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(RB.corrupt(flat, "contrast", 0.8, seed=0), flat)


# -------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(
    ("suite", "name", "severity"),
    [
        ("source", "gaussian_noise", 0.2),
        ("medmnistc", "gaussian_noise", 3),
        ("medmnistc", "impulse_noise", 5),
        ("medmnistc", "motion_blur", 2),
    ],
)
def test_corrupt_is_deterministic_and_chunk_invariant(
    suite: str, name: str, severity: float
) -> None:
    images = _images(n=5)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    full = RB.corrupt(images, name, severity, seed=11, suite=suite)
    np.testing.assert_array_equal(
        full, RB.corrupt(images, name, severity, seed=11, suite=suite)
    )
    chunks = [
        RB.corrupt(
            images[i : i + 2], name, severity, seed=11, start_index=i, suite=suite
        )
        for i in (0, 2, 4)
    ]
    np.testing.assert_array_equal(full, np.concatenate(chunks))
    assert not np.array_equal(
        full, RB.corrupt(images, name, severity, seed=12, suite=suite)
    )
    assert not np.array_equal(full, images)
    # Global random states are restored.
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert random.getstate() == py_state


def test_invalid_names_raise() -> None:
    images = _images(n=1)
    with pytest.raises(ValueError, match=r"'fog'.*contrast.*gaussian_noise.*jpeg"):
        RB.corrupt(images, "fog", 0.1, seed=0)
    with pytest.raises(ValueError, match=r"severity 0\.5.*\[0\.1, 0\.2, 0\.3\]"):
        RB.corrupt(images, "gaussian_noise", 0.5, seed=0)
    with pytest.raises(ValueError, match=r"suite 'imagenet_c'.*medmnistc.*source"):
        RB.corrupt(images, "jpeg", 90, seed=0, suite="imagenet_c")
    with pytest.raises(ValueError, match=r"'zoom_blur'.*exists in suite 'medmnistc'"):
        RB.corrupt(images, "zoom_blur", 1, seed=0)
    with pytest.raises(ValueError, match="severity 6"):
        RB.corrupt(images, "zoom_blur", 6, seed=0, suite="medmnistc")
    with pytest.raises(ValueError, match="'fog'"):
        RB.evaluate_corruptions(
            lambda x: np.zeros((len(x), 7)),
            images,
            [0],
            "source",
            0,
            corruptions=["fog"],
        )


# ------------------------------------------------------------------------ medmnistc suite


def test_medmnistc_suite_mirrors_package_registry() -> None:
    assert list(RB.SUITES["medmnistc"]) == list(CORRUPTIONS_DS["dermamnist"])
    assert len(RB.SUITES["medmnistc"]) == 15
    assert all(levels == (1, 2, 3, 4, 5) for levels in RB.SUITES["medmnistc"].values())
    assert RB.DERMAMNIST_BASELINE is BASELINES["dermamnist"]


@pytest.mark.parametrize(
    "name",
    ["pixelate", "jpeg_compression", "brightness_up", "contrast_down", "black_corner"],
)
def test_medmnistc_deterministic_corruptions_equal_package(name: str) -> None:
    images = _images(n=2, size=32)
    for level in (1, 5):
        ours = RB.corrupt(images, name, level, seed=0, suite="medmnistc")
        corruptor = CORRUPTIONS_DS["dermamnist"][name]
        theirs = np.stack(
            [
                np.asarray(corruptor.apply(Image.fromarray(im), level - 1))
                for im in images
            ]
        )
        np.testing.assert_array_equal(ours, theirs)


def test_medmnistc_all_corruptions_run_at_28px() -> None:
    images = _images(n=2)
    for name, levels in RB.SUITES["medmnistc"].items():
        if name == "characters":
            continue
        for level in (levels[0], levels[-1]):
            out = RB.corrupt(images, name, level, seed=0, suite="medmnistc")
            assert out.shape == images.shape and out.dtype == np.uint8
            assert (out != images).mean() > 0.01, (name, level)


def test_medmnistc_characters_needs_wide_images() -> None:
    with pytest.raises(ValueError, match="58 px"):
        RB.corrupt(_images(n=1), "characters", 1, seed=0, suite="medmnistc")
    big = _images(n=2, size=96)
    out = RB.corrupt(big, "characters", 5, seed=0, suite="medmnistc")
    assert out.shape == big.shape and not np.array_equal(out, big)


# --------------------------------------------------------------------------- evaluation


def _mean_predictor(batch: np.ndarray) -> np.ndarray:
    """Class = round(mean intensity / 127.5) as one-hot logits."""
    classes = np.rint(batch.reshape(len(batch), -1).mean(axis=1) / 127.5).astype(int)
    return np.eye(info.NUM_CLASSES)[classes]


def test_evaluate_corruptions_hand_computed_clean_row() -> None:
    values = [0, 0, 128, 128, 255, 255]
    images = np.stack([np.full((8, 8, 3), v, dtype=np.uint8) for v in values])
    labels = np.array([[0], [1], [1], [1], [2], [0]])  # MedMNIST (N, 1) layout
    df = RB.evaluate_corruptions(
        _mean_predictor, images, labels, "source", seed=0, batch_size=4
    )
    assert list(df.columns) == [
        "suite",
        "corruption",
        "severity",
        "level",
        "n",
        *RB.METRICS,
    ]
    assert len(df) == 1 + 3 + 3 + 2
    clean = df.iloc[0]
    assert (clean["corruption"], clean["severity"], clean["level"], clean["n"]) == (
        "clean",
        0,
        0,
        6,
    )
    # Predictions [0, 0, 1, 1, 2, 2]; per-class recall 1/2, 2/3, 1; F1 1/2, 4/5, 2/3 (+ 4 absent classes at 0).
    assert clean["accuracy"] == pytest.approx(4 / 6)
    assert clean["balanced_error"] == pytest.approx(1 - (1 / 2 + 2 / 3 + 1) / 3)
    assert clean["macro_f1"] == pytest.approx(
        (1 / 2 + 4 / 5 + 2 / 3) / info.NUM_CLASSES
    )
    # Constant images are unchanged by a per-image-mean contrast change.
    contrast = df[df["corruption"] == "contrast"]
    assert list(contrast["severity"]) == [0.8, 0.6] and list(contrast["level"]) == [
        1,
        2,
    ]
    assert (contrast["accuracy"] == clean["accuracy"]).all()
    # Batch size does not change corrupted images, hence not the scores.
    single = RB.evaluate_corruptions(
        _mean_predictor, images, labels, "source", seed=0, batch_size=1
    )
    pd.testing.assert_frame_equal(df, single)


def test_evaluate_corruptions_several_models() -> None:
    images = np.concatenate([_images(n=4), np.full((2, 28, 28, 3), 10, dtype=np.uint8)])
    labels = _mean_predictor(images).argmax(1)
    assert set(labels) == {0, 1}

    def always_zero(batch: np.ndarray) -> np.ndarray:
        return np.tile(np.eye(info.NUM_CLASSES)[0], (len(batch), 1))

    df = RB.evaluate_corruptions(
        {"mean": _mean_predictor, "zero": always_zero},
        images,
        labels,
        "source",
        seed=1,
        corruptions=["jpeg"],
    )
    assert list(df.columns[:2]) == ["model", "suite"]
    assert len(df) == 2 * (1 + 3)
    clean = df[df["corruption"] == "clean"].set_index("model")
    assert clean.loc["mean", "accuracy"] == 1.0
    assert clean.loc["zero", "accuracy"] == pytest.approx((labels == 0).mean())


def _medmnistc_frame(clean: float, errors: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {
            "suite": "medmnistc",
            "corruption": "clean",
            "severity": 0,
            "balanced_error": clean,
        }
    ]
    for name, values in errors.items():
        rows += [
            {
                "suite": "medmnistc",
                "corruption": name,
                "severity": level,
                "balanced_error": error,
            }
            for level, error in enumerate(values, start=1)
        ]
    return pd.DataFrame(rows)


def test_be_rbe_hand_computed() -> None:
    baseline = {
        "clean_score": 0.2,
        "raw_scores": {"pixelate": 0.4, "gaussian_noise": 0.6},
    }
    df = _medmnistc_frame(
        0.1, {"pixelate": [0.1, 0.2, 0.3, 0.4, 0.5], "gaussian_noise": [0.3] * 5}
    )
    out = RB.be_rbe(df, baseline).set_index("corruption")
    assert out.loc["pixelate", "be"] == pytest.approx(0.3 / 0.4)
    assert out.loc["pixelate", "rbe"] == pytest.approx((0.3 - 0.1) / (0.4 - 0.2))
    assert out.loc["gaussian_noise", "be"] == pytest.approx(0.3 / 0.6)
    assert out.loc["gaussian_noise", "rbe"] == pytest.approx((0.3 - 0.1) / (0.6 - 0.2))
    assert out.loc["mean", "be"] == pytest.approx((0.75 + 0.5) / 2)
    assert out.loc["mean", "rbe"] == pytest.approx((1.0 + 0.5) / 2)


def test_be_rbe_default_baseline_and_errors() -> None:
    base = BASELINES["dermamnist"]
    df = _medmnistc_frame(0.3, {"zoom_blur": [0.5] * 5})
    row = RB.be_rbe(df).iloc[0]
    assert row["be"] == pytest.approx(0.5 / base["raw_scores"]["zoom_blur"])
    assert row["rbe"] == pytest.approx(
        0.2 / (base["raw_scores"]["zoom_blur"] - base["clean_score"])
    )
    with pytest.raises(ValueError, match="severities"):
        RB.be_rbe(_medmnistc_frame(0.3, {"zoom_blur": [0.5] * 4}))
    with pytest.raises(ValueError, match="clean"):
        RB.be_rbe(df[df["corruption"] != "clean"])
    two = pd.concat(
        [
            df.assign(model="a"),
            df.assign(model="b", balanced_error=df["balanced_error"] * 2),
        ]
    )
    per_model = RB.be_rbe(two)
    assert list(per_model["model"]) == ["a", "a", "b", "b"]
    assert per_model["be"].iloc[2] == pytest.approx(2 * per_model["be"].iloc[0])


def test_plot_corruption_curves() -> None:
    values = [0, 128, 255]
    images = np.stack([np.full((8, 8, 3), v, dtype=np.uint8) for v in values])
    df = RB.evaluate_corruptions(_mean_predictor, images, [0, 1, 2], "source", seed=0)
    fig = RB.plot_corruption_curves(df, "balanced_error")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == [
        "gaussian_noise",
        "jpeg",
        "contrast",
    ]
    contrast = ax.lines[2]
    assert list(contrast.get_xdata()) == [0, 1, 2]
    assert contrast.get_ydata()[0] == pytest.approx(df.iloc[0]["balanced_error"])
    with pytest.raises(ValueError, match="'auc'"):
        RB.plot_corruption_curves(df, "auc")


# ------------------------------------------------------------------------ stage helpers


def test_robustness_plan() -> None:
    full = RB.robustness_plan(("source", "medmnistc"))
    assert full["source"] == {name: list(values) for name, values in RB.SUITES["source"].items()}
    assert len(full["medmnistc"]) == 15
    flat = RB.robustness_plan(["medmnistc"], {"medmnistc": [5, 1]})
    assert all(levels == [1, 5] for levels in flat["medmnistc"].values())
    chosen = RB.robustness_plan(["source"], {"source": {"jpeg": [50, 90]}})
    assert chosen == {"source": {"jpeg": [90, 50]}}


def test_unsupported_only_characters_at_small_sizes() -> None:
    assert "58 px" in RB.unsupported("medmnistc", "characters", 1, 28, 28)
    assert RB.unsupported("medmnistc", "characters", 1, 64, 64) is None
    assert "66 px" in RB.unsupported("medmnistc", "characters", 2, 64, 64)
    assert RB.unsupported("medmnistc", "characters", 5, 224, 224) is None
    assert all(
        RB.unsupported(suite, name, values[-1], 28, 28) is None
        for suite, corruptions in RB.SUITES.items()
        for name, values in corruptions.items()
        if name != "characters"
    )
    with pytest.raises(ValueError, match="'fog'"):
        RB.unsupported("medmnistc", "fog", 1, 28, 28)


def test_be_rbe_partial_severities() -> None:
    baseline = {"clean_score": 0.2, "raw_scores": {"pixelate": 0.4}}
    df = _medmnistc_frame(0.1, {"pixelate": [0.1, 0.2, 0.3, 0.4, 0.5]})
    df = df[df["severity"].isin([0, 1, 5])]
    with pytest.raises(ValueError, match="severities"):
        RB.be_rbe(df, baseline)
    out = RB.be_rbe(df, baseline, partial=True).set_index("corruption")
    assert out.loc["pixelate", "balanced_error"] == pytest.approx(0.3)
    assert out.loc["pixelate", "rbe"] == pytest.approx((0.3 - 0.1) / (0.4 - 0.2))
    with pytest.raises(ValueError, match="once each"):
        RB.be_rbe(pd.concat([df, df[df["severity"] == 1]]), baseline, partial=True)


def test_balanced_errors_match_sklearn_and_bootstrap_brackets_the_estimate() -> None:
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 300)
    cells = ["clean", *list(RB.SUITES["medmnistc"])[:3]]
    predictions = np.where(rng.random((len(cells), 300)) < np.linspace(0.8, 0.4, len(cells))[:, None], labels,
                           rng.integers(0, 7, (len(cells), 300)))
    errors = RB.balanced_errors(labels, predictions)
    for row, error in zip(predictions, errors, strict=True):
        assert error == pytest.approx(1 - balanced_accuracy_score(labels, row))
    rows = pd.DataFrame({"suite": "medmnistc", "corruption": cells, "severity": [0, 1, 1, 1], "level": [0, 1, 1, 1],
                         "balanced_error": errors})
    intervals = RB.bootstrap_be_rbe(rows, labels, predictions, n_resamples=100)
    point = RB.be_rbe(rows, partial=True).set_index("corruption")
    assert list(intervals.index) == [*cells[1:], "mean"]
    for col in ("balanced_error", "be", "rbe"):
        assert (intervals[f"{col}_ci_low"] <= point[col]).all() and (point[col] <= intervals[f"{col}_ci_high"]).all()
        assert (intervals[f"{col}_ci_high"] - intervals[f"{col}_ci_low"] > 0).all()
