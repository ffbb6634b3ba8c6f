"""The paper's checks that can fail: each fires on a small hand-written page (or PDF) with its fault and stays quiet on
the same page without it. Two page loads serve the browser's checks; one PDF serves the page count."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from edgekd.core import info
from edgekd.paper import format as FM
from edgekd.paper import render

NEW_KEYS: tuple[str, ...] = ("broken_intervals", "broken_names", "code_in_prose", "undefined_abbreviations",
                             "unknown_abbreviations")

#: One page, {0} with its faults and {1} without: in code, links, the title block and the table of contents nothing is
#: looked for, so the same text there must never fire.
PAGE = """<header id="title-block-header"><h1 class="title">KD for the edge on HAM10000</h1></header>
<nav id="TOC"><ul><li><a href="#abstract">ECE and KD: kd_128px</a></li></ul></nav>
<h2 id="abstract">Abstract</h2>
<p>{intervals}</p>
<p>Code stays code: <code>ECE nokd_eq [0.1, 0.2]</code>, <code style="display:inline-block;width:2em">[0.3, 0.4]</code>
  and <a href="#abstract">paper/results/default/runs.csv</a>.</p>
<p>{abbreviations}</p>
<p>{prose}</p>
<p>Knowledge distillation (KD) and decoupled knowledge distillation (DKD) at 5&nbsp;% of 1/2 the cost, at the end,
  by macro-F1 on CPUs from AMD and HAM10000.</p>"""
FAULTS = {
    "intervals": 'Gain <span style="display:inline-block;width:5em">[−0.010, +0.041]</span>, speed-up '
                 '<span style="display:inline-block;width:4em">[1.88×, 1.99×]</span>, share '
                 '<span style="display:inline-block;width:5em">[12.5&nbsp;%, 14.0&nbsp;%]</span>. Model '
                 '<span style="display:inline-block;width:5em">ResNet ResNet-18 here</span>.',
    "abbreviations": "KD students first. Expected calibration error (ECE) and NLL (negative log-likelihood) fall, "
                     "DIST (distillation from a stronger teacher; Huang et al. 2022) too, by the FOO score. Melanocytic "
                     "nevi (nv) dominate and mel is rare.",
    "prose": "The best student is EfficientNet-Lite0 · kd_128px, then nokd and efficientnet_lite0 (paired_kd.csv); see "
             "paper/index.qmd, outputs/default/aggregate and run student-resnet18-kd-s0, as issue 34 asked.",
}
FIXED = {
    "intervals": FAULTS["intervals"].replace("width:5em", "width:12em").replace("width:4em", "width:12em").replace(
        "ResNet ResNet-18", 'ResNet <span class="name" style="white-space:nowrap">ResNet-18</span>'),
    "abbreviations": "Students first. Expected calibration error (ECE) and NLL (negative log-likelihood) fall, DIST "
                     "(distillation from a stronger teacher; Huang et al. 2022) too, by the score. Melanocytic nevi (nv) "
                     "dominate and melanoma (mel) is rare.",
    "prose": "The best student is EfficientNet-Lite0 distilled at 128 px, then the same without a teacher; the "
             "manuscript, the aggregate and the first seed's run say so, as asked.",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A published results root whose only ``runs.csv`` holds settings no profile names any more (``kd_128px``,
    ``nokd_eq``), so the checks do not depend on what today's reference happens to contain."""
    root = tmp_path_factory.mktemp("results")
    (root / "old").mkdir()
    (root / "old" / "runs.csv").write_text("run_id,setting\na,kd_128px\nb,nokd_eq\nc,kd\n")
    return root


@pytest.fixture(scope="module")
def reports(tmp_path_factory, results) -> tuple[dict, dict]:
    """:func:`render.browser_check` of the page with its faults and without them."""
    out = tmp_path_factory.mktemp("checks")
    found = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(info.RESULTS_ENV, str(results))
        for name, parts in (("bad", FAULTS), ("good", FIXED)):
            html = out / f"{name}.html"
            html.write_text('<html><head><meta charset="utf-8"></head><body style="max-width:600px;padding:0 10px">'
                            + PAGE.format(**parts) + "</body></html>")
            found.append(render.browser_check(html))
    return found[0], found[1]


def _tokens(entries: list[str]) -> list[str]:
    """The flagged text of each entry ("p: kd_128px in ..." -> "kd_128px")."""
    return [e.split(" in ")[0].split(": ", 1)[-1] for e in entries]


def test_an_interval_broken_after_its_comma_is_found(reports):
    bad, good = reports
    assert bad["broken_intervals"] == ["span: [−0.010, +0.041]", "span: [1.88×, 1.99×]", "span: [12.5\u00a0%, 14.0\u00a0%]"]
    assert bad["broken"] == []  # each half is whole: the word-and-number check alone misses it
    assert "3 intervals broken across lines" in " | ".join(render.problems(bad))
    assert good["broken_intervals"] == []


def test_setting_labels_code_names_paths_run_ids_and_issue_numbers_in_the_prose_are_found(reports, results, monkeypatch):
    monkeypatch.setenv(info.RESULTS_ENV, str(results))
    labels = render.setting_labels()
    assert {"nokd", "lskd", "kdat", "kd_128px", "nokd_eq"} <= set(labels)  # profiles' and published runs' settings
    assert not {"kd", "dkd", "dist", "at"} & set(labels)  # the prose's KD, DKD, DIST and the word "at"
    bad, good = reports
    assert _tokens(bad["code_in_prose"]) == ["kd_128px", "nokd", "efficientnet_lite0", "paired_kd.csv",
                                             "paper/index.qmd", "outputs/default/aggregate", "student-resnet18-kd-s0",
                                             "issue 34"], bad["code_in_prose"]
    assert "8 code labels, paths, run IDs or issue numbers in the prose" in " | ".join(render.problems(bad))
    assert good["code_in_prose"] == []


def test_a_model_name_broken_at_its_hyphen_is_found(reports):
    bad, good = reports
    assert bad["broken_names"] == ["span: ResNet-18"] and good["broken_names"] == []


def test_abbreviations_are_defined_at_their_first_use_and_unknown_capitals_are_found(reports):
    assert {"KD", "ECE", "MACs", "INT8", "rBE", "TOST", "akiec", "vasc"} <= set(FM.ABBREVIATIONS)
    assert "F1" not in FM.ABBREVIATIONS and not set(FM.ABBREVIATIONS) & FM.EXEMPT_CAPS
    bad, good = reports
    assert _tokens(bad["undefined_abbreviations"]) == ["KD", "mel"], bad["undefined_abbreviations"]
    assert "KD students first. Expected calibration" in bad["undefined_abbreviations"][0]  # with its context
    assert _tokens(bad["unknown_abbreviations"]) == ["FOO"]
    found = " | ".join(render.problems(bad))
    assert "2 abbreviations not defined at their first use" in found
    assert "1 abbreviations neither in ABBREVIATIONS nor in EXEMPT_CAPS" in found
    assert good["undefined_abbreviations"] == [] and good["unknown_abbreviations"] == []
    assert not any(key in p for p in render.problems(good) for key in ("intervals", "prose", "abbreviations"))


def test_main_text_pages_count_up_to_the_references_heading_and_the_limit_fails_the_paper(tmp_path, monkeypatch,
                                                                                          capsys):
    page = '<div style="break-before:page">' + "<p>A paragraph of the main text that fills the page.</p>" * 8 + "</div>"
    html = tmp_path / "paper.html"
    html.write_text("<html><body><h2>Introduction</h2><p>The References list the sources.</p>" + page * 2
                    + '<div style="break-before:page"><p>Last words.</p><h2>References</h2><p>Hinton 2015.</p></div>'
                    + '<div style="break-before:page"><h2>Supplement</h2><p>More.</p></div></body></html>')
    pdf = render.write_pdf(html, tmp_path / "paper.pdf")
    assert render.main_text_pages(pdf) == 4  # the supplement's page is not counted
    clean = {"images": 1, "images_loaded": 1, "tables": 1, "tables_filled": 1, "empty_cells": 0, "errors": 0,
             **dict.fromkeys(("too_wide", "nan", "stray_words", "broken", "repeated_headings", "unresolved_refs",
                              *NEW_KEYS), [])}
    monkeypatch.setattr(render, "render", lambda profile, force_fallback: html)
    monkeypatch.setattr(render, "write_pdf", lambda html, out: pdf)
    monkeypatch.setattr(render, "check", lambda html: {"screen": clean})
    assert render.main(["--profile", "default"]) == 0
    assert "main text: 4 pages up to the References heading (limit 10)" in capsys.readouterr().out
    monkeypatch.setattr(render, "MAIN_TEXT_PAGES", 3)
    assert render.main(["--profile", "default"]) == 1
    assert "main text: 4 pages up to the References heading; problem: over the limit of 3 pages" in \
        capsys.readouterr().out


def test_glue_keeps_names_and_symbol_values_whole_outside_code():
    """A hyphenated model or method name goes in the no-wrap span and a symbol is tied to its value by no-break
    spaces, in prose and cells; code spans, labels and a symbol glued to a word stay as they are."""
    text = ("EfficientNet-Lite0 · logit-standardised KD, Hinton, T 2, α 0.5, β 1000: inconclusive, MDE = 0.076 "
            "(p = 0.044), ECE 0.479 → 0.437; see @tbl-paired-kd, `ResNet-18 T 2` and ResNet-50's T4 or MT 2.")
    got = FM.glue(text)
    nb = "\u00a0"
    assert got == (f'<span class="name">EfficientNet-Lite0</span> · <span class="name">logit-standardised</span> KD, '
                   f"Hinton, T{nb}2, α{nb}0.5, β{nb}1000: inconclusive, MDE{nb}={nb}0.076 (p{nb}={nb}0.044), ECE "
                   f"0.479 →{nb}0.437; see @tbl-paired-kd, `ResNet-18 T 2` and <span class=\"name\">ResNet-50</span>'s "
                   "T4 or MT 2.")
    assert FM.glue(got).count("\u00a0") == got.count("\u00a0")  # glued text has no plain space left to join


def test_glue_leaves_a_tables_header_row_free_to_wrap():
    """A header names a narrow column ("EfficientNet-Lite0 · KD: precision"): kept wrappable, while its cells are glued."""
    table = "| Class | EfficientNet-Lite0: precision |\n|:--|--:|\n| EfficientNet-Lite0 T 2 | 0.5 |"
    got = FM.glue(table).split("\n")
    assert got[0] == "| Class | EfficientNet-Lite0: precision |" and got[1] == "|:--|--:|"
    assert got[2] == '| <span class="name">EfficientNet-Lite0</span> T\u00a02 | 0.5 |'


def test_a_table_header_wraps_at_its_spaces_but_not_inside_a_model_name():
    table = FM.md_table(pd.DataFrame([{"x": 0.5}]), {"Class": FM.col("x"), "EfficientNet-Lite0 · KD": FM.col("x")}, "C.")
    assert table.splitlines()[0] == "| Class | EfficientNet\u2011Lite0 · KD |"


def test_glue_keeps_a_pair_of_values_together_and_a_kd_method_cell_unwrapped():
    """ "0.064 / 0.022" (KD / no KD) is one reading and must not split at its slash; words around a slash may; a KD
    method's cell ("logit-standardised KD") goes whole in the no-wrap span, as a model's does."""
    nb = "\u00a0"
    assert FM.glue("0.064 / 0.022, 1.34 / -1.03; KD / no KD") == f"0.064{nb}/{nb}0.022, 1.34{nb}/{nb}-1.03; KD / no KD"
    table = FM.md_table(pd.DataFrame([{"m": "logit-standardised KD"}]), {"KD method": FM.col("m", str)}, "C.")
    assert '| <span class="name">logit-standardised KD</span> |' in table
