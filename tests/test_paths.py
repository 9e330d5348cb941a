"""Change of schedule and the continuity equation (utils.paths, monograph Ch. 6): the rescheduled
exact oracle of one schedule equals the exact oracle of the other, in all four targets and in
log-density; the two PF-ODEs carry the same trajectories; the oracle satisfies
dp/dt + div(p v) = 0 with second-order finite-difference error."""
import math

import pytest
import torch

from utils import gmm, samplers, schedules, targets
from utils.paths import ScheduleChange, continuity_residual, reschedule

SCHEDULES = [schedules.VPLinear(), schedules.VPCosine(), schedules.LinearPath(), schedules.VE(),
             schedules.EDM()]
IDS = [s.name for s in SCHEDULES]
T_CANDIDATES = torch.tensor([0.0, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98], dtype=torch.float64)


def _covered_times(old, new):
    """Times of ``new`` whose log-SNR the ``old`` schedule reaches."""
    lo, hi = (float(v) for v in old.log_snr(torch.tensor([1.0, 0.0], dtype=torch.float64)))
    lam = new.log_snr(T_CANDIDATES)
    return [float(t) for t, l in zip(T_CANDIDATES, lam) if lo <= float(l) <= hi]


def _points(mixture, t, schedule, n=64, seed=0):
    """Points where p_t has mass (and a few in the tails)."""
    g = torch.Generator().manual_seed(seed)
    x, _ = mixture.sample(n, g, t=t, schedule=schedule)
    return torch.cat([x, 3 * x[:8]])


@pytest.mark.parametrize("old", SCHEDULES, ids=IDS)
@pytest.mark.parametrize("new", SCHEDULES, ids=IDS)
def test_rescheduled_oracle_is_the_other_oracle(mixture, old, new):
    times = _covered_times(old, new)
    assert len(times) >= 3
    moved, exact = reschedule(mixture.denoiser(old), new), mixture.denoiser(new)
    for t in times:
        x = _points(mixture, t, new)
        for target in targets.TARGETS:
            if target == "x0" or float(new.sigma(t)) > 0 or target == "score":
                got, want = moved(x, t, target=target), exact(x, t, target=target)
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * (1 + want.abs().max()),
                                           msg=lambda m: f"{old.name}->{new.name} t={t} {target}: {m}")
        torch.testing.assert_close(moved.log_prob(x, t), exact.log_prob(x, t), rtol=1e-8, atol=1e-8)


def test_per_sample_times(mixture):
    old, new = schedules.VPLinear(), schedules.LinearPath()
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.9], dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64)
    moved, exact = reschedule(mixture.denoiser(old), new), mixture.denoiser(new)
    torch.testing.assert_close(moved.velocity(x, t), exact.velocity(x, t))
    torch.testing.assert_close(moved.eps(x.float(), t.float()), exact.eps(x, t).float(), rtol=1e-4, atol=1e-4)


def test_time_and_scale_match_log_snr_and_coefficients():
    old, new = schedules.VPCosine(), schedules.EDM()
    moved = ScheduleChange(targets.Denoiser(lambda x, t: x, "eps", old), new)
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    t_old, c = moved.time_and_scale(t)
    torch.testing.assert_close(old.log_snr(t_old), new.log_snr(t))
    torch.testing.assert_close(c * old.alpha(t_old), new.alpha(t))
    torch.testing.assert_close(c * old.sigma(t_old), new.sigma(t))


def test_network_predictions_carry_over():
    """eps and x0 of a net-based Denoiser are unchanged, read at (x / c, t_old)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    f = lambda x, t: net(torch.cat([x, t[:, None]], 1))
    old, new = schedules.VPLinear(), schedules.EDM()
    moved = reschedule(targets.Denoiser(f, "eps", old), new)
    x, t = torch.randn(10, 2, dtype=torch.float64), 0.4
    t_old, c = moved.time_and_scale(t)
    with torch.no_grad():
        want = f(x / c, t_old.expand(10))
        torch.testing.assert_close(moved.eps(x, t), want)
        x0_old = targets.convert(want, "eps", "x0", x / c, float(t_old), old)
        torch.testing.assert_close(moved.x0(x, t), x0_old)


def test_identity_change(mixture):
    s = schedules.VPLinear()
    x = torch.randn(20, 2, dtype=torch.float64)
    moved = reschedule(mixture.denoiser(s), s)
    torch.testing.assert_close(moved.velocity(x, 0.37), mixture.denoiser(s).velocity(x, 0.37))


def test_pf_ode_trajectories_correspond(mixture):
    """Integrating the old PF-ODE between the matched times equals the new one, rescaled."""
    old, new = schedules.VPLinear(), schedules.EDM()
    oracle_old = mixture.denoiser(old)
    moved = reschedule(oracle_old, new)
    t_hi, t_lo = 0.9, 0.05
    (to_hi, c_hi), (to_lo, c_lo) = moved.time_and_scale(t_hi), moved.time_and_scale(t_lo)
    x_new = mixture.sample(100, torch.Generator().manual_seed(1), t=t_hi, schedule=new)[0]
    grid_new = torch.linspace(t_hi, t_lo, 101, dtype=torch.float64)
    grid_old = torch.linspace(float(to_hi), float(to_lo), 101, dtype=torch.float64)
    end_new = samplers.sample_rk4(moved, x_new, grid_new)
    end_old = samplers.sample_rk4(oracle_old, x_new / c_hi, grid_old)
    torch.testing.assert_close(end_new, c_lo * end_old, rtol=1e-3, atol=1e-3)


def test_out_of_range_and_bad_input(mixture):
    moved = reschedule(mixture.denoiser(schedules.VE()), schedules.VPLinear())
    with pytest.raises(ValueError, match="log-SNR"):
        moved.eps(torch.zeros(2, 2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="denoiser"):
        reschedule(lambda x, t: x, schedules.VE())
    with pytest.raises(ValueError, match="schedule"):
        reschedule(mixture.denoiser(schedules.VE()), "edm")
    with pytest.raises(ValueError, match="log_prob"):
        reschedule(targets.Denoiser(lambda x, t: x, "eps", schedules.VE()), schedules.VE()).log_prob(
            torch.zeros(2, 2), 0.5)


@pytest.mark.parametrize("schedule", [schedules.VPLinear(), schedules.LinearPath(), schedules.EDM()],
                         ids=["vp_linear", "linear", "edm"])
def test_oracle_satisfies_continuity_at_second_order(mixture, schedule):
    oracle = mixture.denoiser(schedule)
    t = 0.4
    lim = 3.0 * float(schedule.alpha(t) + schedule.sigma(t))
    coarse, fine = (continuity_residual(oracle.log_prob, oracle.velocity, t, lim=lim, n=n) for n in (41, 81))
    slope = math.log(coarse.relative_error / fine.relative_error) / math.log(80 / 40)
    assert fine.relative_error < 0.02, fine.relative_error
    assert slope > 1.7 and slope < 2.3, slope
    wrong = continuity_residual(oracle.log_prob, lambda x, s: 1.2 * oracle.velocity(x, s), t, lim=lim, n=81)
    assert wrong.relative_error > 10 * fine.relative_error


def test_continuity_in_one_dimension():
    mix = gmm.GaussianMixture([[-1.0], [1.5]], [0.3, 0.5], weights=[0.3, 0.7])
    oracle = mix.denoiser(schedules.VPCosine())
    check = continuity_residual(oracle.log_prob, oracle.velocity, 0.5, lim=4.0, n=401, dim=1)
    assert check.dp_dt.shape == (401,)
    assert check.relative_error < 1e-3, check.relative_error


def test_continuity_bad_input(mixture):
    oracle = mixture.denoiser(schedules.VPLinear())
    with pytest.raises(ValueError, match="t="):
        continuity_residual(oracle.log_prob, oracle.velocity, 1.0)
    with pytest.raises(ValueError, match="n="):
        continuity_residual(oracle.log_prob, oracle.velocity, 0.5, n=3)
    with pytest.raises(ValueError, match="lim="):
        continuity_residual(oracle.log_prob, oracle.velocity, 0.5, lim=-1.0)
