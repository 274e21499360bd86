"""Execute the chapter notebooks in place and record how long each took, and where.

Usage (from the repository root)::

    python -m mvl.book run                       # every notebook, book profile (what the book shows)
    python -m mvl.book run --profile paper notebooks/04_infinite_variance.ipynb
    python -m mvl.book stats                     # rewrite book/execution_stats.md from the JSON record

Notebooks are executed through papermill. With the default profile (``book``) no cell is injected, so the
stored notebook stays exactly what a reader opens; another profile is passed as a papermill parameter.
Each run's wall time, profile and device are merged into ``book/execution_stats.json``, from which the
book's "Execution statistics" page (``book/execution_stats.md``) is generated.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .profiles import PROFILE_ENV, PROFILES, RECORD_ENV

ROOT = Path(__file__).resolve().parent.parent
STATS_JSON = ROOT / "book" / "execution_stats.json"
STATS_MD = ROOT / "book" / "execution_stats.md"
DEFAULT_PROFILE = "book"


def _strip_cell_metadata(path: Path) -> None:
    """Drop papermill's per-cell bookkeeping (timestamps) so that re-runs give small diffs."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def run_notebook(path: Path, profile: str = DEFAULT_PROFILE, kernel: str = "python3", timeout: int | None = None) -> dict:
    """Execute one notebook in place with papermill and return its statistics record."""
    import papermill as pm

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {PROFILES}")
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}")
    params = {} if profile == DEFAULT_PROFILE else {"profile": profile}
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.json"
        saved = {k: os.environ.get(k) for k in (PROFILE_ENV, RECORD_ENV)}
        os.environ.pop(PROFILE_ENV, None)
        os.environ[RECORD_ENV] = str(record)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(path),
                str(path),
                parameters=params,
                kernel_name=kernel,
                cwd=str(path.parent),
                progress_bar=False,
                execution_timeout=timeout,
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        wall = time.perf_counter() - start
        info = json.loads(record.read_text()) if record.exists() else {}
    _strip_cell_metadata(path)
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
    sub.add_parser("stats", help="rewrite the statistics page from book/execution_stats.json")
    args = parser.parse_args(argv)

    stats = load_stats()
    if args.command == "run":
        paths = [Path(p) for p in args.notebooks] or [Path(p) for p in sorted(glob.glob(str(ROOT / "notebooks" / "*.ipynb")))]
        if not paths:
            parser.error("no notebooks found")
        for p in paths:
            print(f"running {p} ({args.profile}) ...", flush=True)
            rec = run_notebook(p, args.profile, args.kernel, args.timeout)
            print(f"  {rec['wall_seconds']:.0f} s on {rec['device']}", flush=True)
            stats[f"{rec['notebook']}|{rec['profile']}"] = rec
            STATS_JSON.write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
            write_stats_page(stats)
    else:
        write_stats_page(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
