"""Wasserstein auto-encoders (mvl.ae.wae, chapter 10): the entropy surrogate against closed forms, the losses
of WAE-MVL and WAE-GAN on tiny runs, checkpoints, and bad inputs."""

import math

import pytest
import torch

from mvl.ae import wae as W
from mvl.ae.mnist import mnist

torch.set_num_threads(1)


# ---- the entropy surrogate: gradients against closed forms ----

def test_the_entropy_surrogate_gives_the_gaussian_entropy_gradient():
    """Codes z = s·u, u ~ N(0, I_d), s learnable: q = N(0, s²I), H = d log s + const, so ∂(−H)/∂s = −d/s; with the
    exact energy ‖z‖²/(2s²) (s frozen in it) the surrogate's gradient is −mean‖u‖²/s, whose s.e. is
    √(2d/N)/s. The tolerance is 4 s.e.; a score left attached to the graph doubles the gradient (−2d/s), and
    the KL's minimum must sit at s = 1, where q = p."""
    d, n = 8, 4000
    space = W.LatentSpace("euclidean", d)
    u = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    se_rel = math.sqrt(2 * d / n) / d
    for s0 in (0.5, 1.0, 2.0):
        s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
        energy = lambda z, s0=s0: (z**2).sum(-1) / (2 * s0**2)
        (g,) = torch.autograd.grad(W.neg_entropy_surrogate(energy, s * u, space), s)
        assert g.item() == pytest.approx(-d / s0, rel=4 * se_rel)
        assert abs(g.item() - (-2 * d / s0)) > 20 * se_rel * d / s0  # the attached-score bug would fail
        (gk,) = torch.autograd.grad(W.kl_surrogate(energy, s * u, space), s)
        exact_kl_grad = -d / s0 + d * s0  # d/ds [−d log s + d s²/2]
        assert gk.item() == pytest.approx(exact_kl_grad, abs=4 * se_rel * d * (1 / s0 + s0))
    # at s = 1 the KL gradient vanishes up to sampling noise
    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (gk,) = torch.autograd.grad(W.kl_surrogate(lambda z: (z**2).sum(-1) / 2, s * u, space), s)
    assert abs(gk.item()) < 4 * math.sqrt(2 * d / n) * 2


def test_the_entropy_surrogate_on_the_circle_uses_the_riemannian_score():
    """On S¹, codes z = (cos θ, sin θ) with θ = s·u, u ~ N(0, 1), s = 0.3: a wrapped normal whose wrap-around
    mass is e^{−(2π)²/(2s²)} ≈ 1e-95, so H = log s + const (arc length) and ∂(−H)/∂s = −1/s (4 s.e. tolerance, as
    above). The exact energy θ²/(2s²), θ = atan2(z₂, z₁), is given as a function of the embedded point plus
    50(‖z‖² − 1), which vanishes on the circle but has a large normal gradient: the score must be tangent."""
    n, s0 = 4000, 0.3
    space = W.LatentSpace("sphere", 1)
    u = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    se = math.sqrt(2 / n) / s0

    def energy(y):  # θ²/(2 s0²) plus a term that vanishes on the circle but has a large normal gradient
        theta = torch.atan2(y[:, 1], y[:, 0])
        return theta**2 / (2 * s0**2) + 50.0 * ((y**2).sum(-1) - 1.0)

    s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    z = torch.stack([torch.cos(s * u), torch.sin(s * u)], -1)
    (g,) = torch.autograd.grad(W.neg_entropy_surrogate(energy, z, space), s)
    assert g.item() == pytest.approx(-1 / s0, abs=4 * se)
    # the normal part of the ambient gradient is orthogonal to ∂z/∂s, so even it would not change this
    # gradient; what the projection guarantees is that the score itself is tangent:
    sc = W.score(energy, z.detach(), space)
    assert (sc * z.detach()).sum(-1).abs().max().item() < 1e-9


# ---- tiny runs: each step lowers its losses ----

def _means(values, k):
    first, last = torch.tensor(values[:k]), torch.tensor(values[-k:])
    se = math.sqrt(first.var().item() / k + last.var().item() / k)
    return first.mean().item(), last.mean().item(), se


@pytest.mark.parametrize("latent", ["sphere", "euclidean"])
def test_the_energy_step_lowers_the_score_matching_objective_on_fixed_codes(latent):
    """The energy alone, fitted by its MVL loss (RMSProp 1e-3, 300 steps of 128) to fixed concentrated codes:
    the exact (Riemannian) score-matching objective J = E[½‖grad E‖² − Δ E] that the MVL loss estimates,
    evaluated on all 512 codes, falls by more than 5 paired standard errors (and from about 0 at the
    initial, nearly flat energy to clearly negative)."""
    from mvl.objectives import sm_exact, sm_riemannian_exact

    torch.manual_seed(0)
    space = W.LatentSpace(latent, 4)
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(512, space.dim, generator=g) * 0.3 + torch.tensor([1.0] + [0.0] * (space.dim - 1))
    if space.sphere is not None:
        codes = codes / codes.norm(dim=-1, keepdim=True)
    energy = W.marginal_energy(space, hidden=64)
    exact = (lambda: sm_riemannian_exact(energy, codes, space.sphere)) if space.sphere else (lambda: sm_exact(energy, codes))
    before = exact().detach()
    opt = torch.optim.RMSprop(energy.parameters(), lr=1e-3)
    for i in range(300):
        loss = W.energy_loss(energy, codes[torch.randint(0, 512, (128,), generator=g)], space)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = exact().detach()
    diff = after - before
    se = diff.std().item() / math.sqrt(len(diff))
    print(f"{latent}: exact J {before.mean():.3f} -> {after.mean():.3f} (paired s.e. {se:.3f})")
    assert diff.mean().item() < -5 * se


def test_the_discriminator_step_separates_codes_from_the_prior():
    """Codes from a narrow cloud against uniform prior samples on S⁴: the discriminator's loss starts at about
    log 4 = 1.386 (chance) and falls below 1.0 within 300 steps (last 30 averaged, 3 s.e. margin)."""
    torch.manual_seed(0)
    space = W.LatentSpace("sphere", 4)
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(512, space.dim, generator=g) * 0.3 + torch.tensor([1.0, 0, 0, 0, 0])
    codes = codes / codes.norm(dim=-1, keepdim=True)
    disc = W.discriminator(space, hidden=64)
    opt = torch.optim.RMSprop(disc.parameters(), lr=1e-3)
    losses = []
    for _ in range(300):
        batch = codes[torch.randint(0, 512, (128,), generator=g)]
        loss = W.discriminator_loss(disc, batch, space.sample_prior(128, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last, se = _means(losses, 30)
    print(f"discriminator loss {first:.3f} -> {last:.3f} (s.e. {se:.3f})")
    assert abs(losses[0] - math.log(4)) < 0.1
    assert last + 3 * se < 1.0


@pytest.fixture(scope="module")
def images():
    return mnist("train", binarize="dynamic").subset(1024)


@pytest.mark.parametrize("latent, regularizer", [("sphere", "mvl"), ("sphere", "gan"), ("euclidean", "mvl"),
                                                 ("euclidean", "gan")])
def test_a_tiny_wae_run_lowers_its_reconstruction_and_the_divergence_term_acts(images, latent, regularizer):
    """64 steps (batch 64, 1024 images, 4 epochs) of each WAE: the reconstruction cross-entropy of the last epoch
    is below the first epoch's by more than 20 nats per image (measured: first-epoch averages 310–330, last
    205–207), and the divergence term moves the encoder: with λ ≈ 0 the codes end elsewhere (max difference
    > 1e-3)."""
    def run(lam):
        torch.manual_seed(0)
        model, aux = W.build_wae(latent, 8, regularizer, hidden=64)
        t = W.WAETrainer(model, aux, regularizer, images, steps=64, batch_size=64, lam=lam,
                         generator=torch.Generator().manual_seed(1))
        while not t.done:
            t.run_epoch()
        return t, model

    t, model = run(10.0)
    rec = t.hist["train_reconstruction"]
    print(latent, regularizer, [round(r, 1) for r in rec], [round(a, 3) for a in t.hist["train_aux_loss"]])
    assert len(rec) == 4 and rec[-1] < rec[0] - 20
    assert all(math.isfinite(v) for v in t.hist["train_aux_loss"])
    _, free = run(1e-12)
    x = images.subset(64).tensor(torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model.encode(x) - free.encode(x)).abs().max().item() > 1e-3


def test_a_wae_run_split_in_two_continues_bit_for_bit(images):
    def trainer():
        torch.manual_seed(0)
        model, aux = W.build_wae("sphere", 4, "mvl", hidden=32)
        return W.WAETrainer(model, aux, "mvl", images.subset(256), steps=16, batch_size=64,
                            generator=torch.Generator().manual_seed(1))

    a = trainer()
    while not a.done:
        a.run_epoch()
    b = trainer()
    b.run_epoch()
    state = b.state_dict()
    torch.manual_seed(123)  # disturb the global RNG: the state must restore it
    c = trainer()
    c.load_state_dict(state)
    while not c.done:
        c.run_epoch()
    wa, wc = a.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a.hist["train_aux_loss"] == c.hist["train_aux_loss"]
    d = trainer()  # a different data order gives other weights: the check above can fail
    d.generator.manual_seed(7)
    while not d.done:
        d.run_epoch()
    assert not all(torch.equal(wa[k], d.model.state_dict()[k]) for k in wa)


def test_decoded_prior_samples_are_binary_images():
    model, _ = W.build_wae("sphere", 8, "mvl", hidden=16)
    x = model.sample(10, torch.Generator().manual_seed(0))
    assert x.shape == (10, 784) and set(x.unique().tolist()) <= {0.0, 1.0}
    p = model.sample(10, torch.Generator().manual_seed(0), binarize=False)
    assert ((p > 0) & (p < 1)).all()


# ---- bad inputs ----

def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="latent space"):
        W.WAE("hyperbolic", 8)
    with pytest.raises(ValueError, match="latent dimension"):
        W.LatentSpace("sphere", 0)
    with pytest.raises(ValueError, match="regularizer"):
        W.build_wae("sphere", 8, "mmd")
    model, aux = W.build_wae("sphere", 8, "mvl", hidden=16)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode(torch.rand(4, 784) * 255)
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.rand(4, 28))
    with pytest.raises(ValueError, match="unit sphere"):
        W.kl_surrogate(aux, torch.ones(4, 9), model.space)
    with pytest.raises(ValueError, match=r"\[batch, 9\]"):
        W.energy_loss(aux, torch.ones(4, 8) / math.sqrt(8), model.space)
    with pytest.raises(ValueError, match="lam"):
        W.WAETrainer(model, aux, "mvl", torch.rand(8, 784), lam=0.0)
    with pytest.raises(ValueError, match="eps"):
        W.energy_loss(aux, model.space.sample_prior(4), model.space, eps=-1e-3)
    with pytest.raises(ValueError, match="prior samples"):
        W.discriminator_loss(W.discriminator(model.space, 8), model.space.sample_prior(4), torch.ones(4, 3))


# ---- the recipes (python -m mvl.train ch10-wae-...) ----

def test_a_tiny_wae_recipe_trains_resumes_bit_for_bit_and_reports_fid(tmp_path):
    """A WAE-MVL recipe of 24 steps (3 epochs of 512 images), run straight through and in two sittings (1 epoch,
    then --resume): the same weights and the same FID (600 decoded prior samples against 600 test images
    through the committed classifier ch10-lenet). An untrained decoder's samples are far from digits, so
    the FID is large (> 100; FID between two sets of real test digits of this size is a few units)."""
    from mvl import train as T
    from mvl.ae.recipes import get_recipe

    recipe = get_recipe("ch10-wae-mvl-sphere").with_changes(name="tiny-wae", steps=24, batch_size=64, hidden=32,
                                                             n_train=512, n_valid=128, eval_images=600)
    assert recipe.epochs == 3
    data = (mnist("train", "dynamic").subset(512), mnist("valid", "static").subset(128).tensor(),
            mnist("test", "static").subset(600).tensor())
    kw = dict(data=data, progress=False, device="cpu")
    one = T.train_recipe(recipe, cache=tmp_path / "a", out=tmp_path / "a_out", **kw)
    assert T.train_recipe(recipe, cache=tmp_path / "b", out=tmp_path / "b_out", stop_after_epochs=1, **kw) is None
    two = T.train_recipe(recipe, cache=tmp_path / "b", out=tmp_path / "b_out", resume=True, **kw)
    assert one["epochs"] == two["epochs"] == 3 and one["finished"] and two["finished"]
    wa = torch.load(tmp_path / "a_out/tiny-wae.pt", weights_only=True)
    wb = torch.load(tmp_path / "b_out/tiny-wae.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert one["metrics"]["fid"] == two["metrics"]["fid"] > 100
    model, record = T.load_trained(recipe, folder=tmp_path / "a_out")
    assert record["metrics"] == one["metrics"] and model.space.kind == "sphere"
    with pytest.raises(ValueError, match="regularizer"):
        recipe.with_changes(regularizer="mmd")


def test_great_circle_is_the_constant_speed_geodesic():
    """Endpoints are reached, every point has unit norm, equal steps in t are equal angles (θ/k each), the
    midpoint of two orthogonal axes is their normalized sum; the chordal (linear) path would fail the norm and
    the equal-angle checks. Bad inputs raise."""
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(9, generator=g, dtype=torch.float64), torch.randn(9, generator=g, dtype=torch.float64)
    z0, z1 = z0 / z0.norm(), z1 / z1.norm()
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    path = W.great_circle(z0, z1, t)
    assert path.shape == (11, 9)
    assert torch.allclose(path[0], z0) and torch.allclose(path[-1], z1)
    assert torch.allclose(path.norm(dim=1), torch.ones(11, dtype=torch.float64))
    steps = torch.arccos((path[1:] * path[:-1]).sum(1).clamp(-1, 1))
    assert torch.allclose(steps, torch.arccos(z0 @ z1) / 10 * torch.ones(10, dtype=torch.float64), atol=1e-10)
    e1, e2 = torch.eye(3, dtype=torch.float64)[:2]
    mid = W.great_circle(e1, e2, torch.tensor([0.5]))[0]
    assert torch.allclose(mid, (e1 + e2) / math.sqrt(2))
    chord = (1 - t[:, None]) * z0 + t[:, None] * z1
    assert not torch.allclose(chord.norm(dim=1), torch.ones(11, dtype=torch.float64), atol=1e-3)
    with pytest.raises(ValueError, match="antipodal"):
        W.great_circle(e1, -e1, t)
    with pytest.raises(ValueError, match="unit norm"):
        W.great_circle(2 * e1, e2, t)
    with pytest.raises(ValueError, match="vector"):
        W.great_circle(e1[None], e2, t)
