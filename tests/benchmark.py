"""Benchmark: the figures the issues ask for, printed as a table and written as JSON.

    python tests/benchmark.py                 # everything
    python tests/benchmark.py --only 00 04    # notebooks whose name starts with these prefixes
    python tests/benchmark.py --no-notebooks  # only the oracle sampler table
    python tests/benchmark.py --profile cpu --no-oracle   # a reader's laptop: each chapter's time

Not part of the test run (timings on a shared machine are noisy; targets are read from here, not
asserted in timed tests). Rows:

* each notebook's wall time executed top to bottom in the ``test`` profile (or the one given with
  ``--profile``: ``cpu`` is what a reader without CUDA gets, and every chapter must finish within
  CPU_BUDGET_S there), and the key figures it hands over with ``utils.config.record``
  (sample-quality ratios, errors, slopes, ...). Notebooks run one after another, each kernel with
  torch's default threads unless ``--threads`` is given; time it on a quiet machine (the load
  average before and after each notebook is written beside its time);
* for the oracle-driven samplers, the sliced-Wasserstein distance to the data against the
  data-vs-data noise floor at a fixed sample size (8000 samples = 20 chunks of 400).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from utils import data, metrics, samplers, schedules  # noqa: E402

RESULTS = ROOT / "tests" / "benchmark_results.json"
PROFILES = ("test", "cpu", "gpu")
CPU_BUDGET_S = 600  # a chapter in the cpu profile: within 10 minutes on a 2-core laptop


def results_path(profile: str) -> Path:
    """tests/benchmark_results.json for the test profile, benchmark_results_<profile>.json otherwise."""
    return RESULTS if profile == "test" else RESULTS.with_name(f"benchmark_results_{profile}.json")


def run_notebook(path: Path, profile: str = "test", threads: int | None = None) -> dict:
    """Execute one notebook in ``profile``; return its wall time, status, recorded figures and the
    1-minute load average before and after (a busy machine inflates the time)."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not valid; expected one of {PROFILES}")
    import nbformat
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        os.environ.update(DIFFUSION_PROFILE=profile, MPLBACKEND="Agg", DIFFUSION_BENCHMARK_OUT=str(out),
                          DIFFUSION_STATIC_WIDGETS="1",  # one figure per widget, as under nbval
                          PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        load_before = os.getloadavg()[0]
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=1800, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        status = "ok"
        try:
            client.execute()
        except Exception as exc:  # report, keep going with the other notebooks
            status = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[-1][:120] if str(exc) else ''}"
        seconds = time.perf_counter() - start
        figures = json.loads(out.read_text()) if out.exists() else {}
    return {"seconds": round(seconds, 1), "status": status, "figures": figures, "profile": profile,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def time_table(notebooks: dict, profile: str) -> str:
    """Each chapter's wall time in ``profile`` as a text table (with the cpu budget check)."""
    lines = [f"{'chapter':<32} {'seconds':>8} {'load':>11}  status",
             f"{'-' * 32} {'-' * 8} {'-' * 11}  {'-' * 6}"]
    for name, r in notebooks.items():
        note = r["status"]
        if profile == "cpu" and r["status"] == "ok" and r["seconds"] > CPU_BUDGET_S:
            note = f"ok, OVER the {CPU_BUDGET_S} s budget"
        lines.append(f"{name:<32} {r['seconds']:>8.1f} {r['load_before']:>5.2f}-{r['load_after']:<5.2f}  {note}")
    total = sum(r["seconds"] for r in notebooks.values())
    lines.append(f"{'total':<32} {total:>8.1f}")
    return "\n".join(lines)


def oracle_samplers(n: int = 8000, seed: int = 0) -> list[dict]:
    """Distance to the data vs the noise floor for samplers driven by the exact oracle."""
    mixture = data.toy_gmm("8gaussians")
    reference = lambda m, g: mixture.sample(m, g)[0]  # noqa: E731
    rows = []
    cases = [
        ("vp_linear", "PF-ODE Euler", samplers.sample_euler, 100, 100),
        ("vp_linear", "PF-ODE Heun", samplers.sample_heun, 50, 99),
        ("vp_linear", "PF-ODE RK4", samplers.sample_rk4, 25, 100),
        ("vp_linear", "reverse SDE Euler-Maruyama", samplers.sample_euler_maruyama, 500, 500),
        ("vp_linear", "ancestral", samplers.sample_ancestral, 200, 200),
        ("vp_linear", "predictor-corrector", samplers.sample_predictor_corrector, 200, 399),
        ("linear", "PF-ODE Euler", samplers.sample_euler, 100, 100),
        ("linear", "PF-ODE Heun", samplers.sample_heun, 50, 99),
    ]
    for sched_name, name, fn, steps, nfe in cases:
        sched = schedules.get_schedule(sched_name)
        oracle = mixture.denoiser(sched)
        x = samplers.sample_prior(sched, (n, 2), torch.Generator().manual_seed(seed), dtype=torch.float64)
        t_max = 1.0 if name.startswith("PF-ODE") else sched.t_max
        grid = schedules.uniform_grid(steps, t_max=t_max, t_min=sched.t_min if sched_name != "linear" else 0.0)
        kwargs = {} if name.startswith("PF-ODE") else {"generator": torch.Generator().manual_seed(seed + 1)}
        start = time.perf_counter()
        out = fn(oracle, x, grid, **kwargs)
        seconds = time.perf_counter() - start
        cmp = metrics.compare_to_floor(out, reference)
        rows.append({"schedule": sched_name, "sampler": name, "steps": steps, "nfe": nfe,
                     "sw": round(cmp.distance, 4), "floor": round(cmp.floor, 4), "ratio": round(cmp.ratio, 3),
                     "n": cmp.n, "seconds": round(seconds, 2)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 00 04")
    parser.add_argument("--no-notebooks", action="store_true", help="skip executing the notebooks")
    parser.add_argument("--no-oracle", action="store_true", help="skip the oracle sampler table")
    parser.add_argument("--profile", choices=PROFILES, default="test",
                        help="profile the notebooks run in (default test; cpu = a reader's laptop)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the kernels (default: torch's default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default tests/benchmark_results.json, _<profile>.json for cpu/gpu)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads={args.threads} is not valid; expected a positive int")
    out_path = args.out or results_path(args.profile)
    kernel_threads = args.threads or os.environ.get("OMP_NUM_THREADS", "default")

    results = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                           "cpus": os.cpu_count(), "profile": args.profile,
                           "kernel_threads": kernel_threads,
                           "date": time.strftime("%Y-%m-%d %H:%M")}}
    if not args.no_oracle:
        print("Oracle-driven samplers on 8gaussians (sliced Wasserstein vs the data-vs-data floor):")
        rows = oracle_samplers()
        print(f"{'schedule':<10} {'sampler':<28} {'steps':>5} {'NFE':>4} {'SW':>7} {'floor':>7} {'ratio':>6} {'s':>6}")
        for r in rows:
            print(f"{r['schedule']:<10} {r['sampler']:<28} {r['steps']:>5} {r['nfe']:>4} {r['sw']:>7.4f} "
                  f"{r['floor']:>7.4f} {r['ratio']:>6.2f} {r['seconds']:>6.1f}")
        results["oracle_samplers"] = rows

    if not args.no_notebooks:
        notebooks = sorted((ROOT / "chapters").glob("*.ipynb"))
        if args.only:
            notebooks = [p for p in notebooks if any(p.name.startswith(o) for o in args.only)]
        results["notebooks"] = {}
        print(f"\nNotebooks in the {args.profile} profile:")
        for path in notebooks:
            res = run_notebook(path, args.profile, args.threads)
            results["notebooks"][path.stem] = res
            figs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res["figures"].items())
            print(f"{path.stem:<32} {res['seconds']:>7.1f} s  {res['status']}\n    {figs}", flush=True)

        print(f"\nWall time per chapter, {args.profile} profile, {os.cpu_count()} CPUs, "
              f"kernel threads {kernel_threads}:")
        print(time_table(results["notebooks"], args.profile))

    out_path.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out_path}")
    failed = [n for n, r in results.get("notebooks", {}).items() if r["status"] != "ok"]
    over = [n for n, r in results.get("notebooks", {}).items()
            if args.profile == "cpu" and r["seconds"] > CPU_BUDGET_S]
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
