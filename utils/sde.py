"""SDEs from scratch (App. A-C): Brownian increments, Euler-Maruyama, the Ornstein-Uhlenbeck
process in closed form, fitted convergence orders, a 1D Fokker-Planck solver on a grid, and the
Girsanov log-likelihood ratio between two SDEs that share a diffusion coefficient.

Introduced by chapters A_differential_equations, B_density_evolution and C_ito_girsanov. The ODE
steps (Euler, Heun, RK4) live in ``utils.samplers`` (``euler_step``, ``heun_step``, ``rk4_step``).
Everything here is scalar-per-path (state shape (M,)) and works in the dtype of its inputs.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_int, check_positive


def brownian_increments(n_paths: int, n_steps: int, dt: float, generator=None,
                        dtype=torch.float64) -> torch.Tensor:
    """App. A.2: increments W_{t+dt} - W_t ~ N(0, dt) of independent Brownian paths, (M, N)."""
    check_int("n_paths", n_paths)
    check_int("n_steps", n_steps)
    check_positive("dt", dt)
    return math.sqrt(dt) * torch.randn(n_paths, n_steps, generator=generator, dtype=dtype)


def coarsen_increments(dW: torch.Tensor, factor: int) -> torch.Tensor:
    """The same Brownian paths on a grid ``factor`` times coarser: sums of consecutive increments.

    dW: (M, N) with N divisible by ``factor``; returns (M, N // factor).
    """
    check_int("factor", factor)
    if dW.ndim != 2 or dW.shape[1] % factor:
        raise ValueError(f"dW has shape {tuple(dW.shape)}; expected (M, N) with N divisible by factor={factor}")
    return dW.reshape(dW.shape[0], -1, factor).sum(-1)


def euler_maruyama(drift, diffusion, x0: torch.Tensor, t0: float, t1: float, dW: torch.Tensor,
                   keep_path: bool = False) -> torch.Tensor:
    """App. A.2, Euler-Maruyama for dX = f(X, t) dt + g(X, t) dW on a uniform grid of [t0, t1].

    X_{n+1} = X_n + f(X_n, t_n) h + g(X_n, t_n) dW_n, with h = (t1 - t0) / N.
    drift, diffusion: callables (x: (M,), t: float) -> (M,) (or broadcastable);
    x0: (M,) or a float; dW: (M, N) Brownian increments of variance |h|.
    Returns X_{t1}: (M,), or the whole path (N + 1, M) when ``keep_path``.
    """
    if dW.ndim != 2:
        raise ValueError(f"dW has shape {tuple(dW.shape)}; expected (M, N)")
    n_paths, n_steps = dW.shape
    h = (t1 - t0) / n_steps
    x = torch.as_tensor(x0, dtype=dW.dtype).expand(n_paths).clone()
    path = [x] if keep_path else None
    for n in range(n_steps):
        t = t0 + n * h
        x = x + drift(x, t) * h + diffusion(x, t) * dW[:, n]
        if keep_path:
            path.append(x)
    return torch.stack(path) if keep_path else x


def ou_mean_std(x0, theta: float, sigma: float, t):
    """App. A.2, the Ornstein-Uhlenbeck process dX = -theta X dt + sigma dW started at x0:
    X_t ~ N(x0 e^{-theta t}, sigma^2 (1 - e^{-2 theta t}) / (2 theta)). Returns (mean, std)."""
    check_positive("theta", theta)
    check_positive("sigma", sigma)
    t = torch.as_tensor(t, dtype=torch.float64)
    mean = torch.as_tensor(x0, dtype=torch.float64) * torch.exp(-theta * t)
    std = sigma * torch.sqrt(-torch.expm1(-2 * theta * t) / (2 * theta))
    return mean, std


def fitted_order(step_sizes, errors) -> float:
    """App. A.1.4: the least-squares slope of log(error) against log(step size), the measured order
    p in error ~ C h^p. step_sizes, errors: sequences of positive numbers, same length >= 2."""
    h = torch.as_tensor(step_sizes, dtype=torch.float64).flatten()
    e = torch.as_tensor(errors, dtype=torch.float64).flatten()
    if h.numel() != e.numel() or h.numel() < 2:
        raise ValueError(f"step_sizes and errors have {h.numel()} and {e.numel()} entries; expected the same number >= 2")
    if (h <= 0).any() or (e <= 0).any():
        raise ValueError(f"step_sizes={h.tolist()} and errors={e.tolist()}; expected positive numbers")
    lh, le = h.log(), e.log()
    lh_c = lh - lh.mean()
    return float((lh_c * (le - le.mean())).sum() / (lh_c ** 2).sum())


def fokker_planck_rhs(p: torch.Tensor, x: torch.Tensor, drift, g: float, t: float) -> torch.Tensor:
    """App. B.2, the right-hand side of the Fokker-Planck equation on a uniform 1D grid,
    d_t p = -d_x(f p) + (g^2 / 2) d_xx p, in conservative form: central fluxes through the K - 1
    interior faces, zero flux through the two walls (mass is conserved exactly).
    p, x: (K,); drift: (x: (K - 1,), t: float) -> (K - 1,). Returns d_t p: (K,)."""
    dx = float(x[1] - x[0])
    x_face = 0.5 * (x[1:] + x[:-1])
    flux = drift(x_face, t) * 0.5 * (p[1:] + p[:-1]) - 0.5 * g ** 2 * (p[1:] - p[:-1]) / dx
    flux = torch.cat([flux.new_zeros(1), flux, flux.new_zeros(1)])
    return -(flux[1:] - flux[:-1]) / dx


def fokker_planck_1d(p0: torch.Tensor, x: torch.Tensor, drift, g: float, t0: float, t1: float,
                     n_steps: int) -> torch.Tensor:
    """App. B.2, the Fokker-Planck equation d_t p = -d_x(f p) + (g^2 / 2) d_xx p solved on a uniform
    1D grid (method of lines: ``fokker_planck_rhs`` in space, classical RK4 in time); with g = 0 it
    is the continuity equation of dx/dt = f(x, t).

    p0: (K,) density at the grid points x: (K,); drift: (x, t: float) -> same shape as x;
    g: a constant diffusion coefficient >= 0. Returns p at t1, (K,). Stability needs
    dt <= dx^2 / g^2 (checked) and dt max|f| <= 2 dx (the caller's choice of grid and steps).
    """
    from .samplers import rk4_step

    check_int("n_steps", n_steps)
    if p0.shape != x.shape or x.ndim != 1 or x.numel() < 3:
        raise ValueError(f"p0 has shape {tuple(p0.shape)} and x {tuple(x.shape)}; expected the same (K,), K >= 3")
    if g < 0:
        raise ValueError(f"g={g!r} is not valid; expected a number >= 0")
    dx = float(x[1] - x[0])
    dt = (t1 - t0) / n_steps
    if g > 0 and abs(dt) > dx ** 2 / g ** 2:
        raise ValueError(f"n_steps={n_steps} gives dt={dt:.2e} > dx^2/g^2={dx ** 2 / g ** 2:.2e}; expected more steps")
    field = lambda p, t: (fokker_planck_rhs(p, x, drift, g, t), None)
    p = p0.clone()
    for n in range(n_steps):
        p, _ = rk4_step(field, p, t0 + n * dt, t0 + (n + 1) * dt)
    return p


def girsanov_log_ratio(path: torch.Tensor, t0: float, t1: float, drift_p, drift_q, g: float) -> torch.Tensor:
    """App. C, Girsanov: log dP/dQ of a path under two SDEs dX = f_P dt + g dW and dX = f_Q dt + g dW
    (same g, same start), discretized on the path's uniform grid (Ito sums, left end points):

    log dP/dQ = sum_n [ (f_P - f_Q)(X_n, t_n) dX_n - (f_P^2 - f_Q^2)(X_n, t_n) h / 2 ] / g^2.

    path: (N + 1, M) from t0 to t1; drift_p, drift_q: (x: (M,), t: float) -> (M,). Returns (M,).
    """
    check_positive("g", g)
    if path.ndim != 2 or path.shape[0] < 2:
        raise ValueError(f"path has shape {tuple(path.shape)}; expected (N + 1, M) with N >= 1")
    n_steps = path.shape[0] - 1
    h = (t1 - t0) / n_steps
    log_ratio = torch.zeros_like(path[0])
    for n in range(n_steps):
        t, xn = t0 + n * h, path[n]
        fp, fq = drift_p(xn, t), drift_q(xn, t)
        log_ratio = log_ratio + ((fp - fq) * (path[n + 1] - xn) - 0.5 * (fp ** 2 - fq ** 2) * h) / g ** 2
    return log_ratio
