"""The training command (python -m utils.train): one process and two (torchrun, DDP on gloo),
resume after a crash, export, the checkpoint it writes. Tiny models on sklearn's digits (8x8)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils import train as train_cmd
from utils.targets import Denoiser

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "digits", "--width", "8", "--mults", "1,2", "--batch", "8", "--warmup", "2",
        "--log-every", "2", "--no-progress"]


def weights(path, key="model"):
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_two_ranks_on_gloo(tmp_path):
    """torchrun --nproc_per_node=2: the ranks draw different batches and end with identical weights."""
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "utils.train", *TINY, "--cond", "--label-dropout", "0.2", "--steps", "4",
           "--ckpt-every", "2", "--device", "cpu", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    s0 = torch.load(train_cmd.state_path(out, 0), weights_only=True)
    s1 = torch.load(train_cmd.state_path(out, 1), weights_only=True)
    assert (s0["run"]["rank"], s1["run"]["rank"]) == (0, 1) and s0["step"] == s1["step"] == 4
    assert_same(s0["model"], s1["model"])            # gradients were averaged: one model
    assert_same(s0["ema_model"], s1["ema_model"])
    assert not torch.equal(s0["rng"]["batch"], s1["rng"]["batch"])  # different data streams ...
    assert not torch.allclose(s0["history"]["losses"], s1["history"]["losses"])  # ... different batches
    # only rank 0 writes the model file; it holds rank 0's EMA weights and the torchrun command
    ckpt = torch.load(out, weights_only=True)
    assert_same(ckpt["state_dict"], s0["ema_model"])
    assert ckpt["meta"]["command"].startswith("torchrun --nproc_per_node=2 -m utils.train")
    assert ckpt["meta"]["world_size"] == 2


class Crash(Exception):
    pass


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    args = [*TINY, "--steps", "6", "--ckpt-every", "2", "--lr", "3e-3"]
    full = train_cmd.main([*args, "--out", str(tmp_path / "full.pt")])

    build = train_cmd.build_loss
    calls = {"n": 0}

    def crashing(spec):
        loss = build(spec)

        def loss_fn(net, x, y, g):
            calls["n"] += 1
            if calls["n"] == 5:  # during step 5: the last saved state is step 4
                raise Crash
            return loss(net, x, y, g)
        return loss_fn

    monkeypatch.setattr(train_cmd, "build_loss", crashing)
    out = tmp_path / "resumed.pt"
    with pytest.raises(Crash):
        train_cmd.main([*args, "--out", str(out)])
    assert not out.exists() and torch.load(train_cmd.state_path(out, 0), weights_only=True)["step"] == 4
    monkeypatch.setattr(train_cmd, "build_loss", build)
    train_cmd.main([*args, "--out", str(out), "--resume"])
    assert_same(weights(out, "state_dict"), weights(full, "state_dict"))
    assert_same(weights(train_cmd.state_path(out, 0)), weights(train_cmd.state_path(full, 0)))


def test_checkpoint_loads_as_a_model_and_exports(tmp_path):
    out = tmp_path / "m.pt"
    train_cmd.main([*TINY, "--steps", "2", "--ckpt-every", "1", "--target", "velocity",
                    "--schedule", "linear", "--time-dist", "logitnormal", "--out", str(out)])
    model = train_cmd.load_pretrained(out)
    assert isinstance(model, Denoiser) and model.target == "velocity" and model.schedule.name == "linear"
    assert model.meta["spec"]["net"]["num_classes"] is None and model.meta["steps"] == 2
    x = torch.randn(3, 1, 8, 8)
    assert model.eps(x, 0.5).shape == x.shape
    # --export writes the model file from the training state without training
    exported = tmp_path / "exported.pt"
    state = train_cmd.state_path(out, 0)
    exported_state = train_cmd.state_path(exported, 0)
    exported_state.write_bytes(state.read_bytes())
    train_cmd.main([*TINY, "--target", "velocity", "--schedule", "linear", "--out", str(exported), "--export"])
    assert_same(weights(exported, "state_dict"), weights(out, "state_dict"))
    assert "--export" not in torch.load(exported, weights_only=True)["meta"]["command"]
    clf = tmp_path / "clf.pt"
    train_cmd.main([*TINY, "--model", "classifier", "--steps", "2", "--out", str(clf)])
    net = train_cmd.load_pretrained(clf)
    assert net(x).shape == (3, 10) and net.features(x).shape[0] == 3


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_cmd.load_checkpoint_file(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt.*could not be loaded"):
        train_cmd.load_checkpoint_file(bad)
    with pytest.raises(ValueError, match="bad.pt.*SHA-256"):
        train_cmd.load_checkpoint_file(bad, expected_sha256="0" * 64)
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a utils.train checkpoint"):
        train_cmd.load_checkpoint_file(bad)


def test_a_constant_lr_run_can_be_extended(tmp_path):
    """With a constant lr, --steps only says where to stop: 4 steps then --resume to 6 equals 6 steps;
    under a cosine schedule (which depends on --steps) a changed --steps is refused."""
    args = [*TINY, "--ckpt-every", "2", "--lr", "3e-3", "--lr-schedule", "constant"]
    full = train_cmd.main([*args, "--steps", "6", "--out", str(tmp_path / "full.pt")])
    out = tmp_path / "extended.pt"
    train_cmd.main([*args, "--steps", "4", "--out", str(out)])
    train_cmd.main([*args, "--steps", "6", "--out", str(out), "--resume"])
    assert_same(weights(out, "state_dict"), weights(full, "state_dict"))
    with pytest.raises(ValueError, match="already at step 6"):
        train_cmd.main([*args, "--steps", "5", "--out", str(out), "--resume"])
    cosine = [*TINY, "--ckpt-every", "2", "--lr-schedule", "cosine"]
    train_cmd.main([*cosine, "--steps", "2", "--out", str(tmp_path / "cos.pt")])
    with pytest.raises(ValueError, match=r"steps=4 \(saved 2\)"):
        train_cmd.main([*cosine, "--steps", "4", "--out", str(tmp_path / "cos.pt"), "--resume"])


def test_one_step_model_distilled_from_a_teacher(tmp_path):
    """--model consistency: the student starts as the teacher's U-Net, learns on cached teacher
    trajectories (reused when the key matches) and loads as a ConsistencyModel with f(x, 0) = x."""
    from utils import flowmaps

    teacher = tmp_path / "teacher.pt"
    train_cmd.main([*TINY, "--cond", "--label-dropout", "0.2", "--steps", "2", "--out", str(teacher)])
    out = tmp_path / "cm.pt"
    args = [*TINY, "--model", "consistency", "--teacher", str(teacher), "--teacher-steps", "3",
            "--trajectories", "24", "--label-dropout", "0.2", "--steps", "3", "--out", str(out)]
    train_cmd.main(args)
    cached = torch.load(train_cmd.trajectories_path(out), weights_only=True)
    assert cached["traj"].shape == (24, 4, 1, 8, 8) and cached["key"]["teacher_steps"] == 3
    assert (cached["y"] == -1).any() and (cached["y"] >= 0).any()          # null-class trajectories too
    model = train_cmd.load_pretrained(out)
    assert isinstance(model, flowmaps.ConsistencyModel) and model.meta["spec"]["teacher_sha256"] == train_cmd.sha256_file(teacher)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(model(x, 0.0, torch.arange(5)), x)          # the boundary condition
    one = flowmaps.sample_consistency(model, x, torch.tensor([1.0, 0.0], dtype=torch.float64), y=torch.arange(5))
    assert one.shape == x.shape and torch.isfinite(one).all()
    before = train_cmd.trajectories_path(out).stat().st_mtime_ns
    train_cmd.main([*args, "--out", str(out), "--steps", "4", "--resume"])  # reuses the cache
    assert train_cmd.trajectories_path(out).stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="--teacher"):
        train_cmd.main([*TINY, "--model", "consistency", "--steps", "1", "--out", str(tmp_path / "x.pt")])
