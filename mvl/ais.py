"""Annealed importance sampling: log partition functions and marginal likelihoods (chapter 8).

The seed paper of chapter 8 (*Variational Inference with Unnormalized Priors*, end of §2.3) evaluates its VAEs with an energy-based prior by annealed importance sampling (AIS; Neal,
2001), which needs two numbers the training never computes: the prior's log partition function log Z
(:func:`grbm_log_partition`) and the marginal likelihood log p(x) of each test image
(:func:`vae_log_likelihood`, the protocol of Wu et al., 2017, "On the quantitative analysis of
decoder-based generative models").

AIS estimates Z = ∫ f(z) dz for an unnormalized target f = exp(log_target) from a normalized, sampleable
base p₀ through the geometric path f_β = p₀^{1−β} f^β, 0 = β₀ < β₁ < … < β_{T−1} = 1:

    z₀ ~ p₀,   log w = Σ_{t=1}^{T−1} (β_t − β_{t−1}) [log f(z_{t−1}) − log p₀(z_{t−1})],
    z_t ~ K_t(z_{t−1}, ·)   with K_t leaving f_{β_t} invariant (HMC or MALA here).

E[w] = Z exactly (the weight is an ordinary importance weight on the extended space of the whole
trajectory), so Ẑ = mean(w) over independent chains is unbiased for Z and, by Jensen's inequality,
log Ẑ is biased *low* for log Z, by about Var(w)/(2 n E[w]²) for n chains: a stochastic lower bound.
Chapter 8 carries this into the test NLL: with an AIS estimate of the prior's log Z (too low), the
importance-sampled NLL is biased optimistically.

On a sphere (chapter 9: the hyperspherical VAEs' log p(x)), ``kernel="riemannian_mala"`` with
``sphere=Sphere(n)`` runs the same scheme with Riemannian MALA transitions; all densities are then w.r.t.
the sphere's volume measure (the base is typically the uniform prior).

Everything here works on batches of independent AIS problems at once (one per test image): the callables
map z ``[batch, n_chains, d]`` to ``[batch, n_chains]``; a problem without a batch dimension (z
``[n_chains, d]`` → ``[n_chains]``) is the case batch = 1 with the dimension dropped from the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LogDensity = Callable[[torch.Tensor], torch.Tensor]
"""z ``[..., n_chains, d]`` → log density ``[..., n_chains]`` (differentiable in z)."""

KERNELS = ("hmc", "mala", "riemannian_mala")
ADAPT = ("online", "pilot", "none")


@dataclass
class AISResult:
    """The output of :func:`ais` (chapter 8). Shapes are for the batched form; without a batch dimension
    the leading ``batch`` axis is dropped (``log_z`` is then a 0-d tensor).

    * ``log_z`` ``[batch]``: log of the mean importance weight, log Ẑ (a stochastic lower bound of log Z);
    * ``log_weights`` ``[batch, n_chains]``: the AIS log-weights;
    * ``log_z_se`` ``[batch]``: standard error of log Ẑ by the delta method, sd(w)/(√n · mean(w)) over the
      n chains (valid when the weights' variance is finite and n is large enough for the ESS to be
      meaningful; compare with ``ess``);
    * ``ess`` ``[batch]``: the effective sample size (Σw)²/Σw² of the weights, between 1 and n_chains;
    * ``acceptance`` ``[batch]``: mean Metropolis acceptance probability over chains and temperatures;
    * ``acceptance_by_temperature`` ``[T − 1, batch]`` and ``step_sizes`` ``[T − 1, batch]``: per transition,
      the mean acceptance probability and the step size used (pass ``step_sizes`` back as ``step_size``
      with ``adapt="none"`` to rerun with a fixed schedule);
    * ``betas`` ``[T]``: the inverse temperatures; ``samples`` ``[batch, n_chains, d]``: the final states
      (approximate draws from the normalized target, e.g. the posterior of :func:`vae_log_likelihood`);
    * ``n_rejected_nonfinite``: proposals rejected because the log density was not finite there
      (divergent trajectories);
    * ``log_z_offset_se``: a standard error shared by every entry of ``log_z`` (the prior's log Z error
      in :func:`vae_log_likelihood`; 0 otherwise). It does not average out over a test set.
    """

    log_z: torch.Tensor
    log_weights: torch.Tensor
    log_z_se: torch.Tensor
    ess: torch.Tensor
    acceptance: torch.Tensor
    acceptance_by_temperature: torch.Tensor
    step_sizes: torch.Tensor
    betas: torch.Tensor
    samples: torch.Tensor
    kernel: str
    n_rejected_nonfinite: int = 0
    log_z_offset_se: float = 0.0


def sigmoid_schedule(n_temperatures: int, radius: float = 4.0) -> torch.Tensor:
    """The sigmoid annealing schedule of Grosse et al. (2015) and Wu et al. (2017) (chapter 8):
    β_t ∝ σ(−r + 2r t/(T−1)), rescaled to run from exactly 0 to exactly 1, ``[T]`` in float64.

    It spends more temperatures near β = 0 and β = 1, where the intermediate distributions change fastest
    for a diffuse base and a peaked target. ``radius`` r → 0 approaches the linear schedule.
    """
    _check_int(n_temperatures, "n_temperatures", minimum=2)
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    s = torch.sigmoid(torch.linspace(-radius, radius, n_temperatures, dtype=torch.float64))
    betas = (s - s[0]) / (s[-1] - s[0])
    betas[0], betas[-1] = 0.0, 1.0
    return betas


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_schedule(schedule, n_temperatures: int) -> torch.Tensor:
    if isinstance(schedule, str):
        if schedule == "sigmoid":
            return sigmoid_schedule(n_temperatures)
        if schedule == "linear":
            return torch.linspace(0.0, 1.0, n_temperatures, dtype=torch.float64)
        raise ValueError(f"unknown schedule {schedule!r}: use 'sigmoid', 'linear' or a tensor of betas")
    betas = torch.as_tensor(schedule, dtype=torch.float64).flatten()
    if betas.numel() != n_temperatures:
        raise ValueError(f"the schedule has {betas.numel()} temperatures but n_temperatures={n_temperatures}")
    if betas[0] != 0 or betas[-1] != 1 or not bool((betas[1:] >= betas[:-1]).all()):
        raise ValueError("a schedule must be nondecreasing from beta = 0 to beta = 1")
    return betas


class _Path:
    """The annealing path log f_β = (1 − β) log p₀ + β log f with values and z-gradients of both ends."""

    def __init__(self, log_base: LogDensity, log_target: LogDensity, squeeze: bool):
        self.log_base, self.log_target, self.squeeze = log_base, log_target, squeeze

    def _call(self, fn: LogDensity, z: torch.Tensor, name: str) -> torch.Tensor:
        out = fn(z[0]) if self.squeeze else fn(z)
        out = out[None] if self.squeeze else out
        if out.shape != z.shape[:2]:
            shape = tuple(z.shape[1:] if self.squeeze else z.shape)
            raise ValueError(f"{name} must map z {shape} to {shape[:-1]}, got {tuple(out.shape)}")
        return out

    def __call__(self, z: torch.Tensor):
        """(log p₀, log f, ∇ log p₀, ∇ log f) at z ``[batch, n, d]``, all detached."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lb = self._call(self.log_base, z, "log_base")
            lt = self._call(self.log_target, z, "log_target")
            gb = _grad(lb, z)
            gt = _grad(lt, z)
        return lb.detach(), lt.detach(), gb, gt


def _grad(value: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    if not value.requires_grad:  # a constant log density (e.g. a flat base)
        return torch.zeros_like(z)
    (g,) = torch.autograd.grad(value.sum(), z, allow_unused=True)
    return torch.zeros_like(z) if g is None else g.detach()


def _mix(beta: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - beta) * a + beta * b


def _check_current(lb: torch.Tensor, lt: torch.Tensor, beta: float) -> None:
    for name, v in (("log_base", lb), ("log_target", lt)):
        if not torch.isfinite(v).all():
            bad = int((~torch.isfinite(v)).sum())
            raise FloatingPointError(
                f"{name} returned {bad} non-finite value(s) (NaN or ±inf) at the chains' current states "
                f"(beta = {beta:.4g}). AIS needs a finite log density wherever the base puts mass: check the "
                f"energy for NaNs (e.g. a diverged training run) and the base for support outside the target's."
            )


def _hmc(path: _Path, state, beta: float, eps: torch.Tensor, n_leapfrog: int):
    """One HMC transition (leapfrog, identity mass) leaving f_β invariant; returns (proposal, log α)."""
    z, lb, lt, gb, gt = state
    p0 = torch.randn_like(z)
    p = p0 + 0.5 * eps * _mix(beta, gb, gt)
    zn = z
    for i in range(n_leapfrog):
        zn = zn + eps * p
        lbn, ltn, gbn, gtn = path(zn)
        if i < n_leapfrog - 1:
            p = p + eps * _mix(beta, gbn, gtn)
    p = p + 0.5 * eps * _mix(beta, gbn, gtn)
    log_alpha = (_mix(beta, lbn, ltn) - 0.5 * (p**2).sum(-1)) - (_mix(beta, lb, lt) - 0.5 * (p0**2).sum(-1))
    return (zn, lbn, ltn, gbn, gtn), log_alpha


def _mala(path: _Path, state, beta: float, eps: torch.Tensor, n_leapfrog: int):
    """One MALA transition z' = z + ε∇log f_β + √(2ε)ξ with its Metropolis–Hastings correction."""
    z, lb, lt, gb, gt = state
    g = _mix(beta, gb, gt)
    zn = z + eps * g + torch.sqrt(2 * eps) * torch.randn_like(z)
    lbn, ltn, gbn, gtn = path(zn)
    gn = _mix(beta, gbn, gtn)
    log_fwd = -((zn - z - eps * g) ** 2).sum(-1) / (4 * eps[..., 0])
    log_bwd = -((z - zn - eps * gn) ** 2).sum(-1) / (4 * eps[..., 0])
    log_alpha = _mix(beta, lbn, ltn) - _mix(beta, lb, lt) + log_bwd - log_fwd
    return (zn, lbn, ltn, gbn, gtn), log_alpha


def _sphere_path(path: _Path, sphere, y: torch.Tensor):
    """(log p₀, log f, ∂ₓ log p₀, ∂ₓ log f) at embedded points y ``[batch, n, m]`` of a sphere, the gradients in
    each point's own stereographic chart (``sphere`` is a :class:`mvl.manifolds.Sphere`; chapter 9)."""
    b, c, m = y.shape
    x, s = sphere.to_chart(y.reshape(-1, m))
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lb = path._call(path.log_base, sphere.from_chart(x, s).reshape(b, c, m), "log_base")
        gb = _grad(lb, x)  # (a separate from_chart graph for each density: _grad frees the graph)
        lt = path._call(path.log_target, sphere.from_chart(x, s).reshape(b, c, m), "log_target")
        gt = _grad(lt, x)
    return lb.detach(), lt.detach(), gb.reshape(b, c, -1), gt.reshape(b, c, -1)


def _riemannian_mala(path: _Path, state, beta: float, eps: torch.Tensor, n_leapfrog: int, sphere=None):
    """One Riemannian MALA transition on a sphere leaving f_β (a density w.r.t. the volume measure) invariant
    (chapter 9; the kernel of :func:`mvl.samplers.riemannian_mala_step` with one step size per problem): the
    Euler–Maruyama proposal of Riemannian Langevin dynamics in the chart of the current point, the reverse
    move in the chart of the proposal, and the proposal densities of
    :meth:`mvl.manifolds.Sphere.langevin_log_proposal`. The state's gradients are chart gradients."""
    y, lb, lt, gb, gt = state
    b, c, m = y.shape
    e = eps.expand(b, c, 1).reshape(-1)
    flat = y.reshape(-1, m)
    x, s = sphere.to_chart(flat)
    g_energy = -_mix(beta, gb, gt).reshape(b * c, -1)  # ∂ₓE with E = −log f_β
    x_prop = x + e[:, None] * sphere.langevin_drift(x, g_energy) + torch.sqrt(2 * e)[:, None] * sphere.chart_noise(x)
    y_prop = sphere.project(sphere.from_chart(x_prop, s))
    bad = ~torch.isfinite(y_prop).all(-1)  # an overflowing proposal stays put and is rejected below
    y_prop = torch.where(bad[:, None], flat, y_prop)
    lbn, ltn, gbn, gtn = _sphere_path(path, sphere, y_prop.reshape(b, c, m))
    x_back, s_back = sphere.to_chart(y_prop)
    # the current point in the proposal's chart; a point at that chart's pole gives inf (then rejected)
    x_old_back = flat[:, :-1] / (1 + s_back * flat[:, -1])[:, None]
    log_q = (sphere.langevin_log_proposal(x_back, -_mix(beta, gbn, gtn).reshape(b * c, -1), x_old_back, e)
             - sphere.langevin_log_proposal(x, g_energy, x_prop, e))
    log_q = torch.where(bad, torch.full_like(log_q, -math.inf), log_q)
    log_alpha = _mix(beta, lbn, ltn) - _mix(beta, lb, lt) + log_q.reshape(b, c)
    return (y_prop.reshape(b, c, m), lbn, ltn, gbn, gtn), log_alpha


def _initial_steps(step_size, n_transitions: int, batch: int, adapt: str, dtype, device) -> torch.Tensor:
    """Step sizes ``[T − 1, batch]``: a positive scalar (the starting value when adapting) or a tensor."""
    if isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        return torch.full((n_transitions, batch), float(step_size), dtype=dtype, device=device)
    if adapt != "none":
        raise ValueError("a tensor of step sizes is a fixed schedule: pass it with adapt='none'")
    s = torch.as_tensor(step_size, dtype=dtype, device=device)
    if s.dim() == 1:
        s = s[:, None].expand(-1, batch)
    if s.shape != (n_transitions, batch):
        raise ValueError(f"step_size must have shape [{n_transitions}] or [{n_transitions}, {batch}], got {tuple(s.shape)}")
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError("step sizes must be positive and finite")
    return s.clone()


def ais(
    log_base: LogDensity,
    sample_base: Callable[[int], torch.Tensor],
    log_target: LogDensity,
    n_temperatures: int = 1000,
    n_chains: int = 100,
    kernel: str = "hmc",
    step_size: float | torch.Tensor = 0.1,
    n_leapfrog: int = 10,
    schedule: str | torch.Tensor = "sigmoid",
    adapt: str = "online",
    target_accept: float = 0.65,
    adapt_rate: float = 0.5,
    progress: bool = False,
    desc: str = "AIS",
    sphere=None,
    n_steps: int = 1,
) -> AISResult:
    """Annealed importance sampling estimate of log ∫ exp(log_target(z)) dz (Neal, 2001; chapter 8).

    ``sample_base(n_chains)`` draws z₀ from the *normalized* base p₀ whose log density is ``log_base``:
    ``[n_chains, d]`` for one problem, ``[batch, n_chains, d]`` for a batch of independent problems (the
    callables then map ``[batch, n_chains, d]`` → ``[batch, n_chains]``). The intermediate densities are
    f_β = p₀^{1−β} exp(log_target)^β at the ``n_temperatures`` inverse temperatures of ``schedule``
    (``"sigmoid"``, :func:`sigmoid_schedule`; ``"linear"``; or a tensor from 0 to 1), with one transition
    per temperature after β₀ = 0 (so ``n_temperatures − 1`` transitions, the last at β = 1).

    ``kernel="hmc"``: Hamiltonian Monte Carlo, ``n_leapfrog`` leapfrog steps of size ε with unit mass;
    ``kernel="mala"``: the Metropolis-adjusted Langevin algorithm with proposal z + ε∇log f_β + √(2ε)ξ.
    ``kernel="riemannian_mala"`` (chapter 9) works on the sphere ``sphere`` (a :class:`mvl.manifolds.Sphere`
    Sⁿ; z are embedded unit vectors ``[..., n+1]``, the densities are w.r.t. the volume measure and the
    integral is over the sphere): Riemannian MALA, the Riemannian Langevin proposal in each point's
    stereographic chart with the Metropolis–Hastings ratio of :func:`mvl.samplers.riemannian_mala_step`.
    All are Metropolis–Hastings corrected, so each leaves its f_β exactly invariant; a proposal where a log
    density is not finite (a divergent trajectory) is rejected and counted. ``n_steps`` transitions are made
    at each temperature (the paper's sphere AIS uses 5); acceptance and adaptation use their mean.

    Step sizes, one per batch element (all chains of a problem share it), follow ``adapt``:

    * ``"online"`` (default): after each transition, log ε ← log ε + ``adapt_rate`` (ā − ``target_accept``)
      with ā the mean acceptance probability over the problem's chains (target 0.65, Neal 2011, as in Wu
      et al.). ε at temperature t depends only on *past* states, so every transition still leaves f_β
      invariant; but it depends on all chains of the problem, which couples them, so E[w] = Z holds only
      up to an O(1/n_chains) term (the estimator is consistent, as adaptive SMC is; Beskos et al., 2016).
    * ``"pilot"``: run the online adaptation once as a pilot pass with the same settings, then rerun with
      its step sizes frozen (``adapt="none"``), which restores exact unbiasedness of Ẑ at twice the cost.
    * ``"none"``: ``step_size`` is used as given: a positive number, or a tensor ``[T − 1]`` or
      ``[T − 1, batch]`` (e.g. the ``step_sizes`` of an earlier result).

    The standard error of log Ẑ is the delta method, sd(w)/(√n mean(w)) over chains (see
    :class:`AISResult`); it is trustworthy only when the effective sample size ``ess`` is not tiny.
    A NaN or infinite log density at the chains' current states (the base samples, to begin with) raises a
    ``FloatingPointError``. ``progress=True`` shows a ``tqdm.auto`` bar over temperatures.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: use 'hmc', 'mala' or 'riemannian_mala' (with sphere=Sphere(n))")
    if (kernel == "riemannian_mala") != (sphere is not None):
        raise ValueError("kernel='riemannian_mala' needs sphere=Sphere(n) (the manifold z lives on), and the other "
                         f"kernels work in R^d without one; got kernel={kernel!r}, sphere={sphere!r}")
    _check_int(n_steps, "n_steps", minimum=1)
    if adapt not in ADAPT:
        raise ValueError(f"unknown adapt {adapt!r}: use 'online', 'pilot' or 'none'")
    _check_int(n_temperatures, "n_temperatures", minimum=2)
    _check_int(n_chains, "n_chains", minimum=1)
    _check_int(n_leapfrog, "n_leapfrog", minimum=1)
    if not (isinstance(target_accept, (int, float)) and 0 < target_accept < 1):
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if not (isinstance(adapt_rate, (int, float)) and math.isfinite(adapt_rate) and adapt_rate > 0):
        raise ValueError(f"adapt_rate must be a positive finite number, got {adapt_rate!r}")
    betas = _check_schedule(schedule, n_temperatures)
    kwargs = {"n_temperatures": n_temperatures, "n_chains": n_chains, "kernel": kernel, "n_leapfrog": n_leapfrog,
              "schedule": betas, "target_accept": target_accept, "adapt_rate": adapt_rate, "progress": progress,
              "sphere": sphere, "n_steps": n_steps}
    if adapt == "pilot":
        pilot = ais(log_base, sample_base, log_target, step_size=step_size, adapt="online",
                    desc=f"{desc} (pilot)", **kwargs)
        return ais(log_base, sample_base, log_target, step_size=pilot.step_sizes, adapt="none", desc=desc, **kwargs)

    z = sample_base(n_chains)
    if not torch.is_tensor(z) or z.dim() not in (2, 3) or not torch.is_floating_point(z):
        raise ValueError("sample_base(n_chains) must return a float tensor [n_chains, d] or [batch, n_chains, d], "
                         f"got {getattr(z, 'shape', type(z))}")
    squeeze = z.dim() == 2
    z = z.detach()[None] if squeeze else z.detach()
    if z.shape[1] != n_chains:
        raise ValueError(f"sample_base({n_chains}) returned {z.shape[1]} chains (shape {tuple(z.shape)})")
    batch = z.shape[0]
    path = _Path(log_base, log_target, squeeze)
    eps_all = _initial_steps(step_size, n_temperatures - 1, batch, adapt, z.dtype, z.device)
    if sphere is not None:
        if z.shape[-1] != sphere.ambient_dim:
            raise ValueError(f"points on {sphere!r} have {sphere.ambient_dim} coordinates, sample_base gave {z.shape[-1]}")
        sphere.check_points(z.reshape(-1, z.shape[-1]))
        state = (z, *_sphere_path(path, sphere, z))
    else:
        state = (z, *path(z))
    _check_current(state[1], state[2], 0.0)
    log_w = torch.zeros(batch, n_chains, dtype=torch.float64, device=z.device)
    acc_t = torch.zeros(n_temperatures - 1, batch, dtype=torch.float64, device=z.device)
    step = {"hmc": _hmc, "mala": _mala, "riemannian_mala": lambda *a: _riemannian_mala(*a, sphere=sphere)}[kernel]
    n_bad = 0
    temps = range(1, n_temperatures)
    if progress:
        from tqdm.auto import tqdm

        temps = tqdm(temps, desc=desc)
    eps = eps_all[0].clone()
    for t in temps:
        b_prev, b = float(betas[t - 1]), float(betas[t])
        log_w += (b - b_prev) * (state[2] - state[1]).double()
        if adapt == "none":
            eps = eps_all[t - 1]
        else:
            eps_all[t - 1] = eps
        prob = 0.0
        for _ in range(n_steps):
            proposal, log_alpha = step(path, state, b, eps[:, None, None], n_leapfrog)
            finite = torch.isfinite(log_alpha)
            for v in proposal[1:]:
                finite &= torch.isfinite(v.reshape(*v.shape[:2], -1)).all(-1)
            n_bad += int((~finite).sum())
            log_alpha = torch.where(finite, log_alpha, torch.full_like(log_alpha, -math.inf))
            accept = torch.log(torch.rand_like(log_alpha)) < log_alpha
            state = tuple(torch.where(accept.view(*accept.shape, *([1] * (new.dim() - 2))), new, old)
                          for new, old in zip(proposal, state))
            prob = prob + torch.exp(torch.clamp(log_alpha, max=0.0)).double().mean(1) / n_steps
        acc_t[t - 1] = prob
        if adapt == "online":
            eps = eps * torch.exp(adapt_rate * (prob - target_accept)).to(eps.dtype)
    log_z, se, ess = _weight_summary(log_w)
    result = AISResult(log_z=log_z, log_weights=log_w, log_z_se=se, ess=ess, acceptance=acc_t.mean(0),
                       acceptance_by_temperature=acc_t, step_sizes=eps_all, betas=betas, samples=state[0],
                       kernel=kernel, n_rejected_nonfinite=n_bad)
    return _squeeze(result) if squeeze else result


def _weight_summary(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log mean w, its delta-method standard error and the ESS, per row of ``log_w`` ``[batch, n]``."""
    n = log_w.shape[-1]
    lse = torch.logsumexp(log_w, -1)
    log_z = lse - math.log(n)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * log_w, -1))
    w = torch.exp(log_w - log_w.max(-1, keepdim=True).values)
    se = w.std(-1) / (math.sqrt(n) * w.mean(-1)) if n > 1 else torch.full_like(log_z, math.inf)
    return log_z, se, ess


def _squeeze(r: AISResult) -> AISResult:
    return AISResult(log_z=r.log_z[0], log_weights=r.log_weights[0], log_z_se=r.log_z_se[0], ess=r.ess[0],
                     acceptance=r.acceptance[0], acceptance_by_temperature=r.acceptance_by_temperature[:, 0],
                     step_sizes=r.step_sizes[:, 0], betas=r.betas, samples=r.samples[0], kernel=r.kernel,
                     n_rejected_nonfinite=r.n_rejected_nonfinite, log_z_offset_se=r.log_z_offset_se)


def grbm_log_partition(grbm, n_temperatures: int = 1000, n_chains: int = 100, kernel: str = "hmc",
                       base_scale: float = 1.0, base: tuple[LogDensity, Callable[[int], torch.Tensor]] | None = None,
                       **kwargs) -> AISResult:
    """AIS estimate of a Gaussian–Bernoulli RBM's log Z = log ∫ exp(−F(z)) dz (seed 003 eq. 12; chapter 8).

    ``grbm`` is a :class:`mvl.ae.priors.GRBM` (anything with ``free_energy``, ``mu`` and ``log_var``). The
    base is the GRBM's own Gaussian part N(μ, (``base_scale`` σ)²), i.e. the model with W = 0 and the hidden
    units switched off (widen it with ``base_scale`` > 1 when W moves the modes far from μ); the target is
    exp(−F). Further keyword arguments go to :func:`ais`. The parameters are read once, detached: the
    estimate is for the GRBM as it is now (the GRBM's ``estimate_log_partition`` stores it with a
    fingerprint of the parameters, so that a stale value is never used).

    ``base`` = (log density, sampler) replaces the Gaussian base by any normalized, sampleable density, e.g.
    the aggregated posterior of a VAE (:func:`mvl.ae.ebm_prior.aggregated_posterior_base`). That matters when
    the GRBM's mass sits far from μ in units of σ (modes μ + Wh with large W/σ): chains started at N(μ, σ²) never
    reach them, every chain gets the same weight, and log Ẑ comes out far too low with a tiny standard error
    (chapter 8 shows such a case).
    """
    if not (isinstance(base_scale, (int, float)) and math.isfinite(base_scale) and base_scale > 0):
        raise ValueError(f"base_scale must be a positive finite number, got {base_scale!r}")
    mu = grbm.mu.detach()
    std = base_scale * torch.exp(0.5 * grbm.log_var.detach())
    log_norm = -(0.5 * math.log(2 * math.pi) + torch.log(std)).sum()

    def log_base(z):
        return log_norm - 0.5 * (((z - mu) / std) ** 2).sum(-1)

    def sample_base(n):
        return mu + std * torch.randn(n, mu.shape[0], dtype=mu.dtype, device=mu.device)

    def log_target(z):
        return -grbm.free_energy(z)

    if base is not None:
        log_base, sample_base = base
    with torch.no_grad():  # the parameters enter as constants; only z is differentiated (enable_grad inside)
        return ais(log_base, sample_base, log_target, n_temperatures, n_chains, kernel, **kwargs)


def vae_log_likelihood(
    decoder_log_lik: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    prior_log_prob: LogDensity,
    x: torch.Tensor,
    encoder: Callable | None = None,
    prior_sample: Callable[[int], torch.Tensor] | None = None,
    log_z: float = 0.0,
    log_z_se: float = 0.0,
    n_temperatures: int = 500,
    n_chains: int = 16,
    kernel: str = "hmc",
    **kwargs,
) -> AISResult:
    """AIS estimate of a VAE's log p(x) per example, annealing to the unnormalized posterior p(z) p(x|z)
    (Wu et al., 2017; seed 003 §2.3 and §4.2; chapter 8). Returns an :class:`AISResult` whose ``log_z`` ``[n]`` is
    log p(x) for the n rows of ``x``.

    ``decoder_log_lik(x, z)`` is log p(x|z) with the convention of :meth:`mvl.ae.vae.BernoulliDecoder.log_prob`
    (``x`` ``[n, D]``, ``z`` ``[S, n, d]`` → ``[S, n]``); ``prior_log_prob(z)`` ``[..., d]`` → ``[...]`` is the
    prior's log density up to the constant ``log_z``: for a normalized prior ``prior.log_prob`` with
    ``log_z = 0``; for an energy-based prior −E(z) (e.g. ``GRBM.unnormalized_log_prob``) with ``log_z`` its
    log partition function and ``log_z_se`` that value's standard error (0 if exact).

    The base distribution of the annealing is

    * the prior itself (Wu et al.'s protocol) when ``encoder`` is None: ``prior_sample(m)`` must return
      ``m`` *exact* draws ``[m, d]`` from the normalized prior exp(prior_log_prob − log_z) (fine for N(0, I)
      or a VampPrior; an EBM prior has no exact sampler, so use the encoder);
    * the amortized posterior q(z|x) when ``encoder`` is given (``encoder(x)`` returns an object with
      ``rsample(S)`` → ``[S, n, d]`` and ``log_prob(z)`` ``[S, n, d]`` → ``[S, n]``, as
      :class:`mvl.ae.priors.DiagonalGaussian`). AIS then estimates ∫ p(x|z) exp(prior_log_prob(z)) dz,
      and ``log_z`` is subtracted. Starting at q is closer to the posterior and needs fewer temperatures;
      the estimate is valid for any normalized base.

    log p(x) = log Ẑ_AIS − log Z_prior, so an AIS error in the prior's log Z shifts every example by the
    same amount: it is reported in ``log_z_offset_se`` and not folded into the per-example ``log_z_se``.
    Further keyword arguments go to :func:`ais`.
    """
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"x must be a tensor [n, D], got {getattr(x, 'shape', type(x))}")
    for name, v in (("log_z", log_z), ("log_z_se", log_z_se)):
        v = float(v)
        if not math.isfinite(v) or (name == "log_z_se" and v < 0):
            raise ValueError(f"{name} must be a finite number{' >= 0' if name == 'log_z_se' else ''}, got {v!r}")
    log_z, log_z_se = float(log_z), float(log_z_se)
    n = x.shape[0]

    def log_target(z):  # z [n, S, d] -> [n, S]
        zt = z.transpose(0, 1)
        return (decoder_log_lik(x, zt) + prior_log_prob(zt)).transpose(0, 1)

    if encoder is not None:
        with torch.no_grad():
            q = encoder(x)

        def log_base(z):
            return q.log_prob(z.transpose(0, 1)).transpose(0, 1)

        def sample_base(s):
            with torch.no_grad():
                return q.rsample(s).transpose(0, 1)
    else:
        if prior_sample is None:
            raise ValueError("give either encoder (anneal from q(z|x)) or prior_sample (anneal from the prior)")

        def log_base(z):
            return prior_log_prob(z) - log_z

        def sample_base(s):
            draws = prior_sample(n * s)
            return draws.reshape(n, s, draws.shape[-1])

    r = ais(log_base, sample_base, log_target, n_temperatures, n_chains, kernel, **kwargs)
    r.log_z = r.log_z - log_z
    r.log_weights = r.log_weights - log_z
    r.log_z_offset_se = log_z_se
    return r


__all__ = ["AISResult", "ais", "grbm_log_partition", "sigmoid_schedule", "vae_log_likelihood"]
