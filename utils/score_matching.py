"""Score-matching objectives (monograph Ch. 3): fit s_theta(x) ~ grad_x log p(x) from samples of p.

For data x ~ p in D dimensions and a score model ``score_fn(x) -> (B, D)``:

* explicit SM  (needs the true score)   J_ESM = E_p [ 1/2 ||s(x) - grad log p(x)||^2 ]
* implicit SM  (Hyvarinen 2005)         J_ISM = E_p [ tr(grad_x s(x)) + 1/2 ||s(x)||^2 ]
  Integration by parts gives J_ESM = J_ISM + 1/2 E_p ||grad log p||^2: the same minimiser,
  and a constant offset that does not depend on the model.
* sliced SM    (Song et al. 2019)       J_SSM = E_p E_v [ v^T (grad_x s) v + 1/2 (v^T s)^2 ]
  with E[v v^T] = I, so E_v of it is J_ISM; the trace costs one Jacobian-vector product
  instead of D backward passes. ``variance_reduced=True`` replaces 1/2 (v^T s)^2 by its
  expectation 1/2 ||s||^2 (SSM-VR).
* denoising SM (Vincent 2011)           J_DSM = E_p E_eps [ 1/2 ||s(x + sigma eps) + eps / sigma||^2 ]
  equals J_ESM for the perturbed density p_sigma = p * N(0, sigma^2 I) plus a constant, so its
  minimiser is grad log p_sigma (whose Tweedie form is E[x | x~] = x~ + sigma^2 grad log p_sigma).

The noise-conditional version over many levels (NCSN, Song & Ermon 2019) is
``utils.losses.DiffusionLoss(VE(...), "score", weighting=lambda t: sigma_t^2)``: t uniform on
[0, 1] is log sigma uniform, and sigma^2 ||s - (-eps / sigma)||^2 is NCSN's lambda(sigma) = sigma^2.

Every function returns a scalar (the batch mean), differentiable in the model's parameters, so
it can be handed to an optimiser. x: (B, D) with D small for the exact trace.
"""
from __future__ import annotations

import torch

from ._checks import check_batch, check_choice, check_int, check_positive

PROJECTIONS = ("gaussian", "rademacher")


def _check_x(x):
    check_batch("x", x)
    if x.ndim != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, D) flat vectors")
    if not x.is_floating_point():
        raise ValueError(f"x has dtype {x.dtype}; expected a floating-point tensor")


def _score_with_input(score_fn, x):
    """(x with requires_grad, s(x)) with the output's shape checked."""
    _check_x(x)
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score_fn(x) returned {shape}; expected a tensor of the shape of x, {tuple(x.shape)}")
    return x, s


def jacobian_trace(score_fn, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """tr(grad_x s(x)) = sum_i d s_i / d x_i exactly, by D backward passes; x: (B, D) -> (B,).

    Each sample's output depends only on its own input, so the gradient of sum_b s_i(x_b)
    w.r.t. x_b is row b of the Jacobian. ``create_graph=True`` keeps the result differentiable
    (needed to train on it).
    """
    x, s = _score_with_input(score_fn, x)
    return _trace(s, x, create_graph)


def _trace(s, x, create_graph):
    tr = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(x.shape[1]):
        g = torch.autograd.grad(s[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0]
        tr = tr + g[:, i]
    return tr


def explicit_score_matching(score_fn, x: torch.Tensor, true_score) -> torch.Tensor:
    """J_ESM = E [1/2 ||s(x) - grad log p(x)||^2] (Hyvarinen 2005, eq. 2).

    ``true_score``: a callable x -> (B, D) (e.g. ``GaussianMixture.score``) or a (B, D) tensor.
    """
    _check_x(x)
    s = score_fn(x)
    target = true_score(x) if callable(true_score) else true_score
    if not isinstance(target, torch.Tensor) or target.shape != x.shape:
        raise ValueError(f"true_score gives {getattr(target, 'shape', type(target).__name__)}; "
                         f"expected a tensor of the shape of x, {tuple(x.shape)}")
    return 0.5 * ((s - target.to(s.dtype)) ** 2).sum(1).mean()


def implicit_score_matching(score_fn, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """J_ISM = E [tr(grad_x s(x)) + 1/2 ||s(x)||^2] (Hyvarinen 2005, Thm. 1), exact trace."""
    x, s = _score_with_input(score_fn, x)
    return (_trace(s, x, create_graph) + 0.5 * (s ** 2).sum(1)).mean()


def sliced_score_matching(score_fn, x: torch.Tensor, n_projections: int = 1,
                          projection: str = "rademacher", variance_reduced: bool = False,
                          generator: torch.Generator | None = None,
                          create_graph: bool = True) -> torch.Tensor:
    """J_SSM = E_x E_v [v^T (grad_x s) v + 1/2 (v^T s)^2] (Song, Garg, Shi & Ermon 2019, eq. 7).

    v: ``n_projections`` directions per sample, Rademacher (+-1) or standard Gaussian, both with
    E[v v^T] = I, so E_v[v^T J v] = tr J. ``variance_reduced`` uses 1/2 ||s||^2 for the second
    term (SSM-VR, their eq. 8). v^T J v is computed as v . grad_x (v . s): one backward pass.
    """
    check_int("n_projections", n_projections)
    check_choice("projection", projection, PROJECTIONS)
    x, s = _score_with_input(score_fn, x)
    B, D = x.shape
    total = 0.0
    for _ in range(n_projections):
        v = torch.randn(B, D, generator=generator, dtype=x.dtype).to(x.device)
        if projection == "rademacher":
            v = v.sign()
        sv = (s * v).sum(1)
        vJv = (torch.autograd.grad(sv.sum(), x, create_graph=create_graph, retain_graph=True)[0] * v).sum(1)
        second = 0.5 * (s ** 2).sum(1) if variance_reduced else 0.5 * sv ** 2
        total = total + (vJv + second).mean()
    return total / n_projections


def denoising_score_matching(score_fn, x: torch.Tensor, sigma: float,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """J_DSM = E [1/2 ||s(x + sigma eps) + eps / sigma||^2] at one noise level (Vincent 2011).

    Its minimiser is grad log p_sigma, the score of the data convolved with N(0, sigma^2 I).
    """
    _check_x(x)
    check_positive("sigma", sigma)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    s = score_fn(x + sigma * eps)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        raise ValueError(f"score_fn returned {getattr(s, 'shape', type(s).__name__)}; expected {tuple(x.shape)}")
    return 0.5 * ((s + eps / sigma) ** 2).sum(1).mean()


# --- Tweedie's formula, first and second order (monograph §3.3) --------------------------------

def _check_alpha_sigma(alpha, sigma):
    for name, v in (("alpha", alpha), ("sigma", sigma)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"{name}={v!r} is not valid; expected a positive float")


def score_jacobian(score_fn, x: torch.Tensor) -> torch.Tensor:
    """grad_x s(x) for each sample, by D backward passes; x: (B, D) -> (B, D, D) with
    [b, i, j] = d s_i(x_b) / d x_j. For s = grad log p it is the Hessian of log p."""
    with torch.enable_grad():
        x, s = _score_with_input(score_fn, x)
        rows = [torch.autograd.grad(s[:, i].sum(), x, retain_graph=True)[0] for i in range(x.shape[1])]
    return torch.stack(rows, 1)


def tweedie_mean(score_fn, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """First-order Tweedie (§3.3): E[x0 | x_t = x] = (x + sigma^2 grad log p_t(x)) / alpha for
    x_t = alpha x0 + sigma eps. x: (B, D) -> (B, D); ``score_fn(x)`` is grad log p_t."""
    _check_alpha_sigma(alpha, sigma)
    _, s = _score_with_input(score_fn, x)
    return (x + sigma ** 2 * s.detach()) / alpha


def tweedie_covariance(score_fn, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Second-order Tweedie (§3.3, "higher order"): for x_t = alpha x0 + sigma eps,

        Cov[x0 | x_t = x] = (sigma^2 / alpha^2) (I + sigma^2 grad_x^2 log p_t(x)),

    with the Hessian of log p_t taken as the Jacobian of ``score_fn`` (autograd).
    x: (B, D) -> (B, D, D). Derivation: differentiating grad log p_t = E[alpha x0 - x | x] / sigma^2
    once more gives grad^2 log p_t = -I / sigma^2 + (alpha^2 / sigma^4) Cov[x0 | x]."""
    _check_alpha_sigma(alpha, sigma)
    H = score_jacobian(score_fn, x)
    eye = torch.eye(x.shape[1], dtype=H.dtype, device=H.device)
    return (sigma ** 2 / alpha ** 2) * (eye + sigma ** 2 * H)


def mixture_posterior(mixture, x: torch.Tensor, alpha: float, sigma: float):
    """The exact posterior of x0 given x_t = alpha x0 + sigma eps for Gaussian-mixture data (§3.3):
    again a Gaussian mixture, with responsibilities r_k(x) prop. to w_k N(x; alpha mu_k, G_k),
    G_k = alpha^2 Sigma_k + sigma^2 I, means m_k = mu_k + alpha Sigma_k G_k^-1 (x - alpha mu_k) and
    covariances C_k = Sigma_k - alpha^2 Sigma_k G_k^-1 Sigma_k.

    ``mixture``: a :class:`utils.gmm.GaussianMixture`; x: (B, D). Returns (mean (B, D), cov (B, D, D))
    by the law of total covariance, Cov = sum_k r_k (C_k + m_k m_k^T) - mean mean^T."""
    _check_alpha_sigma(alpha, sigma)
    _check_x(x)
    if not hasattr(mixture, "means") or x.shape[1] != mixture.means.shape[1]:
        raise ValueError(f"mixture must be a GaussianMixture of dimension {x.shape[1]}; got {type(mixture).__name__}")
    x = x.to(torch.float64)
    mu, Sig, w = mixture.means, mixture.covs, mixture.weights                         # (K,D), (K,D,D), (K,)
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    G = alpha ** 2 * Sig + sigma ** 2 * eye                                           # (K,D,D)
    Ginv = torch.linalg.inv(G)
    d = x[:, None, :] - alpha * mu                                                    # (B,K,D)
    Ginv_d = torch.einsum("kij,bkj->bki", Ginv, d)
    log_n = -0.5 * (d * Ginv_d).sum(-1) - 0.5 * torch.logdet(G)                      # (B,K), up to a constant
    r = torch.softmax(w.log() + log_n, dim=1)
    m = mu + alpha * torch.einsum("kij,bkj->bki", Sig, Ginv_d)                        # (B,K,D)
    C = Sig - alpha ** 2 * Sig @ Ginv @ Sig                                           # (K,D,D)
    mean = (r[..., None] * m).sum(1)
    second = torch.einsum("bk,kij->bij", r, C) + torch.einsum("bk,bki,bkj->bij", r, m, m)
    return mean, second - mean[:, :, None] * mean[:, None, :]
