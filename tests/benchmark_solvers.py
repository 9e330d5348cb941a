"""Benchmark of utils.solvers against the exact PF-ODE solution (issue 15; Ch. 9).

    python tests/benchmark_solvers.py                  # 2,000 paths (the issue's set-up), a few minutes
    python tests/benchmark_solvers.py --paths 300      # quicker

Set-up: the eight-Gaussian mixture under VPLinear, paths from the prior at t = 1 to t_min = 1e-3;
error = mean over paths of the Euclidean distance to a reference solve of the same ODE from the same
start (RK4 on a fine log-SNR grid, checked against one with twice the steps). Prints

* the order table: each solver's order fitted on the uniform log-SNR grid in the asymptotic regime
  (NFE 48, 96, 192), beside theory (Table 9.1);
* the NFE table: for each solver x grid (uniform t, uniform log-SNR, EDM rho = 7, the grid fitted to
  the model by equidistributing the local error), the smallest NFE tried with error < 1e-2 and < 1e-3;
* the same for grids optimized per solver and NFE on 200 pilot paths (``solvers.optimized_grid``),
  measured on the benchmark's own paths;
* the best solver and grid at 1e-2, and the best error at <= 15 NFE.

Not part of the test run; ``--json PATH`` also writes the figures and curves as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from utils import data, samplers, schedules, solvers  # noqa: E402

SOLVE = {"DDIM": (solvers.ddim, {}, 1), "DPM-Solver-2": (solvers.dpm_solver_2, {}, 2),
         "DPM-Solver-3": (solvers.dpm_solver_3, {}, 3), "DPM-Solver++(2S)": (solvers.dpm_solver_pp_2s, {}, 2),
         "DPM-Solver++(2M)": (solvers.dpm_solver_pp_2m, {}, 2), "DEIS order 2": (solvers.deis, {"order": 2}, 2),
         "DEIS order 3": (solvers.deis, {"order": 3}, 3), "EDM Heun": (solvers.edm_heun, {}, 2)}
NFES = (6, 8, 10, 12, 15, 18, 20, 24, 30, 40, 50, 60, 80, 100, 120, 160)
ORDER_NFES = (48, 96, 192)
OPT_NFES = (6, 8, 10, 12, 15, 20)


def main(n_paths: int, seed: int) -> dict:
    torch.set_num_threads(1)
    mix, sched = data.toy_gmm("8gaussians"), schedules.VPLinear()
    oracle = solvers.CountingModel(mix.denoiser(sched))
    x1 = samplers.sample_prior(sched, (n_paths, 2), torch.Generator().manual_seed(seed), dtype=torch.float64)
    start = time.perf_counter()
    ref = samplers.sample_rk4(oracle, x1, schedules.log_snr_grid(sched, 300))
    ref_err = float((samplers.sample_rk4(oracle, x1, schedules.log_snr_grid(sched, 600)) - ref).norm(dim=1).mean())
    print(f"reference: RK4 on 300 log-SNR steps, distance to 600 steps {ref_err:.1e} ({time.perf_counter() - start:.0f} s)")
    error = lambda x: float((x - ref).norm(dim=1).mean())
    pilot = samplers.sample_prior(sched, (200, 2), torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    lam, density = solvers.local_error_density(oracle, pilot, order=3)
    grids = {"uniform t": lambda n: schedules.uniform_grid(n, sched.t_max, sched.t_min),
             "uniform log-SNR": lambda n: schedules.log_snr_grid(sched, n),
             "EDM rho=7": lambda n: schedules.edm_grid(sched, n),
             "fitted": lambda n: solvers.equidistributed_grid(sched, lam, density, n)}

    def run(name, grid_name, nfe):
        f, kw, _ = SOLVE[name]
        x = f(oracle.reset(), x1, grids[grid_name](solvers.steps_for_nfe(f.__name__, nfe)), **kw)
        return oracle.nfe, error(x)

    out = {"paths": n_paths, "reference_error": ref_err, "orders": {}, "nfe_to": {}, "curves": {}}
    print(f"\n{'solver':18s} theory  fitted   errors at NFE {ORDER_NFES} (uniform log-SNR)")
    for name, (_, _, order) in SOLVE.items():
        pts = [run(name, "uniform log-SNR", n) for n in ORDER_NFES]
        X = torch.tensor([[math.log(n), 1.0] for n, _ in pts], dtype=torch.float64)
        Y = torch.tensor([[math.log(e)] for _, e in pts], dtype=torch.float64)
        fitted = -float(torch.linalg.lstsq(X, Y).solution[0, 0])
        out["orders"][name] = {"theory": order, "fitted": fitted}
        flag = "" if abs(fitted - order) < 0.3 else "   <-- off by more than 0.3"
        print(f"{name:18s} {order:6d}  {fitted:6.2f}   " + ", ".join(f"{e:.1e}" for _, e in pts) + flag)

    print(f"\n{'solver':18s}" + "".join(f"{g:>18s}" for g in grids) + "   (NFE to error < 1e-2 / < 1e-3)")
    for name in SOLVE:
        cells = []
        for g in grids:
            pts = dict(run(name, g, n) for n in NFES)
            out["curves"][f"{name} | {g}"] = sorted(pts.items())
            hit = {tol: min([n for n, e in pts.items() if e < tol], default=None) for tol in (1e-2, 1e-3)}
            out["nfe_to"][f"{name} | {g}"] = hit
            cells.append(f"{hit[1e-2] or '-'} / {hit[1e-3] or '-'}")
        print(f"{name:18s}" + "".join(f"{c:>18s}" for c in cells))
    pilot_ref = samplers.sample_rk4(oracle, pilot, schedules.log_snr_grid(sched, 300))
    print("\ngrids optimized per solver and NFE on the 200 pilot paths (solvers.optimized_grid), "
          "measured on the benchmark's paths:")
    for name in ("DPM-Solver++(2M)", "DPM-Solver-3", "DEIS order 3"):
        f, kw, _ = SOLVE[name]
        pts = {}
        for nfe in OPT_NFES:
            n = solvers.steps_for_nfe(f.__name__, nfe)
            solver = lambda m, x, g, f=f, kw=kw: f(m, x, g, **kw)
            g = solvers.optimized_grid(solver, oracle, pilot, pilot_ref, grids["fitted"](n), max_iter=400)
            x = f(oracle.reset(), x1, g, **kw)
            pts[oracle.nfe] = error(x)
        out["curves"][f"{name} | optimized"] = sorted(pts.items())
        hit = {tol: min([n for n, e in pts.items() if e < tol], default=None) for tol in (1e-2, 1e-3)}
        out["nfe_to"][f"{name} | optimized"] = hit
        print(f"{name:18s} " + ", ".join(f"{n} NFE: {e:.1e}" for n, e in sorted(pts.items()))
              + f"   (NFE to 1e-2: {hit[1e-2] or '-'})")
    best = min((v[1e-2], k) for k, v in out["nfe_to"].items() if v[1e-2] is not None)
    best15 = min((e, k) for k, c in out["curves"].items() for n, e in c if n <= 15)
    print(f"\nfewest NFE to 1e-2: {best[1]} at {best[0]} NFE;  best error at <= 15 NFE: {best15[0]:.2e} ({best15[1]})")
    print("target (issue 15): 1e-2 in at most 15 NFE:", "met" if best[0] <= 15 else "NOT met")
    out["best_nfe_to_1e-2"], out["best_error_at_15"] = {"solver_grid": best[1], "nfe": best[0]}, best15[0]
    out["nfe_to"] = {k: {str(t): n for t, n in v.items()} for k, v in out["nfe_to"].items()}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = main(args.paths, args.seed)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\n{result['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"written to {args.json}")
