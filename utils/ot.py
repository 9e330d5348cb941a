"""Optimal transport for point clouds and Gaussians (monograph Ch. 7, Diffusion Models and OT).

* :func:`ot_assignment`, :func:`w2`: exact discrete OT between two equal-size clouds with the
  squared Euclidean cost. With uniform weights 1/n the optimal plan is a permutation (Birkhoff),
  found by the Hungarian / Jonker-Volgenant algorithm (``scipy.optimize.linear_sum_assignment``):

      W2(x, y)^2 = min_perm (1/n) sum_i |x_i - y_perm(i)|^2.

* :func:`sinkhorn`: entropic OT (Cuturi 2013) in the log domain,

      P_eps = argmin_{P in U(a, b)} <C, P> - eps H(P),   P_ij = exp((f_i + g_j - C_ij) / eps),

  by alternating the two dual (soft-min) updates of f and g. It is the static Schroedinger
  bridge for a Brownian reference of variance eps / 2 per unit time; eps -> 0 gives OT, eps -> inf
  the independent coupling a b^T.
* :func:`ot_pair`: minibatch-OT coupling for flow matching (Tong et al. 2023; Pooladian et al.
  2023): reorder a noise batch so that (data_i, noise_i) is an exact OT pairing of the batch.
* :func:`gaussian_w2`, :func:`gaussian_ot_map`: the closed forms between N(m1, S1) and N(m2, S2)
  (Dowson & Landau 1982; Olkin & Pukelsheim 1982; Knott & Smith 1984).

Everything is computed in float64; tensors come back in the dtype of the inputs where that
makes sense (plans and costs are float64).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ._checks import check_batch, check_int, check_positive


class SinkhornNotConverged(RuntimeError):
    """Raised by :func:`sinkhorn` when the marginal error is still above ``tol`` after ``max_iter``."""


def _cloud_pair(x, y, equal: bool):
    check_batch("x", x)
    check_batch("y", y)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"x has shape {tuple(x.shape)} and y {tuple(y.shape)}; expected (n, D) and (m, D)")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features and y {y.shape[1]}; expected the same dimension D")
    if equal and x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} points and y {y.shape[0]}; expected equal sizes n = m")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x or y contains NaN or inf; expected finite points")
    return x.detach().to(torch.float64), y.detach().to(torch.float64)


def sq_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C_ij = |x_i - y_j|^2 for x: (n, D), y: (m, D); returns (n, m) float64."""
    x, y = _cloud_pair(x, y, equal=False)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def ot_assignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The optimal permutation for the squared cost: x_i is sent to y_perm[i].

    x, y: (n, D) each (equal sizes, uniform weights). Returns perm: (n,) long.
    """
    C = sq_cost(*_cloud_pair(x, y, equal=True))
    rows, cols = linear_sum_assignment(C.cpu().numpy())
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.as_tensor(perm, dtype=torch.long, device=x.device)


def w2(x: torch.Tensor, y: torch.Tensor) -> float:
    """W2 between the empirical measures of x: (n, D) and y: (n, D) (exact OT, squared cost):
    sqrt((1/n) sum_i |x_i - y_perm(i)|^2)."""
    x64, y64 = _cloud_pair(x, y, equal=True)
    perm = ot_assignment(x64, y64)
    return float(((x64 - y64[perm]) ** 2).sum(1).mean().sqrt())


def ot_pair(data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Minibatch-OT coupling for flow matching: ``noise`` reordered so that (data[i], noise[i])
    is an exact OT pairing of the two batches (Tong et al. 2023, Alg. 1 with the exact plan).

    data, noise: (B, D). Returns noise[perm]: (B, D), same dtype and device as ``noise``.
    """
    return noise[ot_assignment(data, noise).to(noise.device)]


def sinkhorn(x: torch.Tensor, y: torch.Tensor, epsilon: float, a=None, b=None,
             tol: float = 1e-6, max_iter: int = 10_000) -> torch.Tensor:
    """Entropic OT plan between x: (n, D) and y: (m, D) for C_ij = |x_i - y_j|^2, log domain.

    Iterates (Cuturi 2013; Peyre & Cuturi 2019, Sec. 4.4, the log-domain updates)

        f_i <- eps log a_i - eps logsumexp_j((g_j - C_ij) / eps)
        g_j <- eps log b_j - eps logsumexp_i((f_i - C_ij) / eps)

    (warm-started by epsilon-scaling from eps ~ max C / 4 down to ``epsilon``, halving) until
    the row-marginal error sum_i |sum_j P_ij - a_i| < ``tol`` (the column marginals are
    exact after each g update). ``epsilon`` is in the units of C (squared distance).

    Args:
        a, b: (n,), (m,) non-negative weights summing to 1; default uniform.
        tol, max_iter: stopping rule (``max_iter`` counts the iterations of all stages); raises
            :class:`SinkhornNotConverged` (a RuntimeError) with the error reached if ``max_iter``
            iterations are not enough (increase ``epsilon`` or ``max_iter``).

    Returns P: (n, m) float64 with row sums a and column sums b.
    """
    check_positive("epsilon", epsilon)
    check_positive("tol", tol)
    check_int("max_iter", max_iter)
    C = sq_cost(x, y)
    n, m = C.shape
    log_a = _log_weights("a", a, n)
    log_b = _log_weights("b", b, m)
    f = torch.zeros(n, dtype=torch.float64)
    g = torch.zeros(m, dtype=torch.float64)
    # epsilon-scaling (Schmitzer 2019): warm-start from coarser eps, halving down to epsilon;
    # the fixed point is that of epsilon alone, reached in far fewer iterations when eps is small.
    eps_stages = [epsilon]
    while eps_stages[-1] < float(C.max()) / 4:
        eps_stages.append(2 * eps_stages[-1])
    eps_stages = eps_stages[::-1]
    iters, err = 0, float("inf")
    for k, eps in enumerate(eps_stages):
        stage_tol = tol if k == len(eps_stages) - 1 else max(tol, 1e-3)
        while iters < max_iter:
            iters += 1
            f = eps * log_a - eps * torch.logsumexp((g[None, :] - C) / eps, dim=1)
            g = eps * log_b - eps * torch.logsumexp((f[:, None] - C) / eps, dim=0)
            log_P = (f[:, None] + g[None, :] - C) / eps
            err = float((log_P.exp().sum(1) - log_a.exp()).abs().sum())
            if err < stage_tol:
                break
    if err < tol and eps == epsilon:   # converged at the requested epsilon, not a coarser stage
        return log_P.exp()
    raise SinkhornNotConverged(
        f"sinkhorn did not converge: row-marginal error {err:.3g} > tol={tol:g} after max_iter={max_iter} "
        f"iterations at epsilon={epsilon:g} (cost scale: median C = {float(C.median()):.3g}); "
        "increase epsilon or max_iter, or loosen tol")


def _log_weights(name, w, n):
    if w is None:
        return torch.full((n,), -float(np.log(n)), dtype=torch.float64)
    w = torch.as_tensor(w, dtype=torch.float64)
    if w.shape != (n,) or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-8:
        raise ValueError(f"{name} has shape {tuple(w.shape)} and sum {float(w.sum()):.6g}; "
                         f"expected ({n},) non-negative weights summing to 1")
    return w.log()


def plan_cost(plan: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Transport cost <C, P> = sum_ij P_ij |x_i - y_j|^2 of a plan P: (n, m)."""
    C = sq_cost(x, y)
    if plan.shape != C.shape:
        raise ValueError(f"plan has shape {tuple(plan.shape)}; expected {tuple(C.shape)} for x and y")
    return float((plan.to(torch.float64) * C).sum())


# --- Gaussians ------------------------------------------------------------------------------

def _gaussian(name_m, m, name_S, S):
    m = torch.as_tensor(m, dtype=torch.float64)
    S = torch.as_tensor(S, dtype=torch.float64)
    if m.ndim != 1:
        raise ValueError(f"{name_m} has shape {tuple(m.shape)}; expected a mean vector (D,)")
    D = m.shape[0]
    if S.shape != (D, D):
        raise ValueError(f"{name_S} has shape {tuple(S.shape)}; expected a covariance ({D}, {D})")
    if not torch.allclose(S, S.T, atol=1e-10) or float(torch.linalg.eigvalsh(S).min()) <= 0:
        raise ValueError(f"{name_S} is not symmetric positive definite; expected a covariance matrix")
    return m, S


def sqrtm_psd(S: torch.Tensor) -> torch.Tensor:
    """The symmetric square root S^{1/2} of a symmetric positive semi-definite S: (D, D)."""
    lam, U = torch.linalg.eigh(torch.as_tensor(S, dtype=torch.float64))
    return (U * lam.clamp_min(0).sqrt()) @ U.T


def gaussian_w2(m1, S1, m2, S2) -> float:
    """W2 between N(m1, S1) and N(m2, S2) (Dowson & Landau 1982):

        W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).

    m: (D,), S: (D, D) symmetric positive definite.
    """
    m1, S1 = _gaussian("m1", m1, "S1", S1)
    m2, S2 = _gaussian("m2", m2, "S2", S2)
    if m1.shape != m2.shape:
        raise ValueError(f"m1 has shape {tuple(m1.shape)} and m2 {tuple(m2.shape)}; expected the same D")
    R = sqrtm_psd(S1)
    cross = sqrtm_psd(R @ S2 @ R)
    w2sq = float(((m1 - m2) ** 2).sum() + torch.trace(S1 + S2 - 2 * cross))
    return max(w2sq, 0.0) ** 0.5


def gaussian_ot_map(m1, S1, m2, S2) -> torch.Tensor:
    """The OT (Brenier) map from N(m1, S1) to N(m2, S2): T(x) = m2 + A (x - m1) with

        A = S1^{-1/2} (S1^{1/2} S2 S1^{1/2})^{1/2} S1^{-1/2}   (symmetric positive definite,
                                                                 A S1 A = S2; Knott & Smith 1984).

    Returns A: (D, D) float64. Apply to x: (B, D) as ``m2 + (x - m1) @ A`` (A is symmetric).
    """
    m1, S1 = _gaussian("m1", m1, "S1", S1)
    m2, S2 = _gaussian("m2", m2, "S2", S2)
    if m1.shape != m2.shape:
        raise ValueError(f"m1 has shape {tuple(m1.shape)} and m2 {tuple(m2.shape)}; expected the same D")
    R = sqrtm_psd(S1)
    R_inv = torch.linalg.inv(R)
    A = R_inv @ sqrtm_psd(R @ S2 @ R) @ R_inv
    return (A + A.T) / 2


# --- Is a map optimal? (Ch. 7, §7.5) ----------------------------------------------------------

def jacobian_asymmetry(J: torch.Tensor) -> torch.Tensor:
    """||J - J^T||_F / ||J||_F per point for Jacobians J: (B, D, D) (§7.5.1). Returns (B,).

    A Brenier (OT) map is the gradient of a convex function, so its Jacobian (a Hessian) is
    symmetric positive semi-definite and this ratio is 0; a map whose Jacobian is not symmetric
    somewhere is not an OT map for the squared cost.
    """
    if not isinstance(J, torch.Tensor) or J.ndim != 3 or J.shape[1] != J.shape[2]:
        raise ValueError(f"J has shape {tuple(getattr(J, 'shape', ()))}; expected (B, D, D)")
    return (J - J.transpose(1, 2)).flatten(1).norm(dim=1) / J.flatten(1).norm(dim=1)


def gaussian_coupling_velocity(x: torch.Tensor, t: float, m0, m1, S00, S01, S11) -> torch.Tensor:
    """Rectified-flow velocity of a jointly Gaussian coupling (X0, X1) (§5.4, §7.5.2):

        X_t = (1 - t) X0 + t X1,   v_t(x) = E[X1 - X0 | X_t = x]
            = (m1 - m0) + Cov(X1 - X0, X_t) Cov(X_t)^{-1} (x - (1 - t) m0 - t m1),

    Cov(X1 - X0, X_t) = (1 - t)(S01^T - S00) + t (S11 - S01),
    Cov(X_t) = (1 - t)^2 S00 + t (1 - t)(S01 + S01^T) + t^2 S11.

    Book's clock: X0 data at t = 0, X1 source at t = 1, dx/dt = v. x: (B, D); means (D,),
    S00 = Cov(X0), S11 = Cov(X1), S01 = Cov(X0, X1) = E[(X0 - m0)(X1 - m1)^T], all (D, D).
    Cov(X_t) must be invertible (true for 0 < t < 1 when the coupling has a density or is a
    map with positive eigenvalues). Returns (B, D) float64.
    """
    m0, S00 = _gaussian("m0", m0, "S00", S00)
    m1, S11 = _gaussian("m1", m1, "S11", S11)
    S01 = torch.as_tensor(S01, dtype=torch.float64)
    D = m0.shape[0]
    if m1.shape != (D,) or S01.shape != (D, D):
        raise ValueError(f"m1 has shape {tuple(m1.shape)} and S01 {tuple(S01.shape)}; expected ({D},) and ({D}, {D})")
    check_batch("x", x)
    if x.ndim != 2 or x.shape[1] != D:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {D})")
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t={t} is not valid; expected 0 <= t <= 1")
    cov_dt = (1 - t) * (S01.T - S00) + t * (S11 - S01)
    cov_t = (1 - t) ** 2 * S00 + t * (1 - t) * (S01 + S01.T) + t ** 2 * S11
    mean_t = (1 - t) * m0 + t * m1
    gain = torch.linalg.solve(cov_t, cov_dt.T).T                       # Cov(D, X_t) Cov(X_t)^{-1}
    return (m1 - m0) + (x.to(torch.float64) - mean_t) @ gain.T


def gaussian_rectified_map(m0, m1, S00, S01, S11, n_steps: int = 200):
    """The map x1 -> x0 of the rectified flow of a jointly Gaussian coupling (§5.4, §7.5.2):
    integrate dx/dt = :func:`gaussian_coupling_velocity` from t = 1 to t = 0 by RK4 on
    ``n_steps`` uniform steps. The velocity is affine, so the map is x0 = c + M (x1 - m1).

    Returns (M: (D, D), c: (D,)) float64. The new coupling (X0 = c + M (X1 - m1), X1) is the
    Reflow coupling: feed S00 = M S11 M^T, S01 = M S11 back in to Reflow again.
    """
    check_int("n_steps", n_steps)
    m1 = torch.as_tensor(m1, dtype=torch.float64)
    D = m1.shape[0]
    x = torch.cat([m1[None], m1[None] + torch.eye(D, dtype=torch.float64)])   # m1 and m1 + e_k
    h = 1.0 / n_steps
    field = lambda z, t: gaussian_coupling_velocity(z, t, m0, m1, S00, S01, S11)
    for i in range(n_steps):
        t = 1.0 - i * h
        k1 = field(x, t)
        k2 = field(x - h / 2 * k1, t - h / 2)
        k3 = field(x - h / 2 * k2, t - h / 2)
        k4 = field(x - h * k3, max(t - h, 0.0))
        x = x - h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return (x[1:] - x[0]).T, x[0]
