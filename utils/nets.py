"""Networks: a time- (and label-) conditioned MLP for 2D and small vector data, and EDM's
preconditioning as a wrapper around any such net.

The network predicts one target (eps, x0, score or velocity) from (x_t, t[, y]); which one is
decided by the loss it is trained with and declared to :class:`utils.targets.Denoiser`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import append_dims, check_choice, check_int, check_positive
from .schedules import Schedule
from .targets import NULL_LABEL  # the label meaning "no condition" (classifier-free guidance)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style features of t in [0, 1] (DDPM's embedding on the clock 1000 t):
    [sin(1000 t w_i), cos(1000 t w_i)] with w_i = max_period^(-i / (dim/2))."""

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = 1000.0):
        super().__init__()
        check_int("dim", dim, 2)
        if dim % 2:
            raise ValueError(f"dim={dim!r} is not valid; expected an even number")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half))
        self.scale = scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = self.scale * t[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class FourierFeatures(nn.Module):
    """Random Fourier features of t (Tancik et al. 2020; score SDE's Gaussian embedding):
    [sin(2 pi t B), cos(2 pi t B)] with fixed B ~ N(0, scale^2)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        check_int("dim", dim, 2)
        if dim % 2:
            raise ValueError(f"dim={dim!r} is not valid; expected an even number")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("B", scale * torch.randn(dim // 2, generator=g))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * t[:, None].to(self.B.dtype) * self.B
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class ResidualTrunk(nn.Module):
    """trunk(h_in, cond[, shift]) -> (B, out_dim): the residual MLP of the nets here (:class:`MLP`,
    :class:`utils.flowmaps.TwoTimeMLP`), conditioned in every block,

        h_0 = inp(h_in) (+ shift),   h_{k+1} = h_k + block_k(h_k + t_proj_k(cond)),   out(h_depth),

    block_k = SiLU-Linear-SiLU-Linear (hidden -> hidden), t_proj_k Linear(cond_dim, hidden), out
    SiLU-Linear(hidden, out_dim). h_in: (B, in_dim); cond: (B, cond_dim); shift: (B, hidden).

    A net built on it subclasses it and passes its own embeddings in ``first``: they are set as
    attributes before the trunk's layers are made, so parameters are drawn (under a seed) and
    listed in that order.
    """

    def __init__(self, in_dim: int, cond_dim: int, hidden: int, depth: int, out_dim: int,
                 first: dict[str, nn.Module | None] | None = None):
        super().__init__()
        for nm, v in (("in_dim", in_dim), ("cond_dim", cond_dim), ("hidden", hidden), ("depth", depth),
                      ("out_dim", out_dim)):
            check_int(nm, v)
        for name, module in (first or {}).items():
            setattr(self, name, module)
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.t_proj = nn.ModuleList(nn.Linear(cond_dim, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim))

    def trunk(self, h_in: torch.Tensor, cond: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(h_in)
        if shift is not None:
            h = h + shift
        for block, proj in zip(self.blocks, self.t_proj):
            h = h + block(h + proj(cond))
        return self.out(h)

    def forward(self, h_in: torch.Tensor, cond: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        return self.trunk(h_in, cond, shift)


class MLP(ResidualTrunk):
    """net(x, t[, y]) -> (B, dim): a residual MLP on [x, time features (+ label embedding)]
    (:class:`ResidualTrunk` with the time features as the condition of every block).

    Args:
        dim: data dimension D (x: (B, D)).
        hidden: width; depth: number of residual blocks.
        time_embedding: ``"sinusoidal"`` or ``"fourier"``; time_dim its size; fourier_scale the
            std of the Fourier frequencies (16 for t in [0, 1]; about 1 for EDM's c_noise).
        num_classes: if given, the net takes labels y: (B,) in [0, num_classes) or NULL_LABEL.
        out_dim: output size (default ``dim``; e.g. 1 for an energy, 2 for a MeanFlow time pair).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3,
                 time_embedding: str = "sinusoidal", time_dim: int = 32,
                 num_classes: int | None = None, out_dim: int | None = None, fourier_scale: float = 16.0):
        check_int("dim", dim)
        check_int("hidden", hidden)
        check_int("depth", depth)
        check_choice("time_embedding", time_embedding, ("sinusoidal", "fourier"))
        if num_classes is not None:
            check_int("num_classes", num_classes)
        embed_t = SinusoidalEmbedding(time_dim) if time_embedding == "sinusoidal" else \
            FourierFeatures(time_dim, scale=fourier_scale)
        embed_y = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        super().__init__(dim + time_dim, time_dim, hidden, depth, out_dim or dim,
                         first={"embed_t": embed_t, "embed_y": embed_y})
        self.dim, self.num_classes = dim, num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.dim})")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.embed_t(t).to(x.dtype)
        label = None
        if self.embed_y is not None:
            if y is None:
                y = torch.full((x.shape[0],), NULL_LABEL, dtype=torch.long, device=x.device)
            idx = torch.where(y == NULL_LABEL, torch.full_like(y, self.num_classes), y)
            label = self.embed_y(idx)
        elif y is not None:
            raise ValueError("y was given but the net has num_classes=None; expected no labels")
        return self.trunk(torch.cat([x, emb], dim=1), emb, label)


class EDMPrecond(nn.Module):
    """EDM's preconditioning (Karras et al. 2022, Table 1; monograph App. D.6) under any schedule:
    an x0-prediction D built around a raw net F,

        D(x, t) = c_skip x~ + c_out F(c_in x~, c_noise[, y]),   x~ = x / alpha_t,

    at the noise level sigma~ = sigma_t / alpha_t (x~ = x0 + sigma~ eps is the VE-equivalent input)
    with c_in = 1 / sqrt(sigma~^2 + sigma_d^2), c_skip = sigma_d^2 / (sigma~^2 + sigma_d^2),
    c_out = sigma~ sigma_d / sqrt(sigma~^2 + sigma_d^2), c_noise = ln(sigma~) / 4.

    F sees unit-variance inputs and, trained with the x0-loss weighted by 1 / c_out^2
    (:func:`utils.losses.edm_weighting`), regresses a unit-variance target at every noise level.
    Use it as ``Denoiser(EDMPrecond(net, schedule), "x0", schedule)``; x: (B, *D), t: (B,).
    ``net`` is called as net(x, c_noise[, y]) with c_noise: (B,) (a time embedding that accepts
    values around [-2, 1.5], e.g. ``MLP(time_embedding="fourier", fourier_scale=1.0)``).
    """

    def __init__(self, net: nn.Module, schedule: Schedule, sigma_data: float = 0.5):
        super().__init__()
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a utils.schedules.Schedule")
        check_positive("sigma_data", sigma_data)
        self.net, self.schedule, self.sigma_data = net, schedule, float(sigma_data)

    def coefficients(self, t: torch.Tensor):
        """(alpha, c_in, c_skip, c_out, c_noise) at t: (B,), each (B,)."""
        alpha, sigma = self.schedule._alpha(t), self.schedule._sigma(t)
        level, sd = sigma / alpha, self.sigma_data
        norm = torch.sqrt(level ** 2 + sd ** 2)
        return alpha, 1 / norm, sd ** 2 / norm ** 2, level * sd / norm, torch.log(level) / 4

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        alpha, c_in, c_skip, c_out, c_noise = (append_dims(c, x.ndim) if c.ndim else c
                                               for c in self.coefficients(t))
        x_ve = x / alpha
        inner = c_in * x_ve
        F = self.net(inner, c_noise.flatten()) if y is None else self.net(inner, c_noise.flatten(), y)
        return c_skip * x_ve + c_out * F
