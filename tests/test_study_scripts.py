"""The study scripts that write a committed study folder (``--out``) refuse, before any work and with exit 2, a folder
holding a file they do not write: a published reference, another study's table or one of their inputs would otherwise
lose a same-named file (``provenance.json``, ``README.md``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgekd.core import info
from edgekd.pipeline import publish

SCRIPTS: tuple[str, ...] = ("capacity_gap", "kd_tuning", "learning_curve", "power", "studies", "teacher_size")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, info.REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(name: str, out: Path, tmp_path: Path) -> list[str]:
    """Arguments that would make the script work (inputs that do not exist, so a refusal must come first)."""
    missing = str(tmp_path / "missing")
    return {"kd_tuning": ["--runs", missing], "power": ["--reference", missing], "studies": ["--runs", missing],
            "capacity_gap": ["--strong", missing, "--weak", missing],
            "learning_curve": ["--long", missing, "--budget", missing, "--reference", missing],
            "teacher_size": ["--large", missing, "--small", missing, "--reference", missing]}[name] + ["--out", str(out)]


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_folder_with_a_file_the_script_does_not_write_is_refused_and_kept(name, tmp_path, capsys):
    """--out is a published reference (a runs.csv and a provenance.json the script would overwrite)."""
    module = _script(name)
    out = tmp_path / "reference"
    out.mkdir()
    (out / "runs.csv").write_text("run_id\na\n")
    (out / "provenance.json").write_text('{"profile": "default"}\n')
    assert module.main(_argv(name, out, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "holds files this script does not write (runs.csv)" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["provenance.json", "runs.csv"]
    assert (out / "provenance.json").read_text() == '{"profile": "default"}\n'


def test_the_refusal_allows_the_scripts_own_files_and_other_studies_folders(tmp_path):
    writes = ("gap.csv", "provenance.json")
    assert publish.foreign_files(tmp_path / "new", writes) is None
    (tmp_path / "gap.csv").write_text("x\n")
    (tmp_path / "kd_tuning").mkdir()  # another study's folder beside the script's files: never written
    assert publish.foreign_files(tmp_path, writes) is None
    (tmp_path / "link").symlink_to(tmp_path / "kd_tuning")
    assert "(link)" in publish.foreign_files(tmp_path, writes)
    assert "is not a folder" in publish.foreign_files(tmp_path / "gap.csv", writes)


def test_power_names_a_missing_reference_without_a_traceback(tmp_path, capsys):
    assert _script("power").main(["--reference", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not a published reference with paired_kd_seeds.csv" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
