"""Render the Quarto manuscript in ``paper/``: with Quarto where installed, else a tested fallback.

Fallback: the ``.qmd`` is split into markdown and ```` ```{python} ```` chunks, executed as a Jupyter
notebook (nbclient, cwd ``paper/``), exported to markdown without the code (nbconvert), and turned
into one self-contained HTML file by pandoc. ``browser_check`` opens the HTML in headless Chromium
and reports whether every figure loaded and every table has filled cells.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from edgekd import info

PAPER_DIR: Path = info.REPO_ROOT / "paper"
ARTICLE: str = "index.qmd"
#: Environment variable naming the profile whose outputs the manuscript reads.
PROFILE_ENV: str = "EDGEKD_PAPER_PROFILE"
_CHUNK = re.compile(r"^```\{python\}[^\n]*\n(.*?)^```\s*$", re.S | re.M)
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
)


def split_qmd(text: str) -> tuple[dict, nbformat.NotebookNode]:
    """Front matter and a notebook of the article's markdown and python chunks (in order)."""
    meta: dict = {}
    if text.startswith("---"):
        _, front, text = text.split("---", 2)
        meta = yaml.safe_load(front) or {}
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    pos = 0
    for m in _CHUNK.finditer(text):
        if text[pos : m.start()].strip():
            nb.cells.append(nbformat.v4.new_markdown_cell(text[pos : m.start()].strip()))
        code = "\n".join(ln for ln in m.group(1).splitlines() if not ln.startswith("#|"))
        nb.cells.append(nbformat.v4.new_code_cell(code.strip()))
        pos = m.end()
    if text[pos:].strip():
        nb.cells.append(nbformat.v4.new_markdown_cell(text[pos:].strip()))
    return meta, nb


def render_fallback(profile: str, paper_dir: Path = PAPER_DIR, out_dir: Path | None = None, timeout: int = 900) -> Path:
    """Execute the article for ``profile`` and write ``<out_dir>/index.html`` with pandoc."""
    from nbclient import NotebookClient
    from nbconvert import MarkdownExporter

    if shutil.which("pandoc") is None:
        raise RuntimeError("the fallback render needs pandoc (apt-get install pandoc) or Quarto")
    out_dir = Path(out_dir) if out_dir is not None else paper_dir / "_output"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta, nb = split_qmd((paper_dir / ARTICLE).read_text())
    os.environ[PROFILE_ENV] = profile
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(paper_dir)}}).execute()
    exporter = MarkdownExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, resources = exporter.from_notebook_node(nb)
    work = out_dir / "fallback"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for name, data in resources.get("outputs", {}).items():
        (work / name).write_bytes(data)
    (work / "index.md").write_text(body)
    html = out_dir / "index.html"
    title = meta.get("title", "edgekd")
    cmd = ["pandoc", "index.md", "--from", "markdown+pipe_tables+raw_html", "--standalone", "--self-contained",
           "--toc", "--metadata", f"title={title}", "--output", str(html.resolve())]
    if (paper_dir / "fallback.css").exists():
        cmd[2:2] = ["--css", str((paper_dir / "fallback.css").resolve())]
    subprocess.run(cmd, cwd=work, check=True, capture_output=True, text=True)
    return html


def render(profile: str, paper_dir: Path = PAPER_DIR, force_fallback: bool = False) -> Path:
    """``quarto render`` where Quarto is installed (unless ``force_fallback``), else the fallback."""
    os.environ[PROFILE_ENV] = profile
    if shutil.which("quarto") and not force_fallback:
        subprocess.run(["quarto", "render", str(paper_dir)], check=True)
        return paper_dir / "_output" / "index.html"
    return render_fallback(profile, paper_dir)


def browser_check(html: Path, timeout_ms: int = 60000) -> dict:
    """Open ``html`` in headless Chromium; count figures loaded and tables with numbers beyond their name column."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        page = browser.new_page()
        page.goto(Path(html).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
        report = page.evaluate(
            """() => {
              const imgs = [...document.images];
              const tables = [...document.querySelectorAll('table')];
              // filled: a body row with a number in a cell after the first (the row's name)
              const filled = t => [...t.querySelectorAll('tbody tr')].some(
                  tr => [...tr.querySelectorAll('td')].slice(1).some(td => /\d/.test(td.textContent)));
              return {
                images: imgs.length,
                images_loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
                tables: tables.length,
                tables_filled: tables.filter(filled).length,
                empty_cells: [...document.querySelectorAll('td')].filter(td => td.textContent.trim() === '').length,
                headings: [...document.querySelectorAll('h2')].map(h => h.textContent.trim()),
                errors: [...document.querySelectorAll('.ansi-red-fg, .output_error, pre')].filter(
                    e => /Traceback|Error/.test(e.textContent)).length,
              };
            }"""
        )
        browser.close()
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m edgekd.paper [--profile default] [--fallback]``: render, then check in Chromium."""
    ap = argparse.ArgumentParser(prog="edgekd-paper", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default", help="profile whose outputs/<profile>/ the paper reads")
    ap.add_argument("--fallback", action="store_true", help="use the pandoc fallback even where Quarto exists")
    args = ap.parse_args(argv)
    agg = info.outputs_dir() / args.profile / "aggregate"
    if not agg.is_dir():
        print(f"edgekd-paper: error: {agg} does not exist; run `edgekd-run {args.profile}` first", file=sys.stderr)
        return 2
    html = render(args.profile, force_fallback=args.fallback)
    report = browser_check(html)
    print(f"rendered {html}")
    print(f"headless Chromium: {report['images_loaded']}/{report['images']} figures loaded, "
          f"{report['tables_filled']}/{report['tables']} tables filled, {report['errors']} error blocks")
    ok = report["images"] > 0 and report["images_loaded"] == report["images"] and report["tables_filled"] == report["tables"]
    return 0 if ok and report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
