"""The VAE toolkit (mvl.ae.vae): networks, ELBO, importance-sampled likelihood, training, checkpoints."""

import math

import pytest
import torch

from mvl.ae import vae as V
from mvl.ae.priors import Prior, StandardNormal, VampPrior


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread avoids thread start-up and contention costs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vae(prior="standard", input_dim=8, latent=1, hidden=8, seed=0):
    torch.manual_seed(seed)
    enc = V.GaussianEncoder(input_dim, latent, (hidden, hidden))
    dec = V.BernoulliDecoder(latent, input_dim, (hidden, hidden))
    p = StandardNormal(latent) if prior == "standard" else VampPrior(enc, 4, input_dim)
    return V.VAE(enc, dec, p).double()


def binary_data(n, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, dim), 0.3, dtype=torch.float64), generator=g)


def test_gated_dense_is_a_gated_product():
    torch.manual_seed(0)
    layer = V.GatedDense(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(layer(x), layer.h(x) * torch.sigmoid(layer.g(x)))
    assert len(V.gated_mlp([4, 5, 6])) == 2
    with pytest.raises(ValueError, match="sizes"):
        V.gated_mlp([4])


def test_bernoulli_decoder_log_prob():
    torch.manual_seed(0)
    dec = V.BernoulliDecoder(2, 5, (4, 4)).double()
    z = torch.randn(3, 7, 2, dtype=torch.float64)
    x = binary_data(7, 5)
    ref = torch.distributions.Bernoulli(logits=dec(z)).log_prob(x).sum(-1)
    assert dec.log_prob(x, z).shape == (3, 7)
    assert torch.allclose(dec.log_prob(x, z), ref, atol=1e-12)
    assert torch.allclose(dec.mean(z), torch.sigmoid(dec(z)))


def test_elbo_terms_and_beta():
    model = tiny_vae(latent=2)
    x = binary_data(6)
    torch.manual_seed(1)
    t = model.elbo(x, beta=0.25)
    assert t.reconstruction.shape == t.kl.shape == (6,)
    assert torch.allclose(t.elbo, t.reconstruction - t.kl)
    assert torch.allclose(t.objective, t.reconstruction - 0.25 * t.kl)
    # the one-sample KL estimate averages to the closed form for the standard prior
    torch.manual_seed(2)
    with torch.no_grad():
        kl = model.elbo(x.repeat(20_000, 1)).kl.reshape(20_000, 6).mean(0)
        assert torch.allclose(kl, model.encoder(x).kl_standard_normal(), atol=0.02)
    with pytest.raises(ValueError, match="beta"):
        model.elbo(x, beta=-1.0)


def exact_log_likelihood(model, x, n_grid=4001, half_width=10.0):
    """log p(x) for a 1-D latent by the trapezoid rule on a grid (the reference for importance sampling)."""
    z = torch.linspace(-half_width, half_width, n_grid, dtype=torch.float64)[:, None, None].expand(-1, x.shape[0], 1)
    log_joint = model.decoder.log_prob(x, z) + model.prior.log_prob(z)
    w = torch.full((n_grid, 1), 2 * half_width / (n_grid - 1), dtype=torch.float64)
    w[0] = w[-1] = w[0] / 2
    return torch.logsumexp(log_joint + w.log(), 0)


@torch.no_grad()
def test_importance_sampling_converges_to_the_exact_likelihood_from_below():
    model = tiny_vae(seed=3)
    for p in model.decoder.parameters():
        p.mul_(3.0)  # a sharper posterior that the untrained encoder misses: a clear ELBO gap
    x = binary_data(40, seed=1).repeat(10, 1)
    exact = exact_log_likelihood(model, x)
    torch.manual_seed(0)
    elbo = model.elbo(x.repeat(200, 1)).elbo.reshape(200, -1).mean(0)
    estimates = {s: model.log_likelihood(x, s).mean().item() for s in (1, 10, 100, 10_000)}
    assert abs(estimates[1] - elbo.mean().item()) < 0.75  # S = 1 is the ELBO (400 one-sample draws)
    assert estimates[1] + 1.0 < estimates[10] < estimates[100] - 0.03  # tightening with S ...
    assert estimates[100] <= exact.mean().item() + 0.01  # ... from below
    assert abs(estimates[10_000] - exact.mean().item()) < 0.02
    assert (model.log_likelihood(x, 1000) >= elbo - 1e-6).all()  # IW >= ELBO, per example


@torch.no_grad()
def test_log_likelihood_chunking_and_vampprior():
    model = tiny_vae("vamp", latent=2, seed=4)
    x = binary_data(9)
    torch.manual_seed(0)
    a = model.log_likelihood(x, 3000)
    b = model.log_likelihood(x, 3000, max_rows=700)  # 3000 samples in chunks of 77 rows × 9 examples
    assert a.shape == b.shape == (9,)
    assert torch.allclose(a, b, atol=0.05)
    with pytest.raises(ValueError, match="n_samples"):
        model.log_likelihood(x, 0)


def test_unnormalized_priors_have_no_likelihood_estimate():
    class Energy(Prior):
        normalized = False
        dim = 1

        def log_prob(self, z):
            return -(z**4).sum(-1)

    model = tiny_vae()
    model.prior = Energy()
    with pytest.raises(ValueError, match="unnormalized"):
        model.log_likelihood(binary_data(2), 10)


def test_active_units_counts_dimensions_that_vary_with_x():
    model = tiny_vae(latent=4, seed=5)
    with torch.no_grad():
        model.encoder.mean.weight[2:] = 0.0  # units 2 and 3 no longer depend on x
        model.encoder.mean.weight[:2] *= 50.0
    n, var = V.active_units(model, binary_data(200), threshold=0.01)
    assert n == 2 and var.shape == (4,) and (var[2:] < 1e-20).all()


def test_kl_warmup_schedule():
    assert [V.kl_weight(s, 4) for s in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert V.kl_weight(1, 0) == 1.0


def two_pattern_data(n, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[0.95] * (dim // 2) + [0.05] * (dim // 2), [0.05] * (dim // 2) + [0.95] * (dim // 2)])
    k = torch.randint(0, 2, (n,), generator=g)
    return torch.bernoulli(protos[k], generator=g)


@pytest.mark.parametrize("prior", ["standard", "vamp"])
def test_training_lowers_the_loss_and_checkpoints_round_trip(prior, tmp_path):
    train, valid = two_pattern_data(400), two_pattern_data(200, seed=1)
    torch.manual_seed(0)
    init = train[:10] if prior == "vamp" else "random"
    model = V.build_vae(prior, latent_dim=2, hidden=16, input_dim=16, n_pseudo=10, pseudo_init=init)
    before = V.evaluate_elbo(model, valid)["elbo"]
    path = tmp_path / "ckpt" / "m.pt"
    hist = V.train_vae(model, train, valid, epochs=15, batch_size=50, lr=3e-3, warmup=3, patience=15,
                       checkpoint=path, progress=False)
    after = V.evaluate_elbo(model, valid)["elbo"]
    assert after > before + 3.0 and hist["valid_elbo"][-1] > hist["valid_elbo"][0]
    assert hist["beta"][0] < 1.0 and hist["beta"][-1] == 1.0 and not hist["loaded"]
    assert len(hist["epoch"]) == 15 and path.exists()
    fresh = V.build_vae(prior, latent_dim=2, hidden=16, input_dim=16, n_pseudo=10, pseudo_init=init)
    again = V.train_vae(fresh, train, valid, epochs=15, checkpoint=path, progress=False)
    assert again["loaded"] and again["valid_elbo"] == hist["valid_elbo"]
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_an_incompatible_checkpoint_is_ignored(tmp_path):
    path = tmp_path / "m.pt"
    V.save_checkpoint(path, tiny_vae(latent=3), {"epoch": [1]})
    model = tiny_vae(latent=2)
    with pytest.warns(UserWarning, match="incompatible"):
        hist = V.train_vae(model, binary_data(8), epochs=1, batch_size=4, checkpoint=path, progress=False)
    assert not hist["loaded"]
    assert V.load_checkpoint(path, tiny_vae(latent=2))["epoch"] == [1]  # overwritten by the new model


def test_early_stopping_restores_the_best_epoch(monkeypatch):
    model = V.build_vae("standard", latent_dim=2, hidden=8, input_dim=16)
    scores = iter([1.0, 2.0, 3.0, 2.5, 2.0, 1.0, 0.0])
    states = []

    def fake_eval(m, x, batch_size=1000):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        s = next(scores)
        return {"elbo": s, "reconstruction": s, "kl": 0.0}

    monkeypatch.setattr(V, "evaluate_elbo", fake_eval)
    hist = V.train_vae(model, two_pattern_data(60).float(), two_pattern_data(20).float(), epochs=7, batch_size=20,
                       lr=1e-2, warmup=0, patience=2, progress=False)
    assert hist["best_epoch"] == 3 and hist["stopped_early"] and hist["epoch"] == [1, 2, 3, 4, 5]
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[2][k])


def test_training_rejects_bad_settings():
    model = tiny_vae()
    with pytest.raises(ValueError, match="epochs"):
        V.train_vae(model, binary_data(4), epochs=0)
    with pytest.raises(ValueError, match="lr"):
        V.train_vae(model, binary_data(4), lr=math.nan)
    with pytest.raises(ValueError, match="warmup"):
        V.train_vae(model, binary_data(4), warmup=-1)
    with pytest.raises(ValueError, match="prior"):
        V.build_vae("flow")


def test_nan_during_training_raises_floating_point_error():
    model = tiny_vae()
    with torch.no_grad():
        model.decoder.logits.bias.fill_(math.nan)
    with pytest.raises(FloatingPointError, match="learning rate"):
        V.train_vae(model, binary_data(8), epochs=1, batch_size=4, progress=False)


def test_checkpoint_path_depends_on_the_configuration(tmp_path):
    a = V.checkpoint_path("ch7", {"lr": 1e-3, "epochs": 5}, root=tmp_path)
    assert a == V.checkpoint_path("ch7", {"epochs": 5, "lr": 1e-3}, root=tmp_path)
    assert a != V.checkpoint_path("ch7", {"lr": 1e-3, "epochs": 6}, root=tmp_path)
    assert a.parent == tmp_path / "checkpoints" and a.name.startswith("ch7-")


def test_sample_and_reconstruct_shapes():
    model = tiny_vae("vamp", latent=2)
    x = binary_data(5)
    assert model.sample(7).shape == (7, 8) and model.reconstruct(x).shape == (5, 8)
    assert ((model.sample(7) >= 0) & (model.sample(7) <= 1)).all()


def test_effective_sample_size_of_the_importance_weights():
    """ESS is S for equal weights (posterior = prior, decoder ignores z) and drops when weights differ."""
    torch.manual_seed(0)
    model = V.build_vae("standard", latent_dim=3, hidden=8, input_dim=6)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    est = model.importance_estimates(x, 64, max_rows=50)  # several chunks
    assert est["ess"].shape == (4,) and (est["ess"] >= 1 - 1e-4).all() and (est["ess"] <= 64 + 1e-3).all()
    # the same numbers in one chunk
    torch.manual_seed(1)
    a = model.importance_estimates(x, 64, max_rows=10_000)
    torch.manual_seed(1)
    b = model.log_likelihood(x, 64, max_rows=10_000)
    assert torch.allclose(a["log_px"], b)
    # exact ESS for known weights: w = (0, log 3) repeated -> (1+3)^2/(1+9) per pair
    logw = torch.tensor([0.0, math.log(3.0)]).repeat(8)[:, None]
    lse, lse2 = torch.logsumexp(logw, 0), torch.logsumexp(2 * logw, 0)
    assert torch.allclose(torch.exp(2 * lse - lse2), torch.tensor([8 * 16 / 10.0]))


def test_elbo_surgery_splits_the_kl_term():
    torch.manual_seed(0)
    model = V.build_vae("standard", latent_dim=3, hidden=8, input_dim=6)
    x = torch.bernoulli(torch.full((300, 6), 0.5))
    out = V.elbo_surgery(model, x, batch_size=64)
    assert out["kl"] == pytest.approx(out["mutual_information"] + out["marginal_kl"])
    assert -1e-6 <= out["mutual_information"] <= out["log_n"] + 1e-6
    # its KL is an estimate of the average KL term, known in closed form for the standard prior
    exact = torch.cat([model.encoder(xb).kl_standard_normal() for xb in x.split(64)]).mean().item()
    torch.manual_seed(1)
    reps = torch.tensor([V.elbo_surgery(model, x)["kl"] for _ in range(20)])
    assert abs(reps.mean().item() - exact) < 4 * reps.std().item() / math.sqrt(20) + 1e-3
    # standard errors over the examples: positive, and shrinking like 1/sqrt(N) (four times the examples)
    big = V.elbo_surgery(model, x.repeat(4, 1), batch_size=64)
    for key in ("kl_se", "mutual_information_se", "marginal_kl_se"):
        assert out[key] > 0 and 0.3 < big[key] / out[key] < 0.7, (key, out[key], big[key])


def test_elbo_surgery_information_is_large_for_distinct_sharp_posteriors():
    """Posteriors that separate the examples carry about log N nats of information; identical ones none."""
    class Enc(torch.nn.Module):
        def __init__(self, spread):
            super().__init__()
            self.spread = spread

        def forward(self, x):
            from mvl.ae.priors import DiagonalGaussian
            idx = x[:, :1]
            return DiagonalGaussian(self.spread * idx.repeat(1, 2), torch.full((len(x), 2), -8.0))

    x = torch.arange(50.0)[:, None].repeat(1, 4)
    for spread, lo, hi in ((10.0, math.log(50) - 0.01, math.log(50) + 1e-6), (0.0, -1e-6, 1e-6)):
        model = V.VAE(Enc(spread), None, V.StandardNormal(2))
        info = V.elbo_surgery(model, x)["mutual_information"]
        assert lo <= info <= hi, (spread, info)


def test_variance_explained_is_scale_free():
    """Scaling a unit's codes (means and standard deviations) leaves its share unchanged, unlike the
    absolute activity; a collapsed unit has share 0."""
    from mvl.ae.priors import DiagonalGaussian

    class Enc(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            m = torch.stack([x[:, 0], torch.zeros(len(x))], 1) * self.scale
            return DiagonalGaussian(m, torch.full_like(m, 2 * math.log(0.1 * self.scale)))

    x = torch.randn(400, 3)
    shares = [V.variance_explained(V.VAE(Enc(s), None, V.StandardNormal(2)), x) for s in (0.1, 1.0, 5.0)]
    for sh in shares[1:]:
        assert torch.allclose(sh, shares[0], atol=1e-5)
    assert shares[0][0] > 0.95 and shares[0][1] == 0
    acts = [V.active_units(V.VAE(Enc(s), None, V.StandardNormal(2)), x)[0] for s in (0.05, 5.0)]
    assert acts == [0, 1]  # the absolute threshold calls the same unit inactive at a small scale


def test_train_vae_can_use_the_released_codes_normalized_gradient_adam(monkeypatch):
    """train_vae(optimizer=...) reaches the training loop (chapter 7's paper profile): the trainer steps with
    AdamNormGrad (tested on its own in test_train.py) instead of Adam; an unknown optimizer is refused."""
    made = []
    real = V.VAETrainer.__init__

    def spy(self, *args, **kw):
        real(self, *args, **kw)
        made.append(type(self.opt).__name__)

    monkeypatch.setattr(V.VAETrainer, "__init__", spy)
    for opt in ("adam", "adamnormgrad"):
        torch.manual_seed(0)
        V.train_vae(tiny_vae(), binary_data(8), epochs=1, batch_size=4, progress=False, optimizer=opt)
    assert made == ["Adam", "AdamNormGrad"]
    with pytest.raises(ValueError, match="optimizer"):
        V.train_vae(tiny_vae(), binary_data(4), epochs=1, optimizer="sgd")


def test_per_unit_rate_of_a_standard_prior_is_the_closed_form_kl_of_each_unit():
    """For N(0, I) the rate of unit u is E_x ½(μ_u² + σ_u² − 1 − log σ_u²), and the rates add up to the KL term."""
    model = tiny_vae(latent=3, input_dim=8)
    x = binary_data(4000)
    torch.manual_seed(1)
    rate, se = V.per_unit_rate(model, x)
    with torch.no_grad():
        q = model.encoder(x)
        exact = (0.5 * (q.mean**2 + q.logvar.exp() - 1 - q.logvar)).mean(0)
    assert rate.shape == (3,) and torch.all(se > 0)
    assert torch.all((rate - exact).abs() < 4 * se), (rate, exact, se)
    assert torch.all((2 * exact - exact).abs() > 4 * se)  # a factor-2 error would be seen
    assert abs(rate.sum() - q.kl_standard_normal().mean()) < 4 * se.norm()


@pytest.mark.parametrize("kind", ["vamp", "mog"])
def test_the_priors_marginals_integrate_their_joint_density(kind):
    """marginals(): p(z_1) = ∫ p(z_1, z_2) dz_2 for the mixture priors (quadrature over z_2 in d = 2)."""
    from mvl.ae.priors import MixtureOfGaussians

    torch.manual_seed(0)
    if kind == "vamp":
        enc = V.GaussianEncoder(8, 2, (8, 8)).double()
        prior = VampPrior(enc, 5, 8)
    else:
        prior = MixtureOfGaussians(2, 5).double()
        with torch.no_grad():
            prior.logvars.copy_(torch.log(torch.rand(5, 2, dtype=torch.float64) + 0.3))
    mean, logvar = prior.marginals()
    assert mean.shape == logvar.shape == (5, 2)
    z1 = torch.linspace(-3, 3, 7, dtype=torch.float64)
    z2 = torch.linspace(-15, 15, 6001, dtype=torch.float64)
    with torch.no_grad():
        joint = prior.log_prob(torch.stack(torch.meshgrid(z1, z2, indexing="ij"), -1)).double().exp()  # [7, 6001]
        marginal = torch.trapezoid(joint, z2, dim=1)
        mean, logvar = mean.double(), logvar.double()
        ours = (torch.exp(-0.5 * (math.log(2 * math.pi) + logvar[:, 0] + (z1[:, None] - mean[:, 0]) ** 2
                                  * torch.exp(-logvar[:, 0])))).mean(1)
    assert torch.allclose(ours, marginal, rtol=1e-6, atol=1e-10), (ours, marginal)
    with torch.no_grad():  # the other unit's marginal is not the answer (the check can fail)
        other = (torch.exp(-0.5 * (math.log(2 * math.pi) + logvar[:, 1] + (z1[:, None] - mean[:, 1]) ** 2
                                   * torch.exp(-logvar[:, 1])))).mean(1)
    assert not torch.allclose(other, marginal, rtol=1e-3)


def test_per_unit_rate_needs_gaussian_mixture_marginals():
    from mvl.ae.priors import GRBM

    model = V.VAE(V.GaussianEncoder(8, 2, (8,)), V.BernoulliDecoder(2, 8, (8,)), GRBM(2, 3))
    with pytest.raises(NotImplementedError, match="GRBM"):
        V.per_unit_rate(model, binary_data(4).float())


def test_per_unit_rate_against_a_mixture_prior_is_the_kl_term_in_one_dimension():
    """With a 1-D latent the marginal is the whole prior: the rate is E_x E_q[log q(z|x) − log p(z)], here for
    a 3-component mixture (a wrong mixture formula, e.g. a missing − log K or a mean instead of a logsumexp,
    moves it by more than 4 s.e.)."""
    from mvl.ae.priors import MixtureOfGaussians

    torch.manual_seed(0)
    enc = V.GaussianEncoder(8, 1, (8, 8)).double()
    prior = MixtureOfGaussians(1, 3).double()
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64))
        prior.logvars.copy_(torch.log(torch.tensor([[0.3], [1.0], [0.5]], dtype=torch.float64)))
    model = V.VAE(enc, V.BernoulliDecoder(1, 8, (8,)).double(), prior)
    x = binary_data(4000)
    torch.manual_seed(1)
    rate, se = V.per_unit_rate(model, x)
    with torch.no_grad():
        q = model.encoder(x)
        z = q.rsample(200)  # [200, n, 1]
        ref = (q.log_prob(z) - prior.log_prob(z)).mean().item()
        m, lv = prior.means.double(), prior.logvars.double()
        comp = -0.5 * (math.log(2 * math.pi) + lv[:, 0] + (z[..., :1] - m[:, 0]) ** 2 * torch.exp(-lv[:, 0]))
        no_log_k = (q.log_prob(z) - torch.logsumexp(comp, -1)).mean().item()  # the mixture without - log K
    assert abs(rate.item() - ref) < 4 * se.item(), (rate, ref, se)
    assert abs(no_log_k - ref) == pytest.approx(math.log(3)) and math.log(3) > 4 * se.item()
