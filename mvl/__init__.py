"""mvl: the code behind the mvl-book course on minimum velocity learning of unnormalized models.

Each module holds what one idea of the book needs, and each function's docstring names the chapter and
equation it implements. The package has two halves and the course's tooling.

Learning unnormalized models (chapters 1–6; the later chapters reuse it):

* :mod:`mvl.energies`: the energy type, ∇E and ΔE, and the energy parameterizations (chapter 1);
* :mod:`mvl.objectives`: score matching and its estimators (chapters 1, 3–6);
* :mod:`mvl.samplers`: Langevin dynamics, SVGD and SPOS, Riemannian Langevin (chapters 2–6);
* :mod:`mvl.stein`: the kernelized Stein discrepancy as a goodness-of-fit test (wild bootstrap; chapter 5);
* :mod:`mvl.variance`: bias and variance of stochastic estimators (chapter 4);
* :mod:`mvl.divergences`: KL divergences of particle samples (chapter 2);
* :mod:`mvl.manifolds`: the sphere, its charts and von Mises–Fisher densities (chapter 6);
* :mod:`mvl.data`: the toy data sets (chapters 1–5);
* :mod:`mvl.fitting`: the loop that fits an energy by any objective, gradient and timing helpers;
* :mod:`mvl.ais`: annealed importance sampling, log partition functions and a VAE's log p(x) (chapter 8;
  imports nothing from the package).

Auto-encoders with flexible priors (chapters 7 onwards): the subpackage :mod:`mvl.ae` (MNIST, priors,
VAEs, and :mod:`mvl.ae.ebm_prior`, VAEs with energy-based priors trained without the partition function;
:mod:`mvl.ae.wae`, Wasserstein auto-encoders, and :mod:`mvl.ae.fid`, FID through an MNIST classifier, chapter 10).

Course tooling:

* :mod:`mvl.profiles`: profiles, seeding, device selection (``mvl.setup``, the call after every
  ``parameters`` cell);
* :mod:`mvl.plotting`: the figures the chapters share;
* :mod:`mvl.book`: executes the notebooks and records execution statistics (``python -m mvl.book``);
* :mod:`mvl.train`: long, resumable training runs of the book's recipes (``python -m mvl.train``;
  the recipes are in :mod:`mvl.ae.recipes`), and :mod:`mvl.trained`: the committed models in
  ``trained/``, published with provenance and loaded checksum-verified;
* :mod:`mvl.bench`: times one training step of every estimator (``python -m mvl.bench``; the page "Cost
  of the estimators").

Imports go one way: :mod:`mvl.energies` imports nothing from the package; :mod:`mvl.samplers` imports
:mod:`mvl.energies`; :mod:`mvl.objectives` and :mod:`mvl.stein` import both; :mod:`mvl.ae` imports the top
level, never the reverse.
"""

from . import ae, ais, data, divergences, energies, fitting, manifolds, objectives, plotting, profiles, samplers, stein, variance
from .profiles import setup

__version__ = "0.1.0"
REPOSITORY_URL = "https://github.com/mvl-book/mvl-book"
"""Where the book's source lives; ``_config.yml`` and every notebook's setup cell use this URL."""

__all__ = [
    "ae", "ais", "data", "divergences", "energies", "fitting", "manifolds", "objectives", "plotting", "profiles",
    "samplers", "stein", "variance", "setup", "REPOSITORY_URL",
]
