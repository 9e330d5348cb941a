"""Fast PF-ODE solvers in log-SNR (monograph Ch. 9, §9.1-9.7, and EDM's sampler, App. D.6).

Every solver is one small function ``<name>(model, x, grid, ..., y=None, callback=None)`` like
the samplers of :mod:`utils.samplers`: ``model`` is any :class:`utils.targets.Model` (the exact
oracle, a trained :class:`~utils.targets.Denoiser`, a guided model), ``x`` the state at
``grid[0]``, ``grid`` a decreasing tensor of times (:mod:`utils.schedules` builds uniform,
log-SNR and EDM rho = 7 grids), and ``callback`` gets ``{"i", "t", "x", "x0"}`` after each step.

They are written in the variables of their papers. With lambda_t = log(alpha_t / sigma_t)
(increasing towards the data) and h = lambda_{t_next} - lambda_t > 0, the PF-ODE has the exact
solutions (§9.1, Eq. 9.1.6; §9.4, Eq. 9.4.4)

    noise form:  x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) d lambda
    data form:   x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0(lambda) d lambda

and each solver approximates the one integral: eps or x0 held constant (DDIM = DPM-Solver-1 =
DEIS order 1), Runge-Kutta stages in lambda (DPM-Solver-2/3, DPM-Solver++(2S)), or a polynomial
through past evaluations (DPM-Solver++(2M), DEIS: exponential Adams-Bashforth).

**The last step.** A grid may end at t_min > 0 (the log-SNR is finite: the chapter's default)
or at t = 0. Where sigma(t_next) = 0 the step size in lambda is infinite; every solver here then
takes the limit of its first-order step, x = alpha_0 x0_hat(x, t) (DDIM's last step, EDM's
final Euler step): one evaluation, no correction.

**Counting.** :class:`CountingModel` wraps a model and counts its evaluations (NFE), so a
solver's cost is measured, not assumed.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_choice, check_int, check_positive
from .samplers import _emit, _start
from .schedules import log_snr_grid
from .targets import Model


class CountingModel(Model):
    """``model`` with counters: ``nfe`` goes up by one at each evaluation (a batched call,
    whatever its batch size, is one evaluation: one sequential round on a parallel device) and
    ``points`` by the number of points evaluated (x.shape[0]: the total work). ``reset()`` sets
    both to zero and returns the wrapper."""

    def __init__(self, model: Model):
        if not isinstance(model, Model):
            raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model")
        super().__init__(model.schedule)
        self.model, self.nfe, self.points = model, 0, 0

    def reset(self) -> "CountingModel":
        self.nfe, self.points = 0, 0
        return self

    def x0_eps(self, x, t, y=None):
        self.nfe, self.points = self.nfe + 1, self.points + x.shape[0]
        return self.model.x0_eps(x, t, y)

    def _answer(self, target, x, t, y):
        self.nfe, self.points = self.nfe + 1, self.points + x.shape[0]
        return self.model._answer(target, x, t, y)

    def check_times(self, t):
        self.model.check_times(t)

    def __repr__(self):
        return f"CountingModel({self.model!r}, nfe={self.nfe})"


# --- the vocabulary: alpha, sigma, lambda at a time; a model call in (x0, eps) ----------------

def _coef(schedule, t: float):
    """(alpha_t, sigma_t, lambda_t) as Python floats (float64)."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    a, s = float(schedule._alpha(tt)), float(schedule._sigma(tt))
    lam = math.log(a) - math.log(s) if s > 0 else math.inf
    return a, s, lam


def _t_at(schedule, lam: float) -> float:
    """The time with log-SNR ``lam`` (an intermediate stage of a Runge-Kutta step)."""
    return float(schedule.t_from_log_snr(torch.tensor(lam, dtype=torch.float64)))


def _denoise(model, x, t, t_next, y):
    """The step to sigma(t_next) = 0: x = alpha x0_hat (the h -> infinity limit of every step)."""
    x0, _ = model.x0_eps(x, t, y)
    return _coef(model.schedule, t_next)[0] * x0, x0


def _run(model, x, grid, y, callback, step):
    """The loop every single-grid solver shares: for each step t -> t_next of ``grid``, the
    coefficients at both ends, then ``step(x, t, (a, s, lam), (a_n, s_n, lam_n)) -> (x_next, x0_hat)``
    (the solver's own update, only ever called where sigma(t_next) > 0), or :func:`_denoise` on a
    last step to sigma = 0; ``callback`` after each step. Returns x at grid[-1]."""
    grid = _start(model, x, grid, callback)
    for i in range(len(grid) - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        now, nxt = _coef(model.schedule, t), _coef(model.schedule, t_next)
        if nxt[1] == 0:
            x, x0 = _denoise(model, x, t, t_next, y)
        else:
            x, x0 = step(x, t, now, nxt)
        _emit(callback, i, t_next, x, x0)
    return x


def _midpoint_step(model, y, first_order):
    """The step of a two-stage exponential Runge-Kutta method with r = 1/2 (DPM-Solver-2 in the
    noise form, DPM-Solver++(2S) in the data form), for :func:`_run`: ``first_order(x, a, s, a_to,
    s_to, h, x0_hat, eps_hat)`` (the form's first-order step over h in lambda) to the midpoint
    lambda + h/2, one evaluation there, then ``first_order`` over the whole step with the
    midpoint's prediction. Two evaluations per step."""
    def step(x, t, now, nxt):
        (a, s, lam), (a_n, s_n, lam_n) = now, nxt
        h = lam_n - lam
        t_mid = _t_at(model.schedule, lam + h / 2)
        a_m, s_m, _ = _coef(model.schedule, t_mid)
        x0, eps = model.x0_eps(x, t, y)
        u = first_order(x, a, s, a_m, s_m, h / 2, x0, eps)
        x0_mid, eps_mid = model.x0_eps(u, t_mid, y)
        return first_order(x, a, s, a_n, s_n, h, x0_mid, eps_mid), x0

    return step


# --- §9.2 DDIM ---------------------------------------------------------------------------

@torch.no_grad()
def ddim(model: Model, x, grid, eta: float = 0.0, y=None, generator=None, callback=None):
    """DDIM (Song, Meng & Ermon 2021, Eq. 12; monograph §9.2, Eq. 9.2.3): from x at t, predict
    x0_hat and eps_hat, then jump to t_next < t as

        x' = alpha' x0_hat + sqrt(sigma'^2 - c^2) eps_hat + c z,
        c  = eta sigma' sqrt(1 - e^{-2h}),  h = lambda' - lambda,

    eta = 0 the deterministic sampler (= exponential Euler, Prop. 9.2.1), eta = 1 ancestral DDPM
    (c^2 is then the forward posterior's variance). The last step returns the mean (adds no noise)."""
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"eta={eta!r} is not valid; expected a number >= 0")
    grid = _start(model, x, grid, callback)
    n = len(grid) - 1
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        x0, eps = model.x0_eps(x, t, y)
        _, _, lam = _coef(model.schedule, t)
        a_n, s_n, lam_n = _coef(model.schedule, t_next)
        c = eta * s_n * math.sqrt(-math.expm1(-2 * (lam_n - lam))) if s_n > 0 else 0.0
        x = a_n * x0 + math.sqrt(max(s_n ** 2 - c ** 2, 0.0)) * eps
        if c > 0 and i < n - 1:
            x = x + c * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        _emit(callback, i, t_next, x, x0)
    return x


# --- §9.4 DPM-Solver: exponential Runge-Kutta in lambda, noise form ---------------------------

@torch.no_grad()
def dpm_solver_1(model: Model, x, grid, y=None, callback=None):
    """DPM-Solver-1 (Lu et al. 2022, Eq. 3.7; §9.4): eps held constant over the step,
    x' = (alpha'/alpha) x - sigma' expm1(h) eps_hat. Equal to DDIM (Prop. 9.4.2)."""
    def step(x, t, now, nxt):
        (a, _, lam), (a_n, s_n, lam_n) = now, nxt
        x0, eps = model.x0_eps(x, t, y)
        return (a_n / a) * x - s_n * math.expm1(lam_n - lam) * eps, x0

    return _run(model, x, grid, y, callback, step)


@torch.no_grad()
def dpm_solver_2(model: Model, x, grid, y=None, callback=None):
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1 with r1 = 1/2; monograph Alg. 5, Eq. 9.4.11): a
    DPM-Solver-1 step to the midpoint in lambda, then the full step with the slope there.
    Two evaluations per step, global order 2."""
    def dpm_solver_1_step(x, a, s, a_to, s_to, h, x0, eps):          # noise form: eps held constant
        return (a_to / a) * x - s_to * math.expm1(h) * eps

    return _run(model, x, grid, y, callback, _midpoint_step(model, y, dpm_solver_1_step))


@torch.no_grad()
def dpm_solver_3(model: Model, x, grid, y=None, callback=None):
    """DPM-Solver-3 (Lu et al. 2022, Alg. 2 with r1 = 1/3, r2 = 2/3; §9.4, Eq. 9.4.9): three
    stages in lambda, phi_1(h) = expm1(h)/h - 1 terms; three evaluations per step, order 3."""
    sch, r1, r2 = model.schedule, 1 / 3, 2 / 3

    def step(x, t, now, nxt):
        (a, _, lam), (a_n, s_n, lam_n) = now, nxt
        h = lam_n - lam
        t1, t2 = _t_at(sch, lam + r1 * h), _t_at(sch, lam + r2 * h)
        (a1, s1, _), (a2, s2, _) = _coef(sch, t1), _coef(sch, t2)
        x0, eps = model.x0_eps(x, t, y)
        u1 = (a1 / a) * x - s1 * math.expm1(r1 * h) * eps
        D1 = model.x0_eps(u1, t1, y)[1] - eps
        u2 = ((a2 / a) * x - s2 * math.expm1(r2 * h) * eps
              - s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * D1)
        D2 = model.x0_eps(u2, t2, y)[1] - eps
        return (a_n / a) * x - s_n * math.expm1(h) * eps - (s_n / r2) * (math.expm1(h) / h - 1) * D2, x0

    return _run(model, x, grid, y, callback, step)


# --- §9.5 DPM-Solver++: the data-prediction form ----------------------------------------------

@torch.no_grad()
def dpm_solver_pp_2s(model: Model, x, grid, y=None, callback=None):
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1 with r = 1/2; §9.5): single-step, data form,
    x' = (sigma'/sigma) x - alpha' expm1(-h) x0_hat(u, midpoint), u the DDIM step to the
    midpoint in lambda. Two evaluations per step, order 2."""
    def ddim_step(x, a, s, a_to, s_to, h, x0, eps):                   # data form: x0 held constant
        return (s_to / s) * x - a_to * math.expm1(-h) * x0

    return _run(model, x, grid, y, callback, _midpoint_step(model, y, ddim_step))


@torch.no_grad()
def dpm_solver_pp_2m(model: Model, x, grid, y=None, exact_phi: bool = False, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2; monograph Alg. 7): multistep, data form, one
    evaluation per step. With r = h_{i-1} / h_i,

        D = (1 + 1/(2r)) x0_i - (1/(2r)) x0_{i-1},   x' = (sigma'/sigma) x - alpha' expm1(-h) D,

    the first step DDIM. ``exact_phi=True`` replaces the factor h/2 of the Newton slope by the
    exact integral of the linear interpolant, (h - 1 + e^{-h}) / (1 - e^{-h}): the Newton form of
    DEIS order 2 (Table 9.2; :func:`deis`)."""
    x0_prev, h_prev = None, None                                        # the previous step's x0_hat and h

    def step(x, t, now, nxt):
        nonlocal x0_prev, h_prev
        (_, s, lam), (a_n, s_n, lam_n) = now, nxt
        h = lam_n - lam
        x0, _ = model.x0_eps(x, t, y)
        D = x0
        if x0_prev is not None:
            slope = (x0 - x0_prev) / h_prev                                 # Newton divided difference
            c = (h + math.expm1(-h)) / -math.expm1(-h) if exact_phi else h / 2
            D = x0 + c * slope                                              # = (1 + 1/(2r)) x0_i - x0_{i-1}/(2r)
        x0_prev, h_prev = x0, h
        return (s_n / s) * x - a_n * math.expm1(-h) * D, x0

    return _run(model, x, grid, y, callback, step)


# --- §9.3 DEIS: exponential Adams-Bashforth, Lagrange form -------------------------------------

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def deis_weights(lams, lam_next: float) -> list[float]:
    """Weights w_j = int_{lambda_0}^{lambda'} e^{lambda - lambda'} l_j(lambda) d lambda of the
    Lagrange basis l_j through the anchors ``lams`` = (lambda_i, lambda_{i-1}, ...) (DEIS,
    Zhang & Chen 2023, Eq. 14 in log-SNR; §9.3), by 24-point Gauss-Legendre quadrature (exact to
    rounding for the smooth integrand). Then x' = (sigma'/sigma) x + alpha' sum_j w_j x0_j."""
    lams = [float(v) for v in lams]
    lo, hi = lams[0], float(lam_next)
    if not hi > lo:
        raise ValueError(f"lam_next={hi!r} is not valid; expected a log-SNR above lams[0]={lo!r}")
    u = lo + (hi - lo) * (_GL_NODES + 1) / 2
    base = (hi - lo) / 2 * _GL_WEIGHTS * np.exp(u - hi)
    out = []
    for j, lj in enumerate(lams):
        basis = np.ones_like(u)
        for k, lk in enumerate(lams):
            if k != j:
                basis = basis * (u - lk) / (lj - lk)
        out.append(float((base * basis).sum()))
    return out


@torch.no_grad()
def deis(model: Model, x, grid, order: int = 3, y=None, callback=None):
    """DEIS with exponential Adams-Bashforth of ``order`` (1-4) in log-SNR, data form (Zhang &
    Chen 2023; §9.3): x0_hat interpolated through the last ``order`` evaluations by a Lagrange
    polynomial and integrated exactly against e^{lambda} (:func:`deis_weights`); the first steps
    use the anchors they have. One evaluation per step. Order 1 ("AB-DEIS-0") is DDIM; order 2
    is DPM-Solver++(2M) with the exact phi (Table 9.2)."""
    check_int("order", order)
    if order > 4:
        raise ValueError(f"order={order!r} is not valid; expected 1, 2, 3 or 4")
    lams, x0s = [], []                                                  # the anchors, newest first

    def step(x, t, now, nxt):
        nonlocal lams, x0s
        (_, s, lam), (a_n, s_n, lam_n) = now, nxt
        x0, _ = model.x0_eps(x, t, y)
        lams, x0s = ([lam] + lams)[:order], ([x0] + x0s)[:order]
        w = deis_weights(lams, lam_n)
        return (s_n / s) * x + a_n * sum(wj * xj for wj, xj in zip(w, x0s)), x0

    return _run(model, x, grid, y, callback, step)


# --- App. D.6: EDM's Heun sampler on the noise level sigma~ = sigma / alpha ----------------------

@torch.no_grad()
def edm_heun(model: Model, x, grid, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
             s_noise: float = 1.0, y=None, generator=None, callback=None):
    """EDM's sampler (Karras et al. 2022, Alg. 2; monograph App. D.6) in the scaled state
    x~ = x / alpha and the noise level sigma~ = sigma / alpha, where the PF-ODE reads
    d x~ / d sigma~ = (x~ - x0_hat) / sigma~:

    1. churn: gamma = min(s_churn / N, sqrt(2) - 1) where s_tmin <= sigma~ <= s_tmax, raise the
       noise to sigma^ = (1 + gamma) sigma~ by adding N(0, (sigma^2 - sigma~^2) s_noise^2) noise
       (sigma^ may lie above the grid's start: the schedule goes on past t = 1, ``t_end``);
    2. Euler step in sigma~ to the next level, then
    3. Heun's correction with the slope there (not where sigma~' = 0: the last step stays Euler).

    s_churn = 0 is the deterministic Heun sampler: 2 evaluations per step (1 on a last step to 0)."""
    for nm, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ValueError(f"{nm}={v!r} is not valid; expected a number >= 0")
    grid = _start(model, x, grid, callback)
    sch, n = model.schedule, len(grid) - 1
    a0, s0, _ = _coef(sch, float(grid[0]))
    x_t = x / a0                                                          # x~ = x / alpha
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        a, s, _ = _coef(sch, t)
        a_n, s_n, _ = _coef(sch, t_next)
        sig, sig_n = s / a, s_n / a_n
        # 1. churn: raise the noise level from sig to sig_hat
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sig <= s_tmax else 0.0
        sig_hat, t_hat = sig, t
        if gamma > 0:
            sig_hat = sig * (1 + gamma)
            t_hat = _t_at(sch, -math.log(sig_hat))
            z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
            x_t = x_t + math.sqrt(sig_hat ** 2 - sig ** 2) * s_noise * z
        # 2. Euler step in sigma~
        a_h = _coef(sch, t_hat)[0]
        x0, _ = model.x0_eps(a_h * x_t, t_hat, y)
        d = (x_t - x0) / sig_hat
        x_next = x_t + (sig_n - sig_hat) * d
        # 3. Heun's correction
        if sig_n > 0:
            x0_n, _ = model.x0_eps(a_n * x_next, t_next, y)
            x_next = x_t + (sig_n - sig_hat) * 0.5 * (d + (x_next - x0_n) / sig_n)
        x_t = x_next
        _emit(callback, i, t_next, a_n * x_t, x0)
    return a_n * x_t


# --- §9.7 ParaDiGMS: Picard iterations over a sliding window -----------------------------------

@torch.no_grad()
def paradigms(model: Model, x, grid, window: int = 8, tol: float = 1e-3, y=None, max_rounds: int | None = None,
              callback=None):
    """ParaDiGMS (Shih et al. 2023, Alg. 1; §9.7, Eqs. 9.7.2-9.7.3) with DDIM increments: the
    whole path x_0..x_N is a fixed point of x_{k} = x_{start} + sum_{j<k} Delta_j(x_j), Delta_j(x)
    = DDIM(x, t_j -> t_{j+1}) - x. Each round evaluates the model at the ``window`` points of a
    sliding window in ONE batched call (parallel across time), updates them by the cumulative
    sum, and slides the window past the leading points whose change is below ``tol`` sigma_{t_j}
    (root mean square per coordinate). Returns (x at grid[-1], rounds), rounds = sequential calls.
    With window = 1 it is sequential DDIM (N rounds)."""
    check_int("window", window)
    check_positive("tol", tol)
    grid = _start(model, x, grid, callback)
    sch, N = model.schedule, len(grid) - 1
    co = [_coef(sch, float(t)) for t in grid]
    xs = [x] + [x.clone() for _ in range(N)]                          # initial guess: x everywhere
    start, rounds, max_rounds = 0, 0, max_rounds or 4 * N
    B = x.shape[0]
    while start < N and rounds < max_rounds:
        end = min(start + window, N)
        idx = list(range(start, end))
        xb = torch.cat([xs[j] for j in idx])
        tb = torch.cat([torch.full((B,), float(grid[j]), dtype=torch.float64) for j in idx])
        x0, eps = model.x0_eps(xb, tb.to(x.dtype), y)
        rounds += 1
        deltas = [co[j + 1][0] * x0[k * B:(k + 1) * B] + co[j + 1][1] * eps[k * B:(k + 1) * B] - xs[j]
                  for k, j in enumerate(idx)]                            # DDIM increments
        new, acc, moved = [], xs[start], start
        for k, j in enumerate(idx):
            acc = acc + deltas[k]
            err = ((acc - xs[j + 1]) ** 2).flatten(1).mean(1).mean().sqrt()
            new.append(acc)
            if moved == j and float(err) <= tol * max(co[j + 1][1], 1e-12):
                moved = j + 1                                              # converged: slide past it
        for k, j in enumerate(idx):
            xs[j + 1] = new[k]
        moved = max(moved, start + 1)                                      # the first point is exact
        for j in range(end + 1, N + 1):                                    # guess ahead: the last value
            xs[j] = xs[end]
        for j in range(start, moved):
            _emit(callback, j, grid[j + 1], xs[j + 1])
        start = moved
    return xs[N], rounds


# --- a grid fitted to the model: equidistribute the local error (the effect of the grid) -----

@torch.no_grad()
def local_error_density(model: Model, x_pilot, order: int = 3, n_fine: int = 400, y=None):
    """Where an order-``order`` step in log-SNR errs (§9.6): a step of size h at lambda costs
    about h^(p+1) |d^p x0_hat / d lambda^p|, p = order. A fine DPM-Solver++(2M) pilot solve from
    ``x_pilot`` (B, *D) records x0_hat along the paths; returns (lam, density), both (n_fine + 1,),
    lam increasing, density = mean over paths of |d^p x0_hat / d lambda^p|^(1/(p+1)) plus a floor
    of 10% of its mean (no step grows without bound). Its n_fine evaluations are paid once per
    model (and pilot batch), not per sample."""
    check_int("order", order)
    check_int("n_fine", n_fine, 8)
    sch = model.schedule
    fine = log_snr_grid(sch, n_fine)
    x0s = []
    dpm_solver_pp_2m(model, x_pilot, fine, y=y, callback=lambda info: x0s.append(info["x0"]))
    lam = sch.log_snr(fine)
    d = torch.stack(x0s).to(torch.float64).flatten(2)                  # (n_fine, B, D) at lam[:-1]
    for _ in range(order):
        d = torch.gradient(d, spacing=(lam[:-1],), dim=0)[0]
    dens = d.norm(dim=-1).mean(1) ** (1 / (order + 1))
    return lam, torch.cat([dens, dens[-1:]]) + 0.1 * dens.mean()


def equidistributed_grid(schedule, lam: torch.Tensor, density: torch.Tensor, n_steps: int) -> torch.Tensor:
    """n_steps + 1 decreasing times whose log-SNRs split the integral of ``density`` over ``lam``
    (from :func:`local_error_density`) into equal parts: every step errs about equally (classical
    step-size control done once, offline; in the spirit of Sabour et al. 2024, "Align Your
    Steps"). The ends are the pilot's: the schedule's t_max and t_min."""
    check_int("n_steps", n_steps)
    lam, density = torch.as_tensor(lam, dtype=torch.float64), torch.as_tensor(density, dtype=torch.float64)
    if lam.ndim != 1 or lam.shape != density.shape or not (lam.diff() > 0).all() or (density <= 0).any():
        raise ValueError(f"lam {tuple(lam.shape)} and density {tuple(density.shape)} are not valid; expected "
                         "two 1-D tensors of one length, lam increasing, density positive")
    cdf = torch.cat([lam.new_zeros(1), torch.cumsum(0.5 * (density[1:] + density[:-1]) * lam.diff(), 0)])
    u = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64) * cdf[-1]
    k = torch.searchsorted(cdf, u).clamp(1, len(cdf) - 1)
    w = (u - cdf[k - 1]) / (cdf[k] - cdf[k - 1])
    t = schedule.t_from_log_snr(lam[k - 1] + w * (lam[k] - lam[k - 1]))
    t[0], t[-1] = schedule.t_from_log_snr(lam[0]), schedule.t_from_log_snr(lam[-1])
    return t


def optimized_grid(solver, model: Model, x_pilot, x_exact, init_grid, max_iter: int = 400, y=None) -> torch.Tensor:
    """A grid optimized for one solver (§9.6; in the spirit of Xue et al. 2024, "Accelerating
    Diffusion Sampling with Optimized Time Steps", and Sabour et al. 2024): the log-SNR steps
    h_i = (lambda_N - lambda_0) softmax(theta)_i that minimize the mean distance of
    ``solver(model, x_pilot, grid)`` to the exact endpoints ``x_exact`` (B, *D) of the pilot
    paths, by Nelder-Mead from ``init_grid`` (its ends are kept). ``solver`` is a callable
    (model, x, grid) -> x. Offline and once per model and NFE; measure the result on other paths.
    Returns the grid (float64)."""
    from scipy.optimize import minimize

    check_int("max_iter", max_iter)
    init = torch.as_tensor(init_grid, dtype=torch.float64)
    sch = model.schedule
    lam = sch.log_snr(init)
    if not (torch.isfinite(lam).all() and (lam.diff() > 0).all()):
        raise ValueError("init_grid is not valid; expected decreasing times with finite log-SNR")
    lo, span = float(lam[0]), float(lam[-1] - lam[0])

    def grid_of(theta):
        h = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0) * span
        g = sch.t_from_log_snr(lo + torch.cat([h.new_zeros(1), torch.cumsum(h, 0)]))
        g[0], g[-1] = init[0], init[-1]
        return g

    def loss(theta):
        g = grid_of(theta)
        if not (g.diff() < 0).all():
            return 1e3
        x = solver(model, x_pilot, g) if y is None else solver(model, x_pilot, g, y=y)
        return float((x - x_exact).flatten(1).norm(dim=1).mean())

    theta0 = torch.log(lam.diff()).numpy()
    res = minimize(loss, theta0, method="Nelder-Mead", options={"maxfev": max_iter, "xatol": 1e-3, "fatol": 1e-6})
    return grid_of(res.x)


SOLVERS = {"ddim": ddim, "dpm_solver_1": dpm_solver_1, "dpm_solver_2": dpm_solver_2,
           "dpm_solver_3": dpm_solver_3, "dpm_solver_pp_2s": dpm_solver_pp_2s,
           "dpm_solver_pp_2m": dpm_solver_pp_2m, "deis": deis, "edm_heun": edm_heun}
"""The solvers by name (each a function (model, x, grid, ..., callback=None))."""

STAGES = {"ddim": 1, "dpm_solver_1": 1, "dpm_solver_2": 2, "dpm_solver_3": 3, "dpm_solver_pp_2s": 2,
          "dpm_solver_pp_2m": 1, "deis": 1, "edm_heun": 2}
"""Model evaluations per step (to a grid that ends where sigma > 0)."""


def steps_for_nfe(name: str, nfe: int) -> int:
    """The number of grid steps that spends at most ``nfe`` evaluations with solver ``name``."""
    check_choice("name", name, STAGES)
    check_int("nfe", nfe)
    return max(nfe // STAGES[name], 1)
