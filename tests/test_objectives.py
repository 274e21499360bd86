"""Score-matching estimators against the closed form on a quadratic energy, and against each other."""

import math

import pytest
import torch

from mvl.data import banana
from mvl.energies import MLPEnergy, QuadraticEnergy, ScoreNetEnergy
from mvl.energies import energy_and_grad, laplacian
from mvl.objectives import sm_denoising, sm_exact, sm_mvl, sm_sliced

A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.3, 0.1], [0.3, 0.5, 0.0], [0.1, 0.0, 0.8]], dtype=torch.float64)
MU = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)


def gaussian_sample(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T


def z_score(values, target):
    return abs(values.mean().item() - target) / (values.std().item() / math.sqrt(len(values)))


def test_sm_exact_quadratic_closed_form():
    energy = QuadraticEnergy(A)
    x = gaussian_sample(50_000)
    per_sample = sm_exact(energy, x)
    assert per_sample.shape == (50_000,)
    # per sample, J(x) = 1/2 x^T A^2 x - tr A exactly
    expected = 0.5 * ((x @ A @ A) * x).sum(-1) - torch.trace(A)
    assert torch.allclose(per_sample, expected, atol=1e-10)
    # and its mean matches 1/2 tr(A^2 Sigma) + 1/2 mu^T A^2 mu - tr A
    closed = energy.sm_objective(MU, SIGMA).item()
    assert z_score(per_sample.detach(), closed) < 4
    # centred data: J = 1/2 tr(A^2 Sigma) - tr A (the formula in the issue)
    xc = x - MU
    assert z_score(sm_exact(energy, xc).detach(), (0.5 * torch.trace(A @ A @ SIGMA) - torch.trace(A)).item()) < 4


def test_laplacian_matches_hessian_trace():
    torch.manual_seed(0)
    energy = MLPEnergy(4, hidden=(16,)).double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    _, g = energy_and_grad(energy, x)
    lap = laplacian(g, x)
    for i in range(5):
        h = torch.autograd.functional.hessian(lambda v: energy(v[None])[0], x[i].detach())
        assert torch.allclose(lap[i], torch.trace(h), atol=1e-10)


@pytest.mark.parametrize(
    "estimator, kwargs",
    [
        (sm_sliced, {}),
        (sm_sliced, {"n_slices": 3}),
        (sm_sliced, {"variance_reduction": False}),
        (sm_denoising, {"eps": 1e-3}),
        (sm_mvl, {"eps": 1e-3}),
        (sm_mvl, {"eps": 1e-4}),
    ],
)
def test_estimators_agree_with_exact_on_quadratic(estimator, kwargs):
    torch.manual_seed(1)
    energy = QuadraticEnergy(A)
    x = gaussian_sample(100_000, seed=2)
    diff = (estimator(energy, x, **kwargs) - sm_exact(energy, x)).detach()
    assert diff.shape == (100_000,)
    assert z_score(diff, 0.0) < 4


def test_denoising_without_control_variate_carries_constant():
    torch.manual_seed(3)
    energy = QuadraticEnergy(A)
    x = gaussian_sample(100_000, seed=4)
    eps = 1e-2
    raw = sm_denoising(energy, x, eps, control_variate=False).detach()
    exact = sm_exact(energy, x).detach()
    # mean = J + d / (2 eps) + O(eps): the O(eps) term is below the Monte-Carlo error here
    assert z_score(raw - exact, 3 / (2 * eps)) < 4


@pytest.mark.parametrize("estimator, kwargs", [(sm_sliced, {}), (sm_denoising, {"eps": 1e-3}), (sm_mvl, {"eps": 1e-3})])
def test_parameter_gradients_agree_with_exact(estimator, kwargs):
    torch.manual_seed(0)
    energy = ScoreNetEnergy(2, hidden=(32, 32)).double()
    x = banana(20_000, seed=0, dtype=torch.float64)

    def grad(fn, **kw):
        energy.zero_grad()
        fn(energy, x, **kw).mean().backward()
        return torch.cat([p.grad.flatten() for p in energy.parameters()])

    cos = torch.nn.functional.cosine_similarity(grad(sm_exact), grad(estimator, **kwargs), dim=0)
    assert cos > 0.99


def test_accepts_any_callable_energy():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)

    def energy(x):  # E(x) = sum_i w_i x_i^2 / 2 + x_1 x_2 ; Laplacian = w_1 + w_2
        return 0.5 * (w * x**2).sum(-1) + x[:, 0] * x[:, 1]

    x = torch.randn(10, 2, dtype=torch.float64)
    j = sm_exact(energy, x)
    g = torch.stack([w[0] * x[:, 0] + x[:, 1], w[1] * x[:, 1] + x[:, 0]], 1)
    assert torch.allclose(j, 0.5 * (g**2).sum(-1) - w.sum())
    j.mean().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_bad_inputs_raise():
    energy = QuadraticEnergy(A)
    x = gaussian_sample(4)
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            sm_mvl(energy, x, bad)
        with pytest.raises(ValueError, match="eps"):
            sm_denoising(energy, x, bad)
    with pytest.raises(ValueError, match="n_slices"):
        sm_sliced(energy, x, n_slices=0)
    with pytest.raises(ValueError, match=r"\[batch\]"):
        sm_exact(lambda v: v, x)
    with pytest.raises(ValueError, match="floating-point"):
        sm_exact(energy, torch.ones(3, 3, dtype=torch.long))


def test_fisher_divergence_between_gaussians():
    from mvl.objectives import fisher_divergence

    # p = N(0, I), q = N(m, I): D_F = 1/2 ||m||^2 for every x
    m = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x = torch.randn(10, 2, dtype=torch.float64)
    d = fisher_divergence(lambda v: -0.5 * (v**2).sum(-1), QuadraticEnergy(torch.eye(2, dtype=torch.float64), m), x)
    assert torch.allclose(d, torch.full((10,), 2.5, dtype=torch.float64))
    # and it relates to the Hyvarinen objective by D_F = J + C_p with C_p = 1/2 E||x||^2 = d/2
    xs = gaussian_sample(1, seed=0)  # shape check on 3-D
    assert fisher_divergence(lambda v: -(v**2).sum(-1), QuadraticEnergy(A), xs).shape == (1,)


def test_laplacian_without_graph_for_evaluation():
    torch.manual_seed(0)
    energy = QuadraticEnergy(A)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    _, g = energy_and_grad(energy, x)
    lap = laplacian(g, x, create_graph=False)  # every coordinate, not only the first
    assert torch.allclose(lap, torch.full((6,), torch.trace(A).item(), dtype=torch.float64))


# --- chapter 3 (issue 3): the minimum-velocity estimator against closed forms -------------------------


def quadratic_case(seed, n=200_000):
    """The quadratic energy E(x) = ½xᵀAx and a float64 sample of N(MU, SIGMA), both seeded."""
    torch.manual_seed(seed)
    return QuadraticEnergy(A), gaussian_sample(n, seed=seed + 1)


def quadratic_mvl_bias(x, eps):
    """For E(x) = ½xᵀAx the one-step estimator's mean over z is exactly J(x) − (ε/8) xᵀA³x."""
    return -(eps / 8) * ((x @ A @ A @ A) * x).sum(-1)


@pytest.mark.parametrize("eps", [1e-4, 1e-3, 1e-2])
def test_sm_mvl_matches_quadratic_closed_form(eps):
    energy, x = quadratic_case(5)
    est = sm_mvl(energy, x, eps).detach()
    # the mean is the closed-form objective 1/2 tr(A^2 Sigma) + 1/2 mu^T A^2 mu - tr A, within Monte-Carlo error
    closed = energy.sm_objective(MU, SIGMA).item()
    bias = -(eps / 8) * (torch.trace(A @ A @ A @ SIGMA) + MU @ A @ A @ A @ MU).item()
    assert z_score(est, closed + bias) < 4
    # per sample, after removing the exact O(eps) term, only the zero-mean noise of z is left (a sharper test)
    exact = (0.5 * ((x @ A @ A) * x).sum(-1) - torch.trace(A)).detach()
    assert z_score(est - exact - quadratic_mvl_bias(x, eps), 0.0) < 4


def test_sm_mvl_bias_is_order_eps():
    """The paired test above can fail: at a large step the O(ε) term is detected, and it has the predicted size."""
    energy, x = quadratic_case(7)
    eps = 0.1
    diff = (sm_mvl(energy, x, eps) - sm_exact(energy, x)).detach()
    assert z_score(diff, 0.0) > 10
    assert z_score(diff - quadratic_mvl_bias(x, eps), 0.0) < 4


def test_sm_mvl_rescaled_step_quadratic():
    energy, x = quadratic_case(9)
    eps = 1e-2
    est = sm_mvl(energy, x, eps, rescale=True).detach()
    step = eps / torch.clamp(((x @ A) ** 2).sum(-1), min=1.0)
    exact = sm_exact(energy, x).detach()
    assert z_score(est - exact - quadratic_mvl_bias(x, 1.0) * step, 0.0) < 4


def test_sm_mvl_without_control_variate_is_unbiased_but_noisy():
    energy, x = quadratic_case(11)
    exact = sm_exact(energy, x).detach()
    raw = (sm_mvl(energy, x, 1e-3, control_variate=False).detach() - exact)
    cv = (sm_mvl(energy, x, 1e-3).detach() - exact)
    assert z_score(raw, 0.0) < 4
    # the noise term sqrt(2/eps) z^T grad E dominates: Var = (2/eps) E||A x||^2 (eq. 11)
    expected_var = 2 / 1e-3 * ((x @ A) ** 2).sum(-1).mean().item()
    assert abs(raw.var().item() / expected_var - 1) < 0.05
    assert cv.var().item() < raw.var().item() / 100


def _param_grad(energy, loss):
    energy.zero_grad()
    loss.backward()
    # the output bias gets no gradient (None or 0): a constant shift of E changes neither score nor Laplacian
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in energy.parameters()])


def test_sm_mvl_gradient_matches_exact_on_small_mlp_and_detaching_does_not():
    torch.manual_seed(13)
    energy = MLPEnergy(3, hidden=(16, 16)).double()
    with torch.no_grad():  # a steeper energy, so that the ½‖∇E‖² term matters as much as the Laplacian
        energy.net[-1].weight.mul_(10.0)
    x = gaussian_sample(10_000, seed=14)
    g_exact = _param_grad(energy, sm_exact(energy, x).mean())
    g_mvl = _param_grad(energy, sm_mvl(energy, x, 1e-3).mean())
    g_detached = _param_grad(energy, sm_mvl(energy, x, 1e-3, detach_sample=True).mean())

    def quarter_objective(energy, x):  # E_p[1/4 ||grad E||^2 - Laplacian E] = 2 J(q^{1/2})
        x = x.detach().requires_grad_(True)
        _, g = energy_and_grad(energy, x)
        return 0.25 * (g**2).sum(-1) - laplacian(g, x)

    g_quarter = _param_grad(energy, quarter_objective(energy, x).mean())
    cos = torch.nn.functional.cosine_similarity
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert cos(g_mvl, g_exact, dim=0) > 0.99
    assert cos(g_detached, g_quarter, dim=0) > 0.99
    assert rel(g_mvl, g_exact) < 0.1
    assert rel(g_detached, g_quarter) < 0.1
    assert rel(g_detached, g_exact) > 0.15  # about 0.21 here: ten times the estimator's own error


def test_sm_mvl_detached_sample_fits_the_square_of_the_data_density():
    """1-D Gaussian data N(0, s²), model precision a: the true gradient vanishes at a = 1/s², the detached one
    at a = 2/s² (q ∝ p²)."""
    torch.manual_seed(15)
    s = 1.5
    x = s * torch.randn(400_000, 1, dtype=torch.float64)
    for a, mvl_grad, detached_grad in ((1 / s**2, 0.0, -0.5), (2 / s**2, 1.0, 0.0)):
        energy = QuadraticEnergy(torch.tensor([[a]], dtype=torch.float64), trainable=True)
        grads = [
            torch.autograd.grad(sm_mvl(energy, x, 1e-4, detach_sample=d).mean(), energy.precision)[0].item()
            for d in (False, True)
        ]
        # d/da E[1/2 a^2 x^2 - a] = a s^2 - 1 and d/da E[1/4 a^2 x^2 - a] = a s^2 / 2 - 1
        assert abs(grads[0] - mvl_grad) < 0.02
        assert abs(grads[1] - detached_grad) < 0.02


def test_sm_mvl_uses_one_set_of_weights_with_spectral_norm():
    """In training mode a spectrally normalized layer updates its power iteration at every call; sm_mvl must
    evaluate E(x) and E(x⁻) with the same weights, or the change divided by ε swamps the estimate."""
    torch.manual_seed(16)
    energy = ScoreNetEnergy(2, hidden=(32, 32), spectral_norm=True).double()
    energy.train()
    x = banana(20_000, seed=3, dtype=torch.float64)
    for _ in range(3):  # let the power iteration move
        sm_mvl(energy, x[:10], 1e-5)
    diff = (sm_mvl(energy, x, 1e-5) - sm_exact(energy, x)).detach()
    assert z_score(diff, 0.0) < 4


def test_step_estimators_use_one_set_of_weights():
    """Every step-size estimator is unaffected by spectral norm's per-call power iteration.

    In evaluation mode the power iteration is frozen; in training mode it advances once per call of the
    estimator (a tiny change of the weights), but must not advance between the energies compared inside
    one call, or the difference divided by eps = 1e-6 would be off by orders of magnitude.
    """
    from mvl.objectives import cd1_surrogate, ksd_mvl, spos_mvl

    torch.manual_seed(0)
    net = ScoreNetEnergy(2, hidden=(16, 16), spectral_norm=True).double()
    x = banana(200, seed=0, dtype=torch.float64)
    for fn, kw in [(sm_mvl, {}), (sm_denoising, {}), (cd1_surrogate, {}), (ksd_mvl, {}), (spos_mvl, {"alpha": 1.0})]:
        net.eval()
        torch.manual_seed(1)
        frozen = fn(net, x, 1e-6, **kw).mean().item()
        net.train()
        torch.manual_seed(1)
        value = fn(net, x, 1e-6, **kw).mean().item()
        assert abs(value - frozen) < 1e-2 * (1 + abs(frozen)), (fn.__name__, value, frozen)


def test_boundary_flux_closes_the_score_matching_identity_on_the_truncated_cosine():
    """D_F = J + C_p + Φ on a truncated support (chapter 1): the flux of E = E_true + c x₁² is 2c."""
    from mvl.data import cosine, cosine_boundary, cosine_log_density
    from mvl.objectives import boundary_flux, fisher_divergence

    c = 0.5

    def true_energy(v):
        return 0.5 * (v[:, 1] - 3.0 * torch.cos(2.0 * v[:, 0])) ** 2

    def energy(v):
        return true_energy(v) + c * v[:, 0] ** 2

    nodes, normal, weight = cosine_boundary()
    assert boundary_flux(energy, nodes, normal, weight).item() == pytest.approx(2 * c, abs=1e-9)
    assert abs(boundary_flux(true_energy, nodes, normal, weight).item()) < 1e-9
    # Monte Carlo: D_F - J - C_p, with C_p = -J(true energy) on the same points (paired), is Φ, not 0
    x = cosine(100_000, seed=3, dtype=torch.float64)
    gap = (fisher_divergence(cosine_log_density, energy, x) - sm_exact(energy, x) + sm_exact(true_energy, x)).detach()
    assert z_score(gap, 2 * c) < 4
    assert z_score(gap, 0.0) > 10


def test_boundary_flux_rejects_mismatched_shapes():
    from mvl.objectives import boundary_flux

    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="normal"):
        boundary_flux(lambda v: (v**2).sum(-1), x, torch.zeros(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="weight"):
        boundary_flux(lambda v: (v**2).sum(-1), x, torch.zeros(4, 2), torch.ones(3))
