"""Long, resumable training runs of the book's recipes: ``python -m mvl.train``.

Usage (from the repository root)::

    python -m mvl.train --list                          # the recipes and their budgets
    python -m mvl.train ch7-vampprior                   # train from scratch (refuses to overwrite a run)
    python -m mvl.train ch7-vampprior --resume --max-minutes 60 --threads 1
    python -m mvl.train ch7-vampprior --resume --export # publish the current best weights now
    python -m mvl.train ch10-wae-mvl-sphere-short-seed1 --record-only  # a seed replicate: its record only
    python -m mvl.train ch7-vampprior --reevaluate      # add per-image values to an older run record
    python -m mvl.train ch10-wae-mvl-sphere --adopt DIR # publish into trained/ what a run published into DIR
    python -m mvl.train ch10-wae-mvl-sphere-short --retire  # drop superseded weights, keep the run record

A run checkpoints its whole state (:class:`mvl.ae.vae.VAETrainer`: weights, Adam, RNG states, epoch and
update counters, early-stopping state, history) atomically between epochs, every ``--checkpoint-minutes``
and when it stops, into ``<cache>/runs/RECIPE-vVERSION/state.pt`` (the cache of :func:`mvl.ae.mnist.data_dir`).
``--resume`` continues it bit for bit; ``--max-minutes`` stops cleanly at a checkpoint; Ctrl-C loses at most
the epochs since the last checkpoint. A checkpoint written by another version or other settings of the
recipe is refused (and left as it is). A NaN stops the run with the last good checkpoint kept.

When the budget is spent or early stopping fires (or with ``--export``), the best weights are evaluated as
the recipe says and published under ``trained/`` with a run record (:mod:`mvl.trained`); a seed replicate
(``--record-only``) publishes only its record, under ``trained/replicates/``.

Several runs at once: recipes are independent processes. On a machine with several GPUs start one per GPU
(``python -m mvl.train A --resume --device cuda:0 &``, ``... B --resume --device cuda:1 &``); on a cluster
submit a job array whose task i runs ``python -m mvl.train "${RECIPES[$i]}" --resume --max-minutes 230``
(SLURM: ``#SBATCH --array=0-1``, resubmit until the run records appear). Point ``MVL_DATA`` at a shared
folder so that every job finds its checkpoint, and use ``--out`` to collect the records and weights in one
folder; then ``--adopt DIR`` publishes each into ``trained/`` (checksum-verified), and commit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__, trained
from .ae import vae as V
from .ae.mnist import data_dir, mnist
from .ae.recipes import RECIPES, VAERecipe, get_recipe
from .profiles import device_description, get_device

STATE_FORMAT = 1


def run_dir(recipe: VAERecipe, cache: Path | None = None) -> Path:
    """``<cache>/runs/RECIPE-vVERSION``: where a run's resumable checkpoint lives."""
    return (Path(cache) if cache is not None else data_dir()) / "runs" / f"{recipe.name}-v{recipe.version}"


def load_data(recipe: VAERecipe) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """MNIST as chapter 7 uses it: dynamically binarized training images, static validation and test sets."""
    train = mnist("train", binarize="dynamic").subset(recipe.n_train)
    valid = mnist("valid", binarize="static").subset(recipe.n_valid).tensor()
    test = mnist("test", binarize="static").subset(recipe.eval_images).tensor()
    return train, valid, test


def git_commit() -> str:
    """The repository's commit, with ``+dirty`` if the tracked files differ from it; ``unknown`` elsewhere."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=trained.ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=trained.ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _save_state(path: Path, recipe: VAERecipe, trainer: V.VAETrainer, wall: dict[str, float]) -> None:
    state = {"format": STATE_FORMAT, "recipe": recipe.name, "recipe_version": recipe.version,
             "fingerprint": recipe.fingerprint(), "mvl_version": __version__, "trainer": trainer.state_dict(),
             "wall": dict(wall)}
    trained._write_atomic(path, lambda p: torch.save(state, p))


def _load_state(path: Path, recipe: VAERecipe) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"the checkpoint {path} cannot be read ({err}); delete it or start anew with --restart") from err
    found = (state.get("recipe"), state.get("recipe_version"), state.get("fingerprint"))
    if found != (recipe.name, recipe.version, recipe.fingerprint()) or state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"the checkpoint {path} belongs to recipe {found[0]!r} version {found[1]} (settings {found[2]}), not to "
            f"{recipe.name!r} version {recipe.version} (settings {recipe.fingerprint()}): it was left untouched. "
            f"Start anew with --restart, or bump the recipe version when its settings change."
        )
    return state


def evaluate(recipe: VAERecipe, model: V.VAE, test: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The recipe's evaluation: importance-sampled test NLL (with its standard error and the weights'
    effective sample size) and the test ELBO, seeded with the recipe's seed. A recipe with an energy-based
    prior evaluates itself (``recipe.evaluate_model``: the prior's log Z by AIS first, chapter 8)."""
    start = time.perf_counter()
    model.eval().to(device)
    test = test.to(device)
    own = getattr(recipe, "evaluate_model", None)
    metrics = own(model, test) if own is not None else None
    if metrics is not None:
        return metrics
    torch.manual_seed(recipe.seed)
    est = model.importance_estimates(test, recipe.eval_samples)
    nll = -est["log_px"].double().cpu()
    torch.manual_seed(recipe.seed)
    elbo = V.evaluate_elbo(model, test)
    ess = est["ess"].double().cpu()
    return {
        "per_image_nll": [round(v, 4) for v in nll.tolist()],  # for paired comparisons between models
        "test_nll": nll.mean().item(), "test_nll_se": (nll.std() / math.sqrt(len(nll))).item() if len(nll) > 1 else None,
        "test_elbo": elbo["elbo"], "test_reconstruction": elbo["reconstruction"], "test_kl": elbo["kl"],
        "is_samples": recipe.eval_samples, "test_images": len(nll),
        "ess_mean": ess.mean().item(), "ess_median": ess.median().item(), "ess_min": ess.min().item(),
        "eval_seconds": time.perf_counter() - start,
    }


def train_recipe(recipe: VAERecipe, *, resume: bool = False, restart: bool = False, max_minutes: float | None = None,
                 stop_after_epochs: int | None = None, checkpoint_minutes: float = 5.0, device: str = "auto",
                 export: bool = False, data: tuple | None = None, cache: Path | None = None, out: Path | None = None,
                 progress: bool = True, record_only: bool = False) -> dict[str, Any] | None:
    """Train ``recipe`` resumably (see the module docstring). Returns the run record once the weights are
    published, or None when the run stopped at a checkpoint (time or epoch limit) to be resumed later.
    ``record_only``: publish the run record alone (:func:`mvl.trained.publish_record`), for seed replicates."""
    dev = get_device(device)
    ckpt = run_dir(recipe, cache) / "state.pt"
    if ckpt.exists() and not (resume or restart):
        raise FileExistsError(f"a run of {recipe.name} already exists at {ckpt}: continue it with --resume, or "
                              f"discard it with --restart")
    train, valid, test = data if data is not None else load_data(recipe)
    probs = train.probs if hasattr(train, "probs") else train
    model = recipe.build(probs)
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    trainer = recipe.trainer(model, train, valid, dev, generator)
    wall: dict[str, float] = {}
    if ckpt.exists() and resume and not restart:
        state = _load_state(ckpt, recipe)
        trainer.load_state_dict(state["trainer"])
        wall = dict(state["wall"])
        print(f"{recipe.name}: resumed at epoch {trainer.epoch} from {ckpt}", flush=True)
    where = device_description(dev)
    code_commit = git_commit()  # the code this sitting runs (modules are loaded now; HEAD may move while it trains)
    session_start = last_save = time.perf_counter()
    epochs_now = 0

    def spent() -> dict[str, float]:
        return wall | {where: wall.get(where, 0.0) + time.perf_counter() - session_start}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.epochs, initial=trainer.epoch, desc=recipe.name, unit="epoch")
    stopped_for_limit = False
    try:
        while not trainer.done:
            try:
                val = trainer.run_epoch()
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"{recipe.name}: {err} The last good checkpoint ({ckpt}) is kept; lower the learning rate in a "
                    f"new recipe version, or --resume to retry from it."
                ) from None
            epochs_now += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({f"valid_{k}": f"{v:.2f}" for k, v in val.items() if k in ("elbo", "bound")})
            now = time.perf_counter()
            out_of_time = max_minutes is not None and now - session_start >= 60 * max_minutes
            out_of_epochs = stop_after_epochs is not None and epochs_now >= stop_after_epochs
            if trainer.done or out_of_time or out_of_epochs or now - last_save >= 60 * checkpoint_minutes:
                _save_state(ckpt, recipe, trainer, spent())
                last_save = now
            if not trainer.done and (out_of_time or out_of_epochs):
                stopped_for_limit = True
                break
    finally:
        if bar is not None:
            bar.close()
    if stopped_for_limit and not export:
        print(f"{recipe.name}: stopped at epoch {trainer.epoch} of at most {recipe.epochs}; checkpoint {ckpt}; "
              f"continue with: python -m mvl.train {recipe.name} --resume", flush=True)
        return None
    if not stopped_for_limit and not trainer.done:  # nothing ran (e.g. --export of a finished-or-new run)
        _save_state(ckpt, recipe, trainer, spent())
    hist = trainer.finish()
    metrics = evaluate(recipe, model, test, dev)
    total = spent()
    record = {
        "recipe": recipe.name, "recipe_version": recipe.version, "fingerprint": recipe.fingerprint(),
        "settings": recipe.settings(), "epochs": trainer.epoch, "best_epoch": hist["best_epoch"],
        "stopped_early": hist["stopped_early"], "finished": trainer.done,
        "wall_s": round(sum(total.values()), 1), "wall_s_by_device": {k: round(v, 1) for k, v in total.items()},
        "device": where, "commit": code_commit, "torch": torch.__version__, "mvl": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"), "metrics": metrics,
        "curve": {k: hist[k] for k in trainer.history_keys},
    }
    if record_only:  # a seed replicate: its record, not its weights (trained/'s size limit)
        wrote = f"wrote the record {trained.publish_record(recipe.name, record, out)} (weights not kept)"
    else:
        entry = trained.publish(recipe.name, model.state_dict(), record, out)
        wrote = f"wrote {entry['file']} (sha256 {entry['sha256'][:12]}…)"
    summary = recipe.summary(metrics) if hasattr(recipe, "summary") else (  # e.g. a classifier's accuracy
        f"test NLL {metrics['test_nll']:.2f} ± {metrics['test_nll_se'] or 0:.2f}"
        f"{' (log Z ± %.2f shared)' % metrics['log_z_se'] if 'log_z_se' in metrics else ''} ({recipe.eval_samples} samples, "
        f"{metrics['test_images']} images)")
    print(f"{recipe.name}: {'finished' if trainer.done else 'exported'} after {trainer.epoch} epochs; {summary}; "
          f"{wrote}", flush=True)
    return record


REEVALUATION_TOLERANCE = 0.01
"""Nats by which a re-evaluation's test NLL and ELBO may differ from the record's (float reductions differ
with the thread count; the records' standard errors are tenths of a nat)."""


def reevaluate(recipe: str | VAERecipe, device: str = "auto", folder: Path | None = None,
               data: tuple | None = None) -> dict[str, Any]:
    """Evaluate a published model again as its recipe says (same seed, same images) and add the per-image
    values (``per_image_*``) to its run record, for records published before they were kept; the record's
    other numbers must be reproduced within :data:`REEVALUATION_TOLERANCE`, else ``ValueError`` (the
    weights or the evaluation code changed) and nothing is written. Returns the updated record."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    dev = get_device(device)
    model, record = load_trained(recipe, dev, folder)
    test = (data if data is not None else load_data(recipe))[2]
    metrics = evaluate(recipe, model, test, dev)
    old = record["metrics"]
    compared = [k for k in ("test_nll", "test_elbo", "fid", "test_accuracy") if k in old and k in metrics]
    added = [k for k in metrics if k.startswith("per_image")]
    if not compared or not added:
        raise ValueError(f"{recipe.name}: its evaluation gives no {'per-image values' if compared else 'number the record holds'}"
                         f" to {'add' if compared else 'compare'}; nothing was written")
    for key in compared:
        if abs(metrics[key] - old[key]) > REEVALUATION_TOLERANCE:
            raise ValueError(f"{recipe.name}: the re-evaluation on {device_description(dev)} gives {key} = "
                             f"{metrics[key]:.4f}, the run record {old[key]:.4f} (evaluated on {record['device']}); "
                             f"the weights, the evaluation or the device's random numbers differ, so the record was "
                             f"left as it is (re-evaluate on the record's kind of device)")
    record["metrics"].update({k: v for k, v in metrics.items() if k.startswith("per_image")})
    record["reevaluated"] = {"commit": git_commit(), "device": device_description(dev),
                             "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
                             "metrics": {k: v for k, v in metrics.items() if not k.startswith("per_image")}}
    trained.update_record(recipe.name, record, folder)
    print(f"{recipe.name}: re-evaluated ({', '.join(k for k in metrics if k.startswith('per_image'))} added to the "
          f"record); test NLL {metrics.get('test_nll', float('nan')):.4f} against the record's "
          f"{old.get('test_nll', float('nan')):.4f}", flush=True)
    return record


def load_trained(recipe: str | VAERecipe, device: str | torch.device = "cpu",
                 folder: Path | None = None) -> tuple[V.VAE, dict[str, Any]]:
    """The published model of a recipe (checksum and version verified) and its run record.

    ``recipe`` is a recipe or the name of one in :data:`mvl.ae.recipes.RECIPES`; ``folder`` defaults to the
    repository's ``trained/`` (downloaded into the cache where the repository is absent, e.g. on Colab).
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    state, entry, record = trained.load(recipe.name, recipe.version, folder)
    model = recipe.skeleton()
    model.load_state_dict(state)
    if "log_z" in record["metrics"]:  # an energy-based prior: its AIS log Z from the run record
        from .ae.ebm_prior import attach_log_partition

        attach_log_partition(model.prior, record["metrics"]["log_z"], record["metrics"]["log_z_se"])
    return model.to(device).eval(), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvl.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", help="the recipe to train (see --list)")
    parser.add_argument("--list", action="store_true", help="list the recipes with their budgets")
    parser.add_argument("--resume", action="store_true", help="continue the run's checkpoint if there is one")
    parser.add_argument("--restart", action="store_true", help="discard an existing checkpoint and start anew")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop cleanly at a checkpoint after this long")
    parser.add_argument("--stop-after-epochs", type=int, default=None, help="stop after this many epochs in this sitting")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint interval (default 5)")
    parser.add_argument("--export", action="store_true", help="evaluate and publish the current best weights now")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:K")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate the published model again and add its per-image values to the run record")
    parser.add_argument("--record-only", action="store_true",
                        help="publish the run record without the weights (seed replicates: trained/replicates/)")
    parser.add_argument("--out", type=Path, default=None, help="where to publish (default: the repository's trained/)")
    parser.add_argument("--adopt", type=Path, default=None, metavar="DIR",
                        help="publish into trained/ (or --out) the model that a run published into DIR, checksum-verified")
    parser.add_argument("--retire", action="store_true",
                        help="drop the published weights and keep the run record under trained/replicates/")
    args = parser.parse_args(argv)
    if args.list:
        for r in RECIPES.values():
            print(f"{r.name:16s} v{r.version}  chapter {r.chapter}: {r.description}\n{'':20s}{r.budget()}")
        return 0
    if not args.recipe:
        parser.error("name a recipe (python -m mvl.train --list shows them)")
    try:
        recipe = get_recipe(args.recipe)
    except KeyError as err:
        parser.error(str(err.args[0]))
    for name, value in (("--max-minutes", args.max_minutes), ("--checkpoint-minutes", args.checkpoint_minutes)):
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"{name} must be a positive number of minutes, got {value}")
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        parser.error(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        if args.reevaluate:
            reevaluate(recipe, device=args.device, folder=args.out)
            return 0
        if args.adopt is not None or args.retire:
            if args.adopt is not None and args.retire:
                parser.error("--adopt and --retire exclude each other")
            if args.retire:
                print(f"kept the run record as {trained.retire(recipe.name, args.out)}; the weights are gone")
            else:
                entry = trained.adopt(recipe.name, args.adopt, args.out)
                print(f"published {recipe.name} ({entry['bytes'] / 2**20:.1f} MiB, sha256 {entry['sha256'][:12]}…)")
            return 0
        train_recipe(recipe, resume=args.resume, restart=args.restart, max_minutes=args.max_minutes,
                     stop_after_epochs=args.stop_after_epochs, checkpoint_minutes=args.checkpoint_minutes,
                     device=args.device, export=args.export, out=args.out, record_only=args.record_only)
    except (FileExistsError, KeyError, ValueError, FloatingPointError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last checkpoint is in {run_dir(recipe)}; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
