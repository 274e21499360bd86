"""Riemannian Langevin dynamics and Riemannian score matching on spheres (chapter 6)."""

import math

import pytest
import torch

from mvl.energies import ScoreNetEnergy
from mvl.manifolds import Sphere, VonMisesFisher, mean_resultant_length
from mvl.objectives import sm_exact, sm_riemannian_exact, sm_riemannian_mvl
from mvl.samplers import riemannian_langevin_chain, riemannian_langevin_step


def tilted_mean(n):
    return Sphere(n).project(torch.arange(1.0, n + 2, dtype=torch.float64)[None])[0]


def closed_form(y, mu, kappa, n):
    """J_M(y) = ½κ²(1 − (μᵀy)²) − κ n μᵀy for E(y) = −κ μᵀy on Sⁿ."""
    t = y @ mu
    return 0.5 * kappa**2 * (1 - t**2) - kappa * n * t


def with_radial_terms(energy):
    """The same function on the sphere, extended differently off it: + f(‖y‖²) with f(1) = 0, f'(1), f''(1) ≠ 0."""

    def extended(y):
        r2 = (y**2).sum(-1)
        return energy(y) + 3.0 * (r2 - 1) + torch.sin(2 * (r2 - 1)) * (1 + y[:, 0]) + 5.0 * (r2 - 1) ** 2

    return extended


@pytest.mark.parametrize("n", [1, 2, 3])
def test_exact_riemannian_sm_matches_closed_form(n):
    sphere = Sphere(n)
    mu, kappa = tilted_mean(n), 2.0
    vmf = VonMisesFisher(mu, kappa)
    y = sphere.uniform(500, generator=torch.Generator().manual_seed(0))
    j = sm_riemannian_exact(vmf.energy, y, sphere)
    assert j.shape == (500,)
    assert torch.allclose(j, closed_form(y, mu, kappa, n), atol=1e-11)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-4, 1e-5])
def test_mvl_estimator_is_unbiased_up_to_order_eps(n, eps):
    """At fixed points, the mean over the Langevin noise is J_M(y) + O(ε), with O(1) variance (float64)."""
    torch.manual_seed(int(-math.log10(eps)) + 10 * n)
    sphere = Sphere(n)
    mu, kappa = tilted_mean(n), 2.0
    vmf = VonMisesFisher(mu, kappa)
    y0 = sphere.uniform(4, generator=torch.Generator().manual_seed(n))
    reps = 20_000
    y = y0.repeat_interleave(reps, 0)
    est = sm_riemannian_mvl(vmf.energy, y, sphere, eps).detach().reshape(4, reps)
    target = closed_form(y0, mu, kappa, n)
    se = est.std(1) / math.sqrt(reps)
    assert (est.std(1) < 10).all(), "the control variate must keep the variance O(1)"
    assert ((est.mean(1) - target).abs() < 4.5 * se + 20 * eps).all(), (est.mean(1), target, se)


def test_mvl_variance_without_control_variate_grows_like_one_over_eps():
    torch.manual_seed(0)
    sphere = Sphere(2)
    vmf = VonMisesFisher(tilted_mean(2), 2.0)
    y = sphere.uniform(1, generator=torch.Generator().manual_seed(0)).repeat(20_000, 1)
    var = {eps: sm_riemannian_mvl(vmf.energy, y, sphere, eps, control_variate=False).detach().var().item() for eps in (1e-2, 1e-4)}
    assert 50 < var[1e-4] / var[1e-2] < 200  # ≈ 100 = ratio of the step sizes
    with_cv = sm_riemannian_mvl(vmf.energy, y, sphere, 1e-4).detach().var().item()
    assert with_cv < var[1e-4] / 100


@pytest.mark.parametrize("n", [1, 2])
def test_results_do_not_depend_on_the_extension_off_the_sphere(n):
    torch.manual_seed(0)
    sphere = Sphere(n)
    net = ScoreNetEnergy(n + 1, hidden=(16, 16), activation="tanh").double()
    other = with_radial_terms(net)
    y = sphere.uniform(64, generator=torch.Generator().manual_seed(1))

    def run(fn, energy):
        torch.manual_seed(123)
        net.zero_grad()
        out = fn(energy)
        if out.requires_grad:
            out.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in net.parameters()]) if out.requires_grad else None
        return out.detach(), grads

    for fn in (
        lambda e: sm_riemannian_exact(e, y, sphere),
        lambda e: sm_riemannian_mvl(e, y, sphere, 1e-3),
        lambda e: riemannian_langevin_step(e, y, sphere, 1e-2)[0],
        lambda e: sphere.laplace_beltrami(e, y),
        lambda e: sphere.riemannian_gradient(e, y),
    ):
        (a, ga), (b, gb) = run(fn, net), run(fn, other)
        assert torch.allclose(a, b, atol=1e-9)
        if ga is not None:
            assert torch.allclose(ga, gb, atol=1e-8)
    # ... whereas Euclidean score matching on the embedding sees the extension
    assert not torch.allclose(sm_exact(net, y), sm_exact(other, y), atol=1e-3)


def test_parameter_gradients_of_mvl_agree_with_exact():
    torch.manual_seed(0)
    sphere = Sphere(2)
    net = ScoreNetEnergy(3, hidden=(32, 32), activation="tanh").double()
    y = VonMisesFisher([0.0, 0.6, 0.8], 3.0).sample(20_000, seed=0)

    def grad(fn):
        net.zero_grad()
        fn(net, y).mean().backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    exact = grad(lambda e, v: sm_riemannian_exact(e, v, sphere))
    approx = grad(lambda e, v: sm_riemannian_mvl(e, v, sphere, 1e-4))
    assert torch.nn.functional.cosine_similarity(exact, approx, dim=0) > 0.99


@pytest.mark.parametrize("n", [1, 2, 3])
def test_drift_is_the_fokker_planck_drift(n):
    """Vⁱ = gⁱʲ∂ⱼ(−βE + ½ log|G|) + ∂ⱼgⁱʲ, assembled here from autograd of the metric functions."""
    sphere = Sphere(n)
    x = torch.randn(20, n, dtype=torch.float64)
    x = (x / x.norm(dim=-1, keepdim=True) * torch.rand(20, 1, dtype=torch.float64)).requires_grad_(True)
    g = torch.randn(20, n, dtype=torch.float64)
    (dlogdet,) = torch.autograd.grad(sphere.log_det_metric(x).sum(), x)
    ginv = sphere.inverse_metric(x).detach()
    for sign in (1, -1):
        generic = (ginv @ (-0.7 * g + sign * 0.5 * dlogdet)[:, :, None])[:, :, 0] + sphere.inverse_metric_divergence(x.detach())
        assert torch.allclose(sphere.langevin_drift(x.detach(), g, beta=0.7, log_det_sign=sign), generic, atol=1e-12)


def test_step_is_the_chart_update():
    torch.manual_seed(0)
    sphere = Sphere(2)
    vmf = VonMisesFisher([0.0, 0.0, 1.0], 2.0)
    y = sphere.uniform(10, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    y_new, z = riemannian_langevin_step(vmf.energy, y, sphere, 0.01, beta=0.5)
    x, s, _, g = sphere.chart_energy(vmf.energy, y, create_graph=False)
    expected = sphere.from_chart(x + 0.01 * sphere.langevin_drift(x, g, 0.5) + math.sqrt(0.02) * z, s)
    assert torch.allclose(y_new, expected, atol=1e-14)
    assert torch.allclose(y_new.norm(dim=-1), torch.ones(10, dtype=torch.float64), atol=1e-14)


@pytest.mark.parametrize("n, kappa", [(1, 2.0), (2, 2.0)])
def test_langevin_chain_mean_resultant_length(n, kappa):
    """The chain samples vMF(μ, κ): its mean resultant length is A_{n+1}(κ). The sign-flipped drift of the
    paper's eq. (4) samples ∝ p(y) / (1 + |y_{n+1}|)^{2n} instead, which we also predict by quadrature."""
    torch.manual_seed(n)
    sphere = Sphere(n)
    mu = torch.zeros(n + 1, dtype=torch.float64)
    mu[-1] = 1.0
    vmf = VonMisesFisher(mu, kappa)
    y0 = sphere.uniform(4000, generator=torch.Generator().manual_seed(0))
    y = riemannian_langevin_chain(vmf.energy, y0, sphere, eps=0.01, n_steps=500)
    t = y @ mu
    se = t.std().item() / math.sqrt(len(t))
    target = mean_resultant_length(n + 1, kappa)
    assert abs(y.mean(0).norm().item() - target) < 4 * se + 0.005
    wrong = riemannian_langevin_chain(vmf.energy, y0, sphere, eps=0.01, n_steps=500, log_det_sign=-1)
    pts, w = sphere.grid(400)
    q = torch.exp(vmf.log_prob(pts) - 2 * n * torch.log1p(pts[:, -1].abs())) * w
    predicted = ((q / q.sum())[:, None] * pts).sum(0).norm().item()
    assert abs(wrong.mean(0).norm().item() - predicted) < 4 * se + 0.005
    assert abs(predicted - target) > 0.1


def test_bad_inputs_raise():
    sphere = Sphere(2)
    vmf = VonMisesFisher([0.0, 0.0, 1.0], 1.0)
    y = sphere.uniform(3)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            sm_riemannian_mvl(vmf.energy, y, sphere, bad)
        with pytest.raises(ValueError, match="eps"):
            riemannian_langevin_step(vmf.energy, y, sphere, bad)
    with pytest.raises(ValueError, match="beta"):
        riemannian_langevin_step(vmf.energy, y, sphere, 0.1, beta=0)
    with pytest.raises(ValueError, match="log_det_sign"):
        riemannian_langevin_step(vmf.energy, y, sphere, 0.1, log_det_sign=0)
    with pytest.raises(ValueError, match="unit sphere"):
        sm_riemannian_exact(vmf.energy, 2 * y, sphere)
    with pytest.raises(ValueError, match="shape"):
        sm_riemannian_mvl(vmf.energy, y[:, :2], sphere, 1e-3)
    with pytest.raises(ValueError, match="n_steps"):
        riemannian_langevin_chain(vmf.energy, y, sphere, 0.1, n_steps=-1)
