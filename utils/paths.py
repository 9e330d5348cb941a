"""All affine paths are one path: the change of schedule, and the continuity equation (Ch. 6).

Two schedules (alpha_t, sigma_t) and (alpha~_s, sigma~_s) that reach the same log-SNR
lambda = log(alpha / sigma) describe the same noisy variable up to a scale: if
lambda~(s) = lambda(t) then (alpha~_s, sigma~_s) = c (alpha_t, sigma_t) with

    c = sqrt(alpha~_s^2 + sigma~_s^2) / sqrt(alpha_t^2 + sigma_t^2),

so x~_s = alpha~_s x0 + sigma~_s eps = c x_t with the *same* (x0, eps). Hence a model trained
under one schedule answers under any other (monograph Ch. 6; Kingma et al. 2021, "Variational
Diffusion Models", on the invariance of the continuous-time loss to the schedule; Karras et al.
2022, "Elucidating the Design Space...", who sample VP-trained models on their sigma(t) = t clock):

    E~[x0 | x~_s = x] = E[x0 | x_t = x / c],  E~[eps | x~_s = x] = E[eps | x_t = x / c],
    score~(x, s) = score(x / c, t) / c,  log p~_s(x) = log p_t(x / c) - D log c,

and every other target follows by conversion (:mod:`utils.targets`). :func:`reschedule`
returns that wrapper (:class:`ScheduleChange`).

Beneath every PF-ODE lies the continuity (Fokker-Planck) equation of its marginals,
d p_t / dt + div(p_t v_t) = 0 (Ch. 6; Appendix B). :func:`continuity_residual` evaluates both
terms by central finite differences on a regular grid, to check a (density, velocity) pair.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._checks import append_dims, as_time, check_batch, check_int, check_positive, tracing
from .schedules import Schedule
from .targets import Model

_LOG_SNR_TOL = 1e-6


class ScheduleChange(Model):
    """``denoiser`` (any :class:`~utils.targets.Model` under its own schedule) answering under
    ``new_schedule``.

    At (x, t) of the new path: lambda = new.log_snr(t), t_old = old.t_from_log_snr(lambda),
    x_old = x / c with c = |(alpha_new(t), sigma_new(t))| / |(alpha_old(t_old), sigma_old(t_old))|;
    x0 and eps are those of ``denoiser`` at (x_old, t_old). x: (B, *D), t: float or (B,).

    Raises ValueError where the new log-SNR lies outside the range the old schedule reaches
    (e.g. VE(0.01, 50) never gets below lambda = -log 50): the old model was never asked there.
    """

    def __init__(self, denoiser: Model, new_schedule: Schedule):
        if not isinstance(denoiser, Model):
            raise ValueError(f"denoiser has type {type(denoiser).__name__}; expected a utils.targets.Model")
        super().__init__(new_schedule)
        self.inner = denoiser
        ends = denoiser.schedule.log_snr(torch.tensor([1.0, 0.0], dtype=torch.float64))
        self.log_snr_range = (float(ends[0]), float(ends[1]))

    def time_and_scale(self, t, like: torch.Tensor | None = None):
        """(t_old, c): the old schedule's time with the same log-SNR as t, and the scale
        x_new = c x_old. Shapes like t (float64 for float t)."""
        t = as_time(t, like=like, check=False)
        new, old = self.schedule, self.inner.schedule
        lam = torch.log(new._alpha(t)) - torch.log(new._sigma(t))
        lo, hi = self.log_snr_range
        bad = (lam < lo - _LOG_SNR_TOL * max(1.0, abs(lo))) | (lam > hi + _LOG_SNR_TOL * max(1.0, abs(hi)))
        if not tracing() and bad.any():
            t_bad = t[bad].flatten()[0] if t.ndim else t
            raise ValueError(
                f"t={float(t_bad):g} has log-SNR {float(lam[bad].flatten()[0]):g} under {new}, outside the "
                f"range [{lo:g}, {hi:g}] that {old} reaches; expected times whose log-SNR the old schedule covers")
        t_old = old._t_from_log_snr(lam).clamp(0.0, old.t_end).to(t.dtype)
        a_n, s_n = new._alpha(t), new._sigma(t)
        a_o, s_o = old._alpha(t_old), old._sigma(t_old)
        c = torch.sqrt(a_n ** 2 + s_n ** 2) / torch.sqrt(a_o ** 2 + s_o ** 2)
        return t_old, c

    def _inner_args(self, x, t):
        check_batch("x", x)
        t_old, c = self.time_and_scale(as_time(t, like=x, batch=x.shape[0], check=False), like=x)
        return x / append_dims(c.to(x.dtype), x.ndim), t_old, c

    def x0_eps(self, x, t, y=None):
        x_old, t_old, _ = self._inner_args(x, t)
        return self.inner.x0_eps(x_old, t_old, y)

    def _answer(self, target, x, t, y):
        if target == "score":  # score~(x) = score(x / c) / c: exact wherever the inner one is
            x_old, t_old, c = self._inner_args(x, t)
            return self.inner.score(x_old, t_old, y) / append_dims(c.to(x.dtype), x.ndim)
        return super()._answer(target, x, t, y)

    def check_times(self, t):
        super().check_times(t)
        self.time_and_scale(torch.as_tensor(t, dtype=torch.float64))  # raises outside the old range

    def log_prob(self, x, t, y=None) -> torch.Tensor:
        """log p~_t(x) = log p_t_old(x / c) - D log c, for an inner denoiser with ``log_prob``
        (the oracle). Shape (B,)."""
        if not hasattr(self.inner, "log_prob"):
            raise ValueError(f"denoiser {self.inner!r} has no log_prob; expected an exact oracle (utils.gmm)")
        x_old, t_old, c = self._inner_args(x, t)
        dim = x[0].numel()
        return self.inner.log_prob(x_old, t_old, y) - dim * torch.log(c).to(x.dtype)

    def __repr__(self):
        return f"ScheduleChange({self.inner!r} -> {self.schedule})"


def reschedule(denoiser: Model, new_schedule: Schedule) -> ScheduleChange:
    """``denoiser`` (under its schedule) as a Model under ``new_schedule`` (see module docstring)."""
    return ScheduleChange(denoiser, new_schedule)


class ContinuityCheck(NamedTuple):
    """Both terms of d p/dt + div(p v) = 0 on an (n,)*D grid; ``points``: (n**D, D) float64."""
    dp_dt: torch.Tensor
    div_flux: torch.Tensor
    points: torch.Tensor

    @property
    def residual(self) -> torch.Tensor:
        return self.dp_dt + self.div_flux

    @property
    def relative_error(self) -> float:
        """max |dp/dt + div(p v)| / max |dp/dt| over the grid."""
        return float(self.residual.abs().max() / self.dp_dt.abs().max())


def continuity_residual(log_prob, velocity, t: float, lim: float = 3.0, n: int = 101, dim: int = 2,
                        dt: float = 1e-4) -> ContinuityCheck:
    """Central finite differences of the continuity equation d p_t/dt + div(p_t v_t) = 0
    (Ch. 6; Appendix B) on the grid [-lim, lim]^dim with n points per axis.

    ``log_prob(x, t) -> (M,)`` and ``velocity(x, t) -> (M, dim)`` take x: (M, dim) float64 and a
    float t (e.g. an oracle's ``log_prob`` and ``velocity``). d/dt uses (p(t+dt) - p(t-dt)) / 2dt;
    div uses second-order central differences in space (one-sided, second order, at the edges).
    Both errors are O(h^2) and O(dt^2), h = 2 lim / (n - 1).
    """
    check_positive("lim", lim)
    check_int("n", n, 5)
    check_int("dim", dim)
    check_positive("dt", dt)
    if not isinstance(t, (int, float)) or not 0.0 <= t - dt < t + dt <= 1.0:
        raise ValueError(f"t={t!r} is not valid; expected a float with [t - dt, t + dt] inside [0, 1] (dt={dt:g})")
    if n ** dim > 4_000_000:
        raise ValueError(f"n={n} with dim={dim} makes {n ** dim} grid points; expected at most 4e6")
    u = torch.linspace(-lim, lim, n, dtype=torch.float64)
    mesh = torch.meshgrid(*([u] * dim), indexing="ij")
    points = torch.stack([m.reshape(-1) for m in mesh], 1)
    shape = (n,) * dim
    with torch.no_grad():
        p = lambda s: torch.exp(log_prob(points, s).to(torch.float64)).reshape(shape)
        dp_dt = (p(t + dt) - p(t - dt)) / (2 * dt)
        flux = p(t).reshape(-1, 1) * velocity(points, t).to(torch.float64)
    h = 2 * lim / (n - 1)
    div = sum(torch.gradient(flux[:, d].reshape(shape), spacing=h, dim=d, edge_order=2)[0] for d in range(dim))
    return ContinuityCheck(dp_dt, div, points)
