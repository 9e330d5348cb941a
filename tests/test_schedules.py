"""Schedules: derivatives vs autograd, SDE coefficients vs their definitions and closed forms,
the log-SNR inverse, and the time grids (monograph Ch. 4, Ch. 9)."""
import math

import pytest
import torch

from utils import schedules
from utils.schedules import EDM, VE, LinearPath, VPCosine, VPLinear, edm_grid, log_snr_grid, uniform_grid

T_INTERIOR = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99], dtype=torch.float64)


def _autograd(fn, t):
    t = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((fn(t) + 0 * t).sum(), t)  # + 0 t: a constant alpha has no graph
    return grad


def test_alpha_sigma_endpoints(schedule):
    a0, s0 = schedule.alpha(0.0), schedule.sigma(0.0)
    if isinstance(schedule, (VE, )):
        assert float(s0) == pytest.approx(schedule.sigma_min)
    else:
        assert float(s0) == pytest.approx(0.0, abs=1e-12)
    assert float(a0) == pytest.approx(1.0)
    assert float(schedule.sigma(1.0)) == pytest.approx(schedule.prior_std())
    if isinstance(schedule, (VPCosine, LinearPath)):
        assert float(schedule.alpha(1.0)) == pytest.approx(0.0, abs=1e-12)


def test_shapes_and_dtypes(schedule):
    assert schedule.alpha(0.5).dtype == torch.float64 and schedule.alpha(0.5).ndim == 0
    t32 = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float32)
    for fn in (schedule.alpha, schedule.sigma, schedule.d_alpha, schedule.d_sigma, schedule.log_snr,
               schedule.f, schedule.g2, schedule.g, schedule.noise_level):
        out = fn(t32)
        assert out.shape == (3,) and out.dtype == torch.float32
    c = schedule.coefficients(T_INTERIOR)
    torch.testing.assert_close(c.alpha, schedule.alpha(T_INTERIOR))
    torch.testing.assert_close(c.d_sigma, schedule.d_sigma(T_INTERIOR))


def test_derivatives_match_autograd(schedule):
    t = T_INTERIOR
    torch.testing.assert_close(schedule.d_alpha(t), _autograd(schedule.alpha, t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(schedule.d_sigma(t), _autograd(schedule.sigma, t), rtol=1e-10, atol=1e-12)


def test_f_and_g2_match_their_definitions(schedule):
    """f = d log alpha / dt and g^2 = d sigma^2/dt - 2 f sigma^2, both by autograd."""
    t = T_INTERIOR
    f_ref = _autograd(lambda u: torch.log(schedule.alpha(u)), t)
    torch.testing.assert_close(schedule.f(t), f_ref, rtol=1e-10, atol=1e-12)
    g2_ref = _autograd(lambda u: schedule.sigma(u) ** 2, t) - 2 * f_ref * schedule.sigma(t) ** 2
    torch.testing.assert_close(schedule.g2(t), g2_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(schedule.g(t) ** 2, schedule.g2(t), rtol=1e-10, atol=1e-12)
    assert (schedule.g2(t) > 0).all()


def test_closed_forms_of_sde_coefficients():
    t = T_INTERIOR
    vp = VPLinear(beta_min=0.1, beta_max=20.0)
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(vp.beta(t), beta)
    torch.testing.assert_close(vp.g2(t), beta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vp.f(t), -beta / 2, rtol=1e-12, atol=1e-12)
    ve = VE(sigma_min=0.01, sigma_max=50.0)
    torch.testing.assert_close(ve.f(t), torch.zeros_like(t))
    torch.testing.assert_close(ve.g2(t), 2 * ve.sigma(t) ** 2 * math.log(5000.0))
    edm = EDM(sigma_max=80.0)
    torch.testing.assert_close(edm.g2(t), 2 * 80.0 ** 2 * t)
    lin = LinearPath()
    torch.testing.assert_close(lin.f(t), -1 / (1 - t))
    # variance preserving: alpha^2 + sigma^2 = 1
    for s in (vp, VPCosine()):
        torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))


def test_log_snr_and_noise_level(schedule):
    t = T_INTERIOR
    lam = schedule.log_snr(t)
    torch.testing.assert_close(lam, torch.log(schedule.alpha(t) / schedule.sigma(t)))
    torch.testing.assert_close(schedule.noise_level(t), torch.exp(-lam))
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease in t"


@pytest.mark.parametrize("closed_form", [True, False], ids=["closed_form", "bisection"])
def test_log_snr_inverse_round_trip(schedule, closed_form):
    t = torch.linspace(max(schedule.t_min, 0.01), min(schedule.t_max, 0.99), 23, dtype=torch.float64)
    lam = schedule.log_snr(t)
    if closed_form:
        back = schedule.t_from_log_snr(lam)
    else:  # the generic bisection of the base class
        back = schedules.Schedule._t_from_log_snr(schedule, lam)
    torch.testing.assert_close(back, t, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(schedule.log_snr(back), lam, rtol=1e-8, atol=1e-8)


def test_t_from_log_snr_clamps_and_rejects_nan(schedule):
    out = schedule.t_from_log_snr(torch.tensor([1e3, -1e3], dtype=torch.float64))
    assert ((out >= 0) & (out <= schedule.t_end)).all()
    with pytest.raises(ValueError, match="log_snr"):
        schedule.t_from_log_snr(torch.tensor([float("nan")]))


def test_uniform_grid():
    g = uniform_grid(10, t_max=0.9, t_min=0.1)
    assert g.shape == (11,) and g.dtype == torch.float64
    assert float(g[0]) == 0.9 and float(g[-1]) == pytest.approx(0.1)
    torch.testing.assert_close(g[:-1] - g[1:], torch.full((10,), 0.08, dtype=torch.float64))


def test_log_snr_grid_is_uniform_in_lambda(schedule):
    g = log_snr_grid(schedule, 12)
    assert g.shape == (13,) and (g[1:] < g[:-1]).all()
    assert float(g[0]) == schedule.t_max and float(g[-1]) == schedule.t_min
    d = torch.diff(schedule.log_snr(g))
    torch.testing.assert_close(d, d.mean().expand(12), rtol=1e-7, atol=1e-7)
    assert float(d.mean()) > 0


def test_edm_grid_rho_spacing(schedule):
    rho = 7.0
    g = edm_grid(schedule, 10, rho=rho)
    assert g.shape == (11,) and (g[1:] < g[:-1]).all()
    assert float(g[0]) == schedule.t_max and float(g[-1]) == schedule.t_min
    root = schedule.noise_level(g) ** (1 / rho)
    d = torch.diff(root)
    torch.testing.assert_close(d, d.mean().expand(10), rtol=1e-7, atol=1e-9)
    assert float(d.mean()) < 0


def test_edm_grid_on_edm_schedule_is_karras_sigmas():
    s = EDM(sigma_min=0.002, sigma_max=80.0)
    g = edm_grid(s, 18)
    i = torch.arange(19, dtype=torch.float64)
    ref = (80.0 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(s.sigma(g), ref, rtol=1e-10, atol=1e-12)


def test_get_schedule():
    for name, cls in schedules.SCHEDULES.items():
        assert isinstance(schedules.get_schedule(name), cls)
    s = schedules.get_schedule("ve", sigma_max=10.0)
    assert s.prior_std() == pytest.approx(10.0)
    assert "VE" in repr(s) and "sigma_max=10" in repr(s)


# --- bad inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_time_outside_unit_interval(schedule, t):
    """Negative times and NaN are errors; above 1 only where the schedule really ends (t_end = 1:
    alpha_1 = 0); VP linear, VE and EDM go on (EDM's churn steps above sigma_max)."""
    if t > 1 and schedule.t_end > 1:
        a, s = schedule.alpha(t), schedule.sigma(t)
        assert torch.isfinite(a) and torch.isfinite(s) and float(s) > float(schedule.sigma(1.0))
        torch.testing.assert_close(schedule.t_from_log_snr(schedule.log_snr(t)), torch.tensor(t, dtype=torch.float64))
        return
    with pytest.raises(ValueError, match="t has values"):
        schedule.alpha(t)
    with pytest.raises(ValueError, match="t has values"):
        schedule.sigma(torch.tensor([0.5, t]))


def test_bad_time_types(schedule):
    with pytest.raises(ValueError, match="t has shape"):
        schedule.alpha(torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="t has type"):
        schedule.alpha("0.5")


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="name='nope'"):
        schedules.get_schedule("nope")
    with pytest.raises(ValueError, match="beta_min"):
        VPLinear(beta_min=-1.0)
    with pytest.raises(ValueError, match="beta_max"):
        VPLinear(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        VE(sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma_max"):
        EDM(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="s="):
        VPCosine(s=0)


def test_bad_grids():
    with pytest.raises(ValueError, match="n_steps"):
        uniform_grid(0)
    with pytest.raises(ValueError, match="n_steps"):
        uniform_grid(2.5)
    with pytest.raises(ValueError, match="t_max"):
        uniform_grid(10, t_max=0.1, t_min=0.5)
    with pytest.raises(ValueError, match="t_max"):
        uniform_grid(10, t_max=1.5)
    with pytest.raises(ValueError, match="t_min"):
        uniform_grid(10, t_min=-0.5)
    with pytest.raises(ValueError, match="rho"):
        edm_grid(EDM(), 10, rho=0.0)
    with pytest.raises(ValueError, match="log-SNR is not finite"):
        log_snr_grid(LinearPath(), 10, t_max=1.0)
    with pytest.raises(ValueError, match="noise level"):
        edm_grid(EDM(), 10, t_min=0.0)
