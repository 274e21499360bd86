"""Annealed importance sampling (mvl.ais; chapter 8): log Z of a GRBM against its exact value, the marginal
likelihood of a linear-Gaussian model against its closed form, the standard error, and bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from mvl.ae.priors import GRBM, DiagonalGaussian
from mvl.ais import ais, grbm_log_partition, sigmoid_schedule, vae_log_likelihood

torch.set_num_threads(1)


def hard_grbm(seed=0):
    """D = 6, H = 8, W ~ N(0, 1): log Z is 59 nats above the W = 0 model the base is built from."""
    torch.manual_seed(seed)
    g = GRBM(6, 8, init_scale=1.0).double()
    with torch.no_grad():
        g.b.normal_()
        g.mu.normal_()
        g.log_var.uniform_(-1.0, 0.5)
    return g


def normal_log_prob(z, mean, var):
    return -0.5 * (math.log(2 * math.pi * var) + (z - mean) ** 2 / var)


def test_sigmoid_schedule_runs_from_zero_to_one_and_is_denser_at_the_ends():
    b = sigmoid_schedule(101)
    assert b[0] == 0 and b[-1] == 1 and bool((b[1:] > b[:-1]).all())
    gaps = b[1:] - b[:-1]
    assert gaps[0] < 0.2 * gaps[50] and gaps[-1] < 0.2 * gaps[50]  # a linear schedule has equal gaps


@pytest.mark.parametrize("kernel,n_temperatures,n_leapfrog", [("hmc", 500, 2), ("mala", 800, 1)])
def test_ais_matches_the_exact_grbm_log_partition(kernel, n_temperatures, n_leapfrog):
    """D = 6, 8 hidden units, 500 chains: AIS within 0.1 nats of the exact log Z (issue 13) and within 4
    standard errors. Plausible wrong results are far off: the W = 0 model's log Z (the base's scale) is
    ~59 nats lower, and omitting either end's normalization shifts by log Z itself."""
    g = hard_grbm()
    exact = g.log_partition_exact().item()
    w0 = 3 * math.log(2 * math.pi) + 0.5 * g.log_var.sum().item() + F.softplus(g.b).sum().item()
    torch.manual_seed(1)
    r = grbm_log_partition(g, n_temperatures, 500, kernel, n_leapfrog=n_leapfrog)
    err, se = r.log_z.item() - exact, r.log_z_se.item()
    print(f"{kernel}: exact {exact:.4f}, AIS {r.log_z.item():.4f} ± {se:.4f} (error {err:+.4f}), "
          f"ESS {r.ess.item():.0f}/500, acceptance {r.acceptance.item():.3f}; W=0 baseline {w0:.2f}; "
          f"minimum detectable error at 4 SE: {4 * se:.3f}")
    assert exact - w0 > 10
    assert abs(err) < 0.1 and abs(err) < 4 * se + 1e-3
    assert abs(r.acceptance.item() - 0.65) < 0.05  # the adaptation reaches its target
    assert r.log_weights.shape == (500,) and r.samples.shape == (500, 6) and r.log_z.dim() == 0
    assert r.step_sizes.shape == (n_temperatures - 1,) and 1 <= r.ess.item() <= 500


def test_grbm_estimate_is_stored_and_used_by_log_prob_and_goes_stale():
    g = hard_grbm(1)
    g.max_exact_hidden = 4  # pretend 8 hidden units are too many for the exact log Z
    z = torch.randn(5, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="annealed importance sampling"):
        g.log_partition_exact()
    assert not g.normalized
    with pytest.raises(RuntimeError, match="estimate_log_partition"):
        g.log_prob(z)
    torch.manual_seed(0)
    r = g.estimate_log_partition(n_temperatures=300, n_chains=300, n_leapfrog=3)
    assert g.normalized and g.log_z_ais == r.log_z.item() and g.log_z_ais_se == r.log_z_se.item()
    assert torch.allclose(g.log_prob(z), -g.free_energy(z) - r.log_z.item())
    g.max_exact_hidden = 20
    exact = g.log_partition_exact().item()
    print(f"stored AIS {g.log_z_ais:.4f} ± {g.log_z_ais_se:.4f}, exact {exact:.4f}")
    assert abs(g.log_z_ais - exact) < 4 * g.log_z_ais_se + 1e-3
    g.max_exact_hidden = 4
    with torch.no_grad():
        g.b[0] += 1e-6  # any change of the parameters makes the estimate stale
    assert not g.normalized
    with pytest.raises(RuntimeError, match="stale"):
        g.log_prob(z)


def linear_gaussian(a=2.0, c=0.5, s=0.3):
    """z ~ N(0, 1), x | z ~ N(a z + c, s²): p(x) = N(c, a² + s²); the posterior is 7 times narrower than the prior."""
    def decoder_log_lik(x, z):  # x [n, 1], z [S, n, 1] -> [S, n]
        return normal_log_prob(x, a * z + c, s**2).sum(-1)

    def exact(x):
        return normal_log_prob(x[:, 0], c, a**2 + s**2)

    return decoder_log_lik, exact


@pytest.mark.parametrize("kernel", ["hmc", "mala"])
def test_vae_log_likelihood_matches_the_linear_gaussian_marginal(kernel):
    """Batched AIS from the prior (Wu et al.'s protocol) for 6 values of x, one up to 3 sd out: each within
    4 SE + 0.01 and 0.1 nats of the exact log p(x). A one-sample ELBO-like baseline (log p(x|z) at z ~ prior) would be
    off by nats."""
    dec, exact = linear_gaussian()
    x = torch.tensor([[-6.0], [-2.0], [0.0], [0.5], [3.0], [7.0]], dtype=torch.float64)
    torch.manual_seed(2)
    r = vae_log_likelihood(dec, lambda z: normal_log_prob(z, 0.0, 1.0).sum(-1), x,
                           prior_sample=lambda m: torch.randn(m, 1, dtype=torch.float64),
                           n_temperatures=300, n_chains=1000, kernel=kernel, n_leapfrog=3)
    err = r.log_z - exact(x)
    print(kernel, "errors", err.numpy().round(4), "SE", r.log_z_se.numpy().round(4), "ESS", r.ess.numpy().round())
    assert r.log_z.shape == (6,) and r.log_weights.shape == (6, 1000) and r.samples.shape == (6, 1000, 1)
    assert bool((err.abs() < 4 * r.log_z_se + 0.01).all())
    assert float(err.abs().max()) < 0.1  # the margin of the GRBM test; a missing log Z of the prior is 0.92
    # the final states are posterior draws: N(a(x − c)/(a² + s²), s²/(a² + s²)) per x
    post_mean = 2.0 * (x[:, 0] - 0.5) / 4.09
    assert bool(((r.samples[..., 0].mean(1) - post_mean).abs() < 5 * math.sqrt(0.09 / 4.09 / 1000)).all())


def test_vae_log_likelihood_from_the_encoder_with_an_unnormalized_prior():
    """An 'energy-based' prior exp(−z²/2) with its log Z = ½ log 2π supplied separately, and a deliberately
    poor encoder q(z|x) (right mean, 3× too wide) as the base: the same exact log p(x). Forgetting log Z
    would be off by 0.92 nats."""
    dec, exact = linear_gaussian()
    x = torch.tensor([[-2.0], [1.0], [4.0]], dtype=torch.float64)
    post_mean = 2.0 * (x - 0.5) / 4.09

    def encoder(xx):
        return DiagonalGaussian(post_mean, torch.full_like(post_mean, math.log(9 * 0.09 / 4.09)))

    torch.manual_seed(3)
    log_z = 0.5 * math.log(2 * math.pi)
    r = vae_log_likelihood(dec, lambda z: -0.5 * (z**2).sum(-1), x, encoder=encoder, log_z=log_z, log_z_se=0.01,
                           n_temperatures=100, n_chains=200, kernel="hmc", n_leapfrog=3)
    err = r.log_z - exact(x)
    print("errors", err.numpy().round(4), "SE", r.log_z_se.numpy().round(4))
    assert bool((err.abs() < 4 * r.log_z_se + 0.01).all()) and float(err.abs().max()) < log_z / 10
    assert r.log_z_offset_se == 0.01


def test_standard_error_matches_the_spread_over_independent_runs():
    """40 independent copies of one problem in the batched form (log Z of N(0, 0.1²) from N(0, 1) with few
    temperatures, so the weights are noisy): the standard deviation of log Ẑ across copies agrees with the
    mean delta-method SE to within the sampling error of a 40-sample sd (±~25 % at 2 sd)."""
    batch, n = 40, 30

    def log_base(z):
        return normal_log_prob(z, 0.0, 1.0).sum(-1)

    def log_target(z):
        return -0.5 * (z**2).sum(-1) / 0.01

    torch.manual_seed(4)
    r = ais(log_base, lambda m: torch.randn(batch, m, 1, dtype=torch.float64), log_target, 20, n, "mala")
    exact = 0.5 * math.log(2 * math.pi * 0.01)
    spread, se = r.log_z.std().item(), r.log_z_se.mean().item()
    print(f"sd of log Z over copies {spread:.4f}, mean SE {se:.4f}, mean error {(r.log_z.mean() - exact).item():+.4f}")
    assert r.log_z.shape == (batch,) and r.acceptance_by_temperature.shape == (19, batch)
    assert 0.65 < spread / se < 1.5
    assert abs(r.log_z.mean().item() - exact) < 4 * spread / math.sqrt(batch) + 2 * spread**2  # Jensen bias ≈ var/2


def test_fixed_and_pilot_step_sizes():
    def log_base(z):
        return normal_log_prob(z, 0.0, 1.0).sum(-1)

    def log_target(z):
        return -0.5 * (z**2).sum(-1) / 0.25

    sample = lambda m: torch.randn(m, 2, dtype=torch.float64)
    torch.manual_seed(5)
    fixed = torch.linspace(0.3, 0.1, 49, dtype=torch.float64)
    r = ais(log_base, sample, log_target, 50, 200, "hmc", step_size=fixed, adapt="none", n_leapfrog=2)
    assert torch.equal(r.step_sizes, fixed)
    p = ais(log_base, sample, log_target, 50, 200, "hmc", adapt="pilot", n_leapfrog=2)
    assert not torch.allclose(p.step_sizes, torch.full_like(p.step_sizes, 0.1))  # adapted in the pilot
    exact = 2 * 0.5 * math.log(2 * math.pi * 0.25)
    for res in (r, p):
        assert abs(res.log_z.item() - exact) < 4 * res.log_z_se.item() + 1e-3


def test_nan_energy_raises_a_clear_error():
    g = hard_grbm()
    with torch.no_grad():
        g.W[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        grbm_log_partition(g, 10, 5)


def test_divergent_proposals_are_rejected_not_propagated():
    """A huge fixed step makes HMC trajectories overflow in float32; they are rejected and counted."""
    def log_p(z):
        return -0.5 * (z**4).sum(-1)

    torch.manual_seed(6)
    r = ais(lambda z: -0.5 * (z**2).sum(-1) - 0.5 * math.log(2 * math.pi), lambda m: torch.randn(m, 1),
            log_p, 5, 50, "hmc", step_size=1e12, adapt="none", n_leapfrog=3)
    assert r.n_rejected_nonfinite > 0 and torch.isfinite(r.log_z) and torch.isfinite(r.samples).all()


def test_bad_inputs_raise_clear_value_errors():
    lb = lambda z: -0.5 * (z**2).sum(-1)
    sb = lambda m: torch.randn(m, 2)
    with pytest.raises(ValueError, match="kernel"):
        ais(lb, sb, lb, 10, 5, kernel="gibbs")
    with pytest.raises(ValueError, match="n_temperatures"):
        ais(lb, sb, lb, 1, 5)
    with pytest.raises(ValueError, match="n_chains"):
        ais(lb, sb, lb, 10, 0)
    with pytest.raises(ValueError, match="adapt"):
        ais(lb, sb, lb, 10, 5, adapt="always")
    with pytest.raises(ValueError, match="nondecreasing"):
        ais(lb, sb, lb, 3, 5, schedule=torch.tensor([0.0, 0.7, 0.5]))
    with pytest.raises(ValueError, match="schedule"):
        ais(lb, sb, lb, 3, 5, schedule="cosine")
    with pytest.raises(ValueError, match="adapt='none'"):
        ais(lb, sb, lb, 3, 5, step_size=torch.ones(2))
    with pytest.raises(ValueError, match="step_size"):
        ais(lb, sb, lb, 3, 5, step_size=-1.0)
    with pytest.raises(ValueError, match="chains"):
        ais(lb, lambda m: torch.randn(m + 1, 2), lb, 3, 5)
    with pytest.raises(ValueError, match="log_target must map"):
        ais(lb, sb, lambda z: z, 3, 5)
    with pytest.raises(ValueError, match="sample_base"):
        ais(lb, lambda m: torch.randn(m), lb, 3, 5)
    with pytest.raises(ValueError, match="target_accept"):
        ais(lb, sb, lb, 3, 5, target_accept=1.5)
    dec, _ = linear_gaussian()
    with pytest.raises(ValueError, match="encoder"):
        vae_log_likelihood(dec, lb, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="x must be"):
        vae_log_likelihood(dec, lb, torch.zeros(2), prior_sample=sb)
    with pytest.raises(ValueError, match="log_z_se"):
        vae_log_likelihood(dec, lb, torch.zeros(2, 1), prior_sample=sb, log_z_se=-1.0)
    with pytest.raises(ValueError, match="base_scale"):
        grbm_log_partition(hard_grbm(), 10, 5, base_scale=0.0)


@pytest.mark.parametrize("prior_kind", ["standard", "grbm"])
def test_vae_log_likelihood_fits_the_vae_class_and_agrees_with_importance_sampling(prior_kind):
    """A tiny VAE of chapter 7's classes (6 pixels, 2 latents), with N(0, I) or a GRBM prior (3 hidden units,
    exact log Z): AIS from q(z|x) with the prior given unnormalized (−F and log Z separately for the GRBM)
    agrees with the VAE's own importance-sampled log p(x) (20 000 samples) within 4 combined SEs + 0.01
    (the IS SE from its ESS: √(1/ESS − 1/S))."""
    from mvl.ae.priors import StandardNormal
    from mvl.ae.vae import VAE, BernoulliDecoder, GaussianEncoder

    torch.manual_seed(7)
    if prior_kind == "standard":
        prior, unnorm, log_z = StandardNormal(2).double(), None, 0.0
    else:
        prior = GRBM(2, 3, init_scale=1.0).double()
        unnorm, log_z = prior.unnormalized_log_prob, prior.log_partition_exact().item()
    model = VAE(GaussianEncoder(6, 2, (8, 8)).double(), BernoulliDecoder(2, 6, (8, 8)).double(), prior)
    x = torch.bernoulli(torch.full((5, 6), 0.5, dtype=torch.float64))
    S = 20_000
    est = model.importance_estimates(x, n_samples=S)
    se_is = torch.sqrt(1 / est["ess"] - 1 / S)
    r = vae_log_likelihood(model.decoder.log_prob, unnorm or prior.log_prob, x, encoder=model.encoder,
                           log_z=log_z, n_temperatures=300, n_chains=200, kernel="hmc", n_leapfrog=3)
    diff = r.log_z - est["log_px"]
    tol = 4 * torch.sqrt(r.log_z_se**2 + se_is**2) + 0.01
    print(prior_kind, "AIS − IS", diff.numpy().round(4), "tolerance", tol.numpy().round(4), "log p(x)", r.log_z.numpy().round(3),
          "SE AIS", r.log_z_se.numpy().round(4), "SE IS", se_is.numpy().round(4), "prior log Z", round(log_z, 3))
    assert bool((diff.abs() < tol).all())


def test_progress_bar_runs_and_reports_temperatures(capsys):
    r = ais(lambda z: normal_log_prob(z, 0.0, 1.0).sum(-1), lambda m: torch.randn(m, 1, dtype=torch.float64),
            lambda z: -0.5 * (z**2).sum(-1), 7, 10, "mala", progress=True, desc="AIS test")
    err = capsys.readouterr().err
    assert "AIS test" in err and "6/6" in err
    assert abs(r.log_z.item() - 0.5 * math.log(2 * math.pi)) < 1e-9  # base = target up to the constant: exact


# ------------------------------------------------------------------------- AIS on the sphere (chapter 9)
@pytest.mark.parametrize("n", [2, 8])
def test_riemannian_mala_kernel_leaves_a_vmf_invariant(n):
    """Base = target = vMF(μ, 4) on Sⁿ, chains started at exact samples: after 100 adapted Riemannian MALA
    transitions the mean of μᵀz is still A_{n+1}(4) within 4 SE (SE ≈ 0.004 over 4000 chains, MDE ≈ 0.016;
    the unadjusted Euler–Maruyama chain at such steps is off by 0.03–0.07, chapter 6) and the second moment
    E[(μᵀz)²] = 1 − n A/κ too; the step adapts to acceptance ≈ 0.65; log Ẑ is exact (f/p₀ is constant)."""
    from mvl.manifolds import Sphere, VonMisesFisher, mean_resultant_length

    torch.manual_seed(n)
    sphere = Sphere(n)
    mu = sphere.project(torch.arange(1.0, n + 2, dtype=torch.float64)[None])[0]
    vmf = VonMisesFisher(mu, 4.0)
    r = ais(lambda z: 4.0 * (z @ mu) + vmf.log_normalizer(), lambda c: vmf.sample(c, seed=n), lambda z: 4.0 * (z @ mu),
            n_temperatures=101, n_chains=4000, kernel="riemannian_mala", sphere=sphere, step_size=0.5)
    w = r.samples @ mu
    a = mean_resultant_length(n + 1, 4.0)
    for name, v, target in (("mu'z", w, a), ("(mu'z)^2", w**2, 1 - n * a / 4.0)):
        se = v.std().item() / math.sqrt(len(v))
        print(f"S^{n} {name}: {v.mean().item():.4f} vs {target:.4f} ± {se:.4f}")
        assert abs(v.mean().item() - target) < 4 * se
    assert abs(r.acceptance.item() - 0.65) < 0.05
    assert torch.allclose(r.samples.norm(dim=-1), torch.ones(4000, dtype=torch.float64))
    assert abs(r.log_z.item() + vmf.log_normalizer()) < 1e-9


@pytest.mark.parametrize("n", [2, 8])
def test_sphere_ais_matches_the_exact_normalizer_of_a_vmf_mixture(n):
    """Z = ∫ Σₖ aₖ exp(κₖ μₖᵀz) dσ(z) = Σₖ aₖ / C(κₖ) in closed form (κ = 5, 10, 20): AIS from the uniform
    distribution, 200 temperatures × 5 Riemannian MALA steps, 64 chains, is within 4 SE of log Z (SE ≈ 0.05;
    dropping the volume measure's normalization, log|Sⁿ| ≥ 2.5, or a kernel that samples the wrong
    tempered density by the ≈ 0.3-nat bias it would need, both fail)."""
    from mvl.manifolds import Sphere, VonMisesFisher

    torch.manual_seed(10 + n)
    sphere = Sphere(n)
    mus = sphere.uniform(3, generator=torch.Generator().manual_seed(3))
    ks = torch.tensor([5.0, 10.0, 20.0], dtype=torch.float64)
    log_a = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    exact = torch.logsumexp(log_a - torch.tensor([VonMisesFisher(m, k.item()).log_normalizer() for m, k in zip(mus, ks)],
                                                 dtype=torch.float64), 0).item()
    log_vol = sphere.log_volume()
    r = ais(lambda z: torch.full(z.shape[:-1], -log_vol, dtype=z.dtype), lambda c: sphere.uniform(c),
            lambda z: torch.logsumexp(log_a + ks * (z @ mus.T), -1), n_temperatures=200, n_chains=64,
            kernel="riemannian_mala", sphere=sphere, step_size=0.1, n_steps=5)
    print(f"S^{n}: AIS log Z {r.log_z.item():.4f} ± {r.log_z_se.item():.4f} vs exact {exact:.4f}, acceptance {r.acceptance.item():.3f}")
    assert abs(r.log_z.item() - exact) < 4 * r.log_z_se.item()
    assert r.log_z_se.item() < 0.1 and 0.5 < r.acceptance.item() < 0.8


def test_sphere_ais_log_likelihood_matches_quadrature_for_a_tiny_decoder():
    """A latent model on S²: z ~ uniform, 12 Bernoulli pixels with logits 3Wz + b (W, b fixed). log p(x) by a
    Gauss–Legendre × trapezoid product rule (80 000 nodes; 20 000 agree to 1e-8) against AIS through
    ``vae_log_likelihood`` (uniform base, 200 temperatures × 5 steps, 32 chains): within 4 SE per image, for
    4 images, both from the prior and from a vMF 'encoder' base (mvl.ae.vmf's posterior as the base q)."""
    from mvl.ae.vmf import VonMisesFisherPosterior
    from mvl.manifolds import Sphere

    torch.manual_seed(21)
    sphere = Sphere(2)
    w = 3 * torch.randn(12, 3, dtype=torch.float64)
    bias = 0.5 * torch.randn(12, dtype=torch.float64)

    def dec(x, z):  # x [n, 12], z [S, n, 3] -> [S, n]
        logits = z @ w.T + bias
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    z_true = sphere.uniform(4, generator=torch.Generator().manual_seed(2))
    x = torch.bernoulli(torch.sigmoid(z_true @ w.T + bias))
    def quadrature(resolution):
        pts, wts = sphere.grid(resolution)
        return torch.logsumexp(dec(x, pts[:, None, :].expand(-1, 4, -1)) + torch.log(wts)[:, None], 0) - sphere.log_volume()

    exact = quadrature(200)
    assert (exact - quadrature(100)).abs().max() < 1e-8
    log_prior = lambda z: torch.full(z.shape[:-1], -sphere.log_volume(), dtype=z.dtype)
    r = vae_log_likelihood(dec, log_prior, x, prior_sample=lambda m: sphere.uniform(m), n_temperatures=200,
                           n_chains=32, kernel="riemannian_mala", sphere=sphere, step_size=0.1, n_steps=5)
    q = VonMisesFisherPosterior(sphere.project(z_true + 0.3 * torch.randn(4, 3, dtype=torch.float64)),
                                torch.full((4,), 5.0, dtype=torch.float64))
    r_q = vae_log_likelihood(dec, log_prior, x, encoder=lambda _: q, n_temperatures=200, n_chains=32,
                             kernel="riemannian_mala", sphere=sphere, step_size=0.1, n_steps=5)
    for name, res in (("prior", r), ("vMF base", r_q)):
        print(name, "AIS − quadrature", (res.log_z - exact).numpy().round(4), "SE", res.log_z_se.numpy().round(4),
              "log p(x)", exact.numpy().round(3))
        assert bool(((res.log_z - exact).abs() < 4 * res.log_z_se).all())
    with pytest.raises(ValueError, match="sphere"):
        ais(log_prior, lambda m: sphere.uniform(m), log_prior, 3, 5, kernel="riemannian_mala")
    with pytest.raises(ValueError, match="sphere"):
        ais(log_prior, lambda m: sphere.uniform(m), log_prior, 3, 5, kernel="hmc", sphere=sphere)
    with pytest.raises(ValueError, match="unit sphere"):
        ais(log_prior, lambda m: 2 * sphere.uniform(m), log_prior, 3, 5, kernel="riemannian_mala", sphere=sphere)
    with pytest.raises(ValueError, match="n_steps"):
        ais(log_prior, lambda m: sphere.uniform(m), log_prior, 3, 5, kernel="riemannian_mala", sphere=sphere, n_steps=0)
