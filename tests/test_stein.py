"""The KSD goodness-of-fit test (mvl.stein; chapter 5): the Stein kernel matrix, calibration, power."""

import math

import pytest
import torch

from mvl.energies import QuadraticEnergy, ScoreNetEnergy
from mvl.objectives import ksd
from mvl.samplers import imq_kernel, rbf_kernel
from mvl.stein import ksd_test, stein_kernel_matrix

STANDARD = QuadraticEnergy(torch.eye(2, dtype=torch.float64))


def gaussian(n, seed, shift=0.0):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 0] += shift
    return x


@pytest.mark.parametrize("kernel", [None, imq_kernel], ids=["rbf-median", "imq"])
def test_matrix_means_are_the_u_and_v_statistics_of_ksd(kernel):
    torch.manual_seed(0)
    energy = ScoreNetEnergy(2, hidden=(16, 16)).double()
    x = gaussian(80, 1)
    u = stein_kernel_matrix(energy, x, kernel)
    n = x.shape[0]
    assert u.shape == (n, n) and torch.allclose(u, u.T, atol=1e-12)  # the Stein kernel is symmetric
    u_stat = (u.sum() - u.diagonal().sum()) / (n * (n - 1))
    assert torch.allclose(u_stat, ksd(energy, x, kernel).mean().detach(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(u.mean(), ksd(energy, x, kernel, u_statistic=False).mean().detach(), rtol=1e-10, atol=1e-12)
    # the diagonal of the RBF Stein kernel is ‖∇E‖² + 2d/h (k(x, x) = 1, ∇k(x, x) = 0)
    if kernel is None:
        h = 1.3
        u_fixed = stein_kernel_matrix(STANDARD, x, lambda a, b: rbf_kernel(a, b, h))
        assert torch.allclose(u_fixed.diagonal(), (x**2).sum(1) + 4 / h, atol=1e-12)


@pytest.mark.parametrize("kernel", [None, imq_kernel], ids=["rbf-median", "imq"])
def test_calibrated_under_the_null(kernel):
    # data drawn from the model itself: H0 is true and must be rejected at the rate `level`
    level, reps = 0.1, 250
    rejections = sum(ksd_test(STANDARD, gaussian(50, 10_000 + s), kernel, level, n_boot=150, seed=s).reject
                     for s in range(reps))
    rate, se = rejections / reps, math.sqrt(level * (1 - level) / reps)
    print(f"rejection rate {rate:.3f} at level {level} (binomial s.e. {se:.3f}, "
          f"detects a miscalibration of {3 * se:.3f} or more)")
    assert abs(rate - level) < 3 * se, (rate, level, se)


def test_power_against_a_shifted_alternative():
    # the data are shifted by 0.5 (half a standard deviation) in one coordinate; the IMQ test sees it
    reps = 40
    rejections = sum(ksd_test(STANDARD, gaussian(100, 20_000 + s, shift=0.5), imq_kernel, 0.05, 300, seed=s).reject
                     for s in range(reps))
    assert rejections / reps > 0.8, rejections
    # and the p-value of a strong shift is the smallest one the bootstrap can give
    result = ksd_test(STANDARD, gaussian(200, 1, shift=1.5), None, 0.05, n_boot=199, seed=0)
    assert result.reject and result.p_value == pytest.approx(1 / 200)
    assert result.statistic == pytest.approx(200 * result.ksd_u)


def test_reproducible_and_validates():
    x = gaussian(50, 3)
    a, b = ksd_test(STANDARD, x, seed=7), ksd_test(STANDARD, x, seed=7)
    assert a == b
    with pytest.raises(ValueError, match="level"):
        ksd_test(STANDARD, x, level=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        ksd_test(STANDARD, x, n_boot=0)
    with pytest.raises(ValueError, match="two points"):
        stein_kernel_matrix(STANDARD, x[:1])
