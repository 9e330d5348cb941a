"""The shipped checkpoints (data/checkpoints/): the manifest's hashes, commands and sizes, loading
with weights_only=True, a few samples from each model, and a tampered file that is refused."""
import json
import shutil

import pytest
import torch

from utils import data, fid, train
from utils.guidance import ClassifierFreeGuidance, ClassifierGuidance
from utils.schedules import edm_grid
from utils.solvers import dpm_solver_pp_2m
from utils.targets import NULL_LABEL, Denoiser

UNET, CLASSIFIER, NOISY = "fmnist_unet_cfg.pt", "fmnist_classifier.pt", "fmnist_noisy_classifier.pt"
ONE_STEP = "fmnist_consistency.pt"
ENTRIES = train.read_manifest()
REAL = data.find_idx_folder("fashion-mnist")


def test_manifest_matches_the_files():
    assert {UNET, CLASSIFIER, NOISY, ONE_STEP} <= set(ENTRIES)
    for name, entry in ENTRIES.items():
        path = train.CHECKPOINT_DIR / name
        assert path.stat().st_size < 10 * 2 ** 20, f"{name} is over 10 MB"
        assert train.sha256_file(path) == entry["sha256"], f"{name}: SHA-256 differs from the manifest"
        meta = train.load_checkpoint_file(path, entry["sha256"])["meta"]
        assert entry["command"] == meta["command"] and entry["steps"] == meta["steps"]
        assert entry["command"].startswith(("python -m utils.train", "torchrun"))
        assert entry["hardware"] and entry["role"]


def few_samples(model, y, n_steps=8):
    """Samples as the chapters draw them: x0 clipped to [-1, 1] (fid.ClippedX0), DPM-Solver++(2M)."""
    return fid.sample_images(fid.ClippedX0(model), y.shape[0], (1, 28, 28), edm_grid(model.schedule, n_steps),
                             y=y, seed=0, sampler=dpm_solver_pp_2m)


def test_models_load_and_draw_samples():
    unet = train.load_pretrained(UNET)
    assert isinstance(unet, Denoiser) and unet.net.num_classes == 10
    clf, noisy = train.load_pretrained(CLASSIFIER), train.load_pretrained(NOISY)
    assert all(not p.requires_grad for p in clf.parameters())
    y = torch.arange(10)
    with torch.no_grad():
        uncond = few_samples(unet, torch.full((4,), NULL_LABEL))
        cfg = few_samples(ClassifierFreeGuidance(unet, 3.0), y)
    guided = few_samples(ClassifierGuidance(unet, noisy, 3.0), y[:4])
    for x in (uncond, cfg, guided):
        assert torch.isfinite(x).all() and x.abs().max() < 1.5  # images live in [-1, 1]
    # guided samples of ten classes mostly land in their class (a real check of the weights)
    assert fid.classifier_accuracy(cfg.clamp(-1, 1), y, clf) >= 0.7


def test_one_step_model_lands_near_its_teacher():
    """One evaluation of the shipped consistency model from the teacher's noise lands nearer the
    teacher's ODE endpoint than the teacher's own two-step sample, and keeps the labels."""
    from utils import flowmaps

    cm, unet, clf = train.load_pretrained(ONE_STEP), train.load_pretrained(UNET), train.load_pretrained(CLASSIFIER)
    spec = cm.meta["spec"]
    assert isinstance(cm, flowmaps.ConsistencyModel) and spec["teacher_sha256"] == ENTRIES[UNET]["sha256"]
    y = torch.arange(20) % 10
    x1 = fid.per_sample_noise((20, 1, 28, 28), seed=3)
    with torch.no_grad():
        teacher = fid.ClippedX0(unet)
        end = dpm_solver_pp_2m(teacher, x1, train.teacher_grid(unet.schedule, 32), y=y)
        two = dpm_solver_pp_2m(teacher, x1, train.teacher_grid(unet.schedule, 2), y=y)
        one = cm(x1, 1.0, y).clamp(-1, 1)
    dist = lambda a: float((a - end).flatten(1).norm(dim=1).mean())  # noqa: E731
    assert dist(one) < 0.8 * dist(two), (dist(one), dist(two))
    assert fid.classifier_accuracy(one, y, clf) >= 0.6


@pytest.mark.skipif(REAL is None, reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_classifiers_on_real_images():
    clf, noisy = train.load_pretrained(CLASSIFIER), train.load_pretrained(NOISY)
    x, y = data.load_image_dataset("fashion-mnist", "test")
    x, y = x[:1000], y[:1000]
    assert fid.classifier_accuracy(x, y, clf) > 0.85
    # the noise-conditional classifier, at little noise, and near chance at the prior
    g = torch.Generator().manual_seed(0)
    s = train.get_schedule(noisy.meta["spec"]["schedule"])
    assert s.name == train.load_pretrained(UNET).schedule.name  # guidance needs the U-Net's schedule
    with torch.no_grad():
        for t, lo, hi in ((0.05, 0.65, 1.0), (0.999, 0.0, 0.3)):
            xt = s.alpha(t) * x + s.sigma(t) * torch.randn(x.shape, generator=g)
            acc = float((noisy(xt.float(), t).argmax(1) == y).double().mean())
            assert lo <= acc <= hi, (t, acc)


def test_a_tampered_checkpoint_is_refused(tmp_path):
    manifest = tmp_path / "MANIFEST.json"
    shutil.copy(train.MANIFEST, manifest)
    bad = tmp_path / CLASSIFIER
    raw = bytearray((train.CHECKPOINT_DIR / CLASSIFIER).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{CLASSIFIER}.*SHA-256"):
        train.load_pretrained(CLASSIFIER, manifest=manifest)
    # an unlisted name is refused with the list of what exists
    with pytest.raises(ValueError, match="is not a checkpoint in"):
        train.load_pretrained("nope.pt", manifest=manifest)
    assert json.loads(manifest.read_text())["checkpoints"]


def test_image_sections_find_what_they_need(tmp_path, monkeypatch):
    """is_shipped tells a checkpoint from a missing file or a Git LFS pointer; missing_for_images lists
    both the checkpoints and the data set an image section lacks; image_model names bad input."""
    from utils import train

    assert train.is_shipped("fmnist_unet_cfg.pt")
    assert not train.is_shipped("no_such.pt")
    (tmp_path / "MANIFEST.json").write_text('{"notes": "", "checkpoints": []}')
    (tmp_path / "pointer.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    assert not train.is_shipped("pointer.pt", tmp_path / "MANIFEST.json")
    monkeypatch.setattr(data, "find_idx_folder", lambda name, root=None: None)  # a machine without the files
    assert train.missing_for_images(["pointer.pt"], "mnist", tmp_path / "MANIFEST.json") == ["pointer.pt", "mnist"]
    with pytest.raises(ValueError, match="name='nothing.pt'"):
        train.image_model("nothing.pt", train=True)
