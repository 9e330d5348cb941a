# %% [markdown]
# # Chapter 5 — The flow-based perspective: from normalizing flows to flow matching
#
# *Companion to Ch. 5 of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# A generative model can be a **deterministic transport**: push a simple base density through an
# invertible map, or through the flow of an ODE, and read the density off the change-of-variables
# formula. This chapter follows that thread from normalizing flows to flow matching and rectified flow.
#
# After this notebook you can
# * write an affine coupling layer, check its log-determinant against autograd, and train a coupling
#   flow by maximum likelihood, measuring its gap to the exact log-density;
# * compute a continuous normalizing flow's log-likelihood with the instantaneous change of variables;
# * state the conditional flow matching (CFM) loss, estimate the *marginal* velocity as a conditional
#   expectation, and show numerically that CFM and the intractable marginal loss differ by a constant;
# * build the linear and trigonometric paths (and solve both in closed form when the data are Gaussian),
#   measure how straight their ODE paths are, and straighten a learned flow with **Reflow** so that one
#   Euler step suffices;
# * measure Prop. 5.4.1 (Reflow does not raise the transport cost) and see that Reflow keeps the two
#   endpoint laws but not the intermediate marginals.
#
# **Prerequisites:** Ch. 4 (the probability-flow ODE; `00_getting_started` for the utils tour).
#
# **Time convention.** This book runs time from data ($t=0$) to noise ($t=1$); the flow-matching papers run
# it the other way, and so does the monograph wherever it follows them: in §5.3, in §5.4 (rectified flow and
# Reflow) and again in §7.5.2. Their $t'$ is our $1-t$ and their velocity is minus ours,
# $v'(x, t') = -v(x, 1-t')$ (Exercise 1 checks this on the exact oracle). Every formula below is written on
# this book's clock.

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import copy, math, torch, matplotlib.pyplot as plt
from utils import config, schedules, targets, gmm, data, nets, losses, training, samplers, metrics, plotting, widgets
from utils import flows, exercises
profile, device, gen = config.setup(seed=0)
S = config.pick({
    "test": dict(flow_steps=600, fm_steps=1500, reflow_steps=600, batch=256, n_pairs=8000, pair_ode_steps=20,
                 n_eval=8000, cnf_points=500, cnf_steps=40, n_paths=1000),
    "cpu": dict(flow_steps=3000, fm_steps=6000, reflow_steps=3000, batch=512, n_pairs=30000, pair_ode_steps=50,
                n_eval=20000, cnf_points=2000, cnf_steps=60, n_paths=4000),
})
S

# %% [markdown]
# ## 1. Normalizing flows: the change of variables
#
# Let $f$ be an invertible, differentiable map from data $x$ to a base variable $z=f(x)$ with
# $z\sim\mathcal N(0,I)$. Then (Ch. 5, the normalizing-flow section)
#
# $$\log p_X(x) = \log \mathcal N\big(f(x);0,I\big) + \log\left|\det \frac{\partial f}{\partial x}(x)\right| .$$
#
# Both terms must be cheap. **Coupling layers** (Dinh et al. 2017, RealNVP) make the Jacobian triangular:
# a binary mask $m$ keeps some coordinates $x_a=m\odot x$ and transforms the others with a scale
# $s(x_a)$ and a shift $b(x_a)$ computed from the kept ones,
#
# $$z = m\odot x + (1-m)\odot\big(x\odot e^{s(x_a)} + b(x_a)\big), \qquad
# \log|\det \partial z/\partial x| = \textstyle\sum_i (1-m_i)\, s_i(x_a).$$
#
# The inverse is as cheap: $x = m\odot z + (1-m)\odot (z-b(z_a))\odot e^{-s(z_a)}$ since $z_a=x_a$.
# Here is one layer written out; the next cell checks it against `utils.flows.AffineCoupling`.

# %%
layer = flows.AffineCoupling(mask=torch.tensor([1.0, 0.0]), hidden=32).double()
with torch.no_grad():                                   # a fresh layer is the identity; perturb it
    for p in layer.parameters():
        p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))

def coupling_forward(x, layer):
    m = layer.mask
    s, b = layer.net(x * m).chunk(2, dim=1)             # scale and shift from the kept coordinate
    s = layer.clamp * torch.tanh(s / layer.clamp)       # soft clamp keeps exp(s) tame
    s, b = s * (1 - m), b * (1 - m)                     # kept coordinates: s = b = 0, so z_a = x_a
    z = x * torch.exp(s) + b
    return z, s.sum(1)                                  # log|det| = sum of the log-scales

x = torch.randn(256, 2, generator=gen, dtype=torch.float64)
z_mine, ld_mine = coupling_forward(x, layer)
z_ref, ld_ref = layer(x)
torch.testing.assert_close(z_mine, z_ref)
torch.testing.assert_close(ld_mine, ld_ref)
print("inline coupling layer == utils.flows.AffineCoupling")

# %% [markdown]
# A `CouplingFlow` stacks couplings with alternating masks, so every coordinate gets transformed.
# Two facts make it a valid density model: it is exactly invertible, and its log-determinant is the
# log-determinant of the true Jacobian. Both are checked here on a randomly perturbed flow,
# the second against the full Jacobian from autograd.

# %%
flow_check = flows.CouplingFlow(dim=2, n_layers=6, hidden=32).double()
with torch.no_grad():
    for p in flow_check.parameters():
        p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
x = torch.randn(200, 2, generator=gen, dtype=torch.float64)
z, log_det = flow_check(x)
inv_err = (flow_check.inverse(z) - x).abs().max().item()
J = torch.func.vmap(torch.func.jacrev(lambda v: flow_check(v[None])[0][0]))(x)      # (200, 2, 2)
ld_err = (torch.linalg.slogdet(J)[1] - log_det).abs().max().item()
print(f"max |f^-1(f(x)) - x| = {inv_err:.1e},   max |log_det - log|det J_autograd|| = {ld_err:.1e}")
assert inv_err < 1e-10 and ld_err < 1e-10

# %% [markdown]
# ### Maximum likelihood on a Gaussian-mixture toy, against the exact density
#
# We fit a coupling flow to `two_modes` (weights 0.8/0.2 at $(\mp 2, 0)$), whose density the oracle
# knows exactly. The loss is the negative log-likelihood $-\frac1B\sum_i \log p_\theta(x_i)$
# (`flows.nll_loss`). Since $\mathbb E_p[\log p - \log p_\theta] = \mathrm{KL}(p\,\|\,p_\theta)\ge 0$,
# the average gap between the exact and the learned log-density on fresh data measures the fit in nats.
# As a yardstick we compute the same gap for the best single Gaussian (the moment-matched one).

# %%
two_modes = data.toy_gmm("two_modes")
draw_two_modes = lambda n, g: two_modes.sample(n, g)[0].float()
flow_model, flow_hist = training.train(flows.CouplingFlow(dim=2, n_layers=6, hidden=64), flows.nll_loss,
                                       draw_two_modes, S["flow_steps"], batch_size=S["batch"], lr=3e-3,
                                       ema_decay=0.99, seed=0, desc="coupling flow (MLE)")

x_test = two_modes.sample(20000, torch.Generator().manual_seed(1))[0]
with torch.no_grad():
    log_q = flow_model.log_prob(x_test.float()).double()
log_p = two_modes.log_prob(x_test)
gauss = gmm.GaussianMixture(two_modes.mean()[None], two_modes.covariance()[None])   # best Gaussian
gap = log_p - log_q
kl_flow, kl_se = gap.mean().item(), (gap.std() / math.sqrt(len(gap))).item()
kl_gauss = (log_p - gauss.log_prob(x_test)).mean().item()
print(f"E_p[log p] exact = {log_p.mean():.3f} nats,  flow E_p[log q] = {log_q.mean():.3f}")
print(f"KL(p || flow) = {kl_flow:.3f} +- {kl_se:.3f} nats   vs   KL(p || best Gaussian) = {kl_gauss:.3f} nats")
assert -3 * kl_se < kl_flow < 0.15, "the flow should be within 0.15 nats of the exact log-likelihood"
assert kl_flow < kl_gauss / 5
config.record(nb05_coupling_flow_kl_nats=float(kl_flow))

# %%
fig, axes = plt.subplots(2, 2, figsize=(9.5, 9))
axes = axes.flatten()
plotting.plot_density(two_modes.log_prob, ax=axes[0], lim=4, title="exact density p")
with torch.no_grad():
    plotting.plot_density(lambda p: flow_model.log_prob(p.float()).double(), ax=axes[1], lim=4,
                          title=f"coupling flow (KL {kl_flow:.3f} nats)")
plotting.plot_samples(flow_model.sample(3000, torch.Generator().manual_seed(2)), ax=axes[2], lim=4,
                      title="flow samples f^-1(z)")
with torch.no_grad():
    plotting.plot_samples(flow_model(x_test[:3000].float())[0], ax=axes[3], lim=4, title="data pushed to z = f(x)")
fig.tight_layout()

# %% [markdown]
# The flow moves the minor mode into its share (20%) of the Gaussian and squeezes the gap between the
# modes, which is where most of its remaining KL sits: a chain of smooth invertible layers can thin
# the bridge between modes but never cut it.
#
# ### Neural ODEs and continuous normalizing flows
#
# Replace the stack of layers by the flow of an ODE $\mathrm d x_t/\mathrm dt = v(x_t,t)$
# (Chen et al. 2018). The log-density along a trajectory obeys the **instantaneous change of variables**
#
# $$\frac{\mathrm d}{\mathrm dt}\log p_t(x_t) = -\nabla\!\cdot v(x_t,t)
# \quad\Longrightarrow\quad
# \log p_0(x_0) = \log p_1(x_1) + \int_0^1 \nabla\!\cdot v(x_t,t)\,\mathrm dt ,$$
#
# a continuous normalizing flow (CNF; Grathwohl et al. 2019). We integrate the pair $(x_t, \ell_t)$
# from data ($t=0$) to noise ($t=1$) with RK4, taking the divergence exactly in 2D (two autograd
# passes). With the oracle's exact PF-ODE velocity on the `8gaussians` mixture and the linear path
# $x_t=(1-t)x_0+t\varepsilon$, the result must reproduce the exact $\log p_0$.

# %%
mix = data.toy_gmm("8gaussians")                         # the data of the rest of the chapter
draw_data = lambda n, g: mix.sample(n, g)[0].float()
path = schedules.LinearPath()                           # alpha_t = 1 - t, sigma_t = t
oracle = mix.denoiser(path)                             # exact velocity, score, log p_t, ...

def velocity_and_divergence(velocity, x, t):
    x = x.detach().requires_grad_(True)
    v = velocity(x, t)
    div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1]))
    return v.detach(), div.detach()

def cnf_log_prob(velocity, x0, n_steps):
    """log p_0(x0) = log N(x_1; 0, I) + int_0^1 div v dt, RK4 from t = 0 to t = 1."""
    x, ell, h = x0, torch.zeros(x0.shape[0], dtype=x0.dtype), 1.0 / n_steps
    for i in range(n_steps):
        t = i * h
        k1 = velocity_and_divergence(velocity, x, t)
        k2 = velocity_and_divergence(velocity, x + h / 2 * k1[0], t + h / 2)
        k3 = velocity_and_divergence(velocity, x + h / 2 * k2[0], t + h / 2)
        k4 = velocity_and_divergence(velocity, x + h * k3[0], min(t + h, 1.0))
        x = x + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        ell = ell + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    log_base = -0.5 * (x ** 2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
    return log_base + ell

x_cnf = mix.sample(S["cnf_points"], torch.Generator().manual_seed(3))[0]
lp_cnf = cnf_log_prob(oracle.velocity, x_cnf, S["cnf_steps"])
err = (lp_cnf - mix.log_prob(x_cnf)).abs()
print(f"CNF log p_0 with the exact velocity vs exact log p_0: mean |err| = {err.mean():.1e}, "
      f"max = {err.max():.1e} nats  (RK4, {S['cnf_steps']} steps)")
assert err.mean() < 1e-2


# %% [markdown]
# Training a CNF by maximum likelihood needs this ODE solve, with its divergence, inside every
# training step. Flow matching removes the simulation: it regresses the velocity directly.
#
# ## 2. Flow matching
#
# ### Conditional paths, conditional velocities, and the marginal velocity
#
# Pick a **conditional path** that moves a data point $x_0$ to noise $\varepsilon$: here the straight
# line $x_t=(1-t)x_0+t\varepsilon$, whose **conditional velocity** is the constant
# $u_t(x_t\,|\,x_0,\varepsilon) = \varepsilon - x_0$ (Lipman et al. 2023; Liu et al. 2023;
# Albergo & Vanden-Eijnden 2023). Averaging over everything that could have produced $x_t=x$ gives the
# **marginal velocity**
#
# $$v_t(x) = \mathbb E\big[\varepsilon - x_0 \,\big|\, x_t = x\big],$$
#
# and its ODE transports $p_0$ to $p_1$ through exactly the marginals $p_t$ (Sec. 5.3): it is the
# PF-ODE velocity of Ch. 4. Below, the conditional expectation is estimated by self-normalised
# importance weights over a pool of data samples ($w_i \propto \mathcal N(x;(1-t)x_0^{(i)}, t^2 I)$,
# the likelihood that $x_0^{(i)}$ produced $x$), and compared with the oracle.

# %%
def mc_marginal_velocity(x, t, x0_pool):
    """v_t(x) = E[eps - x0 | x_t = x], by weighting a pool of data samples x0_i."""
    d2 = torch.cdist(x, (1 - t) * x0_pool) ** 2
    w = torch.softmax(-d2 / (2 * t ** 2), dim=1)         # posterior weights of each x0_i given x_t = x
    x0_hat = w @ x0_pool                                 # E[x0 | x_t = x]
    eps_hat = (x - (1 - t) * x0_hat) / t                 # E[eps | x_t = x]: the noise that explains x
    return eps_hat - x0_hat

x0_pool = mix.sample(20000, torch.Generator().manual_seed(4))[0]
for t in (0.25, 0.5, 0.75):
    x_t = mix.sample(400, torch.Generator().manual_seed(5), t=t, schedule=path)[0]
    v_mc, v_exact = mc_marginal_velocity(x_t, t, x0_pool), oracle.velocity(x_t, t)
    rel = (((v_mc - v_exact) ** 2).sum(1).mean() / (v_exact ** 2).sum(1).mean()).item()
    print(f"t={t:.2f}: relative squared error of the Monte Carlo marginal velocity = {rel:.1e}")
    assert rel < 0.02


# %% [markdown]
# ### The conditional flow matching loss
#
# Regressing on $v_t$ (the *flow matching* loss $\mathcal L_{\rm FM}$) needs the intractable marginal.
# The **conditional** loss regresses on the conditional velocity, which we can sample:
#
# $$\mathcal L_{\rm CFM}(\theta) = \mathbb E_{t,x_0,\varepsilon}\,\big\|v_\theta(x_t,t) - (\varepsilon-x_0)\big\|^2 .$$
#
# Expanding the square, $\mathcal L_{\rm CFM} - \mathcal L_{\rm FM}
# = \mathbb E\|\varepsilon-x_0\|^2 - \mathbb E\|v_t(x_t)\|^2 - 2\,\mathbb E\langle v_\theta, (\varepsilon-x_0) - v_t(x_t)\rangle$,
# and the last term vanishes because $v_t(x_t)$ *is* the conditional mean of $\varepsilon-x_0$ given $x_t$.
# So the two losses differ by a constant $C = \mathbb E\|(\varepsilon-x_0)-v_t(x_t)\|^2$ (the conditional
# variance) that does not involve $\theta$, and their gradients are equal. Written out, CFM is four lines;
# the check compares it with `utils.losses.flow_matching_loss` on the same random numbers.

# %%
def cfm_loss(net, x0, generator):
    t = torch.rand(x0.shape[0], dtype=x0.dtype, generator=generator)
    eps = torch.randn(x0.shape, dtype=x0.dtype, generator=generator)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    return ((net(x_t, t) - (eps - x0)) ** 2).mean(1).mean()   # per-sample mean over coordinates, then batch

probe_net = nets.MLP(2, 64, 2)
x0 = draw_data(512, gen)
mine = cfm_loss(probe_net, x0, torch.Generator().manual_seed(7))
ref = losses.flow_matching_loss()(probe_net, x0, generator=torch.Generator().manual_seed(7))
torch.testing.assert_close(mine, ref)
print(f"inline CFM loss {mine.item():.5f} == utils.losses.flow_matching_loss {ref.item():.5f}")

# %% [markdown]
# Now train a velocity network with it: this is flow matching on the linear path, i.e. **rectified
# flow** with independent noise-data pairs ("1-RF").

# %%
fm_model, fm_hist = training.train(nets.MLP(2, 128, 3), losses.flow_matching_loss(), draw_data, S["fm_steps"],
                                   batch_size=S["batch"], lr=2e-3, ema_decay=0.995, seed=0, desc="flow matching")
fm = targets.Denoiser(fm_model, "velocity", path)
plotting.plot_loss(fm_hist, title="CFM loss (it plateaus at the constant C, not at 0)");

# %% [markdown]
# **CFM and FM differ by a constant.** On one fixed batch of $(t, x_0, \varepsilon)$ we evaluate both
# losses (FM with the oracle's exact $v_t$) for two very different networks: the trained one and a fresh
# one. Their losses differ a lot, but CFM $-$ FM is the same for both, and equals the estimate of $C$,
# up to Monte Carlo error (the cross term is zero only in expectation, so we compare within a few
# standard errors). The gradients of the two losses point the same way too.

# %%
n_mc = 50000
g = torch.Generator().manual_seed(8)
x0_b = mix.sample(n_mc, g)[0]
t_b = torch.rand(n_mc, dtype=torch.float64, generator=g)
eps_b = torch.randn(x0_b.shape, dtype=torch.float64, generator=g)
x_t_b = (1 - t_b[:, None]) * x0_b + t_b[:, None] * eps_b
u_b, v_b = eps_b - x0_b, oracle.velocity(x_t_b, t_b)          # conditional and (exact) marginal velocity

fresh_net = nets.MLP(2, 128, 3)
per_sample, L_cfm = {}, {}
for name, net in [("trained", fm_model), ("fresh", fresh_net)]:
    with torch.no_grad():
        pred = net(x_t_b.float(), t_b.float()).double()
    cfm_i, fm_i = ((pred - u_b) ** 2).mean(1), ((pred - v_b) ** 2).mean(1)
    per_sample[name], L_cfm[name] = cfm_i - fm_i, cfm_i.mean().item()
    print(f"{name:8s} net: L_CFM = {cfm_i.mean():.4f}   L_FM = {fm_i.mean():.4f}   L_CFM - L_FM = {(cfm_i - fm_i).mean():.4f}")
C_i = ((u_b - v_b) ** 2).mean(1)                               # per-sample conditional variance
mean_se = lambda v: (v.mean().item(), (v.std() / math.sqrt(len(v))).item())
dd, dd_se = mean_se(per_sample["trained"] - per_sample["fresh"])
print(f"constant C = E||u - v||^2 = {C_i.mean():.4f};  gap(trained) - gap(fresh) = {dd:.4f} +- {dd_se:.4f} (MC s.e.)")
assert abs(dd) < 4 * dd_se                                       # the gap does not depend on the net ...
for name in per_sample:                                          # ... and it is the constant C
    m, se = mean_se(per_sample[name] - C_i)
    assert abs(m) < 4 * se, (name, m, se)
assert abs(L_cfm["trained"] - L_cfm["fresh"]) > 10 * (abs(dd) + 4 * dd_se)   # while the losses differ a lot

# the gradients: one backward pass of each loss through the fresh net, on the same batch
def loss_grad(target):
    fresh_net.zero_grad()
    ((fresh_net(x_t_b.float(), t_b.float()) - target.float()) ** 2).mean().backward()
    return torch.cat([p.grad.flatten() for p in fresh_net.parameters()])
g_cfm, g_fm = loss_grad(u_b), loss_grad(v_b)
cos = torch.nn.functional.cosine_similarity(g_cfm, g_fm, dim=0).item()
print(f"cosine(grad L_CFM, grad L_FM) on {n_mc} samples = {cos:.4f}")
assert cos > 0.95

# %% [markdown]
# ### Learned vs exact velocity
#
# The trained network should approximate the exact marginal velocity $v_t$ everywhere the data at time
# $t$ lives. We measure the relative squared error $\mathbb E_{p_t}\|v_\theta - v_t\|^2 / \mathbb E_{p_t}\|v_t\|^2$
# at several $t$, then look at the two fields side by side (move the slider in JupyterLab; the static
# figure shows $t=0.5$).

# %%
t_checks = [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95]
vel_err = {}
for t in t_checks:
    x_t = mix.sample(4000, torch.Generator().manual_seed(9), t=t, schedule=path)[0]
    with torch.no_grad():
        v_learned = fm.velocity(x_t.float(), t).double()
    v_exact = oracle.velocity(x_t, t)
    vel_err[t] = (((v_learned - v_exact) ** 2).sum(1).mean() / (v_exact ** 2).sum(1).mean()).item()
print("relative velocity error:", {t: round(e, 4) for t, e in vel_err.items()})
assert max(vel_err.values()) < 0.15
config.record(nb05_velocity_rel_error_max=float(max(vel_err.values())))

# %%
widgets.velocity_field_explorer(fm, oracle, lim=3.0, samples=draw_data(2000, torch.Generator().manual_seed(10)))

# %%
fig, axes = plt.subplots(2, 3, figsize=(12, 8))
for j, t in enumerate((0.2, 0.5, 0.8)):
    for i, (name, d, c) in enumerate([("learned", fm, "C3"), ("exact", oracle, "C0")]):
        plotting.plot_density(lambda p, t=t: oracle.log_prob(p, t), ax=axes[i, j], cmap="Greys")
        plotting.plot_vector_field(lambda p, d=d, t=t: d.velocity(p.float(), t), ax=axes[i, j], n=17, color=c,
                                   title=f"{name} v_t, t={t} (rel. err {vel_err[t]:.3f})"
                                   if name == "learned" else f"{name} v_t, t={t}")
fig.tight_layout()

# %% [markdown]
# Where $p_t$ has mass the two fields agree (the relative errors above are weighted by $p_t$). Off the data,
# e.g. near the origin at small $t$, the network was never trained and its arrows can be far off;
# few trajectories pass there at that time, so the samples hardly suffer (the quality check below).
#
# ### Sample quality, and the learned flow as a CNF
#
# Integrating $\mathrm dx/\mathrm dt = v_\theta$ from $t=1$ to $0$ (Heun, `samplers.sample_heun`) gives
# samples; we compare them with fresh data through the data-vs-data noise floor of the sliced Wasserstein
# distance. And because $v_\theta$ defines a CNF, the instantaneous change of variables gives its exact
# log-likelihood: its gap to the oracle's $\log p_0$ is $\mathrm{KL}(p\,\|\,p_\theta)$, although flow
# matching never maximised likelihood.

# %%
z_eval = samplers.sample_prior(path, (S["n_eval"], 2), torch.Generator().manual_seed(11))
x_fm = samplers.sample_heun(fm, z_eval, schedules.uniform_grid(20))
fc_fm = metrics.compare_to_floor(x_fm, draw_data)
print("flow matching, Heun 20 steps:", fc_fm)
assert fc_fm.ratio < 1.6
config.record(nb05_fm_heun_sw_ratio=float(fc_fm.ratio))

lp_fm = cnf_log_prob(lambda x, t: fm.velocity(x.float(), t).double(), x_cnf, S["cnf_steps"])
gap_fm = mix.log_prob(x_cnf) - lp_fm
kl_fm, kl_fm_se = gap_fm.mean().item(), (gap_fm.std() / math.sqrt(len(gap_fm))).item()
print(f"CNF log-likelihood of the flow-matching model: KL(p || p_theta) = {kl_fm:.3f} +- {kl_fm_se:.3f} nats "
      f"(exact E log p_0 = {mix.log_prob(x_cnf).mean():.3f})")
assert -3 * kl_fm_se < kl_fm < 0.5


# %% [markdown]
# ## 3. Constructing paths
#
# Any $x_t=\alpha_t x_0+\sigma_t\varepsilon$ with $\alpha_0=1,\sigma_0=0$ and $\alpha_1=0,\sigma_1=1$ is a
# conditional path; its conditional velocity is $\alpha_t' x_0 + \sigma_t'\varepsilon$ and the marginal
# velocity is again its conditional expectation (what `Denoiser.velocity` computes, Ch. 6). Two paths:
#
# * **linear** (rectified flow / conditional OT): $\alpha_t = 1-t$, $\sigma_t=t$;
# * **trigonometric** (VP-like, $\alpha_t^2+\sigma_t^2=1$): $\alpha_t=\cos\frac{\pi t}{2}$, $\sigma_t=\sin\frac{\pi t}{2}$.
#
# **Gaussian data** are not a third path but a choice of data on which every path is solvable in closed
# form (the monograph's Gaussian-to-Gaussian example): when $x_0\sim\mathcal N(\mu, s^2 I)$, every
#   marginal is $\mathcal N(\alpha_t\mu, \tilde\sigma_t^2 I)$ with $\tilde\sigma_t^2=\alpha_t^2s^2+\sigma_t^2$, and the
#   marginal velocity is affine in closed form:
#   $v_t(x) = \alpha_t'\mu + \frac{\tilde\sigma_t'}{\tilde\sigma_t}\,(x-\alpha_t\mu)$. Its trajectories are
#   $x_t=\alpha_t\mu+\tilde\sigma_t z$, so *every* such path transports $z\sim\mathcal N(0,I)$ to $\mu+s z$: the same
#   end-to-end map (the optimal-transport map between the two Gaussians), reached along different curves.
#
# The trigonometric path is a few lines on top of `utils.schedules.Schedule`:

# %%
class TrigPath(schedules.Schedule):
    """alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2): variance preserving, data at t = 0."""
    name, t_min, t_max = "trig", 1e-3, 0.999
    def _alpha(self, t):   return torch.cos(math.pi / 2 * t)
    def _sigma(self, t):   return torch.sin(math.pi / 2 * t)
    def _d_alpha(self, t): return -math.pi / 2 * torch.sin(math.pi / 2 * t)
    def _d_sigma(self, t): return math.pi / 2 * torch.cos(math.pi / 2 * t)

paths = {"linear": schedules.LinearPath(), "trigonometric": TrigPath()}

def gaussian_velocity(x, t, mu, s, sched):
    a, sg, da, dsg = (float(c) for c in sched.coefficients(t))
    sig_tilde = math.sqrt(a ** 2 * s ** 2 + sg ** 2)
    d_sig_tilde = (a * da * s ** 2 + sg * dsg) / sig_tilde
    return da * mu + d_sig_tilde / sig_tilde * (x - a * mu)

mu, s = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.4
gauss_data = gmm.GaussianMixture(mu[None], s)
for name, sched in paths.items():
    for t in (0.1, 0.5, 0.9):
        x = gauss_data.sample(256, torch.Generator().manual_seed(12), t=t, schedule=sched)[0]
        torch.testing.assert_close(gaussian_velocity(x, t, mu, s, sched), gauss_data.denoiser(sched).velocity(x, t))
print("closed-form Gaussian-to-Gaussian velocity == oracle velocity, for both paths")

# the flow's end-to-end map: x_t = alpha_t mu + (sigma~_t / sigma~_1) x_1, so noise z lands on mu + s z
z = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
for name, sched in paths.items():
    x_end = samplers.sample_rk4(gauss_data.denoiser(sched), z, schedules.uniform_grid(50))
    err = (x_end - (mu + s * z)).abs().max().item()
    print(f"{name:14s} ODE from z ~ N(0, I) ends at mu + s z up to {err:.1e}")
    assert err < 1e-4

# %% [markdown]
# **How straight are the paths?** Following Liu et al. (2023), the straightness of an ODE's trajectories is
#
# $$S = \int_0^1 \mathbb E\,\big\|v_t(x_t) - (x_1-x_0)\big\|^2\,\mathrm dt = \mathbb E\int_0^1\|v_t(x_t)\|^2\mathrm dt - \mathbb E\|x_1-x_0\|^2 \;\ge 0,$$
#
# zero exactly when every trajectory is a straight line run at constant speed — then a single Euler step
# is exact. `flows.straightness` evaluates it on recorded trajectories. Ch. 7 measures straightness
# differently, by **path length over chord** $L/\|x_1-x_0\|$, which is 1 for any straight path whatever its
# speed. The two are tied by Cauchy–Schwarz, $L^2=(\int_0^1\|v_t\|dt)^2\le\int_0^1\|v_t\|^2dt$, so
# $S\ge\|x_1-x_0\|^2\big((L/\|x_1-x_0\|)^2-1\big)$, with equality at constant speed (checked below on every
# recorded path). The *conditional* linear paths are
# straight by construction; the trigonometric ones are quarter-arcs. The *marginal* ODE trajectories are
# another matter: there many conditional lines cross, and their average bends.

# %%
g = torch.Generator().manual_seed(13)
x0_c, eps_c = mix.sample(500, g)[0], torch.randn(500, 2, dtype=torch.float64, generator=g)
ts = schedules.uniform_grid(100)
straight_cond = {}
for name, sched in paths.items():
    a, sg = sched.alpha(ts), sched.sigma(ts)
    xs_cond = a[:, None, None] * x0_c + sg[:, None, None] * eps_c
    straight_cond[name] = flows.straightness(xs_cond, ts).mean().item()

def oracle_straightness(denoiser, n, n_steps=100, seed=14):
    z = samplers.sample_prior(denoiser.schedule, (n, 2), torch.Generator().manual_seed(seed), dtype=torch.float64)
    rec = samplers.Recorder()
    samplers.sample_euler(denoiser, z, schedules.uniform_grid(n_steps), callback=rec)
    return flows.straightness(rec.xs, rec.ts).mean().item(), rec.xs

straight_marg, traj = {}, {}
for name, sched in paths.items():
    straight_marg[name], traj[name] = oracle_straightness(mix.denoiser(sched), S["n_paths"])
for name in paths:
    xs = traj[name]
    length = (xs[1:] - xs[:-1]).norm(dim=-1).sum(0)
    chord = (xs[-1] - xs[0]).norm(dim=-1)
    S_path = flows.straightness(xs, schedules.uniform_grid(100))
    assert (S_path >= length ** 2 - chord ** 2 - 1e-9).all()              # S >= L^2 - chord^2 (Cauchy-Schwarz)
    print(f"{name:14s} conditional paths S = {straight_cond[name]:.4f}   exact marginal ODE paths S = {straight_marg[name]:.3f}"
          f"   (length / chord = {(length / chord).mean():.3f})")
assert straight_cond["linear"] < 1e-10 < 0.1 < straight_cond["trigonometric"]
assert min(straight_marg.values()) > 0.1          # marginal paths bend, whatever the conditional path

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
tt = torch.linspace(0, 1, 101, dtype=torch.float64)
for name, sched in paths.items():
    axes[0].plot(tt, sched.alpha(tt), label=f"alpha_t {name}")
    axes[0].plot(tt, sched.sigma(tt), "--", label=f"sigma_t {name}")
axes[0].set_xlabel("t  (0 = data, 1 = noise)"); axes[0].legend(fontsize=8); axes[0].set_title("path coefficients")
for ax, name in zip(axes[1:], paths):
    plotting.plot_trajectories(traj[name], ax=ax, n_paths=60, title=f"exact ODE paths, {name} (S = {straight_marg[name]:.2f})")
fig.tight_layout()


# %% [markdown]
# Both exact flows carry noise to the eight modes along bent paths; the printout says which one is
# straighter on this data by Liu's measure (it depends on the data, not only on the conditional path).
# $S$ penalises changes of speed as well as of direction, so the picture (shape only) and the number
# (shape and speed) can rank two flows differently; for an Euler step, both matter.
# Bent paths are what make few-step Euler sampling inaccurate. Rectified flow attacks the bend directly.
#
# ## 4. Rectified flow and Reflow
#
# The flow-matching model above is a rectified flow (Liu et al. 2023) with the independent coupling
# $(x_0,\varepsilon)\sim p_0\otimes\mathcal N(0,I)$. Its ODE defines a *new*, deterministic coupling:
# $\varepsilon \mapsto x_0=\mathrm{ODE}_{1\to 0}(\varepsilon)$. **Reflow** retrains on straight lines between
# these pairs. Since trajectories of an ODE never cross, the new lines cross far less, the regression target
# $\varepsilon-x_0$ becomes (nearly) a function of $x_t$, and the new flow's paths are (nearly) straight.
# What Reflow keeps is only the two **endpoint** laws: $\mathcal N(0,I)$ at $t=1$ and the first flow's output
# law at $t=0$. The marginals in between are those of the new coupling's straight interpolation,
# $(1-t)x_0+t\varepsilon$, and they differ from the first flow's (measured below). Writing the pairing out:

# %%
def make_reflow_pairs(denoiser, n, n_steps, generator):
    eps = samplers.sample_prior(denoiser.schedule, (n, 2), generator)       # noise at t = 1
    x0 = samplers.sample_heun(denoiser, eps, schedules.uniform_grid(n_steps))  # where the flow takes it
    return torch.stack([x0, eps], dim=1)                                     # (n, 2, D): one pair per row

mine = make_reflow_pairs(fm, 256, 10, torch.Generator().manual_seed(15))
ref = flows.reflow_pairs(fm, (256, 2), n_steps=10, generator=torch.Generator().manual_seed(15))
torch.testing.assert_close(mine, ref)
print("inline Reflow pairs == utils.flows.reflow_pairs")

# %% [markdown]
# Now the real run: draw the pairs from the 1-RF model, then fine-tune a copy of it ("2-RF") with the
# flow-matching loss on those fixed pairs (`flows.ReflowLoss`).

# %%
pairs = flows.reflow_pairs(fm, (S["n_pairs"], 2), n_steps=S["pair_ode_steps"], generator=torch.Generator().manual_seed(16))
reflow_model, reflow_hist = training.train(copy.deepcopy(fm_model).train().requires_grad_(True), flows.ReflowLoss(),
                                           pairs, S["reflow_steps"], batch_size=S["batch"], lr=1e-3,
                                           ema_decay=0.99, seed=1, desc="reflow (2-RF)")
rf2 = targets.Denoiser(reflow_model, "velocity", path)

def learned_straightness(denoiser, n=2000, n_steps=40):
    z = samplers.sample_prior(path, (n, 2), torch.Generator().manual_seed(17))
    rec = samplers.Recorder()
    samplers.sample_euler(denoiser, z, schedules.uniform_grid(n_steps), callback=rec)
    return flows.straightness(rec.xs, rec.ts).mean().item(), rec.xs

S_1rf, traj_1rf = learned_straightness(fm)
S_2rf, traj_2rf = learned_straightness(rf2)
print(f"straightness: exact linear-path flow {straight_marg['linear']:.3f},  1-RF (learned) {S_1rf:.3f},  "
      f"2-RF after Reflow {S_2rf:.4f}")
assert S_2rf < 0.2 * S_1rf
config.record(nb05_straightness_1rf=float(S_1rf), nb05_straightness_2rf=float(S_2rf))

# %% [markdown]
# **Sample quality at 1, 2, 4, 8 Euler steps**, before and after Reflow, each as a ratio to the
# data-vs-data noise floor (1 means indistinguishable from data at $n=400$ per chunk). With bent paths, a
# single Euler step from $t=1$ lands every sample on the data mean (Exercise 3); after Reflow, one step is
# close to the full ODE.

# %%
steps_list = [1, 2, 4, 8]
quality = {"1-RF": {}, "2-RF": {}, "samples": {}}
for n in steps_list:
    for name, d in [("1-RF", fm), ("2-RF", rf2)]:
        x = samplers.sample_euler(d, z_eval, schedules.uniform_grid(n))
        quality[name][n] = metrics.compare_to_floor(x, draw_data).ratio
        quality["samples"][(name, n)] = x[:2000]
print("Euler steps   " + "  ".join(f"{n:>6d}" for n in steps_list))
for name in ("1-RF", "2-RF"):
    print(f"{name} SW/floor " + "  ".join(f"{quality[name][n]:6.2f}" for n in steps_list))
print(f"(1-RF with Heun 20 steps: {fc_fm.ratio:.2f})")
assert quality["2-RF"][1] < 0.5 * quality["1-RF"][1]
assert quality["2-RF"][1] < 2.0
assert all(quality["2-RF"][n] < 2.0 for n in steps_list)
config.record(**{f"nb05_{k.replace('-', '').lower()}_euler{n}_sw_ratio": float(quality[k][n]) for k in ("1-RF", "2-RF") for n in steps_list})

# %%
fig, axes = plt.subplots(2, 4, figsize=(13, 7))
for i, name in enumerate(("1-RF", "2-RF")):
    for j, n in enumerate(steps_list):
        plotting.plot_samples(quality["samples"][(name, n)], ax=axes[i, j], s=1,
                              title=f"{name}, {n} step{'s' if n > 1 else ''}\nSW/floor {quality[name][n]:.2f}")
fig.tight_layout()

fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, name, tr, S_val in [(axes[0], "1-RF", traj_1rf, S_1rf), (axes[1], "2-RF", traj_2rf, S_2rf)]:
    plotting.plot_trajectories(tr, ax=ax, n_paths=80, title=f"{name} paths (S = {S_val:.3f})")
fig.tight_layout()

# %% [markdown]
# ### Prop. 5.4.1 measured: Reflow lowers the transport cost, and moves the marginals in between
#
# Prop. 5.4.1 (after Liu et al. 2023): the rectified coupling never costs more than the coupling it came
# from, $\mathbb E\|x_0 - \varepsilon\|^2$ under the Reflow pairs $\le$ under the independent pairs (for every convex
# cost, in fact). The independent cost is known exactly, $\mathbb E\|x_0\|^2 + \mathbb E\|\varepsilon\|^2$ (the cross
# term vanishes), and the Reflow pairs are the ones 2-RF was trained on; we compare them with a Monte Carlo
# standard error. Then we take 2-RF's own pairs (its ODE from fresh noise) as Reflow's next round.

# %%
def pair_cost(x0, eps):
    c = ((x0.double() - eps.double()) ** 2).sum(1)
    return c.mean().item(), (c.std() / math.sqrt(len(c))).item()

cost_indep = (torch.trace(mix.covariance()) + (mix.mean() ** 2).sum()).item() + 2.0   # E|x0|^2 + E|eps|^2
g = torch.Generator().manual_seed(20)
cost_indep_mc = pair_cost(mix.sample(len(pairs), g)[0], torch.randn(len(pairs), 2, dtype=torch.float64, generator=g))
cost_1rf = pair_cost(pairs[:, 0], pairs[:, 1])
eps_2 = samplers.sample_prior(path, (S["n_pairs"], 2), torch.Generator().manual_seed(21))
cost_2rf = pair_cost(samplers.sample_heun(rf2, eps_2, schedules.uniform_grid(S["pair_ode_steps"])), eps_2)
print(f"E|x0 - eps|^2: independent pairs {cost_indep:.3f} exactly (Monte Carlo {cost_indep_mc[0]:.3f} +- {cost_indep_mc[1]:.3f})")
print(f"               1-RF (Reflow) pairs {cost_1rf[0]:.3f} +- {cost_1rf[1]:.3f};   2-RF pairs {cost_2rf[0]:.3f} +- {cost_2rf[1]:.3f}")
assert abs(cost_indep_mc[0] - cost_indep) < 4 * cost_indep_mc[1]           # the exact value, by sampling
assert cost_1rf[0] + 10 * cost_1rf[1] < cost_indep                           # Reflow lowers the cost, by far more than MC error
assert cost_2rf[0] < cost_1rf[0] + 4 * math.hypot(cost_1rf[1], cost_2rf[1]) + 0.05 * cost_1rf[0]   # and does not raise it again
config.record(nb05_transport_cost_independent=float(cost_indep), nb05_transport_cost_reflow=float(cost_1rf[0]))

# %% [markdown]
# Reflow's second round barely changes the cost: the 1-RF coupling is already nearly straight, the fixed
# point Ch. 7 (§7.5.2) studies, where it shows that such a fixed point need not be the optimal-transport
# coupling.
#
# **The marginals in between.** Both flows start from $\mathcal N(0,I)$ and end (up to training error) at the
# same data law, but at $t=1/2$ the 1-RF flow passes through the linear path's $p_{1/2}$ (the oracle knows it
# exactly), while 2-RF passes through the law of $\tfrac12(x_0+\varepsilon)$ under the Reflow pairs. We run each
# learned ODE from $t=1$ to $t=1/2$ and measure the sliced Wasserstein distance to exact samples of $p_{1/2}$,
# as a ratio to the noise floor of $p_{1/2}$ against itself (five chunks of 1600 points, so the floor is low).

# %%
p_half = lambda n, g: mix.sample(n, g, t=0.5, schedule=path)[0]
half_grid = torch.linspace(1.0, 0.5, S["pair_ode_steps"] // 2 + 1)
mid = {name: samplers.sample_heun(d, z_eval, half_grid) for name, d in [("1-RF", fm), ("2-RF", rf2)]}
mid["Reflow pairs"] = 0.5 * (pairs[:, 0] + pairs[:, 1])
mid_vs_p = {name: metrics.compare_to_floor(x[:8000], p_half, repeats=5) for name, x in mid.items()}   # 5 chunks of 1600
for name, r in mid_vs_p.items():
    print(f"{name:13s} at t = 1/2 vs exact p_1/2: {r}")
assert mid_vs_p["1-RF"].ratio < 2.0                                   # 1-RF follows p_t ...
assert mid_vs_p["2-RF"].ratio > 3 * max(mid_vs_p["1-RF"].ratio, 1.0)  # ... 2-RF does not, far above the floor
assert mid_vs_p["Reflow pairs"].ratio > 3 * max(mid_vs_p["1-RF"].ratio, 1.0)
config.record(nb05_midpoint_sw_ratio_1rf=float(mid_vs_p["1-RF"].ratio), nb05_midpoint_sw_ratio_2rf=float(mid_vs_p["2-RF"].ratio))

fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for ax, (name, x) in zip(axes, [("exact p_1/2 (1-RF's target)", p_half(3000, torch.Generator().manual_seed(22))),
                                ("1-RF at t = 1/2", mid["1-RF"][:3000]), ("2-RF at t = 1/2", mid["2-RF"][:3000])]):
    plotting.plot_samples(x, ax=ax, s=1, lim=3, title=name)
fig.tight_layout()


# %% [markdown]
# ### Widget: how many steps does each flow need?
#
# Move the slider: the 1-RF flow needs several Euler steps before its samples find the modes, the
# 2-RF flow is already there after one.

# %%
def draw_steps(n_steps=1):
    n_steps = int(n_steps)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax, (name, d) in zip(axes, [("1-RF", fm), ("2-RF (after Reflow)", rf2)]):
        rec = samplers.Recorder()
        x = samplers.sample_euler(d, z_eval[:600], schedules.uniform_grid(n_steps), callback=rec)
        plotting.plot_trajectories(rec.xs, ax=ax, n_paths=60, alpha=0.4)
        plotting.plot_samples(x, ax=ax, s=2, title=f"{name}: {n_steps} Euler step(s)")
    fig.tight_layout()
    return fig

widgets.explore(draw_steps, {"n_steps": (1, 8, 1, 1)})

# %% [markdown]
# ## Exercises
#
# Each answer cell is followed by a check: run it to test your answer against the exact oracle.
#
# **Exercise 1 (the other clock).** The flow-matching papers put data at $t'=1$: $x_{t'} = t' x_0 + (1-t')\varepsilon$.
# Show that their marginal velocity is $v'(x,t') = -v(x,1-t')$. Define a function `v_other_clock(x, t_prime)` that
# returns their conditional velocity averaged over the posterior, $\mathbb E[x_0-\varepsilon\,|\,x_{t'}=x]$, from the
# oracle's posterior means (`oracle.x0_eps`); the check compares it with $-v_{1-t'}(x)$ at $t' = 0.2$ and $0.7$.

# %% tags=["solution"]
# x_{t'} = t' x0 + (1 - t') eps is our path at t = 1 - t', so d x / d t' = -d x / d t, and the conditional
# velocity x0 - eps is minus ours. Average it over the posterior: E[x0 - eps | x_{t'} = x] = -v(x, 1 - t').
def v_other_clock(x, t_prime):
    x0_hat, eps_hat = oracle.x0_eps(x, 1 - t_prime)      # the posterior means at our time t = 1 - t'
    return x0_hat - eps_hat

x_demo = mix.sample(300, torch.Generator().manual_seed(18), t=0.3, schedule=path)[0]
print("max |v'(x, 0.7) + v(x, 0.3)| =", float((v_other_clock(x_demo, 0.7) + oracle.velocity(x_demo, 0.3)).abs().max()))

# %% tags=["check"]
for t_prime in (0.2, 0.7):
    x_chk = mix.sample(300, torch.Generator().manual_seed(18), t=1 - t_prime, schedule=path)[0]
    exercises.check_close(f"v_other_clock(x, {t_prime})", v_other_clock(x_chk, t_prime), -oracle.velocity(x_chk, 1 - t_prime),
                          rtol=1e-6, atol=1e-9, hint="x_{t'} is our x_t at t = 1 - t': take the oracle's posterior means "
                                                     "there, and the papers' conditional velocity is x0 - eps (minus ours)")

# %% [markdown]
# **Exercise 2 (two forms of straightness).** On the recorded 1-RF trajectories `traj_1rf` (40 uniform Euler steps
# from $t=1$ to $0$), compute Liu et al.'s $\sum_i \Delta t_i\,\|\Delta x_i/\Delta t_i - (x_{\rm end}-x_{\rm start})\|^2$
# directly, averaged over the paths, and store it (a float) in `liu`. The check compares it with `S_1rf` from
# `flows.straightness` (which uses $\int\|v\|^2 - \|x_1-x_0\|^2$). Why are the two equal?

# %% tags=["solution"]
ts_rec = schedules.uniform_grid(40)
dt = (ts_rec[:-1] - ts_rec[1:]).float()                         # positive steps
vel = (traj_1rf[1:] - traj_1rf[:-1]) / -dt[:, None, None]       # dx/dt along the path (time decreasing)
disp = traj_1rf[0] - traj_1rf[-1]                               # x(t=1) - x(t=0)
liu = float((dt[:, None] * ((vel - disp) ** 2).sum(-1)).sum(0).mean())
print(f"direct form {liu:.5f}  vs  flows.straightness {S_1rf:.5f}")
# Expanding the square: sum dt |v|^2 - 2 <sum dt v, d> + |d|^2 = sum dt |v|^2 - |d|^2, since sum dt v = d.

# %% tags=["check"]
exercises.check_close("liu", liu, S_1rf, rtol=1e-4, atol=1e-6,
                      hint="weight each step's squared deviation ||dx_i/dt_i - (x_end - x_start)||^2 by its |dt_i| = 1/40, "
                           "sum over the steps, then average over the 2000 paths")

# %% [markdown]
# **Exercise 3 (why one Euler step collapses).** Show that for the linear path, one Euler step of the *exact*
# marginal flow from $t=1$ maps every $z$ to the data mean, $z - v_1(z) = \mathbb E[x_0]$. Check it on a data set
# whose mean is not zero (the eight Gaussians' is): take the oracle of `data.toy_gmm("two_modes")` (weights 0.8 / 0.2
# at $(\mp 2, 0)$) on `path`, draw 1000 prior points $z$ and store their images under one Euler step from $t=1$ to
# $t=0$ in `one_step`, shape (1000, 2).

# %% tags=["solution"]
# At t = 1, x_1 = eps carries no information about x0: E[eps | x_1 = z] = z and E[x0 | x_1 = z] = E[x0], so
# v_1(z) = z - E[x0] and the Euler step z - 1 * v_1(z) = E[x0], for every z.
two_modes = data.toy_gmm("two_modes")
z = samplers.sample_prior(path, (1000, 2), torch.Generator().manual_seed(19), dtype=torch.float64)
one_step = samplers.sample_euler(two_modes.denoiser(path), z, schedules.uniform_grid(1))
print("one exact Euler step from t = 1 lands on", one_step[:2].tolist(), "...; the data mean is", two_modes.mean().tolist())

# %% tags=["check"]
assert tuple(one_step.shape) == (1000, 2), f"one_step should hold the 1000 stepped points, shape (1000, 2); got {tuple(one_step.shape)}"
mean_two_modes = torch.tensor([0.8 * -2.0 + 0.2 * 2.0, 0.0], dtype=torch.float64)       # E[x0] = (-1.2, 0)
exercises.check_close("one_step", one_step, mean_two_modes.expand(1000, 2), rtol=0, atol=1e-6,
                      hint="at t = 1 the point z is pure noise, so E[x0 | z] = E[x0] and v_1(z) = z - E[x0]; "
                           "one Euler step of size 1 from t = 1 to 0 gives z - v_1(z)")

# %% [markdown]
# ## Summary
#
# * A normalizing flow's log-density is the base log-density plus a log-determinant; coupling layers make
#   both exact and cheap. Our coupling flow came within a small KL (printed above) of the exact density.
# * A CNF replaces layers by an ODE; its log-density follows from integrating the divergence — we
#   recovered the oracle's exact $\log p_0$ that way.
# * Flow matching regresses a velocity on *conditional* velocities. The marginal velocity is their
#   conditional expectation; the CFM and FM losses differ by a constant (we measured it on two networks),
#   so they share their gradients, and no ODE is simulated during training.
# * Conditional paths (linear, trigonometric) can be straight while the marginal flow is bent; Gaussian data
#   make every path solvable in closed form. Liu's $S$ and Ch. 7's length over chord both measure
#   straightness, and $S \ge$ chord$^2((L/\text{chord})^2-1)$ ties them.
# * Reflow re-pairs noise with the flow's own outputs and straightens the paths: the measured straightness
#   dropped by a large factor and one Euler step reached the quality of many. It lowered the transport cost
#   $\mathbb E\|x_0-\varepsilon\|^2$ well below the independent pairs' (Prop. 5.4.1), and it kept only the two endpoint
#   laws: at $t=1/2$ the 2-RF flow is far from the 1-RF flow's $p_{1/2}$.
#
# **Where the monograph goes next.** Ch. 6 puts the variational, score-based and flow-based views in one
# frame (the four prediction targets and their conversions); Ch. 7 relates flows and Reflow to optimal
# transport; Ch. 9 and Ch. 10–11 return to few-step sampling with better solvers, distillation and flow maps.
