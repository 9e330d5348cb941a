"""utils.sde: Euler-Maruyama, the OU law, fitted orders, the 1D Fokker-Planck solver and the
Girsanov log-ratio, checked against closed forms (App. A-C)."""
import math

import pytest
import torch

from utils import sde


def test_coarsened_increments_keep_the_path():
    g = torch.Generator().manual_seed(0)
    dW = sde.brownian_increments(50, 16, 1 / 16, g)
    torch.testing.assert_close(sde.coarsen_increments(dW, 4).sum(1), dW.sum(1))
    assert sde.coarsen_increments(dW, 4).shape == (50, 4)
    with pytest.raises(ValueError):
        sde.coarsen_increments(dW, 5)


def test_brownian_increment_variance():
    dW = sde.brownian_increments(200_000, 2, 0.25, torch.Generator().manual_seed(1))
    assert abs(dW.var().item() - 0.25) < 0.005


def test_euler_maruyama_without_noise_is_euler():
    dW = torch.zeros(3, 10, dtype=torch.float64)
    x = sde.euler_maruyama(lambda x, t: -x, lambda x, t: 1.0, 1.0, 0.0, 1.0, dW)
    torch.testing.assert_close(x, torch.full((3,), 0.9 ** 10, dtype=torch.float64))
    path = sde.euler_maruyama(lambda x, t: -x, lambda x, t: 1.0, 1.0, 0.0, 1.0, dW, keep_path=True)
    assert path.shape == (11, 3)


def test_euler_maruyama_ou_law():
    g = torch.Generator().manual_seed(2)
    n = 64
    x = sde.euler_maruyama(lambda x, t: -x, lambda x, t: 0.5, 1.5, 0.0, 1.0, sde.brownian_increments(100_000, n, 1 / n, g))
    mean, std = sde.ou_mean_std(1.5, 1.0, 0.5, 1.0)
    assert abs(x.mean() - mean) < 0.02 and abs(x.std() - std) < 0.02


def test_ou_mean_std_limits():
    mean, std = sde.ou_mean_std(3.0, 2.0, 1.0, 50.0)
    assert abs(mean) < 1e-12 and abs(std - math.sqrt(1 / 4)) < 1e-12
    with pytest.raises(ValueError):
        sde.ou_mean_std(1.0, -1.0, 1.0, 1.0)


def test_fitted_order_recovers_a_power_law():
    hs = [0.1, 0.05, 0.025, 0.0125]
    assert abs(sde.fitted_order(hs, [3 * h ** 2.5 for h in hs]) - 2.5) < 1e-12
    with pytest.raises(ValueError):
        sde.fitted_order([0.1], [0.2])
    with pytest.raises(ValueError):
        sde.fitted_order([0.1, 0.2], [0.0, 1.0])


def test_fokker_planck_ou_matches_gaussian():
    """OU from N(1, 0.3^2): the grid density stays Gaussian with the OU mean and variance."""
    x = torch.linspace(-5, 5, 401, dtype=torch.float64)
    m0, s0, theta, g, T = 1.0, 0.3, 1.0, 1.0, 0.5
    gauss = lambda m, s: torch.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    p = sde.fokker_planck_1d(gauss(m0, s0), x, lambda x, t: -theta * x, g, 0.0, T, 2000)
    m = m0 * math.exp(-theta * T)
    var = s0 ** 2 * math.exp(-2 * theta * T) + g ** 2 * (1 - math.exp(-2 * theta * T)) / (2 * theta)
    assert (p - gauss(m, math.sqrt(var))).abs().max() < 2e-3
    assert abs(float(p.sum() * (x[1] - x[0])) - 1) < 1e-10            # mass is conserved
    with pytest.raises(ValueError):
        sde.fokker_planck_1d(gauss(m0, s0), x, lambda x, t: -x, 1.0, 0.0, 1.0, 10)


def test_girsanov_log_ratio_closed_form():
    """Constant drifts mu vs 0: log dP/dQ = mu (X_T - X_0) / g^2 - mu^2 T / (2 g^2), exactly."""
    g_ = torch.Generator().manual_seed(3)
    dW = sde.brownian_increments(10, 20, 1 / 20, g_)
    path = sde.euler_maruyama(lambda x, t: 0.0 * x, lambda x, t: 0.7, 0.0, 0.0, 1.0, dW, keep_path=True)
    mu, g = 0.4, 0.7
    lr = sde.girsanov_log_ratio(path, 0.0, 1.0, lambda x, t: mu + 0 * x, lambda x, t: 0 * x, g)
    torch.testing.assert_close(lr, mu * (path[-1] - path[0]) / g ** 2 - mu ** 2 / (2 * g ** 2))
