"""Wasserstein auto-encoders with a hyperspherical or Euclidean latent space (chapter 10; WMVL paper §4.2, §6.2.2).

A WAE (Tolstikhin et al., 2018) with a deterministic encoder z = f(x) and decoder G minimizes

    E_x c(G(f(x)), x) + λ · D(q̃, p),        q̃ = the aggregated posterior, the law of f(x) for x ~ data,

with c the Bernoulli cross-entropy of the decoder's logits and λ = 10. Two choices of D:

* **WAE-MVL** (the paper's method): the exclusive KL(q̃‖p) = −H[q̃] − E_q̃ log p. The density of q̃ is unknown,
  but the gradient of its entropy needs only its score (paper eq. 19): ∇_φ H[q̃] = −E[∇_z log q̃(z) · ∂z/∂φ].
  A *marginal* energy E(z) ≈ −log q̃(z) + const is fitted to the codes by minimum velocity learning —
  :func:`mvl.objectives.sm_riemannian_mvl` on the sphere Sⁿ with the uniform prior,
  :func:`mvl.objectives.sm_mvl` in Rⁿ with N(0, I) — and :func:`neg_entropy_surrogate` turns its score
  −∇E (detached) into a scalar whose encoder gradient is that of −H[q̃] (:func:`kl_surrogate`).
* **WAE-GAN** (the baseline): a discriminator D(z) between prior samples (label 1) and codes (label 0)
  (:func:`discriminator_loss`), and the non-saturating generator loss −E log σ(D(f(x))) as the divergence
  term (:func:`gan_generator_loss`).

Architecture (the authors' released ``src/models.py``, ``ImplicitAE`` with ``eps_dim = 0``: chapter 9's
implicit encoder without its noise input, as their WAE script runs it): encoder 784 → 256 tanh → 256 tanh → n+1, normalized onto Sⁿ (``latent="sphere"``), or
→ n (``"euclidean"``); the decoder, the energy and the discriminator see z·√(n+1) on the sphere (the
authors' ``rescale_sph_latent``, so that codes have norm ~√dim as in the Euclidean case) and z in Rⁿ; decoder
→ 256 tanh → 256 tanh → 784 logits. The energy is the score-net-inspired E(z) = z̃ᵀψ(z̃), ψ: 2 × 256 tanh
(:class:`mvl.energies.ScoreNetEnergy` on z̃ = scaled z); the discriminator a 2 × 256 tanh MLP with one logit.
Both are penalized by λ_E · mean(value²) with λ_E = 10⁻⁵ (the released code's ``grad_penalty``, which is an
L2 penalty on the *outputs*, not a gradient penalty; for the energy it also penalizes E at the points after
the Langevin step, which lie O(√ε) from the codes, here only E at the codes). RMSProp 10⁻³ for every network,
batch 128.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..energies import ScoreNetEnergy, energy_and_grad, mlp
from ..fitting import check_finite
from ..manifolds import Sphere
from ..objectives import sm_mvl, sm_riemannian_mvl
from .fid import check_images
from .mnist import ImageData
from .vae import _train_batches, rng_state, set_rng_state

LATENTS = ("sphere", "euclidean")
REGULARIZERS = ("mvl", "gan")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _positive_float(name: str, value: Any, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
            strict and value == 0):
        raise ValueError(f"{name} must be a {'positive' if strict else 'non-negative'} finite number, got {value!r}")
    return float(value)


class LatentSpace:
    """Where the codes live: Sⁿ ⊂ Rⁿ⁺¹ with the uniform prior, or Rⁿ with N(0, I) (``n`` the intrinsic dimension)."""

    def __init__(self, kind: str, n: int):
        if kind not in LATENTS:
            raise ValueError(f"unknown latent space {kind!r}: choose one of {LATENTS}")
        self.kind, self.n = kind, _positive_int("the latent dimension n", n)
        self.sphere = Sphere(n) if kind == "sphere" else None
        self.dim = n + 1 if kind == "sphere" else n
        """The dimension of the code vectors (ambient dimension n + 1 on the sphere)."""
        self.scale = math.sqrt(self.dim) if kind == "sphere" else 1.0
        """The factor the decoder, the energy and the discriminator multiply the codes by."""

    def __repr__(self) -> str:
        return f"LatentSpace({self.kind!r}, n={self.n})"

    def check_codes(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(z) or z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"codes in {self} must be a tensor [batch, {self.dim}], got {tuple(getattr(z, 'shape', ()))}")
        if self.sphere is not None:
            self.sphere.check_points(z)
        return z

    def sample_prior(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """``n`` draws of the prior: uniform on Sⁿ, or N(0, I) in Rⁿ."""
        n = _positive_int("the number of prior samples", n)
        if self.sphere is not None:
            return self.sphere.uniform(n, dtype=dtype, generator=generator)
        return torch.randn(n, self.dim, dtype=dtype, generator=generator)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) per code: −log|Sⁿ| (w.r.t. the surface measure), or the standard normal log density."""
        self.check_codes(z)
        if self.sphere is not None:
            return torch.full(z.shape[:1], -self.sphere.log_volume(), dtype=z.dtype, device=z.device)
        return -0.5 * (z**2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)


class Scaled(nn.Module):
    """``module(scale · z)``: the decoder, energy and discriminator all see the rescaled codes."""

    def __init__(self, module: nn.Module, scale: float):
        super().__init__()
        self.module, self.scale = module, float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.module(self.scale * z)


class WAE(nn.Module):
    """Deterministic encoder and decoder of chapter 10 (see the module docstring for the architecture)."""

    def __init__(self, latent: str = "sphere", n: int = 8, hidden: int = 256, input_dim: int = 784):
        super().__init__()
        self.space = LatentSpace(latent, n)
        _positive_int("hidden", hidden)
        self.input_dim = _positive_int("input_dim", input_dim)
        self.encoder = nn.Sequential(nn.Linear(input_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, self.space.dim))
        self.decoder = Scaled(nn.Sequential(nn.Linear(self.space.dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                            nn.Tanh(), nn.Linear(hidden, input_dim)), self.space.scale)

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_dim == 784:
            return check_images(x).reshape(len(x), 784)
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"inputs must be a tensor [batch, {self.input_dim}], got {tuple(getattr(x, 'shape', ()))}")
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The codes f(x): on the sphere the network's output normalized to unit length."""
        h = self.encoder(self._check_x(x))
        return h / h.norm(dim=-1, keepdim=True) if self.space.sphere is not None else h

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.space.check_codes(z))

    def reconstruction(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """c(G(z), x): the Bernoulli cross-entropy per image, summed over pixels ``[batch]`` (z = f(x) by default)."""
        x = self._check_x(x)
        z = self.encode(x) if z is None else z
        return F.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, binarize: bool = True) -> torch.Tensor:
        """``n`` decoded prior samples ``[n, 784]``: Bernoulli draws of σ(G(z)) (what FID compares with the
        binarized test set), or the probabilities themselves with ``binarize=False``."""
        z = self.space.sample_prior(n, generator, dtype=next(self.parameters()).dtype)
        probs = torch.sigmoid(self.decode_logits(z.to(next(self.parameters()).device))).cpu()
        return torch.bernoulli(probs, generator=generator) if binarize else probs


def marginal_energy(space: LatentSpace, hidden: int = 256) -> Scaled:
    """The marginal energy E(z) = z̃ᵀψ(z̃), z̃ = scale · z, ψ: 2 × ``hidden`` tanh (WAE-MVL)."""
    return Scaled(ScoreNetEnergy(space.dim, (hidden, hidden), "tanh"), space.scale)


def discriminator(space: LatentSpace, hidden: int = 256) -> Scaled:
    """The WAE-GAN discriminator: one logit of z̃ = scale · z through 2 × ``hidden`` tanh (prior = 1, codes = 0)."""
    net = mlp([space.dim, hidden, hidden, 1], "tanh")
    return Scaled(net, space.scale)


# --------------------------------------------------------------------------------------------------------
# The divergence terms and the losses of the auxiliary networks.
# --------------------------------------------------------------------------------------------------------


def score(energy: nn.Module, z: torch.Tensor, space: LatentSpace) -> torch.Tensor:
    """The estimated score −∇E(z) of the aggregated posterior, detached: on the sphere the Riemannian gradient
    (the tangential part of −∇E), in Rⁿ the ordinary one."""
    space.check_codes(z)
    if space.sphere is not None:
        return -space.sphere.riemannian_gradient(energy, z.detach())
    _, g = energy_and_grad(energy, z.detach(), create_graph=False)
    return -g.detach()


def neg_entropy_surrogate(energy: nn.Module, z: torch.Tensor, space: LatentSpace) -> torch.Tensor:
    """A scalar whose gradient in the encoder's parameters is the score estimate of ∇(−H[q̃]) (paper eq. 19):
    mean over the batch of s(z)·z with s = −∇E(z) detached (:func:`score`), since
    ∇_φ(−H[q̃]) = E[∇_z log q̃(z) · ∂z/∂φ] when z = f_φ(x) and −∇E ≈ ∇ log q̃. Its *value* is not −H."""
    return (score(energy, z, space) * z).sum(-1).mean()


def kl_surrogate(energy: nn.Module, z: torch.Tensor, space: LatentSpace) -> torch.Tensor:
    """WAE-MVL's divergence term: a scalar with the gradient of KL(q̃‖p) = −H[q̃] − E log p(z) in the encoder."""
    return neg_entropy_surrogate(energy, z, space) - space.log_prior(z).mean()


def energy_loss(energy: nn.Module, z: torch.Tensor, space: LatentSpace, eps: float = 1e-3, l2: float = 1e-5,
                rescale: bool = True) -> torch.Tensor:
    """The MVL loss fitting e^{−E} to the codes (detached): the mean of :func:`mvl.objectives.sm_riemannian_mvl`
    on the sphere or :func:`mvl.objectives.sm_mvl` in Rⁿ (step ``eps``, control variate; ``rescale=True`` is the
    released code's per-sample step ε/max(1, ‖drift‖²)), plus ``l2`` · mean E(z)²."""
    eps, l2 = _positive_float("eps", eps), _positive_float("l2", l2, strict=False)
    z = space.check_codes(z).detach()
    if space.sphere is not None:
        loss = sm_riemannian_mvl(energy, z, space.sphere, eps, rescale=rescale).mean()
    else:
        loss = sm_mvl(energy, z, eps, rescale=rescale).mean()
    return loss + l2 * (energy(z) ** 2).mean() if l2 > 0 else loss


def discriminator_loss(disc: nn.Module, codes: torch.Tensor, prior: torch.Tensor, l2: float = 1e-5) -> torch.Tensor:
    """The WAE-GAN discriminator's loss: −E_p log σ(D(z)) − E_q̃ log(1 − σ(D(z))) (codes detached) plus
    ``l2`` · mean D(codes)² × 2 (the released code's output penalty)."""
    l2 = _positive_float("l2", l2, strict=False)
    if codes.dim() != 2 or prior.shape[1:] != codes.shape[1:]:
        raise ValueError(f"codes {tuple(codes.shape)} and prior samples {tuple(prior.shape)} must both be [batch, dim]")
    d_q, d_p = disc(codes.detach()).squeeze(-1), disc(prior).squeeze(-1)
    loss = -F.logsigmoid(d_p).mean() - F.logsigmoid(-d_q).mean()
    return loss + 2 * l2 * (d_q**2).mean() if l2 > 0 else loss


def gan_generator_loss(disc: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """WAE-GAN's divergence term, the non-saturating generator loss −E log σ(D(f(x))): codes should be
    classified as prior samples."""
    return -F.logsigmoid(disc(z).squeeze(-1)).mean()


# --------------------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------------------

WAE_HISTORY_KEYS = ("epoch", "step", "train_reconstruction", "train_divergence", "train_aux_loss",
                    "valid_reconstruction", "seconds")
"""Per epoch: training averages of the reconstruction cross-entropy, the divergence term (the KL surrogate's
−E log p part is constant on the sphere, so for WAE-MVL this is the surrogate's value, not the KL), the energy's
or discriminator's loss; the validation reconstruction; cumulative seconds."""


class WAETrainer:
    """WAE-MVL or WAE-GAN training (chapter 10), one epoch at a time, with its whole state saveable (the
    interface ``python -m mvl.train`` drives, as :class:`mvl.ae.vae.VAETrainer`).

    Each step on a batch x (dynamically binarized): codes z = f(x); the auto-encoder takes one RMSProp step on
    mean c(G(z), x) + λ·D with D = :func:`kl_surrogate` (``"mvl"``) or :func:`gan_generator_loss` (``"gan"``);
    then the auxiliary network takes one RMSProp step on the same codes (detached, before the auto-encoder's
    update): :func:`energy_loss` or :func:`discriminator_loss` against as many prior samples. ``steps`` bounds
    the total number of updates (the paper: 200 000); an epoch is one pass over ``train``.
    """

    history_keys = WAE_HISTORY_KEYS

    def __init__(self, model: WAE, aux: nn.Module, regularizer: str, train: ImageData | torch.Tensor,
                 valid: torch.Tensor | None = None, steps: int = 200_000, batch_size: int = 128, lr: float = 1e-3,
                 aux_lr: float = 1e-3, lam: float = 10.0, eps: float = 1e-3, aux_l2: float = 1e-5,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None):
        if regularizer not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {regularizer!r}: choose one of {REGULARIZERS}")
        self.steps, self.batch_size = _positive_int("steps", steps), _positive_int("batch_size", batch_size)
        self.lam, self.eps = _positive_float("lam", lam), _positive_float("eps", eps)
        self.aux_l2 = _positive_float("aux_l2", aux_l2, strict=False)
        self.regularizer, self.generator = regularizer, generator
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model, self.aux = model.to(self.device), aux.to(self.device)
        self.train, self.valid = train, (model._check_x(valid).to(self.device) if valid is not None else None)
        self.opt = torch.optim.RMSprop(model.parameters(), lr=_positive_float("lr", lr))
        self.aux_opt = torch.optim.RMSprop(aux.parameters(), lr=_positive_float("aux_lr", aux_lr))
        self.hist: dict[str, list] = {k: [] for k in WAE_HISTORY_KEYS}
        self.step, self.epoch, self.elapsed = 0, 0, 0.0

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One auto-encoder update and one update of the energy or discriminator on the batch ``x``."""
        model, space = self.model, self.model.space
        self.step += 1
        z = model.encode(x)
        rec = model.reconstruction(x, z).mean()
        div = kl_surrogate(self.aux, z, space) if self.regularizer == "mvl" else gan_generator_loss(self.aux, z)
        loss = rec + self.lam * div
        check_finite(loss, "the WAE objective", self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        codes = z.detach()
        if self.regularizer == "mvl":
            aux_loss = energy_loss(self.aux, codes, space, self.eps, self.aux_l2)
        else:
            prior = space.sample_prior(len(codes), self.generator).to(self.device)
            aux_loss = discriminator_loss(self.aux, codes, prior, self.aux_l2)
        check_finite(aux_loss, "the energy's MVL loss" if self.regularizer == "mvl" else "the discriminator's loss",
                     self.step)
        self.aux_opt.zero_grad(set_to_none=True)
        aux_loss.backward()
        self.aux_opt.step()
        return {"reconstruction": rec.item(), "divergence": div.item(), "aux_loss": aux_loss.item()}

    def run_epoch(self) -> dict[str, float]:
        """One pass over the training data (or the updates left), then the validation reconstruction."""
        if self.done:
            raise RuntimeError("training is finished; nothing left to run")
        start = time.perf_counter()
        self.model.train()
        sums, count = torch.zeros(3, dtype=torch.float64), 0
        for x in _train_batches(self.train, self.batch_size, self.device, self.generator):
            out = self.train_step(x)
            sums += torch.tensor([out["reconstruction"], out["divergence"], out["aux_loss"]], dtype=torch.float64)
            count += 1
            if self.done:
                break
        self.epoch += 1
        val = math.nan
        if self.valid is not None:
            with torch.no_grad():
                val = torch.cat([self.model.reconstruction(b) for b in self.valid.split(1000)]).mean().item()
        self.elapsed += time.perf_counter() - start
        means = (sums / max(count, 1)).tolist()
        for k, v in zip(WAE_HISTORY_KEYS, (self.epoch, self.step, *means, val, self.elapsed)):
            self.hist[k].append(v)
        return {"reconstruction": val}

    def finish(self) -> dict[str, Any]:
        hist: dict[str, Any] = dict(self.hist)
        hist.update(best_epoch=self.epoch, stopped_early=False, train_seconds=self.elapsed, loaded=False)
        return hist

    def state_dict(self) -> dict[str, Any]:
        return {"model": copy.deepcopy(self.model.state_dict()), "aux": copy.deepcopy(self.aux.state_dict()),
                "optimizer": copy.deepcopy(self.opt.state_dict()), "aux_optimizer": copy.deepcopy(self.aux_opt.state_dict()),
                "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, "hist": copy.deepcopy(self.hist),
                **rng_state(self.generator)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.aux.load_state_dict(state["aux"])
        self.opt.load_state_dict(state["optimizer"])
        self.aux_opt.load_state_dict(state["aux_optimizer"])
        self.step, self.epoch, self.elapsed = state["step"], state["epoch"], state["elapsed"]
        self.hist = copy.deepcopy(state["hist"])
        set_rng_state(state, self.generator)


def great_circle(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Points ``[len(t), d]`` on the shorter great circle from the unit vector ``z0`` to ``z1`` (``[d]`` each) at
    the fractions ``t`` of the way (chapter 10's interpolations between codes on Sⁿ; "slerp"):

        z(t) = (sin((1 − t)θ) z₀ + sin(tθ) z₁) / sin θ,      cos θ = z₀·z₁,

    the geodesic at constant speed, so equal steps in ``t`` are equal angles. Antipodal points have no unique
    great circle and raise ``ValueError``."""
    for name, z in (("z0", z0), ("z1", z1)):
        if not torch.is_tensor(z) or z.dim() != 1 or not torch.isfinite(z).all():
            raise ValueError(f"{name} must be a finite vector [d] (one point of the sphere), got "
                             f"{tuple(getattr(z, 'shape', ()))}")
        if abs(z.double().norm().item() - 1.0) > 1e-4:
            raise ValueError(f"{name} must have unit norm (a point of the sphere), got norm {z.norm().item():.4g}")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    t = torch.as_tensor(t, dtype=z0.dtype, device=z0.device).reshape(-1, 1)
    cos = (z0 * z1).sum().clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    if math.pi - theta.item() < 1e-3:
        raise ValueError("z0 and z1 are (nearly) antipodal: the great circle between them is not unique")
    if theta.item() < 1e-6:
        return z0.expand(len(t), -1).clone()
    return (torch.sin((1 - t) * theta) * z0 + torch.sin(t * theta) * z1) / torch.sin(theta)


def build_wae(latent: str, n: int, regularizer: str, hidden: int = 256) -> tuple[WAE, nn.Module]:
    """A WAE and its auxiliary network: the marginal energy (``"mvl"``) or the discriminator (``"gan"``)."""
    if regularizer not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {regularizer!r}: choose one of {REGULARIZERS}")
    model = WAE(latent, n, hidden)
    aux = marginal_energy(model.space, hidden) if regularizer == "mvl" else discriminator(model.space, hidden)
    return model, aux


__all__ = ["LATENTS", "LatentSpace", "REGULARIZERS", "Scaled", "WAE", "WAETrainer", "WAE_HISTORY_KEYS", "build_wae",
           "discriminator", "discriminator_loss", "energy_loss", "gan_generator_loss", "great_circle", "kl_surrogate", "marginal_energy",
           "neg_entropy_surrogate", "score"]
