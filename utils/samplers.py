"""Samplers over an explicit time grid (monograph Ch. 2, Ch. 3, Ch. 4).

Each sampler is one small function ``sample_<name>(model, x, grid, ..., callback=None)``:
``model`` is any :class:`utils.targets.Model` (a trained net, the exact oracle, a rescheduled or
guided model), ``x`` the starting point at ``grid[0]`` (usually :func:`sample_prior`), ``grid`` a
decreasing 1-D tensor of times (see :mod:`utils.schedules`; samplers start at
``schedule.t_start``). After every step ``callback`` gets a dict ``{"i", "t", "x", "x0"}`` (step
index, the new time, the new state, and the estimate of x0 the step was taken with, at no extra
evaluation), which is all a notebook needs to draw trajectories (:class:`Recorder`).

The ODE steps (:func:`euler_step`, :func:`heun_step`, :func:`rk4_step`) integrate any field
``field(state, t) -> (d state / dt, aux)`` over a tensor or a tuple of tensors, with times that
are floats or per-sample (B,) tensors, so the likelihood (:mod:`utils.likelihood`) integrates its
augmented state and the exact flow map (:mod:`utils.flowmaps`) its per-sample jumps with the
same code. The reverse-SDE step
is :func:`reverse_sde_step`, shared by Euler-Maruyama and predictor-corrector sampling.

Time runs from data (t = 0) to noise (t = 1), so integrating from grid[0] to grid[-1] has dt < 0.
"""
from __future__ import annotations

import math

import torch

from ._checks import append_dims, check_batch, check_int, check_positive
from .schedules import Schedule
from .targets import Model


class Recorder:
    """A callback that keeps every state: ``rec.xs`` is (steps + 1, B, *D), ``rec.ts`` (steps + 1,);
    with ``x0_too=True``, ``rec.x0s`` (steps, B, *D) holds the x0 estimate of every step."""

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
        if not self.x0_too:
            raise ValueError("x0_too=False; expected Recorder(x0_too=True) to keep the x0 estimates")
        if not self._x0s:
            raise ValueError("no x0 estimates were recorded; plain Langevin dynamics (a score "
                             "callable without a time) has none, every other sampler hands them over")
        return torch.stack(self._x0s)


def check_grid(grid, t_end: float = 1.0) -> torch.Tensor:
    """``grid`` as a float64 tensor of >= 2 strictly decreasing times in [0, t_end]."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid has shape {tuple(grid.shape)}; expected a 1-D tensor of >= 2 times")
    if torch.isnan(grid).any() or (grid < 0).any() or (grid > t_end).any() or not (grid[1:] < grid[:-1]).all():
        raise ValueError(f"grid runs from {float(grid[0]):g} to {float(grid[-1]):g}; expected strictly "
                         f"decreasing times in [0, {t_end:g}] (noise to data)")
    return grid


def _start(model, x, grid, callback):
    """Where data enters a sampler: every value check runs here, once."""
    if not isinstance(model, Model):
        raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model "
                         "(the oracle, a Denoiser, a rescheduled or guided model)")
    check_batch("x", x)
    grid = check_grid(grid, model.schedule.t_end)
    model.check_times(grid)
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


# --- ODE steps over any field: state a tensor or a tuple of tensors ------------------------------

def _axpy(x, h, k):
    """x + h k, for tensors or tuples of tensors; h a float or a per-sample (B,) tensor."""
    if isinstance(x, tuple):
        return tuple(_axpy(xi, h, ki) for xi, ki in zip(x, k))
    if isinstance(h, torch.Tensor):
        h = append_dims(h.to(x.dtype), x.ndim)
    return x + h * k


def euler_step(field, x, t, t_next):
    """x + (t_next - t) field(x, t): order 1, one evaluation. Returns (x_next, aux at (x, t))."""
    k1, aux = field(x, t)
    return _axpy(x, t_next - t, k1), aux


def heun_step(field, x, t, t_next, correct: bool = True):
    """Heun's method (explicit trapezoid, EDM's Alg. 1 ODE step): an Euler predictor, then the
    average of the slopes at both ends; order 2, two evaluations. ``correct=False`` keeps the
    Euler step (where the slope at t_next is undefined, sigma(t_next) = 0)."""
    dt = t_next - t
    k1, aux = field(x, t)
    x_euler = _axpy(x, dt, k1)
    if not correct:
        return x_euler, aux
    k2, _ = field(x_euler, t_next)
    return _axpy(_axpy(x, 0.5 * dt, k1), 0.5 * dt, k2), aux


def rk4_step(field, x, t, t_next, last: bool = False):
    """Classical Runge-Kutta 4: order 4, four evaluations. ``last=True`` uses the midpoint rule
    instead (where the slope at t_next is undefined, sigma(t_next) = 0)."""
    dt, t_mid = t_next - t, 0.5 * (t + t_next)
    k1, aux = field(x, t)
    k2, _ = field(_axpy(x, 0.5 * dt, k1), t_mid)
    if last:
        return _axpy(x, dt, k2), aux
    k3, _ = field(_axpy(x, 0.5 * dt, k2), t_mid)
    k4, _ = field(_axpy(x, dt, k3), t_next)
    x = _axpy(_axpy(x, dt / 6, k1), dt / 3, k2)
    return _axpy(_axpy(x, dt / 3, k3), dt / 6, k4), aux


def velocity_field(model: Model, y=None):
    """The PF-ODE field (x, t) -> (velocity, x0_hat) of ``model`` (one evaluation each)."""
    return lambda x, t: model.velocity_and_x0(x, t, y)


# --- probability-flow ODE: dx/dt = velocity(x, t) (Ch. 4) -----------------------------------------

@torch.no_grad()
def sample_euler(model: Model, x, grid, y=None, callback=None):
    """PF-ODE, explicit Euler: x <- x + (t_next - t) v(x, t). One evaluation per step, order 1."""
    grid = _start(model, x, grid, callback)
    field = velocity_field(model, y)
    for i in range(len(grid) - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        x, x0 = euler_step(field, x, t, t_next)
        _emit(callback, i, t_next, x, x0)
    return x


@torch.no_grad()
def sample_heun(model: Model, x, grid, y=None, callback=None):
    """PF-ODE, Heun's method (EDM Alg. 1's ODE step): two evaluations per step, order 2. Where
    sigma(t_next) = 0 the slope there is undefined and the step stays Euler (as in EDM)."""
    grid = _start(model, x, grid, callback)
    sigma = model.schedule.sigma(grid)
    field = velocity_field(model, y)
    for i in range(len(grid) - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        x, x0 = heun_step(field, x, t, t_next, correct=bool(sigma[i + 1] > 0))
        _emit(callback, i, t_next, x, x0)
    return x


@torch.no_grad()
def sample_rk4(model: Model, x, grid, y=None, callback=None):
    """PF-ODE, classical Runge-Kutta 4: four evaluations per step, order 4. Where sigma(t_next) = 0
    the last step uses the midpoint rule (the slope at t_next is undefined)."""
    grid = _start(model, x, grid, callback)
    sigma = model.schedule.sigma(grid)
    field = velocity_field(model, y)
    for i in range(len(grid) - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        x, x0 = rk4_step(field, x, t, t_next, last=not bool(sigma[i + 1] > 0))
        _emit(callback, i, t_next, x, x0)
    return x


# --- reverse-time SDE: dx = [f x - g^2 score] dt + g dW_bar (Ch. 4) ----------------------------

def reverse_sde_step(model: Model, x, t: float, t_next: float, y=None, noise: bool = True,
                     generator=None, lam: float = 1.0):
    """One Euler-Maruyama step of the reverse SDE (Ch. 4, §4.2) from t down to t_next:

        x <- x + (f x - (1 + lam^2)/2 g^2 score) dt + lam g sqrt(|dt|) z,   dt = t_next - t < 0.

    lam = 1 is the reverse SDE, lam = 0 the PF-ODE (Euler), every lam the same marginals.
    Returns (x_next, x0_hat at (x, t)) with x0_hat = (x + sigma^2 score) / alpha (Tweedie)."""
    sched = model.schedule
    f, g2 = float(sched.f(t)), float(sched.g2(t))
    if not (math.isfinite(f) and math.isfinite(g2)):
        raise ValueError(f"the forward SDE of {sched} is singular at t={t:g} (f={f}, g^2={g2}); "
                         f"expected a grid starting at or below schedule.t_max={sched.t_max}")
    dt = t_next - t
    score = model.score(x, t, y)
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    x0 = (x + s ** 2 * score) / a
    x = x + (f * x - 0.5 * (1 + lam ** 2) * g2 * score) * dt
    if noise and lam > 0:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x + lam * math.sqrt(g2 * -dt) * z
    return x, x0


@torch.no_grad()
def sample_euler_maruyama(model: Model, x, grid, y=None, generator=None, callback=None, lam: float = 1.0):
    """Reverse SDE by Euler-Maruyama (Ch. 4): :func:`reverse_sde_step` on every interval of the
    grid; the last step adds no noise (it returns the mean). ``lam`` picks a member of the family
    with the same marginals (lam = 1: the reverse SDE; lam = 0: the PF-ODE)."""
    grid = _start(model, x, grid, callback)
    if not (isinstance(lam, (int, float)) and lam >= 0):
        raise ValueError(f"lam={lam!r} is not valid; expected a number >= 0")
    n = len(grid) - 1
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        x, x0 = reverse_sde_step(model, x, t, t_next, y, noise=i < n - 1, generator=generator, lam=lam)
        _emit(callback, i, t_next, x, x0)
    return x


@torch.no_grad()
def sample_ancestral(model: Model, x, grid, y=None, generator=None, callback=None):
    """Ancestral sampling (DDPM's Alg. 2 on any grid and schedule, Ch. 2): draw x_s from the
    forward posterior q(x_s | x_t, x0 = x0_hat), s < t:

        alpha_ts = alpha_t / alpha_s,  sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2,
        mean = (alpha_ts sigma_s^2 x + alpha_s sigma_ts^2 x0_hat) / sigma_t^2,
        var  = sigma_ts^2 sigma_s^2 / sigma_t^2.

    The last step returns the mean."""
    grid = _start(model, x, grid, callback)
    sched = model.schedule
    a, s = sched.alpha(grid), sched.sigma(grid)
    n = len(grid) - 1
    for i in range(n):
        x0 = model.x0(x, float(grid[i]), y)
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
def sample_annealed_langevin(model: Model, x, grid, n_inner: int = 10, step_size: float = 1e-4,
                             y=None, generator=None, callback=None):
    """NCSN's annealed Langevin dynamics (Song & Ermon 2019, Alg. 1; Ch. 3): at each noise level
    t_i of the grid run ``n_inner`` Langevin steps on p_{t_i} with step
    eta_i = step_size * (sigma_i / sigma_last)^2, where sigma_i = sigma_{t_i} is the noise std of
    p_{t_i} (for VE, NCSN's noise levels; for VP, not the exploding sigma_t / alpha_t).
    The final state is denoised once with Tweedie's formula (Jolicoeur-Martineau et al. 2021)."""
    grid = _start(model, x, grid, callback)
    check_int("n_inner", n_inner)
    check_positive("step_size", step_size)
    levels, alphas = model.schedule.sigma(grid), model.schedule.alpha(grid)
    for i in range(len(grid)):
        t = float(grid[i])
        eta = step_size * float(levels[i] / levels[-1]) ** 2
        for _ in range(n_inner):
            score = model.score(x, t, y)
            x0 = (x + float(levels[i]) ** 2 * score) / float(alphas[i])  # Tweedie, for the callback
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = x + eta * score + math.sqrt(2 * eta) * z
        _emit(callback, i, t, x, x0)
    return model.x0(x, float(grid[-1]), y)


@torch.no_grad()
def sample_predictor_corrector(model: Model, x, grid, n_corrector: int = 1, snr: float = 0.16,
                               y=None, generator=None, callback=None):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1; Ch. 4): a reverse-SDE Euler-Maruyama
    predictor step (:func:`reverse_sde_step`), then ``n_corrector`` Langevin corrector steps at the
    new time with the step set by a target signal-to-noise ratio (Alg. 4 VE, Alg. 5 VP):
    eta = 2 alpha_i (snr ||z|| / ||score||)^2, with alpha_i = (alpha(t_i) / alpha(t_{i-1}))^2 the
    forward step's 1 - beta_i into the corrector's level t_i from the next, smaller grid time
    (alpha_i = 1 for VE and EDM)."""
    grid = _start(model, x, grid, callback)
    check_int("n_corrector", n_corrector, 0)
    check_positive("snr", snr)
    n = len(grid) - 1
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        x, x0 = reverse_sde_step(model, x, t, t_next, y, noise=True, generator=generator)
        for _ in range(n_corrector if i < n - 1 else 0):
            s = model.score(x, t_next, y)
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            alpha_i = (model.schedule.alpha(t_next) / model.schedule.alpha(float(grid[i + 2]))) ** 2
            eta = 2 * alpha_i * (snr * z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean()) ** 2
            x = x + eta * s + torch.sqrt(2 * eta) * z
        _emit(callback, i, t_next, x, x0)
    return model.x0(x, float(grid[-1]), y) if float(model.schedule.sigma(float(grid[-1]))) > 0 else x
