"""What a reader sees in JupyterLab: every chapter runs in a real browser, and every slider redraws.

The machinery of ``tests/test_browser_1.py`` and ``tests/test_browser_2.py``, which split the
chapters between pytest-xdist's two workers (each with its own JupyterLab server). For each chapter
this starts JupyterLab on localhost (a free port, a random token, a throw-away copy of the
notebooks, its own settings), opens the notebook in headless Chromium through Playwright, runs all
cells in the ``test`` profile (the root conftest.py pins it), then moves every ipywidgets slider (a
mouse drag on the handle, as a reader does) and every dropdown of every ``utils.widgets`` explorer,
and checks that the figure under it was redrawn (the PNG's data changed). It fails on any error
output: in a cell (with the cell's number, source and traceback, as nbval reports it), or in a
widget's output after a move. The number of live explorers must equal the number of code cells
whose value is a ``widgets.`` call, so a widget that fell back to its static figure fails too.

**One execution per notebook.** "Run All" in JupyterLab executes every cell in the same kernel and
fails on the first error output: what ``nbval --nbval-lax`` checks. So when the browser test can run
(:func:`browser_runs_notebooks`), the root conftest.py leaves the chapters out of nbval's collection
and each notebook is executed once, here; without playwright or Chromium (a reader's plain
``pytest``), or with ``DIFFUSION_NBVAL_ONLY=1``, nbval executes them and these tests skip. A
notebook named on the command line (``pytest chapters/05_flow_matching.ipynb``) always runs under
nbval.

Needs the ``playwright`` Python package and a Chromium on disk (Debian's ``/usr/bin/chromium``, or
the path in ``$DIFFUSION_CHROMIUM``); no browser is downloaded. ``.ci/run`` installs both.
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

import importlib.util

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("*.ipynb"))
# Test-profile minutes of work per chapter, roughly (its cpu-profile time / 4): the two halves are
# balanced by a greedy split on these, so the two workers finish together.
WEIGHT = {"02": 5, "08": 5, "10": 5, "11": 5, "03": 2.5, "04": 2.5, "05": 2.5, "07": 2.5, "09": 2.5,
          "00": 2, "01": 2, "06": 2, "12": 1, "B": 1, "A": 0.5, "C": 0.5}


def _split(names):
    parts, load = ([], []), [0.0, 0.0]
    for name in sorted(names, key=lambda n: -WEIGHT.get(n.split("_")[0], 2)):
        k = 0 if load[0] <= load[1] else 1
        parts[k].append(name)
        load[k] += WEIGHT.get(name.split("_")[0], 2)
    return [sorted(p) for p in parts]


PARTS = _split(CHAPTERS)

RUN_ALL_TIMEOUT_S = 900     # one chapter's "Run All" in the test profile (about 2 min alone)
REDRAW_TIMEOUT_S = 120      # one slider move's redraw (1-2 s on a quiet machine)
SERVER_START_TIMEOUT_S = 300  # two servers start at once beside the unit tests on a loaded 2-core machine

def _chromium() -> str | None:
    """Path of a Chromium on disk: $DIFFUSION_CHROMIUM, else Debian's or one on PATH."""
    candidates = [os.environ.get("DIFFUSION_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                  shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


CHROMIUM = _chromium()


def browser_runs_notebooks() -> bool:
    """True when the browser tests can run (playwright, jupyterlab and a Chromium are here) and
    ``DIFFUSION_NBVAL_ONLY`` is not set: then they, not nbval, execute the chapters."""
    if os.environ.get("DIFFUSION_NBVAL_ONLY", "") not in ("", "0"):
        return False
    return (CHROMIUM is not None and importlib.util.find_spec("playwright") is not None
            and importlib.util.find_spec("jupyterlab") is not None)


if browser_runs_notebooks():
    from playwright import sync_api as playwright_api

MARKS = [
    pytest.mark.skipif(not browser_runs_notebooks(), reason="the browser test needs playwright, jupyterlab and "
                       "chromium (apt-get install chromium), and DIFFUSION_NBVAL_ONLY unset; nbval runs the chapters"),
    pytest.mark.browser,
    # honoured where pytest-timeout is installed; the waits below have their own limits anyway
    pytest.mark.timeout(3 * RUN_ALL_TIMEOUT_S),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings_dir: Path):
    """JupyterLab settings for the test: every cell in the page (no windowing, so every widget is
    in the DOM), no autosave, no news pop-up."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
    }
    for name, value in settings.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of the chapters (so nothing a run writes reaches the repository),
    with links to utils/ and data/: yields (base url, token)."""
    work = tmp_path_factory.mktemp("lab")
    (work / "chapters").mkdir()
    for name in CHAPTERS:
        shutil.copy(ROOT / "chapters" / f"{name}.ipynb", work / "chapters")
    for shared in ("utils", "data"):  # the set-up cell finds utils/ in a parent of the notebook
        if (ROOT / shared).exists():
            (work / shared).symlink_to(ROOT / shared, target_is_directory=True)
    _write_settings(work / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.pop("DIFFUSION_STATIC_WIDGETS", None)  # a reader's JupyterLab: live sliders
    env.update(JUPYTER_CONFIG_DIR=str(work / "config"), JUPYTER_RUNTIME_DIR=str(work / "runtime"))
    log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.user_settings_dir={work / 'settings'}", f"--LabApp.workspaces_dir={work / 'workspaces'}"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(work / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


def _expected_explorers(name: str) -> int:
    """Code cells whose value is a utils.widgets explorer (a line that starts with ``widgets.``)."""
    nb = json.loads((ROOT / "chapters" / f"{name}.ipynb").read_text())
    return sum(1 for c in nb["cells"] if c["cell_type"] == "code"
               and re.search(r"^widgets\.\w+\(", "".join(c["source"]), re.M))


# State of the open notebook: cells still queued or running, code cells run, error outputs.
_STATE_JS = r"""() => {
  const nb = window.__nb, cells = nb.content.widgets;
  let pending = 0, done = 0, code = 0; const errors = [];
  cells.forEach((c, i) => {
    if (c.model.type !== 'code') return;
    code++;
    const prompt = (c.node.querySelector('.jp-InputArea-prompt') || {}).textContent || '';
    if (prompt.includes('*')) pending++;
    if (c.model.executionCount !== null) done++;
    for (const o of c.model.outputs.toJSON())
      if (o.output_type === 'error') errors.push(`cell ${i}, whose source begins\n${c.model.sharedModel.getSource().slice(0, 400)}\n...\nraised ${o.ename}: ${o.evalue}\n${(o.traceback || []).join('\n').replace(/\x1b\[[0-9;]*m/g, '').slice(-2500)}`);
  });
  const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
  return {pending, done, code, errors, status: kernel ? kernel.status : 'none'};
}"""

# Tracebacks rendered anywhere in the page (cells' outputs and widgets' Output areas).
_TRACEBACKS_JS = """() => Array.from(document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
  .map(e => e.textContent).filter(t => /Traceback|Error/.test(t)).map(t => t.slice(-600))"""


def _open_and_run_all(page, url, token, name):
    page.goto(f"{url}/lab/workspaces/{name}?reset&token={token}")  # a fresh workspace: nothing restored
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.started", timeout=120_000)
    page.evaluate("""async (path) => {
      const app = window.jupyterapp;
      await app.restored;
      window.__nb = await app.commands.execute('docmanager:open', {path, factory: 'Notebook', kernel: {name: 'python3'}});
      await window.__nb.context.ready;
      await window.__nb.sessionContext.ready;
    }""", f"chapters/{name}.ipynb")
    page.wait_for_function("() => { const k = window.__nb.sessionContext.session.kernel;"
                           " return k && k.status === 'idle'; }", timeout=120_000)
    page.evaluate("() => { window.jupyterapp.shell.activateById(window.__nb.id);"
                  " window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
    while True:
        state = page.evaluate(_STATE_JS)
        assert not state["errors"], f"{name}: error output in a cell:\n" + "\n\n".join(state["errors"])
        if state["pending"] == 0 and state["done"] == state["code"] and state["status"] == "idle":
            return state
        assert time.monotonic() < deadline, f"{name}: Run All did not finish in {RUN_ALL_TIMEOUT_S} s: {state}"
        time.sleep(1.0)


def _figure_src(explorer) -> str | None:
    img = explorer.locator(".jp-OutputArea-output img")
    return img.first.get_attribute("src") if img.count() else None


def _wait_redraw(page, explorer, before: str | None, what: str) -> float:
    t0 = time.monotonic()
    try:
        page.wait_for_function(
            """([el, before]) => { const i = el.querySelector('.jp-OutputArea-output img');
                                   return !!(i && i.src && i.src !== before) || !!el.querySelector(
                                     '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'); }""",
            arg=[explorer.element_handle(), before], timeout=REDRAW_TIMEOUT_S * 1000)
    except playwright_api.TimeoutError:
        outputs = explorer.locator(".jp-OutputArea-output").all_inner_texts()
        pytest.fail(f"{what}: the figure did not change in {REDRAW_TIMEOUT_S} s; output text: {outputs}")
    errors = explorer.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    assert not errors.count(), f"{what}: error output: {errors.all_inner_texts()}"
    assert _figure_src(explorer) != before, f"{what}: the figure did not change"
    return time.monotonic() - t0


def _value_changed(page, slider, readout: str, timeout_s: float = 10.0) -> bool:
    """Whether the slider's readout leaves ``readout`` within ``timeout_s`` (the drag registered)."""
    try:
        page.wait_for_function("([el, before]) => { const r = el.querySelector('.widget-readout');"
                               " return !!r && r.textContent !== before; }",
                               arg=[slider.element_handle(), readout], timeout=timeout_s * 1000)
        return True
    except playwright_api.TimeoutError:
        return False


def _key_slider(page, slider):
    """Focus the slider's handle and press an arrow key a few times (towards the far side)."""
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    track = slider.locator(".noUi-target").first.bounding_box()
    box = handle.bounding_box()
    key = "ArrowRight" if box["x"] + box["width"] / 2 < track["x"] + track["width"] / 2 else "ArrowLeft"
    handle.focus()
    for _ in range(3):
        page.keyboard.press(key)


def _drag_slider(page, slider):
    """Drag the handle a third of the track towards its far side (as a reader does with the mouse)."""
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    track = slider.locator(".noUi-target").first.bounding_box()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    centre = track["x"] + track["width"] / 2
    target = x + track["width"] / 3 if x < centre else x - track["width"] / 3
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(target, y, steps=8)
    page.mouse.up()


def run_chapter(lab, browser, name):
    """Run All in JupyterLab, then move every slider and dropdown of every explorer."""
    url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    t0 = time.monotonic()
    try:
        _open_and_run_all(page, url, token, name)
        run_s = time.monotonic() - t0
        expected = _expected_explorers(name)
        explorers = page.locator(".widget-interact")
        page.wait_for_function(f"() => document.querySelectorAll('.widget-interact').length >= {expected}",
                               timeout=60_000)
        assert explorers.count() == expected, f"{name}: {explorers.count()} live explorers, expected {expected}"
        redraws = []
        for k in range(expected):
            explorer = explorers.nth(k)
            try:  # the first frame, drawn when the cell ran
                page.wait_for_function("(el) => !!el.querySelector('.jp-OutputArea-output img')",
                                       arg=explorer.element_handle(), timeout=REDRAW_TIMEOUT_S * 1000)
            except playwright_api.TimeoutError:
                pytest.fail(f"{name} explorer {k}: no figure; its HTML: {explorer.inner_html()[:3000]}")
            sliders = explorer.locator(".widget-slider")
            for j in range(sliders.count()):
                slider = sliders.nth(j)
                label = f"{name} explorer {k} slider {slider.locator('label').first.inner_text()!r}"
                readout = slider.locator(".widget-readout").first.inner_text()
                before = _figure_src(explorer)
                for attempt in range(3):  # a move that did not register (the value unchanged) is made again
                    if attempt == 1:  # by the keyboard, as a reader may (and past anything over the handle)
                        _key_slider(page, slider)
                    else:
                        page.keyboard.press("Escape")  # close a stray pop-up first
                        _drag_slider(page, slider)
                    if _value_changed(page, slider, readout):
                        break
                if slider.locator(".widget-readout").first.inner_text() == readout:
                    shot = Path(os.environ.get("TMPDIR", "/tmp")) / f"browser_{name}_{k}_{j}.png"
                    page.screenshot(path=str(shot), full_page=False)
                    dialogs = page.locator(".jp-Dialog").all_inner_texts()
                    pytest.fail(f"{label}: value unchanged after three drags of the handle; dialogs open: {dialogs}; "
                                f"screenshot {shot}")
                redraws.append((label, _wait_redraw(page, explorer, before, label)))
            dropdowns = explorer.locator(".widget-dropdown select")
            for j in range(dropdowns.count()):
                select = dropdowns.nth(j)
                options = select.locator("option")
                current = select.input_value()
                other = next(options.nth(i).get_attribute("value") for i in range(options.count())
                             if options.nth(i).get_attribute("value") != current)
                before = _figure_src(explorer)
                select.select_option(other)
                label = f"{name} explorer {k} dropdown {j} -> {other}"
                redraws.append((label, _wait_redraw(page, explorer, before, label)))
        tracebacks = page.evaluate(_TRACEBACKS_JS)
        assert not tracebacks, f"{name}: error output: {tracebacks}"
        assert not page.evaluate(_STATE_JS)["errors"]
        print(f"\n{name}: run all {run_s:.0f} s; " +
              "; ".join(f"{label}: redraw {s:.1f} s" for label, s in redraws))
    finally:
        try:
            page.evaluate("async () => { if (window.__nb) { await window.__nb.sessionContext.shutdown();"
                          " window.__nb.context.model.dirty = false; window.__nb.close(); } }")
        finally:
            page.close()


def chapter_test(part: int):
    """The test of one half of the chapters (``PARTS[part]``), for a test module to bind."""
    @pytest.mark.parametrize("name", PARTS[part])
    def test_chapter_in_jupyterlab(lab, browser, name):
        run_chapter(lab, browser, name)
    for mark in MARKS:
        test_chapter_in_jupyterlab = mark(test_chapter_in_jupyterlab)
    return test_chapter_in_jupyterlab
