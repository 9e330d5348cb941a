# %% [markdown]
# # Chapter 10 — Distillation-Based Methods for Fast Sampling
#
# *Companion to Part D, Ch. 10 of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# A trained diffusion model samples by solving its probability-flow ODE in tens of steps. Distillation
# trains a *student* that does the same in one to four. The chapter's unifying object is the **flow map**
# $\Psi_{s\to t}$, where the PF-ODE carries a point at time $s$ by time $t$ (§10.1): every student is an
# approximation of it, and they differ in what they are regressed on. Because our data is a Gaussian
# mixture, the *exact* flow map is available (a fine ODE solve with the exact oracle), so every student
# here is measured twice: against its **teacher** and against **the truth**. After this notebook you can
#
# * write the **oracle flow-map loss** (Eq. 10.1.4) and train the student that is the upper bound for all
#   others;
# * distil a teacher's ODE solver into a one-step student (**knowledge distillation**, Luhman & Luhman
#   2021) and split its error into the teacher's part and the student's part;
# * run **progressive distillation** (Salimans & Ho 2022; §10.3) from 64 steps down to 1 with the
#   two-steps-in-one target of Lemma 10.3.1, and see what holds (the samples) and what drifts (the map);
# * read a closing table of every student at 1, 2 and 4 steps against the 64-step teacher and the noise floor.
# * check the **VSD / DMD** gradient of §10.2 against the exact reverse KL, watch it seek modes, and run the
#   real alternating loop (a one-step generator, a fitted fake score, the teacher) with and without DMD's
#   regression term.
#
# **Prerequisites:** Ch. 4–6 (PF-ODE, the four targets), Ch. 9's DDIM step (written out again here).
# Time runs from data ($t=0$) to noise ($t=1$). The monograph's footnote credits PD to "Ho et al., 2020";
# the method is Salimans & Ho (ICLR 2022).

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import copy, math, time, torch, matplotlib.pyplot as plt
from tqdm.auto import trange
from utils import config, schedules, data, nets, losses, targets, training, samplers, metrics, plotting, widgets, flowmaps
from utils import exercises
from utils import distillation as D
profile, device, gen = config.setup(seed=0, threads=1)   # 2D nets: one thread is fastest (and fair on a shared machine)
S = config.pick({
    "test": dict(hidden=64, depth=3, teacher_steps=1500, student_steps=1500, pd_steps=300, batch=256,
                 lr=2e-3, n_eval=3000, n_pairs=1000, n_kd=6000, exact_steps=64, n_vsd=50_000, vsd_steps=200, fake_steps=1000,
                 dmd_steps=300, fake_per_step=3),
    "cpu": dict(hidden=128, depth=3, teacher_steps=6000, student_steps=4000, pd_steps=1200, batch=512,
                lr=2e-3, n_eval=8000, n_pairs=4000, n_kd=20000, exact_steps=128, n_vsd=200_000, vsd_steps=400, fake_steps=3000,
                 dmd_steps=900, fake_per_step=3),
})
S

# %% [markdown]
# ## 1. The truth: the exact flow map of a Gaussian mixture
#
# Data: the eight-Gaussian mixture; schedule: VP-linear (DDPM in continuous time). The oracle
# `mix.denoiser(sched)` answers $\mathbb E[x_0\mid x_t]$ exactly, hence the PF-ODE velocity exactly, and
# `flowmaps.ExactFlowMap` integrates it with fine RK4 steps on a noise-level grid: $\Psi_{s\to t}(x)$ to solver
# accuracy. We check that accuracy against a solve with four times the steps, once, on the points every
# student is evaluated on: the same prior draws $z$ throughout, so that "error against the exact map" means
# $\mathbb E_z\|G(z) - \Psi_{1\to 0}(z)\|$, point by point.

# %%
mix = data.toy_gmm("8gaussians")
sched = schedules.VPLinear()
oracle = mix.denoiser(sched)
data_fn = lambda n, g: mix.sample(n, g)[0].float()
reference = lambda n, g: mix.sample(n, g)[0]
data_scale = float(mix.covariance().trace().sqrt())
exact_map = flowmaps.ExactFlowMap(oracle, S["exact_steps"])

z = samplers.sample_prior(sched, (S["n_eval"], 2), torch.Generator().manual_seed(1))
x_exact = exact_map(z.double(), 1.0, 0.0)
solver_err = float((x_exact[:300] - flowmaps.ExactFlowMap(oracle, 4 * S["exact_steps"])(z[:300].double(), 1.0, 0.0))
                   .norm(dim=1).max())
fc_exact = metrics.compare_to_floor(x_exact, reference)
print(f"exact map: max |Psi - Psi(4x steps)| = {solver_err:.1e};  its samples: {fc_exact}")
assert solver_err < 1e-2 and fc_exact.ratio < 1.3


def mode(x):
    return torch.cdist(x.double(), mix.means).argmin(1)


def measure(x, x_teacher=None):
    """Quality (ratio to the data-vs-data noise floor) and map errors of samples x = G(z)."""
    x = x.double()
    out = dict(ratio=metrics.compare_to_floor(x, reference).ratio,
               err_exact=float((x - x_exact).norm(dim=1).mean()),
               same_mode=float((mode(x) == mode(x_exact)).double().mean()))
    if x_teacher is not None:
        out["err_teacher"] = float((x - x_teacher).norm(dim=1).mean())
    return out


def show(name, m):
    extra = f"  err vs teacher {m['err_teacher']:.3f}" if "err_teacher" in m else ""
    print(f"{name:28s} ratio {m['ratio']:.2f}  err vs exact {m['err_exact']:.3f}  same mode "
          f"{m['same_mode']:.3f}{extra}")

# %% [markdown]
# ## 2. The teacher, and its sampler
#
# The teacher is a small MLP in Salimans & Ho's **v-parameterisation**: the net predicts
# $v = \alpha_t\epsilon - \sigma_t x_0$ and
#
# $$\hat x_0 = \frac{\alpha_t x_t - \sigma_t \hat v}{\alpha_t^2+\sigma_t^2},\qquad
#   \hat\epsilon = \frac{\sigma_t x_t + \alpha_t \hat v}{\alpha_t^2+\sigma_t^2}.$$
#
# Unlike an $\epsilon$-net, whose $\hat x_0 = (x_t - \sigma_t\hat\epsilon)/\alpha_t$ blows up where $\alpha_t\to0$,
# this is finite at both ends: a student that jumps from $t=1$ in one step needs $\hat x_0$ there (Salimans & Ho 2022, §4).
# Its sampler is **DDIM** (Song et al. 2021; Ch. 9), one step of which is
#
# $$x_t = \alpha_t\,\hat x_0(x_s, s) + \sigma_t\,\hat\epsilon(x_s, s),\qquad t < s.$$

# %%
def x0_eps_from_v(v_hat, x, t):
    a, s = sched.alpha(t).to(x.dtype)[:, None], sched.sigma(t).to(x.dtype)[:, None]
    return (a * x - s * v_hat) / (a ** 2 + s ** 2), (s * x + a * v_hat) / (a ** 2 + s ** 2)


def ddim_step(model, x, s, t):
    x0_hat, eps_hat = model.x0_eps(x, s)
    return float(sched.alpha(t)) * x0_hat + float(sched.sigma(t)) * eps_hat


torch.manual_seed(0)
teacher_net = nets.MLP(2, S["hidden"], S["depth"])
teacher_ema, hist_teacher = training.train(teacher_net, D.VPredictionLoss(sched), data_fn, S["teacher_steps"],
                                           batch_size=S["batch"], lr=S["lr"], ema_decay=0.995, desc="teacher")
teacher = D.VPrediction(teacher_ema, sched)

x_probe, t_probe = z[:256], torch.full((256,), 0.7)
with torch.no_grad():
    torch.testing.assert_close(x0_eps_from_v(teacher_ema(x_probe, t_probe), x_probe, t_probe),
                               teacher.x0_eps(x_probe, t_probe))
    torch.testing.assert_close(ddim_step(teacher, x_probe, 0.7, 0.4), D.ddim_step(teacher, x_probe, 0.7, 0.4))
print("inline v-parameterisation and DDIM step == utils.distillation")

# %% [markdown]
# The teacher samples with DDIM on 64 uniform steps; that is the reference every student's step count
# is compared with. Below it, the same DDIM with fewer steps: the baseline distillation must beat.
# Read two columns: the **ratio** to the data-vs-data noise floor (distribution quality, 1 means
# indistinguishable from data at this sample size) and the **error against the exact map** (where each
# noise draw lands compared with where the true PF-ODE takes it).

# %%
G64 = schedules.uniform_grid(64)
with torch.no_grad():
    x_teacher = flowmaps.sample_flow_map(D.DDIMMap(teacher), z, G64).double()
    x_oracle_ddim = flowmaps.sample_flow_map(D.DDIMMap(oracle), z.double(), G64)
teacher64 = measure(x_teacher)
show("teacher, DDIM 64 steps", teacher64)
oracle64 = measure(x_oracle_ddim)
show("oracle, DDIM 64 steps", oracle64)
ddim_few = {}
for n in (1, 2, 4, 8):
    with torch.no_grad():
        ddim_few[n] = measure(flowmaps.sample_flow_map(D.DDIMMap(teacher), z, schedules.uniform_grid(n)), x_teacher)
    show(f"teacher, DDIM {n} steps", ddim_few[n])
assert teacher64["ratio"] < 1.5 and ddim_few[1]["ratio"] > 2 * teacher64["ratio"]
assert teacher64["err_exact"] > 1.5 * oracle64["err_exact"]     # the teacher's map error is not DDIM's
config.record(nb10_teacher64_sw_ratio=teacher64["ratio"], nb10_teacher64_err_exact=teacher64["err_exact"])

# %% [markdown]
# The 64-step teacher samples the data well, yet its map is measurably off the exact one: each noise draw
# lands on the right mode (the same-mode column) but displaced within it, by more than the DDIM
# discretisation error (the oracle's own 64-step DDIM row). That gap is the **teacher's** error, a
# learned velocity integrated over the whole path, and no student trained on the teacher can recover it.

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
plotting.plot_samples(x_exact[:1500], ax=axes[0], s=2, title=r"exact $\Psi_{1\to0}(z)$")
plotting.plot_samples(x_teacher[:1500], ax=axes[1], s=2, title="teacher, DDIM 64 steps")
k = torch.arange(0, 400)
axes[2].plot(torch.stack([x_exact[k, 0], x_teacher[k, 0]]), torch.stack([x_exact[k, 1], x_teacher[k, 1]]),
             color="C3", lw=0.8)
plotting.plot_samples(x_exact[k], ax=axes[2], s=4, title="where 400 draws land: exact vs teacher (red)")
fig.tight_layout()

# %% [markdown]
# ## 3. §10.1 The oracle loss: the student every other is held to
#
# Flow-map distillation regresses a student $G_\theta(x_s, s, t)$ on a target for $\Psi_{s\to t}(x_s)$. With
# the exact map as the target this is the **unified oracle loss** (Eq. 10.1.4)
#
# $$\mathcal L(\theta) = \mathbb E_{s,t}\,\mathbb E_{x_s\sim p_s}\; w(s,t)\, d\big(G_\theta(x_s,s,t),\,\Psi_{s\to t}(x_s)\big),$$
#
# which practical methods can only approximate (by a teacher's solver, Sections 4–5, or by
# self-consistency, Ch. 11). We take $d = \|\cdot\|^2$, $w = 1$, and the seven jumps $(s,t)$ of the 1-, 2- and
# 4-step uniform grids. The student has DDIM form: it predicts an endpoint $\tilde x$ and jumps
# $G = \alpha_t\tilde x + \sigma_t(x_s - \alpha_s\tilde x)/\sigma_s$, so $G(x,s,s) = x$ for any weights (§10.3.3).
# Written out, the loss on one batch:

# %%
def oracle_loss(student, x_s, s, t):
    target = exact_map(x_s.double(), s, t).to(x_s.dtype)          # Psi_{s->t}(x_s), exact
    return ((student(x_s, s, t) - target) ** 2).sum(1).mean()


jumps = [(1.0, 0.0), (1.0, 0.5), (0.5, 0.0), (1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)]
g = torch.Generator().manual_seed(2)
xs, ss, ts = [], [], []
for s, t in jumps:                         # x_s ~ p_s: the exact marginal (the prior at s = 1)
    x_s = mix.sample(S["n_pairs"], g, t=s, schedule=sched)[0] if s < 1 else \
        samplers.sample_prior(sched, (S["n_pairs"], 2), g, dtype=torch.float64)
    xs.append(x_s), ss.append(torch.full((S["n_pairs"],), s, dtype=torch.float64)), ts.append(torch.full((S["n_pairs"],), t, dtype=torch.float64))
xs, ss, ts = torch.cat(xs), torch.cat(ss), torch.cat(ts)
pairs = D.pack_pairs(xs, exact_map(xs, ss, ts), ss, ts).float()     # rows [x_s, Psi(x_s), s, t]

torch.manual_seed(0)
net = D.FlowMapNet(2, S["hidden"], S["depth"])
check = D.AffineStudent(net, sched)
with torch.no_grad():
    k = slice(0, 256)                                                  # the first 256 rows: s = 1, t = 0
    torch.testing.assert_close(oracle_loss(check, xs[k].float(), 1.0, 0.0),
                               D.FlowMapRegression(sched)(net, pairs[k]), rtol=1e-4, atol=1e-4)
print("inline oracle loss == utils.distillation.FlowMapRegression on exact-map pairs")
oracle_ema, hist_oracle = training.train(net, D.FlowMapRegression(sched), pairs, S["student_steps"],
                                         batch_size=S["batch"], lr=S["lr"], ema_decay=0.995,
                                         desc="oracle-loss student")
oracle_student = D.AffineStudent(oracle_ema, sched)

# %%
results = {"teacher DDIM": {n: ddim_few[n] for n in (1, 2, 4)}}
results["oracle-loss student"] = {}
for n in (1, 2, 4):
    with torch.no_grad():
        x = flowmaps.sample_flow_map(oracle_student, z, schedules.uniform_grid(n))
    results["oracle-loss student"][n] = measure(x, x_teacher)
    show(f"oracle-loss student, {n} step(s)", results["oracle-loss student"][n])
best_oracle = results["oracle-loss student"][1]
assert best_oracle["ratio"] < 2 * teacher64["ratio"]
assert best_oracle["err_exact"] < teacher64["err_exact"]

# %% [markdown]
# In one step the oracle-loss student is closer to the exact map than the 64-step teacher: it never saw the
# teacher, so it does not inherit the teacher's error. It is the ceiling of what a flow-map student of this
# size can reach; every practical method below replaces $\Psi$ by something computable and pays for it.
#
# ## 4. Knowledge distillation (Luhman & Luhman 2021)
#
# The first practical replacement: draw prior samples $x_T$, run the teacher's solver on each, and regress
# a one-step student on the pairs,
#
# $$\mathcal L_{\rm KD}(\theta) = \mathbb E_{x_T}\,\big\|G_\theta(x_T) - \mathrm{Solver}_{T\to 0}(x_T)\big\|^2 .$$
#
# Here the solver is the teacher's 64-step DDIM. The pairs cost 64 teacher evaluations each, once.

# %%
g = torch.Generator().manual_seed(3)
z_kd = samplers.sample_prior(sched, (S["n_kd"], 2), g)
with torch.no_grad():
    y_kd = flowmaps.sample_flow_map(D.DDIMMap(teacher), z_kd, G64)   # Solver_{T -> 0}(x_T)
torch.manual_seed(0)
kd_ema, hist_kd = training.train(D.FlowMapNet(2, S["hidden"], S["depth"]), D.FlowMapRegression(sched),
                                 D.pack_pairs(z_kd, y_kd, 1.0, 0.0), S["student_steps"], batch_size=S["batch"],
                                 lr=S["lr"], ema_decay=0.995, desc="KD student")
kd_student = D.AffineStudent(kd_ema, sched)
with torch.no_grad():
    kd = measure(flowmaps.sample_flow_map(kd_student, z, schedules.uniform_grid(1)), x_teacher)
results["KD (Luhman & Luhman)"] = {1: kd}
show("KD student, 1 step", kd)
show("teacher, DDIM 64 steps", dict(teacher64, err_teacher=0.0))
print(f"KD error vs exact {kd['err_exact']:.3f} <= student's part {kd['err_teacher']:.3f} "
      f"+ teacher's part {teacher64['err_exact']:.3f}")
assert kd["err_teacher"] < kd["err_exact"]                 # it learned the teacher, not the truth
assert kd["err_exact"] > best_oracle["err_exact"]          # and it pays for the teacher's error
assert kd["ratio"] < 2 * teacher64["ratio"]
config.record(nb10_kd_sw_ratio=kd["ratio"], nb10_kd_err_exact=kd["err_exact"], nb10_kd_err_teacher=kd["err_teacher"],
              nb10_oracle_student_err_exact=best_oracle["err_exact"])

# %% [markdown]
# The KD student is closer to its teacher than to the truth: most of its error against the exact map is the
# teacher's, inherited. The oracle-loss student shows how much of that a better target would remove. In
# images the truth is not available and the teacher is the best we have; here we can see the price.
#
# ## 5. §10.3 Progressive distillation (Salimans & Ho 2022)
#
# KD needs the full teacher solve for every training pair. Progressive distillation (PD) never runs it:
# a student learns to do in **one** DDIM step what the teacher does in **two**, then becomes the teacher,
# and the number of steps halves each round, 64 → 32 → … → 1. For one student step from $s$ to $t$ through
# the teacher's midpoint $u$: two teacher DDIM steps give $\tilde x_t$, and the student's one DDIM step
# lands there exactly when its $\hat x_0$ equals (**Lemma 10.3.1**)
#
# $$\tilde x = \frac{\sigma_s\,\tilde x_t - \sigma_t\, x_s}{\alpha_t\sigma_s - \alpha_s\sigma_t}.$$
#
# Written out, and checked on the oracle in float64: one DDIM step with $\tilde x$ reproduces two.

# %%
def two_steps_in_one(teacher_model, x_s, s, u, t):
    x_u = ddim_step(teacher_model, x_s, s, u)
    x_t = ddim_step(teacher_model, x_u, u, t)                  # two teacher steps
    a_s, s_s, a_t, s_t = (float(f(v)) for f, v in ((sched.alpha, s), (sched.sigma, s), (sched.alpha, t), (sched.sigma, t)))
    return (s_s * x_t - s_t * x_s) / (a_t * s_s - a_s * s_t), x_t


x_s = mix.sample(2000, torch.Generator().manual_seed(4), t=0.6, schedule=sched)[0]
x_tilde, x_two = two_steps_in_one(oracle, x_s, 0.6, 0.45, 0.3)
x_one = float(sched.alpha(0.3)) * x_tilde + float(sched.sigma(0.3)) * (x_s - float(sched.alpha(0.6)) * x_tilde) / float(sched.sigma(0.6))
one_step_gap = float((x_one - x_two).abs().max())
torch.testing.assert_close(x_tilde, D.pd_target(oracle, x_s, 0.6, 0.45, 0.3)[0])
print(f"max |one student step with x~ - two teacher steps| = {one_step_gap:.1e} (float64); "
      f"plain one-step DDIM misses by {float((ddim_step(oracle, x_s, 0.6, 0.3) - x_two).norm(dim=1).mean()):.3f}")
assert one_step_gap < 1e-10

# %% [markdown]
# Each round starts the student from the teacher's weights (Salimans & Ho, Alg. 2) and trains on data
# points noised to a student grid time $s$, with the loss in $v$-space (their "SNR + 1" weighting). The
# round's cost is a few hundred optimiser steps, each with two teacher evaluations. After every round we
# measure the student's samples on its own grid, beside the teacher's plain DDIM with as many steps.

# %%
pd_students, pd_results, pd_hist = {}, {}, {}
current, grid = teacher, G64
t0 = time.process_time()
while grid.numel() > 2:
    loss = D.ProgressiveDistillationLoss(current, grid)
    n = loss.student_grid.numel() - 1
    student_ema, pd_hist[n] = training.train(copy.deepcopy(current.net).requires_grad_(True), loss, data_fn, S["pd_steps"],
                                             batch_size=S["batch"], lr=5e-4, ema_decay=0.99,
                                             desc=f"PD round {int(math.log2(64 // n))}: {2 * n} -> {n} steps")
    current, grid = D.VPrediction(student_ema, sched), loss.student_grid
    pd_students[n] = current
    with torch.no_grad():
        pd_results[n] = measure(flowmaps.sample_flow_map(D.DDIMMap(current), z, grid), x_teacher)
pd_seconds = time.process_time() - t0
for n in sorted(pd_results, reverse=True):
    with torch.no_grad():
        plain = ddim_few.get(n) or measure(flowmaps.sample_flow_map(D.DDIMMap(teacher), z, schedules.uniform_grid(n)), x_teacher)
    ddim_few[n] = plain
    show(f"PD student, {n:2d} steps", pd_results[n])
    show(f"   teacher DDIM, {n:2d} steps", plain)
print(f"six rounds took {pd_seconds:.0f} s of CPU time")
results["progressive distillation"] = {n: pd_results[n] for n in (1, 2, 4)}

# %% [markdown]
# Against the 64-step teacher's ratio, per round. Salimans & Ho's CIFAR-10 FIDs are 2.57 / 3.00 / 4.51 / 9.12
# at 8 / 4 / 2 / 1 steps (1.0x / 1.2x / 1.8x / 3.5x the 8-step value): quality holds down to a few steps and
# falls at two and one. Does ours?

# %%
rel = {n: pd_results[n]["ratio"] / teacher64["ratio"] for n in sorted(pd_results, reverse=True)}
print("PD ratio / teacher-64 ratio:  " + "  ".join(f"{n} steps {r:.2f}" for n, r in rel.items()))
print("plain DDIM ratio / teacher-64: " + "  ".join(f"{n} steps {ddim_few[n]['ratio'] / teacher64['ratio']:.2f}"
                                                   for n in sorted(pd_results, reverse=True)))
for n in (1, 2):
    assert pd_results[n]["ratio"] < ddim_few[n]["ratio"]    # distillation beats the same number of DDIM steps
for n in (1, 2, 4):                                          # and follows the teacher's 64-step map more closely
    assert pd_results[n]["err_teacher"] < ddim_few[n]["err_teacher"]
assert rel[4] < 1.3 and max(rel.values()) < 1.5                 # quality holds down to 4 steps (and below)
drift = max(pd_results[n]["err_teacher"] for n in (1, 2)) / pd_results[32]["err_teacher"]
print(f"the PD map drifts from the teacher's round by round: error vs teacher x{drift:.0f} from 32 steps to 1-2 steps")
assert drift > 3                                                 # each round adds its own error to the map
config.record(**{f"nb10_pd{n}_sw_ratio": pd_results[n]["ratio"] for n in pd_results},
              nb10_pd4_over_teacher64=rel[4])

# %% [markdown]
# Only half of the paper's pattern appears here. Distribution quality holds at every round, down to **one**
# step: on eight well-separated modes in 2D, a one-step student of this size can reproduce the teacher's
# sample distribution, which a CIFAR-10 student cannot. What does degrade is the map: each round regresses
# on the previous student, so its error is added to the chain, and the PD student's distance from the
# teacher's 64-step map grows round by round (printed above; right panel below). The paper's fall at one
# and two steps is the image-scale version of that accumulated error, when it becomes visible in the samples.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
ns = sorted(pd_results)
panels = [  # (curves: (values per n, style, label)), reference line, y label, title
    ([([pd_results[n]["ratio"] for n in ns], "o-", "PD student"),
      ([ddim_few[n]["ratio"] for n in ns], "s--", "teacher, plain DDIM")],
     (teacher64["ratio"], "teacher, 64 steps"), "SW / noise floor", "quality per PD round"),
    ([([pd_results[n]["err_exact"] for n in ns], "o-", "PD vs exact map"),
      ([pd_results[n]["err_teacher"] for n in ns], "^-", "PD vs teacher-64 map")],
     (teacher64["err_exact"], "teacher-64 vs exact"), "mean |G(z) - ref(z)|", "map error per round"),
]
for ax, (curves, (ref, ref_label), ylabel, title) in zip(axes, panels):
    for values, style, label in curves:
        ax.plot(ns, values, style, label=label)
    ax.axhline(ref, color="k", ls=":", label=ref_label)
    ax.set(xscale="log", xlabel="sampling steps", ylabel=ylabel, title=title)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.legend()
fig.tight_layout()

# %% [markdown]
# ## 6. Widget: walk down the PD rounds
#
# Pick a number of steps. Left: the PD student of that round on its own grid; right: the teacher's plain
# DDIM with as many steps. Both start from the same noise; the lines join each sample to where the exact
# flow map sends that noise.

# %%
def draw_round(steps=4):
    steps = int(steps)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    k = slice(0, 500)
    with torch.no_grad():
        pd_x = flowmaps.sample_flow_map(D.DDIMMap(pd_students[steps]), z[k], schedules.uniform_grid(steps)).double()
        dd_x = flowmaps.sample_flow_map(D.DDIMMap(teacher), z[k], schedules.uniform_grid(steps)).double()
    for ax, x, title in ((axes[0], pd_x, f"PD student, {steps} steps"), (axes[1], dd_x, f"teacher DDIM, {steps} steps")):
        ax.plot(torch.stack([x[:, 0], x_exact[k, 0]]), torch.stack([x[:, 1], x_exact[k, 1]]), color="C3", lw=0.4, alpha=0.5)
        plotting.plot_samples(x, ax=ax, s=3, title=title + f"\nerr vs exact {float((x - x_exact[k]).norm(dim=1).mean()):.3f}",
                              lim=3.2)
    fig.tight_layout()
    return fig


widgets.explore(draw_round, {"steps": [4, 1, 2, 8, 16, 32]})

# %% [markdown]
# ## 7. §10.2 Distribution-level distillation: VSD and DMD
#
# The students above match a map, point by point. Distribution-level distillation only asks the generator's
# samples to be distributed like the teacher's. Variational score distillation (VSD; Wang et al. 2023,
# Diff-Instruct, Luo et al. 2023) and DMD (Yin et al. 2024) minimise a reverse KL between the noised
# generator distribution $p^\theta_t$ and the noised data $p_t$, averaged over $t$. Its gradient needs only
# scores (Prop. 10.2.1, Eq. 10.2.2):
#
# $$\nabla_\theta\,\mathcal L = \mathbb E_{t,z,\epsilon}\Big[\omega(t)\,\alpha_t\,\big(\nabla\log p^\theta_t(x_t) - \nabla\log p_t(x_t)\big)^{\!\top}\,\frac{\partial G_\theta(z)}{\partial\theta}\Big],\qquad x_t = \alpha_t G_\theta(z) + \sigma_t\epsilon .$$
#
# The data score comes from the teacher; the generator's "fake" score $\nabla\log p^\theta_t$ is normally a
# second network fitted to the generator's own samples by denoising score matching, alternating with the
# generator (§10.2.2). To check the formula exactly we pick a generator whose noised density is known: $K$
# learnable points with Gaussian noise, $G_\theta(k, n) = \theta_k + \tau n$, so $p^\theta_t$ is a Gaussian mixture
# and both scores are exact. At one $t$ the KL itself can be computed by quadrature on a grid and
# differentiated by autograd: the ground truth the Monte-Carlo VSD gradient must hit.

# %%
gen3 = D.MixtureGenerator(torch.tensor([[1.5, 0.5], [0.3, 1.8], [-1.0, -1.0]], dtype=torch.float64), 0.15)
t_v = 0.3
u = torch.linspace(-5, 5, 401, dtype=torch.float64)
h = float(u[1] - u[0])
grid_pts = torch.stack([c.reshape(-1) for c in torch.meshgrid(u, u, indexing="ij")], 1)
log_q, log_p = gen3.noised_log_prob(grid_pts, t_v, sched), oracle.log_prob(grid_pts, t_v)
kl_quad = (log_q.exp() * (log_q - log_p)).sum() * h * h                 # KL(p^theta_t || p_t), quadrature
grad_exact = torch.autograd.grad(kl_quad, gen3.theta)[0]

g = torch.Generator().manual_seed(20)
x_g = gen3.sample(S["n_vsd"], g)
eps_g = torch.randn(x_g.shape, dtype=x_g.dtype, generator=g)
surrogate = D.vsd_loss(x_g, t_v, eps_g, lambda x, t: gen3.noised_score(x, t, sched), oracle.score, sched)
grad_vsd = torch.autograd.grad(surrogate, gen3.theta, retain_graph=True)[0]
# written out: omega = 1, dG/dtheta_k = I on the samples of component k
with torch.no_grad():
    a_v, s_v = float(sched.alpha(t_v)), float(sched.sigma(t_v))
    x_tv = a_v * x_g + s_v * eps_g
    score_diff = gen3.noised_score(x_tv, t_v, sched) - oracle.score(x_tv, t_v)
per_sample = a_v * score_diff
grad_inline = torch.autograd.grad((per_sample * x_g).sum(1).mean(), gen3.theta, retain_graph=True)[0]
torch.testing.assert_close(grad_inline, grad_vsd)
rel_vsd = float((grad_vsd - grad_exact).detach().norm() / grad_exact.detach().norm())
print(f"KL(p^theta_t || p_t) at t={t_v}: {float(kl_quad.detach()):.4f} (quadrature)")
print(f"VSD gradient ({S['n_vsd']} MC samples) vs autograd of the exact KL: relative error {rel_vsd:.3f}")
assert rel_vsd < 0.05
config.record(nb10_vsd_gradient_rel_error=rel_vsd)

# %% [markdown]
# In practice neither score is exact (§10.2.2): the data score is the **teacher's**, and the fake score is a
# second network fitted by denoising score matching to the generator's own samples (the two phases then
# alternate as the generator moves). One fake-score phase for the generator above, and the gradient it gives:

# %%
gen_samples = lambda n, g: gen3.sample(n, g).detach().float()
torch.manual_seed(0)
fake_ema, _ = training.train(nets.MLP(2, S["hidden"], S["depth"]), losses.DiffusionLoss(sched, "eps", t_range=(0.01, 1.0)),
                             gen_samples, S["fake_steps"], batch_size=S["batch"], lr=S["lr"], ema_decay=0.995,
                             desc="fake score (DSM on generator samples)")
fake_model = targets.Denoiser(fake_ema, "eps", sched)
learned = lambda model: (lambda x, t: model.score(x.float(), t).double())
grad_learned = torch.autograd.grad(D.vsd_loss(x_g, t_v, eps_g, learned(fake_model), learned(teacher), sched),
                                   gen3.theta, retain_graph=True)[0]
rel_learned = float((grad_learned - grad_exact).norm() / grad_exact.norm())
print(f"VSD gradient with the learned fake score and the teacher's score: relative error {rel_learned:.3f} "
      f"(exact scores: {rel_vsd:.3f})")
cos = float((grad_learned * grad_exact).sum() / (grad_learned.norm() * grad_exact.norm()))
print(f"cosine with the exact gradient: {cos:.3f}")
assert cos > 0.8 and rel_learned > rel_vsd
config.record(nb10_vsd_learned_gradient_cosine=cos)

# %% [markdown]
# **Mode seeking.** The reverse KL charges the generator for mass where the data has none, not for data it
# misses: a generator that starts on one mode has no reason to leave it. We start $K=8$ points clustered on
# one mode and descend the VSD gradient three ways: with low noise levels only ($t\le0.3$, where $p_t$ still
# has separated modes), with the whole range of $t$ (at high noise the modes merge and the score difference
# pulls globally), and with DMD's **regression term** added (Yin et al. 2024): the generator is also
# regressed on a few noise→sample pairs from the teacher's ODE. Here the generator's "noise" is the
# component index, so we pair point $k$ with the exact PF-ODE image of a fixed prior draw $z_k$, one draw per
# direction around the origin.

# %%
def modes_covered(theta, radius=0.45):
    return int((torch.cdist(theta.detach(), mix.means).min(0).values < radius).sum())


theta0 = mix.means[0] + 0.3 * torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(21))
ang = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8 + 0.2
z_ref = torch.stack([ang.cos(), ang.sin()], 1)                           # one prior draw per direction
y_ref = exact_map(z_ref, 1.0, 0.0)                                       # the teacher's (here: exact) ODE outputs
vsd_runs = {}
for name, (lo, hi), lam in (("VSD, t <= 0.3", (0.02, 0.3), 0.0), ("VSD, all t", (0.02, 0.98), 0.0),
                            ("DMD: VSD + regression", (0.02, 0.98), 1.0)):
    gen_k = D.MixtureGenerator(theta0, 0.15)
    opt = torch.optim.Adam(gen_k.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(22)
    for _ in range(S["vsd_steps"]):
        x_k = gen_k.sample(S["batch"], g)
        e_k = torch.randn(x_k.shape, dtype=x_k.dtype, generator=g)
        t_k = lo + (hi - lo) * torch.rand(S["batch"], dtype=torch.float64, generator=g)
        loss = D.vsd_loss(x_k, t_k, e_k, lambda x, t: gen_k.noised_score(x, t, sched), oracle.score, sched,
                          weight=lambda t: 1 / sched.alpha(t))
        if lam:
            loss = loss + lam * ((gen_k.theta - y_ref) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vsd_runs[name] = gen_k.theta.detach().clone()
    print(f"{name:24s} covers {modes_covered(vsd_runs[name])} of 8 modes")
print(f"start: {modes_covered(theta0)} mode(s); the regression targets alone: {modes_covered(y_ref)} modes")
cov = {k: modes_covered(v) for k, v in vsd_runs.items()}
assert cov["VSD, t <= 0.3"] <= 4 and cov["DMD: VSD + regression"] >= 7
assert cov["DMD: VSD + regression"] > cov["VSD, t <= 0.3"]
config.record(**{f"nb10_modes_{k}": v for k, v in zip(("vsd_low_t", "vsd_all_t", "dmd"), cov.values())})

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
for ax, (name, th) in zip(axes, vsd_runs.items()):
    plotting.plot_density(lambda p: oracle.log_prob(p, 0.0), ax=ax, lim=3.2, cmap="Greys")
    ax.plot(*theta0.T, "o", mfc="none", color="C0", label="start")
    ax.plot(*th.T, "o", color="C3", label="after training")
    ax.set_title(f"{name}: {modes_covered(th)}/8 modes")
    ax.legend(loc="lower left", fontsize=7)
fig.tight_layout()

# %% [markdown]
# ### The real loop: a one-step generator, a fitted fake score, the teacher (§10.2.1–10.2.2)
#
# Now without any exact score. The generator is a small MLP $G_\theta(z)$ from a prior draw to a data point,
# trained from scratch; the data score is the **teacher's**; the fake score is a second small network
# refitted by a few denoising-score-matching steps on $G_\theta$'s current samples before every generator step
# (the two phases alternate, §10.2.2). The generator step descends the VSD surrogate (`D.vsd_loss`, checked
# above) with $\omega(t) = \sigma_t^2/\alpha_t^2$: then $\omega\,\alpha_t(\nabla\log p^\theta_t-\nabla\log p_t) =
# \hat x_0^{\rm fake}(x_t) - \hat x_0^{\rm teacher}(x_t)$, DMD's difference of denoisers (Yin et al. 2024). Three
# settings: $t$ over the whole range, $t\le0.3$ only, and DMD's regression term added on 512 of the KD pairs
# $(z, \text{teacher ODE}(z))$ of Section 4. A mode counts as covered when at least $1/32$ of the samples
# (a quarter of its share) fall within 0.5 of its centre.

# %%
def dmd_modes_covered(x, radius=0.5):
    near = torch.cdist(x.double(), mix.means) < radius
    return int((near.double().mean(0) >= 1 / 32).sum())


def generator_net(width=64):
    return torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                               torch.nn.SiLU(), torch.nn.Linear(width, 2))


def train_vsd(t_range, lam, seed=0, n_reg=512):
    torch.manual_seed(seed)
    G, fake_net = generator_net(), nets.MLP(2, 64, 2)
    fake = targets.Denoiser(fake_net, "eps", sched)
    dsm = losses.DiffusionLoss(sched, "eps", t_range=(0.01, 1.0))
    opt_g, opt_f = torch.optim.Adam(G.parameters(), lr=1e-3), torch.optim.Adam(fake_net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(100 + seed)
    omega = lambda t: sched.sigma(t) ** 2 / sched.alpha(t) ** 2
    lo, hi = t_range
    for _ in trange(S["dmd_steps"], desc=f"VSD t in {t_range}, regression {lam}", mininterval=2):
        for _ in range(S["fake_per_step"]):                    # fake-score phase: DSM on G's current samples
            with torch.no_grad():
                x_fake = G(samplers.sample_prior(sched, (S["batch"], 2), g))
            loss_f = dsm(fake_net, x_fake, generator=g)
            opt_f.zero_grad(), loss_f.backward(), opt_f.step()
        x = G(samplers.sample_prior(sched, (S["batch"], 2), g))   # generator phase: Eq. 10.2.2
        eps = torch.randn(x.shape, generator=g)
        t = lo + (hi - lo) * torch.rand(S["batch"], generator=g)
        loss = D.vsd_loss(x, t, eps, fake.score, teacher.score, sched, weight=omega)
        if lam:                                                  # DMD: regress on (z, teacher ODE(z)) pairs
            k = torch.randint(0, n_reg, (64,), generator=g)
            loss = loss + lam * ((G(z_kd[k]) - y_kd[k]) ** 2).sum(1).mean()
        opt_g.zero_grad(), loss.backward(), opt_g.step()
    return G


dmd_runs, dmd_cov = {}, {}
for name, t_range, lam in (("VSD (learned), all t", (0.02, 0.98), 0.0), ("VSD (learned), t <= 0.3", (0.02, 0.3), 0.0),
                           ("DMD: VSD + regression", (0.02, 0.98), 1.0)):
    G = train_vsd(t_range, lam)
    with torch.no_grad():
        dmd_runs[name] = G(z).double()
    dmd_cov[name] = dmd_modes_covered(dmd_runs[name])
    results[name] = {1: measure(dmd_runs[name], x_teacher)}
    show(f"{name} ({dmd_cov[name]}/8)", results[name][1])
print(f"KD student, for comparison: {dmd_modes_covered(flowmaps.sample_flow_map(kd_student, z, schedules.uniform_grid(1)).detach())}/8 modes")
vsd_all, dmd = "VSD (learned), all t", "DMD: VSD + regression"
assert dmd_cov[vsd_all] < 8 and dmd_cov[dmd] > dmd_cov[vsd_all]     # reverse KL drops modes; regression restores
assert dmd_cov["VSD (learned), t <= 0.3"] > dmd_cov[vsd_all]                # which setting drops modes: the full range here
assert results[dmd][1]["ratio"] < min(2 * teacher64["ratio"], results[vsd_all][1]["ratio"])
assert results[dmd][1]["err_exact"] < results[vsd_all][1]["err_exact"]
config.record(nb10_learned_vsd_modes=dmd_cov[vsd_all], nb10_learned_dmd_modes=dmd_cov[dmd],
              nb10_learned_dmd_sw_ratio=results[dmd][1]["ratio"], nb10_learned_vsd_sw_ratio=results[vsd_all][1]["ratio"])

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
for ax, (name, x) in zip(axes, dmd_runs.items()):
    plotting.plot_samples(x[:1500], ax=ax, s=2, lim=3.2, title=f"{name}\n{dmd_cov[name]}/8 modes, "
                          f"SW/floor {results[name][1]['ratio']:.2f}")
fig.tight_layout()

# %% [markdown]
# With the whole range of $t$, the learned loop collapses onto a few modes: the reverse KL charges the generator
# for mass where the teacher has none, never for modes it misses, and once the fake score has followed the
# generator nothing pulls it back. Here, started from scratch, the low-noise setting covers more modes than
# the full range (the reverse of the point-generator above, which started on one mode): which setting drops
# modes depends on where the generator starts, a sign of how weak the pull between separated modes is.
# DMD's regression term, a few hundred teacher ODE pairs, anchors each region of the prior to its mode and
# restores coverage and the distance to the data; its map error against the exact flow map falls too, since the
# regression pins where each $z$ lands. The rows join the closing table below.

# %% [markdown]
# ## 8. Closing table
#
# Every student at 1, 2 and 4 steps (where it has them; the VSD/DMD generators are one-step) against the teacher at 64 steps. Ratio: SW distance
# to the data over the data-vs-data noise floor; errors: mean distance from the exact map and from the
# teacher's 64-step map, on the same noise draws.

# %%
print(f"{'method':26s} {'steps':>5s} {'SW/floor':>9s} {'x teacher64':>12s} {'err vs exact':>13s} {'err vs teacher':>15s}")
print(f"{'teacher DDIM':26s} {64:5d} {teacher64['ratio']:9.2f} {1.0:12.2f} {teacher64['err_exact']:13.3f} {0.0:15.3f}")
for name, row in results.items():
    for n, m in sorted(row.items()):
        print(f"{name:26s} {n:5d} {m['ratio']:9.2f} {m['ratio'] / teacher64['ratio']:12.2f} "
              f"{m['err_exact']:13.3f} {m['err_teacher']:15.3f}")
one_step = {name: row[1]["ratio"] for name, row in results.items() if name != "teacher DDIM"}
best = min(one_step, key=one_step.get)
print(f"best one-step student: {best}, {one_step[best] / teacher64['ratio']:.2f}x the teacher-64 ratio")
assert one_step[best] < 2 * teacher64["ratio"]
config.record(nb10_best_one_step_over_teacher64=one_step[best] / teacher64["ratio"])

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (the two-step target is DDIM's inverse).** Write two functions of a batch `x_s` (float64, shape
# (B, 2)) and float times `s > t`: `ddim_jump(x_s, s, t, x0_hat)`, the DDIM step from $(x_s, s)$ to $t$ made with the
# given $\hat x_0$ (and $\hat\epsilon = (x_s - \alpha_s\hat x_0)/\sigma_s$), and `x0_from_jump(x_s, s, x_t, t)`, Lemma 10.3.1's
# $\tilde x$. Show by algebra that the second inverts the first: for any $\hat x_0$, `x0_from_jump(x_s, s,
# ddim_jump(x_s, s, t, x0_hat), t)` returns `x0_hat`; check it numerically for random $\hat x_0$ at $(s, t) = (0.8, 0.3)$.

# %% tags=["solution"]
# Algebra: x_t = (a_t - s_t a_s / s_s) x0 + (s_t / s_s) x_s; solve for x0 and multiply by s_s:
# x0 = (s_s x_t - s_t x_s) / (a_t s_s - a_s s_t), which is Lemma 10.3.1's x~.
def ddim_jump(x_s, s, t, x0_hat):
    a_s, s_s, a_t, s_t = (float(v) for v in (sched.alpha(s), sched.sigma(s), sched.alpha(t), sched.sigma(t)))
    return a_t * x0_hat + s_t * (x_s - a_s * x0_hat) / s_s


def x0_from_jump(x_s, s, x_t, t):
    a_s, s_s, a_t, s_t = (float(v) for v in (sched.alpha(s), sched.sigma(s), sched.alpha(t), sched.sigma(t)))
    return (s_s * x_t - s_t * x_s) / (a_t * s_s - a_s * s_t)


x_s1 = mix.sample(500, torch.Generator().manual_seed(11), t=0.8, schedule=sched)[0]
x0_any = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
roundtrip = float((x0_from_jump(x_s1, 0.8, ddim_jump(x_s1, 0.8, 0.3, x0_any), 0.3) - x0_any).abs().max())
print(f"max |x~ - x0| over 500 random x0 at (s, t) = (0.8, 0.3): {roundtrip:.1e} (float64)")

# %% tags=["check"]
g_check = torch.Generator().manual_seed(13)
for s_c, t_c in ((0.8, 0.3), (0.95, 0.5), (0.6, 0.0)):
    x_c = mix.sample(400, g_check, t=s_c, schedule=sched)[0]
    x0_c = 2 * torch.randn(400, 2, dtype=torch.float64, generator=g_check)
    exercises.check_close(f"ddim_jump(x_s, {s_c}, {t_c}, oracle.x0(x_s, {s_c}))", ddim_jump(x_c, s_c, t_c, oracle.x0(x_c, s_c)),
                          D.ddim_step(oracle, x_c, s_c, t_c), rtol=1e-7, atol=1e-9,
                          hint="alpha_t x0_hat + sigma_t eps_hat with eps_hat = (x_s - alpha_s x0_hat) / sigma_s: "
                               "fed the oracle's x0 it must be the oracle's DDIM step")
    exercises.check_close(f"x0_from_jump(x_s, {s_c}, ddim_jump(x_s, {s_c}, {t_c}, x0), {t_c})",
                          x0_from_jump(x_c, s_c, ddim_jump(x_c, s_c, t_c, x0_c), t_c), x0_c, rtol=1e-7, atol=1e-9,
                          hint="solve x_t = (alpha_t - sigma_t alpha_s / sigma_s) x0 + (sigma_t / sigma_s) x_s for x0 "
                               "(Lemma 10.3.1: the denominator is alpha_t sigma_s - alpha_s sigma_t)")

# %% [markdown]
# **Exercise 2 (KD with an exact teacher).** Replace the teacher's 64-step DDIM by the exact map as the KD
# target (that is the oracle loss with the single jump (1, 0)): train a one-step student on the pairs
# $(z_{\rm KD}, \Psi_{1\to0}(z_{\rm KD}))$ (the prior draws `z_kd` of Section 4) with the same budget and settings as the
# KD student, and sample it in one step from the evaluation draws `z`. Store its mean distance to the exact map
# in `err_kd_exact` (the `err_exact` of `measure`), its mean distance to the teacher's 64-step map in
# `err_kd_exact_teacher`, and the fraction of the KD student's error against the exact map that goes away,
# $1 - $ `err_kd_exact` / `kd["err_exact"]`, in `removed`.

# %% tags=["solution"]
with torch.no_grad():
    y_exact_kd = exact_map(z_kd.double(), 1.0, 0.0).float()
torch.manual_seed(0)
kd_exact_ema, _ = training.train(D.FlowMapNet(2, S["hidden"], S["depth"]), D.FlowMapRegression(sched),
                                 D.pack_pairs(z_kd, y_exact_kd, 1.0, 0.0), S["student_steps"], batch_size=S["batch"],
                                 lr=S["lr"], ema_decay=0.995, desc="KD on the exact map")
with torch.no_grad():
    kd_exact = measure(flowmaps.sample_flow_map(D.AffineStudent(kd_exact_ema, sched), z, schedules.uniform_grid(1)), x_teacher)
show("KD on the exact map", kd_exact)
show("KD on the teacher", kd)
err_kd_exact, err_kd_exact_teacher = kd_exact["err_exact"], kd_exact["err_teacher"]
removed = 1 - err_kd_exact / kd["err_exact"]
print(f"error vs exact: {kd['err_exact']:.3f} -> {err_kd_exact:.3f}: {removed:.0%} of it was the teacher's")

# %% tags=["check"]
exercises.check_between("err_kd_exact", err_kd_exact, 0.0, kd["err_exact"],
                        hint=f"trained on the exact map, the student should land closer to it than the KD student trained "
                             f"on the teacher (kd['err_exact'] = {kd['err_exact']:.3f}); measure against x_exact on the draws z")
assert err_kd_exact < err_kd_exact_teacher, (
    f"err_kd_exact = {err_kd_exact:.3f} is not below err_kd_exact_teacher = {err_kd_exact_teacher:.3f}: a student "
    "regressed on Psi_(1->0)(z_kd) never saw the teacher and should be closer to the exact map than to the teacher's. "
    "Hint: are the targets exact_map(z_kd, 1, 0) rather than the teacher's y_kd?")
# a fact of any three maps (the triangle inequality, averaged over the draws z):
# | E|G - teacher| - E|exact - teacher| | <= E|G - exact|
exercises.check_between("err_kd_exact_teacher", err_kd_exact_teacher, teacher64["err_exact"] - err_kd_exact - 1e-4,
                        teacher64["err_exact"] + err_kd_exact + 1e-4,
                        hint="mean over the draws z of |G(z) - x_teacher|, x_teacher the teacher's 64-step DDIM from the same z")
exercises.check_close("removed", removed, 1 - err_kd_exact / kd["err_exact"], rtol=1e-6,
                      hint="the fraction of the KD student's error against the exact map that goes away: 1 - new / old")

# %% [markdown]
# **Exercise 3 (PD without starting from the teacher).** Salimans & Ho start each student from its teacher's
# weights. Run the last round (2 → 1 steps, teacher `pd_students[2]` on `schedules.uniform_grid(2)`) from a freshly
# initialised `nets.MLP(2, S["hidden"], S["depth"])` instead, with the same budget and settings as the chain's rounds.
# Store the trained student as a model in `fresh_student` (`D.VPrediction(net, sched)`), the ratio of its one-step
# samples from `z` (the `ratio` of `measure`) in `fresh_ratio`, and the PD chain's one-step ratio in `chain_ratio`,
# and compare them.

# %% tags=["solution"]
loss_last = D.ProgressiveDistillationLoss(pd_students[2], schedules.uniform_grid(2))
torch.manual_seed(0)
fresh_ema, _ = training.train(nets.MLP(2, S["hidden"], S["depth"]), loss_last, data_fn, S["pd_steps"],
                              batch_size=S["batch"], lr=5e-4, ema_decay=0.99, desc="last round from scratch")
fresh_student = D.VPrediction(fresh_ema, sched)
with torch.no_grad():
    fresh = measure(flowmaps.sample_flow_map(D.DDIMMap(fresh_student), z, schedules.uniform_grid(1)), x_teacher)
fresh_ratio, chain_ratio = fresh["ratio"], pd_results[1]["ratio"]
show("PD chain, 1 step", pd_results[1])
show("last round from scratch", fresh)
# With the test profile's few hundred steps the fresh start is clearly behind; with the cpu profile's budget
# it catches up on this 2D problem: the teacher's weights are a head start (most of the map is already right),
# which matters most when each round is short, as in Salimans & Ho's schedule.

# %% tags=["check"]
with torch.no_grad():
    two_steps = flowmaps.sample_flow_map(D.DDIMMap(pd_students[2]), z, schedules.uniform_grid(2)).double()
    one_plain = flowmaps.sample_flow_map(D.DDIMMap(pd_students[2]), z, schedules.uniform_grid(1)).double()
    one_fresh = flowmaps.sample_flow_map(D.DDIMMap(fresh_student), z, schedules.uniform_grid(1)).double()
gap_fresh, gap_plain = (float((x - two_steps).norm(dim=1).mean()) for x in (one_fresh, one_plain))
exercises.check_between("mean |fresh_student, 1 step - pd_students[2], 2 steps|", gap_fresh, 0.0, 0.6 * gap_plain,
                        hint=f"the round teaches one DDIM step to do what pd_students[2] does in two; its own single step "
                             f"misses by {gap_plain:.2f}. Train on D.ProgressiveDistillationLoss(pd_students[2], uniform_grid(2))")
with torch.no_grad():
    exercises.check_close("fresh_ratio", fresh_ratio, measure(one_fresh)["ratio"], rtol=1e-6,
                          hint="measure(...)['ratio'] of fresh_student's samples from z in ONE DDIM step (uniform_grid(1))")
exercises.check_close("chain_ratio", chain_ratio, pd_results[1]["ratio"], rtol=1e-6,
                      hint="the PD chain's one-step student was measured in pd_results[1]")

# %% [markdown]
# ## Summary
#
# * Every student of this chapter approximates one object, the flow map $\Psi_{s\to t}$ of the teacher's
#   PF-ODE (§10.1). With a Gaussian mixture the exact map is available, and the **oracle loss** (Eq. 10.1.4)
#   gives the upper bound: a one-step student closer to the truth than the 64-step teacher.
# * **Knowledge distillation** regresses on the teacher's solver. Its student tracks the teacher and
#   inherits the teacher's error against the exact map; the oracle-loss student shows how much of the
#   error is the teacher's.
# * **Progressive distillation** folds two DDIM steps into one through Lemma 10.3.1, halving the steps each
#   round. At every step count it beats the teacher's plain DDIM with as many steps. In 2D its sample quality
#   holds down to one step, unlike Salimans & Ho's CIFAR-10 table, but its map drifts from the teacher's
#   round by round: the error that shows up in their one- and two-step FIDs.
# * **VSD / DMD** (§10.2) match distributions, not maps: the score-difference gradient equals the gradient of
#   the reverse KL (checked against quadrature), which seeks modes; DMD's regression term restores coverage.
#
# **Where the monograph goes next.** §10.2.3 surveys other divergences and score distillation for 3D
# (SDS); §10.3.4 distils guided models. Ch. 11 learns the flow map without a teacher's solver:
# consistency models, CTM and MeanFlow replace $\Psi$ in Eq. 10.1.4 by self-consistency (`11_flow_maps`).
