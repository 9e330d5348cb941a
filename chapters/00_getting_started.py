# %% [markdown]
# # 00 · Getting started
#
# *An executable companion to* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# This notebook shows how the companion works and, in about a minute on a laptop CPU, takes you
# through the whole loop the book is about: **train** a small model on 2D data, **sample** it by
# integrating an ODE from noise to data, and **compare** it with the exact answer.
#
# After it you can
# * pick a run size with the `DIFFUSION_PROFILE` profiles and find your way around `utils/`;
# * write the flow-matching loss and an Euler sampler in a few lines, and check them against `utils`;
# * measure a model against ground truth: the exact Gaussian-mixture oracle and the data-vs-data noise floor;
# * open the velocity-field explorer and watch noise being transported into data.
#
# **How to read a chapter.** Run the cells top to bottom (*Run → Run All Cells*). Each chapter follows
# a chapter of the monograph; markdown cells cite it ("Ch. 4"). The first time an algorithm appears it is
# written out in a short cell you can follow line by line; the next cell checks it against the reference
# implementation in `utils/`, which later chapters then call. Every claim is computed, and the facts are
# `assert`ed: running a chapter is also a test (the test suite executes every notebook with `nbval`).

# %% [markdown]
# ## Profiles: one variable sizes every run
#
# | `DIFFUSION_PROFILE` | for | a chapter takes |
# | --- | --- | --- |
# | `test` | the test suite (CI, 2 CPU cores) | about 2 minutes |
# | `cpu` | a reader on a laptop | up to about 10 minutes |
# | `gpu` | a machine with CUDA: image sections at full size | longer, bigger models |
#
# Unset, the profile is `gpu` when CUDA is available and `cpu` otherwise. Set it before starting
# JupyterLab (`DIFFUSION_PROFILE=test jupyter lab`) or in a first cell with
# `os.environ["DIFFUSION_PROFILE"] = "test"`. Each notebook reads it once, in its first code cell,
# and shows the small table of settings it picked.

# %%
# Set-up: make `utils` importable from chapters/, then profile, device and seed.
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))

import math, time
import numpy as np
import torch
import matplotlib.pyplot as plt
from utils import config, schedules, targets, gmm, data, nets, losses, training, samplers, metrics, plotting, widgets, exercises

profile, device, gen = config.setup(seed=0)
S = config.pick({
    "test": dict(steps=3000, batch=256, lr=2e-3, n_samples=8000, ode_steps=25),
    "cpu":  dict(steps=6000, batch=512, lr=2e-3, n_samples=20000, ode_steps=50),
})
S

# %% [markdown]
# ## `utils` at a glance
#
# | module | holds |
# | --- | --- |
# | `config` | profiles (`setup`, `pick`), device, seeding |
# | `schedules` | `VPLinear`, `VPCosine`, `VE`, `LinearPath`, `EDM`: $\alpha_t,\sigma_t$, derivatives, log-SNR and its inverse, SDE $f, g$; time grids |
# | `targets` | conversions between `eps` / `x0` / `score` / `velocity`; the `Denoiser` every sampler takes |
# | `gmm` | the exact Gaussian-mixture oracle: every marginal $p_t$ and every target in closed form |
# | `data` | 2D toy sets, Gaussian-mixture toys, sklearn digits, Fashion-MNIST IDX loader |
# | `nets` | a time- and label-conditioned MLP |
# | `losses` | one regression $\lVert \text{net}(x_t,t) - (A_t x_0 + B_t \varepsilon)\rVert^2$ for all four targets |
# | `training` | one training loop: seed, progress bar, EMA, clipping, NaN guard, checkpoints |
# | `samplers` | PF-ODE Euler / Heun / RK4, reverse SDE, ancestral, Langevin, predictor–corrector |
# | `metrics` | sliced Wasserstein, energy distance, MMD and their data-vs-data noise floor |
# | `plotting`, `widgets` | samples, densities, vector fields, trajectories; slider explorers |
#
# Chapters add modules as they introduce ideas (`ddpm`, `score_matching`, `likelihood`, `flows`,
# `paths`, `ot`, ...); the README lists them all.

# %% [markdown]
# ## The data, and its exact oracle
#
# Our data is a mixture of eight Gaussians on a circle. For a Gaussian mixture, every noisy marginal
# $p_t$ of the forward process $x_t = \alpha_t x_0 + \sigma_t \varepsilon$ is again a Gaussian mixture, in
# closed form, so the exact score, denoiser and velocity are known at every $(x, t)$: `utils.gmm` is
# that **oracle**. No trained model is needed to know the truth.

# %%
mixture = data.toy_gmm("8gaussians")                    # exact density, scores, velocities
x_data, labels = mixture.sample(S["n_samples"], gen)
draw_data = lambda n, g: mixture.sample(n, g)[0]        # fresh data on demand: (n, generator) -> (n, 2)

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
plotting.plot_samples(x_data, ax=axes[0], labels=labels, title="samples x_0 ~ p_data")
plotting.plot_density(mixture.log_prob, ax=axes[1], title="exact density p_data")
plt.show()


# %% [markdown]
# ## Flow matching in five lines (Ch. 5)
#
# Take the linear path $x_t = (1-t)\,x_0 + t\,\varepsilon$ from data ($t=0$) to noise ($t=1$).
# Along one pair $(x_0, \varepsilon)$ the point moves with velocity $\frac{d x_t}{dt} = \varepsilon - x_0$.
# Regressing a network on that conditional velocity at random $t$,
#
# $$\mathcal L(\theta) = \mathbb E_{t, x_0, \varepsilon} \big\lVert v_\theta(x_t, t) - (\varepsilon - x_0) \big\rVert^2,$$
#
# makes $v_\theta(x, t)$ learn the *average* velocity of all pairs passing through $x$ at time $t$:
# the velocity of the probability-flow ODE, whose solution carries $\mathcal N(0, I)$ at $t=1$ back to
# the data at $t=0$. (Flow-matching papers run time the other way, data at $t=1$; this book does not.)

# %%
def fm_loss(net, x0, generator):
    t = torch.rand(x0.shape[0], generator=generator)              # t ~ U[0, 1]
    eps = torch.randn(x0.shape, generator=generator)              # eps ~ N(0, I)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps                # a point on the path
    target = eps - x0                                             # its velocity d x_t / dt
    return ((net(x_t, t) - target) ** 2).mean()


# %% [markdown]
# The reference loss in `utils.losses` is the same regression, written once for every schedule and
# target ($A_t x_0 + B_t \varepsilon$ with $A_t = \alpha_t'$, $B_t = \sigma_t'$ for the velocity). Same
# random numbers in, same loss out:

# %%
net = nets.MLP(dim=2, hidden=128, depth=3)
x0 = x_data[:256].float()
inline = fm_loss(net, x0, torch.Generator().manual_seed(7))
reference = losses.flow_matching_loss()(net, x0, generator=torch.Generator().manual_seed(7))
torch.testing.assert_close(inline, reference)
print(f"inline loss {inline.item():.6f} == utils.losses.flow_matching_loss {reference.item():.6f}")

# %% [markdown]
# ## Train
#
# `training.train` is one readable loop: Adam, a cosine learning-rate decay, gradient clipping, an
# exponential moving average (EMA) of the weights (the copy it returns), a guard that stops with a clear
# message if the loss turns NaN, and a progress bar.

# %%
net = nets.MLP(dim=2, hidden=128, depth=3)
ema_net, history = training.train(net, losses.flow_matching_loss(), lambda n, g: draw_data(n, g).float(),
                                  steps=S["steps"], batch_size=S["batch"], lr=S["lr"], seed=0)
plotting.plot_loss(history)
plt.show()
# the loss of a flow-matching model never reaches 0 (the conditional velocity is noisy), but it must fall:
first, last = sum(history.losses[:100]) / 100, history.smoothed(200)[-1]
print(f"loss: first 100 steps {first:.3f} -> last 200 steps {last:.3f} ({history.seconds:.0f} s)")
assert last < 0.8 * first

# %% [markdown]
# ## Sample: integrate the ODE from noise to data
#
# A `Denoiser` wraps a network trained on one target (here `velocity`) and answers all four
# (`eps`, `x0`, `score`, `velocity`); every sampler takes only this interface. Euler's method steps
# $x \leftarrow x + (t_{i+1} - t_i)\, v(x, t_i)$ from $t=1$ down to $t=0$:

# %%
model = targets.Denoiser(ema_net, "velocity", schedules.LinearPath())
grid = schedules.uniform_grid(S["ode_steps"])            # t = 1, ..., 0
x = samplers.sample_prior(model.schedule, (S["n_samples"], 2), torch.Generator().manual_seed(1))

with torch.no_grad():
    x_inline = x.clone()
    for t, t_next in zip(grid[:-1], grid[1:]):
        x_inline = x_inline + (t_next - t).item() * model.velocity(x_inline, t.item())

x_euler = samplers.sample_euler(model, x, grid)
torch.testing.assert_close(x_inline, x_euler)
print("inline Euler loop == utils.samplers.sample_euler")

# %% [markdown]
# Heun's method averages the slope at both ends of each step (two network calls per step) and is
# second-order accurate; later chapters use it as the default ODE sampler. Record the trajectories
# with a `Recorder` callback:

# %%
rec = samplers.Recorder()
x_heun = samplers.sample_heun(model, x, grid, callback=rec)

fig, axes = plotting.panels(3)  # three square panels, as wide as a JupyterLab cell shows unscaled
plotting.plot_trajectories(rec.xs, ax=axes[0], n_paths=80, title="Heun trajectories, t: 1 -> 0")
plotting.plot_samples(x_heun, ax=axes[1], title="model samples (Heun)")
plotting.plot_samples(x_data, ax=axes[2], title="data")
plt.show()

# %% [markdown]
# ## Compare with the truth
#
# **The noise floor.** Two finite samples of the *same* distribution are at a positive distance from
# each other, so "distance to the data" only means something next to the distance between two
# independent data samples of the same size: the *noise floor*. `metrics.compare_to_floor` splits the
# model samples into 20 chunks, measures each against fresh data with the sliced Wasserstein distance,
# and divides by the data-vs-data floor. A ratio of 1 means "as close as the metric can tell".

# %%
cmp_model = metrics.compare_to_floor(x_heun, draw_data)
print("learned model:", cmp_model)

# the same sampler driven by the exact oracle: the truth the model approximates
oracle = mixture.denoiser(schedules.LinearPath())
x_oracle = samplers.sample_heun(oracle, x.double(), schedules.uniform_grid(100))
cmp_oracle = metrics.compare_to_floor(x_oracle, draw_data)
print("exact oracle: ", cmp_oracle)

assert cmp_oracle.ratio < 1.3, "the exact PF-ODE must reproduce the data"
assert cmp_model.ratio < 2.0, "a minute of training should land within 2x the noise floor"
config.record(nb00_model_sw_ratio=cmp_model.ratio, nb00_oracle_sw_ratio=cmp_oracle.ratio)

# %% [markdown]
# **The learned field against the exact one.** The oracle knows the exact velocity everywhere. We
# measure the learned field where the probability mass is (on samples of $p_t$), as an RMS error in
# units of the typical speed $\sqrt{\mathbb E\lVert \varepsilon - x_0\rVert^2}$ of the conditional paths.
# (Dividing by the exact field's own size would mislead: around $t \approx 0.7$ the mean exact speed
# nearly vanishes, because the outward push of $\mathbb E[\varepsilon \mid x_t]$ and the inward pull of
# $-\mathbb E[x_0 \mid x_t]$ balance on this data set; the plot shows it.) The error is largest near
# the data, where the exact field turns sharp around each mode; more training (the `cpu` profile)
# shrinks it everywhere.

# %%
ts = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
g = torch.Generator().manual_seed(2)
x0_ref = mixture.sample(20000, g)[0]
speed = ((torch.randn(x0_ref.shape, generator=g, dtype=torch.float64) - x0_ref) ** 2).sum(1).mean().sqrt().item()
err, size = [], []
for t in ts:
    xt, _ = mixture.sample(4000, torch.Generator().manual_seed(3), t=t, schedule=oracle.schedule)
    with torch.no_grad():
        v_model = model.velocity(xt.float(), t).double()
    v_true = oracle.velocity(xt, t)
    err.append(((v_model - v_true) ** 2).sum(1).mean().sqrt().item() / speed)
    size.append(v_true.norm(dim=1).mean().item() / speed)
print("t:                  ", " ".join(f"{t:5.2f}" for t in ts))
print("RMS error / speed:  ", " ".join(f"{e:5.3f}" for e in err))
print("mean |v_exact|/speed:", " ".join(f"{v:5.3f}" for v in size))
mean_err = sum(err) / len(err)
print(f"mean over t: {mean_err:.3f}")
assert mean_err < 0.15, "averaged over t, the learned velocity's error is within 15% of the typical speed"
config.record(nb00_velocity_rms_error=mean_err)

plt.plot(ts, err, "o-", label="RMS error of the learned velocity")
plt.plot(ts, size, "s--", label="mean size of the exact velocity")
plt.xlabel("t"); plt.ylabel("in units of the typical speed"); plt.ylim(0, None); plt.legend()
plt.show()

# %% [markdown]
# ## The velocity-field explorer
#
# Move $t$ from 1 (noise) to 0 (data): the learned field (left) and the exact one (right), over the exact
# density $p_t$ (drawn light, so the arrows on its peaks stay visible). In JupyterLab this is a slider,
# in every profile; when no one is there to move it (the test suite sets `DIFFUSION_STATIC_WIDGETS=1`,
# and a plain `python` run has no front end), it draws one frame.

# %%
widgets.velocity_field_explorer(model, oracle, samples=x_data[:2000], t_default=0.3)

# %% [markdown]
# ## Exercises
#
# Each exercise has an answer cell (the student version leaves it empty) and a check cell after it:
# run the check to test your answer; a wrong one says what is off and gives a hint.
#
# **Exercise 1 (steps vs quality).** Sample the trained model with Euler from the first 4000 noise points
# `x[:4000]` using 2, 4, 8, 16 and 32 steps (`schedules.uniform_grid`), and store the sliced-Wasserstein
# ratios to the noise floor (`metrics.compare_to_floor(samples, draw_data).ratio`) in a list `sw_ratios`,
# in that order. Where does the ratio stop improving, and why?

# %% tags=["solution"]
step_counts = [2, 4, 8, 16, 32]
sw_ratios = []
for n_steps in step_counts:
    xs = samplers.sample_euler(model, x[:4000], schedules.uniform_grid(n_steps))
    sw_ratios.append(metrics.compare_to_floor(xs, draw_data).ratio)
    print(f"{n_steps:3d} Euler steps: ratio {sw_ratios[-1]:.2f}")
# The ratio falls quickly, then flattens near 1: past a few steps the discretisation error is below
# what the metric can tell at 200 points per chunk, and what is left is the model's own error.

# %% tags=["check"]
assert len(sw_ratios) == 5, f"sw_ratios has {len(sw_ratios)} entries; expected one per step count 2, 4, 8, 16, 32"
# two Euler steps with the *exact* velocity: the discretisation error alone, which the model shares
x_two = samplers.sample_euler(oracle, x[:4000].double(), schedules.uniform_grid(2))
exercises.check_close("sw_ratios[0]", sw_ratios[0], metrics.compare_to_floor(x_two, draw_data).ratio, rtol=0.2,
                      hint="two Euler steps on the uniform grid from t = 1 to 0, measured with compare_to_floor(...).ratio "
                           "(a ratio to the floor, not the distance itself)")
exercises.check_between("sw_ratios[-1]", sw_ratios[-1], 0.7, 1.5,
                        hint="with 32 steps Euler's error is below the metric's resolution: the ratio sits near 1")

# %% [markdown]
# **Exercise 2 (Euler or Heun at the same cost?).** Heun spends two network calls per step. From the same
# noise `x[:1000]`, integrate the learned ODE with Euler in $2N$ steps and with Heun in $N$ steps,
# $N = 8, 16, 32, 64$, and store the mean distance $\mathbb E\lVert x^\text{solver} - x^\text{ref}\rVert$ to a
# fine RK4 solution of the *same* learned ODE (128 steps) in the lists `err_euler` and `err_heun`.
# Which wins at equal cost, and how fast does each error fall?

# %% tags=["solution"]
Ns = [8, 16, 32, 64]
x_small = x[:1000]
x_ref = samplers.sample_rk4(model, x_small, schedules.uniform_grid(128))
err_euler, err_heun = [], []
for N in Ns:
    err_euler.append(float((samplers.sample_euler(model, x_small, schedules.uniform_grid(2 * N)) - x_ref).norm(dim=1).mean()))
    err_heun.append(float((samplers.sample_heun(model, x_small, schedules.uniform_grid(N)) - x_ref).norm(dim=1).mean()))
    print(f"{2 * N:4d} network calls: Euler error {err_euler[-1]:.4f}   Heun error {err_heun[-1]:.4f}")
# Euler's error halves with each doubling (order 1). Heun's falls no faster at first: near t = 0 the
# field turns sharply around each mode (std 0.15), and a step longer than that scale is not in
# Heun's second-order regime; once the steps resolve it (N = 64, h = 1/64), Heun wins clearly.

# %% tags=["check"]
assert len(err_euler) == len(err_heun) == 4, "err_euler and err_heun need one entry per N = 8, 16, 32, 64"
p_euler = float(np.polyfit(np.log([16, 32, 64, 128]), -np.log(err_euler), 1)[0])
exercises.check_between("Euler's fitted order (from err_euler)", p_euler, 0.7, 1.4,
                        hint="measure against RK4 of the same learned ODE, not against data or the oracle: "
                             "then Euler's error halves with each doubling of the steps")
# the last entry, recomputed on 200 of the points: Euler in 128 steps against RK4 in 128
x_few = x[:200]
e_few = (samplers.sample_euler(model, x_few, schedules.uniform_grid(128))
         - samplers.sample_rk4(model, x_few, schedules.uniform_grid(128))).norm(dim=1).mean()
exercises.check_close("err_euler[-1]", err_euler[-1], e_few, rtol=0.35,
                      hint="Euler gets 2N steps (two network calls per Heun step): 128 steps for N = 64")
assert err_heun[-1] < 0.7 * err_euler[-1], (
    f"err_heun[-1] = {err_heun[-1]:.4f} is not below Euler's {err_euler[-1]:.4f} at the same cost; "
    "hint: Heun with N = 64 steps (the average of the slopes at both ends of each step) on the uniform grid")

# %% [markdown]
# **Exercise 3 (the noise floor depends on $n$).** Compute `metrics.noise_floor(draw_data, n)` for
# $n = 100, 400, 1600$ into a list `floors`, and fit the slope of $\log(\text{floor})$ against $\log n$ into
# `floor_slope`. How does the floor scale with $n$? Why must a model be compared with the floor *at the
# same sample size*?

# %% tags=["solution"]
ns_floor = [100, 400, 1600]
floors = [metrics.noise_floor(draw_data, n) for n in ns_floor]
floor_slope = float(np.polyfit(np.log(ns_floor), np.log(floors), 1)[0])
for n, f in zip(ns_floor, floors):
    print(f"n={n:5d}: floor {f:.4f}")
print(f"slope of log floor against log n: {floor_slope:.2f}")
# The floor shrinks a little slower than n^(-1/2): each projected quantile is estimated with error
# ~ n^(-1/2), but fewer samples fall in the valleys between the modes, where quantiles are coarsest.
# A fixed model error therefore looks small next to the floor at small n and large at large n:
# a ratio means something only when model and floor use the same n.

# %% tags=["check"]
assert len(floors) == 3 and floors[0] > floors[1] > floors[2], "floors should shrink as n grows (n = 100, 400, 1600)"
# Sec. "Compare with the truth" measured the floor at n = 400 with other random draws
exercises.check_close("floors[1]", floors[1], cmp_model.floor, rtol=0.15,
                      hint=f"the floor at n = 400 (compare_to_floor used n = {cmp_model.n} above)")
exercises.check_between("floor_slope", floor_slope, -0.6, -0.3,
                        hint="fit log(floor) = slope * log(n) + c with natural logs on both axes: about n^(-1/2)")

# %% [markdown]
# ## Where to go next
#
# | notebook | monograph |
# | --- | --- |
# | `01_deep_generative_modeling` | Ch. 1: the families of deep generative models, KL divergences |
# | `02_variational_vae_to_ddpm` | Ch. 2: from VAEs to DDPM |
# | `03_score_ebm_to_ncsn` | Ch. 3: from energy-based models to NCSN |
# | `04_score_sde` | Ch. 4: the score SDE framework, PF-ODE, likelihoods |
# | `05_flow_matching` | Ch. 5: normalizing flows to flow matching, rectified flow |
# | `06_unified_lens` | Ch. 6: four targets, one model; all affine paths are one |
# | `07_optimal_transport` | Ch. 7: diffusion and optimal transport |
#
# The training loss, the sampler and the oracle you met here come back in every chapter.
