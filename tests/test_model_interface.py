"""The one model interface (utils.targets.Model), preconditioning, training-time distributions,
tracing through models (jvp, vmap, compile) and the edges of the clocks (issue: the base v2)."""
import math

import pytest
import torch
from torch.func import jvp, vmap

from core_helpers import full_cov_mixture, sw64
from utils import data, losses, metrics, nets, samplers, schedules, targets, training
from utils.gmm import MixtureDenoiser
from utils.paths import reschedule
from utils.targets import NULL_LABEL, TARGETS, Denoiser, Model

MIX = full_cov_mixture()


class Shrink(Model):
    """A model written in four lines: x0_hat = x / 2 (not a posterior mean of anything useful)."""

    def x0_eps(self, x, t, y=None):
        a, s, _, _ = targets._coeffs(self.schedule, t, x)
        x0 = x / 2
        return x0, (x - a * x0) / s


def test_a_new_model_needs_only_x0_eps_and_runs_in_every_sampler():
    sched = schedules.VPLinear()
    m = Shrink(sched)
    x = torch.randn(8, 2, dtype=torch.float64)
    a, s, da, ds = (float(c) for c in sched.coefficients(0.4))
    torch.testing.assert_close(m.velocity(x, 0.4), da * x / 2 + ds * (x - a * x / 2) / s)
    torch.testing.assert_close(m.score(x, 0.4), -(x - a * x / 2) / s ** 2)
    for sampler in (samplers.sample_euler, samplers.sample_heun, samplers.sample_ancestral):
        assert torch.isfinite(sampler(m, x, schedules.uniform_grid(4, 1.0, 1e-3))).all()
    with pytest.raises(TypeError):
        Model(sched)  # abstract: x0_eps is the one method to write


def test_models_are_models():
    sched = schedules.VPLinear()
    oracle = MIX.denoiser(sched)
    assert isinstance(oracle, Model) and not isinstance(oracle, Denoiser)
    assert isinstance(reschedule(oracle, schedules.EDM()), Model)
    assert isinstance(Denoiser(lambda x, t: x, "eps", sched), Model)
    with pytest.raises(ValueError, match="net has type"):
        Denoiser(3, "eps", sched)
    with pytest.raises(ValueError, match="schedule has type"):
        Shrink("vp")


@pytest.mark.parametrize("target", TARGETS)
def test_denoiser_returns_its_own_target_raw_and_the_rest_by_conversion(target):
    sched = schedules.VPCosine()
    oracle = MIX.denoiser(sched)
    net = lambda x, t: oracle(x, t, target=target)
    model = Denoiser(net, target, sched)
    x = MIX.sample(64, torch.Generator().manual_seed(0), t=0.5, schedule=sched)[0]
    for other in TARGETS:
        torch.testing.assert_close(model(x, 0.5, target=other), oracle(x, 0.5, target=other))
    v, x0 = model.velocity_and_x0(x, 0.5)
    torch.testing.assert_close(v, oracle.velocity(x, 0.5))
    torch.testing.assert_close(x0, oracle.x0(x, 0.5))


def test_class_conditional_oracle_and_null_label():
    sched = schedules.VPLinear()
    oracle = MIX.denoiser(sched)
    x = torch.randn(6, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, NULL_LABEL, 0, NULL_LABEL, 1])
    mixed = oracle.eps(x, 0.3, y)
    uncond, c0, c1 = oracle.eps(x, 0.3), oracle.eps(x, 0.3, torch.zeros(6, dtype=torch.long)), \
        oracle.eps(x, 0.3, torch.ones(6, dtype=torch.long))
    expected = torch.stack([c0[0], c1[1], uncond[2], c0[3], uncond[4], c1[5]])
    torch.testing.assert_close(mixed, expected, rtol=0, atol=1e-12)
    assert (uncond - c0).abs().max() > 1e-3  # the labels matter
    with pytest.raises(ValueError, match="y has labels outside"):
        oracle.eps(x, 0.3, torch.full((6,), -2))


# --- preconditioning (App. D.6) ------------------------------------------------------------------

class OracleF(torch.nn.Module):
    """The raw net F that makes EDMPrecond reproduce the oracle: recovers (x, t) from
    (c_in x~, c_noise) and returns (x0 - c_skip x~) / c_out."""

    def __init__(self, oracle, precond):
        super().__init__()
        self.oracle, self.pre = oracle, precond

    def forward(self, inner, c_noise):
        sched, sd = self.oracle.schedule, self.pre.sigma_data
        level = torch.exp(4 * c_noise)
        t = sched.t_from_log_snr(-torch.log(level))
        norm = torch.sqrt(level ** 2 + sd ** 2)[:, None]
        x_ve = inner * norm
        alpha = sched.alpha(t)[:, None]
        x0 = self.oracle.x0(alpha * x_ve, t)
        c_skip, c_out = sd ** 2 / norm ** 2, level[:, None] * sd / norm
        return (x0 - c_skip * x_ve) / c_out


@pytest.mark.parametrize("sched", [schedules.VPLinear(), schedules.VE(), schedules.LinearPath(), schedules.EDM()],
                         ids=lambda s: s.name)
def test_preconditioned_oracle_equals_the_oracle(sched):
    oracle = MIX.denoiser(sched)
    pre = nets.EDMPrecond(torch.nn.Identity(), sched, sigma_data=0.7)
    pre.net = OracleF(oracle, pre)
    model = Denoiser(pre, "x0", sched)
    x, _ = MIX.sample(200, torch.Generator().manual_seed(1), t=0.35, schedule=sched)
    for target in TARGETS:
        torch.testing.assert_close(model(x, 0.35, target=target), oracle(x, 0.35, target=target),
                                   rtol=1e-8, atol=1e-8)


def test_edm_coefficients_make_unit_variance_inputs_and_targets():
    """For data of std sigma_d: Var(c_in x~) = 1 and Var of F's effective target = 1 at every level."""
    sched, sd = schedules.EDM(), 0.5
    pre = nets.EDMPrecond(torch.nn.Identity(), sched, sigma_data=sd)
    g = torch.Generator().manual_seed(0)
    x0 = sd * torch.randn(200_000, 1, dtype=torch.float64, generator=g)
    for t in (0.001, 0.01, 0.1, 0.5):
        tt = torch.full((x0.shape[0],), t, dtype=torch.float64)
        alpha, c_in, c_skip, c_out, _ = pre.coefficients(tt)
        xt, _ = losses.sample_xt(x0, tt, sched, g)
        assert abs(float((c_in[:, None] * xt).var()) - 1) < 0.02
        assert abs(float(((x0 - c_skip[:, None] * xt) / c_out[:, None]).var()) - 1) < 0.02
        torch.testing.assert_close(losses.edm_weighting(sched, sd)(tt), 1 / c_out ** 2)


def test_edm_preconditioned_mlp_trains_to_the_noise_floor():
    """An EDM-preconditioned MLP (log-normal times, lambda = 1/c_out^2) on 8gaussians samples
    within 1.3x the data-vs-data noise floor (sliced Wasserstein, 20 chunks of 200)."""
    torch.manual_seed(0)
    mix = data.toy_gmm("8gaussians")
    sched = schedules.VPLinear()
    sd = float(mix.covariance().diagonal().mean().sqrt())
    pre = nets.EDMPrecond(nets.MLP(2, 96, 2, time_embedding="fourier", fourier_scale=1.0), sched, sigma_data=sd)
    loss = losses.DiffusionLoss(sched, "x0", weighting=losses.edm_weighting(sched, sd),
                                time_distribution=losses.LogNormal(sched))
    ema, _ = training.train(pre, loss, lambda n, g: mix.sample(n, g)[0].float(), steps=1500,
                            batch_size=256, lr=3e-3, seed=0, progress=False)
    model = Denoiser(ema, "x0", sched)
    g = torch.Generator().manual_seed(7)
    x = samplers.sample_prior(sched, (4000, 2), g)
    out = samplers.sample_heun(model, x, schedules.edm_grid(sched, 24))
    cmp = metrics.compare_to_floor(out.double(), lambda n, gen: mix.sample(n, gen)[0], metric=sw64)
    assert cmp.ratio < 1.3, str(cmp)


# --- training-time distributions (§6.2) ---------------------------------------------------------

@pytest.mark.parametrize("dist", [losses.Uniform(0.1, 0.6), losses.LogNormal(schedules.VPLinear()),
                                  losses.LogitNormal(0.3, 0.8),
                                  losses.Stratified(losses.Uniform(0.001, 1.0), losses.Uniform(0.001, 0.2))],
                         ids=["uniform", "lognormal", "logitnormal", "stratified"])
def test_time_distribution_samples_follow_its_density(dist):
    """Histogram of 200k samples against the density (interior bins, 5 standard errors)."""
    t = dist.sample(200_000, torch.Generator().manual_seed(0), torch.float64)
    assert t.shape == (200_000,) and float(t.min()) >= 0 and float(t.max()) <= 1
    edges = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    counts = torch.histogram(t, edges).hist
    width = float(edges[1] - edges[0])
    # midpoint rule on the density, refined: average the density over each bin
    fine = (torch.arange(40, dtype=torch.float64)[:, None] + 0.5) / 40 * width + edges[:-1]
    expected = dist.density(fine.flatten()).reshape(fine.shape).mean(0) * width * t.numel()
    se = expected.clamp_min(1).sqrt()
    assert ((counts - expected).abs() < 5 * se + 0.002 * t.numel() * width).all(), (counts, expected)


def test_loss_takes_a_time_distribution_and_rejects_both():
    sched = schedules.VPLinear()
    seen = []
    net = lambda x, t: (seen.append(t), torch.zeros_like(x))[1]
    losses.DiffusionLoss(sched, "eps", time_distribution=losses.Uniform(0.2, 0.3))(net, torch.randn(64, 2))
    assert float(seen[0].min()) >= 0.2 and float(seen[0].max()) <= 0.3
    with pytest.raises(ValueError, match="both given"):
        losses.DiffusionLoss(sched, "eps", t_range=(0.1, 1.0), time_distribution=losses.Uniform())
    with pytest.raises(ValueError, match="time_distribution has type"):
        losses.DiffusionLoss(sched, "eps", time_distribution=(0.1, 1.0))
    with pytest.raises(ValueError, match="p_std"):
        losses.LogNormal(sched, p_std=0.0)


# --- models that trace ---------------------------------------------------------------------------

def _mlp_model(target="velocity"):
    torch.manual_seed(0)
    net = nets.MLP(2, 32, 2).double()
    return Denoiser(net, target, schedules.VPLinear())


def _model_and_points(which, target, n, seed):
    """The oracle or a small MLP Denoiser, n points and n times in [0.1, 0.9], and the generator."""
    model = MIX.denoiser(schedules.VPLinear()) if which == "oracle" else _mlp_model(target)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, dtype=torch.float64, generator=g)
    t = torch.rand(n, dtype=torch.float64, generator=g) * 0.8 + 0.1
    return model, x, t, g


@pytest.mark.parametrize("which", ["oracle", "mlp"])
def test_jvp_through_a_model_matches_finite_differences(which):
    model, x, t, g = _model_and_points(which, "eps", 16, 3)
    dx = torch.randn(16, 2, dtype=torch.float64, generator=g)
    dt = torch.randn(16, dtype=torch.float64, generator=g)
    f = lambda x, t: model.velocity(x, t)
    out, tangent = jvp(f, (x, t), (dx, dt))
    h = 1e-6
    fd = (f(x + h * dx, t + h * dt) - f(x - h * dx, t - h * dt)) / (2 * h)
    torch.testing.assert_close(out, f(x, t))
    torch.testing.assert_close(tangent, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["oracle", "mlp"])
def test_vmap_through_a_model_matches_a_loop(which):
    model, x, t, _ = _model_and_points(which, "x0", 12, 4)
    one = lambda xi, ti: model.score(xi[None], ti[None])[0]
    batched = vmap(one)(x, t)
    loop = torch.stack([one(x[i], t[i]) for i in range(12)])
    torch.testing.assert_close(batched, loop)
    # the Jacobian of the score (a Hessian of log p_t) by vmap over jvp, against autograd
    jac = vmap(lambda xi, ti: torch.func.jacfwd(lambda z: one(z, ti))(xi))(x, t)
    xr = x[:1].clone().requires_grad_(True)
    rows = [torch.autograd.grad(model.score(xr, t[:1])[0, k], xr)[0][0] for k in range(2)]
    torch.testing.assert_close(jac[0], torch.stack(rows))


@pytest.mark.parametrize("which", ["oracle", "mlp"])
def test_compile_goes_through_a_model_without_graph_breaks(which):
    model = MIX.denoiser(schedules.VPLinear()) if which == "oracle" else _mlp_model("eps")
    f = torch.compile(lambda x, t: model.velocity(x, t), backend="eager", fullgraph=True)
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(f(x, t), model.velocity(x, t))


def test_value_checks_still_run_outside_transforms():
    oracle = MIX.denoiser(schedules.VPCosine())
    with pytest.raises(ValueError, match="t has values"):
        oracle.score(torch.zeros(2, 2), 1.5)
    with pytest.raises(ValueError, match="grid runs from"):
        samplers.sample_euler(oracle, torch.zeros(2, 2), torch.tensor([1.2, 0.5]))


# --- clocks and edges ----------------------------------------------------------------------------

def test_schedules_that_go_on_accept_times_above_one():
    edm = schedules.EDM(sigma_max=80.0)
    assert float(edm.sigma(1.25)) == pytest.approx(100.0)
    assert float(edm.t_from_log_snr(torch.tensor(-math.log(100.0)))) == pytest.approx(1.25)
    oracle = MIX.denoiser(edm)
    x = torch.randn(4, 2, dtype=torch.float64) * 100
    assert torch.isfinite(oracle.x0(x, 1.25)).all()  # EDM's churn may step above sigma_max
    assert schedules.VPCosine().t_end == 1.0 and schedules.LinearPath().t_end == 1.0


def test_start_time_is_a_property_of_the_schedule_and_eps_models_refuse_alpha_zero():
    for sched in (schedules.VPCosine(), schedules.LinearPath()):
        assert sched.t_start == sched.t_max < 1 and float(sched.alpha(sched.t_start)) > 0
        eps_model = Denoiser(lambda x, t: torch.zeros_like(x), "eps", sched)
        x = torch.randn(4, 2)
        with pytest.raises(ValueError, match="alpha = 0"):
            samplers.sample_euler(eps_model, x, schedules.uniform_grid(4))
        assert torch.isfinite(samplers.sample_euler(eps_model, x, schedules.uniform_grid(4, sched.t_start))).all()
        v_model = Denoiser(lambda x, t: torch.zeros_like(x), "velocity", sched)
        samplers.sample_euler(v_model, x, schedules.uniform_grid(4))  # a velocity model is fine at t = 1
    for sched in (schedules.VPLinear(), schedules.VE(), schedules.EDM()):
        assert sched.t_start == 1.0


@pytest.mark.parametrize("sched", [schedules.VPLinear(), schedules.VPCosine()], ids=lambda s: s.name)
def test_vp_oracle_velocity_at_t0_is_its_finite_limit(sched):
    oracle = MIX.denoiser(sched)
    x = torch.randn(10, 2, dtype=torch.float64)
    v0 = oracle.velocity(x, 0.0)
    assert torch.isfinite(v0).all()
    torch.testing.assert_close(v0, oracle.velocity(x, 1e-9), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v0, float(sched.d_alpha(0.0)) * (x + MIX.score(x)))


def test_convert_where_it_would_divide_by_zero_raises():
    sched = schedules.LinearPath()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="alpha = 0"):
        targets.convert(x, "eps", "x0", x, 1.0, sched)
    with pytest.raises(ValueError, match="sigma = 0"):
        targets.convert(x, "x0", "eps", x, 0.0, sched)
    with pytest.raises(ValueError, match="sigma = 0"):
        targets.from_x0_eps(x, x, "score", x, 0.0, sched)
    torch.testing.assert_close(targets.convert(x, "velocity", "x0", x, 1.0, sched), x - x)  # det = 1


def test_empty_batch_and_nan_inputs_get_clear_errors():
    oracle = MIX.denoiser(schedules.VPLinear())
    with pytest.raises(ValueError, match="empty batch"):
        oracle.score(torch.zeros(0, 2), 0.5)
    with pytest.raises(ValueError, match="empty batch"):
        MIX.log_prob(torch.zeros(0, 2))
    x = torch.randn(50, 2)
    bad = x.clone()
    bad[3, 1] = float("nan")
    for fn in (metrics.sliced_wasserstein, metrics.energy_distance, metrics.mmd):
        with pytest.raises(ValueError, match="NaN"):
            fn(bad, x)
        with pytest.raises(ValueError, match="NaN"):
            fn(x, bad)


# --- samplers hand back x0 -----------------------------------------------------------------------

SAMPLERS = {
    "euler": lambda m, x, g: samplers.sample_euler(m, x, g, callback=REC),
    "heun": lambda m, x, g: samplers.sample_heun(m, x, g, callback=REC),
    "rk4": lambda m, x, g: samplers.sample_rk4(m, x, g, callback=REC),
    "euler_maruyama": lambda m, x, g: samplers.sample_euler_maruyama(m, x, g, callback=REC),
    "ancestral": lambda m, x, g: samplers.sample_ancestral(m, x, g, callback=REC),
    "annealed_langevin": lambda m, x, g: samplers.sample_annealed_langevin(m, x, g, n_inner=2, callback=REC),
    "predictor_corrector": lambda m, x, g: samplers.sample_predictor_corrector(m, x, g, callback=REC),
}
REC = None


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_recorder_keeps_x0_after_every_sampler(name):
    global REC
    REC = samplers.Recorder(x0_too=True)
    sched = schedules.VPLinear()
    oracle = MIX.denoiser(sched)
    x = samplers.sample_prior(sched, (32, 2), torch.Generator().manual_seed(0), torch.float64)
    grid = schedules.uniform_grid(5, 1.0, 1e-3)
    SAMPLERS[name](oracle, x, grid)
    x0s = REC.x0s
    steps = len(grid) if name == "annealed_langevin" else len(grid) - 1
    assert x0s.shape == (steps, 32, 2) and torch.isfinite(x0s).all()
    if name in ("euler", "heun", "rk4", "ancestral"):
        # the x0 of step i is the model's estimate at the state before it, at grid[i]
        torch.testing.assert_close(x0s[1], oracle.x0(REC.xs[1].double(), float(grid[1])))


def test_plain_langevin_records_no_x0_and_says_why():
    rec = samplers.Recorder(x0_too=True)
    x = torch.randn(8, 2)
    rec.start(x, 0.0)
    samplers.sample_langevin(lambda z: -z, x, 0.1, 3, callback=rec)
    with pytest.raises(ValueError, match="no x0 estimates"):
        rec.x0s


# --- it pays: classifier-free guidance on the interface ------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_cfg_on_the_oracle_is_conditional_at_one_and_unconditional_at_zero(target):
    from utils.guidance import ClassifierFreeGuidance

    sched = schedules.VPLinear()
    oracle = MIX.denoiser(sched)
    x = MIX.sample(64, torch.Generator().manual_seed(2), t=0.4, schedule=sched)[0]
    y = torch.randint(0, MIX.num_classes, (64,), generator=torch.Generator().manual_seed(3))
    for t in (0.05, 0.4, 0.9):
        torch.testing.assert_close(ClassifierFreeGuidance(oracle, 1.0)(x, t, y, target=target),
                                   oracle(x, t, y, target=target), rtol=0, atol=1e-10)
        torch.testing.assert_close(ClassifierFreeGuidance(oracle, 0.0)(x, t, y, target=target),
                                   oracle(x, t, None, target=target), rtol=0, atol=1e-10)
    w = 3.0  # and in between it is the affine combination, for every target alike
    g = ClassifierFreeGuidance(oracle, w)(x, 0.4, y, target=target)
    torch.testing.assert_close(g, w * oracle(x, 0.4, y, target=target) + (1 - w) * oracle(x, 0.4, None, target=target))


def test_exact_flow_map_of_a_learned_vp_model_reaches_the_data_end():
    """sigma' is infinite at t = 0 under VP, so an eps-model's velocity is not defined there; the
    last step of the flow map then uses the midpoint rule (the oracle's exact end is untouched)."""
    from utils.flowmaps import ExactFlowMap

    sched = schedules.VPLinear()
    torch.manual_seed(0)
    model = Denoiser(nets.MLP(2, 16, 1).double(), "eps", sched)
    x = torch.randn(16, 2, dtype=torch.float64)
    assert torch.isfinite(ExactFlowMap(model, 16)(x, 1.0, 0.0)).all()
    oracle = MIX.denoiser(sched)
    fine, coarse = ExactFlowMap(oracle, 256)(x, 1.0, 0.0), ExactFlowMap(oracle, 64)(x, 1.0, 0.0)
    assert float((fine - coarse).norm(dim=1).max()) < 1e-2
