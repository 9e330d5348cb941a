"""Data: toy sets, Gaussian-mixture toys, sklearn digits, the IDX reader (no network)."""
import gzip
import struct

import numpy as np
import pytest
import torch

from utils import data
from utils.gmm import GaussianMixture

LABELLED = {"moons": 2, "8gaussians": 8, "checkerboard": 8, "spirals": 2, "circles": 2, "gmm": 8}


@pytest.mark.parametrize("name", data.TOY_SETS)
def test_toy_sets(name):
    n = 2000
    x, y = data.toy_2d(name, n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # roughly centred, unit-order spread, within about [-3, 3]
    assert x.abs().max() < 4.0
    assert x.mean(0).abs().max() < 0.5
    assert 0.3 < float(x.std(0).min()) and float(x.std(0).max()) < 2.5
    if name in LABELLED:
        assert y.shape == (n,) and y.dtype == torch.long
        assert set(y.unique().tolist()) == set(range(LABELLED[name]))
    else:
        assert y is None
    x2, y2 = data.toy_2d(name, n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and (y is None or torch.equal(y, y2))
    x3, _ = data.toy_2d(name, n, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)
    assert data.toy_2d(name, 5, dtype=torch.float64)[0].dtype == torch.float64


def test_toy_labels_are_meaningful():
    g = torch.Generator().manual_seed(0)
    x, y = data.toy_2d("circles", 1000, generator=g, noise=0.0)
    r = x.double().norm(dim=1)
    torch.testing.assert_close(r[y == 0], torch.full_like(r[y == 0], 2.0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r[y == 1], torch.full_like(r[y == 1], 1.0), rtol=1e-6, atol=1e-6)
    x, y = data.toy_2d("checkerboard", 1000, generator=g)
    cell = torch.floor(x.double() + 2.0).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()  # the dark squares of the board
    x, y = data.toy_2d("8gaussians", 4000, generator=g)
    means = data.toy_gmm("8gaussians").means
    nearest = torch.cdist(x.double(), means).argmin(1)
    assert float((nearest == y).double().mean()) > 0.99


@pytest.mark.parametrize("name", data.GMM_TOYS)
def test_toy_gmms(name):
    m = data.toy_gmm(name)
    assert isinstance(m, GaussianMixture) and m.dim == 2
    x, lab = m.sample(500, torch.Generator().manual_seed(0))
    assert x.abs().max() < 4.0
    assert torch.isfinite(m.log_prob(x)).all()
    wide = data.toy_gmm(name, std=0.5)
    torch.testing.assert_close(wide.covs, 0.25 * torch.eye(2, dtype=torch.float64).expand_as(wide.covs))
    if name == "moons_gmm":
        assert m.num_classes == 2
    if name == "two_modes":
        torch.testing.assert_close(m.weights, torch.tensor([0.8, 0.2], dtype=torch.float64))


def test_load_digits():
    x, y = data.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert y.shape == (1797,) and set(y.unique().tolist()) == set(range(10))


def _write_idx(path, arr, compress=True):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(payload)


def test_read_idx(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, size=(5,), dtype=np.uint8)
    _write_idx(tmp_path / "imgs.gz", imgs)
    _write_idx(tmp_path / "labs", labs, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "imgs.gz"), imgs)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labs"), labs)
    with gzip.open(tmp_path / "bad.gz", "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data.read_idx(tmp_path / "bad.gz")
    with pytest.raises(ValueError, match="path="):
        data.read_idx(tmp_path / "missing.gz")


def test_fashion_mnist_from_a_folder(tmp_path):
    rng = np.random.default_rng(1)
    for split, k in (("train", 6), ("test", 3)):
        img, lab = data.FASHION_MNIST_FILES[split]
        _write_idx(tmp_path / img, rng.integers(0, 256, size=(k, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / lab, rng.integers(0, 10, size=(k,), dtype=np.uint8))
    assert data.find_fashion_mnist(tmp_path) == tmp_path
    x, y = data.load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (3, 1, 28, 28) and y.shape == (3,) and y.dtype == torch.long
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_fashion_mnist_missing_without_download_raises(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(data, "SEARCH_ROOTS", (tmp_path / "nowhere",))

    def no_network(*args, **kwargs):
        raise AssertionError("load_fashion_mnist touched the network without download=True")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", no_network)
    assert data.find_fashion_mnist(tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load_fashion_mnist(root=tmp_path / "empty", download=False)


def test_bad_inputs():
    with pytest.raises(ValueError, match="name='mnist'"):
        data.toy_2d("mnist", 10)
    with pytest.raises(ValueError, match="n="):
        data.toy_2d("moons", 0)
    with pytest.raises(ValueError, match="noise="):
        data.toy_2d("moons", 10, noise=-0.1)
    with pytest.raises(ValueError, match="name='rings'"):
        data.toy_gmm("rings")
    with pytest.raises(ValueError, match="std="):
        data.toy_gmm("grid", std=0.0)
    with pytest.raises(ValueError, match="split='val'"):
        data.load_fashion_mnist("val")
