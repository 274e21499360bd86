"""Energy functions: the unnormalized models q(x) ∝ exp(−E(x)) of chapter 1.

An *energy* in this package is any ``torch.nn.Module`` or callable mapping a batch ``[batch, d]`` to
energies ``[batch]`` (the type :data:`Energy`). This module holds what every other module needs to work
with one — evaluating it with a shape check, its gradient ∇ₓE and Laplacian ΔₓE, one set of
spectral-norm weights per estimate (:func:`same_weights`), the step-size check of the ε-estimators — and
the parameterizations the chapters use (:class:`MLPEnergy`, :class:`ScoreNetEnergy`,
:class:`QuadraticEnergy`). :mod:`mvl.objectives`, :mod:`mvl.samplers` and :mod:`mvl.manifolds` import
from here, and not from each other's internals.

Score matching differentiates the energy twice in x, so the activations must be smooth: with ReLU the
gradient ∇E jumps across the network's linear regions, the ΔE that autograd computes misses its singular
part, and Hyvärinen's integration by parts no longer holds (chapter 1, exercise ``ex-ch1-relu``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

Energy = Callable[[torch.Tensor], torch.Tensor]
"""The energy type: any callable (usually an ``nn.Module``) mapping ``[batch, d]`` to ``[batch]``."""


def same_weights(estimator: Callable) -> Callable:
    """Evaluate every energy inside ``estimator`` with one set of weights (``parametrize.cached``).

    The step-size estimators compare energies (or gradients) at nearby points and divide by a power of ε.
    In training mode a spectrally normalized layer runs a power iteration at every call, so without the
    cache two evaluations of "the same" network differ, and that difference divided by ε dominates the
    estimate (chapter 4's pitfall). Nesting is harmless (``mvl.fitting.train_energy`` also caches).
    """

    @functools.wraps(estimator)
    def wrapped(*args, **kwargs):
        with parametrize.cached():
            return estimator(*args, **kwargs)

    return wrapped


def as_input(x: torch.Tensor) -> torch.Tensor:
    """A tensor we can differentiate with respect to: ``x`` itself if it already tracks gradients."""
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"x must be a tensor of shape [batch, d], got {getattr(x, 'shape', type(x))}")
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    return x if x.requires_grad else x.detach().requires_grad_(True)


def evaluate_energy(energy: Energy, x: torch.Tensor) -> torch.Tensor:
    """Call ``energy`` on ``x`` and check that it returns one finite-shaped value per sample."""
    e = energy(x)
    if e.dim() == 2 and e.shape[1] == 1:
        e = e.squeeze(1)
    if e.shape != x.shape[:1]:
        raise ValueError(
            f"an energy must map a batch [batch, d] to energies [batch]; got {tuple(e.shape)} "
            f"for input {tuple(x.shape)}"
        )
    return e


def energy_and_grad(energy: Energy, x: torch.Tensor, create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """E(x) and ∇ₓE(x) for a batch, keeping the graph so that both can be differentiated again."""
    x = as_input(x)
    e = evaluate_energy(energy, x)
    (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return e, g


def laplacian(grad: torch.Tensor, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """ΔE = Σᵢ ∂²E/∂xᵢ² from the gradient ``grad = ∇ₓE(x)``: one backward pass per dimension.

    This is the d-fold cost that makes exact score matching expensive (chapter 1). For small d a loop of
    autograd calls is faster than forming the Hessian.
    """
    lap = torch.zeros_like(grad[:, 0])
    for i in range(x.shape[1]):
        (h_i,) = torch.autograd.grad(grad[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        lap = lap + h_i[:, i]
    return lap




def check_step_size(eps: float) -> float:
    """Return ``eps`` as a float, or raise a ``ValueError`` if it is not a positive finite number."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"the step size eps must be a positive finite number, got {eps!r}")
    return float(eps)



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
            f"activation {name!r} is piecewise linear: the energy's gradient jumps across linear regions, so "
            f"the Laplacian that autograd computes misses its singular part and score matching's objective is "
            f"no longer the Fisher divergence up to a constant. Use one of {sorted(ACTIVATIONS)}."
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
