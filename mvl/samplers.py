"""Samplers that simulate gradient flows of KL(·‖q) (chapter 2), and are reused by MVL (chapters 3–5).

* Langevin dynamics simulates the gradient flow of KL in the 2-Wasserstein space (Fokker–Planck).
* SVGD (Liu & Wang, 2016) simulates it in the H-Wasserstein space, with an RBF (or IMQ) kernel.
* The probability-flow ODE moves particles deterministically with the flow's own velocity −∇log(ρ_t/q),
  the cloud's score estimated by the blob method (Carrillo, Craig & Patacchini, 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .energies import Energy, check_step_size, energy_and_grad


def langevin_step(
    energy: Energy, x: torch.Tensor, eps: float, beta: float = 1.0, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One unadjusted Langevin step targeting q^β ∝ exp(−βE) (chapter 2, eq. 3 in flat space):

        x' = x − ε β ∇E(x) + √(2ε) z,   z ~ N(0, I).

    Returns ``(x', z)``. ``beta=1/2`` is the step MVL takes (chapter 3). With ``create_graph=False`` the
    new state is detached (a sampler); with ``True`` it stays differentiable in the energy's parameters.
    """
    eps = check_step_size(eps)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    _, g = energy_and_grad(energy, x, create_graph=create_graph)
    return euler_maruyama(x, -beta * g, eps, 1.0, create_graph)


def euler_maruyama(
    x: torch.Tensor, drift: torch.Tensor, eps: float, diffusion: float, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler–Maruyama step of dx = drift dt + √(2·diffusion) dB: returns ``(x + ε drift + √(2·diffusion·ε) z, z)``.

    The new state is detached unless ``create_graph``; the noise z is returned for control variates.
    """
    z = torch.randn_like(x)
    x_new = x + eps * drift + math.sqrt(2 * diffusion * eps) * z
    return (x_new if create_graph else x_new.detach()), z


def langevin_chain(
    energy: Energy,
    x0: torch.Tensor,
    eps: float,
    n_steps: int,
    beta: float = 1.0,
    thin: int = 0,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``n_steps`` Langevin steps from ``x0`` (detached). Returns the final state, or with ``thin=k > 0``
    the final state and the list of states every k steps (including the start), e.g. for plotting the flow.
    """
    if not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    x = x0.detach()
    trace = [x.clone()] if thin else None
    steps = range(n_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="Langevin")
    for t in steps:
        x, _ = langevin_step(energy, x, eps, beta)
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                f"Langevin chain diverged at step {t + 1} (non-finite state); lower the step size eps={eps}"
            )
        if thin and (t + 1) % thin == 0:
            trace.append(x.clone())
    return (x, trace) if thin else x


def median_bandwidth(x: torch.Tensor) -> torch.Tensor:
    """The median heuristic of SVGD: h = med(‖xᵢ − xⱼ‖²) / log(n + 1) (Liu & Wang, 2016)."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("the median heuristic needs at least two particles")
    sq = torch.cdist(x, x) ** 2
    off = sq[~torch.eye(n, dtype=torch.bool, device=x.device)]
    h = off.median() / math.log(n + 1)
    return torch.clamp(h, min=1e-8)


def rbf_kernel(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float | torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The RBF kernel k(x, y) = exp(−‖x − y‖² / h) and its gradient in the first argument.

    Returns ``(K, dK)`` with ``K[i, j] = k(xᵢ, yⱼ)`` and ``dK[i, j] = ∇_{xᵢ} k(xᵢ, yⱼ)`` (shape
    ``[n, m, d]``). ``bandwidth=None`` uses the median heuristic on x (detached).
    """
    h = median_bandwidth(x.detach()) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype)
    diff = x[:, None, :] - y[None, :, :]
    k = torch.exp(-(diff**2).sum(-1) / h)
    dk = -2.0 / h * diff * k[..., None]
    return k, dk


def imq_kernel(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float | torch.Tensor | None = 1.0, beta: float = -0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse multiquadric kernel k(x, y) = (1 + ‖x − y‖² / h)^β and its gradient in the first argument.

    With β ∈ (−1, 0) its Stein discrepancy detects non-convergence in any dimension, which the RBF kernel's
    does not for d ≥ 3 (Gorham & Mackey, 2017; chapter 5); their recommendation is h = 1, β = −½ (the
    default). Same interface as :func:`rbf_kernel`: returns ``(K, dK)`` with ``dK[i, j] = ∇_{xᵢ} k(xᵢ, yⱼ)``;
    ``bandwidth=None`` uses the median heuristic on x (detached).
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not -1.0 < beta < 0.0:
        raise ValueError(f"beta must be a number in (-1, 0) for the IMQ kernel, got {beta!r}")
    h = median_bandwidth(x.detach()) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype)
    if not bool(h > 0):
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
    diff = x[:, None, :] - y[None, :, :]
    base = 1.0 + (diff**2).sum(-1) / h
    k = base**beta
    dk = (2.0 * beta / h) * diff * (base ** (beta - 1.0))[..., None]
    return k, dk


Kernel = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def svgd_direction(energy: Energy, x: torch.Tensor, kernel: Kernel = rbf_kernel, create_graph: bool = False) -> torch.Tensor:
    """The SVGD velocity φ(xᵢ) = (1/n) Σⱼ [−k(xⱼ, xᵢ)∇E(xⱼ) + ∇_{xⱼ} k(xⱼ, xᵢ)] (chapter 2).

    It is the steepest descent direction of KL(·‖q) in the RKHS of the kernel: a driving term towards low
    energy and a repulsive term that keeps the particles apart.
    """
    _, g = energy_and_grad(energy, x, create_graph=create_graph)
    k, dk = kernel(x, x)
    n = x.shape[0]
    return (-(k.T @ g) + dk.sum(0)) / n


def svgd_step(energy: Energy, x: torch.Tensor, eps: float, kernel: Kernel = rbf_kernel) -> torch.Tensor:
    """One SVGD step x' = x + ε φ(x) targeting q ∝ exp(−E) (Liu & Wang, 2016; chapter 2). Detached."""
    eps = check_step_size(eps)
    return (x + eps * svgd_direction(energy, x, kernel)).detach()


def spos_step(
    energy: Energy,
    x: torch.Tensor,
    eps: float,
    alpha: float,
    kernel: Kernel | None = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of stochastic particle-optimization sampling (SPOS; Zhang et al., 2020; chapter 5):

        x' = x + ε φ(x) − εα ∇E(x) + √(2αε) z,   z ~ N(0, I),

    an SVGD step plus α times a Langevin step. Its density follows the gradient flow of KL(·‖q) under the
    metric of (α Id + K)⁻¹ (paper appendix B.1). Returns ``(x', z)``; ``alpha=0`` is SVGD, and large α is
    dominated by Langevin dynamics. With ``create_graph=False`` the new state is detached.
    """
    eps = check_step_size(eps)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a non-negative finite number, got {alpha!r}")
    kernel = rbf_kernel if kernel is None else kernel
    _, g = energy_and_grad(energy, x, create_graph=create_graph)
    drift = svgd_direction(energy, x, kernel, create_graph=create_graph) - alpha * g
    return euler_maruyama(x, drift, eps, alpha, create_graph)


# ------------------------------------------------------- the deterministic probability-flow ODE (chapter 2)
def blob_score(x: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """The score ∇log ρ of a particle cloud, as the blob method of Carrillo, Craig & Patacchini (2019) sees it.

    The entropy 𝓗[ρ] = ∫ρ log ρ of an empirical measure is infinite, so the blob method replaces it by
    ∫ρ log(φ_h ∗ ρ) with φ_h the Gaussian of standard deviation h (``bandwidth``); the Wasserstein gradient of
    that functional at particle xᵢ is (chapter 2, "the probability-flow ODE")

        sᵢ = (1/h²) Σⱼ Kᵢⱼ (1/Sᵢ + 1/Sⱼ)(xⱼ − xᵢ),   Kᵢⱼ = exp(−‖xᵢ − xⱼ‖²/2h²),   Sᵢ = Σₖ Kᵢₖ,

    the score of the kernel density estimate (first term) plus a symmetrizing term that makes Σᵢ sᵢ = 0,
    so the entropy alone never moves the cloud's mean. ``x`` is ``[n, d]``; returns ``[n, d]``. The
    flow it drives under-disperses slightly: by smoothing when h is large, and by the particles' graininess
    when h is below their spacing (1000 particles flowing to N(0, I) in 2-D settle at a variance 10 %,
    2 %, 1.3 % and 4.5 % low for h = 0.1, 0.2, 0.3 and 0.5 after t = 6). ``bandwidth=None`` uses
    h = σ̄ n^{−1/(d+4)} with σ̄ the mean coordinate standard deviation, which suits one blob-shaped cloud;
    for a multimodal one pass a bandwidth well below the width of its modes. Cost O(n²).
    """
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be a tensor of particles of shape [n, d] with n >= 2, got {getattr(x, 'shape', type(x))}")
    x = x.detach()
    n, d = x.shape
    h = x.std(0).mean().item() * n ** (-1.0 / (d + 4)) if bandwidth is None else bandwidth
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
        raise ValueError(f"bandwidth must be a positive finite number (the kernel's standard deviation), got {bandwidth!r}")
    k = torch.exp(-(torch.cdist(x, x) ** 2) / (2.0 * h * h))
    s = k.sum(1)
    w = k * (1.0 / s[:, None] + 1.0 / s[None, :])
    return (w @ x - w.sum(1, keepdim=True) * x) / h**2


def probability_flow_step(energy: Energy, x: torch.Tensor, eps: float, bandwidth: float | None = None) -> torch.Tensor:
    """One Euler step of the probability-flow ODE dx/dt = −∇E(x) − ∇log ρ_t(x) towards q ∝ exp(−E) (chapter 2).

    The particles move with the velocity of the Wasserstein gradient flow of KL(·‖q) itself,
    v_t = −∇log(ρ_t/q), so their density follows the same Fokker–Planck equation as Langevin dynamics
    without any noise. The unknown score ∇log ρ_t of the cloud is :func:`blob_score` with ``bandwidth``.
    Returns the new particles, detached.
    """
    eps = check_step_size(eps)
    _, g = energy_and_grad(energy, x)
    return (x.detach() - eps * (g + blob_score(x, bandwidth))).detach()


# ------------------------------------------------------------------ Riemannian Langevin dynamics (chapter 6)
def riemannian_langevin_step(
    energy: Energy,
    y: torch.Tensor,
    sphere,
    eps: float,
    beta: float = 1.0,
    create_graph: bool = False,
    log_det_sign: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler–Maruyama step of Riemannian Langevin dynamics on a sphere, targeting q^β ∝ exp(−βE)
    w.r.t. the volume measure (paper eqs. 3–4 and 18; chapter 6).

    Each point ``y`` (embedded, ``[batch, n+1]``) is mapped to its stereographic chart
    (``sphere.to_chart``), moved by

        x' = x + ε V(x) + √(2ε) z,   Vⁱ = gⁱʲ∂ⱼ(−βE + ½ log|G|) + ∂ⱼgⁱʲ,   z ~ N(0, G(x)⁻¹),

    and mapped back to the sphere in the same chart. Returns ``(y', z)`` with z the chart noise.

    The ``+½ log|G|`` follows from the Fokker–Planck equation of a density w.r.t. the volume measure
    (chapter 6); the paper prints it with a minus sign. ``log_det_sign=-1`` flips it **for the chapter's
    demonstration only**: that chain samples a different, chart-dependent distribution.
    """
    eps = check_step_size(eps)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    x, s, _, g = sphere.chart_energy(energy, y, create_graph=create_graph)
    if not create_graph:  # a sampler: nothing below needs the graph
        x, g = x.detach(), g.detach()
    z = sphere.chart_noise(x)
    drift = sphere.langevin_drift(x, g, beta, log_det_sign)
    return sphere.from_chart(x + eps * drift + math.sqrt(2 * eps) * z, s), z


def _chain_steps(n_steps: int, progress: bool, desc: str):
    """``range(n_steps)`` (a tqdm bar when ``progress``), after checking n_steps; the loop of the chains."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    if not progress:
        return range(n_steps)
    from tqdm.auto import tqdm

    return tqdm(range(n_steps), desc=desc)


def riemannian_langevin_chain(
    energy: Energy,
    y0: torch.Tensor,
    sphere,
    eps: float,
    n_steps: int,
    beta: float = 1.0,
    log_det_sign: int = 1,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``n_steps`` of :func:`riemannian_langevin_step` from ``y0`` and return the final points (chapter 6)."""
    y = y0.detach()
    for t in _chain_steps(n_steps, progress, "Riemannian Langevin"):
        y, _ = riemannian_langevin_step(energy, y, sphere, eps, beta, log_det_sign=log_det_sign)
        if not torch.isfinite(y).all():
            raise FloatingPointError(
                f"Riemannian Langevin chain diverged at step {t + 1}; lower the step size eps={eps}"
            )
    return y


def _log_proposal_density(sphere, x_from: torch.Tensor, g_from: torch.Tensor, x_to: torch.Tensor, eps: float, beta: float) -> torch.Tensor:
    """log of the Euler–Maruyama proposal density of :func:`riemannian_langevin_step` w.r.t. the volume
    measure: the chart Gaussian N(x_to; x + εV(x), 2ε G(x)⁻¹) divided by the volume element √|G(x_to)|
    (:meth:`mvl.manifolds.Sphere.langevin_log_proposal`, shared with the sphere kernel of :func:`mvl.ais.ais`)."""
    return sphere.langevin_log_proposal(x_from, g_from, x_to, eps, beta)


def riemannian_mala_step(
    energy: Energy, y: torch.Tensor, sphere, eps: float, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the Riemannian Metropolis-adjusted Langevin algorithm (MALA) on a sphere (chapter 6).

    The proposal is :func:`riemannian_langevin_step` in the chart of the current point y (chart s); it is
    accepted with probability min(1, r),

        r = q^β(y′) Q(y′ → y) / (q^β(y) Q(y → y′)),   q^β ∝ exp(−βE) w.r.t. volume,

    where Q(y → y′) is the proposal density w.r.t. the volume measure (the chart Gaussian divided by
    √|G|), and the reverse move Q(y′ → y) is evaluated in the chart of y′, the chart the chain would use
    from there. This makes the chain reversible with respect to q^β on the sphere, so it samples q^β
    exactly for every step size (the Euler–Maruyama chain has an O(ε) bias). The authors' ``riem_ld``
    (``src/score_est.py`` of ``thu-ml/wmvl``) offers the same correction, with both directions evaluated in
    the chart of y. Returns ``(y_next, accepted)`` with ``accepted`` a boolean tensor ``[batch]``.
    """
    eps = check_step_size(eps)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    with torch.enable_grad():
        x, s, e, g = sphere.chart_energy(energy, y, create_graph=False)
        x, e, g = x.detach(), e.detach(), g.detach()
        z = sphere.chart_noise(x)
        x_prop = x + eps * sphere.langevin_drift(x, g, beta) + math.sqrt(2 * eps) * z
        y_prop = sphere.project(sphere.from_chart(x_prop, s))
        x_back, s_back, e_prop, g_prop = sphere.chart_energy(energy, y_prop, create_graph=False)
    x_back, e_prop, g_prop = x_back.detach(), e_prop.detach(), g_prop.detach()
    x_old_in_back, _ = sphere.to_chart(y, s_back)
    log_r = (
        -beta * (e_prop - e)
        + _log_proposal_density(sphere, x_back, g_prop, x_old_in_back, eps, beta)
        - _log_proposal_density(sphere, x, g, x_prop, eps, beta)
    )
    accepted = torch.log(torch.rand_like(log_r)) < log_r
    return torch.where(accepted[:, None], y_prop, y.detach()), accepted


def riemannian_mala_chain(
    energy: Energy, y0: torch.Tensor, sphere, eps: float, n_steps: int, beta: float = 1.0, progress: bool = False
) -> tuple[torch.Tensor, float]:
    """Run ``n_steps`` of :func:`riemannian_mala_step` from ``y0``; returns the final points and the mean
    acceptance rate over all steps and chains (chapter 6; the sphere kernel of :func:`mvl.ais.ais`, chapter 9, makes
    the same moves with one adapted step size per AIS problem)."""
    y = y0.detach()
    accepted = 0.0
    for _ in _chain_steps(n_steps, progress, "Riemannian MALA"):
        y, acc = riemannian_mala_step(energy, y, sphere, eps, beta)
        accepted += acc.double().mean().item()
    return y, accepted / max(n_steps, 1)
