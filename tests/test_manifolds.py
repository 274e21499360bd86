"""The sphere's charts, metric and calculus, and the von Mises–Fisher densities (chapter 6)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import vonmises_fisher

from mvl.energies import MLPEnergy
from mvl.manifolds import (
    Sphere,
    VonMisesFisher,
    VonMisesFisherMixture,
    angles_to_points,
    hellinger_on_grid,
    kl_and_correlation,
    log_density_on_grid,
    riemannian_fisher_divergence,
    lonlat_to_points,
    mean_resultant_length,
)


def special_points(n):
    """Random points plus the poles, the equator and points just either side of it."""
    sphere = Sphere(n)
    y = sphere.uniform(50, generator=torch.Generator().manual_seed(n))
    e = torch.eye(n + 1, dtype=torch.float64)
    near = sphere.project(e[0] + 1e-9 * e[-1])
    extra = torch.stack([e[-1], -e[-1], e[0], near, sphere.project(e[0] - 1e-9 * e[-1])])
    return torch.cat([y, extra])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_chart_round_trip_and_unit_ball(n):
    sphere = Sphere(n)
    y = special_points(n)
    x, s = sphere.to_chart(y)
    assert x.shape == (len(y), n) and s.shape == (len(y),)
    assert torch.allclose(sphere.from_chart(x, s), y, atol=1e-14)
    assert (x.norm(dim=-1) <= 1 + 1e-12).all()
    assert torch.equal(s, torch.where(y[:, -1] >= 0, 1.0, -1.0).to(s))
    # the charts extend to all of R^n and always land on the sphere
    far = 10 * torch.randn(100, n, dtype=torch.float64)
    for sign in (1.0, -1.0):
        out = sphere.from_chart(far, torch.full((100,), sign, dtype=torch.float64))
        assert torch.allclose(out.norm(dim=-1), torch.ones(100, dtype=torch.float64), atol=1e-14)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_metric_is_pullback_of_euclidean(n):
    """G = Jᵀ J for the chart map's Jacobian J, and the log-determinant and ∂ₖg^{ik} formulas agree with autograd."""
    sphere = Sphere(n)
    y = special_points(n)
    x, s = sphere.to_chart(y)
    for i in range(0, len(x), 7):
        jac = torch.autograd.functional.jacobian(lambda v: sphere.from_chart(v[None], s[i : i + 1])[0], x[i])
        assert torch.allclose(jac.T @ jac, sphere.metric(x[i : i + 1])[0], atol=1e-13)
        v = torch.randn(1, n, dtype=torch.float64)
        assert torch.allclose(sphere.pushforward(x[i : i + 1], s[i : i + 1], v), (jac @ v[0])[None], atol=1e-13)
    assert torch.allclose(sphere.log_det_metric(x), torch.logdet(sphere.metric(x)), atol=1e-12)
    assert torch.allclose(sphere.inverse_metric(x), torch.linalg.inv(sphere.metric(x)), atol=1e-12)
    xr = x.clone().requires_grad_(True)
    ginv = sphere.inverse_metric(xr)
    div = torch.stack(
        [sum(torch.autograd.grad(ginv[:, i, k].sum(), xr, retain_graph=True)[0][:, k] for k in range(n)) for i in range(n)],
        -1,
    )
    assert torch.allclose(sphere.inverse_metric_divergence(x), div, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2])
def test_volume_element_integrates_to_the_sphere_area(n):
    """∫ √|G| dx over the unit ball of one chart is half the area (the chart covers one hemisphere)."""
    sphere = Sphere(n)
    if n == 1:
        x = torch.linspace(-1, 1, 200_001, dtype=torch.float64)[:, None]
        f = torch.exp(0.5 * sphere.log_det_metric(x))
        half = torch.trapezoid(f, x[:, 0]).item()
    else:  # polar coordinates in the disc: ∫ 4/(1+r²)² r dr dφ
        r = torch.linspace(0, 1, 200_001, dtype=torch.float64)
        x = torch.stack([r, torch.zeros_like(r)], -1)
        half = 2 * math.pi * torch.trapezoid(torch.exp(0.5 * sphere.log_det_metric(x)) * r, r).item()
    assert half == pytest.approx(0.5 * math.exp(sphere.log_volume()), rel=1e-9)
    assert math.exp(Sphere(1).log_volume()) == pytest.approx(2 * math.pi)
    assert math.exp(Sphere(2).log_volume()) == pytest.approx(4 * math.pi)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_gradient_and_laplace_beltrami_of_the_vmf_energy(n):
    sphere = Sphere(n)
    mu = sphere.project(torch.arange(1.0, n + 2, dtype=torch.float64)[None])[0]
    kappa = 2.5
    vmf = VonMisesFisher(mu, kappa)
    y = special_points(n)
    t = y @ mu
    # grad(−κμᵀy) = −κ(μ − (μᵀy) y),  Δ_M(μᵀy) = −n μᵀy
    assert torch.allclose(sphere.riemannian_gradient(vmf.energy, y), -kappa * (mu - t[:, None] * y), atol=1e-12)
    assert torch.allclose(sphere.laplace_beltrami(vmf.energy, y), kappa * n * t, atol=1e-11)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_calculus_matches_extrinsic_formulas_for_a_network(n):
    """For any extension f: grad f = (I − yyᵀ)∇f and Δ_M f = Δf − yᵀ∇²f y − n yᵀ∇f on the unit sphere."""
    torch.manual_seed(0)
    sphere = Sphere(n)
    f = MLPEnergy(n + 1, hidden=(16, 16), activation="tanh").double()
    y = special_points(n)[:12]
    grad = torch.autograd.functional.jacobian(lambda v: f(v).sum(), y)
    proj = torch.eye(n + 1, dtype=torch.float64) - y[:, :, None] * y[:, None, :]
    assert torch.allclose(sphere.riemannian_gradient(f, y), (proj @ grad[:, :, None])[:, :, 0], atol=1e-12)
    expected = []
    for i in range(len(y)):
        h = torch.autograd.functional.hessian(lambda v: f(v[None])[0], y[i])
        expected.append(torch.trace(h) - y[i] @ h @ y[i] - n * y[i] @ grad[i])
    assert torch.allclose(sphere.laplace_beltrami(f, y), torch.stack(expected), atol=1e-11)


def test_uniform_and_grid():
    g = torch.Generator().manual_seed(0)
    y = Sphere(2).uniform(100_000, generator=g)
    assert torch.allclose(y.norm(dim=-1), torch.ones(len(y), dtype=torch.float64))
    assert y.mean(0).abs().max() < 0.01
    # Archimedes: the height of a uniform point on S² is uniform on [−1, 1]
    assert abs((y[:, 2] ** 2).mean().item() - 1 / 3) < 0.005
    for n, res in ((1, 64), (2, 32)):
        pts, w = Sphere(n).grid(res)
        assert w.sum().item() == pytest.approx(math.exp(Sphere(n).log_volume()), rel=1e-12)
        assert torch.allclose(pts.norm(dim=-1), torch.ones(len(pts), dtype=torch.float64))
        # a low-degree polynomial is integrated exactly: ∫ y_1² dV = |Sⁿ| / (n + 1)
        assert (w * pts[:, 0] ** 2).sum().item() == pytest.approx(w.sum().item() / (n + 1), rel=1e-12)
    with pytest.raises(ValueError, match="S\\^1 and S\\^2"):
        Sphere(3).grid(10)
    assert torch.allclose(angles_to_points([0.0, math.pi / 2]), torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(lonlat_to_points([0.0], [math.pi / 2]), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize("n, kappa", [(1, 0.0), (1, 2.0), (1, 300.0), (2, 0.0), (2, 0.3), (2, 7.0), (2, 2000.0), (3, 5.0)])
def test_vmf_log_density_is_normalized_and_matches_scipy(n, kappa):
    mu = Sphere(n).project(torch.ones(1, n + 1, dtype=torch.float64))[0]
    vmf = VonMisesFisher(mu, kappa)
    if n <= 2:
        pts, w = Sphere(n).grid(2000 if n == 1 else 400)
        total = (w * vmf.log_prob(pts).exp()).sum().item()
        assert total == pytest.approx(1.0, rel=1e-9)
    y = vmf.sample(50, seed=1)
    if kappa > 0:
        assert np.allclose(vmf.log_prob(y).numpy(), vonmises_fisher(mu.numpy(), kappa).logpdf(y.numpy()), atol=1e-9)
    else:
        assert torch.allclose(vmf.log_prob(y), torch.full((50,), -Sphere(n).log_volume(), dtype=torch.float64))


def test_vmf_log_density_is_finite_for_huge_kappa():
    vmf = VonMisesFisher([0.0, 0.0, 1.0], 1e6)
    lp = vmf.log_prob(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64))
    assert torch.isfinite(lp).all()
    # near the mode the density is that of N(0, I/κ) in the tangent plane: log p(μ) ≈ log(κ / 2π)
    assert lp[0].item() == pytest.approx(math.log(1e6 / (2 * math.pi)), abs=1e-5)


@pytest.mark.parametrize("n, kappa", [(1, 2.0), (2, 4.0), (3, 10.0)])
def test_vmf_sampler_mean_resultant_length_and_height_law(n, kappa):
    mu = torch.zeros(n + 1, dtype=torch.float64)
    mu[0] = 1.0
    vmf = VonMisesFisher(mu, kappa)
    y = vmf.sample(40_000, seed=0)
    assert torch.allclose(y.norm(dim=-1), torch.ones(len(y), dtype=torch.float64))
    t = y @ mu
    se = t.std().item() / math.sqrt(len(t))
    assert abs(t.mean().item() - mean_resultant_length(n + 1, kappa)) < 4 * se
    assert abs(y.mean(0).norm().item() - vmf.mean_resultant_length()) < 5 * se
    if n == 2:  # on S² the law of t = μᵀy is ∝ exp(κt) on [−1, 1]: P(t ≤ 0) = (1 − e^{−κ}) / (e^{κ} − e^{−κ})
        p0 = (1 - math.exp(-kappa)) / (math.exp(kappa) - math.exp(-kappa))
        assert abs((t <= 0).double().mean().item() - p0) < 4 * math.sqrt(p0 * (1 - p0) / len(t))


def test_mixture_density_and_sampler():
    mix = VonMisesFisherMixture([0.7, 0.3], [[0.0, 1.0], [2**-0.5, -(2**-0.5)]], [2.0, 3.0])
    pts, w = Sphere(1).grid(4000)
    assert (w * mix.log_prob(pts).exp()).sum().item() == pytest.approx(1.0, rel=1e-10)
    manual = torch.log(0.7 * mix.components[0].log_prob(pts).exp() + 0.3 * mix.components[1].log_prob(pts).exp())
    assert torch.allclose(mix.log_prob(pts), manual, atol=1e-12)
    assert torch.allclose(mix.energy(pts), -mix.log_prob(pts), atol=1e-12)
    y = mix.sample(40_000, seed=3)
    # the fraction of samples nearer to the first mean estimates ∫ over that half-plane of p
    near_first = ((y @ mix.components[0].mu) > (y @ mix.components[1].mu)).double().mean().item()
    mask = (pts @ mix.components[0].mu) > (pts @ mix.components[1].mu)
    expected = (w * mix.log_prob(pts).exp())[mask].sum().item()
    assert abs(near_first - expected) < 4 * math.sqrt(expected * (1 - expected) / 40_000)
    assert torch.equal(mix.sample(10, seed=5), mix.sample(10, seed=5))


def test_kl_and_correlation_on_a_grid():
    pts, w = Sphere(2).grid(100)
    p = VonMisesFisher([0.0, 0.0, 1.0], 3.0)
    q = VonMisesFisher([0.0, 0.0, 1.0], 2.0)
    kl, corr = kl_and_correlation(p.log_prob(pts), log_density_on_grid(q.log_prob, pts, w), w)
    # closed form: KL = (κp − κq) A_3(κp) + log C(κp) − log C(κq)
    exact = (3.0 - 2.0) * p.mean_resultant_length() + p.log_normalizer() - q.log_normalizer()
    assert kl == pytest.approx(exact, rel=1e-9)
    assert corr == pytest.approx(1.0, abs=1e-12)  # the two log densities are affine in each other
    kl0, corr0 = kl_and_correlation(p.log_prob(pts), p.log_prob(pts), w)
    assert abs(kl0) < 1e-12 and corr0 == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="dimension"):
        Sphere(0)
    sphere = Sphere(2)
    with pytest.raises(ValueError, match="shape"):
        sphere.to_chart(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="unit sphere"):
        sphere.to_chart(torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        sphere.check_points(torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unit vector"):
        VonMisesFisher([1.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="kappa"):
        VonMisesFisher([1.0, 0.0], -1.0)
    with pytest.raises(ValueError, match="same positive length"):
        VonMisesFisherMixture([1.0], [[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        VonMisesFisherMixture([1.0, -1.0], [[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="same sphere"):
        VonMisesFisherMixture([1.0, 1.0], [[1.0, 0.0], [0.0, 0.0, 1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="n_samples"):
        sphere.uniform(0)


@pytest.mark.parametrize("n", [10, 16, 32])
def test_float32_charts_metric_and_langevin_step_at_high_dimension(n):
    """Chapter 6 fits S¹⁰…S³² and the authors compute in float32: at these dimensions the float32 charts,
    metric and Riemannian Langevin step agree with float64 to a few float32 ulps (eps32 ≈ 1.2e-7), the volume
    element λⁿ (up to 2³² at the pole of S³²) included. A formula that lost precision with n, e.g. forming
    |G| = λ^{2n} before taking its log, or an O(n) accumulated error, would fail these bounds."""
    sphere = Sphere(n)
    y64 = special_points(n)
    y32 = y64.float()
    x32, s32 = sphere.to_chart(y32)
    x64, s64 = sphere.to_chart(y64)
    assert torch.equal(s32.double(), s64)
    assert (sphere.from_chart(x32, s32) - y32).abs().max().item() < 1e-6
    assert (x32.double() - x64).abs().max().item() < 1e-6
    rel = (sphere.conformal_factor(x32).double() / sphere.conformal_factor(x64) - 1).abs().max().item()
    assert rel < 1e-6
    assert (sphere.log_det_metric(x32).double() - sphere.log_det_metric(x64)).abs().max().item() < 1e-5 * n
    vmf = VonMisesFisher(sphere.project(torch.arange(1.0, n + 2, dtype=torch.float64)[None])[0], 2.0 * n)
    z64 = torch.randn(len(y64), n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def step(y, z):  # the update of riemannian_langevin_step (test_riemannian.py checks it is), with given noise
        x, s, _, g = sphere.chart_energy(vmf.energy, y, create_graph=False)
        z = z * ((1 + (x.detach() ** 2).sum(-1, keepdim=True)) / 2)
        x_new = x.detach() + 1e-3 * sphere.langevin_drift(x.detach(), g, 1.0) + math.sqrt(2e-3) * z
        return sphere.from_chart(x_new, s)

    step64, step32 = step(y64, z64), step(y32, z64.float())
    # the step moves points by ~√(2ε) ≈ 0.045; float32 reproduces it to ~1e-6, i.e. 5 significant digits
    assert (step32.double() - step64).abs().max().item() < 2e-6
    assert ((step32.double() - y64).norm(dim=-1) > 1e-3).all()
    assert (step32.norm(dim=-1) - 1).abs().max().item() < 1e-6
    lb32 = sphere.laplace_beltrami(vmf.energy, y32).double()
    lb64 = sphere.laplace_beltrami(vmf.energy, y64)
    assert (lb32 - lb64).abs().max().item() < 1e-5 * lb64.abs().max().item()


def test_to_chart_in_a_given_chart():
    sphere = Sphere(2)
    y = sphere.uniform(100, generator=torch.Generator().manual_seed(0))
    x, s = sphere.to_chart(y)
    x_other, s_other = sphere.to_chart(y, -s)
    assert torch.equal(s_other, -s)
    assert torch.allclose(sphere.from_chart(x_other, -s), y, atol=1e-12)
    assert (x_other.norm(dim=-1) >= 1 - 1e-12).all()  # the other hemisphere's chart maps outside the unit ball
    with pytest.raises(ValueError, match="pole"):
        sphere.to_chart(torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="chart signs"):
        sphere.to_chart(y, torch.zeros(100, dtype=torch.float64))


def test_hellinger_distance_of_two_vmfs_matches_the_closed_form():
    """√(p₁p₂) = C_d(κ) exp(κ(μ₁ + μ₂)ᵀy / 2), so the Bhattacharyya coefficient is C_d(κ) / C_d(κ‖μ₁ + μ₂‖/2)."""
    sphere = Sphere(2)
    pts, w = sphere.grid(200)
    p1 = VonMisesFisher([0.0, 0.0, 1.0], 6.0)
    p2 = VonMisesFisher([0.0, 0.6, 0.8], 6.0)
    mid = VonMisesFisher([0.0, 0.0, 1.0], 6.0 * np.linalg.norm([0.0, 0.6, 1.8]) / 2)
    expected = math.sqrt(1 - math.exp(p1.log_normalizer() - mid.log_normalizer()))
    got = hellinger_on_grid(p1.log_prob(pts), p2.log_prob(pts), w)
    assert abs(got - expected) < 1e-8 and 0.2 < expected < 0.9
    assert hellinger_on_grid(p1.log_prob(pts), p1.log_prob(pts), w) < 1e-6


@pytest.mark.parametrize("n, use_grid", [(2, True), (5, False)])
def test_riemannian_fisher_divergence_of_two_vmfs(n, use_grid):
    """Same mean, κ₁ vs κ₂: D_F = ½(κ₁ − κ₂)² E_p[1 − (μᵀy)²] = ½(κ₁ − κ₂)² n A_{n+1}(κ₁)/κ₁. Quadrature on S²
    must match to 1e-8; Monte Carlo on S⁵ within 4 standard errors (relative SE ≈ 1 %)."""
    sphere = Sphere(n)
    mu = torch.zeros(n + 1, dtype=torch.float64)
    mu[-1] = 1.0
    k1, k2 = 4.0, 2.5
    p, q = VonMisesFisher(mu, k1), VonMisesFisher(mu, k2)
    expected = 0.5 * (k1 - k2) ** 2 * n * mean_resultant_length(n + 1, k1) / k1
    if use_grid:
        pts, w = sphere.grid(200)
        got, se = riemannian_fisher_divergence(sphere, p.energy, q.energy, pts, w)
        assert abs(got - expected) < 1e-8 and se == 0.0
    else:
        got, se = riemannian_fisher_divergence(sphere, p.energy, q.energy, p.sample(20000, seed=1))
        assert abs(got - expected) < 4 * se and se < 0.02 * expected
    assert riemannian_fisher_divergence(sphere, p.energy, p.energy, p.sample(100, seed=0))[0] < 1e-20
