"""Unit tests of utils.flows: coupling-flow identities, straightness, Reflow pairs and loss."""
import math

import pytest
import torch

from utils import flows, gmm, samplers, schedules


def _random_flow(seed=0, dim=2, n_layers=4):
    torch.manual_seed(seed)
    flow = flows.CouplingFlow(dim=dim, n_layers=n_layers, hidden=16).double()
    with torch.no_grad():  # move away from the identity the flow starts at
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("dim", [2, 3])
def test_inverse_of_forward_is_identity(dim):
    flow = _random_flow(dim=dim)
    x = torch.randn(64, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(flow.inverse(z), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow(flow.inverse(x))[0], x, rtol=1e-10, atol=1e-10)


def test_log_det_equals_autograd_jacobian_in_2d():
    flow = _random_flow()
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    log_det = flow.log_det(x)
    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        torch.testing.assert_close(log_det[i], torch.linalg.slogdet(J)[1])


def test_log_prob_integrates_to_one_and_fresh_flow_is_standard_normal():
    flow = _random_flow()
    u = torch.linspace(-12, 12, 301, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="xy")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    with torch.no_grad():
        mass = flow.log_prob(pts).exp().sum() * (u[1] - u[0]) ** 2
    assert abs(float(mass) - 1) < 5e-3
    fresh = flows.CouplingFlow(2).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    expected = -0.5 * (x ** 2).sum(1) - math.log(2 * math.pi)
    torch.testing.assert_close(fresh.log_prob(x), expected)


def test_flow_rejects_bad_input():
    with pytest.raises(ValueError, match="dim"):
        flows.CouplingFlow(dim=1)
    with pytest.raises(ValueError, match="mask"):
        flows.AffineCoupling(torch.ones(2))
    with pytest.raises(ValueError, match="x has shape"):
        flows.CouplingFlow(2)(torch.zeros(4, 3))


def test_straightness_zero_for_straight_constant_speed_paths():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(10, 2, generator=g, dtype=torch.float64), torch.randn(10, 2, generator=g, dtype=torch.float64)
    ts = torch.tensor([1.0, 0.9, 0.6, 0.5, 0.1, 0.0], dtype=torch.float64)  # uneven grid
    xs = torch.stack([(1 - t) * x0 + t * x1 for t in ts])
    torch.testing.assert_close(flows.straightness(xs, ts), torch.zeros(10, dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_straightness_positive_for_curved_or_uneven_paths_and_matches_liu_form():
    ts = torch.linspace(0, 1, 201, dtype=torch.float64)
    arc = torch.stack([torch.cos(math.pi / 2 * ts), torch.sin(math.pi / 2 * ts)], 1)[:, None]  # quarter circle
    S = flows.straightness(arc, ts)
    # int_0^1 |v|^2 dt - |x1 - x0|^2 = (pi/2)^2 - 2 for the quarter circle at constant speed
    assert abs(float(S) - ((math.pi / 2) ** 2 - 2)) < 1e-3
    uneven = (ts ** 2)[:, None, None] * torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # straight, accelerating
    assert float(flows.straightness(uneven, ts)) > 0.1
    # Liu et al.'s form sum dt ||dx/dt - (x_N - x_0)|| ^2 gives the same number
    v = (arc[1:] - arc[:-1]) / (ts[1:] - ts[:-1])[:, None, None]
    liu = ((v - (arc[-1] - arc[0])) ** 2).sum(-1).mul((ts[1:] - ts[:-1])[:, None]).sum(0)
    torch.testing.assert_close(S, liu)


def test_straightness_rejects_bad_input():
    with pytest.raises(ValueError, match="ts"):
        flows.straightness(torch.zeros(3, 4, 2), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="xs"):
        flows.straightness(torch.zeros(3, 2), torch.tensor([1.0, 0.5, 0.0]))


def test_reflow_pairs_follow_the_ode_and_loss_is_zero_on_straight_field():
    mix = gmm.GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], 0.3)
    oracle = mix.denoiser(schedules.LinearPath())
    pairs = flows.reflow_pairs(oracle, (32, 2), n_steps=20, generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64, batch_size=10)
    assert pairs.shape == (32, 2, 2)
    again = samplers.sample_heun(oracle, pairs[:, 1], schedules.uniform_grid(20))
    torch.testing.assert_close(pairs[:, 0], again)
    # a net that knows each pair's straight velocity has zero Reflow loss
    const = lambda xt, t: pairs[:, 1] - pairs[:, 0]
    assert float(flows.ReflowLoss()(const, pairs)) < 1e-20
    # on independent pairs the Reflow loss is the CFM loss (same t, same eps)
    net = lambda xt, t: torch.sin(xt) * t[:, None]
    x0 = mix.sample(32, torch.Generator().manual_seed(1))[0]
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(3))
    t = torch.rand(32, dtype=x0.dtype, generator=torch.Generator().manual_seed(3))
    # build the CFM loss value by hand with the same t and eps
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    by_hand = ((net(xt, t) - (eps - x0)) ** 2).mean()
    indep = torch.stack([x0, eps], 1)
    assert abs(float(flows.ReflowLoss()(net, indep, generator=g)) - float(by_hand)) < 1e-12
    with pytest.raises(ValueError, match="pairs"):
        flows.ReflowLoss()(net, x0)
    with pytest.raises(ValueError, match="shape"):
        flows.reflow_pairs(oracle, 32)
