"""A real JupyterLab from the project's environment, driven by headless Chromium (Playwright).

A double click on the explorer's py:percent notebook in the file browser must open it as a
notebook (the settings gflnb.lab installs); running all cells must give the explorer; moving its
threshold slider and picking a detection must change what it shows; and no cell may fail.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gflnb.engine.checkpoint import save_checkpoint
from gflnb.data.synth import dataset_paths, make_dataset
from test_explorer import confident_model

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "gflnb-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a folder holding the explorer notebook, pointed at a tiny set and checkpoint."""
    tmp = tmp_path_factory.mktemp("lab")
    work = tmp / "work"
    work.mkdir()
    make_dataset(tmp / "synth", num_train=0, num_val=3, seed=2, progress=False, version=2)
    ann, img = dataset_paths(tmp / "synth", "val")
    m = confident_model()
    ck = tmp / "model.pth"
    save_checkpoint(m, ck, meta=dict(config=m.cfg.to_dict()))
    src = (ROOT / "notebooks" / "explore.py").read_text()
    for name, value in (("checkpoint", ck), ("ann", ann), ("images", img)):
        src, n = re.subn(rf'^{name} = "[^"]*"', f'{name} = "{value}"', src, count=1, flags=re.M)
        assert n == 1, name
    (work / "explore.py").write_text(src)
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "user"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).with_name("jupyter-lab")
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen([str(exe), "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={work}",
                             "--LabApp.expose_app_in_browser=True"] + (["--allow-root"] if os.geteuid() == 0 else []),
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError(f"JupyterLab did not start:\n{(tmp / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield dict(url=url, tmp=tmp)
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _status(page) -> str:
    return page.locator(".jp-NotebookPanel .widget-html-content").last.inner_text()


def test_double_click_opens_a_notebook_and_the_explorer_reacts(lab):
    from playwright.sync_api import expect, sync_playwright
    shots = Path(os.environ.get("GFLNB_SCREENSHOTS", lab["tmp"]))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{lab['url']}/lab?token={TOKEN}")
        item = page.locator(".jp-DirListing-item", has_text="explore.py")
        item.wait_for(timeout=60_000)
        item.dblclick()
        # a notebook, not the text editor: a notebook panel with cells, on the python3 kernel
        panel = page.locator(".jp-NotebookPanel")
        panel.wait_for(timeout=60_000)
        expect(panel.locator(".jp-Cell").first).to_be_visible(timeout=30_000)
        assert page.locator(".jp-FileEditor").count() == 0
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                               timeout=60_000)
        kernel = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.name")
        assert kernel == "python3"
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        status = page.locator(".jp-NotebookPanel .widget-html-content").last
        expect(status).to_contain_text("selected:", timeout=180_000)
        first = _status(page)
        n_first = int(re.search(r"(\d+) predicted boxes", first).group(1))
        detail = page.locator(".jp-NotebookPanel img.widget-image").last
        detail_src = detail.get_attribute("src")
        page.screenshot(path=str(shots / "jupyterlab_explorer.png"))

        # pick another detection from the list: the detail image changes
        select = page.locator(".jp-NotebookPanel .widget-select select")
        options = select.locator("option")
        assert options.count() >= 2
        before = _status(page)
        select.select_option(index=1)
        page.wait_for_function("(src) => { const i = Array.from(document.querySelectorAll("
                               "'.jp-NotebookPanel img.widget-image')).pop(); return i && i.src !== src; }",
                               arg=detail_src, timeout=60_000)
        assert _status(page) != before and detail.get_attribute("src") != detail_src

        # a click on the image selects the smallest box under the pointer (ipyevents -> select_at)
        before = _status(page)
        overview = page.locator(".jp-NotebookPanel img.widget-image").first
        overview.scroll_into_view_if_needed()
        bb = overview.bounding_box()
        overview.click(position={"x": bb["width"] * 0.5, "y": bb["height"] * 0.5})
        page.wait_for_function("(t) => { const s = Array.from(document.querySelectorAll("
                               "'.jp-NotebookPanel .widget-html-content')).pop(); return s && s.innerText !== t; }",
                               arg=before, timeout=60_000)
        assert re.search(r"selected: \d+: ", _status(page))

        # the slider, by keyboard (as a user would): 0.30 -> 0.95 in steps of 0.05, above every
        # score of this model (0.88-0.92)
        readout = page.locator(".jp-NotebookPanel .widget-slider", has_text="score").locator(".widget-readout")
        handle = page.locator(".jp-NotebookPanel .widget-slider", has_text="score").locator(".noUi-handle")
        handle.focus()
        for _ in range(14):
            page.keyboard.press("ArrowRight")
        page.wait_for_function("(n) => { const s = Array.from(document.querySelectorAll("
                               "'.jp-NotebookPanel .widget-html-content')).pop(); const m = s && s.innerText.match("
                               "/(\\d+) predicted boxes/); return m && Number(m[1]) !== n; }", arg=n_first,
                               timeout=60_000)
        n_high = int(re.search(r"(\d+) predicted boxes", _status(page)).group(1))
        assert n_high < n_first and readout.inner_text() == "0.95"

        page.screenshot(path=str(shots / "jupyterlab_explorer_moved.png"))

        # no cell failed, and the kernel is still alive
        assert page.locator(".jp-NotebookPanel .jp-OutputArea-output[data-mime-type="
                            "'application/vnd.jupyter.stderr']", has_text="Traceback").count() == 0
        assert page.locator(".jp-NotebookPanel .jp-RenderedText[data-mime-type="
                            "'application/vnd.jupyter.error']").count() == 0
        state = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status")
        assert state in ("idle", "busy")
        assert not errors, errors
        browser.close()
