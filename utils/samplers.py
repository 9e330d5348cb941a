"""Samplers over an explicit time grid (monograph Ch. 2, Ch. 3, Ch. 4).

Each sampler is one small function ``sample_<name>(denoiser, x, grid, ..., callback=None)``:
``denoiser`` is any :class:`utils.targets.Denoiser` (a trained net or the exact oracle),
``x`` the starting point at ``grid[0]`` (usually :func:`sample_prior`), ``grid`` a decreasing
1-D tensor of times in [0, 1] (see :mod:`utils.schedules`). After every step ``callback`` gets a
dict ``{"i", "t", "x", "x0"}`` (step index, the new time, the new state, the current estimate of
x0), which is all a notebook needs to draw trajectories (:class:`Recorder`).

Time runs from data (t = 0) to noise (t = 1), so integrating from grid[0] to grid[-1] has dt < 0.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_batch, check_int, check_positive
from .schedules import Schedule
from .targets import Denoiser


class Recorder:
    """A callback that keeps every state: ``rec.xs`` is (steps + 1, B, *D), ``rec.ts`` (steps + 1,)."""

    def __init__(self, x0_too: bool = False):
        self._xs, self._ts, self._x0s, self.x0_too = [], [], [], x0_too

    def start(self, x, t):
        self._xs, self._ts, self._x0s = [x.detach().cpu()], [float(t)], []

    def __call__(self, info: dict):
        if not self._xs:
            raise ValueError("Recorder.start(x, t) was not called; samplers call it for you")
        self._xs.append(info["x"].detach().cpu())
        self._ts.append(float(info["t"]))
        if self.x0_too and info.get("x0") is not None:
            self._x0s.append(info["x0"].detach().cpu())

    @property
    def xs(self):
        return torch.stack(self._xs)

    @property
    def ts(self):
        return torch.tensor(self._ts, dtype=torch.float64)

    @property
    def x0s(self):
        return torch.stack(self._x0s)


def _start(denoiser, x, grid, callback):
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser has type {type(denoiser).__name__}; expected a utils.targets.Denoiser")
    check_batch("x", x)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid has shape {tuple(grid.shape)}; expected a 1-D tensor of >= 2 times")
    if (grid < 0).any() or (grid > 1).any() or not (grid[1:] < grid[:-1]).all():
        raise ValueError(f"grid runs from {float(grid[0]):g} to {float(grid[-1]):g}; expected strictly "
                         "decreasing times in [0, 1] (noise to data)")
    if isinstance(callback, Recorder):
        callback.start(x, grid[0])
    return grid


def _emit(callback, i, t, x, x0=None):
    if callback is not None:
        callback({"i": i, "t": float(t), "x": x, "x0": x0})


def sample_prior(schedule: Schedule, shape, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
    """x ~ N(0, sigma_1^2 I) of ``shape`` (B, *D): where every sampler starts."""
    if isinstance(shape, int):
        raise ValueError(f"shape={shape!r} is not valid; expected a tuple (B, *D)")
    z = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    return (schedule.prior_std() * z).to(device) if device is not None else schedule.prior_std() * z


# --- probability-flow ODE: dx/dt = velocity(x, t) (Ch. 4) -----------------------------------------

@torch.no_grad()
def sample_euler(denoiser: Denoiser, x, grid, y=None, callback=None):
    """PF-ODE, explicit Euler: x <- x + (t_next - t) v(x, t). One evaluation per step, order 1."""
    grid = _start(denoiser, x, grid, callback)
    for i in range(len(grid) - 1):
        t, t_next = grid[i], grid[i + 1]
        v = denoiser.velocity(x, float(t), y)
        x = x + (t_next - t).item() * v
        _emit(callback, i, t_next, x)
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x, grid, y=None, callback=None):
    """PF-ODE, Heun's method (EDM Alg. 1's ODE step): an Euler predictor, then the trapezoid
    average of the slopes at both ends. Two evaluations per step, order 2. Where sigma(t_next) = 0
    the slope there is undefined and the step stays Euler (as in EDM)."""
    grid = _start(denoiser, x, grid, callback)
    sigma = denoiser.schedule.sigma(grid)
    for i in range(len(grid) - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        dt = t_next - t
        v = denoiser.velocity(x, t, y)
        x_euler = x + dt * v
        if sigma[i + 1] > 0:
            x = x + dt * 0.5 * (v + denoiser.velocity(x_euler, t_next, y))
        else:
            x = x_euler
        _emit(callback, i, t_next, x)
    return x


@torch.no_grad()
def sample_rk4(denoiser: Denoiser, x, grid, y=None, callback=None):
    """PF-ODE, classical Runge-Kutta 4: four evaluations per step, order 4. Where sigma(t_next) = 0
    the last step uses the midpoint rule (the slope at t_next is undefined)."""
    grid = _start(denoiser, x, grid, callback)
    sigma = denoiser.schedule.sigma(grid)
    vel = denoiser.velocity
    for i in range(len(grid) - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        dt, t_mid = t_next - t, 0.5 * (t + t_next)
        k1 = vel(x, t, y)
        k2 = vel(x + 0.5 * dt * k1, t_mid, y)
        if sigma[i + 1] > 0:
            k3 = vel(x + 0.5 * dt * k2, t_mid, y)
            k4 = vel(x + dt * k3, t_next, y)
            x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        else:
            x = x + dt * k2
        _emit(callback, i, t_next, x)
    return x


# --- reverse-time SDE: dx = [f x - g^2 score] dt + g dW_bar (Ch. 4) ----------------------------

def _sde_coefficients(schedule, t, x):
    f, g2 = float(schedule.f(t)), float(schedule.g2(t))
    if not (math.isfinite(f) and math.isfinite(g2)):
        raise ValueError(f"the forward SDE of {schedule} is singular at t={t:g} (f={f}, g^2={g2}); "
                         f"expected a grid starting at or below schedule.t_max={schedule.t_max}")
    return f, g2


@torch.no_grad()
def sample_euler_maruyama(denoiser: Denoiser, x, grid, y=None, generator=None, callback=None):
    """Reverse SDE by Euler-Maruyama (Ch. 4): with dt = t_next - t < 0,
    x <- x + (f x - g^2 score) dt + g sqrt(|dt|) z. The last step adds no noise (it returns the mean)."""
    grid = _start(denoiser, x, grid, callback)
    sched = denoiser.schedule
    n = len(grid) - 1
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        dt = t_next - t
        f, g2 = _sde_coefficients(sched, t, x)
        x = x + (f * x - g2 * denoiser.score(x, t, y)) * dt
        if i < n - 1:
            x = x + math.sqrt(g2 * -dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        _emit(callback, i, t_next, x)
    return x


@torch.no_grad()
def sample_ancestral(denoiser: Denoiser, x, grid, y=None, generator=None, callback=None):
    """Ancestral sampling (DDPM's Alg. 2 on any grid and schedule, Ch. 2): draw x_s from the
    forward posterior q(x_s | x_t, x0 = x0_hat), s < t:

        alpha_ts = alpha_t / alpha_s,  sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2,
        mean = (alpha_ts sigma_s^2 x + alpha_s sigma_ts^2 x0_hat) / sigma_t^2,
        var  = sigma_ts^2 sigma_s^2 / sigma_t^2.

    The last step returns the mean."""
    grid = _start(denoiser, x, grid, callback)
    sched = denoiser.schedule
    a, s = sched.alpha(grid), sched.sigma(grid)
    n = len(grid) - 1
    for i in range(n):
        x0 = denoiser.x0(x, float(grid[i]), y)
        a_ts = float(a[i] / a[i + 1])
        var_ts = float(s[i] ** 2 - a_ts ** 2 * s[i + 1] ** 2)
        mean = (a_ts * float(s[i + 1]) ** 2 * x + float(a[i + 1]) * var_ts * x0) / float(s[i]) ** 2
        x = mean
        if i < n - 1:
            std = math.sqrt(max(var_ts, 0.0)) * float(s[i + 1] / s[i])
            x = mean + std * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        _emit(callback, i, grid[i + 1], x, x0)
    return x


# --- Langevin dynamics (Ch. 3) -----------------------------------------------------------

@torch.no_grad()
def sample_langevin(score, x, step_size: float, n_steps: int, generator=None, callback=None):
    """Unadjusted Langevin dynamics for a score callable ``score(x) -> grad log p(x)`` (Ch. 3):
    x <- x + eta score(x) + sqrt(2 eta) z. It targets p as eta -> 0 and n_steps -> infinity."""
    check_positive("step_size", step_size)
    check_int("n_steps", n_steps)
    check_batch("x", x)
    for i in range(n_steps):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x + step_size * score(x) + math.sqrt(2 * step_size) * z
        _emit(callback, i, float("nan"), x)
    return x


@torch.no_grad()
def sample_annealed_langevin(denoiser: Denoiser, x, grid, n_inner: int = 10, step_size: float = 1e-4,
                             y=None, generator=None, callback=None):
    """NCSN's annealed Langevin dynamics (Song & Ermon 2019, Alg. 1; Ch. 3): at each noise level
    t_i of the grid run ``n_inner`` Langevin steps on p_{t_i} with step
    eta_i = step_size * (sigma_i / sigma_last)^2, where sigma_i = sigma_{t_i} is the noise std of
    p_{t_i} (for VE, NCSN's noise levels; for VP, not the exploding sigma_t / alpha_t).
    The final state is denoised once with Tweedie's formula (Jolicoeur-Martineau et al. 2021)."""
    grid = _start(denoiser, x, grid, callback)
    check_int("n_inner", n_inner)
    check_positive("step_size", step_size)
    levels = denoiser.schedule.sigma(grid)
    for i in range(len(grid)):
        t = float(grid[i])
        eta = step_size * float(levels[i] / levels[-1]) ** 2
        for _ in range(n_inner):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = x + eta * denoiser.score(x, t, y) + math.sqrt(2 * eta) * z
        _emit(callback, i, t, x)
    return denoiser.x0(x, float(grid[-1]), y)


@torch.no_grad()
def sample_predictor_corrector(denoiser: Denoiser, x, grid, n_corrector: int = 1, snr: float = 0.16,
                               y=None, generator=None, callback=None):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1; Ch. 4): a reverse-SDE Euler-Maruyama
    predictor step, then ``n_corrector`` Langevin corrector steps at the new time with the step set
    by a target signal-to-noise ratio: eta = 2 (snr ||z|| / ||score||)^2."""
    grid = _start(denoiser, x, grid, callback)
    check_int("n_corrector", n_corrector, 0)
    check_positive("snr", snr)
    sched = denoiser.schedule
    n = len(grid) - 1
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        dt = t_next - t
        f, g2 = _sde_coefficients(sched, t, x)
        x = x + (f * x - g2 * denoiser.score(x, t, y)) * dt
        x = x + math.sqrt(g2 * -dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        for _ in range(n_corrector if i < n - 1 else 0):
            s = denoiser.score(x, t_next, y)
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            eta = 2 * (snr * z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean()) ** 2
            x = x + eta * s + torch.sqrt(2 * eta) * z
        _emit(callback, i, t_next, x)
    return denoiser.x0(x, float(grid[-1]), y) if float(sched.sigma(float(grid[-1]))) > 0 else x
