"""Publish a profile's reference results into the repository: ``edgekd-publish PROFILE``.

From a complete run (every stage of the profile fresh, the aggregate written), the aggregate stage's
small files (CSV tables, ``numbers.json``, PNG figures; no checkpoints, logits or notebooks) are
copied to ``paper/results/<profile>/`` with ``provenance.json``: git commit, sha256 of the profile
YAML, machine, library versions, date and wall time per stage. The paper renders from there when
``outputs/<profile>/aggregate`` does not exist, and :func:`reproduction_report` compares a later
run with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pandas as pd

from edgekd.core import info, provenance
from edgekd.core.files import BOOKKEEPING, OutsideRoot, check_inside, remove, replace_folder
from edgekd.core.inputs import listed
from edgekd.pipeline import plan, reproduce

#: File types copied from the aggregate folder.
SUFFIXES: tuple[str, ...] = (".csv", ".json", ".png")
#: Refuse a file or a whole publication larger than these (the repository holds only small files).
MAX_FILE_BYTES: int = 3 * 2**20
MAX_TOTAL_BYTES: int = 12 * 2**20
#: Distributions whose versions provenance.json records.
PACKAGES: tuple[str, ...] = ("torch", "torchvision", "timm", "numpy", "pandas", "scipy", "scikit-learn", "onnx",
                             "onnxruntime", "medmnistc", "matplotlib", "seaborn", "grad-cam", "papermill")


class NotPublishable(RuntimeError):
    """The run is incomplete or stale, or its aggregate holds something too large to commit."""


def _specs(profile: str, outputs_root: Path) -> list:
    return plan.expand(plan.load_profile(profile), outputs_root)


def stage_times(specs: list, profile_dir: Path) -> dict[str, dict]:
    """Per stage: runs, summed wall time of the finished runs (their markers) and, from ``timings.csv``,
    the seconds that stage took in the last runner invocation and its estimate."""
    out: dict[str, dict] = {}
    for spec in specs:
        row = out.setdefault(spec.stage, {"runs": 0, "wall_time_s": 0.0})
        row["runs"] += 1
        row["wall_time_s"] += float((spec.recorded() or {}).get("wall_time_s") or 0.0)
    timings = Path(profile_dir) / "timings.csv"
    if timings.exists():
        df = pd.read_csv(timings)
        last = df[df["status"] == "ran"].groupby("stage")[["wall_time_s", "estimate_s"]].sum()
        for stage, row in last.iterrows():
            if stage in out:
                out[stage] |= {"last_invocation_s": float(row["wall_time_s"]), "last_estimate_s": float(row["estimate_s"])}
    return {stage: {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()} for stage, row in out.items()}


def versions() -> dict[str, str | None]:
    """Installed versions of :data:`PACKAGES` (None where one is missing)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_machines(specs: list) -> list[dict]:
    """The machines the finished steps ran on (:data:`edgekd.pipeline.plan.RAN_ON`, from their markers), each with its
    number of steps, most first; steps whose marker predates the record count under ``None`` values."""
    found: dict[tuple, int] = {}
    for spec in specs:
        mark = spec.recorded()
        if mark is not None:
            key = tuple((mark.get("machine") or {}).get(k) for k in plan.RAN_ON)
            found[key] = found.get(key, 0) + 1
    return [{**dict(zip(plan.RAN_ON, key, strict=True)), "steps": n}
            for key, n in sorted(found.items(), key=lambda kv: -kv[1])]


def collect_provenance(profile: str, outputs_root: Path | None = None) -> dict:
    """What produced ``outputs/<profile>``: commit, profile digest, machine (the aggregate's ``machine.json``,
    else this one), versions, date, stage wall times."""
    outputs_root = Path(outputs_root) if outputs_root is not None else info.outputs_dir()
    path = plan.profile_path(profile)
    specs = _specs(profile, outputs_root)
    times = stage_times(specs, outputs_root / profile)
    ran_on = reproduce.read_machine(outputs_root / profile / "aggregate")
    return {
        "profile": profile,
        "profile_file": str(path.resolve().relative_to(info.REPO_ROOT)) if path.resolve().is_relative_to(info.REPO_ROOT)
        else str(path),
        "profile_sha256": provenance.file_digest(path),
        "requirements_sha256": provenance.file_digest(provenance.REQUIREMENTS),
        "git": provenance.git_commit(),
        "machine": ran_on or provenance.machine(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stage_wall_time_s": times,
        "run_machines": run_machines(specs),
        "total_wall_time_s": round(sum(t["wall_time_s"] for t in times.values()), 1),
        **elapsed(outputs_root / profile),
    }


def elapsed(profile_dir: Path) -> dict:
    """The elapsed wall time of the runner invocations that made ``profile_dir`` (``invocations.csv``), summed over
    them (a main job may run in resumed segments), and how many there were; None where the file is missing."""
    path = Path(profile_dir) / plan.INVOCATIONS_FILE
    if not path.exists():
        return {"elapsed_wall_time_s": None, "invocations": None}
    df = pd.read_csv(path)
    return {"elapsed_wall_time_s": round(float(df["elapsed_s"].sum()), 1), "invocations": int(len(df))}


def check_complete(profile: str, outputs_root: Path) -> None:
    """Raise :class:`NotPublishable` unless the aggregate exists and every stage of the profile is fresh."""
    agg = Path(outputs_root) / profile / "aggregate"
    if not (agg / "numbers.json").exists():
        raise NotPublishable(f"{agg} has no numbers.json: run `edgekd-run {profile}` to the end first")
    table = plan.status_table(_specs(profile, outputs_root))
    stale = table[table["status"] != "fresh"]
    if len(stale):
        listed = "; ".join(f"{r.run_id} ({r.stage}): {r.status}, {r.why}" for r in stale.head(5).itertuples())
        raise NotPublishable(f"{len(stale)} of {len(table)} stages are not fresh ({listed}); "
                             f"run `edgekd-run {profile}` until every stage is fresh")


def check_replaceable(dest: Path, profile: str, results: Path) -> None:
    """Raise :class:`NotPublishable` unless ``dest`` lies inside ``results`` and is new or an earlier publication of
    ``profile`` (or an empty folder): only plain files of :data:`SUFFIXES` and a ``provenance.json`` naming that profile. Anything
    else there (a user's folder, a subfolder, another profile's results) is never replaced."""
    try:
        check_inside(dest, results)
    except OutsideRoot as exc:
        raise NotPublishable(f"profile {profile!r} would publish outside {results}: {exc}") from None
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        return
    if dest.is_symlink() or not dest.is_dir():
        raise NotPublishable(f"{dest} exists and is not a folder of published results; nothing was changed")
    foreign = sorted(p.name for p in dest.iterdir() if p.is_symlink() or not p.is_file() or p.suffix not in SUFFIXES)
    try:
        recorded = json.loads((dest / "provenance.json").read_text()).get("profile")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if foreign or recorded != profile:
        what = f"it also holds {listed(foreign)}" if foreign else f"its provenance.json does not name profile {profile!r}"
        raise NotPublishable(f"{dest} is not an earlier publication of {profile!r} ({what}); move it away or publish "
                             "with --results elsewhere; nothing was changed")


def foreign_files(out: Path, writes: tuple[str, ...]) -> str | None:
    """Why a study script must not write its files ``writes`` into ``out``: ``out`` is not a folder, or it holds a file
    the script does not write (a published reference, another study's table, an input), which an overwrite of a
    same-named file would destroy; None where it may. Subfolders (other studies) are never written, so they may stay."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return f"{out} exists and is not a folder"
    foreign = sorted(p.name for p in out.iterdir() if p.name not in writes and not (p.is_dir() and not p.is_symlink())
                     ) if out.is_dir() else []
    return (f"{out} holds files this script does not write ({listed(foreign)}): refusing to write there; choose "
            "another --out" if foreign else None)


def _swap_in(files: list[Path], provenance_record: dict, dest: Path, results: Path) -> None:
    """Copy ``files`` and ``provenance.json`` into a fresh temporary folder beside ``dest``, then swap it in; the
    earlier publication (if any) is moved aside first and put back if the swap fails."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.publishing-", dir=dest.parent))
    try:
        staging = work / "new"
        staging.mkdir()
        for p in files:
            shutil.copy2(p, staging / p.name)
        (staging / "provenance.json").write_text(json.dumps(provenance_record, indent=2) + "\n")
        replace_folder(staging, dest, work / "old")
    finally:
        remove(work, results)


def publish(profile: str, outputs_root: Path | None = None, results: Path | None = None) -> Path:
    """Copy ``outputs/<profile>/aggregate``'s small files and provenance.json to ``<results>/<profile>/``."""
    outputs_root = Path(outputs_root) if outputs_root is not None else info.outputs_dir()
    results = Path(results) if results is not None else info.results_root()
    dest = results / profile
    check_replaceable(dest, profile, results)
    check_complete(profile, outputs_root)
    agg = outputs_root / profile / "aggregate"
    kept = {p for pattern in BOOKKEEPING for p in agg.glob(pattern)}  # the runner's marker is not a result
    links = sorted(p.name for p in agg.iterdir() if p.is_symlink())
    if links:  # the aggregate writes plain files: a link would publish whatever it points at
        raise NotPublishable(f"{agg} holds symlinks ({listed(links)}), which the aggregate never writes; remove them and "
                             "rerun the aggregate; nothing was published")
    files = sorted(p for p in agg.iterdir() if p.is_file() and p.suffix in SUFFIXES and p not in kept)
    big = [f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in files if p.stat().st_size > MAX_FILE_BYTES]
    total = sum(p.stat().st_size for p in files)
    if big or total > MAX_TOTAL_BYTES:
        raise NotPublishable(f"too large to commit: {', '.join(big) or f'{total / 2**20:.1f} MiB in all'} "
                             f"(limits {MAX_FILE_BYTES // 2**20} MiB a file, {MAX_TOTAL_BYTES // 2**20} MiB in all)")
    _swap_in(files, collect_provenance(profile, outputs_root), dest, results)
    return dest


def reproduction_report(profile: str, outputs_root: Path | None = None, results: Path | None = None) -> str:
    """The reproduction report of ``outputs/<profile>`` against ``paper/results/<profile>`` as text
    ("" when either side has no results): what ``edgekd-run`` prints at the end of a run."""
    outputs_root = Path(outputs_root) if outputs_root is not None else info.outputs_dir()
    reference = (Path(results) if results is not None else info.results_root()) / profile
    reproduced = outputs_root / profile / "aggregate"
    if not ((reference / "seed_metrics.csv").exists() and (reproduced / "seed_metrics.csv").exists()):
        return ""
    table = reproduce.compare(reference, reproduced)
    ref = json.loads((reference / "provenance.json").read_text()) if (reference / "provenance.json").exists() else {}
    commit = ((ref.get("git") or {}).get("commit") or "unknown")[:10]
    title = (f"[reproduction] {reproduced} against the published reference {reference} "
             f"(commit {commit}, {ref.get('date', 'undated')})")
    return reproduce.format_report(table, title)


def main(argv: list[str] | None = None) -> int:
    """``edgekd-publish PROFILE [--outputs DIR] [--results DIR]``."""
    ap = argparse.ArgumentParser(prog="edgekd-publish", description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="profile whose complete run to publish (smoke, default, cpu64, paper)")
    ap.add_argument("--outputs", type=Path, default=None, help=f"outputs root (default ${info.OUTPUTS_ENV} or outputs/)")
    ap.add_argument("--results", type=Path, default=None, help=f"results root (default ${info.RESULTS_ENV} or paper/results/)")
    args = ap.parse_args(argv)
    try:
        dest = publish(args.profile, args.outputs, args.results)
    except NotPublishable as exc:
        print(f"edgekd-publish: error: {exc}", file=sys.stderr)
        return 2
    files = sorted(dest.iterdir())
    size = sum(p.stat().st_size for p in files) / 2**20
    print(f"published {len(files)} files ({size:.1f} MiB) to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
