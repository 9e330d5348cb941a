"""Exact log-likelihood through the probability-flow ODE (monograph Ch. 4; Song et al. 2021, App. D;
Chen et al. 2018 and Grathwohl et al. 2019 (FFJORD) for the instantaneous change of variables).

Along a solution of the PF-ODE dx/dt = v(x, t) the density obeys d log p_t(x_t) / dt = -div v(x_t, t),
so integrating from the data end t_0 to the noise end T of the grid,

    log p_{t_0}(x) = log p_T(x_T) + int_{t_0}^{T} div v(x_t, t) dt.

:func:`log_likelihood` integrates the augmented state (x_t, int div v) forward in time (data to
noise) with the samplers' Euler, Heun or RK4 steps (:mod:`utils.samplers`). The divergence is the trace of the Jacobian dv/dx:

* ``trace="exact"``: one backward pass per dimension (cheap for 2D, D passes in general);
* ``trace="hutchinson"``: Hutchinson's estimator tr(A) = E[z^T A z] for probes with E[z z^T] = I
  (Rademacher or Gaussian), one backward pass per probe, drawn from a ``torch.Generator`` once
  and kept fixed along the path (as in FFJORD). The result is then an unbiased estimate of the
  exact-trace likelihood of the same discretisation.

The prior log p_T defaults to N(0, sigma_T^2 I), the distribution every sampler starts from
(alpha_T x_0 is neglected); pass ``prior_log_prob`` for another one (e.g. the oracle's exact p_T).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_batch, check_choice, check_int
from .samplers import euler_step, heun_step, rk4_step
from .targets import Model

METHODS = ("euler", "heun", "rk4")
TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def divergence_exact(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i d v_i / d x_i for v = v(x) computed from x with requires_grad; x, v: (B, *D) -> (B,).
    One backward pass per dimension, so use it for small D."""
    vf, xf_dim = v.flatten(1), x[0].numel()
    div = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
    for i in range(xf_dim):
        (grad,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True)
        div = div + grad.flatten(1)[:, i]
    return div


def divergence_hutchinson(v: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """Hutchinson's estimate mean_k z_k^T (dv/dx) z_k for probes (K, B, *D); x, v: (B, *D) -> (B,).
    Unbiased when E[z z^T] = I; one backward pass (a vector-Jacobian product) per probe."""
    est = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
    for z in probes:
        (vjp,) = torch.autograd.grad((v * z).sum(), x, retain_graph=True)
        est = est + (vjp * z).flatten(1).sum(1)
    return est / probes.shape[0]


def draw_probes(shape, n_probes: int = 1, probe: str = "rademacher", generator=None,
                dtype=torch.float32, device=None) -> torch.Tensor:
    """(n_probes, *shape) probes with E[z z^T] = I: Rademacher (+-1) or standard Gaussian."""
    check_int("n_probes", n_probes)
    check_choice("probe", probe, PROBES)
    z = torch.randn((n_probes, *shape), generator=generator, dtype=dtype) if probe == "gaussian" else \
        2.0 * torch.randint(0, 2, (n_probes, *shape), generator=generator).to(dtype) - 1.0
    return z.to(device) if device is not None else z


def _check_grid(grid, schedule) -> torch.Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid has shape {tuple(grid.shape)}; expected a 1-D tensor of >= 2 times")
    if (grid < 0).any() or (grid > 1).any() or not (grid[1:] > grid[:-1]).all():
        raise ValueError(f"grid runs from {float(grid[0]):g} to {float(grid[-1]):g}; expected strictly "
                         "increasing times in [0, 1] (data to noise, e.g. schedules.uniform_grid(n).flip(0))")
    if not float(schedule.sigma(float(grid[0]))) > 0:
        raise ValueError(f"grid[0]={float(grid[0]):g} has sigma_t = 0 under {schedule}, where the PF-ODE "
                         f"velocity is singular; expected grid[0] >= schedule.t_min={schedule.t_min:g}")
    return grid


def gaussian_prior_log_prob(x: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; 0, std^2 I) per sample; x: (B, *D) -> (B,)."""
    D = x[0].numel()
    return -0.5 * (x.flatten(1) ** 2).sum(1) / std ** 2 - D * math.log(std) - 0.5 * D * math.log(2 * math.pi)


def log_likelihood(denoiser: Model, x: torch.Tensor, grid, method: str = "heun", trace: str = "exact",
                   n_probes: int = 1, probe: str = "rademacher", generator=None, y=None,
                   prior_log_prob=None, return_terms: bool = False):
    """log p_{grid[0]}(x) by the PF-ODE and the instantaneous change of variables (module docstring).

    Args:
        denoiser: any :class:`utils.targets.Model` (a trained net, the exact oracle, ...); its
            ``velocity`` must be differentiable in x.
        x: (B, *D) data points at time grid[0].
        grid: (N + 1,) strictly increasing times, from data (grid[0], with sigma > 0: use
            ``schedule.t_min`` for VP and linear paths) to noise (grid[-1], usually 1 or ``t_max``).
            Every decreasing grid of :mod:`utils.schedules` works after ``.flip(0)``.
        method: ``euler`` (order 1), ``heun`` (order 2), ``rk4`` (order 4) on the augmented state.
        trace: ``exact`` or ``hutchinson`` (with ``n_probes`` probes of kind ``probe`` drawn from
            ``generator``, fixed along the path).
        prior_log_prob: callable x_T (B, *D) -> (B,); default N(0, sigma_T^2 I).
        return_terms: also return the parts.

    Returns log p (B,) in x's dtype, or with ``return_terms`` the tuple
    ``(log_p, prior_term (B,), integral_of_div (B,), x_T (B, *D))``, log_p = prior_term + integral.
    """
    if not isinstance(denoiser, Model):
        raise ValueError(f"denoiser has type {type(denoiser).__name__}; expected a utils.targets.Model")
    check_batch("x", x)
    if not x.is_floating_point():
        raise ValueError(f"x has dtype {x.dtype}; expected a floating-point tensor")
    check_choice("method", method, METHODS)
    check_choice("trace", trace, TRACES)
    grid = _check_grid(grid, denoiser.schedule)
    if prior_log_prob is not None and not callable(prior_log_prob):
        raise ValueError(f"prior_log_prob has type {type(prior_log_prob).__name__}; expected a callable or None")
    probes = None
    if trace == "hutchinson":
        probes = draw_probes(x.shape, n_probes, probe, generator, x.dtype, x.device)

    def field(state, t):
        """d/dt of the augmented state (x, int div v): (v, div v) at (x, t); the graph is
        dropped after each evaluation."""
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = denoiser.velocity(x, t, y)
            div = divergence_exact(v, x) if probes is None else divergence_hutchinson(v, x, probes)
        return (v.detach(), div.detach()), None

    step = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}[method]
    state = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    for i in range(len(grid) - 1):
        state, _ = step(field, state, float(grid[i]), float(grid[i + 1]))
    x, integral = state
    if prior_log_prob is None:
        prior = gaussian_prior_log_prob(x, float(denoiser.schedule.sigma(float(grid[-1]))))
    else:
        prior = prior_log_prob(x)
    log_p = (prior + integral).to(x.dtype)
    return (log_p, prior, integral, x) if return_terms else log_p


def bits_per_dim(log_p: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """-log_2 p / D per sample, in the units u with x = scale * u + shift (|dx/du| = scale per dim):
    bpd = -(log p_x + D log scale) / (D log 2). For 8-bit images mapped to [-1, 1] by
    x = u / 128 - 1 on dequantised u in [0, 256), scale = 1/128 (adds 7 bits/dim)."""
    check_int("dim", dim)
    if not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale={scale!r} is not valid; expected a positive number")
    return -(log_p + dim * math.log(scale)) / (dim * math.log(2))
