"""Training recipes: the models the auto-encoder chapters show, each defined once, with its budget.

A recipe names everything that determines a trained model — data, architecture, prior, optimiser,
schedule, budget, seed — and how it is evaluated. ``python -m mvl.train RECIPE`` trains it resumably and
publishes the weights under ``trained/`` (:mod:`mvl.trained`); the chapters load those weights, or train
a recipe themselves through the same code. Change anything that affects the result and bump ``version``:
a checkpoint or a committed model of another version is then refused, never silently reused.

Chapter 7's recipes follow Tomczak & Welling (2018), one stochastic layer, as the book implements it
(:func:`mvl.ae.vae.build_vae`). Where they differ from the authors' released code:

* the optimiser is plain Adam (the official code uses its "AdamNormGrad", Adam on gradients normalised
  per parameter tensor);
* the layers keep PyTorch's default initialisation (the official code uses He initialisation);
* the VampPrior's pseudo-inputs start at K random training images (the official code starts them at
  random values, N(0.05, 0.01) before the hard-tanh);
* the KL warm-up is per update rather than per epoch, and validation uses the statically binarized
  validation images (the last 10 000 of the training set).

Chapter 8's recipes (:class:`EBMPriorRecipe`) follow the seed paper's MNIST setup (*Variational Inference with
Unnormalized Priors*, §4.2): ELU encoder 784-256-256-128 and decoder 64-256-256-784, Adam 1e-3 for the VAE
and 2e-4 for the prior, batch 64, 100 epochs, dynamic binarization, a 64 × 64 GRBM prior trained by SSM, MVL,
DSM+CV or adversarial CD, and the N(0, I) and VampPrior (K = 16) baselines through the same loop
(:class:`mvl.ae.ebm_prior.EBMPriorTrainer`). Not stated in the seed paper and chosen here: no KL warm-up and no
early stopping (the final weights are evaluated), the encoder's log-variance clamped to [−6, 2] as in chapter 7,
the GRBM initialised with W ~ N(0, 0.1²), μ = 0, σ = 1, MVL's step and DSM's noise variance ε = 10⁻³, the
adversary a 4-layer masked-linear IAF with Adam 1e-3 and ``batch_size`` draws per step, and the test NLL from
1000 importance samples per test image with log Z by AIS (1000 temperatures × 100 HMC chains).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from . import vae as V


@dataclass(frozen=True)
class VAERecipe:
    """One trainable VAE of the book (chapter 7 and later): what to build, how to train and evaluate it."""

    name: str
    version: int
    chapter: int
    description: str
    prior: str = "standard"          # "standard" | "vamp"
    latent: int = 40
    hidden: int = 300
    n_pseudo: int = 500              # VampPrior components K (ignored for the standard prior)
    n_train: int = 50_000
    n_valid: int = 10_000
    epochs: int = 2000               # the budget; early stopping usually ends a run before it
    warmup: float = 100.0            # KL warm-up, epochs
    lr: float = 5e-4
    batch_size: int = 100
    patience: int = 50               # early stopping look-ahead, epochs
    seed: int = 0
    eval_samples: int = 5000         # importance samples per test image
    eval_images: int = 10_000        # test images evaluated (the whole test set)
    optimizer: str = "adam"          # "adam" | "adamnormgrad" (the released VampPrior code)
    weight_init: str = "default"     # "default" (PyTorch's) | "he" (the released code's N(0, 2/fan_in))
    pseudo_init: str = "data"        # VampPrior pseudo-inputs: "data" (K training images) | "random" (the code's)

    priors = ("standard", "vamp")  # a class attribute (not a setting): the priors this kind of recipe builds
    added_later = {"optimizer": "adam", "weight_init": "default", "pseudo_init": "data"}
    """Settings added after models were committed, with the value those models were trained with: left out of
    :meth:`settings` (and so of the fingerprint) at that value, so that a new knob does not orphan them."""

    def __post_init__(self):
        if self.prior not in self.priors:
            raise ValueError(f"recipe {self.name}: unknown prior {self.prior!r} (choose one of {self.priors})")
        for field in ("latent", "hidden", "n_pseudo", "n_train", "n_valid", "epochs", "batch_size", "patience",
                      "eval_samples", "eval_images"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe {self.name}: {field} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.warmup) and self.warmup >= 0):
            raise ValueError(f"recipe {self.name}: lr must be > 0 and warmup >= 0")
        for field, allowed in (("optimizer", tuple(V.OPTIMIZERS)), ("weight_init", ("default", "he")),
                               ("pseudo_init", ("data", "random"))):
            if getattr(self, field) not in allowed:
                raise ValueError(f"recipe {self.name}: {field} must be one of {allowed}, got {getattr(self, field)!r}")

    def settings(self) -> dict[str, Any]:
        """The recipe as a plain dict (what run records and checkpoints store), without the settings of
        :attr:`added_later` at their original value."""
        later = getattr(self, "added_later", {})  # (the other recipe kinds borrow this method)
        return {k: v for k, v in dataclasses.asdict(self).items() if later.get(k, object()) != v}

    def fingerprint(self) -> str:
        """A hash of every setting: a checkpoint made under other settings is refused even at equal version."""
        text = json.dumps(self.settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def budget(self) -> str:
        """One line for ``python -m mvl.train --list``."""
        return (f"{self.epochs} epochs max (early stopping after {self.patience} without improvement), "
                f"batch {self.batch_size}, {self.n_train} images; evaluation {self.eval_samples} importance samples "
                f"x {self.eval_images} test images")

    def with_changes(self, **changes: Any) -> VAERecipe:
        """A modified copy, e.g. a tiny version for the quick profile (give it its own name)."""
        return dataclasses.replace(self, **changes)

    def build(self, train_probs: torch.Tensor | None = None) -> V.VAE:
        """The untrained model, seeded: the VampPrior's pseudo-inputs are K training images drawn with the
        recipe's seed (``train_probs``, gray levels ``[n, 784]``; required for ``prior="vamp"``), or with
        ``pseudo_init="random"`` the released code's start for MNIST, pixels N(0.05, 0.01²) clipped to [0, 1]
        (its ``utils/load_data.py`` sets ``pseudoinputs_mean = 0.05``, overriding the command line's −0.05, and
        ``Model.add_pseudoinputs`` clips with a hard tanh; :class:`mvl.ae.priors.VampPrior` keeps them in
        [0.02, 0.98] through its sigmoid parameterization, whose slope at 0.05 is about 0.05, so they move about
        twenty times more slowly than the code's clipped pixels: a difference that remains);
        ``weight_init="he"`` re-draws the encoder's and decoder's linear weights from N(0, 2/fan_in)."""
        torch.manual_seed(self.seed)
        init: torch.Tensor | str = "random"
        if self.prior == "vamp":
            if self.pseudo_init == "random":
                init = (0.05 + 0.01 * torch.randn(self.n_pseudo, 784)).clamp(0, 1)
            elif train_probs is None:
                raise ValueError(f"recipe {self.name}: the VampPrior needs training images to start its pseudo-inputs")
            else:
                init = train_probs[torch.randperm(len(train_probs))[: self.n_pseudo]]
        model = self.skeleton(init)
        if self.weight_init == "he":
            V.he_init_(model.encoder)
            V.he_init_(model.decoder)
        return model

    def skeleton(self, pseudo_init: torch.Tensor | str = "random") -> V.VAE:
        """The model's architecture with fresh weights (what committed weights are loaded into)."""
        return V.build_vae(self.prior, self.latent, self.hidden, n_pseudo=self.n_pseudo, pseudo_init=pseudo_init)

    def trainer(self, model: V.VAE, train, valid, device, generator) -> V.VAETrainer:
        """The training loop of this recipe (chapter 7: :class:`mvl.ae.vae.VAETrainer`)."""
        return V.VAETrainer(model, train, valid, self.epochs, self.batch_size, self.lr, self.warmup, self.patience,
                            device, generator, optimizer=self.optimizer)


@dataclass(frozen=True)
class EBMPriorRecipe(VAERecipe):
    """A VAE of chapter 8 (seed 003 §4.2): ELU encoder 784-256-256-128 and decoder 64-256-256-784, a GRBM
    (64 × ``prior_hidden``), N(0, I) or VampPrior prior, trained by :class:`mvl.ae.ebm_prior.EBMPriorTrainer`
    (Adam ``lr`` for the VAE, ``prior_lr`` for an energy-based prior, batch 64, dynamic binarization, no KL
    warm-up, no early stopping: the final weights after ``epochs``) and evaluated by importance sampling with
    the GRBM's log Z from AIS (``ais_temperatures`` × ``ais_chains``; :func:`mvl.ae.ebm_prior.evaluate_ebm_vae`).
    ``prior_objective`` is one of :data:`mvl.ae.ebm_prior.PRIOR_OBJECTIVES` (``"elbo"`` for the normalized
    priors); ``prior_eps`` is MVL's step and DSM's noise variance."""

    prior: str = "grbm"
    latent: int = 64
    hidden: int = 256
    n_pseudo: int = 16
    epochs: int = 100
    warmup: float = 0.0
    lr: float = 1e-3
    batch_size: int = 64
    patience: int = 100              # unused: no early stopping
    eval_samples: int = 1000
    body: str = "elu"
    prior_objective: str = "ssm"
    prior_hidden: int = 64
    prior_lr: float = 2e-4
    prior_eps: float = 1e-3
    n_slices: int = 1
    energy_l2: float = 0.0
    adversary_layers: int = 4
    adversary_hidden: tuple[int, ...] = ()   # () = the seed's linear IAF
    adversary_lr: float = 1e-3
    adversary_steps: int = 1         # adversary updates per prior update (the seed: 1)
    ais_temperatures: int = 1000
    ais_chains: int = 100

    priors = ("standard", "vamp", "grbm")

    def __post_init__(self):
        super().__post_init__()
        from .ebm_prior import PRIOR_OBJECTIVES

        if self.prior_objective not in PRIOR_OBJECTIVES:
            raise ValueError(f"recipe {self.name}: unknown prior_objective {self.prior_objective!r} "
                             f"(choose one of {PRIOR_OBJECTIVES})")
        if (self.prior == "grbm") == (self.prior_objective == "elbo"):
            raise ValueError(f"recipe {self.name}: a GRBM prior is trained by an EBM objective, a normalized prior "
                             f"by 'elbo'; got prior {self.prior!r} with {self.prior_objective!r}")
        for field in ("prior_hidden", "n_slices", "adversary_layers", "adversary_steps", "ais_temperatures", "ais_chains"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe {self.name}: {field} must be a positive integer, got {value!r}")
        for field in ("prior_lr", "prior_eps", "adversary_lr"):
            if not (math.isfinite(getattr(self, field)) and getattr(self, field) > 0):
                raise ValueError(f"recipe {self.name}: {field} must be a positive number")
        if not (math.isfinite(self.energy_l2) and self.energy_l2 >= 0):
            raise ValueError(f"recipe {self.name}: energy_l2 must be >= 0")
        for field in ("optimizer", "weight_init", "pseudo_init"):  # chapter 7's knobs: this trainer has its own
            if getattr(self, field) != VAERecipe.added_later[field]:
                raise ValueError(f"recipe {self.name}: {field} is a chapter-7 setting; chapter 8's trainer does not use it")

    added_later = {**VAERecipe.added_later, "adversary_steps": 1}

    def budget(self) -> str:
        extra = "" if self.prior != "grbm" else f"; log Z by AIS, {self.ais_temperatures} temperatures x {self.ais_chains} chains"
        return (f"{self.epochs} epochs, batch {self.batch_size}, {self.n_train} images, prior {self.prior} by "
                f"{self.prior_objective}; evaluation {self.eval_samples} importance samples x {self.eval_images} "
                f"test images{extra}")

    def skeleton(self, pseudo_init: torch.Tensor | str = "random") -> V.VAE:
        from .ebm_prior import build_ebm_vae

        return build_ebm_vae(self.latent, self.hidden, prior=self.prior, prior_hidden=self.prior_hidden,
                             n_pseudo=self.n_pseudo, pseudo_init=pseudo_init, body=self.body)

    def trainer(self, model: V.VAE, train, valid, device, generator):
        from .ebm_prior import EBMPriorTrainer
        from .flows import IAF

        adversary = None
        if self.prior_objective == "adversarial":
            torch.manual_seed(self.seed + 2)
            adversary = IAF(self.latent, self.adversary_layers, hidden=tuple(self.adversary_hidden))
        return EBMPriorTrainer(model, train, valid, self.prior_objective, self.epochs, self.batch_size, self.lr,
                               self.prior_lr, self.prior_eps, self.n_slices, self.energy_l2, adversary,
                               self.adversary_lr, device, generator, self.adversary_steps)

    def evaluate_model(self, model: V.VAE, test: torch.Tensor) -> dict[str, Any] | None:
        """The GRBM prior's evaluation (AIS log Z, then importance sampling); None for a normalized prior,
        which :func:`mvl.train.evaluate` evaluates as chapter 7 does."""
        if self.prior != "grbm":
            return None
        from .ebm_prior import evaluate_ebm_vae

        return evaluate_ebm_vae(model, test, self.eval_samples, self.ais_temperatures, self.ais_chains, self.seed,
                                base_images=test[:500])


@dataclass(frozen=True)
class ClassifierRecipe:
    """The MNIST classifier whose 512 features chapter 10's FID uses (:class:`mvl.ae.fid.LeNet`, the WMVL
    authors' LeNet-5-like TensorFlow tutorial model): Adam ``lr`` on cross-entropy, batch ``batch_size``,
    ``epochs`` passes over the first ``n_train`` training images binarized afresh each pass, dropout 0.5, no
    early stopping (:class:`mvl.ae.fid.ClassifierTrainer`). Not from the authors' code (they use momentum SGD
    with a decaying rate and an L2 penalty on the fully connected layers, on gray images): Adam, dynamic
    binarization, 50 000 training images. Evaluated by its accuracy on the statically binarized test set (with
    the binomial standard error) and by FID's sanity checks (:func:`mvl.ae.fid.fid_sanity_checks`: the test set
    against the 10 000 held-out validation images, corrupted or collapsed). ``score_generators`` names committed
    WAE recipes whose FID is measured under this classifier too, on the very prior samples their own run records
    were scored on (:meth:`WAERecipe.evaluate_model`): a second classifier's view of the same images, the
    comparison of chapter 10's section "Does the classifier matter?"."""

    name: str
    version: int
    chapter: int
    description: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    dropout: float = 0.5
    n_train: int = 50_000
    n_valid: int = 10_000
    eval_images: int = 10_000
    seed: int = 0
    score_generators: tuple[str, ...] = ()
    eval_samples = 0  # a class attribute (not a setting): no importance sampling
    added_later = {"score_generators": ()}  # left out of settings() at this value: older fingerprints stay

    def __post_init__(self):
        for field in ("epochs", "batch_size", "n_train", "n_valid", "eval_images"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe {self.name}: {field} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0 and 0 <= self.dropout < 1):
            raise ValueError(f"recipe {self.name}: lr must be > 0 and dropout in [0, 1)")

    settings = VAERecipe.settings
    fingerprint = VAERecipe.fingerprint
    with_changes = VAERecipe.with_changes

    def budget(self) -> str:
        return (f"{self.epochs} epochs, batch {self.batch_size}, {self.n_train} images; evaluation: accuracy on "
                f"{self.eval_images} test images and FID sanity checks")

    def build(self, train_probs: torch.Tensor | None = None):
        """The untrained classifier, seeded (``train_probs`` is ignored)."""
        torch.manual_seed(self.seed)
        return self.skeleton()

    def skeleton(self):
        from .fid import LeNet

        return LeNet(self.dropout)

    def trainer(self, model, train, valid, device, generator):
        from .fid import ClassifierTrainer
        from .mnist import mnist

        labels = mnist("valid", binarize=None).labels[: len(valid)] if valid is not None else None
        return ClassifierTrainer(model, train, valid, labels, self.epochs, self.batch_size, self.lr, device, generator)

    def evaluate_model(self, model, test: torch.Tensor) -> dict[str, Any]:
        """Test accuracy (``test`` are the first ``eval_images`` statically binarized test images) with its
        binomial standard error, and FID's sanity checks against the same test images."""
        import time

        from .fid import accuracy, fid_sanity_checks
        from .mnist import mnist

        start = time.perf_counter()
        labels = mnist("test", binarize=None).labels[: len(test)]
        acc = accuracy(model, test, labels)
        held_out = mnist("valid", binarize="static").subset(self.n_valid).tensor()
        checks = fid_sanity_checks(model, test, held_out, seed=self.seed)
        metrics = {"test_accuracy": acc, "test_accuracy_se": math.sqrt(acc * (1 - acc) / len(test)),
                   "test_images": len(test), "fid_held_out": checks["held_out"],
                   "fid_flip": {str(k): v for k, v in checks["flip"].items()},
                   "fid_blur": {str(k): v for k, v in checks["blur"].items()}, "fid_collapsed": checks["collapsed"],
                   "fid_held_out_images": checks["n_held_out"]}
        if self.score_generators:
            metrics["fid_generators"], metrics["fid_generators_sha256"] = self.score(model, test)
        return {**metrics, "eval_seconds": time.perf_counter() - start}

    def score(self, model, test: torch.Tensor) -> tuple[dict[str, float], dict[str, str]]:
        """FID under ``model`` of each of :attr:`score_generators` (committed, checksum-verified), from the prior
        samples its run record was scored on: its recipe's seed and ``eval_images``, against ``test``."""
        from .. import trained
        from .fid import fid

        fids, hashes = {}, {}
        for name in self.score_generators:
            gen = get_recipe(name)
            if not isinstance(gen, WAERecipe):
                raise ValueError(f"recipe {self.name}: score_generators must name WAE recipes, {name!r} is a "
                                 f"{type(gen).__name__}")
            if gen.eval_images != len(test):
                raise ValueError(f"recipe {self.name}: {name} was scored on {gen.eval_images} images, this classifier "
                                 f"on {len(test)}; give both the same eval_images")
            state, entry = trained.load_state_dict(gen.name, gen.version)
            generator = gen.skeleton()
            generator.load_state_dict(state)
            generator.to(test.device).eval()
            samples = generator.sample(len(test), torch.Generator().manual_seed(gen.seed)).to(test.device)
            fids[name], hashes[name] = fid(samples, test, model), entry["sha256"]
        return fids, hashes

    def summary(self, metrics: dict[str, Any]) -> str:
        """The one line ``python -m mvl.train`` prints after publishing."""
        return (f"test accuracy {100 * metrics['test_accuracy']:.2f} ± {100 * metrics['test_accuracy_se']:.2f} % "
                f"({metrics['test_images']} images); FID held-out {metrics['fid_held_out']:.2f}, collapsed "
                f"{metrics['fid_collapsed']:.1f}")


@dataclass(frozen=True)
class WAERecipe:
    """A Wasserstein auto-encoder of chapter 10 (WMVL paper §6.2.2, App. E.2; :mod:`mvl.ae.wae`): ``latent`` =
    ``"sphere"`` (codes on Sⁿ, uniform prior) or ``"euclidean"`` (Rⁿ, N(0, I)), n = ``n``; ``regularizer`` =
    ``"mvl"`` (KL through an MVL-fitted marginal energy) or ``"gan"`` (discriminator); λ = ``lam``, RMSProp
    ``lr`` for the auto-encoder and ``aux_lr`` for the energy or discriminator, batch ``batch_size``,
    ``steps`` updates over the first ``n_train`` training images binarized afresh each pass. Evaluated by FID
    (:func:`mvl.ae.fid.fid`, through the committed classifier ``ch10-lenet``) between ``eval_images`` decoded
    prior samples (binarized) and as many statically binarized test images, and the test reconstruction.
    Not stated in the paper and taken from the authors' ``src/mnist.py``: tanh layers, z·√(n+1) into the
    decoder and energy, the energy's and discriminator's L2 penalty on their outputs, the released code's
    per-sample MVL step; chosen here: the auxiliary network's step uses the codes from before the auto-encoder's
    step (the released code re-encodes), 50 000 training images (the authors train on all 60 000 with
    ``-test``), a statically binarized test set for FID (they binarize it afresh)."""

    name: str
    version: int
    chapter: int
    description: str
    latent: str = "sphere"
    regularizer: str = "mvl"
    n: int = 8
    hidden: int = 256
    steps: int = 200_000
    batch_size: int = 128
    lr: float = 1e-3
    aux_lr: float = 1e-3
    lam: float = 10.0
    eps: float = 1e-3
    aux_l2: float = 1e-5
    n_train: int = 50_000
    n_valid: int = 10_000
    eval_images: int = 10_000
    seed: int = 0
    classifier: str = "ch10-lenet"
    eval_samples = 0  # a class attribute (not a setting): no importance sampling

    def __post_init__(self):
        from .wae import LATENTS, REGULARIZERS

        if self.latent not in LATENTS or self.regularizer not in REGULARIZERS:
            raise ValueError(f"recipe {self.name}: latent must be one of {LATENTS} and regularizer one of "
                             f"{REGULARIZERS}; got {self.latent!r}, {self.regularizer!r}")
        for field in ("n", "hidden", "steps", "batch_size", "n_train", "n_valid", "eval_images"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe {self.name}: {field} must be a positive integer, got {value!r}")
        for field in ("lr", "aux_lr", "lam", "eps"):
            if not (math.isfinite(getattr(self, field)) and getattr(self, field) > 0):
                raise ValueError(f"recipe {self.name}: {field} must be a positive number")
        if not (math.isfinite(self.aux_l2) and self.aux_l2 >= 0):
            raise ValueError(f"recipe {self.name}: aux_l2 must be >= 0")

    settings = VAERecipe.settings
    fingerprint = VAERecipe.fingerprint
    with_changes = VAERecipe.with_changes

    @property
    def epochs(self) -> int:
        """Passes over the training images that ``steps`` updates take (the last one may be partial)."""
        return math.ceil(self.steps / math.ceil(self.n_train / self.batch_size))

    def budget(self) -> str:
        return (f"{self.steps} steps ({self.epochs} epochs), batch {self.batch_size}, {self.n_train} images; "
                f"evaluation: FID of {self.eval_images} prior samples against {self.eval_images} test images")

    def build(self, train_probs: torch.Tensor | None = None):
        """The untrained WAE, seeded (``train_probs`` is ignored)."""
        torch.manual_seed(self.seed)
        return self.skeleton()

    def skeleton(self):
        from .wae import WAE

        return WAE(self.latent, self.n, self.hidden)

    def trainer(self, model, train, valid, device, generator):
        from .wae import WAETrainer, discriminator, marginal_energy

        torch.manual_seed(self.seed + 2)
        aux = (marginal_energy if self.regularizer == "mvl" else discriminator)(model.space, self.hidden)
        return WAETrainer(model, aux, self.regularizer, train, valid, self.steps, self.batch_size, self.lr,
                          self.aux_lr, self.lam, self.eps, self.aux_l2, device, generator)

    def evaluate_model(self, model, test: torch.Tensor) -> dict[str, Any]:
        """FID of ``len(test)`` decoded prior samples (seeded with the recipe's seed) against ``test``, through
        the committed classifier, and the mean test reconstruction cross-entropy."""
        import time

        from .. import trained
        from .fid import fid

        start = time.perf_counter()
        clf = get_recipe(self.classifier)
        state, entry = trained.load_state_dict(clf.name, clf.version)
        classifier = clf.skeleton()
        classifier.load_state_dict(state)
        classifier.to(test.device).eval()
        samples = model.sample(len(test), torch.Generator().manual_seed(self.seed)).to(test.device)
        with torch.no_grad():
            rec = torch.cat([model.reconstruction(b) for b in test.split(1000)]).double()
        return {"fid": fid(samples, test, classifier), "fid_images": len(test), "fid_classifier": clf.name,
                "fid_classifier_sha256": entry["sha256"], "test_reconstruction": rec.mean().item(),
                "test_reconstruction_se": (rec.std() / math.sqrt(len(rec))).item(), "test_images": len(test),
                "eval_seconds": time.perf_counter() - start}

    def summary(self, metrics: dict[str, Any]) -> str:
        return (f"FID {metrics['fid']:.2f} ({metrics['fid_images']} samples vs test images, classifier "
                f"{metrics['fid_classifier']}); test reconstruction {metrics['test_reconstruction']:.2f} ± "
                f"{metrics['test_reconstruction_se']:.2f}")


@dataclass(frozen=True)
class Table1Recipe:
    """A VAE of chapter 9's Table 1 (WMVL paper §6.2.1, App. E.2; :mod:`mvl.ae.sphere_vae`): ``encoder`` =
    ``"explicit"`` (vMF posterior on the sphere, softplus-Gaussian in Rⁿ) or ``"implicit"`` (z = f(x, ξ), entropy
    gradient from a conditional energy fitted by MVL with step ``eps`` and L2 weight ``energy_l2``); ``latent`` =
    ``"sphere"`` (Sⁿ, uniform prior) or ``"euclidean"`` (Rⁿ, N(0, I)); RMSProp ``lr``, batch ``batch_size``,
    ``steps`` updates over the first ``n_train`` training images binarized afresh each pass. Evaluated by AIS
    from the prior on ``eval_images`` statically binarized test images (``ais_temperatures`` sigmoid temperatures,
    ``ais_chains`` chains; Riemannian MALA with ``ais_steps`` steps per temperature on the sphere, HMC with 10
    leapfrog steps in Rⁿ) and, for the explicit models, the IWAE bound with ``iwae_samples`` samples.
    From the authors' ``src/mnist.py``/``models.py``: 2 × 256 units, ReLU (explicit) or tanh (implicit), z·√(n+1)
    into the decoder and energy, noise size n, κ = softplus + 1, RMSProp 1e-3, batch 128, 10⁵ iterations, L2 1e-4
    (``vae-implicit.py``); chosen here: 50 000 training images (the authors' ``-test`` runs use all 60 000), a
    statically binarized test set (they binarize it afresh), torch's RMSProp accumulator starting at 0, and AIS on
    the first 1000 test images (the paper uses all 10 000; at the paper's AIS settings that costs, measured on one
    CPU thread, 0.30 s per temperature per 128 images on the sphere and 0.55 s in Rⁿ, i.e. 7–12 h per model, so
    run ``with_changes(eval_images=10_000)`` on a GPU for the full set). Training: 12–46 ms per step on one CPU
    thread (explicit Euclidean … implicit sphere at n = 8), 20–80 min per model."""

    name: str
    version: int
    chapter: int
    description: str
    encoder: str = "implicit"
    latent: str = "sphere"
    n: int = 8
    hidden: int = 256
    steps: int = 100_000
    batch_size: int = 128
    lr: float = 1e-3
    eps: float = 1e-3
    energy_l2: float = 1e-4
    n_train: int = 50_000
    n_valid: int = 10_000
    eval_images: int = 200           # the first 200 test images: ~4 s per image on one CPU thread at these AIS
    #                                  settings, so the whole test set (11 h per model) is a GPU task
    ais_temperatures: int = 1000
    ais_chains: int = 16
    ais_steps: int = 5
    iwae_samples: int = 1000
    seed: int = 0
    energy_form: str = "zpsi"        # implicit models: "ffn" is the paper's ablation (a plain scalar network)
    eval_samples = 0  # a class attribute (not a setting): AIS, not importance sampling, gives the test NLL

    added_later = {"energy_form": "zpsi"}
    """Settings added after runs were started, left out of :meth:`settings` (and the fingerprint) at this value."""

    def __post_init__(self):
        from .sphere_vae import ENCODERS, LATENTS

        if self.encoder not in ENCODERS or self.latent not in LATENTS:
            raise ValueError(f"recipe {self.name}: encoder must be one of {ENCODERS} and latent one of {LATENTS}; "
                             f"got {self.encoder!r}, {self.latent!r}")
        for field in ("n", "hidden", "steps", "batch_size", "n_train", "n_valid", "eval_images", "ais_temperatures",
                      "ais_chains", "ais_steps", "iwae_samples"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe {self.name}: {field} must be a positive integer, got {value!r}")
        for field in ("lr", "eps"):
            if not (math.isfinite(getattr(self, field)) and getattr(self, field) > 0):
                raise ValueError(f"recipe {self.name}: {field} must be a positive number")
        if not (math.isfinite(self.energy_l2) and self.energy_l2 >= 0):
            raise ValueError(f"recipe {self.name}: energy_l2 must be >= 0")
        from .implicit import ENERGY_FORMS

        if self.energy_form not in ENERGY_FORMS:
            raise ValueError(f"recipe {self.name}: energy_form must be one of {ENERGY_FORMS}, got {self.energy_form!r}")

    fingerprint = VAERecipe.fingerprint
    with_changes = VAERecipe.with_changes

    settings = VAERecipe.settings  # without the settings of :attr:`added_later` at their original value

    @property
    def epochs(self) -> int:
        """Passes over the training images that ``steps`` updates take (the last one may be partial)."""
        return math.ceil(self.steps / math.ceil(self.n_train / self.batch_size))

    def budget(self) -> str:
        kernel = (f"Riemannian MALA x {self.ais_steps}" if self.latent == "sphere" else "HMC (10 leapfrog)")
        return (f"{self.steps} steps ({self.epochs} epochs), batch {self.batch_size}, {self.n_train} images; evaluation: "
                f"AIS {self.ais_temperatures} temperatures x {self.ais_chains} chains ({kernel}) on {self.eval_images} "
                f"test images")

    def build(self, train_probs: torch.Tensor | None = None):
        """The untrained model, seeded (``train_probs`` is ignored)."""
        torch.manual_seed(self.seed)
        return self.skeleton()

    def skeleton(self):
        from .sphere_vae import build_model

        return build_model(self.encoder, self.latent, self.n, self.hidden, energy_form=self.energy_form)

    def trainer(self, model, train, valid, device, generator):
        from .sphere_vae import Table1Trainer

        return Table1Trainer(model, train, valid, self.steps, self.batch_size, self.lr, self.eps, self.energy_l2,
                             device, generator)

    def evaluate_model(self, model, test: torch.Tensor) -> dict[str, Any]:
        from .sphere_vae import evaluate

        return evaluate(model, test, self.ais_temperatures, self.ais_chains, self.ais_steps, 10, self.iwae_samples,
                        self.seed)

    def summary(self, metrics: dict[str, Any]) -> str:
        iw = f"; IWAE NLL {metrics['iwae_nll']:.2f} ({self.iwae_samples} samples)" if "iwae_nll" in metrics else ""
        return (f"test NLL {metrics['test_nll']:.2f} ± {metrics['test_nll_se'] or 0:.2f} by AIS ({self.ais_temperatures} "
                f"temperatures x {self.ais_chains} chains, {metrics['test_images']} images){iw}")


def _ch9(encoder: str, latent: str, n: int) -> Table1Recipe:
    what = {"explicit": {"sphere": "vMF posterior", "euclidean": "Gaussian posterior"},
            "implicit": {"sphere": "implicit encoder, Riemannian MVL conditional energy",
                         "euclidean": "implicit encoder, MVL conditional energy"}}[encoder][latent]
    space = f"S^{n}, uniform prior" if latent == "sphere" else f"R^{n}, N(0, I) prior"
    return Table1Recipe(f"ch9-{encoder}-{latent}-{n}", 1, 9, f"MNIST VAE (WMVL Table 1), {what}, {space}",
                        encoder=encoder, latent=latent, n=n)


def _ch8(name: str, description: str, **settings: Any) -> EBMPriorRecipe:
    return EBMPriorRecipe(name, 1, 8, description, **settings)


RECIPES: dict[str, VAERecipe] = {
    r.name: r
    for r in (
        VAERecipe("ch7-standard", 1, 7, "one-layer VAE, standard normal prior (Tomczak & Welling 2018, Table 2)",
                  prior="standard"),
        VAERecipe("ch7-vampprior", 1, 7, "one-layer VAE, VampPrior with K = 500 pseudo-inputs (Tomczak & Welling 2018)",
                  prior="vamp"),
        VAERecipe("ch7-standard-official", 1, 7, "as ch7-standard, with the released code's AdamNormGrad and He "
                  "initialization (the paper profile)", prior="standard", optimizer="adamnormgrad", weight_init="he"),
        VAERecipe("ch7-vampprior-official", 1, 7, "as ch7-vampprior, with the released code's AdamNormGrad, He "
                  "initialization and random pseudo-inputs (the paper profile)", prior="vamp",
                  optimizer="adamnormgrad", weight_init="he", pseudo_init="random"),
        _ch8("ch8-standard", "seed 003 MNIST VAE (ELU 784-256-256-128 / 64-256-256-784), N(0, I) prior",
             prior="standard", prior_objective="elbo"),
        _ch8("ch8-vampprior", "seed 003 MNIST VAE, VampPrior with K = 16 pseudo-inputs", prior="vamp",
             prior_objective="elbo"),
        _ch8("ch8-grbm-ssm", "seed 003 MNIST VAE, GRBM prior (64 x 64) by sliced score matching (Algorithm 1)",
             prior_objective="ssm"),
        _ch8("ch8-grbm-mvl", "seed 003 MNIST VAE, GRBM prior (64 x 64) by minimum velocity learning (eps 1e-3)",
             prior_objective="mvl"),
        _ch8("ch8-grbm-dsm", "seed 003 MNIST VAE, GRBM prior (64 x 64) by denoising score matching with the "
             "control variate (noise variance 1e-3)", prior_objective="dsm"),
        EBMPriorRecipe("ch8-grbm-adversarial", 2, 8, "seed 003 MNIST VAE, GRBM prior (64 x 64) by adversarial CD "
                       "with a 4-layer linear IAF adversary (Algorithm 2) and an L2 penalty 0.01 on the energy "
                       "values (version 1, without it, diverged: E at the posterior samples ran to -4e5 in 13 "
                       "epochs)", prior_objective="adversarial", energy_l2=0.01),
        ClassifierRecipe("ch10-lenet", 1, 10, "LeNet-5-like MNIST classifier (conv 32, conv 64, fc 512) whose 512 "
                         "features chapter 10's FID uses; binarized images, Adam, 10 epochs"),
        ClassifierRecipe("ch10-lenet-seed1", 1, 10, "ch10-lenet trained with seed 1 (train with --record-only: its "
                         "record, not its weights), which also scores the four committed Table-2 WAEs on their "
                         "recorded prior samples", seed=1,
                         score_generators=tuple(f"ch10-wae-{reg}-{lat}" for reg in ("gan", "mvl")
                                                for lat in ("euclidean", "sphere"))),
        WAERecipe("ch10-wae-mvl-sphere", 1, 10, "MNIST WAE (WMVL Table 2), codes on S^8, uniform prior, KL through an MVL-fitted marginal energy",
                  latent="sphere", regularizer="mvl"),
        WAERecipe("ch10-wae-mvl-euclidean", 1, 10, "MNIST WAE (WMVL Table 2), codes in R^8, N(0, I) prior, KL through an MVL-fitted marginal energy",
                  latent="euclidean", regularizer="mvl"),
        WAERecipe("ch10-wae-gan-sphere", 1, 10, "MNIST WAE (WMVL Table 2), codes on S^8, uniform prior, GAN discriminator",
                  latent="sphere", regularizer="gan"),
        WAERecipe("ch10-wae-gan-euclidean", 1, 10, "MNIST WAE (WMVL Table 2), codes in R^8, N(0, I) prior, GAN discriminator",
                  latent="euclidean", regularizer="gan"),
        *(WAERecipe(f"ch10-wae-{reg}-{lat}-short", 1, 10, f"MNIST WAE (WMVL Table 2), the book's reduced budget: "
                    f"20 000 steps, 10 % of the paper's 2e5; otherwise as ch10-wae-{reg}-{lat}",
                    latent=lat, regularizer=reg, steps=20_000)
          for reg in ("mvl", "gan") for lat in ("sphere", "euclidean")),
        *(WAERecipe(f"ch10-wae-{reg}-{lat}-short-seed{seed}", 1, 10, f"seed replicate {seed} of "
                    f"ch10-wae-{reg}-{lat}-short (train with --record-only: its run record is kept, not its weights)",
                    latent=lat, regularizer=reg, steps=20_000, seed=seed)
          for seed in (1, 2) for reg in ("mvl", "gan") for lat in ("sphere", "euclidean")),
        *(_ch9(e, lat, n) for n in (8, 32) for e in ("explicit", "implicit") for lat in ("euclidean", "sphere")),
    )
}
"""Every recipe of the book, by name."""


def get_recipe(name: str) -> VAERecipe:
    """The recipe called ``name``, or a ``KeyError`` that lists the recipes."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; the recipes are: {', '.join(sorted(RECIPES))} "
                       f"(python -m mvl.train --list)") from None


__all__ = ["ClassifierRecipe", "EBMPriorRecipe", "RECIPES", "Table1Recipe", "VAERecipe", "WAERecipe", "get_recipe"]
