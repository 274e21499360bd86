"""VAEs on the 2-D toy data of chapter 8 (seed 003 §4.1, Table 1): small enough that everything is exact.

A two-dimensional data set (eight Gaussians, checkerboard, two spirals; :func:`mvl.data.toy`) is modelled by
a VAE with a two-dimensional latent space, a Gaussian decoder and one of the chapter's priors. With a GRBM of
at most 20 hidden units the prior's log Z is exact (:meth:`mvl.ae.priors.GRBM.log_partition_exact`), so two
things the seed paper can only argue are *measured* here: the error of the importance-weighted log Z of its
eqs. (5)–(7) (:func:`iw_log_partition`, against the exact value), and every model's held-out NLL without an
AIS estimate in it (:func:`toy_nll`).

The seed's toy networks are DenseNet blocks (hidden 16, depth 4) with weight normalization; these are plain
MLPs (two tanh layers of ``hidden`` units), which is what a reader can reproduce in a minute on a CPU.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ebm_prior import EBMPriorTrainer
from .flows import IAF
from .priors import GRBM, DiagonalGaussian, StandardNormal, VampPrior, gaussian_log_prob
from .vae import VAE

TOY_PRIORS = ("standard", "vamp", "grbm")
"""The priors :func:`build_toy_vae` builds (the GRBM is trained by any objective of
:data:`mvl.ae.ebm_prior.PRIOR_OBJECTIVES`)."""


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers)


class ToyEncoder(nn.Module):
    """q(z|x) = N(μ(x), diag σ²(x)) from an MLP (two tanh layers), log σ² clamped to ``logvar_range``;
    with ``fixed_std`` the posterior's standard deviation is that constant (the seed's "ECVAE", σ = 1)."""

    def __init__(self, input_dim: int = 2, latent_dim: int = 2, hidden: int = 64, fixed_std: float | None = None,
                 logvar_range: tuple[float, float] = (-9.0, 2.0)):
        super().__init__()
        if fixed_std is not None and not (math.isfinite(fixed_std) and fixed_std > 0):
            raise ValueError(f"fixed_std must be a positive number or None, got {fixed_std!r}")
        self.input_dim, self.latent_dim, self.fixed_std = input_dim, latent_dim, fixed_std
        self.body = _mlp([input_dim, hidden, hidden])
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.logvar_range = logvar_range

    def forward(self, x: torch.Tensor) -> DiagonalGaussian:
        h = self.body(x)
        mean = self.mean(h)
        if self.fixed_std is not None:
            return DiagonalGaussian(mean, torch.full_like(mean, 2 * math.log(self.fixed_std)))
        return DiagonalGaussian(mean, F.hardtanh(self.logvar(h), *self.logvar_range))


class GaussianDecoder(nn.Module):
    """p(x|z) = N(x; m(z), diag s²(z)) with m and log s² from an MLP, log s² clamped to ``logvar_range``
    (a floor keeps the likelihood of a 2-D point from growing without bound as the decoder sharpens)."""

    def __init__(self, latent_dim: int = 2, output_dim: int = 2, hidden: int = 64,
                 logvar_range: tuple[float, float] = (-9.0, 2.0)):
        super().__init__()
        self.latent_dim, self.output_dim = latent_dim, output_dim
        self.body = _mlp([latent_dim, hidden, hidden])
        self.loc = nn.Linear(hidden, output_dim)
        self.logvar = nn.Linear(hidden, output_dim)
        self.logvar_range = logvar_range

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(z)
        return self.loc(h), F.hardtanh(self.logvar(h), *self.logvar_range)

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for ``z`` ``[..., n, d]`` and ``x`` ``[n, D]``; returns ``[..., n]``."""
        loc, logvar = self(z)
        return gaussian_log_prob(x.expand_as(loc), loc, logvar)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] = m(z)."""
        return self(z)[0]

    @torch.no_grad()
    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """x ~ p(x|z): the decoder's noise included (the samples of the seed's Table 1 figures)."""
        loc, logvar = self(z)
        return loc + torch.exp(0.5 * logvar) * torch.randn_like(loc)


def build_toy_vae(prior: str = "standard", latent_dim: int = 2, hidden: int = 64, prior_hidden: int = 8,
                  n_pseudo: int = 128, fixed_std: float | None = None, data: torch.Tensor | None = None) -> VAE:
    """A toy VAE of chapter 8: :class:`ToyEncoder` (``fixed_std`` for the ECVAE), :class:`GaussianDecoder`,
    and the prior ``"standard"`` (N(0, I)), ``"vamp"`` (``n_pseudo`` real-valued pseudo-inputs, started at
    random rows of ``data`` if given) or ``"grbm"`` (``latent_dim`` visible, ``prior_hidden`` ≤ 20 hidden units,
    so that its log Z is exact)."""
    if prior not in TOY_PRIORS:
        raise ValueError(f"unknown prior {prior!r}: choose one of {TOY_PRIORS}")
    encoder = ToyEncoder(2 if data is None else data.shape[1], latent_dim, hidden, fixed_std)
    decoder = GaussianDecoder(latent_dim, encoder.input_dim, hidden)
    if prior == "grbm":
        if prior_hidden > GRBM.max_exact_hidden:
            raise ValueError(f"the toy GRBM needs an exact log Z: at most {GRBM.max_exact_hidden} hidden units, "
                             f"got {prior_hidden}")
        p: nn.Module = GRBM(latent_dim, prior_hidden)
    elif prior == "standard":
        p = StandardNormal(latent_dim)
    else:
        init: torch.Tensor | str = "random"
        if data is not None:
            idx = torch.randperm(len(data))[:n_pseudo]
            if len(idx) < n_pseudo:
                raise ValueError(f"need at least {n_pseudo} data points to start the pseudo-inputs, got {len(data)}")
            init = data[idx].float()
        p = VampPrior(encoder, n_pseudo, encoder.input_dim, init=init, bounded=False)
    return VAE(encoder, decoder, p)


TOY_MODELS: dict[str, dict] = {
    "standard": dict(prior="standard", objective="elbo"),
    "vamp": dict(prior="vamp", objective="elbo"),
    "evae": dict(prior="grbm", objective="iw"),
    "ecvae": dict(prior="grbm", objective="iw", fixed_std=1.0),
    "ssm": dict(prior="grbm", objective="ssm"),
    "mvl": dict(prior="grbm", objective="mvl"),
    "dsm": dict(prior="grbm", objective="dsm"),
    "adversarial": dict(prior="grbm", objective="adversarial", energy_l2=0.01),
}
"""The models of chapter 8's toy table (seed 003 Table 1, with MVL and DSM added): the prior, the objective
that fits it (:data:`mvl.ae.ebm_prior.PRIOR_OBJECTIVES`), and ``fixed_std`` (the ECVAE's σ = 1 posterior).
"evae" and "ecvae" fit the GRBM by the importance-weighted log Z of seed eqs. (5)–(7); the adversarial model
has an IAF adversary with two hidden MADE layers of 32 units and the energy penalty 0.01 of the MNIST
recipe (without it the energy runs away there)."""


def train_toy_vae(name: str, data: torch.Tensor, epochs: int = 20, batch_size: int = 128, lr: float = 3e-3,
                  prior_lr: float = 1e-2, eps: float = 1e-3, seed: int = 0, hidden: int = 64, prior_hidden: int = 16,
                  track: torch.Tensor | None = None, bar=None) -> tuple[VAE, dict[str, list]]:
    """Train the toy model ``name`` of :data:`TOY_MODELS` on ``data`` ``[n, 2]`` (chapter 8) with
    :class:`mvl.ae.ebm_prior.EBMPriorTrainer` (Adam ``lr`` for the VAE, ``prior_lr`` for a GRBM prior, MVL's
    step and DSM's noise ``eps``), seeded by ``seed``. After every epoch, for a GRBM prior and held-out points
    ``track``, the history records the IW estimate of log Z (:func:`iw_log_partition`) and the exact value.
    ``bar`` (a tqdm bar) is advanced once per update. Returns the model and the history."""
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}: choose one of {sorted(TOY_MODELS)}")
    spec = TOY_MODELS[name]
    torch.manual_seed(seed)
    model = build_toy_vae(spec["prior"], hidden=hidden, prior_hidden=prior_hidden, fixed_std=spec.get("fixed_std"),
                          data=data)
    adversary = IAF(2, 4, hidden=(32, 32)) if spec["objective"] == "adversarial" else None
    trainer = EBMPriorTrainer(model, data, None, spec["objective"], epochs, batch_size, lr, prior_lr, eps, 1,
                              spec.get("energy_l2", 0.0), adversary, 1e-3,
                              generator=torch.Generator().manual_seed(seed + 10_000))
    history: dict[str, list] = {"epoch": [], "iw_log_z": [], "log_z": []}
    while not trainer.done:
        trainer.run_epoch(bar)
        if spec["prior"] == "grbm" and track is not None:
            est, exact = iw_log_partition(model, track)
            history["epoch"].append(trainer.epoch)
            history["iw_log_z"].append(est)
            history["log_z"].append(exact)
    history["seconds"] = trainer.elapsed
    history["trainer"] = trainer.hist
    return model.eval(), history


@torch.no_grad()
def iw_log_partition(model: VAE, x: torch.Tensor) -> tuple[float, float]:
    """The importance-weighted estimate of log Z of seed eq. (6) on a batch ``x``, and the exact log Z.

    log Ẑ = log (1/n) Σ_s exp(−E(z_s) − log q(z_s|x_s)),  z_s ~ q(z|x_s), one sample per row,

    the estimate :func:`mvl.ae.ebm_prior.prior_loss` uses under ``"iw"``. Each term is an unbiased estimate
    of Z only if q(·|x_s) covers the prior; the posteriors cover the region the *data* explain, so the sum
    misses prior mass (and the log adds Jensen's downward bias): the difference log Ẑ − log Z measures it."""
    prior = model.prior
    if not isinstance(prior, GRBM):
        raise ValueError("iw_log_partition measures the error of the IW log Z of a GRBM prior")
    q = model.encoder(x)
    z = q.rsample()
    log_w = -prior.free_energy(z) - q.log_prob(z)
    estimate = torch.logsumexp(log_w.double(), 0) - math.log(len(x))
    return float(estimate), float(prior.log_partition_exact())


@torch.no_grad()
def toy_nll(model: VAE, x: torch.Tensor, n_samples: int = 1000) -> dict[str, float]:
    """Held-out NLL of a toy VAE, −log p(x) by importance sampling (``n_samples`` per point), with the
    prior normalized exactly (the GRBM's exact log Z): mean, standard error over points, median ESS, and the
    per-point values (``per_point``, for paired comparisons of models on the same points).
    The expectation of the estimate is an upper bound on the true NLL (the importance-sampled log p(x)
    is a stochastic lower bound), and no estimate of log Z enters it."""
    if isinstance(model.prior, GRBM) and model.prior.n_hidden > GRBM.max_exact_hidden:
        raise ValueError("toy_nll needs the GRBM's exact log Z (at most 20 hidden units)")
    model.eval()
    est = model.importance_estimates(x, n_samples)
    nll = -est["log_px"].double()
    return {"nll": nll.mean().item(), "se": (nll.std() / math.sqrt(len(nll))).item(),
            "ess_median": est["ess"].median().item(), "per_point": nll}


@torch.no_grad()
def toy_density_grid(model: VAE, lim: float = 4.0, n: int = 60, n_samples: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's density p(x) on an ``n`` × ``n`` grid over [−lim, lim]², by importance sampling
    (``n_samples`` per point; the seed's density figures): returns (grid points ``[n², 2]``, p ``[n, n]``)."""
    t = torch.linspace(-lim, lim, n)
    gx, gy = torch.meshgrid(t, t, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    log_p = model.importance_estimates(pts, n_samples)["log_px"]
    return pts, log_p.exp().reshape(n, n)


@torch.no_grad()
def toy_samples(model: VAE, n: int, **grbm_sampler) -> torch.Tensor:
    """x ~ p(x): z from the prior (the GRBM by Gibbs–Langevin, ``grbm_sampler`` keywords to
    :meth:`~mvl.ae.priors.GRBM.sample`), then x ~ p(x|z) with the decoder's noise."""
    prior = model.prior
    z = prior.sample(n, **grbm_sampler) if isinstance(prior, GRBM) else prior.sample(n)
    return model.decoder.sample(z)


__all__ = ["GaussianDecoder", "TOY_MODELS", "TOY_PRIORS", "ToyEncoder", "build_toy_vae", "train_toy_vae", "iw_log_partition", "toy_density_grid",
           "toy_nll", "toy_samples"]
