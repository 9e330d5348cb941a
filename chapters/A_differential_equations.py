# %% [markdown]
# # Appendix A — ODEs and SDEs from scratch
#
# *Companion to App. A of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# Every sampler of this book integrates a differential equation: the probability-flow ODE (Ch. 4–5, 9)
# or the reverse SDE (Ch. 4). App. A collects the numerical facts those chapters lean on. After this
# notebook you can
#
# * say when an ODE has a unique solution (Lipschitz), and solve a **linear** ODE exactly with the
#   **exponential integrating factor** (§A.1.3), the root of Ch. 9's exponential integrators;
# * write Euler, Heun and RK4 and **measure their orders** 1, 2 and 4 (§A.1.4);
# * write **Euler–Maruyama** (§A.2) and measure its **strong** order (½ in general, 1 for additive
#   noise) and its **weak** order (1) against processes with known solutions.
#
# **Prerequisites:** calculus; Brownian motion as "independent Gaussian increments of variance $dt$".
# No training, no GPU: everything here is float64 arithmetic on the CPU.

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import math, torch, matplotlib.pyplot as plt
from utils import config, exercises, samplers, sde, widgets
profile, device, gen = config.setup(seed=0, threads=1)
S = config.pick({
    "test": dict(ode_steps=(8, 16, 32, 64, 128), n_paths_strong=20_000, fine_steps=2 ** 9,
                 n_paths_weak=400_000, weak_steps=(4, 8, 16, 32), n_seeds=2),
    "cpu": dict(ode_steps=(8, 16, 32, 64, 128, 256), n_paths_strong=50_000, fine_steps=2 ** 10,
                n_paths_weak=1_000_000, weak_steps=(4, 8, 16, 32, 64), n_seeds=3),
})
S

# %% [markdown]
# ## 1. Existence, uniqueness, and the linear ODE solved exactly (§A.1, §A.1.3)
#
# An ODE $\dot x = F(x, t)$, $x(0)=x_0$ has exactly one solution on $[0, T]$ when $F$ is continuous in
# $t$ and **Lipschitz** in $x$, $|F(x,t) - F(y,t)| \le L|x-y|$ (Picard–Lindelöf: the Picard iteration
# $x^{(k+1)}(t) = x_0 + \int_0^t F(x^{(k)}(s), s)\,ds$ is a contraction). Without Lipschitz,
# uniqueness can fail: $\dot x = \sqrt{|x|}$, $x(0)=0$ is solved both by $x \equiv 0$ and by
# $x = t^2/4$. (A diffusion model's PF-ODE velocity is Lipschitz for $t>0$; its blow-up at $t\to0$ is
# why samplers stop at a small $t_{\min}$.)

# %%
t = torch.linspace(0, 2, 201, dtype=torch.float64)
for name, x, dx in [("x = 0", 0 * t, 0 * t), ("x = t^2/4", t ** 2 / 4, t / 2)]:
    residual = (dx - x.abs().sqrt()).abs().max()
    print(f"{name:10s}: max |x' - sqrt|x|| = {residual:.1e}")
    assert residual < 1e-12
print("two different solutions of x' = sqrt|x|, x(0) = 0")

# %% [markdown]
# The **linear ODE** $\dot x = a(t)\,x + b(t)$ is the one a diffusion model's PF-ODE becomes in its
# linear part ($a = f(t)$, the drift coefficient of the forward SDE). Multiply by the **integrating
# factor** $e^{-A(t)}$ with $A(t) = \int_0^t a$: $\tfrac{d}{dt}\big(e^{-A}x\big) = e^{-A} b$, so
#
# $$x(t) = e^{A(t)}\Big(x_0 + \int_0^t e^{-A(s)}\,b(s)\,ds\Big).\qquad\text{(§A.1.3)}$$
#
# We take $a(t) = -(1+t)$, $b(t) = \sin 3t$ (so $A(t) = -t - t^2/2$), compute the one remaining
# integral by Simpson's rule on a fine grid, and check the result satisfies the ODE.

# %%
a_fn = lambda t: -(1.0 + t)
b_fn = lambda t: torch.sin(3 * torch.as_tensor(t, dtype=torch.float64))
A_fn = lambda t: -(t + t ** 2 / 2)
x_start, T = 1.0, 2.0


def simpson(f_vals, h):
    """Composite Simpson's rule on an even number of intervals."""
    return h / 3 * (f_vals[0] + f_vals[-1] + 4 * f_vals[1:-1:2].sum() + 2 * f_vals[2:-1:2].sum())


def linear_ode_exact(t_end, x0=x_start, n=20_000):
    """x(t_end) of x' = a x + b by the integrating factor (§A.1.3), the integral by Simpson."""
    s = torch.linspace(0, t_end, n + 1, dtype=torch.float64)
    integral = simpson(torch.exp(-A_fn(s)) * b_fn(s), t_end / n)
    return math.exp(A_fn(t_end)) * (x0 + float(integral))


ts = torch.linspace(0, T, 41, dtype=torch.float64)
xs = torch.tensor([linear_ode_exact(float(t)) for t in ts], dtype=torch.float64)
h = 1e-5
deriv = torch.tensor([(linear_ode_exact(float(t) + h) - linear_ode_exact(float(t) - h)) / (2 * h) for t in ts[1:-1]])
residual = (deriv - (a_fn(ts[1:-1]) * xs[1:-1] + b_fn(ts[1:-1]))).abs().max()
print(f"max |x' - (a x + b)| along the exact solution: {residual:.1e}")
assert residual < 1e-6
x_T = linear_ode_exact(T)

# %% [markdown]
# **Why Ch. 9 cares: exponential integrators.** Solve the linear part exactly and approximate only
# $b$: over a step $[t_n, t_{n+1}]$, freezing $b$ at $t_n$,
#
# $$x_{n+1} = e^{A(t_{n+1}) - A(t_n)}\,x_n + \Big(\int_{t_n}^{t_{n+1}} e^{A(t_{n+1}) - A(s)}ds\Big)\, b(t_n)
# \qquad\text{(exponential Euler).}$$
#
# Plain Euler multiplies $x$ by $1 + h a$ each step and is unstable once $h|a| > 2$; the exponential
# step multiplies by $e^{ha} \in (0, 1)$ and stays stable at any step size. DDIM and DPM-Solver are
# this idea applied to the PF-ODE in log-SNR time (Ch. 9). A stiff test: $a = -50$, $b(t) = \sin 3t$,
# 20 steps on $[0, 2]$, so $h|a| = 5$.

# %%
def exp_euler(a, b, x0, t_end, n):
    """Exponential Euler for x' = a x + b(t), constant a: the linear part exactly, b frozen per step."""
    h, x = t_end / n, torch.tensor(x0, dtype=torch.float64)
    for i in range(n):
        x = math.exp(a * h) * x + math.expm1(a * h) / a * b(i * h)
    return float(x)


def plain_euler(a, b, x0, t_end, n):
    h, x = t_end / n, x0
    for i in range(n):
        x = x + h * (a * x + b(i * h))
    return x


a_stiff, n_stiff = -50.0, 20
b_scalar = lambda t: math.sin(3 * t)
# exact: x(t) = e^{a t} x0 + int_0^t e^{a (t - s)} sin(3 s) ds, in closed form
def stiff_exact(t, a=a_stiff, x0=x_start):
    w = 3.0
    particular = (-a * math.sin(w * t) - w * math.cos(w * t) + w * math.exp(a * t)) / (a ** 2 + w ** 2)
    return math.exp(a * t) * x0 + particular


err_exp = abs(exp_euler(a_stiff, b_scalar, x_start, T, n_stiff) - stiff_exact(T))
err_eul = abs(plain_euler(a_stiff, b_scalar, x_start, T, n_stiff) - stiff_exact(T))
print(f"h|a| = {abs(a_stiff) * T / n_stiff:.0f}:  exponential Euler error {err_exp:.1e},  plain Euler error {err_eul:.1e}")
assert err_exp < 0.01 and err_eul > 1e6 * err_exp      # exponential Euler is stable; Euler blows up (|1 + h a|^20 = 4^20)
# with b = 0 the exponential step is exact at any step size
assert abs(exp_euler(a_stiff, lambda t: 0.0, x_start, T, 3) - math.exp(a_stiff * T) * x_start) < 1e-30

# %% [markdown]
# ## 2. Euler, Heun, RK4 and their orders (§A.1.4)
#
# A one-step method of **order $p$** has global error $\le C h^p$. Euler is order 1, Heun
# (predictor–corrector trapezoid) order 2, classical Runge–Kutta order 4. First Euler written out,
# checked against `utils.samplers.euler_step` (the step every PF-ODE sampler of the book uses; its
# `field` returns a pair (slope, auxiliary)):

# %%
def euler(F, x, t, t_next):
    return x + (t_next - t) * F(x, t)


F = lambda x, t: a_fn(t) * x + b_fn(t)
field = lambda x, t: (F(x, t), None)
x_probe = torch.randn(5, dtype=torch.float64, generator=gen)
torch.testing.assert_close(euler(F, x_probe, 0.3, 0.4), samplers.euler_step(field, x_probe, 0.3, 0.4)[0])
print("inline Euler step == samplers.euler_step")


def solve(step, n):
    grid = torch.linspace(0, T, n + 1, dtype=torch.float64)
    x = torch.tensor([x_start], dtype=torch.float64)
    for i in range(n):
        x, _ = step(field, x, float(grid[i]), float(grid[i + 1]))
    return float(x)


methods = {"Euler": samplers.euler_step, "Heun": samplers.heun_step, "RK4": samplers.rk4_step}
hs = [T / n for n in S["ode_steps"]]
ode_err = {name: [abs(solve(step, n) - x_T) for n in S["ode_steps"]] for name, step in methods.items()}
ode_order = {name: sde.fitted_order(hs, e) for name, e in ode_err.items()}
for name, e in ode_err.items():
    print(f"{name:5s} errors", " ".join(f"{v:.1e}" for v in e), f"-> fitted order {ode_order[name]:.2f}")
for name, p in zip(methods, (1, 2, 4)):
    assert abs(ode_order[name] - p) < 0.3, (name, ode_order[name])
fig, ax = plt.subplots(figsize=(5, 3.6))
for name, e in ode_err.items():
    ax.loglog(hs, e, "o-", label=f"{name} (slope {ode_order[name]:.2f})")
ax.set(xlabel="step size h", ylabel="|x_N - x(T)|", title="global error of ODE steps")
ax.legend();

# %% [markdown]
# Turn the number of steps: the three methods on the exact solution's curve.

# %%
t_curve = torch.linspace(0, T, 81, dtype=torch.float64)
x_curve = [linear_ode_exact(float(t), n=2000) for t in t_curve]


def draw_solvers(n_steps=4):
    n = int(n_steps)
    grid = torch.linspace(0, T, n + 1, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(t_curve, x_curve, "k-", lw=2, label="exact")
    for name, step in methods.items():
        x, path = torch.tensor([x_start], dtype=torch.float64), [x_start]
        for i in range(n):
            x, _ = step(field, x, float(grid[i]), float(grid[i + 1]))
            path.append(float(x))
        ax.plot(grid, path, "o--", label=name)
    ax.set(xlabel="t", ylabel="x", title=f"{n} steps"); ax.legend()
    return fig


widgets.explore(draw_solvers, {"n_steps": (2, 20, 1, 4)})

# %% [markdown]
# ## 3. Euler–Maruyama and its two orders (§A.2)
#
# For $dX = f(X,t)\,dt + g(X,t)\,dW$, Euler–Maruyama replaces $dW$ by an increment
# $\Delta W_n \sim \mathcal N(0, h)$:
# $X_{n+1} = X_n + f(X_n,t_n)\,h + g(X_n,t_n)\,\Delta W_n$. Two notions of error:
#
# * **strong** (pathwise): $\mathbb E\,|X_N - X(T)|$ with both driven by *the same* Brownian path;
#   order ½ in general, because $\Delta W \sim \sqrt h$;
# * **weak** (in distribution): $|\mathbb E\,\phi(X_N) - \mathbb E\,\phi(X(T))|$; order 1.
#
# A sampler only needs the right *distribution*, so the weak order is what governs a reverse-SDE
# sampler's bias. First EM written out, against `utils.sde.euler_maruyama`:

# %%
def em(f, g, x0, T, dW):
    h, x = T / dW.shape[1], torch.full((dW.shape[0],), float(x0), dtype=dW.dtype)
    for n in range(dW.shape[1]):
        x = x + f(x, n * h) * h + g(x, n * h) * dW[:, n]
    return x


dW_probe = sde.brownian_increments(100, 16, 1 / 16, gen)
f_ou, g_ou = (lambda x, t: -2.0 * x), (lambda x, t: 1.0)
torch.testing.assert_close(em(f_ou, g_ou, 2.0, 1.0, dW_probe), sde.euler_maruyama(f_ou, g_ou, 2.0, 0.0, 1.0, dW_probe))
print("inline Euler-Maruyama == sde.euler_maruyama")

# %% [markdown]
# **Strong order ½: geometric Brownian motion.** $dX = \mu X dt + s X dW$ has the pathwise solution
# $X(T) = X_0 \exp((\mu - s^2/2)T + s W_T)$, a function of the path's endpoint $W_T$. We draw fine
# Brownian increments, sum them to coarser grids (the *same* path), and compare EM's endpoint with
# the exact one (Higham 2001's experiment). The noise is multiplicative ($g$ depends on $X$),
# which is what makes the order ½.

# %%
mu, s_gbm, X0, T_sde = 1.5, 1.0, 1.0, 1.0
dW_fine = sde.brownian_increments(S["n_paths_strong"], S["fine_steps"], T_sde / S["fine_steps"], gen)
X_exact = X0 * torch.exp((mu - s_gbm ** 2 / 2) * T_sde + s_gbm * dW_fine.sum(1))
strong_steps = [2 ** k for k in range(4, 9)]
strong_err = []
for n in strong_steps:
    dW = sde.coarsen_increments(dW_fine, S["fine_steps"] // n)
    X_em = sde.euler_maruyama(lambda x, t: mu * x, lambda x, t: s_gbm * x, X0, 0.0, T_sde, dW)
    strong_err.append(float((X_em - X_exact).abs().mean()))
strong_order = sde.fitted_order([T_sde / n for n in strong_steps], strong_err)
print("GBM strong errors", " ".join(f"{e:.2e}" for e in strong_err), f"-> order {strong_order:.2f}")
assert 0.35 < strong_order < 0.65

# %% [markdown]
# **Ornstein–Uhlenbeck: additive noise.** $dX = -\theta X\,dt + s\,dW$ has $g$ constant. Then EM coincides
# with the Milstein scheme and its strong order rises to **1** (worth knowing: the forward and reverse
# SDEs of diffusion models have additive noise, $g = g(t)$). The exact solution is
# $X(T) = e^{-\theta T}X_0 + s\int_0^T e^{-\theta(T-u)}dW_u$; on a given path we use EM on the fine grid
# (`S["fine_steps"]` steps) as its stand-in, and measure coarser grids against it.

# %%
theta, s_ou, x0_ou = 2.0, 1.0, 2.0
f_ou, g_ou = (lambda x, t: -theta * x), (lambda x, t: s_ou)
X_ref = sde.euler_maruyama(f_ou, g_ou, x0_ou, 0.0, T_sde, dW_fine)
ou_steps = [2 ** k for k in range(2, 7)]
ou_strong_err = [float((sde.euler_maruyama(f_ou, g_ou, x0_ou, 0.0, T_sde,
                                           sde.coarsen_increments(dW_fine, S["fine_steps"] // n)) - X_ref).abs().mean())
                 for n in ou_steps]
ou_strong_order = sde.fitted_order([T_sde / n for n in ou_steps], ou_strong_err)
print("OU strong errors", " ".join(f"{e:.2e}" for e in ou_strong_err), f"-> order {ou_strong_order:.2f}")
assert 0.8 < ou_strong_order < 1.25
mean_T, std_T = sde.ou_mean_std(x0_ou, theta, s_ou, T_sde)
print(f"fine-grid reference vs exact law at T: mean {X_ref.mean():.4f} vs {mean_T:.4f}, std {X_ref.std():.4f} vs {std_T:.4f}")
assert abs(X_ref.mean() - mean_T) < 4 * std_T / math.sqrt(len(X_ref)) + 0.01

# %% [markdown]
# **Weak order 1 on OU.** The exact law is $X(T) \sim \mathcal N\big(X_0 e^{-\theta T},\; s^2(1-e^{-2\theta T})/2\theta\big)$
# (`sde.ou_mean_std`). The weak error of EM in mean and variance is
# $|\hat m_h - m| + |\hat v_h - v|$, estimated with independent paths per step size. EM's own moments follow
# a recursion ($m_{n+1} = (1-\theta h) m_n$, $v_{n+1} = (1-\theta h)^2 v_n + s^2 h$), so we also know the
# weak error *exactly* and can check the Monte Carlo estimate against it. Repeated over seeds.

# %%
def em_moments(n):
    h, m, v = T_sde / n, x0_ou, 0.0
    for _ in range(n):
        m, v = (1 - theta * h) * m, (1 - theta * h) ** 2 * v + s_ou ** 2 * h
    return m, v


exact_weak = [abs(em_moments(n)[0] - float(mean_T)) + abs(em_moments(n)[1] - float(std_T) ** 2) for n in S["weak_steps"]]
weak_orders = []
for seed in range(S["n_seeds"]):
    g_seed = torch.Generator().manual_seed(100 + seed)
    weak_err = []
    for n in S["weak_steps"]:
        X_em = sde.euler_maruyama(f_ou, g_ou, x0_ou, 0.0, T_sde, sde.brownian_increments(S["n_paths_weak"], n, T_sde / n, g_seed))
        weak_err.append(abs(float(X_em.mean() - mean_T)) + abs(float(X_em.var() - std_T ** 2)))
    # Monte Carlo estimate vs EM's exact moment recursion (5 standard errors of mean and variance)
    mc_tol = 5 * (float(std_T) + math.sqrt(2) * float(std_T) ** 2) / math.sqrt(S["n_paths_weak"])
    assert all(abs(e - ex) < mc_tol for e, ex in zip(weak_err, exact_weak)), (weak_err, exact_weak)
    weak_orders.append(sde.fitted_order([T_sde / n for n in S["weak_steps"]], weak_err))
    print(f"seed {seed}: weak errors", " ".join(f"{e:.2e}" for e in weak_err), f"-> order {weak_orders[-1]:.2f}")
print("exact EM weak errors", " ".join(f"{e:.2e}" for e in exact_weak), f"-> order {sde.fitted_order([T_sde / n for n in S['weak_steps']], exact_weak):.2f}")
assert all(0.8 < p < 1.3 for p in weak_orders)

fig, ax = plt.subplots(figsize=(5, 3.6))
ax.loglog([T_sde / n for n in strong_steps], strong_err, "o-", label=f"GBM strong ({strong_order:.2f})")
ax.loglog([T_sde / n for n in ou_steps], ou_strong_err, "s-", label=f"OU strong ({ou_strong_order:.2f})")
ax.loglog([T_sde / n for n in S["weak_steps"]], exact_weak, "^-", label=f"OU weak ({weak_orders[0]:.2f})")
ax.set(xlabel="step size h", ylabel="error", title="Euler–Maruyama orders"); ax.legend();
config.record(appA_euler_order=ode_order["Euler"], appA_heun_order=ode_order["Heun"], appA_rk4_order=ode_order["RK4"],
              appA_em_strong_order_gbm=strong_order, appA_em_strong_order_ou=ou_strong_order,
              appA_em_weak_order_ou=float(weak_orders[0]))

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (Picard iteration).** For $\dot x = -x$, $x(0) = 1$, run five Picard iterations
# $x^{(k+1)}(t) = 1 - \int_0^t x^{(k)}(s)\,ds$ on a grid of $[0, 1]$ (trapezoid rule) from $x^{(0)} \equiv 1$,
# and show the error to $e^{-t}$ falls roughly like $1/(k+1)!$.

# %% tags=["solution"]
tt = torch.linspace(0, 1, 2001, dtype=torch.float64)
xk, picard_errors = torch.ones_like(tt), []
for k in range(5):
    integral = torch.cat([tt.new_zeros(1), torch.cumsum(0.5 * (xk[1:] + xk[:-1]) * (tt[1] - tt[0]), 0)])
    xk = 1 - integral
    picard_errors.append(float((xk - torch.exp(-tt)).abs().max()))
    print(f"iteration {k + 1}: max error {picard_errors[-1]:.2e}  (1/(k+2)! = {1 / math.factorial(k + 2):.2e})")

# %% tags=["check"]
for k, err in enumerate(picard_errors):
    exercises.check_between(f"picard_errors[{k}]", err, 0.0, 1.5 / math.factorial(k + 2),
                            hint="iteration k + 1 is the Taylor polynomial of e^{-t} of degree k + 1; "
                                 "its error at t = 1 is about 1/(k + 2)!")

# %% [markdown]
# **Exercise 2 (the exponential step is order 1 in b).** Measure the order of `exp_euler` on the stiff problem
# ($a = -50$) for $n \in \{40, 80, 160, 320\}$ steps. Then write its second-order version (interpolate $b$
# linearly over the step) and show the order rises to 2 — the step from DDIM to DPM-Solver-2 in Ch. 9.

# %% tags=["solution"]
def exp_euler2(a, b, x0, t_end, n):
    """Linear part exact; b linear over the step: int_0^h e^{a(h-u)} (b0 + u (b1 - b0)/h) du."""
    h, x = t_end / n, x0
    phi1 = math.expm1(a * h) / (a * h)                  # (e^{ah} - 1) / (ah)
    phi2 = (phi1 - 1) / (a * h)                         # (e^{ah} - 1 - ah) / (ah)^2
    for i in range(n):
        b0, b1 = b(i * h), b((i + 1) * h)
        x = math.exp(a * h) * x + h * (phi1 * b0 + phi2 * (b1 - b0))
    return x


ns = [40, 80, 160, 320]
e1 = [abs(exp_euler(a_stiff, b_scalar, x_start, T, n) - stiff_exact(T)) for n in ns]
e2 = [abs(exp_euler2(a_stiff, b_scalar, x_start, T, n) - stiff_exact(T)) for n in ns]
p1, p2 = sde.fitted_order([T / n for n in ns], e1), sde.fitted_order([T / n for n in ns], e2)
print(f"exponential Euler order {p1:.2f}, with linear b order {p2:.2f}")

# %% tags=["check"]
exercises.check_between("p1", p1, 0.7, 1.3, hint="freezing b over a step leaves an O(h) error per unit time")
exercises.check_between("p2", p2, 1.7, 2.3, hint="integrate e^{a(h-u)} (b0 + u (b1 - b0)/h) exactly: phi_1 and phi_2")

# %% [markdown]
# **Exercise 3 (weak order of GBM).** Measure EM's weak error in the mean for geometric Brownian motion,
# where $\mathbb E X(T) = X_0 e^{\mu T}$ and EM's mean is exactly $X_0(1+\mu h)^N$. Which order do you
# get, and why does no Monte Carlo run need to be done for this one?

# %% tags=["solution"]
ns = [4, 8, 16, 32, 64]
weak_gbm = [abs(X0 * (1 + mu * T_sde / n) ** n - X0 * math.exp(mu * T_sde)) for n in ns]
p_gbm = sde.fitted_order([T_sde / n for n in ns], weak_gbm)
print(f"GBM weak order in the mean: {p_gbm:.2f}")   # E of EM's step is linear in X, so its mean solves Euler's ODE recursion

# %% tags=["check"]
exercises.check_between("p_gbm", p_gbm, 0.8, 1.2, hint="the mean of EM is X0 (1 + mu h)^N: Euler's method for m' = mu m")

# %% [markdown]
# ## Summary
#
# * An ODE with a Lipschitz right-hand side has one solution; a linear ODE is solved exactly by the
#   integrating factor $e^{A(t)}$ (§A.1.3). Solving the linear part exactly and approximating only the
#   rest gives **exponential integrators**, stable where Euler explodes — the principle of DDIM and
#   DPM-Solver (Ch. 9).
# * Euler, Heun and RK4 have orders 1, 2 and 4: the fitted slopes above.
# * Euler–Maruyama has **strong** order ½ with multiplicative noise (GBM), 1 with additive noise (OU: the
#   case of diffusion models), and **weak** order 1 (OU, checked against the exact law and EM's own
#   moment recursion).
#
# **Where next.** App. B follows the *density* of these equations (continuity and Fokker–Planck
# equations); App. C gives Itô's formula and Girsanov's theorem.
