"""Render the Quarto manuscript in ``paper/`` to HTML and PDF: with Quarto where installed, else a tested fallback.

The manuscript reads ``outputs/<profile>/aggregate`` when it exists, else the published reference in
``paper/results/<profile>`` (:func:`edgekd.paper.sources.locate`), so a clean clone renders without training.
Fallback: the ``.qmd`` is split into markdown and ```` ```{python} ```` chunks, executed as a Jupyter
notebook (nbclient, cwd ``paper/``), exported to markdown without the code (nbconvert), its figures and
tables numbered and cross-references resolved as Quarto does (:func:`crossref`), and turned into one
self-contained HTML file by pandoc with citeproc (``references.bib``). Headless Chromium prints the HTML
to ``paper.pdf`` (:func:`write_pdf`) and checks it (:func:`browser_check`): every figure loaded, every
table filled, nothing wider than the text column, no ``nan``, no stray format word such as a lone ``png``
or ``True``, no number or word broken across lines, no heading repeated within its section and no
unresolved cross-reference.
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
from nbclient import NotebookClient
from nbconvert import MarkdownExporter
from playwright.sync_api import sync_playwright

from edgekd.core import info
from edgekd.paper import sources
from edgekd.pipeline.kernels import IPCKernelManager

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


#: A labelled figure (``![caption](path){#fig-x}``), a labelled table caption (``: caption {#tbl-x}``) and a
#: cross-reference (``@fig-x``, ``@tbl-x``), as Quarto reads them.
_FIGURE = re.compile(r"^!\[(?P<caption>[^\n]*)\]\((?P<src>[^)\n]+)\)\{#(?P<label>fig-[\w-]+)\}", re.M)
_TABLE = re.compile(r"^: (?P<caption>[^\n]*?)\s*\{#(?P<label>tbl-[\w-]+)\}[ \t]*$", re.M)
_REF = re.compile(r"(?<![\w@\\])@(?P<label>(?:fig|tbl)-[\w-]*\w)")
CROSSREF_NAMES: dict[str, str] = {"fig": "Figure", "tbl": "Table"}


def crossref(markdown: str) -> str:
    """Number the labelled figures and tables of ``markdown`` in order of appearance ("Figure 2: caption") and turn
    each reference into a link ("[Figure 2](#fig-x)"), as Quarto does; pandoc has no cross-references of its own.
    A reference to no label reads ``?@fig-x``, as in Quarto (:func:`browser_check` reports it); a label given
    twice raises ValueError."""
    found = sorted([*_FIGURE.finditer(markdown), *_TABLE.finditer(markdown)], key=lambda m: m.start())
    names: dict[str, str] = {}
    counts = dict.fromkeys(CROSSREF_NAMES, 0)
    for m in found:
        label = m["label"]
        if label in names:
            raise ValueError(f"cross-reference label #{label} is given twice")
        kind = label.split("-")[0]
        counts[kind] += 1
        names[label] = f"{CROSSREF_NAMES[kind]}\u00a0{counts[kind]}"  # no line break inside "Figure 2"
    markdown = _FIGURE.sub(lambda m: f"![{names[m['label']]}: {m['caption']}]({m['src']}){{#{m['label']}}}", markdown)
    markdown = _TABLE.sub(lambda m: f": []{{#{m['label']}}}{names[m['label']]}: {m['caption']}", markdown)
    return _REF.sub(lambda m: f"[{names[m['label']]}](#{m['label']})" if m["label"] in names
                    else f"?\\@{m['label']}", markdown)


def render_fallback(profile: str, paper_dir: Path = PAPER_DIR, out_dir: Path | None = None, timeout: int = 900) -> Path:
    """Execute the article for ``profile`` and write ``<out_dir>/index.html`` with pandoc."""
    if shutil.which("pandoc") is None:
        raise RuntimeError("the fallback render needs pandoc (apt-get install pandoc) or Quarto")
    out_dir = Path(out_dir) if out_dir is not None else paper_dir / "_output"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta, nb = split_qmd((paper_dir / ARTICLE).read_text())
    os.environ[PROFILE_ENV] = profile
    NotebookClient(nb, timeout=timeout, kernel_name="python3", kernel_manager_class=IPCKernelManager,
                   resources={"metadata": {"path": str(paper_dir)}}).execute()
    for cell in nb.cells:  # warnings stay out of the manuscript (Quarto: execute.warning false)
        cell["outputs"] = [o for o in cell.get("outputs", []) if o.get("name") != "stderr"]
    exporter = MarkdownExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, resources = exporter.from_notebook_node(nb)
    work = out_dir / "fallback"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for name, data in resources.get("outputs", {}).items():
        (work / name).write_bytes(data)
    (work / "index.md").write_text(crossref(body))
    html = out_dir / "index.html"
    title = meta.get("title", "edgekd")
    cmd = ["pandoc", "index.md", "--from", "markdown+pipe_tables+raw_html", "--standalone", "--self-contained",
           "--toc", "--toc-depth=3", "--metadata", f"title={title}", "--metadata", "link-citations=true",
           "--output", str(html.resolve())]
    if meta.get("bibliography"):
        cmd += ["--citeproc", "--bibliography", str((paper_dir / meta["bibliography"]).resolve())]
        if meta.get("csl"):  # Chicago author-date with titles as written (pandoc's title case mangles "HAM10000")
            cmd += ["--csl", str((paper_dir / meta["csl"]).resolve())]
    if (paper_dir / "fallback.css").exists():
        cmd += ["--css", str((paper_dir / "fallback.css").resolve())]
    subprocess.run(cmd, cwd=work, check=True, capture_output=True, text=True)
    return html


QUARTO: str = "Quarto"
FALLBACK: str = "the pandoc fallback"


def renderer(force_fallback: bool = False) -> tuple[str, str]:
    """Which renderer :func:`render` runs and why: (:data:`QUARTO`, its path) or (:data:`FALLBACK`, the reason)."""
    quarto = shutil.which("quarto")
    if quarto and not force_fallback:
        return QUARTO, quarto
    return FALLBACK, ("--fallback was given" if quarto else
                      "no quarto binary on PATH (the conda route, environment.yml, installs it)")


def render(profile: str, paper_dir: Path = PAPER_DIR, force_fallback: bool = False) -> Path:
    """``quarto render`` where Quarto is installed (unless ``force_fallback``), else the fallback (:func:`renderer`)."""
    os.environ[PROFILE_ENV] = profile
    if renderer(force_fallback)[0] == QUARTO:
        subprocess.run(["quarto", "render", str(paper_dir)], check=True)
        return paper_dir / "_output" / "index.html"
    return render_fallback(profile, paper_dir)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def write_pdf(html: Path, pdf: Path, timeout_ms: int = 60000) -> Path:
    """Print ``html`` to ``pdf`` (A4, page numbers) with headless Chromium."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=list(CHROMIUM_ARGS))
        page = browser.new_page()
        page.goto(Path(html).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
        page.pdf(path=str(pdf), format="A4", print_background=True, margin=PDF_MARGINS, display_header_footer=True,
                 header_template="<span></span>",
                 footer_template='<div style="font-size:8px;width:100%;text-align:center">'
                                 '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')
        browser.close()
    return Path(pdf)


#: Page margins of the PDF; :data:`PRINT_WIDTH_PX` is the text width they leave on A4 (210 mm at 96 px/inch).
PDF_MARGINS: dict[str, str] = {"top": "16mm", "bottom": "18mm", "left": "15mm", "right": "15mm"}
PRINT_WIDTH_PX: int = round((210 - 30) / 25.4 * 96)
#: Text that must never be a whole table cell, paragraph or caption: export leftovers and raw values.
STRAY_WORDS: tuple[str, ...] = ("png", "svg", "pdf", "jpeg", "jpg", "True", "False", "None", "nan", "NaN")

_CHECK_JS = r"""(stray) => {
  const body = document.body, style = getComputedStyle(body);
  const box = body.getBoundingClientRect();
  const left = box.left + parseFloat(style.paddingLeft), right = box.right - parseFloat(style.paddingRight);
  const describe = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ': ' + e.textContent.trim().slice(0, 60);
  const imgs = [...document.images];
  const tables = [...document.querySelectorAll('table')];
  // filled: a body row with a number in a cell after the first (the row's name)
  const filled = t => [...t.querySelectorAll('tbody tr')].some(
      tr => [...tr.querySelectorAll('td')].slice(1).some(td => /\d/.test(td.textContent)));
  const wide = [...body.querySelectorAll('*')].filter(e => {
      const r = e.getBoundingClientRect();
      return r.width > 0 && (r.right > right + 1 || r.left < left - 1 || e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0
                             && getComputedStyle(e).overflowX !== 'visible');
  });
  const text = body.innerText;
  const nan = [...text.matchAll(/.{0,30}\bnan\b.{0,30}/gi)].map(m => m[0]);
  const leaves = [...body.querySelectorAll('p, td, th, li, figcaption, span, div')].filter(e => e.children.length === 0);
  // a number ("< 0.001", "1,006", "+0.013") or a word whose characters the layout put on more than one line
  const broken = [], token = /(?:[<>≤≥]\u00a0)?[−+]?[\p{L}\p{N}][\p{L}\p{N}.,×%]*/gu;
  const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest('code, pre, a, script, style')) continue;
    for (const m of node.data.matchAll(token)) {
      if (m[0].length < 2) continue;
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const tops = [...range.getClientRects()].filter(r => r.width > 0).map(r => r.top);
      if (tops.length > 1 && Math.max(...tops) - Math.min(...tops) > 2)
        broken.push(node.parentElement.tagName.toLowerCase() + ': ' + m[0]);
    }
  }
  // a heading repeated within its section, or a bold lead (or a caption's first sentence) that repeats a heading
  const words = s => new Set(s.toLowerCase().replace(/^(figure|table)\s\d+:\s*/, '').match(/[\p{L}\p{N}]+/gu) || []);
  const echoes = (a, b) => {
    const [x, y] = [words(a), words(b)].sort((p, q) => p.size - q.size);
    const shared = [...x].filter(w => y.has(w)).length;
    return x.size > 0 && (shared === y.size || x.size >= 3 && shared / x.size >= 0.8);
  };
  const same = (a, b) => { const x = words(a), y = words(b); return x.size === y.size && [...x].every(w => y.has(w)); };
  const lead = e => {
    if (/^(CAPTION|FIGCAPTION)$/.test(e.tagName))
      return e.textContent.trim().replace(/^(Figure|Table)\s\d+:\s*/, '').split(/[.?:!]/)[0];
    const first = [...e.childNodes].find(n => n.nodeType !== 3 || n.data.trim());
    return first && /^(STRONG|B)$/.test(first.tagName || '') ? first.textContent : null;
  };
  const repeated = [];
  let section = [], open = [];
  for (const e of body.querySelectorAll('h1, h2, h3, h4, p, li, caption, figcaption')) {
    const text = e.textContent.trim().replace(/\s+/g, ' ');
    if (/^H\d$/.test(e.tagName)) {
      const level = +e.tagName[1];
      if (level <= 2) section = [];
      if (section.some(h => same(h, text))) repeated.push(text);
      section.push(text);
      open = open.filter(h => h.level < level).concat([{level, text}]);
    } else {
      const said = lead(e);
      const echoed = said && open.find(h => echoes(h.text, said));
      if (echoed) repeated.push(`"${said.replace(/\s+/g, ' ').trim()}" under "${echoed.text}"`);
    }
  }
  return {
    images: imgs.length,
    images_loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: tables.length,
    tables_filled: tables.filter(filled).length,
    empty_cells: [...document.querySelectorAll('td')].filter(td => td.textContent.trim() === '').length,
    headings: [...document.querySelectorAll('h2, h3')].map(h => h.textContent.trim().replace(/\s+/g, ' ')),
    errors: [...document.querySelectorAll('.ansi-red-fg, .output_error, pre')].filter(
        e => /Traceback|Error/.test(e.textContent)).length,
    too_wide: wide.map(describe),
    nan: nan,
    stray_words: leaves.filter(e => stray.includes(e.textContent.trim())).map(describe),
    broken: broken,
    repeated_headings: repeated,
    unresolved_refs: [...text.matchAll(/\?@(?:fig|tbl)-[\w-]+/g)].map(m => m[0]),
    column_px: right - left,
  };
}"""


def browser_check(html: Path, width: int = 1100, media: str = "screen", timeout_ms: int = 60000) -> dict:
    """Open ``html`` in headless Chromium at ``width`` px (``media`` 'screen' or 'print') and report what a reader
    would see: figures loaded, tables filled, elements wider than the text column, ``nan`` text, stray words,
    numbers or words the layout broke across lines (outside code and links), headings repeated within their section
    (the same heading twice, or a bold lead or caption sentence that repeats its heading) and unresolved
    cross-references (``?@fig-x``)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": width, "height": 1200})
        page.emulate_media(media=media)
        page.goto(Path(html).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
        report = page.evaluate(_CHECK_JS, list(STRAY_WORDS))
        browser.close()
    return report


def problems(report: dict) -> list[str]:
    """What :func:`browser_check` found wrong, in words (empty when the page is clean)."""
    found = []
    if report["images"] == 0 or report["images_loaded"] != report["images"]:
        found.append(f"{report['images_loaded']}/{report['images']} figures loaded")
    if report["tables_filled"] != report["tables"] or report["empty_cells"]:
        found.append(f"{report['tables_filled']}/{report['tables']} tables filled, {report['empty_cells']} empty cells")
    if report["errors"]:
        found.append(f"{report['errors']} error blocks")
    for key, what in (("too_wide", "wider than the text column"), ("nan", "literal nan"), ("stray_words", "stray words"),
                      ("broken", "numbers or words broken across lines"),
                      ("repeated_headings", "headings repeated within their section"),
                      ("unresolved_refs", "unresolved cross-references")):
        if report[key]:
            found.append(f"{len(report[key])} {what}: {report[key][:3]}")
    return found


def check(html: Path) -> dict[str, dict]:
    """:func:`browser_check` on screen and at the PDF's text width in print media."""
    return {"screen": browser_check(html), "print": browser_check(html, PRINT_WIDTH_PX, "print")}


def main(argv: list[str] | None = None) -> int:
    """``edgekd-paper [--profile default] [--fallback]``: render HTML and PDF, then check them in Chromium."""
    ap = argparse.ArgumentParser(prog="edgekd-paper", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default", help="profile whose outputs/<profile>/aggregate or "
                    "paper/results/<profile> the paper reads")
    ap.add_argument("--fallback", action="store_true", help="use the pandoc fallback even where Quarto exists")
    args = ap.parse_args(argv)
    try:
        source = sources.locate(args.profile)
    except FileNotFoundError as exc:
        print(f"edgekd-paper: error: {exc}", file=sys.stderr)
        return 2
    print(f"edgekd-paper: reading {source.path} ({source.kind})")
    name, why = renderer(args.fallback)
    print(f"edgekd-paper: rendering with {name}" + (f" ({why})" if name == QUARTO else f": {why}"))
    html = render(args.profile, force_fallback=args.fallback)
    pdf = write_pdf(html, html.parent / "paper.pdf")
    print(f"rendered {html} and {pdf} with {name}")
    failed = False
    for media, report in check(html).items():
        found = problems(report)
        failed |= bool(found)
        print(f"headless Chromium ({media}): {report['images_loaded']}/{report['images']} figures loaded, "
              f"{report['tables_filled']}/{report['tables']} tables filled"
              + (f"; problems: {'; '.join(found)}" if found else "; no problems"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
