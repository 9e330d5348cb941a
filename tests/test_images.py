"""The image track: IDX loading (written files, the real files when installed, the SHA-256-checked
download through a file:// URL), the U-Net and classifiers with the model interface and the
samplers, the Fréchet distance against utils.ot, per-sample seeds."""
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import data, fid, nets, ot
from utils.guidance import ClassifierFreeGuidance, ClassifierGuidance
from utils.samplers import sample_ancestral, sample_euler, sample_heun, sample_prior
from utils.schedules import VPLinear, edm_grid, uniform_grid
from utils.targets import NULL_LABEL, Denoiser


def write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def write_idx_set(folder, n_train=6, n_test=3, seed=0):
    """Four small IDX files with the standard names; returns the arrays written."""
    rng, out = np.random.default_rng(seed), {}
    folder.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", n_train), ("test", n_test)):
        img, lab = data.IDX_FILES[split]
        out[split] = (rng.integers(0, 256, size=(k, 28, 28), dtype=np.uint8),
                      rng.integers(0, 10, size=(k,), dtype=np.uint8))
        write_idx(folder / img, out[split][0])
        write_idx(folder / lab, out[split][1])
    return out


@pytest.fixture
def no_default_roots(monkeypatch, tmp_path):
    """Nothing found in data/ or Debian's folder, no environment variables: only what a test puts."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(data, "SEARCH_ROOTS", (tmp_path / "none1", tmp_path / "none2"))
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")


# --- data ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_load_image_dataset_from_env_folder(tmp_path, monkeypatch, no_default_roots, name):
    arrays = write_idx_set(tmp_path / "env" / name)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "env"))
    for split in ("train", "test"):
        x, y = data.load_image_dataset(name, split)
        img, lab = arrays[split]
        assert x.shape == (img.shape[0], 1, 28, 28) and x.dtype == torch.float32
        torch.testing.assert_close(x[:, 0], torch.tensor(img, dtype=torch.float32) / 127.5 - 1)
        assert torch.equal(y, torch.tensor(lab, dtype=torch.long))
    assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_root_argument_wins_and_missing_says_how(tmp_path, no_default_roots):
    write_idx_set(tmp_path / "mine", n_train=4)
    assert data.load_image_dataset("fashion-mnist", root=tmp_path / "mine")[0].shape[0] == 4
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        data.load_image_dataset("mnist")
    assert "dataset-fashion-mnist" in str(err.value) and data.DATA_ENV in str(err.value)


def test_digits_split():
    xtr, ytr = data.load_image_dataset("digits", "train")
    xte, yte = data.load_image_dataset("digits", "test")
    assert xtr.shape == (data.DIGITS_TRAIN, 1, 8, 8) and xte.shape == (1797 - data.DIGITS_TRAIN, 1, 8, 8)
    x, y = data.load_digits()
    assert torch.equal(torch.cat([xtr, xte]), x) and torch.equal(torch.cat([ytr, yte]), y)
    with pytest.raises(ValueError, match="name='cifar'"):
        data.load_image_dataset("cifar")
    with pytest.raises(ValueError, match="split='val'"):
        data.load_image_dataset("digits", "val")


def _pin(monkeypatch, name, folder):
    """Serve the files in ``folder`` at a file:// URL and pin their SHA-256 as the expected ones."""
    monkeypatch.setitem(data.IDX_URLS, name, folder.as_uri() + "/")
    pins = {f: (hashlib.sha256((folder / f).read_bytes()).hexdigest(),)
            for files in data.IDX_FILES.values() for f in files}
    monkeypatch.setitem(data.IDX_SHA256, name, pins)


def test_download_checks_sha256(tmp_path, monkeypatch, no_default_roots):
    arrays = write_idx_set(tmp_path / "server")
    _pin(monkeypatch, "mnist", tmp_path / "server")
    x, y = data.load_image_dataset("mnist", "test", download=True)
    assert (tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert torch.equal(y, torch.tensor(arrays["test"][1], dtype=torch.long))
    # a second call finds the files; a tampered server file is refused and nothing is kept
    assert data.find_idx_folder("mnist") == tmp_path / "data" / "mnist"
    _pin(monkeypatch, "fashion-mnist", tmp_path / "server")
    bad = tmp_path / "server" / "train-labels-idx1-ubyte.gz"
    write_idx(bad, np.zeros(6, dtype=np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz.*SHA-256"):
        data.load_image_dataset("fashion-mnist", download=True)
    folder = tmp_path / "data" / "fashion-mnist"
    assert not (folder / "train-labels-idx1-ubyte.gz").exists()
    assert not list(folder.glob("*.part"))


def test_verify_idx_file_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*failed its SHA-256"):
        data.verify_idx_file(path, "fashion-mnist")


REAL = data.find_idx_folder("fashion-mnist")


@pytest.mark.skipif(REAL is None, reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    for files in data.IDX_FILES.values():
        for f in files:
            data.verify_idx_file(REAL / f, "fashion-mnist")  # the pinned digests are the real ones
    x, y = data.load_image_dataset("fashion-mnist", "test")
    assert x.shape == (10_000, 1, 28, 28) and y.shape == (10_000,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))


# --- networks ------------------------------------------------------------------------------------

def test_unet_shapes_labels_and_size():
    torch.manual_seed(0)
    net = nets.UNet(base=32, num_classes=10)
    assert 0.5e6 < sum(p.numel() for p in net.parameters()) < 2e6
    small = nets.UNet(base=8, mults=(1, 2), num_classes=10)
    x, t = torch.randn(3, 1, 28, 28), torch.rand(3)
    out = small(x, t, torch.tensor([0, 9, NULL_LABEL]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the null label and y=None are the same (unconditional) input; labels change the output
    for p in small.parameters():  # zero-initialised convs would hide the label's effect
        torch.nn.init.normal_(p, std=0.1)
    null = torch.full((3,), NULL_LABEL)
    torch.testing.assert_close(small(x, t, null), small(x, t))
    assert not torch.allclose(small(x, t, torch.zeros(3, dtype=torch.long)), small(x, t, null))
    # a float time broadcasts; digits' 8x8 works with two halvings
    assert small(x, 0.5).shape == x.shape
    assert nets.UNet(base=8, mults=(1, 2, 2))(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="x has shape"):
        small(torch.randn(2, 1, 27, 27), torch.rand(2))
    with pytest.raises(ValueError, match="labels outside"):
        small(x, t, torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="num_classes=None"):
        nets.UNet(base=8, mults=(1, 2))(x, t, torch.zeros(3, dtype=torch.long))


def test_unet_samples_through_the_model_interface():
    """A U-Net in a Denoiser runs through the samplers, CFG and classifier guidance on (B, 1, 28, 28)."""
    torch.manual_seed(0)
    schedule = VPLinear()
    model = Denoiser(nets.UNet(base=8, mults=(1, 2), num_classes=10).eval(), "eps", schedule)
    x = sample_prior(schedule, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    grid = uniform_grid(3, schedule.t_start, schedule.t_min)
    y = torch.tensor([1, 2])
    with torch.no_grad():
        for out in (sample_euler(model, x, grid, y=y), sample_heun(ClassifierFreeGuidance(model, 2.0), x, grid, y=y),
                    sample_ancestral(model, x, grid, generator=torch.Generator().manual_seed(0))):
            assert out.shape == x.shape and torch.isfinite(out).all()
    clf = nets.NoisyClassifier(base=8, mults=(1, 2))
    assert clf(x, torch.rand(2)).shape == (2, 10)
    guided = ClassifierGuidance(model, clf, 1.0)
    out = sample_euler(guided, x, grid, y=y)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_classifier_features():
    clf = nets.Classifier(width=8, feature_dim=32)
    x = torch.randn(5, 1, 28, 28)
    assert clf.features(x).shape == (5, 32) and clf(x).shape == (5, 10)
    assert nets.Classifier(width=8, image_size=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="x has shape"):
        clf(torch.randn(2, 1, 8, 8))


# --- FID and per-sample seeds --------------------------------------------------------------------

def test_frechet_distance_is_gaussian_w2_squared():
    g = torch.Generator().manual_seed(0)
    for D in (1, 3, 16):
        A, B = torch.randn(D, D, generator=g, dtype=torch.float64), torch.randn(D, D, generator=g, dtype=torch.float64)
        S1, S2 = A @ A.T + 0.1 * torch.eye(D, dtype=torch.float64), B @ B.T + 0.1 * torch.eye(D, dtype=torch.float64)
        m1, m2 = torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
        assert fid.frechet_distance(m1, S1, m2, S2) == pytest.approx(ot.gaussian_w2(m1, S1, m2, S2) ** 2, rel=1e-8)
        assert fid.frechet_distance(m1, S1, m1, S1) == pytest.approx(0.0, abs=1e-8)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert fid.frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([0.0]),
                                torch.tensor([[1.0]])) == pytest.approx(1.0 + 1.0)


def test_classifier_fid_and_accuracy():
    torch.manual_seed(0)
    clf = nets.Classifier(width=8, feature_dim=16).eval()
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(300, 1, 28, 28, generator=g) * 2 - 1, torch.rand(300, 1, 28, 28, generator=g) * 2 - 1
    same = fid.classifier_fid(a, a, clf)
    assert abs(same) < 1e-8
    # a set with half its images blank is farther than a fresh draw of the same distribution
    half_blank = torch.cat([b[:150], -torch.ones(150, 1, 28, 28)])
    assert fid.classifier_fid(a, half_blank, clf) > 10 * fid.classifier_fid(a, b, clf) > 0
    assert fid.fid_floor(a, b, clf, 100, generator=torch.Generator().manual_seed(0)) > 0
    labels = clf(a).argmax(1)
    assert fid.classifier_accuracy(a, labels, clf) == 1.0
    assert fid.classifier_accuracy(a, (labels + 1) % 10, clf) == 0.0


def test_per_sample_seeds_do_not_depend_on_batching():
    z = fid.per_sample_noise((6, 1, 4, 4), seed=3)
    torch.testing.assert_close(fid.per_sample_noise((2, 1, 4, 4), seed=3, start=4), z[4:], rtol=0, atol=0)
    assert not torch.equal(fid.per_sample_noise((6, 1, 4, 4), seed=4), z)
    torch.manual_seed(0)
    schedule = VPLinear()
    model = Denoiser(nets.UNet(base=8, mults=(1, 2), num_classes=10).eval(), "eps", schedule)
    grid = edm_grid(schedule, 3)
    y = torch.arange(5) % 10
    whole = fid.sample_images(model, 5, (1, 8, 8), grid, y=y, seed=1, batch_size=5)
    pieces = fid.sample_images(model, 5, (1, 8, 8), grid, y=y, seed=1, batch_size=2)
    torch.testing.assert_close(whole, pieces, rtol=1e-5, atol=1e-5)
    # two "processes" drawing index ranges [0, 3) and [3, 5) make the same set
    first = fid.sample_images(model, 3, (1, 8, 8), grid, y=y[:3], seed=1, start=0)
    second = fid.sample_images(model, 2, (1, 8, 8), grid, y=y[3:], seed=1, start=3)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-5, atol=1e-5)


def test_image_grid():
    x = torch.linspace(-1, 1, 5)[:, None, None, None].expand(5, 1, 3, 2)
    g = data.image_grid(x, nrow=2, pad=1)
    assert g.shape == (3 * 4, 2 * 3)
    torch.testing.assert_close(g[4:7, 3:5], torch.full((3, 2), 0.75))  # image 3: value 0.5 -> 0.75
    assert float(g[0, 2]) == 1.0  # padding is white
    with pytest.raises(ValueError, match="x has shape"):
        data.image_grid(torch.zeros(2, 3, 4, 4))


def test_clipped_x0_keeps_the_identity():
    """ClippedX0: x0 in [-1, 1], and x = alpha x0 + sigma eps still holds; inside the range it is the model."""
    torch.manual_seed(0)
    schedule = VPLinear()
    model = Denoiser(nets.UNet(base=8, mults=(1, 2)).eval(), "eps", schedule)
    for p in model.net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    clipped = fid.ClippedX0(model)
    x, t = 3 * torch.randn(4, 1, 8, 8), torch.tensor([0.1, 0.5, 0.9, 0.99])
    with torch.no_grad():
        x0, eps = clipped.x0_eps(x, t)
        raw_x0, raw_eps = model.x0_eps(x, t)
    assert x0.abs().max() <= 1 and raw_x0.abs().max() > 1
    a, s = schedule.alpha(t.double()).float()[:, None, None, None], schedule.sigma(t.double()).float()[:, None, None, None]
    torch.testing.assert_close(a * x0 + s * eps, x, rtol=1e-4, atol=1e-4)
    inside = raw_x0.abs() <= 1
    torch.testing.assert_close(eps[inside], raw_eps[inside])
    with pytest.raises(ValueError, match="lo, hi"):
        fid.ClippedX0(model, 1.0, -1.0)
