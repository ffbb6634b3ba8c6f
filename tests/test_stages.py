"""Robustness and efficiency stages and the INT8 benchmark, on finished tiny runs (real data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from edgekd.core.inference import load_run
from edgekd.pipeline import bench
from edgekd.stages import backends as BK
from edgekd.stages import data as D
from edgekd.stages import efficiency as E
from edgekd.stages import robustness as RB
from edgekd.stages.train import score

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")

#: The source suite in full, two MedMNIST-C corruptions at 1-2 levels, and one that cannot run at 28 px.
SEVERITIES = {"medmnistc": {"pixelate": [1, 5], "motion_blur": [2], "characters": [1]}}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: on a shared 2-core machine two OpenMP threads can be many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def student(tiny_runs, tmp_path_factory) -> Path:
    """A private copy of the trained tiny student run (the stages write into it)."""
    run_dir = tmp_path_factory.mktemp("stages") / tiny_runs["student"].name
    shutil.copytree(tiny_runs["student"], run_dir, ignore=shutil.ignore_patterns("tb", "*.ipynb"))
    return run_dir


def _test_split(run_dir: Path) -> D.DermaArrays:
    return D.load(D.DataConfig(**json.loads((run_dir / "run_config.json").read_text())["data"]))


def test_run_robustness_writes_tables_and_reuses_cache(student: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    res = RB.run_robustness(student, ("source", "medmnistc"), SEVERITIES, max_images=35, seed=0, cache_dir=cache)
    out = student / "robustness"
    for name in ("corruptions.csv", "skipped.csv", "medmnistc_be_rbe.csv", "curves_source.png", "curves_medmnistc.png"):
        assert (out / name).stat().st_size > 0, name

    table = pd.read_csv(out / "corruptions.csv")
    assert {"suite", "corruption", "severity", "accuracy", "macro_f1", "balanced_error"} <= set(table.columns)
    cells = [(r.suite, r.corruption, r.level) for r in table.itertuples()]
    assert cells == [
        ("source", "clean", 0),
        *[("source", name, level) for name, values in RB.SUITES["source"].items() for level in range(1, len(values) + 1)],
        ("medmnistc", "clean", 0), ("medmnistc", "pixelate", 1), ("medmnistc", "pixelate", 5), ("medmnistc", "motion_blur", 2),
    ]
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped["corruption"]) == ["characters"] and "58 px" in skipped["reason"].iloc[0]

    # The subset is stratified (every test class kept) and the clean row is the run's own test predictions.
    indices = res["indices"]
    predictions = np.load(student / "predictions.npz")
    labels = predictions["test_labels"]
    assert len(indices) == 35 and set(labels[indices]) == set(labels)
    expected = score(labels[indices], predictions["test_logits"][indices])
    clean = table[table["corruption"] == "clean"]
    assert clean["accuracy"].tolist() == pytest.approx([expected["acc"]] * 2)
    assert clean["macro_f1"].tolist() == pytest.approx([expected["macro_f1"]] * 2)

    be = pd.read_csv(out / "medmnistc_be_rbe.csv").set_index("corruption")
    assert list(be.index) == ["pixelate", "motion_blur", "mean"]
    assert (be["baseline_px"] == 224).all() and (be["img_size"] == 28).all()
    assert "partial" in be.loc["pixelate", "note"] and "characters" in be.loc["mean", "note"]
    errors = table.set_index(["corruption", "level"])["balanced_error"]
    assert be.loc["pixelate", "balanced_error"] == pytest.approx((errors["pixelate", 1] + errors["pixelate", 5]) / 2)

    # One cache file per corrupted set; a second call reads them all and rewrites none.
    files = sorted(cache.rglob("*.npy"))
    assert res["cache"]["computed"] == len(files) == 11 and res["cache"]["hits"] == 0
    assert all(f.parent.parent.name == "28px" for f in files)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = RB.run_robustness(student, ("source", "medmnistc"), SEVERITIES, max_images=35, seed=0, cache_dir=cache)
    assert again["cache"] == {"dir": cache, "hits": 11, "computed": 0}
    assert sorted(cache.rglob("*.npy")) == files and [f.stat().st_mtime_ns for f in files] == mtimes
    pd.testing.assert_frame_equal(again["corruptions"], res["corruptions"])

    # Cached images are corrupt() of each image with its index in the test split.
    images = _test_split(student).images["test"][indices]
    cached, hit = RB.cached_corrupt(images, indices, "source", "gaussian_noise", 0.2, 0, cache)
    assert hit
    k = 7
    direct = RB.corrupt(images[k : k + 1], "gaussian_noise", 0.2, seed=0, start_index=int(indices[k]))
    np.testing.assert_array_equal(cached[k], direct[0])
    assert not np.array_equal(cached, RB.corrupt(images, "gaussian_noise", 0.2, seed=0))  # indices matter


@pytest.mark.parametrize(
    ("suites", "severities", "match"),
    [
        (("source", "imagenet_c"), None, "'imagenet_c'"),
        (("medmnistc",), {"medmnistc": {"fog": [1]}}, "'fog'"),
        (("medmnistc",), {"medmnistc": [7]}, "severity 7"),
        (("source",), {"source": {"jpeg": [95]}}, "severity 95"),
        (("source",), {"source": [0.1]}, r"source/jpeg.*per corruption"),
        (("source",), {"medmnistc": [1]}, "'medmnistc', which is not in suites"),
        (("source",), {"source": {"jpeg": []}}, "non-empty"),
        ((), None, "suites is empty"),
    ],
)
def test_run_robustness_rejects_bad_selection(student: Path, suites, severities, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RB.run_robustness(student, suites, severities)


def test_run_robustness_rejects_bad_counts(student: Path) -> None:
    with pytest.raises(ValueError, match="max_images"):
        RB.run_robustness(student, max_images=0)
    with pytest.raises(ValueError, match="seed"):
        RB.run_robustness(student, seed=-1)


def test_run_efficiency_on_trained_run(student: Path) -> None:
    res = E.run_efficiency(student, threads=1, batch_sizes=(1,), sizes=(28,), warmup=0, repeats=1, calib_images=32)
    for name in BK.EXPORT_FILES.values():
        assert (student / "efficiency" / "export" / name).stat().st_size > 0, name
    out = student / "efficiency"
    model = pd.read_csv(out / "model.csv").iloc[0]
    trained = load_run(student).model
    assert model["params"] == E.count_params(trained) and model["flops"] == 2 * model["macs"] > 0
    assert model["onnx_int8_bytes"] < model["onnx_bytes"] / 3
    assert model["peak_cpu_rss_mb"] >= 0

    backends = pd.read_csv(out / "backends.csv").set_index("backend")
    assert list(backends.index) == list(BK.BACKENDS)
    assert {"accuracy", "macro_f1", "max_abs_logit_diff_vs_eager", "delta_macro_f1_vs_eager"} <= set(backends.columns)
    assert backends.loc["eager", "max_abs_logit_diff_vs_eager"] == 0
    assert backends.loc["ort_fp32", "max_abs_logit_diff_vs_eager"] < 1e-4
    int8 = backends.loc["ort_int8"]
    assert int8["delta_macro_f1_vs_eager"] == pytest.approx(int8["macro_f1"] - backends.loc["eager", "macro_f1"])
    assert 0 < int8["max_abs_logit_diff_vs_eager"] < 1.0

    latency = pd.read_csv(out / "latency.csv")
    assert sorted(latency["backend"]) == sorted(BK.BACKENDS) and (latency["mean_ms"] > 0).all()
    assert res["latency"] is not None and set(res["files"]) >= {"model", "backends", "latency", "onnx_int8"}


def test_exported_onnx_matches_trained_model_on_test_images(student: Path) -> None:
    onnx_path = student / "efficiency" / "export" / "model.onnx"
    if not onnx_path.exists():
        BK.export_onnx(load_run(student).model, 28, onnx_path)
    images = _test_split(student).images["test"]
    with torch.no_grad():
        reference = load_run(student).model(torch.from_numpy(D.to_input(images))).numpy()
    stored = np.load(student / "predictions.npz")["test_logits"]
    assert np.abs(reference - stored).max() < 1e-4  # the training run's CPU logits
    logits = BK.backend_logits(BK.load_backend("ort_fp32", onnx_path, threads=1), images, batch_size=16)
    assert logits.shape == reference.shape and np.abs(logits - reference).max() < 1e-4
    with pytest.raises(ValueError, match="'tensorrt'"):
        BK.load_backend("tensorrt", onnx_path)


def test_run_efficiency_rejects_bad_arguments(tmp_path: Path) -> None:
    for kwargs, match in (({"batch_sizes": ()}, "batch_sizes"), ({"sizes": [28, 0]}, "sizes"),
                          ({"threads": 0}, "threads"), ({"warmup": -1}, "warmup"), ({"calib_images": 0}, "calib_images")):
        with pytest.raises(ValueError, match=match):
            E.run_efficiency(tmp_path, **kwargs)
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        E.run_efficiency(tmp_path)


def test_bench_prints_table(tiny_runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "bench.csv"
    argv = ["--profile-dir", str(tiny_runs["root"]), "--threads", "1", "--repeats", "2", "--warmup", "0",
            "--calib-images", "16", "--csv", str(csv)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.lstrip().startswith("model"))
    assert header.split() == list(bench.COLUMNS)
    assert "teacher-resnet50-s0" in printed and "student-resnet18-kd-s0" in printed
    table = pd.read_csv(csv)
    assert list(table["model"]) == ["teacher-resnet50-s0", "student-resnet18-kd-s0"]
    assert (table[["eager_fp32_ms", "ort_fp32_ms", "ort_int8_ms"]] > 0).all().all()
    assert table["int8_vs_ort_fp32"].tolist() == pytest.approx((table["ort_fp32_ms"] / table["ort_int8_ms"]).tolist())
    assert table["int8_vs_eager"].tolist() == pytest.approx((table["eager_fp32_ms"] / table["ort_int8_ms"]).tolist())
    assert table["int8_2x"].tolist() == ["PASS" if r >= 2 else "MISS" for r in table["int8_vs_ort_fp32"]]
    assert table["int8_delta_macro_f1"].notna().all()


def test_bench_needs_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "teacher-resnet50-s0").mkdir()  # started, never finished
    assert bench.main(["--profile-dir", str(tmp_path)]) == 2
    assert "no finished seed-0 teacher" in capsys.readouterr().err
    assert bench.main(["--profile-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
