"""The kernelized Stein discrepancy as a goodness-of-fit test (chapter 5).

:func:`mvl.objectives.ksd` is the squared KSD as a training objective (row averages, differentiable in θ).
This module keeps the whole matrix of Stein-kernel values u_q(xᵢ, xⱼ) and turns the U-statistic into a test
of H₀: p = q, calibrated by the wild bootstrap (Chwialkowski et al., 2016; Liu et al., 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .energies import Energy, as_input, energy_and_grad
from .samplers import Kernel, rbf_kernel


def _trace_matrix(kernel: Kernel, x: torch.Tensor) -> torch.Tensor:
    """T[i, j] = tr ∇ₓ∇_y k(xᵢ, xⱼ), by forward-mode differentiation of ∇ₓk in y (d passes).

    Shifting every y by t·e_l moves each pair (xᵢ, yⱼ) along its own y-coordinate l, so d/dt of
    dK[:, :, l] is the (l, l) entry of the mixed second derivative for all pairs at once. The kernel sees
    the same first argument in every pass (a median bandwidth is computed from it, as in ``ksd``).
    """
    d = x.shape[1]
    trace = torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype, device=x.device)
    for l in range(d):
        e_l = torch.zeros_like(x)
        e_l[:, l] = 1.0

        def shifted(t, l=l, e_l=e_l):
            return kernel(x, x + t * e_l)[1][:, :, l]

        t0 = torch.zeros((), dtype=x.dtype, device=x.device)
        _, tangent = torch.func.jvp(shifted, (t0,), (torch.ones_like(t0),))
        trace = trace + tangent
    return trace


def stein_kernel_matrix(energy: Energy, x: torch.Tensor, kernel: Kernel | None = None) -> torch.Tensor:
    """The matrix U[i, j] = u_q(xᵢ, xⱼ) of the Stein kernel of q ∝ exp(−E) (chapter 5, eq. ch5-ksd), detached.

    With s = −∇E: u_q(x, x') = s(x)ᵀk s(x') + s(x)ᵀ∇_{x'}k + ∇ₓkᵀs(x') + tr ∇ₓ∇_{x'}k. Its off-diagonal mean
    is the U-statistic of :func:`mvl.objectives.ksd` and its full mean the V-statistic. ``kernel`` has the
    interface of :func:`mvl.samplers.rbf_kernel` (the default, median bandwidth).
    """
    kernel = rbf_kernel if kernel is None else kernel
    x = as_input(x)
    if x.shape[0] < 2:
        raise ValueError("the Stein kernel matrix needs a batch of at least two points")
    _, g = energy_and_grad(energy, x, create_graph=False)
    g, xd = g.detach(), x.detach()
    k, dk = kernel(xd, xd)
    cross = torch.einsum("il,jil->ij", g, dk)  # gᵢᵀ∇_{x'}k(xᵢ, xⱼ), with ∇_{x'}k(xᵢ, xⱼ) = dk[j, i]
    return ((g @ g.T) * k - cross - cross.T + _trace_matrix(kernel, xd)).detach()


@dataclass(frozen=True)
class KSDTest:
    """The result of :func:`ksd_test`: ``statistic`` is n·KSD_U, ``p_value`` its wild-bootstrap p-value."""

    statistic: float
    p_value: float
    reject: bool
    level: float
    n_boot: int
    ksd_u: float


def ksd_test(
    energy: Energy,
    x: torch.Tensor,
    kernel: Kernel | None = None,
    level: float = 0.05,
    n_boot: int = 1000,
    seed: int | None = None,
) -> KSDTest:
    """The KSD goodness-of-fit test of H₀: x ~ q ∝ exp(−E) (Liu et al., 2016; Chwialkowski et al., 2016; chapter 5).

    The statistic is n·KSD_U = (1/(n−1)) Σ_{i≠j} u_q(xᵢ, xⱼ). Under H₀ the U-statistic is degenerate, so
    n·KSD_U has a non-degenerate limit, which the wild bootstrap reproduces: with Rademacher signs Wᵢ,
    B = (1/(n−1)) Σ_{i≠j} Wᵢ Wⱼ u_q(xᵢ, xⱼ). The p-value is (1 + #{B ≥ statistic}) / (1 + n_boot), and
    H₀ is rejected when it is at most ``level``. The data must be independent draws (for a Markov chain,
    Chwialkowski et al. use correlated signs). ``seed`` makes the bootstrap reproducible.
    """
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a number in (0, 1), e.g. 0.05; got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer (several hundred or more), got {n_boot!r}")
    u = stein_kernel_matrix(energy, x, kernel)
    n = u.shape[0]
    off = u - torch.diag_embed(u.diagonal())
    statistic = off.sum().item() / (n - 1)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed)
    signs = (2 * torch.randint(0, 2, (n_boot, n), generator=gen) - 1).to(u.dtype).to(u.device)
    boot = ((signs @ off) * signs).sum(1) / (n - 1)
    p_value = (1 + (boot >= statistic).sum().item()) / (1 + n_boot)
    return KSDTest(statistic, p_value, p_value <= level, float(level), n_boot, statistic / n)
