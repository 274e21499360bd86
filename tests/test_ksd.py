"""Kernelized Stein discrepancy and the MVL objectives of SVGD and SPOS (chapter 5)."""

import math
from functools import partial

import pytest
import torch

from mvl.data import banana
from mvl.energies import QuadraticEnergy, ScoreNetEnergy
from mvl.objectives import ksd, ksd_mvl, sm_exact, sm_mvl, spos_mvl, spos_mvl_released
from mvl.samplers import imq_kernel, rbf_kernel, spos_step, svgd_step

H = 1.5
KERNEL = partial(rbf_kernel, bandwidth=H)


def zero_energy(x):
    return 0.0 * x.sum(-1)


def test_ksd_two_points_by_hand():
    # E(x) = ½‖x‖², so s(x) = −x; k(x, y) = exp(−‖x − y‖²/h)
    energy = QuadraticEnergy(torch.eye(2, dtype=torch.float64))
    x = torch.tensor([[0.5, -1.0], [1.0, 0.5]], dtype=torch.float64)
    a, b = x[0], x[1]
    r2 = ((a - b) ** 2).sum()
    k = torch.exp(-r2 / H)
    grad_a = -2 / H * (a - b) * k  # ∇ₐk(a, b)
    grad_b = 2 / H * (a - b) * k  # ∇_b k(a, b)
    trace = k * (2 * 2 / H - 4 * r2 / H**2)
    u_ab = (-a) @ (-b) * k + (-a) @ grad_b + grad_a @ (-b) + trace
    per_sample = ksd(energy, x, KERNEL)
    assert per_sample.shape == (2,)
    assert torch.allclose(per_sample.mean(), u_ab, atol=1e-12)  # U-statistic: (u_ab + u_ba)/2 = u_ab
    u_aa = (a @ a) + 2 * 2 / H  # k(a, a) = 1, ∇k(a, a) = 0, trace = 2d/h
    u_bb = (b @ b) + 2 * 2 / H
    v_stat = ksd(energy, x, KERNEL, u_statistic=False).mean()
    assert torch.allclose(v_stat, (2 * u_ab + u_aa + u_bb) / 4, atol=1e-12)


def test_ksd_vanishes_for_the_right_model_only():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 2, generator=gen, dtype=torch.float64)
    right = ksd(QuadraticEnergy(torch.eye(2, dtype=torch.float64)), x).detach()
    wrong = ksd(QuadraticEnergy(4 * torch.eye(2, dtype=torch.float64)), x).detach()
    # the U-statistic is unbiased for KSD(p, q) = 0 when q = p; rows are dependent, so use a loose bound
    assert abs(right.mean().item()) < 4 * right.std().item() / math.sqrt(len(right)) * 2
    assert wrong.mean().item() > 20 * abs(right.mean().item())


def test_ksd_with_the_imq_kernel_is_zero_for_the_model_and_positive_for_a_shift():
    # samples of N(0, I) in d = 3; the model N(0, I) itself and the model shifted by 0.5 in one coordinate
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    right = QuadraticEnergy(torch.eye(3, dtype=torch.float64))
    shifted = QuadraticEnergy(torch.eye(3, dtype=torch.float64), torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))
    values = {}
    for name, energy in (("right", right), ("shifted", shifted)):
        values[name] = [ksd(energy, torch.randn(200, 3, generator=torch.Generator().manual_seed(s),
                                                dtype=torch.float64), imq_kernel).mean().item() for s in range(8)]
    right_mean = sum(values["right"]) / 8
    right_se = (sum((v - right_mean) ** 2 for v in values["right"]) / 7 / 8) ** 0.5
    # unbiased for KSD(p, p) = 0: within 3 s.e. over 8 independent batches
    assert abs(right_mean) < 3 * right_se, (right_mean, right_se)
    # the shift is seen on every batch, far above the spread of the null values
    assert min(values["shifted"]) > right_mean + 10 * right_se, (values["shifted"], right_se)
    # the same per-sample interface as with the RBF kernel, so ksd_mvl accepts the IMQ kernel too
    half = 0.5 * (ksd(right, x, imq_kernel).mean() - ksd(zero_energy, x, imq_kernel).mean())
    assert abs(ksd_mvl(right, x, 1e-5, imq_kernel).mean().item() - half.item()) < 1e-4


def flat_grad(energy, loss):
    energy.zero_grad()
    loss.mean().backward()
    return torch.cat([p.grad.flatten() for p in energy.parameters()])


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    return ScoreNetEnergy(2, hidden=(32, 32)).double(), banana(150, seed=1, dtype=torch.float64)


@pytest.mark.parametrize("u_statistic", [True, False])
def test_ksd_mvl_gradient_is_half_the_ksd_gradient(model_and_data, u_statistic):
    energy, x = model_and_data
    g_ksd = flat_grad(energy, ksd(energy, x, KERNEL, u_statistic=u_statistic))
    g_other = flat_grad(energy, ksd(energy, x, KERNEL, u_statistic=not u_statistic))
    g_mvl = flat_grad(energy, ksd_mvl(energy, x, 1e-4, KERNEL, u_statistic=u_statistic))
    cos = torch.nn.functional.cosine_similarity
    # the matching statistic: agreement up to O(ε)
    assert cos(g_mvl, g_ksd, dim=0) > 0.99999
    assert abs((g_mvl.norm() / g_ksd.norm()).item() - 0.5) < 1e-3
    # the other one differs by the n diagonal terms, of relative order 1/n (here n = 150)
    assert 0.99 < cos(g_mvl, g_other, dim=0) < 0.99999
    assert abs((g_mvl.norm() / g_other.norm()).item() - 0.5) < 0.05


@pytest.mark.parametrize("u_statistic", [True, False])
def test_ksd_mvl_value_is_half_ksd_minus_a_constant(model_and_data, u_statistic):
    energy, x = model_and_data
    other = QuadraticEnergy(torch.tensor([[0.3, 0.1], [0.1, 0.6]], dtype=torch.float64))
    constant = ksd(zero_energy, x, KERNEL, u_statistic=u_statistic).mean()  # the trace term alone

    def closed(e):
        return ksd(e, x, KERNEL, u_statistic=u_statistic).mean()

    def mvl(e):
        return ksd_mvl(e, x, 1e-5, KERNEL, u_statistic=u_statistic).mean()

    for e in (energy, other):
        half = 0.5 * (closed(e) - constant)
        assert abs((mvl(e) - half).item()) < 1e-4 * max(1.0, abs(half.item()))
    # so differences between two energies agree without knowing the constant
    d_mvl, d_ksd = mvl(energy) - mvl(other), closed(energy) - closed(other)
    assert abs((d_mvl - 0.5 * d_ksd).item()) < 1e-4 * abs(d_ksd.item())


def test_spos_mvl_interpolates_score_matching_and_ksd(model_and_data):
    energy, x = model_and_data
    alpha = 2.0
    constant = ksd(zero_energy, x, KERNEL, u_statistic=False).mean()
    target = alpha * sm_exact(energy, x).mean() + 0.5 * (ksd(energy, x, KERNEL, u_statistic=False).mean() - constant)
    torch.manual_seed(3)
    draws = torch.stack([spos_mvl(energy, x, 1e-4, alpha, KERNEL).mean().detach() for _ in range(25)])
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - target.item()) < 4 * se + 1e-3


def test_spos_step_reduces_to_svgd_and_validates():
    energy = QuadraticEnergy(torch.eye(2, dtype=torch.float64))
    x = torch.randn(20, 2, dtype=torch.float64)
    new, _ = spos_step(energy, x, 0.1, 0.0, KERNEL)
    assert torch.allclose(new, svgd_step(energy, x, 0.1, KERNEL))
    with pytest.raises(ValueError, match="alpha"):
        spos_step(energy, x, 0.1, -1.0)
    with pytest.raises(ValueError, match="two points"):
        ksd(energy, x[:1])
    with pytest.raises(ValueError, match="eps"):
        ksd_mvl(energy, x, -1.0)
    with pytest.raises(ValueError, match="two points"):
        ksd_mvl(energy, x[:1], 0.1)


def test_released_spos_estimate_reduces_to_mvl_and_ksd_mvl_at_the_ends():
    torch.manual_seed(0)
    energy = ScoreNetEnergy(2, hidden=(16,)).double()
    x = banana(64, seed=1, dtype=torch.float64)
    torch.manual_seed(3)
    released = spos_mvl_released(energy, x, 1e-3, w=1.0)
    torch.manual_seed(3)
    assert torch.allclose(released, sm_mvl(energy, x, 1e-3), rtol=1e-10, atol=1e-10)
    torch.manual_seed(3)
    assert torch.allclose(spos_mvl_released(energy, x, 1e-3, w=0.0), ksd_mvl(energy, x, 1e-3, u_statistic=False),
                          rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="weight w"):
        spos_mvl_released(energy, x, 1e-3, w=1.5)
