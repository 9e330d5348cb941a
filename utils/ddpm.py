"""Discrete-time DDPM (Ho et al. 2020; monograph Ch. 2, the DDPM section).

The forward chain has N steps i = 1..N; step 0 is the data.

Two conventions for the per-step noise (this module stores the first):

* Ho et al. (2020), eq. (2):   q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I),
  so ``beta_i`` is the per-step *variance* (DDPM's 1e-4 .. 0.02 over N = 1000 steps);
* the monograph (Ch. 2):       x_i = sqrt(1 - b_i^2) x_{i-1} + b_i eps,
  so its b_i is the per-step *standard deviation*:  beta_i(Ho) = b_i(monograph)^2.
  :func:`to_ho_betas` and :func:`to_monograph_betas` convert.

With alpha_i = 1 - beta_i and alpha_bar_i = prod_{j<=i} alpha_j (alpha_bar_0 = 1):

    marginal   q(x_i | x_0)          = N(sqrt(alpha_bar_i) x_0, (1 - alpha_bar_i) I)          (Ho eq. 4)
    posterior  q(x_{i-1} | x_i, x_0) = N(mu~_i, beta~_i I),                                   (Ho eq. 6-7)
               mu~_i    = sqrt(alpha_bar_{i-1}) beta_i / (1 - alpha_bar_i) x_0
                          + sqrt(alpha_i) (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) x_i,
               beta~_i  = (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) beta_i.

Continuous time. Step i sits at t_i = i / N. Ho's linear betas are the discretisation of
:class:`utils.schedules.VPLinear`: beta_i = beta(s_i) / N with beta(s) = beta_min + s (beta_max - beta_min)
and s_i = (i - 1)/(N - 1) (Song et al. 2021, App. C), so alpha_bar_i = alpha_{t_i}^2 + O(1/N) under
VPLinear(beta_min, beta_max); beta_min = 0.1, beta_max = 20, N = 1000 give DDPM's 1e-4 .. 0.02.
:class:`DiscreteVP` is the chain itself as a schedule on [0, 1] (alpha_{t_i}^2 = alpha_bar_i
exactly at the grid points), so the exact oracle (``gmm.denoiser(DiscreteVP(chain))``) and the
continuous samplers of :mod:`utils.samplers` on ``uniform_grid(N)`` meet this module exactly.

Shapes: x is (B, *D); a step index i is an int in 1..N or a long tensor of shape (B,).
"""
from __future__ import annotations

import math

import torch

from ._checks import append_dims, check_batch, check_choice, check_int, check_positive
from .samplers import Recorder
from .schedules import Schedule
from .targets import Model


def to_ho_betas(b: torch.Tensor) -> torch.Tensor:
    """The monograph's per-step standard deviations b_i -> Ho et al.'s variances beta_i = b_i^2."""
    b = torch.as_tensor(b, dtype=torch.float64)
    if (b <= 0).any() or (b >= 1).any():
        raise ValueError(f"b has values in [{float(b.min()):g}, {float(b.max()):g}]; expected stds in (0, 1)")
    return b ** 2


def to_monograph_betas(betas: torch.Tensor) -> torch.Tensor:
    """Ho et al.'s per-step variances beta_i -> the monograph's standard deviations sqrt(beta_i)."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if (betas <= 0).any() or (betas >= 1).any():
        raise ValueError(f"betas has values in [{float(betas.min()):g}, {float(betas.max()):g}]; "
                         "expected variances in (0, 1)")
    return betas.sqrt()


def monograph_alpha_bar(b: torch.Tensor) -> torch.Tensor:
    """The monograph's alpha-bar (Ch. 2, §2.2): alpha_bar_i = prod_{k<=i} sqrt(1 - b_k^2) for its
    per-step standard deviations b: (N,); returns (N + 1,) with alpha_bar_0 = 1.

    p(x_i | x_0) = N(alpha_bar_i x_0, (1 - alpha_bar_i^2) I), so this alpha_bar is the square root of
    Ho et al.'s (``DDPMChain.alpha_bar``, the product of 1 - beta_k with beta_k = b_k^2).
    """
    b = torch.as_tensor(b, dtype=torch.float64)
    if b.ndim != 1 or (b <= 0).any() or (b >= 1).any():
        raise ValueError(f"b has shape {tuple(b.shape)} and values outside (0, 1); expected (N,) stds in (0, 1)")
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(torch.sqrt(1 - b ** 2), 0)])


class DDPMChain:
    """The forward chain of Ho et al. (2020) with N steps (Ch. 2, the DDPM section).

    Args:
        betas: (N,) per-step variances beta_1..beta_N in (0, 1) (Ho's convention; see the module
            docstring for the monograph's).

    Attributes, each a float64 tensor of shape (N + 1,) indexed by the step i = 0..N (index 0 is
    the data: beta[0] = 0, alpha_bar[0] = 1): ``beta``, ``alpha`` = 1 - beta, ``alpha_bar``.
    ``t`` (N + 1,) holds the continuous times t_i = i / N.
    """

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError(f"betas has shape {tuple(betas.shape)}; expected (N,) with N >= 2")
        if (betas <= 0).any() or (betas >= 1).any():
            raise ValueError(f"betas has values in [{float(betas.min()):g}, {float(betas.max()):g}]; "
                             "expected per-step variances in (0, 1) (Ho et al.'s convention)")
        self.N = betas.numel()
        self.beta = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        self.alpha = 1 - self.beta
        self.alpha_bar = torch.cumprod(self.alpha, 0)
        self.t = torch.arange(self.N + 1, dtype=torch.float64) / self.N

    @classmethod
    def linear(cls, n_steps: int = 1000, beta_min: float = 0.1, beta_max: float = 20.0) -> "DDPMChain":
        """Ho et al.'s linear schedule: beta_i = (beta_min + (i-1)/(N-1) (beta_max - beta_min)) / N,
        i.e. 1e-4 .. 0.02 for N = 1000 and the defaults (those of VPLinear)."""
        check_int("n_steps", n_steps, 2)
        check_positive("beta_min", beta_min)
        check_positive("beta_max", beta_max)
        if beta_max < beta_min or beta_max >= n_steps:
            raise ValueError(f"beta_max={beta_max!r} is not valid; expected beta_min <= beta_max < n_steps={n_steps}")
        s = torch.arange(n_steps, dtype=torch.float64) / (n_steps - 1)
        return cls((beta_min + s * (beta_max - beta_min)) / n_steps)

    @classmethod
    def from_schedule(cls, schedule: Schedule, n_steps: int) -> "DDPMChain":
        """The chain whose alpha_bar_i equals alpha_{t_i}^2 of a continuous VP schedule at t_i = i/N:
        beta_i = 1 - alpha_{t_i}^2 / alpha_{t_{i-1}}^2."""
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule has type {type(schedule).__name__}; expected a utils.schedules.Schedule")
        check_int("n_steps", n_steps, 2)
        a2 = schedule.alpha(torch.arange(n_steps + 1, dtype=torch.float64) / n_steps) ** 2
        return cls(-torch.expm1(torch.log(a2[1:]) - torch.log(a2[:-1])))

    def __repr__(self):
        return f"DDPMChain(N={self.N}, beta_1={float(self.beta[1]):.3g}, beta_N={float(self.beta[-1]):.3g})"

    # --- helpers ------------------------------------------------------------------------------
    def _step(self, i, x: torch.Tensor | None = None, lo: int = 1) -> torch.Tensor:
        """i as a long tensor (0-d or (B,)), checked to lie in lo..N."""
        if isinstance(i, bool) or not isinstance(i, (int, torch.Tensor)):
            raise ValueError(f"i has type {type(i).__name__}; expected an int step or a (B,) long tensor")
        i = torch.as_tensor(i)
        if i.is_floating_point() or i.ndim > 1 or (i < lo).any() or (i > self.N).any():
            raise ValueError(f"i={i.tolist()!r} is not valid; expected integer steps in {lo}..{self.N}")
        if x is not None and i.ndim == 1 and i.shape[0] != x.shape[0]:
            raise ValueError(f"i has shape {tuple(i.shape)}; expected an int or ({x.shape[0]},) to match x")
        return i.long().cpu()

    def _coef(self, v: torch.Tensor, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """v[i] shaped to broadcast against x (B, *D), in x's dtype and device."""
        c = v[i].to(dtype=x.dtype, device=x.device)
        return append_dims(c, x.ndim) if c.ndim == 1 else c

    # --- the forward chain --------------------------------------------------------------------
    def forward_step(self, x_prev: torch.Tensor, i, generator=None) -> torch.Tensor:
        """One step of the chain: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z (Ho eq. 2)."""
        check_batch("x_prev", x_prev)
        i = self._step(i, x_prev)
        z = torch.randn(x_prev.shape, generator=generator, dtype=x_prev.dtype).to(x_prev.device)
        return self._coef(self.alpha, i, x_prev).sqrt() * x_prev + self._coef(self.beta, i, x_prev).sqrt() * z

    def marginal(self, x0: torch.Tensor, i):
        """q(x_i | x_0) = N(mean, var I) (Ho eq. 4): returns (mean (B, *D), var broadcastable)."""
        check_batch("x0", x0)
        i = self._step(i, x0, lo=0)
        ab = self._coef(self.alpha_bar, i, x0)
        return ab.sqrt() * x0, 1 - ab

    def sample_marginal(self, x0: torch.Tensor, i, generator=None):
        """x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) eps in one draw. Returns (x_i, eps)."""
        mean, var = self.marginal(x0, i)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return mean + var.sqrt() * eps, eps

    def posterior(self, x_i: torch.Tensor, x0: torch.Tensor, i):
        """q(x_{i-1} | x_i, x_0) = N(mu~, beta~ I) (Ho eq. 6-7): returns (mu~ (B, *D), beta~)."""
        check_batch("x_i", x_i)
        if x0.shape != x_i.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}; expected the shape of x_i, {tuple(x_i.shape)}")
        i = self._step(i, x_i)
        ab, ab_prev = self._coef(self.alpha_bar, i, x_i), self._coef(self.alpha_bar, i - 1, x_i)
        beta, alpha = self._coef(self.beta, i, x_i), self._coef(self.alpha, i, x_i)
        mean = (ab_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - ab_prev) * x_i) / (1 - ab)
        return mean, (1 - ab_prev) / (1 - ab) * beta

    def schedule(self) -> "DiscreteVP":
        """This chain as a continuous-time schedule (alpha_{i/N}^2 = alpha_bar_i)."""
        return DiscreteVP(self)


class DiscreteVP(Schedule):
    """A DDPM chain as a schedule on t in [0, 1]: log alpha_t interpolates 0.5 log alpha_bar_i
    linearly between the grid points t_i = i / N, sigma_t = sqrt(1 - alpha_t^2).

    At t_i the noise level equals the chain's exactly, so ``gmm.denoiser(DiscreteVP(chain))`` is
    the exact oracle of x_i and ``samplers.sample_ancestral`` on ``uniform_grid(N)`` is the DDPM
    ancestral sampler. Between grid points it is a piecewise-smooth stand-in (f, g jump at t_i).
    """

    name = "discrete_vp"
    t_end = 1.0

    def __init__(self, chain: DDPMChain):
        if not isinstance(chain, DDPMChain):
            raise ValueError(f"chain has type {type(chain).__name__}; expected a DDPMChain")
        self.chain = chain
        self._la = 0.5 * torch.log(chain.alpha_bar)          # (N+1,) log alpha at t_i
        self.t_min = 1.0 / chain.N

    def _params(self):
        return dict(N=self.chain.N)

    def _locate(self, t):
        N = self.chain.N
        u = t * N
        k = torch.floor(u).clamp(0, N - 1).long()
        la = self._la.to(device=t.device, dtype=t.dtype)
        return u - k, la[k], la[k + 1] - la[k]

    def _alpha(self, t):
        frac, la0, dla = self._locate(t)
        return torch.exp(la0 + frac * dla)

    def _sigma(self, t):
        frac, la0, dla = self._locate(t)
        return torch.sqrt(-torch.expm1(2 * (la0 + frac * dla)))

    def _d_alpha(self, t):
        frac, la0, dla = self._locate(t)
        return self.chain.N * dla * torch.exp(la0 + frac * dla)

    def _d_sigma(self, t):
        return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)

    def _sigma_d_sigma(self, t):
        return -self._alpha(t) * self._d_alpha(t)  # alpha^2 + sigma^2 = 1


# --- the ELBO (Ho et al. eq. 5) -----------------------------------------------------------------

def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """KL(N(mean1, var1 I) || N(mean2, var2 I)) summed over all but the batch dim:
    0.5 sum [log(var2/var1) + (var1 + (mean1 - mean2)^2) / var2 - 1]. means: (B, *D); variances
    broadcast against them (floats, (B, 1, ...) tensors or (B, *D)). Returns (B,)."""
    check_batch("mean1", mean1)
    var1 = torch.as_tensor(var1, dtype=mean1.dtype, device=mean1.device)
    var2 = torch.as_tensor(var2, dtype=mean1.dtype, device=mean1.device)
    if (var1 <= 0).any() or (var2 <= 0).any():
        raise ValueError("var1 or var2 has non-positive entries; expected variances > 0")
    kl = 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)
    return kl.expand(mean1.shape).flatten(1).sum(1)


def gaussian_nll(x, mean, var) -> torch.Tensor:
    """-log N(x; mean, var I) summed over all but the batch dim; returns (B,)."""
    check_batch("x", x)
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    nll = 0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)
    return nll.expand(x.shape).flatten(1).sum(1)


def _eps_fn(model, chain: DDPMChain):
    """eps_hat(x, i) from a Model (asked at t_i = i/N) or an eps-net net(x, t: (B,))."""
    if isinstance(model, Model):
        return lambda x, i: model.eps(x, float(chain.t[i]))
    if not callable(model):
        raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model or an eps-net callable")
    return lambda x, i: model(x, torch.full((x.shape[0],), float(chain.t[i]), dtype=x.dtype, device=x.device))


@torch.no_grad()
def elbo_terms(model, chain: DDPMChain, x0: torch.Tensor, generator=None) -> torch.Tensor:
    """The negative ELBO of Ho et al. eq. (5), term by term, in nats: returns (B, N + 1) with

        column 0:        L_0     = -log p(x_0 | x_1),   p = N(mu_theta(x_1, 1), beta_1 I)
        column i-1 (2..N): L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i)),  p = N(mu_theta, beta~_i I)
        column N:        L_N     = KL(q(x_N | x_0) || N(0, I))

    each for one draw x_i ~ q(x_i | x_0); the sum over columns is an unbiased estimate of
    -ELBO(x_0) >= -log p_theta(x_0). mu_theta = (x_i - beta_i / sqrt(1 - alpha_bar_i) eps_hat) / sqrt(alpha_i)
    (Ho eq. 11) with eps_hat from ``model`` (a Model or an eps-net, see :func:`sample_ddpm`).
    """
    check_batch("x0", x0)
    eps_hat = _eps_fn(model, chain)
    cols = []
    for i in range(1, chain.N + 1):
        x_i, _ = chain.sample_marginal(x0, i, generator)
        mu = (x_i - float(chain.beta[i] / (1 - chain.alpha_bar[i]).sqrt()) * eps_hat(x_i, i)) / float(chain.alpha[i].sqrt())
        if i == 1:
            cols.append(gaussian_nll(x0, mu, float(chain.beta[1])))
        else:
            mean_q, var_q = chain.posterior(x_i, x0, i)
            cols.append(gaussian_kl(mean_q, var_q, mu, var_q))
    mean_N, var_N = chain.marginal(x0, chain.N)
    cols.append(gaussian_kl(mean_N, var_N, torch.zeros_like(x0), 1.0))
    return torch.stack(cols, 1)


def loss_simple(chain: DDPMChain):
    """Ho et al.'s L_simple (eq. 14) as a loss for :func:`utils.training.train`:
    loss(net, x0, y=None, generator=None) = E_{i ~ U{1..N}, eps} || eps - net(x_i, i/N) ||^2 (mean over dims)."""
    if not isinstance(chain, DDPMChain):
        raise ValueError(f"chain has type {type(chain).__name__}; expected a DDPMChain")

    def loss(net, x0, y=None, generator=None):
        i = torch.randint(1, chain.N + 1, (x0.shape[0],), generator=generator, device=x0.device).cpu()
        x_i, eps = chain.sample_marginal(x0, i, generator)
        t = chain.t[i].to(dtype=x0.dtype, device=x0.device)
        return ((net(x_i, t) - eps) ** 2).flatten(1).mean(1).mean()

    return loss


# --- ancestral sampling (Ho et al. Alg. 2) -------------------------------------------------------

@torch.no_grad()
def sample_ddpm(model, x: torch.Tensor, chain: DDPMChain, variance: str = "posterior",
                generator=None, callback=None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. Alg. 2), from x = x_N ~ N(0, I) down to x_0:

        x_{i-1} = (x_i - beta_i / sqrt(1 - alpha_bar_i) eps_hat(x_i, i)) / sqrt(alpha_i) + sigma_i z,

    z ~ N(0, I) except at i = 1, sigma_i^2 = beta~_i (``variance="posterior"``, which makes it the
    posterior q(x_{i-1} | x_i, x0_hat) and equal to ``samplers.sample_ancestral`` on
    ``uniform_grid(N)`` under ``chain.schedule()``) or beta_i (``"beta"``; Ho et al. report both work).

    ``model``: a :class:`utils.targets.Model` (asked for eps at t_i = i/N under its own schedule:
    exact for ``DiscreteVP(chain)``) or an eps-net ``net(x, t)`` with t: (B,) = i/N.
    ``callback`` gets ``{"i", "t", "x", "x0"}`` after each step, as in :mod:`utils.samplers`.
    """
    check_batch("x", x)
    check_choice("variance", variance, ("posterior", "beta"))
    if not isinstance(chain, DDPMChain):
        raise ValueError(f"chain has type {type(chain).__name__}; expected a DDPMChain")
    eps_hat = _eps_fn(model, chain)
    if isinstance(callback, Recorder):
        callback.start(x, chain.t[-1])
    beta, alpha, ab = chain.beta, chain.alpha, chain.alpha_bar
    for step, i in enumerate(range(chain.N, 0, -1)):
        eps = eps_hat(x, i)
        x0_hat = (x - float((1 - ab[i]).sqrt()) * eps) / float(ab[i].sqrt())
        x = (x - float(beta[i] / (1 - ab[i]).sqrt()) * eps) / float(alpha[i].sqrt())
        if i > 1:
            var = float((1 - ab[i - 1]) / (1 - ab[i]) * beta[i]) if variance == "posterior" else float(beta[i])
            x = x + math.sqrt(var) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        if callback is not None:
            callback({"i": step, "t": float(chain.t[i - 1]), "x": x, "x0": x0_hat})
    return x
