"""Where the manuscript's numbers come from: this checkout's ``outputs/<profile>/aggregate`` or the
published reference, and the committed studies (development studies, GPU benchmark, KD power)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

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


def locate(profile: str) -> Source:
    """``outputs/<profile>/aggregate`` where it exists, else the published ``paper/results/<profile>``."""
    agg = info.outputs_dir() / profile / "aggregate"
    published = publish.results_root() / profile
    if (agg / "numbers.json").exists():
        prov = publish.collect_provenance(profile)
        return Source(profile, agg, "outputs", json.loads((agg / "numbers.json").read_text()), prov)
    if (published / "numbers.json").exists():
        prov = json.loads((published / "provenance.json").read_text())
        return Source(profile, published, "published", json.loads((published / "numbers.json").read_text()), prov)
    raise FileNotFoundError(f"neither {agg} nor {published} holds results: run `edgekd-run {profile}` "
                            f"(or `edgekd-publish {profile}` after a complete run)")


def _committed(name: str, folder: str, table: str, about: str = "provenance.json") -> Source | None:
    """A study committed under ``paper/results/<folder>`` when it holds ``table``, with ``about`` (JSON) as its
    provenance; else None."""
    path = publish.results_root() / folder
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
