"""The four prediction targets: float64 round trips of every conversion, for every schedule,
scalar and (B,) times, vector- and image-shaped x (monograph Ch. 6)."""
import itertools

import pytest
import torch

from utils import targets
from utils.schedules import VPLinear
from utils.targets import TARGETS, Denoiser, convert, from_x0_eps, to_x0_eps

TIMES = [0.05, 0.5, 0.95]
SHAPES = [(6, 2), (5, 1, 4, 4)]


def _batch(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, dtype=torch.float64, generator=g)
    eps = torch.randn(shape, dtype=torch.float64, generator=g)
    return x0, eps


def _times(shape, seed=1):
    """A float, and a (B,) tensor of distinct times."""
    g = torch.Generator().manual_seed(seed)
    return TIMES + [0.05 + 0.9 * torch.rand(shape[0], dtype=torch.float64, generator=g)]


def _xt(x0, eps, t, schedule):
    tt = torch.as_tensor(t, dtype=torch.float64).expand(x0.shape[0])
    a = schedule.alpha(tt).reshape(-1, *[1] * (x0.ndim - 1))
    s = schedule.sigma(tt).reshape(-1, *[1] * (x0.ndim - 1))
    da = schedule.d_alpha(tt).reshape(a.shape)
    ds = schedule.d_sigma(tt).reshape(s.shape)
    return a * x0 + s * eps, a, s, da, ds


@pytest.mark.parametrize("shape", SHAPES, ids=["vector", "image"])
def test_from_x0_eps_matches_definitions(schedule, shape):
    x0, eps = _batch(shape)
    for t in _times(shape):
        x, a, s, da, ds = _xt(x0, eps, t, schedule)
        expected = {"eps": eps, "x0": x0, "score": -eps / s, "velocity": da * x0 + ds * eps}
        for tgt in TARGETS:
            torch.testing.assert_close(from_x0_eps(x0, eps, tgt, x, t, schedule), expected[tgt],
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=["vector", "image"])
def test_to_x0_eps_recovers_x0_and_eps(schedule, shape):
    x0, eps = _batch(shape)
    for t in _times(shape):
        x = _xt(x0, eps, t, schedule)[0]
        for tgt in TARGETS:
            pred = from_x0_eps(x0, eps, tgt, x, t, schedule)
            x0_hat, eps_hat = to_x0_eps(pred, tgt, x, t, schedule)
            torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9, msg=f"x0 from {tgt} at t={t}")
            torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9, msg=f"eps from {tgt} at t={t}")


@pytest.mark.parametrize("shape", SHAPES, ids=["vector", "image"])
def test_convert_round_trips(schedule, shape):
    x0, eps = _batch(shape)
    for t in _times(shape):
        x = _xt(x0, eps, t, schedule)[0]
        preds = {tgt: from_x0_eps(x0, eps, tgt, x, t, schedule) for tgt in TARGETS}
        for src, tgt in itertools.product(TARGETS, TARGETS):
            out = convert(preds[src], src, tgt, x, t, schedule)
            torch.testing.assert_close(out, preds[tgt], rtol=1e-9, atol=1e-9, msg=f"{src}->{tgt} at t={t}")
            back = convert(out, tgt, src, x, t, schedule)
            torch.testing.assert_close(back, preds[src], rtol=1e-9, atol=1e-9, msg=f"{src}->{tgt}->{src}")


def test_score_is_minus_eps_over_sigma_and_tweedie(schedule):
    x0, eps = _batch((7, 3))
    t = 0.4
    x, a, s, _, _ = _xt(x0, eps, t, schedule)
    score = convert(eps, "eps", "score", x, t, schedule)
    torch.testing.assert_close(score, -eps / s)
    torch.testing.assert_close(convert(score, "score", "x0", x, t, schedule), (x + s ** 2 * score) / a)


@pytest.mark.parametrize("net_target", TARGETS)
def test_denoiser_answers_all_four(schedule, net_target):
    """A net that predicts ``net_target`` exactly (for fixed x0, eps) gives every target."""
    shape = (4, 1, 4, 4)
    x0, eps = _batch(shape)
    t = torch.tensor([0.1, 0.35, 0.6, 0.9], dtype=torch.float64)
    x = _xt(x0, eps, t, schedule)[0]
    calls = []

    def net(xx, tt):
        calls.append(tt)
        assert tt.shape == (4,)
        return from_x0_eps(x0, eps, net_target, xx, tt, schedule)

    d = Denoiser(net, net_target, schedule)
    expected = {tgt: from_x0_eps(x0, eps, tgt, x, t, schedule) for tgt in TARGETS}
    for tgt in TARGETS:
        torch.testing.assert_close(getattr(d, tgt)(x, t), expected[tgt], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(d(x, t, target=tgt), expected[tgt], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.predict(x, t), expected[net_target])
    x0_hat, eps_hat = d.x0_eps(x, t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)
    # a float t reaches the net as a (B,) tensor
    d.eps(x, 0.5)
    assert calls[-1].shape == (4,) and torch.all(calls[-1] == 0.5)
    assert net_target in repr(d)


def test_denoiser_passes_labels():
    seen = {}

    def net(x, t, y=None):
        seen["y"] = y
        return torch.zeros_like(x)

    d = Denoiser(net, "eps", VPLinear())
    y = torch.tensor([0, 1, 2])
    d.x0(torch.ones(3, 2), 0.5, y)
    assert seen["y"] is y
    d.x0(torch.ones(3, 2), 0.5)
    assert seen["y"] is None


def test_float32_inputs_stay_float32(schedule):
    x = torch.randn(3, 2)
    out = convert(x, "eps", "velocity", x, 0.5, schedule)
    assert out.dtype == torch.float32


# --- bad inputs ---------------------------------------------------------------------------------

def test_bad_inputs():
    s = VPLinear()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="target='noise'"):
        convert(x, "eps", "noise", x, 0.5, s)
    with pytest.raises(ValueError, match="source='v'"):
        convert(x, "v", "eps", x, 0.5, s)
    with pytest.raises(ValueError, match="pred has shape"):
        to_x0_eps(torch.randn(4, 3), "eps", x, 0.5, s)
    with pytest.raises(ValueError, match="x has shape"):
        to_x0_eps(torch.randn(4), "eps", torch.randn(4), 0.5, s)
    with pytest.raises(ValueError, match="t has values"):
        convert(x, "eps", "x0", x, -0.2, s)
    with pytest.raises(ValueError, match="t has shape"):
        convert(x, "eps", "x0", x, torch.full((3,), 0.5), s)
    with pytest.raises(ValueError, match="target='noise'"):
        Denoiser(lambda x, t: x, "noise", s)
    with pytest.raises(ValueError, match="schedule"):
        Denoiser(lambda x, t: x, "eps", "vp_linear")
    d = Denoiser(lambda x, t: x, "eps", s)
    with pytest.raises(ValueError, match="target="):
        d(x, 0.5, target="score_fn")
    with pytest.raises(ValueError, match="x has type"):
        d.eps([[0.0, 1.0]], 0.5)
    assert set(targets.TARGETS) == {"eps", "x0", "score", "velocity"}
