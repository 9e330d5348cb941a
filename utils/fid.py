"""FID in the features of the project's own classifier, and samples with per-sample seeds.

The Fréchet Inception Distance (Heusel et al. 2017) fits a Gaussian to the features of each set
of images and reports the squared 2-Wasserstein distance between the two Gaussians,

    FID = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})

(:func:`utils.ot.gaussian_w2` squared). No Inception weights can be downloaded here, so the
features are the penultimate layer of a small Fashion-MNIST classifier trained by the project
(:class:`utils.nets.Classifier`, ``data/checkpoints/fmnist_classifier.pt``): "classifier-FID".
Its numbers are not comparable with published FIDs; they are comparable with each other and
with the floor, the classifier-FID of real training images against real test images at the same
sample size (FID is biased upwards at small n, so compare at equal n).

Sampling with per-sample seeds (as EDM's ``StackedRandomGenerator``): the starting noise of
sample i comes from its own generator seeded by (seed, i), so a set of samples, and its FID, is
the same whatever the batch size or the number of processes that drew it (deterministic, ODE,
samplers; a stochastic sampler's per-step noise comes from one generator per batch).
"""
from __future__ import annotations

import torch

from ._checks import append_dims, as_time, check_int
from .samplers import sample_heun
from .targets import Model

SAMPLE_SEED_STRIDE = 2 ** 20  # sample i < 2^20 of seed s < 2^12 draws from the generator seeded s 2^20 + i
# (torch seeds its CPU generator with 32 bits)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), covariance (D, D)) in float64 of features: (N, D), N >= 2 (unbiased covariance)."""
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] < 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features has shape {shape}; expected (N, D) with N >= 2")
    f = features.detach().to(torch.float64)
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def frechet_distance(m1: torch.Tensor, S1: torch.Tensor, m2: torch.Tensor, S2: torch.Tensor) -> float:
    """The Fréchet distance between N(m1, S1) and N(m2, S2) (Heusel et al. 2017, Eq. 6), i.e. W2^2:

        |m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}),

    the last trace as the sum of the square roots of the eigenvalues of S1^{1/2} S2 S1^{1/2}
    (positive semi-definite; tiny negative eigenvalues from round-off are clamped to 0).
    m: (D,), S: (D, D) symmetric positive semi-definite.
    """
    m1, S1, m2, S2 = (torch.as_tensor(a, dtype=torch.float64) for a in (m1, S1, m2, S2))
    D = m1.shape[0]
    if m1.shape != (D,) or m2.shape != (D,) or S1.shape != (D, D) or S2.shape != (D, D):
        raise ValueError(f"shapes m1 {tuple(m1.shape)}, S1 {tuple(S1.shape)}, m2 {tuple(m2.shape)}, "
                         f"S2 {tuple(S2.shape)}; expected (D,), (D, D), (D,), (D, D)")
    lam, U = torch.linalg.eigh(S1)
    R = (U * lam.clamp_min(0).sqrt()) @ U.T                       # S1^{1/2}
    cross = torch.linalg.eigvalsh(R @ S2 @ R).clamp_min(0).sqrt().sum()
    return float(((m1 - m2) ** 2).sum() + torch.trace(S1) + torch.trace(S2) - 2 * cross)


@torch.no_grad()
def classifier_features(images: torch.Tensor, classifier, batch_size: int = 500) -> torch.Tensor:
    """``classifier.features`` of images: (N, C, H, W) -> (N, D), in batches, float64."""
    if not hasattr(classifier, "features"):
        raise ValueError(f"classifier has type {type(classifier).__name__}; expected a net with .features "
                         "(utils.nets.Classifier)")
    check_int("batch_size", batch_size)
    return torch.cat([classifier.features(images[i:i + batch_size].float()).double()
                      for i in range(0, images.shape[0], batch_size)])


def classifier_fid(samples: torch.Tensor, reference: torch.Tensor, classifier, batch_size: int = 500) -> float:
    """Classifier-FID between two sets of images (N, C, H, W): the Fréchet distance of Gaussians
    fitted to ``classifier.features`` of each (module docstring). Images in [-1, 1]."""
    m1, S1 = gaussian_stats(classifier_features(samples, classifier, batch_size))
    m2, S2 = gaussian_stats(classifier_features(reference, classifier, batch_size))
    return frechet_distance(m1, S1, m2, S2)


def fid_floor(train: torch.Tensor, test: torch.Tensor, classifier, n: int, generator=None) -> float:
    """The floor: classifier-FID of n real training images against n real test images (drawn
    without replacement by ``generator``); a model's FID at n samples is read against it."""
    check_int("n", n, 2)
    if n > min(train.shape[0], test.shape[0]):
        raise ValueError(f"n={n!r} is not valid; expected at most {min(train.shape[0], test.shape[0])}")
    i = torch.randperm(train.shape[0], generator=generator)[:n]
    j = torch.randperm(test.shape[0], generator=generator)[:n]
    return classifier_fid(train[i], test[j], classifier)


@torch.no_grad()
def classifier_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier, batch_size: int = 500) -> float:
    """Fraction of images (N, C, H, W) that ``classifier`` assigns to ``labels`` (N,)."""
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels has shape {tuple(labels.shape)}; expected ({images.shape[0]},)")
    pred = torch.cat([classifier(images[i:i + batch_size].float()).argmax(1)
                      for i in range(0, images.shape[0], batch_size)])
    return float((pred == labels.to(pred.device)).double().mean())


def per_sample_noise(shape, seed: int = 0, start: int = 0, dtype=torch.float32) -> torch.Tensor:
    """(N, *D) standard normal noise whose row k is drawn from its own generator, seeded
    ``seed * 2^20 + start + k`` (seed < 4096, start + N <= 2^20): sample i is the same in any
    batch, on any process."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"shape={shape!r} is not valid; expected (N, *D)")
    check_int("seed", seed, 0)
    check_int("start", start, 0)
    if seed >= 2 ** 12 or start + shape[0] > SAMPLE_SEED_STRIDE:
        raise ValueError(f"seed={seed!r}, start={start!r}, N={shape[0]} is not valid; expected seed < 4096 "
                         f"and start + N <= {SAMPLE_SEED_STRIDE}")
    rows = [torch.randn(shape[1:], generator=torch.Generator().manual_seed(seed * SAMPLE_SEED_STRIDE + start + k),
                        dtype=dtype) for k in range(shape[0])]
    return torch.stack(rows)


def sample_images(model: Model, n: int, shape, grid, y=None, seed: int = 0, start: int = 0,
                  batch_size: int = 256, sampler=sample_heun, device=None) -> torch.Tensor:
    """n images (n, *shape) from ``model`` by a deterministic ``sampler(model, x, grid, y=...)``,
    sample i started from :func:`per_sample_noise` (seed, start + i) scaled to the prior
    (sigma at grid[0]), drawn ``batch_size`` at a time: the result does not depend on
    ``batch_size``, and processes that draw disjoint index ranges (``start``) draw the pieces of
    one set. ``y``: None, an int, or (n,) labels (NULL_LABEL for unconditional). ``device``: where
    the sampler runs (the noise is drawn on the CPU, so a GPU draws the same images)."""
    check_int("n", n)
    check_int("batch_size", batch_size)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    prior_std = float(model.schedule.sigma(grid[0]))
    if y is not None:
        y = torch.as_tensor(y, dtype=torch.long).expand(n)
    out = []
    for b in range(0, n, batch_size):
        m = min(batch_size, n - b)
        x = (prior_std * per_sample_noise((m, *shape), seed, start + b)).to(device or "cpu")
        with torch.no_grad():
            out.append(sampler(model, x, grid, y=None if y is None else y[b:b + m].to(x.device)))
    return torch.cat(out)


class ClippedX0(Model):
    """``model`` with its x0 estimate clipped to [lo, hi] and eps made consistent with it,
    eps = (x - alpha x0) / sigma: DDPM's ``clip_denoised`` (Ho et al. 2020; static thresholding,
    Saharia et al. 2022). Pixel data live in [-1, 1]; an undertrained or guided model's x0 at
    high noise leaves that range, and a few-step sampler carries the excess into its samples."""

    def __init__(self, model: Model, lo: float = -1.0, hi: float = 1.0):
        if not isinstance(model, Model):
            raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model")
        if not lo < hi:
            raise ValueError(f"(lo, hi)=({lo!r}, {hi!r}) is not valid; expected lo < hi")
        super().__init__(model.schedule)
        self.model, self.lo, self.hi = model, float(lo), float(hi)

    def x0_eps(self, x, t, y=None):
        x0, _ = self.model.x0_eps(x, t, y)
        x0 = x0.clamp(self.lo, self.hi)
        a, s = (append_dims(c.to(x.dtype), x.ndim) for c in
                self.schedule._coefficients(as_time(t, like=x, batch=x.shape[0], check=False))[:2])
        return x0, (x - a * x0) / s

    def check_times(self, t):
        self.model.check_times(t)

    def __repr__(self):
        return f"ClippedX0({self.model!r}, [{self.lo:g}, {self.hi:g}])"
