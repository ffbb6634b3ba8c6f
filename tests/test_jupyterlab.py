"""JupyterLab as a tested client: every stage notebook opened in JupyterLab in headless Chromium, with its default
parameters, in the documented order, each from a fresh kernel, and run through the UI ("Run All Cells").

JupyterLab starts on a free local port (127.0.0.1 only) with a token and private settings, serving a copy of
``notebooks/``; the notebooks' own runs go to the copy's ``../outputs/notebooks``. Each notebook must finish with no
error and no stderr output, show at least its expected figures, print no bare ``None`` or ``''``, and render every
markdown heading as a heading. With ``$EDGEKD_LAB_SCREENSHOTS`` set, a screenshot of each notebook goes there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from edgekd.paper import render
from edgekd.pipeline.plan import PER_RUN, STAGES
from edgekd.pipeline.runner import NOTEBOOKS_DIR
from edgekd.stages import demo as DM

#: The per-run stages' folders inside a run (the notebooks' own stages write them anew).
STAGE_FOLDERS: tuple[str, ...] = tuple(STAGES[s].folder for s in PER_RUN)

#: Where JupyterLab renders stderr and error outputs.
STDERR = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The notebooks in the documented order (README), and the figures each shows at least with its defaults.
ORDER: dict[str, int] = {"01_data": 1, "02_teacher": 2, "03_student": 2, "04_evaluate": 3, "05_robustness": 2,
                         "06_efficiency": 0, "07_aggregate": 6, "08_export": 0}
#: Where JupyterLab renders text outputs, and what no cell may print alone.
PLAIN = '.jp-OutputArea-output[data-mime-type="text/plain"]'
BARE = {"None", "''", '""', "None None"}
#: How often the page checks whether the notebook has finished (ms). Playwright's default polls on every animation
#: frame, which re-queried the whole notebook's DOM 60 times a second for the minutes each notebook runs: CPU taken
#: from the kernel under test and from the rest of the suite.
POLL_MS: int = 500


def seed_demo_runs(work: Path) -> list[str]:
    """Copy the demo teacher and student that the nbval run of the notebooks trained (in place, so in the checkout's
    ``outputs/notebooks``) into the copy's outputs, their training files only: 02 and 03 then read them (a finished
    run of the same recipe, data and code is not trained again) and the notebooks' own stages run as ever. Without
    them (nbval did not run, or failed) the notebooks train their own. Returns the run folders copied."""
    copied = []
    for run in (DM.TEACHER_DIR, DM.STUDENT_DIR):
        source = NOTEBOOKS_DIR / run
        if DM.finished(source):
            shutil.copytree(source, work / "notebooks" / run, ignore=shutil.ignore_patterns(*STAGE_FOLDERS))
            copied.append(Path(run).name)
    return copied


@pytest.fixture()
def lab(data_dir, tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebooks folder; shut down afterwards."""
    work = tmp_path / "lab"
    shutil.copytree(NOTEBOOKS_DIR, work / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    print("demo runs read from the nbval run:", seed_demo_runs(work) or "none (the notebooks train their own)")
    settings = tmp_path / "settings" / "@jupyterlab"
    for plugin, values in (("notebook-extension/tracker", {"windowingMode": "none"}),  # every cell stays in the page
                           ("apputils-extension/notification", {"fetchNews": "false"})):  # no news from the network
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    port, token = free_port(), secrets.token_hex(16)
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--allow-root",
         "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"url": url, "token": token, "work": work}
    finally:
        try:
            req = urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=10).close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


def _api(lab: dict, path: str, method: str = "GET") -> object:
    req = urllib.request.Request(f"{lab['url']}/api/{path}?token={lab['token']}", method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def _headings(name: str) -> list[int]:
    """Per markdown cell of a notebook, how many of its lines are Markdown headings."""
    nb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    return [sum(line.startswith("#") for line in c.source.splitlines()) for c in nb.cells if c.cell_type == "markdown"]


SEEN = """([stderr, plain]) => ({
  cells: document.querySelectorAll('.jp-CodeCell').length,
  prompts: [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim()),
  figures: [...document.querySelectorAll('.jp-OutputArea-output img')].filter(i => i.naturalWidth > 0).length,
  stderr: [...document.querySelectorAll(stderr)].map(e => e.textContent.slice(0, 2000)),
  plain: [...document.querySelectorAll(plain)].map(e => e.textContent.trim()),
  headings: [...document.querySelectorAll('.jp-MarkdownCell')].map(
    c => c.querySelectorAll('.jp-RenderedMarkdown h1, .jp-RenderedMarkdown h2, .jp-RenderedMarkdown h3').length),
  height: Math.max(...[...document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')].map(e => e.scrollHeight)),
})"""


def test_every_notebook_runs_in_jupyterlab_in_the_documented_order(lab):
    from playwright.sync_api import sync_playwright

    shots = os.environ.get("EDGEKD_LAB_SCREENSHOTS")
    report, problems = [], []
    kernel_idle = "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /\\(ipykernel\\) \\| Idle/.test(e.textContent))"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=list(render.CHROMIUM_ARGS))
        for name, figures in ORDER.items():
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # A workspace of its own, reset: JupyterLab would otherwise reopen the previous notebook beside it.
            page.goto(f"{lab['url']}/lab/workspaces/{name}/tree/notebooks/{name}.ipynb?reset&token={lab['token']}",
                      timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.wait_for_function(kernel_idle, polling=POLL_MS, timeout=90_000)  # a fresh kernel, connected
            tick = time.time()
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-item:has(.lm-Menu-itemLabel:text-is('Run All Cells'))")
            page.wait_for_function(  # every cell ran, or one failed (Run All stops there)
                """(stderr) => {
                  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
                  const failed = [...document.querySelectorAll(stderr)].some(e => /Traceback|Error/.test(e.textContent));
                  return prompts.length > 0 && (prompts.every(t => /\\[\\d+\\]/.test(t)) || failed);
                }""", arg=STDERR, polling=POLL_MS, timeout=600_000)
            page.wait_for_function(kernel_idle, polling=POLL_MS, timeout=120_000)
            seconds = time.time() - tick
            page.wait_for_timeout(500)  # the last images decode
            seen = page.evaluate(SEEN, [STDERR, PLAIN])
            if shots:
                page.set_viewport_size({"width": 1400, "height": min(int(seen["height"]) + 150, 16_000)})
                page.evaluate("() => document.querySelectorAll('.jp-WindowedPanel-outer').forEach(e => e.scrollTop = 0)")
                page.wait_for_timeout(500)
                page.screenshot(path=str(Path(shots) / f"{name}.png"))
            page.close()
            for session in _api(lab, "sessions"):  # the next notebook starts from a fresh kernel
                _api(lab, f"sessions/{session['id']}", "DELETE")
            report.append(f"{name}: {seconds:.0f} s, {seen['figures']} figures, {seen['cells']} code cells")
            unrun = [t for t in seen["prompts"] if not re.fullmatch(r"\[\d+\]:", t)]
            problems += [f"{name}: {what}" for what, bad in (
                ("cells not run " + str(unrun), unrun),
                (f"stderr or error output {seen['stderr']}", seen["stderr"]),
                (f"{seen['figures']} figures, expected at least {figures}", seen["figures"] < figures),
                (f"bare outputs {[t for t in seen['plain'] if t in BARE]}", any(t in BARE for t in seen["plain"])),
                (f"headings rendered per markdown cell {seen['headings']}, written {_headings(name)}",
                 seen["headings"] != _headings(name)),
            ) if bad]
        browser.close()
    print("JupyterLab, notebook by notebook:", *report, sep="\n  ")
    if shots:
        (Path(shots) / "notebooks.txt").write_text("\n".join(report) + "\n")
    assert problems == []
    runs = lab["work"] / "outputs" / "notebooks"
    assert (runs / "student-efficientnet_lite0-kd-s0" / "eval" / "metrics.csv").is_file()
    assert (runs / "bundles" / "student-efficientnet_lite0-kd" / "bundle" / "bundle.json").is_file()
