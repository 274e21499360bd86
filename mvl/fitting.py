"""Fitting an energy to samples by any per-sample objective (chapters 1, 3–6): the loop, and the helpers
the chapters share around it (finite checks, flattened parameter gradients, the timing of one step)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

Objective = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def check_finite(value: torch.Tensor, what: str, step: int) -> None:
    """Raise a ``FloatingPointError`` that says where training diverged and what to try."""
    if not torch.isfinite(value).all():
        raise FloatingPointError(
            f"{what} became non-finite at iteration {step}. Lower the learning rate or the step size eps, "
            f"use float64 for very small eps, or enable spectral normalization."
        )


def train_energy(
    energy: nn.Module,
    data: torch.Tensor,
    objective: Objective,
    n_iter: int,
    batch_size: int = 200,
    lr: float = 4e-3,
    optimizer: str = "adam",
    monitor: Objective | None = None,
    monitor_every: int = 0,
    progress: bool = True,
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Fit ``energy`` to ``data`` by minimizing ``objective(energy, batch).mean()`` with minibatches.

    ``objective`` is any per-sample loss, e.g. ``mvl.objectives.sm_sliced`` or
    ``functools.partial(mvl.objectives.sm_mvl, eps=1e-3)``. Every ``monitor_every`` iterations the mean of
    ``monitor`` (default: the training objective) on a fixed held-in batch is recorded. Returns a history
    with ``"iter"``, ``"loss"`` (training loss per iteration), ``"monitor_iter"``, ``"monitor"`` and
    ``"seconds"``. Raises ``FloatingPointError`` if the loss becomes NaN or infinite.
    """
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    params = [p for p in energy.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    elif optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam', 'rmsprop' or 'sgd'")
    n = data.shape[0]
    monitor_fn = monitor or objective
    monitor_batch = data[torch.randperm(n)[: min(n, 1000)]]
    hist: dict[str, list[float]] = {"iter": [], "loss": [], "monitor_iter": [], "monitor": [], "seconds": []}
    steps = range(1, n_iter + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc or getattr(objective, "__name__", "training"), leave=False)
    start = time.perf_counter()
    energy.train()
    for it in steps:
        idx = torch.randint(0, n, (min(batch_size, n),))
        # one evaluation of every parametrized weight per iteration: spectral normalization otherwise runs a
        # power-iteration step at *each* forward call, so E(x) and E(x⁻) inside one MVL/CD-1 estimate would
        # use slightly different networks, an error that the 1/ε of those estimators blows up (chapter 4)
        with parametrize.cached():
            loss = objective(energy, data[idx]).mean()
        check_finite(loss, "the training loss", it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist["iter"].append(it)
        hist["loss"].append(loss.item())
        if monitor_every and (it % monitor_every == 0 or it == n_iter):
            with parametrize.cached():
                value = monitor_fn(energy, monitor_batch).mean().detach()
            check_finite(value, "the monitored objective", it)
            hist["monitor_iter"].append(it)
            hist["monitor"].append(value.item())
    hist["seconds"].append(time.perf_counter() - start)
    return hist


def time_step(
    energy: nn.Module, objective: Objective, x: torch.Tensor, repeats: int = 3, warmup: int = 1
) -> float:
    """Median wall time in seconds of one training step's work: ``objective(energy, x).mean()`` and its
    backward pass (chapter 3 times the estimators of score matching as the dimension grows).

    ``warmup`` untimed calls come first (allocations, lazy initialization); on a GPU the clock waits
    for the device to finish.
    """
    for name, value, lo in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    for i in range(warmup + repeats):
        energy.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        loss = objective(energy, x).mean()
        loss.backward()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    energy.zero_grad(set_to_none=True)
    check_finite(loss.detach(), "the timed objective", warmup + repeats)
    return float(sorted(times)[len(times) // 2])


def param_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """The flattened θ-gradient of ``loss.mean()`` over all of ``model``'s parameters (zeros where a
    parameter gets no gradient). Chapters 3 and 5 compare estimators by the cosine of these vectors.
    """
    model.zero_grad(set_to_none=True)
    loss.mean().backward()
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return torch.cat(grads)
