"""Runner: profile expansion, bad input caught before compute, and the smoke profile end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbclient
import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from jupyter_client.manager import AsyncKernelManager

from edgekd.pipeline import plan as PL
from edgekd.pipeline import progress as PR
from edgekd.pipeline import runner as R
from edgekd.pipeline.kernels import KERNEL_ENV, IPCKernelManager


def _profile(tmp_path, **edits):
    prof = yaml.safe_load((PL.PARAMS_DIR / "smoke.yaml").read_text())
    for dotted, value in edits.items():
        node = prof
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(leaf) if isinstance(node, list) else leaf] = value
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def test_smoke_expands_teacher_before_students(tmp_path):
    specs = R.expand(R.load_profile("smoke"), tmp_path)
    stages = [s.stage for s in specs]
    assert stages[:2] == ["data", "teacher"] and stages[2:9].count("student") == 6
    assert [st for st in stages[9:] if st in ("data", "teacher", "student")] == []
    assert stages[-1] == "aggregate" and len(specs[-1].upstream) == 7 + 3 + 3
    # every run is evaluated; robustness and efficiency cover the teacher and the 2 seed-0 KD students
    assert [stages.count(stage) for stage in ("evaluate", "robustness", "efficiency")] == [7, 3, 3]
    for stage in ("robustness", "efficiency"):
        assert sorted(s.run_id for s in specs if s.stage == stage) == [
            "student-mobilenetv2_100-kdat-s0", "student-resnet18-kdat-s0", "teacher-resnet50-s0"]
    # the export of a model comes right after its last seed has trained, and reads all its seeds
    export = next(s for s in specs if s.stage == "export")
    assert stages.count("export") == 1 and export.run_id == "student-resnet18-kdat"
    assert specs[specs.index(export) - 1].run_id == "student-resnet18-kdat-s1"
    assert [u.run_id for u in export.upstream] == ["student-resnet18-kdat-s0", "student-resnet18-kdat-s1"]
    evals = {s.run_id: s for s in specs if s.stage == "evaluate"}
    assert evals["teacher-resnet50-s0"].parameters["teacher_dir"] is None
    assert evals["student-resnet18-nokd-s1"].parameters["teacher_dir"] == str(specs[1].run_dir)
    latency = {s.run_id: s.parameters["latency"] for s in specs if s.stage == "efficiency"}
    assert all(latency.values()) and "student-resnet18-kdat-s1" not in latency
    every_seed = R.expand(R.load_profile(_profile(tmp_path, **{"efficiency.seeds": None})), tmp_path)
    latency = {s.run_id: s.parameters["latency"] for s in every_seed if s.stage == "efficiency"}
    assert latency["student-resnet18-kdat-s0"] and not latency["student-resnet18-kdat-s1"]  # latency_seeds: [0]
    students = [s for s in specs if s.stage == "student"]
    assert len(students) == (2 + 1) * 2  # (archs + ResNet-18's second seed) x KD settings
    for s in students:
        distils = s.parameters["kd"]["mode"] != "none"
        assert s.parameters["teacher_dir"] == (str(specs[1].run_dir) if distils else None)
        assert [u.key for u in s.upstream] == ([specs[1].key] if distils else [])  # no-KD never reads the teacher
    assert {s.parameters["kd"]["mode"] for s in students} == {"hinton", "none"}


def test_kd_setting_can_name_its_own_archs(tmp_path):
    path = _profile(tmp_path, **{"students.kd.0.archs": ["resnet18"], "students.arch_seeds": None})
    students = [s.run_id for s in R.expand(R.load_profile(path), tmp_path) if s.stage == "student"]
    assert students == ["student-resnet18-kdat-s0", "student-resnet18-kdat-s1",
                        *(f"student-{arch}-nokd-s{seed}" for arch in ("resnet18", "mobilenetv2_100") for seed in (0, 1))]


def test_every_profile_is_valid(tmp_path):
    for path in PL.PARAMS_DIR.glob("*.yaml"):
        assert R.expand(R.load_profile(path), tmp_path), path


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"students.archs": ["resnet18", "resnet1000"]}, "unknown architecture 'resnet1000'"),
        ({"teacher.arch": "vgg16"}, "unknown architecture 'vgg16'"),
        ({"students.kd.0.alpha": 1.5}, "alpha must lie in"),
        ({"students.kd.0.alpha": -0.1}, "alpha must lie in"),
        ({"students.kd.0.temperature": 0.0}, "temperature T must be > 0"),
        ({"students.kd.0.beta": -1.0}, "beta must be >= 0"),
        ({"data.size": 32}, "not one of the DermaMNIST sizes"),
        ({"data.data_dir": "/nonexistent/ham10000"}, "does not exist"),
        ({"train.epochs": 0}, "epochs must be >= 1"),
        ({"students.kd.0.gamma": 2}, "unexpected keyword"),
        ({"robustness.suites": ["source", "imagenet-c"]}, "imagenet-c"),
        ({"robustness.severities": {"source": [0.15]}}, "0.15"),
        ({"efficiency.latency": True}, "unknown keys"),
        ({"students.kd.0.archs": ["resnet50"]}, "archs must be a non-empty list drawn from students.archs"),
        ({"students.kd.0.archs": "resnet18"}, "archs must be a non-empty list"),
    ],
)
def test_bad_profile_fails_before_any_output(tmp_path, edits, message):
    path = _profile(tmp_path, **edits)
    outputs = tmp_path / "outputs"
    with pytest.raises(ValueError, match=message):
        R.run_profile(path, outputs)
    assert not outputs.exists()


def test_cli_reports_bad_input(tmp_path, capsys):
    path = _profile(tmp_path, **{"students.kd.0.temperature": -1})
    assert R.main([str(path), "--outputs", str(tmp_path / "out")]) == 2
    assert "temperature T must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_profile(tmp_path):
    with pytest.raises(R.ConfigError, match="known profiles"):
        R.load_profile("no-such-profile")


def test_smoke_profile_end_to_end(smoke_outputs):
    root, _ = smoke_outputs
    # a successful run's log reads clean: no ERROR line (e.g. ipykernel's "KeyboardInterrupt caught in kernel" when
    # a finished kernel is interrupted before its shutdown) and no traceback, on stdout or stderr
    log = "".join((root.parent.parent / f"{root.parent.name}-runner.{kind}").read_text() for kind in ("out", "err"))
    assert not [line for line in log.splitlines() if re.search(r"\bERROR\b|Traceback", line)], log[-3000:]
    specs = R.expand(R.load_profile("smoke"), root.parent)
    for spec in specs:
        assert spec.output_notebook.exists(), spec.key
        assert spec.status() == ("fresh", []), spec.key
    for spec in specs:
        if spec.stage in ("teacher", "student"):
            metrics = json.loads((spec.run_dir / "metrics.json").read_text())
            hist = pd.read_csv(spec.run_dir / "history.csv")
            assert len(hist) == 2 and metrics["best_epoch"] == int(hist.loc[hist["val_macro_f1"].idxmax(), "epoch"])
            pred = np.load(spec.run_dir / "predictions.npz")
            assert len(pred["test_labels"]) == 280 and len(pred["val_labels"]) == 210
            assert metrics["test_acc"] == pytest.approx(float((pred["test_logits"].argmax(1) == pred["test_labels"]).mean()))
            assert metrics["val_macro_f1"] == pytest.approx(hist["val_macro_f1"].max())
            ev = pd.read_csv(spec.run_dir / "eval" / "metrics.csv").set_index("metric")
            assert ev.loc["accuracy", "value"] == pytest.approx(metrics["test_acc"])
            assert (spec.run_dir / "eval" / "reliability.png").exists()
            assert (spec.run_dir / "eval" / "paired.csv").exists() == (spec.stage == "student")
            # robustness and efficiency on the seed-0 models that are not no-KD students
            scored = spec.parameters["seed"] == 0 and spec.parameters.get("kd", {}).get("mode") != "none"
            assert (spec.run_dir / "robustness").exists() == scored
            assert (spec.run_dir / "efficiency").exists() == scored
            if not scored:
                continue
            rob = pd.read_csv(spec.run_dir / "robustness" / "corruptions.csv")
            assert set(rob["suite"]) == {"source", "medmnistc"}
            backends = pd.read_csv(spec.run_dir / "efficiency" / "backends.csv").set_index("backend")
            assert backends.loc["ort_fp32", "max_abs_logit_diff_vs_eager"] <= 1e-4  # ONNX Runtime parity
            assert (spec.run_dir / "efficiency" / "latency.csv").exists()
    agg = root / "aggregate"
    # Two epochs on 560 images: the collapse guard flags some runs (collapse: warn). Exactly those runs are
    # excluded, and every table is built from the others.
    trained = [s for s in specs if s.stage in ("teacher", "student")]
    collapsed = {s.run_id for s in trained if json.loads((s.run_dir / "metrics.json").read_text())["collapsed"]}
    assert set(pd.read_csv(agg / "excluded_runs.csv")["run_id"]) == collapsed
    model_of = {s.run_id: s.run_id.rsplit("-s", 1)[0] for s in trained if s.run_id not in collapsed}  # valid runs
    assert model_of, "every smoke run collapsed: nothing left to aggregate"
    for name in ("performance.csv", "calibration.csv", "operating_points.csv", "robustness.csv", "efficiency.csv",
                 "pareto.csv", "pareto.png", "reliability.png", "corruption_curves.png", "training_curves.png",
                 "gradcam.png", "montage.png", "numbers.json", "runs.csv"):
        assert (agg / name).exists(), name
    pairs = [i for i in model_of if "-kdat-" in i and i.replace("-kdat-", "-nokd-") in model_of]
    assert (agg / "paired_kd.csv").exists() == bool(pairs)
    seeds_of = pd.Series(list(model_of.values())).value_counts()
    perf = pd.read_csv(agg / "performance.csv").set_index("model")
    assert sorted(perf.index) == sorted(seeds_of.index)
    assert all(perf.loc[m, "seeds"] == n for m, n in seeds_of.items())
    # BE / rBE per model: the seed mean of each valid run's MedMNIST-C 'mean' row
    be = pd.read_csv(agg / "be_rbe.csv").set_index("model")
    model = seeds_of.index[0]
    runs = [root / run_id for run_id, m in model_of.items() if m == model]
    per_run = pd.concat(pd.read_csv(r / "robustness" / "medmnistc_be_rbe.csv").query("corruption == 'mean'") for r in runs)
    row = be.loc[model]
    assert row["seeds"] == len(runs)
    assert row["be"] == pytest.approx(per_run["be"].mean()) and row["rbe"] == pytest.approx(per_run["rbe"].mean())
    assert be[["balanced_error", "be", "rbe"]].notna().all().all()
    assert (root / "data" / "montage.png").exists()
    leakage = pd.read_csv(root / "data" / "leakage.csv")
    assert set(leakage["splits"]) == {"train-val", "train-test", "val-test", "any"}


def test_rerun_skips_finished_runs(smoke_outputs):
    root, _ = smoke_outputs
    res = subprocess.run([sys.executable, "-m", "edgekd.pipeline.runner", "smoke", "--outputs", str(root.parent)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.strip() and ln.split()[0] in ("fresh", "ran", "failed", "blocked")]
    assert len(lines) == len(R.expand(R.load_profile("smoke"), root.parent)), res.stdout
    assert all(ln.split()[0] == "fresh" for ln in lines), res.stdout
    assert "[plan] nothing to run" in res.stdout



def test_lesion_pair_settings_filters_and_overrides(tmp_path):
    path = _profile(tmp_path, **{
        "lesion": {"archs": ["resnet18"], "kd": ["nokd"], "seeds": [1]},
        "students.kd.0.train": {"lr": 0.01},
        "robustness.settings": ["nokd"], "robustness.seeds": [0],
        "efficiency.seeds": [1], "efficiency.settings": None, "students.arch_seeds": None,
    })
    specs = R.expand(R.load_profile(path), tmp_path)
    by_key = {s.key: s for s in specs}
    lesion = [s for s in specs if "-lesion" in s.run_id]
    # no-KD students only: no lesion teacher is trained (nothing distils from it)
    assert [s.key for s in lesion if s.trains] == ["student-resnet18-nokd-lesion-s1:student"]
    assert all(s.parameters["data"]["split"] == "lesion" for s in lesion if "data" in s.parameters)
    assert {s.stage for s in lesion} == {"student", "evaluate"}  # no robustness/efficiency/export
    assert by_key["student-resnet18-nokd-lesion-s1:evaluate"].parameters["teacher_dir"] is None
    # with a distilling setting in the pair, its teacher is trained on the lesion split too
    pair = R.expand(R.load_profile(_profile(tmp_path, lesion={"archs": ["resnet18"], "kd": ["kdat", "nokd"],
                                                              "seeds": [1]})), tmp_path)
    pair_keys = {s.key: s for s in pair}
    assert [s.key for s in pair if "-lesion" in s.run_id and s.trains] == [
        "teacher-resnet50-lesion-s1:teacher", "student-resnet18-kdat-lesion-s1:student",
        "student-resnet18-nokd-lesion-s1:student"]
    teacher_dir = str(pair_keys["teacher-resnet50-lesion-s1:teacher"].run_dir)
    assert pair_keys["student-resnet18-kdat-lesion-s1:student"].parameters["teacher_dir"] == teacher_dir
    assert pair_keys["student-resnet18-nokd-lesion-s1:evaluate"].parameters["teacher_dir"] == teacher_dir
    # a KD setting's own train overrides apply to its students only
    assert by_key["student-resnet18-kdat-s0:student"].parameters["train"]["lr"] == 0.01
    assert by_key["student-resnet18-nokd-s0:student"].parameters["train"]["lr"] == 0.002
    rob = sorted(s.run_id for s in specs if s.stage == "robustness")
    assert rob == ["student-mobilenetv2_100-nokd-s0", "student-resnet18-nokd-s0", "teacher-resnet50-s0"]
    efficiency = [s.run_id for s in specs if s.stage == "efficiency"]
    assert len(efficiency) == 4 and all(r.endswith("-s1") for r in efficiency)  # seed 1 of every student


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"lesion": {"archs": ["resnet34"]}}, "lesion: archs must be among"),
        ({"lesion": {"kd": ["nope"]}}, "lesion: archs must be among"),
        ({"robustness.settings": ["nope"]}, "robustness.settings"),
        ({"export": {"models": ["student-resnet18-nope"]}}, "export.models"),
        ({"export": {"every": True}}, "export: unknown keys"),
        ({"students.kd.0.name": "KD-at"}, "unique 'name' of"),
        ({"students.kd.0.train": {"lr": -1}}, "lr must be > 0"),
        ({"students.arch_seeds": {"resnet34": [0]}}, "students.arch_seeds: keys must be among"),
        ({"students.arch_seeds": {"resnet18": [5]}}, r"students.arch_seeds.resnet18: must be drawn from students.seeds \[0, 1\]"),
        ({"students.arch_seeds": {"resnet18": []}}, "students.arch_seeds.resnet18"),
    ],
)
def test_bad_new_profile_keys(tmp_path, edits, message):
    with pytest.raises(R.ConfigError, match=message):
        R.expand(R.load_profile(_profile(tmp_path, **edits)), tmp_path)


def test_arch_seeds_narrow_one_architecture_in_every_setting(tmp_path):
    specs = R.expand(R.load_profile(_profile(tmp_path, **{"students.arch_seeds": {"mobilenetv2_100": [1]}})), tmp_path)
    trained = [s.run_id for s in specs if s.stage == "student"]
    narrowed = [r for r in trained if "mobilenetv2_100" in r]
    assert narrowed and all(r.endswith("-s1") for r in narrowed)
    assert {r[-2:] for r in trained if "resnet18" in r} == {"s0", "s1"}
    assert not [s for s in specs if s.stage != "student" and s.run_id.startswith("student-mobilenetv2_100") and
                s.run_id.endswith("-s0")]


def test_a_kd_setting_trains_its_students_at_its_own_input_size(tmp_path):
    kd = [{"name": "kdat", "mode": "hinton"}, {"name": "nokd", "mode": "none"},
          {"name": "kd_128px", "mode": "hinton", "size": 128, "archs": ["resnet18"], "seeds": [0]}]
    specs = R.expand(R.load_profile(_profile(tmp_path, **{"students.kd": kd})), tmp_path)
    sizes = {s.run_id: s.parameters["data"]["size"] for s in specs if s.stage == "student"}
    assert sizes.pop("student-resnet18-kd_128px-s0") == 128
    assert set(sizes.values()) == {R.load_profile("smoke")["data"]["size"]}
    kd[2]["size"] = 96
    with pytest.raises(R.ConfigError, match=r"students.kd\[kd_128px\].size: .*96"):
        R.expand(R.load_profile(_profile(tmp_path, **{"students.kd": kd})), tmp_path)


def test_timing_stages_and_their_dependants_run_exclusively(tmp_path):
    specs = R.expand(R.load_profile("smoke"), tmp_path)
    exclusive = R._exclusive(specs)
    assert {k.split(":")[1] for k in exclusive} == {"efficiency", "aggregate"}
    assert sum(k.endswith(":efficiency") for k in exclusive) == 3


def _kernel_sees(manager: type, names: list[str]) -> dict[str, str]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"import json, os; print(json.dumps({{k: os.environ.get(k, 'unset') for k in {names!r}}}))")])
    nbclient.NotebookClient(nb, kernel_name="python3", kernel_manager_class=manager, timeout=120).execute()
    return json.loads(nb.cells[0].outputs[0]["text"])


def test_kernels_get_the_malloc_settings_in_place_of_a_dask_workers(monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 for its workers; a training kernel that inherits it
    mmaps and unmaps every tensor (about 2x slower epochs). The runner's kernels start with KERNEL_ENV instead."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    names = sorted(KERNEL_ENV)
    assert _kernel_sees(AsyncKernelManager, names)["MALLOC_TRIM_THRESHOLD_"] == "65536"  # inherited otherwise
    assert _kernel_sees(IPCKernelManager, names) == KERNEL_ENV
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # the worker's own environment is untouched


def test_kernels_wait_passively_whatever_the_parent_says(monkeypatch):
    """Two 2-thread torch kernels on 2 cores spin against each other with OpenMP's active waiting."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert _kernel_sees(IPCKernelManager, ["OMP_WAIT_POLICY"]) == {"OMP_WAIT_POLICY": "PASSIVE"}


#: Trains the synthetic-data ResNet-18 of tests/fake_bundle.py with 2 threads; prints a digest of its weights and logits.
_TRAIN = ("import hashlib, sys, numpy as np, torch\n"
          "from pathlib import Path\n"
          "sys.path.insert(0, sys.argv[2])\n"
          "import fake_bundle as F\n"
          "from edgekd.stages import train as T\n"
          "base = Path(sys.argv[1])\n"
          "T.run_train(base / 'run', 'resnet18', 0, F.data_config(base), T.TrainConfig(**{**F.TRAIN, 'threads': 2}),"
          " T.KDConfig(mode='none'))\n"
          "h = hashlib.sha256()\n"
          "for k, v in sorted(torch.load(base / 'run' / 'best.pt', weights_only=True).items()):\n"
          "    h.update(k.encode() + v.numpy().tobytes())\n"
          "p = np.load(base / 'run' / 'predictions.npz')\n"
          "h.update(p['val_logits'].tobytes() + p['test_logits'].tobytes())\n"
          "print(h.hexdigest())")


def test_training_is_bitwise_the_same_whether_openmp_waits_actively_or_passively(tmp_path):
    """KERNEL_ENV's OMP_WAIT_POLICY=PASSIVE changes how idle threads wait, never what they compute."""
    here = str(Path(__file__).parent)

    def digest(policy: str) -> str:
        base = tmp_path / policy
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        return subprocess.run([sys.executable, "-c", _TRAIN, str(base), here], env=env, capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1]

    assert digest("ACTIVE") == digest("PASSIVE")


def _signals_at_shutdown(manager: type) -> list[int]:
    sent: list[int] = []

    class Recording(manager):
        async def _async_signal_kernel(self, signum: int) -> None:
            sent.append(signum)
            await super()._async_signal_kernel(signum)

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbclient.NotebookClient(nb, kernel_name="python3", kernel_manager_class=Recording, timeout=120).execute()
    return sent


def test_kernels_are_not_interrupted_when_a_finished_notebook_shuts_them_down():
    """jupyter_client interrupts (SIGINT) every kernel before asking it to shut down; where that lands in a message
    handler, ipykernel logs "ERROR | KeyboardInterrupt caught in kernel" after a successful stage."""
    assert signal.SIGINT in _signals_at_shutdown(AsyncKernelManager)  # what the runner's kernels would get otherwise
    assert signal.SIGINT not in _signals_at_shutdown(IPCKernelManager)


#: Allocates and fills a 64 MiB array 6 times; prints the minor page faults of each time.
_FAULTS = ("import json, resource, numpy as np\n"
           "def faults():\n    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
           "out = []\n"
           "for _ in range(6):\n    before = faults(); np.ones(16 << 20, np.float32); out.append(faults() - before)\n"
           "print(json.dumps(out))")


def test_kernel_env_keeps_large_arrays_off_fresh_page_faults():
    """What KERNEL_ENV is for: a 64 MiB array, above glibc's highest mmap threshold, is mmap-ed and page-faulted
    in anew every time without it, and reuses the heap (no new faults after the first) with it."""
    def faults(extra: dict[str, str]) -> list[int]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
        return json.loads(subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True,
                                         check=True).stdout)

    without, with_env = faults({}), faults(KERNEL_ENV)
    assert min(without[1:]) > 0, without
    assert sum(with_env[1:]) < 0.05 * sum(without[1:]), (without, with_env)


def _fake(key: str, *upstream) -> SimpleNamespace:
    return SimpleNamespace(key=key, upstream=list(upstream), after=[])


def test_the_longest_run_starts_first_and_the_estimate_says_so():
    """Two workers, two short runs listed before a long one: in plan order the long one starts last and the other
    worker idles; by critical path it starts first. A run's path includes what waits on it."""
    a, b, c = _fake("a"), _fake("b"), _fake("c")
    specs, seconds = [a, b, c, _fake("d", b)], {"a": 1.0, "b": 1.0, "c": 10.0, "d": 3.0}
    paths = PR.critical_paths(specs, seconds)
    assert paths == {"a": 1.0, "b": 4.0, "c": 10.0, "d": 3.0}
    plan_order = {s.key: len(specs) - i for i, s in enumerate(specs)}
    assert PR.simulate(specs, seconds, 2, plan_order) == 11.0  # a and b, then c (1-11) beside d (1-4)
    assert PR.simulate(specs, seconds, 2, paths) == 10.0  # c (0-10) beside b, d, a (0-5)
    plan = PR.Plan([], measure=False)
    plan.specs, plan.seconds = specs, seconds
    assert plan.wall(2) == 10.0 and plan.wall(2, priority=plan_order) == 11.0
    assert plan.wall(2, exclusive=frozenset({"d"})) == 10.0 + 3.0  # an exclusive run waits for the rest
