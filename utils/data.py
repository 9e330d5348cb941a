"""Data: 2D toy sets, Gaussian-mixture toys with known density, sklearn digits, IDX images.

Every 2D set is scaled to roughly zero mean and unit-order spread (coordinates within about
[-3, 3]), so the schedules' defaults suit them all. Randomness comes from an explicit
``torch.Generator`` so a draw is reproducible.

Nothing here touches the network unless the reader asks for a download (``download=True``).
"""
from __future__ import annotations

import gzip
import hashlib
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


# --- IDX files (MNIST / Fashion-MNIST) and the image sets ---------------------------------------

IMAGE_SETS = ("fashion-mnist", "mnist", "digits")
IMAGE_SPLITS = ("train", "test")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_FILES = FASHION_MNIST_FILES  # MNIST uses the same four file names
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
IDX_URLS = {"fashion-mnist": FASHION_MNIST_URL,
            "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/"}
# Accepted SHA-256 digests of each file: of the gzip file as published and/or of the decompressed
# IDX bytes (the data itself, the same in upstream's and Debian's re-compressed files).
IDX_SHA256 = {
    "fashion-mnist": {  # decompressed IDX bytes
        "train-images-idx3-ubyte.gz": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",),
        "train-labels-idx1-ubyte.gz": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",),
        "t10k-images-idx3-ubyte.gz": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",),
        "t10k-labels-idx1-ubyte.gz": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",),
    },
    "mnist": {  # (published .gz, decompressed IDX bytes)
        "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                                       "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                       "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                      "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                                      "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
}
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEBIAN_DIR = Path("/usr/share/datasets")
SEARCH_ROOTS = (DATA_DIR / "fashion-mnist", DEBIAN_DIR / "fashion-mnist")  # Fashion-MNIST's fallbacks
DATA_ENV = "DIFFUSION_DATA"  # a folder holding fashion-mnist/ and mnist/ subfolders
DIGITS_TRAIN = 1440  # sklearn digits: the first 1,440 images are "train", the other 357 "test"


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


def sha256_digests(path) -> tuple[str, str]:
    """(SHA-256 of the file's bytes, SHA-256 of its decompressed bytes) as hex; the two are equal
    for a file that is not gzipped."""
    raw = Path(path).read_bytes()
    inner = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    return hashlib.sha256(raw).hexdigest(), hashlib.sha256(inner).hexdigest()


def verify_idx_file(path, name: str) -> None:
    """Raise ValueError, naming the file, unless one of its SHA-256 digests (file or decompressed)
    is one that :data:`IDX_SHA256` accepts for data set ``name``."""
    check_choice("name", name, tuple(IDX_SHA256))
    path = Path(path)
    accepted = IDX_SHA256[name].get(path.name)
    if accepted is None:
        raise ValueError(f"path={str(path)!r} is not one of the {name} files {tuple(IDX_SHA256[name])}")
    digests = sha256_digests(path)
    if not set(digests) & set(accepted):
        raise ValueError(f"{str(path)!r} failed its SHA-256 check (file {digests[0]}, decompressed "
                         f"{digests[1]}); expected one of {accepted}. Delete it and download again.")


def _idx_roots(name: str, root=None) -> list[Path]:
    """Where the IDX files of ``name`` are looked for, in order."""
    roots = [Path(root)] if root is not None else []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]) / name)
    if name == "fashion-mnist":
        if os.environ.get("FASHION_MNIST_DIR"):
            roots.append(Path(os.environ["FASHION_MNIST_DIR"]))
        roots.extend(SEARCH_ROOTS)
    else:
        roots.extend((DATA_DIR / name, DEBIAN_DIR / name))
    return roots


def find_idx_folder(name: str, root=None) -> Path | None:
    """The first folder holding the four IDX files of ``name`` ("fashion-mnist" or "mnist"):
    ``root``, ``$DIFFUSION_DATA/<name>/`` (and ``$FASHION_MNIST_DIR``), ``data/<name>/``, then
    Debian's ``/usr/share/datasets/<name>/``; None if none has them."""
    check_choice("name", name, tuple(IDX_URLS))
    for r in _idx_roots(name, root):
        if all((r / f).exists() for files in IDX_FILES.values() for f in files):
            return r
    return None


def find_fashion_mnist(root=None) -> Path | None:
    """:func:`find_idx_folder` for Fashion-MNIST."""
    return find_idx_folder("fashion-mnist", root)


def download_idx(name: str, folder=None) -> Path:
    """Fetch the four IDX files of ``name`` from :data:`IDX_URLS` into ``folder`` (default
    ``data/<name>/``), each checked against :data:`IDX_SHA256` before it is kept (a file that
    fails is deleted and a ValueError names it). Files already there are checked, not fetched.
    The only network access in the package, and only when called."""
    check_choice("name", name, tuple(IDX_URLS))
    folder = Path(folder) if folder is not None else DATA_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for files in IDX_FILES.values():
        for f in files:
            if not (folder / f).exists():
                part = folder / (f + ".part")
                urllib.request.urlretrieve(IDX_URLS[name] + f, part)
                try:
                    _verify_part(part, f, name)
                except ValueError:
                    part.unlink(missing_ok=True)
                    raise
                os.replace(part, folder / f)
            verify_idx_file(folder / f, name)
    return folder


def _verify_part(part: Path, filename: str, name: str) -> None:
    digests, accepted = sha256_digests(part), IDX_SHA256[name][filename]
    if not set(digests) & set(accepted):
        raise ValueError(f"the download of {filename!r} from {IDX_URLS[name] + filename} failed its "
                         f"SHA-256 check (file {digests[0]}, decompressed {digests[1]}); expected one "
                         f"of {accepted}; nothing was kept")


def _digits_split(split: str, dtype):
    x, y = load_digits(dtype)
    return (x[:DIGITS_TRAIN], y[:DIGITS_TRAIN]) if split == "train" else (x[DIGITS_TRAIN:], y[DIGITS_TRAIN:])


def load_image_dataset(name: str, split: str = "train", root=None, download: bool = False,
                       dtype: torch.dtype = torch.float32):
    """An image set scaled to [-1, 1]: ``(x: (N, 1, H, W), y: (N,) long)``.

    * ``fashion-mnist``, ``mnist``: 28x28, train 60,000 / test 10,000, from the IDX files found by
      :func:`find_idx_folder` (``root``, ``$DIFFUSION_DATA/<name>/``, ``data/<name>/``, Debian's
      ``/usr/share/datasets/<name>/``); with ``download=True`` (and only then) fetched into
      ``data/<name>/`` and checked by SHA-256 (:func:`download_idx`).
    * ``digits``: sklearn's 8x8 digits, kept at 8x8 (always present): train the first 1,440,
      test the other 357.

    Raises FileNotFoundError saying how to get the files when they are absent.
    """
    check_choice("name", name, IMAGE_SETS)
    check_choice("split", split, IMAGE_SPLITS)
    if name == "digits":
        return _digits_split(split, dtype)
    folder = find_idx_folder(name, root)
    if folder is None:
        if not download:
            where = ", ".join(str(r) for r in _idx_roots(name, root))
            raise FileNotFoundError(
                f"{name} IDX files not found (looked in {where}). Either install Debian's "
                f"dataset-fashion-mnist (Fashion-MNIST), put the four .gz files in data/{name}/ or in "
                f"${DATA_ENV}/{name}/, or call load_image_dataset({name!r}, download=True) to fetch "
                f"them into data/{name}/ (checked by SHA-256)")
        folder = download_idx(name)
    img, lab = (folder / f for f in IDX_FILES[split])
    x = torch.from_numpy(read_idx(img).copy())[:, None].to(dtype).div_(127.5).sub_(1.0)
    return x, torch.from_numpy(read_idx(lab).astype(np.int64))


def load_fashion_mnist(split: str = "train", root=None, download: bool = False,
                       dtype: torch.dtype = torch.float32):
    """Fashion-MNIST 28x28 scaled to [-1, 1]: ``(x: (N, 1, 28, 28), y: (N,))``
    (:func:`load_image_dataset` ("fashion-mnist", ...))."""
    return load_image_dataset("fashion-mnist", split, root, download, dtype)


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_SHORT = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")


def image_grid(x: torch.Tensor, nrow: int = 8, pad: int = 1) -> torch.Tensor:
    """Tile images x: (N, 1, H, W) in [-1, 1] into one (rows (H + pad), nrow (W + pad)) array in
    [0, 1] for ``plt.imshow(grid, cmap="gray")``; values outside [-1, 1] are clipped."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x has shape {shape}; expected (N, 1, H, W)")
    check_int("nrow", nrow)
    check_int("pad", pad, 0)
    n, _, h, w = x.shape
    rows = -(-n // nrow)
    grid = torch.ones(rows * (h + pad), nrow * (w + pad), dtype=torch.float32)
    img = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)[:, 0]
    for k in range(n):
        r, c = divmod(k, nrow)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img[k]
    return grid
