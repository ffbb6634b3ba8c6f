"""Render the Quarto manuscript in ``paper/`` to HTML and PDF: with Quarto where installed, else a tested fallback.

The manuscript reads ``outputs/<profile>/aggregate`` when it exists, else the published reference in
``paper/results/<profile>`` (:func:`edgekd.paper.sources.locate`), so a clean clone renders without training.
Fallback: the ``.qmd`` is split into markdown and ```` ```{python} ```` chunks, executed as a Jupyter
notebook (nbclient, cwd ``paper/``), exported to markdown without the code (nbconvert), its figures and
tables numbered and cross-references resolved as Quarto does (:func:`crossref`), and turned into one
self-contained HTML file by pandoc with citeproc (``references.bib``). Headless Chromium prints the HTML
to ``paper.pdf`` (:func:`write_pdf`) and checks it (:func:`browser_check`): every figure loaded, every
table filled, nothing wider than the text column, no ``nan``, no stray format word such as a lone ``png``
or ``True``, no number, word or ``[low, high]`` interval broken across lines, no heading repeated within its section,
no unresolved cross-reference, no profile label, file path, run ID or issue number in the prose, and every
abbreviation defined where it is first used (:data:`edgekd.paper.format.ABBREVIATIONS`). The PDF's main text, up to
the References heading, may run to :data:`MAIN_TEXT_PAGES` pages (:func:`main_text_pages`).
"""

from __future__ import annotations

import argparse
import csv
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
from edgekd.paper import format as FM
from edgekd.paper import sources
from edgekd.pipeline import plan
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
    for css in ("paper.css", "fallback.css"):  # what Quarto's html format also reads, then the fallback's own layout
        if (paper_dir / css).exists():
            cmd += ["--css", str((paper_dir / css).resolve())]
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
#: KD setting names that are English words ("at", attention transfer in ``params/kd_tuning.yaml``): the prose uses them
#: as words, so :func:`setting_labels` leaves them out.
WORD_SETTINGS: frozenset[str] = frozenset({"at"})
#: The venue's limit: the main text, up to and including the page where the References heading starts, may run to this
#: many pages (:func:`main_text_pages`).
MAIN_TEXT_PAGES: int = 10


def setting_labels() -> list[str]:
    """The KD settings' names, which are the code's and must never reach the reader: those of every profile's
    ``students.kd`` and the ``setting`` of every published ``runs.csv`` (names since dropped from the profiles, such as
    ``nokd_eq``), less the abbreviations' own (``kd``, ``dkd``, ``dist``: the prose's KD, DKD, DIST) and English words."""
    names = {kd["name"] for path in sorted(plan.PARAMS_DIR.glob("*.yaml"))
             for kd in plan.load_profile(path).get("students", {}).get("kd") or []}
    for runs in sorted(info.results_root().glob("**/runs.csv")):
        with runs.open(newline="") as f:
            names |= {row["setting"] for row in csv.DictReader(f) if row.get("setting")}
    abbreviations = {a.lower() for a in FM.ABBREVIATIONS}
    return sorted(n for n in names if n.lower() not in abbreviations and n not in WORD_SETTINGS)


_CHECK_JS = r"""({stray, labels, abbreviations, exempt, names}) => {
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
  // the text nodes outside the elements `skip` selects, in document order
  const textNodes = skip => {
    const nodes = [], walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode())
      if (!node.parentElement.closest(skip)) nodes.push(node);
    return nodes;
  };
  // whether the layout put the characters start..end of `node` on more than one line
  const spansLines = (node, start, end) => {
    const range = document.createRange();
    range.setStart(node, start);
    range.setEnd(node, end);
    const tops = [...range.getClientRects()].filter(r => r.width > 0).map(r => r.top);
    return tops.length > 1 && Math.max(...tops) - Math.min(...tops) > 2;
  };
  const tag = node => node.parentElement.tagName.toLowerCase() + ': ';
  const around = (s, i, n) => '"' + s.slice(Math.max(0, i - n), i + n).replace(/\s+/g, ' ').trim() + '"';
  // a number ("< 0.001", "1,006", "+0.013") or a word whose characters the layout put on more than one line
  const broken = [], token = /(?:[<>≤≥]\u00a0)?[−+]?[\p{L}\p{N}][\p{L}\p{N}.,×%]*/gu;
  for (const node of textNodes('code, pre, a, script, style'))
    for (const m of node.data.matchAll(token))
      if (m[0].length >= 2 && spansLines(node, m.index, m.index + m[0].length)) broken.push(tag(node) + m[0]);
  // an interval ("[−0.010, +0.041]", "[1.88×, 1.99×]") whose halves the layout put on different lines: each half is
  // whole, so the check above passes it, but the line breaks at the space after the comma
  const brokenIntervals = [], interval = /\[[−+-]?\d[\d.,]*\u00a0?[×%]?,[ \u00a0][−+-]?\d[\d.,]*\u00a0?[×%]?\]/gu;
  for (const node of textNodes('code, pre, script, style'))
    for (const m of node.data.matchAll(interval))
      if (spansLines(node, m.index, m.index + m[0].length)) brokenIntervals.push(tag(node) + m[0]);
  // a hyphenated model or method name ("EfficientNet-Lite0") that the layout split at its hyphen: the word check above
  // sees its halves as two words
  const brokenNames = [], name = new RegExp(names.map(n => n.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'gu');
  for (const node of textNodes('code, pre, script, style'))
    for (const m of names.length ? node.data.matchAll(name) : [])
      if (spansLines(node, m.index, m.index + m[0].length)) brokenNames.push(tag(node) + m[0]);
  // the code's words in the prose: a profile's KD setting ("nokd"), a snake_case name ("efficientnet_lite0"), a file
  // path ("paper/index.qmd"), a run ID ("student-resnet18-kd-s0") or an issue number; code, links and the
  // bibliography may carry them
  const isCode = t => t.split(/[^\p{L}\p{N}_]+/u).some(w => labels.includes(w)) || /[\p{L}\p{N}]_[\p{L}\p{N}]/u.test(t)
      || /\/.*\.(?:py|csv|json|ya?ml|md|qmd|png|svg|pdf|ipynb|npz|onnx|sh|toml|txt|html)$/u.test(t)
      || /^(?:paper|outputs|scripts|params|lib|notebooks|tests)\//u.test(t) || /^(?:student|teacher)-\S+-s\d+$/u.test(t);
  const codeInProse = [];
  for (const node of textNodes('code, pre, a, script, style, #refs')) {
    for (const m of node.data.matchAll(/\S+/gu)) {
      const t = m[0].replace(/^[("'“‘[]+|[)\]"'”’.,;:!?]+$/gu, '');
      if (isCode(t)) codeInProse.push(tag(node) + t + ' in ' + around(node.data, m.index, 40));
    }
    for (const m of node.data.matchAll(/\bissue\s+#?\d+/giu))
      codeInProse.push(tag(node) + m[0] + ' in ' + around(node.data, m.index, 40));
  }
  // abbreviations: the first use of each defines it ("expected calibration error (ECE)" or "ECE (expected calibration
  // error)", the words in any case), and every token of capitals is a known abbreviation or an exempt name; read in
  // document order, less code, the table of contents, the bibliography and the title block (an abstract in it counts)
  let flat = '', block = null;
  const blocks = 'p, li, td, th, caption, figcaption, h1, h2, h3, h4, h5, h6, dt, dd, blockquote, figure, div, body';
  for (const node of textNodes('code, pre, script, style, nav, #refs')) {
    const e = node.parentElement;
    if (e.closest('header') && !e.closest('.abstract')) continue;
    flat += (e.closest(blocks) === block ? '' : ' ') + node.data;
    block = e.closest(blocks);
  }
  flat = flat.replace(/\s+/gu, ' ');
  const fold = s => s.toLowerCase().replace(/[‐‑‒–—-]/gu, '-');
  const esc = s => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const undefinedAbbreviations = [];
  for (const [abbr, meaning] of Object.entries(abbreviations)) {
    const m = new RegExp(`(?<![\\p{L}\\p{N}])${esc(abbr)}(?![\\p{L}\\p{N}])`, 'u').exec(flat);
    if (!m) continue;
    const w = esc(fold(meaning)), end = m.index + abbr.length;
    const before = fold(flat.slice(Math.max(0, m.index - 200), m.index)), after = fold(flat.slice(end, end + 200));
    if (!(new RegExp(`(?<![\\p{L}\\p{N}])${w} ?\\( ?$`, 'u').test(before) && /^ ?[);,]/u.test(after)
          || new RegExp(`^ ?\\( ?${w} ?[);,]`, 'u').test(after)))
      undefinedAbbreviations.push(abbr + ' in ' + around(flat, m.index, 40));
  }
  const known = t => Object.hasOwn(abbreviations, t) || exempt.includes(t);
  const unknown = new Map();
  for (const m of flat.matchAll(/(?<![\p{L}\p{N}])[A-Z][A-Z0-9]*[A-Z][A-Z0-9]*s?(?![\p{L}\p{N}])/gu)) {
    const t = m[0];
    if (!known(t) && !(t.endsWith('s') && known(t.slice(0, -1))) && !unknown.has(t))
      unknown.set(t, t + ' in ' + around(flat, m.index, 40));
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
    broken_intervals: brokenIntervals,
    broken_names: brokenNames,
    code_in_prose: codeInProse,
    undefined_abbreviations: undefinedAbbreviations,
    unknown_abbreviations: [...unknown.values()],
    repeated_headings: repeated,
    unresolved_refs: [...text.matchAll(/\?@(?:fig|tbl)-[\w-]+/g)].map(m => m[0]),
    column_px: right - left,
  };
}"""


def browser_check(html: Path, width: int = 1100, media: str = "screen", timeout_ms: int = 60000) -> dict:
    """Open ``html`` in headless Chromium at ``width`` px (``media`` 'screen' or 'print') and report what a reader
    would see: figures loaded, tables filled, elements wider than the text column, ``nan`` text, stray words,
    numbers or words the layout broke across lines (outside code and links), ``[low, high]`` intervals it broke
    (outside code), headings repeated within their section (the same heading twice, or a bold lead or caption sentence
    that repeats its heading), unresolved cross-references (``?@fig-x``), the code's words in the prose (a KD setting
    of :func:`setting_labels`, a snake_case name, a path, a run ID, an issue number), abbreviations whose first use
    does not define them (:data:`edgekd.paper.format.ABBREVIATIONS`) and tokens of capitals that are neither those nor
    :data:`edgekd.paper.format.EXEMPT_CAPS`."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": width, "height": 1200})
        page.emulate_media(media=media)
        page.goto(Path(html).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
        report = page.evaluate(_CHECK_JS, {"stray": list(STRAY_WORDS), "labels": setting_labels(),
                                           "abbreviations": FM.ABBREVIATIONS, "exempt": sorted(FM.EXEMPT_CAPS),
                                           "names": list(FM.HYPHENATED_NAMES)})
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
                      ("broken_intervals", "intervals broken across lines"),
                      ("broken_names", "model or method names broken at a hyphen"),
                      ("repeated_headings", "headings repeated within their section"),
                      ("unresolved_refs", "unresolved cross-references"),
                      ("code_in_prose", "code labels, paths, run IDs or issue numbers in the prose"),
                      ("undefined_abbreviations", "abbreviations not defined at their first use"),
                      ("unknown_abbreviations", "abbreviations neither in ABBREVIATIONS nor in EXEMPT_CAPS")):
        if report[key]:
            found.append(f"{len(report[key])} {what}: {report[key][:3]}")
    return found


def main_text_pages(pdf: Path) -> int:
    """The pages of ``pdf`` up to and including the one where the References heading starts (the first page with a
    line that reads exactly "References"), which the venue's limit counts; every page where there is none. One
    ``pdftotext`` call reads all pages; it ends each with a form feed."""
    text = subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    pages = text.split("\f")[:-1]
    return next((n for n, page in enumerate(pages, 1) if "References" in map(str.strip, page.splitlines())), len(pages))


def check(html: Path) -> dict[str, dict]:
    """:func:`browser_check` on screen and at the PDF's text width in print media."""
    return {"screen": browser_check(html), "print": browser_check(html, PRINT_WIDTH_PX, "print")}


def main(argv: list[str] | None = None) -> int:
    """``edgekd-paper [--profile default] [--fallback]``: render HTML and PDF, then check the main text's length in pages
    and the pages in Chromium."""
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
    pages = main_text_pages(pdf)
    failed = pages > MAIN_TEXT_PAGES
    print(f"main text: {pages} pages up to the References heading"
          + (f"; problem: over the limit of {MAIN_TEXT_PAGES} pages" if failed else f" (limit {MAIN_TEXT_PAGES})"))
    for media, report in check(html).items():
        found = problems(report)
        failed |= bool(found)
        print(f"headless Chromium ({media}): {report['images_loaded']}/{report['images']} figures loaded, "
              f"{report['tables_filled']}/{report['tables']} tables filled"
              + (f"; problems: {'; '.join(found)}" if found else "; no problems"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
