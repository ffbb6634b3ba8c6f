"""The runner never destroys or silently reuses work: stage-owned folders, digests, resume and cache keys.

Each test here fails on a runner that deletes a whole run folder when one stage is stale, digests
only parameters and notebooks, resumes any ``last.pt``, keys the teacher cache without the
teacher's weights, keys the data cache by size alone, or writes 0600 files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from edgekd.core import files as F
from edgekd.core.inference import load_run, predict
from edgekd.pipeline import plan as PL
from edgekd.pipeline import runner as R
from edgekd.stages import data as D
from edgekd.stages import train as T

TRAINED_FILES = ("best.pt", "predictions.npz", "run_config.json", "metrics.json", "history.csv")


def _fingerprints(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every training output under a profile folder."""
    out = {}
    for name in TRAINED_FILES:
        for path in sorted(root.glob(f"*/{name}")):
            out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


@pytest.fixture()
def smoke_copy(smoke_outputs, tmp_path) -> Path:
    """A private copy of the smoke outputs root (mtimes kept); its runs are fresh where they were."""
    root, _ = smoke_outputs
    copy = tmp_path / "outputs"
    shutil.copytree(root.parent, copy, symlinks=True)
    return copy


def _notebooks_with_edit(tmp_path: Path, *names: str) -> Path:
    """A copy of the notebooks with a markdown cell appended to each of ``names``."""
    nb_dir = tmp_path / "notebooks"
    shutil.copytree(R.NOTEBOOKS_DIR, nb_dir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in names:
        path = nb_dir / name
        nb = json.loads(path.read_text())
        nb["cells"].append({"cell_type": "markdown", "id": "edited", "metadata": {}, "source": ["An edit."]})
        path.write_text(json.dumps(nb, indent=1))
    return nb_dir


def test_copied_outputs_stay_fresh(smoke_copy):
    """Digests use the outputs root as a token, so a moved outputs folder is still fresh."""
    specs = R.expand(R.load_profile("smoke"), smoke_copy)
    table = R.status_table(specs)
    assert set(table["status"]) == {"fresh"}, table[table["status"] != "fresh"]


def test_editing_evaluate_notebook_reruns_only_evaluate_and_keeps_trained_models(smoke_copy, tmp_path):
    root = smoke_copy / "smoke"
    before = _fingerprints(root)
    assert sum(k.endswith("best.pt") for k in before) == 7
    nb_dir = _notebooks_with_edit(tmp_path, "04_evaluate.ipynb")
    dry = R.run_profile("smoke", smoke_copy, dry_run=True, notebooks_dir=nb_dir)
    stale = {(r["run_id"], r["stage"]) for r in dry if r["status"] != "fresh"}
    assert {stage for _, stage in stale} == {"evaluate", "aggregate"} and len(stale) == 7 + 1
    assert all(r["why"] == "notebook" for r in dry if r["stage"] == "evaluate")

    # The smoke profile narrowed to ResNet-18 (the teacher, 4 students: 5 evaluations and the aggregate, where the
    # whole profile would rerun 7): run on Dask's two workers, the evaluations two at a time, the aggregate after them.
    prof = R.load_profile("smoke")
    prof["students"].update(archs=["resnet18"], arch_seeds=None)
    narrowed = tmp_path / "smoke.yaml"
    narrowed.write_text(yaml.safe_dump(prof))
    kept = {k for k in stale if k[0] == "aggregate" or k[0].startswith(("teacher-", "student-resnet18-"))}
    assert len(kept) == 5 + 1
    summary = R.run_profile(narrowed, smoke_copy, notebooks_dir=nb_dir, executor="dask", workers=2, estimate=False)
    ran = {(r["run_id"], r["stage"]) for r in summary if r["status"] == "ran"}
    assert ran == kept
    assert _fingerprints(root) == before  # every best.pt, prediction and metric: same bytes, same mtime
    for run in (root / run_id for run_id, stage in kept if stage == "evaluate"):
        assert (run / "eval" / "metrics.csv").exists() and (run / "eval" / "evaluate.ipynb").exists()
    for run in (root / run_id for run_id in ("teacher-resnet50-s0", "student-resnet18-kdat-s0")):
        assert (run / "robustness" / "corruptions.csv").exists()
    again = R.run_profile(narrowed, smoke_copy, dry_run=True, notebooks_dir=nb_dir)
    assert {r["status"] for r in again} == {"fresh"}


def test_library_edit_marks_exactly_the_runs_that_use_it(smoke_outputs, tmp_path, monkeypatch):
    root, _ = smoke_outputs
    lib = _lib_copy(tmp_path, monkeypatch)
    specs = R.expand(R.load_profile("smoke"), root.parent)
    assert set(R.status_table(specs)["status"]) == {"fresh"}

    with open(lib / "stages" / "robustness.py", "a") as fh:
        fh.write("\n# a fix\n")
    table = R.status_table(specs).set_index(["run_id", "stage"])
    rob = table.xs("robustness", level="stage")
    assert (rob["status"] == "stale").all() and rob["why"].str.fullmatch("library").all()
    others = table.drop(index="robustness", level="stage").drop(index="aggregate", level="run_id")
    assert (others["status"] == "fresh").all()
    assert table.loc[("aggregate", "aggregate"), "why"].startswith("upstream not fresh")

    with open(lib / "core" / "losses.py", "a") as fh:
        fh.write("\n# a fix in a loss\n")
    table = R.status_table(specs).set_index(["run_id", "stage"])
    trained = table[table.index.get_level_values("stage").isin(["teacher", "student"])]
    assert (trained["status"] == "stale").all() and trained["why"].str.contains("library").all()
    evaluate = table.xs("evaluate", level="stage")
    assert (evaluate["status"] == "stale").all() and evaluate["why"].str.contains("upstream not fresh").all()


def _lib_copy(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the library that the digests read (edits to it leave the real one alone)."""
    lib = tmp_path / "edgekd"
    shutil.copytree(PL.LIB_DIR, lib, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(PL, "LIB_DIR", lib)
    return lib


def test_display_and_demo_edits_keep_every_run_fresh_and_latency_edits_keep_evaluate_fresh(smoke_outputs, tmp_path,
                                                                                           monkeypatch):
    """Every notebook imports the display helpers and the demo's defaults (which import training): an edit there
    must not mark trained runs stale (the whole main job). Evaluate and export must not follow the latency code."""
    root, _ = smoke_outputs
    lib = _lib_copy(tmp_path, monkeypatch)
    specs = R.expand(R.load_profile("smoke"), root.parent)
    for module in ("show", "demo"):
        with open(lib / "stages" / f"{module}.py", "a") as fh:
            fh.write("\n# a display or demo edit\n")
        table = R.status_table(specs)
        assert set(table["status"]) == {"fresh"}, (module, table[table["status"] != "fresh"])

    with open(lib / "stages" / "efficiency.py", "a") as fh:
        fh.write("\n# a change to the latency loop\n")
    table = R.status_table(specs).set_index(["run_id", "stage"])
    stale = table[table["status"] != "fresh"].index
    assert set(stale.get_level_values("stage")) == {"efficiency", "aggregate"}, table.loc[stale]
    assert (table.xs("efficiency", level="stage")["why"] == "library").all()


def test_status_table_equals_each_runs_own_status(smoke_copy):
    """The table remembers statuses while it is made; each row is still what that run's own status says."""
    specs = R.expand(R.load_profile("smoke"), smoke_copy)
    run = smoke_copy / "smoke" / "student-resnet18-kdat-s0"
    marker = run / ".done-student.json"
    mark = json.loads(marker.read_text())
    mark["components"]["params"] = "from an earlier profile"
    marker.write_text(json.dumps(mark))
    table = R.status_table(specs)
    assert list(zip(table["status"], table["why"], strict=True)) == [(st, "; ".join(why)) for st, why in
                                                                    (s.status() for s in specs)]
    assert (table["status"] != "fresh").sum() >= 4  # the student, its evaluate, robustness, efficiency, aggregate


def test_dry_run_cli_says_why(smoke_outputs, capsys):
    root, _ = smoke_outputs
    assert R.main(["smoke", "--outputs", str(root.parent), "--dry-run"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "student-resnet18-kdat-s0" in ln]
    assert len(lines) == 4 and all(ln.split()[0] == "fresh" for ln in lines)


def test_stale_stages_of_one_run_on_dask_lose_nothing(smoke_copy):
    """Two stale stages of one run execute at the same time on two workers; neither deletes the other's inputs."""
    root = smoke_copy / "smoke"
    run = root / "student-resnet18-kdat-s0"
    before = _fingerprints(root)
    efficiency = sorted(p.relative_to(run) for p in (run / "efficiency").rglob("*"))
    for stage in ("evaluate", "robustness"):
        marker = run / PL.STAGES[stage].folder / f".done-{stage}.json"
        mark = json.loads(marker.read_text())
        mark["components"]["params"] = "from an earlier profile"
        marker.write_text(json.dumps(mark))
    summary = R.run_profile("smoke", smoke_copy, executor="dask", workers=2, only=["evaluate", "robustness"],
                            estimate=False)
    ran = sorted((r["run_id"], r["stage"]) for r in summary if r["status"] == "ran")
    assert ran == [(run.name, "evaluate"), (run.name, "robustness")]
    assert _fingerprints(root) == before
    assert sorted(p.relative_to(run) for p in (run / "efficiency").rglob("*")) == efficiency
    assert (run / "eval" / "metrics.csv").exists() and (run / "robustness" / "corruptions.csv").exists()


def test_outputs_elsewhere_keep_their_caches_there(tmp_path):
    specs = R.expand(R.load_profile("smoke"), tmp_path / "out")
    cache = str((tmp_path / "out" / "cache").resolve())
    assert all(s.parameters["data"]["cache_dir"] == cache for s in specs if "data" in s.parameters)
    assert all(s.parameters["cache_dir"].startswith(cache) for s in specs if s.stage == "robustness")


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from edgekd.stages import data as D
    from edgekd.stages import train as T
    cfg = T.TrainConfig(**%r)
    T.run_train(sys.argv[1], "resnet18", 0, D.DataConfig(**%r), cfg)
    """
)
CFG = dict(epochs=3, batch_size=32, lr=2e-3, stem_stride=2, progress=False, warmup_epochs=0.5, threads=1, collapse="warn")
DATA = dict(size=28, subset={"train": 96, "val": 48, "test": 48})


@pytest.mark.usefixtures("data_dir")  # DATA reads the default (real) data folder
def test_resume_is_refused_when_the_config_changed(tmp_path, capsys):
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT % (CFG, DATA), str(run)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert (run / "last.pt").exists()
    changed = T.TrainConfig(**{**CFG, "lr": 4e-3})
    T.run_train(run, "resnet18", 0, D.DataConfig(**DATA), changed)
    out = capsys.readouterr().out
    assert "not resuming" in out and "train.lr 0.002 -> 0.004" in out
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2, 3]
    T.run_train(tmp_path / "fresh", "resnet18", 0, D.DataConfig(**DATA), changed)
    a, b = torch.load(run / "best.pt"), torch.load(tmp_path / "fresh" / "best.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same as a clean run with the new lr


@pytest.mark.usefixtures("data_dir")  # DATA reads the default (real) data folder
def test_retrained_teacher_gets_a_new_cache(tmp_path):
    teacher = tmp_path / "teacher"
    data = D.DataConfig(**DATA)
    arrays = D.load(data)
    cfg = T.TrainConfig(**{**CFG, "epochs": 1})
    T.run_train(teacher, "resnet18", 0, data, cfg)
    first = T.teacher_cache(teacher, arrays, "flip", False, torch.device("cpu"))["logits"]
    T.run_train(teacher, "resnet18", 1, data, cfg)  # retrained in place, as a standalone notebook would
    second = T.teacher_cache(teacher, arrays, "flip", False, torch.device("cpu"))["logits"]
    assert not torch.allclose(first[0], second[0])
    expected, _ = predict(load_run(teacher).model, arrays.images["train"], amp=False)
    np.testing.assert_allclose(second[0].numpy(), expected, atol=1e-5)
    assert len(list(teacher.glob("teacher_cache_*.pt"))) == 1  # the stale cache is gone


@pytest.mark.usefixtures("data_dir")  # DATA reads the default (real) data folder
def test_the_cache_step_builds_the_cache_its_students_read(tmp_path):
    """The runner's cache step (on Dask, right after the teacher) builds from the teacher's own images the very
    file a student then reads: the student does not build it again."""
    teacher = tmp_path / "teacher"
    data = D.DataConfig(**DATA)
    T.run_train(teacher, "resnet18", 0, data, T.TrainConfig(**{**CFG, "epochs": 1}))
    assert not list(teacher.glob("teacher_cache_*.pt"))
    T.build_teacher_cache(teacher, "dihedral", False, "cpu", 2)
    (built,) = teacher.glob("teacher_cache_*.pt")
    stamp = built.stat().st_mtime_ns
    cache = T.teacher_cache(teacher, D.load(data), "dihedral", False, torch.device("cpu"))  # what a student asks for
    assert list(teacher.glob("teacher_cache_*.pt")) == [built] and built.stat().st_mtime_ns == stamp
    expected, _ = predict(load_run(teacher).model, D.load(data).images["train"], amp=False)
    np.testing.assert_allclose(cache["logits"][0].numpy(), expected, atol=1e-5)


def test_cache_requests_name_each_teachers_caches():
    specs = R.expand(R.load_profile("smoke"), Path("/tmp/unused"))
    requests = R.cache_requests(specs)
    assert list(requests) == ["teacher-resnet50-s0:teacher"]  # the no-KD students ask for nothing
    # ... and never wait for the cache step (which waits for the teacher): they run beside the teacher on Dask
    assert {s.parameters["kd"]["mode"] for s in specs if R.reads_cache(s)} == {"hinton"}
    assert not any(R.reads_cache(s) for s in specs if s.stage == "student" and s.parameters["kd"]["mode"] == "none")
    (request,) = requests["teacher-resnet50-s0:teacher"]
    assert request["maps"] is True and request["augment"] == "dihedral" and request["teacher_dir"].endswith("teacher-resnet50-s0")
    default = R.cache_requests(R.expand(R.load_profile("default"), Path("/tmp/unused")))
    assert len(default) == 1 and all(r["maps"] is False for rs in default.values() for r in rs)


def test_corrupted_image_is_found_even_with_a_warm_cache(arrays28, data_dir, tmp_path):
    """``arrays28`` warmed the default cache from the real folder; another folder must not reuse it."""
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    for p in (data_dir / "images").iterdir():
        (root / "images" / p.name).symlink_to(p)
    for name in ("HAM10000_metadata.csv", "dermamnist_split.csv"):
        shutil.copy(data_dir / name, root / name)
    first = pd.read_csv(root / "dermamnist_split.csv")["image_id"].iloc[0]
    target = root / "images" / f"{first}.jpg"
    payload = target.read_bytes()
    target.unlink()
    target.write_bytes(payload[: len(payload) // 3])
    with pytest.raises(D.DataError, match=f"{first}.jpg is truncated or corrupt"):
        D.get_dermamnist(28, "raw", root)
    assert D.source_fingerprint(root) != D.source_fingerprint(data_dir)


def test_data_fingerprint_follows_content_not_mtimes(data_dir, tmp_path):
    """A byte-identical copy with new mtimes (a re-download, a re-mounted share) keeps stages fresh; one changed
    byte does not."""
    split = pd.read_csv(data_dir / "dermamnist_split.csv")
    copies = []
    for name in ("a", "b"):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        for image_id in split["image_id"].iloc[:3]:
            shutil.copyfile(data_dir / "images" / f"{image_id}.jpg", root / "images" / f"{image_id}.jpg")
        for csv in ("HAM10000_metadata.csv", "dermamnist_split.csv"):
            shutil.copyfile(data_dir / csv, root / csv)
        copies.append(root)
    for image in (copies[1] / "images").iterdir():
        os.utime(image, (1e9, 1e9))
    assert D.source_fingerprint(copies[0]) == D.source_fingerprint(copies[1])
    image = sorted((copies[1] / "images").iterdir())[0]
    payload = bytearray(image.read_bytes())
    payload[-3] ^= 0xFF
    image.write_bytes(bytes(payload))
    assert D.source_fingerprint(copies[0]) != D.source_fingerprint(copies[1])


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_ordinary_modes(tmp_path, mask):
    previous = os.umask(mask)
    try:
        F.atomic_write(tmp_path / "a.bin", lambda fh: fh.write(b"x"))
        T.write_json({"a": 1}, tmp_path / "m.json")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.bin": 0o666 & ~mask, "m.json": 0o666 & ~mask, "plain.txt": 0o666 & ~mask}


def test_clear_results_keeps_only_bookkeeping(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("evaluate.ipynb", ".done-evaluate.json", "metrics.csv", "sub/x.png"):
        (tmp_path / name).write_text("x")
    F.clear_results(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".done-evaluate.json", "evaluate.ipynb"]


def test_eta_scales_planned_work_by_measured_speed_and_workers():
    """The ETA is the planned work left, scaled by actual/planned time of the finished training runs (the plan
    itself before one finishes), shared by the workers except for the exclusive (timing) stages; a failed run
    or a quick non-training stage does not calibrate it."""
    from types import SimpleNamespace

    from edgekd.pipeline.progress import Tracker

    stages = {"d": "data", "a": "student", "b": "student", "c": "teacher", "x": "student", "e": "efficiency"}
    specs = {k: SimpleNamespace(key=k, run_id=k, stage=st, run_dir=Path("."), stage_dir=Path("."),
                                 trains=st in ("teacher", "student"))
             for k, st in stages.items()}
    seconds = {"d": 30.0, "a": 100.0, "b": 100.0, "c": 200.0, "x": 400.0, "e": 50.0}
    plan = SimpleNamespace(specs=list(specs.values()), measured=True, seconds=seconds, total=sum(seconds.values()))
    lines: list[str] = []
    tracker = Tracker(plan, lines.append, workers=2, exclusive=frozenset({"e"}))
    assert tracker.eta() == pytest.approx((30 + 100 + 100 + 200 + 400) / 2 + 50)
    tracker.done(specs["d"], 3.0)                        # the data stage ran 10x faster: not a training speed
    assert tracker.eta() == pytest.approx((100 + 100 + 200 + 400) / 2 + 50)
    tracker.done(specs["a"], 150.0)                      # ran 1.5x slower than planned
    assert tracker.eta() == pytest.approx(1.5 * ((100 + 200 + 400) / 2 + 50))
    tracker.done(specs["b"], RuntimeError("boom"))       # failures say nothing about speed
    assert tracker.eta() == pytest.approx(1.5 * ((200 + 400) / 2 + 50))
    tracker.done(specs["c"], 100.0)                      # now 250 s for 300 planned
    assert tracker.eta() == pytest.approx(250 / 300 * (400 / 2 + 50))
    assert "ETA" in lines[-1] and lines[2].startswith("[FAILED] b")
    tracker.close()
