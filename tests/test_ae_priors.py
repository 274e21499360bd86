"""Priors and Gaussian posteriors of the auto-encoder chapters (mvl.ae.priors)."""

import math

import pytest
import torch

from mvl.ae.priors import LOG_2PI, DiagonalGaussian, MixtureOfGaussians, StandardNormal, VampPrior, gaussian_log_prob
from mvl.ae.vae import GaussianEncoder


def small_encoder(seed=0, input_dim=6, latent=3):
    torch.manual_seed(seed)
    return GaussianEncoder(input_dim, latent, (8, 8)).double()


def test_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, logvar, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 5, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(gaussian_log_prob(z, mean, logvar), ref, atol=1e-12)
    q = DiagonalGaussian(mean, logvar)
    assert torch.allclose(q.log_prob(z), ref, atol=1e-12)
    assert q.rsample().shape == (5, 3) and q.rsample(7).shape == (7, 5, 3)


def test_reparameterized_samples_have_the_right_moments_and_gradients():
    mean = torch.tensor([[1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(0.25)]], dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    z = DiagonalGaussian(mean, logvar).rsample(200_000)
    assert torch.allclose(z.mean((0, 1)), mean[0].detach(), atol=0.01)
    assert torch.allclose(z.var((0, 1)), logvar[0].detach().exp(), atol=0.01)
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None


def test_kl_to_standard_normal_closed_form_matches_monte_carlo():
    torch.manual_seed(1)
    q = DiagonalGaussian(torch.randn(3, 4, dtype=torch.float64), 0.5 * torch.randn(3, 4, dtype=torch.float64))
    z = q.rsample(200_000)
    mc = (q.log_prob(z) - StandardNormal(4).double().log_prob(z)).mean(0)
    assert torch.allclose(mc, q.kl_standard_normal(), atol=0.02)


@pytest.mark.parametrize("prior_kind", ["standard", "vamp"])
def test_prior_interface_shapes(prior_kind):
    enc = small_encoder()
    prior = StandardNormal(3).double() if prior_kind == "standard" else VampPrior(enc, 5, 6).double()
    assert prior.dim == 3 and prior.normalized
    s = prior.sample(11)
    assert s.shape == (11, 3) and s.dtype == torch.float64 and not s.requires_grad
    assert prior.log_prob(s).shape == (11,)
    assert prior.log_prob(torch.zeros(2, 7, 3, dtype=torch.float64)).shape == (2, 7)
    with pytest.raises(ValueError, match="positive integer"):
        prior.sample(0)


def test_standard_normal_log_prob():
    z = torch.randn(10, 4, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(StandardNormal(4).log_prob(z), ref, atol=1e-12)


def test_vampprior_log_prob_is_the_mixture_of_posteriors():
    enc = small_encoder(2)
    torch.manual_seed(3)
    init = torch.rand(7, 6, dtype=torch.float64)
    prior = VampPrior(enc, 7, 6, init=init).double()
    u = prior.pseudo_inputs()
    assert torch.allclose(u, init.clamp(0.02, 0.98), atol=1e-6)
    z = 2 * torch.randn(4, 9, 3, dtype=torch.float64)
    comps = enc(u)
    direct = torch.zeros(4, 9, dtype=torch.float64)
    for k in range(7):
        normal = torch.distributions.Normal(comps.mean[k], (0.5 * comps.logvar[k]).exp())
        direct = direct + normal.log_prob(z).sum(-1).exp() / 7
    assert torch.allclose(prior.log_prob(z), direct.log(), rtol=1e-10, atol=1e-10)


def test_vampprior_log_prob_is_stable_far_from_the_components():
    prior = VampPrior(small_encoder(4), 5, 6).double()
    z = torch.full((2, 3), 60.0, dtype=torch.float64)  # every component density underflows to 0
    lp = prior.log_prob(z)
    assert torch.isfinite(lp).all() and (lp < -100).all()


def test_vampprior_samples_follow_the_mixture():
    enc = small_encoder(5)
    prior = VampPrior(enc, 1, 6).double()
    comp = prior.components()
    torch.manual_seed(0)
    s = prior.sample(100_000)
    assert torch.allclose(s.mean(0), comp.mean[0].detach(), atol=0.02)
    assert torch.allclose(s.var(0), comp.logvar[0].detach().exp(), rtol=0.03)


def test_vampprior_gradients_reach_pseudo_inputs_and_encoder():
    enc = small_encoder(6)
    prior = VampPrior(enc, 4, 6, init=torch.zeros(4, 6)).double()  # all pixels at the clamp 0.02
    prior.log_prob(torch.randn(5, 3, dtype=torch.float64)).sum().backward()
    assert prior.pseudo_weights.grad.abs().sum() > 0
    assert enc.mean.weight.grad.abs().sum() > 0


def test_vampprior_bad_arguments():
    enc = small_encoder()
    with pytest.raises(ValueError, match="pseudo-inputs"):
        VampPrior(enc, 0, 6)
    with pytest.raises(ValueError, match="shape"):
        VampPrior(enc, 3, 6, init=torch.zeros(2, 6))
    with pytest.raises(ValueError, match="random"):
        VampPrior(enc, 3, 6, init="data")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        VampPrior(enc, 2, 6, init=torch.full((2, 6), 3.0))
    with pytest.raises(ValueError, match="latent dimension"):
        StandardNormal(0)


def test_vampprior_log_prob_is_accurate_in_float32_at_trained_scales():
    """Narrow posteriors (σ ≈ 0.05) far from the origin (|m| ≈ 3), d = 40, K = 500: the expanded quadratic
    form loses ~0.1 nats in float32; the library's log_prob must agree with a float64 direct sum to 1e-3."""
    torch.manual_seed(0)
    K, d = 500, 40
    mean = 3.0 * torch.randn(K, d)
    logvar = torch.full((K, d), 2 * math.log(0.05)) + 0.2 * torch.randn(K, d)

    class Fixed(torch.nn.Module):  # an "encoder" whose posteriors at the pseudo-inputs are these Gaussians
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, u):
            n = u.shape[0]
            return DiagonalGaussian(mean[:n] + 0 * self.w, logvar[:n] + 0 * self.w)

    prior = VampPrior(Fixed(), K, 3)
    z = mean[:64] + 0.05 * torch.randn(64, d)  # points where the density is large
    direct = torch.logsumexp(gaussian_log_prob(z.double()[:, None, :], mean.double(), logvar.double()), -1) - math.log(K)
    got = prior.log_prob(z)
    assert got.dtype == torch.float32
    assert (got.double() - direct).abs().max() < 1e-3
    # the float32 expansion this replaces is measurably wrong here, so the check above can fail
    p = torch.exp(-logvar)
    naive = torch.logsumexp(-0.5 * (z**2) @ p.T + z @ (mean * p).T - 0.5 * (LOG_2PI * d + logvar.sum(-1)
                            + (mean**2 * p).sum(-1)), -1) - math.log(K)
    assert (naive.double() - direct).abs().max() > 1e-2


# --------------------------------------------------------------------------------------------------------
# The Gaussian–Bernoulli RBM prior (seed 003 eq. 12; chapter 8).
# --------------------------------------------------------------------------------------------------------

from mvl.ae.priors import GRBM
from mvl.objectives import sm_denoising, sm_exact, sm_mvl, sm_sliced

torch.set_num_threads(1)  # the machines are shared; these tests are small


def random_grbm(seed, d=2, h=3, scale=1.0, log_var=(-1.0, 0.3)):
    torch.manual_seed(seed)
    g = GRBM(d, h, init_scale=scale).double()
    with torch.no_grad():
        g.b.normal_()
        g.mu.normal_()
        g.log_var.uniform_(*log_var)
    return g


def grid_2d(g, n=601, width=9.0):
    """A square grid covering every mixture component μ + Wh ± ``width`` σ, and its cell area."""
    with torch.no_grad():
        bits = torch.tensor([[(k >> j) & 1 for j in range(g.n_hidden)] for k in range(2**g.n_hidden)], dtype=torch.float64)
        centres = g.mu + bits @ g.W.T
        sd = g.log_var.exp().sqrt().max()
    lo, hi = centres.min(0).values - width * sd, centres.max(0).values + width * sd
    xs = [torch.linspace(lo[i].item(), hi[i].item(), n, dtype=torch.float64) for i in range(2)]
    zz = torch.stack(torch.meshgrid(*xs, indexing="ij"), -1).reshape(-1, 2)
    return zz, (xs[0][1] - xs[0][0]) * (xs[1][1] - xs[1][0])


def test_grbm_free_energy_is_minus_log_of_the_sum_over_hidden_states():
    """F(z) = −log Σ_h exp(−E(z, h)) with E(z, h) = ½‖(z − μ)/σ‖² − (z/σ²)ᵀWh − bᵀh, by enumerating 2⁴ states."""
    g = random_grbm(0, d=3, h=4)
    z = 2 * torch.randn(7, 3, dtype=torch.float64)
    var = g.log_var.exp()
    terms = []
    for k in range(16):
        h = torch.tensor([(k >> j) & 1 for j in range(4)], dtype=torch.float64)
        joint = 0.5 * ((z - g.mu) ** 2 / var).sum(-1) - (z / var) @ (g.W @ h) - g.b @ h
        terms.append(-joint)
    brute = -torch.logsumexp(torch.stack(terms), 0)
    assert torch.allclose(g.free_energy(z), brute, atol=1e-12)
    assert torch.allclose(g(z), brute, atol=1e-12)  # forward is the free energy
    # per sample, not averaged over the batch: one row alone gives the same value
    assert torch.allclose(g.free_energy(z[:1]), brute[:1], atol=1e-12)
    assert g.free_energy(z.expand(2, 7, 3)).shape == (2, 7)


def test_grbm_exact_log_partition_matches_2d_quadrature_and_log_prob_integrates_to_one():
    """log Z (closed form) against a 601² trapezoid-free Riemann sum of exp(−F) over ±9σ of every component
    (the integrand is smooth and negligible at the edges, so the sum converges spectrally). Both log Z and
    ∫ p agree to 1e-8; a missing Σ log σ or (D/2) log 2π would be off by > 0.1."""
    for seed in range(3):
        g = random_grbm(seed, d=2, h=3)
        zz, area = grid_2d(g)
        with torch.no_grad():
            quad = torch.logsumexp(-g.free_energy(zz), 0) + torch.log(area)
            exact = g.log_partition_exact()
            mass = (g.log_prob(zz).exp().sum() * area).item()
        print(f"seed {seed}: exact {exact.item():.10f}, quadrature {quad.item():.10f}, ∫p = {mass:.10f}")
        assert abs(exact.item() - quad.item()) < 1e-8
        assert abs(mass - 1) < 1e-8
        assert torch.allclose(g.log_partition_exact(chunk=2), exact, atol=1e-12)  # chunking does not matter


def test_grbm_exact_log_partition_gradient_is_the_expected_hidden_activation():
    """∂ log Z / ∂bⱼ = E_p[sigmoid((Wᵀz/σ²)ⱼ + bⱼ)] (the 'negative phase'), the expectation by quadrature."""
    g = random_grbm(5, d=2, h=3)
    g.log_partition_exact().backward()
    zz, area = grid_2d(g)
    with torch.no_grad():
        p = g.log_prob(zz).exp() * area
        expected = (p[:, None] * torch.sigmoid(g.hidden_logits(zz))).sum(0)
    assert torch.allclose(g.b.grad, expected, atol=1e-8)


def grbm_moments(g):
    zz, area = grid_2d(g)
    with torch.no_grad():
        p = g.log_prob(zz).exp() * area
    mean = (p[:, None] * zz).sum(0)
    cov = (p[:, None, None] * (zz - mean)[:, :, None] * (zz - mean)[:, None, :]).sum(0)
    return mean, cov


@pytest.mark.parametrize("mh,step,n_langevin", [(True, 0.5, 1), (False, 0.02, 10)])
def test_grbm_gibbs_langevin_samples_have_the_moments_of_quadrature(mh, step, n_langevin):
    """20 000 independent chains, 300 sweeps: sample mean and covariance within 4 standard errors of the
    quadrature moments (SEs from the samples: sd/√n for means, sd((zᵢ − m)(zⱼ − m))/√n for covariances).
    The naive N(μ, σ²) sampler that ignores W is many SEs away (checked), so the test can fail."""
    g = random_grbm(1, d=2, h=3)
    mean, cov = grbm_moments(g)
    torch.manual_seed(0)
    n = 20_000
    z = g.sample(n, n_steps=300, step_size=step, mh=mh, n_langevin=n_langevin)
    assert z.shape == (n, 2) and not z.requires_grad
    m = z.mean(0)
    c = z - m
    prods = c[:, :, None] * c[:, None, :]
    se_mean, se_cov = z.std(0) / math.sqrt(n), prods.reshape(n, 4).std(0).reshape(2, 2) / math.sqrt(n)
    print(f"mh={mh}: mean {m.numpy().round(4)} vs {mean.numpy().round(4)} (SE {se_mean.numpy().round(4)}); "
          f"cov {prods.mean(0).numpy().round(4).tolist()} vs {cov.numpy().round(4).tolist()}; "
          f"acceptance {g.last_acceptance:.3f}")
    assert bool(((m - mean).abs() < 4 * se_mean).all())
    assert bool(((prods.mean(0) - cov).abs() < 4 * se_cov).all())
    naive_var = g.log_var.detach().exp()
    assert bool(((naive_var - cov.diagonal()).abs() > 10 * se_cov.diagonal()).any())
    if mh:
        assert 0.5 < g.last_acceptance < 1.0
    else:
        assert g.last_acceptance == 1.0


def test_grbm_unadjusted_large_step_is_detectably_biased_and_mh_fixes_it():
    """The unadjusted step s = 1.5 inflates the conditional variance by 1/(1 − s/2) = 4: the sampled variance
    is far outside 4 SE of the quadrature value; with the MH correction at the same step it is not."""
    g = random_grbm(1, d=2, h=3)
    _, cov = grbm_moments(g)
    torch.manual_seed(1)
    n = 20_000
    for mh, biased in ((False, True), (True, False)):
        z = g.sample(n, n_steps=200, step_size=1.5, mh=mh)
        v = z.var(0)
        se = ((z - z.mean(0)) ** 2).std(0) / math.sqrt(n)
        assert bool(((v - cov.diagonal()).abs() > 4 * se).any()) == biased


def test_grbm_is_an_energy_for_the_score_matching_objectives():
    """sm_sliced, sm_mvl (small ε) and sm_denoising with control variate take the GRBM unchanged: per-sample
    losses [batch] whose means agree with exact score matching within 4 SE, and gradients reach every
    parameter."""
    g = random_grbm(2, d=3, h=4)
    torch.manual_seed(3)
    x = g.sample(2000, n_steps=50, step_size=0.5, mh=True)
    exact = sm_exact(g, x).detach()
    for name, objective in (("sliced", lambda e, v: sm_sliced(e, v)), ("mvl", lambda e, v: sm_mvl(e, v, 1e-3)),
                            ("dsm+cv", lambda e, v: sm_denoising(e, v, 1e-3))):
        g.zero_grad()
        loss = objective(g, x)
        assert loss.shape == (2000,)
        diff = (loss - exact).detach()
        se = diff.std() / math.sqrt(2000)
        print(f"{name}: mean {loss.mean().item():.4f} vs exact {exact.mean().item():.4f} (SE of difference {se:.4f})")
        assert abs(diff.mean()) < 4 * se + 0.01
        loss.mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (g.W, g.b, g.mu, g.log_var))


def test_grbm_works_as_a_vae_prior():
    """Small hidden layer: the exact log Z makes the GRBM a normalized prior, so chapter 7's importance-sampled
    likelihood accepts it."""
    from mvl.ae.vae import VAE, BernoulliDecoder

    torch.manual_seed(0)
    prior = GRBM(3, 5).double()
    model = VAE(small_encoder(0), BernoulliDecoder(3, 6, (8, 8)).double(), prior)
    assert prior.normalized and prior.dim == 3
    lp = model.log_likelihood(torch.bernoulli(torch.full((4, 6), 0.5, dtype=torch.float64)), n_samples=50)
    assert lp.shape == (4,) and torch.isfinite(lp).all()
    assert prior.log_prob(torch.zeros(2, 7, 3, dtype=torch.float64)).shape == (2, 7)


def test_grbm_bad_arguments():
    with pytest.raises(ValueError, match="n_visible"):
        GRBM(0, 3)
    with pytest.raises(ValueError, match="n_hidden"):
        GRBM(2, 1.5)
    g = GRBM(2, 3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        g.free_energy(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="step_size"):
        g.sample(5, step_size=2.5)
    with pytest.raises(ValueError, match="init"):
        g.sample(5, init=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="positive integer"):
        g.sample(0)
    with pytest.raises(ValueError, match="annealed importance sampling"):
        GRBM(2, 21).log_partition_exact()
    with pytest.raises(RuntimeError, match="estimate_log_partition"):
        GRBM(2, 21).log_prob(torch.zeros(1, 2))


def test_grbm_exact_log_partition_cache_follows_the_parameters():
    """Under no_grad the exact log Z is cached; changing a parameter in place invalidates it."""
    g = random_grbm(6, d=2, h=3)
    z = torch.zeros(1, 2, dtype=torch.float64)
    with torch.no_grad():
        before = g.log_prob(z)
        g.b[0] += 0.5
        after = g.log_prob(z)
        assert torch.allclose(after, -g.free_energy(z) - g.log_partition_exact(), atol=1e-12)
    assert not torch.allclose(before, after)
    assert g.log_prob(z).requires_grad  # with gradients it is recomputed, differentiably


def test_mixture_of_gaussians_prior_density_samples_and_gradients():
    gen = torch.Generator().manual_seed(0)
    prior = MixtureOfGaussians(2, 3, generator=gen).double()
    with torch.no_grad():
        prior.logvars.copy_(torch.log(torch.tensor([[0.5, 0.5], [1.0, 2.0], [0.2, 0.3]], dtype=torch.float64)))
    z = 3 * torch.randn(6, 2, dtype=torch.float64)
    direct = sum(torch.distributions.Normal(prior.means[k], (0.5 * prior.logvars[k]).exp()).log_prob(z).sum(-1).exp() / 3
                 for k in range(3))
    assert torch.allclose(prior.log_prob(z), direct.log(), rtol=1e-10)
    # integrates to one on a grid, and samples have the mixture's mean
    g = torch.linspace(-12, 12, 481, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    assert abs(prior.log_prob(grid).exp().sum().item() * (g[1] - g[0]).item() ** 2 - 1) < 1e-4
    torch.manual_seed(1)
    s = prior.sample(200_000)
    assert torch.allclose(s.mean(0), prior.means.mean(0).detach(), atol=0.02)
    prior.log_prob(z).sum().backward()
    assert prior.means.grad.abs().sum() > 0 and prior.logvars.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="n_components"):
        MixtureOfGaussians(2, 0)


def test_vampprior_with_frozen_pseudo_inputs_has_no_pseudo_parameters():
    enc = small_encoder(7)
    init = torch.rand(4, 6, dtype=torch.float64)
    prior = VampPrior(enc, 4, 6, init=init, learn_pseudo_inputs=False).double()
    own = [n for n, _ in prior.named_parameters() if not n.startswith("encoder.")]
    assert own == [] and "pseudo_weights" in dict(prior.named_buffers())
    assert torch.allclose(prior.pseudo_inputs(), init.clamp(0.02, 0.98), atol=1e-6)
    prior.log_prob(torch.randn(5, 3, dtype=torch.float64)).sum().backward()  # gradients still reach the encoder
    assert enc.mean.weight.grad.abs().sum() > 0
