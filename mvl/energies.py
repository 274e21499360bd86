"""Energy functions: the unnormalized models q(x) ∝ exp(−E(x)) of chapter 1.

An *energy* in this package is any ``torch.nn.Module`` or callable mapping a batch ``[batch, d]`` to
energies ``[batch]``. The objectives in :mod:`mvl.objectives` accept any such callable; the classes here
are the parameterizations the chapters use.

Score matching differentiates the energy twice in x, so the activations must be smooth: with ReLU the
Laplacian ΔE vanishes almost everywhere and the Hyvärinen objective degenerates (chapter 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
}
"""Smooth activations accepted by the energy networks (Swish is the paper's choice, appendix E.1.1)."""

_NOT_SMOOTH = {"relu", "leaky_relu", "leakyrelu", "relu6", "hardtanh", "hardswish"}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name``; reject piecewise-linear ones with an explanation."""
    key = name.lower()
    if key in _NOT_SMOOTH:
        raise ValueError(
            f"activation {name!r} is piecewise linear: its second derivative is zero almost everywhere, so "
            f"the Laplacian in the score-matching objective vanishes. Use one of {sorted(ACTIVATIONS)}."
        )
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def mlp(
    sizes: Sequence[int], activation: str = "swish", spectral_norm: bool = False
) -> nn.Sequential:
    """A fully connected network with the given layer sizes and a smooth activation between layers.

    With ``spectral_norm=True`` every layer except the output layer is spectrally normalized
    (Miyato et al., 2018), as the paper does for its "intermediate layers" (appendix E.1.1).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"layer sizes must be at least two positive integers, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer = nn.Linear(n_in, n_out)
        last = i == len(sizes) - 2
        if spectral_norm and not last:
            layer = nn.utils.parametrizations.spectral_norm(layer)
        layers.append(layer)
        if not last:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def _check_input(x: torch.Tensor, dim: int) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"expected a batch of shape [batch, {dim}], got {tuple(x.shape)}")


class _NetworkEnergy(nn.Module):
    """Shared constructor of the network energies: a smooth MLP from R^dim to R^out, stored as ``attr``."""

    def __init__(self, dim: int, out: int | None, hidden: Sequence[int], activation: str, spectral_norm: bool, attr: str):
        super().__init__()
        self.dim = int(dim)
        setattr(self, attr, mlp([self.dim, *hidden, out or self.dim], activation, spectral_norm))


class MLPEnergy(_NetworkEnergy):
    """E(x) = f_θ(x) with f a fully connected network ending in one output unit (chapter 1)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (100, 100), activation: str = "swish", spectral_norm: bool = False):
        super().__init__(dim, 1, hidden, activation, spectral_norm, "net")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.dim)
        return self.net(x).squeeze(-1)


class ScoreNetEnergy(_NetworkEnergy):
    """E(x) = xᵀψ_θ(x) with ψ a fully connected network R^d → R^d (paper, appendix E.1.1; chapter 1).

    The network ψ alone would be a "score network" (Song et al., 2019) that need not be a gradient field;
    taking the inner product with x turns it into a scalar energy whose gradient is a conservative field.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (100, 100), activation: str = "swish", spectral_norm: bool = False):
        super().__init__(dim, None, hidden, activation, spectral_norm, "psi")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.dim)
        return (x * self.psi(x)).sum(-1)


class QuadraticEnergy(nn.Module):
    """E(x) = ½(x − m)ᵀA(x − m): the energy of N(m, A⁻¹) when A is positive definite.

    Its score-matching objective has a closed form (chapter 1): for x ~ N(μ, Σ),
    J = ½ tr(A²Σ) + ½(μ − m)ᵀA²(μ − m) − tr A. Used throughout the tests as ground truth.
    """

    def __init__(self, precision: torch.Tensor, mean: torch.Tensor | None = None, trainable: bool = False):
        super().__init__()
        precision = torch.as_tensor(precision)
        if precision.dim() != 2 or precision.shape[0] != precision.shape[1]:
            raise ValueError(f"precision must be a square matrix, got shape {tuple(precision.shape)}")
        precision = 0.5 * (precision + precision.T)
        mean = torch.zeros(precision.shape[0], dtype=precision.dtype) if mean is None else torch.as_tensor(mean)
        if trainable:
            self.precision = nn.Parameter(precision.clone())
            self.mean = nn.Parameter(mean.clone().to(precision.dtype))
        else:
            self.register_buffer("precision", precision.clone())
            self.register_buffer("mean", mean.clone().to(precision.dtype))
        self.dim = precision.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.dim)
        y = x - self.mean
        return 0.5 * ((y @ self.precision) * y).sum(-1)

    def sm_objective(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The exact Hyvärinen objective E_p[½‖∇E‖² − ΔE] for p = N(mu, sigma)."""
        a = self.precision
        d = mu - self.mean
        return 0.5 * torch.trace(a @ a @ sigma) + 0.5 * d @ (a @ a) @ d - torch.trace(a)
