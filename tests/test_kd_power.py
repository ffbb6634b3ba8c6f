"""scripts/kd_power.py's scheduling: the profile's recipe, seed-major order, teachers before their students."""

import importlib.util
from pathlib import Path

import pytest

from edgekd.core import info
from edgekd.pipeline import plan

SPEC = importlib.util.spec_from_file_location("kd_power", info.REPO_ROOT / "scripts" / "kd_power.py")
KP = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(KP)
PROFILE = plan.load_profile("scratch")


def result(ok: bool = True, f1: float = 0.5, collapsed: str | None = None) -> dict:
    return {"ok": ok, "val_macro_f1": f1, "test_macro_f1": f1, "epochs": 1, "train_time_s": 1.0, "wall_s": 1.0,
            "collapsed": collapsed, "error": "boom"}


def drain(study) -> list[str]:
    names = []
    while (nxt := study.next_student()) is not None:
        names.append(Path(nxt[1][0]).name)
    return names


def test_the_study_uses_the_profiles_recipe_and_runs_seed_by_seed(tmp_path):
    study = KP.Study(tmp_path, PROFILE, seeds=2, threads=1, quick=False, n_resamples=10)
    teacher = study.teachers["t1long"]
    assert (teacher["stem_stride"], teacher["epochs"]) == (1, 2 * PROFILE["teacher"]["train"]["epochs"])
    assert study.teachers["t2"]["stem_stride"] == PROFILE["train"]["stem_stride"]
    # before any teacher finished only the no-KD students can start, seed 0 first
    first = drain(study)
    assert first[:2] == ["student-resnet18-nokd-s0", "student-resnet18-nokd16-s0"]
    assert all("nokd" in n for n in first) and [n[-2:] for n in first] == sorted(n[-2:] for n in first)
    log = []
    study.finished("teacher:t2", (str(study.teacher_dir("t2")), "resnet50", 0), result(f1=0.55), log.append)
    assert drain(study)[0] == "student-resnet18-kd_t2-s0" and study.strong is None
    study.finished("teacher:t1", (str(study.teacher_dir("t1")), "resnet50", 0), result(f1=0.60), log.append)
    study.finished("teacher:t1long", (str(study.teacher_dir("t1long")), "resnet50", 0),
                   result(f1=0.70, collapsed="all nv"), log.append)
    assert study.strong == "t1"  # the collapsed teacher is never the strong one, whatever its score
    label, args = study.next_student()
    assert label == "student:kd_strong" and args[6] == str(study.teacher_dir("t1")) and args[5]["mode"] == "hinton"
    epochs = {Path(a[0]).name: a[4]["epochs"] for a in (study.next_student()[1] for _ in range(len(study.students)))}
    assert epochs["student-mobilenetv2_100-kd_strong-s1"] == PROFILE["train"]["epochs"]


def test_students_of_a_failed_teacher_are_dropped(tmp_path):
    study = KP.Study(tmp_path, PROFILE, seeds=1, threads=1, quick=False, n_resamples=10, archs=["resnet18"],
                     settings=("nokd", "kd_t2", "kd_strong"), teachers=("t2",))
    log = []
    study.finished("teacher:t2", (str(study.teacher_dir("t2")), "resnet50", 0), result(ok=False), log.append)
    assert drain(study) == ["student-resnet18-nokd-s0"]  # neither kd_t2 nor kd_strong waits forever
    assert any("teacher t2 failed: 1 of its students dropped" in line for line in log)


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        KP.main(["--out", str(tmp_path / "y"), "--settings", "kd16", "--teachers", "t1"])
    assert "need the teachers ['t2']" in capsys.readouterr().err and not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):
        KP.main(["--out", str(tmp_path / "x"), "--archs", "vgg16"])
    assert not (tmp_path / "x").exists()  # nothing written
