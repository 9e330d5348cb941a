"""Profiles, device choice and seeding (the README's "Profiles": how big a run is, on which device).

One environment variable, ``DIFFUSION_PROFILE`` = ``test`` | ``cpu`` | ``gpu``, sizes every run:

* ``test``: what nbval runs in CI on 2 CPU cores (each chapter in about 2 minutes);
* ``cpu``: a reader on a laptop (each chapter within about 10 minutes);
* ``gpu``: full runs (image sections at 28x28, bigger models, more steps).

Unset, the profile is ``gpu`` where CUDA is available and ``cpu`` otherwise. A notebook reads
the profile once, in its first code cell, and picks its settings from one small table with
:func:`pick`.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

PROFILES = ("test", "cpu", "gpu")
ENV_VAR = "DIFFUSION_PROFILE"


def get_profile() -> str:
    """The active profile: ``$DIFFUSION_PROFILE`` or, unset, ``gpu``/``cpu`` by CUDA."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if value not in PROFILES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a profile; expected one of {PROFILES}")
    return value


def get_device(profile: str | None = None) -> torch.device:
    """``cuda`` when available (and the profile is not ``test``), else ``cpu``.

    The ``test`` profile always runs on the CPU so CI results do not depend on the machine.
    """
    profile = get_profile() if profile is None else profile
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not a profile; expected one of {PROFILES}")
    if profile != "test" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not valid; expected a non-negative int")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick(table: dict, profile: str | None = None):
    """The entry of ``table`` (keyed by profile) for the active profile.

    ``table`` must have a ``test`` and a ``cpu`` entry; a missing ``gpu`` entry falls back to
    ``cpu`` (a 2D chapter needs nothing bigger on a GPU).

    >>> pick({"test": dict(steps=300), "cpu": dict(steps=3000)}, profile="test")
    {'steps': 300}
    """
    profile = get_profile() if profile is None else profile
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not a profile; expected one of {PROFILES}")
    missing = [p for p in ("test", "cpu") if p not in table]
    if missing:
        raise ValueError(f"table is missing the profiles {missing}; it has {list(table)}")
    unknown = [p for p in table if p not in PROFILES]
    if unknown:
        raise ValueError(f"table has unknown profiles {unknown}; expected keys among {PROFILES}")
    return table.get(profile, table["cpu"])


def setup(seed: int = 0, threads: int | None = None, verbose: bool = True):
    """The first code cell of every chapter: profile, device, seed (and a one-line report).

    Returns ``(profile, device, generator)``.
    """
    profile = get_profile()
    device = get_device(profile)
    if threads is not None:
        torch.set_num_threads(threads)
    generator = seed_everything(seed)
    if verbose:
        print(f"profile={profile}  device={device}  seed={seed}  torch={torch.__version__}  "
              f"threads={torch.get_num_threads()}")
    return profile, device, generator


BENCHMARK_ENV = "DIFFUSION_BENCHMARK_OUT"


def record(**figures) -> dict:
    """Hand a chapter's key figures to the benchmark script (``tests/benchmark.py``).

    A no-op for readers; when ``$DIFFUSION_BENCHMARK_OUT`` names a file, the figures (plain
    numbers or strings) are merged into that JSON file. Returns the figures.
    """
    import json

    for k, v in figures.items():
        if not isinstance(v, (int, float, str, bool)):
            raise ValueError(f"{k}={v!r} is not valid; expected a plain number or string")
    path = os.environ.get(BENCHMARK_ENV)
    if path:
        old = {}
        if os.path.exists(path):
            with open(path) as fh:
                old = json.load(fh)
        old.update({k: (float(v) if isinstance(v, float) else v) for k, v in figures.items()})
        with open(path, "w") as fh:
            json.dump(old, fh, indent=1)
    return figures
