"""The four VAEs of chapter 9's Table 1: explicit or implicit encoder × hyperspherical or Euclidean latent space,
their step-budgeted, resumable training loop and their test log-likelihood by AIS (chapter 9).

* explicit, sphere: q(z|x) = vMF(μ(x), κ(x)) on Sⁿ, uniform prior (Davidson et al., 2018; :mod:`mvl.ae.vmf`),
  ELBO with the closed-form KL and the rejection-corrected vMF gradient (:func:`mvl.ae.vmf.vmf_elbo`);
* explicit, Euclidean: q(z|x) = N(μ(x), diag σ(x)²) with σ = softplus(·) (the released code's
  ``ExplicitAE``), N(0, I) prior, closed-form KL;
* implicit, sphere or Euclidean: :class:`mvl.ae.implicit.ImplicitVAE` (the paper's method, eq. 19).

Architectures follow the authors' released ``thu-ml/wmvl`` (``src/models.py``): two hidden layers of 256
units, ReLU in the explicit models and tanh in the implicit ones, codes on Sⁿ scaled by √(n+1) before the
decoder; RMSProp lr 1e-3, batch 128, 10⁵ iterations, dynamic binarization (``src/mnist.py``).

The test NLL is AIS from the prior (:func:`log_likelihood_ais`, through :func:`mvl.ais.vae_log_likelihood`):
Riemannian MALA with ``n_steps`` steps per temperature on the sphere, HMC with 10 leapfrog steps in Rⁿ, the
step adapted toward acceptance 0.65, sigmoid schedule (the paper: 1000 temperatures, 16 chains, 5 steps).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ais import AISResult, vae_log_likelihood
from .implicit import (
    ImplicitVAE,
    ImplicitVAETrainer,
    LatentDecoder,
    build_implicit_vae,
    latent_scale,
)
from .mnist import ImageData
from .priors import DiagonalGaussian, StandardNormal
from .vae import ELBO, VAE, BernoulliDecoder, _train_batches, rng_state, set_rng_state
from .vmf import HypersphericalUniform, VonMisesFisherEncoder, hidden_stack, vmf_elbo

ENCODERS = ("explicit", "implicit")
LATENTS = ("sphere", "euclidean")
HISTORY_KEYS = ("epoch", "step", "train_objective", "train_reconstruction", "train_energy_mvl", "valid_elbo",
                "valid_reconstruction", "seconds")
"""Per epoch: the training means, and on the validation images the ELBO (explicit models; for implicit ones the
released code's monitor with −E_θ as log q, not a bound) and the reconstruction term log p(x|z)."""


class SoftplusGaussianEncoder(nn.Module):
    """q(z|x) = N(μ(x), diag σ(x)²), x → 256 ReLU → 256 ReLU → (μ, σ = softplus(·)): the released code's
    explicit Euclidean encoder (``ExplicitAE`` with ``distribution='normal'``). σ is floored at 1e-5."""

    def __init__(self, input_dim: int = 784, latent_dim: int = 8, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu"):
        super().__init__()
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.body = hidden_stack([input_dim, *hidden], activation)
        self.mean = nn.Linear(hidden[-1], latent_dim)
        self.scale = nn.Linear(hidden[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> DiagonalGaussian:
        h = self.body(x)
        std = F.softplus(self.scale(h)).clamp_min(1e-5)
        return DiagonalGaussian(self.mean(h), 2 * torch.log(std))


def _check_kind(encoder: str, latent: str) -> None:
    if encoder not in ENCODERS or latent not in LATENTS:
        raise ValueError(f"encoder must be one of {ENCODERS} and latent one of {LATENTS}, got {encoder!r}, {latent!r}")


def build_model(encoder: str = "implicit", latent: str = "sphere", n: int = 8, hidden: int = 256,
                input_dim: int = 784, energy_form: str = "zpsi") -> VAE | ImplicitVAE:
    """One of the four models (module docstring); ``n`` is the latent dimension (S⁸ ⊂ R⁹ for n = 8);
    ``energy_form`` (implicit models) as in :class:`mvl.ae.implicit.ConditionalEnergy`."""
    _check_kind(encoder, latent)
    if encoder == "implicit":
        return build_implicit_vae(n, latent == "sphere", input_dim, hidden, energy_form=energy_form)
    sizes = (hidden, hidden)
    if latent == "sphere":
        return VAE(VonMisesFisherEncoder(input_dim, n, sizes, "relu"),
                   LatentDecoder(n + 1, input_dim, sizes, "relu", latent_scale(n, True)), HypersphericalUniform(n))
    return VAE(SoftplusGaussianEncoder(input_dim, n, sizes, "relu"), LatentDecoder(n, input_dim, sizes, "relu"),
               StandardNormal(n))


def explicit_elbo(model: VAE, x: torch.Tensor) -> ELBO:
    """The ELBO terms of an explicit model with its closed-form KL: :func:`mvl.ae.vmf.vmf_elbo` on the sphere,
    KL(N(μ, σ²) ‖ N(0, I)) in Rⁿ (one reparameterized sample for the reconstruction term)."""
    if isinstance(model.prior, HypersphericalUniform):
        return vmf_elbo(model, x)
    q = model.encoder(x)
    return ELBO(model.decoder.log_prob(x, q.rsample()), q.kl_standard_normal())


def log_likelihood_ais(model: VAE | ImplicitVAE, x: torch.Tensor, n_temperatures: int = 1000, n_chains: int = 16,
                       n_steps: int = 5, n_leapfrog: int = 10, batch_size: int = 128, progress: bool = False) -> AISResult:
    """AIS estimates of log p(x) for the rows of ``x`` (chapter 9): from the prior, Riemannian MALA (``n_steps``
    per temperature) on the sphere or HMC (``n_leapfrog`` steps, one transition per temperature) in Rⁿ, online
    step adaptation toward 0.65, sigmoid schedule; images in batches of ``batch_size``. The parts' results are
    concatenated into one :class:`mvl.ais.AISResult` (``betas`` and ``kernel`` of the last part)."""
    prior, sphere = model.prior, getattr(model.prior, "sphere", None)
    kwargs = ({"kernel": "riemannian_mala", "sphere": sphere, "n_steps": n_steps, "step_size": 0.1} if sphere is not None
              else {"kernel": "hmc", "n_leapfrog": n_leapfrog, "step_size": 0.05})
    parts = []
    with torch.no_grad():
        for xb in x.split(batch_size):
            parts.append(vae_log_likelihood(model.decoder.log_prob, prior.log_prob, xb, prior_sample=prior.sample,
                                            n_temperatures=n_temperatures, n_chains=n_chains, progress=progress, **kwargs))
    cat = lambda name, dim=0: torch.cat([getattr(p, name) for p in parts], dim)
    last = parts[-1]
    return AISResult(log_z=cat("log_z"), log_weights=cat("log_weights"), log_z_se=cat("log_z_se"), ess=cat("ess"),
                     acceptance=cat("acceptance"), acceptance_by_temperature=cat("acceptance_by_temperature", 1),
                     step_sizes=cat("step_sizes", 1), betas=last.betas, samples=cat("samples"), kernel=last.kernel,
                     n_rejected_nonfinite=sum(p.n_rejected_nonfinite for p in parts))


def _latent_grid(model: VAE | ImplicitVAE, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature nodes of a two-dimensional latent space and their log weights times the prior density (see
    :func:`log_likelihood_quadrature`), in float64."""
    sphere = getattr(model.prior, "sphere", None)
    dim = model.prior.sample(1).shape[-1]
    if dim != (3 if sphere is not None else 2):
        raise ValueError(f"quadrature needs a latent S^2 or R^2; this model's codes have {dim} coordinates "
                         f"(use log_likelihood_ais)")
    if sphere is not None:
        pts, w = sphere.grid(resolution, dtype=torch.float64)
        return pts, torch.log(w) - sphere.log_volume()
    t = torch.linspace(-7, 7, 2 * resolution + 1, dtype=torch.float64)
    a, b = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([a.reshape(-1), b.reshape(-1)], -1)
    return pts, -0.5 * (pts**2).sum(-1) - math.log(2 * math.pi) + 2 * math.log(float(t[1] - t[0]))


def _grid_log_joint(model, x: torch.Tensor, resolution: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The nodes ``[m, d]`` and log p(x|z_j) + log(w_j p(z_j)) ``[m, len(x)]`` (float64). For a Bernoulli decoder
    the logits ℓ_j are computed once per node: log p(x|z_j) = xᵀℓ_j + Σ_d log σ(−ℓ_jd), one matrix product for all
    images; any other decoder is asked for ``log_prob`` at every (node, image) pair."""
    pts, log_w = _latent_grid(model, resolution)
    dtype = next(model.decoder.parameters()).dtype
    parts = []
    with torch.no_grad():
        for c in pts.split(chunk):
            c = c.to(dtype=dtype, device=x.device)
            if isinstance(model.decoder, BernoulliDecoder):
                logits = model.decoder(c).double()  # [chunk, D]
                parts.append(logits @ x.double().T + F.logsigmoid(-logits).sum(-1, keepdim=True))
            else:
                parts.append(model.decoder.log_prob(x.to(dtype), c[:, None, :].expand(-1, len(x), -1)).double())
    return pts, torch.cat(parts).cpu() + log_w[:, None]


def log_likelihood_quadrature(model: VAE | ImplicitVAE, x: torch.Tensor, resolution: int = 200,
                              chunk: int = 8000) -> torch.Tensor:
    """Exact-up-to-quadrature log p(x) = log ∫ p(x|z) p(z) dz ``[len(x)]`` (float64) of a model with a
    two-dimensional latent space (chapter 9's check of AIS): on S² the product Gauss–Legendre × longitude rule
    of :meth:`mvl.manifolds.Sphere.grid` (``resolution`` × 2·``resolution`` nodes) against the uniform prior;
    in R² a ``(2·resolution + 1)²`` trapezoid grid on [−7, 7]² against N(0, I) (mass outside: < 1e-10)."""
    _, lj = _grid_log_joint(model, x, resolution, chunk)
    return torch.logsumexp(lj, 0)


def posterior_quadrature(model: VAE | ImplicitVAE, x: torch.Tensor, resolution: int = 200,
                         chunk: int = 8000) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact posterior p(z|x) of a model with a two-dimensional latent space on the quadrature nodes of
    :func:`log_likelihood_quadrature`: nodes ``[m, d]`` and normalized weights ``[len(x), m]`` (float64), so that
    ``weights @ f(nodes)`` is E[f(z) | x] (chapter 9: the true posterior an encoder should match)."""
    pts, lj = _grid_log_joint(model, x, resolution, chunk)
    return pts, torch.softmax(lj, 0).T


class Table1Trainer:
    """The training loop of the four models (chapter 9), one epoch at a time, with its whole state saveable
    (the interface ``python -m mvl.train`` drives, as :class:`mvl.ae.vae.VAETrainer`).

    Each step takes a batch of ``batch_size`` training images (dynamically binarized by ``train``): an implicit
    model takes :meth:`mvl.ae.implicit.ImplicitVAETrainer.step` (ELBO update, then one MVL update of the
    conditional energy with step ``eps`` and L2 weight ``l2``); an explicit one an RMSProp step on −ELBO
    (:func:`explicit_elbo`). RMSProp lr ``lr`` with TF1's decay 0.9 and ε = 1e-10 everywhere. ``steps`` bounds
    the number of updates (the paper: 10⁵); an epoch is one pass over ``train``."""

    history_keys = HISTORY_KEYS

    def __init__(self, model: VAE | ImplicitVAE, train: ImageData | torch.Tensor, valid: torch.Tensor | None = None,
                 steps: int = 100_000, batch_size: int = 128, lr: float = 1e-3, eps: float = 1e-3, l2: float = 1e-4,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None):
        for name, v in (("steps", steps), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.steps, self.batch_size, self.generator = steps, batch_size, generator
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.implicit = isinstance(model, ImplicitVAE)
        if self.implicit:
            self.inner = ImplicitVAETrainer(model, lr, lr, eps, l2)
        else:
            self.opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.9, eps=1e-10)
        self.train, self.valid = train, (valid.to(self.device) if valid is not None else None)
        self.hist: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.step, self.epoch, self.elapsed = 0, 0, 0.0

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        self.step += 1
        if self.implicit:
            out = self.inner.step(x)
            return {"objective": out["approx_elbo"], "reconstruction": out["reconstruction"], "mvl": out["mvl"]}
        terms = explicit_elbo(self.model, x)
        loss = -terms.objective.mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the ELBO is not finite at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"objective": terms.elbo.mean().item(), "reconstruction": terms.reconstruction.mean().item(), "mvl": math.nan}

    @torch.no_grad()
    def validate(self, x: torch.Tensor) -> tuple[float, float]:
        """(mean ELBO — the monitor for implicit models —, mean reconstruction term) on ``x``, one sample each."""
        elbo, rec = [], []
        for xb in x.split(1000):
            if self.implicit:
                z = self.model.encoder(xb)
                r = self.model.decoder.log_prob(xb, z)
                elbo.append(r + self.model.prior.log_prob(z) + self.model.energy(z, xb))
            else:
                t = explicit_elbo(self.model, xb)
                r = t.reconstruction
                elbo.append(t.elbo)
            rec.append(r)
        return torch.cat(elbo).mean().item(), torch.cat(rec).mean().item()

    def run_epoch(self) -> dict[str, float]:
        """One pass over the training images (or the updates left), then the validation numbers."""
        if self.done:
            raise RuntimeError("training is finished; nothing left to run")
        start = time.perf_counter()
        self.model.train()
        sums, count = torch.zeros(3, dtype=torch.float64), 0
        for x in _train_batches(self.train, self.batch_size, self.device, self.generator):
            out = self.train_step(x)
            sums += torch.tensor([out["objective"], out["reconstruction"], out["mvl"]], dtype=torch.float64)
            count += 1
            if self.done:
                break
        self.epoch += 1
        val = self.validate(self.valid) if self.valid is not None else (math.nan, math.nan)
        self.elapsed += time.perf_counter() - start
        means = (sums / max(count, 1)).tolist()
        if not self.implicit:
            means[2] = None  # no energy (a NaN would make the run record's JSON non-standard)
        for k, v in zip(HISTORY_KEYS, (self.epoch, self.step, *means, *val, self.elapsed)):
            self.hist[k].append(v)
        if self.implicit:  # the monitor is not a bound: not reported as "elbo" (the progress bar shows that key)
            return {"approx_elbo": val[0], "reconstruction": val[1]}
        return {"elbo": val[0], "reconstruction": val[1]}

    def finish(self) -> dict[str, Any]:
        hist: dict[str, Any] = dict(self.hist)
        hist.update(best_epoch=self.epoch, stopped_early=False, train_seconds=self.elapsed, loaded=False)
        return hist

    def state_dict(self) -> dict[str, Any]:
        opt = self.inner.state_dict() if self.implicit else {"model": self.model.state_dict(), "opt": self.opt.state_dict()}
        return {"trainer": copy.deepcopy(opt), "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed,
                "hist": copy.deepcopy(self.hist), **rng_state(self.generator)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.implicit:
            self.inner.load_state_dict(state["trainer"])
        else:
            self.model.load_state_dict(state["trainer"]["model"])
            self.opt.load_state_dict(state["trainer"]["opt"])
        self.step, self.epoch, self.elapsed = state["step"], state["epoch"], state["elapsed"]
        self.hist = copy.deepcopy(state["hist"])
        set_rng_state(state, self.generator)


def evaluate(model: VAE | ImplicitVAE, test: torch.Tensor, n_temperatures: int = 1000, n_chains: int = 16,
             n_steps: int = 5, n_leapfrog: int = 10, iwae_samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Test NLL by AIS (:func:`log_likelihood_ais`; mean and standard error over the images, the per-image AIS
    standard error's root mean square, the mean acceptance) and, for explicit models, the importance-sampled
    (IWAE) NLL with ``iwae_samples`` samples from q(z|x) and the test ELBO, seeded with ``seed``."""
    start = time.perf_counter()
    model.eval()
    torch.manual_seed(seed)
    r = log_likelihood_ais(model, test, n_temperatures, n_chains, n_steps, n_leapfrog)
    nll = -r.log_z.double().cpu()
    n = len(nll)
    out: dict[str, Any] = {
        "test_nll": nll.mean().item(), "test_nll_se": (nll.std() / math.sqrt(n)).item() if n > 1 else None,
        "test_images": n, "ais_temperatures": n_temperatures, "ais_chains": n_chains,
        "ais_kernel": r.kernel, "ais_steps_per_temperature": n_steps if r.kernel == "riemannian_mala" else 1,
        "ais_rms_se": r.log_z_se.double().pow(2).mean().sqrt().item(), "ais_acceptance": r.acceptance.mean().item(),
        "ais_rejected_nonfinite": r.n_rejected_nonfinite,
        "per_image_nll": [round(v, 4) for v in nll.tolist()],  # for paired comparisons between models
    }
    if not isinstance(model, ImplicitVAE):
        torch.manual_seed(seed)
        est = model.importance_estimates(test, iwae_samples)
        iw = -est["log_px"].double().cpu()
        with torch.no_grad():
            elbo = torch.cat([explicit_elbo(model, b).elbo for b in test.split(1000)]).double().cpu()
        out.update(iwae_nll=iw.mean().item(), iwae_nll_se=(iw.std() / math.sqrt(n)).item() if n > 1 else None,
                   iwae_samples=iwae_samples, test_elbo=elbo.mean().item(),
                   ais_minus_iwae_log_px=(iw - nll).mean().item(),
                   ais_minus_iwae_log_px_se=((iw - nll).std() / math.sqrt(n)).item() if n > 1 else None,
                   per_image_iwae_nll=[round(v, 4) for v in iw.tolist()])
    out["eval_seconds"] = time.perf_counter() - start
    return out


__all__ = ["ENCODERS", "HISTORY_KEYS", "LATENTS", "SoftplusGaussianEncoder", "Table1Trainer", "build_model", "evaluate", "log_likelihood_quadrature", "posterior_quadrature",
           "explicit_elbo", "log_likelihood_ais"]
