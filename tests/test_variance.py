"""mvl.variance (Figure 1 of the paper) and the Θ(1/ε) variance of the estimators without control variate."""

import math
from functools import partial

import pytest
import torch

from mvl.energies import QuadraticEnergy
from mvl.objectives import cd1_surrogate, sm_denoising, sm_mvl, sm_sliced
from mvl.variance import (
    bound_floor,
    common_random_numbers,
    draws_per_point,
    gradient_draws,
    gradient_snr,
    gradient_variance,
    minimum_detectable_effect,
    paired_z_test,
    squared_bias_bound,
    z_test,
    two_sample_z_test,
    variance,
)

A = torch.tensor([[1.5, 0.4], [0.4, 0.8]], dtype=torch.float64)


def points(k, seed=0):
    return torch.randn(k, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_common_random_numbers_couple_mvl_and_sliced_exactly():
    # on a quadratic, with v = z: sliced SM − MVL = (ε/8) gᵀAg − √(ε/2) (Ag)ᵀz exactly (g = Ax)
    energy = QuadraticEnergy(A)
    x, eps = points(500), 0.05
    state = torch.random.get_rng_state()
    out = common_random_numbers(
        {
            "ssm": lambda v: sm_sliced(energy, v),
            "mvl": lambda v: sm_mvl(energy, v, eps),
            "agz": lambda v: (torch.randn_like(v) * (v @ A @ A)).sum(-1),
        },
        x,
        seed=7,
    )
    assert torch.equal(torch.random.get_rng_state(), state), "the global generator must be left untouched"
    g = x @ A
    expected = eps / 8 * ((g @ A) * g).sum(-1) - math.sqrt(eps / 2) * out["agz"]
    assert torch.allclose(out["ssm"] - out["mvl"], expected, atol=1e-10)


def test_squared_bias_bound_matches_its_expectation():
    # E[bound] = E_x[b(x)²] + E_x[Var_z]/M with b(x) = (ε/8) gᵀAg and Var_z = (ε/2)‖Ag‖² (see above)
    energy = QuadraticEnergy(A)
    pts, eps, m = points(400, seed=1), 0.1, 50
    d = draws_per_point({"ssm": lambda v: sm_sliced(energy, v), "mvl": lambda v: sm_mvl(energy, v, eps)}, pts, m, seed=3)
    diff = d["ssm"] - d["mvl"]
    assert diff.shape == (400, 50)
    g = pts @ A
    b = eps / 8 * ((g @ A) * g).sum(-1)
    floor = (eps / 2 * ((g @ A) ** 2).sum(-1)).mean() / m
    est, low, high = squared_bias_bound(diff)
    assert low < (b**2).mean() + floor < high
    assert abs(bound_floor(diff) - floor.item()) < 0.15 * floor.item()
    # same seed, same draws: a step-size sweep is coupled too
    again = draws_per_point({"ssm": lambda v: sm_sliced(energy, v)}, pts, m, seed=3)["ssm"]
    assert torch.equal(again, d["ssm"])


ESTIMATORS = [
    ("mvl", lambda e, x, eps, cv: sm_mvl(e, x, eps, control_variate=cv)),
    ("dsm", lambda e, x, eps, cv: sm_denoising(e, x, eps, control_variate=cv)),
    ("cd1", lambda e, x, eps, cv: cd1_surrogate(e, x, eps, control_variate=cv)),
]


@pytest.mark.parametrize("name, estimator", ESTIMATORS, ids=[n for n, _ in ESTIMATORS])
def test_variance_blows_up_without_control_variate_only(name, estimator):
    energy = QuadraticEnergy(A)
    pts = points(40, seed=2)
    var = {}
    for eps in (1e-2, 1e-4):
        for cv in (True, False):
            fn = partial(estimator, energy, eps=eps, cv=cv)
            var[eps, cv] = variance(draws_per_point({"v": fn}, pts, 200, seed=5)["v"])[0]
    # without the control variate: Θ(1/ε) (Θ(1/ε²) for DSM), so at least 10× per 100× smaller ε
    assert var[1e-4, False] > 10 * var[1e-2, False]
    # with it: O(1), the same within a factor 2
    assert 0.5 < var[1e-4, True] / var[1e-2, True] < 2
    assert var[1e-4, False] > 100 * var[1e-4, True]


def test_variance_interval_and_z_tests():
    gen = torch.Generator().manual_seed(0)
    null = torch.randn(100, 200, generator=gen, dtype=torch.float64)
    est, low, high = variance(null)
    sd = math.sqrt(2 / null.numel())  # standard deviation of the sample variance of N(0, 1) draws
    assert abs(est - 1) < 4 * sd and low < est < high
    assert 0.7 < (high - low) / (2 * 1.96 * sd) < 1.3
    z, p = paired_z_test(null)
    assert p > 5e-4 and abs(z) < 3.5  # a null sample: |z| beyond 3.5 has probability 5e-4
    shifted = null + 0.05
    assert paired_z_test(shifted)[1] < 1e-6
    assert two_sample_z_test(null[:50], shifted[50:])[1] < 1e-3
    assert two_sample_z_test(null[:50], null[50:])[1] > 0.01


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[K, M\]"):
        squared_bias_bound(torch.zeros(5))
    with pytest.raises(ValueError, match="n_draws"):
        draws_per_point({"a": lambda v: v[:, 0]}, points(3), 1)
    with pytest.raises(ValueError, match="returned shape"):
        common_random_numbers({"a": lambda v: v}, points(3), 0)
    with pytest.raises(ValueError, match="level"):
        squared_bias_bound(torch.zeros(3, 3), level=1.5)


class ScaledQuadratic(torch.nn.Module):
    """E(x) = ½ a ‖x‖² with one trainable parameter a."""

    def __init__(self, a=1.5):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * self.a * (x**2).sum(-1)


def test_gradient_variance_of_mvl_follows_two_norm_x_squared_over_eps():
    # d/da of the uncorrected one-step estimate is −√(2/ε) xᵀz + O(1): per-sample variance 2‖x‖²/ε (chapter 4)
    energy, x = ScaledQuadratic(), points(50, seed=3)
    eps = 1e-4
    loss = lambda cv: (lambda: sm_mvl(energy, x, eps, control_variate=cv).mean())  # noqa: E731
    no_cv = gradient_draws(loss(False), [energy.a], n_draws=2000, seed=1)
    est, low, high = gradient_variance(no_cv, batch_size=len(x))
    predicted = 2 * (x**2).sum(-1).mean().item() / eps
    assert low < est < high
    assert abs(est / predicted - 1) < 0.1, (est, predicted)  # relative s.e. of a variance from 2000 draws: 3 %
    assert low < predicted < high
    with_cv = gradient_variance(gradient_draws(loss(True), [energy.a], n_draws=500, seed=1), batch_size=len(x))[0]
    assert with_cv < 1e-3 * est  # the control variate removes the Θ(1/ε) term (what is left is O(1))
    # the same seed gives the same draws (common random numbers across calls)
    assert torch.equal(gradient_draws(loss(False), [energy.a], n_draws=3, seed=1), no_cv[:3])


def test_gradient_variance_of_denoising_grows_like_one_over_eps_not_its_square():
    energy, x = ScaledQuadratic(), points(50, seed=4)
    var = {}
    for eps in (1e-3, 1e-5):
        draws = gradient_draws(lambda: sm_denoising(energy, x, eps, control_variate=False).mean(), [energy.a], 400)
        var[eps] = gradient_variance(draws, batch_size=len(x))[0]
    slope = math.log(var[1e-5] / var[1e-3]) / math.log(1e-5 / 1e-3)
    assert abs(slope + 1) < 0.1, slope  # the value's variance grows like 1/ε², the gradient's like 1/ε


def test_gradient_variance_bootstrap_matches_the_plain_variance():
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(300, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    est, low, high = gradient_variance(draws, batch_size=4)
    truth = 4 * (1 + 4 + 0.25 + 1 + 9) / 5
    assert low < truth < high and abs(est - 4 * draws.var(0).mean().item()) < 1e-12
    assert high - low < 0.5 * truth


def test_gradient_snr():
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([3.0, 4.0], dtype=torch.float64)  # ‖mean‖ = 5, tr Cov = 2: SNR = 5/√2
    draws = mean + torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    assert abs(gradient_snr(draws) - 5 / math.sqrt(2)) < 0.1
    pure_noise = torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    assert gradient_snr(pure_noise) < 0.05
    with pytest.raises(ValueError, match="do not vary"):
        gradient_snr(torch.ones(10, 3))


def test_minimum_detectable_effect_and_bad_gradient_inputs():
    assert abs(minimum_detectable_effect(1.0) - 2.8016) < 1e-3
    assert abs(minimum_detectable_effect(2.0, power=0.5) - 2 * 1.95996) < 1e-3
    with pytest.raises(ValueError, match="standard error"):
        minimum_detectable_effect(float("nan"))
    energy, x = ScaledQuadratic(), points(5)
    with pytest.raises(ValueError, match="scalar"):
        gradient_draws(lambda: sm_mvl(energy, x, 1e-2), [energy.a], 3)
    with pytest.raises(ValueError, match="n_draws"):
        gradient_draws(lambda: sm_mvl(energy, x, 1e-2).mean(), [energy.a], 1)
    with pytest.raises(FloatingPointError, match="draw 0"):
        gradient_draws(lambda: energy.a * float("nan"), [energy.a], 3)
    with pytest.raises(ValueError, match="batch_size"):
        gradient_variance(torch.randn(5, 2), batch_size=0)


def test_z_test_of_independent_values():
    gen = torch.Generator().manual_seed(0)
    null = torch.randn(10_000, generator=gen, dtype=torch.float64)
    t = z_test(null)
    assert abs(t["se"] - 0.01) < 0.0005 and abs(t["z"]) < 4 and 0 <= t["p"] <= 1
    assert abs(t["mde"] - minimum_detectable_effect(t["se"])) < 1e-15
    shifted = z_test(null + 0.1)  # a shift of ten standard errors is detected
    assert shifted["p"] < 1e-3 and abs(shifted["mean"] - t["mean"] - 0.1) < 1e-12
    with pytest.raises(ValueError, match="at least two"):
        z_test(torch.ones(1))
    assert z_test(torch.zeros(5)) == dict(mean=0.0, se=0.0, z=0.0, p=1.0, mde=0.0)  # a model against itself
    assert z_test(torch.ones(5))["p"] == 0.0
