"""Guidance written on the model interface (monograph Ch. 8).

A guided model is a :class:`utils.targets.Model` like any other, so every sampler, solver and
likelihood runs it unchanged, and the exact oracle runs it too.

**Convention.** This package writes classifier-free guidance as in the monograph's Ch. 8 (§8.3):

    s_w(x, t, c) = w s(x, t, c) + (1 - w) s(x, t, null),

so w = 0 is the unconditional model, w = 1 the conditional one and w > 1 extrapolates away from
the unconditional. Ch. 10 writes (1 + w') x(c) - w' x(null) (Ho & Salimans' guidance scale): that
is w = 1 + w' here (:func:`from_ho_salimans`). The combination is affine (the weights sum to one),
so it holds for every target alike: score, eps, x0 and velocity.
"""
from __future__ import annotations

import torch

from ._checks import check_batch
from .targets import NULL_LABEL, Model


def from_ho_salimans(w_prime: float) -> float:
    """This package's weight w for Ho & Salimans' scale w' ((1 + w') x(c) - w' x(null)): w = 1 + w'."""
    return 1.0 + float(w_prime)


class ClassifierFreeGuidance(Model):
    """w * model(x, t, c) + (1 - w) * model(x, t, NULL_LABEL), for any label-conditioned ``model``
    (a net trained with label dropout, or the class-conditional oracle). y: (B,) labels."""

    def __init__(self, model: Model, w: float):
        if not isinstance(model, Model):
            raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model")
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise ValueError(f"w={w!r} is not valid; expected a number (0: unconditional, 1: conditional)")
        super().__init__(model.schedule)
        self.model, self.w = model, float(w)

    def _both(self, x, y):
        """x twice and (y, null): one batched call answers the conditional and the unconditional."""
        check_batch("x", x)
        if y is None:
            raise ValueError("y is None; expected labels (B,) for classifier-free guidance")
        y = torch.as_tensor(y, dtype=torch.long, device=x.device).expand(x.shape[0])
        return torch.cat([x, x]), torch.cat([y, torch.full_like(y, NULL_LABEL)])

    def _combine(self, cond, uncond):
        return uncond + self.w * (cond - uncond)

    def x0_eps(self, x, t, y=None):
        xx, yy = self._both(x, y)
        tt = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.ndim == 1 else t
        x0, eps = self.model.x0_eps(xx, tt, yy)
        B = x.shape[0]
        return self._combine(x0[:B], x0[B:]), self._combine(eps[:B], eps[B:])

    def _answer(self, target, x, t, y):
        xx, yy = self._both(x, y)
        tt = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.ndim == 1 else t
        out = self.model._answer(target, xx, tt, yy)  # exact where the model is (the oracle's score)
        B = x.shape[0]
        return self._combine(out[:B], out[B:])

    def __repr__(self):
        return f"ClassifierFreeGuidance({self.model!r}, w={self.w:g})"

