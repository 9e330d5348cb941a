"""Noise schedules x_t = alpha_t x_0 + sigma_t eps and time grids (monograph Ch. 4, Ch. 6, Ch. 9).

Time runs from data (t = 0) to prior (t = 1). A schedule is the pair (alpha_t, sigma_t) with
their time derivatives; from it follow

* the log-SNR            lambda_t = log(alpha_t / sigma_t)  (decreasing in t) and its inverse,
* the EDM noise level    sigma~_t = sigma_t / alpha_t = exp(-lambda_t),
* the forward SDE        dx = f(t) x dt + g(t) dW  with  f = alpha'/alpha,
                         g^2 = d(sigma^2)/dt - 2 f sigma^2  (Ch. 4),
  whose marginals equal the kernel's.

Schedules whose natural clock is not [0, 1] are put on t in [0, 1] by a change of clock that the
class docstring states (VE: sigma = sigma_min (sigma_max/sigma_min)^t; EDM: sigma = sigma_max t).
Solvers that step in sigma or log-SNR move between clocks with :meth:`Schedule.t_from_log_snr`.

Every method takes ``t`` as a float or a tensor of shape (B,) in [0, ``t_end``] and returns a
tensor of the same shape (float64 for float input, else t's dtype). ``t_end`` is 1 where the
schedule really ends (alpha_1 = 0: VP cosine, the linear path) and infinite where its formula
goes on (VP linear, VE, EDM), so a solver that steps above t = 1 (EDM's stochastic churn) or on a
sigma / log-SNR clock moves through the schedule. Models call the unchecked ``_coefficients``
on every evaluation; the public methods check their input (data enters there).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._checks import as_time, check_choice, check_int, check_ordered, check_positive


class Coefficients(NamedTuple):
    """alpha_t, sigma_t and their time derivatives, each shaped like t."""
    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor


class Schedule:
    """Base class. Subclasses define ``_alpha``, ``_sigma``, ``_d_alpha``, ``_d_sigma`` on a
    validated tensor and may override ``_t_from_log_snr`` with a closed form.

    Attributes ``t_min`` and ``t_max`` bound the range where alpha > 0 and sigma > 0, i.e. where
    the log-SNR is finite; log-SNR and EDM grids use them by default, and ``t_max`` is where
    samplers start (:attr:`t_start`). ``t_end`` is the last time the schedule is defined at.
    """

    name = "schedule"
    t_min = 0.0
    t_max = 1.0
    t_end = math.inf

    @property
    def t_start(self) -> float:
        """Where sampling starts: ``t_max``, the last time with alpha > 0 and sigma > 0.

        At t = 1 a VP-cosine or linear path has alpha = 0, where a model that divides by alpha
        (an eps- or score-prediction turned into x0 or a velocity) is NaN; t_max = 0.999 is not."""
        return self.t_max

    def _check(self, t) -> torch.Tensor:
        return as_time(t, t_end=self.t_end)

    # --- public interface -------------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        return self._alpha(self._check(t))

    def sigma(self, t) -> torch.Tensor:
        return self._sigma(self._check(t))

    def d_alpha(self, t) -> torch.Tensor:
        """d alpha_t / dt."""
        return self._d_alpha(self._check(t))

    def d_sigma(self, t) -> torch.Tensor:
        """d sigma_t / dt."""
        return self._d_sigma(self._check(t))

    def coefficients(self, t) -> Coefficients:
        """(alpha, sigma, d_alpha, d_sigma) at t, in one call."""
        return self._coefficients(self._check(t))

    def _coefficients(self, t: torch.Tensor) -> Coefficients:
        """:meth:`coefficients` without the value check, for a tensor t (what models call)."""
        return Coefficients(self._alpha(t), self._sigma(t), self._d_alpha(t), self._d_sigma(t))

    def sigma_d_sigma(self, t) -> torch.Tensor:
        """sigma_t sigma'_t = (1/2) d sigma_t^2 / dt, finite where sigma' alone is not (VP at t = 0).

        The PF-ODE velocity alpha' x0 - sigma sigma' score uses it (:mod:`utils.gmm`)."""
        return self._sigma_d_sigma(self._check(t))

    def _sigma_d_sigma(self, t):
        return self._sigma(t) * self._d_sigma(t)

    def log_snr(self, t) -> torch.Tensor:
        """lambda_t = log(alpha_t / sigma_t); +inf where sigma = 0, -inf where alpha = 0."""
        t = self._check(t)
        return torch.log(self._alpha(t)) - torch.log(self._sigma(t))

    def noise_level(self, t) -> torch.Tensor:
        """EDM's sigma~_t = sigma_t / alpha_t = exp(-lambda_t) (the VE-equivalent noise level)."""
        t = self._check(t)
        return self._sigma(t) / self._alpha(t)

    def t_from_log_snr(self, log_snr) -> torch.Tensor:
        """The inverse of :meth:`log_snr`: the t with lambda_t = log_snr, clamped to [0, t_end]
        (above 1 where the schedule goes on, e.g. EDM's churn above sigma_max)."""
        lam = torch.as_tensor(log_snr, dtype=torch.float64) if not isinstance(log_snr, torch.Tensor) else log_snr
        if torch.isnan(lam).any():
            raise ValueError("log_snr contains NaN; expected real log-SNR values")
        return self._t_from_log_snr(lam).clamp(0.0, self.t_end)

    def f(self, t) -> torch.Tensor:
        """Drift coefficient of the forward SDE, f(t) = alpha'_t / alpha_t (Ch. 4)."""
        t = self._check(t)
        return self._d_alpha(t) / self._alpha(t)

    def g2(self, t) -> torch.Tensor:
        """Squared diffusion coefficient, g(t)^2 = 2 sigma sigma' - 2 f sigma^2 (Ch. 4)."""
        t = self._check(t)
        a, s, da, ds = self._alpha(t), self._sigma(t), self._d_alpha(t), self._d_sigma(t)
        return 2 * s * ds - 2 * (da / a) * s ** 2

    def g(self, t) -> torch.Tensor:
        """Diffusion coefficient of the forward SDE, g(t) = sqrt(g^2)."""
        return self.g2(t).clamp_min(0).sqrt()

    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, sigma_{t_max}^2 I) that sampling starts from
        (alpha_1 x_0 is neglected: alpha_1 is 0 or tiny for every schedule here)."""
        return float(self._sigma(torch.tensor(1.0, dtype=torch.float64)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    # --- defaults for subclasses --------------------------------------------------------------
    def _params(self) -> dict:
        return {}

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Bisection in float64 on the decreasing map t -> lambda_t (closed forms override)."""
        lam = lam.to(torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(64):
            mid = (lo + hi) / 2
            above = (torch.log(self._alpha(mid)) - torch.log(self._sigma(mid))) > lam
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (lo + hi) / 2


class VPLinear(Schedule):
    """Variance-preserving SDE with linear beta(t) = beta_min + t (beta_max - beta_min): the
    continuous-time limit of DDPM's beta range 1e-4..0.02 over 1000 steps (Ch. 4).

    log alpha_t = -(beta_min t + (beta_max - beta_min) t^2 / 2) / 2,  sigma_t = sqrt(1 - alpha_t^2),
    f(t) = -beta(t)/2, g(t)^2 = beta(t).
    """

    name = "vp_linear"
    t_min = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        check_ordered("beta_min", beta_min, "beta_max", beta_max)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _params(self):
        return dict(beta_min=self.beta_min, beta_max=self.beta_max)

    def beta(self, t) -> torch.Tensor:
        t = self._check(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t):
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2) / 2

    def _alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def _d_alpha(self, t):
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min)) * self._alpha(t)

    def _d_sigma(self, t):
        return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)

    def g2(self, t) -> torch.Tensor:
        """g(t)^2 = beta(t) in closed form (the general formula is 0 * inf at t = 0)."""
        return self.beta(t)

    def _sigma_d_sigma(self, t):
        return -self._alpha(t) * self._d_alpha(t)  # alpha^2 + sigma^2 = 1

    def _t_from_log_snr(self, lam):
        # alpha^2 = sigmoid(2 lambda)  =>  (b1 - b0)/2 t^2 + b0 t + log sigmoid(2 lambda) = 0
        log_a2 = torch.nn.functional.logsigmoid(2 * lam.to(torch.float64))
        db = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min ** 2 - 2 * db * log_a2)) / db


class EndsAtOne(Schedule):
    """A schedule with alpha_1 = 0 (VP cosine, the linear path, TrigFlow): it ends at t = 1
    (``t_end``), and samplers start at ``t_start`` = ``t_max`` = 0.999 where the log-SNR is finite."""

    t_min = 1e-3
    t_max = 0.999
    t_end = 1.0


class VPCosine(EndsAtOne):
    """Variance-preserving cosine schedule of Nichol & Dhariwal (2021) (Ch. 4):
    alpha_t = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s)), sigma_t = sqrt(1 - alpha_t^2).

    alpha_1 = 0 exactly, so f and g diverge at t = 1 and the schedule ends there (``t_end`` = 1).
    Samplers start at ``t_start`` = ``t_max`` = 0.999, where the log-SNR is still finite: at t = 1 an
    eps- or score-model cannot give x0 (it divides by alpha_1 = 0). The exact oracle and a
    velocity- or x0-model are finite at t = 1.
    """

    name = "vp_cosine"

    def __init__(self, s: float = 0.008):
        check_positive("s", s)
        self.s = float(s)
        self._c = math.cos(math.pi / 2 * self.s / (1 + self.s))

    def _params(self):
        return dict(s=self.s)

    def _phase(self, t):
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def _alpha(self, t):
        alpha = (torch.cos(self._phase(t)) / self._c).clamp(0.0, 1.0)
        return torch.where(t >= 1, torch.zeros_like(alpha), alpha)  # cos(pi/2) is 6e-17 in floating point

    def _sigma(self, t):
        return torch.sqrt((1 - self._alpha(t) ** 2).clamp_min(0.0))

    def _d_alpha(self, t):
        return -math.pi / 2 / (1 + self.s) * torch.sin(self._phase(t)) / self._c

    def _d_sigma(self, t):
        return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)

    def g2(self, t) -> torch.Tensor:
        """g(t)^2 = -2 f(t) for a variance-preserving schedule (the general formula is 0 * inf
        at t = 0)."""
        return -2 * self.f(t)

    def _sigma_d_sigma(self, t):
        return -self._alpha(t) * self._d_alpha(t)  # alpha^2 + sigma^2 = 1

    def _t_from_log_snr(self, lam):
        alpha = torch.sigmoid(2 * lam.to(torch.float64)).sqrt()
        return 2 / math.pi * (1 + self.s) * torch.acos((alpha * self._c).clamp(-1, 1)) - self.s


class _NoiseOnly(Schedule):
    """alpha_t = 1 and a noise range sigma_min < sigma_max (VE, EDM): the shared parts."""

    def __init__(self, sigma_min: float, sigma_max: float):
        check_ordered("sigma_min", sigma_min, "sigma_max", sigma_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def _params(self):
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def _alpha(self, t):
        return torch.ones_like(t)

    def _d_alpha(self, t):
        return torch.zeros_like(t)


class VE(_NoiseOnly):
    """Variance-exploding schedule of NCSN / score SDE (Ch. 3, Ch. 4): alpha_t = 1 and
    sigma_t = sigma_min (sigma_max / sigma_min)^t (geometric noise levels on the clock t in [0, 1]).

    f = 0, g(t)^2 = 2 sigma_t^2 log(sigma_max / sigma_min). The prior is N(0, sigma_max^2 I).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        super().__init__(sigma_min, sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _d_sigma(self, t):
        return self._sigma(t) * self._log_ratio

    def _t_from_log_snr(self, lam):
        return (-lam.to(torch.float64) - math.log(self.sigma_min)) / self._log_ratio


class LinearPath(EndsAtOne):
    """The linear ("rectified flow", conditional-OT) path alpha_t = 1 - t, sigma_t = t (Sec. 5.3).

    Flow-matching papers run this path the other way (t = 1 data); this book does not.
    f(t) = -1/(1 - t) diverges at t = 1 and the path ends there (``t_end`` = 1). Samplers start at
    ``t_start`` = ``t_max`` = 0.999; a velocity- or x0-model (and the oracle) is also finite at
    t = 1, an eps- or score-model is not (x0 = (x - t eps) / (1 - t)).
    """

    name = "linear"

    def _alpha(self, t):
        return 1 - t

    def _sigma(self, t):
        return t.clone()

    def _d_alpha(self, t):
        return -torch.ones_like(t)

    def _d_sigma(self, t):
        return torch.ones_like(t)

    def _t_from_log_snr(self, lam):
        return torch.sigmoid(-lam.to(torch.float64))


class EDM(_NoiseOnly):
    """EDM's schedule sigma(tau) = tau, alpha = 1 (Karras et al. 2022; Ch. 9), on t in [0, 1] by
    the change of clock tau = sigma_max * t: sigma_t = sigma_max t.

    f = 0, g(t)^2 = 2 sigma_max^2 t. EDM's rho-spaced sampling times are :func:`edm_grid`.
    """

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__(sigma_min, sigma_max)
        self.t_min = self.sigma_min / self.sigma_max

    def _sigma(self, t):
        return self.sigma_max * t


    def _d_sigma(self, t):
        return torch.full_like(t, self.sigma_max)

    def _t_from_log_snr(self, lam):
        return torch.exp(-lam.to(torch.float64)) / self.sigma_max


SCHEDULES = {cls.name: cls for cls in (VPLinear, VPCosine, VE, LinearPath, EDM)}


def get_schedule(name: str, **params) -> Schedule:
    """A schedule by name: ``vp_linear``, ``vp_cosine``, ``ve``, ``linear``, ``edm``."""
    check_choice("name", name, SCHEDULES)
    return SCHEDULES[name](**params)


# --- time grids: n_steps + 1 decreasing times from t_max to t_min, float64 -------------------

def _check_range(t_max, t_min):
    for nm, v in (("t_max", t_max), ("t_min", t_min)):
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{nm}={v!r} is not valid; expected a time in [0, 1]")
    if t_max <= t_min:
        raise ValueError(f"t_max={t_max!r} must exceed t_min={t_min!r} (grids run from noise to data)")


def uniform_grid(n_steps: int, t_max: float = 1.0, t_min: float = 0.0) -> torch.Tensor:
    """n_steps + 1 times uniform in t, from t_max down to t_min."""
    check_int("n_steps", n_steps)
    _check_range(t_max, t_min)
    return torch.linspace(t_max, t_min, n_steps + 1, dtype=torch.float64)


def log_snr_grid(schedule: Schedule, n_steps: int, t_max: float | None = None,
                 t_min: float | None = None) -> torch.Tensor:
    """n_steps + 1 times uniform in log-SNR lambda_t (DPM-Solver's choice, Ch. 9)."""
    check_int("n_steps", n_steps)
    t_max = schedule.t_max if t_max is None else t_max
    t_min = schedule.t_min if t_min is None else t_min
    _check_range(t_max, t_min)
    lam = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    if not torch.isfinite(lam).all():
        raise ValueError(f"log-SNR is not finite at t_max={t_max} or t_min={t_min} for {schedule}; "
                         f"expected a range inside ({schedule.t_min}, {schedule.t_max}) or narrower")
    lams = torch.linspace(float(lam[0]), float(lam[1]), n_steps + 1, dtype=torch.float64)
    t = schedule.t_from_log_snr(lams)
    t[0], t[-1] = t_max, t_min
    return t


def edm_grid(schedule: Schedule, n_steps: int, rho: float = 7.0, t_max: float | None = None,
             t_min: float | None = None) -> torch.Tensor:
    """EDM's rho-spaced grid (Karras et al. 2022, eq. 5) in the noise level sigma~ = sigma/alpha:
    sigma~_i = (sigma~_max^(1/rho) + i/n (sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho,
    mapped to this schedule's clock through its inverse log-SNR."""
    check_int("n_steps", n_steps)
    check_positive("rho", rho)
    t_max = schedule.t_max if t_max is None else t_max
    t_min = schedule.t_min if t_min is None else t_min
    _check_range(t_max, t_min)
    s = schedule.noise_level(torch.tensor([t_max, t_min], dtype=torch.float64))
    if not (torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"noise level is not finite and positive at t_max={t_max} or t_min={t_min} "
                         f"for {schedule}; expected a range inside ({schedule.t_min}, {schedule.t_max})")
    i = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    smax, smin = s[0] ** (1 / rho), s[1] ** (1 / rho)
    sig = (smax + i * (smin - smax)) ** rho
    t = schedule.t_from_log_snr(-torch.log(sig))
    t[0], t[-1] = t_max, t_min
    return t
