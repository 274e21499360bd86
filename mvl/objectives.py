"""Learning objectives for unnormalized models q(x) ∝ exp(−E(x)).

**Convention.** Every ``sm_*`` function returns a tensor of shape ``[batch]`` whose mean estimates the
Hyvärinen score-matching objective (paper eq. 7, with E the energy)

    J(x) = ½‖∇ₓE(x)‖² − ΔₓE(x),

and is differentiable in the energy's parameters, so ``objective(energy, x).mean().backward()`` trains
the model. J equals the Fisher divergence D_F(p‖q) up to a constant that does not depend on the model
(chapter 1). Where an estimator also carries a parameter-independent constant, its docstring says so.
"""

from __future__ import annotations

import math

import torch
from torch.nn.utils import parametrize

from .energies import Energy, as_input, check_step_size, energy_and_grad, evaluate_energy, laplacian, same_weights
from .samplers import langevin_step, rbf_kernel, spos_step, svgd_direction


def sm_exact(energy: Energy, x: torch.Tensor) -> torch.Tensor:
    """Exact score matching, J(x) = ½‖∇E(x)‖² − ΔE(x) (Hyvärinen, 2005; paper eq. 7; chapter 1).

    The Laplacian is computed exactly with d extra backward passes.
    """
    x = as_input(x)
    _, g = energy_and_grad(energy, x)
    return 0.5 * (g**2).sum(-1) - laplacian(g, x)


def fisher_divergence(log_density: Energy, energy: Energy, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Fisher divergence ½‖∇ₓ log p(x) + ∇ₓE(x)‖² (eq. 6 of the paper; chapter 1).

    Needs the data score, so it is only available for synthetic data with a known (possibly unnormalized)
    ``log_density``; its mean over x ~ p is D_F(p‖q) for q ∝ exp(−E). Used to evaluate fitted models.
    """
    x = as_input(x)
    _, g_energy = energy_and_grad(energy, x, create_graph=False)
    _, g_neg_log_p = energy_and_grad(lambda v: -log_density(v), x, create_graph=False)
    return 0.5 * ((g_energy - g_neg_log_p) ** 2).sum(-1)


def boundary_flux(energy: Energy, x: torch.Tensor, normal: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The boundary flux Φ = ∮_∂Ω p ∇E·n dS of a density p truncated to a domain Ω (chapter 1).

    On a truncated support Hyvärinen's integration by parts leaves this term: D_F(p‖q) = J(E) + C_p + Φ,
    with n the outward normal and p its limit from inside Ω. An energy that rises outward at the edge has
    Φ > 0, so minimizing J rewards such walls. ``x`` (``[m, d]``) are quadrature nodes on ∂Ω, ``normal``
    (``[m, d]``) the outward unit normals there and ``weight`` (``[m]``) the quadrature weights times p,
    e.g. from :func:`mvl.data.cosine_boundary`. Returns the scalar Φ (differentiable in the energy).
    """
    x = as_input(x)
    normal = torch.as_tensor(normal, dtype=x.dtype, device=x.device)
    weight = torch.as_tensor(weight, dtype=x.dtype, device=x.device)
    if normal.shape != x.shape:
        raise ValueError(f"normal must have the shape of x, {tuple(x.shape)}; got {tuple(normal.shape)}")
    if weight.shape != x.shape[:1]:
        raise ValueError(f"weight must have shape [{x.shape[0]}] (one per node); got {tuple(weight.shape)}")
    _, g = energy_and_grad(energy, x)
    return (weight * (g * normal).sum(-1)).sum()


def sm_sliced(
    energy: Energy, x: torch.Tensor, n_slices: int = 1, variance_reduction: bool = True
) -> torch.Tensor:
    """Sliced score matching (Song et al., 2019; chapter 1).

    The Laplacian is replaced by the Hutchinson estimate vᵀ∇²E v with v ~ N(0, I), one Hessian-vector
    product (one extra backward pass) per slice. With ``variance_reduction=True`` (SSM-VR) the first term
    is the exact ½‖∇E‖²; without it, ½(vᵀ∇E)², whose mean over v is the same. Unbiased for J for any
    number of slices.
    """
    if not isinstance(n_slices, int) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer, got {n_slices!r}")
    x = as_input(x)
    _, g = energy_and_grad(energy, x)
    total = torch.zeros_like(g[:, 0])
    for _ in range(n_slices):
        v = torch.randn_like(x)
        gv = (g * v).sum(-1)
        (hv,) = torch.autograd.grad(gv.sum(), x, create_graph=True)
        first = 0.5 * (g**2).sum(-1) if variance_reduction else 0.5 * gv**2
        total = total + first - (hv * v).sum(-1)
    return total / n_slices


def sm_denoising(
    energy: Energy, x: torch.Tensor, eps: float, control_variate: bool = True
) -> torch.Tensor:
    """Denoising score matching with noise variance σ² = ε (Vincent, 2011; paper eqs. 12–15; chapters 1, 4).

    With x̃ = x + √ε z, the per-sample DSM loss is L = ‖√ε z − ε∇E(x̃)‖² (eq. 12 with ψ = ε∇E). Its Taylor
    expansion (appendix A) gives E[L] = εd + 2ε²J + O(ε³), so

    * ``control_variate=True`` returns (L − ε‖z‖² + 2ε^{3/2} zᵀ∇E(x)) / (2ε²) (eq. 15 halved): mean J + O(ε),
      variance O(1) as ε → 0;
    * ``control_variate=False`` returns L / (2ε²), whose mean is J **plus the parameter-independent
      constant d / (2ε)**, and whose variance grows without bound as ε → 0 (eq. 14).

    Both have the same expected θ-gradient, that of J. The control variate costs one extra gradient
    evaluation at the clean x.
    """
    eps = check_step_size(eps)
    x = as_input(x)
    z = torch.randn_like(x)
    x_noisy = x + math.sqrt(eps) * z
    _, g_noisy = energy_and_grad(energy, x_noisy)
    loss = ((math.sqrt(eps) * z - eps * g_noisy) ** 2).sum(-1)
    if control_variate:
        _, g_clean = energy_and_grad(energy, x)
        loss = loss - eps * (z**2).sum(-1) + 2 * eps**1.5 * (z * g_clean).sum(-1)
    return loss / (2 * eps**2)


def sm_mvl(
    energy: Energy,
    x: torch.Tensor,
    eps: float,
    control_variate: bool = True,
    rescale: bool = False,
    detach_sample: bool = False,
) -> torch.Tensor:
    """The one-step minimum-velocity estimator of score matching (paper eqs. 10–11; chapter 3).

    Take one Langevin step from the data towards q^{1/2} ∝ exp(−E/2),

        x⁻ = x − (ε/2)∇E(x) + √(2ε) z,   z ~ N(0, I),

    and return (E(x) − E(x⁻))/ε, plus the control variate √(2/ε) zᵀ∇E(x) when ``control_variate=True``
    (section 3.2.1). The mean tends to J(x) = ½‖∇E‖² − ΔE as ε → 0; without the control variate the
    variance grows as Θ(1/ε) (eq. 11, chapter 4), with it it stays O(1).

    The gradient flows through x⁻ (through ∇E(x)); detaching the sample gives a different, wrong
    gradient (chapter 3). ``detach_sample=True`` exists only to demonstrate this: it treats x⁻ as a constant,
    and the expected θ-gradient becomes that of E_p[¼‖∇E‖² − ΔE] = 2 J(q^{1/2}), the score-matching objective
    of q^{1/2}, whose minimizer is q ∝ p² instead of q = p. Never train with it. ``rescale=True`` uses the
    per-sample step ε/max(1, ‖∇E(x)‖²) for stability
    (the estimate is then divided by that per-sample step).

    Both energies are evaluated with the same weights (``torch.nn.utils.parametrize.cached``): in training
    mode a spectrally normalized layer would otherwise update its power iteration between the two calls,
    and that change of weights, divided by ε, biases the estimate enough to derail training.

    Floating point: the estimator subtracts two nearly equal energies, so its rounding error is about
    (machine epsilon × |E|)/ε. Keep ε ≥ 1e-4 in float32; use float64 for smaller ε; keep TF32 off.
    """
    eps = check_step_size(eps)
    x = as_input(x)
    # Both energies must come from the same weights: a parametrized layer (spectral normalization) runs a
    # power iteration at every call in training mode, and a change of the weights between the two calls,
    # divided by ε, would swamp the estimate. ``cached`` computes such weights once for both calls.
    with parametrize.cached():
        e, g = energy_and_grad(energy, x)
        if rescale:
            step = eps / torch.clamp((g.detach() ** 2).sum(-1), min=1.0)
        else:
            step = torch.full_like(e, eps)
        z = torch.randn_like(x)
        x_minus = x - 0.5 * step[:, None] * g + torch.sqrt(2 * step)[:, None] * z
        if detach_sample:
            x_minus = x_minus.detach()
        e_minus = evaluate_energy(energy, x_minus)
    out = (e - e_minus) / step
    if control_variate:
        out = out + torch.sqrt(2 / step) * (z * g).sum(-1)
    return out


# --------------------------------------------------------------------------------------------------------
# Chapters 4–5: CD-1, the kernelized Stein discrepancy, and the MVL objectives of SVGD and SPOS.
# --------------------------------------------------------------------------------------------------------


@same_weights
def cd1_surrogate(energy: Energy, x: torch.Tensor, eps: float, control_variate: bool = True) -> torch.Tensor:
    """A per-sample loss whose θ-gradient is the CD-1 update with one Langevin step (paper eq. 16; chapter 4).

    Contrastive divergence with one step of Langevin dynamics towards q (Hyvärinen, 2007) draws
    x¹ = x − ε∇E(x) + √(2ε) z from each data point and treats it as a fixed sample (it is detached). The
    returned value is

        (E(x) − E(x¹)) / ε   (+ √(2/ε) zᵀ∇E(x) with ``control_variate=True``),

    so its θ-gradient is the CD-1 direction ∂θE(x) − ∂θE(x¹), rescaled by 1/ε; as ε → 0 its mean tends
    to ∇θJ. Without the control variate that gradient has variance Θ(1/ε) (the term −√(2/ε) ∂θ(zᵀ∇E(x)),
    section 3.3); the control variate has mean zero and cancels it.

    The *value* is **not** an estimate of J: its mean tends to E_p[‖∇E‖² − ΔE] = J + ½E_p‖∇E‖², which depends
    on θ (footnote 5 of the paper). Use it only to train; monitor with :func:`sm_exact` or :func:`sm_sliced`.
    """

    eps = check_step_size(eps)
    x = as_input(x)
    e, g = energy_and_grad(energy, x)
    x_one, z = langevin_step(energy, x, eps)  # detached: CD does not differentiate through the sampler
    out = (e - evaluate_energy(energy, x_one)) / eps
    if control_variate:
        out = out + math.sqrt(2 / eps) * (z * g).sum(-1)
    return out


def _stein_trace_sums(kernel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums Σⱼ tr ∇ₓ∇_y k(xᵢ, xⱼ) (diagonal included) and the diagonal terms, by autograd (d passes)."""
    xd = x.detach()
    y = xd.clone().requires_grad_(True)
    with torch.enable_grad():
        _, dk = kernel(xd, y)  # dk[i, j] = ∇ₓ k(xᵢ, yⱼ)
        rows = torch.zeros_like(xd[:, 0])
        diag = torch.zeros_like(xd[:, 0])
        n = xd.shape[0]
        idx = torch.arange(n, device=x.device)
        for l in range(xd.shape[1]):
            # column sums Σᵢ ∂dk[i, j, l]/∂y_{j,l}; the trace matrix is symmetric, so these are row sums
            (c,) = torch.autograd.grad(dk[:, :, l].sum(), y, retain_graph=True)
            (t,) = torch.autograd.grad(dk[idx, idx, l].sum(), y, retain_graph=True)
            rows = rows + c[:, l]
            diag = diag + t[:, l]
    return rows, diag


def ksd(energy: Energy, x: torch.Tensor, kernel=None, u_statistic: bool = True) -> torch.Tensor:
    """The kernelized Stein discrepancy between the data and q ∝ exp(−E) (Liu et al., 2016; chapter 5).

    With the model score s = −∇E and a symmetric positive-definite kernel k,

        KSD(p, q) = E_{x, x' ~ p} u(x, x'),
        u(x, x') = s(x)ᵀk(x, x')s(x') + s(x)ᵀ∇_{x'}k(x, x') + ∇ₓk(x, x')ᵀs(x') + tr ∇ₓ∇_{x'}k(x, x'),

    which equals E_{x,x'}[(s − ∇log p)(x)ᵀ k(x, x') (s − ∇log p)(x')] = ‖grad_p KL_q‖² in the
    H-Wasserstein geometry of SVGD (appendix B). Returns per-sample row averages ``[batch]`` whose mean is
    the U-statistic (1/(n(n−1))) Σ_{i≠j} u(xᵢ, xⱼ) (or, with ``u_statistic=False``, the V-statistic
    (1/n²) Σ_{i,j} u(xᵢ, xⱼ), which is what one SVGD step on the batch sees). Differentiable in θ.

    ``kernel(x, y) -> (K, dK)`` as :func:`mvl.samplers.rbf_kernel` (the default, median bandwidth); the
    trace term, which does not depend on θ, is computed by automatic differentiation of ``dK``.
    """

    kernel = rbf_kernel if kernel is None else kernel
    x = as_input(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError("the kernelized Stein discrepancy needs a batch of at least two points")
    _, g = energy_and_grad(energy, x)
    k, dk = kernel(x.detach(), x.detach())
    # u = gᵢᵀgⱼ k − gᵢᵀ∇_{x'}k(xᵢ, xⱼ) − gⱼᵀ∇ₓk(xᵢ, xⱼ) + trace, with ∇_{x'}k(xᵢ, xⱼ) = dk[j, i] (symmetric k)
    cross = torch.einsum("il,jil->ij", g, dk)
    u = (g @ g.T) * k - cross - cross.T
    rows, diag = _stein_trace_sums(kernel, x)
    if u_statistic:
        return (u.sum(1) - u.diagonal() + rows - diag) / (n - 1)
    return (u.sum(1) + rows) / n


@same_weights
def ksd_mvl(energy: Energy, x: torch.Tensor, eps: float, kernel=None, u_statistic: bool = True) -> torch.Tensor:
    """The one-step MVL estimator with SVGD as the sampler (paper sec. 3.4, appendix B; chapter 5).

    One SVGD step on the batch towards q^{1/2} ∝ exp(−E/2), x⁻ = x + ε φ(x), and the per-sample value
    (E(x) − E(x⁻))/ε. There is no noise, so there is no control variate. With ``u_statistic=False`` φ is the
    SVGD direction of :func:`mvl.samplers.svgd_direction` (every particle also interacts with itself) and,
    as ε → 0, the batch mean tends to

        ½ KSD_V(p̂, q) − ½ C_V,   C_V = (1/n²) Σᵢⱼ tr ∇ₓ∇_{x'}k(xᵢ, xⱼ),

    half the V-statistic of :func:`ksd` minus a constant that depends on the data and the kernel but not on
    θ (half the squared H-norm of the gradient of the entropy, eq. 9). With ``u_statistic=True`` (default)
    each particle is moved by the *other* particles only (the self-interaction is removed and the sum
    divided by n − 1), and the mean tends to ½ KSD_U − ½ C_U with the U-statistics of :func:`ksd`. Either way
    the θ-gradient is half that of the matching KSD. The V version carries, relative to the U-statistic, a
    θ-dependent O(1/n) penalty on ‖∇E‖² (the diagonal terms).

    The gradient flows through x⁻; float64 is advised for ε below 1e-4 (see :func:`sm_mvl`).
    """

    kernel = rbf_kernel if kernel is None else kernel
    eps = check_step_size(eps)
    x = as_input(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError("an SVGD step needs a batch of at least two points")
    e, g = energy_and_grad(energy, x)
    phi = svgd_direction(lambda v: 0.5 * evaluate_energy(energy, v), x, kernel, create_graph=True)
    if u_statistic:
        # remove each particle's interaction with itself: −½ k(xᵢ, xᵢ) ∇E(xᵢ) + ∇ₓk(xᵢ, xᵢ)
        k, dk = kernel(x.detach(), x.detach())
        idx = torch.arange(n, device=x.device)
        self_term = -0.5 * k.diagonal()[:, None] * g + dk[idx, idx]
        phi = (n * phi - self_term) / (n - 1)
    return (e - evaluate_energy(energy, x + eps * phi)) / eps


@same_weights
def spos_mvl(
    energy: Energy, x: torch.Tensor, eps: float, alpha: float, kernel=None, control_variate: bool = True
) -> torch.Tensor:
    """The one-step MVL estimator with SPOS as the sampler (paper appendix B.2; chapter 5).

    One step of :func:`mvl.samplers.spos_step` towards q^{1/2} (SVGD drift plus α times a Langevin step),
    and (E(x) − E(x⁻))/ε, plus the control variate √(2α/ε) zᵀ∇E(x) for the diffusion part. As ε → 0 the
    batch mean tends to α J + ½ KSD_V − ½ (1/n²) Σᵢⱼ tr ∇ₓ∇_{x'}k(xᵢ, xⱼ): the SPOS velocity interpolates
    score matching (α → ∞, after dividing by α) and the KSD (α = 0, :func:`ksd_mvl`).
    """

    eps = check_step_size(eps)
    x = as_input(x)
    e, g = energy_and_grad(energy, x)
    x_minus, z = spos_step(lambda v: 0.5 * evaluate_energy(energy, v), x, eps, alpha, kernel, create_graph=True)
    out = (e - evaluate_energy(energy, x_minus)) / eps
    if control_variate:
        out = out + math.sqrt(2 * alpha / eps) * (z * g).sum(-1)
    return out


def spos_mvl_released(energy: Energy, x: torch.Tensor, eps: float, w: float, kernel=None) -> torch.Tensor:
    """The SPOS-MVL estimate as the authors' released code forms it (``euc_spos``; chapter 5, paper note 9).

    A convex combination with weight w of an SVGD step and a Langevin step towards q^{1/2},

        x⁻ = x + (1 − w) ε φ(x) + w (−(ε/2)∇E(x) + √(2ε) ξ),

    with the Brownian increment scaled by w instead of √w, and (E(x) − E(x⁻))/ε plus the control variate
    w √(2/ε) ξᵀ∇E(x). Only for the chapter's demonstration: its Langevin part tempers the target (its ε → 0
    objective is minimised by q ∝ p^w). The correct convex combination is :func:`spos_mvl` with step
    (1 − w) ε and α = w/(1 − w). ``w = 1`` gives :func:`sm_mvl` and ``w = 0`` :func:`ksd_mvl` with
    ``u_statistic=False``. (The released code also rescales the step per sample; this function does not.)
    """
    eps = check_step_size(eps)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
        raise ValueError(f"the weight w must be a number in [0, 1], got {w!r}")
    kernel = rbf_kernel if kernel is None else kernel
    x = as_input(x)
    e, g = energy_and_grad(energy, x)
    phi = svgd_direction(lambda v: 0.5 * evaluate_energy(energy, v), x, kernel, create_graph=True)
    xi = torch.randn_like(x)
    x_minus = x + (1 - w) * eps * phi + w * (-0.5 * eps * g + math.sqrt(2 * eps) * xi)
    return (e - evaluate_energy(energy, x_minus)) / eps + w * math.sqrt(2 / eps) * (xi * g).sum(-1)


# ------------------------------------------------------------ Riemannian score matching on spheres (chapter 6)
def sm_riemannian_exact(energy: Energy, y: torch.Tensor, sphere) -> torch.Tensor:
    """Exact Riemannian score matching on a sphere (Mardia et al., 2016; paper section 4.1; chapter 6):

        J_M(y) = ½‖grad E(y)‖² − Δ_M E(y),

    with the Riemannian gradient and the Laplace–Beltrami operator of ``sphere`` (a
    :class:`mvl.manifolds.Sphere`), computed in each point's stereographic chart with n extra backward
    passes. ``energy`` takes embedded points ``[batch, n+1]``; only its values on the sphere matter.
    """
    x, _, _, g = sphere.chart_energy(energy, y, create_graph=True)
    lap = laplacian(g, x)
    return 0.5 * sphere.squared_gradient_norm(x, g) - sphere.laplace_beltrami_from_chart(x, g, lap)


def sm_riemannian_sliced(energy: Energy, y: torch.Tensor, sphere, n_slices: int = 1) -> torch.Tensor:
    """Sliced (Hutchinson) Riemannian score matching on a sphere (chapter 6): an unbiased estimate of J_M.

    In each point's chart, tr(G⁻¹∇ₓ²E) = λ⁻²ΔₓE is replaced by vᵀ∇ₓ²E v with v ~ N(0, G(x)⁻¹), one
    Hessian-vector product (one extra backward pass) per slice, whatever the dimension n:

        Ĵ(y) = ½‖grad E‖² − λ⁻² [λ² vᵀ∇ₓ²E v − 2(n − 2) xᵀ∂ₓE / (1 + ‖x‖²)],

    the Riemannian version of :func:`sm_sliced` (with its variance reduction: the gradient term is exact).
    Its mean over v is :func:`sm_riemannian_exact` for any number of slices.
    """
    if isinstance(n_slices, bool) or not isinstance(n_slices, int) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer, got {n_slices!r}")
    x, _, _, g = sphere.chart_energy(energy, y, create_graph=True)
    lam2 = sphere.conformal_factor(x).detach()
    total = torch.zeros_like(g[:, 0])
    for _ in range(n_slices):
        v = torch.randn_like(x) / lam2.sqrt()[:, None]  # v ~ N(0, G⁻¹) = N(0, λ⁻² I)
        (hv,) = torch.autograd.grad((g * v).sum(), x, create_graph=True)
        lap_x_estimate = lam2 * (hv * v).sum(-1)  # E_v[λ² vᵀHv] = Δₓ E
        total = total + sphere.laplace_beltrami_from_chart(x, g, lap_x_estimate)
    return 0.5 * sphere.squared_gradient_norm(x, g) - total / n_slices


@same_weights
def sm_riemannian_mvl(
    energy: Energy,
    y: torch.Tensor,
    sphere,
    eps: float,
    control_variate: bool = True,
    log_det_sign: int = 1,
    rescale: bool = False,
) -> torch.Tensor:
    """The one-step Riemannian minimum-velocity estimator of J_M (paper eqs. 17–18, appendix C; chapter 6).

    In each point's chart, take one Riemannian Langevin step towards q^{1/2} ∝ exp(−E/2),

        x⁻ = x + ε V_{1/2}(x) + √(2ε) z,   z ~ N(0, G(x)⁻¹),

    with the drift of :meth:`mvl.manifolds.Sphere.langevin_drift` (β = ½, the +½ log|G| sign), and return
    (E(y) − E(y⁻))/ε, plus the control variate √(2/ε) Σᵢ ∂ᵢE(x) zⁱ when ``control_variate=True``. Its mean
    tends to J_M(y) = ½‖grad E‖² − Δ_M E as ε → 0 (same sign convention as :func:`sm_mvl`; the paper's
    eq. 17 is −2 times this). Without the control variate the variance grows as Θ(1/ε). Only one
    energy gradient is needed, whatever the dimension. Use float64 for ε below about 1e-4.
    ``log_det_sign=-1`` uses the sign of log|G| printed in the paper's eq. (18) instead; it exists only for
    chapter 6's demonstration that this leaves a bias as ε → 0.

    ``rescale=True`` follows the authors' released code (``riem_ld(..., rescale=True)`` in
    ``src/score_est.py`` of ``thu-ml/wmvl``): each sample takes the step εᵢ = ε / max(1, ‖V_{1/2}(xᵢ)‖²)
    (chart drift, no gradient through εᵢ) and its estimate is divided by εᵢ instead of ε. Each term still
    has mean J_M(yᵢ) + O(εᵢ).
    """
    eps = check_step_size(eps)
    if log_det_sign not in (1, -1):
        raise ValueError(f"log_det_sign must be +1 or -1, got {log_det_sign!r}")
    x, s, e, g = sphere.chart_energy(energy, y, create_graph=True)
    z = sphere.chart_noise(x)
    drift = sphere.langevin_drift(x, g, beta=0.5, log_det_sign=log_det_sign)
    if rescale:  # per-sample step sizes [batch, 1]
        step = (eps / (drift.detach() ** 2).sum(-1, keepdim=True).clamp(min=1.0))
        x_minus = x + step * drift + torch.sqrt(2 * step) * z
        step = step[:, 0]
    else:
        step = eps
        x_minus = x + eps * drift + math.sqrt(2 * eps) * z
    e_minus = evaluate_energy(energy, sphere.from_chart(x_minus, s))
    out = (e - e_minus) / step
    if control_variate:
        noise_term = (g * z).sum(-1)
        out = out + (torch.sqrt(2 / step) if rescale else math.sqrt(2 / eps)) * noise_term
    return out
