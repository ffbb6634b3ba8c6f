"""Could the default recipe show a KD gain? Students distilled from the profile's teacher and from a stronger one, on a GPU.

Issue 10's hygiene check: before concluding that KD does not help, make sure the setup could show a gain
(a teacher clearly stronger than its students, a simple strong baseline, enough seeds). Everything is
trained with the pipeline's own :func:`edgekd.stages.train.run_train` on the recipe of ``params/<profile>.yaml``:

* ResNet-50 teachers, seed 0: the profile's recipe (stem stride 2), and stem stride 1 (the 64 px input keeps
  4x more spatial detail; 4x the compute, which is what makes it too dear for the CPU profile) with the
  profile's epochs and with twice as many. The strongest on VALIDATION macro-F1 is the "strong" teacher.
* Every student on seeds ``0..n-1``: ``nokd`` (the profile's no-KD run), ``nokd16`` (the same for twice the
  epochs: a simple stronger baseline, and a measure of under-training), ``kd_t2`` (the profile's ``kd``
  setting from the profile's teacher) and ``kd_strong`` (the same setting from the strong teacher); on request
  ``kd16`` (``kd_t2`` for twice the epochs, to compare with ``nokd16`` at the same budget).

Each run writes ``eval/metrics.csv`` (:func:`edgekd.stages.evaluate.metrics_table`), so the paired comparison is
:func:`edgekd.stages.tables.paired_kd`, the paper's own: same seed, same initialisation and data order, t-interval
of the paired delta across seeds, pooled McNemar. Runs are scheduled seed by seed so that a deadline leaves
complete pairs. Decisions use validation scores; test numbers are reported, never used to choose.

    python3 scripts/kd_power.py --out DIR [--seeds 10 --workers 8 --deadline-s 420]
    .venv/bin/python scripts/kd_power.py --out /tmp/kdp --quick     # a CPU check of the whole path, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import active_children, get_context
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from edgekd.core import info, provenance
from edgekd.core.words import BASELINE
from edgekd.pipeline import plan
from edgekd.stages import data as D  # noqa: E402
from edgekd.stages import runs as RN
from edgekd.stages import tables as TB
from edgekd.stages.evaluate import metrics_table  # noqa: E402

#: teacher variant -> train overrides on the profile's teacher recipe (``epochs`` as a multiple of the profile's)
TEACHERS: dict[str, dict] = {"t2": {}, "t1": {"stem_stride": 1}, "t1long": {"stem_stride": 1, "epoch_factor": 2}}
PROFILE_TEACHER = "t2"
#: the student settings: (KD setting of the profile or None, teacher variant or "strong", epoch factor)
SETTINGS: dict[str, tuple[str | None, str | None, int]] = {
    "nokd": (None, None, 1), "nokd16": (None, None, 2), "kd_t2": ("kd", PROFILE_TEACHER, 1),
    "kd_strong": ("kd", "strong", 1), "kd16": ("kd", PROFILE_TEACHER, 2),
}
#: what a plain run trains (``kd16``, KD for twice the epochs, is asked for with ``--settings``)
DEFAULT_SETTINGS = ("nokd", "nokd16", "kd_t2", "kd_strong")
#: the second baseline (``edgekd.stages.tables.paired_kd`` pairs every setting with ``nokd``; a second pairing uses this)
LONG_BASELINE = "nokd16"


def recipes(profile: dict, quick: bool) -> tuple[dict, dict, dict, dict]:
    """Data config, teacher train config, per-arch student train configs (those of the no-KD setting) and the
    KD settings of ``profile``, exactly as :func:`edgekd.pipeline.plan.expand` builds them for the official split."""
    specs = [s for s in plan.expand(profile, info.outputs_dir()) if s.parameters.get("data", {}).get("split") == "official"]
    teacher = next(s.parameters for s in specs if s.stage == "teacher")
    students = [s for s in specs if s.stage == "student"]
    per_arch = {s.parameters["arch"]: dict(s.parameters["train"]) for s in students if s.setting == BASELINE}
    kd = {s.setting: s.parameters["kd"] for s in students}
    data, teacher_train = dict(teacher["data"]), dict(teacher["train"])
    if quick:
        data |= {"size": 28, "subset": {"train": 600, "val": 300, "test": 300}}
        teacher_train["epochs"] = 1
        for cfg in per_arch.values():
            cfg["epochs"] = 1
    return data, teacher_train, per_arch, kd


def job(run_dir: str, arch: str, seed: int, data: dict, train: dict, kd: dict | None, teacher_dir: str | None,
        n_resamples: int) -> dict:
    """Train one run and write its test metrics table; returns its summary (or the error)."""
    from edgekd.stages import train as T

    tick = time.time()
    try:
        cfg = D.DataConfig(**data)
        m = T.run_train(run_dir, arch, seed, cfg, T.TrainConfig(**train), T.KDConfig(**kd) if kd else None, teacher_dir)
        with np.load(Path(run_dir) / "predictions.npz") as z:
            logits, y = z["test_logits"], z["test_labels"]
        probs = softmax(logits, axis=1)
        (Path(run_dir) / "eval").mkdir(exist_ok=True)
        metrics_table(y, probs, n_resamples, 0).to_csv(Path(run_dir) / "eval" / "metrics.csv", index=False)
        return {"ok": True, "val_macro_f1": m["val_macro_f1"], "test_macro_f1": m["test_macro_f1"],
                "test_acc": m["test_acc"], "best_epoch": m["best_epoch"], "epochs": m["epochs"],
                "collapsed": m["collapsed"], "train_time_s": m["train_time_s"], "wall_s": time.time() - tick}
    except Exception:  # noqa: BLE001 - a failed run is recorded with its traceback, the study goes on
        return {"ok": False, "error": traceback.format_exc(limit=6), "wall_s": time.time() - tick}


class Study:
    """The queue of runs, released seed by seed as their teachers finish."""

    def __init__(self, root: Path, profile: dict, seeds: int, threads: int, quick: bool, n_resamples: int,
                 archs: list[str] | None = None, settings: tuple[str, ...] = DEFAULT_SETTINGS,
                 teachers: tuple[str, ...] = tuple(TEACHERS)) -> None:
        self.root, self.n_resamples = root, n_resamples
        self.data, teacher, per_arch, self.kd = recipes(profile, quick)
        self.t_arch = profile["teacher"]["arch"]
        self.teachers = {}
        for name in teachers:
            over = dict(TEACHERS[name])
            factor = over.pop("epoch_factor", 1)
            self.teachers[name] = {**teacher, **over, "epochs": teacher["epochs"] * factor, "threads": threads,
                                   "collapse": "warn", "progress": False}
        self.students = []  # seed-major: partial results are whole pairs
        for seed in range(seeds):
            for arch in archs or per_arch:
                train = per_arch[arch]
                for setting in settings:
                    kd_name, teacher_name, factor = SETTINGS[setting]
                    cfg = {**train, "epochs": train["epochs"] * factor, "threads": threads, "collapse": "warn",
                           "progress": False}
                    self.students.append((setting, arch, seed, cfg, kd_name, teacher_name))
        self.done_teachers: dict[str, float] = {}  # variant -> val macro-F1 (-1 if collapsed)
        self.failed_teachers: set[str] = set()
        self.strong: str | None = None
        self.rows: list[dict] = []

    def teacher_dir(self, name: str) -> Path:
        return self.root / f"teacher-{self.t_arch}-{name}-s0"

    def teacher_jobs(self) -> list[tuple[str, tuple]]:
        return [(f"teacher:{n}", (str(self.teacher_dir(n)), self.t_arch, 0, self.data, t, None, None, self.n_resamples))
                for n, t in self.teachers.items()]

    def next_student(self) -> tuple[str, tuple] | None:
        """The first queued student whose teacher is ready (none needed for no-KD)."""
        for i, (setting, arch, seed, cfg, kd_name, teacher_name) in enumerate(self.students):
            name = self.strong if teacher_name == "strong" else teacher_name
            if teacher_name is not None and name not in self.done_teachers:
                continue
            self.students.pop(i)
            run = self.root / f"student-{arch}-{setting}-s{seed}"
            kd = {**self.kd[kd_name], "teacher_cache": True} if kd_name else {"mode": "none"}
            teacher = str(self.teacher_dir(name)) if name else None
            return f"student:{setting}", (str(run), arch, seed, self.data, cfg, kd, teacher, self.n_resamples)
        return None

    def finished(self, label: str, args: tuple, result: dict, log) -> None:
        run = Path(args[0])
        self.rows.append({"run": run.name, "kind": label, "arch": args[1], "seed": args[2], **result})
        status = (f"val macro-F1 {result['val_macro_f1']:.3f}, test {result['test_macro_f1']:.3f}, "
                  f"{result['epochs']} ep in {result['train_time_s']:.0f}s" if result["ok"] else "FAILED")
        log(f"{run.name}: {status} (wall {result['wall_s']:.0f}s)")
        if not result["ok"]:
            log(result["error"])
        if label.startswith("teacher:"):
            name = label.split(":", 1)[1]
            if not result["ok"]:  # nothing is distilled from a failed teacher (a collapsed one is flagged in runs.csv)
                before = len(self.students)
                self.students = [s for s in self.students if s[5] != name]
                log(f"teacher {name} failed: {before - len(self.students)} of its students dropped")
                self.failed_teachers.add(name)
            else:
                self.done_teachers[name] = result["val_macro_f1"] if not result["collapsed"] else -1.0
            if len(self.done_teachers) + len(self.failed_teachers) < len(self.teachers):
                return
            if not self.done_teachers:
                self.students = [s for s in self.students if s[5] != "strong"]
            else:
                self.strong = max(self.done_teachers, key=self.done_teachers.get)
                log(f"strong teacher (best val macro-F1): {self.strong} {self.done_teachers[self.strong]:.3f}")


def run_study(study: Study, workers: int, deadline: float, log) -> None:
    """Keep ``workers`` runs in flight until the queue is empty or the clock passes ``deadline`` (``time.time()``)."""
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    queue = study.teacher_jobs()
    flying: dict[Future, tuple[str, tuple]] = {}
    while True:
        while len(flying) < workers and time.time() < deadline:
            nxt = queue.pop(0) if queue else study.next_student()
            if nxt is None:
                break
            flying[pool.submit(job, *nxt[1])] = nxt
        if not flying:
            break
        left = deadline + 60 - time.time()  # a minute's grace for the runs in flight
        done, _ = wait(flying, timeout=max(left, 1), return_when=FIRST_COMPLETED)
        if not done:
            log(f"deadline: {len(flying)} runs abandoned in flight, {len(study.students)} never started")
            break
        for f in done:
            label, args = flying.pop(f)
            study.finished(label, args, f.result(), log)
    if study.students and time.time() >= deadline:
        log(f"deadline: {len(study.students)} student runs never started")
    pool.shutdown(wait=False, cancel_futures=True)
    for child in active_children():  # runs abandoned in flight would hold the console open until killed
        child.terminate()


def tables(root: Path, rows: list[dict]) -> dict[str, pd.DataFrame]:
    """Per-run table, the paired deltas against ``nokd`` and against ``nokd16`` (runs of both members only)."""
    out = {"runs": pd.DataFrame(rows)}
    try:
        runs = RN.discover(root)
    except FileNotFoundError:
        return out
    paired, per_seed = TB.paired_kd(runs)
    out |= {"paired": paired, "paired_seeds": per_seed}
    students = runs[runs["role"] == "student"]
    long = students[students["setting"] != BASELINE].copy()
    long.loc[long["setting"] == LONG_BASELINE, "setting"] = BASELINE
    if (long["setting"] == BASELINE).any():
        out["paired_vs_nokd16"] = TB.paired_kd(long)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the tables, log and provenance")
    ap.add_argument("--runs", type=Path, default=None, help="folder of the runs (default: OUT/runs)")
    ap.add_argument("--profile", default="scratch", help="params/<profile>.yaml gives the recipe")
    ap.add_argument("--seeds", type=int, default=10, help="student seeds 0..n-1")
    ap.add_argument("--workers", type=int, default=8, help="runs in flight at once (processes sharing the GPU)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    ap.add_argument("--deadline-s", type=float, default=420, help="start no run after this many seconds from the start")
    ap.add_argument("--n-resamples", type=int, default=200, help="bootstrap resamples of each run's metrics table")
    ap.add_argument("--commit", default=None, help="git commit of this code (where the copy has no .git)")
    ap.add_argument("--archs", nargs="+", default=None, help="students to train (default: the profile's)")
    ap.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(SETTINGS),
                    help="student settings to train")
    ap.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS),
                    help=f"teacher variants to train ({PROFILE_TEACHER} is the profile's)")
    ap.add_argument("--quick", action="store_true", help="28 px, 600 train images, 1 epoch: checks the path on a CPU")
    args = ap.parse_args(argv)
    t0 = time.time()
    profile = plan.load_profile(args.profile)
    unknown = set(args.archs or []) - set(profile["students"]["archs"])
    if unknown:
        ap.error(f"--archs {sorted(unknown)} are not students of params/{args.profile}.yaml")
    needed = {SETTINGS[s][1] for s in args.settings} - {None, "strong"}
    if needed - set(args.teachers) or ("kd_strong" in args.settings and not args.teachers):
        ap.error(f"--settings {args.settings} need the teachers {sorted(needed)}; --teachers gives {args.teachers}")
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.runs or args.out / "runs"
    logfile = (args.out / "log.txt").open("a")

    def log(text: str) -> None:
        line = f"[{time.time() - t0:6.0f}s] {text}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    study = Study(root, profile, args.seeds, args.threads, args.quick, args.n_resamples, args.archs,
                  tuple(args.settings), tuple(args.teachers))
    tick = time.time()
    D.load(D.DataConfig(**study.data))  # build the offline cache once, before the workers read it
    log(f"data ready in {time.time() - tick:.0f}s; {len(study.teachers)} teachers, {len(study.students)} student runs, "
        f"{args.workers} workers")
    run_study(study, args.workers, t0 + args.deadline_s, log)
    for name, table in tables(root, study.rows).items():
        table.to_csv(args.out / f"{name}.csv", index=False)
        if name.startswith("paired") and name != "paired_seeds" and len(table):
            cols = ["student", "setting", "pairs", "d_macro_f1", "d_macro_f1_low", "d_macro_f1_high",
                    "d_balanced_accuracy", "mcnemar_p"]
            log(f"{name}:\n" + table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    prov = {"script": "scripts/kd_power.py", "argv": sys.argv[1:], "profile": args.profile,
            "git": provenance.git_commit() if args.commit is None else {"commit": args.commit},
            "machine": provenance.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "wall_s": round(time.time() - t0, 1), "teachers": study.teachers,
            "teacher_val_macro_f1": study.done_teachers, "strong_teacher": study.strong}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
    log(f"done in {time.time() - t0:.0f}s")
    logfile.close()
    os._exit(0)  # no interpreter shutdown: it would wait on the pool's management thread


if __name__ == "__main__":
    raise SystemExit(main())
