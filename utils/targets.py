"""The four prediction targets and the ``Denoiser`` interface (monograph Ch. 6).

Given x_t = alpha_t x_0 + sigma_t eps, any one of

* ``eps``      the noise,                            eps
* ``x0``       the clean data (the denoiser),        x_0
* ``score``    grad_x log p_t(x_t) = -E[eps|x_t]/sigma_t
* ``velocity`` d x_t / dt = alpha'_t x_0 + sigma'_t eps

determines the others at (x_t, t, schedule). A :class:`Denoiser` wraps a network trained on one
target and answers all four; the exact Gaussian-mixture oracle (:mod:`utils.gmm`) implements the
same interface, so every sampler and solver runs against a learned model or against the truth
unchanged. Samplers take only this interface: the prediction type is handled here, once.
"""
from __future__ import annotations

import torch

from ._checks import append_dims, as_time, check_batch, check_choice
from .schedules import Schedule

TARGETS = ("eps", "x0", "score", "velocity")


def _coeffs(schedule: Schedule, t, x: torch.Tensor):
    t = as_time(t, like=x, batch=x.shape[0])
    a, s, da, ds = schedule.coefficients(t)
    return [append_dims(c.to(x.dtype), x.ndim) for c in (a, s, da, ds)]


def to_x0_eps(pred: torch.Tensor, target: str, x: torch.Tensor, t, schedule: Schedule):
    """(x0, eps) from a prediction of ``target`` at (x, t).

    eps      -> x0 = (x - sigma eps) / alpha
    x0       -> eps = (x - alpha x0) / sigma
    score    -> eps = -sigma score, then as eps
    velocity -> solve [alpha sigma; alpha' sigma'] [x0; eps] = [x; v]:
                x0 = (sigma' x - sigma v) / D, eps = (alpha v - alpha' x) / D, D = alpha sigma' - sigma alpha'
    """
    check_choice("target", target, TARGETS)
    check_batch("x", x)
    if pred.shape != x.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)}; expected the shape of x, {tuple(x.shape)}")
    a, s, da, ds = _coeffs(schedule, t, x)
    if target == "eps":
        return (x - s * pred) / a, pred
    if target == "x0":
        return pred, (x - a * pred) / s
    if target == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    det = a * ds - s * da
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, target: str, x: torch.Tensor, t,
                schedule: Schedule) -> torch.Tensor:
    """The prediction of ``target`` implied by (x0, eps) at (x, t)."""
    check_choice("target", target, TARGETS)
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    a, s, da, ds = _coeffs(schedule, t, x)
    if target == "score":
        return -eps / s
    return da * x0 + ds * eps


def convert(pred: torch.Tensor, source: str, target: str, x: torch.Tensor, t,
            schedule: Schedule) -> torch.Tensor:
    """Convert a prediction of ``source`` into one of ``target`` at (x, t) under ``schedule``."""
    check_choice("source", source, TARGETS)
    check_choice("target", target, TARGETS)
    if source == target:
        return pred
    x0, eps = to_x0_eps(pred, source, x, t, schedule)
    return from_x0_eps(x0, eps, target, x, t, schedule)


class Denoiser:
    """A model that answers all four targets (Ch. 6).

    ``net(x, t)`` (or ``net(x, t, y)`` for a label-conditioned net) predicts ``target`` for
    x: (B, *D) and t: (B,). Methods take t as a float or a (B,) tensor in [0, 1] and an optional
    label tensor y: (B,).

    Subclasses (the Gaussian-mixture oracle) override :meth:`x0_eps`, the one place a prediction
    is made; everything else is derived from it.
    """

    def __init__(self, net, target: str, schedule: Schedule):
        check_choice("target", target, TARGETS)
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a utils.schedules.Schedule")
        self.net, self.target, self.schedule = net, target, schedule

    def predict(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """The raw prediction of the wrapped net (its own target)."""
        check_batch("x", x)
        t = as_time(t, like=x, batch=x.shape[0])
        return self.net(x, t) if y is None else self.net(x, t, y)

    def x0_eps(self, x: torch.Tensor, t, y=None):
        """(x0_hat, eps_hat) at (x, t): the posterior means E[x0 | x_t], E[eps | x_t]."""
        return to_x0_eps(self.predict(x, t, y), self.target, x, t, self.schedule)

    def _answer(self, target, x, t, y):
        if target == self.target and type(self).x0_eps is Denoiser.x0_eps:
            return self.predict(x, t, y)
        x0, eps = self.x0_eps(x, t, y)
        return from_x0_eps(x0, eps, target, x, t, self.schedule)

    def eps(self, x, t, y=None) -> torch.Tensor:
        """E[eps | x_t = x]."""
        return self._answer("eps", x, t, y)

    def x0(self, x, t, y=None) -> torch.Tensor:
        """E[x_0 | x_t = x] (Tweedie: (x + sigma^2 score) / alpha)."""
        return self._answer("x0", x, t, y)

    def score(self, x, t, y=None) -> torch.Tensor:
        """grad_x log p_t(x) = -E[eps | x_t = x] / sigma_t."""
        return self._answer("score", x, t, y)

    def velocity(self, x, t, y=None) -> torch.Tensor:
        """The PF-ODE velocity alpha'_t E[x0|x] + sigma'_t E[eps|x] (dx/dt, Ch. 4, Sec. 5.3)."""
        return self._answer("velocity", x, t, y)

    def __call__(self, x, t, y=None, target: str = "x0") -> torch.Tensor:
        check_choice("target", target, TARGETS)
        return self._answer(target, x, t, y)

    def __repr__(self):
        return f"{type(self).__name__}(target={self.target!r}, schedule={self.schedule})"
