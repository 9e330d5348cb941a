"""Networks, losses and the training loop: shapes, a tiny run that learns, EMA, NaN guard,
checkpoints."""
import math

import pytest
import torch

from utils import losses, nets, training
from utils.data import toy_gmm
from utils.schedules import LinearPath, VPLinear
from utils.targets import TARGETS, Denoiser


def test_mlp_shapes_and_labels():
    net = nets.MLP(dim=2, hidden=16, depth=2)
    x = torch.randn(5, 2)
    assert net(x, torch.rand(5)).shape == (5, 2)
    assert net(x, torch.tensor(0.3)).shape == (5, 2)
    cond = nets.MLP(dim=3, hidden=16, depth=1, num_classes=4, time_embedding="fourier", out_dim=1)
    y = torch.tensor([0, 3, nets.NULL_LABEL, 1, 2])
    assert cond(torch.randn(5, 3), torch.rand(5), y).shape == (5, 1)
    # no label is the null label
    x3, t = torch.randn(5, 3), torch.rand(5)
    torch.testing.assert_close(cond(x3, t), cond(x3, t, torch.full((5,), nets.NULL_LABEL)))
    with pytest.raises(ValueError, match="y was given"):
        net(x, torch.rand(5), y)
    with pytest.raises(ValueError, match="x has shape"):
        net(torch.randn(5, 3), torch.rand(5))


def test_embeddings():
    emb = nets.SinusoidalEmbedding(8)
    out = emb(torch.tensor([0.0, 0.5]))
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    ff = nets.FourierFeatures(6)
    assert ff(torch.rand(3)).shape == (3, 6)
    torch.testing.assert_close(ff(torch.rand(3)).pow(2).reshape(3, 2, 3).sum(1), torch.ones(3, 3))
    with pytest.raises(ValueError, match="dim=3"):
        nets.SinusoidalEmbedding(3)
    with pytest.raises(ValueError, match="time_embedding"):
        nets.MLP(time_embedding="learned")
    with pytest.raises(ValueError, match="hidden"):
        nets.MLP(hidden=0)


@pytest.mark.parametrize("target", TARGETS)
def test_regression_targets_are_what_the_denoiser_expects(target):
    """The loss's target at the true (x0, eps) converts back to (x0, eps) through Denoiser."""
    sched = VPLinear()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, dtype=torch.float64, generator=g)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    xt, eps = losses.sample_xt(x0, t, sched, g)
    tgt = losses.regression_target(x0, eps, t, sched, target)
    d = Denoiser(lambda x, tt: tgt, target, sched)
    x0_hat, eps_hat = d.x0_eps(xt, t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)


def test_loss_is_zero_for_the_oracle_posterior_mean_only_in_expectation():
    """A net returning the exact regression target has zero loss; the flow-matching loss uses
    the linear path with velocity eps - x0."""
    fm = losses.flow_matching_loss()
    assert isinstance(fm.schedule, LinearPath) and fm.target == "velocity"
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 2, generator=g)
    seen = {}

    def net(xt, t):
        seen["xt"], seen["t"] = xt, t
        return torch.zeros_like(xt)

    loss = fm(net, x0, generator=torch.Generator().manual_seed(1))
    # recover eps from x_t, then the target eps - x0 and the loss by hand
    t = seen["t"][:, None]
    eps = (seen["xt"] - (1 - t) * x0) / t
    assert float(loss) == pytest.approx(float(((eps - x0) ** 2).mean()), rel=1e-5)


def test_loss_bad_inputs():
    sched = VPLinear()
    with pytest.raises(ValueError, match="target='v'"):
        losses.DiffusionLoss(sched, "v")
    with pytest.raises(ValueError, match="t_range"):
        losses.DiffusionLoss(sched, t_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="label_dropout"):
        losses.DiffusionLoss(sched, label_dropout=1.5)
    with pytest.raises(ValueError, match="label_dropout"):
        losses.DiffusionLoss(sched, label_dropout=0.1)
    with pytest.raises(ValueError, match="schedule"):
        losses.DiffusionLoss("vp_linear")
    with pytest.raises(ValueError, match="y is None"):
        losses.DiffusionLoss(sched, conditional=True)(nets.MLP(hidden=8, depth=1, num_classes=2), torch.randn(4, 2))


def test_tiny_training_run_lowers_the_loss_and_is_reproducible():
    torch.manual_seed(0)
    mix = toy_gmm("8gaussians")
    loss_fn = losses.DiffusionLoss(VPLinear(), "eps")

    def run(steps):
        torch.manual_seed(0)
        net = nets.MLP(dim=2, hidden=32, depth=2)
        ema, hist = training.train(net, loss_fn, lambda n, g: mix.sample(n, g)[0].float(), steps=steps,
                                   batch_size=128, lr=3e-3, ema_decay=0.9, progress=False, seed=0)
        return net, ema, hist

    net, ema, hist = run(150)
    assert len(hist.losses) == 150 and hist.seconds > 0
    first, last = sum(hist.losses[:20]) / 20, sum(hist.losses[-20:]) / 20
    assert last < 0.8 * first, (first, last)
    assert all(math.isfinite(v) for v in hist.losses)
    assert len(hist.smoothed(10)) == 150
    assert hist.smoothed(10)[-1] == pytest.approx(sum(hist.losses[-10:]) / 10)
    assert not net.training and not ema.training
    assert all(not p.requires_grad for p in ema.parameters())
    assert run(5)[2].losses == run(5)[2].losses  # seeded: a run is reproducible


def test_train_with_tensor_data_and_labels():
    x = torch.randn(64, 2)
    y = torch.randint(0, 3, (64,))
    net = nets.MLP(dim=2, hidden=8, depth=1, num_classes=3)
    loss_fn = losses.DiffusionLoss(LinearPath(), "velocity", conditional=True, label_dropout=0.2)
    _, hist = training.train(net, loss_fn, x, steps=3, batch_size=16, labels=y, progress=False,
                             lr_schedule="constant", warmup=2)
    assert len(hist.losses) == 3
    with pytest.raises(ValueError, match="labels"):
        training.train(net, loss_fn, x, steps=1, labels=y[:10], progress=False)
    with pytest.raises(ValueError, match="data has type"):
        training.train(net, loss_fn, [[0.0, 1.0]], steps=1, progress=False)
    with pytest.raises(ValueError, match="lr_schedule"):
        training.train(net, loss_fn, x, steps=1, lr_schedule="step", progress=False)
    with pytest.raises(ValueError, match="steps"):
        training.train(net, loss_fn, x, steps=0, progress=False)
    with pytest.raises(ValueError, match="lr="):
        training.train(net, loss_fn, x, steps=1, lr=-1.0, progress=False)


def test_ema_math():
    net = torch.nn.Linear(3, 2)
    ema = training.EMA(net, decay=0.9)
    theta0 = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for p_ema, p0 in zip(ema.model.parameters(), theta0):
        torch.testing.assert_close(p_ema, 0.9 * p0 + 0.1 * (p0 + 1.0))
    # repeated updates towards fixed weights: theta_ema = theta - 0.9^k (theta - theta_ema_0)
    for _ in range(9):
        ema.update(net)
    for p_ema, p0 in zip(ema.model.parameters(), theta0):
        torch.testing.assert_close(p_ema, p0 + 1.0 - 0.9 ** 10, rtol=1e-6, atol=1e-6)
    plain = training.EMA(net, decay=0.0)
    plain.update(net)
    for a, b in zip(plain.model.parameters(), net.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="decay"):
        training.EMA(net, decay=1.0)


def test_nan_guard_raises_floating_point_error():
    calls = {"n": 0}

    def loss_fn(net, x, y, g):
        calls["n"] += 1
        out = net(x, torch.full((x.shape[0],), 0.5)).pow(2).mean()
        return out if calls["n"] < 4 else out * float("nan")

    net = nets.MLP(dim=2, hidden=8, depth=1)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 3 \(last finite loss [0-9.e-]+\)"):
        training.train(net, loss_fn, torch.randn(32, 2), steps=10, batch_size=8, progress=False)


def test_checkpoint_round_trip(tmp_path):
    net = nets.MLP(dim=2, hidden=8, depth=1, num_classes=2)
    hist = training.History(losses=[1.0, 0.5, 0.25])
    path = training.save_checkpoint(tmp_path / "sub" / "ckpt.pt", net, hist, meta={"steps": 3, "target": "eps"})
    assert path.exists()
    # the file loads with weights_only=True (no pickled code)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "losses", "meta"}
    other = nets.MLP(dim=2, hidden=8, depth=1, num_classes=2)
    loaded, hist2, meta = training.load_checkpoint(path, other)
    assert loaded is other and not loaded.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert hist2.losses == [1.0, 0.5, 0.25] and meta == {"steps": 3, "target": "eps"}
    with pytest.raises(ValueError, match="path="):
        training.load_checkpoint(tmp_path / "missing.pt", other)
