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


# --- Images: a small U-Net and two classifiers ---------------------------------------------------
#
# Written to be read, one block per screen: a residual block that takes the conditioning, an
# attention block, the U-Net that stacks them, a CNN classifier (whose penultimate layer gives the
# features of the project's FID, utils.fid) and a noise-conditional classifier (classifier
# guidance, Ch. 8). Inputs are x: (B, C, H, W) with H, W divisible by 2^(levels - 1).

class ResBlock(nn.Module):
    """DDPM's residual block (Ho et al. 2020, App. B), conditioned on an embedding:

        h = Conv3x3(SiLU(GroupNorm(x))) + Linear(emb)[:, :, None, None]
        out = skip(x) + Conv3x3(Dropout(SiLU(GroupNorm(h))))

    x: (B, c_in, H, W), emb: (B, emb_dim) -> (B, c_out, H, W); skip is a 1x1 conv when c_in != c_out.
    The last conv starts at zero, so a new block is the identity (a stable start for deep stacks).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(nn.functional.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H W positions of a feature map, residual:
    x + Proj(Attention(QKV(GroupNorm(x)))). x: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels!r} is not valid; expected a multiple of heads={heads}")
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                                         v.transpose(-1, -2))  # (B, heads, HW, C/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class TimeLabelEmbedding(nn.Module):
    """emb(t[, y]) -> (B, emb_dim): an MLP on sinusoidal features of t, plus a learned embedding of
    the label y in [0, num_classes) or NULL_LABEL (-1, "no condition": its own learned row, the
    unconditional model of classifier-free guidance, §8.3). t: (B,) in [0, 1]."""

    def __init__(self, emb_dim: int, num_classes: int | None = None, time_dim: int = 64):
        super().__init__()
        self.time = nn.Sequential(SinusoidalEmbedding(time_dim), nn.Linear(time_dim, emb_dim), nn.SiLU(),
                                  nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

    def forward(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(t)
        if y is not None:
            if self.label is None:
                raise ValueError("y was given but the net has num_classes=None; expected y=None")
            y = torch.as_tensor(y, device=t.device).long().expand(t.shape[0])
            if ((y < NULL_LABEL) | (y >= self.num_classes)).any():
                raise ValueError(f"y holds labels outside [0, {self.num_classes}) and NULL_LABEL={NULL_LABEL}")
            emb = emb + self.label(torch.where(y == NULL_LABEL, self.num_classes, y))
        elif self.label is not None:  # a conditional net asked without y answers unconditionally
            emb = emb + self.label.weight[self.num_classes]
        return emb


def _time_batch(t, x: torch.Tensor) -> torch.Tensor:
    """t as a (B,) tensor in x's dtype and device."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def _check_image(x: torch.Tensor, channels: int, factor: int) -> None:
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {channels}, H, W) with H, W "
                         f"divisible by {factor}")


class UNet(nn.Module):
    """net(x, t[, y]) -> (B, C, H, W): a small U-Net (Ronneberger et al. 2015; DDPM's denoiser,
    Ho et al. 2020) predicting one target from (x_t, t[, y]).

    Levels i = 0..L-1 work at resolution H / 2^i with width ``base * mults[i]``:

        h = Conv3x3(x)
        down:   per level, ``depth`` ResBlocks, keep h as the level's skip, then a stride-2 conv
        middle: ResBlock, SelfAttention2d (if ``attention``), ResBlock      (at H / 2^(L-1))
        up:     per level from the bottom, concat the skip, ``depth`` ResBlocks, then
                nearest upsampling + Conv3x3
        out = Conv3x3(SiLU(GroupNorm(h)))

    Every ResBlock gets emb(t[, y]) (:class:`TimeLabelEmbedding`). With ``num_classes`` the net
    takes labels y: (B,) in [0, num_classes) or NULL_LABEL (-1, the learned null class of
    classifier-free guidance); y=None is the null class too. Works with
    :class:`utils.targets.Denoiser` and every sampler. Defaults: about 1M parameters for 28x28.
    """

    def __init__(self, in_channels: int = 1, base: int = 32, mults=(1, 2, 2), depth: int = 1,
                 attention: bool = True, num_classes: int | None = None, dropout: float = 0.0):
        super().__init__()
        for nm, v in (("in_channels", in_channels), ("base", base), ("depth", depth)):
            check_int(nm, v)
        if not mults or not all(isinstance(m, int) and m >= 1 for m in mults):
            raise ValueError(f"mults={mults!r} is not valid; expected a non-empty tuple of ints >= 1")
        if num_classes is not None:
            check_int("num_classes", num_classes)
        widths = [base * m for m in mults]
        emb_dim = 4 * base
        self.in_channels, self.levels, self.num_classes = in_channels, len(mults), num_classes
        self.embed = TimeLabelEmbedding(emb_dim, num_classes, time_dim=base)
        self.inp = nn.Conv2d(in_channels, base, 3, padding=1)
        self.down_blocks, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = base
        for i, w in enumerate(widths):
            self.down_blocks.append(nn.ModuleList(
                ResBlock(c if k == 0 else w, w, emb_dim, dropout) for k in range(depth)))
            c = w
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, emb_dim, dropout)
        self.mid_attn = SelfAttention2d(c) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, dropout)
        self.up_blocks, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            self.up_blocks.append(nn.ModuleList(
                ResBlock(c + w if k == 0 else w, w, emb_dim, dropout) for k in range(depth)))
            c = w
            self.upsample.append(nn.Identity() if i == 0 else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, widths[i - 1], 3, padding=1)))
            c = w if i == 0 else widths[i - 1]
        self.out = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_image(x, self.in_channels, 2 ** (self.levels - 1))
        emb = self.embed(_time_batch(t, x), y)
        h, skips = self.inp(x), []
        for blocks, down in zip(self.down_blocks, self.downsample):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks, up in zip(self.up_blocks, self.upsample):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
            h = up(h)
        return self.out(h)


class Classifier(nn.Module):
    """net(x) -> (B, num_classes) logits: a small CNN for 28x28 (or 8x8) images,

        [Conv3x3-GroupNorm-SiLU] x 2, AvgPool2   (width c)
        [Conv3x3-GroupNorm-SiLU] x 2, AvgPool2   (width 2c)
        flatten -> Linear -> SiLU = features (B, feature_dim) -> Linear -> logits

    Its ``features`` (the penultimate layer) are what :mod:`utils.fid` fits Gaussians to: the
    project's own FID, since Inception weights cannot be downloaded here. x: (B, C, H, W) with
    H, W divisible by 4.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, feature_dim: int = 128,
                 num_classes: int = 10, image_size: int = 28):
        super().__init__()
        for nm, v in (("in_channels", in_channels), ("width", width), ("feature_dim", feature_dim),
                      ("num_classes", num_classes), ("image_size", image_size)):
            check_int(nm, v)
        if image_size % 4:
            raise ValueError(f"image_size={image_size!r} is not valid; expected a multiple of 4")

        def conv(a, b):
            return [nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(min(8, b), b), nn.SiLU()]

        c = width
        self.body = nn.Sequential(*conv(in_channels, c), *conv(c, c), nn.AvgPool2d(2),
                                  *conv(c, 2 * c), *conv(2 * c, 2 * c), nn.AvgPool2d(2), nn.Flatten(),
                                  nn.Linear(2 * c * (image_size // 4) ** 2, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.in_channels, self.image_size = in_channels, image_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer, (B, feature_dim): the FID's feature space."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.in_channels}, "
                             f"{self.image_size}, {self.image_size})")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class NoisyClassifier(nn.Module):
    """net(x_t, t) -> (B, num_classes) logits of p_t(y | x_t): the classifier of classifier guidance
    (§8.2; Dhariwal & Nichol 2021), the U-Net's down path with a pooled head:

        h = Conv3x3(x); per level: ResBlock(h, emb(t)), stride-2 conv (not after the last);
        logits = Linear(mean_HW(SiLU(GroupNorm(h))))

    Train it with :func:`utils.guidance.noisy_classifier_loss`; pass it to
    :class:`utils.guidance.ClassifierGuidance`. x: (B, C, H, W), t: float or (B,).
    """

    def __init__(self, in_channels: int = 1, base: int = 32, mults=(1, 2, 2), num_classes: int = 10):
        super().__init__()
        for nm, v in (("in_channels", in_channels), ("base", base), ("num_classes", num_classes)):
            check_int(nm, v)
        if not mults or not all(isinstance(m, int) and m >= 1 for m in mults):
            raise ValueError(f"mults={mults!r} is not valid; expected a non-empty tuple of ints >= 1")
        widths, emb_dim = [base * m for m in mults], 4 * base
        self.in_channels, self.levels = in_channels, len(mults)
        self.embed = TimeLabelEmbedding(emb_dim, None, time_dim=base)
        self.inp = nn.Conv2d(in_channels, base, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(c, w, emb_dim) for c, w in zip([base] + widths[:-1], widths))
        self.downsample = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        self.head = nn.Sequential(nn.GroupNorm(min(8, widths[-1]), widths[-1]), nn.SiLU())
        self.out = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        _check_image(x, self.in_channels, 2 ** (self.levels - 1))
        emb = self.embed(_time_batch(t, x))
        h = self.inp(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        return self.out(self.head(h).mean(dim=(2, 3)))
