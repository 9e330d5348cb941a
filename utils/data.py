"""Data: 2D toy sets, Gaussian-mixture toys with known density, sklearn digits, IDX images.

Every 2D set is scaled to roughly zero mean and unit-order spread (coordinates within about
[-3, 3]), so the schedules' defaults suit them all. Randomness comes from an explicit
``torch.Generator`` so a draw is reproducible.

Nothing here touches the network unless the reader asks for a download (``download=True``).
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ._checks import check_choice, check_int
from .gmm import GaussianMixture

TOY_SETS = ("moons", "8gaussians", "checkerboard", "swissroll", "spirals", "circles", "gmm")
GMM_TOYS = ("8gaussians", "two_modes", "grid", "moons_gmm")


def _randn(n, generator, d=2):
    return torch.randn(n, d, dtype=torch.float64, generator=generator)


def _rand(n, generator, d=1):
    return torch.rand(n, d, dtype=torch.float64, generator=generator)


def toy_2d(name: str, n: int, generator: torch.Generator | None = None, noise: float | None = None,
           dtype: torch.dtype = torch.float32):
    """n points of a 2D toy set. Returns ``(x: (n, 2), y)`` with y: (n,) class labels where they
    are natural (moons: 2 arms, 8gaussians: 8 modes, checkerboard: 8 squares, spirals: 2 arms,
    circles: 2 rings, gmm: the component) and ``None`` for the swiss roll.

    ``noise`` overrides each set's default jitter. ``gmm`` is :func:`toy_gmm('8gaussians')`,
    whose density is known exactly.
    """
    check_choice("name", name, TOY_SETS)
    check_int("n", n)
    if noise is not None and (not isinstance(noise, (int, float)) or noise < 0):
        raise ValueError(f"noise={noise!r} is not valid; expected a non-negative number or None")
    g = generator
    if name == "moons":
        y = (_rand(n, g)[:, 0] < 0.5).long()
        u = math.pi * _rand(n, g)[:, 0]
        upper = torch.stack([torch.cos(u), torch.sin(u)], 1)
        lower = torch.stack([1 - torch.cos(u), 0.5 - torch.sin(u)], 1)
        x = torch.where(y[:, None] == 0, upper, lower)
        x = (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 1.6
        x = x + (0.1 if noise is None else noise) * _randn(n, g)
    elif name == "8gaussians" or name == "gmm":
        x, y = toy_gmm("8gaussians", std=0.15 if noise is None else max(noise, 1e-3)).sample(n, g)
    elif name == "checkerboard":
        # 8 unit squares of a 4x4 board, scaled to [-2, 2]^2
        y = torch.randint(0, 8, (n,), generator=g)
        row = y // 2
        col = 2 * (y % 2) + (row % 2)
        u = _rand(n, g, 2)
        x = torch.stack([col + u[:, 0], row + u[:, 1]], 1) - 2.0
        if noise:
            x = x + noise * _randn(n, g)
    elif name == "swissroll":
        u = 1.5 * math.pi * (1 + 2 * _rand(n, g)[:, 0])
        x = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 5.0
        x = x + (0.1 if noise is None else noise) * _randn(n, g)
        y = None
    elif name == "spirals":
        y = (_rand(n, g)[:, 0] < 0.5).long()
        u = torch.sqrt(_rand(n, g)[:, 0]) * 3 * math.pi
        sign = 1 - 2 * y.double()
        x = sign[:, None] * torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 3.5
        x = x + (0.08 if noise is None else noise) * _randn(n, g)
    else:  # circles
        y = (_rand(n, g)[:, 0] < 0.5).long()
        u = 2 * math.pi * _rand(n, g)[:, 0]
        r = torch.where(y == 0, torch.full_like(u, 2.0), torch.full_like(u, 1.0))
        x = r[:, None] * torch.stack([torch.cos(u), torch.sin(u)], 1)
        x = x + (0.08 if noise is None else noise) * _randn(n, g)
    return x.to(dtype), y


def toy_gmm(name: str = "8gaussians", std: float | None = None) -> GaussianMixture:
    """A 2D Gaussian mixture with exact density and scores (the oracle's data sets).

    * ``8gaussians``: 8 equal modes on a circle of radius 2, std 0.15 (labels 0..7);
    * ``two_modes``: weights 0.8 / 0.2 at (-2, 0) and (2, 0), std 0.3: Langevin with one noise
      level gets the weights wrong (Ch. 3);
    * ``grid``: 3x3 equal modes at spacing 1.5, std 0.15;
    * ``moons_gmm``: two classes of 6 modes each along two interleaved arcs, std 0.18 (a
      class-conditional toy for guidance).
    """
    check_choice("name", name, GMM_TOYS)
    if std is not None and not (isinstance(std, (int, float)) and std > 0):
        raise ValueError(f"std={std!r} is not valid; expected a positive number or None")
    if name == "8gaussians":
        ang = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
        means = 2.0 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
        return GaussianMixture(means, std or 0.15)
    if name == "two_modes":
        return GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], std or 0.3, weights=[0.8, 0.2])
    if name == "grid":
        g = torch.tensor([-1.5, 0.0, 1.5], dtype=torch.float64)
        means = torch.cartesian_prod(g, g)
        return GaussianMixture(means, std or 0.15)
    u = torch.linspace(0, math.pi, 6, dtype=torch.float64)
    upper = torch.stack([torch.cos(u), torch.sin(u)], 1)
    lower = torch.stack([1 - torch.cos(u), 0.5 - torch.sin(u)], 1)
    means = (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 1.6
    return GaussianMixture(means, std or 0.18, labels=[0] * 6 + [1] * 6)


def load_digits(dtype: torch.dtype = torch.float32):
    """sklearn's 8x8 digits (1,797 images, shipped with scikit-learn) scaled to [-1, 1].

    Returns ``(x: (1797, 1, 8, 8), y: (1797,))``.
    """
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.tensor(d.images, dtype=dtype)[:, None] / 8.0 - 1.0
    return x, torch.tensor(d.target, dtype=torch.long)


# --- IDX files (MNIST / Fashion-MNIST) ---------------------------------------------------------

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SEARCH_ROOTS = (DATA_DIR / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array (the MNIST file format)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path={str(path)!r} does not exist; expected an IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        zero, dtype_code, ndim = struct.unpack(">HBB", fh.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"path={str(path)!r} is not an unsigned-byte IDX file (header {zero}, {dtype_code:#x})")
        shape = struct.unpack(">" + "I" * ndim, fh.read(4 * ndim))
        return np.frombuffer(fh.read(), dtype=np.uint8).reshape(shape)


def find_fashion_mnist(root=None) -> Path | None:
    """The first folder holding the Fashion-MNIST IDX files: ``root``, ``$FASHION_MNIST_DIR``,
    ``data/fashion-mnist/``, then Debian's ``/usr/share/datasets/fashion-mnist/``."""
    roots = [Path(root)] if root is not None else []
    if os.environ.get("FASHION_MNIST_DIR"):
        roots.append(Path(os.environ["FASHION_MNIST_DIR"]))
    roots.extend(SEARCH_ROOTS)
    for r in roots:
        if all((r / f).exists() for f in FASHION_MNIST_FILES["train"]):
            return r
    return None


def load_fashion_mnist(split: str = "train", root=None, download: bool = False,
                       dtype: torch.dtype = torch.float32):
    """Fashion-MNIST 28x28 scaled to [-1, 1]: ``(x: (N, 1, 28, 28), y: (N,))``.

    Looks in the places :func:`find_fashion_mnist` lists; with ``download=True`` (and only then)
    fetches the four files into ``data/fashion-mnist/``.
    """
    check_choice("split", split, FASHION_MNIST_FILES)
    folder = find_fashion_mnist(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(
                "Fashion-MNIST not found in data/fashion-mnist/ or /usr/share/datasets/fashion-mnist/; "
                "install Debian's dataset-fashion-mnist, or call load_fashion_mnist(download=True)")
        folder = DATA_DIR / "fashion-mnist"
        folder.mkdir(parents=True, exist_ok=True)
        for files in FASHION_MNIST_FILES.values():
            for f in files:
                if not (folder / f).exists():
                    urllib.request.urlretrieve(FASHION_MNIST_URL + f, folder / f)
    img, lab = (folder / f for f in FASHION_MNIST_FILES[split])
    x = torch.tensor(read_idx(img).copy(), dtype=dtype)[:, None] / 127.5 - 1.0
    return x, torch.tensor(read_idx(lab).astype(np.int64))
