"""Latent distributions of the auto-encoder chapters: Gaussian posteriors and the prior interface.

Every prior is an ``nn.Module`` with two methods,

* ``log_prob(z)``: ``[..., d] -> [...]``, differentiable in ``z`` and in the prior's parameters;
* ``sample(n)``: ``-> [n, d]``, drawn without gradient (for figures and sample quality),

and the attribute ``dim``. Normalized priors (:class:`StandardNormal`, :class:`VampPrior`, chapter 7)
return exact log densities, so the ELBO and the importance-sampled likelihood of :mod:`mvl.ae.vae` are
proper bounds. A later prior only needs the same two methods: an energy-based prior returns ``-E(z)`` and
sets ``normalized = False`` (its log partition function is then a separate problem, chapter 8); a prior on
the sphere returns the log density with respect to the sphere's surface measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mean, diag(exp(logvar))), summed over the last dimension (arguments broadcast)."""
    return -0.5 * (LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def mixture_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k N(z | m_k, diag σ²_k) for ``z`` ``[..., d]`` and components ``mean``, ``logvar`` ``[K, d]``.

    The quadratic forms Σᵢ (zᵢ − m_kᵢ)²/σ²_kᵢ are expanded into matrix products, which is several times
    faster than broadcasting ``[..., K, d]``. The expansion z²/σ² − 2zm/σ² + m²/σ² subtracts terms of size
    ‖m/σ‖² (thousands for trained, narrow posteriors) to get an O(d) result, which float32 cannot do
    accurately (errors of 0.1 nats at d = 40), so the products are formed in float64 and only the result
    is returned in ``z``'s dtype. Used by the VampPrior and by the aggregated posterior (ELBO surgery).
    """
    mean, logvar, zz = mean.double(), logvar.double(), z.double()
    precision = torch.exp(-logvar)  # [K, d]
    const = -0.5 * (LOG_2PI * mean.shape[-1] + logvar.sum(-1) + (mean**2 * precision).sum(-1))
    quad = -0.5 * (zz**2) @ precision.T + zz @ (mean * precision).T  # [..., K]
    return (torch.logsumexp(quad + const, dim=-1) - math.log(mean.shape[0])).to(z.dtype)


class DiagonalGaussian:
    """A batch of diagonal Gaussians N(mean, diag(exp(logvar))), the variational posterior q(z|x) of a VAE.

    ``mean`` and ``logvar`` have shape ``[n, d]``. ``rsample(s)`` draws ``[s, n, d]`` by the
    reparameterization z = mean + exp(logvar / 2) ε (Kingma & Welling, 2014), so gradients flow to both.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        if mean.shape != logvar.shape:
            raise ValueError(f"mean and logvar must have the same shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}")
        self.mean, self.logvar = mean, logvar

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, n_samples: int | None = None) -> torch.Tensor:
        """Reparameterized samples: ``[n, d]`` if ``n_samples`` is None, else ``[n_samples, n, d]``."""
        shape = self.mean.shape if n_samples is None else (n_samples, *self.mean.shape)
        eps = torch.randn(shape, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) for ``z`` of shape ``[..., n, d]``; returns ``[..., n]``."""
        return gaussian_log_prob(z, self.mean, self.logvar)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) in closed form, ``[n]`` (used for checks; the ELBO uses the generic estimate)."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar).sum(-1)


class Prior(nn.Module):
    """The prior interface p(z): ``log_prob(z)`` and ``sample(n)`` (see the module docstring)."""

    normalized: bool = True
    dim: int

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
    return n


class StandardNormal(Prior):
    """The standard prior p(z) = N(0, I) of the original VAE (Kingma & Welling, 2014)."""

    def __init__(self, dim: int):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"the latent dimension must be a positive integer, got {dim!r}")
        self.dim = dim
        self.register_buffer("_ref", torch.zeros(()))  # follows .to(device/dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return torch.randn(_check_n(n), self.dim, device=self._ref.device, dtype=self._ref.dtype)


class VampPrior(Prior):
    """The variational mixture of posteriors prior (Tomczak & Welling, 2018, eq. 9; chapter 7).

    p(z) = (1/K) Σ_k q(z | u_k): the encoder's posteriors at K learned pseudo-inputs u_k. ``encoder`` maps
    ``[K, D]`` inputs to a :class:`DiagonalGaussian`; it is the VAE's own encoder (shared, not copied).
    Pseudo-inputs are stored as unconstrained parameters w_k with u_k = sigmoid(w_k), so that they stay in
    [0, 1]. (The paper's code clamps with a hard tanh instead, whose gradient vanishes at exactly 0 or 1,
    i.e. on every background pixel of a pseudo-input initialised from data.) ``init`` is a tensor ``[K, D]``
    of training images in [0, 1] (squeezed into [0.02, 0.98]; the recommended start) or ``"random"``
    (pixels N(0.05, 0.01²), the paper's default for MNIST).
    """

    def __init__(self, encoder: Callable[[torch.Tensor], DiagonalGaussian], n_components: int, input_dim: int,
                 init: torch.Tensor | str = "random", generator: torch.Generator | None = None):
        super().__init__()
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"the number of pseudo-inputs must be a positive integer, got {n_components!r}")
        if isinstance(init, str):
            if init != "random":
                raise ValueError(f"init must be a tensor of K training images or 'random', got {init!r}")
            pixels = 0.05 + 0.01 * torch.randn(n_components, input_dim, generator=generator)
        else:
            if tuple(init.shape) != (n_components, input_dim):
                raise ValueError(f"init must have shape {(n_components, input_dim)}, got {tuple(init.shape)}")
            if init.min() < 0 or init.max() > 1:
                raise ValueError("init images must have pixel values in [0, 1]")
            pixels = init.detach().float()
        ref = next(iter(encoder.parameters()), None) if isinstance(encoder, nn.Module) else None
        pixels = pixels.to(ref) if ref is not None else pixels  # the encoder's dtype and device
        self.encoder = encoder
        self.pseudo_weights = nn.Parameter(torch.logit(pixels.clamp(0.02, 0.98)))
        self.n_components = n_components
        with torch.no_grad():
            self.dim = int(encoder(self.pseudo_inputs()[:1]).mean.shape[-1])

    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs u_k = sigmoid(w_k) in (0, 1), shape ``[K, D]``."""
        return torch.sigmoid(self.pseudo_weights)

    def components(self) -> DiagonalGaussian:
        """The mixture components q(z | u_k), a batch of K diagonal Gaussians."""
        return self.encoder(self.pseudo_inputs())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_k log q(z | u_k) − log K, for ``z`` of shape ``[..., d]``
        (:func:`mixture_log_prob` of the components)."""
        comp = self.components()
        return mixture_log_prob(z, comp.mean, comp.logvar)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Pick a pseudo-input uniformly, then sample its posterior q(z | u_k)."""
        comp = self.components()
        k = torch.randint(0, self.n_components, (_check_n(n),), device=comp.mean.device)
        return DiagonalGaussian(comp.mean[k], comp.logvar[k]).rsample()


__all__ = ["DiagonalGaussian", "Prior", "StandardNormal", "VampPrior", "gaussian_log_prob", "mixture_log_prob"]
