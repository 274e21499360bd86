"""Score-matching estimators against the closed form on a quadratic energy, and against each other."""

import math

import pytest
import torch

from mvl.data import banana
from mvl.energies import MLPEnergy, QuadraticEnergy, ScoreNetEnergy
from mvl.objectives import energy_and_grad, laplacian, sm_denoising, sm_exact, sm_mvl, sm_sliced

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
