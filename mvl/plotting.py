"""Figures shared by the chapters: densities of 2-D energies beside the data, and training curves."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .data import density_grid


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
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return cs


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
