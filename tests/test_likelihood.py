"""Tests of utils.likelihood: the PF-ODE likelihood against the exact Gaussian-mixture oracle,
the convergence of the discretisation, the unbiasedness of Hutchinson's estimator, bad input."""
import math

import pytest
import torch

from utils import likelihood, nets, schedules, targets
from utils.likelihood import log_likelihood



def _points(mix, n=60, seed=0):
    return mix.sample(n, torch.Generator().manual_seed(seed))[0]


@pytest.mark.parametrize("sched", [schedules.VPLinear(), schedules.VE()], ids=["vp_linear", "ve"])
def test_exact_trace_matches_oracle_and_error_shrinks(sched, mixture):
    mix = mixture
    oracle = mix.denoiser(sched)
    x = _points(mix)
    t0 = sched.t_min
    exact = mix.log_prob(x, t0, sched)
    # the oracle's exact p_T as prior, so the only error left is the ODE discretisation
    prior = lambda xT: mix.log_prob(xT, 1.0, sched)
    errs = []
    for n in (12, 24, 48):
        grid = schedules.log_snr_grid(sched, n, 1.0, t0).flip(0)
        lp = log_likelihood(oracle, x, grid, method="heun", prior_log_prob=prior)
        errs.append(float((lp - exact).abs().mean()))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.05, errs
    # Heun is second order: doubling the steps should cut the error by well over 2
    assert errs[1] / errs[2] > 2.5, errs
    grid = schedules.log_snr_grid(sched, 48, 1.0, t0).flip(0)
    lp4 = log_likelihood(oracle, x, grid, method="rk4", prior_log_prob=prior)
    assert float((lp4 - exact).abs().mean()) < 0.2 * errs[2]


def test_default_gaussian_prior_and_terms(mixture):
    sched = schedules.VPLinear()
    mix = mixture
    x = _points(mix, 30)
    grid = schedules.log_snr_grid(sched, 32, 1.0, sched.t_min).flip(0)
    lp, prior, integral, xT = log_likelihood(mix.denoiser(sched), x, grid, method="heun", return_terms=True)
    torch.testing.assert_close(lp, prior + integral)
    assert xT.shape == x.shape
    # alpha_1 ~ 0.007 for VP linear, so N(0, sigma_1^2 I) is nearly the exact p_1
    assert float((lp - mix.log_prob(x, sched.t_min, sched)).abs().mean()) < 0.02


def test_divergence_of_linear_field():
    A = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 3.0, 0.5], [0.3, 0.0, -2.0]], dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    v = x @ A.T
    torch.testing.assert_close(likelihood.divergence_exact(v, x), torch.full((5,), 2.0, dtype=torch.float64))
    # Rademacher probes are exact for a diagonal Jacobian (z_i^2 = 1)
    D = torch.diag(torch.tensor([1.0, -4.0, 0.25], dtype=torch.float64))
    v = x @ D
    z = likelihood.draw_probes(x.shape, 3, "rademacher", torch.Generator().manual_seed(0), x.dtype)
    assert set(z.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(likelihood.divergence_hutchinson(v, x, z), torch.full((5,), -2.75, dtype=torch.float64))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe, mixture):
    """Rows of a batch get independent probes: replicate one point and average the estimates."""
    sched = schedules.VPLinear()
    mix = mixture
    oracle = mix.denoiser(sched)
    x = _points(mix, 2, seed=1)
    grid = schedules.log_snr_grid(sched, 4, 1.0, sched.t_min).flip(0)
    exact = log_likelihood(oracle, x, grid)
    n = 1500
    reps = x.repeat_interleave(n, 0)
    est = log_likelihood(oracle, reps, grid, trace="hutchinson", probe=probe,
                         generator=torch.Generator().manual_seed(3)).view(2, n)
    se = est.std(1) / math.sqrt(n)
    assert (est.std(1) > 1e-3).all()  # it is an estimator, not the exact trace in disguise
    assert ((est.mean(1) - exact).abs() < 4 * se).all(), (est.mean(1), exact, se)
    # more probes per row: the same mean, a smaller spread
    est4 = log_likelihood(oracle, reps[:400], grid, trace="hutchinson", n_probes=4, probe=probe,
                          generator=torch.Generator().manual_seed(4))
    assert est4.std() < est[0, :400].std()


def test_learned_model_exact_vs_hutchinson():
    torch.manual_seed(0)
    sched = schedules.VPLinear()
    model = targets.Denoiser(nets.MLP(2, 16, 1).eval(), "eps", sched)
    x = torch.randn(2, 2).repeat_interleave(800, 0)
    grid = schedules.uniform_grid(3, 1.0, sched.t_min).flip(0)
    exact = log_likelihood(model, x, grid, method="euler")
    assert exact.dtype == torch.float32 and torch.isfinite(exact).all()
    est = log_likelihood(model, x, grid, method="euler", trace="hutchinson",
                         generator=torch.Generator().manual_seed(0)).view(2, 800)
    se = est.std(1) / math.sqrt(800)
    assert ((est.mean(1) - exact.view(2, 800)[:, 0]).abs() < 4 * se + 1e-4).all()


def test_bits_per_dim():
    lp = torch.tensor([-3.0, 0.5])
    torch.testing.assert_close(likelihood.bits_per_dim(lp, 2), -lp / (2 * math.log(2)))
    torch.testing.assert_close(likelihood.bits_per_dim(lp, 2, scale=1 / 128), likelihood.bits_per_dim(lp, 2) + 7)


def test_bad_input_raises(mixture):
    sched = schedules.VPLinear()
    mix = mixture
    oracle = mix.denoiser(sched)
    x = _points(mix, 4)
    up = torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="grid"):
        log_likelihood(oracle, x, up.flip(0))            # noise to data
    with pytest.raises(ValueError, match="grid"):
        log_likelihood(oracle, x, torch.tensor([0.0, 0.5, 1.0]))   # sigma_0 = 0 for VP
    with pytest.raises(ValueError, match="grid"):
        log_likelihood(oracle, x, torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="grid"):
        log_likelihood(oracle, x, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="method"):
        log_likelihood(oracle, x, up, method="midpoint")
    with pytest.raises(ValueError, match="trace"):
        log_likelihood(oracle, x, up, trace="skilling")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(oracle, x, up, trace="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(oracle, x, up, trace="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="denoiser"):
        log_likelihood(lambda x, t: x, x, up)
    with pytest.raises(ValueError, match="x"):
        log_likelihood(oracle, x[0], up)
    with pytest.raises(ValueError, match="prior_log_prob"):
        log_likelihood(oracle, x, up, prior_log_prob=1.0)
    with pytest.raises(ValueError, match="dim"):
        likelihood.bits_per_dim(torch.zeros(2), 0)
    with pytest.raises(ValueError, match="scale"):
        likelihood.bits_per_dim(torch.zeros(2), 2, scale=-1.0)
