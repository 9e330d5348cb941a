"""The four prediction targets and the one model interface (monograph Ch. 6, §6.2-6.3).

Given x_t = alpha_t x_0 + sigma_t eps, any one of

* ``eps``      the noise,                            eps
* ``x0``       the clean data (the denoiser),        x_0
* ``score``    grad_x log p_t(x_t) = -E[eps|x_t]/sigma_t
* ``velocity`` d x_t / dt = alpha'_t x_0 + sigma'_t eps

determines the others at (x_t, t, schedule) (§6.3).

**The interface.** A :class:`Model` holds a schedule and answers one question, :meth:`Model.x0_eps`
(the posterior means E[x0 | x_t], E[eps | x_t]); eps / x0 / score / velocity derive from it.
Everything that samples, solves, guides or measures takes a ``Model``: the exact oracle
(:mod:`utils.gmm`), a trained net (:class:`Denoiser`), a rescheduled model (:mod:`utils.paths`),
a guided combination (:mod:`utils.guidance`), a preconditioned net (:class:`utils.nets.EDMPrecond`
inside a ``Denoiser``). A new kind of model writes ``x0_eps`` (a few lines), and may override
:meth:`Model._answer` where it knows a target more exactly than the conversion gives it.

Value checks run where data enters (a sampler's start, the oracle's public methods, the public
functions here), not inside every evaluation, so ``torch.func.jvp`` / ``vmap`` and
``torch.compile`` go through a model.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ._checks import append_dims, as_time, check_batch, check_choice, tracing
from .schedules import Schedule

TARGETS = ("eps", "x0", "score", "velocity")

NULL_LABEL = -1
"""The label meaning "no condition": classifier-free guidance drops labels to it (§8.3); the
oracle answers unconditionally for it. Also ``utils.nets.NULL_LABEL``."""


def _coeffs(schedule: Schedule, t, x: torch.Tensor):
    """(alpha, sigma, alpha', sigma') at t, shaped to broadcast against x; no value check."""
    t = as_time(t, like=x, batch=x.shape[0], check=False)
    return [append_dims(c.to(x.dtype), x.ndim) for c in schedule._coefficients(t)]


def _to_x0_eps(pred, target, x, t, schedule):
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


def _from_x0_eps(x0, eps, target, x, t, schedule):
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    a, s, da, ds = _coeffs(schedule, t, x)
    if target == "score":
        return -eps / s
    return da * x0 + ds * eps


# Where each conversion divides: (x0, eps) from a target, and a target from (x0, eps).
_DIVIDES_FROM = {"eps": ("alpha",), "x0": ("sigma",), "score": ("alpha",), "velocity": ("det",)}
_DIVIDES_TO = {"eps": (), "x0": (), "score": ("sigma",), "velocity": ()}


def _check_defined(needs, x, t, schedule, what):
    """A clear ValueError where a conversion would divide by zero (alpha = 0 at the end of a VP
    cosine or linear path, sigma = 0 at t = 0), instead of returning inf / NaN silently."""
    if not needs or tracing():
        return
    a, s, da, ds = _coeffs(schedule, t, x)
    values = {"alpha": a, "sigma": s, "det": a * ds - s * da}
    for name in needs:
        zero = values[name].flatten() == 0
        if zero.any():
            tt = as_time(t, like=x, batch=x.shape[0], check=False)
            raise ValueError(f"{what} divides by {name} = 0 at t={float(tt[zero][0]):g} under {schedule}; "
                             f"expected times with {name} > 0 (samplers start at schedule.t_start="
                             f"{schedule.t_start:g})")


def _check_pred(pred, x, t, schedule):
    check_batch("x", x)
    if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
        shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"pred has shape {shape}; expected the shape of x, {tuple(x.shape)}")
    as_time(t, like=x, batch=x.shape[0], t_end=schedule.t_end)


def to_x0_eps(pred: torch.Tensor, target: str, x: torch.Tensor, t, schedule: Schedule):
    """(x0, eps) from a prediction of ``target`` at (x, t).

    eps      -> x0 = (x - sigma eps) / alpha
    x0       -> eps = (x - alpha x0) / sigma
    score    -> eps = -sigma score, then as eps
    velocity -> solve [alpha sigma; alpha' sigma'] [x0; eps] = [x; v]:
                x0 = (sigma' x - sigma v) / D, eps = (alpha v - alpha' x) / D, D = alpha sigma' - sigma alpha'

    Raises ValueError where the formula divides by zero.
    """
    check_choice("target", target, TARGETS)
    _check_pred(pred, x, t, schedule)
    _check_defined(_DIVIDES_FROM[target], x, t, schedule, f"(x0, eps) from {target!r}")
    return _to_x0_eps(pred, target, x, t, schedule)


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, target: str, x: torch.Tensor, t,
                schedule: Schedule) -> torch.Tensor:
    """The prediction of ``target`` implied by (x0, eps) at (x, t)."""
    check_choice("target", target, TARGETS)
    _check_pred(x0, x, t, schedule)
    _check_defined(_DIVIDES_TO[target], x, t, schedule, f"{target!r} from (x0, eps)")
    return _from_x0_eps(x0, eps, target, x, t, schedule)


def convert(pred: torch.Tensor, source: str, target: str, x: torch.Tensor, t,
            schedule: Schedule) -> torch.Tensor:
    """Convert a prediction of ``source`` into one of ``target`` at (x, t) under ``schedule``."""
    check_choice("source", source, TARGETS)
    check_choice("target", target, TARGETS)
    if source == target:
        return pred
    x0, eps = to_x0_eps(pred, source, x, t, schedule)
    return from_x0_eps(x0, eps, target, x, t, schedule)


class Model(ABC):
    """Anything that answers the four targets under a schedule (§6.3).

    Subclasses write :meth:`x0_eps`; every target derives from it. Methods take x: (B, *D),
    t: a float or a (B,) tensor, and an optional label tensor y: (B,).
    """

    def __init__(self, schedule: Schedule):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a utils.schedules.Schedule")
        self.schedule = schedule

    @abstractmethod
    def x0_eps(self, x: torch.Tensor, t, y=None):
        """(x0_hat, eps_hat) at (x, t): the posterior means E[x0 | x_t = x], E[eps | x_t = x]."""

    def _answer(self, target: str, x, t, y):
        """One target at (x, t); a subclass overrides it where it knows a target more exactly."""
        x0, eps = self.x0_eps(x, t, y)
        return _from_x0_eps(x0, eps, target, x, t, self.schedule)

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
        """The PF-ODE velocity alpha'_t E[x0|x] + sigma'_t E[eps|x] (dx/dt, Ch. 4, §5.3)."""
        return self._answer("velocity", x, t, y)

    def velocity_and_x0(self, x, t, y=None):
        """(velocity, x0_hat) from one evaluation: what an ODE sampler steps with and hands to
        its callback."""
        x0, eps = self.x0_eps(x, t, y)
        return _from_x0_eps(x0, eps, "velocity", x, t, self.schedule), x0

    def check_times(self, t: torch.Tensor) -> None:
        """Raise a ValueError if the model cannot answer at some of the times ``t`` (a sampler's
        grid, checked once at its start). The base accepts the schedule's whole range."""
        as_time(t, t_end=self.schedule.t_end)

    def __call__(self, x, t, y=None, target: str = "x0") -> torch.Tensor:
        check_choice("target", target, TARGETS)
        return self._answer(target, x, t, y)

    def __repr__(self):
        return f"{type(self).__name__}(schedule={self.schedule})"


class Denoiser(Model):
    """A network trained on one target, answering all four (§6.3).

    ``net(x, t)`` (or ``net(x, t, y)`` for a label-conditioned net) predicts ``target`` for
    x: (B, *D) and t: (B,). The net's own target comes back as it is; the others by conversion.
    """

    def __init__(self, net, target: str, schedule: Schedule):
        check_choice("target", target, TARGETS)
        super().__init__(schedule)
        if not callable(net):
            raise ValueError(f"net has type {type(net).__name__}; expected a callable net(x, t[, y])")
        self.net, self.target = net, target

    def predict(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """The raw prediction of the wrapped net (its own target)."""
        check_batch("x", x)  # shapes only: nothing here reads a value, so the call traces
        t = as_time(t, like=x, batch=x.shape[0], check=False)
        return self.net(x, t) if y is None else self.net(x, t, y)

    def x0_eps(self, x, t, y=None):
        return _to_x0_eps(self.predict(x, t, y), self.target, x, t, self.schedule)

    def _answer(self, target, x, t, y):
        if target == self.target:
            return self.predict(x, t, y)
        return super()._answer(target, x, t, y)

    def velocity_and_x0(self, x, t, y=None):
        if self.target != "velocity":
            return super().velocity_and_x0(x, t, y)
        v = self.predict(x, t, y)
        return v, _to_x0_eps(v, "velocity", x, t, self.schedule)[0]

    def check_times(self, t):
        """An eps- or score-net gives x0 only where alpha > 0, an x0-net gives eps only where
        sigma > 0: a grid must not ask it there (its last time excepted, never evaluated)."""
        super().check_times(t)
        t = torch.as_tensor(t, dtype=torch.float64)
        a, s = self.schedule.alpha(t[:-1]), self.schedule.sigma(t[:-1])
        bad = (a == 0) if self.target in ("eps", "score") else (s == 0) if self.target == "x0" else None
        if bad is not None and bad.any():
            raise ValueError(f"t={float(t[:-1][bad][0]):g} has {'alpha' if self.target != 'x0' else 'sigma'} = 0 "
                             f"under {self.schedule}, where a {self.target}-model cannot answer; expected a grid "
                             f"that starts at schedule.t_start={self.schedule.t_start:g} or below")

    def __repr__(self):
        return f"Denoiser(target={self.target!r}, schedule={self.schedule})"
