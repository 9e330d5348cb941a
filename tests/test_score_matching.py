"""Identities of the score-matching objectives, checked against the exact Gaussian-mixture oracle."""
import math

import pytest
import torch

from utils import data, score_matching as sm
from utils.gmm import GaussianMixture

F64 = torch.float64


def _linear(A, b):
    A, b = torch.as_tensor(A, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return lambda x: x @ A.T + b


def _mlp(seed):
    g = torch.Generator().manual_seed(seed)
    W1 = 0.7 * torch.randn(2, 16, generator=g, dtype=torch.float64)
    W2 = 0.7 * torch.randn(16, 2, generator=g, dtype=torch.float64)
    return lambda x: torch.tanh(x @ W1) @ W2 - 0.5 * x


MIX = data.toy_gmm("two_modes")


def _per_sample_ism(score_fn, x):
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    tr = sum(torch.autograd.grad(s[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1]))
    return (tr + 0.5 * (s ** 2).sum(1)).detach()


def test_trace_of_linear_map_is_exact():
    A = torch.tensor([[1.5, -2.0], [0.3, -0.25]], dtype=F64)
    x = torch.randn(7, 2, dtype=F64)
    tr = sm.jacobian_trace(_linear(A, [1.0, 2.0]), x)
    torch.testing.assert_close(tr, torch.full((7,), 1.25, dtype=F64))


def test_implicit_minus_explicit_is_model_independent():
    """J_ESM - J_ISM = 1/2 E||grad log p||^2 for every model (integration by parts)."""
    g = torch.Generator().manual_seed(0)
    x, _ = MIX.sample(100_000, g)
    true = MIX.score(x)
    const = 0.5 * (true ** 2).sum(1)
    for model in (_linear([[-1.0, 0.2], [0.0, -0.5]], [0.3, 0.0]), _mlp(1)):
        x_ = x.detach().requires_grad_(True)
        esm_i = 0.5 * ((model(x_) - true) ** 2).sum(1).detach()
        diff = esm_i - _per_sample_ism(model, x) - const  # mean zero, per-sample noise
        se = diff.std() / math.sqrt(len(diff))
        assert abs(diff.mean()) < 5 * se, (float(diff.mean()), float(se))
        # and the library's scalars agree with the per-sample computation
        torch.testing.assert_close(sm.explicit_score_matching(model, x, MIX.score), esm_i.mean())
        torch.testing.assert_close(sm.implicit_score_matching(model, x), _per_sample_ism(model, x).mean())


def test_sliced_expectation_is_implicit():
    g = torch.Generator().manual_seed(1)
    x, _ = MIX.sample(2000, g)
    model = _mlp(2)
    ism = sm.implicit_score_matching(model, x).item()
    for projection in ("rademacher", "gaussian"):
        vals = torch.tensor([sm.sliced_score_matching(model, x, projection=projection, generator=g).item()
                             for _ in range(200)])
        assert abs(vals.mean() - ism) < 5 * vals.std() / math.sqrt(len(vals)) + 1e-9
        vr = torch.tensor([sm.sliced_score_matching(model, x, projection=projection, generator=g,
                                                         variance_reduced=True).item() for _ in range(200)])
        assert abs(vr.mean() - ism) < 5 * vr.std() / math.sqrt(len(vr)) + 1e-9


def test_dsm_minimiser_is_the_oracle_score():
    """J_DSM(s) - J_DSM(oracle) = 1/2 E||s - grad log p_sigma||^2 >= 0 (same x, same eps)."""
    sigma = 0.5
    p_sigma = GaussianMixture(MIX.means, MIX.covs + sigma ** 2 * torch.eye(2, dtype=F64), MIX.weights)
    g = torch.Generator().manual_seed(2)
    x, _ = MIX.sample(200_000, g)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    xt = x + sigma * eps
    oracle = p_sigma.score(xt)
    for shift in (_linear([[0.1, 0.0], [0.0, -0.2]], [0.2, 0.1]), _mlp(3)):
        per_oracle = 0.5 * ((oracle + eps / sigma) ** 2).sum(1)
        per_model = 0.5 * ((oracle + shift(xt) + eps / sigma) ** 2).sum(1)
        gap = per_model - per_oracle - 0.5 * (shift(xt) ** 2).sum(1)
        assert abs(gap.mean()) < 5 * gap.std() / math.sqrt(len(gap))
        assert per_model.mean() > per_oracle.mean()
    # the library's DSM with the same generator draws the same eps
    val = sm.denoising_score_matching(lambda z: p_sigma.score(z), x[:1000], sigma,
                                      generator=torch.Generator().manual_seed(3))
    e = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(val, 0.5 * ((p_sigma.score(x[:1000] + sigma * e) + e / sigma) ** 2).sum(1).mean())


def test_objectives_are_differentiable():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(16, 2)
    for loss in (sm.implicit_score_matching(net, x), sm.sliced_score_matching(net, x),
                 sm.denoising_score_matching(net, x, 0.3)):
        net.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_bad_input_raises():
    f = _linear(torch.eye(2, dtype=F64), [0.0, 0.0])
    with pytest.raises(ValueError, match="x"):
        sm.implicit_score_matching(f, torch.randn(3, 2, 2, dtype=F64))
    with pytest.raises(ValueError, match="sigma"):
        sm.denoising_score_matching(f, torch.randn(3, 2, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="projection"):
        sm.sliced_score_matching(f, torch.randn(3, 2, dtype=F64), projection="uniform")
    with pytest.raises(ValueError, match="n_projections"):
        sm.sliced_score_matching(f, torch.randn(3, 2, dtype=F64), n_projections=0)
    with pytest.raises(ValueError, match="score_fn"):
        sm.implicit_score_matching(lambda x: x[:, :1], torch.randn(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="true_score"):
        sm.explicit_score_matching(f, torch.randn(3, 2, dtype=F64), torch.zeros(3, 3, dtype=F64))


def test_second_order_tweedie_on_a_gaussian_and_a_mixture():
    from utils import schedules
    # x0 ~ N(mu, tau^2 I): x0 | x_t is Gaussian with covariance tau^2 sigma^2 / (alpha^2 tau^2 + sigma^2) I
    mu, tau, alpha, sigma = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.7, 0.8, 0.6
    v = alpha ** 2 * tau ** 2 + sigma ** 2
    score = lambda x: -(x - alpha * mu) / v
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cov = sm.tweedie_covariance(score, x, alpha, sigma)
    exact = tau ** 2 * sigma ** 2 / v * torch.eye(2, dtype=torch.float64).expand(6, 2, 2)
    torch.testing.assert_close(cov, exact)
    mean, cov_mix = sm.mixture_posterior(GaussianMixture(mu[None], tau), x, alpha, sigma)
    torch.testing.assert_close(cov_mix, exact)
    torch.testing.assert_close(mean, sm.tweedie_mean(score, x, alpha, sigma))
    # a mixture under VPLinear: the Hessian of the oracle's log p_t gives the exact posterior covariance
    mix, vp = data.toy_gmm("8gaussians"), schedules.VPLinear()
    oracle = mix.denoiser(vp)
    for t in (0.1, 0.5):
        a, s = float(vp.alpha(t)), float(vp.sigma(t))
        cov_t = sm.tweedie_covariance(lambda z: oracle.score(z, t), 2 * x, a, s)
        mean_e, cov_e = sm.mixture_posterior(mix, 2 * x, a, s)
        torch.testing.assert_close(cov_t, cov_e, atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(mean_e, oracle.x0(2 * x, t))
    with pytest.raises(ValueError):
        sm.tweedie_covariance(score, x, 0.0, sigma)
    with pytest.raises(ValueError):
        sm.mixture_posterior(mix, torch.zeros(3, 3, dtype=torch.float64), 1.0, 0.5)
