"""Implicit VAEs: an encoder without a density, its entropy gradient from a conditional energy fitted by MVL
(the chapter-9 paper's §4.2, eq. 19, and appendix D; chapter 9).

The implicit encoder draws z = f_φ(x, ξ), ξ ~ N(0, I): a neural sampler whose q_φ(z|x) has no closed form.
The ELBO E_q[log p(x|z) + log p(z)] + H[q_φ(z|x)] still has a pathwise gradient except for the entropy,

    ∇_φ H[q_φ(z|x)] = −E_ξ[∇_z log q_φ(z|x) · ∇_φ f_φ(x, ξ)]        (eq. 19; the term E_q[∇_φ log q_φ] = 0),

which needs only the *score* ∇_z log q. A conditional energy E_θ(z|x) is fitted to the encoder's samples by
minimum-velocity learning (one update per ELBO update) and −∇_z E_θ is used as the score. On the sphere Sⁿ
the densities are w.r.t. the surface measure, the score is the Riemannian gradient −grad E_θ, and the
energy is fitted by the Riemannian MVL estimator :func:`mvl.objectives.sm_riemannian_mvl` (appendix D). Since
z = f/‖f‖ moves only tangentially, ∇_φ f is tangent and only the Riemannian part of the score enters.

The architecture follows the authors' released code (``thu-ml/wmvl``, ``src/models.py`` ``ImplicitAE`` and
``src/optimizers.py`` ``ImplicitVAE``):

* encoder (:class:`ImplicitEncoder`): concat(x, ξ) → 256 tanh → 256 tanh → n + 1, normalized onto Sⁿ
  (Euclidean variant: → n, not normalized); noise size = n_z;
* decoder (:class:`LatentDecoder`): z·√(n + 1) → 256 tanh → 256 tanh → 784 logits (the released code's
  ``rescale_sph_latent``: unit vectors are scaled to norm √(n+1), the typical norm of a Gaussian code);
* conditional energy (:class:`ConditionalEnergy`): E(z|x) = ⟨ψ(z√(n+1), x), z√(n+1)⟩ with ψ = 2 × 256 tanh
  → n + 1 (the zᵀψ(z) form of chapter 1, whose score is a gradient field by construction);
* training (:class:`ImplicitVAETrainer`): one ELBO step for encoder and decoder, then one MVL step for the
  energy, with the per-sample rescaled step ε = 1e-3, an L2 penalty 1e-4 on energy values, RMSProp lr 1e-3.

Differences from the released code, by design: the L2 penalty is on E at the encoder samples only (the
released code adds E at the Langevin-perturbed points, O(√ε) away); RMSProp is ``torch.optim.RMSprop`` with
TF1's decay 0.9 and ε = 1e-10, but its accumulator starts at 0 (TF1 starts it at 1). The ELBO the trainer
reports uses −E_θ(z|x) as log q (as the released code prints it): it is off by the unknown log Z_θ(x) and is
a monitor, not a bound; test log-likelihoods come from AIS (:func:`mvl.ais.vae_log_likelihood`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..energies import evaluate_energy, mlp
from ..manifolds import Sphere
from ..objectives import sm_mvl, sm_riemannian_mvl
from .priors import StandardNormal
from .vae import BernoulliDecoder
from .vmf import HypersphericalUniform, hidden_stack


def _check_dim(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def latent_scale(latent_dim: int, spherical: bool) -> float:
    """√(n + 1) for Sⁿ ⊂ Rⁿ⁺¹ (the released code's ``rescale_sph_latent``), 1 for Euclidean latents."""
    return math.sqrt(latent_dim + 1) if spherical else 1.0


class ImplicitEncoder(nn.Module):
    """The implicit encoder z = f_φ(x, ξ), ξ ~ N(0, I_{noise_dim}) (chapter 9): concat(x, ξ) → hidden (tanh) →
    n + 1 values normalized onto Sⁿ (``spherical=True``), or n values in Rⁿ. ``latent_dim`` is n; the
    sample has ``code_dim`` = n + 1 (sphere) or n coordinates. ``noise_dim`` defaults to n (released code)."""

    def __init__(self, input_dim: int = 784, latent_dim: int = 8, noise_dim: int | None = None,
                 hidden: Sequence[int] = (256, 256), spherical: bool = True, activation: str = "tanh"):
        super().__init__()
        self.input_dim = _check_dim("input_dim", input_dim)
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        self.noise_dim = _check_dim("noise_dim", latent_dim if noise_dim is None else noise_dim)
        self.spherical = bool(spherical)
        self.sphere = Sphere(latent_dim) if self.spherical else None
        self.code_dim = latent_dim + 1 if self.spherical else latent_dim
        self.body = hidden_stack([input_dim + self.noise_dim, *hidden], activation)
        self.out = nn.Linear(hidden[-1], self.code_dim)

    def forward(self, x: torch.Tensor, n_samples: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples z ``[n, code_dim]`` (``n_samples=None``) or ``[n_samples, n, code_dim]`` for x ``[n, D]``."""
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"x must be a tensor [n, {self.input_dim}], got {getattr(x, 'shape', type(x))}")
        lead = x.shape[:1] if n_samples is None else (_check_dim("n_samples", n_samples), x.shape[0])
        xi = torch.randn(*lead, self.noise_dim, dtype=x.dtype, device=x.device, generator=generator)
        u = self.out(self.body(torch.cat([x.expand(*lead, x.shape[1]), xi], -1)))
        return F.normalize(u, dim=-1) if self.spherical else u


class LatentDecoder(BernoulliDecoder):
    """p(x|z): logits = MLP(scale · z), 2 × 256 tanh → ``output_dim`` (chapter 9; ``scale`` = √(n+1) on Sⁿ,
    :func:`latent_scale`). ``log_prob`` and ``mean`` are those of :class:`mvl.ae.vae.BernoulliDecoder`."""

    def __init__(self, latent_dim: int, output_dim: int = 784, hidden: Sequence[int] = (256, 256),
                 activation: str = "tanh", scale: float = 1.0):
        super().__init__(latent_dim, output_dim, hidden, body="elu")
        self.body = hidden_stack([latent_dim, *hidden], activation)  # replaces the parent's ELU body
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(self.scale * z))


ENERGY_FORMS = ("zpsi", "ffn")


class ConditionalEnergy(nn.Module):
    """E_θ(z|x) = ⟨ψ(s z, x), s z⟩, ψ: concat(s z, x) → hidden (tanh) → ``code_dim`` (chapter 9; s =
    ``scale``). The energy is defined on all of R^{code_dim}, and on the sphere only its values on Sⁿ matter.
    ``forward(z, x)``: z ``[..., n, code_dim]``, x ``[n, D]`` → ``[..., n]``.

    ``form="ffn"`` is the ablation of the paper's §6.2 ("directly using a feed-forward network for E does not
    work well in practice"): E = ψ(s z, x) with a scalar output. Either form's −∇_z E is a gradient field;
    zᵀψ is the paper's way to start from a score-network-like ψ (Song et al., 2019, fit the vector ψ itself
    as the score, which need not be conservative) and make it one."""

    def __init__(self, code_dim: int, input_dim: int = 784, hidden: Sequence[int] = (256, 256),
                 activation: str = "tanh", scale: float = 1.0, form: str = "zpsi"):
        super().__init__()
        if form not in ENERGY_FORMS:
            raise ValueError(f"unknown energy form {form!r}: choose one of {ENERGY_FORMS}")
        self.form = form
        self.code_dim = _check_dim("code_dim", code_dim)
        self.input_dim = _check_dim("input_dim", input_dim)
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)
        self.psi = mlp([code_dim + input_dim, *hidden, code_dim if form == "zpsi" else 1], activation)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.code_dim or x.shape[-1] != self.input_dim:
            raise ValueError(f"z must end in {self.code_dim} and x in {self.input_dim} coordinates, got "
                             f"{tuple(z.shape)} and {tuple(x.shape)}")
        sz = self.scale * z
        out = self.psi(torch.cat([sz, x.expand(*z.shape[:-1], x.shape[-1])], -1))
        return (out * sz).sum(-1) if self.form == "zpsi" else out[..., 0]


def conditional_score(energy: ConditionalEnergy, z: torch.Tensor, x: torch.Tensor, sphere: Sphere | None = None) -> torch.Tensor:
    """The score estimate −∇_z E_θ(z|x) at z ``[n, code_dim]``, detached (chapter 9): on a sphere the
    Riemannian gradient (tangent to Sⁿ, :meth:`mvl.manifolds.Sphere.riemannian_gradient`), else Euclidean."""
    if sphere is not None:
        return -sphere.riemannian_gradient(lambda y: energy(y, x), z.detach())
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(evaluate_energy(lambda y: energy(y, x), zz).sum(), zz)
    return -g.detach()


def entropy_surrogate(energy, z: torch.Tensor, x: torch.Tensor, sphere: Sphere | None = None) -> torch.Tensor:
    """A ``[n]`` tensor of zeros whose gradient in the encoder's parameters φ is eq. (19)'s estimate of ∇_φ H:

        s = −sg(ŝ(z)) · z − sg(·),   ∇_φ s = −ŝ(z) · ∇_φ f_φ(x, ξ),   ŝ = −∇_z E_θ(z|x) ≈ ∇_z log q_φ(z|x),

    with z = f_φ(x, ξ) (keep its graph) and ŝ from :func:`conditional_score` (Riemannian on ``sphere``). The
    score is detached, so nothing flows into the energy's parameters. Add ``s`` to the per-example ELBO."""
    score = conditional_score(energy, z, x, sphere)
    s = -(score.to(z.dtype) * z).sum(-1)
    return s - s.detach()


class ImplicitVAE(nn.Module):
    """An implicit VAE (chapter 9): :class:`ImplicitEncoder`, :class:`LatentDecoder`, :class:`ConditionalEnergy`
    and the prior (uniform on Sⁿ, or N(0, I) for Euclidean latents), built by :func:`build_implicit_vae`."""

    def __init__(self, encoder: ImplicitEncoder, decoder: LatentDecoder, energy: ConditionalEnergy, prior: nn.Module):
        super().__init__()
        self.encoder, self.decoder, self.energy, self.prior = encoder, decoder, energy, prior

    @property
    def sphere(self) -> Sphere | None:
        return self.encoder.sphere

    def elbo_terms(self, x: torch.Tensor) -> ImplicitELBO:
        """One sample z = f_φ(x, ξ) per example: the terms of the ELBO and its gradient (each ``[n]``)."""
        z = self.encoder(x)
        return ImplicitELBO(
            reconstruction=self.decoder.log_prob(x, z),
            log_prior=self.prior.log_prob(z),
            entropy_surrogate=entropy_surrogate(self.energy, z, x, self.sphere),
            approx_log_q=-self.energy(z, x).detach(),
        )

    def energy_loss(self, x: torch.Tensor, z: torch.Tensor | None = None, eps: float = 1e-3, l2: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
        """(MVL estimate of the conditional score-matching loss, L2 penalty mean E_θ(z|x)²) at encoder samples z
        (drawn without gradient when not given): Riemannian MVL on the sphere, Euclidean MVL in Rⁿ, both with the
        per-sample rescaled step ε/max(1, ‖drift‖²) of the released code. Minimize their sum."""
        if z is None:
            with torch.no_grad():
                z = self.encoder(x)
        z = z.detach()
        en = lambda y: self.energy(y, x)  # the batch rows of y and x are aligned
        if self.sphere is not None:
            j = sm_riemannian_mvl(en, z, self.sphere, eps, rescale=True)
        else:
            j = sm_mvl(en, z, eps, rescale=True)
        return j.mean(), l2 * (self.energy(z, x) ** 2).mean()


class ImplicitELBO(NamedTuple):
    """The per-example terms of an implicit VAE's ELBO (``[n]`` each; chapter 9)."""

    reconstruction: torch.Tensor
    log_prior: torch.Tensor
    entropy_surrogate: torch.Tensor
    approx_log_q: torch.Tensor

    @property
    def objective(self) -> torch.Tensor:
        """What the encoder and decoder maximize: log p(x|z) + log p(z) + s (value: without the entropy)."""
        return self.reconstruction + self.log_prior + self.entropy_surrogate

    @property
    def approx_elbo(self) -> torch.Tensor:
        """log p(x|z) + log p(z) + E_θ(z|x): the released code's monitor, off by log Z_θ(x) (not a bound)."""
        return self.reconstruction + self.log_prior - self.approx_log_q


def build_implicit_vae(latent_dim: int = 8, spherical: bool = True, input_dim: int = 784, hidden: int = 256,
                       noise_dim: int | None = None, energy_form: str = "zpsi") -> ImplicitVAE:
    """The chapter-9 implicit VAE with the released code's sizes (two hidden layers of ``hidden`` tanh units in
    every network; codes on Sⁿ scaled by √(n+1) before the decoder and the energy; ``energy_form`` as in
    :class:`ConditionalEnergy`)."""
    enc = ImplicitEncoder(input_dim, latent_dim, noise_dim, (hidden, hidden), spherical)
    scale = latent_scale(latent_dim, spherical)
    dec = LatentDecoder(enc.code_dim, input_dim, (hidden, hidden), "tanh", scale)
    energy = ConditionalEnergy(enc.code_dim, input_dim, (hidden, hidden), "tanh", scale, energy_form)
    prior = HypersphericalUniform(latent_dim) if spherical else StandardNormal(latent_dim)
    return ImplicitVAE(enc, dec, energy, prior)


class ImplicitVAETrainer:
    """One training step of an implicit VAE (chapter 9; the released ``ImplicitVAE.step``): an ELBO update of
    encoder and decoder (RMSProp, ``lr``), then ``energy_updates`` MVL updates of the conditional energy
    (RMSProp, ``energy_lr``) at fresh samples of the updated encoder, with MVL step ``eps`` and L2 weight
    ``l2``. :meth:`step` returns the monitored numbers as floats and raises ``FloatingPointError`` on NaNs."""

    def __init__(self, model: ImplicitVAE, lr: float = 1e-3, energy_lr: float = 1e-3, eps: float = 1e-3,
                 l2: float = 1e-4, energy_updates: int = 1):
        self.model = model
        self.eps, self.l2, self.energy_updates = eps, l2, _check_dim("energy_updates", energy_updates)
        ae_params = list(model.encoder.parameters()) + list(model.decoder.parameters())
        self.opt = torch.optim.RMSprop(ae_params, lr=lr, alpha=0.9, eps=1e-10)
        self.energy_opt = torch.optim.RMSprop(model.energy.parameters(), lr=energy_lr, alpha=0.9, eps=1e-10)

    def step(self, x: torch.Tensor) -> dict[str, float]:
        terms = self.model.elbo_terms(x)
        loss = -terms.objective.mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        for _ in range(self.energy_updates):
            mvl, penalty = self.model.energy_loss(x, eps=self.eps, l2=self.l2)
            self.energy_opt.zero_grad()
            (mvl + penalty).backward()
            self.energy_opt.step()
        out = {"reconstruction": terms.reconstruction.mean().item(), "approx_elbo": terms.approx_elbo.mean().item(),
               "mvl": mvl.item(), "l2": penalty.item()}
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite {', '.join(bad)} in the implicit VAE step: lower the learning rates "
                                     "or the MVL step eps")
        return out

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "energy_opt": self.energy_opt.state_dict()}

    def load_state_dict(self, state) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.energy_opt.load_state_dict(state["energy_opt"])


__all__ = [
    "ENERGY_FORMS", "ConditionalEnergy", "ImplicitELBO", "ImplicitEncoder", "ImplicitVAE", "ImplicitVAETrainer", "LatentDecoder",
    "build_implicit_vae", "conditional_score", "entropy_surrogate", "latent_scale",
]
