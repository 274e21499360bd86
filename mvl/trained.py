"""Committed trained models: publishing them with provenance, and loading them checksum-verified.

The repository's ``trained/`` folder holds, for each recipe that has been trained (:mod:`mvl.ae.recipes`),
its final weights (a float32 ``state_dict``, nothing else) and its run record, and
``trained/MANIFEST.json`` lists them::

    {"ch7-standard": {"file": "ch7-standard.pt", "sha256": ..., "bytes": ..., "recipe": "ch7-standard",
                      "recipe_version": 1, "epochs": ..., "wall_s": ..., "device": ..., "commit": ...,
                      "metrics": {...}, "record": "ch7-standard.json"}, ...}

:func:`load_state_dict` verifies the recipe version and the SHA-256 of the file before loading; a
mismatch raises an error naming the file and the command that rebuilds it. Where the repository is not
there (on Colab only the notebook and the pip-installed ``mvl`` are), the manifest and the weights are
downloaded from the repository's raw files (:func:`raw_base_url`, derived from the one repository
setting, ``mvl.REPOSITORY_URL``) into the cache, and verified the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
TRAINED_DIR = ROOT / "trained"
MANIFEST_NAME = "MANIFEST.json"
URL_ENV = "MVL_TRAINED_URL"
"""If set, the base URL that trained models are downloaded from (e.g. ``file:///path/to/trained/``)."""
MAX_TOTAL_BYTES = 60 * 1024 * 1024
"""The committed weights stay below 60 MB (MiB) in total."""
REPLICATES_DIR = "replicates"
"""Subfolder of ``trained/`` with the run records of seed replicates whose weights are not kept."""


def rebuild_command(name: str) -> str:
    return f"python -m mvl.train {name} --resume"


def raw_base_url() -> str:
    """Where the committed ``trained/`` folder is served: ``$MVL_TRAINED_URL``, else the raw files of the
    repository's main branch."""
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV].rstrip("/") + "/"
    from . import REPOSITORY_URL

    owner_repo = REPOSITORY_URL.rstrip("/").removeprefix("https://github.com/")
    return f"https://raw.githubusercontent.com/{owner_repo}/main/trained/"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a run record as sorted, indented JSON, atomically."""
    _write_atomic(path, lambda p: p.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n"))


def read_manifest(folder: Path | None = None) -> dict[str, Any]:
    folder = TRAINED_DIR if folder is None else Path(folder)
    path = folder / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def publish(name: str, state_dict: dict[str, torch.Tensor], record: dict[str, Any], folder: Path | None = None) -> dict:
    """Write ``NAME.pt`` (float32 weights only), ``NAME.json`` (the run record) and the manifest entry."""
    folder = TRAINED_DIR if folder is None else Path(folder)
    weights = {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()) for k, v in state_dict.items()}
    pt, js = folder / f"{name}.pt", folder / f"{name}.json"
    _write_atomic(pt, lambda p: torch.save(weights, p))
    _write_record(js, record)
    manifest = read_manifest(folder)
    manifest[name] = {
        "file": pt.name, "sha256": sha256(pt), "bytes": pt.stat().st_size, "record": js.name,
        "recipe": record["recipe"], "recipe_version": record["recipe_version"], "epochs": record["epochs"],
        "finished": record["finished"], "wall_s": record["wall_s"], "device": record["device"],
        "commit": record["commit"],
        "metrics": {k: v for k, v in record["metrics"].items() if not k.startswith("per_image")},  # per-image values stay in the record
    }
    total = sum(e["bytes"] for e in manifest.values())
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"trained/ would hold {total / 2**20:.1f} MB, over the {MAX_TOTAL_BYTES / 2**20:.0f} MB limit")
    _write_atomic(folder / MANIFEST_NAME, lambda p: p.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n"))
    return manifest[name]


def update_record(name: str, record: dict[str, Any], folder: Path | None = None) -> Path:
    """Rewrite the run record ``NAME.json`` of a published model (e.g. with per-image values added by a
    re-evaluation, :func:`mvl.train.reevaluate`); its weights and manifest entry stay as they are."""
    folder = TRAINED_DIR if folder is None else Path(folder)
    manifest = read_manifest(folder)
    if name not in manifest:
        raise KeyError(f"no published model {name!r} in {folder}; publish it first ({rebuild_command(name)})")
    if record.get("recipe") != name:
        raise ValueError(f"the record is of recipe {record.get('recipe')!r}, not {name!r}")
    path = folder / manifest[name]["record"]
    _write_record(path, record)
    return path


def publish_record(name: str, record: dict[str, Any], folder: Path | None = None) -> Path:
    """Write only the run record, ``replicates/NAME.json``: a seed replicate whose weights are not kept (the
    folder's size limit), with its metrics, learning curve and provenance. Rebuild its weights with
    ``python -m mvl.train NAME`` (the record's fingerprint says with which settings)."""
    folder = TRAINED_DIR if folder is None else Path(folder)
    path = folder / REPLICATES_DIR / f"{name}.json"
    _write_record(path, record)
    return path


def retire(name: str, folder: Path | None = None) -> Path:
    """Drop the weights of the published model ``name`` and keep its run record as a replicate's,
    ``replicates/NAME.json`` (its manifest entry goes): to make room under the size limit when a model is
    superseded (chapter 10's 20 000-update models, whose records its seed study still reads)."""
    folder = TRAINED_DIR if folder is None else Path(folder)
    manifest = read_manifest(folder)
    if name not in manifest:
        raise KeyError(f"no published model {name!r} in {folder} to retire")
    entry = manifest.pop(name)
    record = json.loads((folder / entry["record"]).read_text())
    path = publish_record(name, record, folder)
    _write_atomic(folder / MANIFEST_NAME, lambda p: p.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n"))
    for file in (entry["file"], entry["record"]):
        (folder / file).unlink()
    return path


def adopt(name: str, source: Path, folder: Path | None = None) -> dict:
    """Publish into ``folder`` (default ``trained/``) the model ``name`` that a run published into ``source``
    (``python -m mvl.train NAME --out SOURCE``), after verifying its checksum there."""
    source = Path(source)
    manifest = read_manifest(source)
    if name not in manifest:
        raise KeyError(f"no published model {name!r} in {source}; publish it there first "
                       f"(python -m mvl.train {name} --out {source})")
    state_dict, entry = load_state_dict(name, manifest[name]["recipe_version"], folder=source)
    return publish(name, state_dict, json.loads((source / entry["record"]).read_text()), folder)


def load_record(name: str, recipe_version: int, fingerprint: str, folder: Path | None = None,
                cache: Path | None = None) -> dict[str, Any]:
    """The run record of a seed replicate (:func:`publish_record`), after checking that it was made by this
    version and these settings of recipe ``name``; ``KeyError`` if there is none, ``ValueError`` if stale."""
    folder = TRAINED_DIR if folder is None else Path(folder)
    path = folder / REPLICATES_DIR / f"{name}.json"
    if not path.exists() and folder == TRAINED_DIR and not (TRAINED_DIR / MANIFEST_NAME).exists():
        from .ae.mnist import data_dir  # no repository here (Colab): the raw file, into the cache

        path = (Path(cache) if cache is not None else data_dir() / "trained") / REPLICATES_DIR / f"{name}.json"
        if not path.exists():
            _download(raw_base_url() + f"{REPLICATES_DIR}/{name}.json", path)
    if not path.exists():
        raise KeyError(f"no run record for the replicate {name!r} in {path.parent}; train it with: "
                       f"python -m mvl.train {name} --record-only")
    record = json.loads(path.read_text())
    found = (record.get("recipe"), record.get("recipe_version"), record.get("fingerprint"))
    if found != (name, recipe_version, fingerprint):
        raise ValueError(f"{path} was made by recipe {found[0]!r} version {found[1]} (settings {found[2]}), not by "
                         f"{name!r} version {recipe_version} (settings {fingerprint}): the record is stale; rebuild it "
                         f"with python -m mvl.train {name} --record-only")
    return record


def _download(url: str, path: Path, timeout: float = 60.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as err:
        raise FileNotFoundError(f"could not download {url} ({err}); without network access, clone the repository "
                                f"(its trained/ folder) or train the model yourself") from err
    _write_atomic(path, lambda p: p.write_bytes(data))


def _locate(folder: Path | None, cache: Path | None) -> tuple[Path, dict[str, Any]]:
    """The folder holding the manifest: ``folder``, else the repository's ``trained/``, else a download."""
    for candidate in ([Path(folder)] if folder is not None else [TRAINED_DIR]):
        if (candidate / MANIFEST_NAME).exists():
            return candidate, read_manifest(candidate)
    if folder is not None:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder}")
    from .ae.mnist import data_dir

    cache = Path(cache) if cache is not None else data_dir() / "trained"
    _download(raw_base_url() + MANIFEST_NAME, cache / MANIFEST_NAME)
    return cache, read_manifest(cache)


def load_state_dict(name: str, recipe_version: int, folder: Path | None = None, cache: Path | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The committed weights of recipe ``name`` and their manifest entry, after checking both.

    Raises ``KeyError`` if the recipe was never published, ``ValueError`` if the committed model was made
    by another recipe version or its file does not match the manifest's SHA-256 (a corrupted or stale
    file); each message names the file and the command that rebuilds it.
    """
    where, manifest = _locate(folder, cache)
    if name not in manifest:
        raise KeyError(f"no committed model for recipe {name!r} (committed: {sorted(manifest) or 'none'}); "
                       f"train it with: {rebuild_command(name)}")
    entry = manifest[name]
    path = where / entry["file"]
    if entry["recipe_version"] != recipe_version:
        raise ValueError(f"{path} was trained by version {entry['recipe_version']} of recipe {name!r}, the library "
                         f"has version {recipe_version}: the weights are stale; rebuild them with {rebuild_command(name)}")
    if not path.exists():
        _download(raw_base_url() + entry["file"], path)
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(f"{path} does not match its checksum in {MANIFEST_NAME} (sha256 {digest[:12]}… instead of "
                         f"{entry['sha256'][:12]}…): the file is corrupted or was replaced; fetch it again or rebuild "
                         f"it with {rebuild_command(name)}")
    return torch.load(path, map_location=map_location, weights_only=True), entry


def load(name: str, recipe_version: int, folder: Path | None = None, cache: Path | None = None,
         map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """:func:`load_state_dict` plus the model's run record (``NAME.json``, downloaded beside it if needed)."""
    state, entry = load_state_dict(name, recipe_version, folder, cache, map_location)
    where, _ = _locate(folder, cache)
    path = where / entry["record"]
    if not path.exists():
        _download(raw_base_url() + entry["record"], path)
    return state, entry, json.loads(path.read_text())


__all__ = ["MANIFEST_NAME", "REPLICATES_DIR", "load", "load_record", "TRAINED_DIR", "URL_ENV", "load_state_dict", "publish",
           "publish_record", "raw_base_url", "read_manifest", "rebuild_command", "sha256", "update_record"]
