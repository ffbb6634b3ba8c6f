"""The manuscript: qmd parsing, and the fallback render of the smoke outputs checked in headless Chromium."""

from __future__ import annotations

import json

import pytest

from edgekd import info
from edgekd import paper as P


def test_split_qmd_keeps_order_and_drops_chunk_options():
    text = "---\ntitle: T\n---\n\nIntro *text*.\n\n```{python}\n#| echo: false\nx = 1\n```\n\nMiddle.\n\n```{python}\ny = 2\n```\n"
    meta, nb = P.split_qmd(text)
    assert meta == {"title": "T"}
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "markdown", "code"]
    assert nb.cells[1].source == "x = 1" and nb.cells[2].source == "Middle."


def test_every_section_of_the_source_report_is_in_the_article():
    headings = [ln for ln in (P.PAPER_DIR / P.ARTICLE).read_text().splitlines() if ln.startswith("## ")]
    for heading in ("Teacher and student roles", "Performance with confidence intervals", "Calibration and operating points",
                    "Robustness", "Efficiency", "Pareto front", "Training curves", "Teacher against student",
                    "Limitations"):
        assert any(heading in h for h in headings), heading


@pytest.fixture(scope="module")
def rendered(smoke_outputs, tmp_path_factory, monkeypatch_module):
    root, _ = smoke_outputs
    monkeypatch_module.setenv(info.OUTPUTS_ENV, str(root.parent))
    out = tmp_path_factory.mktemp("paper")
    return P.render_fallback("smoke", out_dir=out)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_fallback_render_loads_every_figure_and_fills_every_table(rendered):
    assert rendered.exists() and rendered.stat().st_size > 50_000
    report = P.browser_check(rendered)
    print("headless Chromium saw:", report)
    assert report["images"] >= 7 and report["images_loaded"] == report["images"]
    assert report["tables"] >= 8 and report["tables_filled"] == report["tables"]
    assert report["errors"] == 0
    assert any("Pareto" in h for h in report["headings"]) and any("Limitations" in h for h in report["headings"])


def test_paper_numbers_come_from_outputs(rendered, smoke_outputs):
    root, _ = smoke_outputs
    html = rendered.read_text()
    numbers = json.loads((root / "aggregate" / "numbers.json").read_text())
    assert f"{numbers['best_student_accuracy']:.3f}" in html
    assert "Profile <strong><code>smoke</code></strong>" in html
