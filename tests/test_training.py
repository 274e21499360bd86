"""The training helpers: timing a training step (chapter 3)."""

import pytest
import torch

from mvl.energies import MLPEnergy
from mvl.objectives import sm_exact, sm_sliced
from mvl.training import time_step


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
