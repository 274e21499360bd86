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


def minimum_detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided z-test at level ``alpha`` detects with probability ``power``.

    For a test statistic (estimate)/se this is (z_{1−α/2} + z_{power})·se, about 2.8·se at the usual 5 % and
    80 %. Printed beside every test in the book (chapters 3, 4): a test that finds "no difference" says
    nothing about differences smaller than this.
    """
    if not se >= 0 or math.isinf(se):
        raise ValueError(f"the standard error must be a finite number >= 0, got {se!r}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    return (_z_quantile(1 - alpha) + NormalDist().inv_cdf(power)) * se


# --------------------------------------------------------------------------------------------------------
# The noise in the θ-gradient (chapter 4): what training sees, as opposed to the noise in the value.
# --------------------------------------------------------------------------------------------------------


def gradient_draws(
    loss: Callable[[], torch.Tensor], parameters, n_draws: int, seed: int = 0
) -> torch.Tensor:
    """Draw the θ-gradient of a stochastic scalar ``loss()`` ``n_draws`` times: a tensor ``[n_draws, P]``.

    ``loss`` is called once per draw, with the random number generators reset to ``seed + j`` for draw j
    (the global state is restored afterwards), so two losses that draw their noise the same way, or one
    loss at several step sizes, see common random numbers. ``P`` is the total number of entries of
    ``parameters``; a parameter the loss does not use contributes zeros. Chapter 4 feeds it the minibatch
    mean of ``sm_mvl``, ``sm_denoising`` or ``cd1_surrogate`` on a fixed batch, which isolates the noise
    of the estimator (over z) from the noise of minibatching.
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 2:
        raise ValueError(f"n_draws must be an integer >= 2, got {n_draws!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params = [p for p in parameters]
    if not params or not all(p.requires_grad for p in params):
        raise ValueError("parameters must be a non-empty sequence of tensors with requires_grad=True")
    devices = [params[0].device] if params[0].device.type == "cuda" else []
    rows = []
    for j in range(n_draws):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + j)
            value = loss()
        if value.dim() != 0:
            raise ValueError(f"loss() must return a scalar (e.g. the minibatch mean), got shape {tuple(value.shape)}")
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss() returned {value.item()} at draw {j}; lower the step size or check the model")
        grads = torch.autograd.grad(value, params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]))
    return torch.stack(rows).detach()


def _check_gradient_draws(draws: torch.Tensor) -> torch.Tensor:
    if draws.dim() != 2 or draws.shape[0] < 2:
        raise ValueError(f"expected gradient draws arranged as [n_draws, P] with n_draws >= 2, got {tuple(draws.shape)}")
    return draws.detach().double().cpu()


def gradient_variance(
    draws: torch.Tensor, batch_size: int = 1, level: float = 0.95, n_boot: int = 400, seed: int = 0
) -> tuple[float, float, float]:
    """Mean per-parameter variance of the gradient draws ``[n_draws, P]``, scaled to one sample.

    Returns ``(estimate, low, high)``: (1/P) tr Cov(g), multiplied by ``batch_size`` when the draws are
    gradients of a mean over that many samples with independent noise (the variance of a mean is the
    per-sample variance over B), and a percentile interval from resampling the draws. This is the quantity
    that grows like 1/ε for MVL, CD-1 and denoising score matching without their control variates (chapter 4).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    d = _check_gradient_draws(draws)
    n, p = d.shape
    gram = d @ d.T
    sq = gram.diagonal()

    def resampled(idx: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(idx.shape[0], n, dtype=d.dtype).scatter_add_(1, idx, torch.ones(idx.shape, dtype=d.dtype))
        total_sq = counts @ sq
        norm_sum = ((counts @ gram) * counts).sum(1)
        return (total_sq - norm_sum / n) / (n - 1) / p * batch_size

    low, high = _bootstrap_interval(resampled, n, level, n_boot, seed)
    return (d.var(0).mean() * batch_size).item(), low, high


def gradient_snr(draws: torch.Tensor) -> float:
    """Signal-to-noise ratio of one gradient draw: ‖E g‖ / √(tr Cov g), from draws ``[n_draws, P]``.

    ‖ḡ‖² overestimates ‖E g‖² by tr Cov(g)/n; that part is subtracted (and the result clipped at zero), so a
    pure-noise gradient has an SNR near 0 rather than near 1/√n. Below about 1, an optimizer's steps are
    mostly noise (chapter 4, Figure 3).
    """
    d = _check_gradient_draws(draws)
    n = d.shape[0]
    trace = d.var(0).sum().item()
    if trace == 0:
        raise ValueError("the gradient draws do not vary: the SNR is undefined (is the loss stochastic?)")
    signal = max((d.mean(0) ** 2).sum().item() - trace / n, 0.0)
    return math.sqrt(signal / trace)


def z_test(values: torch.Tensor) -> dict[str, float]:
    """z-test of E[values] = 0 from independent values (e.g. paired differences, one per data point).

    Returns ``mean``, its standard error ``se`` = sd/√n, ``z``, the two-sided ``p`` and the minimum detectable
    effect ``mde`` (:func:`minimum_detectable_effect`). Chapters 3 and 7 report their comparisons with it.
    """
    v = values.detach().double().reshape(-1).cpu()
    if len(v) < 2:
        raise ValueError(f"a z-test needs at least two values, got {len(v)}")
    se = v.std().item() / math.sqrt(len(v))
    mean = v.mean().item()
    if se == 0:  # constant values (e.g. a model compared with itself): no noise, the difference is exact
        z = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        z = mean / se
    return dict(mean=mean, se=se, z=z, p=math.erfc(abs(z) / math.sqrt(2)), mde=minimum_detectable_effect(se))
