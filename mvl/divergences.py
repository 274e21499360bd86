"""KL divergences of particle samples, for watching gradient flows converge (chapter 2).

:func:`kde_grid` and :func:`kl_grid` estimate KL(p‖q) from a 2-D sample of p (for instance the particles of
a sampler) and an unnormalized log density of q, on a grid: the sample's density by a Gaussian kernel density
estimate (KDE), q by normalizing it numerically on the same grid. (The Fisher divergence, the KL's initial
rate of decrease along the Langevin flow, is :func:`mvl.objectives.fisher_divergence`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .data import density_grid

LogDensity = Callable[[torch.Tensor], torch.Tensor]


def _check_samples(samples: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(samples) or samples.dim() != 2 or samples.shape[1] != 2 or samples.shape[0] < 2:
        raise ValueError(
            f"samples must be a tensor of shape [n, 2] with n >= 2 (the grid estimators are 2-D only), "
            f"got {getattr(samples, 'shape', type(samples))}"
        )
    samples = samples.detach().cpu().double()
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or infinite values (did the sampler diverge?)")
    return samples


def scott_bandwidth(samples: torch.Tensor) -> torch.Tensor:
    """Scott's rule for a 2-D Gaussian KDE: h_j = σ_j n^{−1/6} per coordinate j."""
    samples = _check_samples(samples)
    return samples.std(0) * samples.shape[0] ** (-1.0 / 6.0)


def _smooth_axis(grid: torch.Tensor, sigma_cells: float, dim: int) -> torch.Tensor:
    """Convolve a [n, n] grid with a Gaussian of std ``sigma_cells`` grid cells along one axis (zero padding)."""
    half = max(1, int(math.ceil(4 * sigma_cells)))
    offsets = torch.arange(-half, half + 1, dtype=grid.dtype)
    kernel = torch.exp(-0.5 * (offsets / max(sigma_cells, 1e-12)) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    rows = grid if dim == 1 else grid.T
    out = torch.nn.functional.conv1d(rows[:, None, :], kernel, padding=half)[:, 0, :]
    return out if dim == 1 else out.T


def kde_grid(
    samples: torch.Tensor,
    xlim: tuple[float, float] = (-4.0, 4.0),
    ylim: tuple[float, float] = (-4.0, 4.0),
    n: int = 200,
    bandwidth: float | Sequence[float] | torch.Tensor | None = None,
    max_outside: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Gaussian kernel density estimate of a 2-D sample on the n×n grid of :func:`mvl.data.density_grid`.

    The samples are binned to the nearest grid point and the histogram is smoothed with a Gaussian of
    standard deviation ``bandwidth`` (one number, or one per coordinate; default :func:`scott_bandwidth`),
    which equals the KDE up to the binning (cell size ≪ bandwidth). Returns ``(xs, ys, density)`` with
    ``density[y, x]`` in float64, integrating to one on the grid. Raises ``ValueError`` if more than
    ``max_outside`` of the samples fall outside the grid: enlarge ``xlim``/``ylim``.
    """
    samples = _check_samples(samples)
    if isinstance(n, bool) or not isinstance(n, int) or n < 8:
        raise ValueError(f"the grid needs an integer n >= 8 points per axis, got {n!r}")
    if not (xlim[1] > xlim[0] and ylim[1] > ylim[0]):
        raise ValueError(f"xlim and ylim must be increasing intervals, got {xlim} and {ylim}")
    h = scott_bandwidth(samples) if bandwidth is None else torch.as_tensor(bandwidth, dtype=torch.float64)
    h = h.expand(2) if h.dim() == 0 else h
    if h.shape != (2,) or not torch.isfinite(h).all() or (h <= 0).any():
        raise ValueError(f"bandwidth must be a positive number or a pair of positive numbers, got {bandwidth!r}")
    xs = torch.linspace(*xlim, n, dtype=torch.float64)
    ys = torch.linspace(*ylim, n, dtype=torch.float64)
    dx, dy = (xlim[1] - xlim[0]) / (n - 1), (ylim[1] - ylim[0]) / (n - 1)
    ix = torch.round((samples[:, 0] - xlim[0]) / dx).long()
    iy = torch.round((samples[:, 1] - ylim[0]) / dy).long()
    inside = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
    outside = 1.0 - inside.double().mean().item()
    if outside > max_outside:
        raise ValueError(
            f"{100 * outside:.1f}% of the samples fall outside the grid {xlim} x {ylim} "
            f"(at most {100 * max_outside:.1f}% allowed): enlarge xlim/ylim"
        )
    counts = torch.bincount(iy[inside] * n + ix[inside], minlength=n * n).double().reshape(n, n)
    dens = _smooth_axis(_smooth_axis(counts, h[0].item() / dx, dim=1), h[1].item() / dy, dim=0)
    dens = dens / (dens.sum() * dx * dy)
    return xs, ys, dens


def kl_grid(
    samples: torch.Tensor,
    log_q: LogDensity | torch.Tensor,
    xlim: tuple[float, float] = (-4.0, 4.0),
    ylim: tuple[float, float] = (-4.0, 4.0),
    n: int = 200,
    bandwidth: float | Sequence[float] | torch.Tensor | None = None,
    max_outside: float = 0.01,
) -> float:
    """Estimate KL(p‖q) = ∫ p log(p/q) from a 2-D sample of p and an unnormalized log density of q (chapter 2).

    p is the :func:`kde_grid` estimate; q is normalized numerically on the same grid
    (:func:`mvl.data.density_grid`), so ``log_q`` may be any unnormalized log density, e.g. ``-energy``.
    When estimating many times against the same q, pass instead the grid density
    ``mvl.data.density_grid(log_q, xlim, ylim, n, dtype=torch.float64)[2]`` (shape ``[n, n]``): evaluating
    q on the grid costs more than the estimate itself.
    The estimate is that of the *smoothed* sample density: it is biased (by the bandwidth, and upwards by
    the sampling noise of the KDE), but the bias changes slowly along a flow, so the estimated KL follows
    the true one's decrease. Returns a Python float, in nats.
    """
    xs, ys, p = kde_grid(samples, xlim, ylim, n, bandwidth, max_outside)
    if torch.is_tensor(log_q):
        if log_q.shape != (n, n):
            raise ValueError(f"a grid density for q must have shape ({n}, {n}), got {tuple(log_q.shape)}")
        q = log_q.detach().cpu().double()
    else:
        _, _, q = density_grid(log_q, xlim, ylim, n, dtype=torch.float64)
    cell = (xlim[1] - xlim[0]) / (n - 1) * (ylim[1] - ylim[0]) / (n - 1)
    mask = p > 1e-300
    log_ratio = torch.log(p[mask]) - torch.log(torch.clamp(q[mask], min=1e-300))
    return float((p[mask] * log_ratio).sum() * cell)
