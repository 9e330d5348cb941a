"""Distillation for fast sampling (monograph Ch. 10): students that jump along a teacher's PF-ODE.

A student is a flow map G(x, s, t) (:class:`utils.flowmaps.FlowMap`) trained to match either the
exact flow map Psi_{s->t} (the oracle loss of Eq. 10.1.4, possible here because the data is a
Gaussian mixture), a teacher's ODE solution (knowledge distillation, Luhman & Luhman 2021) or two
of its own previous steps (progressive distillation, Salimans & Ho 2022; §10.3).

* :class:`DDIMMap`: the DDIM step x_t = alpha_t x0_hat + sigma_t eps_hat of any
  :class:`utils.targets.Model` (:func:`utils.flowmaps.ddim_step`, re-exported) as a flow map (the
  teacher's sampler; PD's students).
* :func:`x0_for_jump`, :func:`pd_target`: Lemma 10.3.1, the x0 that makes one DDIM step land
  where two teacher steps land.
* :class:`VPrediction`, :func:`v_target`, :class:`VPredictionLoss`: Salimans & Ho's
  v = alpha eps - sigma x0 parameterisation (finite at both ends, so a one-step student works).
* :class:`FlowMapNet`, :class:`AffineStudent`, :func:`pack_pairs`, :class:`FlowMapRegression`:
  a student G(x, s, t) in DDIM form and the regression E w ||G(x_s, s, t) - target||^2
  (Eq. 10.1.4 with the exact map, or L_KD with a teacher's map).
* :class:`ProgressiveDistillationLoss`: one round of PD (Salimans & Ho 2022, Alg. 2).
* :func:`vsd_loss`, :class:`MixtureGenerator`: §10.2's score-difference gradient (Prop. 10.2.1)
  and a generator whose noised density is known, to check it exactly.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import append_dims, as_time, check_batch, check_int, check_positive
from .flowmaps import FlowMap, ddim_step  # the DDIM step x_t = alpha_t x0_hat + sigma_t eps_hat (Ch. 9)
from .nets import SinusoidalEmbedding
from .schedules import Schedule
from .targets import Model

__all__ = ["ddim_step", "DDIMMap", "x0_for_jump", "pd_target", "VPrediction", "v_target",
           "VPredictionLoss", "FlowMapNet", "AffineStudent", "pack_pairs", "FlowMapRegression",
           "ProgressiveDistillationLoss", "halve_grid", "vsd_loss", "MixtureGenerator"]


def _ab(schedule: Schedule, t, x: torch.Tensor):
    """(alpha_t, sigma_t) shaped to broadcast against x; t a float or a (B,) tensor."""
    t = as_time(t, like=x, batch=x.shape[0], check=False)
    a, s, _, _ = schedule._coefficients(t)
    return append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)


# --- DDIM as a flow map ----------------------------------------------------------------------------

class DDIMMap(FlowMap):
    """G(x, s, t) = one DDIM step of ``model`` from s to t: a model's DDIM sampler as a flow map,
    so ``sample_flow_map(DDIMMap(model), x, grid)`` is DDIM on ``grid``."""

    def __init__(self, model: Model):
        if not isinstance(model, Model):
            raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model")
        super().__init__(model.schedule)
        self.model = model

    def jump(self, x, s, t, y=None):
        return ddim_step(self.model, x, s, t, y)

    def __repr__(self):
        return f"DDIMMap({self.model!r})"


def x0_for_jump(x_s: torch.Tensor, s, x_t: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """Lemma 10.3.1: the x0 with which one DDIM step from (x_s, s) lands on x_t at time t < s,

        x~ = (sigma_s x_t - sigma_t x_s) / (alpha_t sigma_s - alpha_s sigma_t).

    x_s, x_t: (B, *D); s, t: floats or (B,) tensors. At t = 0 (sigma_t = 0) it is x_t itself."""
    check_batch("x_s", x_s)
    if x_t.shape != x_s.shape:
        raise ValueError(f"x_t has shape {tuple(x_t.shape)}; expected the shape of x_s, {tuple(x_s.shape)}")
    a_s, s_s = _ab(schedule, s, x_s)
    a_t, s_t = _ab(schedule, t, x_s)
    return (s_s * x_t - s_t * x_s) / (a_t * s_s - a_s * s_t)


def pd_target(teacher: Model, x_s: torch.Tensor, s, u, t, y=None):
    """The progressive-distillation target (Salimans & Ho 2022, Alg. 2; Lemma 10.3.1): two DDIM
    steps of ``teacher``, s -> u -> t (s > u > t), folded into the one x0 that makes a single
    DDIM step s -> t land at the same point. Returns (x0_target, x_t of the two steps)."""
    with torch.no_grad():
        x_u = ddim_step(teacher, x_s, s, u, y)
        x_t = ddim_step(teacher, x_u, u, t, y)
    return x0_for_jump(x_s, s, x_t, t, teacher.schedule), x_t


def halve_grid(grid: torch.Tensor) -> torch.Tensor:
    """The student's grid of one PD round: every other time of the teacher's (N even -> N / 2 steps)."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    n = grid.numel() - 1
    if grid.ndim != 1 or n < 2 or n % 2:
        raise ValueError(f"grid has {n} steps; expected an even number of steps >= 2")
    return grid[::2].clone()


# --- v-prediction (Salimans & Ho 2022, §4) ---------------------------------------------------------

def v_target(x0: torch.Tensor, eps: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """Salimans & Ho's v = alpha_t eps - sigma_t x0 (not the PF-ODE velocity of utils.targets)."""
    a, s = _ab(schedule, t, x0)
    return a * eps - s * x0


class VPrediction(Model):
    """A net F(x, t) that predicts v = alpha eps - sigma x0 (Salimans & Ho 2022), as a Model:

        x0_hat = (alpha x - sigma F) / (alpha^2 + sigma^2),  eps_hat = (sigma x + alpha F) / (alpha^2 + sigma^2).

    Both are finite at t = 0 (x0_hat -> x) and where alpha -> 0 (x0_hat -> -F / sigma), which an
    eps-net is not: a one- or two-step student needs x0_hat at t = 1."""

    def __init__(self, net, schedule: Schedule):
        super().__init__(schedule)
        if not callable(net):
            raise ValueError(f"net has type {type(net).__name__}; expected a callable net(x, t)")
        self.net = net

    def x0_eps(self, x, t, y=None):
        check_batch("x", x)
        tt = as_time(t, like=x, batch=x.shape[0], check=False)
        F = self.net(x, tt) if y is None else self.net(x, tt, y)
        a, s = _ab(self.schedule, tt, x)
        n2 = a ** 2 + s ** 2
        return (a * x - s * F) / n2, (s * x + a * F) / n2

    def __repr__(self):
        return f"VPrediction(schedule={self.schedule})"


class VPredictionLoss:
    """E_{t, x0, eps} ||F(x_t, t) - v||^2 with t ~ U[t_range] (the 'SNR + 1' weighting in x0-error,
    Salimans & Ho 2022). A ``loss_fn(net, x0, y, generator)`` for :func:`utils.training.train`."""

    def __init__(self, schedule: Schedule, t_range=(0.0, 1.0)):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a utils.schedules.Schedule")
        lo, hi = t_range
        if not 0 <= lo < hi <= schedule.t_end:
            raise ValueError(f"t_range={t_range!r} is not valid; expected 0 <= lo < hi <= {schedule.t_end}")
        self.schedule, self.t_range = schedule, (float(lo), float(hi))

    def __call__(self, net, x0, y=None, generator=None):
        lo, hi = self.t_range
        t = lo + (hi - lo) * torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a, s = _ab(self.schedule, t, x0)
        x_t = a * x0 + s * eps
        return ((net(x_t, t) - v_target(x0, eps, t, self.schedule)) ** 2).sum(1).mean()


# --- flow-map students -----------------------------------------------------------------------------

class FlowMapNet(nn.Module):
    """net(x, s, t) -> (B, D): a residual MLP on [x, emb(s), emb(t)] (a student needs both times)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth), ("time_dim", time_dim)):
            check_int(name, v)
        self.dim = dim
        self.embed = SinusoidalEmbedding(time_dim)
        self.inp = nn.Linear(dim + 2 * time_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                                  nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, s, t):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.dim})")
        s, t = (as_time(u, like=x, batch=x.shape[0], check=False, t_end=math.inf) for u in (s, t))
        emb = torch.cat([self.embed(s), self.embed(t)], 1).to(x.dtype)
        h = self.inp(torch.cat([x, emb], 1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class AffineStudent(FlowMap):
    """A learned flow map in DDIM form (§10.3.3): G(x, s, t) = alpha_t x~ + sigma_t (x - alpha_s x~) / sigma_s,
    with the endpoint estimate x~ = (alpha_s x - sigma_s F(x, s, t)) / (alpha_s^2 + sigma_s^2) from a
    :class:`FlowMapNet` F (v-parameterised). G(x, s, s) = x for any net; G(x, 1, 0) = x~.
    ``jump`` keeps gradients (it is what the losses train)."""

    def __init__(self, net: FlowMapNet, schedule: Schedule):
        super().__init__(schedule)
        if not callable(net):
            raise ValueError(f"net has type {type(net).__name__}; expected a callable net(x, s, t)")
        self.net = net

    def endpoint(self, x, s, t):
        """x~(x, s, t): (B, *D)."""
        a_s, s_s = _ab(self.schedule, s, x)
        return (a_s * x - s_s * self.net(x, s, t)) / (a_s ** 2 + s_s ** 2)

    def jump(self, x, s, t, y=None):
        if y is not None:
            raise ValueError("y was given; expected None (AffineStudent is unconditional)")
        check_batch("x", x)
        a_s, s_s = _ab(self.schedule, s, x)
        a_t, s_t = _ab(self.schedule, t, x)
        x_tilde = self.endpoint(x, s, t)
        return a_t * x_tilde + s_t * (x - a_s * x_tilde) / s_s

    def __repr__(self):
        return f"AffineStudent(schedule={self.schedule})"


def pack_pairs(x_s: torch.Tensor, target: torch.Tensor, s, t) -> torch.Tensor:
    """(B, 2 D + 2) rows [x_s, target, s, t]: regression pairs as one tensor that
    :func:`utils.training.train` can shuffle and batch."""
    check_batch("x_s", x_s)
    if x_s.ndim != 2 or target.shape != x_s.shape:
        raise ValueError(f"x_s, target have shapes {tuple(x_s.shape)}, {tuple(target.shape)}; expected equal (B, D)")
    s, t = (as_time(u, like=x_s, batch=x_s.shape[0], t_end=math.inf) for u in (s, t))
    return torch.cat([x_s, target, s[:, None], t[:, None]], 1)


class FlowMapRegression:
    """The flow-map loss E w(s, t) ||G(x_s, s, t) - target||^2 (Eq. 10.1.4 with target
    Psi_{s->t}(x_s); L_KD with a teacher's ODE solution and (s, t) = (1, 0)) on packed rows
    (:func:`pack_pairs`). A ``loss_fn(net, rows, y, generator)`` for :func:`utils.training.train`;
    ``weight(s, t) -> (B,)`` defaults to 1."""

    def __init__(self, schedule: Schedule, weight=None):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a utils.schedules.Schedule")
        if weight is not None and not callable(weight):
            raise ValueError(f"weight has type {type(weight).__name__}; expected a callable weight(s, t) or None")
        self.schedule, self.weight = schedule, weight

    def __call__(self, net, rows, y=None, generator=None):
        d = (rows.shape[1] - 2) // 2
        x_s, target, s, t = rows[:, :d], rows[:, d:2 * d], rows[:, -2], rows[:, -1]
        err = ((AffineStudent(net, self.schedule).jump(x_s, s, t) - target) ** 2).sum(1)
        return (err * self.weight(s, t) if self.weight is not None else err).mean()


class ProgressiveDistillationLoss:
    """One round of progressive distillation (Salimans & Ho 2022, Alg. 2; §10.3.1-10.3.2).

    The student (a :class:`VPrediction` net, started from the teacher's weights) takes one DDIM
    step over each interval [t_{2i+2}, t_{2i}] of ``teacher_grid`` (N steps, N even); the target is
    :func:`pd_target` of two teacher DDIM steps through t_{2i+1}. Per sample: x0 from the data, an
    interval i uniformly, x_s = alpha_s x0 + sigma_s eps; the loss is the v-space error
    ||F(x_s, s) - v~||^2 with v~ = (alpha_s x_s - (alpha_s^2 + sigma_s^2) x~) / sigma_s (the
    'SNR + 1' weighting in x0-error). A ``loss_fn(net, x0, y, generator)`` for training.train."""

    def __init__(self, teacher: Model, teacher_grid):
        if not isinstance(teacher, Model):
            raise ValueError(f"teacher has type {type(teacher).__name__}; expected a utils.targets.Model")
        self.teacher, self.schedule = teacher, teacher.schedule
        self.teacher_grid = torch.as_tensor(teacher_grid, dtype=torch.float64)
        self.student_grid = halve_grid(self.teacher_grid)

    def __call__(self, net, x0, y=None, generator=None):
        n = self.student_grid.numel() - 1
        i = torch.randint(0, n, (x0.shape[0],), generator=generator, device=x0.device)
        g = self.teacher_grid.to(device=x0.device, dtype=x0.dtype)
        s, u, t = g[2 * i], g[2 * i + 1], g[2 * i + 2]
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a_s, s_s = _ab(self.schedule, s, x0)
        x_s = a_s * x0 + s_s * eps
        x_tilde, _ = pd_target(self.teacher, x_s, s, u, t)
        v_tilde = (a_s * x_s - (a_s ** 2 + s_s ** 2) * x_tilde) / s_s
        return ((net(x_s, s) - v_tilde) ** 2).sum(1).mean()


# --- §10.2 distribution-level distillation: VSD / DMD --------------------------------------------

def vsd_loss(x_gen: torch.Tensor, t, eps: torch.Tensor, fake_score, real_score, schedule: Schedule,
             weight=None) -> torch.Tensor:
    """A surrogate whose gradient is VSD's (Prop. 10.2.1, Eq. 10.2.2; Wang et al. 2023, Yin et al. 2024):

        grad_theta = E_{t, z, eps}[ w(t) alpha_t (grad log p^theta_t(x_t) - grad log p_t(x_t))^T d G_theta(z) / d theta ],

    x_t = alpha_t G_theta(z) + sigma_t eps. x_gen = G_theta(z): (B, D) with gradients; t: float or (B,);
    fake_score / real_score(x, t) -> (B, D) the generator's and the data's (teacher's) noised scores,
    used without gradients; weight(t) -> (B,) defaults to 1. Minimising it descends
    E_t w(t) KL(p^theta_t || p_t) (the reverse KL: mode seeking)."""
    check_batch("x_gen", x_gen)
    if eps.shape != x_gen.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)}; expected the shape of x_gen, {tuple(x_gen.shape)}")
    t = as_time(t, like=x_gen, batch=x_gen.shape[0], t_end=schedule.t_end)
    a, s = _ab(schedule, t, x_gen)
    with torch.no_grad():
        x_t = a * x_gen + s * eps
        diff = fake_score(x_t, t) - real_score(x_t, t)
        w = a * (append_dims(weight(t).to(x_gen.dtype), x_gen.ndim) if weight is not None else 1.0)
    return (w * diff * x_gen).flatten(1).sum(1).mean()


class MixtureGenerator(nn.Module):
    """A generator whose noised density is known in closed form (to check §10.2 exactly):
    G_theta(k, n) = theta_k + tau n, k uniform over K learnable points theta: (K, D), n ~ N(0, I).
    Its p^theta_t is a mixture of N(alpha_t theta_k, (alpha_t^2 tau^2 + sigma_t^2) I)."""

    def __init__(self, points: torch.Tensor, tau: float):
        super().__init__()
        check_batch("points", points)
        check_positive("tau", tau)
        self.theta = nn.Parameter(points.clone())
        self.tau = float(tau)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """(n, D) reparameterised samples (differentiable in theta)."""
        check_int("n", n)
        k = torch.randint(0, self.theta.shape[0], (n,), generator=generator)
        noise = torch.randn(n, self.theta.shape[1], generator=generator, dtype=self.theta.dtype)
        return self.theta[k] + self.tau * noise

    def noised_log_prob(self, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
        """log p^theta_t(x): (B,), differentiable in theta and x."""
        a, s = _ab(schedule, t, x)
        var = a ** 2 * self.tau ** 2 + s ** 2                                  # (B, 1)
        d2 = ((x[:, None, :] - a[:, None, :] * self.theta[None]) ** 2).sum(-1)  # (B, K)
        D = x.shape[1]
        log_n = -0.5 * d2 / var - 0.5 * D * torch.log(2 * math.pi * var)
        return torch.logsumexp(log_n, 1) - math.log(self.theta.shape[0])

    def noised_score(self, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
        """grad_x log p^theta_t(x): (B, D), the exact 'fake score' (no gradient to theta)."""
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            theta = self.theta.detach()
            a, s = _ab(schedule, t, xx)
            var = a ** 2 * self.tau ** 2 + s ** 2
            d2 = ((xx[:, None, :] - a[:, None, :] * theta[None]) ** 2).sum(-1)
            lp = torch.logsumexp(-0.5 * d2 / var, 1)
            return torch.autograd.grad(lp.sum(), xx)[0]
