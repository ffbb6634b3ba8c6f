"""Published reference results: the reproduction verdicts, edgekd-publish on the smoke run (refusals, what it copies,
provenance), the reproduction report of an unchanged run, and the paper rendered from the published copy alone."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from edgekd.core import info
from edgekd.paper import render, supplement
from edgekd.pipeline import publish, reproduce
from edgekd.pipeline import runner as R
from edgekd.pipeline.plan import PARAMS_DIR

MACHINE = {"cpu": "CPU A", "cpu_capability": "AVX2", "gpu": None, "torch_threads": 2, "torch": "2.14.1",
           "timm": "1.0.31", "numpy": "2.4.6", "onnxruntime": "1.32.0"}


def write_results(folder, rows, machine=MACHINE):
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["model", "label", "metric", "n_seeds", "mean", "ci_low", "ci_high"]).to_csv(
        folder / "seed_metrics.csv", index=False)
    (folder / "provenance.json").write_text(json.dumps({"machine": machine}))


def test_compare_gives_one_verdict_per_number(tmp_path):
    ref = [("m", "M", "accuracy", 3, 0.80, 0.75, 0.85), ("m", "M", "macro_f1", 3, 0.60, 0.55, 0.65),
           ("m", "M", "auc", 3, 0.90, 0.88, 0.92), ("t", "T", "accuracy", 1, 0.70, float("nan"), float("nan")),
           ("gone", "G", "accuracy", 3, 0.5, 0.4, 0.6)]
    rep = [("m", "M", "accuracy", 3, 0.80, 0.70, 0.90), ("m", "M", "macro_f1", 3, 0.62, 0.5, 0.7),
           ("m", "M", "auc", 3, 0.95, 0.9, 0.99), ("t", "T", "accuracy", 1, 0.71, float("nan"), float("nan"))]
    write_results(tmp_path / "ref", ref)
    write_results(tmp_path / "same", rep)
    table = reproduce.compare(tmp_path / "ref", tmp_path / "same").set_index(["model", "metric"])
    assert table.loc[("m", "accuracy"), "verdict"] == "bitwise identical"
    assert table.loc[("m", "macro_f1"), "verdict"].startswith("within seed noise")
    assert table.loc[("m", "macro_f1"), "delta"] == pytest.approx(0.02) and table.loc[("m", "macro_f1"), "within_ci"]
    assert table.loc[("m", "auc"), "verdict"].startswith("outside the reference's seed interval")
    assert table.loc[("t", "accuracy"), "verdict"].startswith("differs; the reference has one seed")
    assert table.loc[("gone", "accuracy"), "verdict"] == "missing in the reproduction"
    assert "same machine" in table.loc[("m", "auc"), "verdict"]
    write_results(tmp_path / "other", rep, {**MACHINE, "cpu": "CPU B", "torch_threads": 4})
    other = reproduce.compare(tmp_path / "ref", tmp_path / "other")
    assert other.attrs["machine_differences"] == ["CPU: CPU A → CPU B", "PyTorch threads: 2 → 4"]
    assert other.set_index(["model", "metric"]).loc[("m", "auc"), "verdict"].endswith("likely hardware or thread differences")
    line = reproduce.summary(other)
    assert line.startswith("5 numbers: 1 bitwise identical, 1 within seed noise, 1 outside") and "CPU B" in line


def test_publish_refuses_a_profile_without_aggregate(tmp_path):
    with pytest.raises(publish.NotPublishable, match="no numbers.json"):
        publish.publish("smoke", tmp_path / "outputs", tmp_path / "results")
    assert publish.main(["smoke", "--outputs", str(tmp_path / "outputs"), "--results", str(tmp_path / "results")]) == 2
    assert not (tmp_path / "results").exists()


def test_publish_refuses_a_stale_stage(smoke_outputs, tmp_path):
    root, _ = smoke_outputs
    marker = root / "student-resnet18-kdat-s0" / "eval" / ".done-evaluate.json"
    saved = marker.read_text()
    try:
        mark = json.loads(saved)
        mark["components"]["params"] = "edited"
        marker.write_text(json.dumps(mark))
        with pytest.raises(publish.NotPublishable, match=r"student-resnet18-kdat-s0 \(evaluate\): stale, params"):
            publish.publish("smoke", root.parent, tmp_path)
    finally:
        marker.write_text(saved)


@pytest.fixture(scope="module")
def published(smoke_outputs, tmp_path_factory):
    root, _ = smoke_outputs
    results = tmp_path_factory.mktemp("results")
    assert publish.main(["smoke", "--outputs", str(root.parent), "--results", str(results)]) == 0
    return results / "smoke"


def test_publish_copies_only_small_files_with_provenance(published, smoke_outputs):
    root, _ = smoke_outputs
    files = sorted(p.name for p in published.iterdir())
    assert {p.suffix for p in published.iterdir()} <= {".csv", ".json", ".png"}
    assert {"numbers.json", "seed_metrics.csv", "performance.csv", "excluded_runs.csv", "provenance.json"} <= set(files)
    assert (root / "aggregate" / ".done-aggregate.json").exists() and not [f for f in files if f.startswith(".")]
    assert sum(p.stat().st_size for p in published.iterdir()) < publish.MAX_TOTAL_BYTES
    for name in files:
        if name != "provenance.json":
            assert (published / name).read_bytes() == (root / "aggregate" / name).read_bytes(), name
    prov = json.loads((published / "provenance.json").read_text())
    assert prov["profile_sha256"] == hashlib.sha256((PARAMS_DIR / "smoke.yaml").read_bytes()).hexdigest()
    assert len(prov["git"]["commit"]) == 40 and prov["machine"]["cpu"] and prov["versions"]["torch"]
    times = prov["stage_wall_time_s"]
    assert times["evaluate"]["runs"] == 7 and times["student"]["runs"] == 6 and times["aggregate"]["wall_time_s"] > 0
    assert prov["total_wall_time_s"] == pytest.approx(sum(t["wall_time_s"] for t in times.values()), abs=1)
    segments = pd.read_csv(root / "invocations.csv")  # the smoke run, and no later runner that ran nothing
    assert prov["invocations"] == len(segments) >= 1 and segments["ran"].sum() == sum(t["runs"] for t in times.values())
    assert prov["elapsed_wall_time_s"] == pytest.approx(segments["elapsed_s"].sum()) and prov["elapsed_wall_time_s"] > 0


def test_elapsed_wall_time_sums_the_segments_of_a_resumed_job(tmp_path, monkeypatch):
    """A main job killed and resumed is two runner invocations: the killed one's row holds its time up to its last
    finished step (written as it goes), and the reference's elapsed time is the sum of both."""
    assert publish.elapsed(tmp_path) == {"elapsed_wall_time_s": None, "invocations": None}
    # Each invocation reads the clock when it starts and at every write (its first row, each step, the finish).
    clock = iter([100.0, 100.0, 2000.0, 3700.0,  # the killed one: one step ran, one failed; it never finishes
                  0.0, 0.0, 900.0, 1800.4])  # the resumed one: one step ran, then it finishes
    monkeypatch.setattr(R.time, "monotonic", lambda: next(clock))
    killed = R.Invocation(tmp_path, "dask", 2)
    killed.step(12.0)
    killed.step(RuntimeError("kernel died"))
    resumed = R.Invocation(tmp_path, "dask", 2)
    resumed.step(30.0)
    resumed.finish(pd.DataFrame({"status": ["fresh", "fresh", "ran"]}))
    segments = pd.read_csv(tmp_path / "invocations.csv")
    assert list(segments["ran"]) == [1, 1] and list(segments["failed"]) == [1, 0] and list(segments["workers"]) == [2, 2]
    assert list(segments["finished"]) == [False, True] and list(segments["elapsed_s"]) == [3600.0, 1800.4]
    assert publish.elapsed(tmp_path) == {"elapsed_wall_time_s": 5400.4, "invocations": 2}


def test_reproduction_report_of_the_same_run_is_bitwise_identical(published, smoke_outputs):
    root, _ = smoke_outputs
    report = publish.reproduction_report("smoke", root.parent, published.parent)
    lines = report.splitlines()
    n = len(lines) - 2
    assert lines[0].startswith("[reproduction]") and n > 0
    assert lines[1].startswith(f"{n} numbers: {n} bitwise identical, 0 within seed noise, 0 outside")
    assert publish.reproduction_report("smoke", root.parent, published.parent / "nothing") == ""


def test_clean_clone_renders_the_paper_from_published_results(published, tmp_path, monkeypatch):
    """No outputs at all: the paper reads paper/results/<profile>, says so, and passes the browser check, fast."""
    results = tmp_path / "results"
    shutil.copytree(published, results / "smoke")
    monkeypatch.setenv(info.OUTPUTS_ENV, str(tmp_path / "empty_outputs"))
    monkeypatch.setenv(info.RESULTS_ENV, str(results))
    t0 = time.time()
    html = render.render_fallback("smoke", out_dir=tmp_path / "paper")
    pdf = render.write_pdf(html, tmp_path / "paper" / "paper.pdf")
    assert time.time() - t0 < 120 and pdf.stat().st_size > 100_000
    text = " ".join(html.read_text().split())
    assert "the published reference in <code>" in text and "reads the published reference itself" in text
    assert render.problems(render.browser_check(html)) == []


def test_each_step_records_the_machine_it_ran_on_and_publish_counts_them(tmp_path, monkeypatch):
    """A marker records the CPU kind its step ran on (results are bitwise only within one kind), outside the digest;
    the provenance lists the machines a reference's steps ran on, a resumed job on another kind included."""
    stage = tmp_path / "outputs" / "run" / "student"
    spec = SimpleNamespace(outputs_root=tmp_path / "outputs", stage_dir=stage, trains=True, key="run:student",
                           marker=stage / ".done-student.json", output_notebook=stage / "student.ipynb",
                           notebook=tmp_path / "nb.ipynb", parameters={}, notebooks_dir=tmp_path,
                           recorded=lambda: None, components=lambda: {"params": "p"})
    monkeypatch.setattr(R.pm, "execute_notebook", lambda *a, **k: None)
    R.execute(spec)
    mark = json.loads(spec.marker.read_text())
    assert set(mark["machine"]) == {"cpu", "cpu_capability", "gpu"} and mark["machine"]["cpu"]
    assert mark["digest"] == R._sha(json.dumps(mark["components"], sort_keys=True).encode())  # the machine is not in it

    def done(machine: dict | None) -> SimpleNamespace:
        return SimpleNamespace(recorded=lambda: {"digest": "d", **({"machine": machine} if machine else {})})
    avx2, avx512 = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "gpu": None}, {"cpu": "Xeon", "cpu_capability": "AVX512",
                                                                                  "gpu": None}
    specs = [done(avx512), done(avx2), done(avx512), done(None), SimpleNamespace(recorded=lambda: None)]
    assert publish.run_machines(specs) == [{**avx512, "steps": 2}, {**avx2, "steps": 1},
                                           {"cpu": None, "cpu_capability": None, "gpu": None, "steps": 1}]


def test_the_paper_names_the_machines_only_when_the_steps_ran_on_more_than_one():
    one = [{"cpu": "Xeon", "cpu_capability": "AVX512", "gpu": None, "steps": 9},
           {"cpu": None, "cpu_capability": None, "gpu": None, "steps": 4}]  # markers written before the record
    two = one + [{"cpu": "AMD EPYC", "cpu_capability": "AVX2", "gpu": None, "steps": 1}]
    assert supplement._machines({"run_machines": one}) == supplement._machines({}) == ""
    assert supplement._machines({"run_machines": two}) == (" Its steps ran on 2 kinds of machine: 9 steps on Xeon "
                                                           "(AVX512); 1 step on AMD EPYC (AVX2).")
