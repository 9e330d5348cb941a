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
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ._checks import as_time, check_batch, check_int, check_positive
from .samplers import Recorder, _emit, check_grid, rk4_step
from .schedules import Schedule
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
        ends = [sched.noise_level(u) ** (1 / r) for u in (s, t)]
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
        for i in range(self.n_steps):
            x, _ = rk4_step(field, x, grid[i], grid[i + 1])
        return x

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
