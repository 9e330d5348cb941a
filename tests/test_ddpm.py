"""Tests of utils.ddpm: closed forms against independent computations (Bayes on Gaussians,
Monte Carlo, the continuous VPLinear schedule, samplers.sample_ancestral)."""
import math

import pytest
import torch

from utils import data, ddpm, samplers, schedules


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_ho_linear_betas_and_conventions():
    chain = ddpm.DDPMChain.linear(1000)
    # DDPM's published range, from VPLinear's defaults
    torch.testing.assert_close(chain.beta[1], torch.tensor(1e-4, dtype=torch.float64))
    torch.testing.assert_close(chain.beta[-1], torch.tensor(0.02, dtype=torch.float64))
    assert chain.alpha_bar[0] == 1 and (chain.alpha_bar[1:] < chain.alpha_bar[:-1]).all()
    # monograph's b_i (a standard deviation) squared is Ho's beta_i (a variance)
    b = ddpm.to_monograph_betas(chain.beta[1:])
    torch.testing.assert_close(ddpm.to_ho_betas(b), chain.beta[1:])
    torch.testing.assert_close(ddpm.DDPMChain(ddpm.to_ho_betas(b)).alpha_bar, chain.alpha_bar)


def test_monograph_alpha_bar_is_the_square_root_of_ho():
    chain = ddpm.DDPMChain.linear(200)
    b = ddpm.to_monograph_betas(chain.beta[1:])
    ab_mono = ddpm.monograph_alpha_bar(b)
    torch.testing.assert_close(ab_mono, chain.alpha_bar.sqrt())
    # the monograph's marginal N(ab x0, (1 - ab^2) I) is Ho's N(sqrt(ab_Ho) x0, (1 - ab_Ho) I)
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    mean, var = chain.marginal(x0, 120)
    torch.testing.assert_close(mean, ab_mono[120] * x0)
    torch.testing.assert_close(var.squeeze(), 1 - ab_mono[120] ** 2)
    with pytest.raises(ValueError):
        ddpm.monograph_alpha_bar(torch.tensor([0.5, 1.2]))


def test_alpha_bar_converges_to_vplinear_at_rate_one_over_n():
    vp = schedules.VPLinear()
    errs = []
    for n in (100, 1000, 10000):
        chain = ddpm.DDPMChain.linear(n)
        errs.append(float((chain.alpha_bar - vp.alpha(chain.t) ** 2).abs().max()))
    slope = math.log(errs[-1] / errs[0]) / math.log(100)
    assert -1.15 < slope < -0.85, (errs, slope)
    # the matched continuous time (same noise level) is i/N up to O(1/N)
    chain = ddpm.DDPMChain.linear(1000)
    ab = chain.alpha_bar[1:-10]
    t_star = vp.t_from_log_snr(0.5 * torch.log(ab / (1 - ab)))
    assert (t_star - chain.t[1:-10]).abs().max() < 5 / 1000


def test_from_schedule_is_exact_on_the_grid():
    vp = schedules.VPLinear()
    chain = ddpm.DDPMChain.from_schedule(vp, 50)
    torch.testing.assert_close(chain.alpha_bar, vp.alpha(chain.t) ** 2)
    sched = chain.schedule()
    torch.testing.assert_close(sched.alpha(chain.t) ** 2, chain.alpha_bar)
    torch.testing.assert_close(sched.alpha(chain.t) ** 2 + sched.sigma(chain.t) ** 2,
                               torch.ones(51, dtype=torch.float64))
    # d_alpha is the derivative of alpha between grid points (it jumps at t_i = i/N)
    t = torch.tensor([0.013, 0.507, 0.871], dtype=torch.float64)
    h = 1e-7
    fd = (sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(sched.d_alpha(t), fd, rtol=1e-5, atol=1e-8)


def test_marginal_matches_simulating_the_chain():
    chain = ddpm.DDPMChain.linear(40)
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(40000, 2)
    x = x0.clone()
    g = gen(1)
    for i in range(1, 21):
        x = chain.forward_step(x, i, g)
    mean, var = chain.marginal(x0[:1], 20)
    se_mean = math.sqrt(float(var) / x.shape[0])
    assert (x.mean(0) - mean[0]).abs().max() < 5 * se_mean
    se_var = float(var) * math.sqrt(2 / x.shape[0])
    assert (x.var(0) - var).abs().max() < 5 * se_var


def test_posterior_is_bayes_on_gaussians():
    """q(x_{i-1} | x_i, x_0) by conditioning the joint Gaussian (x_{i-1}, x_i) given x_0."""
    chain = ddpm.DDPMChain.linear(30)
    g = gen(2)
    x0 = torch.randn(16, 3, dtype=torch.float64, generator=g)
    i = torch.randint(2, 31, (16,), generator=g)
    x_i = torch.randn(16, 3, dtype=torch.float64, generator=g)
    mean, var = chain.posterior(x_i, x0, i)
    # joint: x_{i-1} ~ N(m1, v1), x_i = sqrt(a) x_{i-1} + sqrt(b) z
    ab_prev = torch.cumprod(1 - chain.beta[1:], 0)[i - 2][:, None]
    b = chain.beta[i][:, None]
    m1, v1 = ab_prev.sqrt() * x0, 1 - ab_prev
    m2, v2, c12 = (1 - b).sqrt() * m1, (1 - b) * v1 + b, (1 - b).sqrt() * v1
    torch.testing.assert_close(mean, m1 + c12 / v2 * (x_i - m2))
    torch.testing.assert_close(var.expand_as(mean), (v1 - c12 ** 2 / v2).expand_as(mean))
    # i = 1: the posterior is a point mass at x_0
    mean1, var1 = chain.posterior(x_i, x0, 1)
    torch.testing.assert_close(mean1, x0)
    assert float(var1) == 0.0


def test_gaussian_kl_matches_monte_carlo():
    g = gen(3)
    m1, m2 = torch.tensor([[0.3, -1.0]]), torch.tensor([[1.0, 0.5]])
    v1, v2 = 0.4, 1.7
    kl = float(ddpm.gaussian_kl(m1.double(), v1, m2.double(), v2))
    x = m1.double() + math.sqrt(v1) * torch.randn(200000, 2, dtype=torch.float64, generator=g)
    mc = (ddpm.gaussian_nll(x, m2.double(), v2) - ddpm.gaussian_nll(x, m1.double(), v1))
    assert abs(float(mc.mean()) - kl) < 5 * float(mc.std()) / math.sqrt(len(mc))
    assert float(ddpm.gaussian_kl(m1.double(), v1, m1.double(), v1)) == 0.0


def test_sample_ddpm_equals_sample_ancestral_on_the_grid():
    chain = ddpm.DDPMChain.linear(25)
    oracle = data.toy_gmm("8gaussians").denoiser(chain.schedule())
    x = torch.randn(64, 2, dtype=torch.float64, generator=gen(4))
    rec = samplers.Recorder()
    a = ddpm.sample_ddpm(oracle, x, chain, generator=gen(5), callback=rec)
    b = samplers.sample_ancestral(oracle, x, schedules.uniform_grid(25), generator=gen(5))
    torch.testing.assert_close(a, b)
    assert rec.xs.shape == (26, 64, 2) and rec.ts[-1] == 0.0
    # the same under VPLinear itself, with the chain built from it
    vp = schedules.VPLinear()
    chain = ddpm.DDPMChain.from_schedule(vp, 25)
    oracle = data.toy_gmm("8gaussians").denoiser(vp)
    grid = schedules.uniform_grid(25)
    a = ddpm.sample_ddpm(oracle, x, chain, generator=gen(6))
    b = samplers.sample_ancestral(oracle, x, grid, generator=gen(6))
    torch.testing.assert_close(a, b)
    # an eps-net callable gives the same as its Denoiser wrapper
    net = lambda x, t: oracle.eps(x, t)
    torch.testing.assert_close(ddpm.sample_ddpm(net, x, chain, generator=gen(7)),
                               ddpm.sample_ddpm(oracle, x, chain, generator=gen(7)))


def test_elbo_bounds_the_exact_nll_and_l_simple_weights():
    chain = ddpm.DDPMChain.linear(40)
    mix = data.toy_gmm("two_modes")
    oracle = mix.denoiser(chain.schedule())
    x0, _ = mix.sample(3000, gen(8))
    terms = ddpm.elbo_terms(oracle, chain, x0, gen(9))
    assert terms.shape == (3000, 41) and (terms[:, 1:] >= 0).all()
    neg_elbo = terms.sum(1)
    nll = -mix.log_prob(x0)
    gap = neg_elbo - nll
    assert float(gap.mean()) > -3 * float(gap.std()) / math.sqrt(len(gap)), float(gap.mean())
    # L_{i-1} = beta_i^2 / (2 beta~_i alpha_i (1 - alpha_bar_i)) ||eps - eps_hat||^2 (Ho eq. 12)
    i = 7
    x_i, eps = chain.sample_marginal(x0[:50], i, gen(10))
    eps_hat = torch.zeros_like(eps)
    mu = (x_i - chain.beta[i] / (1 - chain.alpha_bar[i]).sqrt() * eps_hat) / chain.alpha[i].sqrt()
    mq, vq = chain.posterior(x_i, x0[:50], i)
    kl = ddpm.gaussian_kl(mq, vq, mu, vq)
    w = chain.beta[i] ** 2 / (2 * vq * chain.alpha[i] * (1 - chain.alpha_bar[i]))
    torch.testing.assert_close(kl, w * ((eps - eps_hat) ** 2).sum(1))


def test_loss_simple_and_bad_inputs_raise():
    chain = ddpm.DDPMChain.linear(30)
    loss = ddpm.loss_simple(chain)
    x0 = torch.randn(32, 2, generator=gen(11))
    zero_net = lambda x, t: torch.zeros_like(x)
    assert 0.5 < float(loss(zero_net, x0, generator=gen(12))) < 2.0
    with pytest.raises(ValueError, match="betas"):
        ddpm.DDPMChain(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="i="):
        chain.marginal(x0, 31)
    with pytest.raises(ValueError, match="variance"):
        ddpm.sample_ddpm(zero_net, x0, chain, variance="big")
    with pytest.raises(ValueError, match="b has values"):
        ddpm.to_ho_betas(torch.tensor([0.5, 2.0]))
