"""Execute the chapter notebooks and record how long each took, and where.

Usage (from the repository root)::

    python -m mvl.book run                       # every notebook, book profile (what the book shows)
    python -m mvl.book run --profile paper notebooks/04_infinite_variance.ipynb
    python -m mvl.book stats                     # rewrite book/execution_stats.md from the JSON record

Notebooks are executed through papermill. With the default profile (``book``) no cell is injected, so the
stored notebook stays exactly what a reader opens; another profile is passed as a papermill parameter.
A run never damages the stored notebook: it executes into a temporary copy beside it, and only a run that
finishes replaces the notebook (atomically). A failed or interrupted run leaves the notebook byte for byte
as it was and keeps what it produced as ``NAME.failed.ipynb`` (ignored by git, the book and the tests).

Progress bars and other widgets are stored for readers without a kernel: each widget output's plain-text
form is rewritten from the saved widget state (a finished ``tqdm`` bar reads ``100%|██████████| 2000/2000``,
not the ``0%`` it showed when the cell started), and the book renders that text instead of loading the
widget JavaScript from a CDN.
Each run's wall time, profile and device are merged into ``book/execution_stats.json``, from which the
book's "Execution statistics" page (``book/execution_stats.md``) is generated.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import html
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from .profiles import PROFILE_ENV, PROFILES, RECORD_ENV

ROOT = Path(__file__).resolve().parent.parent
STATS_JSON = ROOT / "book" / "execution_stats.json"
STATS_MD = ROOT / "book" / "execution_stats.md"
DEFAULT_PROFILE = "book"


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
INTERACTIVE_TEXT = "[interactive widget: it works when the notebook runs in JupyterLab or Colab]"


def _progress_text(state: dict, model: dict) -> str | None:
    """The text of a finished ``tqdm`` bar (an HBox of HTML, FloatProgress, HTML), or None for other widgets."""
    children = [state.get(str(c).removeprefix("IPY_MODEL_"), {}) for c in model.get("state", {}).get("children", [])]
    if [c.get("model_name") for c in children] != ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
        return None
    left, bar, right = (c.get("state", {}) for c in children)
    value, total = float(bar.get("value", 0.0)), float(bar.get("max", 0.0))
    frac = value / total if total > 0 else 0.0
    label = html.unescape(left.get("value", "")).replace("\u2007", " ")
    label = re.sub(r"\s*\d+%\s*$", "", label)
    tail = html.unescape(right.get("value", "")).replace("\u2007", " ")
    tail = re.sub(r"\d+/\d+", f"{value:.0f}/{total:.0f}", tail, count=1)
    filled = int(round(10 * frac))
    return f"{label} {100 * frac:3.0f}%|{'█' * filled}{' ' * (10 - filled)}|{tail}".strip()


def freeze_widget_outputs(nb: dict) -> int:
    """Rewrite the ``text/plain`` form of every widget output from the saved widget state (in place).

    Returns the number of outputs rewritten. Progress bars get their final text; interactive widgets a
    line saying that they run in a live notebook. The widget views and state stay, for JupyterLab.
    """
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    n = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                continue
            model = state.get(view.get("model_id"), {})
            text = _progress_text(state, model) if model.get("model_name") == "HBoxModel" else None
            out["data"]["text/plain"] = text if text is not None else INTERACTIVE_TEXT
            n += 1
    return n


def _tidy(path: Path) -> None:
    """Drop papermill's per-cell bookkeeping (timestamps), so that re-runs give small diffs, and freeze the
    widget outputs (:func:`freeze_widget_outputs`)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    freeze_widget_outputs(nb)
    nbformat.write(nb, path)


def failed_copy(path: Path) -> Path:
    """Where a failed run of ``path`` leaves its partial output: ``NAME.failed.ipynb`` beside it."""
    return path.with_name(path.stem + ".failed.ipynb")


def run_notebook(path: Path, profile: str = DEFAULT_PROFILE, kernel: str = "python3", timeout: int | None = None) -> dict:
    """Execute one notebook with papermill, replace it by the executed copy if the run finished, and return
    its statistics record.

    The run writes into a hidden temporary file beside the notebook; ``path`` itself is only touched by the
    final atomic ``os.replace``. On any failure — an error in a cell, a timeout, Ctrl-C — the partial output
    is moved to :func:`failed_copy` and the exception propagates, naming that file.
    """
    import papermill as pm

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {PROFILES}")
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}")
    if path.name.endswith(".failed.ipynb"):
        raise ValueError(f"{path.name} is the output of a failed run; run the notebook it came from instead")
    params = {} if profile == DEFAULT_PROFILE else {"profile": profile}
    mode = path.stat().st_mode & 0o777
    fd, running = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".running.ipynb")
    os.close(fd)
    running = Path(running)
    os.chmod(running, mode)  # mkstemp makes the file private (0600); keep the notebook's own permissions
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.json"
        saved = {k: os.environ.get(k) for k in (PROFILE_ENV, RECORD_ENV)}
        os.environ.pop(PROFILE_ENV, None)
        os.environ[RECORD_ENV] = str(record)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(path),
                str(running),
                parameters=params,
                kernel_name=kernel,
                cwd=str(path.parent),
                progress_bar=False,
                execution_timeout=timeout,
            )
        except BaseException as exc:
            failed = failed_copy(path)
            if running.exists() and running.stat().st_size > 0:
                os.replace(running, failed)
                where = f"its partial output is in {failed}"
            else:
                running.unlink(missing_ok=True)
                where = "it produced no output"
            print(f"{path.name}: the run failed ({type(exc).__name__}); the notebook is unchanged, {where}",
                  file=sys.stderr, flush=True)
            raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        wall = time.perf_counter() - start
        info = json.loads(record.read_text()) if record.exists() else {}
    _tidy(running)
    os.replace(running, path)
    failed_copy(path).unlink(missing_ok=True)
    return {
        "notebook": path.name,
        "profile": info.get("profile", profile),
        "device": info.get("device", "unknown (mvl.setup was not called)"),
        "torch": info.get("torch", ""),
        "wall_seconds": round(wall, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
    }


def load_stats(path: Path = STATS_JSON) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_stats_page(stats: dict, path: Path = STATS_MD) -> None:
    """Write the "Execution statistics" page: one row per notebook and profile."""
    lines = [
        "# Execution statistics",
        "",
        "The outputs stored in each chapter come from a real run of the notebook. This table is written by",
        "`python -m mvl.book run`: for each notebook and profile, the most recent run's wall time (the whole",
        "notebook, kernel start included), the device it ran on and the PyTorch version. The book shows the",
        "`book` profile; `paper` rows appear only where that profile was run.",
        "",
        "| notebook | profile | wall time | device | torch | date |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for key in sorted(stats):
        r = stats[key]
        minutes, seconds = divmod(r["wall_seconds"], 60)
        lines.append(
            f"| `{r['notebook']}` | {r['profile']} | {int(minutes)} min {seconds:.0f} s | {r['device']} "
            f"| {r['torch']} | {r['date']} |"
        )
    if not stats:
        lines.append("| (no notebook has been executed yet) | | | | | |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvl.book", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks in place and record their statistics")
    run.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/*.ipynb)")
    run.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES)
    run.add_argument("--kernel", default="python3")
    run.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds (default 1800)")
    run.add_argument("--no-stats", action="store_true", help="do not record the run on the statistics page")
    sub.add_parser("stats", help="rewrite the statistics page from book/execution_stats.json")
    args = parser.parse_args(argv)

    def _interrupt(signum, frame):  # a polite kill (SIGTERM) is handled like Ctrl-C: the failed copy is kept
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)
    stats = load_stats()
    if args.command == "run":
        paths = [Path(p) for p in args.notebooks] or [Path(p) for p in sorted(glob.glob(str(ROOT / "notebooks" / "*.ipynb")))]
        if not paths:
            parser.error("no notebooks found")
        for p in paths:
            print(f"running {p} ({args.profile}) ...", flush=True)
            rec = run_notebook(p, args.profile, args.kernel, args.timeout)
            print(f"  {rec['wall_seconds']:.0f} s on {rec['device']}", flush=True)
            if args.no_stats:
                continue
            stats = load_stats()  # re-read: another runner may have recorded a notebook meanwhile
            stats[f"{rec['notebook']}|{rec['profile']}"] = rec
            STATS_JSON.write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
            write_stats_page(stats)
    else:
        write_stats_page(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
