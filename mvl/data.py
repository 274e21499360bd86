"""Data sets: seeded 2-D toy distributions (chapters 1–5) and their log densities where known.

Every sampler has the signature ``sampler(n, seed=None, dtype=torch.float32) -> Tensor[n, 2]``; the same
seed gives the same samples. ``seed=None`` draws from PyTorch's global generator (seeded by
:func:`mvl.profiles.setup`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
    return n


def banana(n: int, seed: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The banana distribution: x₁ ~ N(0, 2²), x₂ | x₁ ~ N(0.2(x₁² − 4), 1) (Wenliang et al., 2019)."""
    _check_n(n)
    g = _generator(seed)
    x1 = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
    x2 = 0.2 * (x1**2 - 4) + torch.randn(n, generator=g, dtype=torch.float64)
    return torch.stack([x1, x2], 1).to(dtype)


def banana_log_density(x: torch.Tensor) -> torch.Tensor:
    """The normalized log density of :func:`banana`."""
    x1, x2 = x[..., 0], x[..., 1]
    c = math.log(2 * math.pi)
    return (-0.5 * (x1 / 2) ** 2 - math.log(2) - 0.5 * c) + (-0.5 * (x2 - 0.2 * (x1**2 - 4)) ** 2 - 0.5 * c)


def cosine(n: int, seed: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The cosine distribution: x₁ ~ U(−4, 4), x₂ | x₁ ~ N(3 cos(2x₁), 1)."""
    _check_n(n)
    g = _generator(seed)
    x1 = 8.0 * torch.rand(n, generator=g, dtype=torch.float64) - 4.0
    x2 = 3.0 * torch.cos(2.0 * x1) + torch.randn(n, generator=g, dtype=torch.float64)
    return torch.stack([x1, x2], 1).to(dtype)


def cosine_log_density(x: torch.Tensor) -> torch.Tensor:
    """The normalized log density of :func:`cosine` (−∞ outside |x₁| < 4)."""
    x1, x2 = x[..., 0], x[..., 1]
    logp = -math.log(8.0) - 0.5 * (x2 - 3.0 * torch.cos(2.0 * x1)) ** 2 - 0.5 * math.log(2 * math.pi)
    return torch.where(x1.abs() < 4.0, logp, torch.full_like(logp, -math.inf))


def cosine_boundary(n: int = 401, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quadrature of the edges x₁ = ±4 of the cosine's support, for :func:`mvl.objectives.boundary_flux`.

    Returns ``(x, normal, weight)``: n nodes on each edge (x₂ on a grid of ±8 around the edge's mean
    3 cos 8, trapezoidal rule), the outward normals (±1, 0), and the weights p(±4, x₂) dx₂ with p the
    density's limit from inside, (1/8) N(x₂; 3 cos 8, 1). The weights sum to 1/4 (chapter 1).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ValueError(f"the number of nodes per edge must be an integer >= 3, got {n!r}")
    mean = 3.0 * math.cos(8.0)  # cos(2x₁) at x₁ = ±4
    x2 = torch.linspace(mean - 8.0, mean + 8.0, n, dtype=dtype)
    dx = 16.0 / (n - 1)
    w = torch.full((n,), dx, dtype=dtype)
    w[0] = w[-1] = dx / 2
    w = w * torch.exp(-0.5 * (x2 - mean) ** 2) / math.sqrt(2 * math.pi) / 8.0
    x = torch.cat([torch.stack([torch.full_like(x2, s), x2], 1) for s in (4.0, -4.0)])
    normal = torch.cat([torch.tensor([[s, 0.0]], dtype=dtype).expand(n, 2) for s in (1.0, -1.0)])
    return x, normal, torch.cat([w, w])


def eight_gaussians(
    n: int, seed: int | None = None, dtype: torch.dtype = torch.float32, radius: float = 2.0, std: float = 0.2
) -> torch.Tensor:
    """An equal mixture of eight isotropic Gaussians (std ``std``) on a circle of radius ``radius``."""
    _check_n(n)
    g = _generator(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.to(torch.float64) * (2 * math.pi / 8)
    centers = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return (centers + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).to(dtype)


def eight_gaussians_log_density(x: torch.Tensor, radius: float = 2.0, std: float = 0.2) -> torch.Tensor:
    """The normalized log density of :func:`eight_gaussians`."""
    angle = torch.arange(8, dtype=x.dtype, device=x.device) * (2 * math.pi / 8)
    centers = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    sq = ((x[..., None, :] - centers) ** 2).sum(-1)
    comp = -0.5 * sq / std**2 - math.log(2 * math.pi * std**2)
    return torch.logsumexp(comp, -1) - math.log(8)


def checkerboard(n: int, seed: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform on the black squares of a 4×4 checkerboard covering [−4, 4]² (8 unit-2 squares)."""
    _check_n(n)
    g = _generator(seed)
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    x2 = torch.rand(n, generator=g, dtype=torch.float64) - 2 * torch.randint(0, 2, (n,), generator=g)
    x2 = x2 + torch.floor(x1) % 2
    return (2 * torch.stack([x1, x2], 1)).to(dtype)


def two_spirals(
    n: int, seed: int | None = None, dtype: torch.dtype = torch.float32, noise: float = 0.1
) -> torch.Tensor:
    """Two interleaved spirals with Gaussian noise of std ``noise`` (scaled to roughly [−4, 4]²)."""
    _check_n(n)
    g = _generator(seed)
    t = torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64)) * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0).to(torch.float64)
    r = t / (3 * math.pi) * 3.5
    x = sign[:, None] * torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)
    return (x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).to(dtype)


def ring(
    n: int, seed: int | None = None, dtype: torch.dtype = torch.float32, radius: float = 3.0, std: float = 0.3
) -> torch.Tensor:
    """A ring: uniform angle, radius ~ N(``radius``, ``std``²)."""
    _check_n(n)
    g = _generator(seed)
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    r = radius + std * torch.randn(n, generator=g, dtype=torch.float64)
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1).to(dtype)


TOY_DATASETS: dict[str, Callable[..., torch.Tensor]] = {
    "banana": banana,
    "cosine": cosine,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "two_spirals": two_spirals,
    "ring": ring,
}
"""All 2-D toy samplers by name."""

TOY_LOG_DENSITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "banana": banana_log_density,
    "cosine": cosine_log_density,
    "eight_gaussians": eight_gaussians_log_density,
}
"""Normalized log densities of the toy sets that have a closed form."""


def toy(name: str, n: int, seed: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sample ``n`` points from the toy data set ``name`` (one of :data:`TOY_DATASETS`)."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](n, seed=seed, dtype=dtype)


def density_grid(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    xlim: tuple[float, float] = (-4.0, 4.0),
    ylim: tuple[float, float] = (-4.0, 4.0),
    n: int = 200,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluate an unnormalized log density on an n×n grid and normalize it numerically on the grid.

    ``log_density`` maps ``[m, 2]`` to ``[m]`` (for an energy E pass ``lambda x: -E(x)``). Returns
    ``(xs, ys, density)``: the grid axes and the density, shape ``[n, n]`` indexed ``[y, x]`` as
    ``matplotlib.pyplot.contourf(xs, ys, density)`` expects, summing to one times the cell area.
    """
    if n < 2:
        raise ValueError(f"the grid needs n >= 2 points per axis, got {n}")
    xs = torch.linspace(*xlim, n, dtype=dtype)
    ys = torch.linspace(*ylim, n, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(device)
    with torch.no_grad():
        logp = log_density(pts).reshape(n, n).double().cpu()
    if not torch.isfinite(logp).any():
        raise ValueError("the log density is not finite anywhere on the grid")
    if torch.isnan(logp).any() or (logp == math.inf).any():
        raise FloatingPointError("the log density has NaN or +inf values on the grid")
    cell = (xlim[1] - xlim[0]) / (n - 1) * (ylim[1] - ylim[0]) / (n - 1)
    logp = logp - torch.logsumexp(logp.reshape(-1), 0) - math.log(cell)
    return xs, ys, logp.exp().to(dtype)

