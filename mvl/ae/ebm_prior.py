"""VAEs with energy-based priors: training without the partition function, and evaluation with AIS (chapter 8).

The seed paper of chapter 8 (*Variational Inference with Unnormalized Priors*, §2.2–2.3, Algorithms 1–2)
splits the training of a VAE p(x|z) p(z), p(z) = e^{−E(z)}/Z, in two:

* the encoder q(z|x) and the decoder p(x|z) maximize the **partition-free bound** (§2.3)

      E_q[log p(x|z) − E(z) − log q(z|x)] = ELBO + log Z,

  whose gradient in the encoder and decoder parameters is that of the ELBO, since log Z does not depend on
  them. The prior's parameters receive **no** gradient from this term (the bound is not a bound in them:
  lowering E everywhere would raise it without limit);
* the prior is fitted to the posterior samples z ~ q(z|x), detached, i.e. to the aggregated posterior
  q(z) = E_x q(z|x) (ELBO surgery, seed eq. 11: the ELBO's only prior term is −KL(q(z) ‖ p(z)) + const), by
  any objective for unnormalized models (:data:`PRIOR_OBJECTIVES`, :func:`prior_loss`).

:class:`EBMPriorTrainer` runs both steps per mini-batch (and, for normalized priors, the plain ELBO, so that
the chapter's baselines go through the same loop), with its whole state saveable for ``python -m mvl.train``.
:func:`evaluate_ebm_vae` forms the test NLL by importance sampling with the prior's log Z from annealed
importance sampling (:meth:`mvl.ae.priors.GRBM.estimate_log_partition`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..fitting import check_finite
from ..objectives import sm_denoising, sm_mvl, sm_sliced
from .flows import IAF
from .mnist import ImageData
from .priors import GRBM, StandardNormal, VampPrior, mixture_log_prob
from .vae import VAE, BernoulliDecoder, GaussianEncoder, _train_batches, rng_state, set_rng_state

PRIOR_OBJECTIVES = ("elbo", "ssm", "mvl", "dsm", "adversarial", "iw")
"""How the prior is trained (:func:`prior_loss`):

* ``"elbo"``: a normalized prior (N(0, I), VampPrior) trained with the VAE on the ELBO itself (chapter 7);
* ``"ssm"``: sliced score matching (Song et al., 2019; seed Algorithm 1);
* ``"mvl"``: the one-step minimum-velocity estimator (:func:`mvl.objectives.sm_mvl`, chapter 3), new here;
* ``"dsm"``: denoising score matching with the control variate (:func:`mvl.objectives.sm_denoising`);
* ``"adversarial"``: adversarial contrastive divergence with an IAF adversary (seed Algorithm 2, eqs. 9–10);
* ``"iw"``: the importance-weighted log Z of seed eqs. (5)–(7), which the seed paper reports to fail.
"""


def build_ebm_vae(latent_dim: int = 64, hidden: int = 256, input_dim: int = 784, prior: str = "grbm",
                  prior_hidden: int = 64, n_pseudo: int = 16, pseudo_init: torch.Tensor | str = "random",
                  body: str = "elu") -> VAE:
    """The seed paper's MNIST VAE (§4.2): encoder 784-256-256-128 and decoder 64-256-256-784 with ELUs
    (``body="elu"``), Bernoulli logits, and the prior ``"grbm"`` (a :class:`~mvl.ae.priors.GRBM` with
    ``latent_dim`` visible and ``prior_hidden`` hidden units), ``"standard"`` or ``"vamp"`` (``n_pseudo``
    pseudo-inputs, the seed's K = 16)."""
    encoder = GaussianEncoder(input_dim, latent_dim, (hidden, hidden), body=body)
    decoder = BernoulliDecoder(latent_dim, input_dim, (hidden, hidden), body=body)
    if prior == "grbm":
        p: nn.Module = GRBM(latent_dim, prior_hidden)
    elif prior == "standard":
        p = StandardNormal(latent_dim)
    elif prior == "vamp":
        p = VampPrior(encoder, n_pseudo, input_dim, init=pseudo_init)
    else:
        raise ValueError(f"unknown prior {prior!r}: choose 'grbm', 'standard' or 'vamp'")
    return VAE(encoder, decoder, p)


def _check_float(value, name: str, minimum: float = 0.0, strict: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def adversary_loss(energy, adversary: IAF, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The adversary's loss of seed Algorithm 2, step 3: −(E_{q_ζ}[−E(z)] + H[q_ζ]) = E_{q_ζ}[E(z) + log q_ζ(z)],
    estimated with ``n`` reparameterized draws of the flow. Minimizing it over ζ maximizes the variational
    lower bound on log Z of seed eq. (9) (it is ≥ −log Z, with equality iff q_ζ is the prior). Returns
    the loss and the (detached) draws, the negative samples of the CD step."""
    z, log_q = adversary.rsample_and_log_prob(n)
    return (energy(z) + log_q).mean(), z.detach()


def prior_loss(objective: str, energy, z: torch.Tensor, *, log_q: torch.Tensor | None = None,
               negatives: torch.Tensor | None = None, eps: float = 1e-3, n_slices: int = 1,
               energy_l2: float = 0.0) -> torch.Tensor:
    """The scalar loss whose gradient in the prior's parameters fits e^{−E} to the posterior samples ``z``
    ``[n, d]`` (chapter 8); ``z`` should be detached from the encoder.

    * ``"ssm"``: mean of :func:`mvl.objectives.sm_sliced` (seed Algorithm 1, step 5, with ``n_slices``
      projections). The seed prints the loss as E_v[vᵀ∇²E v + ½(vᵀ∇E)²]; for q ∝ e^{−E} the score is −∇E
      and the Hyvärinen objective is ½‖∇E‖² − ΔE, so the Hessian term enters with a **minus** sign
      (with the plus sign the loss rewards curvature of the wrong sign and E runs away). ``sm_sliced`` has
      the right sign (tests of chapter 1 check it against the exact objective).
    * ``"mvl"``: mean of :func:`mvl.objectives.sm_mvl` with step ``eps`` and the control variate.
    * ``"dsm"``: mean of :func:`mvl.objectives.sm_denoising` with noise variance ``eps`` and the control
      variate (it fits the score of q smoothed by N(0, eps I), not of q itself).
    * ``"adversarial"``: the CD step of seed Algorithm 2, step 4: mean E(z) − mean E(``negatives``), the
      negatives being the adversary's draws (:func:`adversary_loss`), detached.
    * ``"iw"``: −(seed eq. 5)'s prior part, mean E(z) + log Ẑ with the self-normalized estimate
      Ẑ = (1/n) Σ_s exp(−E(z_s) − log q(z_s|x_s)) pooled over the batch (each term is an unbiased estimate
      of Z for its own x, so the pooled mean is one too); ``log_q`` ``[n]`` is log q(z_s|x_s), a constant
      here. Its gradient is −(seed eq. 7): the positive phase at the posterior samples, and a negative
      phase that reweights the *same* samples. The posterior samples concentrate where the true posterior
      is, not where the prior is, so the weights are dominated by a few samples and the estimate of log Z is
      far too low (biased low by Jensen's inequality as well): the seed paper's failure case, kept faithful.

    ``energy_l2`` > 0 adds λ·mean E(z)² (the penalty on energy values of the WMVL code), which keeps the
    energy's level from drifting, something none of the score-based losses sees.
    """
    if objective not in PRIOR_OBJECTIVES or objective == "elbo":
        raise ValueError(f"unknown prior objective {objective!r}: choose one of {PRIOR_OBJECTIVES[1:]}")
    if not torch.is_tensor(z) or z.dim() != 2:
        raise ValueError(f"z must be a tensor [n, d] of posterior samples, got {getattr(z, 'shape', type(z))}")
    energy_l2 = _check_float(energy_l2, "energy_l2", strict=False)
    z = z.detach()
    e = None
    if objective == "ssm":
        loss = sm_sliced(energy, z, n_slices).mean()
    elif objective == "mvl":
        loss = sm_mvl(energy, z, eps).mean()
    elif objective == "dsm":
        loss = sm_denoising(energy, z, eps, control_variate=True).mean()
    elif objective == "adversarial":
        if negatives is None:
            raise ValueError("the adversarial CD step needs the adversary's samples: pass negatives=")
        e = energy(z)
        loss = e.mean() - energy(negatives.detach()).mean()
    else:  # "iw"
        if log_q is None or tuple(log_q.shape) != tuple(z.shape[:1]):
            raise ValueError("the importance-weighted log Z needs log q(z|x) of the samples: pass log_q= of shape [n]")
        e = energy(z)
        log_z_hat = torch.logsumexp(-e - log_q.detach(), 0) - math.log(z.shape[0])
        loss = e.mean() + log_z_hat
    if energy_l2 > 0:
        e = energy(z) if e is None else e
        loss = loss + energy_l2 * (e**2).mean()
    return loss


HISTORY_KEYS = ("epoch", "train_bound", "train_reconstruction", "train_kl", "train_prior_loss",
                "train_adversary_loss", "valid_bound", "valid_reconstruction", "valid_kl", "seconds")
"""Per epoch: the training averages of the bound (the ELBO for a normalized prior, the partition-free bound
E_q[log p(x|z) − E(z) − log q(z|x)] = ELBO + log Z for an energy-based one), its reconstruction and (unnormalized)
KL terms, the prior's and the adversary's losses; the same bound on the validation set; cumulative seconds."""


class EBMPriorTrainer:
    """The training loop of a VAE with an energy-based prior (seed 003 §2.3, Algorithms 1–2; chapter 8).

    Per mini-batch x (the VAE's ``train``, dynamically binarized if an :class:`~mvl.ae.mnist.ImageData`):

    1. z ~ q(z|x) by reparameterization; the encoder and decoder take an Adam step (``lr``) on the partition-free
       bound E_q[log p(x|z) − E(z) − log q(z|x)], differentiated with respect to *their* parameters only
       (``torch.autograd.backward(..., inputs=...)``): the prior gets no gradient from it;
    2. (``"adversarial"``) the adversary q_ζ, an IAF, takes ``adversary_steps`` Adam steps (``adversary_lr``) on
       :func:`adversary_loss` with ``batch_size`` draws each (the seed takes one; more let it keep up with the
       energy, which the seed says "is not guaranteed");
    3. the prior takes an Adam step (``prior_lr``) on :func:`prior_loss` at the detached z of step 1.

    With ``objective="elbo"`` the prior must be normalized (N(0, I), VampPrior) and everything takes one Adam
    step (``lr``) on the ELBO: the chapter's baselines, through the same loop and the same batches. There is no
    KL warm-up and no early stopping (the seed trains 100 epochs and reports the final model). Every tracked
    quantity is checked: a NaN or infinity raises ``FloatingPointError`` naming the quantity and the update.

    :meth:`state_dict` holds everything the next epoch depends on (weights of the VAE and the adversary, the
    optimizers' moments, the counters, the global torch RNG and the data ``generator``, the history), so a run
    continued with :meth:`load_state_dict` gives the same weights as an uninterrupted one, as
    :class:`mvl.ae.vae.VAETrainer` does; ``python -m mvl.train`` checkpoints it between epochs.
    """

    history_keys = HISTORY_KEYS

    def __init__(self, model: VAE, train: ImageData | torch.Tensor, valid: torch.Tensor | None = None,
                 objective: str = "ssm", epochs: int = 100, batch_size: int = 64, lr: float = 1e-3,
                 prior_lr: float = 2e-4, eps: float = 1e-3, n_slices: int = 1, energy_l2: float = 0.0,
                 adversary: IAF | None = None, adversary_lr: float = 1e-3, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None, adversary_steps: int = 1):
        if objective not in PRIOR_OBJECTIVES:
            raise ValueError(f"unknown prior objective {objective!r}: choose one of {PRIOR_OBJECTIVES}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("n_slices", n_slices),
                            ("adversary_steps", adversary_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        lr, prior_lr, adversary_lr, eps = (_check_float(v, n) for v, n in (
            (lr, "lr"), (prior_lr, "prior_lr"), (adversary_lr, "adversary_lr"), (eps, "eps")))
        self.energy_l2 = _check_float(energy_l2, "energy_l2", strict=False)
        prior = model.prior
        if objective == "elbo":
            if not getattr(prior, "normalized", True) or isinstance(prior, GRBM):
                raise ValueError("objective='elbo' needs a normalized prior (standard normal, VampPrior); an "
                                 "energy-based prior is trained by 'ssm', 'mvl', 'dsm', 'adversarial' or 'iw'")
        elif not isinstance(prior, nn.Module) or not list(prior.parameters()) or not callable(prior):
            raise ValueError(f"objective {objective!r} fits an energy-based prior with parameters (a GRBM or an "
                             f"energy network [n, d] -> [n]); for a normalized prior use objective='elbo'")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.train, self.valid = train, (valid.to(self.device) if valid is not None else None)
        self.objective, self.epochs, self.batch_size, self.generator = objective, epochs, batch_size, generator
        self.eps, self.n_slices, self.adversary_steps = eps, n_slices, adversary_steps
        self.steps_per_epoch = math.ceil(len(train) / batch_size)
        if objective == "elbo":
            self.vae_params = list(model.parameters())
            self.prior_params: list[nn.Parameter] = []
        else:
            own = {id(p) for p in prior.parameters()}
            self.vae_params = [p for p in model.parameters() if id(p) not in own]
            self.prior_params = list(prior.parameters())
        self.opt = torch.optim.Adam(self.vae_params, lr=lr)
        self.prior_opt = torch.optim.Adam(self.prior_params, lr=prior_lr) if self.prior_params else None
        self.adversary, self.adv_opt = None, None
        if objective == "adversarial":
            dim = model.encoder.latent_dim
            self.adversary = (adversary if adversary is not None else IAF(dim, 4, hidden=())).to(self.device)
            if self.adversary.dim != dim:
                raise ValueError(f"the adversary models {self.adversary.dim}-d latents, the VAE has {dim}")
            self.adv_opt = torch.optim.Adam(self.adversary.parameters(), lr=adversary_lr)
        self.hist: dict[str, Any] = {k: [] for k in HISTORY_KEYS}
        self.step, self.epoch, self.elapsed = 0, 0, 0.0

    @property
    def done(self) -> bool:
        """The epoch budget is spent."""
        return self.epoch >= self.epochs

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """The prior's energy E(z) ``[n]`` (the GRBM's free energy)."""
        return self.model.prior(z)

    def bound_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One reparameterized z ~ q(z|x) per row and the terms (reconstruction, KL term, z, log q) ``[n]``:
        KL term = log q(z|x) − log p(z) for ``"elbo"``, log q(z|x) + E(z) (= KL − log Z) otherwise."""
        q = self.model.encoder(x)
        z = q.rsample()
        log_q = q.log_prob(z)
        if self.objective == "elbo":
            log_p = self.model.prior.log_prob(z)
        else:
            e = self.energy(z)
            check_finite(e, "the prior's energy E(z) at the posterior samples", self.step)
            log_p = -e
        return self.model.decoder.log_prob(x, z), log_q - log_p, z, log_q

    def vae_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 1: one Adam step of the encoder and decoder (and of a normalized prior under ``"elbo"``) on the
        bound; returns the detached posterior samples z, their log q(z|x), and the reconstruction and KL terms."""
        rec, kl, z, log_q = self.bound_terms(x)
        loss = -(rec - kl).mean()
        check_finite(loss, "the VAE's loss (the negative bound)", self.step)
        self.opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss, inputs=self.vae_params)
        for p in self.vae_params:
            if p.grad is not None:
                check_finite(p.grad, "the gradient of the encoder/decoder", self.step)
        self.opt.step()
        return z.detach(), log_q.detach(), rec.detach(), kl.detach()

    def prior_step(self, z: torch.Tensor, log_q: torch.Tensor | None = None) -> tuple[float, float]:
        """Steps 2–3: the adversary's step (``"adversarial"``), then the prior's step at the posterior samples;
        returns (prior loss, adversary loss) (NaN where there is none)."""
        if self.prior_opt is None:
            return math.nan, math.nan
        adv = math.nan
        negatives = None
        if self.adversary is not None:
            for _ in range(self.adversary_steps):
                loss_a, _ = adversary_loss(self.energy, self.adversary, z.shape[0])
                check_finite(loss_a, "the adversary's loss E_q[E(z) + log q(z)]", self.step)
                self.adv_opt.zero_grad(set_to_none=True)
                torch.autograd.backward(loss_a, inputs=list(self.adversary.parameters()))
                self.adv_opt.step()
            adv = loss_a.item()
            negatives = self.adversary.sample(z.shape[0])  # from the updated adversary (Algorithm 2, step 4)
        loss = prior_loss(self.objective, self.energy, z, log_q=log_q, negatives=negatives, eps=self.eps,
                          n_slices=self.n_slices, energy_l2=self.energy_l2)
        check_finite(loss, f"the prior's {self.objective} loss", self.step)
        self.prior_opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss, inputs=self.prior_params)
        for p in self.prior_params:
            if p.grad is not None:
                check_finite(p.grad, f"the gradient of the prior's {self.objective} loss", self.step)
        self.prior_opt.step()
        return loss.item(), adv

    @torch.no_grad()
    def evaluate_bound(self, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
        """Mean bound, reconstruction and KL term over ``x`` (one posterior sample each)."""
        rec, kl = [], []
        for xb in x.split(batch_size):
            r, k, _, _ = self.bound_terms(xb)
            rec.append(r)
            kl.append(k)
        r, k = torch.cat(rec), torch.cat(kl)
        return {"bound": (r - k).mean().item(), "reconstruction": r.mean().item(), "kl": k.mean().item()}

    def run_epoch(self, bar=None) -> dict[str, float]:
        """One pass over the training data (both steps per batch), then the validation bound."""
        if self.done:
            raise RuntimeError("training is finished; nothing left to run")
        start = time.perf_counter()
        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        prior_sum = adv_sum = 0.0
        n = len(self.train)
        for xb in _train_batches(self.train, self.batch_size, self.device, self.generator):
            self.step += 1
            z, log_q, rec, kl = self.vae_step(xb)
            lp, la = self.prior_step(z, log_q)
            sums += torch.stack([(rec - kl).sum(), rec.sum(), kl.sum()]).double().cpu()
            prior_sum += lp * xb.shape[0]
            adv_sum += la * xb.shape[0]
            if bar is not None:
                bar.update(1)
        self.epoch += 1
        self.model.eval()
        nan = {"bound": math.nan, "reconstruction": math.nan, "kl": math.nan}
        val = self.evaluate_bound(self.valid) if self.valid is not None else nan
        if self.valid is not None:
            check_finite(torch.tensor(val["bound"]), "the validation bound", self.step)
        self.elapsed += time.perf_counter() - start
        row = (self.epoch, *(sums / n).tolist(), prior_sum / n, adv_sum / n, val["bound"], val["reconstruction"],
               val["kl"], self.elapsed)
        for k, v in zip(HISTORY_KEYS, row):
            self.hist[k].append(v)
        return val

    def finish(self) -> dict[str, Any]:
        """The history (the final weights are kept: no model selection)."""
        hist = dict(self.hist)
        hist.update(best_epoch=self.epoch, stopped_early=False, train_seconds=self.elapsed, loaded=False)
        return hist

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit for bit (see the class docstring)."""
        return {
            "model": copy.deepcopy(self.model.state_dict()), "optimizer": copy.deepcopy(self.opt.state_dict()),
            "prior_optimizer": copy.deepcopy(self.prior_opt.state_dict()) if self.prior_opt else None,
            "adversary": copy.deepcopy(self.adversary.state_dict()) if self.adversary is not None else None,
            "adversary_optimizer": copy.deepcopy(self.adv_opt.state_dict()) if self.adv_opt else None,
            "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, "hist": copy.deepcopy(self.hist),
            **rng_state(self.generator),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (the trainer must be built with the same settings)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        for mine, key in ((self.prior_opt, "prior_optimizer"), (self.adversary, "adversary"),
                          (self.adv_opt, "adversary_optimizer")):
            if (mine is None) != (state.get(key) is None):
                raise ValueError(f"the saved run and this trainer disagree about {key.replace('_', ' ')}: "
                                 f"build the trainer with the run's settings")
            if mine is not None:
                mine.load_state_dict(state[key])
        self.step, self.epoch, self.elapsed = state["step"], state["epoch"], state["elapsed"]
        self.hist = copy.deepcopy(state["hist"])
        set_rng_state(state, self.generator)


def aggregated_posterior_base(encoder, x: torch.Tensor) -> tuple:
    """The aggregated posterior of the images ``x`` ``[K, D]``, (1/K) Σ_k q(z | x_k), as a normalized, sampleable
    AIS base ``(log_density, sample)`` for :func:`mvl.ais.grbm_log_partition` (chapter 8). A trained energy-based
    prior approximates exactly this mixture (ELBO surgery), so annealing from it starts the chains where the
    prior's mass is, wherever that is relative to the GRBM's own Gaussian part."""
    if not torch.is_tensor(x) or x.dim() != 2 or len(x) < 1:
        raise ValueError(f"x must be a non-empty tensor [K, D] of images, got {getattr(x, 'shape', type(x))}")
    with torch.no_grad():
        q = encoder(x)
    mean, logvar = q.mean.detach(), q.logvar.detach()

    def log_density(z):
        return mixture_log_prob(z, mean, logvar)

    def sample(n):
        k = torch.randint(0, len(mean), (n,), device=mean.device)
        return mean[k] + torch.exp(0.5 * logvar[k]) * torch.randn(n, mean.shape[1], dtype=mean.dtype, device=mean.device)

    return log_density, sample


def attach_log_partition(grbm: GRBM, log_z: float, log_z_se: float) -> None:
    """Store a previously computed AIS estimate of log Z (e.g. from a run record) on ``grbm`` as
    :meth:`~mvl.ae.priors.GRBM.estimate_log_partition` would, tied to the current parameters (a later change of
    the parameters makes ``log_prob`` refuse it again)."""
    for name, v in (("log_z", log_z), ("log_z_se", log_z_se)):
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    grbm.log_z_ais, grbm.log_z_ais_se = float(log_z), float(log_z_se)
    grbm._ais_snapshot = [p.clone() for p in grbm._parameters_now()]


@torch.no_grad()
def evaluate_ebm_vae(model: VAE, x: torch.Tensor, n_samples: int = 1000, n_temperatures: int = 1000,
                     n_chains: int = 100, seed: int = 0, base_images: torch.Tensor | None = None,
                     **ais_kwargs) -> dict[str, Any]:
    """Test NLL of a VAE with a GRBM prior by importance sampling, with the prior's log Z from AIS (chapter 8).

    log p(x) = log (1/S) Σ_s p(x|z_s) e^{−E(z_s)} / q(z_s|x) − log Z,  z_s ~ q(z|x),

    with log Z estimated once by :meth:`~mvl.ae.priors.GRBM.estimate_log_partition` (``n_temperatures``,
    ``n_chains``, further keywords to :func:`mvl.ais.ais`; stored on the prior, so that ``log_prob`` and
    sampling-based figures use the same value). The importance sum uses the unnormalized prior (it does not
    depend on how log Z is known) and log Z is subtracted, so its error is a **shared offset**: every test
    image moves by the same amount, and ``log_z_se`` does not average out over the test set. It is reported
    apart from ``test_nll_se``, the per-image spread; add them in quadrature for a total error of the mean.

    Bias: with the exact log Z, E[NLL estimate] ≥ the true NLL (the importance-sampled log p(x) is a
    stochastic lower bound). AIS's log Ẑ is itself a stochastic lower bound of log Z (biased *low*), and it is
    subtracted, so with it the NLL is biased *optimistically* by about that bias; the seed paper calls its
    estimate "unbiased", which it is not on either count. With at most 20 hidden units the exact log Z is
    computed as well (``log_z_exact``, ``test_nll_exact_log_z``), which measures the AIS error directly.

    With ``base_images`` ``[K, D]``, log Z is estimated a second time by AIS from the aggregated posterior of
    those images (:func:`aggregated_posterior_base`; same temperatures and chains), and the larger of the two
    estimates is used (both are unbiased for Z, so in expectation both are below log Z, and the larger is the
    better one; ``log_z_gaussian_base`` and ``log_z_posterior_base`` record both). The GRBM's own Gaussian base
    fails when the prior's mass sits far from μ in units of σ: chapter 8 shows a model whose Gaussian-base
    estimate is 87 nats too low with a standard error of 3·10⁻⁸.
    """
    prior = model.prior
    if not isinstance(prior, GRBM):
        raise ValueError("evaluate_ebm_vae evaluates a VAE with a GRBM prior; use VAE.importance_estimates otherwise")
    model.eval()
    start = time.perf_counter()
    torch.manual_seed(seed)
    ais = prior.estimate_log_partition(n_temperatures, n_chains, **ais_kwargs)
    log_z, log_z_se = prior.log_z_ais, prior.log_z_ais_se
    both: dict[str, Any] = {}
    if base_images is not None:
        from ..ais import grbm_log_partition

        torch.manual_seed(seed + 1)
        alt = grbm_log_partition(prior, n_temperatures, n_chains, base=aggregated_posterior_base(model.encoder, base_images),
                                 **ais_kwargs)
        both = {"log_z_gaussian_base": log_z, "log_z_gaussian_base_se": log_z_se,
                "log_z_posterior_base": float(alt.log_z), "log_z_posterior_base_se": float(alt.log_z_se),
                "log_z_base_images": len(base_images)}
        if float(alt.log_z) > log_z:
            ais, log_z, log_z_se = alt, float(alt.log_z), float(alt.log_z_se)
            attach_log_partition(prior, log_z, log_z_se)
        both["log_z_base_used"] = "posterior" if log_z == both["log_z_posterior_base"] else "gaussian"
    ais_seconds = time.perf_counter() - start
    torch.manual_seed(seed)
    est = model.importance_estimates(x, n_samples, log_prior=prior.unnormalized_log_prob)
    log_px_tilde = est["log_px"].double().cpu()
    nll = -(log_px_tilde - log_z)
    torch.manual_seed(seed)
    rec, kl = [], []
    for xb in x.split(1000):
        q = model.encoder(xb)
        z = q.rsample()
        rec.append(model.decoder.log_prob(xb, z))
        kl.append(q.log_prob(z) + prior.free_energy(z))
    rec_t, kl_t = torch.cat(rec).double().cpu(), torch.cat(kl).double().cpu() + log_z
    ess = est["ess"].double().cpu()
    n = len(nll)
    out = {
        "test_nll": nll.mean().item(), "test_nll_se": (nll.std() / math.sqrt(n)).item() if n > 1 else None,
        "test_nll_log_z_se": log_z_se,
        "test_elbo": (rec_t - kl_t).mean().item(), "test_reconstruction": rec_t.mean().item(),
        "test_kl": kl_t.mean().item(), "is_samples": n_samples, "test_images": n,
        "ess_mean": ess.mean().item(), "ess_median": ess.median().item(), "ess_min": ess.min().item(),
        "log_z": log_z, "log_z_se": log_z_se, "ais_temperatures": n_temperatures, "ais_chains": n_chains,
        "ais_ess": float(ais.ess), "ais_acceptance": float(ais.acceptance), "ais_seconds": ais_seconds,
        "log_z_note": ("log Z by AIS (a stochastic lower bound, biased low): the NLL is biased optimistically by "
                       "about that bias; test_nll_log_z_se is an offset shared by every test image"),
        "eval_seconds": time.perf_counter() - start, **both,
    }
    if prior.n_hidden <= prior.max_exact_hidden:
        exact = float(prior.log_partition_exact())
        out["log_z_exact"] = exact
        out["test_nll_exact_log_z"] = (nll - log_z + exact).mean().item()
    return out


__all__ = ["EBMPriorTrainer", "HISTORY_KEYS", "PRIOR_OBJECTIVES", "adversary_loss", "aggregated_posterior_base", "attach_log_partition",
           "build_ebm_vae", "evaluate_ebm_vae", "prior_loss"]
