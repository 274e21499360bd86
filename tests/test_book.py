"""Consistency of the book: configuration, table of contents, notebooks' conventions, citations."""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

import mvl
from mvl.book import write_stats_page

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if not p.name.startswith("."))  # not a run in progress
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def toc_files(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node["file"]
        for v in node.values():
            yield from toc_files(v)
    elif isinstance(node, list):
        for v in node:
            yield from toc_files(v)


def load(path):
    return json.loads(path.read_text())


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell):
    return "".join(cell["source"])


def test_there_are_notebooks():
    assert NOTEBOOKS, "no chapter notebooks found"


def test_config_essentials():
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    assert CONFIG["only_build_toc_files"] is True
    for pattern in (".venv", "_build", "tests"):
        assert pattern in CONFIG["exclude_patterns"]
    assert {"sphinx_proof", "sphinx_exercise"} <= set(CONFIG["sphinx"]["extra_extensions"])
    assert {"amsmath", "dollarmath"} <= set(CONFIG["parse"]["myst_enable_extensions"])
    assert CONFIG["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")


def test_repository_url_is_consistent():
    url = CONFIG["repository"]["url"]
    assert url == mvl.REPOSITORY_URL
    for path in NOTEBOOKS:
        setup = source(code_cells(load(path))[0])
        assert "import mvl" in setup, f"{path.name}: the first code cell must import mvl"
        urls = re.findall(r"https?://[^\s\"'@]+", setup)
        assert urls, f"{path.name}: the setup cell must pip-install mvl from the repository when it is missing"
        for u in urls:
            assert u.rstrip("/").removesuffix(".git") == url, f"{path.name}: setup cell uses {u}, _config.yml {url}"


def test_toc_lists_every_notebook_and_only_existing_files():
    files = list(toc_files(TOC))
    for f in files:
        assert any((ROOT / (f + ext)).exists() for ext in ("", ".md", ".ipynb")), f"_toc.yml names missing {f}"
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in files, f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_conventions(path):
    nb = load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = code_cells(nb)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    params = source(cells[tagged[0]])
    for line in ('profile = "book"', 'device = "auto"', "seed = 0"):
        assert line in params, f"{path.name}: the parameters cell must contain {line!r}"
    # every other knob is None in the cell, so that its profile's default applies (a literal value would
    # override it in every profile, e.g. retrain = False in the paper profile, which should train)
    literal = [t.targets[0].id for t in ast.parse(params).body if isinstance(t, ast.Assign)
               and t.targets[0].id not in ("profile", "device", "seed")
               and not (isinstance(t.value, ast.Constant) and t.value.value is None)]
    assert not literal, f"{path.name}: parameters {literal} must default to None (their profile's value applies)"
    assert "injected-parameters" not in json.dumps(nb), f"{path.name}: stored notebook has papermill-injected parameters"
    after = source(cells[tagged[0] + 1])
    assert "mvl.setup(" in after, f"{path.name}: the cell after the parameters cell must call mvl.setup(...)"
    assert any("assert " in source(c) for c in cells), f"{path.name}: no assert cell checks the chapter's claims"
    outputs = [c for c in cells if c.get("outputs")]
    assert len(outputs) >= len(cells) // 2, f"{path.name}: stored outputs are missing (run python -m mvl.book run)"
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored outputs contain errors"
    first_output = "".join(
        "".join(o.get("text", "")) for c in cells[tagged[0] + 1 : tagged[0] + 2] for o in c.get("outputs", [])
    )
    assert "profile: book" in first_output, f"{path.name}: stored outputs must come from the book profile"


def test_every_citation_is_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    texts = [p.read_text() for p in (ROOT / "book").glob("*.md")] + [p.read_text() for p in NOTEBOOKS]
    cited = set()
    for t in texts:
        for group in re.findall(r"\{cite[a-z:]*\}`([^`]+)`", t):
            cited.update(k.strip() for k in group.split(","))
    missing = cited - keys
    assert not missing, f"cited but not in references.bib: {sorted(missing)}"


def test_stats_page(tmp_path):
    out = tmp_path / "stats.md"
    write_stats_page(
        {"a|book": {"notebook": "a.ipynb", "profile": "book", "device": "cpu (1 threads)", "torch": "2", "wall_seconds": 75.0, "date": "2026-01-01"}},
        out,
    )
    text = out.read_text()
    assert "| `a.ipynb` | book | 1 min 15 s | cpu (1 threads) |" in text


def _tiny_notebook(path, cells):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path.read_bytes()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_an_interrupted_refresh_leaves_the_notebook_intact(tmp_path, sig):
    """Killed midway, `python -m mvl.book run` leaves the notebook byte-identical (issue: refreshes must never
    destroy stored outputs); a polite kill also keeps the partial run as NAME.failed.ipynb."""
    import signal
    import subprocess
    import sys
    import time

    nb = tmp_path / "chapter.ipynb"
    before = _tiny_notebook(nb, ["print('first cell done')", "import time\ntime.sleep(120)", "print('never')"])
    proc = subprocess.Popen([sys.executable, "-m", "mvl.book", "run", "--no-stats", str(nb)], cwd=ROOT)
    deadline = time.time() + 90
    running = []
    while time.time() < deadline:  # wait until papermill has written the first cell's output to its copy
        running = list(tmp_path.glob(".chapter.*.running.ipynb"))
        if running and "first cell done" in running[0].read_text(errors="ignore"):
            break
        time.sleep(0.3)
    assert running, "the run never started writing its temporary copy"
    assert nb.read_bytes() == before, "the notebook changed while it was running"
    proc.send_signal(getattr(signal, sig))
    rc = proc.wait(timeout=60)
    assert rc != 0
    assert nb.read_bytes() == before, f"after {sig} the notebook is not byte-identical"
    failed = tmp_path / "chapter.failed.ipynb"
    if sig == "SIGTERM":
        assert failed.exists() and "first cell done" in failed.read_text()
        assert not list(tmp_path.glob(".chapter.*.running.ipynb"))


def test_a_finished_refresh_replaces_the_notebook(tmp_path):
    from mvl.book import run_notebook

    nb = tmp_path / "chapter.ipynb"
    _tiny_notebook(nb, ["print(6 * 7)"])
    (tmp_path / "chapter.failed.ipynb").write_text("{}")  # a stale failed copy is removed by a good run
    nb.chmod(0o644)
    rec = run_notebook(nb, timeout=120)
    assert "42" in nb.read_text() and rec["notebook"] == "chapter.ipynb"
    assert nb.stat().st_mode & 0o777 == 0o644, "the refreshed notebook must keep its permissions"
    assert not (tmp_path / "chapter.failed.ipynb").exists()
    assert not list(tmp_path.glob(".chapter.*.running.ipynb"))


def test_a_failing_cell_keeps_the_notebook_and_the_failed_copy(tmp_path):
    from mvl.book import run_notebook

    nb = tmp_path / "chapter.ipynb"
    before = _tiny_notebook(nb, ["print('ok')", "raise RuntimeError('boom')"])
    with pytest.raises(Exception, match="boom"):
        run_notebook(nb, timeout=120)
    assert nb.read_bytes() == before
    assert "boom" in (tmp_path / "chapter.failed.ipynb").read_text()


def test_progress_bars_are_stored_as_their_final_text():
    from mvl.book import INTERACTIVE_TEXT, freeze_widget_outputs

    view = "application/vnd.jupyter.widget-view+json"
    state = {
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
        "l": {"model_name": "HTMLModel", "state": {"value": "fit:\u2007\u200799%"}},
        "p": {"model_name": "FloatProgressModel", "state": {"value": 300.0, "max": 300.0}},
        "r": {"model_name": "HTMLModel", "state": {"value": "\u2007296/300\u2007[00:06&lt;00:00,\u200741.47it/s]"}},
        "box": {"model_name": "VBoxModel", "state": {"children": []}},
    }
    nb = {
        "metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": state}}},
        "cells": [{"cell_type": "code", "outputs": [
            {"output_type": "display_data", "data": {view: {"model_id": "bar"}, "text/plain": ["fit:   0%|"]}},
            {"output_type": "display_data", "data": {view: {"model_id": "box"}, "text/plain": ["VBox(...)"]}},
        ]}],
    }
    assert freeze_widget_outputs(nb) == 2
    bar, box = (o["data"]["text/plain"] for o in nb["cells"][0]["outputs"])
    assert bar == "fit: 100%|██████████| 300/300 [00:06<00:00, 41.47it/s]"
    assert box == INTERACTIVE_TEXT


def test_stored_widget_outputs_are_frozen():
    """Every stored widget output has the text the book renders (run through mvl.book, not by hand)."""
    view = "application/vnd.jupyter.widget-view+json"
    for path in NOTEBOOKS:
        for cell in code_cells(load(path)):
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if view in data:
                    text = "".join(data.get("text/plain", ""))
                    assert re.search(r"\d+%\|", text) or "interactive widget" in text, f"{path.name}: unfrozen widget output {text!r}"
