"""Flow maps: jumps along the probability-flow ODE (monograph Ch. 10-11, §11.1).

The flow map Psi_{s->t}(x) is where the PF-ODE dx/dt = v(x, t) carries a point x at time s by
time t (either direction). It composes (the semigroup property Psi_{u->t} o Psi_{s->u} =
Psi_{s->t}) and Psi_{s->s} is the identity. A one-step generator is Psi_{1->0} applied to a prior
sample; distillation (Ch. 10) and consistency models, CTM and MeanFlow (Ch. 11) all learn it.

* :class:`FlowMap`: the interface, ``G(x, s, t, y=None)`` with s, t floats or per-sample (B,)
  tensors; :func:`sample_flow_map` jumps along a grid (one or a few steps) with the samplers'
  callback.
* :class:`ExactFlowMap`: Psi of a :class:`utils.targets.Model` by a fine RK4 solve of its PF-ODE,
  on a grid uniform in EDM's rho-spaced noise level between s and t. With the exact
  Gaussian-mixture oracle it is the exact flow map to solver accuracy (the tests check it
  against a solve with four times the steps), so every learned map can be measured against it.

Learned from scratch (Ch. 11; time runs data t = 0 -> noise t = 1 as everywhere in the book):

* §11.2 consistency models: :func:`consistency_coefficients` (c_skip, c_out with f(x, 0) = x),
  :class:`ConsistencyModel`, :class:`ConsistencyLoss` (CD with a teacher's :func:`ddim_step`,
  Eq. 11.2.4; CT without, Eq. 11.2.6) on :func:`consistency_grid`, and multistep
  :func:`sample_consistency` (Alg. 9).
* §11.3.3 sCM: :class:`TrigFlow` (the TrigFlow path as a :class:`Schedule` on the book's clock),
  :class:`SCM` (f = cos x - sin sigma_d F, Eq. 11.3.8), :func:`scm_tangent` (the JVP of Eq. 11.3.1)
  and :class:`SCMLoss` (continuous-time CD with tangent normalisation, warm-up, adaptive weighting).
* §11.4 CTM: :class:`CTM`, G = (t/s) x + (1 - t/s) g (Eq. 11.4.2), :class:`CTMLoss` (soft
  consistency with a teacher + denoising loss), :func:`sample_gamma` (Alg. 11).
* §11.5 MeanFlow: :class:`MeanFlow`, Psi = x + (t - s) h, :func:`meanflow_tangent` (the JVP of
  Eq. 11.5.4), :class:`MeanFlowLoss`.
* Images: :func:`teacher_trajectories` and :class:`TrajectoryDistillationLoss` train a
  :class:`ConsistencyModel` on a U-Net to the teacher's Psi_{s->0} by regression (``python -m
  utils.train --model consistency``, the shipped one-step model of Ch. 11).
* :class:`TwoTimeMLP` (a net(x, s, t) with smooth time features) and :class:`LearnedFlowMap`
  (a module as a :class:`FlowMap` for the samplers).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from ._checks import append_dims, as_time, check_batch, check_int, check_positive, tracing
from .nets import FourierFeatures, ResidualTrunk
from .samplers import Recorder, _emit, check_grid, rk4_step
from .schedules import EndsAtOne, Schedule
from .targets import Model


class FlowMap(ABC):
    """G(x, s, t): the state at time t of the PF-ODE path through x at time s (§11.1).

    x: (B, *D); s, t: floats or (B,) tensors of times; y: optional labels (B,).
    """

    def __init__(self, schedule: Schedule):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a utils.schedules.Schedule")
        self.schedule = schedule

    @abstractmethod
    def jump(self, x: torch.Tensor, s, t, y=None) -> torch.Tensor:
        """Psi_{s->t}(x), shape of x."""

    def __call__(self, x, s, t, y=None) -> torch.Tensor:
        return self.jump(x, s, t, y)


class ExactFlowMap(FlowMap):
    """Psi_{s->t} of ``model``'s PF-ODE by ``n_steps`` RK4 steps (4 evaluations each) on a grid
    uniform in sigma~^(1/rho), sigma~ = sigma_t / alpha_t (EDM's spacing: fine near the data).

    With the oracle (``mixture.denoiser(schedule)``) this is the ground truth a learned flow map
    is measured against; with a trained model it is the teacher's map (Ch. 10)."""

    def __init__(self, model: Model, n_steps: int = 128, rho: float = 7.0):
        if not isinstance(model, Model):
            raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model")
        check_int("n_steps", n_steps)
        check_positive("rho", rho)
        super().__init__(model.schedule)
        self.model, self.n_steps, self.rho = model, n_steps, float(rho)

    def times(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(n_steps + 1, B) per-sample grids from s to t, uniform in sigma~^(1/rho)."""
        sched, r = self.schedule, self.rho
        # a path that ends in pure noise (linear path at t = 1: sigma~ = inf) starts its grid at t_max
        top = torch.full_like(s, sched.t_max)
        ends = [torch.where(torch.isfinite(lev := sched.noise_level(u)), lev, sched.noise_level(top)) ** (1 / r)
                for u in (s, t)]
        k = torch.linspace(0, 1, self.n_steps + 1, dtype=s.dtype, device=s.device)[:, None]
        level = (ends[0] + k * (ends[1] - ends[0])) ** r
        grid = sched.t_from_log_snr(-torch.log(level)).to(s.dtype)
        grid[0], grid[-1] = s, t
        return grid

    @torch.no_grad()
    def jump(self, x, s, t, y=None):
        check_batch("x", x)
        end = self.schedule.t_end
        s = as_time(s, like=x, batch=x.shape[0], t_end=end).to(torch.float64)
        t = as_time(t, like=x, batch=x.shape[0], t_end=end).to(torch.float64)
        grid = self.times(s, t)
        field = lambda z, u: (self.model.velocity(z, u.to(z.dtype), y), None)
        for i in range(self.n_steps - 1):
            x, _ = rk4_step(field, x, grid[i], grid[i + 1])
        # The last step ends where a learned model's slope may be undefined (sigma = 0 under VP:
        # sigma' is infinite there); the oracle's is not. RK4 where the result is finite, else the
        # midpoint rule, which never evaluates the end point (as samplers.sample_rk4 does).
        x_rk4, _ = rk4_step(field, x, grid[-2], grid[-1])
        if not tracing() and torch.isfinite(x_rk4).all():
            return x_rk4
        x_mid, _ = rk4_step(field, x, grid[-2], grid[-1], last=True)
        return torch.where(torch.isfinite(x_rk4), x_rk4, x_mid)

    def __repr__(self):
        return f"ExactFlowMap({self.model!r}, n_steps={self.n_steps})"


@torch.no_grad()
def sample_flow_map(flow_map: FlowMap, x, grid, y=None, callback=None):
    """Few-step sampling with a flow map: x <- G(x, t_i, t_{i+1}) along a decreasing ``grid``
    (two times: one step). ``callback`` gets ``{"i", "t", "x", "x0"}`` as from the samplers, with
    x0 = G(x, t_i, 0) only where t_{i+1} = 0 (None elsewhere: a flow map answers no x0 for free)."""
    if not isinstance(flow_map, FlowMap):
        raise ValueError(f"flow_map has type {type(flow_map).__name__}; expected a utils.flowmaps.FlowMap")
    check_batch("x", x)
    grid = check_grid(grid, flow_map.schedule.t_end)
    if isinstance(callback, Recorder):
        callback.start(x, grid[0])
    for i in range(len(grid) - 1):
        x = flow_map(x, float(grid[i]), float(grid[i + 1]), y)
        _emit(callback, i, grid[i + 1], x, x if float(grid[i + 1]) == 0 else None)
    return x


# ---------------------------------------------------------------------------------------------
# Ch. 11: learning flow maps from scratch. Consistency models (§11.2), CTM (§11.4), MeanFlow (§11.5)
# ---------------------------------------------------------------------------------------------

def _check_schedule(schedule) -> None:
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule has type {type(schedule).__name__}; expected a utils.schedules.Schedule")


def _times(t, x: torch.Tensor) -> torch.Tensor:
    """t (float, 0-d or (B,)) as a (B,) tensor in x's dtype and device; no value check (jvp-safe)."""
    return as_time(t, like=x, batch=x.shape[0], check=False)


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) coefficient shaped to broadcast against x: (B, *D)."""
    return append_dims(v.to(x.dtype), x.ndim)


class TwoTimeMLP(ResidualTrunk):
    """net(x, s, t) -> (B, out_dim): a residual MLP on [x, phi(s), phi(s - t)] for the two-time
    flow-map models (CTM's g, MeanFlow's h; §11.4-11.5).

    phi are random Fourier features of low frequency (``scale`` ~ 1), smooth in the times, so a
    JVP in s (MeanFlow) stays well scaled; the gap s - t is fed in as MeanFlow does.
    x: (B, dim); s, t: floats or (B,) tensors.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 16,
                 scale: float = 1.0, out_dim: int | None = None):
        check_int("dim", dim)
        check_int("hidden", hidden)
        check_int("depth", depth)
        check_positive("scale", scale)
        emb = 2 * time_dim + 2                                              # [s, s - t, phi(s), phi(s - t)]
        super().__init__(dim + emb, emb, hidden, depth, out_dim or dim,
                         first={"embed_s": FourierFeatures(time_dim, scale=scale, seed=0),
                                "embed_gap": FourierFeatures(time_dim, scale=scale, seed=1)})
        self.dim = dim

    def forward(self, x: torch.Tensor, s, t) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.dim})")
        s, t = _times(s, x), _times(t, x)
        emb = torch.cat([s[:, None], (s - t)[:, None], self.embed_s(s).to(x.dtype),
                         self.embed_gap(s - t).to(x.dtype)], dim=1)
        return self.trunk(torch.cat([x, emb], dim=1), emb)


def consistency_coefficients(schedule: Schedule, s, sigma_data: float = 0.5):
    """(c_skip(s), c_out(s)), each (B,) or 0-d: EDM's boundary-respecting pair (§11.2; Song et al.
    2023, App. C) in the schedule's sigma_s: c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = sd sigma / sqrt(sigma^2 + sd^2). sigma_0 = 0 gives c_skip = 1, c_out = 0: f(x, 0) = x."""
    check_positive("sigma_data", sigma_data)
    s = s if isinstance(s, torch.Tensor) else torch.tensor(float(s), dtype=torch.float64)
    sig = schedule._coefficients(s)[1]
    c_skip = sigma_data ** 2 / (sig ** 2 + sigma_data ** 2)
    c_out = sigma_data * sig / torch.sqrt(sig ** 2 + sigma_data ** 2)
    return c_skip, c_out


class ConsistencyModel(nn.Module):
    """f_theta(x, s) = c_skip(s) x + c_out(s) F_theta(x, s) (§11.2): the flow map to the data,
    Psi_{s->0}, with f(x, 0) = x built in. ``net(x, s)`` is e.g. a :class:`utils.nets.MLP`.
    x: (B, D); s: float or (B,)."""

    def __init__(self, net: nn.Module, schedule: Schedule, sigma_data: float = 0.5):
        super().__init__()
        _check_schedule(schedule)
        check_positive("sigma_data", sigma_data)
        self.net, self.schedule, self.sigma_data = net, schedule, float(sigma_data)

    def forward(self, x: torch.Tensor, s, y: torch.Tensor | None = None) -> torch.Tensor:
        s = _times(s, x)
        c_skip, c_out = consistency_coefficients(self.schedule, s, self.sigma_data)
        out = self.net(x, s) if y is None else self.net(x, s, y)  # y: labels of a class-conditional net
        return _col(c_skip, x) * x + _col(c_out, x) * out


def consistency_grid(n_steps: int, power: float = 2.0) -> torch.Tensor:
    """The n_steps + 1 times 1 = s_N > ... > s_1 > s_0 = 0 of discrete-time consistency training
    (§11.2.1), s_i = (i / N)^power (decreasing, float64): finer near the data, where the PF-ODE
    bends. (EDM's rho-spacing in the noise level would crowd the points next to t = 1 on a linear
    path, where sigma~ = t / (1 - t) explodes, and leave the middle, where the mass moves, coarse.)
    The last step lands on 0, where f(x, 0) = x anchors the chain."""
    check_int("n_steps", n_steps)
    check_positive("power", power)
    return (torch.arange(n_steps, -1, -1, dtype=torch.float64) / n_steps) ** power


def ddim_step(teacher: Model, x: torch.Tensor, s, t, y=None) -> torch.Tensor:
    """One DDIM step of ``teacher`` from s to t (Ch. 9; the CD teacher step of Eq. 11.2.4):
    x_t = alpha_t x0_hat + sigma_t eps_hat, with (x0_hat, eps_hat) the teacher's at (x, s).
    (On the linear path it is one Euler step of the PF-ODE.) x: (B, D); s, t: floats or (B,)."""
    x0, eps = teacher.x0_eps(x, _times(s, x), y)
    a, sig = teacher.schedule._coefficients(_times(t, x))[:2]
    return _col(a, x) * x0 + _col(sig, x) * eps


class ConsistencyLoss:
    """Discrete-time consistency loss (§11.2.1): with (s_{i+1}, s_i) a random adjacent pair of
    :func:`consistency_grid` and x_{s_{i+1}} = alpha x0 + sigma eps,

        L = E[ w_i || f_theta(x_{s_{i+1}}, s_{i+1}) - sg f_theta(x_hat_{s_i}, s_i) ||^2 ],

    where x_hat_{s_i} is one DDIM step of ``teacher`` (CD, Eq. 11.2.4), or, without a teacher,
    alpha_{s_i} x0 + sigma_{s_i} eps with the same (x0, eps) (CT, Eq. 11.2.6). The target uses the
    current weights without gradient (sg, iCT's choice: no EMA teacher); w_i = 1 / (s_{i+1} - s_i).
    ``loss(net, x0, y, generator)`` fits :func:`utils.training.train`."""

    def __init__(self, schedule: Schedule, n_steps: int = 32, teacher: Model | None = None, power: float = 2.0):
        if teacher is not None and not isinstance(teacher, Model):
            raise ValueError(f"teacher has type {type(teacher).__name__}; expected a utils.targets.Model or None")
        _check_schedule(schedule)
        check_int("n_steps", n_steps)
        self.schedule, self.teacher = schedule, teacher
        self.grid = consistency_grid(n_steps, power)
        self.n_steps = n_steps

    def pairs(self, x0: torch.Tensor, generator=None):
        """(x_next, s_next, x_prev, s_prev): a random adjacent pair per sample and its two points."""
        B = x0.shape[0]
        i = torch.randint(0, self.n_steps, (B,), generator=generator, device=x0.device)
        grid = self.grid.to(x0.device)
        s_next, s_prev = grid[i].to(x0.dtype), grid[i + 1].to(x0.dtype)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a, sig = self.schedule._coefficients(s_next)[:2]
        x_next = _col(a, x0) * x0 + _col(sig, x0) * eps
        if self.teacher is not None:
            x_prev = ddim_step(self.teacher, x_next, s_next, s_prev)
        else:
            a, sig = self.schedule._coefficients(s_prev)[:2]
            x_prev = _col(a, x0) * x0 + _col(sig, x0) * eps
        return x_next, s_next, x_prev, s_prev

    def __call__(self, net: ConsistencyModel, x0: torch.Tensor, y=None, generator=None) -> torch.Tensor:
        x_next, s_next, x_prev, s_prev = self.pairs(x0, generator)
        with torch.no_grad():
            target = net(x_prev, s_prev)
        w = 1.0 / (s_next - s_prev)
        return (w * ((net(x_next, s_next) - target) ** 2).flatten(1).sum(1)).mean()

    def __repr__(self):
        kind = "CD" if self.teacher is not None else "CT"
        return f"ConsistencyLoss({kind}, n_steps={self.n_steps}, {self.schedule})"


def _renoise(schedule: Schedule, x: torch.Tensor, t_from, t_to, generator=None) -> torch.Tensor:
    """Carry a sample of p_{t_from} to one of p_{t_to} (t_to >= t_from) by the forward kernel:
    x_to = (alpha_to / alpha_from) x + sqrt(sigma_to^2 - (alpha_to sigma_from / alpha_from)^2) z."""
    a0, s0 = schedule._coefficients(_times(t_from, x))[:2]
    a1, s1 = schedule._coefficients(_times(t_to, x))[:2]
    ratio = a1 / a0
    std = torch.sqrt((s1 ** 2 - (ratio * s0) ** 2).clamp(min=0))
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return _col(ratio, x) * x + _col(std, x) * z


@torch.no_grad()
def sample_consistency(model: ConsistencyModel, x, grid, generator=None, callback=None, y=None):
    """Multistep consistency sampling (Alg. 9): x0 = f(x_T, T); then, for each later time t of
    ``grid`` before its final 0, re-noise x_t = alpha_t x0 + sigma_t z and x0 = f(x_t, t).
    ``grid``: decreasing times from T to 0 (two times: one step); ``y``: labels (B,) for a
    class-conditional model. Returns x0: (B, *D)."""
    check_batch("x", x)
    grid = check_grid(grid, model.schedule.t_end)
    if float(grid[-1]) != 0:
        raise ValueError(f"grid ends at {float(grid[-1]):g}; expected it to end at 0")
    if isinstance(callback, Recorder):
        callback.start(x, grid[0])
    x0 = model(x, float(grid[0]), y)
    _emit(callback, 0, grid[1], x0, x0)
    for i in range(1, len(grid) - 1):
        x = _renoise(model.schedule, x0, 0.0, float(grid[i]), generator)
        x0 = model(x, float(grid[i]), y)
        _emit(callback, i, grid[i + 1], x0, x0)
    return x0


# --- a flow map distilled on a teacher's trajectories (the image model of Ch. 11) -----------------

@torch.no_grad()
def teacher_trajectories(teacher: Model, x: torch.Tensor, grid, sampler, y=None) -> torch.Tensor:
    """The teacher's PF-ODE solved by ``sampler(teacher, x, grid, y=..., callback=...)`` (e.g.
    :func:`utils.solvers.dpm_solver_pp_2m`) from prior samples x: (B, *D) along ``grid``
    (decreasing, ending at 0). Returns the states at every grid time, (B, len(grid), *D), on the
    CPU; the last is the endpoint Psi_{s_0->0}(x) that a one-step model learns."""
    check_batch("x", x)
    grid = check_grid(grid, teacher.schedule.t_end)
    if float(grid[-1]) != 0:
        raise ValueError(f"grid ends at {float(grid[-1]):g}; expected it to end at 0")
    if not callable(sampler):
        raise ValueError(f"sampler has type {type(sampler).__name__}; expected a sampler(model, x, grid, y=, callback=)")
    rec = Recorder()
    sampler(teacher, x, grid, y=y, callback=rec)
    xs = rec.xs
    if xs.shape[0] != len(grid):
        raise ValueError(f"the sampler reported {xs.shape[0]} states on a grid of {len(grid)} times; "
                         f"expected one per time (a sampler with one evaluation per step)")
    return xs.transpose(0, 1).contiguous()


class TrajectoryDistillationLoss:
    """Flow-map regression on a teacher's trajectories: the loss of §10.1 (Eq. 10.1.4) with the
    target Psi_{s->0} read off the teacher's ODE solution, i.e. the fixed point that consistency
    distillation (Eq. 11.2.4) approaches one adjacent pair at a time, reached here in one
    regression. For a trajectory (x_{s_0}, ..., x_{s_K} = x_0) of :func:`teacher_trajectories`
    on ``grid``, a time s_k is drawn (k = 0, the prior end, with probability ``p_prior``, else
    uniformly from 1..K-1) and

        L = E || f_theta(x_{s_k}, s_k, y) - x_0 ||^2      (mean over pixels).

    ``loss(net, traj, y, generator)`` with net a :class:`ConsistencyModel` and traj (B, K+1, *D)
    fits :func:`utils.training.train` (which batches the trajectories like data)."""

    def __init__(self, grid, p_prior: float = 0.5):
        grid = torch.as_tensor(grid, dtype=torch.float64)
        if grid.ndim != 1 or len(grid) < 2 or float(grid[-1]) != 0 or not bool((grid[1:] < grid[:-1]).all()):
            raise ValueError(f"grid={grid.tolist()} is not valid; expected decreasing times ending at 0")
        if not 0.0 <= p_prior <= 1.0:
            raise ValueError(f"p_prior={p_prior!r} is not valid; expected a probability in [0, 1]")
        self.grid, self.p_prior = grid, float(p_prior)

    def __call__(self, net, traj: torch.Tensor, y=None, generator=None) -> torch.Tensor:
        if traj.ndim < 3 or traj.shape[1] != len(self.grid):
            raise ValueError(f"traj has shape {tuple(traj.shape)}; expected (B, {len(self.grid)}, *D)")
        B, K = traj.shape[0], len(self.grid) - 1
        k = torch.randint(1, K, (B,), generator=generator, device=traj.device) if K > 1 else \
            torch.zeros(B, dtype=torch.long, device=traj.device)
        prior = torch.rand(B, generator=generator, device=traj.device) < self.p_prior
        k = torch.where(prior, torch.zeros_like(k), k)
        x_s, s = traj[torch.arange(B, device=traj.device), k], self.grid.to(traj.device, traj.dtype)[k]
        return ((net(x_s, s, y) - traj[:, -1]) ** 2).flatten(1).mean(1).mean()

    def __repr__(self):
        return f"TrajectoryDistillationLoss({len(self.grid) - 1} steps, p_prior={self.p_prior:g})"


class LearnedFlowMap(FlowMap):
    """A :class:`FlowMap` over a module ``net(x, s, t) -> G`` (CTM, MeanFlow): what the samplers
    take. Evaluates without gradient in the module's dtype; s, t floats or (B,) tensors."""

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__(schedule)
        if not isinstance(net, nn.Module):
            raise ValueError(f"net has type {type(net).__name__}; expected a torch.nn.Module net(x, s, t)")
        self.net = net

    @torch.no_grad()
    def jump(self, x, s, t, y=None):
        check_batch("x", x)
        end = self.schedule.t_end
        s = as_time(s, like=x, batch=x.shape[0], t_end=end)
        t = as_time(t, like=x, batch=x.shape[0], t_end=end)
        return self.net(x, s, t)

    def __repr__(self):
        return f"LearnedFlowMap({type(self.net).__name__}, {self.schedule})"


class CTM(nn.Module):
    """G_theta(x, s, t) = (t/s) x + (1 - t/s) g_theta(x, s, t) (Eq. 11.4.2), with
    g_theta = c_skip(s) x + c_out(s) F_theta(x, s, t) (:func:`consistency_coefficients`).
    G(x, s, s) = x for every net; on the linear path the optimal g(x, s, s) = x - s v is the
    denoiser E[x0 | x_s] (Prop. 11.4.1). ``net(x, s, t)``: a :class:`TwoTimeMLP`. Needs s > 0."""

    def __init__(self, net: nn.Module, schedule: Schedule, sigma_data: float = 0.5):
        super().__init__()
        _check_schedule(schedule)
        check_positive("sigma_data", sigma_data)
        self.net, self.schedule, self.sigma_data = net, schedule, float(sigma_data)

    def g(self, x: torch.Tensor, s, t) -> torch.Tensor:
        s, t = _times(s, x), _times(t, x)
        c_skip, c_out = consistency_coefficients(self.schedule, s, self.sigma_data)
        return _col(c_skip, x) * x + _col(c_out, x) * self.net(x, s, t)

    def forward(self, x: torch.Tensor, s, t) -> torch.Tensor:
        s, t = _times(s, x), _times(t, x)
        r = _col(t / s, x)
        return r * x + (1 - r) * self.g(x, s, t)


def _frozen(net: nn.Module):
    """net's forward with its parameters detached (sg theta): gradients reach the input only."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    return lambda *args: torch.func.functional_call(net, {**params, **buffers}, args)


class CTMLoss:
    """CTM's soft consistency with a teacher (Eqs. 11.4.4-11.4.5) plus the denoising loss (Eq. 11.4.8).

    Per sample: s ~ U(t_min, 1), t ~ U(0, s), u ~ U(t, s); x_s = alpha_s x0 + sigma_s eps; the
    teacher's solve ``ExactFlowMap(teacher, teacher_steps)`` carries x_s to x_u; then

        L_CTM = || sg G(G_theta(x_s, s, t), t, 0) - sg G(sg G_theta(x_u, u, t), t, 0) ||^2
        L_DM  = || g_theta(x_s, s, s) - x0 ||^2,      L = L_CTM + dm_weight L_DM

    (the distance is taken after a frozen jump to 0, CTM's data-space comparison).
    ``loss(net, x0, y, generator)`` fits :func:`utils.training.train`."""

    def __init__(self, schedule: Schedule, teacher: Model, teacher_steps: int = 4, dm_weight: float = 1.0):
        if not isinstance(teacher, Model):
            raise ValueError(f"teacher has type {type(teacher).__name__}; expected a utils.targets.Model")
        _check_schedule(schedule)
        check_int("teacher_steps", teacher_steps)
        if not (isinstance(dm_weight, (int, float)) and dm_weight >= 0):
            raise ValueError(f"dm_weight={dm_weight!r} is not valid; expected a number >= 0")
        self.schedule, self.dm_weight = schedule, float(dm_weight)
        self.teacher = ExactFlowMap(teacher, n_steps=teacher_steps)

    def __call__(self, net: CTM, x0: torch.Tensor, y=None, generator=None) -> torch.Tensor:
        B, dev, dt = x0.shape[0], x0.device, x0.dtype
        r = torch.rand(3, B, generator=generator, dtype=dt, device=dev)
        t_min = self.schedule.t_min
        s = t_min + (1 - t_min) * r[0]
        t = s * r[1]
        u = t + (s - t) * r[2]
        eps = torch.randn(x0.shape, generator=generator, dtype=dt, device=dev)
        a, sig = self.schedule._coefficients(s)[:2]
        x_s = _col(a, x0) * x0 + _col(sig, x0) * eps
        x_u = self.teacher.jump(x_s, s, u).to(dt)
        frozen = _frozen(net)
        zero = torch.zeros_like(t)
        with torch.no_grad():
            target = frozen(frozen(x_u, u, t), t.clamp(min=t_min), zero)
        pred = frozen(net(x_s, s, t), t.clamp(min=t_min), zero)
        l_ctm = ((pred - target) ** 2).flatten(1).sum(1)
        l_dm = ((net.g(x_s, s, s) - x0) ** 2).flatten(1).sum(1)
        return (l_ctm + self.dm_weight * l_dm).mean()


@torch.no_grad()
def sample_gamma(flow_map: FlowMap, x, grid, gamma: float, generator=None, callback=None):
    """CTM's gamma-sampling (Alg. 11): from t_i, jump to t~ with noise level
    sigma~(t~) = sqrt(1 - gamma^2) sigma~(t_{i+1}), then re-noise to t_{i+1} by the forward kernel.
    gamma = 0: deterministic jumps (:func:`sample_flow_map`); gamma = 1: jump to 0 and re-noise
    (consistency sampling, Alg. 9). ``grid``: decreasing times ending at 0."""
    if not isinstance(flow_map, FlowMap):
        raise ValueError(f"flow_map has type {type(flow_map).__name__}; expected a utils.flowmaps.FlowMap")
    if not (isinstance(gamma, (int, float)) and 0 <= gamma <= 1):
        raise ValueError(f"gamma={gamma!r} is not valid; expected a number in [0, 1]")
    check_batch("x", x)
    sched = flow_map.schedule
    grid = check_grid(grid, sched.t_end)
    if isinstance(callback, Recorder):
        callback.start(x, grid[0])
    for i in range(len(grid) - 1):
        t_next = grid[i + 1:i + 2]
        level = math.sqrt(1 - gamma ** 2) * sched.noise_level(t_next)
        t_tilde = float(sched.t_from_log_snr(-torch.log(level))) if float(level) > 0 else 0.0
        t_tilde = float(t_next) if gamma == 0 else t_tilde
        x = flow_map(x, float(grid[i]), t_tilde)
        if gamma > 0 and float(t_next) > 0:
            x = _renoise(sched, x, t_tilde, float(t_next), generator)
        _emit(callback, i, grid[i + 1], x, x if float(t_next) == 0 else None)
    return x


class MeanFlow(nn.Module):
    """Psi_theta(x, s, t) = x + (t - s) h_theta(x, s, t) (§11.5, Eq. 11.5.2), h the average
    velocity (1/(t - s)) int_s^t v(x_u, u) du of Eq. 11.5.1; G(x, s, s) = x for every net and
    h(x, s, s) = v(x, s). One step from T to 0: x_0 = x_T - T h(x_T, T, 0) (derived in Ch. 11).
    ``net(x, s, t)``: a :class:`TwoTimeMLP`."""

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__()
        _check_schedule(schedule)
        self.net, self.schedule = net, schedule

    def h(self, x: torch.Tensor, s, t) -> torch.Tensor:
        return self.net(x, s, t)

    def forward(self, x: torch.Tensor, s, t) -> torch.Tensor:
        s, t = _times(s, x), _times(t, x)
        return x + _col(t - s, x) * self.h(x, s, t)


def meanflow_tangent(h, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, v: torch.Tensor):
    """(h(x, s, t), d/ds h(x_s, s, t)) along the path with dx_s/ds = v (Eq. 11.5.4): one
    forward-mode JVP, torch.func.jvp(h, (x, s, t), (v, 1, 0)) = d_x h v + d_s h.
    h: a callable (x: (B, D), s: (B,), t: (B,)) -> (B, D)."""
    return torch.func.jvp(h, (x, s, t), (v, torch.ones_like(s), torch.zeros_like(t)))


class MeanFlowLoss:
    """The MeanFlow loss (Eq. 11.5.4): || h_theta(x_s, s, t) - sg[v + (t - s) d/ds h_theta] ||^2,
    the identity h = v - (s - t)(d_x h v + d_s h) (Eq. 11.5.3) turned into a regression.

    x_s = alpha_s x0 + sigma_s eps; v is the conditional velocity alpha'_s x0 + sigma'_s eps
    (training from scratch) or ``teacher.velocity(x_s, s)`` (distillation). Times: s, t uniform
    with s >= t, and t = s for a share ``equal_share`` of the pairs (there the loss is flow
    matching, h(x, s, s) = v). ``loss(net, x0, y, generator)`` fits :func:`utils.training.train`."""

    def __init__(self, schedule: Schedule, equal_share: float = 0.25, teacher: Model | None = None):
        if not (isinstance(equal_share, (int, float)) and 0 <= equal_share <= 1):
            raise ValueError(f"equal_share={equal_share!r} is not valid; expected a number in [0, 1]")
        if teacher is not None and not isinstance(teacher, Model):
            raise ValueError(f"teacher has type {type(teacher).__name__}; expected a utils.targets.Model or None")
        _check_schedule(schedule)
        self.schedule, self.equal_share, self.teacher = schedule, float(equal_share), teacher

    def times(self, n: int, generator=None, dtype=torch.float32, device=None):
        """(s, t): (n,) each, s >= t, uniform on the triangle, with t = s for ``equal_share``."""
        r = torch.rand(3, n, generator=generator, dtype=dtype, device=device)
        s, t = torch.maximum(r[0], r[1]), torch.minimum(r[0], r[1])
        return s, torch.where(r[2] < self.equal_share, s, t)

    def __call__(self, net: MeanFlow, x0: torch.Tensor, y=None, generator=None) -> torch.Tensor:
        s, t = self.times(x0.shape[0], generator, x0.dtype, x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a, sig, da, dsig = self.schedule._coefficients(s)
        x_s = _col(a, x0) * x0 + _col(sig, x0) * eps
        if self.teacher is not None:
            with torch.no_grad():
                v = self.teacher.velocity(x_s, s)
        else:
            v = _col(da, x0) * x0 + _col(dsig, x0) * eps
        h, dh_ds = meanflow_tangent(net.h, x_s, s, t, v)
        target = (v + _col(t - s, x0) * dh_ds).detach()
        return ((h - target) ** 2).flatten(1).sum(1).mean()

    def __repr__(self):
        return f"MeanFlowLoss(equal_share={self.equal_share}, teacher={self.teacher!r})"


# ---------------------------------------------------------------------------------------------
# §11.3.3 continuous-time consistency models: sCM on TrigFlow (Lu & Song 2025)
# ---------------------------------------------------------------------------------------------

class TrigFlow(EndsAtOne):
    """TrigFlow (§11.3.3, Eq. 11.3.7) on the book's clock: x_t = cos(theta) x0 + sin(theta) z,
    z ~ N(0, sigma_d^2 I), theta = (pi / 2) t in [0, pi / 2] for t in [0, 1].

    alpha_t = cos(pi t / 2), sigma_t = sigma_d sin(pi t / 2): for data of std sigma_d, x / sigma_d is
    a variance-preserving path (alpha^2 + (sigma / sigma_d)^2 = 1) with alpha = cos, sigma = sin of
    the rescaled time theta. alpha_1 = 0, so the schedule ends at t = 1 (prior N(0, sigma_d^2 I));
    sampling an eps-model starts at ``t_max`` = 0.999 (a velocity / x0 model is finite at 1)."""

    name = "trigflow"

    def __init__(self, sigma_data: float = 0.5):
        check_positive("sigma_data", sigma_data)
        self.sigma_data = float(sigma_data)

    def _params(self):
        return dict(sigma_data=self.sigma_data)

    def _alpha(self, t):
        return torch.cos(math.pi / 2 * t)

    def _sigma(self, t):
        return self.sigma_data * torch.sin(math.pi / 2 * t)

    def _d_alpha(self, t):
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)

    def _d_sigma(self, t):
        return self.sigma_data * math.pi / 2 * torch.cos(math.pi / 2 * t)

    def _t_from_log_snr(self, lam):
        # lambda = -log(sigma_d tan theta)  =>  theta = atan(exp(-lambda) / sigma_d)
        return torch.atan(torch.exp(-lam.to(torch.float64)) / self.sigma_data) * 2 / math.pi


class SCM(nn.Module):
    """sCM's parameterisation (§11.3.3, Eq. 11.3.8) on :class:`TrigFlow`, in the book's clock t:
    f(x, t) = cos(theta) x - sin(theta) sigma_d F(x / sigma_d, t), theta = pi t / 2, so f(x, 0) = x
    for any net. ``net(x, t)`` (e.g. a :class:`utils.nets.MLP`) is F; ``weight(t)`` (optional,
    (B,) -> (B, 1), e.g. Fourier features and a linear layer) is the learned log-weight w(t) of the adaptive weighting (Eq. 11.3.11).
    x: (B, D); t: float or (B,)."""

    def __init__(self, net: nn.Module, schedule: TrigFlow, weight: nn.Module | None = None):
        super().__init__()
        if not isinstance(schedule, TrigFlow):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected utils.flowmaps.TrigFlow")
        self.net, self.schedule, self.weight = net, schedule, weight

    def F(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.net(x / self.schedule.sigma_data, _times(t, x))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = _times(t, x)
        theta = math.pi / 2 * t
        return _col(torch.cos(theta), x) * x - _col(torch.sin(theta) * self.schedule.sigma_data, x) * self.F(x, t)


def scm_tangent(model: SCM, x: torch.Tensor, t: torch.Tensor, dx_dt: torch.Tensor):
    """(F(x, t), dF/dt along the path dx/dt = dx_dt): one forward-mode JVP (§11.3.1, Eq. 11.3.1),
    torch.func.jvp(F, (x, t), (dx_dt, 1)). x, dx_dt: (B, D); t: (B,). Book clock t (theta = pi t / 2)."""
    return torch.func.jvp(model.F, (x, t), (dx_dt, torch.ones_like(t)))


class SCMLoss:
    """Continuous-time consistency distillation, sCM's form (§11.3.3, Eqs. 11.3.7-11.3.11, Alg. 10).

    With theta = pi t / 2, x = cos(theta) x0 + sin(theta) sigma_d eps and the teacher's
    dx/dtheta = (2 / pi) teacher.velocity(x, t), the tangent of f along the PF-ODE splits as

        g = cos(theta) [ cos(theta) (dx/dtheta - sigma_d F) - r sin(theta) (x + sigma_d dF/dtheta) ],

    (df/dtheta = the bracket with r = 1, times the weight cos(theta)), and the loss is
    || F_theta - sg(F_theta + g) ||^2 / D, whose gradient is that of E[f . sg(df/dtheta)].
    Stabilisers: ``normalise`` replaces g by g / (||g|| + c) (tangent normalisation);
    ``warmup_steps`` ramps r linearly from 0 to 1 over that many calls (0: r = 1 throughout);
    ``adaptive`` uses the model's ``weight`` w(t): loss e^{w} / D ||.||^2 - w (Eq. 11.3.11; the
    optimal w is -log of the per-time mean square, so every time contributes alike). Times: log(sigma_d tan theta) ~
    N(p_mean, p_std^2). ``loss(model, x0, y, generator)`` fits :func:`utils.training.train`; the
    mean ||g|| of each call (before normalisation) is appended to ``tangent_norms``."""

    def __init__(self, teacher: Model, normalise: bool = True, c: float = 0.1, warmup_steps: int = 0,
                 adaptive: bool = True, p_mean: float = -1.0, p_std: float = 1.4):
        if not isinstance(teacher, Model):
            raise ValueError(f"teacher has type {type(teacher).__name__}; expected a utils.targets.Model")
        if not isinstance(teacher.schedule, TrigFlow):
            raise ValueError(f"teacher.schedule is {teacher.schedule!r}; expected a utils.flowmaps.TrigFlow")
        check_positive("c", c)
        check_positive("p_std", p_std)
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"warmup_steps={warmup_steps!r} is not valid; expected an int >= 0")
        self.teacher, self.normalise, self.c = teacher, bool(normalise), float(c)
        self.warmup_steps, self.adaptive = warmup_steps, bool(adaptive)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.sigma_data = teacher.schedule.sigma_data
        self.calls, self.tangent_norms = 0, []

    def times(self, n: int, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
        """(n,) book-clock times t = (2 / pi) atan(exp(p_mean + p_std n) / sigma_d)."""
        e = torch.randn(n, generator=generator, dtype=dtype, device=device)
        return torch.atan(torch.exp(self.p_mean + self.p_std * e) / self.sigma_data) * 2 / math.pi

    def ramp(self) -> float:
        """The warm-up factor r of the current call, min(1, calls / warmup_steps)."""
        return 1.0 if self.warmup_steps == 0 else min(1.0, self.calls / self.warmup_steps)

    def __call__(self, model: SCM, x0: torch.Tensor, y=None, generator=None) -> torch.Tensor:
        B, D = x0.shape[0], x0[0].numel()
        sd = self.sigma_data
        t = self.times(B, generator, x0.dtype, x0.device)
        theta = math.pi / 2 * t
        cos, sin = _col(torch.cos(theta), x0), _col(torch.sin(theta), x0)
        x = cos * x0 + sin * sd * torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        with torch.no_grad():
            dx_dtheta = self.teacher.velocity(x, t) * (2 / math.pi)
            F_minus, dF_dt = scm_tangent(model, x, t, dx_dtheta * (math.pi / 2))   # the net's clock is t
            dF_dtheta = dF_dt * (2 / math.pi)
            g = cos * (cos * (dx_dtheta - sd * F_minus) - self.ramp() * sin * (x + sd * dF_dtheta))
            norm = g.flatten(1).norm(dim=1)
            self.tangent_norms.append(norm.mean().item())
            if self.normalise:
                g = g / _col(norm + self.c, x0)
        self.calls += 1
        sq = ((model.F(x, t) - (F_minus + g)) ** 2).flatten(1).sum(1) / D
        if self.adaptive:
            if model.weight is None:
                raise ValueError("adaptive=True needs an SCM with a weight module; got weight=None")
            w = model.weight(t).reshape(B)
            return (torch.exp(w) * sq - w).mean()
        return sq.mean()

    def __repr__(self):
        return (f"SCMLoss(normalise={self.normalise}, warmup_steps={self.warmup_steps}, "
                f"adaptive={self.adaptive})")
