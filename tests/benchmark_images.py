"""Benchmark of the shipped image checkpoints (data/checkpoints/, MANIFEST.json).

    .venv/bin/python tests/benchmark_images.py [--n 500] [--w 3] [--update-manifest]

Prints, and with ``--update-manifest`` writes into MANIFEST.json:

* classifier-FID of the unconditional model (the CFG U-Net asked with the null label) at 50 NFE
  (DPM-Solver++(2M), 50 steps on EDM's grid) against n real test images, next to the floor (n real
  training images against the same n test images, mean of 5 draws) and their ratio (target: < 5);
* the FID classifier's accuracy on class-conditional samples (20 NFE) with classifier-free
  guidance at a moderate w (target: > 0.9), and the same with classifier guidance
  (noise-conditional classifier);
* the FID classifier's accuracy on the real test set;
* seconds to draw 16 samples at 20 NFE from each model, on the threads given (default 2);
* the one-step model (Ch. 11, ``fmnist_consistency.pt``): classifier-FID at 1 and 2 NFE
  (unconditional, the null label) against the same floor, the accuracy of its class-conditional
  samples at 1 NFE, and seconds for 16 samples at 1 NFE. ``--only one-step`` measures just that
  (and, with ``--update-manifest``, writes its entry, adding it to the manifest if it is new).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import data, fid, train  # noqa: E402
from utils.guidance import ClassifierFreeGuidance, ClassifierGuidance  # noqa: E402
from utils.schedules import edm_grid  # noqa: E402
from utils.solvers import dpm_solver_pp_2m  # noqa: E402
from utils.targets import NULL_LABEL  # noqa: E402

UNET, CLASSIFIER, NOISY = "fmnist_unet_cfg.pt", "fmnist_classifier.pt", "fmnist_noisy_classifier.pt"
ONE_STEP = "fmnist_consistency.pt"
ONE_STEP_ROLE = ("one-step model (Ch. 11): a consistency model f = c_skip x + c_out F (F the teacher's U-Net, started "
                 "from its weights) distilled by regression on the teacher's DPM-Solver++(2M) trajectories "
                 "(fmnist_unet_cfg.pt, 16 steps, x0 clipped); class-conditional, the null label unconditional")


def draw(model, n, nfe, y, seed=0):
    """n images at ``nfe`` evaluations (DPM-Solver++(2M): one per step, on EDM's grid), x0 clipped
    to [-1, 1] (:class:`utils.fid.ClippedX0`), per-sample seeds."""
    grid = edm_grid(model.schedule, nfe)
    return fid.sample_images(fid.ClippedX0(model), n, (1, 28, 28), grid, y=y, seed=seed, batch_size=250,
                             sampler=dpm_solver_pp_2m).clamp(-1, 1)


def draw_one_step(model, n, nfe, y, seed=0):
    """n images from the consistency model in ``nfe`` (1 or 2) evaluations (Alg. 9, re-noising at
    the middle of its teacher grid), clipped to [-1, 1], per-sample seeds."""
    from utils import flowmaps

    grid = train.teacher_grid(model.schedule, model.meta["spec"]["teacher_steps"])
    grids = {1: torch.tensor([1.0, 0.0], dtype=torch.float64),
             2: torch.tensor([1.0, float(grid[len(grid) // 2]), 0.0], dtype=torch.float64)}

    def sampler(m, x, g, y=None):
        return flowmaps.sample_consistency(m, x, g, torch.Generator().manual_seed(7), y=y).clamp(-1, 1)

    return fid.sample_images(model, n, (1, 28, 28), grids[nfe], y=y, seed=seed, batch_size=250, sampler=sampler)


def one_step_figures(args, ref, floor, clf):
    cm = train.load_pretrained(train.CHECKPOINT_DIR / ONE_STEP)  # by path: it may not be in the manifest yet
    out = {"fid_n": args.n, "fid_floor": round(floor, 4)}
    for nfe in (1, 2):
        f = fid.classifier_fid(draw_one_step(cm, args.n, nfe, NULL_LABEL), ref, clf)
        out[f"classifier_fid_{nfe}nfe"], out[f"fid_over_floor_{nfe}nfe"] = round(f, 4), round(f / floor, 2)
        print(f"one-step model, unconditional, {nfe} NFE: classifier-FID {f:.3f} = {f / floor:.2f} x floor")
    labels = torch.arange(args.n_acc) % 10
    acc = fid.classifier_accuracy(draw_one_step(cm, args.n_acc, 1, labels), labels, clf)
    print(f"one-step model, class-conditional, 1 NFE: accuracy {acc:.3f} (n={args.n_acc})")
    torch.manual_seed(0)
    start = time.perf_counter()
    draw_one_step(cm, 16, 1, torch.arange(16) % 10)
    secs = time.perf_counter() - start
    print(f"16 samples at 1 NFE: {secs:.3f} s ({args.threads} threads)")
    out.update(accuracy_conditional_1nfe=round(acc, 4), accuracy_n=args.n_acc, seconds_16_samples_1nfe=round(secs, 3),
               sampler="sample_consistency (Alg. 9), 1 or 2 NFE, output clipped to [-1, 1]")
    return out


def seconds_for_16(model, nfe=20, y=None):
    torch.manual_seed(0)
    start = time.perf_counter()
    draw(model, 16, nfe, y)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500, help="samples for the FID (and the floor)")
    p.add_argument("--n-acc", type=int, default=200, help="samples for the guided accuracies")
    p.add_argument("--w", type=float, default=3.0, help="CFG weight (0 unconditional, 1 conditional)")
    p.add_argument("--w-cg", type=float, default=3.0, help="classifier-guidance weight")
    p.add_argument("--nfe", type=int, default=50, help="NFE of the FID samples")
    p.add_argument("--nfe-acc", type=int, default=20, help="NFE of the guided samples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--update-manifest", action="store_true")
    p.add_argument("--only", choices=("all", "one-step"), default="all")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    unet, clf, noisy = (train.load_pretrained(n) for n in (UNET, CLASSIFIER, NOISY))
    xtr, _ = data.load_image_dataset("fashion-mnist", "train")
    xte, yte = data.load_image_dataset("fashion-mnist", "test")
    g = torch.Generator().manual_seed(0)
    ref = xte[torch.randperm(xte.shape[0], generator=g)[:args.n]]
    # the floor: n real training images against the same n test images, over 5 draws of the former
    floors = torch.tensor([fid.classifier_fid(xtr[torch.randperm(xtr.shape[0], generator=g)[:args.n]], ref, clf)
                           for _ in range(5)])
    floor = float(floors.mean())
    test_acc = fid.classifier_accuracy(xte, yte, clf)
    print(f"FID classifier: test accuracy {test_acc:.4f}; floor (train vs test, n={args.n}) {floor:.3f} "
          f"(5 draws: {float(floors.min()):.2f} to {float(floors.max()):.2f})")
    one_step = one_step_figures(args, ref, floor, clf) if train.is_shipped(ONE_STEP) else None
    if args.only == "one-step":
        if args.update_manifest and one_step is not None:
            entries = train.read_manifest()
            if ONE_STEP not in entries or entries[ONE_STEP]["sha256"] != train.sha256_file(train.CHECKPOINT_DIR / ONE_STEP):
                entries[ONE_STEP] = train.manifest_entry(train.CHECKPOINT_DIR / ONE_STEP, ONE_STEP_ROLE)
            entries[ONE_STEP]["figures"].update(one_step, threads=args.threads, load_average=round(os.getloadavg()[0], 1))
            train.write_manifest(list(entries.values()), notes=train.read_manifest_notes())
            print(f"updated {train.MANIFEST}")
        return {"one_step": one_step}

    start = time.perf_counter()
    uncond = draw(unet, args.n, args.nfe, NULL_LABEL)
    fid_uncond = fid.classifier_fid(uncond, ref, clf)
    print(f"unconditional (null label), {args.nfe} NFE: classifier-FID {fid_uncond:.3f} = "
          f"{fid_uncond / floor:.2f} x floor   ({time.perf_counter() - start:.0f} s)")

    labels = torch.arange(args.n_acc) % 10
    cond = draw(ClassifierFreeGuidance(unet, 1.0), args.n_acc, args.nfe_acc, labels)
    cfg = draw(ClassifierFreeGuidance(unet, args.w), args.n_acc, args.nfe_acc, labels)
    acc_cond, acc_cfg = (fid.classifier_accuracy(s, labels, clf) for s in (cond, cfg))
    print(f"accuracy on samples ({args.nfe_acc} NFE): conditional (w=1) {acc_cond:.3f}, CFG w={args.w:g} {acc_cfg:.3f}")
    cg = draw(ClassifierGuidance(unet, noisy, args.w_cg), args.n_acc, args.nfe_acc, labels)
    acc_cg = fid.classifier_accuracy(cg, labels, clf)
    print(f"accuracy on samples: classifier guidance w={args.w_cg:g} {acc_cg:.3f}")

    times = {"unconditional": seconds_for_16(unet, y=NULL_LABEL),
             "cfg": seconds_for_16(ClassifierFreeGuidance(unet, args.w), y=torch.arange(16) % 10),
             "classifier_guidance": seconds_for_16(ClassifierGuidance(unet, noisy, args.w_cg), y=torch.arange(16) % 10)}
    load = os.getloadavg()[0]
    for k, v in times.items():
        print(f"16 samples at 20 NFE, {k}: {v:.2f} s ({args.threads} threads, load {load:.1f})")

    if args.update_manifest:
        figures = {
            UNET: {"classifier_fid_50nfe": round(fid_uncond, 4), "fid_floor": round(floor, 4), "fid_floor_range_5_draws": [round(float(floors.min()), 3), round(float(floors.max()), 3)],
                   "fid_over_floor": round(fid_uncond / floor, 2), "fid_n": args.n,
                   "sampler": f"ClippedX0, dpm_solver_pp_2m, {args.nfe} steps, edm_grid",
                   "accuracy_conditional_w1": round(acc_cond, 4), f"accuracy_cfg_w{args.w:g}": round(acc_cfg, 4),
                   "accuracy_n": args.n_acc, "accuracy_nfe": args.nfe_acc, "seconds_16_samples_20nfe": round(times["unconditional"], 2),
                   "seconds_16_samples_20nfe_cfg": round(times["cfg"], 2)},
            CLASSIFIER: {"test_accuracy": round(test_acc, 4)},
            NOISY: {f"accuracy_classifier_guidance_w{args.w_cg:g}": round(acc_cg, 4),
                    "seconds_16_samples_20nfe_guided": round(times["classifier_guidance"], 2)},
        }
        entries = train.read_manifest()
        if one_step is not None:
            if ONE_STEP not in entries or entries[ONE_STEP]["sha256"] != train.sha256_file(train.CHECKPOINT_DIR / ONE_STEP):
                entries[ONE_STEP] = train.manifest_entry(train.CHECKPOINT_DIR / ONE_STEP, ONE_STEP_ROLE)
            figures[ONE_STEP] = one_step
        for name, fig in figures.items():
            entries[name]["figures"].update(fig, threads=args.threads, load_average=round(load, 1))
        notes = train.read_manifest_notes()
        train.write_manifest(list(entries.values()), notes=notes)
        print(f"updated {train.MANIFEST}")
    return {"fid": fid_uncond, "floor": floor, "acc_cfg": acc_cfg, "acc_cg": acc_cg, "times": times, "one_step": one_step}


if __name__ == "__main__":
    main()
