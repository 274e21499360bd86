import math

import pytest
import torch

from mvl.data import TOY_DATASETS, TOY_LOG_DENSITIES, banana, cosine, density_grid, toy


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_shapes_and_seeding(name):
    a = toy(name, 500, seed=1)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, toy(name, 500, seed=1))
    assert not torch.equal(a, toy(name, 500, seed=2))
    assert toy(name, 10, seed=0, dtype=torch.float64).dtype == torch.float64


def test_banana_moments():
    x = banana(200_000, seed=0, dtype=torch.float64)
    x1, x2 = x[:, 0], x[:, 1]
    assert abs(x1.mean()) < 0.03 and abs(x1.std() - 2.0) < 0.02
    # E[x2] = 0.2 (E[x1^2] - 4) = 0;  Var[x2] = 1 + 0.04 Var[x1^2] = 1 + 0.04 * 2 * 16 = 2.28
    assert abs(x2.mean()) < 0.02 and abs(x2.var() - 2.28) < 0.05
    resid = x2 - 0.2 * (x1**2 - 4)
    assert abs(resid.std() - 1.0) < 0.01


def test_cosine_moments():
    x = cosine(200_000, seed=0, dtype=torch.float64)
    assert x[:, 0].min() >= -4 and x[:, 0].max() <= 4
    assert abs(x[:, 0].var() - 64 / 12) < 0.05
    resid = x[:, 1] - 3 * torch.cos(2 * x[:, 0])
    assert abs(resid.mean()) < 0.01 and abs(resid.std() - 1.0) < 0.01


@pytest.mark.parametrize("name", sorted(TOY_LOG_DENSITIES))
def test_log_densities_normalize(name):
    xs, ys, dens = density_grid(TOY_LOG_DENSITIES[name], (-8, 8), (-8, 8), n=400, dtype=torch.float64)
    # density_grid normalizes numerically; the closed-form density must agree with it in total mass
    cell = (16 / 399) ** 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    raw = TOY_LOG_DENSITIES[name](torch.stack([gx, gy], -1)).exp()
    assert abs(raw.sum().item() * cell - 1.0) < 0.02
    assert abs(dens.sum().item() * cell - 1.0) < 1e-9


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown toy"):
        toy("moons", 10)
    with pytest.raises(ValueError, match="positive integer"):
        banana(0)
    with pytest.raises(ValueError, match="seed"):
        banana(5, seed=-3)
    with pytest.raises(ValueError, match="not finite anywhere"):
        density_grid(lambda x: torch.full((x.shape[0],), -math.inf))


def test_cosine_boundary_quadrature():
    from mvl.data import cosine_boundary

    x, normal, weight = cosine_boundary(201)
    assert x.shape == normal.shape == (402, 2) and weight.shape == (402,)
    assert weight.sum().item() == pytest.approx(0.25, abs=1e-9)  # the density (1/8 per unit x₁) on two edges
    assert torch.equal(x[:, 0].abs(), torch.full((402,), 4.0, dtype=torch.float64))
    assert torch.equal(normal[:, 0], torch.sign(x[:, 0])) and (normal[:, 1] == 0).all()
    # the edge mean of x₂ is 3 cos 8
    assert (weight * x[:, 1]).sum().item() / 0.25 == pytest.approx(3 * math.cos(8.0), abs=1e-9)
    with pytest.raises(ValueError, match="nodes"):
        cosine_boundary(2)
