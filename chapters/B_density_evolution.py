# %% [markdown]
# # Appendix B — How densities move: change of variables, continuity and Fokker–Planck
#
# *Companion to App. B of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# A diffusion model moves *samples* with an ODE or an SDE, and what it is judged by is where their
# *density* goes. App. B is the bridge. After this notebook you can
#
# * push a density through a map with the **change-of-variables** formula, and see it become the
#   **instantaneous** change of variables $\tfrac{d}{dt}\log p_t(x_t) = -\nabla\!\cdot v$ when the map is
#   a flow (§B.1; the CNF of Ch. 5);
# * solve the **continuity equation** and the **Fokker–Planck equation** on a 1D grid and check them
#   against particles pushed by the ODE and the SDE (§B.2);
# * see Fokker–Planck as the **Wasserstein gradient flow** of a free energy: it falls along the
#   solution at the rate the theory gives (§B.3, optional).
#
# **Prerequisites:** App. A (or notebook `A_differential_equations`): Euler, RK4, Euler–Maruyama.

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import math, torch, matplotlib.pyplot as plt
from utils import config, exercises, samplers, sde, widgets
profile, device, gen = config.setup(seed=0, threads=1)
S = config.pick({
    "test": dict(n_particles=200_000, ode_steps=100, em_steps=400, n_bins=40, flow_steps=(8, 16, 32, 64),
                 gf_time=4.0),
    "cpu": dict(n_particles=1_000_000, ode_steps=200, em_steps=800, n_bins=60, flow_steps=(8, 16, 32, 64, 128),
                gf_time=6.0),
})
S

# %% [markdown]
# ## 1. From maps to flows (§B.1)
#
# If $y = T(x)$ with $T$ invertible and differentiable and $x \sim p_X$, then
#
# $$p_Y(y) = p_X(x)\,\big|\det \nabla T(x)\big|^{-1},\qquad x = T^{-1}(y).$$
#
# A 1D example: $T(x) = x + \tfrac12\sin x$ (increasing, $T' = 1 + \tfrac12\cos x \ge \tfrac12$), $x \sim \mathcal N(0,1)$.
# We invert $T$ by bisection, evaluate the formula, and compare with a histogram of pushed samples:
# every bin's count must agree with the formula's probability within Monte Carlo error
# (a z-score, count minus expected over its binomial standard deviation).

# %%
def std_normal_pdf(x):
    return torch.exp(-0.5 * x ** 2) / math.sqrt(2 * math.pi)


T_map = lambda x: x + 0.5 * torch.sin(x)
dT_map = lambda x: 1 + 0.5 * torch.cos(x)


def T_inverse(y, iters=60):
    lo, hi = y - 0.5, y + 0.5                        # T(x) - x lies in [-1/2, 1/2]
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = torch.where(T_map(mid) < y, mid, lo), torch.where(T_map(mid) < y, hi, mid)
    return 0.5 * (lo + hi)


def bin_z_scores(samples, density, lo, hi, n_bins, n_quad=100):
    """Per-bin (count/n - P(bin)) / sd, with P(bin) from the density by the trapezoid rule."""
    edges = torch.linspace(lo, hi, n_bins + 1, dtype=torch.float64)
    counts = torch.histc(samples, bins=n_bins, min=lo, max=hi)
    xq = torch.linspace(lo, hi, n_bins * n_quad + 1, dtype=torch.float64)
    pq = density(xq)
    prob = torch.stack([torch.trapezoid(pq[i * n_quad:(i + 1) * n_quad + 1], xq[i * n_quad:(i + 1) * n_quad + 1])
                        for i in range(n_bins)])
    n = samples.numel()
    return (counts / n - prob) / torch.sqrt(prob * (1 - prob) / n).clamp_min(1e-15), edges, counts / n


x_samples = torch.randn(S["n_particles"], generator=gen, dtype=torch.float64)
y_samples = T_map(x_samples)
p_Y = lambda y: std_normal_pdf(T_inverse(y)) / dT_map(T_inverse(y))
z, edges, freq = bin_z_scores(y_samples, p_Y, -3.0, 3.0, S["n_bins"])
print(f"change of variables vs {S['n_particles']} pushed samples: max |z| over {S['n_bins']} bins = {z.abs().max():.2f}")
assert z.abs().max() < 5
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.stairs(freq / (edges[1] - edges[0]), edges, label="pushed samples")
yy = torch.linspace(-3, 3, 400, dtype=torch.float64)
ax.plot(yy, p_Y(yy), "k", label=r"$p_X(T^{-1}y)/|T'|$"); ax.plot(yy, std_normal_pdf(yy), ":", label="$p_X$")
ax.set(title="change of variables", xlabel="y"); ax.legend();

# %% [markdown]
# **Maps become flows.** Compose $K$ small maps $x \mapsto x + h\,v(x)$ with $h = 1/K$: each one changes
# the log-density by $-\log|\det(I + h\nabla v)| = -h\,\nabla\!\cdot v + O(h^2)$, so as $K\to\infty$
#
# $$\frac{d}{dt}\log p_t(x_t) = -\nabla\!\cdot v(x_t),\qquad \dot x_t = v(x_t),$$
#
# the **instantaneous change of variables** a continuous normalizing flow integrates (Ch. 5, §B.1).
# Below, a 2D nonlinear field: the accumulated log-determinants of $K$ Euler maps against the
# divergence integrated along the RK4 solution; their gap shrinks like $1/K$.

# %%
def v_field(x):
    """A 2D field with non-zero, non-constant divergence. x: (B, 2)."""
    return torch.stack([-x[:, 0] + 0.8 * torch.sin(x[:, 1]), 0.5 * x[:, 1] + torch.tanh(x[:, 0]) - 0.3 * x[:, 1] ** 3], 1)


jac = torch.vmap(torch.func.jacrev(lambda x: v_field(x[None])[0]))
x_start2 = torch.randn(256, 2, generator=gen, dtype=torch.float64)


def euler_maps_logdet(K):
    x, logdet = x_start2.clone(), torch.zeros(len(x_start2), dtype=torch.float64)
    for _ in range(K):
        logdet = logdet + torch.linalg.slogdet(torch.eye(2, dtype=torch.float64) + jac(x) / K)[1]
        x = x + v_field(x) / K
    return logdet


def flow_divergence_integral(n=400):
    field = lambda s, t: ((v_field(s[0]), torch.vmap(torch.trace)(jac(s[0]))), None)
    state = (x_start2.clone(), torch.zeros(len(x_start2), dtype=torch.float64))
    for i in range(n):
        state, _ = samplers.rk4_step(field, state, i / n, (i + 1) / n)
    return state[1]


div_int = flow_divergence_integral()
gaps = [float((euler_maps_logdet(K) - div_int).abs().mean()) for K in S["flow_steps"]]
gap_order = sde.fitted_order([1 / K for K in S["flow_steps"]], gaps)
print("mean |sum log det(I + h J) - int div v dt|:", " ".join(f"{g:.2e}" for g in gaps), f"-> order {gap_order:.2f}")
assert 0.8 < gap_order < 1.3

# %% [markdown]
# ## 2. The continuity equation and Fokker–Planck on a grid (§B.2)
#
# For particles moved by $\dot x = f(x,t)$ the density obeys the **continuity equation**
# $\partial_t p + \partial_x(f p) = 0$; for $dX = f\,dt + g\,dW$ it obeys **Fokker–Planck**
#
# $$\partial_t p = -\partial_x(f p) + \tfrac{g^2}{2}\,\partial_{xx} p .$$
#
# We solve both by the method of lines: fluxes $f p - \tfrac{g^2}{2}\partial_x p$ through the faces of a
# uniform grid (central differences, zero flux at the walls, so mass is conserved), and RK4 in time
# (`sde.fokker_planck_1d`; it uses `samplers.rk4_step`). First the right-hand side written out,
# checked against the reference:

# %%
def fp_rhs(p, x, f, g, t):
    dx = float(x[1] - x[0])
    xf = 0.5 * (x[1:] + x[:-1])
    flux = f(xf, t) * 0.5 * (p[1:] + p[:-1]) - 0.5 * g ** 2 * (p[1:] - p[:-1]) / dx
    flux = torch.cat([flux.new_zeros(1), flux, flux.new_zeros(1)])
    return -(flux[1:] - flux[:-1]) / dx


x_probe = torch.linspace(-2, 2, 41, dtype=torch.float64)
p_probe = std_normal_pdf(x_probe)
torch.testing.assert_close(fp_rhs(p_probe, x_probe, lambda x, t: x - x ** 3, 0.7, 0.0),
                           sde.fokker_planck_rhs(p_probe, x_probe, lambda x, t: x - x ** 3, 0.7, 0.0))
print("inline Fokker-Planck right-hand side == sde.fokker_planck_rhs")

# %% [markdown]
# **Continuity equation vs ODE particles.** The field $f(x) = 1 + 0.6\sin 2x$ carries mass to the right,
# slowing where $\sin 2x < 0$ (density piles up there). Three answers must agree at $T = 0.8$: the grid
# solution, a histogram of particles pushed by RK4, and the log-density carried along each particle
# by the instantaneous change of variables (the method of characteristics).

# %%
gauss = lambda x, m, s: torch.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
f_cont = lambda x, t: 1 + 0.6 * torch.sin(2 * x)
div_cont = lambda x: 1.2 * torch.cos(2 * x)
T_cont, m0, s0 = 0.8, 0.0, 0.5
x_grid = torch.linspace(-3, 4, 701, dtype=torch.float64)
p_cont = sde.fokker_planck_1d(gauss(x_grid, m0, s0), x_grid, f_cont, 0.0, 0.0, T_cont, 800)
mass_0, mass_T = (float(p.sum() * (x_grid[1] - x_grid[0])) for p in (gauss(x_grid, m0, s0), p_cont))
print(f"mass on the grid: {mass_0:.12f} at t = 0, {mass_T:.12f} at t = {T_cont}")
assert abs(mass_T - mass_0) < 1e-12

x0_part = m0 + s0 * torch.randn(S["n_particles"], generator=gen, dtype=torch.float64)
state = (x0_part.clone(), torch.log(gauss(x0_part, m0, s0)))
char_field = lambda s, t: ((f_cont(s[0], t), -div_cont(s[0])), None)
for i in range(S["ode_steps"]):
    state, _ = samplers.rk4_step(char_field, state, i * T_cont / S["ode_steps"], (i + 1) * T_cont / S["ode_steps"])
x_T, logp_char = state


def interp(xq, x, p):
    """Linear interpolation of grid values p(x) at the points xq."""
    i = torch.searchsorted(x, xq).clamp(1, len(x) - 1)
    w = (xq - x[i - 1]) / (x[i] - x[i - 1])
    return (1 - w) * p[i - 1] + w * p[i]


p_grid_at_particles = interp(x_T, x_grid, p_cont)
bulk = p_grid_at_particles > 0.05
char_gap = float((p_grid_at_particles[bulk].log() - logp_char[bulk]).abs().max())
z_cont, edges_c, freq_c = bin_z_scores(x_T, lambda q: interp(q, x_grid, p_cont), -1.0, 3.0, S["n_bins"])
print(f"grid vs characteristics: max |log p gap| = {char_gap:.1e} where p > 0.05;  "
      f"grid vs particle histogram: max |z| = {z_cont.abs().max():.2f}")
assert char_gap < 0.01 and z_cont.abs().max() < 5

# %% [markdown]
# **Fokker–Planck vs SDE particles.** A double well, $f = -V'(x)$ with $V(x) = x^4/4 - x^2/2$, and noise
# $g = 0.8$, started at $\mathcal N(0, 0.5^2)$ on the hill top: the density splits into the two wells.
# Particles by Euler–Maruyama with `S["em_steps"]` steps (its weak error is then below the Monte Carlo error).

# %%
V = lambda x: x ** 4 / 4 - x ** 2 / 2
f_dw = lambda x, t: x - x ** 3
g_dw, T_fp = 0.8, 1.5
x_fp = torch.linspace(-2.5, 2.5, 251, dtype=torch.float64)
fp_steps = lambda T, g: max(10, math.ceil(1.05 * T * g ** 2 / float(x_fp[1] - x_fp[0]) ** 2))   # dt <= dx^2/g^2
p_fp = sde.fokker_planck_1d(gauss(x_fp, m0, s0), x_fp, f_dw, g_dw, 0.0, T_fp, fp_steps(T_fp, g_dw))
chunk = 100_000                                                  # particles per batch: bounded memory
x_em = torch.cat([sde.euler_maruyama(f_dw, lambda x, t: g_dw, m0 + s0 * torch.randn(chunk, generator=gen, dtype=torch.float64),
                                     0.0, T_fp, sde.brownian_increments(chunk, S["em_steps"], T_fp / S["em_steps"], gen))
                  for _ in range(math.ceil(S["n_particles"] / chunk))])[: S["n_particles"]]
z_fp, edges_f, freq_f = bin_z_scores(x_em, lambda q: interp(q, x_fp, p_fp), -2.0, 2.0, S["n_bins"])
print(f"Fokker-Planck grid vs {S['n_particles']} SDE particles: max |z| over {S['n_bins']} bins = {z_fp.abs().max():.2f}")
assert z_fp.abs().max() < 5
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].stairs(freq_c / (edges_c[1] - edges_c[0]), edges_c, label="ODE particles")
axes[0].plot(x_grid, p_cont, "k", label="continuity eq. (grid)"); axes[0].plot(x_grid, gauss(x_grid, m0, s0), ":", label="$p_0$")
axes[0].set(xlim=(-2, 3.5), title=f"continuity equation, T = {T_cont}")
axes[1].stairs(freq_f / (edges_f[1] - edges_f[0]), edges_f, label="SDE particles (EM)")
axes[1].plot(x_fp, p_fp, "k", label="Fokker–Planck (grid)"); axes[1].plot(x_fp, gauss(x_fp, m0, s0), ":", label="$p_0$")
axes[1].set(xlim=(-2.5, 2.5), title=f"Fokker–Planck, T = {T_fp}")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Turn the noise level $g$ and the time: small $g$ keeps two sharp bumps near the wells' bottoms;
# large $g$ blurs them into one.

# %%
x_widget = torch.linspace(-2.5, 2.5, 101, dtype=torch.float64)      # a coarser grid: a redraw takes about a second


def draw_fp(g=0.8, t=1.5):
    n_steps = max(10, math.ceil(1.05 * t * g ** 2 / float(x_widget[1] - x_widget[0]) ** 2))
    p = sde.fokker_planck_1d(gauss(x_widget, m0, s0), x_widget, f_dw, g, 0.0, t, n_steps)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(x_widget, gauss(x_widget, m0, s0), ":", label="$p_0$")
    ax.plot(x_widget, p, "k", label=f"$p_t$, t = {t:.1f}")
    ax.set(xlabel="x", title=f"double well, g = {g:.2f}", ylim=(0, 1.5)); ax.legend()
    return fig


widgets.explore(draw_fp, {"g": (0.3, 1.5, 0.1, 0.8), "t": (0.1, 3.0, 0.1, 1.5)})

# %% [markdown]
# ## 3. (Optional) Fokker–Planck as a Wasserstein gradient flow (§B.3)
#
# With $f = -V'$ and constant $g$, Fokker–Planck is the gradient flow, in the Wasserstein-2 geometry,
# of the **free energy** (Jordan, Kinderlehrer, Otto 1998)
#
# $$\mathcal F(p) = \int V p\,dx + \frac{g^2}{2}\int p\log p\,dx = \frac{g^2}{2}\,\mathrm{KL}(p\,\|\,\pi) + \text{const},
# \qquad \pi \propto e^{-2V/g^2},$$
#
# and it falls at the rate $\tfrac{d}{dt}\mathcal F(p_t) = -\int p_t\,\big|\partial_x\big(V + \tfrac{g^2}{2}\log p_t\big)\big|^2dx$
# (the Fisher-type dissipation). We start off-balance, $\mathcal N(1, 0.3^2)$ in the right well, and check
# that $\mathcal F$ decreases at every step, that the measured $d\mathcal F/dt$ matches the dissipation
# formula, and that $\mathrm{KL}(p_t\|\pi)$ goes to 0, exponentially fast at late times, as mass crosses the barrier.

# %%
dx_fp = float(x_fp[1] - x_fp[0])
log_pi = -2 * V(x_fp) / g_dw ** 2
log_pi = log_pi - torch.logsumexp(log_pi, 0) - math.log(dx_fp)
pi_grid = log_pi.exp()


def free_energy(p):
    p = p.clamp_min(1e-300)
    return float(((V(x_fp) * p + 0.5 * g_dw ** 2 * p * p.log()).sum() * dx_fp))


def kl_to_pi(p):
    p = p.clamp_min(1e-300)
    return float((p * (p.log() - log_pi)).sum() * dx_fp)


def dissipation(p):
    mu = V(x_fp) + 0.5 * g_dw ** 2 * p.clamp_min(1e-300).log()          # chemical potential
    grad_mu = (mu[1:] - mu[:-1]) / dx_fp
    return float((0.5 * (p[1:] + p[:-1]) * grad_mu ** 2).sum() * dx_fp)


dt_chunk = 0.05                                        # dF/dt by central differences over 2 chunks
n_chunks = round(S["gf_time"] / dt_chunk)
p = gauss(x_fp, 1.0, 0.3)
times, F_vals, KL_vals, D_vals = [0.0], [free_energy(p)], [kl_to_pi(p)], [dissipation(p)]
for k in range(n_chunks):
    p = sde.fokker_planck_1d(p, x_fp, f_dw, g_dw, k * dt_chunk, (k + 1) * dt_chunk, fp_steps(dt_chunk, g_dw))
    times.append((k + 1) * dt_chunk); F_vals.append(free_energy(p)); KL_vals.append(kl_to_pi(p)); D_vals.append(dissipation(p))
F_vals, KL_vals, D_vals = map(torch.tensor, (F_vals, KL_vals, D_vals))
assert (F_vals[1:] - F_vals[:-1] < 0).all(), "the free energy must fall at every step"
dF_dt = (F_vals[2:] - F_vals[:-2]) / (2 * dt_chunk)                      # central differences
rel = ((-dF_dt - D_vals[1:-1]) / D_vals[1:-1]).abs()
print(f"KL(p_t || pi): {KL_vals[0]:.3f} at t = 0 -> {KL_vals[n_chunks // 4]:.3f} at t = {times[n_chunks // 4]:.1f} "
      f"-> {KL_vals[-1]:.1e} at t = {times[-1]:.1f}")
print(f"F(p_t) - (g^2/2) KL(p_t||pi) is constant to {float((F_vals - 0.5 * g_dw ** 2 * KL_vals).std()):.1e}")
print(f"dF/dt vs -dissipation: median relative gap {rel.median():.1e}, max {rel.max():.1e}")
half = slice(n_chunks // 2, None)
kl_rate = -sde.fitted_order(torch.tensor(times)[half].exp(), KL_vals[half])     # slope of log KL against t
print(f"late-time decay KL ~ exp(-{kl_rate:.2f} t)")
assert kl_rate > 0.2 and KL_vals[-1] < 0.25 * KL_vals[0]
assert float((F_vals - 0.5 * g_dw ** 2 * KL_vals).std()) < 1e-6
assert rel[: n_chunks // 2].max() < 0.05                                  # while dissipation is far from 0
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].semilogy(times, KL_vals, "o-", ms=3); axes[0].set(xlabel="t", ylabel=r"KL$(p_t\|\pi)$", title="free energy falls")
axes[1].plot(x_fp, gauss(x_fp, 1.0, 0.3), ":", label="$p_0$"); axes[1].plot(x_fp, p, "k", label=f"$p_t$, t = {times[-1]:.0f}")
axes[1].plot(x_fp, pi_grid, "--", label=r"$\pi \propto e^{-2V/g^2}$"); axes[1].legend(); fig.tight_layout()
config.record(appB_fp_max_z=float(z_fp.abs().max()), appB_continuity_char_gap=char_gap,
              appB_flow_logdet_order=gap_order, appB_kl_decay_rate=kl_rate)

# %% [markdown]
# The **JKO scheme** makes the gradient-flow picture literal: $p_{k+1} = \arg\min_p \mathcal F(p) +
# W_2^2(p, p_k)/(2\tau)$ is a step of Fokker–Planck of size $\tau$. Diffusion models run the same
# dynamics for the forward process (an OU process: $V = x^2/2$ up to scaling), toward $\pi = \mathcal N(0, I)$.
#
# ## Exercises
#
# **Exercise 1 (the probability-flow ODE).** The ODE $\dot x = f - \tfrac{g^2}{2}\partial_x\log p_t$ has the
# same marginals as the SDE (Ch. 4). Show that Fokker–Planck's right-hand side at `p_fp` equals the
# continuity equation's right-hand side for this velocity, computed on the grid.

# %% tags=["solution"]
# -d_x(f p) + g^2/2 d_xx p = -d_x[(f - g^2/2 d_x log p) p], since p d_x log p = d_x p.
score = torch.gradient(p_fp.clamp_min(1e-300).log(), spacing=(x_fp,))[0]
v_pf = f_dw(x_fp, 0.0) - 0.5 * g_dw ** 2 * score
continuity_rhs = -torch.gradient(v_pf * p_fp, spacing=(x_fp,))[0]
fp_rhs_grid = sde.fokker_planck_rhs(p_fp, x_fp, f_dw, g_dw, 0.0)
inner = slice(20, -20)
gap = float((continuity_rhs - fp_rhs_grid)[inner].abs().max() / fp_rhs_grid[inner].abs().max())
print(f"relative gap between the two right-hand sides: {gap:.1e}")

# %% tags=["check"]
exercises.check_between("gap", gap, 0.0, 0.05, hint="p d_x log p = d_x p, so the two right-hand sides agree "
                        "up to the two discretizations (O(dx^2)); use the same p_fp for both")

# %% [markdown]
# **Exercise 2 (the stationary density).** Check that $\pi \propto e^{-2V/g^2}$ is a fixed point of the
# grid Fokker–Planck equation (its right-hand side is ~0), and that a Gaussian of the same mean and
# variance is not.

# %% tags=["solution"]
rhs_pi = sde.fokker_planck_rhs(pi_grid, x_fp, f_dw, g_dw, 0.0).abs().max()
var_pi = float((pi_grid * x_fp ** 2).sum() * dx_fp)
rhs_gauss = sde.fokker_planck_rhs(gauss(x_fp, 0.0, math.sqrt(var_pi)), x_fp, f_dw, g_dw, 0.0).abs().max()
print(f"max |rhs| at pi: {rhs_pi:.1e};  at the moment-matched Gaussian: {rhs_gauss:.1e}")

# %% tags=["check"]
exercises.check_between("rhs_pi / rhs_gauss", float(rhs_pi / rhs_gauss), 0.0, 1e-2,
                        hint="the flux f pi - (g^2/2) pi' vanishes for pi = exp(-2V/g^2)/Z, normalized on the grid")

# %% [markdown]
# **Exercise 3 (Hutchinson's trace).** A CNF in high dimension cannot afford $\nabla\!\cdot v = \mathrm{tr}\,\nabla v$
# exactly; it uses $\mathbb E_\epsilon[\epsilon^\top \nabla v\,\epsilon]$ with Rademacher $\epsilon$. Check that this
# estimator is unbiased for `v_field` at the points `x_start2`.

# %% tags=["solution"]
J = jac(x_start2)
eps = torch.randint(0, 2, (4000, *x_start2.shape), generator=gen).double() * 2 - 1
hutch = torch.einsum("nbi,bij,nbj->nb", eps, J, eps).mean(0)
exact_div = torch.vmap(torch.trace)(J)
print(f"max |Hutchinson - trace| = {float((hutch - exact_div).abs().max()):.3f}")

# %% tags=["check"]
exercises.check_close("hutch", hutch, torch.vmap(torch.trace)(jac(x_start2)), rtol=0, atol=0.15,
                      hint="average eps^T J eps over thousands of Rademacher eps, per point")

# %% [markdown]
# ## Summary
#
# * Change of variables divides by $|\det\nabla T|$; for a flow it becomes $\tfrac{d}{dt}\log p_t(x_t) = -\nabla\!\cdot v$,
#   the limit of composing small maps (the gap fell like $1/K$ above).
# * The continuity equation moves densities with an ODE and Fokker–Planck with an SDE; a grid solution agreed with
#   the particles (every histogram bin within Monte Carlo error) and with the characteristics.
# * Fokker–Planck with a potential drift is the Wasserstein gradient flow of a free energy, $\tfrac{g^2}{2}\mathrm{KL}(p\|\pi)$
#   plus a constant: it fell at every step, at the dissipation rate, to the stationary $\pi$.
#
# **Where next.** App. C explains the $\tfrac{g^2}{2}\partial_{xx}$ term (Itô's formula) and the likelihood ratio of two SDEs (Girsanov).
