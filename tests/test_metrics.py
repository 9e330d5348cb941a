"""Metrics and their data-vs-data noise floor."""
import pytest
import torch

from utils import metrics
from utils.data import toy_gmm
from utils.metrics import compare_to_floor, energy_distance, mmd, noise_floor, sliced_wasserstein

MIX = toy_gmm("8gaussians")


def _draw(n, seed):
    return MIX.sample(n, torch.Generator().manual_seed(seed))[0]


def test_distances_of_identical_sets_are_zero():
    x = _draw(300, 0)
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-9)
    # and of a permutation of the same set
    assert sliced_wasserstein(x, x[torch.randperm(300)]) == pytest.approx(0.0, abs=1e-12)


def test_distances_grow_with_a_shift():
    x, y = _draw(400, 0), _draw(400, 1)
    shift = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sw = [sliced_wasserstein(x, y + c * shift) for c in (0.0, 0.5, 1.0, 2.0)]
    ed = [energy_distance(x, y + c * shift) for c in (0.0, 0.5, 1.0, 2.0)]
    mm = [mmd(x, y + c * shift) for c in (0.0, 0.5, 1.0)]
    for vals in (sw, ed, mm):
        assert all(b > a for a, b in zip(vals, vals[1:])), vals
    # SW_2 of a pure translation by c is c * sqrt(E[(theta . e1)^2]) = c / sqrt(2) in 2D
    assert sliced_wasserstein(x, x + 2.0 * shift, n_projections=4096) == pytest.approx(2.0 / 2 ** 0.5, rel=0.03)


def test_sliced_wasserstein_unequal_sizes_and_shapes():
    x, y = _draw(300, 0), _draw(500, 1)
    assert 0 < sliced_wasserstein(x, y) < 0.5
    img = torch.randn(20, 1, 4, 4)
    assert sliced_wasserstein(img, img.flatten(1)) == pytest.approx(0.0, abs=1e-6)


def test_noise_floor_is_positive_and_shrinks_with_n():
    floors = [noise_floor(MIX.sample, n, repeats=8) for n in (100, 400, 1600)]
    assert floors[0] > floors[1] > floors[2] > 0
    # SW between empirical measures falls roughly like n^-1/2
    assert floors[0] / floors[2] == pytest.approx(4.0, rel=0.5)
    pool = _draw(5000, 3)
    assert noise_floor(pool, 200, metric="energy", repeats=5) > 0


def test_compare_to_floor_data_vs_data_and_wrong_distribution():
    good = compare_to_floor(_draw(4000, 7), MIX.sample, repeats=10)
    assert 0.7 < good.ratio < 1.3, str(good)
    assert good.n == 400 and good.repeats == 10 and "ratio" in str(good)
    wrong = compare_to_floor(1.5 * _draw(4000, 8), MIX.sample, repeats=10)
    assert wrong.ratio > 2.5, str(wrong)
    blob = compare_to_floor(torch.randn(4000, 2, dtype=torch.float64), MIX.sample, metric="mmd", repeats=10)
    assert blob.ratio > 3, str(blob)


def test_bad_inputs():
    x = _draw(10, 0)
    with pytest.raises(ValueError, match="features"):
        sliced_wasserstein(x, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, x, bandwidths=(0.0,))
    with pytest.raises(ValueError, match="metric='fid'"):
        noise_floor(MIX.sample, 10, metric="fid")
    with pytest.raises(ValueError, match="n="):
        noise_floor(MIX.sample, 1)
    with pytest.raises(ValueError, match="reference has 10 rows"):
        noise_floor(x, 20)
    with pytest.raises(ValueError, match="reference has type"):
        noise_floor([1, 2, 3], 2)
    with pytest.raises(ValueError, match="NaN"):
        compare_to_floor(torch.full((40, 2), float("nan")), MIX.sample, repeats=4)
    with pytest.raises(ValueError, match="len\\(samples\\) // repeats"):
        compare_to_floor(x, MIX.sample, repeats=10)
    with pytest.raises(ValueError, match="x has shape"):
        sliced_wasserstein(torch.zeros(5), x)
    assert set(metrics.METRICS) == {"sw", "energy", "mmd"}
