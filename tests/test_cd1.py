"""cd1_surrogate: its gradient is the score-matching gradient; its value is not the score-matching loss."""

import math

import pytest
import torch

from mvl.data import banana
from mvl.energies import QuadraticEnergy, ScoreNetEnergy
from mvl.energies import energy_and_grad
from mvl.objectives import cd1_surrogate, sm_exact

A = torch.tensor([[1.5, 0.4], [0.4, 0.8]], dtype=torch.float64)


def flat_grad(energy, loss):
    energy.zero_grad()
    loss.mean().backward()
    return torch.cat([p.grad.flatten() for p in energy.parameters()])


def test_gradient_matches_exact_score_matching():
    torch.manual_seed(0)
    energy = ScoreNetEnergy(2, hidden=(32, 32)).double()
    x = banana(10_000, seed=0, dtype=torch.float64)
    exact = flat_grad(energy, sm_exact(energy, x))
    for eps in (1e-2, 1e-4):
        cd1 = flat_grad(energy, cd1_surrogate(energy, x, eps))
        assert torch.nn.functional.cosine_similarity(exact, cd1, dim=0) > 0.99
        assert 0.95 < (cd1.norm() / exact.norm()).item() < 1.05


def test_value_is_not_the_score_matching_loss():
    # mean of the value → E[‖∇E‖² − ΔE] = J + ½E‖∇E‖², not J
    torch.manual_seed(1)
    energy = QuadraticEnergy(A)
    x = torch.randn(100_000, 2, dtype=torch.float64)
    values = cd1_surrogate(energy, x, 1e-4).detach()
    _, g = energy_and_grad(energy, x)
    target = (sm_exact(energy, x) + 0.5 * (g**2).sum(-1)).mean().item()
    se = values.std().item() / math.sqrt(len(values))
    assert abs(values.mean().item() - target) < 4 * se
    assert values.mean().item() - sm_exact(energy, x).mean().item() > 50 * se


def test_control_variate_shrinks_gradient_noise():
    x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def gradient_spread(cv):
        energy = QuadraticEnergy(A, trainable=True)
        grads = []
        for seed in range(10):
            torch.manual_seed(seed)
            grads.append(flat_grad(energy, cd1_surrogate(energy, x, 1e-4, control_variate=cv)))
        return torch.stack(grads).var(0).sum().item()

    assert gradient_spread(False) > 100 * gradient_spread(True)


def test_bad_step_size_raises():
    energy = QuadraticEnergy(A)
    with pytest.raises(ValueError, match="eps"):
        cd1_surrogate(energy, torch.zeros(3, 2, dtype=torch.float64), 0.0)
