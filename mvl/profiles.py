"""Run configuration shared by every chapter: profiles, seeding, device selection.

Every notebook starts with a papermill ``parameters`` cell (``profile``, ``device``, ``seed`` and the
chapter's knobs, ``None`` meaning "take the profile's value") followed by one call to :func:`setup`.
The profiles are

* ``quick``: a smoke run, about a minute on two CPU cores (what ``pytest`` executes through nbval);
* ``book``: what the stored outputs of the rendered book show;
* ``paper``: the settings of the source paper, meant for a GPU.

The environment variable ``MVL_PROFILE`` overrides the ``profile`` parameter, so that the test suite can
execute every notebook in its quick profile without editing it.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

PROFILES = ("quick", "book", "paper")
"""The profiles every chapter defines."""

PROFILE_ENV = "MVL_PROFILE"
"""Environment variable that overrides a notebook's ``profile`` parameter."""

RECORD_ENV = "MVL_RUN_RECORD"
"""If set, :func:`setup` writes the resolved profile and device to this JSON file (used by ``mvl.book``)."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) random number generators."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA when a GPU is visible, else the CPU; check explicit requests.

    Raises ``ValueError`` when CUDA is asked for on a machine without a GPU, or the name is unknown.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:k]', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:k]'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is visible; use device='auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use 'auto', 'cpu' or 'cuda[:k]'")
    return dev


def device_description(device: torch.device) -> str:
    """A human-readable name of the device, e.g. ``'cuda (NVIDIA H200)'`` or ``'cpu (2 threads)'``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


class Config(dict):
    """The resolved run configuration: a dict whose keys are also attributes (``cfg.lr``).

    Setting an attribute sets the key (``cfg.epochs = 10`` is ``cfg["epochs"] = 10``), so that anything
    keyed on the dict — a checkpoint's cache key — sees the change.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"configuration has no entry {name!r}; entries: {sorted(self)}") from None


def _check_value(name: str, value: Any, default: Any, bounds: tuple | None) -> Any:
    """Type- and range-check one knob against the type of its profile default and its bounds."""
    lo, hi = bounds if bounds is not None else (None, None)

    def check_number(v: Any, what: str) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{what} must be a number, got {v!r}")
        if not math.isfinite(float(v)):
            raise ValueError(f"{what} must be finite, got {v!r}")
        if bounds is None and v <= 0:
            raise ValueError(f"{what} must be positive, got {v!r}")
        if lo is not None and v < lo:
            raise ValueError(f"{what} must be >= {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise ValueError(f"{what} must be <= {hi}, got {v!r}")
        return v

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(check_number(value, name))
    if isinstance(default, float):
        return float(check_number(value, name))
    if isinstance(default, (list, tuple)) and default and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in default
    ):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
            raise ValueError(f"{name} must be a non-empty list of numbers, got {value!r}")
        return [check_number(v, f"each entry of {name}") for v in value]
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    return value


def resolve_profile(
    profile: str,
    defaults: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Any] | None = None,
    bounds: Mapping[str, tuple] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Resolve a chapter's knobs: the profile's defaults, then every override that is not ``None``.

    ``MVL_PROFILE`` in the environment takes precedence over ``profile``. Numeric knobs must be positive
    and finite unless ``bounds[name] = (lo, hi)`` (inclusive, ``None`` for open) says otherwise;
    ``choices[name]`` restricts a knob to a set of values. Every problem raises ``ValueError`` naming the
    knob and what would be accepted.
    """
    env = os.environ.get(PROFILE_ENV)
    if env:
        profile = env.strip()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {PROFILES}")
    missing = [p for p in PROFILES if p not in defaults]
    if missing:
        raise ValueError(f"the chapter defines no defaults for profile(s) {missing}")
    base = dict(defaults[profile])
    overrides = dict(overrides or {})
    bounds = dict(bounds or {})
    choices = dict(choices or {})
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; this chapter's parameters are {sorted(base)}")
    for name in set(bounds) | set(choices):
        if name not in base:
            raise ValueError(f"bounds/choices given for {name!r}, which is not a parameter of this chapter")
    resolved = {}
    for name, default in base.items():
        value = overrides.get(name)
        value = default if value is None else value
        if name in choices:
            if value not in choices[name]:
                raise ValueError(f"{name} must be one of {list(choices[name])}, got {value!r}")
        else:
            value = _check_value(name, value, default, bounds.get(name))
        resolved[name] = value
    return profile, resolved


def setup(
    profile: str = "book",
    device: str = "auto",
    seed: int = 0,
    *,
    defaults: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Any] | None = None,
    bounds: Mapping[str, tuple] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    threads: int | None = 1,
    verbose: bool = True,
) -> Config:
    """Resolve a notebook's configuration, seed everything, pick the device and print a summary.

    This is the one call that follows every chapter's ``parameters`` cell. ``defaults`` maps each profile
    (``quick``, ``book``, ``paper``) to the chapter's knobs; ``overrides`` holds the parameters cell's
    values (``None`` = take the profile's). ``threads`` sets ``torch.set_num_threads`` (1 suits the tiny
    models of the early chapters, ``None`` leaves PyTorch's default). TF32 is switched off, because several
    estimators subtract nearly equal numbers.
    """
    profile, knobs = resolve_profile(profile, defaults, overrides, bounds, choices)
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        torch.set_num_threads(threads)
    seed_everything(seed)
    dev = get_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = Config(profile=profile, device=dev, seed=int(seed), **knobs)
    desc = device_description(dev)
    if verbose:
        print(f"profile: {profile}   device: {desc}   torch {torch.__version__}   seed: {seed}")
        print("parameters: " + ", ".join(f"{k}={v!r}" for k, v in knobs.items()))
    record = os.environ.get(RECORD_ENV)
    if record:
        with open(record, "w") as fh:
            json.dump({"profile": profile, "device": desc, "torch": torch.__version__}, fh)
    return cfg
