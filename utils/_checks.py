"""Small argument checks shared by the package: every bad input gets a ValueError that names
the argument, the value and what was expected."""
from __future__ import annotations

import torch


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; expected one of {tuple(choices)}")


def check_positive(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name}={value!r} is not valid; expected a positive number")


def check_ordered(lo_name: str, lo, hi_name: str, hi) -> None:
    """Two positive numbers with lo < hi (a beta or sigma range)."""
    check_positive(lo_name, lo)
    check_positive(hi_name, hi)
    if hi <= lo:
        raise ValueError(f"{hi_name}={hi!r} must exceed {lo_name}={lo!r}")


def check_int(name: str, value, minimum: int = 1) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name}={value!r} is not valid; expected an int >= {minimum}")


def check_batch(name: str, x, ndim_min: int = 2) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} has type {type(x).__name__}; expected a torch.Tensor of shape (B, *D)")
    if x.ndim < ndim_min:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (B, *D) with at least {ndim_min} dims")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, an empty batch; expected at least one point")


def tracing() -> bool:
    """True inside ``torch.compile`` or a ``torch.func`` transform (jvp, vmap, grad).

    Value checks (a time out of range, a NaN) read a tensor's values, which a transform does
    not have yet; the package runs them where data enters and skips them while tracing."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def as_time(t, like: torch.Tensor | None = None, batch: int | None = None, t_end: float = 1.0,
            check: bool = True) -> torch.Tensor:
    """``t`` (float, 0-d or (B,) tensor) as a float tensor, checked to lie in [0, t_end].

    With ``like``, the result takes its dtype and device; with ``batch``, a scalar is expanded
    to shape (batch,) and a (B,) tensor must have B == batch. ``check=False`` (or tracing) skips
    the value check: models call it that way on every evaluation, samplers check the grid once.
    """
    if like is not None and like.is_floating_point():
        dtype = like.dtype
    elif isinstance(t, torch.Tensor) and t.is_floating_point():
        dtype = t.dtype  # a float32 t stays float32 (schedules.py: "else t's dtype")
    else:
        dtype = torch.float64
    device = like.device if like is not None else (t.device if isinstance(t, torch.Tensor) else None)
    if isinstance(t, torch.Tensor):
        t = t.to(dtype=dtype, device=device)
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor(float(t), dtype=dtype, device=device)
    else:
        raise ValueError(f"t has type {type(t).__name__}; expected a float or a tensor of shape (B,)")
    if t.ndim > 1:
        raise ValueError(f"t has shape {tuple(t.shape)}; expected a float or a tensor of shape (B,)")
    if check and not tracing():
        check_times("t", t, t_end)
    if batch is not None:
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape[0] != batch:
            raise ValueError(f"t has shape {tuple(t.shape)}; expected a float or shape ({batch},) to match x")
    return t


def check_times(name: str, t: torch.Tensor, t_end: float = 1.0) -> None:
    """Raise a ValueError unless every value of ``t`` lies in [0, t_end] (no NaN)."""
    if t.numel() and (torch.isnan(t).any() or (t < 0).any() or (t > t_end).any()):
        lo, hi = float(t.min()), float(t.max())
        raise ValueError(f"{name} has values in [{lo:g}, {hi:g}]; expected times in [0, {t_end:g}] "
                         "(t=0 data, t=1 prior)")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise a ValueError if ``x`` holds NaN or inf (skipped while tracing)."""
    if not tracing() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; expected finite values")


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a (B,) coefficient broadcasts against a (B, *D) tensor."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of shape {tuple(v.shape)} to {ndim} dims")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))
