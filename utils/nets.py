"""Networks: a time- (and label-) conditioned MLP for 2D and small vector data.

The network predicts one target (eps, x0, score or velocity) from (x_t, t[, y]); which one is
decided by the loss it is trained with and declared to :class:`utils.targets.Denoiser`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_choice, check_int, check_positive
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


class MLP(nn.Module):
    """net(x, t[, y]) -> (B, dim): a residual MLP on [x, time features (+ label embedding)].

    Args:
        dim: data dimension D (x: (B, D)).
        hidden: width; depth: number of residual blocks.
        time_embedding: ``"sinusoidal"`` or ``"fourier"``; time_dim its size.
        num_classes: if given, the net takes labels y: (B,) in [0, num_classes) or NULL_LABEL.
        out_dim: output size (default ``dim``; e.g. 1 for an energy, 2 for a MeanFlow time pair).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3,
                 time_embedding: str = "sinusoidal", time_dim: int = 32,
                 num_classes: int | None = None, out_dim: int | None = None):
        super().__init__()
        check_int("dim", dim)
        check_int("hidden", hidden)
        check_int("depth", depth)
        check_choice("time_embedding", time_embedding, ("sinusoidal", "fourier"))
        if num_classes is not None:
            check_int("num_classes", num_classes)
        self.dim, self.num_classes = dim, num_classes
        self.embed_t = SinusoidalEmbedding(time_dim) if time_embedding == "sinusoidal" else FourierFeatures(time_dim)
        self.embed_y = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim + time_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.t_proj = nn.ModuleList(nn.Linear(time_dim, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim or dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.dim})")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.embed_t(t).to(x.dtype)
        h = self.inp(torch.cat([x, emb], dim=1))
        if self.embed_y is not None:
            if y is None:
                y = torch.full((x.shape[0],), NULL_LABEL, dtype=torch.long, device=x.device)
            idx = torch.where(y == NULL_LABEL, torch.full_like(y, self.num_classes), y)
            h = h + self.embed_y(idx)
        elif y is not None:
            raise ValueError("y was given but the net has num_classes=None; expected no labels")
        for block, proj in zip(self.blocks, self.t_proj):
            h = h + block(h + proj(emb))
        return self.out(h)
