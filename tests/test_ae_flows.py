"""The inverse autoregressive flow of the adversarial-CD adversary (mvl.ae.flows; seed 003 Algorithm 2; chapter 8):
autoregressive masks, invertibility, log-determinants against the autograd Jacobian, normalization, and the
adversary's objective."""

import math

import pytest
import torch

from mvl.ae.flows import IAF, MADE, IAFLayer

torch.set_num_threads(1)


def perturbed_flow(seed=0, dim=4, n_layers=4, hidden=(16, 16), scale=0.5):
    """A flow far from the identity: all weights re-drawn at ``scale``, so every check has something to see."""
    torch.manual_seed(seed)
    flow = IAF(dim, n_layers, hidden).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, scale)
    return flow


def test_made_outputs_depend_only_on_earlier_inputs():
    torch.manual_seed(0)
    made = MADE(5, (12, 12), n_outputs=2).double()
    with torch.no_grad():
        for p in made.parameters():
            p.normal_()
    z = torch.randn(5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v), z)  # [2, 5, 5]
    upper = torch.triu(torch.ones(5, 5, dtype=torch.bool))  # output i on input j >= i must be zero
    assert (jac[:, upper] == 0).all()
    assert (jac[:, ~upper].abs() > 0).float().mean() > 0.9  # and the allowed connections are used
    assert (MADE(1, (4,))(torch.randn(3, 1)).shape == (3, 2, 1))  # d = 1: outputs are constants


@pytest.mark.parametrize("hidden", [(16, 16), ()])
def test_iaf_is_invertible(hidden):
    flow = perturbed_flow(1, dim=5, n_layers=3, hidden=hidden)
    eps = torch.randn(20, 5, dtype=torch.float64)
    z, _ = flow.forward_and_log_det(eps)
    assert (z - eps).abs().max() > 0.1  # not the identity
    assert torch.allclose(flow.inverse(z), eps, atol=1e-10)
    layer = flow.layers[0]
    assert torch.allclose(layer.inverse(layer(eps)[0]), eps, atol=1e-10)


@pytest.mark.parametrize("n_layers", [1, 4])
def test_iaf_log_det_matches_the_autograd_jacobian(n_layers):
    """log |det ∂z/∂ε| from the flow against slogdet of the full autograd Jacobian, at 5 points (float64)."""
    flow = perturbed_flow(2, dim=4, n_layers=n_layers)
    for eps in torch.randn(5, 4, dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda e: flow.forward_and_log_det(e)[0], eps)
        sign, logabs = torch.linalg.slogdet(jac)
        _, log_det = flow.forward_and_log_det(eps)
        assert abs(log_det.item() - logabs.item()) < 1e-10 and sign != 0
    layer = IAFLayer(3, (8,)).double()
    v = torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda e: layer(e)[0], v)
    assert torch.allclose(jac.triu(1), torch.zeros_like(jac))  # triangular: the cheap determinant is right
    assert abs(torch.linalg.slogdet(jac)[1].item() - layer(v)[1].item()) < 1e-12


def test_iaf_sample_log_prob_equals_log_prob_and_integrates_to_one():
    """rsample_and_log_prob's density equals log_prob (through the inverse) at the samples, and exp(log_prob)
    sums to 1 on a fine 2-D grid (the density is smooth and negligible at the edges; 1e-3 margin, while a
    missing base-scale term would change the mass by a factor exp(Σ log s₀))."""
    flow = perturbed_flow(3, dim=2, n_layers=4, hidden=(16,), scale=0.3)
    torch.manual_seed(0)
    z, log_q = flow.rsample_and_log_prob(50)
    assert z.shape == (50, 2) and log_q.shape == (50,)
    assert torch.allclose(flow.log_prob(z), log_q, atol=1e-9)
    samples = flow.sample(20_000)
    lo, hi = samples.min(0).values - 3, samples.max(0).values + 3
    xs = [torch.linspace(lo[i].item(), hi[i].item(), 400, dtype=torch.float64) for i in range(2)]
    grid = torch.stack(torch.meshgrid(*xs, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum().item() * (xs[0][1] - xs[0][0]).item() * (xs[1][1] - xs[1][0]).item()
    print(f"∫q = {mass:.5f}; Σ log s₀ = {flow.base_log_scale.sum().item():.3f}")
    assert abs(mass - 1) < 1e-3
    assert abs(flow.base_log_scale.sum().item()) > 0.01


def test_iaf_adversary_objective_fits_a_correlated_gaussian():
    """The adversary maximizes E_q[−E(z)] + H[q] (seed 003 eq. 9); for E = −log N(m, Σ) (normalized, so
    log Z = 0) the gap to 0 is KL(q ‖ p). 400 Adam steps take the KL from > 1 nat to < 0.05 (Monte Carlo
    estimate on 20 000 fresh samples; its SE is printed and below 0.01)."""
    torch.manual_seed(4)
    mean = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]]) * 0.5
    target = torch.distributions.MultivariateNormal(mean, cov)
    flow = IAF(2, n_layers=4, hidden=(32,))
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)

    def kl(n=20_000):
        with torch.no_grad():
            z, log_q = flow.rsample_and_log_prob(n)
            gap = log_q - target.log_prob(z)
        return gap.mean().item(), gap.std().item() / math.sqrt(n)

    before, _ = kl()
    for _ in range(400):
        z, log_q = flow.rsample_and_log_prob(256)
        loss = (log_q - target.log_prob(z)).mean()  # −(E_q[−E] + H[q])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, se = kl()
    print(f"KL(q‖p) before {before:.3f}, after {after:.4f} ± {se:.4f}")
    assert before > 1 and after < 0.05 and se < 0.01


def test_iaf_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        IAF(0)
    with pytest.raises(ValueError, match="n_layers"):
        IAF(2, n_layers=0)
    with pytest.raises(ValueError, match="hidden"):
        MADE(3, (0,))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        IAF(2).log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="positive integer"):
        IAF(2).rsample_and_log_prob(0)
