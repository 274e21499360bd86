"""Riemannian Langevin dynamics and Riemannian score matching on spheres (chapter 6)."""

import math

import pytest
import torch

from mvl.energies import ScoreNetEnergy
from mvl.manifolds import Sphere, VonMisesFisher, mean_resultant_length
from mvl.objectives import sm_exact, sm_riemannian_exact, sm_riemannian_mvl, sm_riemannian_sliced
from mvl.samplers import riemannian_langevin_chain, riemannian_langevin_step, riemannian_mala_chain, riemannian_mala_step


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


@pytest.mark.parametrize("chart", [1.0, -1.0])
@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_drift_makes_the_target_stationary_on_the_circle(chart, beta):
    """1-D stationary Fokker–Planck check, independent of the drift's construction. On S¹ with x = tan(θ/2)
    the target q^β ∝ exp(−βE) w.r.t. arc length has the chart (Lebesgue) density ρ̃ = q^β · dθ/dx with
    dθ/dx = 2/(1 + x²), and the diffusion dx = V dt + √(2g¹¹) dB with g¹¹ = (1 + x²)²/4 leaves ρ̃ stationary
    iff its probability flux V ρ̃ − d(g¹¹ρ̃)/dx vanishes. The correct drift passes; the printed sign does not."""
    sphere = Sphere(1)
    vmf = VonMisesFisher([0.6, 0.8], 2.0)
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)[:, None].requires_grad_(True)
    s = torch.full((301,), chart, dtype=torch.float64)
    e = vmf.energy(sphere.from_chart(x, s))
    (dedx,) = torch.autograd.grad(e.sum(), x, create_graph=True)
    rho = torch.exp(-beta * e) * 2 / (1 + x[:, 0] ** 2)  # unnormalized: the flux is linear in rho
    g11_rho = (1 + x[:, 0] ** 2) ** 2 / 4 * rho
    (d_g11_rho,) = torch.autograd.grad(g11_rho.sum(), x)
    scale = d_g11_rho.abs().max().item()
    for sign, should_vanish in ((1, True), (-1, False)):
        v = sphere.langevin_drift(x.detach(), dedx.detach(), beta=beta, log_det_sign=sign)[:, 0]
        flux = v * rho.detach() - d_g11_rho[:, 0]
        if should_vanish:
            assert flux.abs().max().item() < 1e-12 * scale
        else:  # the flipped sign adds g¹¹ ∂ log|G| ρ̃ = −(1 + x²) x ρ̃ · 2 n / 2, far from zero
            assert flux.abs().max().item() > 0.1 * scale


@pytest.mark.parametrize("n", [1, 2])
def test_mala_samples_the_vmf_where_euler_maruyama_is_biased(n):
    """Riemannian MALA leaves vMF(μ, κ) invariant: started at exact samples, after 150 steps at ε = 0.1 the
    mean of μᵀy still matches A_{n+1}(κ) within 4 standard errors (SE ≈ 0.003–0.004 over 4000 chains, so the
    minimum detectable shift is ≈ 0.016), while the unadjusted chain with the same ε is off by more than
    0.02 (measured: ≈ 0.03 on S¹, ≈ 0.07 on S²). The acceptance rate lies strictly between 0 and 1."""
    torch.manual_seed(10 + n)
    sphere = Sphere(n)
    mu = torch.zeros(n + 1, dtype=torch.float64)
    mu[-1] = 1.0
    kappa, eps = 4.0, 0.1
    vmf = VonMisesFisher(mu, kappa)
    y0 = vmf.sample(4000, seed=n)
    target = mean_resultant_length(n + 1, kappa)
    y, acc = riemannian_mala_chain(vmf.energy, y0, sphere, eps, 150)
    t = y @ mu
    se = t.std().item() / math.sqrt(len(t))
    print(f"S^{n}: MALA {t.mean():.4f} ± {se:.4f} vs A = {target:.4f}, acceptance {acc:.3f}")
    assert abs(t.mean().item() - target) < 4 * se
    assert 0.3 < acc < 0.999
    t_em = riemannian_langevin_chain(vmf.energy, y0, sphere, eps, 150) @ mu
    assert target - t_em.mean().item() > max(0.02, 4 * se)


def test_mala_reverse_move_uses_the_chart_of_the_proposal():
    """Uniform target on S² at a large step (ε = 0.3, many moves cross the equator): the height |y₃| of a
    uniform point is uniform on [0, 1], mean 1/2. MALA keeps it within 4 SE (SE ≈ 0.003 over 10 000 chains).
    Evaluating the reverse move in the chart of the *current* point instead (as ``riem_ld`` does) is not
    reversible for moves that change hemisphere: measured 0.468 in the same setting, which this test fails."""
    torch.manual_seed(3)
    sphere = Sphere(2)
    y0 = sphere.uniform(10_000, generator=torch.Generator().manual_seed(0))
    y, acc = riemannian_mala_chain(lambda v: 0.0 * v.sum(-1), y0, sphere, 0.3, 200)
    h = y[:, -1].abs()
    assert abs(h.mean().item() - 0.5) < 4 * h.std().item() / math.sqrt(len(h))
    assert 0.3 < acc < 0.999


@pytest.mark.parametrize("n", [2, 3])
def test_sliced_riemannian_sm_is_unbiased_for_the_exact_objective(n):
    """The mean of sm_riemannian_sliced over 20 000 draws of v at each of 4 fixed points matches
    sm_riemannian_exact within 4 standard errors (SE ≈ 0.005, so the minimum detectable bias is ≈ 0.02);
    dropping the (n − 2) term of Δ_M on S³ or the factor G⁻¹ of v would shift it by far more."""
    torch.manual_seed(n)
    sphere = Sphere(n)
    net = ScoreNetEnergy(n + 1, hidden=(16, 16), activation="tanh").double()
    y = sphere.uniform(4, generator=torch.Generator().manual_seed(n))
    exact = sm_riemannian_exact(net, y, sphere).detach()
    reps = 20_000
    est = sm_riemannian_sliced(net, y.repeat_interleave(reps, 0), sphere).detach().reshape(4, reps)
    se = est.std(1) / math.sqrt(reps)
    assert ((est.mean(1) - exact).abs() < 4 * se).all(), (est.mean(1), exact, se)
    # two slices average two independent draws: same mean, half the variance
    est2 = sm_riemannian_sliced(net, y.repeat_interleave(reps, 0), sphere, n_slices=2).detach().reshape(4, reps)
    assert ((est2.mean(1) - exact).abs() < 4 * est2.std(1) / math.sqrt(reps)).all()
    assert (est2.var(1) < 0.7 * est.var(1)).all()
    with pytest.raises(ValueError, match="n_slices"):
        sm_riemannian_sliced(net, y, sphere, n_slices=0)


def test_rescaled_mvl_estimator_is_unbiased_up_to_order_eps():
    """With the authors' per-sample step rescaling, the estimate at fixed points still has mean J_M + O(ε)."""
    torch.manual_seed(4)
    sphere = Sphere(2)
    vmf = VonMisesFisher(tilted_mean(2), 6.0)  # large gradients, so the rescaling is active
    y0 = sphere.uniform(4, generator=torch.Generator().manual_seed(4))
    reps = 20_000
    est = sm_riemannian_mvl(vmf.energy, y0.repeat_interleave(reps, 0), sphere, 1e-4, rescale=True).detach().reshape(4, reps)
    target = closed_form(y0, tilted_mean(2), 6.0, 2)
    se = est.std(1) / math.sqrt(reps)
    assert ((est.mean(1) - target).abs() < 4.5 * se + 20 * 1e-4).all(), (est.mean(1), target, se)


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
    with pytest.raises(ValueError, match="eps"):
        riemannian_mala_step(vmf.energy, y, sphere, 0.0)
    with pytest.raises(ValueError, match="beta"):
        riemannian_mala_step(vmf.energy, y, sphere, 0.1, beta=-1.0)
    with pytest.raises(ValueError, match="n_steps"):
        riemannian_mala_chain(vmf.energy, y, sphere, 0.1, n_steps=1.5)


@pytest.mark.parametrize("n", [8, 32])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_charts_and_riemannian_mvl_at_the_latent_dimensions_of_chapter_9(n, dtype):
    """Chapter 9 fits conditional energies on S⁸ and S³² in float32 with ε = 1e-3 and the per-sample rescaled
    step. (i) The stereographic metric is the pullback JᵀJ = λ²I of the chart map (autograd Jacobian) and
    exact Riemannian SM matches the vMF closed form (to 1e-12 in float64, 1e-5 in float32). (ii) At 4 fixed
    points, the mean of 12 000 rescaled MVL estimates matches J_M within 4.5 SE (SE ≈ 0.04–0.05, MDE ≈ 0.2)
    in both dtypes. (iii) With the *fixed* step ε = 1e-3 the O(ε) bias is visible on S³² (measured up to 0.3,
    ≈ 7 SE: the drift (1 − n/2)(1 + ‖x‖²)x is large there) and this test requires it to be; the rescaled step
    removes it, and so does ε = 1e-4 in float64."""
    torch.manual_seed(n)
    sphere = Sphere(n)
    mu, kappa = tilted_mean(n), 2.0
    vmf = VonMisesFisher(mu, kappa)
    y0 = sphere.uniform(4, generator=torch.Generator().manual_seed(n)).to(dtype)
    x, s = sphere.to_chart(y0)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: sphere.from_chart(v[None], s[i : i + 1])[0], x[i])
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert torch.allclose(jac.T @ jac, sphere.metric(x[i : i + 1])[0], atol=tol)
    target = closed_form(y0.double(), mu, kappa, n)
    exact = sm_riemannian_exact(vmf.energy, y0, sphere).detach().double()
    assert (exact - target).abs().max() < (1e-12 if dtype == torch.float64 else 1e-5)
    reps = 12_000

    def mean_and_se(eps, rescale, dt=dtype):
        est = sm_riemannian_mvl(vmf.energy, y0.to(dt).repeat_interleave(reps, 0), sphere, eps, rescale=rescale)
        est = est.detach().double().reshape(4, reps)
        return est.mean(1), est.std(1) / math.sqrt(reps)

    m, se = mean_and_se(1e-3, True)
    print(f"S^{n} {dtype}: rescaled MVL − J_M in SE units", ((m - target) / se).numpy().round(2), "SE", se.numpy().round(3))
    assert ((m - target).abs() < 4.5 * se).all()
    if n == 32:
        m, se = mean_and_se(1e-3, False)
        assert ((m - target).abs() > 4 * se).any(), "the fixed-step bias at n = 32 should be visible"
        if dtype == torch.float64:
            m, se = mean_and_se(1e-4, False)
            assert ((m - target).abs() < 4.5 * se).all()
