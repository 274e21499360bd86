import pytest
import torch

from mvl.energies import MLPEnergy, QuadraticEnergy, ScoreNetEnergy, make_activation, mlp


@pytest.mark.parametrize("cls", [MLPEnergy, ScoreNetEnergy])
@pytest.mark.parametrize("spectral", [False, True])
def test_energy_shapes(cls, spectral):
    e = cls(3, hidden=(16, 16), spectral_norm=spectral)
    out = e(torch.randn(7, 3))
    assert out.shape == (7,)
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        e(torch.randn(7, 2))


def test_scorenet_is_x_dot_psi():
    e = ScoreNetEnergy(2, hidden=(8,))
    x = torch.randn(5, 2)
    assert torch.allclose(e(x), (x * e.psi(x)).sum(-1))
    assert torch.allclose(e(torch.zeros(1, 2)), torch.zeros(1))


def test_relu_rejected_with_reason():
    with pytest.raises(ValueError, match="Laplacian"):
        make_activation("relu")
    with pytest.raises(ValueError, match="unknown activation"):
        MLPEnergy(2, activation="nope")
    with pytest.raises(ValueError):
        mlp([2])


def test_spectral_norm_bounds_hidden_layers():
    torch.manual_seed(0)
    net = mlp([4, 50, 50, 1], spectral_norm=True)
    for _ in range(20):  # power iterations run on forward passes in training mode
        net(torch.randn(8, 4))
    hidden = [m for m in net if isinstance(m, torch.nn.Linear)][:-1]
    for layer in hidden:
        assert torch.linalg.matrix_norm(layer.weight, ord=2) < 1.05


def test_quadratic_energy_closed_form():
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    e = QuadraticEnergy(a, mean=torch.tensor([1.0, 0.0]))
    x = torch.tensor([[1.0, 1.0]])
    assert torch.allclose(e(x), torch.tensor([0.5]))
    with pytest.raises(ValueError):
        QuadraticEnergy(torch.ones(2, 3))
