"""The training loop: one network per iteration, even with spectral normalization in training mode."""

import torch

from mvl.data import banana
from mvl.energies import ScoreNetEnergy
from mvl.training import train_energy


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
