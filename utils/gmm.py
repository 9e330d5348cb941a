"""The exact Gaussian-mixture oracle: ground truth without training (monograph Ch. 6, §6.3; Ch. 3 for Tweedie).

If p_0 = sum_k w_k N(mu_k, Sigma_k) and x_t = alpha_t x_0 + sigma_t eps, then every marginal is
again a Gaussian mixture, in closed form:

    p_t = sum_k w_k N(alpha_t mu_k, C_k(t)),   C_k(t) = alpha_t^2 Sigma_k + sigma_t^2 I.

With responsibilities r_k(x) = w_k N(x; alpha mu_k, C_k) / p_t(x) and d_k = x - alpha mu_k:

    score(x)     = -sum_k r_k C_k^{-1} d_k
    E[x0 | x_t]  =  sum_k r_k (mu_k + alpha Sigma_k C_k^{-1} d_k)        (Gaussian conditioning)
    E[eps | x_t] = -sigma score(x)                                        (Tweedie, Ch. 3, Ch. 6)
    velocity     =  alpha' E[x0 | x_t] + sigma' E[eps | x_t]               (PF-ODE, Ch. 4)

:meth:`GaussianMixture.denoiser` returns these through the :class:`~utils.targets.Model`
interface, so samplers, solvers, guidance, likelihoods and flow maps can be run against the
truth. A label y: (B,) makes every answer class-conditional (p_t(x | y)); the entries equal to
:data:`utils.targets.NULL_LABEL` stay unconditional, as a classifier-free-guidance net's null label.
Computation is in float64; results come back in the dtype of ``x``. The public methods check
their input; under ``torch.func`` transforms and ``torch.compile`` the value checks are skipped
and the oracle traces (jvp, vmap).
"""
from __future__ import annotations

import math

import torch

from ._checks import as_time, check_batch, check_int, tracing
from .schedules import Schedule
from .targets import NULL_LABEL, Model


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) in D dimensions.

    Args:
        means: (K, D).
        covs: (K, D, D) covariances, or (K,) / float isotropic standard deviations.
        weights: (K,) non-negative, normalised here; default uniform.
        labels: (K,) integer class of each component (for conditional oracles); default
            ``arange(K)``.
    """

    def __init__(self, means, covs=1.0, weights=None, labels=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means has shape {tuple(means.shape)}; expected (K, D)")
        K, D = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim <= 1:  # isotropic standard deviations
            if covs.ndim == 1 and covs.shape[0] != K:
                raise ValueError(f"covs has shape {tuple(covs.shape)}; expected (K,)=({K},) stds or (K, D, D)")
            std = covs.expand(K)
            if (std <= 0).any():
                raise ValueError(f"covs has non-positive standard deviations {std.tolist()}; expected > 0")
            covs = std[:, None, None] ** 2 * torch.eye(D, dtype=torch.float64)
        if covs.shape != (K, D, D):
            raise ValueError(f"covs has shape {tuple(covs.shape)}; expected ({K}, {D}, {D}) or ({K},)")
        if not torch.allclose(covs, covs.transpose(1, 2)) or (torch.linalg.eigvalsh(covs) <= 0).any():
            raise ValueError("covs are not symmetric positive definite; expected covariance matrices")
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights={weights.tolist()} is not valid; expected {K} non-negative numbers")
        labels = torch.arange(K) if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (K,):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected ({K},)")
        self.means, self.covs = means, covs
        self.weights = weights / weights.sum()
        self.labels = labels
        self.dim = D

    def __repr__(self):
        return f"GaussianMixture(K={len(self.weights)}, D={self.dim})"

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    # --- sampling -----------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, t=None,
               schedule: Schedule | None = None, y=None):
        """n samples of p_0 (or of p_t with ``t`` and ``schedule``). Returns (x: (n, D), labels: (n,)).

        With ``y`` (an int or (n,) tensor) the samples come from the class-conditional mixture.
        """
        check_int("n", n)
        logw = self._log_weights(y, n)
        k = torch.multinomial(logw.exp(), 1, generator=generator).squeeze(1)
        L = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[k] + (L[k] @ z[:, :, None]).squeeze(-1)
        if t is not None:
            if schedule is None:
                raise ValueError("schedule is None; expected a Schedule when t is given")
            tt = as_time(t, like=x, batch=n)
            a, s = schedule.alpha(tt)[:, None], schedule.sigma(tt)[:, None]
            x = a * x + s * torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return x, self.labels[k]

    def marginal(self, t: float, schedule: Schedule) -> "GaussianMixture":
        """p_t as a GaussianMixture (scalar t)."""
        a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(a * self.means, a ** 2 * self.covs + s ** 2 * eye, self.weights, self.labels)

    # --- the closed forms ---------------------------------------------------------------------
    def _log_weights(self, y, n):
        logw = self.weights.log().expand(n, -1)
        if y is None:
            return logw
        y = torch.as_tensor(y, dtype=torch.long)
        y = y.expand(n) if y.ndim == 0 else y
        if y.shape != (n,):
            raise ValueError(f"y has shape {tuple(y.shape)}; expected an int or ({n},)")
        if not tracing() and (((y < 0) & (y != NULL_LABEL)) | (y >= self.num_classes)).any():
            raise ValueError(f"y has labels outside [0, {self.num_classes}) and not NULL_LABEL={NULL_LABEL}; "
                             f"got {y.unique().tolist()}")
        mask = (self.labels[None, :] == y[:, None]) | (y[:, None] == NULL_LABEL)
        logw = torch.where(mask, logw, torch.full_like(logw, -math.inf))
        return logw - torch.logsumexp(logw, dim=1, keepdim=True)  # p(k | y): log_prob is log p_t(x | y)

    def _terms(self, x: torch.Tensor, t, schedule: Schedule | None, y=None):
        """log p_t(x), score, E[x0|x] and sigma_t in float64 for x: (B, D)."""
        check_batch("x", x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.dim})")
        x = x.to(torch.float64)
        B, D = x.shape
        if t is None:
            a = torch.ones(B, dtype=torch.float64)
            s = torch.zeros(B, dtype=torch.float64)
        else:
            if schedule is None:
                raise ValueError("schedule is None; expected a Schedule when t is given")
            tt = as_time(t, like=x, batch=B, t_end=schedule.t_end)
            a, s = schedule._alpha(tt), schedule._sigma(tt)
        eye = torch.eye(D, dtype=torch.float64)
        d = x[:, None, :] - a[:, None, None] * self.means                                  # (B,K,D)
        if not tracing() and bool((a == a[0]).all() and (s == s[0]).all()):
            # one time for the whole batch (the common case in samplers): factor K matrices, not B*K
            L = torch.linalg.cholesky(a[0] ** 2 * self.covs + s[0] ** 2 * eye)             # (K,D,D)
            Cinv_d = torch.cholesky_solve(d.transpose(0, 1).transpose(1, 2), L)            # (K,D,B)
            Cinv_d = Cinv_d.transpose(1, 2).transpose(0, 1)                                 # (B,K,D)
            logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1).expand(B, -1)
        else:
            C = a[:, None, None, None] ** 2 * self.covs + s[:, None, None, None] ** 2 * eye  # (B,K,D,D)
            L = torch.linalg.cholesky(C)
            Cinv_d = torch.cholesky_solve(d[..., None], L).squeeze(-1)                     # (B,K,D)
            logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)            # (B,K)
        logN = -0.5 * (d * Cinv_d).sum(-1) - 0.5 * logdet - 0.5 * D * math.log(2 * math.pi)
        joint = self._log_weights(y, B) + logN
        log_p = torch.logsumexp(joint, dim=1)
        r = torch.softmax(joint, dim=1)                                                    # (B,K)
        score = -(r[..., None] * Cinv_d).sum(1)
        x0_k = self.means + a[:, None, None] * (self.covs @ Cinv_d[..., None]).squeeze(-1)
        x0 = (r[..., None] * x0_k).sum(1)
        return log_p, score, x0, s, tt if t is not None else None

    def log_prob(self, x, t=None, schedule: Schedule | None = None, y=None) -> torch.Tensor:
        """log p_t(x) (log p_0 without t; log p_t(x | y) with y), shape (B,), in x's dtype."""
        return self._terms(x, t, schedule, y)[0].to(x.dtype)

    def score(self, x, t=None, schedule: Schedule | None = None, y=None) -> torch.Tensor:
        """grad_x log p_t(x), shape (B, D), in x's dtype."""
        return self._terms(x, t, schedule, y)[1].to(x.dtype)

    def denoiser(self, schedule: Schedule) -> "MixtureDenoiser":
        """The exact oracle under ``schedule``: a :class:`utils.targets.Model` answering
        eps / x0 / score / velocity (and ``log_prob``)."""
        return MixtureDenoiser(self, schedule)

    # --- moments ------------------------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        dm = self.means - m
        return (self.weights[:, None, None] * (self.covs + dm[:, :, None] * dm[:, None, :])).sum(0)


class MixtureDenoiser(Model):
    """The exact posterior means of a :class:`GaussianMixture` under a schedule (the oracle).

    Every target is computed from the closed forms, exactly at every t in [0, t_end]: the score
    even where sigma_t = 0, the velocity as alpha' E[x0|x] - sigma sigma' score, finite where
    sigma' alone is not (VP at t = 0).
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__(schedule)
        if not isinstance(mixture, GaussianMixture):
            raise ValueError(f"mixture has type {type(mixture).__name__}; expected a GaussianMixture")
        self.mixture = mixture

    def x0_eps(self, x, t, y=None):
        _, score, x0, s, _ = self.mixture._terms(x, t, self.schedule, y)
        eps = -s[:, None] * score
        return x0.to(x.dtype), eps.to(x.dtype)

    def _answer(self, target, x, t, y):
        _, score, x0, s, tt = self.mixture._terms(x, t, self.schedule, y)
        if target == "score":
            out = score
        elif target == "x0":
            out = x0
        elif target == "eps":
            out = -s[:, None] * score
        else:
            da, s_ds = self.schedule._d_alpha(tt), self.schedule._sigma_d_sigma(tt)
            out = da[:, None] * x0 - s_ds[:, None] * score
        return out.to(x.dtype)

    def log_prob(self, x, t, y=None) -> torch.Tensor:
        """Exact log p_t(x) (log p_t(x | y) with a label)."""
        return self.mixture.log_prob(x, t, self.schedule, y)

    def __repr__(self):
        return f"MixtureDenoiser({self.mixture}, schedule={self.schedule})"
