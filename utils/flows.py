"""Normalizing flows, path straightness and Reflow pairs (monograph Ch. 5).

* :class:`AffineCoupling`, :class:`CouplingFlow`: a RealNVP-style coupling flow (Dinh et al. 2017).
  ``forward`` maps data x to the base variable z = f(x) with log|det df/dx|, ``inverse`` maps back,
  and by the change of variables (Ch. 5, the normalizing-flow section)

      log p(x) = log N(f(x); 0, I) + log |det df/dx (x)|.

* :func:`straightness`: Liu et al. (2023)'s straightness of recorded ODE paths,
  S = int_0^1 ||v_t - (x_end - x_start)||^2 dt = int_0^1 ||v_t||^2 dt - ||x_end - x_start||^2,
  zero exactly when every path is a straight line run at constant speed (one Euler step is exact).

* :func:`reflow_pairs`, :class:`ReflowLoss`: Reflow (rectified flow, Liu et al. 2023; §5.4):
  couple each noise eps with the data point x0 = ODE(eps) that a trained flow sends it to, then
  regress the straight-line velocity eps - x0 on x_t = (1 - t) x0 + t eps.

Time runs from data (t = 0) to noise (t = 1), as in the whole book; nothing here flips it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_batch, check_int, check_positive
from .samplers import sample_heun, sample_prior
from .schedules import LinearPath, uniform_grid
from .targets import Model


# --- coupling flow -------------------------------------------------------------------------------

class AffineCoupling(nn.Module):
    """One affine coupling layer (Dinh et al. 2017, RealNVP eq. 6-7).

    With a binary ``mask`` m: (D,), the kept coordinates x_a = m x pass unchanged and the others
    are scaled and shifted by functions of x_a only:

        z = m x + (1 - m) (x exp(s(m x)) + b(m x)),   log|det dz/dx| = sum_i (1 - m_i) s_i(m x).

    The Jacobian is triangular (after a permutation), which is why its log-determinant is that sum.
    s is soft-clamped to (-clamp, clamp) for stable training; the last layer starts at zero, so a
    fresh layer is the identity.
    """

    def __init__(self, mask: torch.Tensor, hidden: int = 64, depth: int = 2, clamp: float = 3.0):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.get_default_dtype())
        if mask.ndim != 1 or not ((mask == 0) | (mask == 1)).all() or mask.sum() in (0, mask.numel()):
            raise ValueError(f"mask={mask.tolist()} is not valid; expected a 1-D 0/1 vector with both values")
        check_int("hidden", hidden)
        check_int("depth", depth)
        check_positive("clamp", clamp)
        dim = mask.numel()
        self.register_buffer("mask", mask)
        self.clamp = float(clamp)
        layers, width = [], dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, 2 * dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def _scale_shift(self, x_kept: torch.Tensor):
        s, b = self.net(x_kept).chunk(2, dim=1)
        s = self.clamp * torch.tanh(s / self.clamp)
        free = 1 - self.mask
        return s * free, b * free

    def forward(self, x: torch.Tensor):
        """x: (B, D) -> (z: (B, D), log_det: (B,))."""
        s, b = self._scale_shift(x * self.mask)
        return x * torch.exp(s) + b, s.sum(1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D) -> x: (B, D); the kept coordinates are equal in x and z."""
        s, b = self._scale_shift(z * self.mask)
        return (z - b) * torch.exp(-s)


class CouplingFlow(nn.Module):
    """A stack of affine couplings with alternating masks and a standard normal base.

    Args:
        dim: data dimension D >= 2 (x: (B, D)).
        n_layers: number of couplings; masks alternate between even and odd coordinates.
        hidden, depth: width and number of hidden layers of each coupling's scale/shift net.

    ``forward(x) -> (z, log_det)`` (data to base), ``inverse(z) -> x``, ``log_det(x)``,
    ``log_prob(x) = log N(z; 0, I) + log_det`` (B,), ``sample(n, generator)`` (n, D).
    Train by maximum likelihood: minimise ``-flow.log_prob(x).mean()``.
    """

    def __init__(self, dim: int = 2, n_layers: int = 6, hidden: int = 64, depth: int = 2):
        super().__init__()
        check_int("dim", dim, 2)
        check_int("n_layers", n_layers)
        self.dim = dim
        even = (torch.arange(dim) % 2 == 0).to(torch.get_default_dtype())
        self.layers = nn.ModuleList(
            AffineCoupling(even if i % 2 == 0 else 1 - even, hidden, depth) for i in range(n_layers))

    def _check(self, x, name):
        check_batch(name, x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (B, {self.dim})")

    def forward(self, x: torch.Tensor):
        """x: (B, D) -> (z = f(x): (B, D), log|det df/dx|: (B,))."""
        self._check(x, "x")
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D) -> x = f^{-1}(z): (B, D)."""
        self._check(z, "z")
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def log_det(self, x: torch.Tensor) -> torch.Tensor:
        """log |det df/dx| at x: (B, D) -> (B,)."""
        return self.forward(x)[1]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(f(x); 0, I) + log|det df/dx|, (B,)."""
        z, log_det = self.forward(x)
        log_base = -0.5 * (z ** 2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi)
        return log_base + log_det

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples x = f^{-1}(z), z ~ N(0, I): (n, D)."""
        check_int("n", n)
        p = next(self.parameters())
        z = torch.randn(n, self.dim, generator=generator, dtype=p.dtype).to(p.device)
        return self.inverse(z)


def nll_loss(flow: CouplingFlow, x: torch.Tensor, y=None, generator=None) -> torch.Tensor:
    """Maximum likelihood as a :func:`utils.training.train` loss: -mean log p(x) (nats)."""
    return -flow.log_prob(x).mean()


# --- straightness ----------------------------------------------------------------------------------

def straightness(xs: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Straightness of recorded paths (Liu et al. 2023, "Flow straight and fast", Def. of S(Z)).

    xs: (N + 1, B, *D) states at the times ts: (N + 1,) (e.g. a
    :class:`utils.samplers.Recorder`'s ``xs`` and ``ts``). With T = |t_N - t_0| and the average
    velocity d = (x_N - x_0) / T, the time-normalised

        S = (1/T) sum_i |dt_i| ||dx_i/dt_i - d||^2 = (1/T) [sum_i ||dx_i||^2 / |dt_i| - ||x_N - x_0||^2 / T]

    is the discrete int ||v_t||^2 dt - ||x_1 - x_0||^2 on [0, 1]. Returns (B,), >= 0, and 0 exactly
    for straight paths traversed at constant speed. Take ``.mean()`` for the expectation.
    """
    if not isinstance(xs, torch.Tensor) or xs.ndim < 3:
        raise ValueError(f"xs has shape {tuple(getattr(xs, 'shape', ()))}; expected (N + 1, B, *D) with N >= 1")
    ts = torch.as_tensor(ts, dtype=xs.dtype, device=xs.device)
    if ts.shape != (xs.shape[0],):
        raise ValueError(f"ts has shape {tuple(ts.shape)}; expected ({xs.shape[0]},) to match xs")
    dt = (ts[1:] - ts[:-1]).abs()
    if not (dt > 0).all():
        raise ValueError("ts has repeated times; expected strictly monotone times")
    T = (ts[-1] - ts[0]).abs()
    dx2 = (xs[1:] - xs[:-1]).flatten(2).pow(2).sum(-1)                      # (N, B)
    total2 = (xs[-1] - xs[0]).flatten(1).pow(2).sum(-1)                     # (B,)
    S = ((dx2 / dt[:, None]).sum(0) - total2 / T) / T
    return S.clamp_min(0.0)


# --- Reflow --------------------------------------------------------------------------------------

@torch.no_grad()
def reflow_pairs(denoiser: Model, shape, n_steps: int = 50, generator: torch.Generator | None = None,
                 sampler=sample_heun, batch_size: int = 4096, dtype=torch.float32) -> torch.Tensor:
    """The Reflow coupling (Liu et al. 2023, Alg. 1): eps ~ N(0, I) and x0 = ODE_{1 -> 0}(eps).

    ``denoiser``: a trained flow (or the exact oracle) under any schedule; ``shape``: (n, *D);
    the PF-ODE is integrated with ``sampler`` (default Heun) on ``n_steps`` uniform steps from
    t = 1 to t = 0, in chunks of ``batch_size``.

    Returns pairs: (n, 2, *D), pairs[:, 0] = x0 (generated data, t = 0), pairs[:, 1] = eps (t = 1),
    ready for ``training.train(net, ReflowLoss(), pairs, ...)``.
    """
    if not isinstance(denoiser, Model):
        raise ValueError(f"denoiser has type {type(denoiser).__name__}; expected a utils.targets.Model")
    if isinstance(shape, int) or len(shape) < 2:
        raise ValueError(f"shape={shape!r} is not valid; expected a tuple (n, *D)")
    check_int("n_steps", n_steps)
    check_int("batch_size", batch_size)
    eps = sample_prior(denoiser.schedule, tuple(shape), generator=generator, dtype=dtype)
    grid = uniform_grid(n_steps)
    x0 = torch.cat([sampler(denoiser, chunk, grid) for chunk in eps.split(batch_size)])
    return torch.stack([x0, eps], dim=1)


class ReflowLoss:
    """loss(net, pairs, y=None, generator=None): flow matching on fixed (x0, eps) pairs (§5.4, Reflow):

        t ~ U[0, 1],  x_t = (1 - t) x0 + t eps,  loss = E || net(x_t, t) - (eps - x0) ||^2.

    ``pairs``: (B, 2, *D) from :func:`reflow_pairs`. With independent pairs this is the ordinary
    conditional flow matching loss (:func:`utils.losses.flow_matching_loss`); with the Reflow
    coupling the regression target becomes (nearly) a function of x_t, and paths straighten.
    The net predicts the velocity of :class:`utils.schedules.LinearPath`.
    """

    schedule = LinearPath()

    def __call__(self, net, pairs: torch.Tensor, y=None, generator=None) -> torch.Tensor:
        if not isinstance(pairs, torch.Tensor) or pairs.ndim < 3 or pairs.shape[1] != 2:
            raise ValueError(f"pairs has shape {tuple(getattr(pairs, 'shape', ()))}; expected (B, 2, *D)")
        x0, eps = pairs[:, 0], pairs[:, 1]
        t = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device, generator=generator)
        tt = t.reshape(-1, *([1] * (x0.ndim - 1)))
        xt = (1 - tt) * x0 + tt * eps
        return ((net(xt, t) - (eps - x0)) ** 2).flatten(1).mean(1).mean()
