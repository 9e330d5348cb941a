"""One readable training loop (seed, progress bar, EMA, gradient clipping, NaN guard, history,
resumable checkpoints) and checkpoints that load with ``torch.load(..., weights_only=True)``."""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._checks import check_choice, check_int, check_positive

RANK_SEED_STRIDE = 1_000_003  # a prime: rank r draws from seeds s + 1000003 r (data), + 1 (noise)
TRAINING_STATE_VERSION = 1


@dataclass
class History:
    """Per-step training losses (floats), the wall time of the run, and a running mean.

    ``smooth`` is the mean of the last ``window`` losses, kept in O(1) per :meth:`append` by a
    running window sum (add the new loss, subtract the one that leaves the window). Add losses
    with :meth:`append`; a list passed as ``losses`` is summed once at construction.
    """
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    window: int = 50
    window_sum: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self):
        check_int("window", self.window)
        given, self.losses = list(self.losses), []
        for v in given:
            self.append(v)

    def append(self, loss: float) -> None:
        """Add one step's loss and slide the window: sum += l_i - l_{i - window}."""
        self.losses.append(loss)
        self.window_sum += loss
        if len(self.losses) > self.window:
            self.window_sum -= self.losses[-1 - self.window]

    @property
    def smooth(self) -> float:
        """Mean of the last ``window`` losses (== ``smoothed(window)[-1]``; nan before any step)."""
        n = min(len(self.losses), self.window)
        return self.window_sum / n if n else math.nan

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


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; else ``net``."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return net.module if isinstance(net, wrappers) else net


def process_rank() -> int:
    """This process's rank r: from ``torch.distributed`` when initialised, else the ``RANK``
    environment variable (set by torchrun), else 0."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    text = os.environ.get("RANK", "0")
    if not text.strip().isdecimal():
        raise ValueError(f"RANK={text!r} (environment) is not valid; expected an int >= 0")
    return int(text)


def rank_seeds(seed: int, rank: int) -> tuple[int, int]:
    """Seeds (data, noise) = (s + 1000003 r, s + 1000003 r + 1) of rank r, so data-parallel workers
    draw different batches and noise; rank 0 keeps the seeds (s, s + 1) of a single process."""
    data_seed = seed + RANK_SEED_STRIDE * rank
    return data_seed, data_seed + 1


def _batches(data, labels, batch_size, generator, device):
    """Yield (x, y) forever: from a callable ``data(n, generator)`` or by sampling rows of a tensor.

    All randomness comes from ``generator``, so restoring its state restores the stream."""
    while True:
        if callable(data):
            out = data(batch_size, generator)
            x, y = out if isinstance(out, tuple) else (out, None)
        else:
            idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
            x, y = data[idx], (labels[idx] if labels is not None else None)
        yield x.to(device), (y.to(device) if y is not None else None)


def _lr_factor(step: int, steps: int, warmup: int, lr_schedule: str) -> float:
    """lr(step) / lr: linear warm-up over ``warmup`` steps, then 1 or a cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if lr_schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _record_losses(pending: list, first_step: int, history: History, lr: float) -> None:
    """Move the device losses of steps first_step, first_step + 1, ... to ``history`` (one host
    sync) and empty ``pending``; raise FloatingPointError at the first non-finite loss."""
    if not pending:
        return
    values = torch.stack(pending).tolist()
    pending.clear()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            last = history.losses[-1] if history.losses else None
            raise FloatingPointError(
                f"loss became {v} at step {first_step + i} (last finite loss {last}); "
                f"try a smaller lr (now {lr}), grad_clip, or check the data for NaN/inf")
        history.append(v)


def _check_train_args(data, labels, steps, batch_size, lr, lr_schedule, log_every,
                      checkpoint_path, checkpoint_every, resume) -> None:
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_positive("lr", lr)
    check_choice("lr_schedule", lr_schedule, ("cosine", "constant"))
    check_int("log_every", log_every)
    if labels is not None and (callable(data) or labels.shape[0] != data.shape[0]):
        raise ValueError("labels must be a (N,) tensor matching a data tensor of N rows")
    if not callable(data) and not isinstance(data, torch.Tensor):
        raise ValueError(f"data has type {type(data).__name__}; expected a tensor or a callable (n, generator)")
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every)
        if checkpoint_path is None:
            raise ValueError(f"checkpoint_every={checkpoint_every!r} needs a checkpoint_path; got None")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path to resume from; got None")


def train(net: torch.nn.Module, loss_fn, data, steps: int, batch_size: int = 256, lr: float = 1e-3,
          labels: torch.Tensor | None = None, ema_decay: float = 0.999, grad_clip: float | None = 1.0,
          lr_schedule: str = "cosine", warmup: int = 0, seed: int = 0, device=None,
          progress: bool = True, desc: str = "training", log_every: int = 50,
          checkpoint_path=None, checkpoint_every: int | None = None, resume: bool = False,
          amp: bool = False):
    """Train ``net`` with Adam on ``loss_fn(net, x, y, generator) -> scalar``.

    Args:
        data: a tensor (N, *D) of training points (with ``labels`` (N,) optional), or a callable
            ``data(n, generator)`` returning fresh x (or (x, y)) for each batch (toy sets); it must
            draw its randomness from ``generator`` for runs to be reproducible and resumable.
        steps, batch_size, lr: the run; ``lr_schedule`` is ``cosine`` (decay to 0) or ``constant``,
            after ``warmup`` linear warm-up steps.
        ema_decay: decay of the EMA copy that is returned (0 returns a plain copy); the decay
            warms up as min(ema_decay, (1 + k) / (10 + k)) so short runs forget the initialisation.
        grad_clip: max global gradient norm (None: no clipping).
        seed: seeds the batch and noise generators with :func:`rank_seeds` (seed, rank), rank from
            :func:`process_rank`, so a run is reproducible and data-parallel ranks differ.
        log_every: the per-step losses stay on the device and move to ``history`` (one sync), with
            the NaN check and the progress bar, every ``log_every`` steps, at checkpoints and at the end.
        checkpoint_path: if given, the full training state (:func:`save_training_state`) is written
            there every ``checkpoint_every`` steps (if given) and at the end, atomically.
        resume: continue from ``checkpoint_path`` if that file exists (else start afresh); the
            arguments above must match the saved run (``steps`` excepted when ``lr_schedule`` is
            ``constant``: a run may be extended). The result equals an uninterrupted run.
        amp: run ``loss_fn`` under ``torch.autocast`` in bfloat16 (mixed precision; meant for a
            GPU, where bfloat16 needs no loss scaling); the weights and Adam stay in float32.

    Data parallel: ``net`` may be a ``DistributedDataParallel`` wrapper (:mod:`utils.train` under
    torchrun); ``loss_fn`` then calls the wrapper, whose backward averages the gradients over the
    ranks, while the EMA, the checkpoints and the returned model hold the plain inner module.

    Returns ``(ema_model, history)``; ``net`` itself holds the last raw weights.
    Raises FloatingPointError, with the step and the last finite loss, if the loss is not finite
    (found at the next log point, so the weights may already hold NaN).
    """
    _check_train_args(data, labels, steps, batch_size, lr, lr_schedule, log_every,
                      checkpoint_path, checkpoint_every, resume)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device).train()
    inner = unwrap(net)  # the module itself: what the EMA copies and the checkpoints hold
    rank = process_rank()
    data_seed, noise_seed = rank_seeds(seed, rank)
    generator = torch.Generator().manual_seed(data_seed)
    noise_gen = torch.Generator(device=device).manual_seed(noise_seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: _lr_factor(k, steps, warmup, lr_schedule))
    ema = EMA(inner, ema_decay, warmup=True)
    history, step0 = History(), 0
    run = {"steps": steps, "batch_size": batch_size, "lr": float(lr), "lr_schedule": lr_schedule,
           "warmup": warmup, "ema_decay": float(ema_decay), "grad_clip": grad_clip, "seed": seed,
           "rank": rank, "device_type": device.type}
    if resume and Path(checkpoint_path).exists():
        # with a constant lr, ``steps`` only says where to stop: a run may be extended
        must_match = {k: v for k, v in run.items() if not (k == "steps" and lr_schedule == "constant")}
        step0, history = load_training_state(checkpoint_path, inner, ema, opt, sched, generator, noise_gen,
                                             must_match)
        if step0 > steps:
            raise ValueError(f"steps={steps!r} is not valid; the state in {str(checkpoint_path)!r} is "
                             f"already at step {step0}")
    batches = _batches(data, labels, batch_size, generator, device)
    seconds0, start, pending = history.seconds, time.perf_counter(), []
    bar = tqdm(range(step0, steps), desc=desc, disable=not progress, mininterval=0.5,
               initial=step0, total=steps)
    for step in bar:
        x, y = next(batches)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net, x, y, noise_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        sched.step()
        ema.update(inner)
        pending.append(loss.detach().reshape(()))
        done = step + 1
        save_now = checkpoint_path is not None and (
            done == steps or (checkpoint_every is not None and done % checkpoint_every == 0))
        if len(pending) == log_every or save_now or done == steps:
            _record_losses(pending, done - len(pending), history, lr)
            bar.set_postfix(loss=f"{history.smooth:.4f}")
        if save_now:
            history.seconds = seconds0 + time.perf_counter() - start
            save_training_state(checkpoint_path, done, inner, ema, opt, sched, history, generator, noise_gen, run)
    history.seconds = seconds0 + time.perf_counter() - start
    net.eval()
    return ema.model, history


def _atomic_save(obj, path) -> Path:
    """torch.save to ``path`` via a temporary file and a rename, so an interrupted save leaves
    the previous file (or none), never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _rng_states(generator: torch.Generator, noise_gen: torch.Generator, device: torch.device) -> dict:
    """uint8 state tensors of the batch and noise generators and torch's global CPU (and CUDA) RNG."""
    states = {"batch": generator.get_state(), "noise": noise_gen.get_state(), "torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["torch_cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict, generator: torch.Generator, noise_gen: torch.Generator,
                    device: torch.device) -> None:
    generator.set_state(states["batch"])
    noise_gen.set_state(states["noise"])
    torch.set_rng_state(states["torch_cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states["torch_cuda"], device)


def save_training_state(path, step: int, net: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
                        sched, history: History, generator: torch.Generator,
                        noise_gen: torch.Generator, run: dict) -> Path:
    """Write everything :func:`train` needs to continue after ``step`` steps, atomically.

    The file holds only tensors, numbers, strings, None and lists/dicts of those, so it loads with
    ``weights_only=True``: ``version``, ``step``, ``model`` and ``ema_model`` (state dicts),
    ``ema_updates``, ``optimizer`` and ``scheduler`` (state dicts), ``history`` (``losses``:
    float64 (step,), ``window``, ``seconds``), ``rng`` (uint8 states ``batch``, ``noise``,
    ``torch_cpu`` [, ``torch_cuda``]) and ``run`` (the arguments that must match to resume).
    """
    device = next(net.parameters()).device
    return _atomic_save({
        "version": TRAINING_STATE_VERSION, "step": step,
        "model": net.state_dict(), "ema_model": ema.model.state_dict(), "ema_updates": ema.updates,
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "history": {"losses": torch.tensor(history.losses, dtype=torch.float64),
                    "window": history.window, "seconds": history.seconds},
        "rng": _rng_states(generator, noise_gen, device), "run": dict(run)}, path)


def load_training_state(path, net: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer, sched,
                        generator: torch.Generator, noise_gen: torch.Generator,
                        run: dict) -> tuple[int, History]:
    """Load a :func:`save_training_state` file into the given objects (in place) and restore the
    RNG states; ``run`` must equal the saved run arguments. Returns ``(step, history)``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path={str(path)!r} does not exist; expected a training-state file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != TRAINING_STATE_VERSION:
        raise ValueError(f"path={str(path)!r} is not a training state of version "
                         f"{TRAINING_STATE_VERSION} (written by save_training_state)")
    changed = {k: (state["run"].get(k), v) for k, v in run.items() if state["run"].get(k) != v}
    if changed:
        told = ", ".join(f"{k}={new!r} (saved {old!r})" for k, (old, new) in changed.items())
        raise ValueError(f"cannot resume from {str(path)!r}: {told}; expected the saved run's arguments")
    net.load_state_dict(state["model"])
    ema.model.load_state_dict(state["ema_model"])
    ema.updates = state["ema_updates"]
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    _set_rng_states(state["rng"], generator, noise_gen, next(net.parameters()).device)
    saved = state["history"]
    history = History(losses=saved["losses"].tolist(), seconds=saved["seconds"], window=saved["window"])
    return state["step"], history


def save_checkpoint(path, net: torch.nn.Module, history: History | None = None, meta: dict | None = None):
    """Save weights (+ losses and a small dict of plain metadata) to ``path``."""
    return _atomic_save({"state_dict": net.state_dict(),
                         "losses": torch.tensor(history.losses if history else [], dtype=torch.float64),
                         "meta": dict(meta or {})}, path)


def load_checkpoint(path, net: torch.nn.Module, map_location="cpu"):
    """Load weights saved by :func:`save_checkpoint` into ``net`` (``weights_only=True``: no
    pickled code runs). Returns ``(net, history, meta)``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path={str(path)!r} does not exist; expected a checkpoint file")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), History(losses=ckpt["losses"].tolist()), ckpt["meta"]
