"""JupyterLab as a tested client: a stage notebook opened in JupyterLab in headless Chromium and run through the UI.

JupyterLab starts on a free local port (127.0.0.1 only) with a token and private settings; the notebook is a copy
of ``04_evaluate.ipynb`` whose parameters point at copies of the predictions of two finished real-data runs, a KD
student and its teacher (``tiny_runs``, the runs 04_evaluate's papermill test reads too).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

from edgekd.paper import render
from edgekd.pipeline.runner import NOTEBOOKS_DIR

NOTEBOOK = "04_evaluate.ipynb"
#: Where JupyterLab renders stderr and error outputs.
STDERR = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parameterised_copy(folder, runs: dict) -> None:
    """``04_evaluate.ipynb`` in ``folder`` with ``runs`` injected after its parameters cell, as papermill does."""
    nb = nbformat.read(NOTEBOOKS_DIR / NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in runs.items())))
    nbformat.write(nb, folder / NOTEBOOK)


@pytest.fixture()
def lab(tiny_runs, tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a parameterised evaluate notebook; shut down afterwards."""
    work = tmp_path / "lab"
    work.mkdir()
    for name, run in (("student-resnet18-kdat-s0", tiny_runs["student"]), ("teacher-resnet50-s0", tiny_runs["teacher"])):
        (work / name).mkdir()
        shutil.copy(run / "predictions.npz", work / name)
    parameterised_copy(work, {"run_dir": str(work / "student-resnet18-kdat-s0"),
                              "teacher_dir": str(work / "teacher-resnet50-s0"), "n_resamples": 50, "seed": 0})
    settings = tmp_path / "settings" / "@jupyterlab"
    for plugin, values in (("notebook-extension/tracker", {"windowingMode": "none"}),  # every cell stays in the page
                           ("apputils-extension/notification", {"fetchNews": "false"})):  # no news from the network
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
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


def test_evaluate_notebook_runs_in_jupyterlab_through_the_ui(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=list(render.CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?token={lab['token']}", timeout=90_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        kernel_idle = "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /\\(ipykernel\\) \\| Idle/.test(e.textContent))"
        page.wait_for_function(kernel_idle, timeout=90_000)  # the status bar, once the kernel is connected
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-item:has(.lm-Menu-itemLabel:text-is('Run All Cells'))")
        page.wait_for_function(  # every cell ran, or one failed (Run All stops there)
            """(stderr) => {
              const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
              const failed = [...document.querySelectorAll(stderr)].some(e => /Traceback|Error/.test(e.textContent));
              return prompts.length > 0 && (prompts.every(t => /\\[\\d+\\]/.test(t)) || failed);
            }""", arg=STDERR, timeout=120_000)
        page.wait_for_function(kernel_idle, timeout=60_000)
        seen = page.evaluate(
            """(stderr) => ({
              cells: document.querySelectorAll('.jp-CodeCell').length,
              outputs: document.querySelectorAll('.jp-OutputArea-output').length,
              figures: [...document.querySelectorAll('.jp-OutputArea-output img')].filter(i => i.naturalWidth > 0).length,
              tables: document.querySelectorAll('.jp-OutputArea-output table').length,
              errors: [...document.querySelectorAll(stderr)].map(e => e.textContent).filter(t => /Traceback|Error/.test(t)),
            })""", STDERR)
        browser.close()
    print("JupyterLab showed:", seen)
    assert seen["errors"] == []
    assert seen["figures"] >= 2 and seen["tables"] >= 5 and seen["outputs"] >= seen["cells"] - 2
    assert (lab["work"] / "student-resnet18-kdat-s0" / "eval" / "metrics.csv").exists()
