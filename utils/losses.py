"""Training losses as one regression (monograph Ch. 6, §6.2).

Every loss here draws t ~ p_time and eps ~ N(0, I), forms x_t = alpha_t x_0 + sigma_t eps and
regresses the network on one target, each a linear combination A_t x_0 + B_t eps:

    eps      (DDPM's L_simple, Ch. 2)          A = 0,          B = 1
    x0       (the denoiser)                   A = 1,          B = 0
    score    (denoising score matching, Ch. 3) A = 0,          B = -1/sigma_t   (target -eps/sigma_t)
    velocity (flow matching, Sec. 5.3)            A = alpha'_t,   B = sigma'_t

with a weighting w(t): loss = E_{t~p_time},x0,eps [ w(t) || net(x_t, t) - target ||^2 ]. The choices
are equivalent up to w(t) (§6.2): e.g. score matching with w = sigma^2 is L_simple. The roadmap of
§6.2 has four knobs: the schedule, the target, the distribution of training times p_time and the
weighting w(t); :class:`DiffusionLoss` takes all four. Since E_{p_time}[w f] = E_{q}[(w p_time / q) f],
p_time and w trade against each other (importance sampling): only their product is the objective,
the split sets the variance. The time distributions here:

* :class:`Uniform` (t ~ U[lo, hi]; DDPM, score SDE, flow matching),
* :class:`LogNormal` (EDM: ln sigma~ ~ N(P_mean, P_std^2) in the noise level sigma~ = sigma/alpha,
  mapped to the schedule's clock; App. D.6),
* :class:`LogitNormal` (t = sigmoid(m + s z); rectified-flow training of Esser et al. 2024),
* :class:`Stratified` (equal shares of a batch from several distributions).

:func:`edm_weighting` is EDM's lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 for an
x0-loss, which makes the preconditioned net's own target unit-variance
(:class:`utils.nets.EDMPrecond`).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from ._checks import append_dims, as_time, check_choice, check_int, check_positive
from .schedules import LinearPath, Schedule
from .targets import TARGETS


class TimeDistribution(ABC):
    """p_time: how training times are drawn (§6.2). ``sample`` gives (n,) times in [0, 1];
    ``density`` evaluates p_time(t) on the schedule's clock (for importance weights, plots)."""

    @abstractmethod
    def sample(self, n: int, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
        """(n,) times."""

    @abstractmethod
    def density(self, t) -> torch.Tensor:
        """p_time(t), shape of t (float64 for a float t)."""


class Uniform(TimeDistribution):
    """t ~ U[lo, hi]."""

    def __init__(self, lo: float = 0.0, hi: float = 1.0):
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 <= lo < hi <= 1):
            raise ValueError(f"(lo, hi)=({lo!r}, {hi!r}) is not valid; expected 0 <= lo < hi <= 1")
        self.lo, self.hi = float(lo), float(hi)

    def sample(self, n, generator=None, dtype=torch.float32, device=None):
        return self.lo + (self.hi - self.lo) * torch.rand(n, dtype=dtype, device=device, generator=generator)

    def density(self, t):
        t = as_time(t)
        inside = (t >= self.lo) & (t <= self.hi)
        return torch.where(inside, 1.0 / (self.hi - self.lo), 0.0).to(t.dtype)

    def __repr__(self):
        return f"Uniform({self.lo:g}, {self.hi:g})"


class LogNormal(TimeDistribution):
    """EDM's training noise levels (Karras et al. 2022, Table 1; App. D.6): ln sigma~ ~
    N(p_mean, p_std^2), sigma~ = sigma_t / alpha_t, put on ``schedule``'s clock through its inverse
    log-SNR and kept in [t_min, min(1, t_end)] (clamped, so mass beyond the ends sits on them)."""

    def __init__(self, schedule: Schedule, p_mean: float = -1.2, p_std: float = 1.2):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a Schedule")
        check_positive("p_std", p_std)
        self.schedule, self.p_mean, self.p_std = schedule, float(p_mean), float(p_std)

    def _clock(self, log_level):
        t = self.schedule.t_from_log_snr(-log_level)
        return t.clamp(self.schedule.t_min, min(1.0, self.schedule.t_end))

    def sample(self, n, generator=None, dtype=torch.float32, device=None):
        z = torch.randn(n, dtype=torch.float64, generator=generator)
        return self._clock(self.p_mean + self.p_std * z).to(dtype=dtype, device=device)

    def density(self, t):
        """N(ln sigma~(t); p_mean, p_std^2) |d ln sigma~ / dt| (change of variables; the clamped
        mass at the ends is not included)."""
        t = as_time(t)
        a, s, da, ds = self.schedule._coefficients(t)
        u = (torch.log(s / a) - self.p_mean) / self.p_std
        return torch.exp(-0.5 * u ** 2) / (self.p_std * math.sqrt(2 * math.pi)) * (ds / s - da / a).abs()

    def __repr__(self):
        return f"LogNormal({self.schedule}, p_mean={self.p_mean:g}, p_std={self.p_std:g})"


class LogitNormal(TimeDistribution):
    """t = sigmoid(m + s z), z ~ N(0, 1): mass in the middle of the path (Esser et al. 2024)."""

    def __init__(self, m: float = 0.0, s: float = 1.0):
        check_positive("s", s)
        self.m, self.s = float(m), float(s)

    def sample(self, n, generator=None, dtype=torch.float32, device=None):
        z = torch.randn(n, dtype=torch.float64, generator=generator)
        return torch.sigmoid(self.m + self.s * z).to(dtype=dtype, device=device)

    def density(self, t):
        t = as_time(t)
        u = (torch.logit(t) - self.m) / self.s
        return torch.exp(-0.5 * u ** 2) / (self.s * math.sqrt(2 * math.pi) * t * (1 - t))

    def __repr__(self):
        return f"LogitNormal(m={self.m:g}, s={self.s:g})"


class Stratified(TimeDistribution):
    """Equal shares of each batch from each of ``parts`` (the first n // k from the first, ...,
    the rest from the last): a mixture with equal weights, without the mixture's share noise."""

    def __init__(self, *parts: TimeDistribution):
        if len(parts) < 1 or not all(isinstance(p, TimeDistribution) for p in parts):
            raise ValueError(f"parts={parts!r} is not valid; expected one or more TimeDistributions")
        self.parts = parts

    def sample(self, n, generator=None, dtype=torch.float32, device=None):
        check_int("n", n, len(self.parts))
        k = len(self.parts)
        sizes = [n // k] * (k - 1) + [n - (k - 1) * (n // k)]
        return torch.cat([p.sample(m, generator, dtype, device) for p, m in zip(self.parts, sizes)])

    def density(self, t):
        return sum(p.density(t) for p in self.parts) / len(self.parts)

    def __repr__(self):
        return f"Stratified{self.parts!r}"


def edm_weighting(schedule: Schedule, sigma_data: float = 0.5):
    """EDM's loss weight for an x0-loss, lambda = (sigma~^2 + sigma_d^2) / (sigma~ sigma_d)^2 =
    1 / c_out^2 (App. D.6): w(t) for :class:`DiffusionLoss`."""
    check_positive("sigma_data", sigma_data)

    def weighting(t):
        a, s = schedule._alpha(t), schedule._sigma(t)
        level2 = (s / a) ** 2
        return (level2 + sigma_data ** 2) / (level2 * sigma_data ** 2)
    return weighting


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
        t_range: (t_lo, t_hi) to draw t uniformly from; default (schedule.t_min, 1).
        time_distribution: p_time, a :class:`TimeDistribution` (instead of ``t_range``), e.g.
            ``LogNormal(schedule)`` for EDM or ``Stratified(Uniform(...), Uniform(...))``.
        conditional: pass the batch's labels y to the net (``net(x_t, t, y)``); by default labels
            that come with the data are ignored and the net is called as ``net(x_t, t)``.
        label_dropout: probability of replacing a label by NULL_LABEL (classifier-free guidance).
    """

    def __init__(self, schedule: Schedule, target: str = "eps", weighting=None, t_range=None,
                 conditional: bool = False, label_dropout: float = 0.0,
                 time_distribution: TimeDistribution | None = None):
        check_choice("target", target, TARGETS)
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a Schedule")
        user_range = t_range
        t_range = (schedule.t_min, 1.0) if t_range is None else tuple(t_range)
        if len(t_range) != 2 or not 0 <= t_range[0] < t_range[1] <= 1:
            raise ValueError(f"t_range={t_range!r} is not valid; expected (t_lo, t_hi) with 0 <= t_lo < t_hi <= 1")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout={label_dropout!r} is not valid; expected a probability in [0, 1)")
        self.schedule, self.target, self.weighting = schedule, target, weighting
        if label_dropout and not conditional:
            raise ValueError(f"label_dropout={label_dropout!r} needs conditional=True")
        self.t_range, self.label_dropout, self.conditional = t_range, label_dropout, conditional
        if time_distribution is not None and user_range is not None:
            raise ValueError("t_range and time_distribution were both given; expected one of them")
        if time_distribution is not None and not isinstance(time_distribution, TimeDistribution):
            raise ValueError(f"time_distribution has type {type(time_distribution).__name__}; "
                             "expected a utils.losses.TimeDistribution")
        self.time_distribution = time_distribution or Uniform(*t_range)

    def __call__(self, net, x0: torch.Tensor, y=None, generator=None) -> torch.Tensor:
        t = self.time_distribution.sample(x0.shape[0], generator, x0.dtype, x0.device)
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
        return f"DiffusionLoss(target={self.target!r}, schedule={self.schedule}, p_time={self.time_distribution})"


def flow_matching_loss(conditional: bool = False, label_dropout: float = 0.0) -> DiffusionLoss:
    """Conditional flow matching on the linear path x_t = (1 - t) x0 + t eps (Sec. 5.3): the net
    regresses the conditional velocity eps - x0 (data at t = 0 in this book's clock)."""
    return DiffusionLoss(LinearPath(), "velocity", t_range=(0.0, 1.0), conditional=conditional,
                         label_dropout=label_dropout)
