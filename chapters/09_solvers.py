# %% [markdown]
# # Chapter 9 — Sophisticated solvers for fast sampling
#
# *Companion to Ch. 9 of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025),
# and to the EDM sampler of its App. D.6.*
#
# Sampling a diffusion model is solving its probability-flow ODE, and every evaluation of the network
# costs. Ch. 9 builds solvers that need few evaluations (NFE) by exploiting the ODE's structure: its
# linear part can be integrated exactly, and what is left is one integral of a smooth prediction in
# the log-SNR. The published comparisons of these solvers are FID tables at a given NFE. Here the exact
# Gaussian-mixture oracle gives the exact ODE solution, so we measure what FID cannot: the **pathwise
# error** of each solver against the truth, from which orders and the effect of the time grid read off
# directly.
#
# After this notebook you can
# * write the PF-ODE in semilinear form and its exact solution in log-SNR $\lambda$ (§9.1, Eq. 9.1.6);
# * write DDIM in its four parameterisations and see that it is the exponential Euler method (§9.2),
#   and when plain Euler equals it (on the linear path) and when not (VP);
# * write DEIS, DPM-Solver-1/2/3 and DPM-Solver++(2S)/(2M) in a few lines each, check their identities
#   (DDIM = DPM-Solver-1 = DEIS order 1; Table 9.2), and fit their orders against the exact solution;
# * see why DPM-Solver++ was made: at a large guidance weight the noise-prediction solvers blow up and
#   the data-prediction ones do not;
# * pick a time grid (uniform $t$, uniform $\lambda$, EDM's $\rho=7$, one fitted to the model) and read off
#   the NFE a solver needs for a given accuracy;
# * run ParaDiGMS: Picard iterations that trade sequential steps for parallel evaluations (§9.7).
#
# **Prerequisites:** Ch. 4 (the PF-ODE), Ch. 6 (the four predictions), Ch. 8 (classifier-free guidance).
# Time runs from data ($t=0$) to noise ($t=1$); the log-SNR $\lambda_t=\log(\alpha_t/\sigma_t)$ *increases*
# towards the data, so a solver steps with $h = \lambda_{t_{i+1}}-\lambda_{t_i}>0$.

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import math, time, torch, matplotlib.pyplot as plt
from tqdm.auto import tqdm
from utils import config, schedules, targets, gmm, data, nets, losses, training, samplers, metrics, plotting, widgets
from utils import exercises
from utils import solvers
from utils.guidance import ClassifierFreeGuidance
profile, device, gen = config.setup(seed=0, threads=1)   # 2D batches of a few hundred: one thread is fastest
S = config.pick({
    "test": dict(n_paths=300, ref_steps=200, nfes=(6, 10, 15, 20, 30, 50, 80), order_nfes=(48, 96, 192), n_pilot=100,
                 opt_nfes=(10, 15), opt_iter=200, guide_paths=200, guide_ref_steps=120, weights=(1.0, 8.0),
                 train_steps=1500, hidden=64, batch=256, n_samples=4000, model_nfes=(5, 10, 20),
                 para_paths=100, para_steps=64, windows=(1, 4, 16, 64)),
    "cpu": dict(n_paths=1000, ref_steps=300, nfes=(6, 8, 10, 12, 15, 20, 30, 50, 80), order_nfes=(48, 96, 192),
                n_pilot=200, opt_nfes=(8, 10, 12, 15), opt_iter=300, guide_paths=400, guide_ref_steps=200,
                weights=(1.0, 4.0, 8.0, 16.0), train_steps=4000, hidden=128, batch=512, n_samples=8000,
                model_nfes=(5, 10, 20, 40), para_paths=200, para_steps=100, windows=(1, 4, 8, 16, 32, 100)),
})
S

# %% [markdown]
# ## The set-up: eight Gaussians, VP-linear, and the exact solution
#
# Data: the eight-Gaussian mixture (std 0.15 on a circle of radius 2) of the earlier chapters, under
# the continuous DDPM schedule `VPLinear`. Paths start from the prior at the schedule's start $t=1$ and
# stop at $t_{\min}=10^{-3}$ (where $\sigma\approx 0.014$, still finite log-SNR). The **error** of a
# solver is the mean over paths of $\|x^{\text{solver}}_{t_{\min}}-x^{\text{exact}}_{t_{\min}}\|$ from the
# same start. The exact solution is classical RK4 on a fine uniform-$\lambda$ grid with the exact
# oracle, checked against a solve with twice the steps.

# %%
mix = data.toy_gmm("8gaussians")
sched = schedules.VPLinear()
oracle = mix.denoiser(sched)
t_max, t_min = sched.t_max, sched.t_min
x1 = samplers.sample_prior(sched, (S["n_paths"], 2), torch.Generator().manual_seed(0), dtype=torch.float64)
start = time.perf_counter()
x_exact = samplers.sample_rk4(oracle, x1, schedules.log_snr_grid(sched, S["ref_steps"]))
x_check = samplers.sample_rk4(oracle, x1, schedules.log_snr_grid(sched, 2 * S["ref_steps"]))
ref_err = float((x_exact - x_check).norm(dim=1).mean())
print(f"reference: RK4, {S['ref_steps']} log-SNR steps ({4 * S['ref_steps']} NFE, {time.perf_counter() - start:.1f} s); "
      f"its distance to a solve with twice the steps: {ref_err:.1e}")
assert ref_err < 1e-5                                   # far below the 1e-3 the tables ask for


def error(x, ref=None):
    """Mean Euclidean distance to the exact solution from the same starts."""
    return float((x - (x_exact if ref is None else ref)).norm(dim=1).mean())


lam = lambda t: float(sched.log_snr(t))
print(f"log-SNR from {lam(t_max):.2f} at t=1 to {lam(t_min):.2f} at t_min: a solver crosses {lam(t_min) - lam(t_max):.1f} nats")

# %% [markdown]
# ## 9.1 The semilinear PF-ODE and the exponential integrator
#
# The PF-ODE $\frac{\mathrm d x}{\mathrm dt} = f(t)\,x - \tfrac12 g(t)^2\nabla\log p_t(x)$ is **semilinear**:
# a linear part $f(t)x$ that we know exactly, and a nonlinear part the network gives. With
# $\hat\epsilon = -\sigma_t\nabla\log p_t$ and $f = \alpha'/\alpha$, $g^2 = -2\sigma^2\lambda'$ it reads
# $\frac{\mathrm dx}{\mathrm dt} = \frac{\alpha_t'}{\alpha_t}x + \sigma_t\lambda_t'\,\hat\epsilon(x,t)$, and
# variation of constants in $\lambda$ gives the exact solution (§9.1, Eq. 9.1.6; §9.4, Eq. 9.4.4), from
# $s$ to $t$:
#
# $$x_t = \frac{\alpha_t}{\alpha_s}x_s - \alpha_t\int_{\lambda_s}^{\lambda_t} e^{-\lambda}\,\hat\epsilon(x_\lambda,\lambda)\,\mathrm d\lambda
# \quad\text{(noise form)},\qquad
# x_t = \frac{\sigma_t}{\sigma_s}x_s + \sigma_t\int_{\lambda_s}^{\lambda_t} e^{\lambda}\,\hat x_0(x_\lambda,\lambda)\,\mathrm d\lambda
# \quad\text{(data form)}.$$
#
# Holding $\hat\epsilon$ constant over a step gives the **exponential Euler** step (Eq. 9.1.7),
# $x_t = \frac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^{h}-1)\hat\epsilon(x_s, s)$, $h=\lambda_t-\lambda_s$; plain Euler
# (Eq. 9.1.8) also approximates the linear part. Below: the data-form formula holds along the exact
# path, with the integral by the trapezoid rule over the reference path's $\hat x_0$.

# %%
rec = samplers.Recorder(x0_too=True)
grid_fine = schedules.log_snr_grid(sched, S["ref_steps"])
solvers.dpm_solver_pp_2m(oracle, x1, grid_fine, callback=rec)          # x0_hat along a fine path
lams = sched.log_snr(grid_fine)
x0_path = torch.cat([rec.x0s, oracle.x0(x_exact, t_min)[None]])        # x0_hat at every grid time
a_min, s_min = float(sched.alpha(t_min)), float(sched.sigma(t_min))
weights = torch.exp(lams)[:, None, None] * x0_path
integral = (0.5 * (weights[1:] + weights[:-1]) * lams.diff()[:, None, None]).sum(0)
x_formula = s_min / float(sched.sigma(t_max)) * x1 + s_min * integral
print(f"variation of constants vs the exact solution: {error(x_formula):.1e} "
      f"(trapezoid rule, {S['ref_steps']} nodes; the terms are of size {float(x_exact.norm(dim=1).mean()):.2f})")
assert error(x_formula) < 1e-3

# %% [markdown]
# ## 9.2 DDIM: the exponential Euler method
#
# DDIM (Song, Meng & Ermon 2021) predicts $\hat x_0$ and $\hat\epsilon$ at $(x_s,s)$ and re-noises:
# $x_t = \alpha_t\hat x_0 + \sigma_t\hat\epsilon$ (its $\eta=0$ form). Eq. 9.2.3 writes the same step in the
# four parameterisations; with $h = \lambda_t-\lambda_s$:
#
# | prediction | DDIM step $s\to t$ |
# | --- | --- |
# | $\hat x_0$ | $x_t = \frac{\sigma_t}{\sigma_s}x_s - \alpha_t(e^{-h}-1)\hat x_0$ |
# | $\hat\epsilon$ | $x_t = \frac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^{h}-1)\hat\epsilon$ |
# | score $\hat s$ | $x_t = \frac{\alpha_t}{\alpha_s}x_s + \sigma_t\sigma_s(e^{h}-1)\hat s$ |
# | velocity $\hat v$ | $x_t = \frac{\sigma_t}{\sigma_s}x_s + \big(\alpha_t - \frac{\sigma_t}{\sigma_s}\alpha_s\big)\hat x_0(\hat v)$, $\hat x_0 = \frac{\sigma'_s x_s - \sigma_s\hat v}{\alpha_s\sigma'_s-\sigma_s\alpha'_s}$ |
#
# All four are one step (Prop. 9.2.1: DDIM is exponential Euler). Written out, and checked against
# `solvers.ddim`:

# %%
def ddim_step(x, s, t, form):
    (a_s, s_s, da_s, ds_s), (a_t, s_t, _, _) = (sched.coefficients(u) for u in (s, t))
    a_s, s_s, da_s, ds_s, a_t, s_t = (float(c) for c in (a_s, s_s, da_s, ds_s, a_t, s_t))
    h = math.log(a_t / s_t) - math.log(a_s / s_s)
    if form == "x0":
        return s_t / s_s * x - a_t * math.expm1(-h) * oracle.x0(x, s)
    if form == "eps":
        return a_t / a_s * x - s_t * math.expm1(h) * oracle.eps(x, s)
    if form == "score":
        return a_t / a_s * x + s_t * s_s * math.expm1(h) * oracle.score(x, s)
    x0_from_v = (ds_s * x - s_s * oracle.velocity(x, s)) / (a_s * ds_s - s_s * da_s)
    return s_t / s_s * x + (a_t - s_t / s_s * a_s) * x0_from_v


grid = schedules.log_snr_grid(sched, 10)
for form in ("x0", "eps", "score", "velocity"):
    x = x1
    for i in range(10):
        x = ddim_step(x, float(grid[i]), float(grid[i + 1]), form)
    torch.testing.assert_close(x, solvers.ddim(oracle, x1, grid), atol=1e-9, rtol=0)
print("DDIM in the x0, eps, score and velocity forms == utils.solvers.ddim (10 log-SNR steps)")

# %% [markdown]
# **Observation 9.2.1: when is plain Euler DDIM?** On the linear path $\alpha_t = 1-t$, $\sigma_t=t$ the
# velocity is $\hat v = \hat\epsilon - \hat x_0$ and one Euler step $x + (t-s)\hat v$ is exactly DDIM's
# $(1-t)\hat x_0 + t\hat\epsilon$: the ODE is linear in $t$ once the prediction is frozen. Under VP the same
# plain Euler step in $t$ (on the velocity, or equally on the ε-form of the ODE) is a different method.
# (DDIM on the linear path is also the conditional flow-matching step: it moves along the straight line
# through $\hat x_0$ and $\hat\epsilon$.)

# %%
lin = schedules.LinearPath()
oracle_lin = mix.denoiser(lin)
x_lin = samplers.sample_prior(lin, (S["n_paths"], 2), torch.Generator().manual_seed(0), dtype=torch.float64)
grid_lin = schedules.uniform_grid(10, lin.t_max, lin.t_min)
gap_lin = error(samplers.sample_euler(oracle_lin, x_lin, grid_lin), solvers.ddim(oracle_lin, x_lin, grid_lin))
grid_vp = schedules.uniform_grid(10, t_max, t_min)
x_euler_vp, x_ddim_vp = samplers.sample_euler(oracle, x1, grid_vp), solvers.ddim(oracle, x1, grid_vp)
print(f"linear path, 10 uniform steps: |Euler(v) - DDIM| = {gap_lin:.1e}")
print(f"VP-linear,   10 uniform steps: |Euler(v) - DDIM| = {error(x_euler_vp, x_ddim_vp):.2f};  "
      f"error vs exact: Euler {error(x_euler_vp):.3f}, DDIM {error(x_ddim_vp):.3f}")
assert gap_lin < 1e-12
assert error(x_euler_vp, x_ddim_vp) > 0.05
better = "DDIM" if error(x_ddim_vp) < error(x_euler_vp) else "plain Euler"
print(f"more accurate here under VP: {better}")

# %% [markdown]
# Which of the two first-order methods is more accurate is not settled by the order: both err as
# $O(h)$, with different constants. On this 2D mixture with the *exact* velocity the printed line says
# which wins; exponential Euler's edge is that its linear part is exact, which pays most where the
# linear part is stiff and, as the next sections measure, in the higher-order methods built on it and
# under strong guidance.

# %% [markdown]
# **DDIM with $\eta$.** The general DDIM step adds fresh noise of variance $c^2$ and keeps
# $\sigma_t^2-c^2$ of the predicted noise: $x_t = \alpha_t\hat x_0 + \sqrt{\sigma_t^2-c^2}\,\hat\epsilon + c\,z$ with
# $c = \eta\,\sigma_t\sqrt{1-e^{-2h}}$ (DDIM's Eq. 12 written in $\lambda$). $\eta=1$ is ancestral DDPM
# sampling (the unit tests check it equals `samplers.sample_ancestral` draw for draw); every $\eta$ has the
# right marginals, none but $\eta = 0$ follows the ODE path.

# %%
x_eta = {eta: solvers.ddim(oracle, x1, schedules.log_snr_grid(sched, 50), eta=eta,
                           generator=torch.Generator().manual_seed(1)) for eta in (0.0, 0.5, 1.0)}
for eta, x in x_eta.items():
    print(f"eta={eta}: distance to the exact ODE endpoint {error(x):.3f}")
assert error(x_eta[0.0]) < 0.05 < error(x_eta[1.0])

# %% [markdown]
# ## 9.3–9.4 DEIS and DPM-Solver: higher order in $\lambda$
#
# Everything past DDIM approximates the one integral better.
# **DPM-Solver-$k$** (Lu et al. 2022, §9.4) uses Runge–Kutta stages in $\lambda$ on the noise form; the
# second-order one (Alg. 5, Eq. 9.4.11) takes a DDIM step to the midpoint $\lambda_s + h/2$, evaluates
# $\hat\epsilon$ there and takes the full step with it. **DEIS** (Zhang & Chen 2023, §9.3) is exponential
# Adams–Bashforth: interpolate the last $k$ predictions by a polynomial in $\lambda$ and integrate it exactly
# against the exponential weight; one evaluation per step. Both reduce to DDIM at first order
# (DDIM = DPM-Solver-1 = DEIS order 1, "AB-DEIS-0", Prop. 9.4.2). DPM-Solver-2, written out:

# %%
def dpm_solver_2_inline(model, x, grid):
    for i in range(len(grid) - 1):
        s, t = float(grid[i]), float(grid[i + 1])
        lam_s, lam_t = lam(s), lam(t)
        h = lam_t - lam_s
        r = float(sched.t_from_log_snr(torch.tensor(lam_s + h / 2, dtype=torch.float64)))  # midpoint in lambda
        a_s, a_r, a_t = (float(sched.alpha(u)) for u in (s, r, t))
        s_r, s_t = float(sched.sigma(r)), float(sched.sigma(t))
        u = a_r / a_s * x - s_r * math.expm1(h / 2) * model.eps(x, s)       # DDIM to the midpoint
        x = a_t / a_s * x - s_t * math.expm1(h) * model.eps(u, r)           # full step, midpoint slope
    return x


grid = schedules.log_snr_grid(sched, 8)
torch.testing.assert_close(dpm_solver_2_inline(oracle, x1, grid), solvers.dpm_solver_2(oracle, x1, grid), atol=1e-10, rtol=0)
x_ddim = solvers.ddim(oracle, x1, grid)
gaps = {k: error(f(oracle, x1, grid), x_ddim) for k, f in
        [("DPM-Solver-1", solvers.dpm_solver_1), ("DEIS order 1", lambda m, x, g: solvers.deis(m, x, g, order=1))]}
print("inline DPM-Solver-2 == utils.solvers.dpm_solver_2;  distance to DDIM:",
      ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()))
assert max(gaps.values()) < 1e-10

# %% [markdown]
# **DPM-Solver-2 against classic Heun.** Both are second order and spend two evaluations per step; the
# difference is what is integrated exactly. Heun (EDM's ODE step, `samplers.sample_heun`) approximates the
# whole velocity in $t$; DPM-Solver-2 integrates the linear part exactly and approximates only
# $\hat\epsilon$ in $\lambda$. Beside them, DPM-Solver++(2S): the same midpoint method on $\hat x_0$ (§9.5).
# Same log-SNR grid, same NFE (counted):

# %%
cm = solvers.CountingModel(oracle)
rows = {}
for nfe in (10, 20, 40):
    g = schedules.log_snr_grid(sched, nfe // 2)
    for name, f in (("DPM-Solver-2", solvers.dpm_solver_2), ("Heun in t", samplers.sample_heun),
                    ("DPM-Solver++(2S)", solvers.dpm_solver_pp_2s)):
        rows[name, nfe] = error(f(cm.reset(), x1, g))
        assert cm.nfe == nfe
    print(f"NFE {nfe:3d}:  " + "   ".join(f"{k} {rows[k, nfe]:.2e}" for k in ("DPM-Solver-2", "Heun in t", "DPM-Solver++(2S)")))
for name in ("DPM-Solver-2", "Heun in t", "DPM-Solver++(2S)"):
    assert rows[name, 20] / rows[name, 40] > 2.5                   # order 2: 4x per doubling, asymptotically
assert rows["DPM-Solver++(2S)", 20] < rows["DPM-Solver-2", 20] and rows["DPM-Solver++(2S)", 10] < rows["DPM-Solver-2", 10]

# %% [markdown]
# All three fall by about 3-6x per doubling of the NFE (4x is order 2's asymptotic rate; the fitted
# orders of §9.6 are read at larger NFE). On this problem the exact linear part does
# not by itself make the noise form better than Heun: near the data $\hat\epsilon = (x-\alpha\hat x_0)/\sigma$
# varies fast in $\lambda$ while $\hat x_0$ has settled, so the method that approximates $\hat x_0$ (++2S) has
# the smaller error constant. The exponential form pays off in the data-prediction solvers, and under
# guidance (next).
#
# ## 9.5 DPM-Solver++: the data-prediction form, and why
#
# DPM-Solver++ (Lu et al. 2022b) runs the same constructions on the **data form**, integrating against
# $e^{\lambda}\hat x_0$. (2S) is the single-step midpoint method; **(2M)** (Alg. 7) is multistep: with
# $r_i = h_{i-1}/h_i$,
# $D_i = (1+\tfrac1{2r_i})\hat x_0^{(i)} - \tfrac1{2r_i}\hat x_0^{(i-1)}$ and $x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}x_i - \alpha_{i+1}(e^{-h_i}-1)D_i$
# (AB2 weights 3/2, −1/2 at equal steps). Written out:

# %%
def dpm_solver_pp_2m_inline(model, x, grid):
    x0_prev = h_prev = None
    for i in range(len(grid) - 1):
        s, t = float(grid[i]), float(grid[i + 1])
        h = lam(t) - lam(s)
        x0 = model.x0(x, s)
        D = x0 if x0_prev is None else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
        x = float(sched.sigma(t) / sched.sigma(s)) * x - float(sched.alpha(t)) * math.expm1(-h) * D
        x0_prev, h_prev = x0, h
    return x


grid = schedules.edm_grid(sched, 12)                     # unequal steps in lambda: r_i != 1
torch.testing.assert_close(dpm_solver_pp_2m_inline(oracle, x1, grid), solvers.dpm_solver_pp_2m(oracle, x1, grid),
                           atol=1e-10, rtol=0)
print("inline DPM-Solver++(2M) == utils.solvers.dpm_solver_pp_2m")

# %% [markdown]
# **Why the data form.** With classifier-free guidance at a large weight $w$ (`utils.guidance`, Ch. 8
# convention: $w=1$ conditional) the guided prediction $\hat x_0 = w\,\hat x_0(c) + (1-w)\,\hat x_0(\varnothing)$
# leaves the data's range. The noise form multiplies $\hat\epsilon$ (and its differences between stages) by
# $\sigma_t(e^{h}-1)$, which grows without bound in the step $h$; the data form multiplies $\hat x_0$ by
# $\alpha_t(1-e^{-h})\le\alpha_t$, a convex combination with the current state. We measure it on the class-conditional oracle of the two-moons mixture (labels 0/1,
# `gmm.labels`), against the exact guided ODE solution, half the paths per class.

# %%
moons = data.toy_gmm("moons_gmm")
print("moons_gmm component labels:", moons.labels.tolist())
moons_oracle = moons.denoiser(sched)
xg = samplers.sample_prior(sched, (S["guide_paths"], 2), torch.Generator().manual_seed(2), dtype=torch.float64)
yg = torch.arange(S["guide_paths"]) % moons.num_classes
noise_form = {"DPM-Solver-2": solvers.dpm_solver_2, "DPM-Solver-3": solvers.dpm_solver_3}
data_form = {"DPM-Solver++(2S)": solvers.dpm_solver_pp_2s, "DPM-Solver++(2M)": solvers.dpm_solver_pp_2m}
guided = {}
for w in tqdm(S["weights"], desc="guidance weights"):
    cfg = ClassifierFreeGuidance(moons_oracle, w)
    ref = samplers.sample_rk4(cfg, xg, schedules.log_snr_grid(sched, S["guide_ref_steps"]), y=yg)
    for name, f in {**noise_form, **data_form}.items():
        for nfe in (12, 24):
            guided[w, name, nfe] = error(f(cfg, xg, schedules.log_snr_grid(sched, solvers.steps_for_nfe(
                f.__name__, nfe)), y=yg), ref)
for w in S["weights"]:
    print(f"w={w:4.1f}  " + "  ".join(f"{name} {guided[w, name, 12]:.2e}/{guided[w, name, 24]:.2e}"
                                       for name in {**noise_form, **data_form}) + "   (error at 12 / 24 NFE)")
w_big = max(S["weights"])
worst_data = max(guided[w_big, n, 12] for n in data_form)
best_noise = min(guided[w_big, n, 12] for n in noise_form)
print(f"w={w_big:g}, 12 NFE: the noise form errs {best_noise / worst_data:.0f}x more than the data form")
assert best_noise > 5 * worst_data and worst_data < 0.5
config.record(nb09_guided_noise_over_data_error=float(best_noise / worst_data))

# %% [markdown]
# At $w=1$ the four errors are within a small factor of each other; at $w=8$ the noise-form solvers land
# far from the exact guided endpoint at 12 NFE (errors of the order of the data's size), while
# DPM-Solver++ stays within a few tenths. At 24 NFE the noise form recovers: the instability is a
# large-step one.
# This is with the *exact* guided model: the instability is the solver's, not the network's.
#
# ## 9.6 Error against NFE: orders, grids, and the NFE to a given accuracy
#
# Now every solver on four time grids: uniform in $t$, uniform in $\lambda$ (DPM-Solver's choice),
# EDM's $\rho=7$ grid in the noise level $\sigma/\alpha$, and a grid **fitted to the model**: a pilot solve
# records where $\hat x_0$ changes fast in $\lambda$, and the steps are spread so that each step's
# local error ($\propto h^{p+1}|\mathrm d^p\hat x_0/\mathrm d\lambda^p|$) is about equal
# (`solvers.local_error_density`, `solvers.equidistributed_grid`; the pilot's evaluations are paid once
# per model, like Align-Your-Steps' optimized schedules). The NFE is counted by the wrapper
# `solvers.CountingModel`, not assumed.

# %%
x_pilot = samplers.sample_prior(sched, (S["n_pilot"], 2), torch.Generator().manual_seed(5), dtype=torch.float64)
lam_fine, density = solvers.local_error_density(oracle, x_pilot, order=3)
GRIDS = {"uniform t": lambda n: schedules.uniform_grid(n, t_max, t_min),
         "uniform log-SNR": lambda n: schedules.log_snr_grid(sched, n),
         "EDM rho=7": lambda n: schedules.edm_grid(sched, n),
         "fitted": lambda n: solvers.equidistributed_grid(sched, lam_fine, density, n)}
SOLVE = {"DDIM": (solvers.ddim, {}, 1), "DPM-Solver-2": (solvers.dpm_solver_2, {}, 2),
         "DPM-Solver-3": (solvers.dpm_solver_3, {}, 3), "DPM-Solver++(2S)": (solvers.dpm_solver_pp_2s, {}, 2),
         "DPM-Solver++(2M)": (solvers.dpm_solver_pp_2m, {}, 2), "DEIS order 3": (solvers.deis, {"order": 3}, 3),
         "EDM Heun": (solvers.edm_heun, {}, 2)}
results = {}                                                 # (solver, grid) -> list of (nfe, error)
for name, (f, kw, _) in tqdm(SOLVE.items(), desc="solvers"):
    for gname, make in GRIDS.items():
        pts = {}
        for nfe in S["nfes"]:
            n = solvers.steps_for_nfe(f.__name__, nfe)
            x = f(cm.reset(), x1, make(n), **kw)
            pts[cm.nfe] = error(x)
        results[name, gname] = sorted(pts.items())

fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), sharey=True)
for ax, gname in zip(axes, GRIDS):
    for c, name in enumerate(SOLVE):
        nf, er = zip(*results[name, gname])
        ax.loglog(nf, er, "o-", color=f"C{c}", ms=3, label=name)
    ax.axhline(1e-2, color="k", ls=":", lw=1)
    ax.axhline(1e-3, color="k", ls=":", lw=1)
    ax.set(title=gname, xlabel="NFE", ylim=(1e-5, 30))
axes[0].set_ylabel("mean distance to the exact solution")
axes[0].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# **Fitted orders.** The orders are read in the asymptotic regime, at more NFE than the plot: on the
# uniform-$\lambda$ grid at NFE `S["order_nfes"]`, a least-squares slope of log error against log NFE.
# Theory (Table 9.1): 1 for DDIM, 2 for Heun, DPM-Solver-2, ++(2S) and ++(2M), 3 for DPM-Solver-3 and
# DEIS order 3.

# %%
def fitted_order(points):
    X = torch.tensor([[math.log(n), 1.0] for n, _ in points], dtype=torch.float64)
    Y = torch.tensor([[math.log(e)] for _, e in points], dtype=torch.float64)
    return -float(torch.linalg.lstsq(X, Y).solution[0, 0])


orders, order_points = {}, {}
for name, (f, kw, _) in tqdm(SOLVE.items(), desc="orders"):
    pts = []
    for nfe in S["order_nfes"]:
        x = f(cm.reset(), x1, schedules.log_snr_grid(sched, solvers.steps_for_nfe(f.__name__, nfe)), **kw)
        pts.append((cm.nfe, error(x)))
    orders[name], order_points[name] = fitted_order(pts), pts
table_91 = [("DDIM", "(exponential) Euler"), ("DEIS order 3", "exponential Adams-Bashforth 3"),
            ("DPM-Solver-2", "exponential RK2 (midpoint in lambda)"), ("DPM-Solver-3", "exponential RK3"),
            ("DPM-Solver++(2S)", "exponential RK2, data form"), ("DPM-Solver++(2M)", "exponential AB2, data form"),
            ("EDM Heun", "Heun (trapezoid) in sigma/alpha")]
print(f"{'solver':18s} {'numerical analogue (Table 9.1)':40s} theory  fitted   errors at NFE {S['order_nfes']}")
for name, analogue in table_91:
    print(f"{name:18s} {analogue:40s} {SOLVE[name][2]:6d}  {orders[name]:6.2f}   "
          + ", ".join(f"{e:.1e}" for _, e in order_points[name]))
for name in SOLVE:
    assert abs(orders[name] - SOLVE[name][2]) < 0.35, (name, orders[name])
config.record(**{"nb09_order_" + k.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("+", "p"): v
                 for k, v in orders.items()})

# %% [markdown]
# **Table 9.2** (DEIS ≡ DPM-Solver++(2M) for the same anchors): both interpolate $\hat x_0$ linearly through
# the last two evaluations, in Lagrange form (DEIS) or Newton form (++2M). With the *exact* integral of the
# Newton slope term, (2M) is DEIS order 2 to rounding; Alg. 7's factor $h/2$ is a second-order
# approximation of it, and a different solver (here, the printed errors say, not a worse one).

# %%
g = schedules.edm_grid(sched, 15)
x_deis2 = solvers.deis(oracle, x1, g, order=2)
x_2m_exact = solvers.dpm_solver_pp_2m(oracle, x1, g, exact_phi=True)
x_2m = solvers.dpm_solver_pp_2m(oracle, x1, g)
print(f"|DEIS-2 - ++(2M), exact phi| = {error(x_deis2, x_2m_exact):.1e}   "
      f"|DEIS-2 - ++(2M), Alg. 7| = {error(x_deis2, x_2m):.1e}; errors vs exact {error(x_deis2):.2e} / {error(x_2m):.2e}")
assert error(x_deis2, x_2m_exact) < 1e-10 < 1e-4 < error(x_deis2, x_2m)

# %% [markdown]
# **The NFE to a given accuracy.** For each solver and grid, the smallest measured NFE whose error is
# below $10^{-2}$ and below $10^{-3}$ (a dash: not reached within the largest NFE tried).

# %%
def nfe_to(points, tol):
    hits = [n for n, e in points if e < tol]
    return min(hits) if hits else None


fmt = lambda v: "-" if v is None else str(v)
print(f"{'solver':18s}" + "".join(f"{g:>20s}" for g in GRIDS) + "   (NFE to 1e-2 / 1e-3)")
for name in SOLVE:
    print(f"{name:18s}" + "".join(f"{fmt(nfe_to(results[name, g], 1e-2)) + ' / ' + fmt(nfe_to(results[name, g], 1e-3)):>20s}"
                                  for g in GRIDS))
best = min(((nfe_to(results[k], 1e-2) or 10 ** 9, k) for k in results))
best_at_15 = min((e, k) for k in results for n, e in results[k] if n <= 15)
print(f"fewest NFE to 1e-2: {best[1][0]} on the {best[1][1]} grid, {best[0]} NFE (among the NFE tried)")
print(f"best error at <= 15 NFE: {best_at_15[0]:.2e} ({best_at_15[1][0]}, {best_at_15[1][1]} grid)")
config.record(nb09_best_nfe_to_1e2=int(best[0]), nb09_best_solver=f"{best[1][0]} / {best[1][1]}",
              nb09_best_error_at_15nfe=float(best_at_15[0]))
assert best[0] <= 30                                   # the package's RK4/Heun needed ~30 (issue 15)

# %% [markdown]
# ### A grid optimized for the solver
#
# The fitted grid used a model of the local error. With the exact solution at hand one can do better:
# choose the $N$ log-SNR steps that minimize the error itself on a small **pilot** batch of paths
# (`solvers.optimized_grid`: Nelder–Mead over the softmax-parameterised step sizes, from the fitted grid;
# in the spirit of Xue et al. 2024 and Align-Your-Steps, Sabour et al. 2024). It is done once per model
# and NFE, offline, and measured below on the chapter's paths, which the optimization never saw.

# %%
x_pilot_ref = samplers.sample_rk4(oracle, x_pilot, schedules.log_snr_grid(sched, S["ref_steps"]))
optimized = {}
for name in tqdm(("DPM-Solver++(2M)", "DPM-Solver-3"), desc="optimizing grids"):
    f, kw, _ = SOLVE[name]
    for nfe in S["opt_nfes"]:
        n = solvers.steps_for_nfe(f.__name__, nfe)
        g_opt = solvers.optimized_grid(f, oracle, x_pilot, x_pilot_ref, GRIDS["fitted"](n), max_iter=S["opt_iter"])
        optimized[name, nfe] = (error(f(cm.reset(), x1, g_opt, **kw)), cm.nfe, g_opt)
        print(f"{name:18s} {cm.nfe:3d} NFE: fitted grid {error(f(oracle, x1, GRIDS['fitted'](n), **kw)):.2e}"
              f"  ->  optimized grid {optimized[name, nfe][0]:.2e}  (held-out paths)")
best_opt = min((e, k) for k, (e, nfe_used, _) in optimized.items() if nfe_used <= 15)
hits = sorted((nfe_used, k[0], e) for k, (e, nfe_used, _) in optimized.items() if e < 1e-2)
print(f"best at <= 15 NFE: {best_opt[1][0]} on its optimized grid, {optimized[best_opt[1]][1]} NFE, error {best_opt[0]:.2e}")
print("fewest NFE to 1e-2 on an optimized grid: " + (f"{hits[0][1]}, {hits[0][0]} NFE (error {hits[0][2]:.2e})" if hits else "none tried")
      + f"  -> the target 1e-2 in <= 15 NFE is {'met' if hits and hits[0][0] <= 15 else 'NOT met'}")
config.record(nb09_optimized_best_error_at_15nfe=float(best_opt[0]), nb09_optimized_best_solver=best_opt[1][0],
              nb09_target_1e2_at_15nfe_met=bool(hits and hits[0][0] <= 15))
assert best_opt[0] < 0.7 * best_at_15[0]             # optimizing the grid beats every fixed grid at <= 15 NFE

# %% [markdown]
# **Reading the tables.** Where the error lives decides which grid wins. The local-error density fitted
# above peaks where the noise level crosses the distance between modes ($\lambda\approx 0$): there the
# posterior mean $\hat x_0$ switches from "the mean of all modes" to "one mode", and every solver's
# Taylor expansion in $\lambda$ is poorest. Uniform $t$ puts most of its steps near the data, where
# $\hat x_0$ barely moves; uniform $\lambda$ is fair everywhere; EDM's $\rho=7$ crowds the small noise levels;
# the fitted grid puts the steps where they pay, and the optimized grid also accounts for how the
# solver's errors propagate and cancel. At the 10–20 NFE that matter in practice the errors are *not yet*
# asymptotic for this sharp mixture (std 0.15 modes): the higher orders pay off only below about
# $10^{-2}$, and at few NFE the grid matters more than the order. Issue 15's target ($10^{-2}$ in at most
# 15 NFE, where the package's RK4 or Heun needed about 30) is judged by the lines printed above, for the
# fixed grids and for the optimized ones.

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(lam_fine, density, color="C0")
for gname, c in (("uniform log-SNR", "C1"), ("EDM rho=7", "C2"), ("fitted", "C3")):
    ax.plot(sched.log_snr(GRIDS[gname](12)), [0.05 * (1 + list(GRIDS).index(gname))] * 13, "|", ms=12, color=c,
            label=f"{gname}, 12 steps")
g_opt = optimized["DPM-Solver++(2M)", max(S["opt_nfes"])][2]
ax.plot(sched.log_snr(g_opt), [0.25] * len(g_opt), "|", ms=12, color="C4", label=f"optimized for ++(2M), {len(g_opt) - 1} steps")
ax.set(xlabel=r"log-SNR $\lambda$", ylabel="local error density", title="where a step errs, and where the grids step")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ### The last step: to $t_{\min}$ or to $t=0$
#
# The solvers above stop at $t_{\min}=10^{-3}$ where $\lambda$ is finite. Going on to $t=0$ is one more
# evaluation: with $\sigma=0$ the step in $\lambda$ is infinite, and every solver here takes the limit of its
# first-order step, $x_0 = \alpha_0\hat x_0(x_{t_{\min}})$ (DDIM's last step, EDM's final Euler step). Its
# cost in accuracy, against the exact flow continued to $t=0$:

# %%
x_exact_0 = samplers.sample_rk4(oracle, x_exact, schedules.uniform_grid(64, t_min, 0.0))
for name in ("DDIM", "DPM-Solver++(2M)"):
    f = SOLVE[name][0]
    g = schedules.log_snr_grid(sched, 20)
    x_stop = f(oracle, x1, g)
    x_zero = f(cm.reset(), x1, torch.cat([g, torch.zeros(1, dtype=torch.float64)]))
    print(f"{name:18s} 20 steps to t_min, then: stop {error(x_stop, x_exact_0):.2e}, "
          f"denoise to t=0 ({cm.nfe} NFE) {error(x_zero, x_exact_0):.2e}  vs exact at t=0")
print(f"the exact flow itself moves {error(x_exact, x_exact_0):.1e} between t_min and 0")

# %% [markdown]
# ## The same solvers on a trained model
#
# With a network the exact ODE is the *network's*, and the error that matters is the distance of the
# samples to the data. Train a small ε-prediction MLP on the eight Gaussians, sample with four solvers at
# a few NFE (uniform-$\lambda$ grid, the last step denoising to $t=0$), and compare the sliced Wasserstein
# distance to the data with the data-vs-data noise floor (ratio 1 = indistinguishable at this sample size).

# %%
data_fn = lambda n, g: mix.sample(n, g)[0]
torch.manual_seed(0)
net, hist = training.train(nets.MLP(2, S["hidden"], 3), losses.DiffusionLoss(sched, "eps", t_range=(t_min, 1.0)),
                           lambda n, g: data_fn(n, g).float(), S["train_steps"], batch_size=S["batch"], lr=2e-3,
                           ema_decay=0.995, seed=0, desc="eps model")
model = targets.Denoiser(net, "eps", sched)
xs = samplers.sample_prior(sched, (S["n_samples"], 2), torch.Generator().manual_seed(7))
ratios = {}
for name in ("DDIM", "DPM-Solver-2", "DPM-Solver++(2M)", "EDM Heun"):
    f, kw, _ = SOLVE[name]
    for nfe in S["model_nfes"]:
        n = max(solvers.steps_for_nfe(f.__name__, nfe - 1), 1)
        g = torch.cat([schedules.log_snr_grid(sched, n), torch.zeros(1, dtype=torch.float64)])
        ratios[name, nfe] = metrics.compare_to_floor(f(model, xs, g, **kw).double(), data_fn).ratio
print(f"{'solver':18s}" + "".join(f"{'NFE ~' + str(n):>10s}" for n in S["model_nfes"]) + "   (SW ratio to the noise floor)")
for name in ("DDIM", "DPM-Solver-2", "DPM-Solver++(2M)", "EDM Heun"):
    print(f"{name:18s}" + "".join(f"{ratios[name, n]:10.2f}" for n in S["model_nfes"]))
nfe_hi = max(S["model_nfes"])
at_hi = [ratios[name, nfe_hi] for name in ("DDIM", "DPM-Solver-2", "DPM-Solver++(2M)", "EDM Heun")]
print(f"at ~{nfe_hi} NFE every solver is within {max(at_hi) / min(at_hi) - 1:.0%} of the others: the model's own error dominates")
assert max(at_hi) < 1.6 and max(at_hi) < 1.25 * min(at_hi)
config.record(nb09_model_pp2m_sw_ratio=float(ratios["DPM-Solver++(2M)", nfe_hi]),
              nb09_model_ddim_sw_ratio=float(ratios["DDIM", nfe_hi]))

# %% [markdown]
# At ~20 NFE the four solvers give the same sample quality: the remaining distance is the network's, not
# the solver's, so more NFE buys nothing. At 5 NFE the order of the ranking is not the order of the
# methods: a high-order single-step method spends its evaluations on two or three long steps, and
# the first-order DDIM with five short ones can be better; this is why few-step sampling needs more
# than solvers (Ch. 10-11).
#
# ## 9.7 ParaDiGMS: parallel sampling by Picard iteration
#
# A sequential solver needs $N$ model calls one after another. ParaDiGMS (Shih et al. 2023, §9.7) sees
# the whole discrete path as the fixed point of $x_k = x_0 + \sum_{j<k}\Delta_j(x_j)$ (Eq. 9.7.3, here with
# DDIM increments $\Delta_j(x) = \text{DDIM}(x, t_j\to t_{j+1}) - x$) and iterates it (Picard, Eq. 9.7.2): each
# round evaluates the model at all $p$ points of a sliding window **in one batched call**, updates them by
# the cumulative sum, and slides past the points that stopped moving (change below `tol` $\times\sigma_t$).
# Round $k$ makes at least the $k$-th point exact, so the rounds never exceed $N$; on a parallel device
# a round costs about one evaluation.

# %%
xp = x1[:S["para_paths"]]
N = S["para_steps"]
g = schedules.log_snr_grid(sched, N)
x_seq = solvers.ddim(oracle, xp, g)
para = {}
for p in S["windows"]:
    x_par, rounds = solvers.paradigms(cm.reset(), xp, g, window=p, tol=1e-3)
    para[p] = (rounds, cm.points / xp.shape[0], error(x_par, x_seq))
    print(f"window {p:3d}: {rounds:3d} sequential rounds (DDIM: {N}), {para[p][1]:5.0f} evaluations per path in all, "
          f"distance to sequential DDIM {para[p][2]:.1e}")
p_big = max(S["windows"])
assert para[1][0] == N and para[1][2] < 1e-10
assert para[p_big][0] < N / 2 and para[p_big][2] < 1e-2
config.record(nb09_paradigms_rounds=int(para[p_big][0]), nb09_paradigms_steps=int(N))

# %% [markdown]
# The result equals sequential DDIM within the tolerance, in a fraction of the sequential rounds; what it
# spends instead is total evaluations (window × rounds), which a GPU runs side by side. The saving is
# largest with a window as long as the path: every Picard round then improves all the points at once.
#
# ## Widget: three solvers beside the exact paths
#
# Move the NFE: DDIM, DPM-Solver-2 and DPM-Solver++(2M) (uniform-$\lambda$ grid) from the same 40 starts,
# against the exact PF-ODE paths (grey). The title gives each solver's error.

# %%
x_w = x1[:40]
rec_exact = samplers.Recorder()
samplers.sample_rk4(oracle, x_w, schedules.log_snr_grid(sched, 100), callback=rec_exact)


def draw(nfe=10):
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, (name, c) in zip(axes, (("DDIM", "C0"), ("DPM-Solver-2", "C1"), ("DPM-Solver++(2M)", "C4"))):
        f = SOLVE[name][0]
        r = samplers.Recorder()
        x_end = f(oracle, x_w, schedules.log_snr_grid(sched, solvers.steps_for_nfe(f.__name__, int(nfe))), callback=r)
        plotting.plot_trajectories(rec_exact.xs, ax=ax, n_paths=40, color="0.6", alpha=0.6, lim=3.2)
        plotting.plot_trajectories(r.xs, ax=ax, n_paths=40, color=c, alpha=0.8, lim=3.2)
        ax.plot(*rec_exact.xs[-1].T, "k.", ms=4)
        ax.set_title(f"{name}, {int(nfe)} NFE: error {error(x_end, rec_exact.xs[-1].double()):.3f}")
    fig.tight_layout()
    return fig


widgets.explore(draw, {"nfe": (4, 40, 2, 10)})

# %% [markdown]
# ## Images: the solvers on a Fashion-MNIST U-Net
#
# The published comparisons of these solvers are FID against NFE on image models. Here is that
# experiment in miniature, on the shipped class-conditional U-Net `fmnist_unet_cfg.pt` (ε-prediction,
# VP-linear, the schedule of this chapter; sampled at $\omega=1$, the conditional model, the same number
# of samples per class). Two measurements, because on images there is no exact solution:
#
# * **classifier-FID** of the samples against real test images, in the features of the project's
#   Fashion-MNIST classifier (`utils.fid`), read against its floor (real training vs real test images
#   at the same sample size: FID is biased upwards at small $n$);
# * the **pathwise error**: the root-mean-square pixel distance to a fine solution of the *network's*
#   PF-ODE from the same starting noise (per-sample seeds, `fid.per_sample_noise`). This is the error the
#   solver adds; FID mixes it with the network's own error, which no solver removes.
#
# In the `gpu` profile the U-Net is trained from scratch by the command in
# `data/checkpoints/MANIFEST.json`; in `test` and `cpu` the shipped weights are loaded (SHA-256 checked).
# Without the checkpoints or Fashion-MNIST (`data/README.md`) the section is skipped.

# %%
from utils import fid
from utils.train import image_model, missing_for_images
IMG = config.pick({
    "test": dict(n_per_class=10, nfes=(4, 8, 16), n_path=16, ref_steps=100, show=8),
    "cpu": dict(n_per_class=30, nfes=(4, 6, 8, 12, 16, 24), n_path=32, ref_steps=200, show=8),
    "gpu": dict(n_per_class=500, nfes=(4, 6, 8, 12, 16, 24, 32, 48), n_path=200, ref_steps=500, show=8),
})
need = ["fmnist_classifier.pt"] + ([] if profile == "gpu" else ["fmnist_unet_cfg.pt"])
missing = missing_for_images(need)
IMAGES = not missing
if IMAGES:
    unet = image_model("fmnist_unet_cfg.pt", train=profile == "gpu", device=device)
    fid_clf = image_model("fmnist_classifier.pt", device=device)
    x_train = data.load_image_dataset("fashion-mnist", "train")[0].to(device)
    x_test = data.load_image_dataset("fashion-mnist", "test")[0].to(device)
    print(f"U-Net: {sum(p.numel() for p in unet.net.parameters()):,} parameters, {unet.meta['steps']} steps "
          f"({unet.meta['hardware']})")
else:
    print(f"skipping the image section: {', '.join(missing)} not found (see data/README.md)")

# %% [markdown]
# Three solvers of this chapter at a few NFE, on the uniform-$\lambda$ grid with a last denoising step to $t=0$
# (as in the 2D comparison above): DDIM (first order), DPM-Solver-2 (second order, two evaluations per step)
# and DPM-Solver++(2M) (second order, one evaluation per step, reusing the last one). The NFE is counted by
# `solvers.CountingModel`, not assumed. The model's $\hat x_0$ is clipped to the data range at every evaluation
# (`fid.ClippedX0`, as in Ho et al.'s sampler; Ch. 8's image section shows why a small ε-network needs it), so the ODE solved is
# that of the clipped model.

# %%
IMG_SOLVERS = {"DDIM": solvers.ddim, "DPM-Solver-2": solvers.dpm_solver_2, "DPM-Solver++(2M)": solvers.dpm_solver_pp_2m}


def image_grid_t(n_steps):
    """n_steps steps uniform in log-SNR from t=1 to t_min, then the denoising step to t=0."""
    return torch.cat([schedules.log_snr_grid(unet.schedule, n_steps), torch.zeros(1, dtype=torch.float64)])


if IMAGES:
    n_img = 10 * IMG["n_per_class"]
    y_img = torch.arange(10).repeat(IMG["n_per_class"])          # classes 0..9, 0..9, ...: any prefix is balanced
    g_img = torch.Generator().manual_seed(0)
    x_ref = x_test[torch.randperm(x_test.shape[0], generator=g_img)[:n_img]]
    floor_img = sum(fid.fid_floor(x_train, x_test, fid_clf, n_img, g_img) for _ in range(3)) / 3
    teacher = fid.ClippedX0(unet)                                  # x0 clipped to [-1, 1] (Ch. 8's image section)
    x_fine = fid.sample_images(teacher, IMG["n_path"], (1, 28, 28), image_grid_t(IMG["ref_steps"]), y=y_img[:IMG["n_path"]],
                               seed=1, sampler=solvers.dpm_solver_pp_2m, device=device)
    counter = solvers.CountingModel(teacher)
    img_runs = {}                                                  # (solver, nfe) -> dict
    for name, f in tqdm(IMG_SOLVERS.items(), desc="solvers"):
        for nfe in IMG["nfes"]:
            steps = solvers.steps_for_nfe(f.__name__, nfe - 1)     # the last evaluation is the denoising step
            x_s = fid.sample_images(counter.reset(), n_img, (1, 28, 28), image_grid_t(steps), y=y_img, seed=1,
                                    sampler=f, device=device)
            img_runs[name, nfe] = dict(x=x_s, nfe=counter.points / n_img, fid=fid.classifier_fid(x_s, x_ref, fid_clf),
                                       path=float((x_s[:IMG["n_path"]] - x_fine).pow(2).mean().sqrt()))
    print(f"n = {n_img} samples; FID floor (real vs real) {floor_img:.1f}; pathwise error: RMS pixel distance "
          f"(pixels in [-1, 1]) to {IMG['ref_steps']}-step DPM-Solver++(2M) on {IMG['n_path']} paths")
    print(f"{'solver':18s}" + "".join(f"{'NFE ' + str(n):>17s}" for n in IMG["nfes"]) + "    (FID / floor, pathwise error)")
    for name in IMG_SOLVERS:
        print(f"{name:18s}" + "".join(f"{img_runs[name, n]['fid'] / floor_img:9.2f} {img_runs[name, n]['path']:7.3f}"
                                      for n in IMG["nfes"]))

# %%
if IMAGES:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name in IMG_SOLVERS:
        runs = [img_runs[name, n] for n in IMG["nfes"]]
        a1.plot([r["nfe"] for r in runs], [r["fid"] / floor_img for r in runs], "o-", label=name)
        a2.loglog([r["nfe"] for r in runs], [r["path"] for r in runs], "o-", label=name)
    a1.axhline(1.0, color="gray", ls=":", label="floor (real vs real)")
    a1.set(xscale="log", yscale="log", xlabel="NFE", ylabel="classifier-FID / floor", title="sample quality")
    a2.set(xlabel="NFE", ylabel="RMS distance to the fine ODE solution", title="solver error")
    for ax in (a1, a2):
        ax.set_xticks(IMG["nfes"], [str(n) for n in IMG["nfes"]])
        ax.minorticks_off()
    a1.legend(fontsize=8)
    plt.tight_layout()
    plt.show()
    fig, axs = plt.subplots(1, len(IMG_SOLVERS), figsize=(4.2 * len(IMG_SOLVERS), 0.55 * (len(IMG["nfes"]) + 1) + 0.8))
    for ax, name in zip(axs, IMG_SOLVERS):
        rows = torch.cat([img_runs[name, n]["x"][:IMG["show"]] for n in IMG["nfes"]] + [x_fine[:IMG["show"]]])
        ax.imshow(data.image_grid(rows, nrow=IMG["show"]), cmap="gray")
        ax.set_yticks([29 * k + 14 for k in range(len(IMG["nfes"]) + 1)],
                      [f"NFE {img_runs[name, n]['nfe']:.0f}" for n in IMG["nfes"]] + ["fine ODE"], fontsize=8)
        ax.set_xticks([])
        ax.set_title(name)
    fig.suptitle("the same starting noise and labels, solved with more and more evaluations")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# What the 2D experiments predicted holds on images. Every solver's samples improve with NFE, and the
# pathwise error falls fastest for the second-order DPM-Solver++(2M), which spends one evaluation per step.
# DPM-Solver-2 pays two evaluations per step: at 4 NFE it has one step across the whole log-SNR range, and what
# comes out is dominated by its evaluations at high noise, where an ε-network's $\hat x_0$ is its error divided by
# $\alpha_t$ (clipped: saturated pixels); it needs about 15 NFE to catch up. At the most NFE shown the FID of the
# solvers draws together: what remains is the network's error, not the solver's (Ch. 10-11 take it from there:
# few-step generation needs more than a better solver).

# %%
if IMAGES:
    lo, hi = min(IMG["nfes"]), max(IMG["nfes"])
    for name in IMG_SOLVERS:
        assert img_runs[name, hi]["fid"] < 0.8 * img_runs[name, lo]["fid"], name        # more NFE, better samples
        assert img_runs[name, hi]["path"] < 0.5 * img_runs[name, lo]["path"], name      # and closer to the ODE's
    assert img_runs["DPM-Solver++(2M)", hi]["path"] < 0.7 * img_runs["DDIM", hi]["path"]  # order pays at equal NFE
    best = min(img_runs[name, hi]["fid"] for name in IMG_SOLVERS)
    assert best < 4.0 * floor_img                            # and the samples are near real data
    config.record(nb09_img_fid_over_floor_pp2m_lo=img_runs["DPM-Solver++(2M)", lo]["fid"] / floor_img,
                  nb09_img_fid_over_floor_pp2m_hi=img_runs["DPM-Solver++(2M)", hi]["fid"] / floor_img,
                  nb09_img_path_error_ddim_hi=img_runs["DDIM", hi]["path"],
                  nb09_img_path_error_pp2m_hi=img_runs["DPM-Solver++(2M)", hi]["path"])

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (DPM-Solver-2 from a Taylor expansion).** Expand $\hat\epsilon(x_\lambda,\lambda)$ to first order
# around $\lambda_s$ in the noise-form integral and integrate exactly: show that the step error is
# $O(h^3)$ when the derivative is estimated at the midpoint (Eq. 9.4.11). Then check it numerically: start
# from the exact state at $s_0 = 0.5$ (`samplers.sample_rk4` from `x1` on 100 log-SNR steps, `schedules.log_snr_grid(sched, 100, t_max, s0)`),
# take **one** DPM-Solver-2 step of log-SNR length $h$ for each $h$ in `[0.4, 0.2, 0.1, 0.05]` (to the time
# `sched.t_from_log_snr` of $\lambda_{s_0}+h$), and compare it with the exact state there (RK4 on 20 log-SNR
# steps from $s_0$). Store the four mean distances (`error(x, exact)`) in the list `local_errors`, and the slope
# of $\log$ error against $\log h$ between the first and the last $h$ in `slope_local`.

# %% tags=["solution"]
# int_0^h e^{-u}(eps + u eps') du * alpha_t e^{...}: with phi_1 = (e^h - 1)/h the first-order term is
# sigma_t (e^h - 1 - h) eps'; the midpoint value eps(lambda_s + h/2) = eps + h/2 eps' + O(h^2) reproduces it
# up to O(h^3) because (e^h - 1)/2 h and (e^h - 1 - h) agree to second order.
s0 = 0.5
x_s = samplers.sample_rk4(oracle, x1, schedules.log_snr_grid(sched, 100, t_max, s0))   # the exact state at s0
hs, local_errors = [0.4, 0.2, 0.1, 0.05], []
for h in hs:
    t_next = float(sched.t_from_log_snr(torch.tensor(lam(s0) + h, dtype=torch.float64)))
    exact = samplers.sample_rk4(oracle, x_s, schedules.log_snr_grid(sched, 20, s0, t_next))
    local_errors.append(error(solvers.dpm_solver_2(oracle, x_s, torch.tensor([s0, t_next], dtype=torch.float64)), exact))
slope_local = math.log(local_errors[0] / local_errors[-1]) / math.log(hs[0] / hs[-1])
print("local errors:", ", ".join(f"{e:.1e}" for e in local_errors), f"-> slope {slope_local:.2f} (theory 3)")

# %% tags=["check"]
assert len(local_errors) == 4, (f"local_errors holds {len(local_errors)} numbers; expected one per h in "
                                "[0.4, 0.2, 0.1, 0.05]")
# one of the four, recomputed from the oracle: the step of length h = 0.1 from the exact state at 0.5
x_05 = samplers.sample_rk4(oracle, x1, schedules.log_snr_grid(sched, 100, t_max, 0.5))
t_01 = float(sched.t_from_log_snr(torch.tensor(lam(0.5) + 0.1, dtype=torch.float64)))
one_step = solvers.dpm_solver_2(oracle, x_05, torch.tensor([0.5, t_01], dtype=torch.float64))
exercises.check_close("local_errors[2]", local_errors[2],
                      error(one_step, samplers.sample_rk4(oracle, x_05, schedules.log_snr_grid(sched, 20, 0.5, t_01))),
                      rtol=0.05, hint="one DPM-Solver-2 step from the EXACT state at s0 = 0.5 (not a whole solve from t = 1), "
                                      "against the exact flow over the same step")
exercises.check_between("slope_local", slope_local, 2.6, 3.4,
                        hint="a method of order p errs by O(h^(p+1)) in one step: for DPM-Solver-2 the local error "
                             "falls 8x per halving of h (DDIM's, order 1, only 4x)")

# %% [markdown]
# **Exercise 2 (multistep or single-step on a fitted grid).** DEIS order 3 is multistep, DPM-Solver-3
# single-step. From the table `results` (`results[solver, grid]` is a list of (NFE, error) pairs), read their
# errors at 15 NFE on the `"uniform log-SNR"` and the `"fitted"` grid, and store in the dict `gain` (keys
# `"DEIS order 3"` and `"DPM-Solver-3"`) the factor by which the fitted grid lowers each one's error (uniform-$\lambda$
# error / fitted error: below 1, the fitted grid hurts). Store the name of the solver that profits more in
# `profits_more`, and the step ratios $h_i/h_{i-1}$ of the 15-step fitted grid (`GRIDS["fitted"](15)`, a tensor of
# 14 ratios, with $h_i$ the steps in $\lambda$) in `step_ratios`. Explain the difference with those ratios.

# %% tags=["solution"]
gain = {}
for name in ("DEIS order 3", "DPM-Solver-3"):
    err_uniform, err_fitted = dict(results[name, "uniform log-SNR"])[15], dict(results[name, "fitted"])[15]
    gain[name] = err_uniform / err_fitted
    print(f"{name:13s} 15 NFE: uniform log-SNR {err_uniform:.1e}, fitted {err_fitted:.1e} -> gain {gain[name]:.2f}")
profits_more = max(gain, key=gain.get)
h_fitted = sched.log_snr(GRIDS["fitted"](15)).diff()
step_ratios = h_fitted[1:] / h_fitted[:-1]
print(f"fitted grid, 15 steps: h from {float(h_fitted.min()):.2f} to {float(h_fitted.max()):.2f}, "
      f"ratios h_i/h_(i-1) from {float(step_ratios.min()):.2f} to {float(step_ratios.max()):.2f}; profits more: {profits_more}")
# Adams-Bashforth extrapolates a polynomial through the last predictions, taken at earlier, differently
# sized steps: on the fitted grid the first steps are long (and taken at low order while the history fills)
# and the sizes change from step to step, so its error constant grows; the single-step DPM-Solver-3 builds
# each step from its own stages and profits from steps placed where the error lives.

# %% tags=["check"]
for name in ("DEIS order 3", "DPM-Solver-3"):
    table = {g: dict(results[name, g])[15] for g in ("uniform log-SNR", "fitted")}
    exercises.check_close(f'gain["{name}"]', gain[name], table["uniform log-SNR"] / table["fitted"], rtol=1e-6,
                          hint="the error on the uniform log-SNR grid divided by the error on the fitted grid, "
                               "both at 15 NFE (dict(results[name, grid])[15])")
winner = max(("DEIS order 3", "DPM-Solver-3"),
             key=lambda k: dict(results[k, "uniform log-SNR"])[15] / dict(results[k, "fitted"])[15])
assert profits_more == winner, (f"profits_more = {profits_more!r}, but the fitted grid helps {winner!r} more. "
                                "Hint: compare the gains (how much each solver's error falls), not the errors themselves")
h_check = sched.log_snr(GRIDS["fitted"](15)).diff()
exercises.check_close("step_ratios", step_ratios, h_check[1:] / h_check[:-1], rtol=1e-6,
                      hint="h_i = lambda(t_(i+1)) - lambda(t_i) along the fitted grid (sched.log_snr), then h_i / h_(i-1), i = 1..14")

# %% [markdown]
# **Exercise 3 (stochastic churn).** Run `solvers.edm_heun` with `s_churn` in {0, 5, 20} at 30 steps
# (`schedules.edm_grid(sched, 30)`) from the same prior draws `x1`, with `generator=torch.Generator().manual_seed(3)`.
# Store in the dict `churn_to_ode` (keyed by `s_churn`) the mean distance of each run's samples to the exact
# ODE endpoints `x_exact` of the same starts (`error(x)`), and in `churn_to_mode` the mean distance of each
# sample to its nearest mode centre (`mix.means`). How far is each from the exact ODE endpoint, and are the
# samples still on the data?

# %% tags=["solution"]
churn_to_ode, churn_to_mode = {}, {}
for churn in (0.0, 5.0, 20.0):
    xc = solvers.edm_heun(oracle, x1, schedules.edm_grid(sched, 30), s_churn=churn,
                          generator=torch.Generator().manual_seed(3))
    churn_to_ode[churn] = error(xc)
    churn_to_mode[churn] = float((xc[:, None, :] - mix.means[None]).norm(dim=-1).min(1).values.mean())
    print(f"s_churn={churn:4.1f}: distance to the ODE endpoint {churn_to_ode[churn]:.3f}, "
          f"mean distance to the nearest mode {churn_to_mode[churn]:.3f}")
# Churn adds noise above the current level (above t = 1 at the first step: the schedule goes on, t_end)
# and lets the ODE forget it; paths leave the ODE's, the distribution stays the data's.

# %% tags=["check"]
x_heun = solvers.edm_heun(oracle, x1, schedules.edm_grid(sched, 30))         # no churn: deterministic
exercises.check_close("churn_to_ode[0]", churn_to_ode[0], error(x_heun), rtol=1e-6,
                      hint="without churn EDM's Heun is an ODE solver: mean of |x - x_exact| over the paths")
# with churn the endpoint forgets the start: about as far as two independent draws of the data
independent = float((x_exact - x_exact.roll(1, 0)).norm(dim=1).mean())
for churn in (5.0, 20.0):
    exercises.check_between(f"churn_to_ode[{churn:g}]", churn_to_ode[churn], 0.5 * independent, 1.5 * independent,
                            hint=f"fresh noise replaces the start's: the sample lands on a mode of its own, at the "
                                 f"distance of two independent data points ({independent:.2f}) from the ODE's")
# on the data: a 2D Gaussian of std 0.15 has E|x - mean| = 0.15 sqrt(pi / 2)
for churn in (0.0, 5.0, 20.0):
    exercises.check_close(f"churn_to_mode[{churn:g}]", churn_to_mode[churn], 0.15 * math.sqrt(math.pi / 2), rtol=0.25,
                          hint="for each sample the distance to the NEAREST of the eight centres (min over mix.means), "
                               "then the mean over samples")

# %% [markdown]
# ## Summary
#
# * The PF-ODE is semilinear; integrating its linear part exactly in log-SNR leaves one integral of a
#   smooth prediction (§9.1). DDIM holds the prediction constant: it is exponential Euler, in all four
#   parameterisations, and equals plain Euler only on the linear path (§9.2; measured above).
# * DEIS (exponential Adams–Bashforth), DPM-Solver (exponential Runge–Kutta in $\lambda$) and DPM-Solver++
#   (the same on $\hat x_0$) are the higher-order ways to take that integral; their orders, fitted against
#   the exact solution, match Table 9.1, and DEIS-2 is ++(2M) in Newton form (Table 9.2).
# * The data form matters under strong guidance: the noise-form solvers diverge at $w=8$ where ++ stays
#   stable (§9.5).
# * The grid matters as much as the order at 10–20 NFE: the fitted grid puts the steps where $\hat x_0$
#   changes, and the table gives the NFE each solver × grid needs for $10^{-2}$ and $10^{-3}$.
# * ParaDiGMS trades sequential steps for parallel evaluations at the same result (§9.7).
#
# **Next:** Ch. 10 replaces the solver altogether: distil the ODE's flow map into a network that jumps
# in one or a few steps, measured against the same exact flow map (`utils.flowmaps.ExactFlowMap`).
