"""Training recipes: the models the auto-encoder chapters show, each defined once, with its budget.

A recipe names everything that determines a trained model — data, architecture, prior, optimiser,
schedule, budget, seed — and how it is evaluated. ``python -m mvl.train RECIPE`` trains it resumably and
publishes the weights under ``trained/`` (:mod:`mvl.trained`); the chapters load those weights, or train
a recipe themselves through the same code. Change anything that affects the result and bump ``version``:
a checkpoint or a committed model of another version is then refused, never silently reused.

Chapter 7's recipes follow Tomczak & Welling (2018), one stochastic layer, as the book implements it
(:func:`mvl.ae.vae.build_vae`). Where they differ from the authors' released code:

* the optimiser is plain Adam (the official code uses its "AdamNormGrad", Adam on gradients normalised
  per parameter tensor);
* the layers keep PyTorch's default initialisation (the official code uses He initialisation);
* the VampPrior's pseudo-inputs start at K random training images (the official code starts them at
  random values, N(0.05, 0.01) before the hard-tanh);
* the KL warm-up is per update rather than per epoch, and validation uses the statically binarized
  validation images (the last 10 000 of the training set).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from . import vae as V


@dataclass(frozen=True)
class VAERecipe:
    """One trainable VAE of the book (chapter 7 and later): what to build, how to train and evaluate it."""

    name: str
    version: int
    chapter: int
    description: str
    prior: str = "standard"          # "standard" | "vamp"
    latent: int = 40
    hidden: int = 300
    n_pseudo: int = 500              # VampPrior components K (ignored for the standard prior)
    n_train: int = 50_000
    n_valid: int = 10_000
    epochs: int = 2000               # the budget; early stopping usually ends a run before it
    warmup: float = 100.0            # KL warm-up, epochs
    lr: float = 5e-4
    batch_size: int = 100
    patience: int = 50               # early stopping look-ahead, epochs
    seed: int = 0
    eval_samples: int = 5000         # importance samples per test image
    eval_images: int = 10_000        # test images evaluated (the whole test set)

    def __post_init__(self):
        if self.prior not in ("standard", "vamp"):
            raise ValueError(f"recipe {self.name}: unknown prior {self.prior!r} (choose 'standard' or 'vamp')")
        for field in ("latent", "hidden", "n_pseudo", "n_train", "n_valid", "epochs", "batch_size", "patience",
                      "eval_samples", "eval_images"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe {self.name}: {field} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.warmup) and self.warmup >= 0):
            raise ValueError(f"recipe {self.name}: lr must be > 0 and warmup >= 0")

    def settings(self) -> dict[str, Any]:
        """The recipe as a plain dict (what run records and checkpoints store)."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A hash of every setting: a checkpoint made under other settings is refused even at equal version."""
        text = json.dumps(self.settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def budget(self) -> str:
        """One line for ``python -m mvl.train --list``."""
        return (f"{self.epochs} epochs max (early stopping after {self.patience} without improvement), "
                f"batch {self.batch_size}, {self.n_train} images; evaluation {self.eval_samples} importance samples "
                f"x {self.eval_images} test images")

    def with_changes(self, **changes: Any) -> VAERecipe:
        """A modified copy, e.g. a tiny version for the quick profile (give it its own name)."""
        return dataclasses.replace(self, **changes)

    def build(self, train_probs: torch.Tensor | None = None) -> V.VAE:
        """The untrained model, seeded: the VampPrior's pseudo-inputs are K training images drawn with the
        recipe's seed (``train_probs``, gray levels ``[n, 784]``; required for ``prior="vamp"``)."""
        torch.manual_seed(self.seed)
        init: torch.Tensor | str = "random"
        if self.prior == "vamp":
            if train_probs is None:
                raise ValueError(f"recipe {self.name}: the VampPrior needs training images to start its pseudo-inputs")
            init = train_probs[torch.randperm(len(train_probs))[: self.n_pseudo]]
        return V.build_vae(self.prior, self.latent, self.hidden, n_pseudo=self.n_pseudo, pseudo_init=init)


RECIPES: dict[str, VAERecipe] = {
    r.name: r
    for r in (
        VAERecipe("ch7-standard", 1, 7, "one-layer VAE, standard normal prior (Tomczak & Welling 2018, Table 2)",
                  prior="standard"),
        VAERecipe("ch7-vampprior", 1, 7, "one-layer VAE, VampPrior with K = 500 pseudo-inputs (Tomczak & Welling 2018)",
                  prior="vamp"),
    )
}
"""Every recipe of the book, by name."""


def get_recipe(name: str) -> VAERecipe:
    """The recipe called ``name``, or a ``KeyError`` that lists the recipes."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; the recipes are: {', '.join(sorted(RECIPES))} "
                       f"(python -m mvl.train --list)") from None


__all__ = ["RECIPES", "VAERecipe", "get_recipe"]
