"""Variational auto-encoders with pluggable priors (chapter 7; reused by the later auto-encoder chapters).

A :class:`VAE` is three parts with small interfaces, so that later chapters swap one part at a time:

* an encoder ``x -> q(z|x)``, an object with ``rsample(n)`` and ``log_prob(z)``
  (:class:`GaussianEncoder` returns a :class:`mvl.ae.priors.DiagonalGaussian`);
* a decoder with ``log_prob(x, z)`` (log p(x|z), summed over pixels) and ``mean(z)``
  (:class:`BernoulliDecoder`);
* a prior with ``log_prob(z)`` and ``sample(n)`` (:mod:`mvl.ae.priors`: standard normal, VampPrior).

The encoder and decoder are the one-stochastic-layer networks of the VampPrior paper (Tomczak & Welling,
2018): two gated dense layers of 300 units (Dauphin et al., 2017) each way. The training objective is the
ELBO (Kingma & Welling, 2014) with the KL term weighted by β (KL warm-up, Sønderby et al., 2016), the test
metric the importance-weighted log-likelihood estimate (Burda et al., 2016).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..fitting import check_finite
from .mnist import ImageData, data_dir
from .priors import (DiagonalGaussian, MixtureOfGaussians, Prior, StandardNormal, VampPrior, gaussian_log_density,
                     mixture_log_prob)


class GatedDense(nn.Module):
    """A gated dense layer h(x) ⊙ σ(g(x)) with two affine maps h, g (Dauphin et al., 2017)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def gated_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """A stack of :class:`GatedDense` layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``."""
    _check_sizes(sizes)
    return nn.Sequential(*[GatedDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])])


def elu_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Affine layers ``sizes[0] -> ... -> sizes[-1]``, each followed by an ELU (Clevert et al., 2016): the
    body of the seed paper's MNIST encoder and decoder (chapter 8)."""
    _check_sizes(sizes)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ELU()]
    return nn.Sequential(*layers)


def _check_sizes(sizes: Sequence[int]) -> None:
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must list at least two positive integers, got {sizes!r}")


BODIES = {"gated": gated_mlp, "elu": elu_mlp}
"""The hidden-layer stacks an encoder or decoder can use: gated dense layers (chapter 7) or ELU (chapter 8)."""


def _body(body: str, sizes: Sequence[int]) -> nn.Sequential:
    if body not in BODIES:
        raise ValueError(f"unknown body {body!r}: choose one of {sorted(BODIES)}")
    return BODIES[body](sizes)


class GaussianEncoder(nn.Module):
    """q(z|x) = N(μ(x), diag σ²(x)) computed by an MLP; log σ² is clamped to ``logvar_range``.

    ``body`` is ``"gated"`` (gated dense layers, chapter 7) or ``"elu"`` (affine + ELU, the seed paper of
    chapter 8: 784-256-256 then one affine map to the means and log-variances, i.e. its 784-256-256-128).

    The clamp (a hard tanh to [−6, 2], as in the VampPrior paper's code) keeps the posterior from collapsing
    to a point or exploding, which stabilizes both the ELBO and the VampPrior built from this encoder.
    """

    def __init__(self, input_dim: int = 784, latent_dim: int = 40, hidden: Sequence[int] = (300, 300),
                 logvar_range: tuple[float, float] = (-6.0, 2.0), body: str = "gated"):
        super().__init__()
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.body = _body(body, [input_dim, *hidden])
        self.mean = nn.Linear(hidden[-1], latent_dim)
        self.logvar = nn.Linear(hidden[-1], latent_dim)
        self.logvar_range = logvar_range

    def forward(self, x: torch.Tensor) -> DiagonalGaussian:
        h = self.body(x)
        return DiagonalGaussian(self.mean(h), F.hardtanh(self.logvar(h), *self.logvar_range))


class BernoulliDecoder(nn.Module):
    """p(x|z) = Π_i Bernoulli(x_i | sigmoid(logit_i(z))) with logits from an MLP (``body`` as for
    :class:`GaussianEncoder`; ``"elu"`` with hidden (256, 256) is the seed decoder 64-256-256-784 of chapter 8)."""

    def __init__(self, latent_dim: int = 40, output_dim: int = 784, hidden: Sequence[int] = (300, 300),
                 body: str = "gated"):
        super().__init__()
        self.latent_dim, self.output_dim = latent_dim, output_dim
        self.body = _body(body, [latent_dim, *hidden])
        self.logits = nn.Linear(hidden[-1], output_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The logits, shape ``[..., output_dim]``."""
        return self.logits(self.body(z))

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels; ``z`` is ``[..., n, d]``, ``x`` is ``[n, D]``; returns ``[..., n]``."""
        logits = self(z)
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """The pixel probabilities E[x|z]."""
        return torch.sigmoid(self(z))


class ELBO(NamedTuple):
    """The per-example terms of the β-weighted evidence lower bound (each a tensor ``[n]``).

    ``reconstruction`` = E_q[log p(x|z)], ``kl`` = E_q[log q(z|x) − log p(z)] (one-sample Monte Carlo
    estimates, which work for any prior). Reporting both, not only their difference, is what Alemi et al.
    (2018) recommend: equal ELBOs can hide very different uses of the latent code.
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor
    beta: float = 1.0

    @property
    def elbo(self) -> torch.Tensor:
        """reconstruction − KL: the lower bound on log p(x)."""
        return self.reconstruction - self.kl

    @property
    def objective(self) -> torch.Tensor:
        """reconstruction − β KL: what training maximizes (equal to the ELBO when β = 1)."""
        return self.reconstruction - self.beta * self.kl


class VAE(nn.Module):
    """A VAE p(x, z) = p(x|z) p(z) with amortized posterior q(z|x) (Kingma & Welling, 2014; chapter 7)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: Prior):
        super().__init__()
        self.encoder, self.decoder, self.prior = encoder, decoder, prior

    def elbo(self, x: torch.Tensor, beta: float = 1.0) -> ELBO:
        """The ELBO terms of eq. (ch7-elbo) for a batch ``x`` ``[n, D]``, with one reparameterized sample."""
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        q = self.encoder(x)
        z = q.rsample()
        reconstruction = self.decoder.log_prob(x, z)
        kl = q.log_prob(z) - self.prior.log_prob(z)
        return ELBO(reconstruction, kl, float(beta))

    def log_weights(self, x: torch.Tensor, n_samples: int, log_prior=None) -> torch.Tensor:
        """Importance log-weights log p(x|z_s) + log p(z_s) − log q(z_s|x), z_s ~ q(z|x); ``[n_samples, n]``.
        ``log_prior`` replaces ``prior.log_prob`` (e.g. an energy-based prior's −E(z), chapter 8)."""
        q = self.encoder(x)
        z = q.rsample(n_samples)
        log_p = self.prior.log_prob(z) if log_prior is None else log_prior(z)
        return self.decoder.log_prob(x, z) + log_p - q.log_prob(z)

    @torch.no_grad()
    def importance_estimates(self, x: torch.Tensor, n_samples: int = 5000, max_rows: int = 20_000,
                             log_prior=None) -> dict[str, torch.Tensor]:
        """Importance sampling of log p(x) per example (Burda et al., 2016; eq. ch7-iw), with its diagnostics.

        Returns ``log_px`` = logsumexp_s w_s − log S with the log-weights w_s of :meth:`log_weights`
        (S = ``n_samples``), and ``ess`` = (Σ e^{w_s})² / Σ e^{2w_s}, the effective sample size of the
        normalized weights (between 1 and S: how many of the S samples carry the estimate). The expectation
        of ``log_px`` is a lower bound that increases with S and equals the ELBO at S = 1. Samples are
        processed in chunks of at most ``max_rows`` decoder evaluations, so memory stays bounded.

        ``log_prior`` (z ``[..., d]`` → ``[...]``) replaces the prior's log density; with an unnormalized one
        (−E(z) of an energy-based prior) the result is log ∫ p(x|z) e^{−E(z)} dz = log p(x) + log Z, and the
        caller subtracts its estimate of log Z (chapter 8, :func:`mvl.ae.ebm_prior.evaluate_ebm_vae`).
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if log_prior is None and not getattr(self.prior, "normalized", True):
            raise ValueError("the prior is unnormalized: log p(x) needs an estimate of its log partition function")
        log_px, ess = [], []
        per_batch = max(1, max_rows // n_samples)
        for xb in x.split(per_batch):
            chunk = max(1, max_rows // xb.shape[0])
            lse = lse2 = torch.full((xb.shape[0],), -math.inf, device=xb.device)
            for s in _chunks(n_samples, chunk):  # running logsumexp of w and of 2w over the chunks
                logw = self.log_weights(xb, s, log_prior)
                lse = torch.logaddexp(lse, torch.logsumexp(logw, 0))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * logw, 0))
            log_px.append(lse - math.log(n_samples))
            ess.append(torch.exp(2 * lse - lse2))
        return {"log_px": torch.cat(log_px), "ess": torch.cat(ess)}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, n_samples: int = 5000, max_rows: int = 20_000) -> torch.Tensor:
        """The importance-sampling estimate of log p(x) per example (:meth:`importance_estimates`)."""
        return self.importance_estimates(x, n_samples, max_rows)["log_px"]

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Pixel probabilities E[x|z] for z drawn from the prior, ``[n, D]``."""
        return self.decoder.mean(self.prior.sample(n))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities E[x|z] at the posterior mean z = μ(x)."""
        return self.decoder.mean(self.encoder(x).mean)


def _chunks(total: int, size: int) -> Iterable[int]:
    while total > 0:
        yield min(size, total)
        total -= size


def build_vae(prior: str = "standard", latent_dim: int = 40, hidden: int = 300, input_dim: int = 784,
              n_pseudo: int = 500, pseudo_init: torch.Tensor | str = "random", body: str = "gated",
              learn_pseudo_inputs: bool = True) -> VAE:
    """The VampPrior paper's one-layer VAE: gated 2×``hidden`` encoder and decoder, and the named prior.

    ``prior`` is ``"standard"`` (N(0, I)), ``"vamp"`` (``n_pseudo`` pseudo-inputs initialised from
    ``pseudo_init``, a tensor of training images or ``"random"``; frozen if ``learn_pseudo_inputs=False``) or
    ``"mog"`` (a mixture of ``n_pseudo`` free Gaussians, :class:`mvl.ae.priors.MixtureOfGaussians`). ``body="elu"`` gives the ELU networks
    of chapter 8 instead (the energy-based priors are built by :func:`mvl.ae.ebm_prior.build_ebm_vae`).
    """
    encoder = GaussianEncoder(input_dim, latent_dim, (hidden, hidden), body=body)
    decoder = BernoulliDecoder(latent_dim, input_dim, (hidden, hidden), body=body)
    if prior == "standard":
        p: Prior = StandardNormal(latent_dim)
    elif prior == "vamp":
        p = VampPrior(encoder, n_pseudo, input_dim, init=pseudo_init, learn_pseudo_inputs=learn_pseudo_inputs)
    elif prior == "mog":
        p = MixtureOfGaussians(latent_dim, n_pseudo)
    else:
        raise ValueError(f"unknown prior {prior!r}: choose 'standard', 'vamp' or 'mog'")
    return VAE(encoder, decoder, p)


@torch.no_grad()
def evaluate_elbo(model: VAE, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean ELBO, reconstruction and KL (β = 1) over ``x`` in batches, one posterior sample per example."""
    terms = [model.elbo(xb) for xb in x.split(batch_size)]
    rec = torch.cat([t.reconstruction for t in terms])
    kl = torch.cat([t.kl for t in terms])
    return {"elbo": (rec - kl).mean().item(), "reconstruction": rec.mean().item(), "kl": kl.mean().item()}


@torch.no_grad()
def active_units(model: VAE, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 1000) -> tuple[int, torch.Tensor]:
    """Burda et al.'s (2016) activity: A_u = Var_x(E_q[z_u | x]); unit u is active if A_u > ``threshold``.

    Returns ``(number of active units, the variances A_u)``.
    """
    means = torch.cat([model.encoder(xb).mean for xb in x.split(batch_size)])
    var = means.var(0)
    return int((var > threshold).sum()), var


@torch.no_grad()
def elbo_surgery(model: VAE, x: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Split the average KL term into information and prior mismatch (Hoffman & Johnson, 2016; chapter 7):

        E_x KL(q(z|x) ‖ p(z)) = I_q + KL(q(z) ‖ p(z)),   q(z) = (1/N) Σ_n q(z | x_n),

    with I_q = E_x KL(q(z|x) ‖ q(z)) the mutual information between x and z under q (at most log N) and
    q(z) the aggregated posterior of the N examples in ``x``. One z_n ~ q(z|x_n) per example; log q(z_n)
    is the exact mixture over all N posteriors (:func:`mvl.ae.priors.mixture_log_prob`). The three numbers
    are computed on the same draws, so ``kl = mutual_information + marginal_kl`` holds exactly; ``*_se`` are
    their standard errors over the examples (the per-example terms are not independent, since every
    log q(z_n) uses all N posteriors, so these are approximate).
    """
    posts = [model.encoder(xb) for xb in x.split(batch_size)]
    mean, logvar = torch.cat([q.mean for q in posts]), torch.cat([q.logvar for q in posts])
    q_all = DiagonalGaussian(mean, logvar)
    z = q_all.rsample()
    log_q_cond = q_all.log_prob(z)
    log_q_marg = torch.cat([mixture_log_prob(zb, mean, logvar) for zb in z.split(batch_size)])
    log_p = model.prior.log_prob(z)
    info_n, marg_n = (log_q_cond - log_q_marg).double(), (log_q_marg - log_p).double()
    info, marg = info_n.mean().item(), marg_n.mean().item()
    se = lambda t: (t.std() / math.sqrt(len(t))).item() if len(t) > 1 else float("nan")
    return {"kl": info + marg, "mutual_information": info, "marginal_kl": marg, "kl_se": se(info_n + marg_n),
            "mutual_information_se": se(info_n), "marginal_kl_se": se(marg_n), "log_n": math.log(x.shape[0])}


@torch.no_grad()
def variance_explained(model: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Per latent unit u, the share of the aggregated posterior's variance that the input explains:

        Var_x(E[z_u | x]) / (Var_x(E[z_u | x]) + E_x Var(z_u | x))   (law of total variance; chapter 7).

    0 for a collapsed unit (its posterior is the same for every x), near 1 for a unit whose posterior
    pins z_u down per input. Unlike Burda et al.'s activity Var_x(E[z_u | x]) with an absolute threshold
    (:func:`active_units`), it does not depend on the scale of the codes, which a learned prior does not
    fix to 1. Returns ``[d]``.
    """
    posts = [model.encoder(xb) for xb in x.split(batch_size)]
    mean = torch.cat([q.mean for q in posts])
    within = torch.cat([q.logvar.exp() for q in posts]).mean(0)
    between = mean.var(0)
    return between / (between + within)


@torch.no_grad()
def per_unit_rate(model: VAE, x: torch.Tensor, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent unit u, the rate E_x KL(q(z_u | x) ‖ p(z_u)) against the prior's one-dimensional marginal
    (chapter 7), estimated with one z ~ q(z|x) per example: the mean over ``x`` of
    log N(z_u; μ_u(x), σ²_u(x)) − log p(z_u), with p(z_u) = (1/K) Σ_k N(z_u; m_ku, s²_ku) from
    :meth:`mvl.ae.priors.Prior.marginals` (in float64). It measures how many nats unit u alone carries and is
    scale-free like :func:`variance_explained`. For a factorized prior (N(0, I)) the rates add up to the KL
    term; for a mixture prior they need not, since the prior couples the units. Returns ``(rate, standard
    error over examples)``, each ``[d]``."""
    mean_p, logvar_p = (t.double() for t in model.prior.marginals())  # [K, d]
    terms = []
    for xb in x.split(batch_size):
        q = model.encoder(xb)
        mu, lv = q.mean.double(), q.logvar.double()
        z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)  # [b, d]
        log_q = gaussian_log_density(z, mu, lv)
        comp = gaussian_log_density(z[:, None, :], mean_p, logvar_p)  # [b, K, d]
        log_p = torch.logsumexp(comp, dim=1) - math.log(mean_p.shape[0])
        terms.append(log_q - log_p)
    t = torch.cat(terms)
    return t.mean(0), t.std(0) / math.sqrt(len(t))


def kl_weight(step: int, warmup_steps: int) -> float:
    """KL warm-up (Sønderby et al., 2016): β rises linearly from 0 to 1 over ``warmup_steps`` updates."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def _train_batches(train: ImageData | torch.Tensor, batch_size: int, device: torch.device,
                   generator: torch.Generator | None) -> Iterable[torch.Tensor]:
    if isinstance(train, ImageData):
        return train.batches(batch_size, shuffle=True, generator=generator, device=device)
    order = torch.randperm(train.shape[0], generator=generator)
    return (train[idx].to(device) for idx in order.split(batch_size))


class AdamNormGrad(torch.optim.Adam):
    """Adam on unit-norm gradients: each parameter tensor's gradient is divided by its L2 norm (+1e-7) before
    the moment updates. The optimizer of the VampPrior authors' released code (chapter 7's ``paper`` recipes,
    ``optimizer="adamnormgrad"``); every tensor then moves by about ``lr`` per step whatever its gradient's scale.
    (Their Adam adds ε to √v before the bias correction, PyTorch's after it; with ε = 1e-8 on unit-norm gradients
    the difference is negligible.)"""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(torch.linalg.vector_norm(p.grad) + 1e-7)
        return super().step(closure)


OPTIMIZERS = {"adam": torch.optim.Adam, "adamnormgrad": AdamNormGrad}
"""The optimizers a :class:`VAETrainer` can use, by name."""


def he_init_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """He initialization of every ``nn.Linear`` weight in ``model``: N(0, 2 / fan_in), biases left as they are
    (the released VampPrior code's ``he_init``, applied to its encoder and decoder; chapter 7's ``paper``
    recipes). Returns ``model``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.in_features), generator=generator)
    return model


HISTORY_KEYS = ("epoch", "beta", "train_objective", "train_reconstruction", "train_kl", "valid_elbo",
                "valid_reconstruction", "valid_kl", "seconds")


class VAETrainer:
    """The training loop of :func:`train_vae`, one epoch at a time, with its whole state saveable.

    :meth:`state_dict` holds everything the next epoch depends on — weights, Adam's moments, the update
    counter (hence β), the random-number states (the global torch RNG, which draws the posterior samples,
    and ``generator``, which orders and binarizes the data), the early-stopping state with the best
    weights so far, the history and the elapsed time — so that a run saved after epoch k and continued
    with :meth:`load_state_dict` gives the same weights as an uninterrupted run (on the same device and
    PyTorch build). ``python -m mvl.train`` checkpoints it between epochs.
    """

    def __init__(self, model: VAE, train: ImageData | torch.Tensor, valid: torch.Tensor | None = None,
                 epochs: int = 100, batch_size: int = 100, lr: float = 5e-4, warmup: float = 100,
                 patience: int = 50, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None, optimizer: str = "adam"):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {sorted(OPTIMIZERS)}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if not (isinstance(warmup, (int, float)) and math.isfinite(warmup) and warmup >= 0):
            raise ValueError(f"warmup must be a number of epochs >= 0, got {warmup!r}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.train, self.valid = train, (valid.to(self.device) if valid is not None else None)
        self.epochs, self.batch_size, self.patience, self.generator = epochs, batch_size, patience, generator
        self.steps_per_epoch = math.ceil(len(train) / batch_size)
        self.warmup_steps = round(warmup * self.steps_per_epoch)
        self.opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr)
        self.hist: dict[str, Any] = {k: [] for k in HISTORY_KEYS}
        self.step, self.epoch, self.elapsed = 0, 0, 0.0
        self.best, self.best_state, self.best_epoch, self.bad_epochs, self.stopped = -math.inf, None, None, 0, False

    history_keys = HISTORY_KEYS
    """The per-epoch entries of the history (the run record's ``curve``)."""

    @property
    def done(self) -> bool:
        """The epoch budget is spent or early stopping has fired."""
        return self.stopped or self.epoch >= self.epochs

    def run_epoch(self, bar=None) -> dict[str, float]:
        """One pass over the training data, then the validation ELBO and the early-stopping bookkeeping."""
        if self.done:
            raise RuntimeError("training is finished; nothing left to run")
        start = time.perf_counter()
        n, model = len(self.train), self.model
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        beta = kl_weight(self.step, self.warmup_steps)
        for xb in _train_batches(self.train, self.batch_size, self.device, self.generator):
            self.step += 1
            beta = kl_weight(self.step, self.warmup_steps)
            terms = model.elbo(xb, beta)
            loss = -terms.objective.mean()
            check_finite(loss, "the negative ELBO", self.step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            sums += torch.stack([terms.objective.sum(), terms.reconstruction.sum(), terms.kl.sum()]).detach().double().cpu()
            if bar is not None:
                bar.update(1)
        self.epoch += 1
        model.eval()
        nan = {"elbo": math.nan, "reconstruction": math.nan, "kl": math.nan}
        val = evaluate_elbo(model, self.valid) if self.valid is not None else nan
        self.elapsed += time.perf_counter() - start
        for k, v in zip(HISTORY_KEYS, (self.epoch, beta, *(sums / n).tolist(), val["elbo"], val["reconstruction"],
                                       val["kl"], self.elapsed)):
            self.hist[k].append(v)
        if self.valid is not None and beta >= 1.0:
            if val["elbo"] > self.best:
                self.best, self.best_epoch, self.bad_epochs = val["elbo"], self.epoch, 0
                self.best_state = copy.deepcopy(model.state_dict())
            else:
                self.bad_epochs += 1
                self.stopped = self.bad_epochs >= self.patience
        return val

    def finish(self) -> dict[str, Any]:
        """Restore the best weights (if early stopping tracked any) and return the history."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        hist = dict(self.hist)
        hist.update(best_epoch=self.best_epoch if self.best_epoch is not None else (hist["epoch"] or [0])[-1],
                    stopped_early=self.stopped, train_seconds=self.elapsed, loaded=False)
        return hist

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit for bit (see the class docstring)."""
        return {
            "model": copy.deepcopy(self.model.state_dict()), "optimizer": copy.deepcopy(self.opt.state_dict()),
            "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, "hist": copy.deepcopy(self.hist),
            "best": self.best, "best_state": copy.deepcopy(self.best_state), "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "stopped": self.stopped, **rng_state(self.generator),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (the trainer must be built with the same settings)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.elapsed = state["step"], state["epoch"], state["elapsed"]
        self.hist = copy.deepcopy(state["hist"])
        self.best, self.best_state, self.best_epoch = state["best"], copy.deepcopy(state["best_state"]), state["best_epoch"]
        self.bad_epochs, self.stopped = state["bad_epochs"], state["stopped"]
        set_rng_state(state, self.generator)


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """The random-number states a training run depends on: the global torch (and CUDA) RNG, which draws the
    posterior samples, and ``generator``, which orders and binarizes the data (part of a trainer's state)."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generator": generator.get_state() if generator is not None else None}


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None) -> None:
    """Restore what :func:`rng_state` saved (``generator`` must be given if the run used one)."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if state.get("generator") is not None:
        if generator is None:
            raise ValueError("the saved run used a data generator; build the trainer with one")
        generator.set_state(state["generator"])


def train_vae(
    model: VAE,
    train: ImageData | torch.Tensor,
    valid: torch.Tensor | None = None,
    epochs: int = 100,
    batch_size: int = 100,
    lr: float = 5e-4,
    warmup: float = 100,
    patience: int = 50,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
    optimizer: str = "adam",
) -> dict[str, Any]:
    """Fit a VAE with Adam on the β-weighted ELBO, KL warm-up and early stopping (chapter 7).

    ``train`` is an :class:`~mvl.ae.mnist.ImageData` (dynamically binarized batches, fresh every epoch) or
    a tensor ``[n, D]``; ``valid`` a fixed tensor (e.g. the statically binarized validation set). β rises
    linearly over the first ``warmup`` epochs (:func:`kl_weight`, per update); once β = 1, the validation
    ELBO is checked after every epoch, the best weights are kept, and training stops after ``patience``
    epochs without improvement; the best weights are restored at the end (the recipe of Tomczak &
    Welling, 2018: warm-up 100 epochs, lr 5·10⁻⁴, batch 100, patience 50). ``optimizer="adamnormgrad"``
    uses the released code's :class:`AdamNormGrad` instead of Adam. The loop is :class:`VAETrainer`;
    ``python -m mvl.train`` runs the same loop resumably.

    If ``checkpoint`` names an existing file, the weights and history stored there are loaded instead of
    training (``history["loaded"]`` is then True; a file that does not fit the model is ignored with a
    warning); otherwise the trained model is saved there.

    Returns the history: per epoch ``epoch``, ``beta``, ``train_objective``, ``train_reconstruction``,
    ``train_kl``, ``valid_elbo``, ``valid_reconstruction``, ``valid_kl``, ``seconds`` (cumulative), and
    ``best_epoch``, ``stopped_early``, ``train_seconds``, ``loaded``.
    """
    trainer = VAETrainer(model, train, valid, epochs, batch_size, lr, warmup, patience, device, generator,
                         optimizer=optimizer)
    if checkpoint is not None and Path(checkpoint).exists():
        try:
            history = load_checkpoint(checkpoint, model)
        except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as err:
            warnings.warn(f"ignoring the unreadable or incompatible checkpoint {checkpoint} ({err}); training anew",
                          stacklevel=2)
        else:
            history["loaded"] = True
            return history
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * trainer.steps_per_epoch, desc=desc or "VAE", leave=False)
    while not trainer.done:
        val = trainer.run_epoch(bar)
        if bar is not None:
            bar.set_postfix(epoch=trainer.epoch, beta=f"{trainer.hist['beta'][-1]:.2f}", valid_elbo=f"{val['elbo']:.2f}")
    if bar is not None:
        bar.close()
    hist = trainer.finish()
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, hist)
    return hist


CHECKPOINT_FORMAT = 2
"""Bumped whenever what a checkpoint of :func:`train_vae` means changes; part of every cache key."""


def checkpoint_path(name: str, config: Mapping[str, Any], root: str | Path | None = None) -> Path:
    """``<cache>/checkpoints/<name>-<hash>.pt``: one file per distinct training configuration.

    The hash covers every entry of ``config`` (pass all the knobs that affect the result), the library
    version and :data:`CHECKPOINT_FORMAT`, so a changed knob or a new library never reloads stale weights.
    """
    from .. import __version__

    keyed = {k: config[k] for k in sorted(config)} | {"_mvl_version": __version__, "_format": CHECKPOINT_FORMAT}
    text = json.dumps(keyed, sort_keys=True, default=str)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    base = Path(root) if root is not None else data_dir()
    return base / "checkpoints" / f"{name}-{digest}.pt"


def save_checkpoint(path: str | Path, model: nn.Module, history: Mapping[str, Any] | None = None) -> None:
    """Save the weights (on the CPU) and the training history, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save({"state_dict": state, "history": dict(history or {})}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load weights saved by :func:`save_checkpoint` into ``model`` (on its device); return the history."""
    device = next(model.parameters()).device
    blob = torch.load(Path(path), map_location=device, weights_only=True)
    model.load_state_dict(blob["state_dict"])
    return dict(blob["history"])


__all__ = [
    "ELBO", "VAE", "VAETrainer", "BernoulliDecoder", "GatedDense", "GaussianEncoder", "active_units", "build_vae",
    "checkpoint_path", "elbo_surgery", "elu_mlp", "evaluate_elbo", "variance_explained", "gated_mlp", "kl_weight", "load_checkpoint", "per_unit_rate", "rng_state", "save_checkpoint", "set_rng_state",
    "train_vae",
]
