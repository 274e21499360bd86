"""Inverse autoregressive flows: the variational adversary of the adversarial CD prior (seed 003 Algorithm 2,
eqs. 9–10; chapter 8).

Adversarial contrastive divergence replaces the intractable log Z of an energy-based prior by the variational
bound log Z ≥ E_q[−E(z)] + H[q] (seed 003 eq. 9), maximized over a flexible, sampleable q with a tractable
density; the seed paper uses a 4-layer inverse autoregressive flow (IAF; Kingma et al., 2016). What the
adversary needs is fast *sampling with the log density of the samples*, which is exactly what an IAF gives
in one parallel pass: :meth:`IAF.rsample_and_log_prob`. The density of an arbitrary point needs the inverse,
which is sequential (d passes per layer; :meth:`IAF.log_prob`), and is used for checks and figures.

A maintained flow library would do (``zuko`` installs from PyPI without further dependencies); the
compact version here avoids pinning another package for about a hundred lines, and keeps the update rule
visible for the chapter. Building blocks: :class:`MADE` (Germain et al., 2015), :class:`IAFLayer` (the
numerically stable update of Kingma et al., 2016, eqs. 14–15), :class:`IAF` (a learnable diagonal Gaussian
base, then the layers with the variable order reversed between them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..energies import make_activation

LOG_2PI = math.log(2 * math.pi)


def _check_pos_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 ``mask`` ``[out, in]`` (MADE's connectivity)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """A masked autoencoder for distribution estimation (Germain et al., 2015; chapter 8).

    Maps z ``[..., d]`` to ``n_outputs`` vectors ``[..., d]`` each (stacked as ``[..., n_outputs, d]``) such
    that output i depends only on z_1, …, z_{i−1}: the Jacobian of every output with respect to z is strictly
    lower triangular. Hidden unit k gets degree m_k ∈ {1, …, d − 1} (cyclically); it sees inputs of degree
    ≤ m_k, and output i sees hidden units of degree < i. ``hidden=()`` gives the masked linear map.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), n_outputs: int = 2, activation: str = "elu"):
        super().__init__()
        _check_pos_int(dim, "dim")
        _check_pos_int(n_outputs, "n_outputs")
        for h in hidden:
            _check_pos_int(h, "every hidden size")
        self.dim, self.n_outputs = dim, n_outputs
        degrees = [torch.arange(1, dim + 1)]
        for h in hidden:
            degrees.append(torch.arange(h) % max(1, dim - 1) + 1)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(degrees[:-1], degrees[1:]):
            layers += [MaskedLinear(len(d_in), len(d_out), d_out[:, None] >= d_in[None, :]), make_activation(activation)]
        out_deg = torch.arange(1, dim + 1).repeat(n_outputs)
        layers.append(MaskedLinear(len(degrees[-1]), dim * n_outputs, out_deg[:, None] > degrees[-1][None, :]))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return out.reshape(*z.shape[:-1], self.n_outputs, self.dim)


class IAFLayer(nn.Module):
    """One IAF step (Kingma et al., 2016, eqs. 14–15; chapter 8):

        [m, s] = MADE(z),   σ = sigmoid(s + ``forget_bias``),   z' = σ ⊙ z + (1 − σ) ⊙ m,

    with log |det ∂z'/∂z| = Σᵢ log σᵢ (the Jacobian is triangular with diagonal σ, as m, s depend on z_{<i}
    only). The forward map is one MADE pass; the inverse is sequential (:meth:`inverse`).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), activation: str = "elu", forget_bias: float = 1.0):
        super().__init__()
        self.made = MADE(dim, hidden, 2, activation)
        self.forget_bias = float(forget_bias)

    def _gates(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.made(z)
        m, s = out[..., 0, :], out[..., 1, :] + self.forget_bias
        return m, s

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z', log |det ∂z'/∂z|) for z ``[..., d]``; the log-det is ``[...]``."""
        m, s = self._gates(z)
        sigma = torch.sigmoid(s)
        return sigma * z + (1 - sigma) * m, F.logsigmoid(s).sum(-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The z with forward(z) = y: d sequential passes (after pass i the first i coordinates are exact)."""
        z = torch.zeros_like(y)
        for _ in range(self.made.dim):
            m, s = self._gates(z)
            sigma = torch.sigmoid(s)
            z = (y - (1 - sigma) * m) / sigma
        return z


class IAF(nn.Module):
    """An inverse autoregressive flow q(z) (Kingma et al., 2016): the adversary of seed 003 Algorithm 2.

    z₀ = μ₀ + exp(log s₀) ⊙ ε with ε ~ N(0, I) (learnable ``base_loc``, ``base_log_scale``; an IAF step only
    ever shrinks the first coordinate of its order, so the base must carry the scale), then ``n_layers``
    :class:`IAFLayer` steps with the order of the coordinates reversed between consecutive layers, so that
    every coordinate depends on every other after two layers. ``hidden`` are the MADE sizes (``()`` for the
    masked linear flow).

    log q(z) = log N(ε) − Σᵢ log s₀ᵢ − Σ_layers log |det|.
    """

    def __init__(self, dim: int, n_layers: int = 4, hidden: Sequence[int] = (64, 64), activation: str = "elu",
                 forget_bias: float = 1.0):
        super().__init__()
        _check_pos_int(dim, "dim")
        _check_pos_int(n_layers, "n_layers")
        self.dim = dim
        self.base_loc = nn.Parameter(torch.zeros(dim))
        self.base_log_scale = nn.Parameter(torch.zeros(dim))
        self.layers = nn.ModuleList([IAFLayer(dim, hidden, activation, forget_bias) for _ in range(n_layers)])

    def _check(self, z: torch.Tensor, name: str) -> None:
        if not torch.is_tensor(z) or z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"{name} must be a tensor [..., {self.dim}], got {getattr(z, 'shape', type(z))}")

    def forward_and_log_det(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow's map ε ↦ z and log |det ∂z/∂ε|, for ε ``[..., d]``."""
        self._check(eps, "eps")
        z = self.base_loc + torch.exp(self.base_log_scale) * eps
        log_det = self.base_log_scale.sum().expand(eps.shape[:-1])
        for i, layer in enumerate(self.layers):
            if i > 0:
                z = z.flip(-1)
            z, ld = layer(z)
            log_det = log_det + ld
        if len(self.layers) % 2 == 0:  # undo the last reversal so that the output order is the input order
            z = z.flip(-1)
        return z, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """ε with :meth:`forward_and_log_det` (ε) = z (sequential: d MADE passes per layer)."""
        self._check(z, "z")
        if len(self.layers) % 2 == 0:
            z = z.flip(-1)
        for i in reversed(range(len(self.layers))):
            z = self.layers[i].inverse(z)
            if i > 0:
                z = z.flip(-1)
        return (z - self.base_loc) * torch.exp(-self.base_log_scale)

    def _log_normal(self, eps: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + eps**2).sum(-1)

    def rsample_and_log_prob(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n reparameterized samples ``[n, d]`` and their log density log q(z) ``[n]``, in one parallel pass
        (what the adversary's objective E_q[−E(z)] + H[q] = E_q[−E(z) − log q(z)] needs; seed 003 eq. 9)."""
        _check_pos_int(n, "n")
        eps = torch.randn(n, self.dim, dtype=self.base_loc.dtype, device=self.base_loc.device)
        z, log_det = self.forward_and_log_det(eps)
        return z, self._log_normal(eps) - log_det

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n samples ``[n, d]`` without gradient."""
        return self.rsample_and_log_prob(n)[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) of arbitrary points ``[..., d] → [...]`` through the sequential inverse (d passes per layer)."""
        eps = self.inverse(z)
        _, log_det = self.forward_and_log_det(eps)
        return self._log_normal(eps) - log_det


__all__ = ["IAF", "IAFLayer", "MADE", "MaskedLinear"]
