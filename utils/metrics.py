"""Sample-quality metrics with their data-vs-data noise floor.

Two finite samples of the *same* distribution are at a positive distance: the noise floor.
A model is as good as the metric can tell when its samples sit at the floor, so notebooks assert
"distance within k x the floor at the same sample size" (:func:`compare_to_floor`).

* :func:`sliced_wasserstein`: SW_2, the root mean over random directions of the squared
  1-D Wasserstein-2 distance between projections (sorting gives the 1-D optimal coupling).
* :func:`energy_distance`: 2 E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic: positive at finite n).
* :func:`mmd`: squared maximum mean discrepancy with a sum of RBF kernels (V-statistic).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_batch, check_finite, check_int


def _pair(x, y):
    check_batch("x", x)
    check_batch("y", y)
    check_finite("x", x)
    check_finite("y", y)
    x, y = x.flatten(1).to(torch.float64), y.flatten(1).to(torch.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features and y {y.shape[1]}; expected the same dimension")
    return x, y


def sliced_wasserstein(x, y, n_projections: int = 256, generator=None) -> float:
    """SW_2(x, y) with ``n_projections`` random unit directions; x: (n, *D), y: (m, *D).
    Unequal sizes compare quantiles at the levels (i + 1/2) / max(n, m)."""
    x, y = _pair(x, y)
    check_int("n_projections", n_projections)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], n_projections, dtype=torch.float64, generator=g)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (x @ theta).sort(0).values, (y @ theta).sort(0).values
    if px.shape[0] != py.shape[0]:
        m = max(px.shape[0], py.shape[0])
        q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def energy_distance(x, y) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo), V-statistic."""
    x, y = _pair(x, y)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def mmd(x, y, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> float:
    """Squared MMD with k(a, b) = sum_h exp(-|a-b|^2 / (2 h^2)) (V-statistic)."""
    x, y = _pair(x, y)
    if not bandwidths or any(h <= 0 for h in bandwidths):
        raise ValueError(f"bandwidths={bandwidths!r} is not valid; expected positive numbers")

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


METRICS = {"sw": sliced_wasserstein, "energy": energy_distance, "mmd": mmd}


def _draw(reference, n, generator):
    """n rows from a callable ``reference(n, generator)`` or a tensor pool (without replacement)."""
    if callable(reference):
        out = reference(n, generator)
        return out[0] if isinstance(out, tuple) else out
    if not isinstance(reference, torch.Tensor):
        raise ValueError(f"reference has type {type(reference).__name__}; expected a callable (n, generator) or a tensor")
    if reference.shape[0] < n:
        raise ValueError(f"reference has {reference.shape[0]} rows; expected at least n={n}")
    return reference[torch.randperm(reference.shape[0], generator=generator)[:n]]


def _metric(metric):
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not valid; expected one of {tuple(METRICS)} or a callable")
        return METRICS[metric]
    return metric


@dataclass
class FloorComparison:
    """distance: mean metric(samples chunk, fresh data); floor: mean metric(data, data');
    ratio = distance / floor (1 means indistinguishable at this sample size)."""
    distance: float
    floor: float
    ratio: float
    n: int
    repeats: int

    def __str__(self):
        return (f"distance {self.distance:.4f} vs data-vs-data floor {self.floor:.4f} "
                f"(ratio {self.ratio:.2f}, n={self.n}, {self.repeats} repeats)")


def noise_floor(reference, n: int, metric="sw", repeats: int = 20, generator=None) -> float:
    """Mean over ``repeats`` of metric(A, B) for two independent size-n draws of the data."""
    check_int("n", n, 2)
    check_int("repeats", repeats)
    metric = _metric(metric)
    g = generator if generator is not None else torch.Generator().manual_seed(1234)
    vals = [metric(_draw(reference, n, g), _draw(reference, n, g)) for _ in range(repeats)]
    return sum(vals) / repeats


def compare_to_floor(samples, reference, metric="sw", repeats: int = 20, generator=None) -> FloorComparison:
    """Split ``samples`` into ``repeats`` chunks of n = len(samples) // repeats, measure each
    against a fresh size-n draw of the data, and compare the mean with :func:`noise_floor`
    at the same n. ``reference`` is a callable ``(n, generator)`` or a tensor pool."""
    check_batch("samples", samples)
    check_int("repeats", repeats)
    n = samples.shape[0] // repeats
    check_int("len(samples) // repeats", n, 2)
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf; expected finite model samples")
    metric_fn = _metric(metric)
    g = generator if generator is not None else torch.Generator().manual_seed(4321)
    samples = samples.detach().cpu()
    dist = sum(metric_fn(samples[r * n:(r + 1) * n], _draw(reference, n, g)) for r in range(repeats)) / repeats
    floor = noise_floor(reference, n, metric_fn, repeats, g)
    return FloorComparison(dist, floor, dist / floor, n, repeats)
