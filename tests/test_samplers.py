"""Samplers driven by the exact oracle: they turn N(0, sigma_1^2 I) into the data mixture, the
PF-ODE solvers converge at their orders, and Langevin targets its density (Ch. 2-4)."""
import math

import numpy as np
import pytest
import torch

from core_helpers import assert_moments, full_cov_mixture, sw64
from utils import metrics, samplers
from utils.gmm import GaussianMixture
from utils.samplers import Recorder
from utils.schedules import LinearPath, VPCosine, VPLinear, uniform_grid
from utils.targets import Denoiser, Model

N = 8000
MIX = full_cov_mixture()


def _prior(schedule, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return samplers.sample_prior(schedule, (n, 2), generator=g, dtype=torch.float64), g


def _ratio(x, mixture=MIX):
    cmp = metrics.compare_to_floor(x, mixture.sample, metric=sw64, repeats=10)
    return cmp.ratio, str(cmp)


@pytest.mark.parametrize("schedule, grid", [(VPLinear(), uniform_grid(20)), (LinearPath(), uniform_grid(12))],
                         ids=["vp_linear", "linear"])
def test_pf_ode_heun_reaches_the_data(schedule, grid):
    x, _ = _prior(schedule)
    out = samplers.sample_heun(MIX.denoiser(schedule), x, grid)
    ratio, msg = _ratio(out)
    assert ratio < 1.3, msg


@pytest.mark.parametrize("schedule, grid", [(VPLinear(), uniform_grid(60, 1.0, 1e-3)),
                                            (LinearPath(), uniform_grid(60, 0.999, 1e-3))],
                         ids=["vp_linear", "linear"])
def test_reverse_sde_reaches_the_data(schedule, grid):
    x, g = _prior(schedule)
    out = samplers.sample_euler_maruyama(MIX.denoiser(schedule), x, grid, generator=g)
    ratio, msg = _ratio(out)
    assert ratio < 1.3, msg
    assert_moments(out, MIX.mean(), MIX.covariance(), k=8.0)


def test_ancestral_and_predictor_corrector_reach_the_data():
    """Within 1.5x the floor (n = 4000, 50 steps on the VP-linear schedule)."""
    sched = VPLinear()
    oracle = MIX.denoiser(sched)
    grid = uniform_grid(50, 1.0, 1e-3)
    for seed, fn in enumerate((samplers.sample_ancestral, samplers.sample_predictor_corrector)):
        x, g = _prior(sched, 4000, seed=seed + 1)
        out = fn(oracle, x, grid, generator=g)
        ratio, msg = _ratio(out)
        assert ratio < 1.5, f"{fn.__name__}: {msg}"
        assert_moments(out, MIX.mean(), MIX.covariance(), k=8.0)


def test_class_conditional_sampling_reaches_the_class():
    sched = LinearPath()
    x, _ = _prior(sched, 2000)
    out = samplers.sample_heun(MIX.denoiser(sched), x, uniform_grid(12), y=1)
    keep = MIX.labels == 1
    sub = GaussianMixture(MIX.means[keep], MIX.covs[keep], MIX.weights[keep])
    assert_moments(out, sub.mean(), sub.covariance(), k=8.0)


def test_pf_ode_convergence_orders():
    """Error at t = 0.05 against a fine RK4 solution falls as n^-1, n^-2, n^-4."""
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.5, 0.4])
    sched = LinearPath()
    oracle = mix.denoiser(sched)
    x1, _ = _prior(sched, 64)
    t_lo = 0.05
    ref = samplers.sample_rk4(oracle, x1, uniform_grid(128, 1.0, t_lo))
    for fn, steps, order, tol in [(samplers.sample_euler, [8, 16, 32, 64], 1, 0.2),
                                  (samplers.sample_heun, [8, 16, 32, 64], 2, 0.25),
                                  (samplers.sample_rk4, [4, 8, 16, 32], 4, 0.6)]:
        errs = [float((fn(oracle, x1, uniform_grid(n, 1.0, t_lo)) - ref).abs().max()) for n in steps]
        slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
        assert abs(slope - order) < tol, f"{fn.__name__}: slope {slope:.2f}, expected {order} (errors {errs})"


def test_langevin_targets_a_gaussian():
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    P = torch.linalg.inv(cov)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, dtype=torch.float64, generator=g) * 3
    out = samplers.sample_langevin(lambda z: -(z - mean) @ P, x, step_size=0.01, n_steps=600, generator=g)
    # discretisation bias of ULA is O(step): allow a few percent on the covariance
    assert_moments(out, mean, cov, k=8.0)


def test_annealed_langevin_reaches_the_data():
    sched = VPLinear()
    grid = uniform_grid(10, 1.0, 0.02)
    x, g = _prior(sched, 2000)
    out = samplers.sample_annealed_langevin(MIX.denoiser(sched), x, grid, n_inner=10, step_size=2e-3,
                                            generator=g)
    ratio, msg = _ratio(out)
    assert ratio < 2.0, msg


def test_recorder_and_callbacks():
    sched = VPLinear()
    oracle = MIX.denoiser(sched)
    x, g = _prior(sched, 5)
    grid = uniform_grid(4)
    rec = Recorder(x0_too=True)
    out = samplers.sample_ancestral(oracle, x, grid, generator=g, callback=rec)
    assert rec.xs.shape == (5, 5, 2) and rec.x0s.shape == (4, 5, 2)
    torch.testing.assert_close(rec.ts, grid)
    torch.testing.assert_close(rec.xs[-1], out)
    infos = []
    samplers.sample_euler(oracle, x, grid, callback=infos.append)
    assert [i["i"] for i in infos] == [0, 1, 2, 3] and set(infos[0]) == {"i", "t", "x", "x0"}
    with pytest.raises(ValueError, match="Recorder.start"):
        Recorder()({"x": x, "t": 0.5})


def test_sample_prior():
    x = samplers.sample_prior(VPLinear(), (3, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 4, 4) and x.dtype == torch.float32
    from utils.schedules import VE
    big = samplers.sample_prior(VE(sigma_max=50.0), (20000, 1), generator=torch.Generator().manual_seed(0))
    assert float(big.std()) == pytest.approx(50.0, rel=0.03)


# --- bad inputs ---------------------------------------------------------------------------------

def test_bad_inputs():
    sched = VPLinear()
    oracle = MIX.denoiser(sched)
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="grid runs from"):
        samplers.sample_euler(oracle, x, torch.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="grid runs from"):
        samplers.sample_heun(oracle, x, torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="grid runs from"):  # the cosine schedule ends at t = 1
        samplers.sample_heun(MIX.denoiser(VPCosine()), x, torch.tensor([1.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="grid has shape"):
        samplers.sample_rk4(oracle, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="model has type"):
        samplers.sample_euler(lambda x, t: x, x, uniform_grid(4))
    with pytest.raises(ValueError, match="x has type"):
        samplers.sample_euler(oracle, [[0.0, 0.0]], uniform_grid(4))
    with pytest.raises(ValueError, match="singular"):
        samplers.sample_euler_maruyama(MIX.denoiser(VPCosine()), x, uniform_grid(4))
    with pytest.raises(ValueError, match="step_size"):
        samplers.sample_langevin(lambda z: -z, x, step_size=0.0, n_steps=3)
    with pytest.raises(ValueError, match="n_steps"):
        samplers.sample_langevin(lambda z: -z, x, step_size=0.1, n_steps=0)
    with pytest.raises(ValueError, match="n_inner"):
        samplers.sample_annealed_langevin(oracle, x, uniform_grid(4), n_inner=0)
    with pytest.raises(ValueError, match="snr"):
        samplers.sample_predictor_corrector(oracle, x, uniform_grid(4), snr=-1.0)
    with pytest.raises(ValueError, match="shape=4"):
        samplers.sample_prior(sched, 4)
    assert isinstance(oracle, Model)
