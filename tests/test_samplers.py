import pytest
import torch

from mvl.energies import QuadraticEnergy
from mvl.samplers import (
    blob_score, imq_kernel, langevin_chain, langevin_step, median_bandwidth, probability_flow_step, rbf_kernel, svgd_step,
)


def test_langevin_step_returns_state_and_noise():
    torch.manual_seed(0)
    energy = QuadraticEnergy(torch.eye(2))
    x = torch.randn(10, 2)
    x_new, z = langevin_step(energy, x, 0.01, beta=0.5)
    assert torch.allclose(x_new, x - 0.01 * 0.5 * x + (2 * 0.01) ** 0.5 * z, atol=1e-6)
    with pytest.raises(ValueError, match="eps"):
        langevin_step(energy, x, -0.1)
    with pytest.raises(ValueError, match="beta"):
        langevin_step(energy, x, 0.1, beta=0)


def test_langevin_chain_samples_gaussian_target():
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
    mean = torch.tensor([1.0, -1.0], dtype=torch.float64)
    energy = QuadraticEnergy(torch.linalg.inv(cov), mean)
    x = langevin_chain(energy, torch.zeros(10_000, 2, dtype=torch.float64), eps=0.02, n_steps=700)
    assert torch.allclose(x.mean(0), mean, atol=0.05)
    # the unadjusted chain's covariance is biased by O(eps); 0.02 keeps it within about 2 percent
    assert torch.allclose(torch.cov(x.T), cov, atol=0.08)


def test_langevin_chain_beta_tempers_target():
    torch.manual_seed(1)
    energy = QuadraticEnergy(torch.eye(1, dtype=torch.float64))
    x = langevin_chain(energy, torch.zeros(20_000, 1, dtype=torch.float64), eps=0.01, n_steps=1500, beta=0.5)
    assert abs(x.var().item() - 2.0) < 0.1  # q^{1/2} of N(0, 1) is N(0, 2)


def test_langevin_chain_reports_divergence():
    energy = QuadraticEnergy(torch.eye(1) * 1e4)
    with pytest.raises(FloatingPointError, match="diverged"):
        langevin_chain(energy, torch.ones(5, 1), eps=1.0, n_steps=200)


def test_rbf_kernel_gradient():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64)
    k, dk = rbf_kernel(x, y, bandwidth=1.3)
    (auto,) = torch.autograd.grad(k[2].sum(), x)
    assert torch.allclose(dk[2].sum(0), auto[2])
    assert median_bandwidth(torch.randn(50, 2)) > 0


def test_imq_kernel_value_and_gradient():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64)
    k, dk = imq_kernel(x, y)  # Gorham & Mackey: (1 + ‖x − y‖²)^(−1/2)
    r2 = ((x[1] - y[3]) ** 2).sum()
    assert torch.allclose(k[1, 3], (1 + r2) ** -0.5, atol=1e-14)
    k2, _ = imq_kernel(x, y, bandwidth=2.0, beta=-0.3)
    assert torch.allclose(k2[1, 3], (1 + r2 / 2.0) ** -0.3, atol=1e-14)
    assert torch.allclose(imq_kernel(x, x)[0].diagonal(), torch.ones(4, dtype=torch.float64))
    for kw in ({}, {"bandwidth": 0.7, "beta": -0.8}, {"bandwidth": None}):
        k, dk = imq_kernel(x, y, **kw)
        (auto,) = torch.autograd.grad(k[2].sum(), x, retain_graph=True)
        assert torch.allclose(dk[2].sum(0), auto[2], atol=1e-12), kw
        assert torch.allclose(dk[0, 1], torch.autograd.grad(k[0, 1], x)[0][0], atol=1e-12)
    with pytest.raises(ValueError, match="beta"):
        imq_kernel(x, y, beta=0.5)
    with pytest.raises(ValueError, match="bandwidth"):
        imq_kernel(x, y, bandwidth=-1.0)


def test_svgd_moves_particles_to_gaussian():
    torch.manual_seed(0)
    energy = QuadraticEnergy(torch.eye(2) / 0.5**2, torch.tensor([2.0, -1.0]))  # N((2,-1), 0.25 I)
    x = torch.randn(100, 2)
    for _ in range(600):
        x = svgd_step(energy, x, 0.1)
    assert torch.allclose(x.mean(0), torch.tensor([2.0, -1.0]), atol=0.05)
    # the spread comes from the repulsive term: without it all particles would collapse onto the mode
    assert (x.std(0) - 0.5).abs().max() < 0.05


def test_probability_flow_follows_the_gaussian_ode():
    # q = N(0, I), particles from N((2, -1), 4 I): the exact flow keeps the cloud Gaussian, with the mean
    # shrinking by (1 - eps) per Euler step and each variance following v' = v (1 - eps + eps / v)^2
    torch.manual_seed(0)
    energy = QuadraticEnergy(torch.eye(2, dtype=torch.float64))
    x = torch.tensor([2.0, -1.0], dtype=torch.float64) + 2.0 * torch.randn(400, 2, dtype=torch.float64)
    mean, var, eps = x.mean(0), x.var(0), 0.02
    y = x.clone()
    for _ in range(50):  # t = 1
        y = probability_flow_step(energy, y, eps)
        mean, var = (1 - eps) * mean, var * (1 - eps + eps / var) ** 2
    # the blob score sums to zero over the particles, so the mean follows the drift alone, to rounding
    assert torch.allclose(y.mean(0), mean, atol=1e-12)
    # measured: 2.2 % below the Gaussian recursion (3 seeds, spread 0.1 %): the blob's smoothing and
    # finite-n bias. 4 % fails a sign error (collapse, ratio 0.2) or a missing entropy term (ratio ~0.4)
    assert ((y.var(0) / var) - 1).abs().max() < 0.04
    exact = 1 + (x.var(0) - 1) * torch.exp(torch.tensor(-2.0, dtype=torch.float64))  # continuous time
    assert ((y.var(0) / exact) - 1).abs().max() < 0.05
    assert torch.equal(probability_flow_step(energy, x, eps), probability_flow_step(energy, x, eps))  # no noise
    with pytest.raises(ValueError, match="bandwidth"):
        blob_score(x, bandwidth=0.0)
    with pytest.raises(ValueError, match="shape"):
        blob_score(x[0])
    with pytest.raises(ValueError, match="eps"):
        probability_flow_step(energy, x, -1.0)
