"""The four models of chapter 9's Table 1 (mvl.ae.sphere_vae): AIS and IWAE against quadrature, and the
recipes through ``python -m mvl.train`` (train, checkpoint, resume bit for bit, evaluate)."""

import math

import pytest
import torch

from mvl import train as T
from mvl.ae.recipes import RECIPES, Table1Recipe
from mvl.ae.sphere_vae import build_model, evaluate, explicit_elbo, log_likelihood_ais, log_likelihood_quadrature
from mvl.manifolds import Sphere
from test_train import run, tiny_data  # the same tiny synthetic images and train_recipe call as the trainer tests

torch.set_num_threads(1)


@pytest.mark.parametrize("encoder, latent", [("explicit", "sphere"), ("implicit", "sphere"), ("explicit", "euclidean")])
def test_ais_and_iwae_match_quadrature_for_tiny_models(encoder, latent):
    """A tiny model (latent S² or R², 20 pixels, hidden 16, decoder weights ×3 so that p(x|z) varies): the AIS
    log p(x) of :func:`log_likelihood_ais` (200 temperatures, 32 chains, 3 Riemannian MALA steps or HMC) is
    within 4 SE (+0.02) of quadrature for 6 images; for explicit models the IWAE estimate (2000 samples from
    q(z|x)) agrees too (its SE from the ESS), and :func:`evaluate` reports both."""
    torch.manual_seed(0)
    model = build_model(encoder, latent, 2, hidden=16, input_dim=20)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
    x = torch.bernoulli(torch.full((6, 20), 0.4))
    exact = log_likelihood_quadrature(model, x)
    r = log_likelihood_ais(model, x, n_temperatures=200, n_chains=32, n_steps=3, n_leapfrog=5)
    diff = r.log_z.double() - exact
    print(f"{encoder}/{latent}: AIS − quadrature {diff.numpy().round(3)}, SE {r.log_z_se.numpy().round(3)}, "
          f"log p(x) {exact.numpy().round(2)}")
    assert bool((diff.abs() < 4 * r.log_z_se.double() + 0.02).all())
    wrong = log_likelihood_quadrature(build_model(encoder, latent, 2, hidden=16, input_dim=20), x)  # other weights
    assert bool(((wrong - exact).abs() > 0.1).any())  # the quadrature sees the decoder
    if encoder == "explicit":
        est = model.importance_estimates(x, 2000)
        se = torch.sqrt(1 / est["ess"] - 1 / 2000).double()
        d_iw = est["log_px"].double() - exact
        print(f"IWAE − quadrature {d_iw.numpy().round(3)}, SE {se.numpy().round(3)}")
        assert bool((d_iw.abs() < 4 * se + 0.02).all())
        m = evaluate(model, x, n_temperatures=50, n_chains=8, n_steps=2, n_leapfrog=5, iwae_samples=200)
        assert {"test_nll", "iwae_nll", "ais_minus_iwae_log_px", "test_elbo"} <= m.keys()
        assert m["test_elbo"] <= -m["iwae_nll"] + 0.5  # the ELBO is a lower bound (one-sample noise allowed)


def tiny(encoder="implicit", latent="sphere", **changes):
    base = Table1Recipe("tiny-ch9", 1, 9, "a test recipe", encoder=encoder, latent=latent, n=2, hidden=16, steps=7,
                        batch_size=16, n_train=48, eval_images=8, ais_temperatures=20, ais_chains=4, ais_steps=2, iwae_samples=16)
    return base.with_changes(**changes)




@pytest.mark.parametrize("encoder, latent", [("implicit", "sphere"), ("explicit", "sphere"), ("implicit", "euclidean"),
                                             ("explicit", "euclidean")])
def test_a_tiny_recipe_trains_checkpoints_resumes_bit_for_bit_and_evaluates(tmp_path, encoder, latent):
    """7 steps of 16 images (3 epochs), in one sitting or stopped after one epoch and resumed: the same weights
    (the energy's too), the same curve and the same AIS test NLL; the run record has the AIS settings."""
    recipe = tiny(encoder, latent)
    one = run(recipe, tmp_path / "a")
    assert one["finished"] and one["epochs"] == 3 and one["curve"]["step"] == [3, 6, 7]
    assert run(recipe, tmp_path / "b", stop_after_epochs=1) is None
    two = run(recipe, tmp_path / "b", resume=True)
    wa = torch.load(tmp_path / "a/out/tiny-ch9.pt", weights_only=True)
    wb = torch.load(tmp_path / "b/out/tiny-ch9.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(k.startswith("energy.") for k in wa) == (encoder == "implicit")
    assert one["curve"]["valid_elbo"] == two["curve"]["valid_elbo"]
    m = one["metrics"]
    assert m["test_nll"] == two["metrics"]["test_nll"] and math.isfinite(m["test_nll"]) and m["test_images"] == 8
    assert m["ais_kernel"] == ("riemannian_mala" if latent == "sphere" else "hmc") and m["ais_temperatures"] == 20
    assert ("iwae_nll" in m) == (encoder == "explicit")
    if encoder == "implicit":
        assert all(math.isfinite(v) for v in one["curve"]["train_energy_mvl"])
    else:
        assert one["curve"]["train_energy_mvl"] == [None] * 3
    _, record = T.load_trained(recipe, folder=tmp_path / "a/out")
    assert record["metrics"]["test_nll"] == m["test_nll"]


def test_the_chapter_9_recipes_follow_the_paper():
    """Eight recipes (explicit/implicit × sphere/Euclidean × n = 8, 32) with the released code's settings."""
    ch9 = [r for r in RECIPES.values() if r.chapter == 9]
    assert len(ch9) == 8
    assert {(r.encoder, r.latent, r.n) for r in ch9} == {(e, lat, n) for e in ("explicit", "implicit")
                                                         for lat in ("sphere", "euclidean") for n in (8, 32)}
    for r in ch9:
        assert (r.steps, r.batch_size, r.lr, r.eps, r.energy_l2, r.hidden) == (100_000, 128, 1e-3, 1e-3, 1e-4, 256)
        assert (r.ais_temperatures, r.ais_chains, r.ais_steps, r.eval_images) == (1000, 16, 5, 200)  # 200: CPU budget
    m = build_model("implicit", "sphere", 8)
    assert m.encoder.code_dim == 9 and m.encoder.noise_dim == 8 and m.decoder.scale == pytest.approx(3.0)
    x = torch.bernoulli(torch.full((3, 784), 0.3))
    q = build_model("explicit", "sphere", 8).encoder(x)
    assert q.loc.shape == (3, 9) and (q.concentration >= 1).all()
    assert explicit_elbo(build_model("explicit", "euclidean", 8), x).kl.shape == (3,)
    with pytest.raises(ValueError, match="encoder must be"):
        Table1Recipe("bad", 1, 9, "bad", encoder="amortized")
    with pytest.raises(ValueError, match="ais_chains"):
        tiny(ais_chains=0)
    # the energy form (added after the first runs) stays out of the default recipes' fingerprints
    assert "energy_form" not in tiny().settings() and tiny(energy_form="ffn").settings()["energy_form"] == "ffn"
    assert tiny(energy_form="ffn").fingerprint() != tiny().fingerprint()
    assert tiny(energy_form="ffn").skeleton().energy.form == "ffn"
    with pytest.raises(ValueError, match="energy_form"):
        tiny(energy_form="score")
    with pytest.raises(ValueError, match="encoder must be"):
        build_model("explicit", "torus")


def test_quadrature_refuses_latent_spaces_it_cannot_integrate():
    with pytest.raises(ValueError, match="S\\^2 or R\\^2"):
        log_likelihood_quadrature(build_model("explicit", "sphere", 8, hidden=8, input_dim=20), torch.zeros(2, 20))


class _VMFLikelihood(torch.nn.Module):
    """log p(x|z) = κ xᵀz with x a mean direction [n, 3]: not a Bernoulli decoder (no logits), so the quadrature
    must use its ``log_prob``; with the uniform prior on S² the posterior is vMF(x, κ)."""

    def __init__(self, kappa):
        super().__init__()
        self.kappa = torch.nn.Parameter(torch.tensor(kappa, dtype=torch.float64))

    def forward(self, z):
        raise AssertionError("the quadrature must not ask a non-Bernoulli decoder for logits")

    def log_prob(self, x, z):  # z [m, n, 3]
        return self.kappa * (x * z).sum(-1)


def _vmf_likelihood_model(kappa):
    from mvl.ae.vmf import HypersphericalUniform

    model = torch.nn.Module()
    model.prior, model.decoder = HypersphericalUniform(2), _VMFLikelihood(kappa)
    return model


def test_posterior_quadrature_recovers_a_von_mises_fisher_posterior():
    """With log p(x|z) = κ μ_xᵀz and the uniform prior on S², p(z|x) is vMF(μ_x, κ): the quadrature posterior's
    mean is A₃(κ) μ_x (A₃(κ) = coth κ − 1/κ) to 1e-6, and log p(x) = log(sinh κ / κ) (the normalizer ratio)."""
    from mvl.ae.sphere_vae import posterior_quadrature

    mu = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8], [0.0, 0.0, -1.0]], dtype=torch.float64), dim=1)
    for kappa in (2.0, 30.0):
        model = _vmf_likelihood_model(kappa)
        nodes, w = posterior_quadrature(model, mu)
        assert torch.allclose(w.sum(1), torch.ones(2, dtype=torch.float64))
        a3 = 1 / math.tanh(kappa) - 1 / kappa
        assert torch.allclose(w @ nodes, a3 * mu, atol=1e-6), (w @ nodes, a3 * mu)
        exact = math.log(math.sinh(kappa) / kappa)
        assert torch.allclose(log_likelihood_quadrature(model, mu), torch.full((2,), exact, dtype=torch.float64), atol=1e-8)


def test_quadrature_log_joint_matches_the_decoder_log_prob_and_second_moments_of_a_vmf_posterior():
    """The one-matrix-product form of log p(x|z) on the grid equals the decoder's own log_prob; and for the vMF
    likelihood κμᵀz the posterior's second moments match the closed form of vMF(μ, κ) on S²:
    E[(zᵀμ)²] = 1 − 2A₃(κ)/κ, and A₃(κ)/κ along each direction orthogonal to μ."""
    from mvl.ae.sphere_vae import _grid_log_joint, posterior_quadrature

    torch.manual_seed(1)
    model = build_model("implicit", "sphere", 2, hidden=16, input_dim=20)
    x = torch.bernoulli(torch.full((3, 20), 0.4))
    pts, lj = _grid_log_joint(model, x, 20, 100)
    with torch.no_grad():
        direct = model.decoder.log_prob(x, pts.float()[:, None, :].expand(-1, 3, -1)).double()
    log_w = lj - direct
    assert torch.allclose(log_w, log_w[:, :1].expand_as(log_w), atol=1e-4)  # the difference is the weight only

    mu = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8]], dtype=torch.float64), dim=1)
    perp = torch.nn.functional.normalize(torch.tensor([[0.5, 0.3, 0.0]], dtype=torch.float64), dim=1)
    for kappa in (5.0, 50.0):
        nodes, w = posterior_quadrature(_vmf_likelihood_model(kappa), mu)
        a3 = 1 / math.tanh(kappa) - 1 / kappa
        along = (w[0] * (nodes @ mu[0]) ** 2).sum()
        across = (w[0] * (nodes @ perp[0]) ** 2).sum()
        assert abs(along - (1 - 2 * a3 / kappa)) < 1e-6 and abs(across - a3 / kappa) < 1e-6, (kappa, along, across)
