"""The training loop for real runs: resumable checkpoints (a run interrupted and resumed equals an
uninterrupted one, bit for bit), rank-aware seeds, the O(1) running mean of the losses, the
deferred NaN guard, and argument checks."""
import pytest
import torch

from utils import losses, nets, training
from utils.schedules import VPLinear

STEPS, EVERY = 30, 10
DATA = torch.randn(256, 2, generator=torch.Generator().manual_seed(123))


class Interrupted(Exception):
    """Raised from a loss function to stop a run midway, like a crash or a pre-empted job."""


def noisy_loss(crash_at=None):
    """A diffusion loss that also draws from torch's global RNG (as dropout would), so resuming
    must restore that RNG too; raises Interrupted on its call number ``crash_at``."""
    base, calls = losses.DiffusionLoss(VPLinear(), "eps"), {"n": 0}

    def loss_fn(net, x, y, g):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Interrupted
        return base(net, x, generator=g) * (1 + 0.1 * torch.rand(()))

    return loss_fn


def run(loss_fn, net_seed=0, **kwargs):
    torch.manual_seed(net_seed)
    net = nets.MLP(dim=2, hidden=16, depth=1)
    ema, hist = training.train(net, loss_fn, DATA, steps=STEPS, batch_size=32, lr=3e-3, ema_decay=0.9,
                               warmup=3, progress=False, seed=5, log_every=4, **kwargs)
    return net, ema, hist


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    path = tmp_path / "run" / "state.pt"
    net_ref, ema_ref, hist_ref = run(noisy_loss())
    with pytest.raises(Interrupted):  # dies during step 24: the last checkpoint is at step 20
        run(noisy_loss(crash_at=25), checkpoint_path=path, checkpoint_every=EVERY)
    assert torch.load(path, weights_only=True)["step"] == 20
    torch.manual_seed(999)  # the global RNG has moved on; resume must restore it
    # a freshly initialised net: the weights must come from the checkpoint
    net, ema, hist = run(noisy_loss(), net_seed=1, checkpoint_path=path, checkpoint_every=EVERY, resume=True)
    assert_same_weights(net, net_ref)
    assert_same_weights(ema, ema_ref)
    assert hist.losses == hist_ref.losses and len(hist.losses) == STEPS
    assert hist.smooth == hist_ref.smooth
    assert not net.training and not ema.training
    # the final state is saved at the end; resuming a finished run runs no step and changes nothing
    assert torch.load(path, weights_only=True)["step"] == STEPS
    net2, ema2, hist2 = run(noisy_loss(crash_at=1), net_seed=2, checkpoint_path=path, resume=True)
    assert_same_weights(net2, net_ref)
    assert_same_weights(ema2, ema_ref)
    assert hist2.losses == hist_ref.losses


def test_training_state_loads_with_weights_only_and_holds_the_run(tmp_path):
    path = tmp_path / "state.pt"
    net, ema, hist = run(noisy_loss(), checkpoint_path=path, checkpoint_every=EVERY)
    state = torch.load(path, weights_only=True)
    assert {"version", "step", "model", "ema_model", "ema_updates", "optimizer", "scheduler",
            "history", "rng", "run"} <= set(state)
    assert state["step"] == STEPS and state["ema_updates"] == STEPS
    assert set(state["rng"]) == {"batch", "noise", "torch_cpu"}
    assert state["history"]["losses"].tolist() == hist.losses
    assert state["run"]["seed"] == 5 and state["run"]["rank"] == 0
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away
    # resuming with other arguments would not continue the same run
    with pytest.raises(ValueError, match=r"lr=0.001 \(saved 0.003\)"):
        training.train(nets.MLP(dim=2, hidden=16, depth=1), noisy_loss(), DATA, steps=STEPS, batch_size=32,
                       lr=1e-3, ema_decay=0.9, warmup=3, progress=False, seed=5,
                       checkpoint_path=path, resume=True)


def first_batch_and_noise_seed(steps=1):
    seen = {}

    def loss_fn(net, x, y, g):
        seen.setdefault("x", x.clone())
        seen.setdefault("noise_seed", g.initial_seed())
        return net(x, torch.full((x.shape[0],), 0.5)).pow(2).mean()

    training.train(nets.MLP(dim=2, hidden=8, depth=1), loss_fn, DATA, steps=steps, batch_size=16,
                   progress=False, seed=3)
    return seen["x"], seen["noise_seed"]


def test_rank_changes_the_batches_and_the_noise(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    x0, s0 = first_batch_and_noise_seed()
    x0_again, _ = first_batch_and_noise_seed()
    monkeypatch.setenv("RANK", "1")
    x1, s1 = first_batch_and_noise_seed()
    x1_again, _ = first_batch_and_noise_seed()
    assert torch.equal(x0, x0_again) and torch.equal(x1, x1_again)
    assert not torch.equal(x0, x1)
    assert (s0, s1) == (3 + 1, 3 + 1_000_003 + 1)
    assert training.rank_seeds(3, 2) == (3 + 2 * 1_000_003, 3 + 2 * 1_000_003 + 1)
    monkeypatch.delenv("RANK")
    assert training.process_rank() == 0
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK='two'"):
        training.process_rank()
    # an initialised process group wins over the environment
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 4)
    assert training.process_rank() == 4


def test_running_mean_equals_the_windowed_mean():
    values = torch.rand(137, generator=torch.Generator().manual_seed(0)).tolist()
    hist = training.History(window=20)
    for i, v in enumerate(values):
        hist.append(v)
        recent = values[max(0, i + 1 - 20):i + 1]
        assert hist.smooth == pytest.approx(sum(recent) / len(recent), rel=1e-12)
        assert hist.smooth == hist.smoothed(20)[-1]  # the same sums in the same order
    assert hist.losses == values
    # a History built from a list has the same running state, and smoothed() is as before
    built = training.History(losses=values, window=20)
    assert built.smooth == hist.smooth
    assert built.smoothed(3)[:3] == [values[0], (values[0] + values[1]) / 2, sum(values[:3]) / 3]
    assert training.History().smooth != training.History().smooth  # nan before any loss
    with pytest.raises(ValueError, match="window=0"):
        training.History(window=0)


def test_nan_guard_names_the_first_bad_step_between_log_points():
    calls, finite = {"n": 0}, []

    def loss_fn(net, x, y, g):
        calls["n"] += 1
        out = net(x, torch.full((x.shape[0],), 0.5)).pow(2).mean()
        if calls["n"] <= 7:
            finite.append(out.item())
        return out if calls["n"] <= 7 else out * float("nan")

    net = nets.MLP(dim=2, hidden=8, depth=1)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 7 \(last finite loss ") as err:
        training.train(net, loss_fn, DATA, steps=40, batch_size=8, progress=False, log_every=20)
    assert f"last finite loss {finite[-1]})" in str(err.value)
    assert calls["n"] == 20  # found at the first log point, not at every step


def test_bad_arguments(tmp_path):
    net, loss_fn = nets.MLP(dim=2, hidden=8, depth=1), noisy_loss()
    common = dict(steps=2, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every=0"):
        training.train(net, loss_fn, DATA, checkpoint_path=tmp_path / "a.pt", checkpoint_every=0, **common)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_path"):
        training.train(net, loss_fn, DATA, resume=True, **common)
    with pytest.raises(ValueError, match="checkpoint_every=5 needs a checkpoint_path"):
        training.train(net, loss_fn, DATA, checkpoint_every=5, **common)
    with pytest.raises(ValueError, match="log_every=0"):
        training.train(net, loss_fn, DATA, log_every=0, **common)
    with pytest.raises(ValueError, match="path="):
        training.load_training_state(tmp_path / "missing.pt", net, None, None, None, None, None, {})
    # resume=True with no file yet starts afresh and writes one
    training.train(net, loss_fn, DATA, checkpoint_path=tmp_path / "new.pt", resume=True, **common)
    assert torch.load(tmp_path / "new.pt", weights_only=True)["step"] == 2
