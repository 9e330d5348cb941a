"""The exact Gaussian-mixture oracle against autograd, Tweedie, Monte Carlo and the forward SDE
(the exact oracle of utils.gmm)."""
import math

import pytest
import torch

from core_helpers import assert_moments, full_cov_mixture, sw64
from utils import data, metrics
from utils.gmm import GaussianMixture, MixtureDenoiser
from utils.schedules import LinearPath, VE, VPCosine, VPLinear

TIMES = [0.0, 0.05, 0.4, 0.9]


def _points(n=16, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 2, dtype=torch.float64, generator=g)


def _autograd_score(mixture, x, t, schedule, y=None):
    x = x.clone().requires_grad_(True)
    t_arg = None if t is None else t
    (grad,) = torch.autograd.grad(mixture.log_prob(x, t_arg, schedule if t is not None else None, y).sum(), x)
    return grad


@pytest.mark.parametrize("t", TIMES)
def test_score_is_gradient_of_log_prob(mixture, schedule, t):
    x = _points()
    torch.testing.assert_close(mixture.score(x, t, schedule), _autograd_score(mixture, x, t, schedule),
                               rtol=1e-9, atol=1e-9)


def test_score_is_gradient_of_log_prob_at_data_and_per_sample_times(mixture, schedule):
    x = _points(8)
    torch.testing.assert_close(mixture.score(x), _autograd_score(mixture, x, None, None), rtol=1e-9, atol=1e-9)
    t = torch.linspace(0.02, 0.98, 8, dtype=torch.float64)
    torch.testing.assert_close(mixture.score(x, t, schedule), _autograd_score(mixture, x, t, schedule),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("y", [0, 1])
def test_class_conditional_score_and_log_prob(mixture, y):
    sched = VPLinear()
    x = _points(10)
    for t in (0.1, 0.6):
        torch.testing.assert_close(mixture.score(x, t, sched, y=y), _autograd_score(mixture, x, t, sched, y),
                                   rtol=1e-9, atol=1e-9)
        # p(x | y) is the mixture of the components of class y, renormalised
        keep = mixture.labels == y
        sub = GaussianMixture(mixture.means[keep], mixture.covs[keep], mixture.weights[keep])
        torch.testing.assert_close(mixture.log_prob(x, t, sched, y=y), sub.log_prob(x, t, sched))
        torch.testing.assert_close(mixture.score(x, t, sched, y=torch.full((10,), y)), sub.score(x, t, sched))
    # Bayes: log p(x) = logsumexp_y log p(x|y) + log p(y)
    py = torch.stack([mixture.weights[mixture.labels == c].sum() for c in (0, 1)])
    lp = torch.stack([mixture.log_prob(x, 0.3, sched, y=c) for c in (0, 1)], 1)
    torch.testing.assert_close(torch.logsumexp(lp + py.log(), 1), mixture.log_prob(x, 0.3, sched))


def test_log_prob_integrates_to_one(mixture):
    u = torch.linspace(-6, 6, 301, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="xy")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    h = float(u[1] - u[0])
    for t in (None, 0.5):
        lp = mixture.log_prob(pts) if t is None else mixture.log_prob(pts, t, VPLinear())
        assert float(lp.exp().sum()) * h * h == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_marginal_matches_log_prob_at_t(mixture, schedule, t):
    x = _points()
    m = mixture.marginal(t, schedule)
    torch.testing.assert_close(m.log_prob(x), mixture.log_prob(x, t, schedule))
    torch.testing.assert_close(m.score(x), mixture.score(x, t, schedule))
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    torch.testing.assert_close(m.mean(), a * mixture.mean())
    torch.testing.assert_close(m.covariance(), a ** 2 * mixture.covariance() + s ** 2 * torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_oracle_targets_are_consistent(mixture, schedule, t):
    """Tweedie x0 = (x + sigma^2 score)/alpha, eps = -sigma score, v = alpha' x0 + sigma' eps."""
    oracle = mixture.denoiser(schedule)
    assert isinstance(oracle, MixtureDenoiser)
    x = _points()
    a, s, da, ds = (float(c) for c in schedule.coefficients(t))
    score = oracle.score(x, t)
    torch.testing.assert_close(score, mixture.score(x, t, schedule))
    x0, eps = oracle.x0(x, t), oracle.eps(x, t)
    torch.testing.assert_close(x0, (x + s ** 2 * score) / a, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps, -s * score, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(oracle.velocity(x, t), da * x0 + ds * eps, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(oracle(x, t), x0)
    torch.testing.assert_close(oracle.log_prob(x, t), mixture.log_prob(x, t, schedule))
    # x = alpha x0_hat + sigma eps_hat holds for posterior means too
    torch.testing.assert_close(a * x0 + s * eps, x, rtol=1e-9, atol=1e-9)


def test_oracle_at_t0_is_identity_and_keeps_dtype(mixture):
    oracle = mixture.denoiser(VPLinear())
    x = _points(5)
    torch.testing.assert_close(oracle.x0(x, 0.0), x)
    torch.testing.assert_close(oracle.score(x, 0.0), mixture.score(x))
    assert oracle.velocity(x.float(), 0.5).dtype == torch.float32


@pytest.mark.parametrize("y", [None, 1])
def test_x0_is_the_monte_carlo_posterior_mean(mixture, y):
    """E[x0 | x_t = x] by importance weights w_i = N(x; alpha x0_i, sigma^2 I), x0_i ~ p_0(.|y)."""
    sched = VPLinear()
    t, n = 0.3, 200_000
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    x0s, _ = mixture.sample(n, torch.Generator().manual_seed(0), y=y)
    x = torch.tensor([[0.2, 0.3]], dtype=torch.float64)
    logw = -((x - a * x0s) ** 2).sum(1) / (2 * s ** 2)
    w = torch.softmax(logw, 0)
    mc = (w[:, None] * x0s).sum(0)
    ess = 1 / float((w ** 2).sum())
    spread = ((w[:, None] * (x0s - mc) ** 2).sum(0)).sqrt()
    exact = mixture.denoiser(sched).x0(x, t, y)[0]
    assert ess > 1000
    assert ((mc - exact).abs() < 5 * spread / math.sqrt(ess) + 1e-3).all(), (mc, exact)


def test_sampling_moments_and_reproducibility(mixture):
    n = 40_000
    x, lab = mixture.sample(n, torch.Generator().manual_seed(1))
    assert x.shape == (n, 2) and x.dtype == torch.float64 and lab.shape == (n,)
    x2, lab2 = mixture.sample(n, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and torch.equal(lab, lab2)
    assert_moments(x, mixture.mean(), mixture.covariance())
    # component weights by class: labels [0, 1, 1] with weights [0.5, 0.3, 0.2]
    assert float((lab == 0).double().mean()) == pytest.approx(0.5, abs=0.02)
    xy, laby = mixture.sample(2000, torch.Generator().manual_seed(2), y=1)
    assert (laby == 1).all()
    sched = LinearPath()
    xt, _ = mixture.sample(n, torch.Generator().manual_seed(3), t=0.5, schedule=sched)
    m = mixture.marginal(0.5, sched)
    assert_moments(xt, m.mean(), m.covariance())


@pytest.mark.parametrize("schedule_, t_end", [(VPLinear(), 0.5), (VE(sigma_max=5.0), 0.75)], ids=["vp_linear", "ve"])
def test_forward_sde_reproduces_the_marginal(schedule_, t_end):
    """Euler-Maruyama on dx = f x dt + g dW from p_0 lands on the oracle's p_t (Ch. 4)."""
    mixture = data.toy_gmm("8gaussians")
    n_steps, n = 200, 8000
    g = torch.Generator().manual_seed(5)
    x, _ = mixture.sample(n, g)
    ts = torch.linspace(0.0, t_end, n_steps + 1, dtype=torch.float64)
    for i in range(n_steps):
        t, dt = float(ts[i]), float(ts[i + 1] - ts[i])
        f, g2 = float(schedule_.f(t)), float(schedule_.g2(t))
        x = x + f * x * dt + math.sqrt(g2 * dt) * torch.randn(x.shape, dtype=x.dtype, generator=g)
    m = mixture.marginal(t_end, schedule_)
    assert_moments(x, m.mean(), m.covariance())
    cmp = metrics.compare_to_floor(x, m.sample, metric=sw64, repeats=10)
    assert cmp.ratio < 1.3, str(cmp)
    # and it is far from the data distribution itself
    assert metrics.compare_to_floor(x, mixture.sample, metric=sw64, repeats=10).ratio > 3


# --- bad inputs ---------------------------------------------------------------------------------

def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="means has shape"):
        GaussianMixture([0.0, 1.0])
    with pytest.raises(ValueError, match="covs has shape"):
        GaussianMixture([[0.0, 1.0]], torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="covs has shape"):
        GaussianMixture([[0.0, 1.0], [1.0, 0.0]], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="covs has non-positive"):
        GaussianMixture([[0.0, 1.0]], -0.1)
    with pytest.raises(ValueError, match="covs are not symmetric positive definite"):
        GaussianMixture([[0.0, 1.0]], torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0, 1.0], [1.0, 0.0]], 0.1, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="labels has shape"):
        GaussianMixture([[0.0, 1.0], [1.0, 0.0]], 0.1, labels=[0])


def test_bad_call_arguments(mixture):
    with pytest.raises(ValueError, match="x has shape"):
        mixture.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x has shape"):
        mixture.score(torch.zeros(4))
    with pytest.raises(ValueError, match="schedule is None"):
        mixture.log_prob(torch.zeros(4, 2), 0.5)
    with pytest.raises(ValueError, match="schedule is None"):
        mixture.sample(4, t=0.5)
    with pytest.raises(ValueError, match="t has values"):
        mixture.score(torch.zeros(4, 2), 1.5, VPCosine())  # the cosine schedule ends at t = 1
    with pytest.raises(ValueError, match="y has labels outside"):
        mixture.score(torch.zeros(4, 2), 0.5, VPLinear(), y=2)
    with pytest.raises(ValueError, match="y has shape"):
        mixture.score(torch.zeros(4, 2), 0.5, VPLinear(), y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n="):
        mixture.sample(0)
