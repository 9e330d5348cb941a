# %% [markdown]
# # Appendix C — Itô's formula and Girsanov's theorem, seen numerically
#
# *Companion to App. C of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# Two facts of stochastic calculus carry the theory of diffusion models: **Itô's formula** (the chain
# rule gains a term $\tfrac12 g^2\varphi''$, which is where Fokker–Planck's diffusion term comes from) and
# **Girsanov's theorem** (two SDEs with the same noise have a likelihood ratio between their paths,
# which turns the KL between a model and data path measures into a score-matching loss). After this
# notebook you can
#
# * see the extra $\tfrac12 g^2$ term in simulations, and why Itô sums differ from ordinary calculus;
# * reweight paths of one SDE into expectations under another with the Girsanov weight, and check it
#   against the closed form for a linear SDE;
# * compute the KL between two path measures as an integrated squared drift difference (the root of
#   the ELBO / denoising-score-matching link of Ch. 4).
#
# **Prerequisites:** App. A (Euler–Maruyama) and App. B (Fokker–Planck).

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import math, torch, matplotlib.pyplot as plt
from utils import config, exercises, sde, widgets
profile, device, gen = config.setup(seed=0, threads=1)
S = config.pick({
    "test": dict(n_paths=100_000, n_steps=200, qv_steps=(16, 64, 256, 1024), n_qv_paths=4000),
    "cpu": dict(n_paths=200_000, n_steps=200, qv_steps=(16, 64, 256, 1024, 4096), n_qv_paths=10_000),
})
S

# %% [markdown]
# ## 1. Itô's formula (§C.1)
#
# For $dX = f\,dt + g\,dW$ and a smooth $\varphi$,
#
# $$d\varphi(X_t) = \varphi'(X_t)\,dX_t + \tfrac12 g^2\,\varphi''(X_t)\,dt .$$
#
# The second term is absent from ordinary calculus; it is there because $(dW)^2 = dt$: the
# **quadratic variation** $\sum_n (\Delta W_n)^2$ of a Brownian path over $[0, T]$ tends to $T$, not to 0.
# First that fact, on paths refined from 16 to 1024 steps (the error falls like $h^{1/2}$):

# %%
T = 1.0
qv_rms = []
for n in S["qv_steps"]:
    dW = sde.brownian_increments(S["n_qv_paths"], n, T / n, gen)
    qv_rms.append(float(((dW ** 2).sum(1) - T).pow(2).mean().sqrt()))
qv_order = sde.fitted_order([T / n for n in S["qv_steps"]], qv_rms)
print("RMS of sum (dW)^2 - T:", " ".join(f"{e:.3f}" for e in qv_rms), f"-> order {qv_order:.2f} (theory: sqrt(2 h T), order 1/2)")
assert 0.4 < qv_order < 0.6

# %% [markdown]
# **$\varphi(x) = x^2$ on Brownian motion** ($f = 0$, $g = 1$). The naive chain rule says $d(W^2) = 2W\,dW$, whose
# expectation is 0, so $\mathbb E W_T^2 = 0$: wrong. Itô adds $\tfrac12\cdot 2\,dt$: $\mathbb E W_T^2 = T$. Pathwise, the
# left-point (Itô) sum $\sum 2W_n\Delta W_n$ converges to $W_T^2 - T$, not to $W_T^2$.

# %%
n = S["n_steps"]
dW = sde.brownian_increments(S["n_paths"], n, T / n, gen)
W = torch.cat([torch.zeros(S["n_paths"], 1, dtype=torch.float64), dW.cumsum(1)], 1)
WT = W[:, -1]
ito_sum = (2 * W[:, :-1] * dW).sum(1)
se = float((WT ** 2).std()) / math.sqrt(S["n_paths"])
print(f"E[W_T^2] = {float((WT ** 2).mean()):.4f} +- {se:.4f};  Ito: T = {T};  naive chain rule: 0")
print(f"Ito sum sum 2 W dW vs W_T^2 - T: RMS gap {float((ito_sum - (WT ** 2 - T)).pow(2).mean().sqrt()):.3f};  "
      f"vs W_T^2 (naive): RMS gap {float((ito_sum - WT ** 2).pow(2).mean().sqrt()):.3f}")
assert abs(float((WT ** 2).mean()) - T) < 5 * se
assert float((ito_sum - (WT ** 2 - T)).pow(2).mean().sqrt()) < 0.2 < float((ito_sum - WT ** 2).pow(2).mean().sqrt())

# %% [markdown]
# **The same term in an SDE's moments.** For the OU process $dX = -\theta X\,dt + g\,dW$, Itô on $\varphi = x^2$
# gives $\tfrac{d}{dt}\mathbb E X_t^2 = -2\theta\,\mathbb E X_t^2 + g^2$; the naive chain rule drops $g^2$ and predicts
# decay to 0. Simulation (Euler–Maruyama, App. A) against both:

# %%
theta, g, x0 = 1.5, 1.0, 1.0
f_ou = lambda x, t: -theta * x
paths_P = sde.euler_maruyama(f_ou, lambda x, t: g, x0, 0.0, T, dW, keep_path=True)        # (n + 1, M)
ts = torch.linspace(0, T, n + 1, dtype=torch.float64)
m2_ito = x0 ** 2 * torch.exp(-2 * theta * ts) + g ** 2 * (1 - torch.exp(-2 * theta * ts)) / (2 * theta)
m2_naive = x0 ** 2 * torch.exp(-2 * theta * ts)
m2_sim = (paths_P ** 2).mean(1)
gap_ito, gap_naive = float((m2_sim - m2_ito).abs().max()), float((m2_sim - m2_naive).abs().max())
print(f"max_t |E X_t^2 (simulated) - Ito ODE| = {gap_ito:.4f};  - naive ODE = {gap_naive:.3f}")
assert gap_ito < 0.02 and gap_naive > 10 * gap_ito
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.plot(ts, m2_sim, lw=3, alpha=0.5, label="simulated")
ax.plot(ts, m2_ito, "k--", label=r"Itô: $-2\theta m + g^2$"); ax.plot(ts, m2_naive, ":", label=r"naive: $-2\theta m$")
ax.set(xlabel="t", ylabel=r"$\mathbb{E}X_t^2$", title="OU second moment"); ax.legend();

# %% [markdown]
# ## 2. Girsanov's theorem (§C.2): the likelihood ratio of two SDEs
#
# Let $P$ and $Q$ be the laws of the paths of $dX = f_P\,dt + g\,dW$ and $dX = f_Q\,dt + g\,dW$ from the same
# start. Then $P \ll Q$ with
#
# $$\log\frac{dP}{dQ}(X) = \int_0^T \frac{f_P - f_Q}{g^2}(X_t,t)\,dX_t - \frac12\int_0^T \frac{f_P^2 - f_Q^2}{g^2}(X_t,t)\,dt ,$$
#
# so that $\mathbb E_P[\varphi] = \mathbb E_Q[\varphi\, dP/dQ]$. Take $P$ = OU ($f_P = -\theta x$) and $Q$ = scaled Brownian
# motion ($f_Q = 0$). For this linear SDE the stochastic integral has a closed form by Itô's formula
# (under $Q$, $d(X^2) = 2X\,dX + g^2 dt$):
#
# $$\log\frac{dP}{dQ} = -\frac{\theta}{2g^2}\big(X_T^2 - x_0^2 - g^2T\big) - \frac{\theta^2}{2g^2}\int_0^T X_t^2\,dt .$$
#
# First the discretized log-ratio (Itô sums), written out, against `sde.girsanov_log_ratio`; then the
# sums against the closed form, path by path.

# %%
def log_ratio(path, f_p, f_q, g, T):
    h, out = T / (path.shape[0] - 1), torch.zeros_like(path[0])
    for k in range(path.shape[0] - 1):
        a, b = f_p(path[k], k * h), f_q(path[k], k * h)
        out = out + ((a - b) * (path[k + 1] - path[k]) - 0.5 * (a ** 2 - b ** 2) * h) / g ** 2
    return out


f_bm = lambda x, t: 0 * x
paths_Q = x0 + g * W.T                                                   # Q: X = x0 + g W, (n + 1, M)
torch.testing.assert_close(log_ratio(paths_Q[:, :500], f_ou, f_bm, g, T), sde.girsanov_log_ratio(paths_Q[:, :500], 0.0, T, f_ou, f_bm, g))
print("inline Girsanov log-ratio == sde.girsanov_log_ratio")

log_w = sde.girsanov_log_ratio(paths_Q, 0.0, T, f_ou, f_bm, g)
int_X2 = torch.trapezoid(paths_Q ** 2, ts, dim=0)
log_w_closed = -theta / (2 * g ** 2) * (paths_Q[-1] ** 2 - x0 ** 2 - g ** 2 * T) - theta ** 2 / (2 * g ** 2) * int_X2
rms_gap = float((log_w - log_w_closed).pow(2).mean().sqrt())
print(f"Ito-sum log dP/dQ vs closed form: RMS gap {rms_gap:.3f} (log-weights spread {float(log_w.std()):.2f})")
assert rms_gap < 0.1 * float(log_w.std())

# %% [markdown]
# **Reweighting.** Paths of Brownian motion, weighted by $dP/dQ$, must reproduce the OU law at $T$:
# $\mathbb E_Q[dP/dQ] = 1$, and $\mathbb E_Q[X_T^2\,dP/dQ] = \mathbb E_P X_T^2$ (closed form, `sde.ou_mean_std`).
# The effective sample size $(\sum w)^2/\sum w^2$ says how many of the $Q$-paths the weights keep.

# %%
w = log_w.exp()
ess = float(w.sum() ** 2 / (w ** 2).sum())
mean_P, std_P = sde.ou_mean_std(x0, theta, g, T)
m2_P = float(mean_P ** 2 + std_P ** 2)
M = S["n_paths"]
norm, norm_se = float(w.mean()), float(w.std()) / math.sqrt(M)
m2_rw = float((w * paths_Q[-1] ** 2).mean())
m2_rw_se = float((w * paths_Q[-1] ** 2).std()) / math.sqrt(M)
print(f"E_Q[dP/dQ] = {norm:.4f} +- {norm_se:.4f} (1);  E_Q[X_T^2 dP/dQ] = {m2_rw:.4f} +- {m2_rw_se:.4f} "
      f"(exact OU {m2_P:.4f});  ESS {ess:.0f} of {M}")
assert abs(norm - 1) < 5 * norm_se + 0.01 and abs(m2_rw - m2_P) < 5 * m2_rw_se + 0.01
fig, ax = plt.subplots(figsize=(5, 3.4))
bins = torch.linspace(-3, 4, 61, dtype=torch.float64)
ax.hist(paths_Q[-1].numpy(), bins=bins.numpy(), density=True, alpha=0.4, label="Q: Brownian paths")
ax.hist(paths_Q[-1].numpy(), bins=bins.numpy(), weights=w.numpy(), density=True, histtype="step", lw=2, label="Q reweighted by dP/dQ")
xx = torch.linspace(-3, 4, 300, dtype=torch.float64)
ax.plot(xx, torch.exp(-0.5 * ((xx - mean_P) / std_P) ** 2) / (std_P * math.sqrt(2 * math.pi)), "k--", label="OU law (exact)")
ax.set(xlabel="$X_T$", title="Girsanov reweighting"); ax.legend(fontsize=8);

# %% [markdown]
# **KL between path measures.** Under $P$, the $dX$ integral has mean $\int f_P\,(f_P - f_Q)/g^2\,dt$, so
#
# $$\mathrm{KL}(P\,\|\,Q) = \mathbb E_P\log\frac{dP}{dQ} = \frac{1}{2}\,\mathbb E_P\int_0^T\frac{|f_P - f_Q|^2}{g^2}(X_t,t)\,dt .$$
#
# With $P$ the data's reverse-time SDE and $Q$ a model's (drifts differing only through the score), this is
# the weighted score-matching loss: the bridge between likelihood and denoising score matching (Ch. 4,
# App. C). Here $|f_P - f_Q|^2 = \theta^2X^2$ and $\mathbb E_P X_t^2$ is known in closed form, so the KL is a
# one-dimensional integral; the simulation under $P$ must agree.

# %%
kl_closed = float(0.5 * theta ** 2 / g ** 2 * torch.trapezoid(m2_ito, ts))
log_w_P = sde.girsanov_log_ratio(paths_P, 0.0, T, f_ou, f_bm, g)
kl_sim, kl_se = float(log_w_P.mean()), float(log_w_P.std()) / math.sqrt(M)
print(f"KL(P || Q): simulated {kl_sim:.4f} +- {kl_se:.4f},  closed form {kl_closed:.4f}")
assert abs(kl_sim - kl_closed) < 5 * kl_se + 0.01
config.record(appC_ito_EW2=float((WT ** 2).mean()), appC_girsanov_ess_fraction=ess / M,
              appC_girsanov_m2_reweighted=m2_rw, appC_girsanov_m2_exact=m2_P, appC_path_kl=kl_sim)

# %% [markdown]
# Turn $\theta$ (how far $P$ is from $Q$) and the horizon $T$: as $\mathrm{KL}(P\|Q)$ grows the weights
# degenerate and the ESS collapses, the reason importance sampling between path measures only works for
# nearby drifts.

# %%
def draw_weights(theta=1.5, T_end=1.0):
    n_w, m_w = 100, 20_000
    g_w = torch.Generator().manual_seed(5)
    dW_w = sde.brownian_increments(m_w, n_w, T_end / n_w, g_w)
    paths = x0 + g * torch.cat([torch.zeros(m_w, 1, dtype=torch.float64), dW_w.cumsum(1)], 1).T
    lw = sde.girsanov_log_ratio(paths, 0.0, T_end, lambda x, t: -theta * x, f_bm, g)
    ww = (lw - lw.max()).exp()
    ess_w = float(ww.sum() ** 2 / (ww ** 2).sum())
    mean_w, std_w = sde.ou_mean_std(x0, theta, g, T_end)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.hist(paths[-1].numpy(), bins=60, weights=ww.numpy(), density=True, histtype="step", lw=2, label="reweighted BM")
    xx = torch.linspace(float(paths[-1].min()), float(paths[-1].max()), 300, dtype=torch.float64)
    ax.plot(xx, torch.exp(-0.5 * ((xx - mean_w) / std_w) ** 2) / (std_w * math.sqrt(2 * math.pi)), "k--", label="OU law")
    ax.set(title=f"theta = {theta:.1f}, T = {T_end:.1f}: ESS {ess_w:.0f} / {m_w}"); ax.legend(fontsize=8)
    return fig


widgets.explore(draw_weights, {"theta": (0.1, 5.0, 0.1, 1.5), "T_end": (0.2, 3.0, 0.2, 1.0)})

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (fourth moment).** Use Itô's formula on $\varphi(x) = x^4$ to show $\mathbb E W_T^4 = 3T^2$, and check it
# on the simulated `WT`.

# %% tags=["solution"]
# d(W^4) = 4 W^3 dW + (1/2) 12 W^2 dt, so d E W^4 = 6 E W^2 dt = 6 t dt, and E W_T^4 = 3 T^2.
m4, m4_se = float((WT ** 4).mean()), float((WT ** 4).std()) / math.sqrt(len(WT))
print(f"E W_T^4 = {m4:.3f} +- {m4_se:.3f}  (3 T^2 = {3 * T ** 2})")

# %% tags=["check"]
exercises.check_close("m4", m4, 3 * T ** 2, rtol=0, atol=5 * float((WT ** 4).std()) / math.sqrt(len(WT)),
                      hint="the Monte Carlo mean of W_T^4 over the simulated endpoints WT")

# %% [markdown]
# **Exercise 2 (Stratonovich).** Replace the left point by the midpoint, $\sum (W_n + W_{n+1})\,\Delta W_n$. Show
# that this sum equals $W_T^2$ exactly on every path (the ordinary chain rule holds for Stratonovich integrals).

# %% tags=["solution"]
strat = ((W[:, :-1] + W[:, 1:]) * dW).sum(1)          # telescopes: sum (W_{n+1}^2 - W_n^2) = W_T^2
print("Stratonovich sum vs W_T^2: max gap", float((strat - WT ** 2).abs().max()))

# %% tags=["check"]
exercises.check_close("strat", strat, WT ** 2, rtol=1e-9, atol=1e-9,
                      hint="with the midpoint, (W_n + W_{n+1}) (W_{n+1} - W_n) = W_{n+1}^2 - W_n^2 telescopes")

# %% [markdown]
# **Exercise 3 (a second drift).** Let $Q'$ be the OU process with $\theta' = 0.5$ instead of Brownian motion.
# Reweight its paths into $P$ ($\theta = 1.5$) and compare the ESS with the one above. Which proposal is better, and why?

# %% tags=["solution"]
f_q2 = lambda x, t: -0.5 * x
paths_Q2 = sde.euler_maruyama(f_q2, lambda x, t: g, x0, 0.0, T, dW, keep_path=True)
w2 = sde.girsanov_log_ratio(paths_Q2, 0.0, T, f_ou, f_q2, g).exp()
ess2 = float(w2.sum() ** 2 / (w2 ** 2).sum())
m2_rw2 = float((w2 * paths_Q2[-1] ** 2).mean())
print(f"ESS with an OU(0.5) proposal {ess2:.0f} vs Brownian proposal {ess:.0f};  E X_T^2 = {m2_rw2:.4f} (exact {m2_P:.4f})")
# a closer drift: smaller KL(P || Q'), fewer wasted paths

# %% tags=["check"]
exercises.check_close("m2_rw2", m2_rw2, m2_P, rtol=0, atol=0.03, hint="weights from girsanov_log_ratio(paths of Q', ..., f_P, f_Q', g)")
exercises.check_between("ess2", ess2, ess, M, hint="the OU(0.5) proposal is closer to P than Brownian motion is")

# %% [markdown]
# ## Summary
#
# * Itô's formula adds $\tfrac12 g^2\varphi''\,dt$ to the chain rule, because Brownian paths have quadratic variation
#   $T$: $\mathbb E W_T^2 = T$, not 0, and the OU second moment follows the Itô ODE, not the naive one.
# * Girsanov: two SDEs with the same $g$ have a path likelihood ratio; its Itô-sum estimate matched the closed form
#   for a linear SDE, reweighted Brownian paths reproduced the OU law, and $\mathrm{KL}(P\|Q)$ is half the integrated
#   squared drift difference over $g^2$ — for diffusion models, a weighted score-matching loss.
#
# **Where next.** Ch. 4 uses both: Fokker–Planck (from Itô) for the PF-ODE and Girsanov for the likelihood bound.
