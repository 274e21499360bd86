"""The Fréchet distance of classifier features (FID) on MNIST, and the classifier it is computed with (chapter 10).

FID (Heusel et al., 2017) fits a Gaussian to the features of each of two image sets and reports the Fréchet
(2-Wasserstein) distance between the two Gaussians,

    d²(N(μ₁, Σ₁), N(μ₂, Σ₂)) = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})        (:func:`frechet_distance`).

On MNIST the features are not Inception's but those of a small classifier trained on MNIST itself, as in the
WMVL paper's Table 2 (§6.2.2, App. E.2; the authors' ``src/lid/lenet.py`` is TensorFlow's LeNet-5-like
tutorial model): :class:`LeNet`, conv 5×5×32 → max-pool → conv 5×5×64 → max-pool → fc 512 → 10, inputs scaled
to [−0.5, 0.5], and the features are its 512-unit layer (after the ReLU; dropout is off at evaluation). Its
values are therefore comparable only between runs that use the same classifier weights: another classifier
(another seed) gives other numbers, and none of them is comparable with an Inception FID.

Images are binarized MNIST digits, ``[n, 784]`` (or ``[n, 28, 28]``, ``[n, 1, 28, 28]``) with values in
[0, 1] (:func:`check_images`). The classifier is trained by :class:`ClassifierTrainer` (recipe ``ch10-lenet``
in :mod:`mvl.ae.recipes`, ``python -m mvl.train ch10-lenet``) and committed under ``trained/``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from ..fitting import check_finite
from .mnist import ImageData
from .vae import rng_state, set_rng_state

IMAGE_SHAPE = (28, 28)
FEATURE_DIM = 512


# --------------------------------------------------------------------------------------------------------
# The Fréchet distance between two Gaussians, and the feature statistics it is applied to.
# --------------------------------------------------------------------------------------------------------


def _check_gaussian(name: str, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    d = mu.shape[0]
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise ValueError(f"{name}: the mean must be a vector [d] and the covariance a matrix [d, d]; got shapes "
                         f"{mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: the mean and covariance must be finite (NaN or inf found)")
    if not np.allclose(sigma, sigma.T, rtol=1e-8, atol=1e-12 * max(1.0, np.abs(sigma).max())):
        raise ValueError(f"{name}: the covariance must be symmetric")
    return mu, sigma


def _is_singular(sigma: np.ndarray, rtol: float) -> bool:
    w = np.linalg.eigvalsh(sigma)
    return bool(w.min() <= rtol * max(w.max(), np.finfo(np.float64).tiny))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6,
                     singular_rtol: float = 1e-10, imag_rtol: float = 1e-3) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (chapter 10):

        ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁Σ₂)^{1/2}),

    with the matrix square root of ``scipy.linalg.sqrtm`` in float64 (Heusel et al.'s reference
    implementation, whose safeguards this follows):

    * a coordinate with zero variance under both Gaussians (a ReLU feature that is zero on every image) is
      left out of the trace terms, which is exact: its rows and columns of Σ₁Σ₂ vanish (its mean still counts);
    * if a remaining covariance is singular (smallest eigenvalue ≤ ``singular_rtol`` × the largest), or the
      square root of the product is not finite, ``eps``·I is added to both covariances, with a warning, and the
      distance between the two regularized Gaussians is returned (still 0 for equal statistics; it differs from
      the exact value by O(d·√eps) at worst; fit the statistics to more images than feature dimensions);
    * Σ₁Σ₂ is not symmetric, so ``sqrtm`` may return a complex matrix; an imaginary part below ``imag_rtol``
      × the largest real entry is rounding error and is dropped, a larger one raises ``ValueError``.

    For commuting covariances the trace term is Σᵢ (√aᵢ − √bᵢ)² over their common eigenvalues.
    """
    mu1, sigma1 = _check_gaussian("the first Gaussian", mu1, sigma1)
    mu2, sigma2 = _check_gaussian("the second Gaussian", mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians live in different dimensions ({mu1.shape[0]} and {mu2.shape[0]})")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a small positive number, got {eps!r}")
    diff = mu1 - mu2
    keep = (np.diag(sigma1) > 0) | (np.diag(sigma2) > 0)
    sigma1, sigma2 = sigma1[np.ix_(keep, keep)], sigma2[np.ix_(keep, keep)]
    d = int(keep.sum())
    if d == 0:
        return float(diff @ diff)
    covmean = None
    if not (_is_singular(sigma1, singular_rtol) or _is_singular(sigma2, singular_rtol)):
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            covmean = None
    if covmean is None:
        warnings.warn(f"frechet_distance: a covariance is singular (or the square root of their product is not "
                      f"finite); adding {eps:g}·I to both covariances. Estimate the statistics from more images "
                      f"than feature dimensions ({d} varying).", RuntimeWarning, stacklevel=2)
        sigma1, sigma2 = sigma1 + eps * np.eye(d), sigma2 + eps * np.eye(d)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        scale = max(np.abs(covmean.real).max(), np.finfo(np.float64).tiny)
        if imag > imag_rtol * scale:
            raise ValueError(f"frechet_distance: the square root of Σ₁Σ₂ has an imaginary part of {imag:.3g} "
                             f"({imag / scale:.2g} of its largest real entry, more than {imag_rtol:g}): the covariances "
                             f"are not valid (not positive semi-definite?) or badly conditioned")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean ``[d]`` and unbiased covariance ``[d, d]`` (float64) of features ``[n, d]``; n > d is required,
    since with n ≤ d images the covariance is singular and FID is not defined by them."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be a matrix [n, d], got shape {f.shape}")
    n, d = f.shape
    if n <= d:
        raise ValueError(f"too few images for the feature dimension: {n} feature vectors of dimension {d} give a "
                         f"singular covariance; use more than {d} images (FID on MNIST uses 10 000)")
    if not np.isfinite(f).all():
        raise ValueError("features must be finite (NaN or inf found)")
    return f.mean(0), np.cov(f, rowvar=False)


# --------------------------------------------------------------------------------------------------------
# The classifier whose features FID uses.
# --------------------------------------------------------------------------------------------------------


def check_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Binary-image input as ``[n, 1, 28, 28]`` float32; accepts ``[n, 784]``, ``[n, 28, 28]`` or
    ``[n, 1, 28, 28]`` with values in [0, 1] (binarized digits, or gray levels for the corruption checks)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor with values in [0, 1], got {images.dtype} "
                         f"(divide uint8 gray levels by 255)")
    n = images.shape[0] if images.ndim else 0
    shapes = {(n, 784), (n, *IMAGE_SHAPE), (n, 1, *IMAGE_SHAPE)}
    if images.ndim == 0 or tuple(images.shape) not in shapes or n == 0:
        raise ValueError(f"{name} must be MNIST images [n, 784], [n, 28, 28] or [n, 1, 28, 28] with n ≥ 1; got "
                         f"shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contain NaN or inf")
    lo, hi = images.min().item(), images.max().item()
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must have values in [0, 1] (binarized or gray MNIST), got [{lo:.3g}, {hi:.3g}]; "
                         f"decoder logits need a sigmoid, images in [-0.5, 0.5] or [0, 255] need rescaling")
    return images.reshape(n, 1, *IMAGE_SHAPE).float()


class LeNet(nn.Module):
    """The LeNet-5-like MNIST classifier of TensorFlow's tutorial (the WMVL authors' ``src/lid/lenet.py``):
    conv 5×5, 32 channels ('same' padding), ReLU, 2×2 max-pool; conv 5×5, 64 channels, ReLU, 2×2 max-pool;
    fully connected 3136 → 512, ReLU, dropout 0.5 (training only); 512 → 10 logits. Inputs are images in
    [0, 1] (:func:`check_images`), shifted to [−0.5, 0.5]. :meth:`features` is the 512-unit layer that FID uses."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)
        self.dropout = dropout

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The 512-unit layer (after its ReLU) for images ``[n, 784]`` or ``[n, 1, 28, 28]`` in [0, 1]."""
        x = check_images(images) - 0.5
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits ``[n, 10]``."""
        h = F.dropout(self.features(images), self.dropout, self.training)
        return self.fc2(h)


@torch.no_grad()
def classifier_features(classifier: LeNet, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The classifier's 512 features of ``images`` (evaluation mode, in batches), float64 ``[n, 512]``."""
    images = check_images(images)
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    try:
        out = [classifier.features(b.to(device)).double().cpu() for b in images.split(batch_size)]
    finally:
        classifier.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def accuracy(classifier: LeNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """The fraction of ``images`` whose predicted class (the largest logit) is ``labels``."""
    images = check_images(images)
    labels = torch.as_tensor(labels)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be a vector with one class per image ({images.shape[0]}), got {tuple(labels.shape)}")
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    try:
        pred = torch.cat([classifier(b.to(device)).argmax(1).cpu() for b in images.split(batch_size)])
    finally:
        classifier.train(was_training)
    return (pred == labels.long().cpu()).double().mean().item()


def fid_from_features(features_a: torch.Tensor, features_b: torch.Tensor, **kwargs: Any) -> float:
    """FID between two feature sets ``[n, d]``: the Fréchet distance of their Gaussian fits."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b), **kwargs)


def fid(images_a: torch.Tensor, images_b: torch.Tensor, classifier: LeNet, batch_size: int = 1000, **kwargs: Any) -> float:
    """FID between two MNIST image sets through ``classifier``'s 512 features (chapter 10). Each set needs more
    than 512 images; the chapter compares 10 000 decoded prior samples with the 10 000 binarized test images."""
    fa = classifier_features(classifier, check_images(images_a, "images_a"), batch_size)
    fb = classifier_features(classifier, check_images(images_b, "images_b"), batch_size)
    return fid_from_features(fa, fb, **kwargs)


# --------------------------------------------------------------------------------------------------------
# Corruptions for FID's sanity checks.
# --------------------------------------------------------------------------------------------------------


def flip_pixels(images: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Salt-and-pepper noise: each pixel of a binary image flipped independently with probability ``p``
    (the images stay binary)."""
    x = check_images(images)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"the flip probability p must be in [0, 1], got {p!r}")
    flip = torch.rand(x.shape, generator=generator) < p
    return torch.where(flip, 1.0 - x, x).reshape(images.shape)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images blurred by a Gaussian kernel of standard deviation ``sigma`` pixels (radius ⌈3σ⌉, zero padding;
    gray levels in [0, 1]); ``sigma = 0`` returns the images unchanged."""
    x = check_images(images)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a number of pixels >= 0, got {sigma!r}")
    if sigma == 0:
        return images.clone()
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    x = F.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))
    return x.clamp(0.0, 1.0).reshape(images.shape)


def fid_sanity_checks(classifier: LeNet, reference: torch.Tensor, held_out: torch.Tensor,
                      flip_probs: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2),
                      blur_sigmas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0), seed: int = 0) -> dict[str, Any]:
    """The checks that FID measures what it should (chapter 10), against the ``reference`` images (the test set):

    * ``held_out``: FID of other real digits (held-out training images) — small;
    * ``flip``: FID of ``held_out`` with pixels flipped with each probability in ``flip_probs`` — increasing;
    * ``blur``: FID of ``held_out`` blurred with each σ in ``blur_sigmas`` — increasing;
    * ``collapsed``: FID of a collapsed generator, ``len(held_out)`` copies of one held-out image with 1 % of
      its pixels flipped at random (so that its features vary a little, as a collapsed sampler's would) — large.

    ``held_out`` should be digits the classifier never saw (the ``valid`` split for ``ch10-lenet``). The blurred
    images are gray levels, the others binary.
    """
    g = torch.Generator().manual_seed(seed)
    f_ref = classifier_features(classifier, reference)
    stats_ref = feature_statistics(f_ref)

    def to_ref(images: torch.Tensor) -> float:
        return frechet_distance(*stats_ref, *feature_statistics(classifier_features(classifier, images)))

    held_out = check_images(held_out, "held_out").reshape(len(held_out), -1)
    collapsed = flip_pixels(held_out[:1].expand(len(held_out), -1).contiguous(), 0.01, g)
    return {
        "held_out": to_ref(held_out),
        "flip": {p: to_ref(flip_pixels(held_out, p, g)) for p in flip_probs},
        "blur": {s: to_ref(gaussian_blur(held_out, s)) for s in blur_sigmas},
        "collapsed": to_ref(collapsed),
        "n_reference": len(reference), "n_held_out": len(held_out),
    }


# --------------------------------------------------------------------------------------------------------
# Training the classifier (recipe ch10-lenet), resumably like mvl.ae.vae.VAETrainer.
# --------------------------------------------------------------------------------------------------------

CLASSIFIER_HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "valid_accuracy", "seconds")


class ClassifierTrainer:
    """Trains :class:`LeNet` by Adam on cross-entropy, one epoch at a time, with its whole state saveable
    (the interface of :class:`mvl.ae.vae.VAETrainer` that ``python -m mvl.train`` drives).

    ``train`` is an :class:`mvl.ae.mnist.ImageData` split (its labels are used): every epoch visits it in a
    fresh order drawn from ``generator`` and binarizes each image afresh (x ~ Bernoulli(k/255)), so the
    classifier sees binarized digits as FID will feed it. ``valid``/``valid_labels`` (optional) give the
    validation accuracy after each epoch. No early stopping: the final weights are kept.
    """

    history_keys = CLASSIFIER_HISTORY_KEYS

    def __init__(self, model: LeNet, train: ImageData, valid: torch.Tensor | None = None,
                 valid_labels: torch.Tensor | None = None, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None):
        if not isinstance(train, ImageData):
            raise ValueError(f"train must be an ImageData split (images with labels), got {type(train).__name__}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if (valid is None) != (valid_labels is None):
            raise ValueError("give both valid and valid_labels, or neither")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.train, self.valid, self.valid_labels = train, valid, valid_labels
        self.epochs, self.batch_size, self.generator = epochs, batch_size, generator
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.hist: dict[str, list] = {k: [] for k in CLASSIFIER_HISTORY_KEYS}
        self.step, self.epoch, self.elapsed = 0, 0, 0.0

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    def run_epoch(self) -> dict[str, float]:
        """One pass over the (freshly binarized) training images, then the validation accuracy."""
        if self.done:
            raise RuntimeError("training is finished; nothing left to run")
        start = time.perf_counter()
        model, n = self.model, len(self.train)
        model.train()
        loss_sum, correct = 0.0, 0
        order = torch.randperm(n, generator=self.generator)
        for idx in order.split(self.batch_size):
            x = torch.bernoulli(self.train.pixels[idx].float() / 255.0, generator=self.generator).to(self.device)
            y = self.train.labels[idx].long().to(self.device)
            self.step += 1
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            check_finite(loss, "the classifier's cross-entropy", self.step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        self.epoch += 1
        val = accuracy(model, self.valid, self.valid_labels) if self.valid is not None else math.nan
        self.elapsed += time.perf_counter() - start
        for k, v in zip(CLASSIFIER_HISTORY_KEYS, (self.epoch, loss_sum / n, correct / n, val, self.elapsed)):
            self.hist[k].append(v)
        return {"valid_accuracy": val}

    def finish(self) -> dict[str, Any]:
        """The history (the final weights are kept: no early stopping)."""
        hist: dict[str, Any] = dict(self.hist)
        hist.update(best_epoch=self.epoch, stopped_early=False, train_seconds=self.elapsed, loaded=False)
        return hist

    def state_dict(self) -> dict[str, Any]:
        return {"model": copy.deepcopy(self.model.state_dict()), "optimizer": copy.deepcopy(self.opt.state_dict()),
                "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, "hist": copy.deepcopy(self.hist),
                **rng_state(self.generator)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.elapsed = state["step"], state["epoch"], state["elapsed"]
        self.hist = copy.deepcopy(state["hist"])
        set_rng_state(state, self.generator)


__all__ = ["CLASSIFIER_HISTORY_KEYS", "ClassifierTrainer", "FEATURE_DIM", "LeNet", "accuracy", "check_images",
           "classifier_features", "feature_statistics", "fid", "fid_from_features", "fid_sanity_checks", "flip_pixels",
           "frechet_distance", "gaussian_blur"]
