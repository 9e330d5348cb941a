"""Guidance written on the model interface (monograph Ch. 8).

A guided model is a :class:`utils.targets.Model` like any other, so every sampler, solver and
likelihood runs it unchanged, and the exact oracle runs it too.

**Convention.** This package writes classifier-free guidance as in the monograph's Ch. 8 (§8.3):

    s_w(x, t, c) = w s(x, t, c) + (1 - w) s(x, t, null),

so w = 0 is the unconditional model, w = 1 the conditional one and w > 1 extrapolates away from
the unconditional. Ch. 10 writes (1 + w') x(c) - w' x(null) (Ho & Salimans' guidance scale): that
is w = 1 + w' here (:func:`from_ho_salimans`). The combination is affine (the weights sum to one),
so it holds for every target alike: score, eps, x0 and velocity.
"""
from __future__ import annotations

import math

import torch

from ._checks import append_dims, as_time, check_batch, check_int, check_positive
from .gmm import GaussianMixture
from .losses import sample_xt
from .schedules import Schedule
from .targets import NULL_LABEL, Model


def from_ho_salimans(w_prime: float) -> float:
    """This package's weight w for Ho & Salimans' scale w' ((1 + w') x(c) - w' x(null)): w = 1 + w'."""
    return 1.0 + float(w_prime)


class ClassifierFreeGuidance(Model):
    """w * model(x, t, c) + (1 - w) * model(x, t, NULL_LABEL), for any label-conditioned ``model``
    (a net trained with label dropout, or the class-conditional oracle). y: (B,) labels."""

    def __init__(self, model: Model, w: float):
        if not isinstance(model, Model):
            raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model")
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise ValueError(f"w={w!r} is not valid; expected a number (0: unconditional, 1: conditional)")
        super().__init__(model.schedule)
        self.model, self.w = model, float(w)

    def _both(self, x, y):
        """x twice and (y, null): one batched call answers the conditional and the unconditional."""
        check_batch("x", x)
        if y is None:
            raise ValueError("y is None; expected labels (B,) for classifier-free guidance")
        y = torch.as_tensor(y, dtype=torch.long, device=x.device).expand(x.shape[0])
        return torch.cat([x, x]), torch.cat([y, torch.full_like(y, NULL_LABEL)])

    def _combine(self, cond, uncond):
        return uncond + self.w * (cond - uncond)

    def x0_eps(self, x, t, y=None):
        xx, yy = self._both(x, y)
        tt = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.ndim == 1 else t
        x0, eps = self.model.x0_eps(xx, tt, yy)
        B = x.shape[0]
        return self._combine(x0[:B], x0[B:]), self._combine(eps[:B], eps[B:])

    def _answer(self, target, x, t, y):
        xx, yy = self._both(x, y)
        tt = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.ndim == 1 else t
        out = self.model._answer(target, xx, tt, yy)  # exact where the model is (the oracle's score)
        B = x.shape[0]
        return self._combine(out[:B], out[B:])

    def __repr__(self):
        return f"ClassifierFreeGuidance({self.model!r}, w={self.w:g})"



# --- the Ch. 8 toy: three overlapping classes, each a major and a minor mode -----------------------

def three_class_mixture(radius: float = 1.6, std: float = 0.45, minor_radius: float = 0.6,
                        minor_std: float = 0.35, minor_weight: float = 0.3):
    """The Ch. 8 toy (after Ho & Salimans' three-Gaussian Fig. 2): three classes, each a major mode
    on a circle of ``radius`` (angles 90, 210, 330 degrees) and a minor mode of in-class weight
    ``minor_weight`` at ``minor_radius`` on the opposite side, between the two other classes.
    Classes overlap, so the exact p_t(c | x) is never 0 or 1. Components 0-2 are the major modes,
    3-5 the minor ones; labels [0, 1, 2, 0, 1, 2]."""
    for name, v in (("radius", radius), ("std", std), ("minor_radius", minor_radius), ("minor_std", minor_std)):
        if not (isinstance(v, (int, float)) and v > 0):
            raise ValueError(f"{name}={v!r} is not valid; expected a positive number")
    if not 0 < minor_weight < 1:
        raise ValueError(f"minor_weight={minor_weight!r} is not valid; expected a number in (0, 1)")
    ang = [math.pi / 2 + 2 * math.pi * c / 3 for c in range(3)]
    means = [[radius * math.cos(a), radius * math.sin(a)] for a in ang] + \
            [[-minor_radius * math.cos(a), -minor_radius * math.sin(a)] for a in ang]
    weights = [(1 - minor_weight) / 3] * 3 + [minor_weight / 3] * 3
    return GaussianMixture(means, [std] * 3 + [minor_std] * 3, weights, labels=[0, 1, 2, 0, 1, 2])


# --- the exact noisy classifier p_t(c | x) (§8.1-8.2) -------------------------------------------

def class_log_prior(mixture) -> torch.Tensor:
    """log p(c), shape (C,): the total weight of each class's components."""
    C = mixture.num_classes
    w = torch.zeros(C, dtype=torch.float64).index_add_(0, mixture.labels, mixture.weights)
    return w.log()


def noisy_class_log_probs(mixture, x: torch.Tensor, t, schedule) -> torch.Tensor:
    """Exact log p_t(c | x) (§8.1, Bayes on the oracle's class-conditional marginals), shape (B, C):

        log p_t(c | x) = log p(c) + log p_t(x | c) - log p_t(x).

    x: (B, D); t: a float or (B,) tensor. Differentiable in x (its gradient is the guidance term
    grad_x log p_t(c | x) = s_t(x | c) - s_t(x), Eq. 8.1.1). Float64 inside, x's dtype out."""
    B, C = x.shape[0], mixture.num_classes
    joint = torch.stack([mixture.log_prob(x.to(torch.float64), t, schedule,
                                          y=torch.full((B,), c, dtype=torch.long)) for c in range(C)], 1)
    joint = joint + class_log_prior(mixture).to(joint.device)
    return (joint - torch.logsumexp(joint, dim=1, keepdim=True)).to(x.dtype)


class ExactNoisyClassifier:
    """classifier(x, t) -> log p_t(c | x), (B, C): the exact noise-conditional classifier of a
    labelled :class:`utils.gmm.GaussianMixture` under ``schedule`` (what a trained one approximates)."""

    def __init__(self, mixture, schedule):
        self.mixture, self.schedule = mixture, schedule

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        return noisy_class_log_probs(self.mixture, x, t, self.schedule)

    def __repr__(self):
        return f"ExactNoisyClassifier({self.mixture}, schedule={self.schedule})"


def noisy_classifier_loss(schedule, t_range=None):
    """Eq. 8.2.4: cross-entropy of a noise-conditional classifier on noisy inputs,

        E_{t, (x0, c), eps} [ -log p_phi(c | x_t = alpha_t x0 + sigma_t eps, t) ],

    as ``loss(net, x0, y, generator) -> scalar`` for :func:`utils.training.train`; ``net(x, t)``
    returns logits (B, C). t ~ U[t_range], default (schedule.t_min, 1)."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule has type {type(schedule).__name__}; expected a Schedule")
    lo, hi = (schedule.t_min, 1.0) if t_range is None else tuple(t_range)
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"t_range={t_range!r} is not valid; expected (t_lo, t_hi) with 0 <= t_lo < t_hi <= 1")

    def loss(net, x0, y=None, generator=None):
        if y is None:
            raise ValueError("y is None; expected class labels (B,) with the data")
        t = lo + (hi - lo) * torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device, generator=generator)
        xt, _ = sample_xt(x0, t, schedule, generator)
        return torch.nn.functional.cross_entropy(net(xt, t), y)

    return loss


def _class_log_prob_grad(classifier, x, t, y):
    """grad_x log p(y | x, t) for a classifier returning logits or log-probs (B, C)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        tt = as_time(t, like=xg, batch=x.shape[0], check=False)
        logp = torch.log_softmax(classifier(xg, tt), dim=-1).gather(1, y[:, None]).sum()
        return torch.autograd.grad(logp, xg)[0]


class ClassifierGuidance(Model):
    """Classifier guidance (§8.2, Eqs. 8.2.2-8.2.3; Dhariwal & Nichol 2021):

        s_w(x, t, c) = s(x, t) + w grad_x log p_t(c | x),

    the score of the tilted density p_t(x) p_t(c | x)^w. ``model`` is asked unconditionally
    (y=None), ``classifier(x, t)`` returns logits or log-probabilities (B, C) (a net trained with
    :func:`noisy_classifier_loss`, or :class:`ExactNoisyClassifier`). With the exact classifier
    and the oracle this is :class:`ClassifierFreeGuidance` with the same w, exactly. In (x0, eps):
    eps_w = eps - w sigma_t g and x0_w = x0 + w (sigma_t^2 / alpha_t) g, g = grad log p_t(c | x)."""

    def __init__(self, model: Model, classifier, w: float):
        if not isinstance(model, Model):
            raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model")
        if not callable(classifier):
            raise ValueError(f"classifier has type {type(classifier).__name__}; expected a callable (x, t) -> (B, C)")
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise ValueError(f"w={w!r} is not valid; expected a number (0: unguided, 1: conditional)")
        super().__init__(model.schedule)
        self.model, self.classifier, self.w = model, classifier, float(w)

    def x0_eps(self, x, t, y=None):
        check_batch("x", x)
        if y is None:
            raise ValueError("y is None; expected labels (B,) for classifier guidance")
        y = torch.as_tensor(y, dtype=torch.long, device=x.device).expand(x.shape[0])
        x0, eps = self.model.x0_eps(x, t, None)
        g = _class_log_prob_grad(self.classifier, x, t, y).to(x.dtype)
        a, s = (append_dims(c.to(x.dtype), x.ndim) for c in
                self.schedule._coefficients(as_time(t, like=x, batch=x.shape[0], check=False))[:2])
        return x0 + self.w * s ** 2 / a * g, eps - self.w * s * g

    def __repr__(self):
        return f"ClassifierGuidance({self.model!r}, w={self.w:g})"


# --- the tilted density, exactly, on a grid (the remark after Eq. 8.1.2) -------------------------

def tilted_log_density(mixture, x: torch.Tensor, c: int, w: float, t=None, schedule=None) -> torch.Tensor:
    """Unnormalised log of the tilted density p_t(x) p_t(c | x)^w (Eq. 8.2.2), shape (B,).
    w = 0: p_t; w = 1: p_t(x | c) p(c). Without t, at t = 0 (the data)."""
    if t is None:
        log_p = mixture.log_prob(x.to(torch.float64))
        B = x.shape[0]
        joint = torch.stack([mixture.log_prob(x.to(torch.float64), y=torch.full((B,), k, dtype=torch.long))
                             for k in range(mixture.num_classes)], 1) + class_log_prior(mixture)
        log_post = joint - torch.logsumexp(joint, dim=1, keepdim=True)
    else:
        log_p = mixture.log_prob(x.to(torch.float64), t, schedule)
        log_post = noisy_class_log_probs(mixture, x.to(torch.float64), t, schedule)
    if not 0 <= c < mixture.num_classes:
        raise ValueError(f"c={c!r} is not valid; expected a class in [0, {mixture.num_classes})")
    return log_p + w * log_post[:, c]


def grid_sample(log_density, n_samples: int, lim: float = 4.0, n: int = 400, generator=None) -> torch.Tensor:
    """Exact samples (up to the grid's resolution) of a 2D density known up to a constant:
    normalise exp(log_density) over an n x n grid of cells on [-lim, lim]^2, pick cells by their
    mass, and place each sample uniformly inside its cell. ``log_density(points: (M, 2)) -> (M,)``.
    Returns (n_samples, 2) float64. The error is the cell width 2 lim / n (and the mass beyond lim)."""
    check_int("n_samples", n_samples)
    check_int("n", n, 2)
    if not (isinstance(lim, (int, float)) and lim > 0):
        raise ValueError(f"lim={lim!r} is not valid; expected a positive number")
    h = 2 * lim / n
    centers = -lim + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    pts = torch.cartesian_prod(centers, centers)
    logp = log_density(pts).to(torch.float64)
    probs = torch.softmax(logp, dim=0)
    idx = torch.multinomial(probs, n_samples, replacement=True, generator=generator)
    jitter = (torch.rand(n_samples, 2, dtype=torch.float64, generator=generator) - 0.5) * h
    return pts[idx] + jitter


# --- inverse problems: y = A x0 + sigma_y z (§8.4) -----------------------------------------------

def _check_measurement(mixture, A, y, sigma_y):
    A = torch.as_tensor(A, dtype=torch.float64)
    if A.ndim != 2 or A.shape[1] != mixture.dim:
        raise ValueError(f"A has shape {tuple(A.shape)}; expected (M, {mixture.dim})")
    y = torch.as_tensor(y, dtype=torch.float64)
    if y.shape != (A.shape[0],):
        raise ValueError(f"y has shape {tuple(y.shape)}; expected ({A.shape[0]},)")
    if not (isinstance(sigma_y, (int, float)) and sigma_y > 0):
        raise ValueError(f"sigma_y={sigma_y!r} is not valid; expected a positive number")
    return A, y


def linear_gaussian_posterior(mixture, A, y, sigma_y: float):
    """The exact posterior p(x0 | y) of y = A x0 + sigma_y z under a Gaussian-mixture prior (§8.4,
    Eq. 8.4.3): again a Gaussian mixture, component by component (Gaussian conditioning),

        S_k' = (S_k^-1 + A^T A / sigma_y^2)^-1,   m_k' = S_k' (S_k^-1 m_k + A^T y / sigma_y^2),
        w_k' ∝ w_k N(y; A m_k, A S_k A^T + sigma_y^2 I).

    A: (M, D), y: (M,). Returns a :class:`utils.gmm.GaussianMixture` with the prior's labels, so
    its oracle (``.denoiser(schedule)``) gives the exact posterior score at every t."""
    A, y = _check_measurement(mixture, A, y, sigma_y)
    M = A.shape[0]
    S_inv = torch.linalg.inv(mixture.covs)
    S_post = torch.linalg.inv(S_inv + A.T @ A / sigma_y ** 2)
    S_post = 0.5 * (S_post + S_post.transpose(1, 2))
    m_post = (S_post @ ((S_inv @ mixture.means[:, :, None]).squeeze(-1) + A.T @ y / sigma_y ** 2)[:, :, None]).squeeze(-1)
    Cy = A @ mixture.covs @ A.T + sigma_y ** 2 * torch.eye(M, dtype=torch.float64)       # (K, M, M)
    r = y - mixture.means @ A.T                                                          # (K, M)
    log_lik = -0.5 * (r[:, None, :] @ torch.linalg.solve(Cy, r[:, :, None])).reshape(-1) \
        - 0.5 * torch.logdet(Cy) - 0.5 * M * math.log(2 * math.pi)
    log_w = mixture.weights.log() + log_lik
    return GaussianMixture(m_post, S_post, torch.softmax(log_w, 0), mixture.labels)


class DPS(Model):
    """Diffusion posterior sampling (Chung et al. 2023; §8.4, Eq. 8.4.5): the likelihood at x_t is
    replaced by the likelihood at the denoiser's estimate,

        grad log p(y | x_t) ~ zeta grad_x log N(y; A x0_hat(x_t), sigma_y^2 I),

    added to ``model``'s unconditional score. zeta = 1 is Eq. 8.4.5 as written (Chung et al. tune a
    step size instead). Biased: p(y | x_t) = E[N(y; A x0, sigma_y^2) | x_t] is not N(y; A E[x0|x_t], ...)
    unless p(x0 | x_t) is a point mass (its covariance is dropped)."""

    def __init__(self, model: Model, A, y, sigma_y: float, zeta: float = 1.0):
        if not isinstance(model, Model):
            raise ValueError(f"model has type {type(model).__name__}; expected a utils.targets.Model")
        if not (isinstance(zeta, (int, float)) and zeta >= 0):
            raise ValueError(f"zeta={zeta!r} is not valid; expected a number >= 0")
        super().__init__(model.schedule)
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.ndim != 2:
            raise ValueError(f"A has shape {tuple(A.shape)}; expected (M, D)")
        y = torch.as_tensor(y, dtype=torch.float64)
        if y.shape != (A.shape[0],):
            raise ValueError(f"y has shape {tuple(y.shape)}; expected ({A.shape[0]},)")
        check_positive("sigma_y", sigma_y)
        self.model, self.A, self.y, self.sigma_y, self.zeta = model, A, y, float(sigma_y), float(zeta)

    def likelihood_grad(self, x, t):
        """zeta grad_x log N(y; A x0_hat(x), sigma_y^2 I) = -zeta J^T A^T (A x0_hat - y) / sigma_y^2, (B, D)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = self.model.x0_eps(xg, t, None)[0]
            A, y = self.A.to(x0), self.y.to(x0)
            log_lik = -0.5 * ((x0 @ A.T - y) ** 2).sum() / self.sigma_y ** 2
            return self.zeta * torch.autograd.grad(log_lik, xg)[0]

    def x0_eps(self, x, t, y=None):
        check_batch("x", x)
        x0, eps = self.model.x0_eps(x, t, None)
        g = self.likelihood_grad(x, t).to(x.dtype)
        a, s = (append_dims(c.to(x.dtype), x.ndim) for c in
                self.schedule._coefficients(as_time(t, like=x, batch=x.shape[0], check=False))[:2])
        return x0 + s ** 2 / a * g, eps - s * g

    def __repr__(self):
        return f"DPS({self.model!r}, zeta={self.zeta:g}, sigma_y={self.sigma_y:g})"


class NoisyMeasurementGuidance(DPS):
    """The score-SDE member of the §8.4 family (Song et al. 2021's inpainting-style measurement
    matching, the meta-form -P_t M_t / gamma_t with P_t = A^T): treat the measurement as if it were
    noised along with x, y_t = alpha_t y, and use the Jacobian-free term

        grad log p(y | x_t) ~ zeta A^T (alpha_t y - A x_t) / gamma_t,   gamma_t = alpha_t^2 sigma_y^2 + sigma_t^2,

    the exact likelihood of y_t = A x_t + noise when A A^T = I and the prior on x0 is flat."""

    def likelihood_grad(self, x, t):
        tt = as_time(t, like=x, batch=x.shape[0], check=False)
        a, s = (append_dims(c.to(x.dtype), x.ndim) for c in self.schedule._coefficients(tt)[:2])
        A, y = self.A.to(x), self.y.to(x)
        gamma = a ** 2 * self.sigma_y ** 2 + s ** 2
        return self.zeta * ((a * y - x @ A.T) @ A) / gamma

    def __repr__(self):
        return f"NoisyMeasurementGuidance({self.model!r}, zeta={self.zeta:g}, sigma_y={self.sigma_y:g})"


# --- preference alignment: the KL-regularised optimum and Diffusion-DPO (§8.5) ------------------

def bradley_terry_prob(reward_a: torch.Tensor, reward_b: torch.Tensor) -> torch.Tensor:
    """P(a preferred to b) = sigmoid(r(a) - r(b)) (Bradley-Terry, Eq. 8.5.1), elementwise."""
    return torch.sigmoid(reward_a - reward_b)


def preference_pairs(x_a: torch.Tensor, x_b: torch.Tensor, reward, generator=None) -> torch.Tensor:
    """Label pairs by Bradley-Terry draws from ``reward(x) -> (B,)``: returns (B, 2, D) with the
    winner first, (x^w, x^l), the input of :func:`diffusion_dpo_loss`."""
    check_batch("x_a", x_a)
    if x_b.shape != x_a.shape:
        raise ValueError(f"x_b has shape {tuple(x_b.shape)}; expected the shape of x_a, {tuple(x_a.shape)}")
    p = bradley_terry_prob(reward(x_a), reward(x_b))
    a_wins = torch.rand(p.shape, dtype=p.dtype, generator=generator) < p
    a_wins = append_dims(a_wins.to(x_a.device), x_a.ndim)
    return torch.stack([torch.where(a_wins, x_a, x_b), torch.where(a_wins, x_b, x_a)], 1)


def linear_reward_optimum(mixture, a, beta: float):
    """The KL-regularised optimum pi*(x) ∝ pi_ref(x) exp(r(x) / beta) (Eq. 8.5.5) for a linear reward
    r(x) = a^T x and a Gaussian-mixture pi_ref, in closed form: each component is tilted,

        N(x; m, S) exp(b^T x) = exp(b^T m + b^T S b / 2) N(x; m + S b, S),   b = a / beta,

    so pi* is a Gaussian mixture with shifted means and reweighted components. a: (D,)."""
    a = torch.as_tensor(a, dtype=torch.float64)
    if a.shape != (mixture.dim,):
        raise ValueError(f"a has shape {tuple(a.shape)}; expected ({mixture.dim},)")
    check_positive("beta", beta)
    b = a / beta
    Sb = (mixture.covs @ b)                                                          # (K, D)
    log_w = mixture.weights.log() + mixture.means @ b + 0.5 * (Sb @ b)
    return GaussianMixture(mixture.means + Sb, mixture.covs, torch.softmax(log_w, 0), mixture.labels)


def diffusion_dpo_loss(ref_net, schedule, beta: float, t_range=None, n_t: int = 1):
    """Diffusion-DPO (Wallace et al. 2024; §8.5, the single-step bound after Eqs. 8.5.7-8.5.9) for
    eps-prediction nets, as ``loss(net, pairs, y=None, generator) -> scalar`` with pairs: (B, 2, D)
    = (x^w, x^l) (:func:`preference_pairs`):

        -log sigmoid( beta (t_hi - t_lo) |lambda'_t| [ dMSE(x^l) - dMSE(x^w) ] ),
        dMSE(x) = ||eps_theta(x_t, t) - eps||^2 - ||eps_ref(x_t, t) - eps||^2,

    one t ~ U[t_lo, t_hi] and one eps per pair (``n_t`` > 1: the margin averages n_t draws inside
    the sigmoid, a smaller Jensen gap at n_t times the cost). |lambda'_t| (lambda = log alpha/sigma) is the ELBO's
    weighting, so beta (t_hi - t_lo) E_t[|lambda'| dMSE] estimates -log(pi_theta / pi_ref) and beta
    is the beta of pi* ∝ pi_ref exp(r / beta) (up to the ELBO and Jensen gaps). ``ref_net`` is frozen."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule has type {type(schedule).__name__}; expected a Schedule")
    check_positive("beta", beta)
    check_int("n_t", n_t)
    lo, hi = (schedule.t_min, schedule.t_max) if t_range is None else tuple(t_range)
    if not 0 < lo < hi <= 1:
        raise ValueError(f"t_range={t_range!r} is not valid; expected (t_lo, t_hi) with 0 < t_lo < t_hi <= 1")
    for p in ref_net.parameters():
        p.requires_grad_(False)

    def loss(net, pairs, y=None, generator=None):
        if pairs.ndim < 3 or pairs.shape[1] != 2:
            raise ValueError(f"pairs has shape {tuple(pairs.shape)}; expected (B, 2, *D) = (winner, loser)")
        B = pairs.shape[0]
        pairs = pairs.repeat_interleave(n_t, 0)                                        # n_t draws per pair
        t = lo + (hi - lo) * torch.rand(B * n_t, dtype=pairs.dtype, device=pairs.device, generator=generator)
        eps = torch.randn(pairs[:, 0].shape, dtype=pairs.dtype, device=pairs.device, generator=generator)
        a, s, da, ds = (append_dims(c.to(pairs.dtype), pairs.ndim - 1) for c in schedule.coefficients(t))
        x = torch.cat([pairs[:, 0], pairs[:, 1]])                                     # winners, then losers
        e, tt = torch.cat([eps, eps]), torch.cat([t, t])
        xt = torch.cat([a, a]) * x + torch.cat([s, s]) * e
        with torch.no_grad():
            ref_err = ((ref_net(xt, tt) - e) ** 2).flatten(1).sum(1)
        d_mse = ((net(xt, tt) - e) ** 2).flatten(1).sum(1) - ref_err
        lam_dot = (da / a - ds / s).flatten()                                         # d lambda / dt < 0
        per_draw = beta * (hi - lo) * lam_dot.abs() * (d_mse[B * n_t:] - d_mse[:B * n_t])
        margin = per_draw.reshape(B, n_t).mean(1)
        return -torch.nn.functional.logsigmoid(margin).mean()

    return loss
