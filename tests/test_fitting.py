"""The training helpers: one network per iteration with spectral normalization (chapter 4); timing a step (chapter 3)."""

import pytest
import torch

from mvl.data import banana
from mvl.energies import MLPEnergy, ScoreNetEnergy
from mvl.objectives import sm_exact, sm_sliced
from mvl.fitting import time_step, train_energy


def test_difference_quotients_see_one_network_per_iteration():
    # spectral normalization runs a power-iteration step at every forward call in training mode; a
    # difference E(x) - E(x) must nevertheless be exactly zero inside one training iteration
    torch.manual_seed(0)
    energy = ScoreNetEnergy(2, hidden=(16, 16), spectral_norm=True).double()
    x = banana(64, seed=0, dtype=torch.float64)
    energy.train()
    assert not torch.equal(energy(x), energy(x)), "power iteration should change the network between calls"
    hist = train_energy(energy, x, lambda e, v: (e(v) - e(v)) / 1e-12, n_iter=3, batch_size=32, progress=False)
    assert hist["loss"] == [0.0, 0.0, 0.0]


def test_time_step_measures_objective_and_backward():
    torch.manual_seed(0)
    energy = MLPEnergy(48, hidden=(16,))
    x = torch.randn(8, 48)
    t_exact = time_step(energy, sm_exact, x, repeats=3)
    t_sliced = time_step(energy, sm_sliced, x, repeats=3)
    assert 0 < t_sliced < t_exact  # 48 backward passes against one
    assert all(p.grad is None for p in energy.parameters())  # leaves no gradients behind
    with pytest.raises(ValueError, match="repeats"):
        time_step(energy, sm_exact, x, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_step(energy, sm_exact, x, warmup=-1)


def test_param_grad_flattens_and_fills_missing_gradients():
    import torch

    from mvl.fitting import param_grad

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    unused = torch.nn.Linear(1, 1)
    model.add_module("unused", unused)
    x = torch.randn(5, 2)
    g = param_grad(model, model[1](model[0](x)).squeeze(-1) ** 2)
    assert g.shape == (sum(p.numel() for p in model.parameters()),)
    assert torch.all(g[-2:] == 0) and g[:-2].abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
