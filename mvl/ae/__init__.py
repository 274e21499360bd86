"""The auto-encoder half of the book (chapters 7 onwards): variational auto-encoders with flexible priors.

* :mod:`mvl.ae.mnist`: MNIST, checksummed loading and binarization (``mnist(split, binarize)``);
* :mod:`mvl.ae.priors`: the Gaussian posterior and the priors (standard normal, VampPrior; chapter 7; the
  Gaussian–Bernoulli RBM, chapter 8);
* :mod:`mvl.ae.flows`: the inverse autoregressive flow, the adversary of adversarial CD (chapter 8);
* :mod:`mvl.ae.vae`: encoder, decoder, ELBO, importance-sampled likelihood, training and checkpoints
  (chapter 7);
* :mod:`mvl.ae.ebm_prior`: VAEs with energy-based priors: the partition-free bound for the encoder and
  decoder, the prior fitted to the posterior samples by SSM, MVL, DSM, adversarial CD or the IW log Z, and
  the test NLL with an AIS log Z (chapter 8);
* :mod:`mvl.ae.fid`: the Fréchet distance of classifier features (FID) and the LeNet MNIST classifier behind it
  (chapter 10);
* :mod:`mvl.ae.vmf`: the hyperspherical VAE's von Mises–Fisher posterior (reparameterized Wood sampler with
  the rejection correction, closed-form KL to the uniform prior, encoder; chapter 9);
* :mod:`mvl.ae.implicit`: implicit encoders z = f(x, ξ) whose entropy gradient (eq. 19) comes from a
  conditional energy fitted by (Riemannian) MVL, and their training step (chapter 9);
* :mod:`mvl.ae.sphere_vae`: the four models of chapter 9's Table 1 (explicit/implicit × sphere/Euclidean),
  their resumable training loop and their test NLL by AIS (Riemannian MALA on the sphere);
* :mod:`mvl.ae.wae`: Wasserstein auto-encoders on the sphere or in Rⁿ, regularized by an MVL-fitted marginal
  energy (WAE-MVL) or a discriminator (WAE-GAN) (chapter 10);
* :mod:`mvl.ae.toy`: VAEs on 2-D toy data with exactly normalized GRBM priors, and the measured error of the
  importance-weighted log Z (chapter 8);
* :mod:`mvl.ae.recipes`: the trained models the chapters show, one recipe each (``python -m mvl.train``).

The later chapters add their modules here (energy-based priors, flows, implicit encoders, WAEs, FID). What
the first half of the book teaches — energies, score-matching objectives, samplers, the sphere — stays at
the top level of :mod:`mvl`, and these modules import it from there.
"""

from . import ebm_prior, fid, flows, implicit, mnist, priors, recipes, sphere_vae, toy, vae, vmf, wae

__all__ = ["ebm_prior", "fid", "flows", "implicit", "mnist", "priors", "recipes", "sphere_vae", "toy", "vae", "vmf", "wae"]
