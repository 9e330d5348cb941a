"""Tests of utils.ot against identities and closed forms."""
import itertools
import math

import pytest
import torch

from utils import ot


def _clouds(n=40, m=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, dtype=torch.float64, generator=g)
    y = torch.randn(m or n, 2, dtype=torch.float64, generator=g) * torch.tensor([2.0, 0.5]) + 1.0
    return x, y


def test_assignment_matches_brute_force():
    x, y = _clouds(n=6, seed=3)
    C = ot.sq_cost(x, y)
    best = min(sum(C[i, p[i]] for i in range(6)) for p in itertools.permutations(range(6))) / 6
    perm = ot.ot_assignment(x, y)
    assert sorted(perm.tolist()) == list(range(6))
    assert ot.w2(x, y) ** 2 == pytest.approx(float(best), rel=1e-12)


def test_w2_1d_is_sorting():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 1, generator=g), 3 * torch.rand(200, 1, generator=g)
    ref = ((x.sort(0).values - y.sort(0).values) ** 2).mean().sqrt()
    assert ot.w2(x, y) == pytest.approx(float(ref), rel=1e-5)


def test_ot_pair_is_a_cheaper_permutation():
    x, y = _clouds(n=64, seed=2)
    y_paired = ot.ot_pair(x, y)
    assert sorted(map(tuple, y_paired.tolist())) == sorted(map(tuple, y.tolist()))
    assert ((x - y_paired) ** 2).sum(1).mean() <= ((x - y) ** 2).sum(1).mean()
    assert ((x - y_paired) ** 2).sum(1).mean().sqrt() == pytest.approx(ot.w2(x, y), rel=1e-12)


@pytest.mark.parametrize("n,m", [(30, 30), (25, 40)])
def test_sinkhorn_marginals(n, m):
    x, y = _clouds(n, m)
    a = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.1
    a = a / a.sum()
    P = ot.sinkhorn(x, y, epsilon=0.5, a=a, tol=1e-9)
    assert (P >= 0).all()
    torch.testing.assert_close(P.sum(1), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(P.sum(0), torch.full((m,), 1 / m, dtype=torch.float64), atol=1e-12, rtol=0)


def test_sinkhorn_cost_tends_to_exact_ot():
    x, y = _clouds(n=40)
    exact = ot.w2(x, y) ** 2
    gaps = [ot.plan_cost(ot.sinkhorn(x, y, eps, tol=1e-5, max_iter=50_000), x, y) - exact
            for eps in (1.0, 0.3, 0.03)]
    assert all(gap > -1e-5 for gap in gaps)           # an admissible plan costs at least the OT cost
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 5e-3 * exact


def test_sinkhorn_large_epsilon_is_independent_coupling():
    x, y = _clouds(n=20, m=30)
    P = ot.sinkhorn(x, y, epsilon=1e4)
    torch.testing.assert_close(P, torch.full((20, 30), 1 / 600, dtype=torch.float64), atol=1e-5, rtol=1e-2)


def test_sinkhorn_not_converged_is_reported():
    x, y = _clouds(n=30)
    with pytest.raises(ot.SinkhornNotConverged, match="max_iter=3"):
        ot.sinkhorn(x, y, epsilon=1e-3, max_iter=3)


def test_bad_inputs_name_the_argument():
    x, y = _clouds(n=10, m=12)
    with pytest.raises(ValueError, match="equal sizes"):
        ot.w2(x, y)
    with pytest.raises(ValueError, match="epsilon"):
        ot.sinkhorn(x, y, epsilon=0.0)
    with pytest.raises(ValueError, match="S1"):
        ot.gaussian_w2(torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2))


def _gaussians():
    m1, m2 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64)
    S1 = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    S2 = torch.tensor([[0.3, -0.2], [-0.2, 2.0]], dtype=torch.float64)
    return m1, S1, m2, S2


def test_gaussian_w2_vs_discrete_ot_of_samples():
    m1, S1, m2, S2 = _gaussians()
    g = torch.Generator().manual_seed(0)
    n = 1000
    x = m1 + torch.randn(n, 2, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(S1).T
    y = m2 + torch.randn(n, 2, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(S2).T
    exact = ot.gaussian_w2(m1, S1, m2, S2)
    assert ot.w2(x, y) == pytest.approx(exact, rel=0.05)   # finite-sample error ~ 3% at n = 1000
    # and the closed form in 1D: |m1 - m2|^2 + (s1 - s2)^2
    assert ot.gaussian_w2(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-1.0]),
                          torch.tensor([[0.25]])) == pytest.approx(math.sqrt(4 + 1.5 ** 2), rel=1e-12)


def test_gaussian_ot_map_pushes_forward_and_attains_w2():
    m1, S1, m2, S2 = _gaussians()
    A = ot.gaussian_ot_map(m1, S1, m2, S2)
    torch.testing.assert_close(A, A.T)
    assert torch.linalg.eigvalsh(A).min() > 0
    torch.testing.assert_close(A @ S1 @ A, S2, atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(1)
    x = m1 + torch.randn(200_000, 2, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(S1).T
    Tx = m2 + (x - m1) @ A
    torch.testing.assert_close(Tx.mean(0), m2, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(Tx.T), S2, atol=0.03, rtol=0)
    # its cost E|T(x) - x|^2 = |m1 - m2|^2 + tr((A - I) S1 (A - I)) is the closed-form W2^2
    I = torch.eye(2, dtype=torch.float64)
    cost = float(((m1 - m2) ** 2).sum() + torch.trace((A - I) @ S1 @ (A - I)))
    assert cost == pytest.approx(ot.gaussian_w2(m1, S1, m2, S2) ** 2, rel=1e-10)


def test_gaussian_identity_and_commuting_case():
    m = torch.tensor([1.0, 2.0], dtype=torch.float64)
    S = torch.diag(torch.tensor([4.0, 0.25], dtype=torch.float64))
    assert ot.gaussian_w2(m, S, m, S) == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(ot.gaussian_ot_map(torch.zeros(2), torch.eye(2), m, S), ot.sqrtm_psd(S))


def test_jacobian_asymmetry_zero_for_gradients_and_checks_shape():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(4, 3, 3, dtype=torch.float64, generator=g)
    sym = A + A.transpose(1, 2)
    assert ot.jacobian_asymmetry(sym).max() < 1e-15
    rot = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)   # a rotation: fully antisymmetric
    assert float(ot.jacobian_asymmetry(rot)[0]) == pytest.approx(2.0)   # |2R| / |R|
    with pytest.raises(ValueError, match="J has shape"):
        ot.jacobian_asymmetry(torch.zeros(2, 2, 3))


def _gaussian_pair():
    m0, m1 = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    S0 = torch.tensor([[2.0, 0.9], [0.9, 0.6]], dtype=torch.float64)
    S1 = torch.diag(torch.tensor([3.0, 0.3], dtype=torch.float64))
    return m0, m1, S0, S1


def test_gaussian_coupling_velocity_matches_monte_carlo():
    m0, m1, S0, S1 = _gaussian_pair()
    S01 = torch.tensor([[0.3, 0.1], [-0.2, 0.2]], dtype=torch.float64)
    joint = torch.cat([torch.cat([S0, S01], 1), torch.cat([S01.T, S1], 1)])
    g = torch.Generator().manual_seed(6)
    z = torch.randn(400_000, 4, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(joint).T
    x0, x1 = m0 + z[:, :2], m1 + z[:, 2:]
    t = 0.3
    xt = (1 - t) * x0 + t * x1
    # least squares of X1 - X0 on (X_t, 1) is the conditional mean of a Gaussian
    coef = torch.linalg.lstsq(torch.cat([xt, torch.ones(len(xt), 1, dtype=torch.float64)], 1), x1 - x0).solution
    probe = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    mc = torch.cat([probe, torch.ones(2, 1, dtype=torch.float64)], 1) @ coef
    torch.testing.assert_close(ot.gaussian_coupling_velocity(probe, t, m0, m1, S0, S01, S1), mc, atol=1e-2, rtol=0)


def test_gaussian_rectified_map_pushes_forward_and_is_a_fixed_point_of_reflow():
    m0, m1, S0, S1 = _gaussian_pair()
    M, c = ot.gaussian_rectified_map(m0, m1, S0, torch.zeros(2, 2, dtype=torch.float64), S1)
    torch.testing.assert_close(c, m0, atol=1e-10, rtol=0)
    torch.testing.assert_close(M @ S1 @ M.T, S0, atol=1e-8, rtol=0)          # N(m1, S1) -> N(m0, S0)
    M2, c2 = ot.gaussian_rectified_map(m0, m1, M @ S1 @ M.T, M @ S1, S1)      # Reflow of a straight coupling
    torch.testing.assert_close(M2, M, atol=1e-8, rtol=0)
    torch.testing.assert_close(c2, c, atol=1e-10, rtol=0)
    # with an isotropic source the rectified map of the independent coupling is the OT map
    Mi, _ = ot.gaussian_rectified_map(m0, m1, S0, torch.zeros(2, 2, dtype=torch.float64), 0.7 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(Mi, ot.gaussian_ot_map(m1, 0.7 * torch.eye(2), m0, S0), atol=1e-7, rtol=0)


def test_gaussian_coupling_velocity_rejects_bad_time():
    m0, m1, S0, S1 = _gaussian_pair()
    with pytest.raises(ValueError, match="t="):
        ot.gaussian_coupling_velocity(torch.zeros(3, 2), 1.5, m0, m1, S0, torch.zeros(2, 2), S1)
