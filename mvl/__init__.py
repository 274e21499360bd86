"""mvl: the code behind the mvl-book course on minimum velocity learning of unnormalized models.

Each module holds what one idea of the book needs, and each function's docstring names the chapter and
equation it implements:

* :mod:`mvl.utils`: profiles, seeding, device selection (the call after every ``parameters`` cell);
* :mod:`mvl.energies`: energy parameterizations (chapter 1);
* :mod:`mvl.objectives`: score matching and its estimators (chapters 1, 3–6);
* :mod:`mvl.samplers`: Langevin dynamics, SVGD and SPOS (chapters 2–6);
* :mod:`mvl.variance`: bias and variance of stochastic estimators (chapter 4);
* :mod:`mvl.data`: toy data sets (chapters 1–5) and MNIST (:mod:`mvl.mnist_data`, chapters 7–9);
* :mod:`mvl.divergences`: KL divergences of particle samples (chapter 2);
* :mod:`mvl.manifolds`: the sphere, its charts and von Mises–Fisher densities (chapter 6);
* :mod:`mvl.priors`, :mod:`mvl.vae`: latent priors and variational auto-encoders (chapters 7–9);
* :mod:`mvl.training`, :mod:`mvl.plotting`: the training loop and figures the chapters share;
* :mod:`mvl.book`: executes the notebooks and records execution statistics.
"""

from . import (
    data, divergences, energies, manifolds, objectives, plotting, priors, samplers, training, utils, vae, variance,
)
from .utils import setup

__version__ = "0.1.0"
REPOSITORY_URL = "https://github.com/mvl-book/mvl-book"
"""Where the book's source lives; ``_config.yml`` and every notebook's setup cell use this URL."""

__all__ = [
    "data", "divergences", "energies", "manifolds", "objectives", "plotting", "priors", "samplers", "training",
    "utils", "vae", "variance", "setup", "REPOSITORY_URL",
]
