"""Helpers shared by the unit tests of the core of utils/ (imported by tests/conftest.py and
the test modules; not a test module itself)."""
import torch

from utils import gmm, schedules
from utils.metrics import sliced_wasserstein

ALL_SCHEDULES = [schedules.VPLinear(), schedules.VPCosine(), schedules.VE(), schedules.LinearPath(),
                 schedules.EDM()]
SCHEDULE_IDS = [s.name for s in ALL_SCHEDULES]


def full_cov_mixture():
    """Three 2D components with full, non-isotropic covariances, unequal weights, two classes."""
    means = torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], dtype=torch.float64)
    covs = torch.tensor([[[0.30, 0.12], [0.12, 0.10]],
                         [[0.05, -0.02], [-0.02, 0.20]],
                         [[0.15, 0.05], [0.05, 0.08]]], dtype=torch.float64)
    return gmm.GaussianMixture(means, covs, weights=[0.5, 0.3, 0.2], labels=[0, 1, 1])


def sw64(x, y):
    """Sliced Wasserstein with 64 directions: enough for 2D, and cheap on a shared CPU."""
    return sliced_wasserstein(x, y, n_projections=64)


def assert_moments(x, mean, cov, k=6.0):
    """Sample mean and covariance of x within k Monte-Carlo standard errors of (mean, cov)."""
    n = x.shape[0]
    d = cov.diagonal()
    assert ((x.mean(0) - mean).abs() < k * (d / n).sqrt()).all(), (x.mean(0), mean)
    se_cov = ((d[:, None] * d[None, :] + cov ** 2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() < k * se_cov).all(), (torch.cov(x.T), cov)
