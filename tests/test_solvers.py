"""utils.solvers against the exact Gaussian-mixture oracle: the identities of Ch. 9 (DDIM =
DPM-Solver-1 = DEIS order 1; DEIS order 2 = DPM-Solver++(2M) in Newton form, Table 9.2; DDIM with
eta = 1 = ancestral sampling; EDM Heun = Heun on EDM's clock), the orders fitted on the oracle, the
NFE counts, ParaDiGMS against the sequential solver, and the argument checks."""
import math

import pytest
import torch

from utils import data, samplers, schedules, solvers
from utils.guidance import ClassifierFreeGuidance

SCHED = schedules.VPLinear()
MIX = data.toy_gmm("8gaussians", std=0.3)          # smoother than std 0.15: asymptotic sooner
ORACLE = MIX.denoiser(SCHED)


def _start(n=64, seed=0):
    return samplers.sample_prior(SCHED, (n, 2), torch.Generator().manual_seed(seed), dtype=torch.float64)


X1 = _start()


@pytest.fixture(scope="module")
def reference():
    """RK4 on 100 log-SNR steps, checked against 200 (agree to ~2e-7)."""
    ref = samplers.sample_rk4(ORACLE, X1, schedules.log_snr_grid(SCHED, 100))
    assert _err(samplers.sample_rk4(ORACLE, X1, schedules.log_snr_grid(SCHED, 200)), ref) < 1e-6
    return ref


def _err(x, ref):
    return float((x - ref).norm(dim=1).mean())


@pytest.mark.parametrize("grid", [schedules.log_snr_grid(SCHED, 7), schedules.uniform_grid(5, 1.0, 1e-3),
                                  torch.tensor([1.0, 0.5, 0.1, 0.0], dtype=torch.float64)])
def test_ddim_is_dpm_solver_1_is_deis_order_1(grid):
    """Prop. 9.2.1 / 9.4.2: three formulas (DDIM's x0 + direction, the noise form, DEIS's
    quadrature weights) are one method, also with a last step to t = 0."""
    a = solvers.ddim(ORACLE, X1, grid)
    torch.testing.assert_close(solvers.dpm_solver_1(ORACLE, X1, grid), a, atol=1e-10, rtol=0)
    torch.testing.assert_close(solvers.deis(ORACLE, X1, grid, order=1), a, atol=1e-10, rtol=0)


def test_deis_order_2_is_dpm_solver_pp_2m_newton_form():
    """Table 9.2: Lagrange form (DEIS) and Newton form (++2M with the exact phi) of the same
    linear interpolant through the same anchors; Alg. 7's h/2 differs at O(h^3) per step."""
    grid = schedules.edm_grid(SCHED, 9)                      # unequal steps in lambda: r != 1
    a = solvers.deis(ORACLE, X1, grid, order=2)
    torch.testing.assert_close(solvers.dpm_solver_pp_2m(ORACLE, X1, grid, exact_phi=True), a,
                               atol=1e-10, rtol=0)
    assert _err(solvers.dpm_solver_pp_2m(ORACLE, X1, grid), a) > 1e-6


def test_ddim_eta_one_is_ancestral_sampling():
    """DDIM with eta = 1 adds the forward posterior's variance: ancestral (DDPM) sampling."""
    grid = schedules.log_snr_grid(SCHED, 10)
    a = solvers.ddim(ORACLE, X1, grid, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = samplers.sample_ancestral(ORACLE, X1, grid, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_edm_heun_is_heun_on_edms_clock():
    """With alpha = 1, sigma = sigma_max t, Heun in sigma~ is Heun in t."""
    sch = schedules.EDM()
    oracle = MIX.denoiser(sch)
    grid = schedules.edm_grid(sch, 8)
    x = samplers.sample_prior(sch, (100, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(solvers.edm_heun(oracle, x, grid), samplers.sample_heun(oracle, x, grid),
                               atol=1e-9, rtol=1e-9)


def test_edm_churn_steps_above_t_one_and_stays_close():
    """Churn raises the noise above the grid's start (t > 1 under VPLinear, t_end = inf) and
    leaves the samples on the data: a stochastic sampler, measured by its mean distance."""
    grid = schedules.edm_grid(SCHED, 20)
    x = solvers.edm_heun(ORACLE, X1, grid, s_churn=10.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    dist = (x[:, None, :] - MIX.means[None]).norm(dim=-1).min(1).values
    assert float(dist.mean()) < 3 * 0.3 * math.sqrt(2)


ORDERS = [("ddim", {}, 1, (16, 32)), ("dpm_solver_2", {}, 2, (16, 32)), ("dpm_solver_3", {}, 3, (20, 40)),
          ("dpm_solver_pp_2s", {}, 2, (16, 32)), ("dpm_solver_pp_2m", {}, 2, (32, 64)),
          ("deis", {"order": 2}, 2, (32, 64)), ("deis", {"order": 3}, 3, (32, 64)), ("edm_heun", {}, 2, (16, 32))]


@pytest.mark.parametrize("name,kw,order,steps", ORDERS, ids=[f"{o[0]}{o[1].get('order', '')}" for o in ORDERS])
def test_fitted_order_on_the_oracle(reference, name, kw, order, steps):
    """Error against the exact solution halves ~2^order times when the steps double (log-SNR grid)."""
    errs = [_err(solvers.SOLVERS[name](ORACLE, X1, schedules.log_snr_grid(SCHED, n), **kw), reference)
            for n in steps]
    slope = math.log(errs[0] / errs[1]) / math.log(steps[1] / steps[0])
    assert abs(slope - order) < 0.35 and errs[1] > 1e-5, (name, errs, slope)


@pytest.mark.parametrize("name,per_step", sorted(solvers.STAGES.items()))
def test_nfe_counted_by_the_wrapper(name, per_step):
    model = solvers.CountingModel(ORACLE)
    solvers.SOLVERS[name](model, X1, schedules.log_snr_grid(SCHED, 4))
    assert model.nfe == 4 * per_step
    model.reset()
    solvers.SOLVERS[name](model, X1, torch.tensor([1.0, 0.3, 0.0], dtype=torch.float64))
    assert model.nfe == per_step + 1                    # the last step to sigma = 0: one evaluation


def test_paradigms_equals_ddim_in_fewer_rounds():
    grid = schedules.log_snr_grid(SCHED, 40)
    seq = solvers.ddim(ORACLE, X1, grid)
    x1, rounds1 = solvers.paradigms(ORACLE, X1, grid, window=1)
    torch.testing.assert_close(x1, seq, atol=1e-10, rtol=0)
    assert rounds1 == 40
    model = solvers.CountingModel(ORACLE)
    x8, rounds8 = solvers.paradigms(model, X1, grid, window=8, tol=1e-4)
    assert rounds8 < 40 and _err(x8, seq) < 1e-2
    assert model.nfe == rounds8 and 40 * X1.shape[0] < model.points <= 8 * rounds8 * X1.shape[0]


def test_solvers_run_a_guided_model():
    cfg = ClassifierFreeGuidance(ORACLE, 3.0)
    y = torch.zeros(X1.shape[0], dtype=torch.long)
    grid = schedules.log_snr_grid(SCHED, 10)
    for name in solvers.SOLVERS:
        assert torch.isfinite(solvers.SOLVERS[name](cfg, X1, grid, y=y)).all()


def test_deis_weights_sum_to_the_exponential_integral():
    lams = [0.3, -0.2, -0.9]
    for k in (1, 2, 3):
        w = solvers.deis_weights(lams[:k], 0.8)
        assert abs(sum(w) + math.expm1(-0.5)) < 1e-14


def test_equidistributed_grid_is_a_grid():
    lam, dens = solvers.local_error_density(ORACLE, X1[:50], n_fine=64)
    grid = solvers.equidistributed_grid(SCHED, lam, dens, 10)
    assert grid.shape == (11,) and (grid.diff() < 0).all()
    torch.testing.assert_close(grid[[0, -1]], torch.tensor([SCHED.t_max, SCHED.t_min], dtype=torch.float64))
    uniform = solvers.equidistributed_grid(SCHED, lam, torch.ones_like(lam), 8)   # constant density
    torch.testing.assert_close(uniform, schedules.log_snr_grid(SCHED, 8))


@pytest.mark.parametrize("call", [lambda: solvers.ddim(ORACLE, X1, [1.0, 0.0], eta=-1.0),
                                  lambda: solvers.deis(ORACLE, X1, [1.0, 0.0], order=5),
                                  lambda: solvers.paradigms(ORACLE, X1, [1.0, 0.0], window=0),
                                  lambda: solvers.edm_heun(ORACLE, X1, [1.0, 0.0], s_churn=-1.0),
                                  lambda: solvers.ddim(ORACLE, X1, [0.0, 1.0]),
                                  lambda: solvers.CountingModel(lambda x, t: x),
                                  lambda: solvers.deis_weights([0.0], -1.0)])
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()


def test_optimized_grid_lowers_the_pilot_error():
    ref = samplers.sample_rk4(ORACLE, X1[:32], schedules.log_snr_grid(SCHED, 60))
    init = schedules.log_snr_grid(SCHED, 5)
    grid = solvers.optimized_grid(solvers.dpm_solver_pp_2m, ORACLE, X1[:32], ref, init, max_iter=40)
    assert grid.shape == init.shape and (grid.diff() < 0).all()
    torch.testing.assert_close(grid[[0, -1]], init[[0, -1]])
    err = lambda g: _err(solvers.dpm_solver_pp_2m(ORACLE, X1[:32], g), ref)
    assert err(grid) <= err(init)
