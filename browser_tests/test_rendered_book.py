"""The rendered book as a reader sees it: every chapter page opened in headless Chromium, with the network off.

Run after the book is built (``.ci/run`` does both)::

    jupyter-book build . && pytest browser_tests

For every page in the table of contents that comes from a notebook, the test checks that MathJax (served
by the book itself) typeset the math, that no raw TeX or markdown-table row is left in the prose and
outputs, that every table a chapter prints became an HTML table, that every image loaded, that the
exercise solutions start collapsed, that the Colab button points at the chapter, and that the browser
console has no errors. A screenshot of each page is saved under ``_build/screenshots/`` for a person to
look at. All network access except ``file://`` is blocked, so a page that still needs a CDN fails.

The test needs Chromium and its driver (Debian's ``chromium`` and ``chromium-driver``; ``.ci/run``
installs them when they are missing). Where neither can be found it is skipped with a message saying so.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]

RAW_TEX = [
    (r"\\\[|\\\]", r"display math delimiters \[ \]"),
    (r"\$\$", "$$"),
    (r"\\(frac|operatorname|mathbb|mathcal|nabla|begin\{|end\{|sqrt|mathrm|tfrac|langle|big)\b", "a TeX command"),
    (r"(?<![\w$])\$[^$\n]{1,200}\$(?![\w$])", "inline $...$"),
]
TABLE_ROW = re.compile(r"\|\s*:?-{3,}:?\s*\|")


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def driver():
    found = _chromium()
    if found is None:
        pytest.skip("no Chromium and chromedriver on this machine (apt-get install chromium chromium-driver)")
    if not (HTML / "index.html").exists():
        pytest.fail("the book is not built: run `jupyter-book build .` first")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,2000", "--allow-file-access-from-files",
                # the network is off (every host but this machine resolves to nothing): a CDN dependency shows as an error
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(found[1]), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _load(drv, page: Path) -> None:
    drv.get(page.as_uri())
    # wait for MathJax to finish typesetting (it is loaded with defer)
    drv.set_script_timeout(60)
    drv.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const start = Date.now();
        if (!document.querySelector('script[src*="mathjax"]')) { done(true); return; }
        (function wait() {
          if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
            MathJax.startup.promise.then(() => done(true), () => done(false));
          } else if (Date.now() - start > 30000) { done(false); } else { setTimeout(wait, 100); }
        })();"""
    )


def _visible_text(drv) -> str:
    """The text a reader sees in the article, without code-cell inputs and without typeset math."""
    return drv.execute_script(
        """const main = document.querySelector('main article') || document.querySelector('main') || document.body;
        const copy = main.cloneNode(true);
        copy.querySelectorAll('.cell_input, mjx-container, script, style, .MathJax').forEach(e => e.remove());
        return copy.innerText;"""
    )


def _open(drv, page: Path, shot: str) -> None:
    """Load a built page (waiting for MathJax) and save its screenshot as ``_build/screenshots/SHOT.png``."""
    assert page.exists(), f"{page} was not built (is it in _toc.yml?)"
    _load(drv, page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(SHOTS / f"{shot}.png"))


def _page_problems(drv) -> list[str]:
    """What every page must avoid: raw TeX or markdown-table rows in the visible text, images that did not
    load, errors in the browser console."""
    text = _visible_text(drv)
    problems = []
    for pattern, what in RAW_TEX:
        hits = [m.group(0) for m in re.finditer(pattern, text)]
        if hits:
            problems.append(f"raw TeX left in the page ({what}): {hits[:3]}")
    if TABLE_ROW.search(text):
        problems.append("a markdown table row (| --- |) is left as text")
    broken = drv.execute_script(
        """return Array.from(document.querySelectorAll('main img'))
             .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));"""
    )
    if broken:
        problems.append(f"images that did not load: {broken[:5]}")
    console = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
    if console:
        problems.append(f"console errors: {[e['message'][:200] for e in console[:3]]}")
    return problems


def _n_math(drv) -> int:
    return drv.execute_script("return document.querySelectorAll('mjx-container').length")


def _printed_tables(path: Path) -> int:
    nb = json.loads(path.read_text())
    n = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = "".join(out.get("data", {}).get("text/markdown", ""))
            n += len(re.findall(r"^\|.*\|\s*\n\|\s*:?-{3,}", text, flags=re.M))
    return n


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_page_renders(driver, notebook):
    _open(driver, HTML / "notebooks" / f"{notebook.stem}.html", notebook.stem)
    problems = _page_problems(driver)
    if _n_math(driver) == 0:
        problems.append("MathJax rendered no math (no mjx-container)")
    errors = driver.execute_script("return document.querySelectorAll('mjx-merror, .mjx-merror').length")
    if errors:
        problems.append(f"{errors} formulas failed to typeset (mjx-merror)")

    want = _printed_tables(notebook)
    got = driver.execute_script("return document.querySelectorAll('.cell_output table').length")
    if got < want:
        problems.append(f"the chapter prints {want} tables but {got} render as HTML tables")
    n_images = driver.execute_script("return document.querySelectorAll('.cell_output img').length")
    if n_images == 0:
        problems.append("no output figure on the page")

    open_solutions = driver.execute_script(
        """return Array.from(document.querySelectorAll('.solution')).filter(s => {
             const body = Array.from(s.children).filter(c => !c.classList.contains('admonition-title'));
             return body.some(c => c.offsetHeight > 0);
           }).map(s => s.id);"""
    )
    if open_solutions:
        problems.append(f"exercise solutions shown open: {open_solutions}")

    colab = driver.execute_script(
        "return Array.from(document.querySelectorAll('a')).map(a => a.href).filter(h => h.includes('colab'));"
    )
    expected = (
        f"https://colab.research.google.com/github/{REPOSITORY.removeprefix('https://github.com/')}"
        f"/blob/main/notebooks/{notebook.name}"
    )
    if expected not in colab:
        problems.append(f"no Colab link {expected} (found {colab})")

    assert not problems, f"{notebook.stem}:\n  " + "\n  ".join(problems)


def test_the_landing_page_renders(driver):
    _open(driver, HTML / "index.html", "index")
    problems = _page_problems(driver)
    assert not problems, "index:\n  " + "\n  ".join(problems)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_starts_with_the_widget_manager(tmp_path):
    """`jupyter lab` from the pinned environment serves the notebooks, with the ipywidgets extension on."""
    ext = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True,
                         timeout=120)
    listing = ext.stdout + ext.stderr
    assert "@jupyter-widgets/jupyterlab-manager" in listing and "enabled" in listing, listing
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={ROOT}",
         "--ServerApp.disable_check_xsrf=True"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline, status, body = time.time() + 90, None, ""
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/notebooks", timeout=5) as r:
                    status, body = r.status, r.read().decode()
                break
            except OSError:
                time.sleep(1)
        assert status == 200, "jupyter lab did not answer within 90 s"
        names = {item["name"] for item in json.loads(body)["content"]}
        assert {p.name for p in NOTEBOOKS} <= names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=10) as r:
            assert r.status == 200 and "JupyterLab" in r.read().decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


PAGES = ["paper_notes", "performance", "how_to_run", "execution_stats"]


@pytest.mark.parametrize("name", PAGES)
def test_prose_page_renders(driver, name):
    """The reference pages: math typeset, no raw TeX or markdown-table rows, images loaded, no console errors."""
    _open(driver, HTML / "book" / f"{name}.html", f"book_{name}")
    problems = _page_problems(driver)
    source = (ROOT / "book" / f"{name}.md").read_text()
    if re.search(r"\$[^$\n]*\\[a-zA-Z]", source) and _n_math(driver) == 0:
        problems.append("the page has math but MathJax rendered none")
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


WIDGET_CHAPTERS = sorted(p for p in NOTEBOOKS
                         if re.search(r"Dropdown|IntSlider|FloatSlider|interact", p.read_text()))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server (quick profile) over a copy of the notebooks, so that autosave cannot touch them."""
    root = tmp_path_factory.mktemp("lab")
    for p in WIDGET_CHAPTERS:
        shutil.copy(p, root / p.name)
    port = _free_port()
    env = dict(__import__("os").environ, MVL_PROFILE="quick")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api", timeout=3)
            break
        except OSError:
            time.sleep(1)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _shutdown_kernels(base: str) -> None:
    with urllib.request.urlopen(f"{base}/api/kernels", timeout=10) as r:
        kernels = json.loads(r.read().decode())
    for k in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels/{k['id']}", method="DELETE"), timeout=10)


_KERNEL_IDLE_JS = """
try {
  const s = window.jupyterapp.shell.currentWidget.sessionContext.session;
  return !!(s && s.kernel && s.kernel.connectionStatus === 'connected' && s.kernel.status === 'idle');
} catch (e) { return false; }
"""
_RUN_ALL_JS = "window.jupyterapp.commands.execute('notebook:run-all-cells')"
_ANY_CELL_RAN_JS = ("return Array.from(document.querySelectorAll('.jp-InputPrompt'))"
                    ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")


@pytest.mark.parametrize("notebook", WIDGET_CHAPTERS, ids=[p.stem for p in WIDGET_CHAPTERS])
def test_widgets_render_in_jupyterlab(driver, lab, notebook):
    """Run the chapter in JupyterLab (quick profile): its interactive explorer renders as live widgets."""
    driver.get(f"{lab}/lab/tree/{notebook.name}")
    deadline = time.time() + 60
    while time.time() < deadline and not driver.execute_script(
            "return !!(window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell'))"):
        time.sleep(1)
    # wait until this notebook's kernel is connected and idle: a run-all sent earlier can be dropped (seen on a
    # loaded 2-core machine, where no cell ever started)
    deadline = time.time() + 120
    while time.time() < deadline and not driver.execute_script(_KERNEL_IDLE_JS):
        time.sleep(1)
    driver.execute_script(_RUN_ALL_JS)
    found, deadline, started, resent = 0, time.time() + 300, time.time(), False
    while time.time() < deadline:
        found = driver.execute_script(
            "return document.querySelectorAll('.jp-OutputArea .widget-slider, .jp-OutputArea .widget-dropdown, "
            ".jp-OutputArea .widget-image, .jp-OutputArea .widget-toggle-buttons').length")
        if found:
            break
        if not resent and time.time() - started > 60 and not driver.execute_script(_ANY_CELL_RAN_JS):
            driver.execute_script(_RUN_ALL_JS)  # nothing started within a minute: the request was lost, send it again
            resent = True
        time.sleep(2)
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"jupyterlab_{notebook.stem}.png"))
    _shutdown_kernels(lab)
    assert found, f"{notebook.name}: no interactive widget rendered in JupyterLab within 300 s"
