"""One readable training loop (seed, progress bar, EMA, gradient clipping, NaN guard, history)
and checkpoints that load with ``torch.load(..., weights_only=True)``."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._checks import check_choice, check_int, check_positive


@dataclass
class History:
    """Per-step training losses (floats) and the wall time of the run."""
    losses: list = field(default_factory=list)
    seconds: float = 0.0

    def smoothed(self, window: int = 50) -> list:
        """Running mean of the losses over ``window`` steps (for plots and asserts)."""
        out, acc = [], 0.0
        for i, v in enumerate(self.losses):
            acc += v
            if i >= window:
                acc -= self.losses[i - window]
            out.append(acc / min(i + 1, window))
        return out


class EMA:
    """Exponential moving average of a module's parameters: theta_ema <- d theta_ema + (1-d) theta.

    With ``warmup=True`` the k-th update uses d_k = min(decay, (1 + k) / (10 + k)), so the average
    forgets the random initialisation quickly: with a constant 0.999, a 1,000-step run would still
    carry 0.999^1000 = 37% of the initial weights.
    """

    def __init__(self, net: torch.nn.Module, decay: float = 0.999, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay!r} is not valid; expected a number in [0, 1)")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.model = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for p_ema, p in zip(self.model.parameters(), net.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), net.buffers()):
            b_ema.copy_(b)


def _batches(data, labels, batch_size, generator, device):
    """Yield (x, y) forever: from a callable ``data(n, generator)`` or by sampling rows of a tensor."""
    while True:
        if callable(data):
            out = data(batch_size, generator)
            x, y = out if isinstance(out, tuple) else (out, None)
        else:
            idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
            x, y = data[idx], (labels[idx] if labels is not None else None)
        yield x.to(device), (y.to(device) if y is not None else None)


def train(net: torch.nn.Module, loss_fn, data, steps: int, batch_size: int = 256, lr: float = 1e-3,
          labels: torch.Tensor | None = None, ema_decay: float = 0.999, grad_clip: float | None = 1.0,
          lr_schedule: str = "cosine", warmup: int = 0, seed: int = 0, device=None,
          progress: bool = True, desc: str = "training"):
    """Train ``net`` with Adam on ``loss_fn(net, x, y, generator) -> scalar``.

    Args:
        data: a tensor (N, *D) of training points (with ``labels`` (N,) optional), or a callable
            ``data(n, generator)`` returning fresh x (or (x, y)) for each batch (toy sets).
        steps, batch_size, lr: the run; ``lr_schedule`` is ``cosine`` (decay to 0) or ``constant``,
            after ``warmup`` linear warm-up steps.
        ema_decay: decay of the EMA copy that is returned (0 returns a plain copy); the decay
            warms up as min(ema_decay, (1 + k) / (10 + k)) so short runs forget the initialisation.
        grad_clip: max global gradient norm (None: no clipping).
        seed: seeds the batch/noise generator, so a run is reproducible.

    Returns ``(ema_model, history)``; ``net`` itself holds the last raw weights.
    Raises FloatingPointError, with the step and the last finite loss, if the loss is not finite.
    """
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_positive("lr", lr)
    check_choice("lr_schedule", lr_schedule, ("cosine", "constant"))
    if labels is not None and (callable(data) or labels.shape[0] != data.shape[0]):
        raise ValueError("labels must be a (N,) tensor matching a data tensor of N rows")
    if not callable(data) and not isinstance(data, torch.Tensor):
        raise ValueError(f"data has type {type(data).__name__}; expected a tensor or a callable (n, generator)")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        if lr_schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = EMA(net, ema_decay, warmup=True)
    history = History()
    batches = _batches(data, labels, batch_size, generator, device)
    import time
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5)
    for step in bar:
        x, y = next(batches)
        loss = loss_fn(net, x, y, noise_gen)
        if not torch.isfinite(loss):
            last = next((v for v in reversed(history.losses) if math.isfinite(v)), None)
            raise FloatingPointError(
                f"loss became {loss.item()} at step {step} (last finite loss {last}); "
                f"try a smaller lr (now {lr}), grad_clip, or check the data for NaN/inf")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        sched.step()
        ema.update(net)
        history.losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{history.smoothed()[-1]:.4f}")
    history.seconds = time.perf_counter() - start
    net.eval()
    return ema.model, history


def save_checkpoint(path, net: torch.nn.Module, history: History | None = None, meta: dict | None = None):
    """Save weights (+ losses and a small dict of plain metadata) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(),
                "losses": torch.tensor(history.losses if history else [], dtype=torch.float64),
                "meta": dict(meta or {})}, path)
    return path


def load_checkpoint(path, net: torch.nn.Module, map_location="cpu"):
    """Load weights saved by :func:`save_checkpoint` into ``net`` (``weights_only=True``: no
    pickled code runs). Returns ``(net, history, meta)``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path={str(path)!r} does not exist; expected a checkpoint file")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), History(losses=ckpt["losses"].tolist()), ckpt["meta"]
