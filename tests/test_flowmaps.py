"""Tests of utils.flowmaps: the exact map, the parameterisations' boundary conditions, the
MeanFlow identity on the exact oracle, the JVP path, and the samplers (Ch. 10-11)."""
import math

import pytest
import torch

from utils import data, nets, samplers, schedules
from utils import flowmaps as fm


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    mix = data.toy_gmm("8gaussians")
    path = schedules.LinearPath()
    return mix, path, mix.denoiser(path)


def _rk4_map(velocity, x, s, t, n_steps):
    """Differentiable Psi_{s->t} by RK4 on u_k = t + (s - t)(1 - k/n)^2 (smooth in s, t)."""
    w = (1 - torch.arange(n_steps + 1, dtype=x.dtype) / n_steps) ** 2
    u = t[None] + (s - t)[None] * w[:, None]
    for k in range(n_steps):
        h = (u[k + 1] - u[k])[:, None]
        m = (u[k] + u[k + 1]) / 2
        k1 = velocity(x, u[k])
        k2 = velocity(x + h / 2 * k1, m)
        k3 = velocity(x + h / 2 * k2, m)
        k4 = velocity(x + h * k3, u[k + 1])
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def test_exact_map_converges_and_composes(setup):
    mix, path, oracle = setup
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    psi = fm.ExactFlowMap(oracle, n_steps=64)
    x = psi(z, 1.0, 0.0)
    fine = fm.ExactFlowMap(oracle, n_steps=256)(z, 1.0, 0.0)
    assert (x - fine).norm(dim=1).max() < 1e-2
    for u in (0.6, 0.1):                                    # semigroup: Psi_{u->0} o Psi_{1->u} = Psi_{1->0}
        assert (psi(psi(z, 1.0, u), u, 0.0) - fine).norm(dim=1).max() < 2e-3
    torch.testing.assert_close(psi(z, 0.4, 0.4), z)         # Psi_{s->s} = id
    back = psi(psi(z, 0.5, 0.2), 0.2, 0.5)                  # forward and back in time
    assert (back - z).norm(dim=1).max() < 1e-4
    # the map pushes the prior onto the data: every point lands near a mode
    d = torch.cdist(x, mix.means).min(dim=1).values
    assert d.mean() < 0.3


def test_exact_map_per_sample_times(setup):
    _, _, oracle = setup
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.0, 0.4], dtype=torch.float64)
    psi = fm.ExactFlowMap(oracle, n_steps=64)
    joint = psi(z, s, t)
    for i in range(6):
        torch.testing.assert_close(joint[i:i + 1], psi(z[i:i + 1], float(s[i]), float(t[i])))


def test_consistency_boundary_condition(setup):
    _, path, _ = setup
    for sched in (path, schedules.VPLinear(), schedules.EDM()):
        c_skip, c_out = fm.consistency_coefficients(sched, torch.zeros(3, dtype=torch.float64), 0.7)
        torch.testing.assert_close(c_skip, torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(c_out, torch.zeros(3, dtype=torch.float64))
    f = fm.ConsistencyModel(nets.MLP(hidden=16, depth=1), path, 1.4)
    x = torch.randn(8, 2)
    torch.testing.assert_close(f(x, 0.0), x)
    assert (f(x, 0.5) - x).abs().max() > 1e-3              # away from 0 the net acts
    with pytest.raises(ValueError):
        fm.consistency_coefficients(path, 0.5, sigma_data=0.0)


def test_ctm_and_meanflow_boundary(setup):
    _, path, _ = setup
    x, s = torch.randn(8, 2), 0.1 + 0.9 * torch.rand(8)
    ctm = fm.CTM(fm.TwoTimeMLP(hidden=16, depth=1), path, 1.4)
    mf = fm.MeanFlow(fm.TwoTimeMLP(hidden=16, depth=1), path)
    torch.testing.assert_close(ctm(x, s, s), x)             # G(x, s, s) = x for any net
    torch.testing.assert_close(mf(x, s, s), x)
    t = 0.5 * s                                             # CTM is MeanFlow with h = (x - g) / s
    h = (x - ctm.g(x, s, t)) / s[:, None]
    torch.testing.assert_close(ctm(x, s, t), x + (t - s)[:, None] * h)


def test_consistency_grid():
    g = fm.consistency_grid(8)
    assert g[0] == 1 and g[-1] == 0 and len(g) == 9 and (g[1:] < g[:-1]).all()
    with pytest.raises(ValueError):
        fm.consistency_grid(0)


def test_meanflow_identity_on_exact_oracle(setup):
    """Eq. 11.5.3 on the exact average velocity h = (Psi_{s->t}(x) - x) / (t - s), with the total
    derivative d/ds h by torch.func.jvp through a differentiable RK4 solve with the oracle."""
    mix, path, oracle = setup
    n = 32
    x = mix.sample(n, torch.Generator().manual_seed(3), t=0.8, schedule=path)[0]
    s = torch.full((n,), 0.8, dtype=torch.float64)
    t = torch.full((n,), 0.2, dtype=torch.float64)
    h_fn = lambda x_, s_, t_: (_rk4_map(oracle.velocity, x_, s_, t_, 40) - x_) / (t_ - s_)[:, None]
    v = oracle.velocity(x, s)
    h, dh_ds = fm.meanflow_tangent(h_fn, x, s, t, v)
    torch.testing.assert_close(h, v - (s - t)[:, None] * dh_ds, atol=1e-4, rtol=0)
    assert ((s - t)[:, None] * dh_ds).norm(dim=1).mean() > 0.1    # the correction term is not trivial
    # h by trapezoid quadrature of v along the exact path agrees, and x_0 = x_s - s h(x_s, s, 0)
    K = 200
    u = 0.8 * torch.linspace(1, 0, K + 1, dtype=torch.float64) ** 2
    field = samplers.velocity_field(oracle)
    xs, vs = x, [oracle.velocity(x, 0.8)]
    for k in range(K):
        xs = samplers.rk4_step(field, xs, float(u[k]), float(u[k + 1]))[0]
        vs.append(oracle.velocity(xs, float(u[k + 1])))
    vs = torch.stack(vs)
    h_quad = ((vs[1:] + vs[:-1]) / 2 * (u[1:] - u[:-1])[:, None, None]).sum(0) / (0 - 0.8)
    torch.testing.assert_close(x - 0.8 * h_quad, xs, atol=1e-4, rtol=0)
    exact = fm.ExactFlowMap(oracle, n_steps=256)(x, 0.8, 0.0)
    torch.testing.assert_close(x - 0.8 * h_quad, exact, atol=2e-3, rtol=0)


def test_meanflow_tangent_against_finite_differences(setup):
    _, path, _ = setup
    torch.manual_seed(4)
    mf = fm.MeanFlow(fm.TwoTimeMLP(hidden=32, depth=2), path).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    s = 0.3 + 0.6 * torch.rand(16, dtype=torch.float64)
    t = s * torch.rand(16, dtype=torch.float64)
    v = torch.randn(16, 2, dtype=torch.float64)
    h, dh = fm.meanflow_tangent(mf.h, x, s, t, v)
    torch.testing.assert_close(h, mf.h(x, s, t))
    e = 1e-5
    fd = (mf.h(x + e * v, s + e, t) - mf.h(x - e * v, s - e, t)) / (2 * e)
    torch.testing.assert_close(dh, fd, atol=1e-7, rtol=1e-6)


def test_meanflow_loss_zero_for_exact_average_velocity(setup):
    """With the oracle as teacher and pairs at s = t, the loss of a net answering the exact v
    vanishes: h(x, s, s) = v(x, s) is the identity's boundary."""
    mix, path, oracle = setup

    class Exact(torch.nn.Module):
        def h(self, x, s, t):
            return oracle.velocity(x, s)

    x0 = mix.sample(64, torch.Generator().manual_seed(5))[0]
    loss = fm.MeanFlowLoss(path, equal_share=1.0, teacher=oracle)
    assert loss(Exact(), x0, generator=torch.Generator().manual_seed(6)) < 1e-20
    with pytest.raises(ValueError):
        fm.MeanFlowLoss(path, equal_share=1.5)


def test_losses_run_and_backprop(setup):
    mix, path, oracle = setup
    x0 = mix.sample(32, torch.Generator().manual_seed(7))[0].float()
    g = torch.Generator().manual_seed(8)
    cm = fm.ConsistencyModel(nets.MLP(hidden=16, depth=1), path, 1.4)
    ctm = fm.CTM(fm.TwoTimeMLP(hidden=16, depth=1), path, 1.4)
    mf = fm.MeanFlow(fm.TwoTimeMLP(hidden=16, depth=1), path)
    for net, loss in ((cm, fm.ConsistencyLoss(path, 8, oracle)), (cm, fm.ConsistencyLoss(path, 8)),
                      (ctm, fm.CTMLoss(path, oracle, 2)), (mf, fm.MeanFlowLoss(path))):
        net.zero_grad()
        value = loss(net, x0, generator=g)
        value.backward()
        assert torch.isfinite(value)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_consistency_loss_ct_exact_pairs(setup):
    """CT pairs share (x0, eps): both points lie on one conditional path; CD's teacher point is
    one DDIM step of the teacher (Euler on the linear path)."""
    mix, path, oracle = setup
    x0 = mix.sample(16, torch.Generator().manual_seed(9))[0]
    ct = fm.ConsistencyLoss(path, 8)
    xn, sn, xp, sp = ct.pairs(x0, torch.Generator().manual_seed(10))
    eps = (xn - (1 - sn)[:, None] * x0) / sn[:, None]
    torch.testing.assert_close(xp, (1 - sp)[:, None] * x0 + sp[:, None] * eps)
    cd = fm.ConsistencyLoss(path, 8, oracle)
    xn, sn, xp, sp = cd.pairs(x0, torch.Generator().manual_seed(10))
    torch.testing.assert_close(xp, xn + (sp - sn)[:, None] * oracle.velocity(xn, sn))


def test_gamma_sampling_with_exact_map(setup):
    mix, path, oracle = setup
    psi = fm.ExactFlowMap(oracle, n_steps=32)
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    grid = schedules.uniform_grid(3)
    x0 = fm.sample_gamma(psi, z, grid, 0.0)
    torch.testing.assert_close(x0, fm.sample_flow_map(psi, z, grid))      # gamma = 0: chained jumps
    # gamma = 1 re-noises to p_t exactly, so its samples still sit on the modes
    x1 = fm.sample_gamma(psi, z, grid, 1.0, generator=torch.Generator().manual_seed(12))
    assert torch.cdist(x1, mix.means).min(dim=1).values.mean() < 0.3
    with pytest.raises(ValueError):
        fm.sample_gamma(psi, z, grid, 1.5)


def test_sample_consistency_one_step_and_checks(setup):
    _, path, _ = setup
    cm = fm.ConsistencyModel(nets.MLP(hidden=16, depth=1), path, 1.4)
    z = torch.randn(10, 2)
    with torch.no_grad():
        torch.testing.assert_close(fm.sample_consistency(cm, z, [1.0, 0.0]), cm(z, 1.0))
    with pytest.raises(ValueError):
        fm.sample_consistency(cm, z, [1.0, 0.5])
    with pytest.raises(ValueError):
        fm.LearnedFlowMap("not a net", path)
    assert math.isfinite(float(fm.LearnedFlowMap(fm.CTM(fm.TwoTimeMLP(hidden=8, depth=1), path), path)(z, 1.0, 0.0).sum()))


def _scm(sigma_data, adaptive=True):
    torch.manual_seed(0)
    weight = torch.nn.Sequential(nets.FourierFeatures(16, scale=1.0, seed=3), torch.nn.Linear(16, 1)) if adaptive else None
    net = nets.MLP(hidden=32, depth=2, time_embedding="fourier", fourier_scale=1.0)
    return fm.SCM(net, fm.TrigFlow(sigma_data), weight).double()


def test_trigflow_schedule():
    tf = fm.TrigFlow(1.5)
    t = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
    a, s, da, ds = tf.coefficients(t)
    torch.testing.assert_close(a ** 2 + (s / 1.5) ** 2, torch.ones_like(t))        # VP after scaling by sigma_d
    h = 1e-6
    torch.testing.assert_close(da, (tf.alpha(t + h) - tf.alpha(t - h)) / (2 * h), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(ds, (tf.sigma(t + h) - tf.sigma(t - h)) / (2 * h), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(tf.t_from_log_snr(tf.log_snr(t)), t)
    assert tf.prior_std() == pytest.approx(1.5)
    with pytest.raises(ValueError):
        fm.TrigFlow(0.0)


def test_scm_boundary_and_jvp_tangent_against_finite_differences(setup):
    mix = setup[0]
    sd = float(mix.covariance().diagonal().mean().sqrt())
    model = _scm(sd)
    x = torch.randn(64, 2, dtype=torch.float64)
    torch.testing.assert_close(model(x, torch.zeros(64, dtype=torch.float64)), x)  # f(x, 0) = x for any net
    oracle = mix.denoiser(model.schedule)
    t = 0.1 + 0.8 * torch.rand(64, dtype=torch.float64)
    v = oracle.velocity(x, t)
    # the tangent of F and of f along dx/dt = v against central differences along the same line
    _, dF = fm.scm_tangent(model, x, t, v)
    _, df = torch.func.jvp(model, (x, t), (v, torch.ones_like(t)))
    h = 1e-5
    with torch.no_grad():
        fdF = (model.F(x + h * v, t + h) - model.F(x - h * v, t - h)) / (2 * h)
        fdf = (model(x + h * v, t + h) - model(x - h * v, t - h)) / (2 * h)
    torch.testing.assert_close(dF, fdF, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(df, fdf, atol=1e-6, rtol=1e-5)
    # df/dt = (pi/2) [cos (dx/dtheta - sd F) - sin (x + sd dF/dtheta)]: the split SCMLoss uses (r = 1)
    th = math.pi / 2 * t[:, None]
    F = model.F(x, t).detach()
    split = math.pi / 2 * (torch.cos(th) * (v * 2 / math.pi - sd * F) - torch.sin(th) * (x + sd * dF * 2 / math.pi))
    torch.testing.assert_close(df, split)


def test_scm_loss_runs_backprops_and_checks(setup):
    mix = setup[0]
    sd = float(mix.covariance().diagonal().mean().sqrt())
    x0 = mix.sample(128, torch.Generator().manual_seed(0))[0]
    for kw in (dict(), dict(normalise=False, warmup_steps=10, adaptive=False)):
        model = _scm(sd, adaptive=kw.get("adaptive", True))
        loss_fn = fm.SCMLoss(mix.denoiser(model.schedule), **kw)
        loss = loss_fn(model, x0, generator=torch.Generator().manual_seed(1))
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in model.net.parameters())
        assert loss_fn.calls == 1 and len(loss_fn.tangent_norms) == 1
    assert fm.SCMLoss(mix.denoiser(model.schedule), warmup_steps=10).ramp() == 0.0
    with pytest.raises(ValueError):
        fm.SCMLoss(mix.denoiser(schedules.LinearPath()))
    with pytest.raises(ValueError):
        fm.SCM(model.net, schedules.LinearPath())
    with pytest.raises(ValueError):
        fm.SCMLoss(mix.denoiser(model.schedule))(_scm(sd, adaptive=False), x0)


def test_teacher_trajectories_end_where_the_sampler_ends(setup):
    """The recorded states start at x and end at the sampler's own output, one per grid time."""
    from utils import solvers

    mix = setup[0]
    vp = schedules.get_schedule("vp_linear")  # DPM-Solver needs alpha > 0 at the start
    oracle = mix.denoiser(vp)
    x = samplers.sample_prior(vp, (16, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    traj = fm.teacher_trajectories(oracle, x, grid, solvers.dpm_solver_pp_2m)
    assert traj.shape == (16, 5, 2)
    torch.testing.assert_close(traj[:, 0], x)
    torch.testing.assert_close(traj[:, -1], solvers.dpm_solver_pp_2m(oracle, x, grid))
    with pytest.raises(ValueError, match="end at 0"):
        fm.teacher_trajectories(oracle, x, grid[:-1], solvers.dpm_solver_pp_2m)


def test_trajectory_distillation_loss(setup):
    """p_prior = 1: every point is the prior end, the loss is mean ||f(x_1, 1) - x_0||^2; a model
    that returns each trajectory's endpoint has loss 0; bad grids and shapes raise ValueError."""
    grid = torch.tensor([1.0, 0.5, 0.2, 0.0], dtype=torch.float64)
    traj = torch.randn(8, 4, 2, generator=torch.Generator().manual_seed(1))
    zero = lambda x, s, y=None: torch.zeros_like(x)  # noqa: E731
    loss = fm.TrajectoryDistillationLoss(grid, p_prior=1.0)(zero, traj, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(loss, (traj[:, -1] ** 2).mean(1).mean())
    lookup = {float(traj[i, k].sum()): traj[i, -1] for i in range(8) for k in range(4)}
    exact = lambda x, s, y=None: torch.stack([lookup[float(r.sum())] for r in x])  # noqa: E731
    for p in (0.0, 0.5, 1.0):
        assert float(fm.TrajectoryDistillationLoss(grid, p)(exact, traj, generator=torch.Generator().manual_seed(3))) == 0.0
    with pytest.raises(ValueError, match="grid"):
        fm.TrajectoryDistillationLoss(torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="p_prior"):
        fm.TrajectoryDistillationLoss(grid, 1.5)
    with pytest.raises(ValueError, match="traj has shape"):
        fm.TrajectoryDistillationLoss(grid)(zero, traj[:, :3])
