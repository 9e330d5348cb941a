# %% [markdown]
# # Chapter 11 — Learning fast generators from scratch: consistency models, CTM and MeanFlow
#
# *Companion to Ch. 11 of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# A diffusion sampler integrates the probability-flow ODE in tens of steps. Everything it computes is
# one map: the **flow map** $\Psi_{s\to t}$, which carries a point at time $s$ along the ODE to time
# $t$. A network that learns $\Psi_{s\to t}$ directly samples in one step, or in a few. Chapter 10
# distilled such a network from a trained teacher; this chapter learns it with the losses of
# Chapter 11: **consistency models** (CM, the special map $\Psi_{s\to 0}$), **consistency trajectory
# models** (CTM, the whole map) and **MeanFlow** (the average velocity along the map).
#
# On a Gaussian mixture the oracle gives the exact PF-ODE velocity, so the exact flow map is one fine
# ODE solve away: every learned map is measured against it, point by point.
#
# After this notebook you can
# * compute the exact flow map and check its semigroup property $\Psi_{u\to t}\circ\Psi_{s\to u}=\Psi_{s\to t}$;
# * write the consistency parameterisation and the CD / CT losses, measure Thm 11.2.1
#   ($\mathcal L_{\rm CD}=\mathcal L_{\rm CT}+O(\Delta s^2)$), and sample in several steps (Alg. 9);
# * train sCM on the TrigFlow path through its JVP tangent, with and without its three stabilisers;
# * write CTM's $G(x,s,t)=\tfrac ts x+(1-\tfrac ts)g$ and its $\gamma$-sampling (Alg. 11);
# * derive and check the MeanFlow identity, train it through a Jacobian-vector product, and see why
#   the share of pairs with $s=t$ matters;
# * compare every model at 1, 2 and 4 steps with a 100-step teacher and with the exact map.
#
# **Prerequisites:** Ch. 5 (flow matching, the linear path), Ch. 9 (DDIM), Ch. 10 (the flow-map interface).
#
# **Time convention.** As everywhere in this book, $t=0$ is data and $t=1$ noise, and the flow map is
# written $\Psi_{s\to t}$ with $s$ the start; a generator jumps from a large $s$ to a small $t$.
# We use the linear path $x_t=(1-t)x_0+t\varepsilon$ (Ch. 5), on which MeanFlow was introduced.
# The MeanFlow paper (Geng et al. 2025) runs its clock the same way but names the two times $(r,t)$
# with $r<t$: its $u(z_t,r,t)$ is our $h(x,s{=}t,t{=}r)$. Flow-matching code bases that run
# $t=1$ at the data (e.g. `facebookresearch/flow_matching`) use $t'=1-t$ and flip the velocity's sign.
# Exercise 1 converts.

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import copy, math, torch, matplotlib.pyplot as plt
from utils import config, schedules, data, nets, training, samplers, metrics, plotting, widgets
from utils import flowmaps, exercises
profile, device, gen = config.setup(seed=0, threads=1)   # 2D nets: one thread is the fastest
S = config.pick({
    "test": dict(hidden=64, depth=2, batch=256, lr=2e-3, cm_steps=800, cm_grid=16, mf_steps=1000,
                 ablation_steps=500, ctm_steps=600, ctm_teacher_steps=2, n_eval=4000, exact_steps=128,
                 thm_points=20000, scm_hidden=48, scm_steps=300, scm_lr=5e-3),
    "cpu": dict(hidden=128, depth=2, batch=256, lr=2e-3, cm_steps=2500, cm_grid=24, mf_steps=3000,
                ablation_steps=1500, ctm_steps=2000, ctm_teacher_steps=4, n_eval=8000, exact_steps=128,
                thm_points=50000, scm_hidden=48, scm_steps=300, scm_lr=5e-3),
})
# sCM keeps the test-sized run in `cpu`: at this deliberately large, unclipped learning rate a longer
# run drifted further from the data (one-step SW/floor about 6 at 900 steps), see Exercise 4.
S

# %% [markdown]
# ## 11.1 The flow map and its semigroup property
#
# The PF-ODE $\mathrm dx/\mathrm dt=v(x,t)$ has a solution through every point; the **flow map**
# $\Psi_{s\to t}(x)$ is where the solution through $x$ at time $s$ is at time $t$ (§11.1):
#
# $$\Psi_{s\to t}(x)=x+\int_s^t v\big(\Psi_{s\to u}(x),u\big)\,\mathrm du,\qquad
# \Psi_{s\to s}=\mathrm{id},\qquad \Psi_{u\to t}\circ\Psi_{s\to u}=\Psi_{s\to t}\quad\text{(Eq. 11.2.1)}.$$
#
# A one-step generator is $\Psi_{1\to 0}$ applied to prior samples. With the oracle's exact velocity,
# a fine ODE solve gives $\Psi$ to solver accuracy. Written out: RK4 on a grid that is fine near the
# smaller time (where the modes are sharp and the field bends). The grid moves smoothly with $s$ and
# $t$, so this solve is also differentiable in them, which §11.5 uses.

# %%
mix = data.toy_gmm("8gaussians")                          # 8 modes on a circle of radius 2, std 0.15
path = schedules.LinearPath()                             # alpha_t = 1 - t, sigma_t = t
oracle = mix.denoiser(path)                               # exact velocity at every (x, t)
draw_data = lambda n, g: mix.sample(n, g)[0].float()
sigma_data = float(mix.covariance().diagonal().mean().sqrt())

def flow_map_rk4(velocity, x, s, t, n_steps=200):
    """Psi_{s->t}(x) by RK4 on u_k = t + (s - t)(1 - k/n)^2 (fine near t); s, t: (B,) tensors."""
    w = (1 - torch.arange(n_steps + 1, dtype=x.dtype) / n_steps) ** 2
    u = t[None] + (s - t)[None] * w[:, None]               # (n + 1, B), u_0 = s, u_n = t
    for k in range(n_steps):
        h = (u[k + 1] - u[k])[:, None]
        k1 = velocity(x, u[k])
        k2 = velocity(x + h / 2 * k1, (u[k] + u[k + 1]) / 2)
        k3 = velocity(x + h / 2 * k2, (u[k] + u[k + 1]) / 2)
        k4 = velocity(x + h * k3, u[k + 1])
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x

z = torch.randn(S["n_eval"], 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
ones = torch.ones(len(z), dtype=torch.float64)
exact_map = flowmaps.ExactFlowMap(oracle, n_steps=S["exact_steps"])
x_exact = exact_map(z, 1.0, 0.0)                           # Psi_{1->0}(z): the exact one-step generator
x_mine = flow_map_rk4(oracle.velocity, z[:500], ones[:500], 0 * ones[:500])
gap = (x_mine - x_exact[:500]).norm(dim=1).max().item()
print(f"max |inline RK4 (200 steps) - ExactFlowMap ({S['exact_steps']} steps)| = {gap:.1e}")
torch.testing.assert_close(x_mine, x_exact[:500], atol=5e-3, rtol=0)

# %% [markdown]
# How exact is "exact"? Against a solve with four times the steps, and the semigroup property:
# jumping $1\to u\to 0$ must land where $1\to 0$ does, for every intermediate $u$.

# %%
fine = flowmaps.ExactFlowMap(oracle, n_steps=4 * S["exact_steps"])(z[:500], 1.0, 0.0)
solver_err = (fine - x_exact[:500]).norm(dim=1).max().item()
semigroup = {u: (exact_map(exact_map(z[:500], 1.0, u), u, 0.0) - x_exact[:500]).norm(dim=1).max().item()
             for u in (0.7, 0.3, 0.05)}
print(f"max |Psi_(1->0) - Psi_(1->0) with 4x steps| = {solver_err:.1e}")
print("semigroup  max |Psi_(u->0) o Psi_(1->u) - Psi_(1->0)|:", {u: f"{e:.1e}" for u, e in semigroup.items()})
assert solver_err < 5e-3 and max(semigroup.values()) < 1e-2
scale = x_exact.norm(dim=1).mean().item()                  # ~2: the radius of the circle of modes
config.record(nb11_exact_map_solver_error=solver_err)

# %%
coarse = flowmaps.ExactFlowMap(oracle, n_steps=8)          # short segments: fine enough for a picture
traj = [z[:2000]]
for t0, t1 in zip(torch.linspace(1, 0, 41).tolist()[:-1], torch.linspace(1, 0, 41).tolist()[1:]):
    traj.append(coarse(traj[-1], t0, t1))
traj = torch.stack(traj)                                     # (41, 2000, 2): Psi_{1->t}(z) on a grid of t
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
for ax, i in zip(axes, (0, 20, 32, 40)):
    plotting.plot_samples(traj[i], ax=ax, lim=3.5, title=f"exact $\\Psi_{{1\\to {1 - i / 40:g}}}(z)$")
axes[3].plot(traj[:, :40, 0], traj[:, :40, 1], lw=0.6, c="k", alpha=0.6)
fig.tight_layout()

# %% [markdown]
# The map is far from a straight line: points near the middle travel along curved paths and are split
# between modes late. A one-step generator must learn this map, kinks included.
#
# ## 11.2 Consistency models in discrete time
#
# A consistency model learns the special flow map $f_\theta(x,s)\approx\Psi_{s\to 0}(x)$ (§11.2). Its
# boundary condition $f(x,0)=x$ is built into the parameterisation
#
# $$f_\theta(x,s)=c_{\rm skip}(s)\,x+c_{\rm out}(s)\,F_\theta(x,s),\qquad
# c_{\rm skip}=\frac{\sigma_d^2}{\sigma_s^2+\sigma_d^2},\quad c_{\rm out}=\frac{\sigma_d\,\sigma_s}{\sqrt{\sigma_s^2+\sigma_d^2}},$$
#
# (EDM's coefficients; $\sigma_0=0$ gives $c_{\rm skip}=1$, $c_{\rm out}=0$). Training enforces
# *consistency* along the ODE: on a grid $0=s_0<s_1<\dots<s_N=1$, the outputs at two adjacent times
# of one trajectory must agree. The point at $s_i$ comes from
# * **consistency distillation (CD)**, Eq. 11.2.4: one DDIM step of a teacher from $x_{s_{i+1}}$
#   (here the teacher is the exact oracle, so CD's only error is the step's);
# * **consistency training (CT)**, Eq. 11.2.6: no teacher; $x_{s_i}$ and $x_{s_{i+1}}$ share the same
#   $(x_0,\varepsilon)$.
#
# $$\mathcal L=\mathbb E\,\frac{1}{s_{i+1}-s_i}\big\|f_\theta(x_{s_{i+1}},s_{i+1})-\mathrm{sg}\,f_\theta(\hat x_{s_i},s_i)\big\|^2 .$$
#
# The target uses the current weights without gradient (sg; iCT's choice, no EMA teacher). Written out:

# %%
def consistency_inline(F, x, s):
    sig = s                                              # sigma_s = s on the linear path
    c_skip = sigma_data ** 2 / (sig ** 2 + sigma_data ** 2)
    c_out = sigma_data * sig / torch.sqrt(sig ** 2 + sigma_data ** 2)
    return c_skip[:, None] * x + c_out[:, None] * F(x, s)

def cd_loss_inline(f, x0, teacher, grid, g):
    i = torch.randint(0, len(grid) - 1, (x0.shape[0],), generator=g)
    s_next, s_prev = grid[i].float(), grid[i + 1].float()          # adjacent times, s_next > s_prev
    eps = torch.randn(x0.shape, generator=g)
    x_next = (1 - s_next)[:, None] * x0 + s_next[:, None] * eps
    x0_hat, eps_hat = teacher.x0_eps(x_next, s_next)                # the teacher at s_{i+1} ...
    x_prev = (1 - s_prev)[:, None] * x0_hat + s_prev[:, None] * eps_hat   # ... one DDIM step to s_i
    with torch.no_grad():
        target = f(x_prev, s_prev)
    return ((f(x_next, s_next) - target) ** 2).sum(1).div(s_next - s_prev).mean()

make_cm = lambda: flowmaps.ConsistencyModel(nets.MLP(hidden=S["hidden"], depth=S["depth"],
                                                     time_embedding="fourier"), path, sigma_data)
cm_check = make_cm()
x_chk, s_chk = torch.randn(64, 2), torch.rand(64)
torch.testing.assert_close(consistency_inline(cm_check.net, x_chk, s_chk), cm_check(x_chk, s_chk))
torch.testing.assert_close(cm_check(x_chk, torch.zeros(64)), x_chk)            # f(x, 0) = x for any net
cd = flowmaps.ConsistencyLoss(path, S["cm_grid"], teacher=oracle)
x0_chk = draw_data(256, torch.Generator().manual_seed(2))
torch.testing.assert_close(cd_loss_inline(cm_check, x0_chk, oracle, cd.grid, torch.Generator().manual_seed(3)),
                           cd(cm_check, x0_chk, generator=torch.Generator().manual_seed(3)))
print("inline parameterisation and CD loss == utils.flowmaps; f(x, 0) = x;  grid:",
      [round(v, 3) for v in cd.grid.tolist()])

# %% [markdown]
# ### Thm 11.2.1, measured: CD and CT differ by $O(\Delta s^2)$
#
# With the same $(x_0,\varepsilon)$ and times, CD's point is $x_{s_{i+1}}-\Delta s\,v(x_{s_{i+1}})$
# and CT's is $x_{s_{i+1}}-\Delta s\,(\varepsilon-x_0)$: they differ by $\Delta s$ times a term with
# zero mean given $x_{s_{i+1}}$, so the first-order part of the loss difference averages out
# (App. D.5). We evaluate both losses for one fixed (untrained, hence inconsistent) network at
# several $\Delta s$, on common random numbers, and fit the slope of $|\mathcal L_{\rm CD}-\mathcal L_{\rm CT}|$.

# %%
f_thm = make_cm().double()
g = torch.Generator().manual_seed(4)
n = S["thm_points"]
x0_t, eps_t = mix.sample(n, g)[0], torch.randn(n, 2, generator=g, dtype=torch.float64)
u_t = torch.rand(n, generator=g, dtype=torch.float64)
rows = []
with torch.no_grad():
    for ds in (0.2, 0.1, 0.05, 0.025):
        s1 = ds + (1 - ds) * u_t
        s0 = s1 - ds
        x1 = (1 - s1)[:, None] * x0_t + s1[:, None] * eps_t
        x_ct = (1 - s0)[:, None] * x0_t + s0[:, None] * eps_t
        x_cd = flowmaps.ddim_step(oracle, x1, s1, s0)
        f1 = f_thm(x1, s1)
        l_cd, l_ct = ((f1 - f_thm(x_cd, s0)) ** 2).sum(1), ((f1 - f_thm(x_ct, s0)) ** 2).sum(1)
        d = l_cd - l_ct
        rows.append((ds, l_cd.mean().item(), l_ct.mean().item(), d.mean().item(), (d.std() / math.sqrt(n)).item()))
for ds, a, b, d, se in rows:
    print(f"ds={ds:<6} L_CD={a:.4f}  L_CT={b:.4f}  L_CD - L_CT = {d:+.5f} +- {se:.5f}")
log_ds = torch.tensor([[math.log(r[0]), 1.0] for r in rows])
thm_slope = torch.linalg.lstsq(log_ds, torch.tensor([[math.log(abs(r[3]))] for r in rows])).solution[0, 0].item()
print(f"fitted slope of |L_CD - L_CT| against ds: {thm_slope:.2f}  (Thm 11.2.1: 2)")
assert 1.6 < thm_slope < 2.5
assert all(abs(r[3]) > 4 * r[4] for r in rows)          # each difference is resolved, not noise
config.record(nb11_thm_11_2_1_slope=thm_slope)

# %% [markdown]
# Both losses shrink with $\Delta s$ too (the two points of a pair approach each other), but more
# slowly than their difference: in the limit CT estimates the CD objective without a teacher.
# Now train both on `8gaussians`, with the oracle as CD's teacher.

# %%
cm_models = {}
for name, teacher in (("CD", oracle), ("CT", None)):
    loss = flowmaps.ConsistencyLoss(path, S["cm_grid"], teacher=teacher)
    cm_models[name], _ = training.train(make_cm(), loss, draw_data, S["cm_steps"], batch_size=S["batch"],
                                        lr=S["lr"], ema_decay=0.99, seed=0, desc=f"consistency ({name})")

# %% [markdown]
# ### Multistep consistency sampling (Alg. 9)
#
# One step is $x_0=f_\theta(x_1,1)$. To spend more evaluations, re-noise the estimate to an
# intermediate time $t$ with fresh noise, $x_t=(1-t)x_0+t z$, and map back with $f_\theta(x_t,t)$:

# %%
def cm_sample_inline(f, x, grid, g):
    x0 = f(x, grid[0])
    for t in grid[1:-1]:
        x_t = (1 - t) * x0 + t * torch.randn(x.shape, generator=g)   # forget, and re-noise to t
        x0 = f(x_t, t)
    return x0

zf = z.float()
grid3 = [1.0, 0.6, 0.25, 0.0]
with torch.no_grad():
    mine = cm_sample_inline(cm_models["CD"], zf[:256], grid3, torch.Generator().manual_seed(5))
torch.testing.assert_close(mine, flowmaps.sample_consistency(cm_models["CD"], zf[:256], torch.tensor(grid3),
                                                              torch.Generator().manual_seed(5)))
print("inline Alg. 9 == utils.flowmaps.sample_consistency")

def ratio(x):
    return metrics.compare_to_floor(x.float(), draw_data).ratio

def err_to_exact(x):
    return (x.double() - x_exact).norm(dim=1).mean().item()

teacher_ratio = ratio(samplers.sample_euler(oracle, z, schedules.uniform_grid(100)))
euler1_err = err_to_exact(samplers.sample_euler(oracle, z, schedules.uniform_grid(1)))
step_counts = (1, 2, 4, 8)
cm_table = {name: {k: ratio(flowmaps.sample_consistency(m, zf, schedules.uniform_grid(k),
                                                        torch.Generator().manual_seed(6)))
                   for k in step_counts} for name, m in cm_models.items()}
cm_err = {name: err_to_exact(m(zf, 1.0).detach()) for name, m in cm_models.items()}
print(f"100-step Euler with the exact velocity (the teacher): SW / floor = {teacher_ratio:.2f}")
print(f"one Euler step of the exact teacher: mean |x - Psi_(1->0)| = {euler1_err:.2f}")
for name in cm_models:
    print(f"{name}: SW / floor at", {k: round(v, 2) for k, v in cm_table[name].items()},
          f" one-step mean |f(z, 1) - Psi_(1->0)(z)| = {cm_err[name]:.2f}")
assert cm_table["CD"][1] < 2.0 * teacher_ratio and cm_err["CD"] < 0.35 * euler1_err
assert cm_table["CT"][1] < 3.0 * teacher_ratio and cm_err["CT"] < 0.5 * euler1_err
config.record(nb11_cd_1step_ratio=cm_table["CD"][1], nb11_ct_1step_ratio=cm_table["CT"][1],
              nb11_teacher_ratio=teacher_ratio)

# %% [markdown]
# CD, with an exact teacher, lands its one-step samples close to the exact map; CT, with one
# noisy sample of the velocity per pair, is worse at the same budget. More steps do not help much:
# each re-noising throws the estimate away and $f_\theta$ makes a fresh error at every
# intermediate time, so the quality stops improving after a step or two (the monograph notes this
# plateau; CTM's γ-sampling in §11.4 is the fix).

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
plotting.plot_samples(x_exact[:2000], ax=axes[0], lim=3.5, title="exact $\\Psi_{1\\to0}(z)$")
with torch.no_grad():
    for ax, (name, k) in zip(axes[1:], (("CD", 1), ("CD", 4), ("CT", 1))):
        x = flowmaps.sample_consistency(cm_models[name], zf[:2000], schedules.uniform_grid(k),
                                        torch.Generator().manual_seed(6))
        plotting.plot_samples(x, ax=ax, lim=3.5, title=f"{name}, {k} step(s): SW/floor {cm_table[name][k]:.2f}")
fig.tight_layout()

# %% [markdown]
# ## 11.3 The continuous-time limit, in one check
#
# As $\Delta s\to0$ the pair $(x_{s+\Delta s},\hat x_s)$ moves along the teacher's ODE, and the CD
# residual becomes a derivative along the trajectory, the **tangent** (Eq. 11.3.1)
#
# $$\frac{f_\theta(x_{s+\Delta s},s+\Delta s)-f_\theta(\hat x_s,s)}{\Delta s}\;\longrightarrow\;
# \frac{\mathrm d}{\mathrm ds}f_\theta(x_s,s)=\partial_x f_\theta\,v(x_s,s)+\partial_s f_\theta ,$$
#
# one JVP with the tangent $(v,1)$: continuous-time CMs (and sCM) train on it instead of a finite
# difference; CT replaces the teacher's $v$ by the conditional $\alpha'_s x_0+\sigma'_s\varepsilon$
# (Eqs. 11.3.5-11.3.6). The finite difference of the trained CD model converges to its tangent at
# first order:

# %%
cm64 = copy.deepcopy(cm_models["CD"]).double()
g = torch.Generator().manual_seed(16)
s_c = 0.1 + 0.85 * torch.rand(1000, generator=g, dtype=torch.float64)
x_c = (1 - s_c)[:, None] * mix.sample(1000, g)[0] + s_c[:, None] * torch.randn(1000, 2, generator=g, dtype=torch.float64)
v_c = oracle.velocity(x_c, s_c)
_, tangent = torch.func.jvp(cm64, (x_c, s_c), (v_c, torch.ones_like(s_c)))
tangent_gap = {}
for ds in (1e-2, 1e-3, 1e-4):
    with torch.no_grad():
        fd = (cm64(x_c, s_c) - cm64(flowmaps.ddim_step(oracle, x_c, s_c, s_c - ds), s_c - ds)) / ds
    tangent_gap[ds] = ((fd - tangent).norm(dim=1) / tangent.norm(dim=1)).median().item()
print("median |CD finite difference / ds - tangent| / |tangent|:", {d: f"{r:.1e}" for d, r in tangent_gap.items()},
      f"  (|tangent| ~ {tangent.norm(dim=1).median():.2f})")
assert tangent_gap[1e-4] < 0.05 and tangent_gap[1e-4] < tangent_gap[1e-2] / 20     # first order in ds

# %% [markdown]
# ### sCM: TrigFlow, the tangent loss and its stabilisers (§11.3.3, Alg. 10)
#
# sCM (Lu & Song 2025) trains on this tangent with the **TrigFlow** path (Eq. 11.3.7)
# $x_\theta=\cos\theta\,x_0+\sin\theta\,z$, $z\sim\mathcal N(0,\sigma_d^2I)$, $\theta\in[0,\pi/2]$.
# In this book's clock it is `flowmaps.TrigFlow`: $t=2\theta/\pi\in[0,1]$, $\alpha_t=\cos\tfrac{\pi t}2$,
# $\sigma_t=\sigma_d\sin\tfrac{\pi t}2$; for data of std $\sigma_d$, $x/\sigma_d$ is a VP path with
# $\alpha=\cos$, $\sigma=\sin$ of the rescaled time, and the oracle gives its exact velocity like any
# schedule's. The parameterisation (Eq. 11.3.8)
#
# $$f_\theta(x,\theta)=\cos\theta\,x-\sin\theta\,\sigma_d\,F_\theta(x/\sigma_d,\theta)$$
#
# has $f(x,0)=x$ built in. Along the PF-ODE its tangent splits as
# $\tfrac{\mathrm d f}{\mathrm d\theta}=\cos\theta\,(\tfrac{\mathrm dx}{\mathrm d\theta}-\sigma_dF)-\sin\theta\,(x+\sigma_d\tfrac{\mathrm dF}{\mathrm d\theta})$,
# with $\tfrac{\mathrm dF}{\mathrm d\theta}$ one JVP of the net. The gradient of $\mathbb E[f_\theta\cdot\mathrm{sg}\,\tfrac{\mathrm df}{\mathrm d\theta}]$
# is that of the regression $\|F_\theta-\mathrm{sg}(F_\theta+g)\|^2$ with
# $g=\cos\theta\,[\cos\theta(\tfrac{\mathrm dx}{\mathrm d\theta}-\sigma_dF)-r\sin\theta(x+\sigma_d\tfrac{\mathrm dF}{\mathrm d\theta})]$.
# The stabilisers (Eq. 11.3.11): **tangent normalisation** $g\leftarrow g/(\|g\|+c)$; **warm-up**, $r$
# ramped from 0 to 1 on the cross term that carries the net's own JVP; **adaptive weighting**, a learned
# $w(\theta)$ in $\tfrac{e^{w}}D\|\cdot\|^2-w$. We distil (continuous-time CD) with the exact oracle's
# velocity as teacher, so $\tfrac{\mathrm dx}{\mathrm d\theta}$ is exact and free. Written out, then
# checked against `flowmaps.SCMLoss`:

# %%
trig = flowmaps.TrigFlow(sigma_data)
oracle_trig = mix.denoiser(trig)

def scm_loss_inline(model, x0, teacher, g, r, c=0.1):
    sd = sigma_data
    t = torch.atan(torch.exp(-1.0 + 1.4 * torch.randn(x0.shape[0], generator=g)) / sd) * 2 / math.pi
    th = (math.pi / 2 * t)[:, None]
    x = torch.cos(th) * x0 + torch.sin(th) * sd * torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        dx_dth = teacher.velocity(x, t) * 2 / math.pi
        F_minus, dF_dt = torch.func.jvp(lambda x_, t_: model.net(x_ / sd, t_), (x, t), (dx_dth * math.pi / 2, torch.ones_like(t)))
        gt = torch.cos(th) * (torch.cos(th) * (dx_dth - sd * F_minus) - r * torch.sin(th) * (x + sd * dF_dt * 2 / math.pi))
        gt = gt / (gt.norm(dim=1, keepdim=True) + c)                            # tangent normalisation
    w = model.weight(t)[:, 0]                                                   # adaptive weighting
    sq = ((model.net(x / sd, t) - (F_minus + gt)) ** 2).sum(1) / 2
    return (torch.exp(w) * sq - w).mean()

def make_scm():
    weight = torch.nn.Sequential(nets.FourierFeatures(16, scale=1.0, seed=3), torch.nn.Linear(16, 1))
    net = nets.MLP(hidden=S["scm_hidden"], depth=2, time_embedding="fourier", fourier_scale=1.0)
    return flowmaps.SCM(net, trig, weight)

scm_chk = make_scm()
torch.testing.assert_close(scm_chk(x_chk, torch.zeros(64)), x_chk)                # f(x, 0) = x for any net
ref = flowmaps.SCMLoss(oracle_trig, warmup_steps=4)
ref.calls = 2                                                                   # r = 2 / 4 on this call
torch.testing.assert_close(scm_loss_inline(scm_chk, x0_chk, oracle_trig, torch.Generator().manual_seed(3), r=0.5),
                           ref(scm_chk, x0_chk, generator=torch.Generator().manual_seed(3)))
print("inline sCM loss (normalised, r = 0.5, adaptive) == utils.flowmaps.SCMLoss; f(x, 0) = x")

# %% [markdown]
# Four variants with the same budget, net and seed: the full recipe, and each stabiliser removed. We
# train at a deliberately large learning rate (`S["scm_lr"]`) without gradient clipping, so that an
# instability has room to show; the warm-up ramps $r$ over the first half of training. We record the
# one-step SW distance to the noise floor ($x_0=f(\sigma_d\varepsilon,\theta=\pi/2)$) and the largest
# mean tangent norm $\|g\|$ met during training (before normalisation): a blow-up shows there first.

# %%
scm_variants = {"full recipe": dict(),
                "no normalisation": dict(normalise=False),
                "no warm-up": dict(warmup=False),
                "no adaptive w": dict(adaptive=False)}
scm_table = {}
z_trig = (z * sigma_data).float()                                              # the TrigFlow prior N(0, sigma_d^2 I)
for name, opt in scm_variants.items():
    torch.manual_seed(0)
    loss = flowmaps.SCMLoss(oracle_trig, normalise=opt.get("normalise", True), adaptive=opt.get("adaptive", True),
                            warmup_steps=S["scm_steps"] // 2 if opt.get("warmup", True) else 0)
    try:
        m, hist = training.train(make_scm(), loss, draw_data, S["scm_steps"], batch_size=S["batch"], lr=S["scm_lr"],
                                 ema_decay=0.99, grad_clip=None, seed=0, desc=f"sCM ({name})")
        with torch.no_grad():
            r1 = ratio(m(z_trig, 1.0))
        diverged = not math.isfinite(r1)
    except FloatingPointError:
        r1, diverged = float("nan"), True
    scm_table[name] = dict(ratio=r1, max_tangent=max(loss.tangent_norms), last_tangent=loss.tangent_norms[-1],
                           diverged=diverged)
    if name == "full recipe":
        scm_full = m
for name, row in scm_table.items():
    print(f"{name:17s} one-step SW / floor = {row['ratio']:.2f}   tangent norm: max {row['max_tangent']:.2f}, "
          f"last {row['last_tangent']:.2f}   diverged: {row['diverged']}")
assert not scm_table["full recipe"]["diverged"] and scm_table["full recipe"]["ratio"] < 5.0
config.record(nb11_scm_1step_ratio=scm_table["full recipe"]["ratio"],
              nb11_scm_no_norm_max_tangent=scm_table["no normalisation"]["max_tangent"])

# %% [markdown]
# What each stabiliser does here. The full recipe's one-step samples are asserted within 5x the
# noise floor: a margin set from three runs (two seeds, two initialisations) whose ratios differed by
# almost 2x, so it checks that training worked, not a tight bound. (CD in §11.2 reached a lower ratio
# with a discrete-time loss and more steps; the budgets differ.) What the stabilisers are for:
# **normalisation** caps each sample's push at about one unit whatever the size of the raw tangent;
# **warm-up** keeps the net's own, initially meaningless, JVP out of the target while $F$ is still
# random; **adaptive weighting** equalises the loss scale across $	heta$. On this 2D toy none of them
# is needed: no variant diverged, the largest tangent norm stayed $O(1)$ in every run, and the
# differences between the rows are of the size a change of seed makes (in our runs the ordering of
# the rows changed from seed to seed), so we assert nothing about the variants. With an exact
# teacher and data scaled by $\sigma_d$ the tangent is well scaled by construction; the instabilities
# the stabilisers were designed for (large nets, long runs, low precision) do not appear here. Exercise 4
# pushes the learning rate and the width until one of them matters.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
plotting.plot_samples(x_exact[:2000], ax=axes[0], lim=3.5, title="exact $\\Psi_{1\\to0}(z)$")
with torch.no_grad():
    plotting.plot_samples(scm_full(z_trig[:2000], 1.0), ax=axes[1], lim=3.5,
                          title=f"sCM, one step: SW/floor {scm_table['full recipe']['ratio']:.2f}")
fig.tight_layout()

# %% [markdown]
# ## 11.4 Consistency trajectory models: the whole map
#
# CTM learns $G_\theta(x,s,t)\approx\Psi_{s\to t}(x)$ for every $s\ge t$ with the parameterisation
# (Eq. 11.4.2)
#
# $$G_\theta(x,s,t)=\frac ts\,x+\Big(1-\frac ts\Big)g_\theta(x,s,t),$$
#
# so $G(x,s,s)=x$ for any net, and $g(x,s,s)=x-s\,v(x,s)$ (Prop. 11.4.1): on the linear path that is
# exactly the denoiser $\mathbb E[x_0\mid x_s]$, which the **denoising loss** $\|g_\theta(x_s,s,s)-x_0\|^2$
# (Eq. 11.4.8) trains. The **soft consistency** loss (Eqs. 11.4.4–11.4.5) draws $t\le u<s$, lets the
# teacher carry $x_s$ to $x_u$, and asks the direct jump $s\to t$ to match the student's own jump
# $u\to t$ from there; distances are measured after a frozen jump to 0, as CTM does. The teacher is the
# oracle solved with a few RK4 steps (`ExactFlowMap(oracle, n_steps)`). Our $g_\theta$ uses the same
# $c_{\rm skip}$, $c_{\rm out}$ as the consistency model.

# %%
make_two_time = lambda: flowmaps.TwoTimeMLP(hidden=S["hidden"], depth=S["depth"])
ctm_check = flowmaps.CTM(make_two_time(), path, sigma_data)
s_c, t_c = 0.2 + 0.8 * torch.rand(64), 0.2 * torch.rand(64)
g_c = ctm_check.g(x_chk, s_c, t_c)
torch.testing.assert_close(ctm_check(x_chk, s_c, t_c), (t_c / s_c)[:, None] * x_chk + (1 - t_c / s_c)[:, None] * g_c)
torch.testing.assert_close(ctm_check(x_chk, s_c, s_c), x_chk)                 # G(x, s, s) = x for any net
print("inline CTM parameterisation == utils.flowmaps.CTM; G(x, s, s) = x")
ctm, _ = training.train(flowmaps.CTM(make_two_time(), path, sigma_data),
                        flowmaps.CTMLoss(path, oracle, teacher_steps=S["ctm_teacher_steps"]), draw_data,
                        S["ctm_steps"], batch_size=S["batch"], lr=S["lr"], ema_decay=0.99, seed=0, desc="CTM")
ctm_map = flowmaps.LearnedFlowMap(ctm, path)

# %% [markdown]
# ### γ-sampling (Alg. 11)
#
# From $t_i$, jump to $\tilde t$ with noise level $\tilde\sigma(\tilde t)=\sqrt{1-\gamma^2}\,\tilde\sigma(t_{i+1})$
# ($\tilde\sigma=\sigma/\alpha$), then re-noise forward to $t_{i+1}$. $\gamma=0$ chains deterministic
# jumps, $\gamma=1$ jumps to 0 and re-noises: consistency sampling. On the linear path
# $\tilde\sigma=t/(1-t)$, and carrying $x_{\tilde t}$ to $t_{i+1}$ by the forward kernel reads:

# %%
def gamma_sample_inline(G, x, grid, gamma, g):
    for t_i, t_next in zip(grid[:-1], grid[1:]):
        level = math.sqrt(1 - gamma ** 2) * t_next / (1 - t_next)
        t_tilde = level / (1 + level)                                   # noise level -> time
        x = G(x, t_i, t_tilde)
        if gamma > 0 and t_next > 0:                                    # forward kernel t_tilde -> t_next
            r = (1 - t_next) / (1 - t_tilde)
            x = r * x + math.sqrt(t_next ** 2 - (r * t_tilde) ** 2) * torch.randn(x.shape, generator=g)
    return x

grid4 = [1.0, 0.7, 0.4, 0.15, 0.0]
for gam in (0.0, 0.5, 1.0):
    torch.testing.assert_close(gamma_sample_inline(ctm_map, zf[:256], grid4, gam, torch.Generator().manual_seed(7)),
                               flowmaps.sample_gamma(ctm_map, zf[:256], torch.tensor(grid4), gam,
                                                     torch.Generator().manual_seed(7)), atol=1e-5, rtol=1e-5)
print("inline Alg. 11 == utils.flowmaps.sample_gamma for gamma = 0, 0.5, 1")

# %% [markdown]
# Prop. 11.4.2: with $\gamma=0$ the jumps chain along one trajectory, so more steps can only refine it
# (the error against the exact map is measurable point by point); with $\gamma=1$ each step jumps all
# the way to 0, the jumps overlap, and each re-noising adds a fresh error.

# %%
gamma_steps = (1, 2, 4, 8, 16)
gamma_table = {gam: {k: ratio(flowmaps.sample_gamma(ctm_map, zf, schedules.uniform_grid(k), gam,
                                                    torch.Generator().manual_seed(8))) for k in gamma_steps}
               for gam in (0.0, 0.5, 1.0)}
ctm_err = {k: err_to_exact(flowmaps.sample_flow_map(ctm_map, zf, schedules.uniform_grid(k))) for k in gamma_steps}
for gam, row in gamma_table.items():
    print(f"CTM gamma={gam}: SW / floor at", {k: round(v, 2) for k, v in row.items()})
print("CTM gamma=0: mean |x - Psi_(1->0)(z)| at", {k: round(v, 3) for k, v in ctm_err.items()})
assert ctm_err[16] < ctm_err[1] and ctm_err[1] < 0.35 * euler1_err
config.record(nb11_ctm_1step_ratio=gamma_table[0.0][1], nb11_ctm_1step_error=ctm_err[1],
              nb11_ctm_16step_error=ctm_err[16])

# %% [markdown]
# Read the two measurements separately. Pointwise, the γ = 0 chain moves toward the exact map as
# steps are added and then levels off at the learned map's own error: it never gets worse. In
# distribution, all three γ are close to the floor in this small 2D problem; the drift of γ = 1 at
# many steps that Prop. 11.4.2 predicts is at most a few per cent here, within the metric's noise.
# The accumulation shows clearly where the map is worse: CM's multistep sampling above is γ = 1.

# %% [markdown]
# ## 11.5 MeanFlow: the average velocity
#
# MeanFlow (§11.5) parameterises the map by the **average velocity** between $s$ and $t$ (Eq. 11.5.1)
#
# $$h(x_s,s,t)=\frac1{t-s}\int_s^t v(x_u,u)\,\mathrm du,\qquad \Psi_{s\to t}(x_s)=x_s+(t-s)\,h(x_s,s,t).$$
#
# **The sign of the one-step rule.** Put $s=T$ and $t=0$: $\Psi_{T\to0}(x_T)=x_T+(0-T)\,h=x_T-T\,h(x_T,T,0)$.
# The minus sign comes from the direction of the jump (from $T$ down to 0), so in this book's clock
# one step is $x_0=x_T-T\,h$. One extracted copy of the monograph's §11.5.2 prints "$x_T+T\,h$"; with
# $h$ the average of $v=\mathrm dx/\mathrm dt$ that would walk away from the data. The next cell
# computes $h$ by quadrature of the exact velocity along exact trajectories and checks both signs.

# %%
T, K, B = 1.0, 300, 500
u_q = T * torch.linspace(1, 0, K + 1, dtype=torch.float64) ** 2       # from T to 0, fine near 0
field = samplers.velocity_field(oracle)
x_path = [z[:B]]
for k in range(K):                                                       # the exact trajectories, by RK4
    x_path.append(samplers.rk4_step(field, x_path[-1], float(u_q[k]), float(u_q[k + 1]))[0])
v_path = torch.stack([oracle.velocity(x, float(u)) for x, u in zip(x_path, u_q)])       # (K + 1, B, 2)
du = (u_q[1:] - u_q[:-1])[:, None, None]
h_exact = ((v_path[1:] + v_path[:-1]) / 2 * du).sum(0) / (0 - T)      # trapezoid: (1/(t-s)) int_s^t v du
minus = (z[:B] - T * h_exact - x_exact[:B]).norm(dim=1).mean().item()
plus = (z[:B] + T * h_exact - x_exact[:B]).norm(dim=1).mean().item()
print(f"mean |x_T - T h - Psi_(T->0)| = {minus:.1e}     mean |x_T + T h - Psi_(T->0)| = {plus:.2f}")
assert minus < 5e-3 and plus > 1.0

# %% [markdown]
# **The MeanFlow identity.** Multiply the definition by $(t-s)$ and differentiate in $s$ along the
# trajectory ($\mathrm dx_s/\mathrm ds=v$, $t$ fixed): $-h+(t-s)\frac{\mathrm d}{\mathrm ds}h=-v$, i.e.
#
# $$h(x_s,s,t)=v(x_s,s)-(s-t)\big(\partial_x h\,v+\partial_s h\big)\qquad\text{(Eq. 11.5.3)}.$$
#
# The total derivative is one forward-mode **Jacobian-vector product** of $h$ with the tangent
# $(v,1,0)$ in $(x,s,t)$. We check the identity on the exact average velocity
# $h(x,s,t)=(\Psi_{s\to t}(x)-x)/(t-s)$, differentiating straight through the RK4 solve of §11.1
# with `torch.func.jvp`:

# %%
def h_exact_fn(x, s, t):
    return (flow_map_rk4(oracle.velocity, x, s, t, n_steps=100) - x) / (t - s)[:, None]

xs_chk = mix.sample(200, torch.Generator().manual_seed(9), t=0.7, schedule=path)[0]
s_id, t_id = torch.full((200,), 0.7, dtype=torch.float64), torch.full((200,), 0.1, dtype=torch.float64)
v_id = oracle.velocity(xs_chk, s_id)
h_id, dh_ds = flowmaps.meanflow_tangent(h_exact_fn, xs_chk, s_id, t_id, v_id)
resid = (h_id - (v_id - (s_id - t_id)[:, None] * dh_ds)).norm(dim=1)
print(f"MeanFlow identity on the exact h: max |h - (v - (s - t) dh/ds)| = {resid.max():.1e}  "
      f"(|h| ~ {h_id.norm(dim=1).mean():.2f}, |(s-t) dh/ds| ~ {((s_id - t_id)[:, None] * dh_ds).norm(dim=1).mean():.2f})")
assert resid.max() < 1e-4

# %% [markdown]
# **The loss** (Eq. 11.5.4) regresses $h_\theta$ onto the right-hand side, with the JVP under
# stop-gradient. Without a teacher, $v$ is the conditional velocity $\varepsilon-x_0$ (flow matching's
# trick: the regression's minimiser is still the marginal). Pairs $(s,t)$ are uniform on $s\ge t$,
# with a share of pairs set to $t=s$, where the loss is plain flow matching. Written out:

# %%
def meanflow_loss_inline(model, x0, equal_share, g):
    r = torch.rand(3, x0.shape[0], generator=g)
    s, t = torch.maximum(r[0], r[1]), torch.minimum(r[0], r[1])
    t = torch.where(r[2] < equal_share, s, t)                     # a share of pairs with t = s
    eps = torch.randn(x0.shape, generator=g)
    x_s = (1 - s)[:, None] * x0 + s[:, None] * eps
    v = eps - x0                                                  # conditional velocity, linear path
    h, dh_ds = torch.func.jvp(model.h, (x_s, s, t), (v, torch.ones_like(s), torch.zeros_like(t)))
    target = (v - (s - t)[:, None] * dh_ds).detach()
    return ((h - target) ** 2).sum(1).mean()

mf_check = flowmaps.MeanFlow(make_two_time(), path)
torch.testing.assert_close(meanflow_loss_inline(mf_check, x0_chk, 0.25, torch.Generator().manual_seed(10)),
                           flowmaps.MeanFlowLoss(path, 0.25)(mf_check, x0_chk, generator=torch.Generator().manual_seed(10)))
print("inline MeanFlow loss (torch.func.jvp) == utils.flowmaps.MeanFlowLoss")
mf, _ = training.train(flowmaps.MeanFlow(make_two_time(), path), flowmaps.MeanFlowLoss(path, 0.25), draw_data,
                       S["mf_steps"], batch_size=S["batch"], lr=S["lr"], ema_decay=0.99, seed=0, desc="MeanFlow")
mf_map = flowmaps.LearnedFlowMap(mf, path)

# %% [markdown]
# ### Ablation: the share of pairs with $s=t$
#
# With every pair at $s=t$ the loss is flow matching and $h_\theta(x,s,t)$ only learns $v(x,s)$:
# one step is one Euler step, which collapses onto the data mean. With no pair at $s=t$ the net
# never sees the boundary $h(x,s,s)=v$ directly. (Geng et al.'s Table 1a varies the complement, the
# share with $r\neq t$.) Two short extra runs:

# %%
ablation = {0.25: mf}
for share in (1.0, 0.0):
    ablation[share], _ = training.train(flowmaps.MeanFlow(make_two_time(), path), flowmaps.MeanFlowLoss(path, share),
                                        draw_data, S["ablation_steps"], batch_size=S["batch"], lr=S["lr"],
                                        ema_decay=0.99, seed=0, desc=f"MeanFlow, share t=s {share}")
mf_table = {share: {k: ratio(flowmaps.sample_flow_map(flowmaps.LearnedFlowMap(m, path), zf, schedules.uniform_grid(k)))
                    for k in (1, 2, 4)} for share, m in ablation.items()}
mf_err = {share: err_to_exact(flowmaps.LearnedFlowMap(m, path)(zf, 1.0, 0.0)) for share, m in ablation.items()}
for share in (1.0, 0.25, 0.0):
    print(f"share t=s {share:<4}: SW / floor at", {k: round(v, 2) for k, v in mf_table[share].items()},
          f" one-step mean |x - Psi_(1->0)| = {mf_err[share]:.2f}")
assert mf_table[1.0][1] > 2 * mf_table[0.25][1] and mf_err[1.0] > 2 * mf_err[0.25]
assert mf_err[0.0] < 0.7 * mf_err[1.0]
assert mf_err[0.25] < 0.5 * euler1_err
config.record(nb11_meanflow_1step_ratio=mf_table[0.25][1], nb11_meanflow_fm_only_1step_ratio=mf_table[1.0][1])

# %% [markdown]
# Pure flow matching (share 1) fails at one step and recovers only as steps are added (it is
# Euler's method). Pairs with $s\neq t$ are what make one step work; with none at $s=t$ the one-step
# map still works but, at this budget, is less accurate than with a quarter of them (the run is also
# shorter; the ablation's two extra runs use `ablation_steps`).

# %% [markdown]
# ### CTM and MeanFlow: one loss (§11.5.3)
#
# CTM's map is MeanFlow's with $h=(x-g)/s$: $\tfrac ts x+(1-\tfrac ts)g=x+(t-s)\tfrac{x-g}{s}$. Take CTM's soft
# consistency with an exact teacher over a short step $u=s-\delta$: the residual
# $G_\theta(x_s,s,t)-G_\theta(\Psi_{s\to u}x_s,u,t)=\delta\,\tfrac{\mathrm d}{\mathrm ds}G_\theta+O(\delta^2)$,
# and $\tfrac{\mathrm d}{\mathrm ds}G=v-h+(t-s)\tfrac{\mathrm d}{\mathrm ds}h$ is minus MeanFlow's residual.
# So, sample by sample, CTM's squared residual over $\delta^2$ tends to MeanFlow's loss (with the teacher's
# $v$). In CTM's own variable, $G-G'=(1-\tfrac ts)(g-g')$, the same quantity is
# $\big(\tfrac{s-t}{s}\big)^2\|g-g'\|^2/\delta^2$: the $1/s^2$ weight of §11.5.3, the gap $(s-t)^2$ being the one
# that $h=(G-x)/(t-s)$ divides out. Checked on the trained CTM, in float64:

# %%
ctm64 = copy.deepcopy(ctm).double()
n = 1000
g = torch.Generator().manual_seed(15)
s_r = 0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
t_r = s_r * torch.rand(n, generator=g, dtype=torch.float64)
x_r = mix.sample(n, g)[0]
x_r = (1 - s_r)[:, None] * x_r + s_r[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
v_r = oracle.velocity(x_r, s_r)
h_ctm = lambda x, s_, t_: (x - ctm64.g(x, s_, t_)) / s_[:, None]
h_r, dh_r = flowmaps.meanflow_tangent(h_ctm, x_r, s_r, t_r, v_r)
loss_mf = ((h_r - (v_r + (t_r - s_r)[:, None] * dh_r)) ** 2).sum(1).detach()      # MeanFlow, per sample
rel_gap = {}
for delta in (1e-2, 1e-3, 1e-4):
    u_r = s_r - delta
    x_u = flowmaps.ExactFlowMap(oracle, n_steps=4)(x_r, s_r, u_r)               # the teacher's short step
    with torch.no_grad():
        G_tgt = ctm64(x_u, u_r, t_r)
        g_tgt = (G_tgt - (t_r / s_r)[:, None] * x_r) / (1 - t_r / s_r)[:, None]
        loss_G = ((ctm64(x_r, s_r, t_r) - G_tgt) ** 2).sum(1) / delta ** 2
        loss_g = ((ctm64.g(x_r, s_r, t_r) - g_tgt) ** 2).sum(1) / delta ** 2
    torch.testing.assert_close(loss_g * ((s_r - t_r) / s_r) ** 2, loss_G)
    rel_gap[delta] = ((loss_G - loss_mf).abs() / loss_mf).median().item()
print("median |CTM residual^2 / delta^2 - MeanFlow loss| / MeanFlow loss:", {d: f"{r:.1e}" for d, r in rel_gap.items()})
assert rel_gap[1e-4] < 0.02 and rel_gap[1e-4] < rel_gap[1e-2] / 20

# %% [markdown]
# **Widget: choose $s$ and $t$.** Points of $p_s$ jump to time $t\le s$ with the learned MeanFlow map
# and with the exact map; the title gives the mean distance between the two.

# %%
x_w = torch.randn(1500, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)

def draw_jump(s=1.0, t=0.0):
    t = min(t, s)
    xs = mix.sample(1500, torch.Generator().manual_seed(11), t=s, schedule=path)[0] if s < 1 else x_w
    ex, lr_ = exact_map(xs, s, t), mf_map(xs.float(), s, t).double()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    plotting.plot_samples(xs, ax=axes[0], lim=3.5, color="0.6", title=f"$x_s$, s={s:.2f}")
    plotting.plot_samples(ex, ax=axes[1], lim=3.5, label="exact", title=f"jump to t={t:.2f}: "
                          f"mean |learned - exact| = {(lr_ - ex).norm(dim=1).mean():.3f}")
    plotting.plot_samples(lr_, ax=axes[1], lim=3.5, label="MeanFlow")
    axes[1].legend(loc="upper right", markerscale=5)
    fig.tight_layout()
    return fig

widgets.explore(draw_jump, {"s": (0.05, 1.0, 0.05, 1.0), "t": (0.0, 1.0, 0.05, 0.0)})

# %% [markdown]
# ## The three models against the teacher and the exact map
#
# Every model at 1, 2 and 4 evaluations: the sliced-Wasserstein ratio to the data-vs-data noise floor
# (1 is indistinguishable from data at this sample size) and, for the deterministic samplers, the mean
# distance to the exact map $\Psi_{1\to0}(z)$ from the same prior points. The teacher is 100 Euler
# steps with the exact velocity. (CM's multistep sampling re-noises, so its samples at 2 and 4 steps
# have no pointwise counterpart.)

# %%
table = {"CD (CM)": cm_table["CD"], "CT (CM)": cm_table["CT"], "CTM, gamma=0": gamma_table[0.0],
         "MeanFlow": mf_table[0.25]}
errors = {"CD (CM)": {1: cm_err["CD"]}, "CT (CM)": {1: cm_err["CT"]}, "CTM, gamma=0": ctm_err,
          "MeanFlow": {k: err_to_exact(flowmaps.sample_flow_map(mf_map, zf, schedules.uniform_grid(k))) for k in (1, 2, 4)}}
print(f"{'model':<14}" + "".join(f"{f'{k} step SW/floor':>17}" for k in (1, 2, 4)) +
      "".join(f"{f'{k} step |x-Psi|':>16}" for k in (1, 2, 4)))
for name, row in table.items():
    e = errors[name]
    print(f"{name:<14}" + "".join(f"{row[k]:>17.2f}" for k in (1, 2, 4)) +
          "".join(f"{e[k]:>16.3f}" if k in e else f"{'-':>16}" for k in (1, 2, 4)))
print(f"{'teacher (100)':<14}{teacher_ratio:>17.2f}     one Euler step of the exact field: |x-Psi| = {euler1_err:.2f}")
best1 = min(row[1] for row in table.values())
best2 = min(row[2] for row in table.values())
print(f"best one-step / teacher = {best1 / teacher_ratio:.2f},  best two-step / teacher = {best2 / teacher_ratio:.2f}")
assert best1 < 1.5 * teacher_ratio and best2 < 1.3 * teacher_ratio
config.record(nb11_best_1step_over_teacher=best1 / teacher_ratio, nb11_best_2step_over_teacher=best2 / teacher_ratio)

# %% [markdown]
# ## 11.6 Three views of a flow map, measured
#
# A flow map is characterised by any of three equations (§11.6; Boffi et al. 2025):
# * **semigroup**: $\Psi_{u\to t}\circ\Psi_{s\to u}=\Psi_{s\to t}$;
# * **Lagrangian**: $\partial_t\Psi_{s\to t}(x)=v(\Psi_{s\to t}(x),t)$ (follow the particle);
# * **Eulerian**: $\partial_s\Psi_{s\to t}(x)+\partial_x\Psi_{s\to t}(x)\,v(x,s)=0$ (the map is constant
#   along trajectories).
#
# The exact map satisfies all three; a learned one does to its error. Each residual of the learned
# MeanFlow and CTM maps is one JVP, with the oracle's $v$, at points of $p_s$ for $s=0.8$, $t=0.3$.

# %%
def residuals(net, s=0.8, t=0.3, u=0.55, n=1000):
    x = mix.sample(n, torch.Generator().manual_seed(12), t=s, schedule=path)[0].float()
    sv, tv, uv = (torch.full((n,), c) for c in (s, t, u))
    v_s = oracle.velocity(x, sv)
    with torch.no_grad():
        semi = net(net(x, sv, uv), uv, tv) - net(x, sv, tv)
    psi, d_dt = torch.func.jvp(net, (x, sv, tv), (torch.zeros_like(x), torch.zeros_like(sv), torch.ones_like(tv)))
    lagr = d_dt - oracle.velocity(psi.detach(), tv)
    _, euler = torch.func.jvp(net, (x, sv, tv), (v_s, torch.ones_like(sv), torch.zeros_like(tv)))
    return {k: r.detach().norm(dim=1).mean().item() for k, r in (("semigroup", semi), ("Lagrangian", lagr), ("Eulerian", euler))}

v_scale = oracle.velocity(mix.sample(1000, torch.Generator().manual_seed(12), t=0.3, schedule=path)[0],
                          0.3).norm(dim=1).mean().item()
res = {"MeanFlow": residuals(mf), "CTM": residuals(ctm)}
for name, r in res.items():
    print(f"{name:<9}", {k: round(v, 3) for k, v in r.items()})
print(f"(scale: mean |v| at t = 0.3 is {v_scale:.2f})")
assert all(r["semigroup"] < 0.2 * scale for r in res.values())

# %% [markdown]
# The semigroup residual is small for both: a map trained to be consistent with its own jumps
# composes well. The differential residuals are larger: they test the derivatives of the map, which
# no loss here matches directly (MeanFlow's loss contains the Eulerian derivative, but only at the
# training pairs and against a noisy conditional velocity).

# %% [markdown]
# ## Images: what one step has to close
#
# On Fashion-MNIST the teacher is the shipped class-conditional U-Net `fmnist_unet_cfg.pt` (ε-prediction on the
# VP-linear schedule, sampled at $\omega=1$, the conditional model). A flow map $\Psi_{1\to0}$ would give its PF-ODE's
# endpoint in one evaluation. Below is what the teacher itself gives at 1, 2 and 4 evaluations (DDIM for one,
# DPM-Solver++(2M) for more, on a uniform log-SNR grid whose last step lands on $t=0$; Ch. 9) against a 50-evaluation
# solution from the same noise, all with $\hat x_0$ clipped to the data range (`fid.ClippedX0`, Ch. 8): the gap a
# one-step generator trained as in §11.2-11.5 must close. It is measured three ways: the classifier-FID of the
# project's Fashion-MNIST classifier against real test images (`utils.fid`, read against the real-vs-real floor at the
# same sample size), that classifier's accuracy on the labels asked for, and the pixel distance to the 50-step
# endpoint (what a perfect flow map returns).
#
# The last rows of the table are the **one-step model** shipped beside it, `fmnist_consistency.pt`, built in the next
# cells. In the `gpu` profile both U-Nets are trained from scratch by the commands in
# `data/checkpoints/MANIFEST.json` (the one-step model distilled from the fresh teacher); in `test` and `cpu` the
# shipped weights are loaded (SHA-256 checked). Without the checkpoints or Fashion-MNIST (`data/README.md`) the
# section is skipped.

# %%
from tqdm.auto import tqdm
from utils import fid, solvers
from utils.train import image_model, missing_for_images
IMG = config.pick({
    "test": dict(n_per_class=10, nfes=(1, 2, 4), ref_nfe=50, show=10),
    "cpu": dict(n_per_class=40, nfes=(1, 2, 3, 4, 8), ref_nfe=50, show=10),
    "gpu": dict(n_per_class=500, nfes=(1, 2, 3, 4, 8, 16), ref_nfe=100, show=10),
})
need = ["fmnist_classifier.pt"] + ([] if profile == "gpu" else ["fmnist_unet_cfg.pt", "fmnist_consistency.pt"])
missing = missing_for_images(need)
IMAGES = not missing
if IMAGES:
    unet = image_model("fmnist_unet_cfg.pt", train=profile == "gpu", device=device)
    cm_img = image_model("fmnist_consistency.pt", train=profile == "gpu", device=device)
    fid_clf = image_model("fmnist_classifier.pt", device=device)
    x_train = data.load_image_dataset("fashion-mnist", "train")[0].to(device)
    x_test = data.load_image_dataset("fashion-mnist", "test")[0].to(device)
else:
    print(f"skipping the image section: {', '.join(missing)} not found (see data/README.md)")

# %%
def teacher_grid(nfe):
    """nfe evaluations: nfe steps uniform in log-SNR from t=1, the last one landing on t=0 (a denoising step)."""
    grid = schedules.log_snr_grid(unet.schedule, nfe)
    grid[-1] = 0.0
    return grid


if IMAGES:
    n_img = 10 * IMG["n_per_class"]
    y_img = torch.arange(10).repeat(IMG["n_per_class"])
    g_img = torch.Generator().manual_seed(0)
    x_ref = x_test[torch.randperm(x_test.shape[0], generator=g_img)[:n_img]]
    floor_img = sum(fid.fid_floor(x_train, x_test, fid_clf, n_img, g_img) for _ in range(3)) / 3
    few = {}
    for nfe in tqdm((*IMG["nfes"], IMG["ref_nfe"]), desc="teacher NFE"):
        x_k = fid.sample_images(fid.ClippedX0(unet), n_img, (1, 28, 28), teacher_grid(nfe), y=y_img, seed=1,
                                sampler=solvers.ddim if nfe == 1 else solvers.dpm_solver_pp_2m, device=device)
        few[nfe] = dict(x=x_k, fid=fid.classifier_fid(x_k, x_ref, fid_clf), acc=fid.classifier_accuracy(x_k, y_img, fid_clf))
    x_end = few[IMG["ref_nfe"]]["x"]
    for r in few.values():
        r["dist"] = float((r["x"] - x_end).flatten(1).norm(dim=1).mean())
    print(f"alpha at t = 1: {float(unet.schedule.alpha(1.0)):.4f}")
    print(f"n = {n_img} samples; FID floor (real vs real) {floor_img:.1f}; distance: mean L2 over the 784 pixels "
          f"(data norm ~{float(x_ref.flatten(1).norm(dim=1).mean()):.0f})")
    print(f"{'NFE':>4s} {'FID / floor':>12s} {'accuracy':>9s} {'|x - endpoint|':>15s}")
    for nfe, r in few.items():
        print(f"{nfe:4d} {r['fid'] / floor_img:12.2f} {r['acc']:9.3f} {r['dist']:15.2f}")
    fig, ax = plt.subplots(figsize=(7.5, 0.75 * (len(few)) + 0.8))
    ax.imshow(data.image_grid(torch.cat([r["x"][:IMG["show"]] for r in few.values()]), nrow=IMG["show"]), cmap="gray")
    ax.set_yticks([29 * k + 14 for k in range(len(few))], [f"{nfe} NFE" for nfe in few], fontsize=9)
    ax.set_xticks([29 * c + 14 for c in range(IMG["show"])], data.FASHION_MNIST_SHORT[:IMG["show"]], fontsize=7, rotation=30)
    ax.set_title("the teacher from the same noise and label at 1, 2, 4, ... evaluations")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# One evaluation of an ε-network at $t=1$ returns $\hat x_0=(x_1-\sigma_1\hat\epsilon)/\alpha_1$: the class's
# posterior mean *plus the network's error divided by* $\alpha_1\approx 0.007$, clipped to the data range. What comes
# out is saturated noise with the garment's outline faintly inside. Two evaluations (a stop at the middle log-SNR,
# then the posterior mean there) give a blurred, averaged garment; a few more converge on the endpoint. This is why
# the generators of this chapter do not reuse the teacher's parameterisation for the jump: a consistency model writes
# $f=c_\text{skip}(s)\,x+c_\text{out}(s)\,F_\theta$ (§11.2), MeanFlow learns the average velocity $h$ with $x_0=x_1-h$
# (§11.5), so the network's output *is* the jump and its error is not amplified near the prior. Learning to make the
# first row look like the last is the whole task.

# %%
if IMAGES:
    lo, ref = min(IMG["nfes"]), IMG["ref_nfe"]
    assert few[lo]["fid"] > 2.0 * few[ref]["fid"]                 # one step of the teacher is far from its ODE samples
    assert few[ref]["fid"] < 4.0 * floor_img                      # which are near real data
    assert few[lo]["dist"] > 2.0 * few[max(IMG["nfes"])]["dist"]  # more evaluations converge on the endpoint
    config.record(nb11_img_teacher_1nfe_fid_over_floor=few[lo]["fid"] / floor_img,
                  nb11_img_teacher_ref_fid_over_floor=few[ref]["fid"] / floor_img)

# %% [markdown]
# ### The one-step model: a consistency model distilled on the teacher's trajectories
#
# The student is a consistency model in the parameterisation of §11.2, $f_\theta(x,s,c)=c_\text{skip}(s)\,x+c_\text{out}(s)\,F_\theta(x,s,c)$
# with $f_\theta(x,0,c)=x$, where $F_\theta$ is a U-Net of the teacher's shape **started from the teacher's weights**.
# Instead of enforcing consistency between adjacent times one pair at a time (CD, Eq. 11.2.4, whose fixed point is
# the teacher's flow map $\Psi_{s\to0}$), it regresses on that fixed point directly: the training command solves
# the teacher's PF-ODE once for $N$ noises and labels (DPM-Solver++(2M), 16 steps uniform in log-SNR, $\hat x_0$
# clipped), keeps each trajectory $(x_{s_0},\dots,x_{s_{16}})$, and minimises
#
# $$\mathcal L(\theta)=\mathbb E_{k,\,\text{traj}}\big\|f_\theta(x_{s_k},s_k,c)-x_{s_{16}}\big\|^2,$$
#
# with $k=0$ (the jump from pure noise, the one-step generator) half of the time and the other grid times otherwise.
# This is the loss of §10.1 (Eq. 10.1.4) with the teacher's ODE in place of the exact map; at $k=0$ alone it is
# knowledge distillation (Luhman & Luhman 2021, Ch. 10). It costs the teacher's $16N$ evaluations once, and no
# evaluation of the teacher during training, which is what fits a CPU. The command is
#
# ```
# python -m utils.train --model consistency --teacher fmnist_unet_cfg.pt --teacher-steps 16 --trajectories 6144 ...
# ```
#
# (the whole line is in the manifest). Here is the loss, written out on a few fresh trajectories of the teacher, and
# checked against the library's version that the command trains with:

# %%
if IMAGES:
    from utils.train import teacher_grid
    spec_cm = cm_img.meta["spec"]
    grid_cm = teacher_grid(unet.schedule, spec_cm["teacher_steps"])
    g_loss = torch.Generator().manual_seed(5)
    x1 = float(unet.schedule.sigma(grid_cm[0])) * torch.randn(8, 1, 28, 28, generator=g_loss)
    y8 = torch.arange(8)
    traj = flowmaps.teacher_trajectories(fid.ClippedX0(unet), x1, grid_cm, solvers.dpm_solver_pp_2m, y=y8)
    print(f"trajectories {tuple(traj.shape)}: 8 noises x {len(grid_cm)} times (s_0 = 1, ..., s_16 = 0) x the image")
    # the loss at drawn times, inline
    g_a, g_b = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    K = len(grid_cm) - 1
    k = torch.randint(1, K, (8,), generator=g_a)                      # a grid time in 1..K-1 ...
    k = torch.where(torch.rand(8, generator=g_a) < spec_cm["p_prior"], torch.zeros_like(k), k)   # ... or the prior end
    x_s, s_k = traj[torch.arange(8), k], grid_cm[k].float()
    with torch.no_grad():
        inline = ((cm_img(x_s, s_k, y8) - traj[:, -1]) ** 2).flatten(1).mean(1).mean()
        library = flowmaps.TrajectoryDistillationLoss(grid_cm, spec_cm["p_prior"])(cm_img, traj, y8, g_b)
    torch.testing.assert_close(inline, library)
    print(f"loss on these 8 trajectories: {float(inline):.4f} (inline == flowmaps.TrajectoryDistillationLoss); "
          f"shipped after {cm_img.meta['steps']} steps ({cm_img.meta['seconds'] / 60:.0f} min) on {spec_cm['trajectories']} trajectories; "
          f"its teacher: {spec_cm['teacher']} (SHA-256 {spec_cm['teacher_sha256'][:12]}...)")

# %% [markdown]
# Now the student from the **same noise and labels** as the teacher's rows above: one evaluation ($f_\theta(x_1,1,c)$),
# and two (Alg. 9: re-noise the first answer to the middle of the grid and jump again).

# %%
if IMAGES:
    t_mid = float(grid_cm[len(grid_cm) // 2])
    cm_grids = {1: torch.tensor([1.0, 0.0], dtype=torch.float64), 2: torch.tensor([1.0, t_mid, 0.0], dtype=torch.float64)}

    def cm_sampler(model, x, grid, y=None):
        """sample_images' sampler interface for the consistency model (seeded re-noising), clipped to the data range."""
        return flowmaps.sample_consistency(model, x, grid, torch.Generator(device=x.device).manual_seed(7), y=y).clamp(-1, 1)

    one = {}
    for nfe, grid_n in cm_grids.items():
        x_k = fid.sample_images(cm_img, n_img, (1, 28, 28), grid_n, y=y_img, seed=1, sampler=cm_sampler, device=device)
        one[nfe] = dict(x=x_k, fid=fid.classifier_fid(x_k, x_ref, fid_clf), acc=fid.classifier_accuracy(x_k, y_img, fid_clf),
                        dist=float((x_k - x_end).flatten(1).norm(dim=1).mean()))
    print(f"{'model, NFE':>14s} {'FID / floor':>12s} {'accuracy':>9s} {'|x - endpoint|':>15s}")
    rows = [(f"teacher, {n}", r) for n, r in few.items()] + [(f"one-step, {n}", r) for n, r in one.items()]
    for label, r in rows:
        print(f"{label:>14s} {r['fid'] / floor_img:12.2f} {r['acc']:9.3f} {r['dist']:15.2f}")
    shown = {"teacher, 1 NFE": few[1]["x"], "teacher, 2 NFE": few[2]["x"], "one-step, 1 NFE": one[1]["x"],
             "one-step, 2 NFE": one[2]["x"], f"teacher, {IMG['ref_nfe']} NFE": x_end}
    fig, ax = plt.subplots(figsize=(7.5, 0.75 * len(shown) + 0.8))
    ax.imshow(data.image_grid(torch.cat([x[:IMG["show"]] for x in shown.values()]), nrow=IMG["show"]), cmap="gray")
    ax.set_yticks([29 * k + 14 for k in range(len(shown))], list(shown), fontsize=8)
    ax.set_xticks([29 * c + 14 for c in range(IMG["show"])], data.FASHION_MNIST_SHORT[:IMG["show"]], fontsize=7, rotation=30)
    ax.set_title("one evaluation of the distilled model against the teacher, same noise and label")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# One evaluation of the student lands near the teacher's 50-step endpoint from the same noise: its distance to it is
# well under the teacher's two-step distance, its FID is about what the teacher needs two steps for or better, and it
# keeps the label it was asked for more often than the teacher's single step (the asserts below; compare the
# four-step row in the table yourself). The distilled map is the teacher's map, errors included: this student can be no better than its teacher, only
# as good in one step. The regression leaves its own error, a slight smoothing (a squared loss averages what it
# cannot resolve, the blur of knowledge distillation). The second step of Alg. 9 re-noises the first answer and
# jumps again: it lands on *another* sample (the distance to the endpoint grows) of about the same quality, so this
# student gains little from it; a student with a larger one-step error would. The training time printed above and the
# hardware are in the manifest with the command; `tests/benchmark_images.py` measures the model at $n=500$.

# %%
if IMAGES:
    assert one[1]["fid"] < 0.5 * few[1]["fid"]                # far better than the teacher's own single step
    assert one[1]["fid"] < 1.25 * few[2]["fid"]               # about as good as two of the teacher's steps, or better
    assert one[1]["dist"] < 0.75 * few[2]["dist"]             # it learned the teacher's map, not just the data
    assert one[1]["acc"] > max(0.55, few[1]["acc"])           # and it keeps the label it was asked for
    config.record(nb11_img_one_step_fid_over_floor=one[1]["fid"] / floor_img, nb11_img_one_step_acc=one[1]["acc"],
                  nb11_img_one_step_dist=one[1]["dist"], nb11_img_teacher_2nfe_dist=few[2]["dist"])

# %% [markdown]
# ## Exercises
#
# Each answer cell is followed by a check cell: run it to test your answer.
#
# **Exercise 1 (convert MeanFlow's clock).** The MeanFlow paper writes $u(z_t,r,t)$ with $r<t$ and one step
# $z_0=z_1-u(z_1,0,1)$. A flow-matching code base with $t'=1-t$ (data at $t'=1$) writes $x_{t'}$ and a velocity
# $v'=-v$. Express both in terms of our `mf.h` and compute the one-step samples from `zf` by the paper's rule
# (`paper`) and by the flipped clock's rule (`flipped`).

# %% tags=["solution"]
# Paper: u(z_t, r, t) = our h(x, s=t, t=r); z_0 = z_1 - (1 - 0) u(z_1, 0, 1).
# Data-at-1 clock: t' = 1 - t, v' = -v, so the average velocity over [t'_a, t'_b] is -h and a
# jump from t' = 0 (noise) to t' = 1 (data) is x + (1 - 0)(-h) = x - h: the same rule.
with torch.no_grad():
    paper_u = lambda z_, r, t: mf.h(z_, t, r)                     # their (r, t) = our (t, s)
    paper = zf - 1.0 * paper_u(zf, torch.zeros(len(zf)), torch.ones(len(zf)))
    h_prime = lambda x_, t0p, t1p: -mf.h(x_, 1 - t0p, 1 - t1p)    # average of v' = -v on the flipped clock
    flipped = zf + (1.0 - 0.0) * h_prime(zf, torch.zeros(len(zf)), torch.ones(len(zf)))

# %% tags=["check"]
with torch.no_grad():
    ours = mf(zf, torch.ones(len(zf)), torch.zeros(len(zf)))     # our one step, Psi = x + (t - s) h from s=1 to t=0
for name_, value_ in (("paper", paper), ("flipped", flipped)):
    exercises.check_close(name_, value_, ours, rtol=1e-5, atol=1e-6,
                          hint="u(z, r, t) is our h with the two times swapped (h(x, s=t, t=r)); on the flipped "
                               "clock every velocity changes sign, and so does the direction of the jump")

# %% [markdown]
# **Exercise 2 (where should CM re-noise?).** With the trained CD model `cm_models["CD"]`, sample two steps from
# `zf`, re-noising to $t\in\{0.2,0.4,0.6,0.8\}$ (`flowmaps.sample_consistency` with the grid $[1, t, 0]$ and
# `torch.Generator().manual_seed(13)` for each), and store `two_step[t]` = SW / floor (`ratio`). Which is best, and
# why can't the best be at $t\to0$ or $t\to1$?

# %% tags=["solution"]
# Two steps re-noise once; too low a t leaves the first step's error in place,
# too high a t discards the first step (it is then a one-step sample again).
two_step = {}
for t_mid in (0.2, 0.4, 0.6, 0.8):
    x = flowmaps.sample_consistency(cm_models["CD"], zf, torch.tensor([1.0, t_mid, 0.0]), torch.Generator().manual_seed(13))
    two_step[t_mid] = ratio(x)
    print(f"re-noise to t={t_mid}: SW / floor = {two_step[t_mid]:.2f}")

# %% tags=["check"]
assert isinstance(two_step, dict) and sorted(two_step) == [0.2, 0.4, 0.6, 0.8], \
    f"two_step should map each of 0.2, 0.4, 0.6, 0.8 to a ratio; it has keys {sorted(two_step) if isinstance(two_step, dict) else type(two_step)}"
for t_mid in (0.2, 0.8):   # the two ends, recomputed here with the seed the question gives
    want = ratio(flowmaps.sample_consistency(cm_models["CD"], zf, torch.tensor([1.0, t_mid, 0.0]), torch.Generator().manual_seed(13)))
    exercises.check_close(f"two_step[{t_mid}]", two_step[t_mid], want, rtol=1e-4,
                          hint="grid [1, t, 0]: one jump from 1, re-noise to t by the forward kernel, one jump from t")
exercises.check_between("best two-step SW / floor", min(two_step.values()), 0.0, cm_table["CD"][1] * 1.2,
                        hint="the best re-noising time should do at least about as well as one step")

# %% [markdown]
# **Exercise 3 (γ-sampling with the exact map).** Run `flowmaps.sample_gamma` with the *exact* map
# (`flowmaps.ExactFlowMap(oracle, n_steps=32)`) from `z[:2000]` on `schedules.uniform_grid(4)` at $\gamma=0$ and
# $\gamma=1$ (generator seed 14), and store the SW / floor ratios in `gamma_ratio[0.0]`, `gamma_ratio[1.0]`. Explain
# why both are exact samplers and what this says about Prop. 11.4.2.

# %% tags=["solution"]
# The exact map carries p_s to p_t exactly, and re-noising by the forward kernel carries
# p_t~ to p_t_next exactly, so every gamma gives exact samples: error only accumulates when the jumps
# themselves are wrong (Prop. 11.4.2 is about the learned map's errors).
gamma_ratio = {}
for gam in (0.0, 1.0):
    x = flowmaps.sample_gamma(flowmaps.ExactFlowMap(oracle, n_steps=32), z[:2000], schedules.uniform_grid(4), gam,
                              torch.Generator().manual_seed(14))
    gamma_ratio[gam] = ratio(x)
    print(f"exact map, gamma={gam}: SW / floor = {gamma_ratio[gam]:.2f}")

# %% tags=["check"]
for gam in (0.0, 1.0):
    exercises.check_between(f"gamma_ratio[{gam}]", gamma_ratio[gam], 0.0, 1.6,
                            hint="with the exact map every jump is exact and the forward kernel re-noises exactly: "
                                 "the samples should be as close to the data as fresh data (a ratio near 1)")

# %% [markdown]
# **Exercise 4 (push sCM; open exploration, no check).** Rerun the sCM variants with `S["scm_lr"] = 1e-2`, then with
# a wider net. Plot `loss.tangent_norms` for the runs with and without normalisation. Which stabiliser first makes
# a visible difference, and over how many seeds does it hold?

# %% [markdown]
# ## Summary
#
# * The flow map $\Psi_{s\to t}$ is the object every fast generator learns; the oracle gives it
#   exactly, with the semigroup property checked to solver accuracy.
# * Consistency models learn $\Psi_{s\to0}$ with a built-in boundary condition. CD (with a teacher)
#   and CT (without) differ by $O(\Delta s^2)$ (Thm 11.2.1, slope measured above). Multistep
#   sampling re-noises and soon stops improving.
# * CTM learns the whole map, $G=\tfrac ts x+(1-\tfrac ts)g$; with γ = 0 more steps move its samples
#   toward the exact map.
# * MeanFlow learns the average velocity through one JVP per step; one step is $x_0=x_T-T\,h$ in this
#   book's clock. Pairs with $s\ne t$ are what make one step work. Its loss is CTM's consistency loss
#   in the limit of a short teacher step (§11.5.3), and its residual is the Eulerian one of §11.6.
# * The best one- and two-step models come within the factors of the 100-step teacher asserted above.
# * On Fashion-MNIST a consistency model started from the teacher's U-Net and regressed on the teacher's ODE
#   trajectories generates in one evaluation what the teacher needs two to four for (FID, accuracy and the distance
#   to the teacher's own endpoint, measured above).
#
# * sCM (§11.3.3) trains on the tangent of the consistency map along the PF-ODE (one JVP) on the
#   TrigFlow path (a VP path of the data scaled by $\sigma_d$). On 2D with an exact teacher it trains
#   stably with or without its stabilisers; their effects are within seed noise here.
#
# The monograph's Epilogue (Ch. 12) steps back to the principle these methods share.
