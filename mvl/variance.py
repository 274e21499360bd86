"""Bias and variance of stochastic estimators of an objective (chapter 4; the paper's Figure 1, appendix E.1.1).

The paper measures how far a step-size-dependent estimator (MVL, denoising score matching) is from an
unbiased reference (sliced score matching) with K data points x⁽ᵏ⁾ and M noise draws per point:

    B̂ = (1/K) Σₖ ( (1/M) Σⱼ [L_ref(x⁽ᵏ⁾; z⁽ʲ⁾) − L(x⁽ᵏ⁾; z⁽ʲ⁾)] )².

Its expectation is E_x[b(x)²] + E_x[Var_z(L_ref − L | x)]/M, with b(x) the bias at x: by the Cauchy–Schwarz
inequality an upper bound on the squared bias (E_x b(x))², tight once M is large enough. Both estimators see
the *same* noise z⁽ʲ⁾ (common random numbers), which makes their difference far less noisy than either.

The functions here take the draws arranged as a ``[K, M]`` tensor (one row per data point).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from statistics import NormalDist

import torch

Estimator = Callable[[torch.Tensor], torch.Tensor]


def common_random_numbers(estimators: Mapping[str, Estimator], x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Evaluate several per-sample estimators on ``x`` with the same random numbers (detached results).

    Each estimator is called with the random number generators reset to ``seed``, so estimators that draw
    one standard normal tensor shaped like ``x`` (``sm_sliced``, ``sm_mvl``, ``sm_denoising``) see the same
    z. The global generator state is restored afterwards.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    devices = [x.device] if x.device.type == "cuda" else []
    out = {}
    for name, fn in estimators.items():
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            values = fn(x).detach()
        if values.shape != x.shape[:1]:
            raise ValueError(f"estimator {name!r} returned shape {tuple(values.shape)}, expected [{x.shape[0]}]")
        out[name] = values
    return out


def draws_per_point(
    estimators: Mapping[str, Estimator],
    points: torch.Tensor,
    n_draws: int,
    seed: int = 0,
    chunk_size: int = 10_000,
) -> dict[str, torch.Tensor]:
    """Evaluate each estimator ``n_draws`` times at each of the K ``points``: ``{name: tensor [K, n_draws]}``.

    The work is split in chunks of about ``chunk_size`` evaluations (chunk c uses seed ``seed + c``), with
    common random numbers across the estimators; the same ``seed`` reproduces the same draws, so calling this
    for several step sizes with one seed couples the runs too.
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 2:
        raise ValueError(f"n_draws must be an integer >= 2, got {n_draws!r}")
    if points.dim() != 2 or points.shape[0] < 2:
        raise ValueError(f"points must be a [K, d] tensor with K >= 2, got shape {tuple(points.shape)}")
    k = points.shape[0]
    rows_per_chunk = max(1, chunk_size // n_draws)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in estimators}
    for c, start in enumerate(range(0, k, rows_per_chunk)):
        block = points[start : start + rows_per_chunk]
        x = block.repeat_interleave(n_draws, 0)
        values = common_random_numbers(estimators, x, seed + c)
        for name, v in values.items():
            chunks[name].append(v.reshape(block.shape[0], n_draws))
    return {name: torch.cat(v) for name, v in chunks.items()}


def _z_quantile(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"the confidence level must be in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def _check_draws(values: torch.Tensor) -> torch.Tensor:
    if values.dim() != 2 or values.shape[0] < 2 or values.shape[1] < 2:
        raise ValueError(f"expected draws arranged as [K, M] with K, M >= 2, got shape {tuple(values.shape)}")
    return values.detach().double().cpu()


def _bootstrap_interval(stat_of_rows, n_rows: int, level: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile interval of a statistic when the K rows (data points) are resampled with replacement."""
    _z_quantile(level)  # validates the level
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_rows, (n_boot, n_rows), generator=gen)
    boot = stat_of_rows(idx)
    alpha = (1 - level) / 2
    low, high = torch.quantile(boot, torch.tensor([alpha, 1 - alpha], dtype=boot.dtype)).tolist()
    return low, high


def squared_bias_bound(
    diff: torch.Tensor, level: float = 0.95, n_boot: int = 400, seed: int = 0
) -> tuple[float, float, float]:
    """The paper's stochastic upper bound on the squared bias, from differences ``diff[k, j]`` = L_ref − L.

    Returns ``(estimate, low, high)``: (1/K) Σₖ (mean over j of diff[k])², and the percentile interval of
    that statistic when the K points are resampled with replacement (``n_boot`` times, seeded). Its
    expectation is E_x[b(x)²] + E_x[Var_z]/M (see the module docstring).
    """
    d = _check_draws(diff)
    sq = d.mean(1) ** 2
    low, high = _bootstrap_interval(lambda idx: sq[idx].mean(1), len(sq), level, n_boot, seed)
    return sq.mean().item(), low, high


def bound_floor(diff: torch.Tensor) -> float:
    """The Monte-Carlo floor E_x[Var_z(diff | x)]/M of :func:`squared_bias_bound`, estimated from the draws.

    Subtracting it from the bound gives an unbiased estimate of E_x[b(x)²].
    """
    d = _check_draws(diff)
    return (d.var(1).mean() / d.shape[1]).item()


def variance(values: torch.Tensor, level: float = 0.95, n_boot: int = 400, seed: int = 0) -> tuple[float, float, float]:
    """The per-sample variance of an estimator over data and noise, with a bootstrap interval over points.

    ``values[k, j]`` is the estimate at data point k with noise draw j. Returns ``(estimate, low, high)``:
    the variance of all K·M values, and the percentile interval of that variance when the K rows are resampled
    with replacement (``n_boot`` times, seeded), which accounts for the between-point part of the variance.
    """
    v = _check_draws(values)
    k, m = v.shape
    n = k * m
    s1, s2 = v.sum(1), (v**2).sum(1)

    def resampled(idx: torch.Tensor) -> torch.Tensor:
        tot1, tot2 = s1[idx].sum(1), s2[idx].sum(1)
        return (tot2 - tot1**2 / n) / (n - 1)

    low, high = _bootstrap_interval(resampled, k, level, n_boot, seed)
    return v.var().item(), low, high


def paired_z_test(diff: torch.Tensor) -> tuple[float, float]:
    """z-test of E[diff] = 0 from the K per-point means of ``diff[k, j]`` (common random numbers).

    Returns ``(z, two-sided p-value)``. The per-point means are independent across points, so the standard
    error sd(means)/√K is valid even though the draws within a row share their data point.
    """
    d = _check_draws(diff)
    means = d.mean(1)
    z = means.mean().item() / (means.std().item() / math.sqrt(len(means)))
    return z, math.erfc(abs(z) / math.sqrt(2))


def two_sample_z_test(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """z-test of E[a] = E[b] for two *independent* sets of draws ``[K_a, M]`` and ``[K_b, M]``.

    Standard errors come from the per-point means, as in :func:`paired_z_test`. Returns ``(z, p)``.
    """
    ma, mb = _check_draws(a).mean(1), _check_draws(b).mean(1)
    se = math.sqrt(ma.var().item() / len(ma) + mb.var().item() / len(mb))
    z = (ma.mean().item() - mb.mean().item()) / se
    return z, math.erfc(abs(z) / math.sqrt(2))
