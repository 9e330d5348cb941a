# %% [markdown]
# # Chapter 4 · Diffusion Models Today: the Score SDE Framework
#
# *Companion to* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025), Ch. 4.*
#
# Ch. 2 (DDPM) and Ch. 3 (NCSN) each used a finite ladder of noise levels. Song et al. (2021) let the
# number of levels go to infinity: the noising becomes a **stochastic differential equation** (SDE), and
# sampling becomes its **time reversal**, which needs only the score $\nabla_x \log p_t$. The same marginals
# are also produced by a deterministic **probability-flow ODE** (PF-ODE), which in turn gives an **exact
# likelihood**.
#
# After this notebook you can
# * simulate the forward VP and VE SDEs with Euler–Maruyama and check that their marginals equal the
#   Gaussian kernel's $x_t = \alpha_t x_0 + \sigma_t \varepsilon$;
# * write the reverse-time SDE and the PF-ODE from $f$, $g$ and the score, and see that forward SDE,
#   reverse SDE and PF-ODE share the marginal $p_t$ at every $t$ (the "three dynamics" widget);
# * explain why, with the Fokker–Planck equation (§4.2): check it on the exact mixture, solve the Gaussian
#   example in closed form (mean, variance, the drifts of the reverse SDE and of the PF-ODE, the PF-ODE's
#   trajectories) and check Euler–Maruyama and Heun against it, and sample the whole family
#   $\mathrm{d}x = [f x - \tfrac12(1+\lambda^2) g^2 \nabla\log p_t]\,\mathrm{d}t + \lambda g\,\mathrm{d}\bar W$ that shares these marginals;
# * train a score model by continuous-time denoising score matching and sample it by reverse SDE,
#   predictor–corrector (with Song et al.'s corrector step) and PF-ODE, judged against the data-vs-data noise floor;
# * compute $\log p_0(x)$ through the PF-ODE with the instantaneous change of variables, with an exact
#   trace and with Hutchinson's estimator, and check it against the exact log-density.
#
# **Prerequisites:** Ch. 2 and Ch. 3 of the monograph (DDPM, score matching, Langevin dynamics); the
# notebooks `02_variational_vae_to_ddpm` and `03_score_ebm_to_ncsn` help but are not required.
#
# Conventions of this companion: time runs from data ($t=0$) to noise ($t=1$); the data here is a
# Gaussian mixture whose every marginal $p_t$ is known exactly (`utils.gmm`), so each claim is checked
# against the truth.

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import math, torch, matplotlib, matplotlib.ticker, matplotlib.pyplot as plt
from utils import config, schedules, targets, gmm, data, nets, losses, training, samplers, metrics, plotting, widgets
from utils import likelihood, exercises
profile, device, gen = config.setup(seed=0)
S = config.pick({
    # n: samples per quality check (20 chunks of n/20 against the data-vs-data floor)
    "test": dict(n=8000, fwd_steps=200, dyn_steps=50, train_steps=2000, batch=256, lr=2e-3, hidden=128,
                 em_steps=100, pc_steps=50, ode_steps=20, ll_n=300, ll_steps=(8, 16, 32, 64), ll_model_steps=32,
                 hutch_points=4, hutch_reps=400, gauss_n=20000, gauss_em_steps=500, gauss_ode_steps=(12, 25, 50, 100),
                 family_steps=100),
    "cpu": dict(n=8000, fwd_steps=500, dyn_steps=200, train_steps=8000, batch=512, lr=2e-3, hidden=128,
                em_steps=500, pc_steps=250, ode_steps=50, ll_n=2000, ll_steps=(8, 16, 32, 64, 128), ll_model_steps=64,
                hutch_points=8, hutch_reps=1000, gauss_n=50000, gauss_em_steps=1000, gauss_ode_steps=(12, 25, 50, 100, 200),
                family_steps=250),
})
S


# %% [markdown]
# ## 1. Forward SDEs: noise injected continuously (§4.1, §4.4)
#
# In continuous time the forward process is an Itô SDE
# $$ \mathrm{d}x_t = f(t)\,x_t\,\mathrm{d}t + g(t)\,\mathrm{d}W_t, \qquad x_0 \sim p_{\text{data}}, $$
# with a scalar drift coefficient $f$ and diffusion coefficient $g$. Started from a point $x_0$ it stays Gaussian;
# its mean $m_t$ and variance $v_t$ obey $\dot m = f m$ and $\dot v = 2 f v + g^2$. Choosing
# $$ f(t) = \frac{\dot\alpha_t}{\alpha_t}, \qquad g^2(t) = \frac{\mathrm{d}\sigma_t^2}{\mathrm{d}t} - 2 f(t)\,\sigma_t^2 $$
# makes $m_t = \alpha_t x_0$ and $v_t = \sigma_t^2$: the SDE has exactly the kernel's marginals. Two classic
# instances (Song et al. 2021):
# * **VP** (variance preserving, the limit of DDPM): $f = -\tfrac12\beta(t)$, $g^2 = \beta(t)$, $\alpha_t^2 + \sigma_t^2 = 1$;
# * **VE** (variance exploding, the limit of NCSN): $f = 0$, $g^2 = \mathrm{d}\sigma_t^2/\mathrm{d}t$, $\alpha_t = 1$.
#
# `utils.schedules` gives `schedule.f(t)` and `schedule.g2(t)`. Euler–Maruyama replaces $\mathrm{d}W$ by
# $\sqrt{\Delta t}\,z$, $z\sim\mathcal N(0,I)$:

# %%
def forward_sde(schedule, x0, grid, generator):
    """Euler–Maruyama for dx = f(t) x dt + g(t) dW on an increasing time grid; returns every state."""
    xs = [x0]
    x = x0
    for i in range(len(grid) - 1):
        t, dt = float(grid[i]), float(grid[i + 1] - grid[i])
        f, g2 = float(schedule.f(t)), float(schedule.g2(t))
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + f * x * dt + math.sqrt(g2 * dt) * z
        xs.append(x)
    return torch.stack(xs)          # (steps + 1, B, D)

mix = data.toy_gmm("8gaussians")     # 8 modes on a circle of radius 2, std 0.15: the exact oracle
vp, ve = schedules.VPLinear(), schedules.VE()
x_data = mix.sample(S["n"], gen)[0]  # float64
up = torch.linspace(0, 1, S["fwd_steps"] + 1, dtype=torch.float64)
paths = {"VP": (vp, forward_sde(vp, x_data, up, gen)), "VE": (ve, forward_sde(ve, x_data, up, gen))}
print(vp, ve)

# %% [markdown]
# The oracle knows $p_t$ exactly (`mix.sample(n, g, t=t, schedule=...)` draws from it, `mix.marginal(t, schedule)`
# is it as a mixture). We compare the simulated clouds at several $t$ with fresh draws of $p_t$: the sliced
# Wasserstein distance against the data-vs-data **noise floor** at the same sample size (ratio 1 = as
# close as two samples of the same law), and the covariance against the closed form.

# %%
check_times = [0.1, 0.5, 1.0]
fwd_ratios = {}
for name, (sched, xs) in paths.items():
    for t in check_times:
        k = int(round(t * S["fwd_steps"]))
        xt = xs[k]
        ref = lambda n, g, t=t, sched=sched: mix.sample(n, g, t=t, schedule=sched)[0]
        cmp = metrics.compare_to_floor(xt, ref)
        cov_err = float((torch.cov(xt.T) - mix.marginal(t, sched).covariance()).norm()
                        / mix.marginal(t, sched).covariance().norm())
        fwd_ratios[name, t] = cmp.ratio
        print(f"{name} t={t:.1f}: {cmp};  relative covariance error {cov_err:.3f}")
        assert cmp.ratio < 1.3, (name, t, cmp.ratio)
        assert cov_err < 0.05, (name, t, cov_err)

# %% [markdown]
# Every simulated marginal is at the noise floor (ratio below 1.3, and the covariance within 5%):
# the forward SDE and the kernel $x_t = \alpha_t x_0 + \sigma_t\varepsilon$ describe the same $p_t$. VP keeps the
# total variance near 1 + (data variance − 1)·$\alpha_t^2$; VE lets it grow to $\sigma_{\max}^2$:

# %%
fig, axes = plt.subplots(2, 3, figsize=(10.5, 6.8))
for row, (name, (sched, xs)) in zip(axes, paths.items()):
    for ax, t in zip(row, check_times):
        xt = xs[int(round(t * S["fwd_steps"]))]
        lim = 1.1 * float(xt.abs().max())
        marg = mix.marginal(t, sched)
        plotting.plot_density(marg.log_prob, ax=ax, lim=lim, cmap="Greys")
        plotting.plot_samples(xt[:1500], ax=ax, lim=lim, s=1, alpha=0.4, title=f"{name}, t={t}")
fig.suptitle("forward SDE by Euler–Maruyama (dots) over the exact marginal $p_t$ (grey)")
fig.tight_layout()

# %% [markdown]
# ## 2. Reversing time: the reverse SDE and the probability-flow ODE (§4.1)
#
# Anderson (1982) showed that the forward SDE run backwards in time is again an SDE,
# $$ \mathrm{d}x_t = \big[f(t)\,x_t - g^2(t)\,\nabla_x \log p_t(x_t)\big]\,\mathrm{d}t + g(t)\,\mathrm{d}\bar W_t, $$
# integrated from $t=1$ down to $t=0$ ($\mathrm{d}t<0$, $\bar W$ a Brownian motion in reversed time). The
# only unknown is the **score** $\nabla_x\log p_t$. Song et al. (2021) also noticed that the deterministic
# **probability-flow ODE**
# $$ \frac{\mathrm{d}x_t}{\mathrm{d}t} = f(t)\,x_t - \tfrac12 g^2(t)\,\nabla_x \log p_t(x_t) $$
# has the same Fokker–Planck equation, hence the same marginals $p_t$. Its right-hand side is the
# `velocity` of this companion ($\dot\alpha_t\,\mathbb E[x_0|x_t] + \dot\sigma_t\,\mathbb E[\varepsilon|x_t]$):
# we check the identity on the exact oracle for both schedules.

# %%
x_probe = mix.sample(500, gen)[0]
for sched in (vp, ve):
    oracle_s = mix.denoiser(sched)
    for t in (0.05, 0.4, 0.9):
        xt = mix.sample(500, gen, t=t, schedule=sched)[0]
        rhs = float(sched.f(t)) * xt - 0.5 * float(sched.g2(t)) * oracle_s.score(xt, t)
        torch.testing.assert_close(oracle_s.velocity(xt, t), rhs, rtol=1e-9, atol=1e-9)
print("PF-ODE drift f x - g^2/2 score == velocity(x, t) for VP and VE: checked")


# %% [markdown]
# The reverse SDE by Euler–Maruyama, written out (one step from $t$ to $t_{\text{next}} < t$; the last step
# returns the mean, adding no noise):

# %%
def reverse_sde(denoiser, x, grid, generator):
    """Euler–Maruyama for dx = [f x - g^2 score] dt + g dW_bar on a decreasing grid."""
    sched = denoiser.schedule
    n = len(grid) - 1
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        dt = t_next - t                                   # negative: we run backwards
        f, g2 = float(sched.f(t)), float(sched.g2(t))
        x = x + (f * x - g2 * denoiser.score(x, t)) * dt
        if i < n - 1:
            x = x + math.sqrt(g2 * -dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x

oracle = mix.denoiser(vp)            # the exact score of every p_t under VP
grid = schedules.uniform_grid(50, 1.0, 0.0)
x1 = samplers.sample_prior(vp, (500, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
mine = reverse_sde(oracle, x1, grid, torch.Generator().manual_seed(2))
ref = samplers.sample_euler_maruyama(oracle, x1, grid, generator=torch.Generator().manual_seed(2))
torch.testing.assert_close(mine, ref)
print("inline reverse SDE == samplers.sample_euler_maruyama")


# %% [markdown]
# ### Three dynamics, one family of marginals
#
# Now the three processes side by side, all with the exact score: the **forward SDE** from data, and the
# **reverse SDE** and the **PF-ODE** (Heun) from the *same* prior draws $x_1\sim\mathcal N(0, \sigma_1^2 I)$. Each is recorded on
# one time grid; at every checked $t$ each cloud is compared with $p_t$ itself.

# %%
n_dyn = S["dyn_steps"]
down = schedules.uniform_grid(n_dyn, 1.0, 0.0)                  # noise -> data
fwd = forward_sde(vp, x_data, down.flip(0), gen).flip(0)       # index k <-> time down[k]
x1 = samplers.sample_prior(vp, (S["n"], 2), gen, dtype=torch.float64)
rec_sde, rec_ode = samplers.Recorder(), samplers.Recorder()
samplers.sample_euler_maruyama(oracle, x1, down, generator=gen, callback=rec_sde)
samplers.sample_heun(oracle, x1, down, callback=rec_ode)
dynamics = {"forward SDE": fwd, "reverse SDE": rec_sde.xs, "PF-ODE": rec_ode.xs}
for t in (0.5, 0.0):
    k = int(round((1 - t) * n_dyn))
    ref = lambda n, g, t=t: mix.sample(n, g, t=t, schedule=vp)[0]
    line = []
    for name, xs in dynamics.items():
        cmp = metrics.compare_to_floor(xs[k], ref)
        line.append(f"{name} {cmp.ratio:.2f}")
        assert cmp.ratio < 1.35, (name, t, cmp)
    print(f"t={t:.2f}  SW / floor:  " + ",  ".join(line))


# %% [markdown]
# All three sit at the noise floor of $p_t$ at every checked time, although the paths look nothing alike:
# the forward SDE and the reverse SDE jitter, the PF-ODE glides; the reverse SDE and the PF-ODE started from the
# same points end at different data points (Section 3 shows why they must agree in law). Move the slider over $t$ (in JupyterLab; here a static
# figure at $t=0.2$, where the PF-ODE paths have travelled most of their way):

# %%
def draw_three_dynamics(t=0.2):
    k = int(round((1 - t) * n_dyn))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.9), layout="constrained")
    for ax, (name, xs), color in zip(axes, dynamics.items(), ("C0", "C3", "C2")):
        plotting.plot_density(lambda p: mix.log_prob(p, t, vp), ax=ax, cmap="Greys")
        plotting.plot_samples(xs[k, :1500], ax=ax, s=1, alpha=0.35, color=color)
        span = xs[k:].flip(0) if name == "forward SDE" else xs[:k + 1]   # the paths travelled so far
        plotting.plot_trajectories(span[:, :12], ax=ax, n_paths=12, color="k", alpha=0.6,
                                   title=f"{name} at t = {t:.2f}")
    fig.suptitle("forward SDE (from data), reverse SDE and PF-ODE (from the same noise) over the exact $p_t$")
    return fig

widgets.explore(draw_three_dynamics, {"t": (0.0, 1.0, 0.01, 0.2)})

# %% [markdown]
# ## 3. Matching marginals: the Fokker–Planck equation (§4.2)
#
# Why do such different dynamics share one family of marginals? The density $p_t$ of the forward SDE
# obeys the **Fokker–Planck equation** (FPE; §4.2, derived with Itô's formula in App. C.1)
# $$ \partial_t p_t(x) = -\nabla\!\cdot\big(f(t)\,x\,p_t(x)\big) + \tfrac12 g^2(t)\,\Delta p_t(x). $$
# Since $\Delta p = \nabla\!\cdot(p\,\nabla\log p)$, the diffusion term is itself a transport term and the FPE is a
# **continuity equation**
# $$ \partial_t p_t = -\nabla\!\cdot\big(v_t\,p_t\big), \qquad v_t(x) = f(t)\,x - \tfrac12 g^2(t)\,\nabla\log p_t(x): $$
# the deterministic flow $\dot x = v_t(x)$, the PF-ODE, moves the same $p_t$. Split the same term another way and a
# whole family appears: for every $\lambda \ge 0$ the process
# $$ \mathrm{d}x_t = \big[f(t)\,x_t - \tfrac12(1+\lambda^2)\,g^2(t)\,\nabla\log p_t(x_t)\big]\,\mathrm{d}t + \lambda\,g(t)\,\mathrm{d}\bar W_t \qquad (\mathrm{d}t < 0) $$
# run from $p_1$ has the marginals $p_t$. (In reversed time $\tau = 1-t$ its density obeys
# $\partial_\tau q = \nabla\!\cdot(b\,q) + \tfrac12\lambda^2 g^2\,\Delta q$ with $b$ the bracket; with $q = p_{1-\tau}$ the right side is
# $\nabla\!\cdot(b\,p_t + \tfrac12\lambda^2 g^2\, p_t\nabla\log p_t) = \nabla\!\cdot(v_t\,p_t) = -\partial_t p_t = \partial_\tau q$.)
# $\lambda = 1$ is Anderson's reverse SDE, $\lambda = 0$ the PF-ODE.
#
# First the equation itself, on the exact mixture. Divided by $p_t$ it reads
# $$ \partial_t \log p_t = -D f - f\,x\cdot\nabla\log p_t + \tfrac12 g^2\big(\Delta\log p_t + \|\nabla\log p_t\|^2\big), $$
# with $D=2$. The oracle gives $\log p_t$ in closed form; we take $\partial_t$ by a central difference and the
# spatial derivatives by autograd, and compare with a wrong equation (the diffusion doubled).

# %%
def fpe_sides(t, x, g2_factor=1.0, h=1e-4):
    """Left and right side of the Fokker–Planck equation in log form at points x: (B, D), time t."""
    x = x.detach().requires_grad_(True)
    s = mix.score(x, t, vp)                                          # grad log p_t, autograd-able
    lap = sum(torch.autograd.grad(s[:, d].sum(), x, retain_graph=True)[0][:, d] for d in range(x.shape[1]))
    x, s, lap = x.detach(), s.detach(), lap.detach()
    lhs = (mix.log_prob(x, t + h, vp) - mix.log_prob(x, t - h, vp)) / (2 * h)
    f, g2 = float(vp.f(t)), g2_factor * float(vp.g2(t))
    rhs = -x.shape[1] * f - f * (x * s).sum(1) + 0.5 * g2 * (lap + (s ** 2).sum(1))
    return lhs, rhs

for t in (0.05, 0.3, 0.8):
    xt = mix.sample(1000, gen, t=t, schedule=vp)[0]
    lhs, rhs = fpe_sides(t, xt)
    rel = float((lhs - rhs).abs().max() / lhs.abs().max())
    rel_wrong = float((lhs - fpe_sides(t, xt, g2_factor=2.0)[1]).abs().max() / lhs.abs().max())
    print(f"t={t:.2f}: max |residual| / max |d log p/dt| = {rel:.1e}   (with g^2 doubled: {rel_wrong:.2f})")
    assert rel < 1e-5 and rel_wrong > 0.1, (t, rel, rel_wrong)

# %% [markdown]
# ### The exact Gaussian example
#
# With data $\mathcal N(m_0, s_0^2)$ in one dimension everything is in closed form. The marginal stays Gaussian,
# $p_t = \mathcal N(m_t, v_t)$ with
# $$ m_t = \alpha_t m_0, \qquad v_t = \alpha_t^2 s_0^2 + \sigma_t^2 \qquad (\dot m = f m,\ \ \dot v = 2 f v + g^2), $$
# the score is $-(x-m_t)/v_t$, and the drifts are
# $$ \text{reverse SDE: } f x + g^2\,\frac{x-m_t}{v_t}, \qquad \text{PF-ODE: } f x + \tfrac12 g^2\,\frac{x-m_t}{v_t}. $$
# The PF-ODE can even be solved: the standardised coordinate $(x_t - m_t)/\sqrt{v_t}$ is constant along it (its time
# derivative is $\frac{x-m}{\sqrt v}\,[\,f + \tfrac{g^2}{2v} - \tfrac{\dot v}{2v}\,] = 0$), so
# $$ x_t = m_t + \sqrt{v_t / v_1}\,(x_1 - m_1): $$
# every quantile of $p_1$ travels to the same quantile of $p_t$. We take $m_0 = 1.5$, $s_0 = 0.3$ and VP, and check the
# closed-form score against the oracle of the one-component "mixture".

# %%
m0, s0 = 1.5, 0.3

def gauss_moments(t):
    """Mean and variance of p_t for data N(m0, s0^2) under VP: (alpha m0, alpha^2 s0^2 + sigma^2)."""
    a, s = float(vp.alpha(t)), float(vp.sigma(t))
    return a * m0, a ** 2 * s0 ** 2 + s ** 2

def gauss_drift(x, t, lam):
    """f x - (1 + lam^2)/2 g^2 score with the exact score -(x - m_t)/v_t (lam=1 SDE, lam=0 PF-ODE)."""
    m, v = gauss_moments(t)
    return float(vp.f(t)) * x + 0.5 * (1 + lam ** 2) * float(vp.g2(t)) * (x - m) / v

gauss = gmm.GaussianMixture([[m0]], s0)                      # the same law as a one-component oracle
xs_probe = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
for t in (0.0, 0.3, 0.9):
    m, v = gauss_moments(t)
    torch.testing.assert_close(gauss.denoiser(vp).score(xs_probe, t), -(xs_probe - m) / v)
print("closed-form score -(x - m_t)/v_t == oracle score")

# %% [markdown]
# **The reverse SDE by Euler–Maruyama**, started from the exact $p_1 = \mathcal N(m_1, v_1)$: at each checked time the
# sample mean and variance should match $m_t$ and $v_t$ within their Monte-Carlo standard errors $\sqrt{v_t/n}$ and
# $v_t\sqrt{2/(n-1)}$. (Euler–Maruyama also has a bias of order $\Delta t$; with this many steps it is below the
# standard error. Try 100 steps: the variance misses by several standard errors.)

# %%
n_g, steps_g = S["gauss_n"], S["gauss_em_steps"]
grid_g = schedules.uniform_grid(steps_g, 1.0, 0.0)
m1, v1 = gauss_moments(1.0)
x = m1 + math.sqrt(v1) * torch.randn(n_g, generator=gen, dtype=torch.float64)
gauss_paths, gauss_stats = [x[:30]], {1.0: (float(x.mean()), float(x.var()))}
for i in range(steps_g):
    t, t_next = float(grid_g[i]), float(grid_g[i + 1])
    dt = t_next - t
    x = x + gauss_drift(x, t, 1.0) * dt + math.sqrt(float(vp.g2(t)) * -dt) * torch.randn(
        n_g, generator=gen, dtype=torch.float64)
    gauss_paths.append(x[:30])
    if (i + 1) % (steps_g // 20) == 0:
        gauss_stats[round(t_next, 6)] = (float(x.mean()), float(x.var()))
gauss_paths = torch.stack(gauss_paths)                                         # (steps + 1, 30)
for t in (0.75, 0.5, 0.25, 0.0):
    m, v = gauss_moments(t)
    mean_hat, var_hat = gauss_stats[t]
    z_mean, z_var = (mean_hat - m) / math.sqrt(v / n_g), (var_hat - v) / (v * math.sqrt(2 / (n_g - 1)))
    print(f"t={t:.2f}: mean {mean_hat:.4f} vs m_t {m:.4f} ({z_mean:+.1f} SE),  "
          f"variance {var_hat:.4f} vs v_t {v:.4f} ({z_var:+.1f} SE)")
    assert abs(z_mean) < 4 and abs(z_var) < 4, (t, z_mean, z_var)

# %% [markdown]
# **The PF-ODE by Heun**, from nine quantiles of $p_1$, against the closed-form trajectory at every grid time (down to
# $t_{\min}$, where the samplers stop). Heun is second order, so the error should fall about fourfold per doubling
# of the steps; the inline solver also equals `samplers.sample_heun` with the one-component oracle.

# %%
x1_q = m1 + math.sqrt(v1) * torch.linspace(-2, 2, 9, dtype=torch.float64)      # quantiles of p_1

def heun_gauss(x, grid):
    """Heun's method for dx/dt = gauss_drift(x, t, 0); returns every state (steps + 1, B)."""
    xs = [x]
    for i in range(len(grid) - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        k1 = gauss_drift(x, t, 0.0)
        k2 = gauss_drift(x + (t_next - t) * k1, t_next, 0.0)
        x = x + 0.5 * (t_next - t) * (k1 + k2)
        xs.append(x)
    return torch.stack(xs)

def pf_ode_exact(x1, t):
    m, v = gauss_moments(t)
    return m + math.sqrt(v / v1) * (x1 - m1)

ode_errors = []
for n_steps in S["gauss_ode_steps"]:
    grid_o = schedules.uniform_grid(n_steps, 1.0, vp.t_min)
    xs_ode = heun_gauss(x1_q, grid_o)
    exact = torch.stack([pf_ode_exact(x1_q, float(t)) for t in grid_o])
    ode_errors.append(float((xs_ode - exact).abs().max()))
    print(f"Heun, {n_steps:3d} steps: max |x_t - closed form| over the path = {ode_errors[-1]:.2e}")
torch.testing.assert_close(xs_ode[-1][:, None], samplers.sample_heun(gauss.denoiser(vp), x1_q[:, None], grid_o))
steps_o = torch.tensor(S["gauss_ode_steps"], dtype=torch.float64)
slope_o = float(torch.linalg.lstsq(torch.stack([steps_o.log(), torch.ones_like(steps_o)], 1),
                                   torch.tensor(ode_errors, dtype=torch.float64).log()[:, None]).solution[0])
print(f"fitted order: error ~ steps^{slope_o:.2f} (Heun: -2);  inline Heun == samplers.sample_heun")
assert ode_errors[-1] < 2e-3 and slope_o < -1.6, (ode_errors, slope_o)
config.record(nb04_gauss_pf_ode_max_error=ode_errors[-1], nb04_gauss_pf_ode_order=slope_o)

# %%
ts_g = grid_g.numpy()
moments = torch.tensor([gauss_moments(float(t)) for t in grid_g], dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), layout="constrained")
ax = axes[0]
sd = moments[:, 1].sqrt()
ax.fill_between(ts_g, moments[:, 0] - 2 * sd, moments[:, 0] + 2 * sd, color="0.85", label="$m_t \\pm 2\\sqrt{v_t}$")
ax.plot(ts_g, gauss_paths[:, :15], color="C3", lw=0.5, alpha=0.6)
ax.plot([], [], color="C3", lw=0.8, label="reverse SDE (EM)")
ax.plot(grid_o.numpy(), xs_ode, color="C2", lw=1.5)
ax.plot(ts_g, torch.stack([pf_ode_exact(x1_q, float(t)) for t in grid_g]), "k:", lw=1)
ax.plot([], [], color="C2", label="PF-ODE (Heun)"); ax.plot([], [], "k:", label="PF-ODE closed form")
ax.set_xlabel("t"); ax.set_ylabel("x"); ax.set_title("paths: data $\\mathcal{N}(1.5, 0.3^2)$ at t = 0")
ax.legend(fontsize=8, loc="lower left")
ax = axes[1]
t_chk = sorted(gauss_stats)
ax.plot(ts_g, moments[:, 0], "C0", label="$m_t$ (closed form)")
ax.plot(ts_g, moments[:, 1], "C1", label="$v_t$ (closed form)")
ax.plot(t_chk, [gauss_stats[t][0] for t in t_chk], "o", color="C0", ms=4, mfc="none", label="reverse-SDE mean")
ax.plot(t_chk, [gauss_stats[t][1] for t in t_chk], "s", color="C1", ms=4, mfc="none", label="reverse-SDE variance")
ax.set_xlabel("t"); ax.set_title(f"moments over t ({n_g} reverse-SDE samples)"); ax.legend(fontsize=8)

# %% [markdown]
# ### One family of processes, one family of marginals
#
# Back to the 2D mixture and its exact score. One Euler–Maruyama step of the $\lambda$-process, written out, equals
# `samplers.reverse_sde_step(..., lam=)` (which `samplers.sample_euler_maruyama(..., lam=)` repeats); then we sample
# $\lambda \in \{0, \tfrac12, 1\}$ from the same prior draws and compare each cloud with the data at the noise floor.

# %%
def lambda_process(denoiser, x, grid, lam, generator, callback=None, drift_lam=None):
    """Euler–Maruyama for dx = [f x - (1 + lam^2)/2 g^2 score] dt + lam g dW_bar; last step without noise.
    drift_lam (default lam) is the lambda in the drift: any other value leaves the family."""
    sched = denoiser.schedule
    drift_lam = lam if drift_lam is None else drift_lam
    n = len(grid) - 1
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        dt = t_next - t
        f, g2 = float(sched.f(t)), float(sched.g2(t))
        x = x + (f * x - 0.5 * (1 + drift_lam ** 2) * g2 * denoiser.score(x, t)) * dt
        if lam > 0 and i < n - 1:
            x = x + lam * math.sqrt(g2 * -dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        if callback is not None:
            callback(x)
    return x

grid_f = schedules.uniform_grid(S["family_steps"], 1.0, 0.0)
x1 = samplers.sample_prior(vp, (S["n"], 2), gen, dtype=torch.float64)
torch.testing.assert_close(lambda_process(oracle, x1[:500], grid_f, 0.5, torch.Generator().manual_seed(8)),
                           samplers.sample_euler_maruyama(oracle, x1[:500], grid_f, lam=0.5,
                                                          generator=torch.Generator().manual_seed(8)))
print("inline lambda-process == samplers.sample_euler_maruyama(lam=0.5)")
family, family_paths, family_ratio = {}, {}, {}
ref0 = lambda n, g: mix.sample(n, g)[0]
for lam in (0.0, 0.5, 1.0):
    steps = []
    family[lam] = lambda_process(oracle, x1, grid_f, lam, torch.Generator().manual_seed(9),
                                 callback=lambda x: steps.append(x[:12]))
    family_paths[lam] = torch.stack([x1[:12], *steps])
    family_ratio[lam] = metrics.compare_to_floor(family[lam], ref0)
    print(f"lambda={lam:.1f}: {family_ratio[lam]}")
    assert family_ratio[lam].ratio < 1.5, (lam, family_ratio[lam])
print(f"fresh data itself:     {metrics.compare_to_floor(mix.sample(S['n'], gen)[0], ref0)}")
off_family = metrics.compare_to_floor(lambda_process(oracle, x1, grid_f, 1.0, torch.Generator().manual_seed(9),
                                                     drift_lam=0.0), ref0)
print(f"not in the family (the reverse SDE's noise, the PF-ODE's drift): {off_family}")
assert off_family.ratio > 2, off_family
moved = float((family[0.0] - family[1.0]).norm(dim=1).mean())
print(f"same start, different ends: mean distance between the lambda=0 and lambda=1 end points {moved:.2f} "
      f"(data on a circle of radius 2)")
config.record(nb04_lambda_family_sw_ratio_max=max(c.ratio for c in family_ratio.values()))

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), layout="constrained")
for ax, lam in zip(axes, family):
    plotting.plot_density(mix.log_prob, ax=ax, cmap="Greys")
    plotting.plot_samples(family[lam][:1500], ax=ax, s=1, alpha=0.35, color="C0")
    plotting.plot_trajectories(family_paths[lam], ax=ax, n_paths=5, color="C3", alpha=0.8,
                               title=f"$\\lambda$ = {lam:g}: SW/floor {family_ratio[lam].ratio:.2f}")
fig.suptitle("dx = [f x - (1+$\\lambda^2$)/2 g$^2$ score] dt + $\\lambda$ g dW: same prior draws, same marginals, other paths")

# %% [markdown]
# All three members land within a factor 1.5 of the noise floor (fresh draws of the data score about as well on
# this metric at this sample size), and a process that pairs the reverse SDE's noise with the PF-ODE's drift misses
# it by far. The paths from the same prior draws differ: the
# PF-ODE ($\lambda=0$) glides, $\lambda=\tfrac12$ jitters a little, the reverse SDE ($\lambda=1$) most; their end points
# lie on average the distance printed above apart. The marginals are pinned by the Fokker–Planck equation; the
# joint law across times (which point goes where) is not. Larger $\lambda$ puts more noise and a larger score term
# into each step, so Euler–Maruyama needs smaller steps (Exercise 4).
#
# **(§4.6, optional in the book.)** The monograph also derives the FPE and the reverse SDE without Itô calculus:
# the FPE by marginalising the one-step Gaussian transition kernel of the forward process over $x_t$, and the reverse
# drift by Bayes' rule, $p(x_t\mid x_{t+\Delta t}) \propto p(x_{t+\Delta t}\mid x_t)\,p_t(x_t)$, whose expansion to first order
# in $\Delta t$ is a Gaussian with mean shifted by $g^2\nabla\log p_t\,\Delta t$: the $-g^2\nabla\log p_t$ of the reverse SDE.

# %% [markdown]
# ## 4. Continuous-time denoising score matching (§4.3)
#
# The score is learned by denoising score matching with $t$ drawn continuously, $t\sim\mathcal U[t_{\min}, 1]$
# (Song et al. 2021, eq. 7):
# $$ \mathcal L(\theta) = \mathbb E_{t, x_0, \varepsilon}\Big[\lambda(t)\,\big\| s_\theta(x_t, t) + \varepsilon/\sigma_t \big\|^2\Big]. $$
# With $\lambda(t)=\sigma_t^2$ and $s_\theta = -\varepsilon_\theta/\sigma_t$ this is exactly DDPM's $\varepsilon$-prediction loss
# (Ch. 6 makes the equivalence of targets systematic), the best-conditioned of the choices. `utils.losses.DiffusionLoss(vp, "eps")`
# is that loss, and `targets.Denoiser(net, "eps", vp)` turns the $\varepsilon$-network into a score
# ($-\hat\varepsilon/\sigma_t$) and a PF-ODE velocity for every sampler.
#
# *How* $t$ is drawn is a free choice: for every $t$ the minimiser is the same, $\mathbb E[\varepsilon\mid x_t]$, and changing the density
# of $t$ is the same as changing the weighting $\lambda(t)$ (Song, Durkan, Murray & Ermon 2021 and Kingma et al. 2021 use this
# as importance sampling). With $t\sim\mathcal U[t_{\min},1]$ the VP schedule spends few draws at small $t$, where $p_t$ has sharp modes and
# where the likelihood of Section 6 is decided. So half of each batch draws $t$ over the whole range and half in $[t_{\min}, 0.2]$:
# the distribution of training times is an argument of the loss (`losses.Stratified` gives each part an equal share of
# every batch; Ch. 6 returns to $p_{\rm time}$ and $\lambda(t)$). (Try `time_distribution=losses.Uniform(vp.t_min, 1.0)`:
# the samples still look fine, the likelihood gets much worse.)

# %%
p_time = losses.Stratified(losses.Uniform(vp.t_min, 1.0),    # t ~ U[t_min, 1] for half of each batch
                           losses.Uniform(vp.t_min, 0.2))    # t ~ U[t_min, 0.2] for the other half
loss_fn = losses.DiffusionLoss(vp, "eps", time_distribution=p_time)

torch.manual_seed(0)
net = nets.MLP(2, S["hidden"], 3)
train_data = lambda n, g: mix.sample(n, g)[0].float()
ema_net, history = training.train(net, loss_fn, train_data, S["train_steps"], batch_size=S["batch"],
                                  lr=S["lr"], ema_decay=0.995, seed=0, desc="continuous-time DSM")
model = targets.Denoiser(ema_net, "eps", vp)
plotting.plot_loss(history);

# %% [markdown]
# How close is the learned score to the truth? On samples of $p_t$, the mean squared distance of $\hat\varepsilon$
# from the oracle's $\mathbb E[\varepsilon\mid x_t]$ per dimension: the part of the DSM loss the network could still remove, to
# be compared with $1$, the loss of predicting $\hat\varepsilon = 0$. It is largest at small $t$, where $p_t$ has sharp modes.

# %%
with torch.no_grad():
    for t in (0.02, 0.1, 0.5, 0.9):
        xt = mix.sample(4000, gen, t=t, schedule=vp)[0]
        e_true = oracle.eps(xt, t)
        e_model = model.eps(xt.float(), t).double()
        excess = float(((e_model - e_true) ** 2).mean())
        print(f"t={t:.2f}: excess eps error {excess:.4f} per dim")
        assert excess < 0.05, (t, excess)

# %% [markdown]
# ## 5. Three samplers against the noise floor (§4.3)
#
# The same learned model, three ways to generate (§4.3): the reverse SDE (Euler–Maruyama,
# `samplers.sample_euler_maruyama`), predictor–corrector with one Langevin corrector per step (two network
# evaluations per step), and the PF-ODE with Heun's method (`samplers.sample_heun`, two evaluations per step).
# Each run draws $8000$ samples. (Section 2 ran the reverse SDE and the PF-ODE with the exact score: at the floor,
# so what remains here is the learned score.)
#
# **Predictor–corrector** (Song et al. 2021, Alg. 1): after each reverse-SDE *predictor* step, a few Langevin
# *corrector* steps at the new time pull the cloud back towards $p_{t}$ (Ch. 3's Langevin dynamics; MCMC at a fixed
# noise level, the role annealed Langevin plays in NCSN). The corrector's step is set by a target signal-to-noise
# ratio $r$ (Song et al. 2021, Alg. 4 for VE and Alg. 5 for VP):
# $$ \eta_i = 2\,\alpha_i\,\big(r\,\|z\|/\|\nabla\log p_{t_i}\|\big)^2, $$
# norms averaged over the batch, where $\alpha_i = 1-\beta_i$ is DDPM's per-step signal factor for VP and $\alpha_i=1$ for
# VE. On a general grid $\alpha_i = (\alpha_{t_i}/\alpha_{t_{i-1}})^2$, the squared signal ratio of the forward step
# from the next lower grid time $t_{i-1}$ up to $t_i$ (it equals $1 - \beta_i$ of the DDPM chain on that grid). At the end,
# Tweedie's formula returns $\mathbb E[x_0\mid x_{t_{\min}}]$.

# %%
def predictor_corrector(denoiser, x, grid, snr, generator, use_alpha=True):
    """Song et al. (2021) Alg. 1: reverse-SDE predictor, one Langevin corrector with Algs. 4-5's step."""
    sched = denoiser.schedule
    n = len(grid) - 1
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        dt = t_next - t
        f, g2 = float(sched.f(t)), float(sched.g2(t))
        # predictor: one reverse-SDE Euler–Maruyama step
        x = x + (f * x - g2 * denoiser.score(x, t)) * dt
        x = x + math.sqrt(g2 * -dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        # corrector: one Langevin step on p_{t_next}
        if i < n - 1:
            alpha_i = float(sched.alpha(t_next) / sched.alpha(float(grid[i + 2]))) ** 2   # 1 - beta_i; 1 for VE
            alpha_i = alpha_i if use_alpha else 1.0                                          # (Alg. 4's step on VP)
            s = denoiser.score(x, t_next)
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            eta = 2 * alpha_i * (snr * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2
            x = x + eta * s + torch.sqrt(2 * eta) * z
    return denoiser.x0(x, float(grid[-1]))

# the same step as samplers.sample_predictor_corrector, on VE (alpha_i = 1) and on VP (alpha_i = 1 - beta_i):
grid_pc = schedules.uniform_grid(S["pc_steps"], 1.0, vp.t_min)
for sched, grid_check in ((ve, schedules.uniform_grid(50, 1.0, 0.0)), (vp, grid_pc)):
    x1_check = samplers.sample_prior(sched, (500, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    mine = predictor_corrector(mix.denoiser(sched), x1_check, grid_check, 0.16, torch.Generator().manual_seed(3))
    ref = samplers.sample_predictor_corrector(mix.denoiser(sched), x1_check, grid_check, n_corrector=1, snr=0.16,
                                              generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mine, ref)
alphas_pc = (vp.alpha(grid_pc[1:-1]) / vp.alpha(grid_pc[2:])) ** 2
print(f"inline predictor-corrector == samplers.sample_predictor_corrector on VE and VP; on this VP grid "
      f"alpha_i runs from {float(alphas_pc.min()):.3f} (near t=1) to {float(alphas_pc.max()):.4f}")

# %%
runs = {
    "reverse SDE (EM)": (lambda d, x, g: samplers.sample_euler_maruyama(
        d, x, schedules.uniform_grid(S["em_steps"], 1.0, vp.t_min), generator=g), S["em_steps"]),
    "predictor-corrector": (lambda d, x, g: predictor_corrector(d, x, grid_pc, 0.16, g), 2 * S["pc_steps"]),
    "PF-ODE (Heun)": (lambda d, x, g: samplers.sample_heun(
        d, x, schedules.uniform_grid(S["ode_steps"], 1.0, vp.t_min)), 2 * S["ode_steps"]),
    "PC without alpha_i": (lambda d, x, g: predictor_corrector(d, x, grid_pc, 0.16, g, use_alpha=False),
                           2 * S["pc_steps"]),
}
ref = lambda n, g: mix.sample(n, g)[0]
samples, results = {}, {}
x1 = samplers.sample_prior(vp, (S["n"], 2), gen)
for name, (run, nfe) in runs.items():
    samples[name] = run(model, x1, torch.Generator().manual_seed(5))
    results[name] = metrics.compare_to_floor(samples[name], ref)
    print(f"{name:22s} NFE {nfe:3d}: {results[name]}")
for name, cmp in results.items():
    assert cmp.ratio < 1.5, (name, cmp)
config.record(**{"nb04_" + name.split(" (")[0].replace(" ", "_").replace("-", "_").lower() + "_sw_ratio": float(cmp.ratio) for name, cmp in results.items() if "without" not in name})

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3.9))
plotting.plot_samples(x_data[:2000], ax=axes[0], s=1, title="data")
for ax, (name, xs) in zip(axes[1:], list(samples.items())[:3]):
    plotting.plot_samples(xs[:2000], ax=ax, s=1, title=f"{name}: SW/floor {results[name].ratio:.2f}")
fig.tight_layout()


# %% [markdown]
# All three samplers of the learned model land within a factor 1.5 of the noise floor. At this sample size ($n=400$
# per chunk) the SW metric cannot tell the three apart well; the ODE needs the fewest evaluations. The corrector
# step with or without Song et al.'s $\alpha_i$ also lands at the floor here: the factor rescales the step that a
# target $r$ gives, so it matters when $r$ is tuned (Song et al. tuned $r$ with it), not for this toy.
# (`samplers.sample_predictor_corrector` takes the step without $\alpha_i$, exact for VE.)

# %% [markdown]
# ## 6. Exact likelihood through the PF-ODE (Ch. 4; Song et al. 2021, App. D)
#
# The PF-ODE is a continuous normalizing flow. Along a solution $x_t$ of $\dot x = v(x,t)$ the
# **instantaneous change of variables** (Chen et al. 2018) gives $\frac{\mathrm{d}}{\mathrm{d}t}\log p_t(x_t) = -\nabla\!\cdot v(x_t, t)$, so integrating from data to noise
# $$ \log p_{0}(x_0) = \log p_1(x_1) + \int_0^1 \nabla\!\cdot v(x_t,t)\,\mathrm{d}t . $$
# We integrate the augmented state $(x_t, \int\nabla\!\cdot v)$ **upwards** in time from the data point, and
# evaluate the prior $\mathcal N(0,\sigma_1^2 I)$ at the end. The divergence $\operatorname{tr}(\partial v/\partial x)$ is one
# backward pass per dimension, two in 2D. Two details. The path starts at $t_{\min}=10^{-3}$, so what we compute is
# $\log p_{t_{\min}}$ (the oracle knows it exactly); and uniform steps in log-SNR suit the stiff start of the path
# better than uniform steps in $t$. Why not start at $t=0$? Not because the PF-ODE's field must blow up there: the
# mixture's $p_0$ is smooth, and its exact velocity $\dot\alpha\,\mathbb E[x_0|x] - \sigma\dot\sigma\,\nabla\log p_t$ is finite at
# $t=0$ ($\sigma\dot\sigma = \tfrac12\beta\alpha^2$ under VP). The singularity is the $\varepsilon$-parameterisation's: the
# network's velocity is $\tfrac{\dot\alpha}{\alpha}x + (\dot\sigma - \tfrac{\dot\alpha}{\alpha}\sigma)\,\hat\varepsilon$ with
# $\dot\sigma \approx \beta_{\min}/(2\sigma_t) \to \infty$, so any error of $\hat\varepsilon$ is amplified by $1/\sigma_t$. (For data
# without a density, images on a thin set for example, the true score itself blows up as $t\to0$.) On data points:

# %%
x_zero = mix.sample(2000, gen)[0]
v0 = oracle.velocity(x_zero, 0.0)
torch.testing.assert_close(v0, float(vp.f(0.0)) * x_zero - 0.5 * float(vp.g2(0.0)) * mix.score(x_zero))
print(f"t=0: the oracle's velocity is finite (max |v| {float(v0.abs().max()):.2f}) and equals f x - g^2/2 score of p_0")
v_err = {}
with torch.no_grad():
    for t in (1e-2, 1e-3, 1e-5):
        v_err[t] = float((model.velocity(x_zero.float(), t).double() - oracle.velocity(x_zero, t)).norm(dim=1).mean())
        print(f"t={t:g}: sigma_t {float(vp.sigma(t)):.1e}, mean |v_model - v_oracle| {v_err[t]:7.3f}, "
              f"times sigma_t {v_err[t] * float(vp.sigma(t)):.4f}")
assert bool(torch.isfinite(v0).all()) and v_err[1e-5] > 3 * v_err[1e-3], v_err

# %% [markdown]
# Written out with Euler steps:

# %%
def pf_ode_log_likelihood(denoiser, x, grid):
    """log p_{grid[0]}(x) for an increasing grid: Euler on (x, int div v), exact trace by autograd."""
    integral = torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(len(grid) - 1):
        t, dt = float(grid[i]), float(grid[i + 1] - grid[i])
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = denoiser.velocity(xg, t)
            div = sum(torch.autograd.grad(v[:, d].sum(), xg, retain_graph=True)[0][:, d]
                      for d in range(x.shape[1]))
        x = x + dt * v.detach()
        integral = integral + dt * div.detach()
    sigma_1 = float(denoiser.schedule.sigma(float(grid[-1])))
    log_prior = torch.distributions.Normal(0.0, sigma_1).log_prob(x).sum(1)
    return log_prior + integral

x_ll = mix.sample(S["ll_n"], gen)[0]
grid_up = schedules.log_snr_grid(vp, 32, 1.0, vp.t_min).flip(0)      # increasing: data -> noise
mine = pf_ode_log_likelihood(oracle, x_ll[:100], grid_up)
torch.testing.assert_close(mine, likelihood.log_likelihood(oracle, x_ll[:100], grid_up, method="euler"))
print("inline PF-ODE likelihood == utils.likelihood.log_likelihood(method='euler')")

# %% [markdown]
# ### Against the exact log-density: error and convergence
#
# With the *exact* score the only errors are the ODE discretisation and the prior (the true $p_1$ is not
# exactly $\mathcal N(0,\sigma_1^2I)$, since $\alpha_1\approx 0.007$). Heun's method (order 2) on log-SNR grids of increasing size:

# %%
exact_lp = mix.log_prob(x_ll, vp.t_min, vp)        # log p_{t_min}(x), the truth
errors = []
for n_steps in S["ll_steps"]:
    g_up = schedules.log_snr_grid(vp, n_steps, 1.0, vp.t_min).flip(0)
    lp = likelihood.log_likelihood(oracle, x_ll, g_up, method="heun")
    errors.append(float((lp - exact_lp).abs().mean()))
    print(f"Heun, {n_steps:3d} steps (NFE {2 * n_steps:3d}): mean |log p_ODE - log p_exact| = {errors[-1]:.5f} nats")
steps_t = torch.tensor(S["ll_steps"], dtype=torch.float64)
slope = float(torch.linalg.lstsq(torch.stack([steps_t.log(), torch.ones_like(steps_t)], 1),
                                 torch.tensor(errors, dtype=torch.float64).log()[:, None]).solution[0])
print(f"fitted slope of log error vs log steps: {slope:.2f} (Heun: -2);  "
      f"log p_0 vs log p_t_min differ by {float((mix.log_prob(x_ll) - exact_lp).abs().mean()):.4f} nats on average")
assert errors[-1] < 0.01, errors
assert all(a > b for a, b in zip(errors, errors[1:])), errors
assert slope < -1.5, slope
config.record(nb04_oracle_likelihood_error_nats=float(errors[-1]), nb04_oracle_likelihood_slope=float(slope))

# %%
fig, ax = plt.subplots(figsize=(4.5, 3.6))
ax.loglog(S["ll_steps"], errors, "o-", label="Heun, exact trace (oracle)")
ax.loglog(S["ll_steps"], [errors[0] * (S["ll_steps"][0] / s) ** 2 for s in S["ll_steps"]], "k--", lw=0.8,
          label="slope -2")
ax.set_xticks(S["ll_steps"], [str(s) for s in S["ll_steps"]])     # the step counts, no minor labels
ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
ax.set_xlabel("steps"); ax.set_ylabel("mean |error| (nats)"); ax.legend(); ax.set_title("PF-ODE likelihood error")
fig.tight_layout()

# %% [markdown]
# ### Hutchinson's trace estimator
#
# In $D$ dimensions the exact divergence costs $D$ backward passes. Hutchinson's estimator
# $\operatorname{tr}(A) = \mathbb E_z[z^\top A z]$ for any probe with $\mathbb E[zz^\top] = I$ (Rademacher $\pm1$ or Gaussian) needs one
# vector–Jacobian product per probe (FFJORD, Grathwohl et al. 2019; Song et al. 2021 use it for their image
# likelihoods). The probe is fixed along the path, so the whole log-likelihood is an unbiased estimate of the
# exact-trace one. Each row of a batch gets its own probe: we replicate a few points many times and compare the
# mean of the estimates with the exact trace.

# %%
g16 = schedules.log_snr_grid(vp, 16, 1.0, vp.t_min).flip(0)
pts = x_ll[:S["hutch_points"]]
reps = S["hutch_reps"]
exact16 = likelihood.log_likelihood(oracle, pts, g16)
hutch = likelihood.log_likelihood(oracle, pts.repeat_interleave(reps, 0), g16, trace="hutchinson",
                                  probe="rademacher", generator=torch.Generator().manual_seed(7)).view(-1, reps)
se = hutch.std(1) / math.sqrt(reps)
for e, h, s, sd in zip(exact16, hutch.mean(1), se, hutch.std(1)):
    print(f"exact {e:8.4f}   Hutchinson mean of {reps}: {h:8.4f} ± {s:.4f} (one probe: spread {sd:.3f})")
z_scores = (hutch.mean(1) - exact16) / se
assert (z_scores.abs() < 4).all(), z_scores

# %% [markdown]
# ### The learned model's likelihood
#
# The same computation with the trained network (exact trace, Heun on a log-SNR grid). The PF-ODE of the model
# defines a proper density $p^\theta$, so $\mathbb E_{x\sim p}[\log p(x) - \log p^\theta(x)] = \mathrm{KL}(p\,\|\,p^\theta) \ge 0$ up to the
# discretisation error measured above; its size says how good the model is as a density, a sharper test
# than samples at the floor.

# %%
g_model = schedules.log_snr_grid(vp, S["ll_model_steps"], 1.0, vp.t_min).flip(0)
lp_model = likelihood.log_likelihood(model, x_ll.float(), g_model, method="heun").double()
gap = exact_lp - lp_model
kl, kl_se = float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))
bpd_model = float(likelihood.bits_per_dim(lp_model, 2).mean())
bpd_exact = float(likelihood.bits_per_dim(exact_lp, 2).mean())
print(f"mean log-likelihood: model {lp_model.mean():.3f}, exact {exact_lp.mean():.3f} nats "
      f"({bpd_model:.3f} vs {bpd_exact:.3f} bits/dim)")
print(f"KL(p || p_model) estimate {kl:.3f} ± {kl_se:.3f} nats;  mean |error| per point {gap.abs().mean():.3f} nats")
assert kl > -3 * kl_se - 0.01, (kl, kl_se)     # a proper density cannot beat the truth on average
assert kl < 0.4, kl                            # loose: the model is a decent density
assert float(gap.abs().mean()) < 0.75
config.record(nb04_model_kl_nats=float(kl), nb04_model_loglik_abs_error=float(gap.abs().mean()))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].scatter(exact_lp, lp_model, s=4, alpha=0.5)
lo, hi = float(exact_lp.min()), float(exact_lp.max())
axes[0].plot([lo, hi], [lo, hi], "k--", lw=0.8)
axes[0].set_xlabel("exact log p(x)"); axes[0].set_ylabel("model log p(x) by PF-ODE"); axes[0].set_title("per point")
pts_grid, X, Y = plotting.grid_points(3.0, 60)
with torch.no_grad():
    lp_grid = likelihood.log_likelihood(model, pts_grid.float(), schedules.log_snr_grid(vp, 12, 1.0, vp.t_min).flip(0))
axes[1].imshow(lp_grid.view(60, 60).exp().numpy(), origin="lower", extent=(-3, 3, -3, 3), cmap="viridis")
axes[1].set_title("model density $p^\\theta$ by PF-ODE (12 Heun steps)")
fig.tight_layout()

# %% [markdown]
# ## Exercises
#
# Each answer cell is followed by a check: run it to test your answer against the exact oracle.
#
# **Exercise 1 (VE's PF-ODE).** For the VE schedule $f=0$. Write the PF-ODE drift in terms of $\sigma_t$ alone:
# define a function `pf_drift_ve(x, t)` that returns it from `ve.sigma`, `ve.d_sigma` and the oracle's score
# `mix.denoiser(ve).score(x, t)`. The check compares it with the oracle's `velocity` at three times.
# *Hint:* $g^2 = \mathrm{d}\sigma_t^2/\mathrm{d}t$.

# %% tags=["solution"]
def pf_drift_ve(x, t):
    """VE's PF-ODE drift from sigma_t alone: f = 0, g^2 = d(sigma^2)/dt = 2 sigma sigma'."""
    return -ve.sigma(t) * ve.d_sigma(t) * mix.denoiser(ve).score(x, t)

xt_ve = mix.sample(200, gen, t=0.5, schedule=ve)[0]
print("VE PF-ODE: dx/dt = -sigma sigma' score  (= sigma' E[eps | x_t]);",
      f"max |drift - velocity| at t = 0.5: {float((pf_drift_ve(xt_ve, 0.5) - mix.denoiser(ve).velocity(xt_ve, 0.5)).abs().max()):.1e}")

# %% tags=["check"]
for t_chk in (0.1, 0.5, 0.9):
    x_chk = mix.sample(200, torch.Generator().manual_seed(41), t=t_chk, schedule=ve)[0]
    exercises.check_close(f"pf_drift_ve(x, {t_chk})", pf_drift_ve(x_chk, t_chk), mix.denoiser(ve).velocity(x_chk, t_chk),
                          rtol=1e-6, atol=1e-9, hint="f = 0 and g^2 = d(sigma_t^2)/dt = 2 sigma_t sigma_t', so the drift "
                                                     "is -1/2 g^2 score = -sigma_t sigma_t' score")

# %% [markdown]
# **Exercise 2 (which probe?).** The oracle's velocity is a gradient field plus $f x$, so its Jacobian $A$ is
# symmetric. Show that one Rademacher probe $z$ gives $z^\top A z$ the variance $2\sum_{i\ne j}A_{ij}^2$ and one
# Gaussian probe $2\|A\|_F^2$. At the point $x = (0.5, -0.3)$, $t = 0.3$ (VP oracle `oracle`), store the two
# formulas evaluated on the Jacobian in the dict `var_theory` (keys `"rademacher"`, `"gaussian"`) and the sample
# variances of $z^\top A z$ over 20000 probes of each kind (`likelihood.draw_probes`) in the dict `var_probe`.

# %% tags=["solution"]
x_probe, t_probe = torch.tensor([0.5, -0.3], dtype=torch.float64), 0.3
A = torch.autograd.functional.jacobian(lambda z: oracle.velocity(z[None], t_probe)[0], x_probe)
var_theory = {"rademacher": 2 * float((A ** 2).sum() - (A.diagonal() ** 2).sum()), "gaussian": 2 * float((A ** 2).sum())}
var_probe = {}
for probe in ("rademacher", "gaussian"):
    z = likelihood.draw_probes((20000, 2), 1, probe, torch.Generator().manual_seed(0), torch.float64)[0]
    est = ((z @ A) * z).sum(1)                     # z^T A z for each probe
    var_probe[probe] = float(est.var())
    print(f"{probe:10s}: mean {est.mean():.3f} (trace {A.trace():.3f}), variance {var_probe[probe]:.3f} "
          f"(theory {var_theory[probe]:.3f})")

# %% tags=["check"]
J_chk = torch.autograd.functional.jacobian(lambda z: mix.denoiser(vp).velocity(z[None], 0.3)[0],
                                           torch.tensor([0.5, -0.3], dtype=torch.float64))
assert torch.allclose(J_chk, J_chk.T, atol=1e-10), "the oracle velocity's Jacobian should be symmetric"
off_diag, frob = float((J_chk ** 2).sum() - (J_chk.diagonal() ** 2).sum()), float((J_chk ** 2).sum())
exercises.check_close("var_theory['rademacher']", var_theory["rademacher"], 2 * off_diag, rtol=1e-6,
                      hint="z_i^2 = 1 for a Rademacher probe, so the diagonal of A adds no variance: 2 sum_{i != j} A_ij^2")
exercises.check_close("var_theory['gaussian']", var_theory["gaussian"], 2 * frob, rtol=1e-6,
                      hint="for Gaussian z, Var z^T A z = 2 ||A||_F^2 when A is symmetric (Var z_i^2 = 2 adds the diagonal)")
for probe, want in (("rademacher", 2 * off_diag), ("gaussian", 2 * frob)):
    exercises.check_close(f"var_probe['{probe}']", var_probe[probe], want, rtol=0.15, atol=1e-3,
                          hint=f"the sample variance of z^T A z over 20000 {probe} probes at x = (0.5, -0.3), t = 0.3")

# %% [markdown]
# **Exercise 3 (where the path starts).** Compute the oracle's PF-ODE likelihood of the 100 points `x_ll[:100]`
# starting at $t_\varepsilon \in \{10^{-3}, 10^{-2}, 10^{-1}\}$ (24 Heun steps in log-SNR from $t_\varepsilon$, as in
# Section 6) and store it in the dict `lp_from` (keys the three values of $t_\varepsilon$, values the (100,)
# log-likelihoods). Compare it with $\log p_0(x)$ and with $\log p_{t_\varepsilon}(x)$: which one does the ODE compute?

# %% tags=["solution"]
xs3 = x_ll[:100]
lp_from = {}
for t_eps in (1e-3, 1e-2, 1e-1):
    lp_from[t_eps] = likelihood.log_likelihood(oracle, xs3, schedules.log_snr_grid(vp, 24, 1.0, t_eps).flip(0), method="heun")
    print(f"t_eps={t_eps:g}: vs log p_t_eps {float((lp_from[t_eps] - mix.log_prob(xs3, t_eps, vp)).abs().mean()):.4f}, "
          f"vs log p_0 {float((lp_from[t_eps] - mix.log_prob(xs3)).abs().mean()):.4f} nats")

# %% tags=["check"]
for t_eps in (1e-3, 1e-2, 1e-1):
    gap = float((lp_from[t_eps] - mix.log_prob(x_ll[:100], t_eps, vp)).abs().mean())
    exercises.check_between(f"mean |lp_from[{t_eps:g}] - log p_t_eps(x)|", gap, 0.0, 0.1,
                            hint="the ODE carries x from t_eps to t = 1 and adds the integrated divergence to log p_1: it "
                                 "returns log p_{t_eps}(x), not log p_0(x), up to the solver's error; start the grid at t_eps")

# %% [markdown]
# **Exercise 4 (larger $\lambda$, coarse steps).** On a coarse grid of 25 Euler–Maruyama steps, sample the
# $\lambda$-process for $\lambda \in \{0, 1, 2\}$ from the same `S["n"]` prior draws and store each sample's
# distance to the data over the noise floor (`metrics.compare_to_floor(x, ref0).ratio`) in the dict `coarse_ratio`
# (keys `0.0, 1.0, 2.0`). How does the error change with $\lambda$, and why? *Hint:* per step the noise is
# $\lambda g\sqrt{|\Delta t|}$ and the score term is $\tfrac12(1+\lambda^2)g^2\nabla\log p_t\,|\Delta t|$.

# %% tags=["solution"]
coarse = schedules.uniform_grid(25, 1.0, 0.0)
x1_ex = samplers.sample_prior(vp, (S["n"], 2), torch.Generator().manual_seed(11), dtype=torch.float64)
coarse_ratio = {}
for lam in (0.0, 1.0, 2.0):
    x_lam = samplers.sample_euler_maruyama(oracle, x1_ex, coarse, lam=lam, generator=torch.Generator().manual_seed(10))
    coarse_ratio[lam] = metrics.compare_to_floor(x_lam, ref0).ratio
    print(f"lambda={lam:g}, 25 steps: SW / floor {coarse_ratio[lam]:.2f}")
print("same marginals in continuous time, but the Euler-Maruyama error grows with lambda: the step sizes of the\n"
      "drift (1 + lambda^2) and of the noise (lambda) grow, so a larger lambda needs a finer grid")

# %% tags=["check"]
assert set(coarse_ratio) == {0.0, 1.0, 2.0}, f"coarse_ratio should have the keys 0.0, 1.0, 2.0; got {sorted(coarse_ratio)}"
assert coarse_ratio[0.0] < coarse_ratio[1.0] < coarse_ratio[2.0], (
    f"coarse_ratio should grow with lambda on 25 steps; got {coarse_ratio}.\nHint: pass lam= to "
    "samplers.sample_euler_maruyama on the coarse grid; each step's drift grows like (1 + lambda^2) and its noise like lambda")
exercises.check_between("coarse_ratio[2.0] / coarse_ratio[0.0]", coarse_ratio[2.0] / coarse_ratio[0.0], 1.2, 1e3,
                        hint="on 25 steps the lambda = 2 process should be far worse than the PF-ODE's Euler steps")

# %% [markdown]
# ## Summary
#
# * The forward SDE $\mathrm{d}x = f x\,\mathrm{d}t + g\,\mathrm{d}W$ with $f = \dot\alpha/\alpha$, $g^2 = \dot{(\sigma^2)} - 2f\sigma^2$ has the kernel's
#   marginals: Euler–Maruyama clouds sat at the noise floor of the exact $p_t$ for VP and VE.
# * Its time reversal needs only the score; the reverse SDE and the PF-ODE
#   $\dot x = f x - \tfrac12 g^2\nabla\log p_t$ share the marginals $p_t$ with the forward SDE at every $t$ (three dynamics, one
#   family of marginals).
# * The reason is the Fokker–Planck equation (§4.2), which the exact mixture satisfies to finite-difference
#   accuracy: written as a continuity equation its velocity is the PF-ODE's, and every
#   $\mathrm{d}x = [f x - \tfrac12(1+\lambda^2) g^2\nabla\log p_t]\,\mathrm{d}t + \lambda g\,\mathrm{d}\bar W$ has the same marginals ($\lambda = 0, \tfrac12, 1$
#   all sampled the mixture at the noise floor, along different paths). For Gaussian data everything is closed
#   form: $m_t = \alpha_t m_0$, $v_t = \alpha_t^2 s_0^2 + \sigma_t^2$, and the PF-ODE keeps $(x_t - m_t)/\sqrt{v_t}$ fixed;
#   Euler–Maruyama matched the moments within Monte-Carlo error, Heun the trajectories at second order.
# * Continuous-time denoising score matching ($\varepsilon$-prediction = DSM with $\lambda = \sigma^2$) trained a model whose
#   reverse-SDE, predictor–corrector and PF-ODE samples all reach the noise floor within the stated factor. The
#   corrector's step $\eta_i = 2\alpha_i (r\|z\|/\|\nabla\log p\|)^2$ carries $\alpha_i = 1-\beta_i$ for VP (Song et al. 2021, Algs. 4–5).
# * The PF-ODE is a continuous normalizing flow: the instantaneous change of variables gives $\log p$ exactly
#   up to the ODE error (second order for Heun, measured), with an exact trace in 2D or Hutchinson's unbiased
#   estimator in high dimension.
#
# **Where the monograph goes next.** Ch. 5 reaches the same ODE from the flow side (normalizing flows to flow
# matching); Ch. 6 shows that the $\varepsilon$, $x_0$, score and velocity parameterisations are one model; Ch. 9
# builds solvers that exploit the semi-linear form $f x + \dots$ of the PF-ODE to sample in a handful of steps.
