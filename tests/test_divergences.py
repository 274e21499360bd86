"""KL divergences of samples (chapter 2) against Gaussian closed forms."""

import math

import pytest
import torch

from mvl.data import density_grid
from mvl.divergences import kde_grid, kl_grid, scott_bandwidth

M1 = torch.tensor([0.5, -0.3], dtype=torch.float64)
S1 = torch.tensor([[1.0, 0.4], [0.4, 0.7]], dtype=torch.float64)
M2 = torch.tensor([-0.2, 0.4], dtype=torch.float64)
S2 = torch.tensor([[1.5, -0.2], [-0.2, 1.2]], dtype=torch.float64)


def gaussian_kl(m1, s1, m2, s2):
    inv = torch.linalg.inv(s2)
    d = m2 - m1
    return 0.5 * (torch.trace(inv @ s1) + d @ inv @ d - 2 + torch.logdet(s2) - torch.logdet(s1)).item()


def gaussian_log_density(m, s):
    inv = torch.linalg.inv(s)
    return lambda x: -0.5 * (((x - m) @ inv) * (x - m)).sum(-1)  # unnormalized on purpose


def sample(n, seed):
    g = torch.Generator().manual_seed(seed)
    return M1 + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(S1).T


def test_kde_grid_integrates_to_one_and_has_the_smoothed_covariance():
    x = sample(50_000, seed=0)
    h = 0.2
    xs, ys, dens = kde_grid(x, (-5, 5), (-5, 5), n=201, bandwidth=h)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert abs((dens.sum() * cell).item() - 1) < 1e-9
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    w = dens * cell
    mean = torch.stack([(w * gx).sum(), (w * gy).sum()])
    var_x = (w * (gx - mean[0]) ** 2).sum()
    assert torch.allclose(mean, x.mean(0), atol=0.01)
    assert abs(var_x.item() - (x[:, 0].var().item() + h**2)) < 0.02  # the KDE adds h² to the variance


def test_kl_grid_matches_gaussian_closed_form():
    x = sample(50_000, seed=1)
    h = 0.15
    est = kl_grid(x, gaussian_log_density(M2, S2), (-6, 6), (-6, 6), n=241, bandwidth=h)
    # the estimate is the KL of the smoothed density N(M1, S1 + h² I)
    smoothed = gaussian_kl(M1, S1 + h**2 * torch.eye(2, dtype=torch.float64), M2, S2)
    assert abs(est - smoothed) < 0.02
    assert abs(est - gaussian_kl(M1, S1, M2, S2)) < 0.05
    # the grid density of q may be passed instead of its log density
    q_grid = density_grid(gaussian_log_density(M2, S2), (-6, 6), (-6, 6), 241, dtype=torch.float64)[2]
    assert abs(kl_grid(x, q_grid, (-6, 6), (-6, 6), n=241, bandwidth=h) - est) < 1e-12
    with pytest.raises(ValueError, match="shape"):
        kl_grid(x, q_grid, (-6, 6), (-6, 6), n=240, bandwidth=h)
    # and a sample of q itself gives (almost) zero
    y = M2 + torch.randn(50_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) @ torch.linalg.cholesky(S2).T
    assert 0 <= kl_grid(y, gaussian_log_density(M2, S2), (-6, 6), (-6, 6), n=241, bandwidth=h) < 0.02


def test_kde_grid_rejects_bad_input():
    x = sample(100, seed=3)
    with pytest.raises(ValueError, match="outside the grid"):
        kde_grid(x, (-0.5, 0.5), (-0.5, 0.5))
    with pytest.raises(ValueError, match="shape"):
        kde_grid(torch.randn(10, 3))
    with pytest.raises(ValueError, match="bandwidth"):
        kde_grid(x, (-5, 5), (-5, 5), bandwidth=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        kde_grid(torch.full((4, 2), math.nan))
    assert torch.allclose(scott_bandwidth(x), x.std(0) * 100 ** (-1 / 6))
