"""Training losses as one regression (monograph Ch. 6).

Every loss here draws t ~ U[t_lo, t_hi] and eps ~ N(0, I), forms x_t = alpha_t x_0 + sigma_t eps
and regresses the network on one target, each a linear combination A_t x_0 + B_t eps:

    eps      (DDPM's L_simple, Ch. 2)          A = 0,          B = 1
    x0       (the denoiser)                   A = 1,          B = 0
    score    (denoising score matching, Ch. 3) A = 0,          B = -1/sigma_t   (target -eps/sigma_t)
    velocity (flow matching, Sec. 5.3)            A = alpha'_t,   B = sigma'_t

with a weighting w(t): loss = E_t,x0,eps [ w(t) || net(x_t, t) - target ||^2 ]. The choices are
equivalent up to w(t) (Ch. 6): e.g. score matching with w = sigma^2 is L_simple.
"""
from __future__ import annotations

import torch

from ._checks import append_dims, check_choice
from .schedules import LinearPath, Schedule
from .targets import TARGETS


def sample_xt(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, generator=None):
    """x_t = alpha_t x0 + sigma_t eps for x0: (B, *D), t: (B,). Returns (x_t, eps)."""
    eps = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    a, s = (append_dims(c.to(x0.dtype), x0.ndim) for c in (schedule.alpha(t), schedule.sigma(t)))
    return a * x0 + s * eps, eps


def regression_target(x0, eps, t, schedule: Schedule, target: str) -> torch.Tensor:
    """A_t x0 + B_t eps for ``target`` (the table in the module docstring)."""
    check_choice("target", target, TARGETS)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    a, s, da, ds = (append_dims(c.to(x0.dtype), x0.ndim) for c in schedule.coefficients(t))
    return -eps / s if target == "score" else da * x0 + ds * eps


class DiffusionLoss:
    """loss(net, x0, y=None, generator=None) -> scalar: the regression above.

    Args:
        schedule: the forward kernel.
        target: what the net predicts (``eps``, ``x0``, ``score``, ``velocity``).
        weighting: optional w(t): (B,) -> (B,); default 1.
        t_range: (t_lo, t_hi) to draw t from; default (schedule.t_min, 1) for eps / x0 /
            velocity, and (schedule.t_min, schedule.t_max) for score, whose target -eps/sigma
            blows up as sigma -> 0.
        conditional: pass the batch's labels y to the net (``net(x_t, t, y)``); by default labels
            that come with the data are ignored and the net is called as ``net(x_t, t)``.
        label_dropout: probability of replacing a label by NULL_LABEL (classifier-free guidance).
    """

    def __init__(self, schedule: Schedule, target: str = "eps", weighting=None, t_range=None,
                 conditional: bool = False, label_dropout: float = 0.0):
        check_choice("target", target, TARGETS)
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a Schedule")
        t_range = (schedule.t_min, 1.0) if t_range is None else tuple(t_range)
        if len(t_range) != 2 or not 0 <= t_range[0] < t_range[1] <= 1:
            raise ValueError(f"t_range={t_range!r} is not valid; expected (t_lo, t_hi) with 0 <= t_lo < t_hi <= 1")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout={label_dropout!r} is not valid; expected a probability in [0, 1)")
        self.schedule, self.target, self.weighting = schedule, target, weighting
        if label_dropout and not conditional:
            raise ValueError(f"label_dropout={label_dropout!r} needs conditional=True")
        self.t_range, self.label_dropout, self.conditional = t_range, label_dropout, conditional

    def __call__(self, net, x0: torch.Tensor, y=None, generator=None) -> torch.Tensor:
        lo, hi = self.t_range
        t = lo + (hi - lo) * torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device, generator=generator)
        xt, eps = sample_xt(x0, t, self.schedule, generator)
        target = regression_target(x0, eps, t, self.schedule, self.target)
        if not self.conditional:
            y = None
        elif y is None:
            raise ValueError("y is None but the loss is conditional; expected labels with the data")
        if y is not None and self.label_dropout > 0:
            drop = torch.rand(y.shape, device=y.device, generator=generator) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, -1), y)
        pred = net(xt, t) if y is None else net(xt, t, y)
        per_sample = ((pred - target) ** 2).flatten(1).mean(1)
        if self.weighting is not None:
            per_sample = per_sample * self.weighting(t)
        return per_sample.mean()

    def __repr__(self):
        return f"DiffusionLoss(target={self.target!r}, schedule={self.schedule}, t_range={self.t_range})"


def flow_matching_loss(conditional: bool = False, label_dropout: float = 0.0) -> DiffusionLoss:
    """Conditional flow matching on the linear path x_t = (1 - t) x0 + t eps (Sec. 5.3): the net
    regresses the conditional velocity eps - x0 (data at t = 0 in this book's clock)."""
    return DiffusionLoss(LinearPath(), "velocity", t_range=(0.0, 1.0), conditional=conditional,
                         label_dropout=label_dropout)
