"""Tests of mvl.ae.toy: the 2-D toy VAEs of chapter 8."""

import math

import pytest
import torch

from mvl.ae import toy as T
from mvl.ae.ebm_prior import EBMPriorTrainer
from mvl.ae.priors import GRBM, VampPrior
from mvl.data import toy as toy_data

torch.set_num_threads(1)


def test_gaussian_decoder_log_prob_is_the_normal_density():
    torch.manual_seed(0)
    dec = T.GaussianDecoder(2, 2, 16)
    z, x = torch.randn(3, 5, 2), torch.randn(5, 2)
    loc, logvar = dec(z)
    ref = torch.distributions.Normal(loc, torch.exp(0.5 * logvar)).log_prob(x.expand_as(loc)).sum(-1)
    assert torch.allclose(dec.log_prob(x, z), ref, atol=1e-5)
    assert dec.sample(z).shape == (3, 5, 2)


def test_fixed_std_encoder_and_bad_arguments():
    enc = T.ToyEncoder(2, 2, 8, fixed_std=1.0)
    q = enc(torch.randn(4, 2))
    assert torch.equal(q.std, torch.ones(4, 2))
    with pytest.raises(ValueError, match="fixed_std"):
        T.ToyEncoder(fixed_std=0.0)
    with pytest.raises(ValueError, match="unknown prior"):
        T.build_toy_vae("flow")
    with pytest.raises(ValueError, match="exact log Z"):
        T.build_toy_vae("grbm", prior_hidden=21)


def test_unbounded_vampprior_keeps_real_pseudo_inputs():
    data = toy_data("eight_gaussians", 500, seed=3)
    model = T.build_toy_vae("vamp", n_pseudo=16, data=data)
    u = model.prior.pseudo_inputs()
    assert u.min() < 0 and u.max() > 1  # not squashed into (0, 1) as for images
    assert any(torch.allclose(u[0], row) for row in data)
    with pytest.raises(ValueError, match="pixel values"):
        VampPrior(model.encoder, 2, 2, init=torch.full((2, 2), -1.0))


def _gaussian_grbm_and_matching_encoder(std_scale: float):
    """A GRBM with W = 0 is the Gaussian N(μ, σ²) times e^{Σ softplus(b)}; an encoder returning
    N(μ, (std_scale σ)²) for every x is then an exact (std_scale = 1) or a too-narrow importance proposal."""
    torch.manual_seed(1)
    model = T.build_toy_vae("grbm", prior_hidden=4)
    prior = model.prior
    with torch.no_grad():
        prior.W.zero_()
        prior.mu.copy_(torch.tensor([0.5, -1.0]))
        prior.log_var.copy_(torch.tensor([0.2, -0.3]))
        enc = model.encoder
        for layer in (enc.mean, enc.logvar):
            layer.weight.zero_()
        enc.mean.bias.copy_(prior.mu)
        enc.logvar.bias.copy_(prior.log_var + 2 * math.log(std_scale))
    return model


def test_iw_log_partition_is_exact_for_a_perfect_proposal_and_low_for_a_narrow_one():
    x = torch.randn(4000, 2)
    model = _gaussian_grbm_and_matching_encoder(1.0)
    est, exact = T.iw_log_partition(model, x)
    assert abs(est - exact) < 1e-4  # every weight equals Z
    narrow = _gaussian_grbm_and_matching_encoder(0.2)
    errors = [T.iw_log_partition(narrow, x)[0] - exact for _ in range(5)]
    # each of the 4000 weights is Z·(σ/σ_q)^2·exp(−½ u²(1/s² − 1)), heavy mass far out is never sampled:
    # the expected log-weight is log Z + 2 log 5 − 12, and even the pooled estimate stays far below log Z
    assert max(errors) < -0.5, errors
    with pytest.raises(ValueError, match="GRBM"):
        T.iw_log_partition(T.build_toy_vae("standard"), x)


def test_toy_density_is_normalized_with_the_exact_grbm_log_partition():
    """∫ p(x) dx over a wide grid is 1 within the importance-sampling and quadrature error; with the log Z left
    out (an unnormalized prior) it would be off by the factor Z = e^{log Z} (here |log Z| > 1)."""
    torch.manual_seed(2)
    model = T.build_toy_vae("grbm", hidden=16, prior_hidden=6)
    assert abs(model.prior.log_partition_exact().item()) > 1.0
    pts, p = T.toy_density_grid(model, lim=14.0, n=120, n_samples=300)
    cell = (28.0 / 119) ** 2
    mass = float(p.sum() * cell)
    assert abs(mass - 1.0) < 0.05, mass


def test_toy_nll_and_samples_and_a_short_training_run_lowers_it():
    data = toy_data("eight_gaussians", 4000, seed=4)
    held = toy_data("eight_gaussians", 500, seed=5)
    torch.manual_seed(0)
    model = T.build_toy_vae("grbm", hidden=32, prior_hidden=8)
    before = T.toy_nll(model, held, 200)
    trainer = EBMPriorTrainer(model, data, None, "mvl", 3, 128, 3e-3, 1e-2, 1e-3,
                              generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        trainer.run_epoch()
    after = T.toy_nll(model, held, 200)
    assert after["nll"] < before["nll"] - 4 * math.hypot(before["se"], after["se"]), (before, after)
    x = T.toy_samples(model, 64, n_steps=20)
    assert x.shape == (64, 2) and torch.isfinite(x).all()
    big = T.build_toy_vae("grbm")
    big.prior = GRBM(2, 24)
    with pytest.raises(ValueError, match="exact log Z"):
        T.toy_nll(big, held)
