"""Figures shared by the chapters: densities of 2-D energies beside the data, and training curves."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from .data import density_grid


def _plane_axis(ax, xlim: tuple[float, float], ylim: tuple[float, float], title: str | None) -> None:
    """Limits, x₁/x₂ labels, equal aspect and an optional title for a figure of the data plane."""
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)


def plot_density(
    ax,
    log_density: Callable[[torch.Tensor], torch.Tensor],
    xlim: tuple[float, float] = (-4.0, 4.0),
    ylim: tuple[float, float] = (-4.0, 4.0),
    data: torch.Tensor | None = None,
    title: str | None = None,
    n: int = 150,
    n_points: int = 500,
    cmap: str = "viridis",
):
    """Filled contours of the (grid-normalized) density exp(log_density) with an optional data overlay.

    For an energy E pass ``log_density=lambda x: -E(x)``. Returns the contour set (for a colour bar).
    """
    param = None
    if isinstance(log_density, torch.nn.Module):
        param = next(log_density.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else "cpu"
    xs, ys, dens = density_grid(log_density, xlim, ylim, n=n, dtype=dtype, device=device)
    cs = ax.contourf(xs.numpy(), ys.numpy(), dens.float().numpy(), levels=30, cmap=cmap)
    if data is not None:
        pts = data[:n_points].detach().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="white", alpha=0.5, linewidths=0)
    _plane_axis(ax, xlim, ylim, title)
    return cs


class VelocityField(NamedTuple):
    """The initial velocity of the Wasserstein gradient flow from p to q on a grid (:func:`velocity_field_grid`)."""

    xs: torch.Tensor  # [n] grid axis x₁
    ys: torch.Tensor  # [n] grid axis x₂
    velocity: torch.Tensor  # [n, n, 2], v = ∇log q − ∇log p, indexed [y, x]; NaN where p = 0
    density: torch.Tensor  # [n, n], p normalized on the grid
    kinetic: torch.Tensor  # [n, n], p‖v‖², the density of the flow's kinetic energy
    fisher: float  # ½ Σ p‖v‖² · cell, the grid estimate of the Fisher divergence D_F(p‖q)


def velocity_field_grid(
    log_p: Callable[[torch.Tensor], torch.Tensor],
    log_q: Callable[[torch.Tensor], torch.Tensor],
    xlim: tuple[float, float] = (-4.0, 4.0),
    ylim: tuple[float, float] = (-4.0, 4.0),
    n: int = 120,
    dtype: torch.dtype = torch.float64,
) -> VelocityField:
    """The velocity v₀ = −∇log(p/q) = ∇log q − ∇log p of the Wasserstein gradient flow of KL(·‖q) started at p
    (chapter 2, eq. ``eq-ch2-grad-kl``), on an n×n grid, with p‖v₀‖² and its integral.

    ``log_p`` and ``log_q`` may be unnormalized (for an energy E pass ``lambda x: -E(x)``): the scores do
    not see the constants, and p is normalized on the grid. ∫p‖v₀‖² = 2 D_F(p‖q) is the rate at which
    KL(p_t‖q) starts to fall; with p the data and q a model it is 2(J + C_p), twice the score-matching
    objective J plus the model-independent C_p = ½ E_p‖∇log p‖² (chapters 1 and 3). The field returned
    (``fisher`` = ½ Σ p‖v₀‖² · cell) is the grid estimate of D_F; it needs the grid to cover p's mass.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 8:
        raise ValueError(f"the grid needs an integer n >= 8 points per axis, got {n!r}")
    xs, ys, dens = density_grid(log_p, xlim, ylim, n=n, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).requires_grad_(True)
    scores = []
    for log_density in (log_q, log_p):
        (grad,) = torch.autograd.grad(log_density(pts).sum(), pts)
        scores.append(grad.detach())
    v = (scores[0] - scores[1]).reshape(n, n, 2)
    inside = (dens > 0) & torch.isfinite(v).all(-1)
    v = torch.where(inside[..., None], v, torch.full_like(v, math.nan))
    kinetic = torch.where(inside, dens * (v**2).sum(-1), torch.zeros_like(dens))
    cell = (xlim[1] - xlim[0]) / (n - 1) * (ylim[1] - ylim[0]) / (n - 1)
    return VelocityField(xs, ys, v, dens, kinetic, float(0.5 * kinetic.sum() * cell))


def plot_velocity_field(
    ax,
    log_p: Callable[[torch.Tensor], torch.Tensor],
    log_q: Callable[[torch.Tensor], torch.Tensor],
    xlim: tuple[float, float] = (-4.0, 4.0),
    ylim: tuple[float, float] = (-4.0, 4.0),
    n: int = 120,
    stream_density: float = 1.0,
    cmap: str = "magma",
    q_levels: int = 6,
    title: str | None = None,
):
    """Draw the Wasserstein gradient flow's initial velocity from p to q (chapter 2; reused in chapter 3).

    The background is p‖v₀‖² (its integral is 2 D_F(p‖q), see :func:`velocity_field_grid`), the
    white streamlines follow v₀ = ∇log q − ∇log p wherever p has mass (line width ∝ speed), and thin
    cyan contours show q. Returns ``(field, mesh)``: the :class:`VelocityField` and the background's
    colour mesh (for a colour bar).
    """
    field = velocity_field_grid(log_p, log_q, xlim, ylim, n=n)
    xs, ys = field.xs.numpy(), field.ys.numpy()
    mesh = ax.pcolormesh(xs, ys, field.kinetic.float().numpy(), cmap=cmap, shading="auto")
    v = field.velocity.numpy()
    # no streamlines where p is negligible (or the scores are undefined)
    mass = (field.density.numpy() > 1e-3 * field.density.max().item()) & np.isfinite(v).all(-1)
    v = np.nan_to_num(v)
    u1 = np.ma.masked_where(~mass, v[..., 0])
    u2 = np.ma.masked_where(~mass, v[..., 1])
    speed = np.where(mass, np.hypot(v[..., 0], v[..., 1]), 0.0)
    width = 0.4 + 1.6 * speed / max(float(speed.max()), 1e-12)
    ax.streamplot(xs, ys, u1, u2, density=stream_density, color="white", linewidth=width, arrowsize=0.8)
    _, _, q = density_grid(log_q, xlim, ylim, n=n, dtype=torch.float64)
    ax.contour(xs, ys, q.numpy(), levels=q_levels, colors="cyan", linewidths=0.6, alpha=0.8)
    _plane_axis(ax, xlim, ylim, title)
    return field, mesh


def energy_log_density(energy: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The unnormalized log density −E(x) of an energy, evaluated without tracking gradients."""

    param = next(energy.parameters(), None) if isinstance(energy, torch.nn.Module) else None

    def log_density(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if param is None:
                return -energy(x)
            # evaluate on the energy's device and dtype (e.g. a CUDA model on a CPU plotting grid)
            return -energy(x.to(param.device, param.dtype)).to(x.device, x.dtype)

    return log_density


def smooth(values: Sequence[float], window: int = 25) -> np.ndarray:
    """A moving average over ``window`` consecutive values (only full windows: ``len - window + 1`` values)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < window:
        return v
    return np.convolve(v, np.ones(window) / window, mode="valid")


def plot_curves(
    ax,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str = "iteration",
    ylabel: str = "loss",
    window: int = 1,
    logy: bool = False,
    title: str | None = None,
):
    """Plot named curves ``{label: (x, y)}`` (optionally smoothed) on one axis with a legend."""
    for label, (x, y) in curves.items():
        ys = smooth(y, window)
        start = (len(y) - len(ys)) // 2  # centre each average on the middle of its window
        ax.plot(np.asarray(x)[start : start + len(ys)], ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)


def image_grid(images: torch.Tensor, ncol: int = 10, shape: tuple[int, int] = (28, 28), pad: int = 1,
               fill: float = 0.25) -> np.ndarray:
    """Tile images ``[n, h*w]`` or ``[n, h, w]`` into one 2-D array, ``ncol`` per row, separated by ``fill``."""
    if ncol < 1:
        raise ValueError(f"ncol must be a positive integer, got {ncol!r}")
    imgs = images.detach().cpu().float().reshape(-1, *shape).numpy()
    n, (h, w) = imgs.shape[0], shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), fill, dtype=np.float32)
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return grid


def plot_images(ax, images: torch.Tensor, ncol: int = 10, title: str | None = None, shape: tuple[int, int] = (28, 28)):
    """Show images (values in [0, 1], dark = 1 as ink on paper) as one tiled grid on ``ax``."""
    ax.imshow(image_grid(images, ncol, shape), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
