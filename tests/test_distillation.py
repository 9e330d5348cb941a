"""Unit tests of utils.distillation (Ch. 10): the DDIM map, Lemma 10.3.1's two-steps-in-one
target on the exact oracle, v-prediction, the flow-map students and losses; and the exact flow
map of utils.flowmaps that every student is measured against (a tighter solve, the semigroup)."""

import pytest
import torch

from utils import data, flowmaps, gmm, samplers, schedules
from utils import distillation as D

MIX = data.toy_gmm("8gaussians")


def _points(n=256, seed=0, t=0.6, schedule=None):
    schedule = schedule or schedules.VPLinear()
    return MIX.sample(n, torch.Generator().manual_seed(seed), t=t, schedule=schedule)[0]


@pytest.mark.parametrize("schedule", [schedules.VPLinear(), schedules.VPCosine(), schedules.EDM()],
                         ids=["vp_linear", "vp_cosine", "edm"])
def test_pd_target_reproduces_two_teacher_ddim_steps_on_the_oracle(schedule):
    oracle = MIX.denoiser(schedule)
    s, u, t = 0.7, 0.45, 0.2
    x_s = _points(seed=1, t=s, schedule=schedule)
    two = D.ddim_step(oracle, D.ddim_step(oracle, x_s, s, u), u, t)
    x_tilde, x_t = D.pd_target(oracle, x_s, s, u, t)
    torch.testing.assert_close(x_t, two, rtol=0, atol=0)
    # one DDIM step s -> t with x0 = x_tilde (eps from x_s and x_tilde) lands on the two-step result
    a_s, s_s = schedule.alpha(s), schedule.sigma(s)
    one = schedule.alpha(t) * x_tilde + schedule.sigma(t) * (x_s - a_s * x_tilde) / s_s
    torch.testing.assert_close(one, two, rtol=1e-12, atol=1e-12)
    # and a one-step DDIM of the oracle itself does not (the target is not trivial)
    assert (D.ddim_step(oracle, x_s, s, t) - two).norm(dim=1).mean() > 1e-3


def test_pd_target_at_t_zero_is_the_two_step_sample_and_per_sample_times_work():
    sched = schedules.VPLinear()
    oracle = MIX.denoiser(sched)
    x_s = _points(seed=2, t=0.3)
    x_tilde, x_t = D.pd_target(oracle, x_s, 0.3, 0.15, 0.0)
    torch.testing.assert_close(x_tilde, x_t, rtol=1e-12, atol=1e-12)
    n = x_s.shape[0]
    s, u, t = (torch.full((n,), v, dtype=torch.float64) for v in (0.3, 0.15, 0.05))
    torch.testing.assert_close(D.pd_target(oracle, x_s, s, u, t)[0], D.pd_target(oracle, x_s, 0.3, 0.15, 0.05)[0])


def test_ddim_map_is_the_ddim_sampler_and_converges_to_the_exact_map():
    sched = schedules.VPLinear()
    oracle = MIX.denoiser(sched)
    z = samplers.sample_prior(sched, (200, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = flowmaps.ExactFlowMap(oracle, 64)(z, 1.0, 0.0)
    errs = [float((flowmaps.sample_flow_map(D.DDIMMap(oracle), z, schedules.uniform_grid(n)) - exact)
                  .norm(dim=1).mean()) for n in (16, 32, 64)]
    assert errs[2] < errs[1] < errs[0] and errs[2] < 0.05   # first order: about halves per doubling
    assert 1.5 < errs[0] / errs[1] < 2.6


def test_v_prediction_round_trip_and_v_target():
    sched = schedules.VPLinear()
    x0, eps = _points(seed=4, t=None), torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.rand(256, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x_t = sched.alpha(t)[:, None] * x0 + sched.sigma(t)[:, None] * eps
    v = D.v_target(x0, eps, t, sched)
    model = D.VPrediction(lambda x, tt: v, sched)        # a net that returns the true v
    x0_hat, eps_hat = model.x0_eps(x_t, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)
    # the loss is zero for that net and positive for another
    loss = D.VPredictionLoss(sched)
    assert float(loss(lambda x, tt: torch.zeros_like(x), x0.float(), None, torch.Generator().manual_seed(0))) > 0.1


def test_affine_student_is_identity_at_equal_times_and_regression_is_zero_on_its_own_outputs():
    sched = schedules.VPLinear()
    torch.manual_seed(0)
    net = D.FlowMapNet(2, 16, 1).double()
    student = D.AffineStudent(net, sched)
    x = _points(64, seed=7, t=0.5)
    torch.testing.assert_close(student(x, 0.5, 0.5), x)
    with torch.no_grad():
        target = student(x, 0.5, 0.1)
    rows = D.pack_pairs(x, target, 0.5, 0.1)
    with torch.no_grad():
        assert float(D.FlowMapRegression(sched)(net, rows)) < 1e-20
        assert float(D.FlowMapRegression(sched)(net, D.pack_pairs(x, target + 0.1, 0.5, 0.1))) > 1e-3


def test_progressive_distillation_loss_is_zero_for_a_student_equal_to_a_linear_teacher():
    # For a point-mass data set the DDIM step is exact, so two teacher steps = one student step:
    # the oracle of a one-point mixture as teacher, and its own v as the student's net.
    sched = schedules.VPLinear()
    point = gmm.GaussianMixture(torch.tensor([[1.0, -0.5]], dtype=torch.float64), 1e-6)
    teacher = point.denoiser(sched)
    grid = schedules.uniform_grid(8)
    loss = D.ProgressiveDistillationLoss(teacher, grid)
    torch.testing.assert_close(loss.student_grid, grid[::2])

    def v_net(x, t):
        x0, eps = teacher.x0_eps(x, t)
        return D.v_target(x0, eps, t, sched)

    x0 = point.sample(128, torch.Generator().manual_seed(8))[0]
    assert float(loss(v_net, x0, None, torch.Generator().manual_seed(9))) < 1e-8
    with pytest.raises(ValueError):
        D.halve_grid(schedules.uniform_grid(3))


def test_exact_flow_map_against_a_tighter_solve_and_its_semigroup_property():
    sched = schedules.VPLinear()
    oracle = MIX.denoiser(sched)
    z = samplers.sample_prior(sched, (100, 2), torch.Generator().manual_seed(10), dtype=torch.float64)
    psi = flowmaps.ExactFlowMap(oracle, 64)
    x0 = psi(z, 1.0, 0.0)
    assert float((flowmaps.ExactFlowMap(oracle, 16)(z, 1.0, 0.0) - x0).norm(dim=1).max()) < 0.1
    assert float((flowmaps.ExactFlowMap(oracle, 256)(z, 1.0, 0.0) - x0).norm(dim=1).max()) < 2e-3
    # semigroup Psi_{0.4->0} o Psi_{1->0.4} = Psi_{1->0}, and a round trip 0.4 -> 0.9 -> 0.4
    x_mid = psi(z, 1.0, 0.4)
    assert float((psi(x_mid, 0.4, 0.0) - x0).norm(dim=1).max()) < 5e-3
    assert float((psi(psi(x_mid, 0.4, 0.9), 0.9, 0.4) - x_mid).norm(dim=1).max()) < 1e-4
    # the exact map pushes the prior onto the data: its samples sit on the modes
    assert float(torch.cdist(x0, MIX.means).min(1).values.median()) < 0.3


def test_bad_inputs_raise_value_errors():
    sched = schedules.VPLinear()
    with pytest.raises(ValueError):
        D.DDIMMap("not a model")
    with pytest.raises(ValueError):
        D.VPredictionLoss(sched, t_range=(0.5, 0.2))
    with pytest.raises(ValueError):
        D.pack_pairs(torch.zeros(4, 2), torch.zeros(3, 2), 1.0, 0.0)
    with pytest.raises(ValueError):
        D.ProgressiveDistillationLoss(MIX.denoiser(sched), schedules.uniform_grid(5))
