"""Latent distributions of the auto-encoder chapters: Gaussian posteriors and the prior interface.

Every prior is an ``nn.Module`` with two methods,

* ``log_prob(z)``: ``[..., d] -> [...]``, differentiable in ``z`` and in the prior's parameters;
* ``sample(n)``: ``-> [n, d]``, drawn without gradient (for figures and sample quality),

and the attribute ``dim``. Normalized priors (:class:`StandardNormal`, :class:`VampPrior`, chapter 7)
return exact log densities, so the ELBO and the importance-sampled likelihood of :mod:`mvl.ae.vae` are
proper bounds. A later prior only needs the same two methods: an energy-based prior returns ``-E(z)`` and
sets ``normalized = False`` (its log partition function is then a separate problem, chapter 8), or, like
:class:`GRBM`, returns −E(z) − log Z with an exact or stored AIS log Z and says by ``normalized`` whether it
can; a prior on
the sphere returns the log density with respect to the sphere's surface measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mean, exp(logvar)) of each coordinate, not summed (arguments broadcast)."""
    return -0.5 * (LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar))


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mean, diag(exp(logvar))), summed over the last dimension (arguments broadcast)."""
    return gaussian_log_density(z, mean, logvar).sum(-1)


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

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-dimensional marginals p(z_u) as equally weighted Gaussian mixtures: ``(means, logvars)``,
        each ``[K, d]`` (for :func:`mvl.ae.vae.per_unit_rate`); priors whose marginals are not of this form
        raise ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} has no Gaussian-mixture marginals")


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

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One component, N(0, 1) in every unit."""
        zero = self._ref.new_zeros(1, self.dim)
        return zero, zero


class MixtureOfGaussians(Prior):
    """A mixture of K diagonal Gaussians with learnable means and log-variances and equal weights (chapter 7).

    The ablation of Tomczak & Welling (2018, section 4) that separates "a prior with many parameters" from
    "a prior coupled to the encoder": it has as many components as the VampPrior but its components are
    free parameters, not the encoder's posteriors at pseudo-inputs. Means start N(0, I) (seeded by
    ``generator``), log-variances at 0. ``log_prob`` is :func:`mixture_log_prob` (float64 inside).
    """

    def __init__(self, dim: int, n_components: int, generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("dim", dim), ("n_components", n_components)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.dim, self.n_components = dim, n_components
        self.means = nn.Parameter(torch.randn(n_components, dim, generator=generator))
        self.logvars = nn.Parameter(torch.zeros(n_components, dim))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_k log N(z; m_k, diag e^{s_k}) − log K, for ``z`` of shape ``[..., d]``."""
        return mixture_log_prob(z, self.means, self.logvars)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Pick a component uniformly, then sample it."""
        k = torch.randint(0, self.n_components, (_check_n(n),), device=self.means.device)
        return DiagonalGaussian(self.means[k], self.logvars[k]).rsample()

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's own components, unit by unit (a diagonal mixture's marginals are 1-D mixtures)."""
        return self.means, self.logvars


class VampPrior(Prior):
    """The variational mixture of posteriors prior (Tomczak & Welling, 2018, eq. 9; chapter 7).

    p(z) = (1/K) Σ_k q(z | u_k): the encoder's posteriors at K learned pseudo-inputs u_k. ``encoder`` maps
    ``[K, D]`` inputs to a :class:`DiagonalGaussian`; it is the VAE's own encoder (shared, not copied).
    Pseudo-inputs are stored as unconstrained parameters w_k with u_k = sigmoid(w_k), so that they stay in
    [0, 1]. (The paper's code clamps with a hard tanh instead, whose gradient vanishes at exactly 0 or 1,
    i.e. on every background pixel of a pseudo-input initialised from data.) ``init`` is a tensor ``[K, D]``
    of training images in [0, 1] (squeezed into [0.02, 0.98]; the recommended start) or ``"random"``
    (pixels N(0.05, 0.01²), the paper's default for MNIST). ``learn_pseudo_inputs=False`` keeps them fixed
    at ``init`` (the ablation of chapter 7: the prior is then the aggregated posterior of K fixed images).
    ``bounded=False`` is for real-valued data (the 2-D toys of chapter 8): u_k = w_k, unconstrained, ``init``
    any real tensor ``[K, D]`` (``"random"``: N(0, I)).
    """

    def __init__(self, encoder: Callable[[torch.Tensor], DiagonalGaussian], n_components: int, input_dim: int,
                 init: torch.Tensor | str = "random", generator: torch.Generator | None = None,
                 learn_pseudo_inputs: bool = True, bounded: bool = True):
        super().__init__()
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"the number of pseudo-inputs must be a positive integer, got {n_components!r}")
        if isinstance(init, str):
            if init != "random":
                raise ValueError(f"init must be a tensor of K training images or 'random', got {init!r}")
            noise = torch.randn(n_components, input_dim, generator=generator)
            pixels = 0.05 + 0.01 * noise if bounded else noise
        else:
            if tuple(init.shape) != (n_components, input_dim):
                raise ValueError(f"init must have shape {(n_components, input_dim)}, got {tuple(init.shape)}")
            if bounded and (init.min() < 0 or init.max() > 1):
                raise ValueError("init images must have pixel values in [0, 1]")
            pixels = init.detach().float()
        ref = next(iter(encoder.parameters()), None) if isinstance(encoder, nn.Module) else None
        pixels = pixels.to(ref) if ref is not None else pixels  # the encoder's dtype and device
        self.encoder, self.bounded = encoder, bool(bounded)
        weights = torch.logit(pixels.clamp(0.02, 0.98)) if bounded else pixels.clone()
        if learn_pseudo_inputs:
            self.pseudo_weights = nn.Parameter(weights)
        else:  # frozen pseudo-inputs (chapter 7's ablation): a buffer, saved with the model but never trained
            self.register_buffer("pseudo_weights", weights)
        self.n_components = n_components
        with torch.no_grad():
            self.dim = int(encoder(self.pseudo_inputs()[:1]).mean.shape[-1])

    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs u_k = sigmoid(w_k) in (0, 1) (w_k itself if not ``bounded``), shape ``[K, D]``."""
        return torch.sigmoid(self.pseudo_weights) if self.bounded else self.pseudo_weights

    def components(self) -> DiagonalGaussian:
        """The mixture components q(z | u_k), a batch of K diagonal Gaussians."""
        return self.encoder(self.pseudo_inputs())

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The components q(z | u_k), unit by unit."""
        comp = self.components()
        return comp.mean, comp.logvar

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


class GRBM(Prior):
    """The Gaussian–Bernoulli RBM prior (seed 003 eq. 12; Liao et al., 2022; chapter 8).

    Visible units z ∈ ℝᴰ, hidden units h ∈ {0, 1}ᴴ, joint energy
    E(z, h) = ½ Σᵢ (zᵢ − μᵢ)²/σᵢ² − (z/σ²)ᵀ W h − bᵀh, so that z | h ~ N(μ + Wh, diag σ²) and
    p(hⱼ = 1 | z) = sigmoid((Wᵀ(z/σ²))ⱼ + bⱼ). Summing h out gives the free energy of eq. (12),

        F(z) = ½ Σᵢ (zᵢ − μᵢ)²/σᵢ² − Σⱼ softplus((Wᵀ(z/σ²))ⱼ + bⱼ),    p(z) = exp(−F(z)) / Z,

    a mixture of 2ᴴ Gaussians with shared covariance diag σ². Parameters: ``W`` [D, H] (initialised
    N(0, ``init_scale``²)), ``b`` [H], ``mu`` [D] (zeros) and ``log_var`` = log σ² [D] (zeros).

    The GRBM is an energy in the library's sense: ``grbm(z)`` is F(z) per sample (``[batch, D] → [batch]``),
    so :func:`mvl.objectives.sm_sliced`, :func:`~mvl.objectives.sm_mvl` and
    :func:`~mvl.objectives.sm_denoising` train it unchanged. F is per sample, never divided by the batch
    size (one public implementation does, which silently rescales every step size by the batch size).

    ``log_prob`` is always normalized. With at most ``max_exact_hidden`` (20) hidden units it uses
    :meth:`log_partition_exact`; beyond, it uses the AIS estimate stored by :meth:`estimate_log_partition`,
    and raises if there is none or if the parameters changed since (compared exactly with a snapshot).
    ``normalized`` says whether ``log_prob`` can be evaluated now. ``unnormalized_log_prob`` is −F(z).
    """

    max_exact_hidden: int = 20

    def __init__(self, n_visible: int, n_hidden: int, init_scale: float = 0.1,
                 generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("n_visible", n_visible), ("n_hidden", n_hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale >= 0):
            raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
        self.dim, self.n_visible, self.n_hidden = n_visible, n_visible, n_hidden
        self.W = nn.Parameter(init_scale * torch.randn(n_visible, n_hidden, generator=generator))
        self.b = nn.Parameter(torch.zeros(n_hidden))
        self.mu = nn.Parameter(torch.zeros(n_visible))
        self.log_var = nn.Parameter(torch.zeros(n_visible))
        self.log_z_ais: float | None = None
        self.log_z_ais_se: float | None = None
        self._ais_snapshot: list[torch.Tensor] | None = None

    def _check_z(self, z: torch.Tensor) -> None:
        if not torch.is_tensor(z) or z.dim() < 1 or z.shape[-1] != self.n_visible:
            raise ValueError(f"z must be a tensor [..., {self.n_visible}], got {getattr(z, 'shape', type(z))}")

    def hidden_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The logits (Wᵀ(z/σ²))ⱼ + bⱼ of p(hⱼ = 1 | z), ``[..., H]``."""
        return (z * torch.exp(-self.log_var)) @ self.W + self.b

    def free_energy(self, z: torch.Tensor) -> torch.Tensor:
        """F(z) of seed 003 eq. (12) per sample: ``[..., D] → [...]`` (no averaging over the batch)."""
        self._check_z(z)
        quad = 0.5 * ((z - self.mu) ** 2 * torch.exp(-self.log_var)).sum(-1)
        return quad - F.softplus(self.hidden_logits(z)).sum(-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The energy of the library's objectives: F(z), ``[batch, D] → [batch]``."""
        return self.free_energy(z)

    def unnormalized_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """−F(z) = log p(z) + log Z (what the partition-free bound of seed 003 §2.3 uses)."""
        return -self.free_energy(z)

    def log_partition_exact(self, chunk: int = 4096) -> torch.Tensor:
        """log Z in closed form (chapter 8): integrate z out of exp(−E(z, h)) and sum the 2ᴴ hidden states,

            log Z = (D/2) log 2π + Σᵢ log σᵢ + logsumexp_h [bᵀh + Σᵢ ((μ + Wh)ᵢ² − μᵢ²)/(2σᵢ²)].

        Differentiable in the parameters; the states are enumerated in chunks of ``chunk``. The cost is
        2ᴴ·D·H, so beyond ``max_exact_hidden`` hidden units it raises a ``ValueError``: estimate log Z by
        annealed importance sampling instead (:meth:`estimate_log_partition`, :mod:`mvl.ais`).
        """
        H = self.n_hidden
        if H > self.max_exact_hidden:
            raise ValueError(
                f"exact log Z enumerates 2^{H} hidden states; it is limited to {self.max_exact_hidden} hidden "
                f"units. Estimate log Z by annealed importance sampling: grbm.estimate_log_partition(...) "
                f"(mvl.ais.grbm_log_partition)."
            )
        precision = torch.exp(-self.log_var)
        bits = torch.arange(H, device=self.W.device)
        terms = []
        for start in range(0, 2**H, chunk):
            idx = torch.arange(start, min(start + chunk, 2**H), device=self.W.device)
            h = ((idx[:, None] >> bits) & 1).to(self.W.dtype)  # [chunk, H]
            wh = h @ self.W.T  # [chunk, D]
            terms.append(torch.logsumexp(h @ self.b + 0.5 * ((2 * self.mu + wh) * wh * precision).sum(-1), 0))
        const = 0.5 * self.n_visible * LOG_2PI + 0.5 * self.log_var.sum()
        return const + torch.logsumexp(torch.stack(terms), 0)

    def _parameters_now(self) -> list[torch.Tensor]:
        return [p.detach() for p in (self.W, self.b, self.mu, self.log_var)]

    def _matches(self, snapshot: list[torch.Tensor] | None) -> bool:
        return snapshot is not None and all(old.shape == new.shape and torch.equal(old.to(new), new)
                                            for old, new in zip(snapshot, self._parameters_now()))

    def ais_is_current(self) -> bool:
        """Whether a stored AIS estimate exists and the parameters are exactly those it was computed for."""
        return self._matches(self._ais_snapshot)

    def estimate_log_partition(self, n_temperatures: int = 1000, n_chains: int = 100, kernel: str = "hmc",
                               **kwargs):
        """Estimate log Z by AIS (:func:`mvl.ais.grbm_log_partition`, same arguments) and store it in
        ``log_z_ais`` and its delta-method standard error in ``log_z_ais_se``, with a snapshot of the
        parameters so that :meth:`log_prob` refuses the value once they change. Returns the
        :class:`mvl.ais.AISResult`. AIS's log Z is biased low (a stochastic lower bound), so ``log_prob``
        with it is biased high by about that bias.
        """
        from ..ais import grbm_log_partition

        result = grbm_log_partition(self, n_temperatures, n_chains, kernel, **kwargs)
        self.log_z_ais, self.log_z_ais_se = float(result.log_z), float(result.log_z_se)
        self._ais_snapshot = [p.clone() for p in self._parameters_now()]
        return result

    @property
    def normalized(self) -> bool:  # type: ignore[override]
        """True when :meth:`log_prob` can be evaluated: exact log Z, or a current AIS estimate."""
        return self.n_hidden <= self.max_exact_hidden or self.ais_is_current()

    def log_partition(self) -> torch.Tensor | float:
        """The log Z that :meth:`log_prob` uses: exact if possible (cached under ``torch.no_grad`` until a
        parameter changes), else the current AIS estimate."""
        if self.n_hidden <= self.max_exact_hidden:
            if torch.is_grad_enabled():  # differentiable: recompute
                return self.log_partition_exact()
            cache = getattr(self, "_exact_cache", None)  # without gradients, reuse it while the parameters are unchanged
            if cache is None or not self._matches(cache[0]):
                cache = ([p.clone() for p in self._parameters_now()], self.log_partition_exact())
                self._exact_cache = cache
            return cache[1]
        if self._ais_snapshot is None:
            raise RuntimeError(
                f"this GRBM has {self.n_hidden} hidden units, too many for the exact log Z, and no AIS "
                f"estimate: call grbm.estimate_log_partition(...) first (log_prob is never unnormalized)."
            )
        if not self.ais_is_current():
            raise RuntimeError(
                "the stored AIS estimate of log Z is stale: the GRBM's parameters changed since "
                "estimate_log_partition was called. Call it again before log_prob."
            )
        return self.log_z_ais

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = −F(z) − log Z, normalized (:meth:`log_partition`); ``[..., D] → [...]``. With the
        exact log Z it is differentiable in all parameters; an AIS log Z enters as a constant."""
        return -self.free_energy(z) - self.log_partition()

    def _langevin_given_h(self, z: torch.Tensor, mean: torch.Tensor, step: float, mh: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One (optionally MH-corrected) Langevin step on z | h ~ N(mean, σ²), preconditioned by σ²."""
        var = torch.exp(self.log_var)
        z_new = z - step * (z - mean) + math.sqrt(2 * step) * var.sqrt() * torch.randn_like(z)
        if not mh:
            return z_new, torch.ones(z.shape[0], dtype=z.dtype, device=z.device)

        def log_q(to, frm):  # log density (up to a constant) of proposing `to` from `frm`
            return -((to - frm + step * (frm - mean)) ** 2 / var).sum(-1) / (4 * step)

        def log_pi(v):
            return -0.5 * ((v - mean) ** 2 / var).sum(-1)

        log_alpha = log_pi(z_new) - log_pi(z) + log_q(z, z_new) - log_q(z_new, z)
        accept = torch.log(torch.rand_like(log_alpha)) < log_alpha
        return torch.where(accept[:, None], z_new, z), torch.exp(torch.clamp(log_alpha, max=0.0))

    @torch.no_grad()
    def sample(self, n: int, n_steps: int = 100, step_size: float = 0.1, mh: bool = False, n_langevin: int = 1,
               init: torch.Tensor | None = None) -> torch.Tensor:
        """Gibbs–Langevin sampling (Liao et al., 2022; chapter 8), ``[n, D]``. Seed 003 eq. (13) runs unadjusted
        Langevin on the free energy instead; using the hidden units makes every step an exact Gaussian problem.

        Each of ``n_steps`` sweeps draws h ~ p(h | z) exactly, then takes ``n_langevin`` Langevin steps on
        z | h ~ N(μ + Wh, σ²), preconditioned by σ²: z ← z − s (z − μ − Wh) + √(2s) σ ⊙ ξ with s =
        ``step_size`` (dimensionless, so the sampler does not depend on the scale of z). With ``mh=True``
        each step is Metropolis–Hastings corrected (MALA on z | h), so the chain leaves p(z) exactly
        invariant; without, the unadjusted step inflates the conditional variance by 1/(1 − s/2), a bias
        that vanishes as s → 0 (0 < s < 2 is required for stability). Chains start at ``init`` ``[n, D]`` or
        at draws from N(μ, σ²). The mean acceptance probability of the last call is in
        ``last_acceptance`` (1 without MH).
        """
        _check_n(n)
        for name, v in (("n_steps", n_steps), ("n_langevin", n_langevin)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not 0 < step_size < 2:
            raise ValueError(f"step_size must be in (0, 2) (it is in units of σ²; the unadjusted chain "
                             f"diverges at 2), got {step_size!r}")
        if init is None:
            z = self.mu + torch.exp(0.5 * self.log_var) * torch.randn(n, self.n_visible, dtype=self.W.dtype,
                                                                      device=self.W.device)
        else:
            if tuple(init.shape) != (n, self.n_visible):
                raise ValueError(f"init must have shape {(n, self.n_visible)}, got {tuple(init.shape)}")
            z = init.detach().to(self.W)
        acc = torch.zeros((), dtype=torch.float64)
        for _ in range(n_steps):
            h = torch.bernoulli(torch.sigmoid(self.hidden_logits(z)))
            mean = self.mu + h @ self.W.T
            for _ in range(n_langevin):
                z, a = self._langevin_given_h(z, mean, float(step_size), mh)
                acc += a.double().mean()
        self.last_acceptance = float(acc) / (n_steps * n_langevin)
        return z


__all__ = ["DiagonalGaussian", "GRBM", "MixtureOfGaussians", "Prior", "StandardNormal", "VampPrior",
           "gaussian_log_density", "gaussian_log_prob", "mixture_log_prob"]
