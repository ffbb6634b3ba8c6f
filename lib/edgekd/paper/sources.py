"""Where the manuscript's numbers come from: this checkout's ``outputs/<profile>/aggregate`` or the
published reference, and the committed studies (development studies, GPU benchmark, KD power)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from edgekd.core import info
from edgekd.pipeline import publish


@dataclass
class Source:
    """The folder the paper reads (``kind``: 'outputs' for this checkout's run, 'published' for the reference)."""

    profile: str
    path: Path
    kind: str
    numbers: dict
    provenance: dict

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def csv(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.path / name)

    def json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())


def locate(profile: str) -> Source:
    """``outputs/<profile>/aggregate`` where it exists, else the published ``paper/results/<profile>``."""
    agg = info.outputs_dir() / profile / "aggregate"
    published = info.results_root() / profile
    if (agg / "numbers.json").exists():
        prov = publish.collect_provenance(profile)
        return Source(profile, agg, "outputs", json.loads((agg / "numbers.json").read_text()), prov)
    if (published / "numbers.json").exists():
        prov = json.loads((published / "provenance.json").read_text())
        return Source(profile, published, "published", json.loads((published / "numbers.json").read_text()), prov)
    raise FileNotFoundError(f"neither {agg} nor {published} holds results: run `edgekd-run {profile}` "
                            f"(or `edgekd-publish {profile}` after a complete run)")


def profile(src: Source) -> tuple[dict, str] | None:
    """The profile that produced ``src`` and where it was read, checked against the sha256 in its provenance: this
    checkout's file, else that file as committed at the results' commit (``git show``); None where neither matches."""
    name, digest = src.provenance.get("profile_file") or f"params/{src.profile}.yaml", src.provenance.get("profile_sha256")
    if not digest:
        return None
    path = info.REPO_ROOT / name
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
        return yaml.safe_load(path.read_text()), f"`{name}`"
    commit = (src.provenance.get("git") or {}).get("commit")
    if not commit:
        return None
    try:
        shown = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=info.REPO_ROOT, capture_output=True, timeout=30,
                               env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0 or hashlib.sha256(shown.stdout).hexdigest() != digest:
        return None
    return yaml.safe_load(shown.stdout), f"`{name}` as committed at `{commit[:10]}` (this checkout's file has changed since)"


def _committed(name: str, folder: str, table: str, about: str = "provenance.json") -> Source | None:
    """A study committed under ``paper/results/<folder>`` when it holds ``table``, with ``about`` (JSON) as its
    provenance; else None."""
    path = info.results_root() / folder
    if not (path / table).exists():
        return None
    prov = json.loads((path / about).read_text()) if (path / about).exists() else {}
    return Source(name, path, "published", {}, prov)


def studies() -> Source | None:
    """The committed development studies (``paper/results/studies/``, written by ``scripts/studies.py``), if any."""
    return _committed("studies", "studies", "teacher_levers.csv")


def gpu() -> Source | None:
    """The committed GPU benchmark (``paper/results/gpu/``, written by ``scripts/gpu_bench.py``), if any."""
    return _committed("gpu", "gpu", "gpu_latency.csv", "environment.json")


def kd_power() -> Source | None:
    """The committed GPU study of KD's power (``paper/results/studies/kd_power/``, ``scripts/kd_power.py``), if any."""
    return _committed("kd_power", "studies/kd_power", "paired.csv")


def scratch_teacher() -> Source | None:
    """The previous reference, a from-scratch ResNet-50 teacher (``paper/results/studies/scratch_teacher/``,
    ``params/scratch.yaml``), kept to compare KD gains between teachers, if committed."""
    return _committed("scratch_teacher", "studies/scratch_teacher", "paired_kd_seeds.csv")


def pretrained_study() -> Source | None:
    """The validation study that chose the pretrained teacher (``paper/results/studies/pretrained/``,
    ``scripts/pretrained_study.py``), if committed."""
    return _committed("pretrained", "studies/pretrained", "variants.csv")


def kd_tuning() -> Source | None:
    """The KD pilot on validation that chose the main job's KD setting (``paper/results/studies/kd_tuning/``,
    ``scripts/kd_tuning.py``), if committed."""
    return _committed("kd_tuning", "studies/kd_tuning", "pilot.csv")


def int8_ops() -> Source | None:
    """ORT's operator profile of the reference's FP32 and INT8 models (``paper/results/studies/int8_ops/``, written
    by ``edgekd-bench --ops``), if committed."""
    return _committed("int8_ops", "studies/int8_ops", "bench_int8_ops.csv", "machine.json")


def teacher_size() -> Source | None:
    """The teacher-size test: the ResNet-18 students distilled from the pretrained teacher at 64 px and at 128 px,
    paired by seed on validation (``paper/results/studies/teacher_size/``, ``scripts/teacher_size.py``), if committed."""
    return _committed("teacher_size", "studies/teacher_size", "teacher_size.csv")


def capacity_gap() -> Source | None:
    """The capacity-gap study: KD's gain under the stronger and the weaker teacher, paired by seed
    (``paper/results/studies/capacity_gap/``, ``scripts/capacity_gap.py``), if committed."""
    return _committed("capacity_gap", "studies/capacity_gap", "gap.csv")


def power(src: Source) -> Source | None:
    """The seeds-and-power study of ``src``'s KD comparisons (``paper/results/studies/power/``, ``scripts/power.py``),
    only when it was computed from ``src``'s own per-seed differences (the digest it recorded), so that it never
    describes another reference; else None."""
    study = _committed("power", "studies/power", "power.csv")
    if study is None or not src.has("paired_kd_seeds.csv"):
        return None
    recorded = {Path(k).name: v for k, v in (study.provenance.get("inputs") or {}).items()}
    actual = hashlib.sha256((src.path / "paired_kd_seeds.csv").read_bytes()).hexdigest()
    return study if recorded.get("paired_kd_seeds.csv") == actual else None


def extended_runs(table: pd.DataFrame, runs: pd.Series) -> pd.Series:
    """Per row of a learning-curve table (``scripts/learning_curve.py``), indexed by its budget run's id: whether that
    run is the one of the same id in ``runs`` (a reference's validation macro-F1 by run id), bitwise; False for a run
    the reference lacks."""
    ids = [f"student-{r.arch}-{r.setting}-s{r.seed}" for r in table.itertuples()]
    return pd.Series([i in runs.index and runs[i] == v for i, v in zip(ids, table["val_budget"], strict=True)],
                     index=ids, dtype=bool)


def learning_curve(src: Source) -> Source | None:
    """The learning-curve pilot (``paper/results/studies/learning_curve/``, ``scripts/learning_curve.py``), only when
    every budget run it extended is ``src``'s own run (:func:`extended_runs`), so that its 8-epoch points are the
    reference's; else None."""
    study = _committed("learning_curve", "studies/learning_curve", "learning_curve.csv")
    if study is None or not src.has("runs.csv"):
        return None
    runs = src.csv("runs.csv").set_index("run_id")["val_macro_f1"]
    return study if extended_runs(study.csv("learning_curve.csv"), runs).all() else None
