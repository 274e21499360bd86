"""The unit sphere Sⁿ ⊂ Rⁿ⁺¹ as a Riemannian manifold, and von Mises–Fisher densities on it (chapter 6).

Points are stored as embedded unit vectors ``y`` of shape ``[batch, n+1]``; all densities are densities
with respect to the volume (Hausdorff) measure of the sphere, the base measure of the paper (section 2.1).
Computations that need coordinates use the two **stereographic charts**:

* a point of the closed upper hemisphere (y_{n+1} ≥ 0) is projected from the south pole,
  x = y_{1:n} / (1 + y_{n+1}),
* a point of the lower hemisphere from the north pole, x = y_{1:n} / (1 − y_{n+1}),

so that every point's chart coordinate lies in the closed unit ball ‖x‖ ≤ 1. Both charts carry the same
conformal metric G(x) = λ(x)² I with λ(x) = 2 / (1 + ‖x‖²), and both extend to all of Rⁿ (everything
except the pole they project from), so a small Langevin step taken in a point's chart never leaves it
(paper, appendix C, footnote 7). The chart sign ``s = ±1`` (+1: upper hemisphere) is carried alongside x.

An *energy* is any callable on **embedded** points (``[batch, n+1] → [batch]``), e.g. an MLP on Rⁿ⁺¹.
Every quantity here only evaluates it at points of the sphere (through :meth:`Sphere.from_chart`), so
nothing depends on how the energy extends off the sphere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.special import ive

from .energies import Energy, evaluate_energy, laplacian


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _tolerance(dtype: torch.dtype) -> float:
    return 10 * math.sqrt(torch.finfo(dtype).eps)


class Sphere:
    """The unit sphere Sⁿ = {y ∈ Rⁿ⁺¹ : ‖y‖ = 1} with the metric induced by Rⁿ⁺¹ (chapter 6).

    ``n`` is the intrinsic dimension (S¹ is the circle, ``Sphere(1)``; S² the 2-sphere, ``Sphere(2)``).
    The chart formulas are those of the stereographic projection; see the module docstring.
    """

    def __init__(self, n: int):
        self.n = _check_positive_int("the sphere's dimension n", n)
        self.ambient_dim = self.n + 1

    def __repr__(self) -> str:
        return f"Sphere({self.n})"

    # ----------------------------------------------------------------------------------------- points
    def check_points(self, y: torch.Tensor) -> torch.Tensor:
        """Raise ``ValueError`` unless ``y`` is a floating-point batch ``[batch, n+1]`` of unit vectors."""
        if not torch.is_tensor(y) or y.dim() != 2 or y.shape[1] != self.ambient_dim:
            raise ValueError(
                f"points on S^{self.n} must be a tensor of shape [batch, {self.ambient_dim}] (embedded unit "
                f"vectors), got {tuple(getattr(y, 'shape', ())) or type(y)}"
            )
        if not torch.is_floating_point(y):
            raise ValueError(f"points must be a floating-point tensor, got dtype {y.dtype}")
        dev = (y.detach().norm(dim=-1) - 1).abs().max().item() if len(y) else 0.0
        if not dev <= _tolerance(y.dtype):
            raise ValueError(
                f"points must lie on the unit sphere (‖y‖ = 1); the largest deviation is {dev:.3g}. "
                f"Normalize them first, e.g. with sphere.project(y)."
            )
        return y

    @staticmethod
    def project(y: torch.Tensor) -> torch.Tensor:
        """The nearest point of the sphere, y / ‖y‖ (for nonzero y)."""
        return y / y.norm(dim=-1, keepdim=True)

    def uniform(
        self, n_samples: int, dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n_samples`` points drawn uniformly (w.r.t. the volume measure): normalized standard Gaussians."""
        n_samples = _check_positive_int("n_samples", n_samples)
        g = torch.randn(n_samples, self.ambient_dim, dtype=dtype, generator=generator)
        return self.project(g)

    def log_volume(self) -> float:
        """log |Sⁿ| = log(2π^{(n+1)/2} / Γ((n+1)/2)); e.g. |S¹| = 2π, |S²| = 4π."""
        m = self.ambient_dim
        return math.log(2.0) + 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m)

    # ----------------------------------------------------------------------------------------- charts
    def to_chart(self, y: torch.Tensor, s: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stereographic coordinates of embedded points: ``(x, s)``, x = y_{1:n}/(1 + s·y_{n+1}), ‖x‖ ≤ 1.

        ``s = +1`` for the upper hemisphere (projection from the south pole), ``−1`` for the lower one.
        Passing ``s`` (a tensor of ±1, one per point) uses that chart instead of the point's own, e.g. to
        write a point in the chart of another point (the Metropolis–Hastings ratio of chapter 6); then ‖x‖
        may exceed 1, and the chart's excluded pole (y_{n+1} = −s) raises ``ValueError``.
        """
        self.check_points(y)
        last = y[:, -1]
        if s is None:
            s = torch.where(last >= 0, torch.ones_like(last), -torch.ones_like(last))
        elif s.shape != last.shape or not bool(((s == 1) | (s == -1)).all()):
            raise ValueError(f"chart signs s must be a tensor of +1/-1 of shape {tuple(last.shape)}, got {s}")
        denom = 1 + s * last
        if bool((denom <= 0).any()):
            raise ValueError("a point lies at the pole its chart projects from; use its own chart (s=None)")
        x = y[:, :-1] / denom[:, None]
        return x, s

    def from_chart(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The embedded point of chart coordinates x in chart s: y = (2x, s(1 − ‖x‖²)) / (1 + ‖x‖²).

        Defined (and differentiable) for every x ∈ Rⁿ; the image is always a unit vector.
        """
        if x.dim() != 2 or x.shape[1] != self.n:
            raise ValueError(f"chart coordinates on S^{self.n} must have shape [batch, {self.n}], got {tuple(x.shape)}")
        r2 = (x**2).sum(-1, keepdim=True)
        return torch.cat([2 * x, s[:, None] * (1 - r2)], dim=-1) / (1 + r2)

    def pushforward(self, x: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The differential of :meth:`from_chart` at x applied to chart vectors v: the embedded tangent vector."""
        r2 = (x**2).sum(-1, keepdim=True)
        xv = (x * v).sum(-1, keepdim=True)
        top = 2 * v / (1 + r2) - 4 * x * xv / (1 + r2) ** 2
        last = -4 * s[:, None] * xv / (1 + r2) ** 2
        return torch.cat([top, last], dim=-1)

    # ----------------------------------------------------------------------------------------- metric
    @staticmethod
    def conformal_factor(x: torch.Tensor) -> torch.Tensor:
        """λ(x)² = 4 / (1 + ‖x‖²)², the metric G(x) = λ² I of both stereographic charts. Shape ``[batch]``."""
        return 4 / (1 + (x**2).sum(-1)) ** 2

    def metric(self, x: torch.Tensor) -> torch.Tensor:
        """The metric matrices G(x) = 4/(1 + ‖x‖²)² I, shape ``[batch, n, n]``."""
        eye = torch.eye(self.n, dtype=x.dtype, device=x.device)
        return self.conformal_factor(x)[:, None, None] * eye

    def inverse_metric(self, x: torch.Tensor) -> torch.Tensor:
        """G(x)⁻¹ = (1 + ‖x‖²)²/4 I, i.e. the coefficients g^{ij}; shape ``[batch, n, n]``."""
        eye = torch.eye(self.n, dtype=x.dtype, device=x.device)
        return (1 / self.conformal_factor(x))[:, None, None] * eye

    def log_det_metric(self, x: torch.Tensor) -> torch.Tensor:
        """log|G(x)| = n log(4 / (1 + ‖x‖²)²) = 2n (log 2 − log(1 + ‖x‖²)). Shape ``[batch]``."""
        return 2 * self.n * (math.log(2.0) - torch.log1p((x**2).sum(-1)))

    @staticmethod
    def inverse_metric_divergence(x: torch.Tensor) -> torch.Tensor:
        """∂ₖg^{ik}(x) = ∂ᵢ[(1 + ‖x‖²)²/4] = (1 + ‖x‖²) xᵢ, the term of eqs. (4) and (18). Shape ``[batch, n]``."""
        return (1 + (x**2).sum(-1, keepdim=True)) * x

    # --------------------------------------------------------------------------- calculus of energies
    def chart_energy(
        self, energy: Energy, y: torch.Tensor, create_graph: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluate an energy in the points' charts: ``(x, s, E, ∂ₓE)``.

        ``x`` is a fresh leaf (so that second derivatives in x can be taken), E = energy(from_chart(x, s))
        and ∂ₓE its coordinate gradient, with the graph kept when ``create_graph=True`` (training).
        """
        x, s = self.to_chart(y.detach())
        x = x.detach().requires_grad_(True)
        e = evaluate_energy(energy, self.from_chart(x, s))
        (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
        return x, s, e, g

    def riemannian_gradient(self, energy: Energy, y: torch.Tensor) -> torch.Tensor:
        """grad E as an embedded tangent vector ``[batch, n+1]``: the push-forward of gⁱʲ∂ⱼE.

        It equals the tangential part (I − yyᵀ)∇E(y) of the Euclidean gradient of any extension of E.
        """
        x, s, _, g = self.chart_energy(energy, y, create_graph=False)
        v = g / self.conformal_factor(x)[:, None]
        return self.pushforward(x.detach(), s, v).detach()

    def squared_gradient_norm(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """‖grad E‖² = gⁱʲ∂ᵢE∂ⱼE = ‖∂ₓE‖² / λ² from the coordinate gradient g = ∂ₓE."""
        return (g**2).sum(-1) / self.conformal_factor(x)

    def laplace_beltrami_from_chart(self, x: torch.Tensor, g: torch.Tensor, lap_x: torch.Tensor) -> torch.Tensor:
        """Δ_M E = |G|^{-1/2} ∂ᵢ(|G|^{1/2} gⁱʲ ∂ⱼE) in a conformal chart, from g = ∂ₓE and lap_x = Σᵢ∂ᵢ²E:

            Δ_M E = λ⁻² [Δₓ E − 2(n − 2) xᵀ∂ₓE / (1 + ‖x‖²)]      (so Δ_M = λ⁻²Δₓ on S²).
        """
        r2 = (x**2).sum(-1)
        return (lap_x - 2 * (self.n - 2) * (x * g).sum(-1) / (1 + r2)) / self.conformal_factor(x)

    def laplace_beltrami(self, energy: Energy, y: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """The Laplace–Beltrami operator Δ_M E at embedded points, with n extra backward passes. ``[batch]``."""
        x, _, _, g = self.chart_energy(energy, y, create_graph=True)
        lap = laplacian(g, x, create_graph=True)  # (create_graph=False would free the graph after one pass)
        out = self.laplace_beltrami_from_chart(x, g, lap)
        return out if create_graph else out.detach()

    # ------------------------------------------------------------------------ Riemannian Langevin
    def langevin_drift(
        self, x: torch.Tensor, g: torch.Tensor, beta: float = 1.0, log_det_sign: int = 1
    ) -> torch.Tensor:
        """The chart drift of Riemannian Langevin dynamics targeting q^β ∝ exp(−βE) w.r.t. volume (chapter 6):

            Vⁱ = gⁱʲ ∂ⱼ(−βE + ½ log|G|) + ∂ⱼgⁱʲ = −β λ⁻² ∂ᵢE + (1 − n/2)(1 + ‖x‖²) xᵢ.

        This is the drift whose Fokker–Planck equation has q^β (times the volume element √|G|) as its
        stationary Lebesgue density in the chart; the paper's eqs. (4) and (18) print the log|G| term with
        the opposite sign. ``log_det_sign=-1`` uses that sign, **only to demonstrate** that it samples the
        wrong distribution (density ∝ q^β (1 + ‖x‖²)^{2n} w.r.t. volume in the chart of each hemisphere).
        """
        if log_det_sign not in (1, -1):
            raise ValueError(f"log_det_sign must be +1 (correct drift) or -1 (the sign-flipped demo), got {log_det_sign!r}")
        r2 = (x**2).sum(-1, keepdim=True)
        inv = (1 + r2) ** 2 / 4
        return -beta * inv * g + (1 - log_det_sign * self.n / 2) * (1 + r2) * x

    def langevin_log_proposal(
        self, x_from: torch.Tensor, g_from: torch.Tensor, x_to: torch.Tensor, eps, beta: float = 1.0
    ) -> torch.Tensor:
        """log density w.r.t. the volume measure of the Euler–Maruyama proposal of Riemannian Langevin dynamics
        (the Metropolis–Hastings ratio of Riemannian MALA; chapters 6 and 9): the chart Gaussian
        N(x_to; x + εV(x), 2ε G(x)⁻¹) divided by the volume element √|G(x_to)|. ``g_from`` = ∂ₓE at x_from;
        ``eps`` is a float or a tensor ``[batch]`` of per-point steps (AIS adapts one per problem)."""
        eps_col = eps[:, None] if torch.is_tensor(eps) else eps
        mean = x_from + eps_col * self.langevin_drift(x_from, g_from, beta)
        var = 2 * eps / self.conformal_factor(x_from)  # 2ε λ⁻², the same in every coordinate
        log_gauss = -0.5 * self.n * torch.log(2 * math.pi * var) - ((x_to - mean) ** 2).sum(-1) / (2 * var)
        return log_gauss - 0.5 * self.log_det_metric(x_to)

    def chart_noise(self, x: torch.Tensor) -> torch.Tensor:
        """z ~ N(0, G(x)⁻¹) in the chart: a standard normal scaled by (1 + ‖x‖²)/2."""
        return torch.randn_like(x) * ((1 + (x**2).sum(-1, keepdim=True)) / 2)

    # ------------------------------------------------------------------------ numerical integration
    def grid(self, resolution: int = 200, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """A quadrature rule on S¹ or S²: points ``[m, n+1]`` and weights ``[m]`` that sum to |Sⁿ|.

        S¹: ``resolution`` equally spaced angles (spectrally accurate for smooth periodic integrands).
        S²: Gauss–Legendre nodes in u = cos(colatitude) (``resolution`` of them) times ``2·resolution``
        equally spaced longitudes, the product rule that is exact for spherical polynomials of degree
        < 2·resolution. Raises ``ValueError`` for n > 2.
        """
        resolution = _check_positive_int("resolution", resolution)
        if self.n == 1:
            t = torch.arange(resolution, dtype=dtype) * (2 * math.pi / resolution)
            pts = torch.stack([torch.cos(t), torch.sin(t)], -1)
            w = torch.full((resolution,), 2 * math.pi / resolution, dtype=dtype)
            return pts, w
        if self.n == 2:
            u, wu = np.polynomial.legendre.leggauss(resolution)
            u, wu = torch.as_tensor(u, dtype=dtype), torch.as_tensor(wu, dtype=dtype)
            phi = torch.arange(2 * resolution, dtype=dtype) * (math.pi / resolution)
            uu, pp = torch.meshgrid(u, phi, indexing="ij")
            rho = torch.sqrt(1 - uu**2)
            pts = torch.stack([rho * pp.cos(), rho * pp.sin(), uu], -1).reshape(-1, 3)
            w = (wu[:, None] * (math.pi / resolution)).expand(-1, 2 * resolution).reshape(-1)
            return pts, w
        raise ValueError(f"grid() integrates on S^1 and S^2 only; this is S^{self.n}. Use Monte Carlo with uniform().")


def angles_to_points(theta: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Points (cos θ, sin θ) of S¹ for angles θ (float64)."""
    t = torch.as_tensor(theta, dtype=torch.float64)
    return torch.stack([torch.cos(t), torch.sin(t)], -1)


def lonlat_to_points(lon: torch.Tensor | np.ndarray, lat: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Points of S² for longitudes and latitudes in radians (any equal shapes → ``[..., 3]``, float64)."""
    lon = torch.as_tensor(lon, dtype=torch.float64)
    lat = torch.as_tensor(lat, dtype=torch.float64)
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], -1)


# --------------------------------------------------------------------------------------- von Mises–Fisher
def log_bessel_iv(order: float, kappa):
    """log I_ν(κ) computed as log(ive(ν, κ)) + κ, which neither overflows nor underflows for large κ.

    A float for a scalar κ; an array of κ gives an array (:mod:`mvl.ae.vmf` wraps this for autograd)."""
    out = np.log(ive(order, kappa)) + kappa
    return float(out) if np.ndim(out) == 0 else out


def mean_resultant_length(dim: int, kappa):
    """A_d(κ) = I_{d/2}(κ) / I_{d/2−1}(κ) = E‖·‖ of the mean direction: E[μᵀy] under vMF(μ, κ) on S^{d−1}.

    A float for a scalar κ; an array of κ gives an array (A_d(0) = 0)."""
    kappa = np.asarray(kappa, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(kappa == 0, 0.0, ive(dim / 2, kappa) / ive(dim / 2 - 1, kappa))
    return float(out) if out.ndim == 0 else out


class VonMisesFisher:
    """The von Mises–Fisher distribution on S^{d−1} ⊂ R^d (Mardia & Jupp, 2000; chapter 6):

        p(y) = C_d(κ) exp(κ μᵀy),   C_d(κ) = κ^{d/2−1} / ((2π)^{d/2} I_{d/2−1}(κ)),

    a density w.r.t. the volume measure. ``mu`` is a unit vector of length d, ``kappa ≥ 0`` the
    concentration (κ = 0 is the uniform distribution). On S¹ it is the von Mises distribution with
    density ∝ exp(κ cos(θ − θ₀)).
    """

    def __init__(self, mu: Sequence[float] | torch.Tensor, kappa: float):
        mu = torch.as_tensor(mu, dtype=torch.float64).detach().reshape(-1)
        if mu.numel() < 2:
            raise ValueError(f"mu must be a unit vector with at least 2 entries, got {mu.tolist()}")
        if abs(mu.norm().item() - 1) > 1e-6:
            raise ValueError(f"mu must be a unit vector, got norm {mu.norm().item():.6g}; divide it by its norm")
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float, np.integer, np.floating)):
            raise ValueError(f"kappa must be a number, got {kappa!r}")
        if not (math.isfinite(kappa) and kappa >= 0):
            raise ValueError(f"kappa must be finite and non-negative, got {kappa!r}")
        self.mu = mu
        self.kappa = float(kappa)
        self.dim = mu.numel()
        self.sphere = Sphere(self.dim - 1)

    def __repr__(self) -> str:
        return f"VonMisesFisher(mu={[round(v, 4) for v in self.mu.tolist()]}, kappa={self.kappa:g})"

    def log_normalizer(self) -> float:
        """log C_d(κ), computed with exponentially scaled Bessel functions (stable for large κ)."""
        d, k = self.dim, self.kappa
        if k < 1e-6:  # C_d(κ) = 1/|S^{d−1}| (1 + O(κ²)); avoids log(0) from ive's underflow
            return -self.sphere.log_volume()
        return (d / 2 - 1) * math.log(k) - (d / 2) * math.log(2 * math.pi) - log_bessel_iv(d / 2 - 1, k)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) w.r.t. the volume measure, for embedded points ``y`` ``[batch, d]``."""
        self.sphere.check_points(y)
        mu = self.mu.to(dtype=y.dtype, device=y.device)
        return self.kappa * (y @ mu) + self.log_normalizer()

    def energy(self, y: torch.Tensor) -> torch.Tensor:
        """The unnormalized energy E(y) = −κ μᵀy (any y ∈ R^d: it is the linear extension off the sphere)."""
        return -self.kappa * (y @ self.mu.to(dtype=y.dtype, device=y.device))

    def mean_resultant_length(self) -> float:
        """A_d(κ) = E[μᵀy]: the length of the mean of the samples (see :func:`mean_resultant_length`)."""
        return mean_resultant_length(self.dim, self.kappa)

    def sample(self, n_samples: int, seed: int | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Exact samples ``[n_samples, d]`` (``scipy.stats.vonmises_fisher``, Wood's algorithm)."""
        n_samples = _check_positive_int("n_samples", n_samples)
        rng = np.random.default_rng(seed)
        if self.kappa == 0:
            g = rng.standard_normal((n_samples, self.dim))
            return torch.as_tensor(g / np.linalg.norm(g, axis=1, keepdims=True), dtype=dtype)
        try:
            from scipy.stats import vonmises_fisher
        except ImportError as err:  # pragma: no cover - scipy < 1.11
            raise ImportError("sampling the von Mises-Fisher distribution needs scipy >= 1.11") from err
        out = vonmises_fisher(self.mu.numpy(), self.kappa).rvs(n_samples, random_state=rng)
        out = np.asarray(out).reshape(n_samples, self.dim)
        return self.sphere.project(torch.as_tensor(out, dtype=dtype))


class VonMisesFisherMixture:
    """A mixture Σₖ wₖ vMF(μₖ, κₖ) on S^{d−1} (chapter 6): the targets of the paper's Figures 2 and 4.

    ``weights`` are positive and are normalized to sum to one; ``mus`` is a list of unit vectors and
    ``kappas`` a list of concentrations of the same length.
    """

    def __init__(self, weights: Sequence[float], mus: Sequence[Sequence[float]], kappas: Sequence[float]):
        weights = np.asarray(weights, dtype=float).reshape(-1)
        if not (len(weights) == len(mus) == len(kappas)) or len(weights) == 0:
            raise ValueError(
                f"weights, mus and kappas must have the same positive length, got {len(weights)}, {len(mus)}, {len(kappas)}"
            )
        if not (np.all(np.isfinite(weights)) and np.all(weights > 0)):
            raise ValueError(f"mixture weights must be positive, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        self.components = [VonMisesFisher(m, k) for m, k in zip(mus, kappas)]
        dims = {c.dim for c in self.components}
        if len(dims) != 1:
            raise ValueError(f"all components must live on the same sphere, got dimensions {sorted(dims)}")
        self.dim = dims.pop()
        self.sphere = Sphere(self.dim - 1)

    def __repr__(self) -> str:
        parts = ", ".join(f"{w:.3g}·{c!r}" for w, c in zip(self.weights, self.components))
        return f"VonMisesFisherMixture({parts})"

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) = logsumexp_k(log wₖ + log vMF(y; μₖ, κₖ)) w.r.t. the volume measure."""
        logw = torch.as_tensor(np.log(self.weights), dtype=y.dtype, device=y.device)
        comps = torch.stack([c.log_prob(y) for c in self.components], -1)
        return torch.logsumexp(comps + logw, -1)

    def energy(self, y: torch.Tensor) -> torch.Tensor:
        """E(y) = −log p(y) on the sphere (extended off it by the same formula)."""
        logw = torch.as_tensor(np.log(self.weights), dtype=y.dtype, device=y.device)
        comps = torch.stack(
            [c.kappa * (y @ c.mu.to(dtype=y.dtype, device=y.device)) + c.log_normalizer() for c in self.components], -1
        )
        return -torch.logsumexp(comps + logw, -1)

    def sample(self, n_samples: int, seed: int | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Exact samples: a component index per sample, then that component's vMF sample (shuffled)."""
        n_samples = _check_positive_int("n_samples", n_samples)
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n_samples, self.weights)
        parts = [
            c.sample(int(m), seed=int(rng.integers(2**31)), dtype=dtype) for c, m in zip(self.components, counts) if m > 0
        ]
        out = torch.cat(parts)
        return out[torch.as_tensor(rng.permutation(n_samples))]


def log_density_on_grid(log_density: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Normalize an unnormalized log density on a quadrature grid: log q̂ = f − log Σ wᵢ exp(fᵢ)."""
    with torch.no_grad():
        f = log_density(points).reshape(-1)
    return f - torch.logsumexp(f + torch.log(weights), 0)


def kl_and_correlation(log_p: torch.Tensor, log_q: torch.Tensor, weights: torch.Tensor) -> tuple[float, float]:
    """KL(p‖q) = ∫ p log(p/q) dV and the correlation of log p and log q under the uniform measure,
    both by quadrature on a grid with weights ``weights`` (log p and log q normalized on the same grid).
    """
    p = torch.exp(log_p)
    kl = (weights * p * (log_p - log_q)).sum().item()
    w = weights / weights.sum()
    mp, mq = (w * log_p).sum(), (w * log_q).sum()
    cov = (w * (log_p - mp) * (log_q - mq)).sum()
    corr = cov / torch.sqrt((w * (log_p - mp) ** 2).sum() * (w * (log_q - mq) ** 2).sum())
    return kl, corr.item()


def hellinger_on_grid(log_p: torch.Tensor, log_q: torch.Tensor, weights: torch.Tensor) -> float:
    """The Hellinger distance H(p, q) = (½∫(√p − √q)² dV)^{1/2} ∈ [0, 1] by quadrature on a grid with weights
    ``weights`` (log p and log q normalized on that grid, as :func:`log_density_on_grid` returns them)."""
    bc = (weights * torch.exp(0.5 * (log_p + log_q))).sum().item()  # Bhattacharyya coefficient ∫√(pq) dV
    return math.sqrt(max(0.0, 1.0 - bc))


def riemannian_fisher_divergence(
    sphere: Sphere, energy_p: Energy, energy_q: Energy, points: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[float, float]:
    """D_F(p‖q) = ½ E_p‖grad log p − grad log q‖² with the Riemannian gradient (chapter 6, eq-ch6-rsm), for
    p ∝ exp(−energy_p) and q ∝ exp(−energy_q) (normalizing constants do not matter).

    With ``weights=None``, ``points`` are samples of p and the result is the Monte Carlo mean and its
    standard error. With quadrature ``weights`` on a grid (:meth:`Sphere.grid`), p is weighted by
    exp(−energy_p) normalized on the grid and the standard error is returned as 0.
    """
    diff = sphere.riemannian_gradient(energy_p, points) - sphere.riemannian_gradient(energy_q, points)
    half_sq = 0.5 * (diff**2).sum(-1)
    if weights is None:
        return half_sq.mean().item(), (half_sq.std() / math.sqrt(len(half_sq))).item()
    with torch.no_grad():
        log_p = log_density_on_grid(lambda v: -evaluate_energy(energy_p, v), points, weights)
    return (weights * torch.exp(log_p) * half_sq).sum().item(), 0.0
