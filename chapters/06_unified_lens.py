# %% [markdown]
# # Chapter 6 — A Unified and Systematic Lens on Diffusion Models
#
# *Companion to Ch. 6 of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# Chapters 2–5 reached diffusion models from three directions: variational (DDPM), score-based
# (NCSN, score SDE) and flow-based (flow matching). Ch. 6 shows they are one model seen through
# different coordinates. After this notebook you can
#
# * explain the **conditional trick** that makes every diffusion loss trainable, and write every
#   loss as one regression onto $A_t x_0 + B_t \epsilon$ with a weighting $w(t)$; see the sampling density of
#   $t$ ($p_\text{time}$) as **importance sampling** of that same objective;
# * train models on the four targets ($\epsilon$, $x_0$, score, velocity), **convert** each into the
#   others, and see that they define **the same probability-flow ODE**, written in each of the four
#   parameterisations down to the semilinear form Ch. 9 starts from;
# * move a model trained under one noise schedule to **any other affine path** by a change of time
#   and scale, and check it against the exact oracle;
# * check the **continuity (Fokker–Planck) equation** $\partial_t p_t + \nabla\cdot(p_t v_t) = 0$
#   numerically, on a grid.
#
# **Prerequisites:** Ch. 2–5 of the monograph (or notebooks 02–05): the forward kernel
# $x_t = \alpha_t x_0 + \sigma_t \epsilon$, the PF-ODE, the exact Gaussian-mixture oracle of `utils.gmm`.
# Time runs from data ($t=0$) to noise ($t=1$) throughout.

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import math, torch, matplotlib.pyplot as plt
from utils import config, schedules, targets, gmm, data, nets, losses, training, samplers, metrics, plotting, widgets
from utils import paths, exercises
profile, device, gen = config.setup(seed=0)
S = config.pick({
    "test": dict(hidden=64, depth=3, steps=1500, batch=256, lr=2e-3, t_lo=0.01, n_samples=8000,
                 ode_steps=20, edm_steps=18, n_mc=20_000, fp_n=(41, 81, 161), n_is=100_000),
    "cpu": dict(hidden=128, depth=3, steps=4000, batch=256, lr=2e-3, t_lo=0.01, n_samples=8000,
                ode_steps=40, edm_steps=18, n_mc=200_000, fp_n=(41, 81, 161), n_is=200_000),
})
S

# %% [markdown]
# ## 1. One data set, one schedule, and the truth
#
# We work with the eight-Gaussian mixture in 2D. Because it is a Gaussian mixture, every marginal
# $p_t$ is one too, and the exact oracle gives $\mathbb E[x_0\mid x_t]$, $\mathbb E[\epsilon\mid x_t]$,
# the score and the PF-ODE velocity in closed form. The models of this chapter use the DDPM
# schedule in continuous time (`VPLinear`, Ho et al. 2020; Song et al. 2021).

# %%
mix = data.toy_gmm("8gaussians")
sched = schedules.VPLinear()
oracle = mix.denoiser(sched)
data_fn = lambda n, g: mix.sample(n, g)[0]
data_scale = float(mix.covariance().trace().sqrt())        # RMS distance of a data point from the mean
x_data = data_fn(2000, gen)
fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
plotting.plot_samples(x_data, ax=axes[0], title="data $p_0$", s=1)
for ax, t in zip(axes[1:], (0.2, 0.4, 0.8)):
    plotting.plot_density(lambda p, t=t: oracle.log_prob(p, t), ax=ax, title=f"exact $p_t$, t={t}")
fig.tight_layout()
print(f"data scale sqrt(tr Cov) = {data_scale:.3f}")


# %% [markdown]
# ## 2. The conditional trick
#
# Every target a diffusion model learns is a conditional expectation,
# $u_t(x) = \mathbb E[\,A_t x_0 + B_t\epsilon \mid x_t = x\,]$: the denoiser ($A=1, B=0$), the noise
# ($A=0,B=1$), the score ($A=0, B=-1/\sigma_t$) and the velocity $\dot x_t$ ($A=\alpha_t', B=\sigma_t'$).
# The expectation is over the unknown posterior $p(x_0\mid x_t)$, so $u_t$ cannot be regressed on
# directly. The trick (Vincent 2011 for the score; Ho et al. 2020 for $\epsilon$; Lipman et al. 2023
# for velocities; Ch. 6) is that regressing on the *conditional* target gives the same minimiser:
#
# $$\mathcal L_{\text{cond}}(f) = \mathbb E\,\|f(x_t,t) - (A_t x_0 + B_t \epsilon)\|^2
#   = \underbrace{\mathbb E\,\|f(x_t,t) - u_t(x_t)\|^2}_{\mathcal L_{\text{marg}}(f)} + C,$$
#
# with $C = \mathbb E\,\|A_t x_0 + B_t\epsilon - u_t(x_t)\|^2$ independent of $f$ (the cross term
# vanishes because $u_t$ is the conditional mean). First the conditional target, written out:

# %%
def conditional_target(x0, eps, t, schedule, target):
    """A_t x0 + B_t eps for one of the four targets; x0, eps: (B, D), t: (B,)."""
    a, s, da, ds = (c[:, None].to(x0.dtype) for c in schedule.coefficients(t))
    A, B = {"eps": (0 * a, 1 + 0 * s), "x0": (1 + 0 * a, 0 * s),
            "score": (0 * a, -1 / s), "velocity": (da, ds)}[target]
    return A * x0 + B * eps


g = torch.Generator().manual_seed(1)
x0 = data_fn(S["n_mc"], g)
eps = torch.randn(x0.shape, dtype=x0.dtype, generator=g)
t = S["t_lo"] + (1 - S["t_lo"]) * torch.rand(x0.shape[0], dtype=x0.dtype, generator=g)
xt = sched.alpha(t)[:, None] * x0 + sched.sigma(t)[:, None] * eps
for k in targets.TARGETS:
    torch.testing.assert_close(conditional_target(x0, eps, t, sched, k),
                               losses.regression_target(x0, eps, t, sched, k))
print("conditional targets == utils.losses.regression_target for", targets.TARGETS)

# %% [markdown]
# Now the claim. Take three very different predictors $f$ of the velocity — the exact $u_t$ (the
# oracle), the zero function, and a deliberately wrong field — and measure both losses on the same
# Monte-Carlo draws. The gap $\mathcal L_{\text{cond}} - \mathcal L_{\text{marg}}$ must be the same
# constant $C$ for all three, up to Monte-Carlo error.

# %%
v_cond = conditional_target(x0, eps, t, sched, "velocity")
u = oracle.velocity(xt, t)                                           # the marginal target u_t(x_t)
predictors = {"oracle u_t": u, "zero": torch.zeros_like(u), "wrong: -x": -xt}
gap = {}
for name, f in predictors.items():
    per_cond, per_marg = ((f - v_cond) ** 2).sum(1), ((f - u) ** 2).sum(1)
    gap[name] = per_cond - per_marg                                  # per-sample, to get error bars
    print(f"{name:10s} L_cond {float(per_cond.mean()):8.3f}   L_marg {float(per_marg.mean()):8.3f}   "
          f"gap {float(gap[name].mean()):.3f}")
for i, j in (("oracle u_t", "zero"), ("oracle u_t", "wrong: -x"), ("zero", "wrong: -x")):
    d = gap[i] - gap[j]
    se = float(d.std() / math.sqrt(len(d)))
    print(f"gap({i}) - gap({j}) = {float(d.mean()):+.4f}  (MC standard error {se:.4f})")
    assert abs(float(d.mean())) < 4 * se
L_cond = {k: float(((f - v_cond) ** 2).sum(1).mean()) for k, f in predictors.items()}
assert min(L_cond, key=L_cond.get) == "oracle u_t"

# %% [markdown]
# ## 3. A roadmap of losses: one regression, four targets, one weighting
#
# Write a network's prediction in any of the four targets. Since
# $x_t = \alpha_t x_0 + \sigma_t\epsilon$ ties them together, the error in one target is a fixed
# multiple of the error in another. Measured against the $\epsilon$-error
# $\|\hat\epsilon - \epsilon\|^2$ (Kingma et al. 2021; Kingma & Gao 2023; Ch. 6):
#
# | target | conditional target $A_t x_0 + B_t\epsilon$ | squared error $= w(t)\,\|\hat\epsilon-\epsilon\|^2$ with $w(t) =$ |
# |---|---|---|
# | $\epsilon$ (DDPM) | $\epsilon$ | $1$ |
# | $x_0$ (denoiser) | $x_0$ | $\sigma_t^2/\alpha_t^2 = e^{-2\lambda_t}$ |
# | score (DSM) | $-\epsilon/\sigma_t$ | $1/\sigma_t^2$ |
# | velocity (FM) | $\alpha_t' x_0 + \sigma_t'\epsilon$ | $(\alpha_t\sigma_t' - \sigma_t\alpha_t')^2/\alpha_t^2 = \sigma_t^2 \lambda_t'^2$ |
#
# with $\lambda_t = \log(\alpha_t/\sigma_t)$. So "which target" and "which weighting" are the same
# choice: every loss is $\mathbb E_t\, w(t)\,\|\hat\epsilon-\epsilon\|^2$ for some $w$; the ELBO of
# Ch. 2 is the one with $w(t) = -\lambda_t'$ (Kingma et al. 2021). We check the table on an
# *untrained* network (the identity is exact, whatever the network):

# %%
torch.manual_seed(0)
raw_net = nets.MLP(2, 32, 1).double()
with torch.no_grad():
    eps_hat = raw_net(xt, t)
a, s, da, ds = (c[:, None] for c in sched.coefficients(t))
lam_dot = da / a - ds / s                                              # d lambda / dt
weights = {"eps": torch.ones_like(s), "x0": (s / a) ** 2, "score": 1 / s ** 2, "velocity": (s * lam_dot) ** 2}
err_eps = ((eps_hat - eps) ** 2).sum(1, keepdim=True)
for k in targets.TARGETS:
    pred_k = targets.convert(eps_hat, "eps", k, xt, t, sched)
    err_k = ((pred_k - conditional_target(x0, eps, t, sched, k)) ** 2).sum(1, keepdim=True)
    torch.testing.assert_close(err_k, weights[k] * err_eps, rtol=1e-8, atol=1e-10)
print("per-sample errors of all four targets == w(t) x eps error: exact")

# %%
tt = torch.linspace(S["t_lo"], 1, 200, dtype=torch.float64)
aa, ss, dda, dds = sched.coefficients(tt)
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for k, w in {"eps": torch.ones_like(tt), "x0": (ss / aa) ** 2, "score": 1 / ss ** 2,
             "velocity": (ss * (dda / aa - dds / ss)) ** 2, "ELBO": -(dda / aa - dds / ss)}.items():
    ax.semilogy(tt, w, label=k, ls="--" if k == "ELBO" else "-")
ax.set(xlabel="t", ylabel="w(t) on the eps-error", title="one regression, five weightings (VPLinear)")
ax.legend()
fig.tight_layout()


# %% [markdown]
# How far apart are these weightings? On VPLinear over the training range $t\in[0.01, 1]$:

# %%
w_x0 = (ss / aa) ** 2                                                  # the x0 loss's weight on the eps-error
x0_span = float(w_x0[-1] / w_x0[0])
print(f"x0 loss: w(0.01) = {float(w_x0[0]):.2e}, w(1) = {float(w_x0[-1]):.2e}: it weights t = 1 "
      f"{x0_span:.1e} times more than t = 0.01, and {float(w_x0[-1]):.1e} times more than the eps loss does")
print(f"score loss: 1/sigma^2 from {float(1 / ss[0] ** 2):.0f} down to {float(1 / ss[-1] ** 2):.2f}")
assert 1e6 < x0_span < 1e8 and 1e4 < float(w_x0[-1]) < 1e5

# %% [markdown]
# Measured in $\epsilon$-error, the $x_0$ loss's weight $\sigma_t^2/\alpha_t^2$ spans about **seven orders of magnitude**
# over $[0.01, 1]$: from $2\cdot10^{-3}$ at $t=0.01$ to $2\cdot10^{4}$ at $t=1$. The often-quoted $10^4$ is its ratio to the
# $\epsilon$ loss's weight (which is 1) at $t=1$, not the spread across noise levels. The score loss does the opposite
# ($1/\sigma_t^2$), and the ELBO sits in between. Training a raw
# score network with $w=1$ would spend its capacity on the $1/\sigma_t$ blow-up near $t = 0$; we train
# it with $\lambda(t)=\sigma_t^2$, Song et al.'s (2021) choice, which makes its loss *equal* to the
# $\epsilon$ loss in expectation — yet the network still outputs a different quantity.
#
# `utils.losses.DiffusionLoss` is the regression above on a batch; written out:

# %%
def diffusion_loss(net, x0, schedule, target, t_range, generator, weighting=None):
    lo, hi = t_range
    t = lo + (hi - lo) * torch.rand(x0.shape[0], dtype=x0.dtype, generator=generator)
    eps = torch.randn(x0.shape, dtype=x0.dtype, generator=generator)
    xt = schedule.alpha(t).to(x0.dtype)[:, None] * x0 + schedule.sigma(t).to(x0.dtype)[:, None] * eps
    per_sample = ((net(xt, t) - conditional_target(x0, eps, t, schedule, target)) ** 2).mean(1)
    return (per_sample * (weighting(t) if weighting else 1)).mean()


x_batch = data_fn(256, torch.Generator().manual_seed(2))
for k in targets.TARGETS:
    w = (lambda t: sched.sigma(t) ** 2) if k == "score" else None
    mine = diffusion_loss(raw_net, x_batch, sched, k, (S["t_lo"], 1.0), torch.Generator().manual_seed(3), w)
    ref = losses.DiffusionLoss(sched, k, weighting=w, t_range=(S["t_lo"], 1.0))(
        raw_net, x_batch, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mine, ref)
print("inline loss == utils.losses.DiffusionLoss for all four targets")

# %% [markdown]
# ## 4. Four models, one PF-ODE
#
# Train four networks of the same size, on the same data, with the same seeds, each on its own
# target. All four train on $t\in[t_{lo}, 1]$ with $t_{lo}$ = `S["t_lo"]` (where $\sigma_t\approx 0.045$): below
# it the score target $-\epsilon/\sigma_t$ is too large for a small MLP, and we end sampling there with
# one denoising step $\hat x_0 = \mathbb E[x_0\mid x_{t_{lo}}]$.

# %%
models, histories = {}, {}
for k in targets.TARGETS:
    w = (lambda t: sched.sigma(t).to(torch.float32) ** 2) if k == "score" else None
    loss_fn = losses.DiffusionLoss(sched, k, weighting=w, t_range=(S["t_lo"], 1.0))
    torch.manual_seed(0)
    net = nets.MLP(2, S["hidden"], S["depth"])
    ema, histories[k] = training.train(net, loss_fn, lambda n, g: data_fn(n, g).float(), S["steps"],
                                       batch_size=S["batch"], lr=S["lr"], ema_decay=0.995, seed=0,
                                       desc=f"{k} model")
    models[k] = targets.Denoiser(ema, k, sched)
fig, axes = plt.subplots(1, 4, figsize=(15, 3))
for ax, k in zip(axes, targets.TARGETS):
    plotting.plot_loss(histories[k], ax=ax, title=f"{k} target")
fig.tight_layout()


# %% [markdown]
# ### Sampling $t$ is a weighting too: $p_\text{time}$ against $w(t)$ (§6.2)
#
# A loss is $\mathcal L = \int w(t)\,\ell(t)\,dt$ with $\ell(t)=\mathbb E_{x_0,\epsilon}\|f(x_t,t)-(A_tx_0+B_t\epsilon)\|^2$; a training
# step estimates it from times drawn from some density $p_\text{time}$. Any $p$ that is positive where $w\ell$ is gives an
# unbiased estimate by **importance sampling**,
#
# $$\mathcal L=\mathbb E_{t\sim p}\Big[\frac{w(t)}{p(t)}\,\ell(t)\Big],$$
#
# so only the product matters: training with $p_\text{time}=p$ and weight $w$ optimises the same objective as uniform
# $t$ with weight $p\,w$. What the choice of $p$ changes is the **variance** of the estimate (and of its gradient):
# the best $p$ is proportional to $w(t)\,\mathbb E[\ell_t^2]^{1/2}$, and a $p$ that is tiny where $w\ell$ is not produces huge
# weights $w/p$. The check, on the trained $\epsilon$-network (fixed): the $\epsilon$ loss on $[t_{lo},1]$ ($w=1$), estimated with
# `losses.Uniform(t_lo, 1)`, with EDM's `losses.LogNormal(sched)` and with `losses.LogitNormal` (Esser et al. 2024), each
# through its `.sample` and `.density`. (LogNormal clamps its samples to $[t_\min,1]$; the clamped mass lies below $t_{lo}$,
# where the integrand is 0.)

# %%
eps_net_fixed = models["eps"].net
time_dists = {"Uniform(t_lo, 1)": losses.Uniform(S["t_lo"], 1.0), "LogNormal (EDM)": losses.LogNormal(sched),
              "LogitNormal(0, 1.5)": losses.LogitNormal(0.0, 1.5), "LogitNormal(0, 1)": losses.LogitNormal(0.0, 1.0)}


def is_estimate(p_time, n, generator, w=lambda t: torch.ones_like(t)):
    """Per-sample importance-sampled terms w(t)/p(t) ||eps_hat - eps||^2 (mean over dims), t ~ p_time."""
    t = p_time.sample(n, generator, dtype=torch.float64)
    x0, eps = data_fn(n, generator), torch.randn(n, 2, dtype=torch.float64, generator=generator)
    xt = sched.alpha(t)[:, None] * x0 + sched.sigma(t)[:, None] * eps
    with torch.no_grad():
        per = ((eps_net_fixed(xt.float(), t.float()).double() - eps) ** 2).mean(1)
    inside = (t > S["t_lo"]) & (t < 1)
    return torch.where(inside, w(t) / p_time.density(t) * per, torch.zeros_like(per))


is_terms = {k: is_estimate(p, S["n_is"], torch.Generator().manual_seed(40 + i)) for i, (k, p) in enumerate(time_dists.items())}
is_mean = {k: float(v.mean()) for k, v in is_terms.items()}
is_se = {k: float(v.std()) / math.sqrt(len(v)) for k, v in is_terms.items()}
for k, v in is_terms.items():
    print(f"{k:20s} loss estimate {is_mean[k]:.4f} ± {is_se[k]:.4f}   per-sample std {float(v.std()):.3f}   "
          f"largest weighted term {float(v.max()):8.1f}")
ref_k = "Uniform(t_lo, 1)"
for k in ("LogNormal (EDM)", "LogitNormal(0, 1.5)"):
    z_is = abs(is_mean[k] - is_mean[ref_k]) / math.hypot(is_se[k], is_se[ref_k])
    print(f"{k} vs uniform: difference {z_is:.2f} standard errors")
    assert z_is < 4
std_is = {k: float(v.std()) for k, v in is_terms.items()}
# LogitNormal(0, 1) has density ~1e-3 at t_lo = 0.01, where the eps-loss is largest: weights w/p near 1e3
print(f"LogitNormal(0, 1) density at t_lo: {float(time_dists['LogitNormal(0, 1)'].density(S['t_lo'])):.1e}")
w_over_p = {k: 1 / float(time_dists[k].density(S["t_lo"])) for k in time_dists}
print("importance weight w/p at t_lo:", {k: round(v, 1) for k, v in w_over_p.items()})
assert w_over_p["LogitNormal(0, 1)"] > 500 * w_over_p[ref_k]
config.record(nb06_is_loss_uniform=is_mean[ref_k], nb06_is_loss_lognormal=is_mean["LogNormal (EDM)"])

# %% [markdown]
# A sample standard deviation is a poor judge of a heavy tail, so compute each estimator's variance directly:
# $\operatorname{Var}_p = \int w^2\,m_2(t)/p(t)\,dt-\mathcal L^2$ with $m_2(t)=\mathbb E[\hat\ell^2\mid t]$, by quadrature over $t$ (256 nodes
# evenly spaced in $\log t$, 1000 draws of $(x_0,\epsilon)$ at each). The same quadrature gives $\mathcal L$ itself, a
# reference the importance-sampled estimates must meet, and the smallest variance any $p$ can reach,
# $(\int w\sqrt{m_2}\,dt)^2-\mathcal L^2$, at $p^\star\propto w\sqrt{m_2}$.

# %%
u_edges = torch.linspace(math.log(S["t_lo"]), 0.0, 257, dtype=torch.float64)
t_nodes = (0.5 * (u_edges[1:] + u_edges[:-1])).exp()                      # midpoints in log t
dt_nodes = t_nodes * (u_edges[1] - u_edges[0])                            # dt = t du
m_per = 1000
g_q = torch.Generator().manual_seed(50)
t_rep = t_nodes.repeat_interleave(m_per)
x0_q, eps_q = data_fn(len(t_rep), g_q), torch.randn(len(t_rep), 2, dtype=torch.float64, generator=g_q)
with torch.no_grad():
    xt_q = sched.alpha(t_rep)[:, None] * x0_q + sched.sigma(t_rep)[:, None] * eps_q
    l_hat = ((eps_net_fixed(xt_q.float(), t_rep.float()).double() - eps_q) ** 2).mean(1).reshape(len(t_nodes), m_per)
m1, m2 = l_hat.mean(1), (l_hat ** 2).mean(1)
L_quad = float((m1 * dt_nodes).sum())
se_quad = float((((m2 - m1 ** 2) / m_per) * dt_nodes ** 2).sum().sqrt())
std_quad = {k: math.sqrt(max(float((m2 / p.density(t_nodes) * dt_nodes).sum()) - L_quad ** 2, 0.0)) for k, p in time_dists.items()}
std_best = math.sqrt(float((m2.sqrt() * dt_nodes).sum()) ** 2 - L_quad ** 2)
print(f"quadrature: L = {L_quad:.4f} ± {se_quad:.4f}; per-sample std of the best p* = {std_best:.3f}")
for k in time_dists:
    print(f"{k:20s} per-sample std: quadrature {std_quad[k]:.3f}, sampled {std_is[k]:.3f}")
z_L = abs(L_quad - is_mean[ref_k]) / math.hypot(se_quad, is_se[ref_k])
print(f"uniform estimate vs quadrature: {z_L:.2f} standard errors")
assert z_L < 4
for k in ("Uniform(t_lo, 1)", "LogitNormal(0, 1.5)"):
    assert abs(std_is[k] / std_quad[k] - 1) < 0.1           # bounded weights w/p: the sample std is trustworthy
assert std_quad["LogitNormal(0, 1)"] > 2 * std_quad[ref_k]    # same objective, a far larger variance
assert min(std_quad.values()) >= std_best

# %% [markdown]
# Same objective, different variance. Uniform, EDM's log-normal and the wide logit-normal differ by some
# tens of percent at most here (which is smallest depends on the network: the log-normal puts its mass at small $t$,
# where the $\epsilon$-error lives). The narrow `LogitNormal(0, 1)` is also unbiased, but its density at $t_{lo}$ is about
# $10^{-3}$, so rare small-$t$ draws carry weights near $10^3$: its variance is several times the others' (by quadrature),
# and its *sample* variance is dominated by draws a run of this size may or may not contain, so its standard error
# cannot be trusted — which is why its mean is not asserted. EDM's log-normal has the mirror-image problem at the other
# end: its density near $t=1$ is tiny, so its weights are unbounded there too, but the $\epsilon$-error there is small, and
# its sample spread stays within some 15% of the quadrature value (only the uniform and the wide logit-normal, whose
# weights are bounded on $[t_{lo},1]$, are asserted to match it within 10%). (In flow matching, where
# LogitNormal is used, the velocity loss's own weight is small at the ends, and the product $p\,w$ is what is
# trained.)
#
# ### The PF-ODE in four parameterisations (§6.3)
#
# Write $\lambda_t=\log(\alpha_t/\sigma_t)$ and $\lambda_t'=\alpha_t'/\alpha_t-\sigma_t'/\sigma_t$. Substituting $x_t=\alpha_t\hat x_0+\sigma_t\hat\epsilon$
# and $\nabla\log p_t=-\hat\epsilon/\sigma_t$ into the velocity $\hat v=\alpha_t'\hat x_0+\sigma_t'\hat\epsilon$ gives the same ODE in each of the four
# predictions, each as a linear term plus a nonlinear one:
#
# $$\frac{dx}{dt}=\hat v(x,t)
#   =\frac{d\log\alpha_t}{dt}\,x-\sigma_t\lambda_t'\,\hat\epsilon(x,t)
#   =\frac{d\log\alpha_t}{dt}\,x+\sigma_t^2\lambda_t'\,\nabla\log p_t(x)
#   =\frac{d\log\sigma_t}{dt}\,x+\alpha_t\lambda_t'\,\hat x_0(x,t).$$
#
# The score form is the familiar $f(t)x-\tfrac12g(t)^2\nabla\log p_t$, with $f=d\log\alpha_t/dt$ and $\tfrac12g^2=-\sigma_t^2\lambda_t'$.
# The $\epsilon$ form, $\frac{dx}{dt}=\frac{d\log\alpha_t}{dt}x-\sigma_t\lambda_t'\,\hat\epsilon$, is the **semilinear** ODE Ch. 9 starts
# from (§9.1.2): its linear part is solved exactly by the integrating factor $\alpha_t$, and in the variable $\lambda$
# only the $\hat\epsilon$ term is left to approximate (DDIM, DEIS, DPM-Solver); the $\hat x_0$ form, with linear part
# $d\log\sigma_t/dt$, is where DPM-Solver++ starts. With the oracle, all four must be one vector field:

# %%
def pf_ode_forms(model, x, t, schedule):
    """The PF-ODE right-hand side written with each of the four predictions (x: (B, 2), float t)."""
    a, s, da, ds = (float(c) for c in schedule.coefficients(torch.tensor(t, dtype=torch.float64)))
    lam_dot = da / a - ds / s
    return {"eps": da / a * x - s * lam_dot * model.eps(x, t),
            "score": da / a * x + s ** 2 * lam_dot * model.score(x, t),
            "x0": ds / s * x + a * lam_dot * model.x0(x, t),
            "velocity": model.velocity(x, t)}


ode_checks = 0
for t_c in (0.02, 0.1, 0.3, 0.6, 0.95):
    x_c = mix.sample(500, torch.Generator().manual_seed(41), t=t_c, schedule=sched)[0]
    forms = pf_ode_forms(oracle, x_c, t_c, sched)
    ref_field = samplers.velocity_field(oracle)(x_c, t_c)[0]                   # what the samplers integrate
    torch.testing.assert_close(forms["score"], float(sched.f(t_c)) * x_c - 0.5 * float(sched.g2(t_c)) * oracle.score(x_c, t_c))
    for k, v in forms.items():
        torch.testing.assert_close(v, ref_field, rtol=1e-6, atol=1e-6)
        ode_checks += 1
print(f"eps, score, x0 and velocity forms of the PF-ODE == the oracle's velocity field to 1e-6 ({ode_checks} checks)")

# %% [markdown]
# ### Converting between targets
#
# Given $(x_t, t)$, any one prediction fixes the pair $(\hat x_0, \hat\epsilon)$ through
# $x_t = \alpha_t\hat x_0 + \sigma_t\hat\epsilon$, and the pair fixes the rest. From a velocity
# $\hat v = \alpha_t'\hat x_0 + \sigma_t'\hat\epsilon$ it is a 2×2 linear solve. Written out:

# %%
def to_x0_eps(pred, target, x, t, schedule):
    a, s, da, ds = (c[:, None].to(x.dtype) for c in schedule.coefficients(torch.as_tensor(t).expand(x.shape[0])))
    if target == "x0":
        return pred, (x - a * pred) / s
    eps = {"eps": pred, "score": -s * pred}.get(target)
    if eps is not None:
        return (x - s * eps) / a, eps
    det = a * ds - s * da                                    # velocity: solve the 2x2 system
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def from_x0_eps(x0, eps, target, x, t, schedule):
    a, s, da, ds = (c[:, None].to(x.dtype) for c in schedule.coefficients(torch.as_tensor(t).expand(x.shape[0])))
    return {"x0": x0, "eps": eps, "score": -eps / s, "velocity": da * x0 + ds * eps}[target]


x_probe = mix.sample(500, torch.Generator().manual_seed(4), t=0.5, schedule=sched)[0].float()
with torch.no_grad():
    for src, model in models.items():
        raw = model.predict(x_probe, 0.5)                     # what the network outputs
        for dst in targets.TARGETS:
            mine = from_x0_eps(*to_x0_eps(raw, src, x_probe, 0.5, sched), dst, x_probe, 0.5, sched)
            torch.testing.assert_close(mine, getattr(model, dst)(x_probe, 0.5), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(targets.convert(targets.convert(raw, src, dst, x_probe, 0.5, sched),
                                                       dst, src, x_probe, 0.5, sched), raw, rtol=1e-3, atol=1e-3)
print("inline conversions == utils.targets; every round trip src -> dst -> src returns the prediction")


# %% [markdown]
# Each model now answers all four questions. How well? The table gives the error of every
# (model, target) pair against the oracle, relative to the oracle's size, on points drawn from $p_t$
# at $t=0.5$. A model is not equally good in every coordinate: conversion divides by $\alpha_t$ or
# $\sigma_t$, and so amplifies errors where those are small. The velocity column looks worst for a
# different reason: for a VP schedule $v_t(x) = -\tfrac12\beta(t)\,(x + \nabla\log p_t(x))$, and at
# $t = 0.5$ the marginal is already close to $\mathcal N(0, I)$ where $x + \nabla\log p_t \approx 0$, so the
# velocity is a small difference of two large terms and its *relative* error is large.

# %%
def rel_err(model, target, t, n=2000):
    x = mix.sample(n, torch.Generator().manual_seed(5), t=t, schedule=sched)[0]
    with torch.no_grad():
        got = getattr(model, target)(x.float(), t).double()
    want = getattr(oracle, target)(x, t)
    return float((got - want).norm(dim=1).mean() / want.norm(dim=1).mean())


print("rel. error vs oracle at t=0.5   " + "  ".join(f"{k:>9s}" for k in targets.TARGETS))
table = {m: {k: rel_err(models[m], k, 0.5) for k in targets.TARGETS} for m in models}
for m, row in table.items():
    print(f"{m:>9s} model                 " + "  ".join(f"{row[k]:9.3f}" for k in targets.TARGETS))
worst_eps = max(row["eps"] for row in table.values())
print(f"every model's eps (converted where needed) is within {worst_eps:.3f} of the oracle's")
assert worst_eps < 0.05

# %% [markdown]
# ### Same noise, same sample
#
# The PF-ODE $\mathrm dx/\mathrm dt = v_t(x)$ is deterministic. If the four models learned the same
# $v_t$, then integrating it from the *same* noise must land on the *same* points (Song et al. 2021;
# Ch. 6). We run Heun's method from $t=1$ to $t_{lo}$ for every model and for the oracle, from one
# shared draw of $x_1$, and finish with the denoising step.

# %%
z = samplers.sample_prior(sched, (S["n_samples"], 2), torch.Generator().manual_seed(6))
grid = schedules.uniform_grid(S["ode_steps"], 1.0, S["t_lo"])


def pf_ode_sample(model, x1, callback=None):
    x = samplers.sample_heun(model, x1, grid, callback=callback)
    with torch.no_grad():
        return model.x0(x, S["t_lo"])


samples = {k: pf_ode_sample(m, z).double() for k, m in models.items()}
samples["oracle"] = pf_ode_sample(oracle, z.double())
names = list(models)
pair = {(i, j): float((samples[i] - samples[j]).norm(dim=1).mean()) for i in names for j in names if i < j}
indep = float((samples["eps"] - samples["eps"].roll(1, 0)).norm(dim=1).mean())   # different noise
for (i, j), d in pair.items():
    print(f"mean |x_{i} - x_{j}| = {d:.3f}")
mean_pair = sum(pair.values()) / len(pair)
print(f"mean pairwise distance {mean_pair:.3f} = {mean_pair / data_scale:.3f} x data scale; "
      f"samples from *different* noise are {indep:.3f} apart")
assert mean_pair < 0.15 * data_scale        # and more than 10x closer than samples from different noise
assert mean_pair < 0.1 * indep
config.record(nb06_four_models_pairwise_distance=float(mean_pair), nb06_worst_eps_error=float(worst_eps))


# %%
def mode_of(x):
    return torch.cdist(x, mix.means).argmin(1)


same_mode = torch.stack([mode_of(samples[k]) == mode_of(samples["oracle"]) for k in names]).all(0)
for k in names:
    print(f"{k:9s} model sends {float((mode_of(samples[k]) == mode_of(samples['oracle'])).double().mean()):.3f} "
          "of the noise draws to the same mode as the oracle's PF-ODE")
print(f"all four models agree with the oracle on {float(same_mode.double().mean()):.3f} of the draws "
      "(the rest start near a boundary between two basins)")
assert float(same_mode.double().mean()) > 0.8
ratios = {}
for k in names + ["oracle"]:
    fc = metrics.compare_to_floor(samples[k], data_fn)
    ratios[k] = fc.ratio
    print(f"{k:9s} {fc}")
print(f"the oracle itself, with the same sampler and stopping time, reaches ratio {ratios['oracle']:.2f}; "
      f"the models are within {max(abs(ratios[k] - ratios['oracle']) for k in names):.2f} of it")
assert max(ratios[k] for k in names) < 1.5
config.record(**{f"nb06_{k}_sw_ratio": float(ratios[k]) for k in names})

# %%
recs = {k: samplers.Recorder() for k in names}
for k in names:
    samplers.sample_heun(models[k], z[:40], grid, callback=recs[k])
fig, axes = plt.subplots(1, 2, figsize=(11, 5))
for c, k in enumerate(names):
    plotting.plot_trajectories(recs[k].xs, ax=axes[0], n_paths=40, color=f"C{c}", alpha=0.6, lim=3.2)
axes[0].set_title("PF-ODE paths of the four models from the same 40 noise draws")
axes[0].legend([plt.Line2D([], [], color=f"C{c}") for c in range(4)], names, loc="lower right")
for c, k in enumerate(names):
    plotting.plot_samples(samples[k][:1500], ax=axes[1], s=2, alpha=0.4, color=f"C{c}", lim=3.2)
axes[1].set_title("their samples (8 modes, overlapping)")
fig.tight_layout()


# %% [markdown]
# ## 5. All affine paths are one path: changing the schedule
#
# Two schedules differ only in *when* they reach a given signal-to-noise ratio and by an overall
# *scale*. If $\lambda^{\text{new}}(t) = \lambda^{\text{old}}(t')$, then
# $(\alpha^{\text{new}}_t, \sigma^{\text{new}}_t) = c\,(\alpha^{\text{old}}_{t'}, \sigma^{\text{old}}_{t'})$ with
# $c = \|(\alpha^{\text{new}}_t,\sigma^{\text{new}}_t)\| / \|(\alpha^{\text{old}}_{t'},\sigma^{\text{old}}_{t'})\|$, so
# $x^{\text{new}}_t = c\, x^{\text{old}}_{t'}$ with the *same* $(x_0, \epsilon)$. Hence
#
# $$\mathbb E^{\text{new}}[x_0 \mid x_t = x] = \mathbb E^{\text{old}}[x_0\mid x_{t'} = x/c],\qquad
#   \mathbb E^{\text{new}}[\epsilon \mid x_t = x] = \mathbb E^{\text{old}}[\epsilon\mid x_{t'} = x/c],$$
#
# and the other targets follow by conversion (Kingma et al. 2021, on the invariance of the
# continuous-time loss to the schedule; Karras et al. 2022, who sample pre-trained VP models with the
# EDM schedule; Ch. 6). Written out for one time:

# %%
def x0_eps_under_new_schedule(old_denoiser, new_schedule, x, t):
    old = old_denoiser.schedule
    lam = new_schedule.log_snr(t)                              # the log-SNR the new path has at t
    t_old = old.t_from_log_snr(lam)                            # when the old path has it
    c = (new_schedule.alpha(t) ** 2 + new_schedule.sigma(t) ** 2).sqrt() / \
        (old.alpha(t_old) ** 2 + old.sigma(t_old) ** 2).sqrt()
    return old_denoiser.x0_eps(x / c, float(t_old))           # x0 and eps carry over unchanged


edm = schedules.EDM()
x_e = mix.sample(1000, torch.Generator().manual_seed(7), t=0.3, schedule=edm)[0]
mine = x0_eps_under_new_schedule(oracle, edm, x_e, 0.3)
moved = paths.reschedule(oracle, edm)
torch.testing.assert_close(mine, moved.x0_eps(x_e, 0.3))
print("inline change of schedule == utils.paths.reschedule")

# %% [markdown]
# The oracle makes this a test with no slack: the VP oracle moved to schedule B must *be* B's oracle,
# in all four targets, for every B whose log-SNR range the VP schedule covers.

# %%
checks = 0
for new in (schedules.EDM(), schedules.VPCosine(), schedules.LinearPath(), schedules.VE(sigma_max=80.0)):
    moved, exact = paths.reschedule(oracle, new), mix.denoiser(new)
    lam_min = float(sched.log_snr(1.0))                         # VPLinear reaches lambda >= -5.02
    for t_new in (0.1, 0.3, 0.6, 0.9):
        if float(new.log_snr(t_new)) < lam_min:
            continue
        x = mix.sample(500, torch.Generator().manual_seed(8), t=t_new, schedule=new)[0]
        for k in targets.TARGETS:
            torch.testing.assert_close(moved(x, t_new, target=k), exact(x, t_new, target=k), rtol=1e-6, atol=1e-6)
        checks += 1
print(f"rescheduled VP oracle == exact oracle of the new schedule at {checks} (schedule, t) pairs, all four targets")
assert checks >= 10

# %% [markdown]
# Sampling. Start from the same noise $x_1 \sim \mathcal N(0, 80^2 I)$ of the EDM schedule
# ($\sigma_t = 80\,t$) and run Heun on EDM's own time grid, once with the EDM oracle and once with the
# VP oracle moved to EDM. They integrate the same ODE, so they must agree to round-off; and the
# same ODE solved in the VP clock, from the matching time $t'$ and the scaled start $x_1/c$, must agree up to
# the discretisation error of the two solvers.

# %%
moved = paths.reschedule(oracle, edm)
t_end_edm = float(edm.t_from_log_snr(sched.log_snr(S["t_lo"])))            # same log-SNR as VP's t_lo
edm_steps = schedules.edm_grid(edm, S["edm_steps"], t_max=1.0, t_min=t_end_edm)
x1_edm = samplers.sample_prior(edm, (2000, 2), torch.Generator().manual_seed(9), dtype=torch.float64)
end_moved = samplers.sample_heun(moved, x1_edm, edm_steps)
end_exact = samplers.sample_heun(mix.denoiser(edm), x1_edm, edm_steps)
roundoff = float((end_moved - end_exact).abs().max())
print(f"max |moved VP oracle - EDM oracle| after Heun on the EDM grid: {roundoff:.2e}")
assert roundoff < 1e-8

(t1_old, c1), (t_end_old, c_end) = moved.time_and_scale(1.0), moved.time_and_scale(t_end_edm)
errs = []
for n in (S["edm_steps"], 2 * S["edm_steps"], 4 * S["edm_steps"]):
    vp_grid = sched.t_from_log_snr(-torch.log(edm.noise_level(schedules.edm_grid(edm, n, t_max=1.0, t_min=t_end_edm))))
    vp_grid[0], vp_grid[-1] = t1_old, t_end_old
    end_vp = samplers.sample_heun(oracle, x1_edm / c1, vp_grid)
    end_edm = samplers.sample_heun(moved, x1_edm, schedules.edm_grid(edm, n, t_max=1.0, t_min=t_end_edm))
    errs.append(float((c_end * end_vp - end_edm).norm(dim=1).mean()))
    print(f"Heun, {n:3d} steps: mean |c x_VP - x_EDM| at the end = {errs[-1]:.2e}")
slope = math.log(errs[0] / errs[-1]) / math.log(4)
print(f"the gap falls as steps^-{slope:.2f} (Heun is second order)")
assert errs[-1] < errs[0] / 4 and errs[-1] < 1e-2 * data_scale

# %% [markdown]
# Now a trained network: the $\epsilon$-model of Section 4 was trained under VPLinear only. Moved to
# the EDM schedule, sampled with Heun on EDM's grid, it still produces the data — and, since the ODE
# is the same, nearly the same points as its own VP sampling from the matching noise.
#
# **Counting the evaluations.** EDM's sampler makes $2N-1$ network calls for $N$ steps because its last step
# lands on $\sigma=0$, where Heun's correction is undefined and the step stays Euler. Our grid stops at $t_{lo}>0$
# instead (the same log-SNR as the VP runs), so every one of the $N$ steps is a full Heun step (2 calls) and the final
# denoising $\hat x_0$ is one more: $2N+1$. A wrapper that counts the network's calls says so.

# %%
class CountingNet(torch.nn.Module):
    """Wraps a network and counts its calls (one call = one function evaluation, NFE)."""
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, t):
        self.calls += 1
        return self.net(x, t)


counting = CountingNet(models["eps"].net)
eps_on_edm = paths.reschedule(targets.Denoiser(counting, "eps", sched), edm)
x1 = c1.float() * z                                    # the EDM noise that corresponds to the VP noise z
with torch.no_grad():
    x_edm = samplers.sample_heun(eps_on_edm, x1, edm_steps)
    x_edm = eps_on_edm.x0(x_edm, t_end_edm).double()
nfe_edm = counting.calls
fc_edm = metrics.compare_to_floor(x_edm, data_fn)
print(f"eps model (trained on VPLinear) sampled on EDM, {S['edm_steps']} Heun steps: {nfe_edm} network calls; {fc_edm}")
assert nfe_edm == 2 * S["edm_steps"] + 1
vp_grid = torch.linspace(float(t1_old), S["t_lo"], S["ode_steps"] + 1, dtype=torch.float64)
with torch.no_grad():
    x_vp = models["eps"].x0(samplers.sample_heun(models["eps"], z, vp_grid), S["t_lo"]).double()
gap = float((x_edm - x_vp).norm(dim=1).median())
print(f"median distance to the same model's VP-clock sample from the same noise: {gap:.3f}")
assert fc_edm.ratio < 1.5
config.record(nb06_rescheduled_edm_sw_ratio=float(fc_edm.ratio))


# %% [markdown]
# ## 6. Beneath it all: the continuity (Fokker–Planck) equation
#
# Why do all these models and clocks agree? Because each PF-ODE velocity $v_t$ transports the same
# family of marginals $p_t$, and transport of mass is the continuity equation
#
# $$\partial_t p_t(x) + \nabla\cdot\big(p_t(x)\, v_t(x)\big) = 0$$
#
# (Ch. 6; the Fokker–Planck equation of the forward SDE, with the diffusion term folded into the drift,
# Song et al. 2021). The oracle gives $p_t$ and $v_t$ exactly, so we can check the equation on a grid
# with central finite differences: in time, $(p_{t+\delta} - p_{t-\delta})/2\delta$; in space, the
# divergence of the flux $p_t v_t$.

# %%
def continuity_terms(log_prob, velocity, t, lim, n, dt=1e-4):
    u = torch.linspace(-lim, lim, n, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    p = lambda s: log_prob(pts, s).exp().reshape(n, n)
    dp_dt = (p(t + dt) - p(t - dt)) / (2 * dt)
    flux = p(t)[..., None] * velocity(pts, t).reshape(n, n, 2)
    h = u[1] - u[0]
    div = (torch.gradient(flux[..., 0], spacing=float(h), dim=0, edge_order=2)[0]
           + torch.gradient(flux[..., 1], spacing=float(h), dim=1, edge_order=2)[0])
    return dp_dt, div


t_fp, lim_fp = 0.15, 3.2
dp_dt, div = continuity_terms(oracle.log_prob, oracle.velocity, t_fp, lim_fp, S["fp_n"][1])
ref = paths.continuity_residual(oracle.log_prob, oracle.velocity, t_fp, lim=lim_fp, n=S["fp_n"][1])
torch.testing.assert_close(dp_dt, ref.dp_dt)
torch.testing.assert_close(div, ref.div_flux)
print(f"inline == utils.paths.continuity_residual; relative residual max|dp/dt + div(pv)| / max|dp/dt| "
      f"= {ref.relative_error:.2e} at n={S['fp_n'][1]}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
vmax = float(dp_dt.abs().max())
res = dp_dt + div
for ax, img, title, vm in zip(axes, (dp_dt, -div, res), (r"$\partial_t p_t$", r"$-\nabla\cdot(p_t v_t)$",
                              f"residual (colour scale x{vmax / float(res.abs().max()):.0f})"),
                              (vmax, vmax, float(res.abs().max()))):
    ax.imshow(img.T, origin="lower", extent=(-lim_fp, lim_fp, -lim_fp, lim_fp), cmap="RdBu_r", vmin=-vm, vmax=vm)
    ax.set_title(title + f", t={t_fp}")
fig.tight_layout()

# %% [markdown]
# The residual is not exactly zero because of the finite differences, so the honest test is that it
# vanishes *at the rate the differences promise*: second order in the grid spacing $h$. A velocity
# field that is slightly wrong — here $1.1\,v_t$ — leaves a residual that does not go away.

# %%
rel = [paths.continuity_residual(oracle.log_prob, oracle.velocity, t_fp, lim=lim_fp, n=n).relative_error
       for n in S["fp_n"]]
hs = [2 * lim_fp / (n - 1) for n in S["fp_n"]]
fp_slope = torch.linalg.lstsq(torch.tensor([[math.log(h), 1.0] for h in hs]),
                              torch.tensor([[math.log(r)] for r in rel])).solution[0, 0].item()
wrong = paths.continuity_residual(oracle.log_prob, lambda x, s: 1.1 * oracle.velocity(x, s), t_fp,
                                  lim=lim_fp, n=S["fp_n"][-1]).relative_error
for n, r in zip(S["fp_n"], rel):
    print(f"n={n:4d}  relative residual {r:.2e}")
print(f"fitted order in h: {fp_slope:.2f} (expected 2);  with velocity 1.1 v_t: {wrong:.2e}")
assert 1.8 < fp_slope < 2.2 and rel[-1] < 2e-2 and wrong > 5 * rel[-1]
config.record(nb06_fokker_planck_order=float(fp_slope), nb06_fokker_planck_residual=float(rel[-1]))


# %% [markdown]
# ## 7. Widget: the four predictions at a point as $t$ moves
#
# Pick a point $x$ and a time $t$. The arrows are the oracle's $\hat\epsilon$, the score scaled by $\sigma_t$
# (always the exact opposite of $\hat\epsilon$: $\sigma_t\nabla\log p_t = -\hat\epsilon$) and the velocity $v_t$;
# the star is $\hat x_0 = \mathbb E[x_0\mid x_t=x]$; crosses are the four trained models' $\hat x_0$.
# Move $t$: near $t=1$, $\hat x_0$ sits at the data mean and all directions point to the centre;
# as $t\to 0$, $\hat x_0$ snaps to the nearest mode. The right panel tracks the four predictions'
# sizes against $t$.

# %%
def draw(t=0.15, x1=1.2, x2=-0.6):
    x = torch.tensor([[x1, x2]], dtype=torch.float64)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    plotting.plot_density(lambda p: oracle.log_prob(p, t), ax=ax, lim=3.2, cmap="Greys")
    a_t, s_t = float(sched.alpha(t)), float(sched.sigma(t))
    x0_hat, eps_hat = (v[0].numpy() for v in oracle.x0_eps(x, t))
    score, vel = oracle.score(x, t)[0].numpy(), oracle.velocity(x, t)[0].numpy()
    p = x[0].numpy()
    for vec, col, lab in ((eps_hat, "C0", r"$\hat\epsilon$"), (s_t * score, "C1", r"$\sigma_t\nabla\log p_t$"),
                          (0.15 * vel, "C3", r"$0.15\,v_t$")):
        ax.annotate("", xy=p + vec, xytext=p, arrowprops=dict(arrowstyle="->", color=col, lw=2))
        ax.plot([], [], color=col, label=lab)
    ax.plot(*p, "ko", ms=6, label="x")
    ax.plot(*x0_hat, "*", color="gold", mec="k", ms=16, label=r"$\hat x_0$ (oracle)")
    with torch.no_grad():
        for c, k in enumerate(names):
            ax.plot(*models[k].x0(x.float(), t)[0].numpy(), "x", color=f"C{c + 4}", ms=9, mew=2, label=f"{k} model")
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(-3.2, 3.2)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"t={t:.2f}: alpha={a_t:.2f}, sigma={s_t:.2f}")
    ts = torch.linspace(S["t_lo"], 1.0, 100, dtype=torch.float64)
    xs = x.expand(100, 2)
    for k, col in zip(targets.TARGETS, ("C0", "gold", "C1", "C3")):
        ax2.semilogy(ts, oracle(xs, ts, target=k).norm(dim=1), color=col, label=f"|{k}|")
    ax2.axvline(t, color="k", ls=":")
    ax2.set(xlabel="t", title="sizes of the four predictions at x (oracle)")
    ax2.legend()
    fig.tight_layout()
    return fig


widgets.explore(draw, {"t": (0.02, 1.0, 0.01, 0.15), "x1": (-3.0, 3.0, 0.1, 1.2), "x2": (-3.0, 3.0, 0.1, -0.6)})

# %% [markdown]
# ## Exercises
#
# Each answer cell is followed by a check: run it to test your answer against the exact oracle.
#
# **Exercise 1 (flow matching as a weighted ε-loss).** For the linear path $\alpha_t = 1-t$,
# $\sigma_t = t$ show that the velocity loss is the $\epsilon$-loss with weight $w(t) = 1/(1-t)^2$,
# using the table of Section 3. Define the weight as a function `w_lin(t)` (of a tensor of times) and check it
# numerically with `targets.convert` on random predictions; the check compares `w_lin(t)` with the ratio of the
# two squared errors on its own draws.

# %% tags=["solution"]
lin = schedules.LinearPath()
tl = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(10)) * 0.98
x0_l, eps_l = data_fn(1000, torch.Generator().manual_seed(11)), torch.randn(1000, 2, dtype=torch.float64)
x_l = (1 - tl)[:, None] * x0_l + tl[:, None] * eps_l
eps_hat_l = eps_l + 0.3 * torch.randn(1000, 2, dtype=torch.float64)          # any prediction will do
v_err = ((targets.convert(eps_hat_l, "eps", "velocity", x_l, tl, lin) - (eps_l - x0_l)) ** 2).sum(1)
e_err = ((eps_hat_l - eps_l) ** 2).sum(1)


def w_lin(t):
    """The weight of the eps-error in the velocity loss of the linear path: (sigma_t lambda'_t)^2 = 1/(1-t)^2."""
    return 1 / (1 - t) ** 2


print(f"max |velocity error - w(t) eps error| = {float((v_err - w_lin(tl) * e_err).abs().max()):.1e}")

# %% tags=["check"]
g_chk = torch.Generator().manual_seed(71)
t_chk = torch.rand(500, dtype=torch.float64, generator=g_chk) * 0.95
x0_chk, eps_chk = data_fn(500, g_chk), torch.randn(500, 2, dtype=torch.float64, generator=g_chk)
x_chk = (1 - t_chk)[:, None] * x0_chk + t_chk[:, None] * eps_chk
eps_pred = eps_chk + torch.randn(500, 2, dtype=torch.float64, generator=g_chk)
v_pred = targets.convert(eps_pred, "eps", "velocity", x_chk, t_chk, schedules.LinearPath())
ratio = ((v_pred - (eps_chk - x0_chk)) ** 2).sum(1) / ((eps_pred - eps_chk) ** 2).sum(1)
exercises.check_close("w_lin(t)", w_lin(t_chk), ratio, rtol=1e-6,
                      hint="v = (eps - x) / (1 - t) for the linear path, so an eps error e becomes a velocity error "
                           "e / (1 - t): the weight is its square")

# %% [markdown]
# **Exercise 2 (Fokker–Planck with the SDE).** The forward SDE $\mathrm dx = f(t)x\,\mathrm dt + g(t)\,\mathrm dW$
# has the same marginals. Compute the right-hand side $-\nabla\cdot(f(t)\,x\,p_t) + \tfrac12 g(t)^2\Delta p_t$ for the
# oracle at $t = 0.3$ on the grid of Section 6 (`S["fp_n"][1]` points per axis on the square of half-width `lim_fp`,
# `ij` indexing as in `paths.continuity_residual`), store it in `fp_rhs`, shape (n, n), and check that it equals
# $\partial_t p_t$. Explain why the PF-ODE velocity $v_t = f x - \tfrac12 g^2\nabla\log p_t$ gives the same equation.

# %% tags=["solution"]
n2, t2 = S["fp_n"][1], 0.3
terms = paths.continuity_residual(oracle.log_prob, lambda x, s: float(sched.f(s)) * x, t2, lim=lim_fp, n=n2)
h2 = 2 * lim_fp / (n2 - 1)
p2 = oracle.log_prob(terms.points, t2).exp().reshape(n2, n2)
lap = sum(torch.gradient(torch.gradient(p2, spacing=h2, dim=d, edge_order=2)[0], spacing=h2, dim=d, edge_order=2)[0]
          for d in (0, 1))
fp_rhs = -terms.div_flux + 0.5 * float(sched.g2(t2)) * lap
fp_err = float((terms.dp_dt - fp_rhs).abs().max() / terms.dp_dt.abs().max())
print(f"Fokker-Planck relative residual: {fp_err:.2e}")
# -div(f x p) + g^2/2 lap p = -div(p (f x - g^2/2 grad log p)) since lap p = div(p grad log p).

# %% tags=["check"]
u_chk = torch.linspace(-lim_fp, lim_fp, S["fp_n"][1], dtype=torch.float64)
grid_chk = torch.stack([m.reshape(-1) for m in torch.meshgrid(u_chk, u_chk, indexing="ij")], 1)
p_at = lambda s: oracle.log_prob(grid_chk, s).exp().reshape(len(u_chk), len(u_chk))
dp_dt_chk = (p_at(0.3 + 1e-4) - p_at(0.3 - 1e-4)) / 2e-4                  # d p_t / dt of the exact marginals
exercises.check_close("fp_rhs", fp_rhs, dp_dt_chk, rtol=0, atol=0.05 * float(dp_dt_chk.abs().max()),
                      hint="on the (n2, n2) grid of [-lim_fp, lim_fp]^2 at t = 0.3: -div(f(t) x p_t) + 1/2 g(t)^2 "
                           "(d^2/dx1^2 + d^2/dx2^2) p_t, with sched.f and sched.g2")

# %% [markdown]
# **Exercise 3 (the velocity under a change of schedule).** Differentiate $x^{\text{new}}_t = c(t)\,x^{\text{old}}_{t'(t)}$
# to get $v^{\text{new}}_t(x) = \frac{c'}{c}\,x + c\,\frac{\mathrm dt'}{\mathrm dt}\,v^{\text{old}}_{t'}(x/c)$.
# Define `v_chain(x, t)`, this formula for the VP oracle moved to EDM, with $(t', c)$ from
# `paths.reschedule(oracle, edm).time_and_scale(t)` and finite differences for $c'$ and $\mathrm dt'/\mathrm dt$; the
# check compares it with `paths.reschedule(oracle, edm).velocity` at three times.

# %% tags=["solution"]
moved = paths.reschedule(oracle, edm)


def v_chain(x, t, d=1e-5):
    """c'/c x + c dt'/dt v_old(x / c, t'), with c' and dt'/dt by central differences."""
    (tp, cp), (tm, cm), (t_old, c) = (moved.time_and_scale(s) for s in (t + d, t - d, t))
    dc, dt_old = float(cp - cm) / (2 * d), float(tp - tm) / (2 * d)
    return dc / float(c) * x + float(c) * dt_old * oracle.velocity(x / c, float(t_old))


x3 = mix.sample(300, torch.Generator().manual_seed(12), t=0.4, schedule=edm)[0]
print(f"max |chain rule - rescheduled velocity| at t = 0.4: {float((v_chain(x3, 0.4) - moved.velocity(x3, 0.4)).abs().max()):.1e}")

# %% tags=["check"]
for t_chk in (0.2, 0.4, 0.7):
    x_chk = mix.sample(300, torch.Generator().manual_seed(72), t=t_chk, schedule=edm)[0]
    exercises.check_close(f"v_chain(x, {t_chk})", v_chain(x_chk, t_chk), paths.reschedule(mix.denoiser(sched), edm).velocity(x_chk, t_chk),
                          rtol=1e-5, atol=1e-5, hint="differentiate c(t) x_old(t'(t)): the product rule gives c'/c x "
                                                     "(with x_old = x / c) plus c dt'/dt v_old(x / c, t')")

# %% [markdown]
# **Exercise 4 (which target for which model?).** Using the (model × target) error table of Section 4,
# explain why the $x_0$-model's $\epsilon$ and score are poor at small $t$ and the $\epsilon$-model's $x_0$ is
# poor at large $t$. Compute `rel_err` for both at $t=0.05$ and $t=0.95$ and store them in the dicts
# `err_x0_model_eps` (the $x_0$-model asked for $\epsilon$) and `err_eps_model_x0` (the $\epsilon$-model asked for
# $x_0$), keyed by $t$.

# %% tags=["solution"]
err_x0_model_eps = {t4: rel_err(models["x0"], "eps", t4) for t4 in (0.05, 0.95)}
err_eps_model_x0 = {t4: rel_err(models["eps"], "x0", t4) for t4 in (0.05, 0.95)}
for t4 in (0.05, 0.95):
    print(f"t={t4}: x0-model eps error {err_x0_model_eps[t4]:.3f}, eps-model x0 error {err_eps_model_x0[t4]:.3f}")
# eps = (x - alpha x0)/sigma divides x0's error by sigma (small at small t);
# x0 = (x - sigma eps)/alpha divides eps's error by alpha (small at large t).

# %% tags=["check"]
for t4 in (0.05, 0.95):
    exercises.check_close(f"err_x0_model_eps[{t4}]", err_x0_model_eps[t4], rel_err(models["x0"], "eps", t4), rtol=1e-6,
                          hint="the x0-trained model asked for eps (rel_err(models['x0'], 'eps', t))")
    exercises.check_close(f"err_eps_model_x0[{t4}]", err_eps_model_x0[t4], rel_err(models["eps"], "x0", t4), rtol=1e-6,
                          hint="the eps-trained model asked for x0 (rel_err(models['eps'], 'x0', t))")
exercises.check_between("err_x0_model_eps[0.05] / err_x0_model_eps[0.95]", err_x0_model_eps[0.05] / err_x0_model_eps[0.95],
                        10.0, math.inf, hint="eps = (x - alpha x0) / sigma multiplies the x0 error by alpha / sigma, large at small t")
exercises.check_between("err_eps_model_x0[0.95] / err_eps_model_x0[0.05]", err_eps_model_x0[0.95] / err_eps_model_x0[0.05],
                        10.0, math.inf, hint="x0 = (x - sigma eps) / alpha multiplies the eps error by sigma / alpha, large at large t")

# %% [markdown]
# ## Summary
#
# * Every diffusion loss is one regression, $\mathbb E\,w(t)\,\|f(x_t,t) - (A_t x_0 + B_t\epsilon)\|^2$; the
#   conditional trick makes it trainable, and the choice of target is a choice of weighting
#   (measured: the gap $\mathcal L_{\text{cond}}-\mathcal L_{\text{marg}}$ was the same for three predictors).
# * Sampling $t$ from $p_\text{time}$ and weighting by $w(t)$ are one choice: $\mathbb E_{t\sim p}[w\ell/p]$ is the same objective
#   for every $p$ (measured: Uniform, EDM's LogNormal and a LogitNormal agree within Monte Carlo error), and $p$ sets
#   only the variance. The $x_0$ loss's weight on the $\epsilon$-error spans about $10^7$ over $t\in[0.01,1]$.
# * Four models trained on $\epsilon$, $x_0$, score and velocity answer all four questions after
#   conversion, and their PF-ODEs carry the same noise to (nearly) the same samples. The PF-ODE itself can be
#   written with any of the four predictions; its $\epsilon$ form $\frac{dx}{dt}=\frac{d\log\alpha_t}{dt}x-\sigma_t\lambda_t'\hat\epsilon$ is the
#   semilinear ODE of Ch. 9 (all four forms equal the oracle's field to $10^{-6}$).
# * All affine paths are one path up to a change of time (equal log-SNR) and scale: the VP oracle moved
#   to EDM *is* EDM's oracle, and a VP-trained network samples well on EDM's grid.
# * The continuity equation $\partial_t p_t + \nabla\cdot(p_t v_t)=0$ is what ties a velocity field to
#   its marginals; the oracle satisfies it to second order in the grid spacing.
#
# **Where the monograph goes next.** Ch. 7 asks which of the many transports between noise and data
# diffusion picks, and how it relates to optimal transport. Ch. 9 exploits the equivalence of schedules
# directly: DDIM and DPM-Solver integrate the PF-ODE in the log-SNR variable, where its linear part is
# exact.
