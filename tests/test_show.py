"""What the notebooks display and what they build when opened on their own: the display helpers
(:mod:`edgekd.stages.show`), the demo's missing-run rule (:mod:`edgekd.stages.demo`) and the aggregate notebook's
fallback to the published reference."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from edgekd.core import info
from edgekd.stages import aggregate as A
from edgekd.stages import demo as DM
from edgekd.stages import show as SH


def test_pick_keeps_the_named_columns_it_has_in_order_and_renames_them():
    df = pd.DataFrame({"b": [1], "a": [2], "c": [3]})
    assert list(SH.pick(df, {"a": "A", "missing": "M", "b": "B"}).columns) == ["A", "B"]


def test_dashes_fill_missing_cells_without_a_dtype_warning():
    table = pd.DataFrame({"value": [0.5, np.nan], "by": ["A", None]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a notebook shows any warning as a stderr box
        out = SH.dashes(table)
    assert out.loc[1, "value"] == "—" and out.loc[1, "by"] == "—" and out.loc[0, "value"] == 0.5


def test_performance_shows_each_metric_with_its_seeds_and_images_interval():
    perf = pd.DataFrame({"label": ["T"], "seeds": [1], "val_macro_f1": [0.61234], "macro_f1": [0.7],
                         "macro_f1_hb_low": [0.65], "macro_f1_hb_high": [0.75], "macro_f1_low": [np.nan],
                         "macro_f1_high": [np.nan], "accuracy": [0.8], "accuracy_low": [0.79], "accuracy_high": [0.81]})
    row = SH.performance(perf).iloc[0]
    assert row["Macro-F1 [95%]"] == "0.700 [0.650, 0.750]"  # the hierarchical interval, not the empty t-interval
    assert row["Accuracy [95%]"] == "0.800 [0.790, 0.810]" and row["Validation macro-F1"] == pytest.approx(0.612)
    assert "Balanced accuracy [95%]" not in row  # a metric the table lacks is left out


def test_numbers_leave_out_what_does_not_apply_and_say_what_each_holds():
    table = SH.numbers({"teacher": "T", "lesion_delta_macro_f1": None, "student_archs": ["A", "B"], "x": 0.12345},
                       A.NUMBERS)
    assert list(table.index) == ["teacher", "student_archs", "x"]
    assert table.loc["student_archs", "value"] == "A, B" and table.loc["x", "value"] == "0.123"
    assert table.loc["teacher", "meaning"] == A.NUMBERS["teacher"]


def test_by_level_puts_one_corruption_per_row():
    rows = [{"suite": "source", "corruption": c, "level": lv, "macro_f1": 0.5 - 0.1 * lv}
            for c in ("noise", "jpeg") for lv in range(3)]
    table = SH.by_level(pd.DataFrame(rows))
    assert table.shape == (2, 3) and table.loc[("source", "jpeg"), 2] == pytest.approx(0.3)


def test_run_summary_says_what_a_run_reached():
    metrics = {"best_epoch": 2, "epochs": 2, "val_acc": 0.7, "val_macro_f1": 0.45, "test_acc": 0.71,
               "test_macro_f1": 0.46, "collapsed": None, "wall_time_s": 61.4}
    table = SH.run_summary(metrics)
    assert table.loc["best epoch (chosen on validation macro-F1)", "run"] == "2 of 2"
    assert table.loc["collapsed", "run"] == "no" and table.loc["wall time (s)", "run"] == "61"


def test_a_missing_run_that_is_not_the_demo_is_an_error_naming_what_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="edgekd-run <profile>"):
        DM.ensure_run(tmp_path / "student-resnet18-kd-s0")
    assert not (tmp_path / "student-resnet18-kd-s0").exists()  # nothing made


def test_another_run_folder_is_read_as_it_is_and_the_stage_names_what_it_lacks(tmp_path):
    (tmp_path / "student-resnet18-kd-s0").mkdir()
    assert DM.ensure_run(tmp_path / "student-resnet18-kd-s0").startswith("Reading the run")


def test_a_finished_run_is_read_as_it_is(tmp_path):
    for name in ("run_config.json", "best.pt", "metrics.json"):
        (tmp_path / name).write_text("{}")
    assert DM.finished(tmp_path) and DM.ensure_run(tmp_path).startswith("Reading the finished run")
    (tmp_path / "metrics.json").unlink()  # written last: without it the run did not finish
    assert not DM.finished(tmp_path)


def test_aggregate_notebook_shows_the_published_reference_without_local_runs(tmp_path):
    res, said = A.aggregate_or_published(tmp_path / "no_runs", tmp_path / "aggregate", "default")
    assert "paper/results/default" in said and not (tmp_path / "aggregate").exists()  # read-only
    published = info.results_root() / "default"
    assert res["numbers"] == json.loads((published / "numbers.json").read_text())
    assert res["performance"].equals(pd.read_csv(published / "performance.csv"))
    assert res["pareto_fig"] == published / "pareto.png" and res["pareto_fig"].is_file()
    with pytest.raises(FileNotFoundError, match="no evaluated runs"):  # the runner's aggregate: no fallback
        A.aggregate_or_published(tmp_path / "no_runs", tmp_path / "aggregate", None)
    with pytest.raises(FileNotFoundError, match="no published results"):
        A.aggregate_or_published(tmp_path / "no_runs", tmp_path / "aggregate", "no_such_profile")
