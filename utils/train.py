"""One training command for the image models, on one process or many (``torchrun``).

    python -m utils.train --dataset fashion-mnist --model unet --cond --label-dropout 0.1 \\
        --steps 20000 --batch 128 --out data/checkpoints/my_unet.pt
    torchrun --nproc_per_node=4 -m utils.train ... (the same arguments)

The loop is :func:`utils.training.train` (progress bar, EMA, gradient clipping, NaN guard,
periodic resumable checkpoints); this file builds the data, the model and the loss from the
arguments and, under ``torchrun``, wraps the model in ``DistributedDataParallel`` (NCCL on GPUs,
gloo on CPUs). Each rank draws its own batches (seeds offset by the rank,
:func:`utils.training.rank_seeds`), so the global batch is ``--batch`` x the number of ranks.

Two files come out: ``--out`` (the EMA weights and a ``meta`` dict with everything needed to
rebuild the model: :func:`load_pretrained` reads it) and ``--out`` + ``.state`` (+ ``.rankR``
for ranks > 0), the full training state that ``--resume`` continues from, written every
``--ckpt-every`` steps. ``--export`` writes ``--out`` from the last training state without
training (to ship a run that is still going).

Shipped checkpoints live in ``data/checkpoints/`` with ``MANIFEST.json`` (file, SHA-256, the
command that trained it, the hardware, steps, measured figures). ``load_pretrained(name)``
checks the SHA-256 before loading (``torch.load(..., weights_only=True)``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from . import data as data_mod
from . import fid, flowmaps, nets, solvers, training
from .guidance import noisy_classifier_loss
from .losses import DiffusionLoss, LogitNormal, LogNormal, Uniform
from .schedules import SCHEDULES, get_schedule, log_snr_grid
from .targets import NULL_LABEL, TARGETS, Denoiser

MODELS = ("unet", "classifier", "noisy-classifier", "consistency")
TIME_DISTS = ("uniform", "lognormal", "logitnormal")
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
MANIFEST = CHECKPOINT_DIR / "MANIFEST.json"


# --- what a run is: the model, the loss, the data -------------------------------------------------

def build_net(spec: dict) -> torch.nn.Module:
    """The network a spec describes (``spec["model"]`` and ``spec["net"]``, its keyword arguments)."""
    kind, kw = spec["model"], dict(spec["net"])
    if kind == "consistency":  # f = c_skip x + c_out F, F a U-Net shaped like the teacher's (Ch. 11)
        return flowmaps.ConsistencyModel(build_net({**spec, "model": "unet"}), get_schedule(spec["schedule"]),
                                         sigma_data=spec["sigma_data"])
    if kind == "unet":
        return nets.UNet(in_channels=kw["in_channels"], base=kw["base"], mults=tuple(kw["mults"]),
                         depth=kw["depth"], attention=kw["attention"], num_classes=kw["num_classes"],
                         dropout=kw["dropout"])
    if kind == "classifier":
        return nets.Classifier(in_channels=kw["in_channels"], width=kw["base"],
                               num_classes=kw["num_classes"], image_size=kw["image_size"])
    if kind == "noisy-classifier":
        return nets.NoisyClassifier(in_channels=kw["in_channels"], base=kw["base"], mults=tuple(kw["mults"]),
                                    num_classes=kw["num_classes"])
    raise ValueError(f"model={kind!r} is not valid; expected one of {MODELS}")


def time_distribution(name: str, schedule):
    """p_time by name (:mod:`utils.losses`): uniform on [t_min, 1], EDM's log-normal, logit-normal."""
    if name == "uniform":
        return Uniform(schedule.t_min, 1.0)
    if name == "lognormal":
        return LogNormal(schedule)
    if name == "logitnormal":
        return LogitNormal()
    raise ValueError(f"time_dist={name!r} is not valid; expected one of {TIME_DISTS}")


def _classification_loss(net, x, y=None, generator=None):
    """Cross-entropy of a clean-image classifier (the FID classifier)."""
    if y is None:
        raise ValueError("y is None; expected class labels (B,) with the data")
    return torch.nn.functional.cross_entropy(net(x), y)


def build_loss(spec: dict):
    """loss_fn(net, x, y, generator) for :func:`utils.training.train`."""
    if spec["model"] == "classifier":
        return _classification_loss
    schedule = get_schedule(spec["schedule"])
    if spec["model"] == "consistency":
        return flowmaps.TrajectoryDistillationLoss(teacher_grid(schedule, spec["teacher_steps"]), spec["p_prior"])
    if spec["model"] == "noisy-classifier":
        return noisy_classifier_loss(schedule)
    return DiffusionLoss(schedule, spec["target"], conditional=spec["cond"],
                         label_dropout=spec["label_dropout"],
                         time_distribution=time_distribution(spec["time_dist"], schedule))


def spec_from_args(args) -> dict:
    """The plain dict (saved in every checkpoint) that rebuilds the model and its loss."""
    x_shape = {"digits": (1, 8), "fashion-mnist": (1, 28), "mnist": (1, 28)}[args.dataset]
    mults = [int(m) for m in args.mults.split(",")]
    return {"model": args.model, "dataset": args.dataset, "target": args.target,
            "schedule": args.schedule, "time_dist": args.time_dist, "cond": bool(args.cond),
            "label_dropout": float(args.label_dropout),
            "net": {"in_channels": x_shape[0], "image_size": x_shape[1], "base": args.width,
                    "mults": mults, "depth": args.depth, "attention": not args.no_attention,
                    "num_classes": 10 if (args.cond or args.model != "unet") else None,
                    "dropout": float(args.dropout)}}


# --- the one-step model: a flow map distilled on the teacher's trajectories (Ch. 11) ---------------

def teacher_grid(schedule, n_steps: int) -> torch.Tensor:
    """n_steps + 1 times from t = 1, uniform in log-SNR, the last moved to t = 0 (the final step of
    the teacher's solver is a denoising step): the grid of the trajectories and of the sampler."""
    grid = log_snr_grid(schedule, n_steps)
    grid[-1] = 0.0
    return grid


def consistency_spec(args, teacher_spec: dict, teacher_sha256: str) -> dict:
    """The spec of ``--model consistency``: the teacher's U-Net shape, schedule and labels."""
    if teacher_spec["model"] != "unet":
        raise ValueError(f"teacher={args.teacher!r} is a {teacher_spec['model']!r}; expected a U-Net checkpoint")
    return {"model": "consistency", "dataset": teacher_spec["dataset"], "target": "x0",
            "schedule": teacher_spec["schedule"], "time_dist": "teacher-grid", "cond": teacher_spec["cond"],
            "label_dropout": float(args.label_dropout), "net": dict(teacher_spec["net"]),
            "teacher": str(args.teacher), "teacher_sha256": teacher_sha256, "teacher_steps": args.teacher_steps,
            "trajectories": args.trajectories, "p_prior": float(args.p_prior), "sigma_data": float(args.sigma_data)}


def trajectory_labels(n: int, cond: bool, label_dropout: float, seed: int):
    """Labels of the n trajectories: classes in turn (i mod 10), a share ``label_dropout`` of them
    the null class (so the one-step model is unconditional too); None for an unconditional teacher."""
    if not cond:
        return None
    y = torch.arange(n) % 10
    drop = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) < label_dropout
    return torch.where(drop, torch.full_like(y, NULL_LABEL), y)


def make_trajectories(teacher, spec: dict, seed: int, device, batch_size: int = 256, progress: bool = True):
    """(traj (N, K+1, C, H, W), y (N,) or None): the teacher (x0 clipped, :class:`utils.fid.ClippedX0`)
    solved by DPM-Solver++(2M) on :func:`teacher_grid` from per-sample noise (seeds ``seed``, 0..N-1)."""
    from tqdm.auto import tqdm

    n, shape = spec["trajectories"], (spec["net"]["in_channels"], spec["net"]["image_size"], spec["net"]["image_size"])
    grid = teacher_grid(teacher.schedule, spec["teacher_steps"])
    y = trajectory_labels(n, spec["cond"], spec["label_dropout"], seed)
    model, prior_std, out = fid.ClippedX0(teacher), float(teacher.schedule.sigma(grid[0])), []
    for b in tqdm(range(0, n, batch_size), desc="teacher trajectories", disable=not progress):
        m = min(batch_size, n - b)
        x = (prior_std * fid.per_sample_noise((m, *shape), seed, b)).to(device)
        yb = None if y is None else y[b:b + m].to(device)
        out.append(flowmaps.teacher_trajectories(model, x, grid, solvers.dpm_solver_pp_2m, y=yb))
    return torch.cat(out), y


def trajectories_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".trajectories")


def load_or_make_trajectories(args, spec: dict, teacher, rank: int, world: int, device):
    """The trajectories, from the cache OUT.trajectories (float16, keyed by the teacher's hash, the
    grid, N, the labels and the seed) or made by rank 0 and cached; other ranks wait and read it."""
    path = trajectories_path(args.out)
    key = {k: spec[k] for k in ("teacher_sha256", "teacher_steps", "trajectories", "label_dropout")}
    key["seed"] = args.seed

    def read():
        if not path.exists():
            return None
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return (cached["traj"].float(), cached["y"]) if cached.get("key") == key else None

    got = read() if rank == 0 else None
    if rank == 0 and got is None:
        traj, y = make_trajectories(teacher, spec, args.seed, device, progress=not args.no_progress)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"key": key, "traj": traj.half(), "y": y}, tmp)
        tmp.replace(path)
        got = (traj.half().float(), y)  # what the other ranks read: the same rounding on every rank
    if world > 1:
        torch.distributed.barrier()
        if rank > 0:
            got = read()
    return got


# --- the command ----------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m utils.train", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--dataset", default="fashion-mnist", choices=data_mod.IMAGE_SETS)
    a("--model", default="unet", choices=MODELS)
    a("--width", type=int, default=32, help="base channels of the U-Net / classifiers")
    a("--mults", default="1,2,2", help="channel multipliers per resolution level")
    a("--depth", type=int, default=1, help="ResBlocks per level (U-Net)")
    a("--no-attention", action="store_true", help="no self-attention in the U-Net's middle")
    a("--dropout", type=float, default=0.0)
    a("--target", default="eps", choices=TARGETS)
    a("--schedule", default="vp_linear", choices=tuple(SCHEDULES))
    a("--time-dist", default="uniform", choices=TIME_DISTS)
    a("--cond", action="store_true", help="class-conditional U-Net (labels; null class for CFG)")
    a("--label-dropout", type=float, default=0.0, help="probability a label is dropped to the null class")
    a("--steps", type=int, default=10_000)
    a("--batch", type=int, default=128, help="batch per process")
    a("--lr", type=float, default=5e-4)
    a("--lr-schedule", default="constant", choices=("constant", "cosine"))
    a("--warmup", type=int, default=200)
    a("--ema", type=float, default=0.999)
    a("--grad-clip", type=float, default=1.0)
    a("--seed", type=int, default=0)
    a("--out", required=True, help="the checkpoint to write (EMA weights + meta)")
    a("--resume", action="store_true", help="continue from OUT.state if it exists")
    a("--export", action="store_true", help="write OUT from OUT.state's EMA weights, no training")
    a("--log-every", type=int, default=50)
    a("--ckpt-every", type=int, default=500)
    a("--amp", action="store_true", help="bfloat16 mixed precision (GPU)")
    a("--device", default="auto", help="auto, cpu, cuda")
    a("--no-progress", action="store_true")
    g = p.add_argument_group("--model consistency: a one-step model distilled on a teacher's trajectories (Ch. 11)")
    g.add_argument("--teacher", help="a U-Net checkpoint: a name in MANIFEST.json or a path")
    g.add_argument("--teacher-steps", type=int, default=16, help="DPM-Solver++(2M) steps of the teacher's trajectories")
    g.add_argument("--trajectories", type=int, default=8192, help="number of teacher trajectories")
    g.add_argument("--p-prior", type=float, default=0.5, help="share of training points at t = 1 (the one-step jump)")
    g.add_argument("--sigma-data", type=float, default=0.5, help="sigma_d of c_skip, c_out")
    return p.parse_args(argv)


def state_path(out, rank: int) -> Path:
    """Where rank ``rank`` keeps its training state: OUT.state, OUT.state.rankR for R > 0 (each
    rank's random streams differ, so each keeps its own for an exact resume)."""
    out = Path(out)
    return out.with_name(out.name + ".state" + (f".rank{rank}" if rank else ""))


def _init_distributed(device_arg: str):
    """(rank, world_size, device): from torchrun's environment, with the process group started
    (NCCL on CUDA, gloo on CPU); (0, 1, device) for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if world == 1:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    return torch.distributed.get_rank(), world, device


def command_line(argv) -> str:
    """The command as a reader would type it (for the manifest)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"torchrun --nproc_per_node={world} -m utils.train" if world > 1 else "python -m utils.train"
    return " ".join([prefix] + [shlex.quote(a) for a in argv])


def hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)}"
    return f"{world} process(es) on {os.cpu_count()}-core CPU ({platform.machine()}), {torch.get_num_threads()} thread(s) each"


def save_model(out, net: torch.nn.Module, spec: dict, history, meta: dict) -> Path:
    """Write the shipped checkpoint: EMA weights + meta (spec, command, steps, ...) + losses."""
    return training.save_checkpoint(out, net, history, {**meta, "spec": spec})


def main(argv=None) -> Path | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.amp and args.device == "cpu":
        print("note: --amp on the CPU runs bfloat16 autocast (slow on most CPUs)", file=sys.stderr)
    rank, world, device = _init_distributed(args.device)
    teacher = None
    if args.model == "consistency":
        if not args.teacher:
            raise ValueError("--model consistency needs --teacher (a U-Net checkpoint: a name in MANIFEST.json or a path)")
        teacher = load_pretrained(args.teacher, device=device)
        spec = consistency_spec(args, teacher.meta["spec"], teacher_sha(args.teacher))
    else:
        spec = spec_from_args(args)
    torch.manual_seed(args.seed)  # every rank builds the same initial weights
    net = build_net(spec).to(device)
    if teacher is not None:  # the student starts from the teacher's weights (its F is the teacher's U-Net)
        net.net.load_state_dict(teacher.net.state_dict())
    trained_by = [a for a in argv if a != "--export"]  # an export records the command that trained
    meta = {"command": command_line(trained_by), "hardware": hardware(device, world), "world_size": world,
            "batch_per_rank": args.batch, "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.export:
        return export(args.out, spec, meta)
    if teacher is not None:
        x, y = load_or_make_trajectories(args, spec, teacher, rank, world, device)
    else:
        x, y = data_mod.load_image_dataset(args.dataset, "train")
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    ema, history = training.train(
        model, build_loss(spec), x, steps=args.steps, batch_size=args.batch, lr=args.lr, labels=y,
        ema_decay=args.ema, grad_clip=args.grad_clip, lr_schedule=args.lr_schedule, warmup=args.warmup,
        seed=args.seed, device=device, progress=not args.no_progress and rank == 0,
        desc=f"{args.model} rank {rank}" if world > 1 else args.model, log_every=args.log_every,
        checkpoint_path=state_path(args.out, rank), checkpoint_every=args.ckpt_every, resume=args.resume,
        amp=args.amp)
    out = None
    if rank == 0:
        meta.update(steps=args.steps, seconds=round(history.seconds, 1),
                    final_loss=history.smooth)
        out = save_model(args.out, ema.cpu(), spec, history, meta)
        print(f"wrote {out} after {args.steps} steps in {history.seconds:.0f} s (loss {history.smooth:.4f})")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return out


def export(out, spec: dict, meta: dict) -> Path:
    """Write OUT from the EMA weights of OUT.state (a run still training, or one that stopped)."""
    state = torch.load(state_path(out, 0), map_location="cpu", weights_only=True)
    net = build_net(spec)
    net.load_state_dict(state["ema_model"])
    history = training.History(losses=state["history"]["losses"].tolist(), seconds=state["history"]["seconds"])
    meta.update(steps=state["step"], seconds=round(history.seconds, 1), final_loss=history.smooth)
    path = save_model(out, net, spec, history, meta)
    print(f"exported {path} at step {state['step']}")
    return path


# --- loading shipped checkpoints -------------------------------------------------------------------

def sha256_file(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def teacher_sha(name, manifest=MANIFEST) -> str:
    """The SHA-256 of a checkpoint given as a manifest name or a path."""
    path = Path(name)
    if not path.exists() or path.parent == Path("."):
        path = Path(manifest).parent / str(name)
    return sha256_file(path)


def read_manifest(path=MANIFEST) -> dict:
    """MANIFEST.json as {file name: entry}; entries hold ``sha256``, ``command``, ``hardware``,
    ``steps`` and measured figures."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected the checkpoints' manifest")
    return {e["file"]: e for e in json.loads(path.read_text())["checkpoints"]}


def load_checkpoint_file(path, expected_sha256: str | None = None) -> dict:
    """The dict in a checkpoint file, loaded with ``weights_only=True``; with ``expected_sha256``,
    the file's hash is checked first. A tampered or corrupted file raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise ValueError(f"checkpoint {str(path)!r} failed its SHA-256 check (got {got}, the manifest "
                             f"says {expected_sha256}): the file is corrupted or was modified")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, pickled code (refused by weights_only), ...
        raise ValueError(f"checkpoint {str(path)!r} could not be loaded with weights_only=True: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "spec" not in ckpt.get("meta", {}):
        raise ValueError(f"checkpoint {str(path)!r} is not a utils.train checkpoint (state_dict + meta.spec)")
    return ckpt


def manifest_entry(path, role: str, figures: dict | None = None) -> dict:
    """One MANIFEST.json entry for a checkpoint file: its name, size, SHA-256, role, and from its
    meta the exact command, hardware, steps and training seconds, plus measured ``figures``."""
    path = Path(path)
    meta = load_checkpoint_file(path)["meta"]
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path), "role": role,
            "command": meta["command"], "hardware": meta["hardware"], "steps": meta["steps"],
            "train_seconds": meta.get("seconds"), "model": meta["spec"]["model"],
            "figures": dict(figures or {})}


def read_manifest_notes(path=MANIFEST) -> str:
    return json.loads(Path(path).read_text()).get("notes", "")


def write_manifest(entries: list, path=MANIFEST, notes: str = "") -> Path:
    """Write MANIFEST.json: {"notes": ..., "checkpoints": [entry, ...]} (:func:`manifest_entry`)."""
    path = Path(path)
    path.write_text(json.dumps({"notes": notes, "checkpoints": entries}, indent=2) + "\n")
    return path


def load_pretrained(name, manifest=MANIFEST, device="cpu"):
    """A shipped (or any ``utils.train``) checkpoint, ready to use:

    * a U-Net comes back as a :class:`utils.targets.Denoiser` (its target and schedule from the
      checkpoint; class-conditional ones take y, NULL_LABEL for unconditional, so
      ``ClassifierFreeGuidance(model, w)`` works on it);
    * a classifier / noise-conditional classifier as the ``nn.Module`` in eval mode;
    * a one-step model (``--model consistency``) as its :class:`utils.flowmaps.ConsistencyModel`
      f(x, s, y), sampled by :func:`utils.flowmaps.sample_consistency`.

    ``name``: a file name listed in ``MANIFEST.json`` (e.g. ``"fmnist_unet_cfg.pt"``; its SHA-256
    is checked) or a path to any checkpoint written by the training command (no hash check).
    The model's meta dict is at ``.meta`` of the returned object.
    """
    path, expected = Path(name), None
    if not path.exists() or path.parent == Path("."):
        entries = read_manifest(manifest)
        if str(name) not in entries:
            raise ValueError(f"name={name!r} is not a checkpoint in {str(manifest)!r}; expected one of "
                             f"{tuple(entries)} or a path")
        path, expected = Path(manifest).parent / str(name), entries[str(name)]["sha256"]
    ckpt = load_checkpoint_file(path, expected)
    spec = ckpt["meta"]["spec"]
    net = build_net(spec)
    net.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    net = net.to(device).eval().requires_grad_(False)
    out = Denoiser(net, spec["target"], get_schedule(spec["schedule"])) if spec["model"] == "unet" else net
    out.meta = ckpt["meta"]
    return out


def is_shipped(name, manifest=MANIFEST) -> bool:
    """True when the checkpoint ``name`` lies beside ``manifest`` as a real file (a zip archive, as
    torch.save writes), not missing and not a Git LFS pointer left by a clone without LFS."""
    path = Path(manifest).parent / str(name)
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(2) == b"PK"


def missing_for_images(checkpoints, dataset: str = "fashion-mnist", manifest=MANIFEST) -> list:
    """What an image section needs and cannot find: the checkpoints of ``checkpoints`` that are not
    shipped, and ``dataset`` if its IDX files are nowhere (empty when the section can run)."""
    missing = [name for name in checkpoints if not is_shipped(name, manifest)]
    return missing + ([] if data_mod.find_idx_folder(dataset) else [dataset])


def image_model(name, train: bool = False, device="cpu", runs=CHECKPOINT_DIR.parent / "runs", manifest=MANIFEST):
    """The shipped checkpoint ``name`` (:func:`load_pretrained`) or, with ``train=True``, the same model
    trained from scratch by the command MANIFEST.json records for it, written to ``runs/<name>`` (a
    rerun resumes where the last one stopped, or returns at once when it is complete): the chapters'
    ``gpu`` profile."""
    if not train:
        return load_pretrained(name, manifest, device=device)
    entries = read_manifest(manifest)
    if str(name) not in entries:
        raise ValueError(f"name={name!r} is not a checkpoint in {str(manifest)!r}; expected one of {tuple(entries)}")
    args = shlex.split(entries[str(name)]["command"])
    args = args[args.index("utils.train") + 1:]  # the arguments after `python -m utils.train`
    out = Path(runs) / str(name)
    args[args.index("--out") + 1] = str(out)
    if "--teacher" in args:  # a distilled model learns from the teacher trained here, when there is one
        fresh = Path(runs) / args[args.index("--teacher") + 1]
        if fresh.exists():
            args[args.index("--teacher") + 1] = str(fresh)
    main([a for a in args if a != "--resume"] + ["--resume"])
    return load_pretrained(out, device=device)


if __name__ == "__main__":
    main()
