"""The teacher-size test (scripts/teacher_size.py): validation macro-F1 paired by seed between the students of a 64 px
and a 128 px teacher, read with the analysis plan's rule; the 128 px side beside the published reference; refusals
before anything is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from edgekd.core import info, stats
from edgekd.core.files import file_digest
from edgekd.pipeline import plan

spec = importlib.util.spec_from_file_location("teacher_size", info.REPO_ROOT / "scripts" / "teacher_size.py")
TS = importlib.util.module_from_spec(spec)
spec.loader.exec_module(TS)

RECIPE = {"arch": "resnet18", "data": {"size": 64, "split": "official"}, "train": {"epochs": 8, "lr": 0.003},
          "kd": {"mode": "hinton", "alpha": 0.5, "temperature": 2.0}}


def _run(folder: Path, val: float, test: float = 0.9, **config) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"val_macro_f1": val, "test_macro_f1": test, "collapsed": None}))
    (folder / "run_config.json").write_text(json.dumps({**RECIPE, **config}))


def _profiles(root: Path, small: list[float], large: list[float], nokd: list[float]) -> list[str]:
    """Both sides' runs, and a published reference whose runs equal the 128 px side's but the no-KD student of seed 0;
    the script's arguments."""
    default, test, reference = root / "teacher_size_128", root / "teacher_size", root / "reference"
    _run(default / "teacher-efficientnet_lite0-s0", 0.72)
    _run(test / "teacher-efficientnet_lite0-s0", 0.68)
    published = [("teacher-efficientnet_lite0-s0", 0.72)]
    for seed, (s, lg, n) in enumerate(zip(small, large, nokd, strict=True)):
        cache = {"data": {**RECIPE["data"], "cache_dir": f"/elsewhere/{seed}"}}
        _run(test / f"student-resnet18-kd-s{seed}", s, teacher_dir=str(test / "teacher"), **cache)
        _run(default / f"student-resnet18-kd-s{seed}", lg, teacher_dir=str(default / "teacher"))
        _run(default / f"student-resnet18-nokd-s{seed}", n, kd={"mode": "none"})
        published += [(f"student-resnet18-kd-s{seed}", lg), (f"student-resnet18-nokd-s{seed}", n + 0.01 * (seed == 0))]
    reference.mkdir()
    pd.DataFrame(published, columns=["run_id", "val_macro_f1"]).to_csv(reference / "runs.csv", index=False)
    sha = file_digest(plan.PARAMS_DIR / "default.yaml")
    (reference / "provenance.json").write_text(json.dumps({"profile_sha256": sha, "machine": {"cpu": "AMD EPYC",
                                                                                               "cpu_capability": "AVX2"}}))
    return ["--large", str(default), "--small", str(test), "--reference", str(reference)]


def test_pairs_validation_scores_by_seed_and_reads_them_with_the_plans_rule(tmp_path):
    sides = _profiles(tmp_path, [0.55, 0.56, 0.54], [0.52, 0.515, 0.50], [0.517, 0.527, 0.512])
    out = tmp_path / "out"
    assert TS.main(["--out", str(out), *sides]) == 0
    seeds = pd.read_csv(out / "teacher_size_seeds.csv")
    assert seeds["delta"].tolist() == pytest.approx([0.03, 0.045, 0.04])
    assert seeds["gain_128px_teacher"].tolist() == pytest.approx([0.003, -0.012, -0.012])
    row = pd.read_csv(out / "teacher_size.csv").iloc[0]
    expected = stats.verdict([0.03, 0.045, 0.04])
    assert row["verdict"] == expected["label"] == "gain" and row["ci_low"] == pytest.approx(expected["ci_low"])
    assert (row["teacher_val_64px"], row["teacher_val_128px"]) == (0.68, 0.72)
    assert "test_macro_f1" not in seeds.to_csv() and sorted(p.name for p in out.iterdir()) == sorted(TS.WRITES)
    reproduced = pd.read_csv(out / "reproduction.csv").set_index("run_id")
    assert len(reproduced) == 7 and reproduced["bitwise"].sum() == 6
    assert reproduced.loc["student-resnet18-nokd-s0", "difference"] == pytest.approx(-0.01)
    assert "bitwise equal in 6 of 7 runs" in (out / "README.md").read_text()
    assert TS.main(["--out", str(out), *sides]) == 0  # its own files: rewritten


def test_refuses_students_that_differ_in_more_than_the_teacher_and_a_folder_it_did_not_write(tmp_path, capsys):
    sides = _profiles(tmp_path, [0.55], [0.52], [0.517])
    default, test, reference = (Path(sides[i]) for i in (1, 3, 5))
    config = test / "student-resnet18-kd-s0" / "run_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "train": {"epochs": 16, "lr": 0.003}}))
    out = tmp_path / "out"
    assert TS.main(["--out", str(out), *sides]) == 2
    assert "differ in more than their teacher" in capsys.readouterr().err and not out.exists()

    config.write_text(json.dumps({**RECIPE, "teacher_dir": "t"}))
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert TS.main(["--out", str(out), *sides]) == 2
    assert "does not write (notes.txt)" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    prov = reference / "provenance.json"
    prov.write_text(json.dumps({**json.loads(prov.read_text()), "profile_sha256": "0" * 64}))
    assert TS.main(["--out", str(tmp_path / "o1"), *sides]) == 2
    assert "was not made from" in capsys.readouterr().err and not (tmp_path / "o1").exists()

    metrics = default / "student-resnet18-nokd-s0" / "metrics.json"
    metrics.write_text(json.dumps({"val_macro_f1": 0.2, "collapsed": "one class"}))
    assert TS.main(["--out", str(tmp_path / "o2"), *sides]) == 2
    assert "collapsed" in capsys.readouterr().err
