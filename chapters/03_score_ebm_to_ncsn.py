# %% [markdown]
# # Chapter 3 — The score-based perspective: from energy-based models to NCSN
#
# This notebook follows **Ch. 3** of *The Principles of Diffusion Models* (Lai, Song, Kim,
# Mitsufuji, Ermon, 2025). After working through it you can
#
# * sample from an unnormalised density $p(x) \propto e^{-E(x)}$ with **Langevin dynamics**, using only
#   its score $\nabla_x \log p(x) = -\nabla_x E(x)$;
# * write down and check the three ways of fitting a score from samples: the integration-by-parts
#   (**implicit**) objective of Hyvärinen, **sliced** score matching and **denoising** score matching,
#   and verify **Tweedie's formula** against an exact oracle, with its **second-order** form: the posterior
#   covariance $\operatorname{Cov}[x_0\mid x_t]$ from the Hessian of $\log p_t$;
# * explain, with numbers, **why one noise level fails** (Langevin with the *exact* score returns the
#   wrong mode weights) and how **NCSN** fixes it with a ladder of noise levels and annealed Langevin;
# * put NCSN and DDPM side by side (the monograph's §3.5), and say which of their samplers is a
#   discretisation of the reverse SDE (ancestral DDPM) and which is MCMC at fixed noise levels (annealed Langevin).
#
# **Prerequisites:** Ch. 1 (what a generative model is), Ch. 2 helps for the DDPM comparison.
# Every claim below is computed and, where it is a fact, asserted against ground truth: the
# Gaussian-mixture oracle `utils.gmm` gives exact densities and scores at every noise level.

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import math, torch, matplotlib, matplotlib.pyplot as plt
from utils import config, schedules, targets, gmm, data, nets, losses, training, samplers, metrics, plotting, widgets
from utils import score_matching, exercises
profile, device, gen = config.setup(seed=0)
S = config.pick({
    "test": dict(n=8000, langevin_steps=300, plain_steps=500, ald_inner=200, sm_steps=400,
                 train_steps=1000, hidden=64, depth=2, ncsn_inner=100, ddpm_steps=100),
    "cpu":  dict(n=8000, langevin_steps=1000, plain_steps=2000, ald_inner=500, sm_steps=1500,
                 train_steps=4000, hidden=128, depth=3, ncsn_inner=100, ddpm_steps=200),
})
S

# %% [markdown]
# ## 1. Energy-based models and Langevin sampling
#
# An energy-based model (EBM) writes a density through an energy $E_\theta(x)$,
# $$p_\theta(x) = \frac{e^{-E_\theta(x)}}{Z_\theta}, \qquad Z_\theta = \int e^{-E_\theta(x)}\,dx .$$
# The normaliser $Z_\theta$ is an intractable integral, which makes likelihood training and exact
# sampling hard. The **score** sidesteps it: $\nabla_x \log p_\theta(x) = -\nabla_x E_\theta(x)$ does not
# involve $Z_\theta$ at all (Ch. 3).
#
# **Langevin dynamics** turns a score into samples. The SDE $dx = \nabla_x \log p(x)\,dt + \sqrt2\,dW$ has
# $p$ as its stationary distribution; its Euler–Maruyama discretisation with step $\eta$ is
# $$x_{k+1} = x_k + \eta\,\nabla_x \log p(x_k) + \sqrt{2\eta}\; z_k, \qquad z_k \sim \mathcal N(0, I),$$
# exact as $\eta \to 0$ and $k \to \infty$ (Roberts & Tweedie 1996 call it the unadjusted Langevin algorithm).
#
# We start from a *known* energy: the negative log of a Gaussian mixture, with the normaliser left
# out on purpose. Its score comes from automatic differentiation of $E$, exactly as for a neural EBM.

# %%
ring = data.toy_gmm("8gaussians", std=0.5)          # 8 overlapping modes on a circle of radius 2

def gmm_energy(x, means, log_w, var):
    """E(x) = -log sum_k w_k exp(-|x - mu_k|^2 / (2 var)): an isotropic mixture, normaliser dropped."""
    d2 = ((x[:, None, :] - means) ** 2).sum(-1)                     # (B, K)
    return -torch.logsumexp(log_w - d2 / (2 * var), dim=1)          # (B,)

energy = lambda x: gmm_energy(x, ring.means, ring.weights.log(), 0.5 ** 2)

def score_from_energy(energy):
    """x -> -grad_x E(x), by autograd (works inside torch.no_grad samplers too)."""
    def score(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return -torch.autograd.grad(energy(x).sum(), x)[0]
    return score

ring_score = score_from_energy(energy)
x_check = torch.randn(500, 2, dtype=torch.float64, generator=gen)
torch.testing.assert_close(ring_score(x_check), ring.score(x_check))   # Z does not matter for the score
print("autograd score of the unnormalised energy == exact oracle score")


# %% [markdown]
# Langevin dynamics written out, line by line:

# %%
def langevin(score, x, eta, n_steps, generator):
    for _ in range(n_steps):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + eta * score(x) + math.sqrt(2 * eta) * z
    return x

x_init = 3 * torch.randn(400, 2, dtype=torch.float64, generator=gen)
ours = langevin(ring_score, x_init, 0.02, 50, torch.Generator().manual_seed(1))
ref = samplers.sample_langevin(ring_score, x_init, 0.02, 50, generator=torch.Generator().manual_seed(1))
torch.testing.assert_close(ours, ref)
print("inline Langevin == utils.samplers.sample_langevin")

# %% [markdown]
# From a broad start, $N(0, 3^2 I)$, the chains settle on the ring. Sample quality is measured as the
# sliced Wasserstein distance to fresh data, relative to the **noise floor** (two independent
# data sets of the same size are not at distance zero either).

# %%
eta_ring = 0.02
x0 = 3 * torch.randn(S["n"], 2, dtype=torch.float64, generator=gen)
x_ring = samplers.sample_langevin(ring_score, x0, eta_ring, S["langevin_steps"], generator=gen)
fc_ring = metrics.compare_to_floor(x_ring, lambda m, g: ring.sample(m, g)[0])
print("Langevin on the ring:", fc_ring)
assert fc_ring.ratio < 1.5, fc_ring

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
plotting.plot_density(lambda p: -energy(p), ax=axes[0], lim=3.5, title=r"$e^{-E(x)}$ (unnormalised)")
plotting.plot_vector_field(ring_score, ax=axes[1], lim=3.5, n=17, normalize=True, title="score $-\\nabla E$ (direction)")
plotting.plot_samples(x_ring[:3000], ax=axes[2], lim=3.5, s=1, title=f"Langevin, {S['langevin_steps']} steps, $\\eta$={eta_ring}")
fig.tight_layout()


# %% [markdown]
# ## 2. Score matching: learning the score from samples
#
# A neural EBM must be *trained*, and we can skip the energy altogether by fitting a vector field
# $s_\theta(x) \approx \nabla_x \log p(x)$ directly. The natural objective, **explicit score matching**,
# $$J_{\rm ESM}(\theta) = \tfrac12\,\mathbb E_{p}\,\|s_\theta(x) - \nabla_x \log p(x)\|^2 ,$$
# needs the unknown data score. Hyvärinen (2005) integrated by parts: for densities that vanish at
# infinity,
# $$J_{\rm ESM}(\theta) = \underbrace{\mathbb E_{p}\big[\operatorname{tr}(\nabla_x s_\theta(x)) + \tfrac12\|s_\theta(x)\|^2\big]}_{J_{\rm ISM}(\theta)} + \underbrace{\tfrac12\,\mathbb E_p\|\nabla_x \log p\|^2}_{\text{independent of }\theta}.$$
# The **implicit** objective $J_{\rm ISM}$ uses samples only. Its trace costs $D$ backward passes,
# fine in 2D. Written out (the trace loop is the whole trick):

# %%
def implicit_sm(score_fn, x):
    x = x.detach().requires_grad_(True)
    s = score_fn(x)                                                          # (B, D)
    trace = sum(torch.autograd.grad(s[:, i].sum(), x, create_graph=True)[0][:, i]
                for i in range(x.shape[1]))                                  # d s_i / d x_i summed
    return (trace + 0.5 * (s ** 2).sum(1)).mean()

mix = data.toy_gmm("two_modes")            # weights 0.8 / 0.2 at (-2, 0) and (2, 0), std 0.3
x_data, _ = mix.sample(4000, gen)
model_a = lambda x: -(x - torch.tensor([-1.0, 0.5], dtype=x.dtype)) / 0.7    # two arbitrary "models"
torch.manual_seed(0)
net_b = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
torch.testing.assert_close(implicit_sm(model_a, x_data), score_matching.implicit_score_matching(model_a, x_data))
torch.testing.assert_close(implicit_sm(net_b, x_data), score_matching.implicit_score_matching(net_b, x_data))
print("inline implicit SM == utils.score_matching.implicit_score_matching")

# %% [markdown]
# The claim: $J_{\rm ESM} - J_{\rm ISM}$ is the *same constant* for every model, namely
# $\tfrac12 \mathbb E\|\nabla \log p\|^2$. We check it on the two models with the oracle's exact data
# score, on a large sample, with a tolerance of 5 Monte-Carlo standard errors.

# %%
x_big, _ = mix.sample(100_000, gen)
const = 0.5 * (mix.score(x_big) ** 2).sum(1)
for name, model in [("affine model", model_a), ("random tanh net", net_b)]:
    xg = x_big.detach().requires_grad_(True)
    s = model(xg)
    tr = sum(torch.autograd.grad(s[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(2))
    per_esm = 0.5 * ((s - mix.score(x_big)) ** 2).sum(1)
    per_ism = tr + 0.5 * (s ** 2).sum(1)
    gap = (per_esm - per_ism - const).detach()
    se = float(gap.std() / math.sqrt(len(gap)))
    print(f"{name:16s}: J_ESM = {per_esm.mean():8.3f}, J_ISM = {per_ism.mean():8.3f}, "
          f"J_ESM - J_ISM - E|grad log p|^2/2 = {gap.mean():+.4f} (5 s.e. = {5 * se:.4f}); constant = {const.mean():.3f}")
    assert abs(float(gap.mean())) < 5 * se

# %% [markdown]
# ### Sliced score matching
#
# In high dimension the $D$ backward passes of the trace are the bottleneck. Song, Garg, Shi & Ermon
# (2019) project onto random directions $v$ with $\mathbb E[vv^\top] = I$ (Rademacher or Gaussian):
# $\mathbb E_v[v^\top \nabla_x s\, v] = \operatorname{tr}\nabla_x s$, and $v^\top\nabla_x s\,v = v\cdot\nabla_x(v\cdot s)$
# costs one backward pass:
# $$J_{\rm SSM} = \mathbb E_{p}\,\mathbb E_{v}\big[v^\top \nabla_x s_\theta(x)\, v + \tfrac12 (v^\top s_\theta(x))^2\big].$$
# Its expectation over $v$ equals $J_{\rm ISM}$: we average many independent projections and compare.

# %%
g_v = torch.Generator().manual_seed(5)
ism_b = score_matching.implicit_score_matching(net_b, x_data).item()
ssm_draws = torch.tensor([score_matching.sliced_score_matching(net_b, x_data, generator=g_v).item()
                          for _ in range(100)])
se = float(ssm_draws.std() / math.sqrt(len(ssm_draws)))
print(f"J_ISM = {ism_b:.4f};  mean of 100 sliced estimates = {ssm_draws.mean():.4f} ± {se:.4f} (1 s.e.)")
assert abs(float(ssm_draws.mean()) - ism_b) < 5 * se

# %% [markdown]
# ### Denoising score matching and Tweedie's formula
#
# Vincent (2011) takes another route: perturb the data, $\tilde x = x + \sigma\varepsilon$, so
# $\tilde x \sim p_\sigma = p * \mathcal N(0, \sigma^2 I)$, and regress onto the score of the *known*
# Gaussian kernel, $\nabla_{\tilde x} \log p(\tilde x\mid x) = -\varepsilon/\sigma$:
# $$J_{\rm DSM}(\theta) = \tfrac12\,\mathbb E_{x,\varepsilon}\,\big\|s_\theta(x + \sigma\varepsilon) + \varepsilon/\sigma\big\|^2
#   = \tfrac12\,\mathbb E_{p_\sigma}\|s_\theta - \nabla \log p_\sigma\|^2 + \text{const}.$$
# No trace, no derivative of the network: the minimiser is the score of the *noisy* density,
# $s^\star(\tilde x) = \mathbb E[-\varepsilon/\sigma \mid \tilde x] = \nabla \log p_\sigma(\tilde x)$.
# Rearranged, this is **Tweedie's formula** (Efron 2011):
# $$\mathbb E[x \mid \tilde x] = \tilde x + \sigma^2\,\nabla_{\tilde x}\log p_\sigma(\tilde x).$$
# We verify it two independent ways: the right side from autograd of the exact $\log p_\sigma$,
# the left side by self-normalised importance weighting of 200,000 data samples,
# $\mathbb E[x\mid\tilde x] \approx \sum_i x_i\, \mathcal N(\tilde x; x_i, \sigma^2 I) / \sum_i \mathcal N(\tilde x; x_i, \sigma^2 I)$.

# %%
sigma_tw = 0.5
ve_demo = schedules.VE(sigma_min=sigma_tw, sigma_max=10.0)          # at t = 0 its noise is sigma_tw
queries = torch.tensor([[-2.5, 0.3], [-1.0, -0.5], [0.0, 0.0], [0.8, 0.4], [2.3, -0.2]], dtype=torch.float64)
with torch.enable_grad():
    q = queries.clone().requires_grad_(True)
    grad_log_p = torch.autograd.grad(mix.log_prob(q, 0.0, ve_demo).sum(), q)[0]
tweedie = queries + sigma_tw ** 2 * grad_log_p
x_pool, _ = mix.sample(200_000, gen)
logw_is = -((queries[:, None, :] - x_pool[None]) ** 2).sum(-1) / (2 * sigma_tw ** 2)    # (Q, N)
w_is = torch.softmax(logw_is, dim=1)
posterior_mean = w_is @ x_pool
ess = 1 / (w_is ** 2).sum(1)
print("Tweedie  :", tweedie.numpy().round(3).tolist())
print("Monte Carlo:", posterior_mean.numpy().round(3).tolist(), " (effective sample sizes", ess.int().tolist(), ")")
err_tw = float((tweedie - posterior_mean).norm(dim=1).max())
print(f"max |Tweedie - Monte Carlo| = {err_tw:.4f}")
assert err_tw < 0.02
config.record(nb03_tweedie_max_error=float(err_tw))
torch.testing.assert_close(tweedie, mix.denoiser(ve_demo).x0(queries, 0.0))   # and the oracle's posterior mean

# %% [markdown]
# ### Second-order Tweedie: the posterior covariance from the Hessian (§3.3)
#
# Tweedie's formula has a second-order sibling (the monograph's "higher-order" Tweedie). Write the noisy
# point in the general form $x_t=\alpha_t x_0+\sigma_t\varepsilon$ (here $\alpha_t=1$, $\sigma_t=\sigma$; Ch. 4 uses both).
# Then $p_t(x)=\int p(x_0)\,\mathcal N(x;\alpha_t x_0,\sigma_t^2 I)\,dx_0$, and differentiating under the integral,
#
# $$\nabla\log p_t(x)=\frac{\alpha_t\,\mathbb E[x_0\mid x_t=x]-x}{\sigma_t^2}
#   \quad\Longrightarrow\quad \mathbb E[x_0\mid x_t=x]=\frac{x+\sigma_t^2\nabla\log p_t(x)}{\alpha_t}.$$
#
# The posterior $p(x_0\mid x)\propto p(x_0)\exp\!\big(\alpha_t x_0^\top x/\sigma_t^2-\alpha_t^2\|x_0\|^2/(2\sigma_t^2)\big)$ is an
# exponential family in $x_0$ with natural parameter $\alpha_t x/\sigma_t^2$, so the derivative of its mean is its covariance
# times $\alpha_t/\sigma_t^2$: $\nabla_x\mathbb E[x_0\mid x]=\frac{\alpha_t}{\sigma_t^2}\operatorname{Cov}[x_0\mid x]$. Differentiating the
# mean formula once more,
#
# $$\operatorname{Cov}[x_0\mid x_t=x]=\frac{\sigma_t^2}{\alpha_t^2}\Big(I+\sigma_t^2\,\nabla_x^2\log p_t(x)\Big).$$
#
# The Hessian of $\log p_t$ is the Jacobian of the score, so a score model gives the posterior *covariance*
# too, at the price of $D$ extra backward passes. The check, on the eight-mode mixture under the VP schedule
# (`schedules.VPLinear`, so $\alpha_t<1$ and the $1/\alpha_t^2$ matters): the Hessian by `torch.func.hessian` of the
# oracle's exact $\log p_t$ (inline), the Jacobian of the oracle's score (`score_matching.tweedie_covariance`), and
# the exact posterior. For mixture data $p(x_0\mid x_t)$ is again a Gaussian mixture — responsibilities
# $r_k\propto w_k\mathcal N(x;\alpha_t\mu_k,G_k)$ with $G_k=\alpha_t^2\Sigma_k+\sigma_t^2I$, component means
# $m_k=\mu_k+\alpha_t\Sigma_kG_k^{-1}(x-\alpha_t\mu_k)$ and covariances $C_k=\Sigma_k-\alpha_t^2\Sigma_kG_k^{-1}\Sigma_k$ — whose covariance
# is $\sum_k r_k(C_k+m_km_k^\top)-\bar m\bar m^\top$ (`score_matching.mixture_posterior`). All three agree to rounding
# error (asserted to $10^{-10}$).

# %%
eight = data.toy_gmm("8gaussians")                          # 8 modes, std 0.15, on a circle of radius 2
vp_tw = schedules.VPLinear()
oracle_tw = eight.denoiser(vp_tw)
ang = torch.tensor([0.0, math.pi / 8, math.pi / 4 + 0.1, 1.0], dtype=torch.float64)
x_q = torch.cat([2.0 * torch.stack([ang.cos(), ang.sin()], 1), torch.tensor([[0.0, 0.0], [0.7, -1.2]], dtype=torch.float64)])
eye2 = torch.eye(2, dtype=torch.float64)
hess_log_p = lambda t: torch.func.vmap(torch.func.hessian(lambda z: eight.log_prob(z[None], t, vp_tw)[0]))
cov_err = {}
for t in (0.05, 0.2, 0.5):
    a, s = float(vp_tw.alpha(t)), float(vp_tw.sigma(t))
    xt_q = a * x_q                                            # query points at the scale of p_t
    cov_inline = (s ** 2 / a ** 2) * (eye2 + s ** 2 * hess_log_p(t)(xt_q))          # second-order Tweedie
    torch.testing.assert_close(cov_inline, score_matching.tweedie_covariance(lambda z: oracle_tw.score(z, t), xt_q, a, s))
    mean_exact, cov_exact = score_matching.mixture_posterior(eight, xt_q, a, s)     # the exact posterior
    torch.testing.assert_close(mean_exact, oracle_tw.x0(xt_q, t))                   # (its mean is first-order Tweedie)
    cov_err[t] = float((cov_inline - cov_exact).abs().max())
print("max |second-order Tweedie - exact posterior covariance| by t:", {t: f"{e:.1e}" for t, e in cov_err.items()})
assert max(cov_err.values()) < 1e-10

# %% [markdown]
# The closed form could share a mistake with the derivation, so one more check that assumes neither: Monte
# Carlo over the exact posterior, by self-normalised importance weighting of 400,000 data samples as above
# (weights $\propto\mathcal N(x;\alpha_tx_0^{(n)},\sigma_t^2I)$), at $t=0.2$. Each covariance entry has a standard error
# $\big(\sum_n w_n^2(d_id_j-\hat C_{ij})^2\big)^{1/2}$; the tolerance is 4 standard errors on all 24 entries.

# %%
t = 0.2
a, s = float(vp_tw.alpha(t)), float(vp_tw.sigma(t))
xt_q = a * x_q
pool8, _ = eight.sample(400_000, torch.Generator().manual_seed(31))
w_pool = torch.softmax(-((xt_q[:, None, :] - a * pool8[None]) ** 2).sum(-1) / (2 * s ** 2), dim=1)    # (Q, n)
dev = pool8[None] - (w_pool @ pool8)[:, None, :]
outer = dev[..., :, None] * dev[..., None, :]                                                          # (Q, n, 2, 2)
cov_mc = torch.einsum("qn,qnij->qij", w_pool, outer)
se_cov = torch.einsum("qn,qnij->qij", w_pool ** 2, (outer - cov_mc[:, None]) ** 2).sqrt()
cov_tw = score_matching.tweedie_covariance(lambda z: oracle_tw.score(z, t), xt_q, a, s)
z_cov = float(((cov_mc - cov_tw).abs() / se_cov).max())
print(f"t = {t}: effective sample sizes {(1 / (w_pool ** 2).sum(1)).int().tolist()}; "
      f"max |Monte Carlo - Tweedie| = {z_cov:.2f} standard errors")
assert z_cov < 4
del pool8, dev, outer

# %% [markdown]
# Where is the posterior uncertain? At a mode's centre the noisy point says which mode it came from and the
# covariance is small; half-way between two modes it cannot tell, and the covariance stretches along the
# chord joining them (the eight-fold pattern of the trace below, and the largest eigenvector there points
# along the circle). As $t$ grows all of it grows towards the data covariance.

# %%
theta = torch.linspace(0, math.pi / 2, 121, dtype=torch.float64)
circle = 2.0 * torch.stack([theta.cos(), theta.sin()], 1)
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
for t in (0.05, 0.2, 0.5):
    a, s = float(vp_tw.alpha(t)), float(vp_tw.sigma(t))
    cov_line = score_matching.tweedie_covariance(lambda z: oracle_tw.score(z, t), a * circle, a, s)
    ax[0].semilogy(theta, cov_line.diagonal(dim1=1, dim2=2).sum(1), label=f"t={t}: Tweedie (Hessian)")
    ax[0].plot(theta[::8], score_matching.mixture_posterior(eight, a * circle[::8], a, s)[1].diagonal(dim1=1, dim2=2).sum(1),
               "k.", ms=4)
ax[0].set_xlabel(r"angle $\theta$ of $x=\alpha_t\,2(\cos\theta,\sin\theta)$ (modes at 0, $\pi/4$, $\pi/2$)")
ax[0].set_title(r"tr Cov$[x_0\mid x_t]$: Tweedie (lines), exact (dots)"); ax[0].legend(fontsize=8)
t = 0.05
a, s = float(vp_tw.alpha(t)), float(vp_tw.sigma(t))
pts = torch.cat([circle[::15] * r for r in (0.7, 1.0, 1.3)])
cov_pts = score_matching.tweedie_covariance(lambda z: oracle_tw.score(z, t), a * pts, a, s)
plotting.plot_density(lambda p: oracle_tw.log_prob(p, t), ax=ax[1], lim=3, cmap="Greys")
evals, evecs = torch.linalg.eigh(cov_pts)
for p_, ev, V in zip(a * pts, evals, evecs):
    ax[1].add_patch(matplotlib.patches.Ellipse(p_.tolist(), 2 * float(ev[1].sqrt()), 2 * float(ev[0].sqrt()),
                                               angle=math.degrees(math.atan2(float(V[1, 1]), float(V[0, 1]))),
                                               fill=False, color="C3"))
ax[1].set_title(f"posterior std ellipses at t={t} (1 sd)")
fig.tight_layout()
mid, centre = score_matching.tweedie_covariance(lambda z: oracle_tw.score(z, t), a * circle[[30, 0]], a, s)   # pi/8, 0
print(f"t={t}: tr Cov at a mode centre {float(centre.trace()):.4f}, half-way between two modes {float(mid.trace()):.4f}")
assert float(mid.trace()) > 5 * float(centre.trace())


# %% [markdown]
# ### Three objectives, one answer
#
# We now *train* a small network on samples of $p_\sigma$ (the two-mode mixture blurred by
# $\sigma = 0.5$) with each objective. Implicit and sliced SM see samples $\tilde x \sim p_\sigma$ directly;
# DSM sees clean $x$ and adds the noise itself. All three should land on the same field
# $\nabla\log p_\sigma$, which the oracle gives exactly.

# %%
def small_net():
    return torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                               torch.nn.SiLU(), torch.nn.Linear(64, 2))

noisy = mix.marginal(0.0, ve_demo)            # p_sigma as a GaussianMixture
objectives = {
    "implicit SM": lambda net, x, g: score_matching.implicit_score_matching(net, noisy.sample(len(x), g)[0].float()),
    "sliced SM":   lambda net, x, g: score_matching.sliced_score_matching(net, noisy.sample(len(x), g)[0].float(), generator=g),
    "denoising SM": lambda net, x, g: score_matching.denoising_score_matching(net, x, sigma_tw, generator=g),
}
x_eval, _ = noisy.sample(4000, torch.Generator().manual_seed(7))
true_eval = noisy.score(x_eval)
sm_models, sm_errors = {}, {}
for name, objective in objectives.items():
    torch.manual_seed(0)
    net, hist = training.train(small_net(), lambda net, x, y, g: objective(net, x, g),
                               lambda m, g: mix.sample(m, g)[0].float(), S["sm_steps"], lr=3e-3,
                               ema_decay=0.0, seed=0, desc=name)
    with torch.no_grad():
        err = ((net(x_eval.float()).double() - true_eval) ** 2).sum(1).mean() / (true_eval ** 2).sum(1).mean()
    sm_models[name], sm_errors[name] = net, float(err)
    print(f"{name:13s}: relative squared error of the learned score under p_sigma = {err:.4f}")
assert max(sm_errors.values()) < 0.05, sm_errors

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
plotting.plot_density(lambda p: noisy.log_prob(p), ax=axes[0], lim=3.5, cmap="Greys")
plotting.plot_vector_field(lambda p: noisy.score(p), ax=axes[0], lim=3.5, n=15, title=r"exact $\nabla\log p_\sigma$ over $p_\sigma$")
for ax, (name, net) in zip(axes[1:], sm_models.items()):
    plotting.plot_density(lambda p: noisy.log_prob(p), ax=ax, lim=3.5, cmap="Greys")
    plotting.plot_vector_field(lambda p, net=net: net(p.float()).double(), ax=ax, lim=3.5, n=15, color="C3",
                               title=f"{name} (rel. err {sm_errors[name]:.3f})")
fig.tight_layout()

# %% [markdown]
# ## 3. Why a single noise level fails
#
# Two problems appear as soon as we sample with a score (Song & Ermon 2019; Ch. 3):
#
# 1. **Low-density regions.** A score learned from samples is accurate only where samples are; between
#    well-separated modes it is a guess (Sec. 4 measures this on a trained model).
# 2. **Mode weights.** Even with the *exact* score, Langevin dynamics moves probability between
#    separated modes only by crossing the valley between them, which takes exponentially long. The
#    score near a mode barely depends on the mode's weight (it points to the nearest mean), so
#    each chain ends in whichever basin it started in: the weights come from the initialisation.
#
# The data are the two-mode mixture, weights $0.8$ (left, at $x_1=-2$) and $0.2$ (right). We estimate the
# left weight as the fraction of samples with $x_1 < 0$; its binomial standard error at $n$ samples is
# $\sqrt{0.8 \cdot 0.2 / n}$. For speed we write the exact score of an isotropic mixture blurred by
# noise $\sigma$ in closed form (a softmax-weighted pull towards the means, with variance
# $s^2 + \sigma^2$) and check it against the oracle.

# %%
ve = schedules.VE(sigma_min=0.05, sigma_max=5.0)       # the NCSN noise ladder lives on this clock
std_mode = 0.3

def two_modes_score(x, t):
    """Exact grad log p_t for the two-mode mixture under VE: x (B, 2), t float or (B,)."""
    var = std_mode ** 2 + schedules.VE(0.05, 5.0).sigma(torch.as_tensor(t, dtype=torch.float64)) ** 2
    var = var[:, None].to(x.dtype) if var.ndim else var.to(x.dtype)
    d = x[:, None, :] - mix.means.to(x.dtype)                                  # (B, K, 2)
    r = torch.softmax(mix.weights.log().to(x.dtype) - 0.5 * (d ** 2).sum(-1) / var, dim=1)
    return -(r[..., None] * d).sum(1) / var

exact = targets.Denoiser(two_modes_score, "score", ve)     # an exact "score network" on the VE clock
oracle = mix.denoiser(ve)
xq = 4 * torch.randn(1000, 2, dtype=torch.float64, generator=gen)
for t in (0.0, 0.3, 0.7, 1.0):
    torch.testing.assert_close(exact.score(xq, t), oracle.score(xq, t))
print("closed-form two-mode score == oracle score at t = 0, 0.3, 0.7, 1")

n, se_w = S["n"], math.sqrt(0.8 * 0.2 / S["n"])
left_weight = lambda x: float((x[:, 0] < 0).double().mean())

# %% [markdown]
# **Plain Langevin with the exact data score**, started from a broad uniform distribution on $[-6, 6]^2$:

# %%
x_uniform = 12 * torch.rand(n, 2, dtype=torch.float64, generator=gen) - 6
x_plain = samplers.sample_langevin(lambda x: exact.score(x, 0.0), x_uniform, 0.01, S["plain_steps"], generator=gen)
w_plain, w_start = left_weight(x_plain), left_weight(x_uniform)
print(f"left weight: start {w_start:.3f}, after {S['plain_steps']} Langevin steps {w_plain:.3f}; "
      f"truth 0.8, binomial s.e. {se_w:.4f}")
assert abs(w_plain - 0.8) > 20 * se_w          # wrong by far more than sampling noise
assert abs(w_plain - w_start) < 5 * se_w       # ... because it kept the initial split
config.record(nb03_plain_langevin_left_weight=float(w_plain))


# %% [markdown]
# The chains did find the modes (each sample sits in one of them), but the split between modes is
# the uniform start's $\approx 0.5$, not $0.8$.
#
# ## 4. NCSN: many noise levels and annealed Langevin dynamics
#
# Song & Ermon (2019) perturb the data with a **ladder of noise levels**
# $\sigma_1 > \sigma_2 > \dots > \sigma_L$: at the top, $\sigma_1$ is comparable to the distance between
# modes, so $p_{\sigma_1}$ is nearly one broad Gaussian on which Langevin mixes in a few steps (and a
# learned score is accurate everywhere); at the bottom, $p_{\sigma_L} \approx p$. Consecutive levels differ
# little, so each hand-over needs only a short re-equilibration, and mass moves between the modes while
# the valley separating them is still shallow.
# **Annealed Langevin dynamics** (their Alg. 1) runs a few Langevin steps at each level, from the top
# down, with step $\eta_i = \eta\,\sigma_i^2/\sigma_L^2$, handing its samples to the next level. Here,
# as in `utils.samplers`, the levels are times $t_i$ of the VE schedule ($\sigma_t = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t$,
# geometric as in NCSN) and the last state is denoised once with Tweedie's formula.

# %%
def annealed_langevin(denoiser, x, grid, n_inner, step_size, generator):
    sigmas = denoiser.schedule.noise_level(grid)                       # sigma_i, top to bottom
    for t, sigma in zip(grid.tolist(), sigmas.tolist()):
        eta = step_size * (sigma / float(sigmas[-1])) ** 2             # eta_i proportional to sigma_i^2
        for _ in range(n_inner):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + eta * denoiser.score(x, t) + math.sqrt(2 * eta) * z
    t_last, sigma_last = float(grid[-1]), float(sigmas[-1])
    return x + sigma_last ** 2 * denoiser.score(x, t_last)              # Tweedie: E[x0 | x]

grid = torch.linspace(1.0, 0.0, 10, dtype=torch.float64)                 # 10 levels, 5 -> 0.05
step_size = 0.2 * ve.sigma_min ** 2                                     # eta_i = 0.2 sigma_i^2
x_prior = samplers.sample_prior(ve, (300, 2), generator=gen, dtype=torch.float64)
ours = annealed_langevin(exact, x_prior, grid, 5, step_size, torch.Generator().manual_seed(3))
ref = samplers.sample_annealed_langevin(exact, x_prior, grid, 5, step_size, generator=torch.Generator().manual_seed(3))
torch.testing.assert_close(ours, ref)
print("inline annealed Langevin == utils.samplers.sample_annealed_langevin;  sigmas:",
      [round(s, 3) for s in ve.sigma(grid).tolist()])

# %% [markdown]
# Now the same exact data, the same number of samples, annealed from $\sigma_1 = 5$ down to $\sigma_L = 0.05$.
#
# **Where the chains start.** Song & Ermon's Alg. 1 initialises annealed Langevin from *uniform* noise (on the
# image cube $[0,1]^D$). Starting from $\mathcal N(0,\sigma_{\max}^2I)$, as `samplers.sample_prior(ve, ...)` does here, is the
# prior of the variance-exploding SDE of Song et al. (2021) (Ch. 4), where $p_{\sigma_{\max}}\approx\mathcal N(0,\sigma_{\max}^2I)$.
# For annealed Langevin the choice matters little, since the first level's chains forget their start; the
# next cell runs the uniform start as well.

# %%
rec = samplers.Recorder()
x_ald = samplers.sample_annealed_langevin(exact, samplers.sample_prior(ve, (n, 2), generator=gen, dtype=torch.float64),
                                          grid, S["ald_inner"], step_size, generator=gen, callback=rec)
w_ald = left_weight(x_ald)
print(f"annealed Langevin ({len(grid)} levels x {S['ald_inner']} steps): left weight {w_ald:.4f}, "
      f"truth 0.8, |error| = {abs(w_ald - 0.8):.4f} = {abs(w_ald - 0.8) / se_w:.1f} s.e. (tolerance 5 s.e. = {5 * se_w:.4f})")
assert abs(w_ald - 0.8) < 5 * se_w
fc_ald = metrics.compare_to_floor(x_ald, lambda m, g: mix.sample(m, g)[0])
print("annealed Langevin, exact score:", fc_ald)
assert fc_ald.ratio < 1.5, fc_ald
fc_plain = metrics.compare_to_floor(x_plain, lambda m, g: mix.sample(m, g)[0])
print("plain Langevin, exact score:   ", fc_plain)
assert fc_plain.ratio > 2 * fc_ald.ratio
config.record(nb03_annealed_langevin_left_weight=float(w_ald), nb03_annealed_langevin_sw_ratio=float(fc_ald.ratio))

# NCSN's original start: uniform noise (here on [-6, 6]^2, the box of the plain-Langevin run) instead of N(0, sigma_max^2 I)
x_ald_u = samplers.sample_annealed_langevin(exact, 12 * torch.rand(n, 2, dtype=torch.float64, generator=gen) - 6,
                                            grid, S["ald_inner"], step_size, generator=gen)
w_ald_u = left_weight(x_ald_u)
print(f"annealed Langevin from uniform noise: left weight {w_ald_u:.4f} (from N(0, sigma_max^2 I): {w_ald:.4f})")
assert abs(w_ald_u - 0.8) < 5 * se_w

# %%
levels = ve.sigma(rec.ts).tolist()
weights_by_level = [left_weight(x) for x in rec.xs[1:]]
fig, axes = plt.subplots(1, 3, figsize=(14, 4))
plotting.plot_samples(x_plain[:3000], ax=axes[0], lim=4, s=1, title=f"plain Langevin: left weight {w_plain:.2f}")
plotting.plot_samples(x_ald[:3000], ax=axes[1], lim=4, s=1, title=f"annealed Langevin: left weight {w_ald:.3f}")
axes[2].semilogx(levels[1:], weights_by_level, "o-", label="annealed Langevin")
axes[2].axhline(0.8, color="k", ls="--", label="true weight 0.8")
axes[2].axhline(w_plain, color="C3", ls=":", label="plain Langevin")
axes[2].invert_xaxis(); axes[2].set_xlabel(r"noise level $\sigma_i$ (annealing runs left to right)")
axes[2].set_ylabel("fraction with $x_1<0$"); axes[2].legend()
fig.tight_layout()

# %% [markdown]
# The right panel shows why annealing works: at large $\sigma$ the fraction on the left is whatever
# $p_\sigma$ puts there (the broad Gaussians overlap), and as $\sigma$ shrinks it climbs to $0.8$ while
# the chains can still cross between modes; by the time the valley opens, the split is right.
#
# ### A learned NCSN
#
# NCSN trains **one** network $s_\theta(x, \sigma)$ for all levels with DSM weighted by
# $\lambda(\sigma) = \sigma^2$ (Song & Ermon 2019), so each level contributes on the same scale:
# $$\mathcal L = \mathbb E_{\sigma}\,\mathbb E_{x,\varepsilon}\,\sigma^2\,\big\|s_\theta(x + \sigma\varepsilon, \sigma) + \varepsilon/\sigma\big\|^2
#  = \mathbb E_{\sigma}\,\mathbb E_{x,\varepsilon}\,\big\|\varepsilon_\theta(x + \sigma\varepsilon, \sigma) - \varepsilon\big\|^2
#  \quad\text{with } s_\theta = -\varepsilon_\theta/\sigma .$$
# Dividing the network's output by $\sigma$, $s_\theta = -\varepsilon_\theta/\sigma$, is the scaling Song & Ermon (2020) recommend;
# with it the NCSN loss *is* the noise-prediction loss, which is `losses.DiffusionLoss(ve, "eps")`
# with $t$ uniform on $[0,1]$ (i.e. $\log\sigma$ uniform over the ladder's range). `targets.Denoiser`
# turns the $\varepsilon$-network into a score.

# %%
data_fn = lambda m, g: mix.sample(m, g)[0].float()
ncsn_loss = losses.DiffusionLoss(ve, "eps", t_range=(0.0, 1.0))
torch.manual_seed(0)
ncsn_net, ncsn_hist = training.train(nets.MLP(2, S["hidden"], S["depth"]), ncsn_loss, data_fn, S["train_steps"],
                                     lr=2e-3, ema_decay=0.99, seed=0, desc="NCSN (VE, DSM)")
ncsn = targets.Denoiser(ncsn_net, "eps", ve)

# %% [markdown]
# **Learned vs exact scores across noise levels.** At each level we compare $s_\theta$ with the exact
# $\nabla\log p_\sigma$ in two places: where the noisy data live ($\tilde x\sim p_\sigma$), and in the
# **low-density region**: the points of a grid over $[-4,4]^2$ where $p_\sigma$ is below its 1% quantile
# over data samples (the valley between the modes and the outskirts).

# %%
t_levels = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
box, _, _ = plotting.grid_points(4.0, 60)
rel_data, mse_data, mse_low, n_low = [], [], [], []
for t in t_levels.tolist():
    xt, _ = mix.sample(4000, torch.Generator().manual_seed(11), t=t, schedule=ve)
    low = box[oracle.log_prob(box, t) < torch.quantile(oracle.log_prob(xt, t), 0.01)]
    with torch.no_grad():
        err2 = lambda p: ((ncsn.score(p.float(), t).double() - oracle.score(p, t)) ** 2).sum(1)
        mse_data.append(float(err2(xt).mean()))
        rel_data.append(mse_data[-1] / float((oracle.score(xt, t) ** 2).sum(1).mean()))
        mse_low.append(float(err2(low).mean()) if len(low) else float("nan"))
    n_low.append(len(low))
sig_levels = ve.sigma(t_levels).tolist()
for s_, r_, a_, b_, k_ in zip(sig_levels, rel_data, mse_data, mse_low, n_low):
    print(f"sigma = {s_:6.3f}: on data  rel. error {r_:.4f}, MSE {a_:9.4f} | low-density region ({k_:4d} pts) MSE {b_:9.4f}")
assert max(rel_data) < 0.15, rel_data              # accurate where the data are, at every level
assert mse_low[0] > 10 * mse_data[0]               # at the smallest level, far worse where data are absent
config.record(nb03_ncsn_score_rel_error_max=float(max(rel_data)))

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].loglog(sig_levels, mse_data, "o-", label=r"at $\tilde x\sim p_\sigma$ (where data live)")
axes[0].loglog(sig_levels, mse_low, "s-", label="low-density region")
axes[0].set_xlabel(r"$\sigma$"); axes[0].set_ylabel(r"$\mathbb{E}\,\|s_\theta - \nabla\log p_\sigma\|^2$")
axes[0].legend(); axes[0].set_title("learned vs exact score across noise levels")
plotting.plot_density(lambda p: mix.log_prob(p), ax=axes[1], lim=4, cmap="Greys")
plotting.plot_vector_field(lambda p: ncsn.score(p.float(), 0.0).double(), ax=axes[1], lim=4, n=15, color="C3", normalize=True)
plotting.plot_vector_field(lambda p: oracle.score(p, 0.0), ax=axes[1], lim=4, n=15, color="C0", normalize=True,
                           title=r"directions at $\sigma_{\min}$: learned (red), exact (blue)")
fig.tight_layout()

# %% [markdown]
# Where the data are, the error is a few percent at every level. In the low-density region it is
# tens of times larger at small $\sigma$; as $\sigma$ grows the noisy data fill the square, the
# low-density region shrinks (it is empty from $\sigma\approx 2$ on) and the error there falls. Large
# noise levels are where the score is trustworthy everywhere, which is what annealing exploits.
#

# %% [markdown]
# Sampling the learned NCSN with annealed Langevin:

# %%
x_ncsn = samplers.sample_annealed_langevin(ncsn, samplers.sample_prior(ve, (n, 2), generator=gen), grid,
                                           S["ncsn_inner"], step_size, generator=gen)
fc_ncsn = metrics.compare_to_floor(x_ncsn, lambda m, g: mix.sample(m, g)[0])
w_ncsn = left_weight(x_ncsn)
nfe_ncsn = len(grid) * S["ncsn_inner"] + 1
print(f"NCSN, annealed Langevin ({nfe_ncsn} evaluations): {fc_ncsn}; left weight {w_ncsn:.3f}")
assert fc_ncsn.ratio < 2.5, fc_ncsn
assert abs(w_ncsn - 0.8) < abs(w_plain - 0.8) / 2
config.record(nb03_ncsn_sw_ratio=float(fc_ncsn.ratio))

# %% [markdown]
# ## 5. NCSN and DDPM side by side (Sec. 3.5)
#
# DDPM (Ho et al. 2020; Ch. 2) and NCSN were found independently, but they are the same recipe with two
# different forward kernels:
#
# | | NCSN (Song & Ermon 2019) | DDPM (Ho et al. 2020) |
# |---|---|---|
# | forward kernel | $x_\sigma = x_0 + \sigma\varepsilon$ (variance **exploding**) | $x_t = \alpha_t x_0 + \sigma_t\varepsilon$, $\alpha_t^2+\sigma_t^2=1$ (variance **preserving**) |
# | sampling starts from | uniform noise in the original (here $\mathcal N(0, \sigma_{\max}^2 I)$, the VE-SDE prior) | $\mathcal N(0, I)$ |
# | network | score $s_\theta(x,\sigma)$ | noise $\varepsilon_\theta(x, t)$ |
# | loss | $\sigma^2$-weighted DSM | $\|\varepsilon_\theta - \varepsilon\|^2$ ("$L_{\rm simple}$") |
# | link | $s_\theta = -\varepsilon_\theta/\sigma$ | $\nabla\log p_t = -\mathbb E[\varepsilon\mid x_t]/\sigma_t$ |
# | sampler | annealed Langevin (many steps per level) | ancestral: one step per level |
#
# The losses coincide per sample: with $s_\theta = -\varepsilon_\theta/\sigma_t$ and the DSM target
# $-\varepsilon/\sigma_t$, $\sigma_t^2\|s_\theta - (-\varepsilon/\sigma_t)\|^2 = \|\varepsilon_\theta - \varepsilon\|^2$
# for any forward kernel. Checked with `losses.regression_target` on a VP (DDPM) schedule:

# %%
vp = schedules.VPLinear()
x0_b, _ = mix.sample(512, gen)
t_b = torch.rand(512, dtype=torch.float64, generator=gen) * 0.99 + 0.01
xt_b, eps_b = losses.sample_xt(x0_b, t_b, vp, gen)
eps_hat = torch.randn(512, 2, dtype=torch.float64, generator=gen)         # any prediction
sig_b = vp.sigma(t_b)[:, None]
score_loss = sig_b ** 2 * (-eps_hat / sig_b - losses.regression_target(x0_b, eps_b, t_b, vp, "score")) ** 2
eps_loss = (eps_hat - losses.regression_target(x0_b, eps_b, t_b, vp, "eps")) ** 2
torch.testing.assert_close(score_loss, eps_loss)
print("sigma^2-weighted DSM == DDPM's epsilon loss, sample by sample")

# %% [markdown]
# So the real differences are the kernel and the sampler. We train the same network, for the same
# number of steps, as a DDPM (VP linear schedule, $\varepsilon$-loss) and sample it with the ancestral sampler.

# %%
torch.manual_seed(0)
ddpm_net, ddpm_hist = training.train(nets.MLP(2, S["hidden"], S["depth"]), losses.DiffusionLoss(vp, "eps"), data_fn,
                                     S["train_steps"], lr=2e-3, ema_decay=0.99, seed=0, desc="DDPM (VP, eps)")
ddpm = targets.Denoiser(ddpm_net, "eps", vp)
x_ddpm = samplers.sample_ancestral(ddpm, samplers.sample_prior(vp, (n, 2), generator=gen),
                                   schedules.uniform_grid(S["ddpm_steps"], 1.0, vp.t_min), generator=gen)
fc_ddpm = metrics.compare_to_floor(x_ddpm, lambda m, g: mix.sample(m, g)[0])
w_ddpm = left_weight(x_ddpm)
print(f"DDPM, ancestral ({S['ddpm_steps']} evaluations): {fc_ddpm}; left weight {w_ddpm:.3f}")
assert fc_ddpm.ratio < 1.6, fc_ddpm
assert abs(w_ddpm - 0.8) < 6 * se_w
config.record(nb03_ddpm_sw_ratio=float(fc_ddpm.ratio))

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
x_true, _ = mix.sample(3000, gen)
plotting.plot_samples(x_true, ax=axes[0], lim=4, s=1, title="data (left weight 0.8)")
plotting.plot_samples(x_ncsn[:3000], ax=axes[1], lim=4, s=1,
                      title=f"NCSN + annealed Langevin, {nfe_ncsn} NFE\nSW/floor {fc_ncsn.ratio:.2f}, left weight {w_ncsn:.3f}")
plotting.plot_samples(x_ddpm[:3000], ax=axes[2], lim=4, s=1,
                      title=f"DDPM + ancestral, {S['ddpm_steps']} NFE\nSW/floor {fc_ddpm.ratio:.2f}, left weight {w_ddpm:.3f}")
fig.tight_layout()


# %% [markdown]
# With this budget the ancestral sampler reaches the noise floor with fewer network evaluations than
# annealed Langevin: Langevin needs many inner steps at each level to re-equilibrate, the
# ancestral step jumps straight to the next level's posterior. The two samplers are different kinds of
# algorithm, and Ch. 4 keeps them apart: the ancestral DDPM step is a discretisation of the reverse-time
# SDE (of the variance-preserving SDE, §4.4), while annealed Langevin is not a discretisation of any
# time-dependent equation — at each *fixed* noise level it runs an MCMC chain whose stationary law is
# $p_\sigma$, and it returns in Ch. 4 as the **corrector** of predictor–corrector sampling, with a reverse-SDE
# step as the predictor. What Ch. 4 does unify is the forward side: NCSN's and DDPM's noising are the
# variance-exploding and variance-preserving SDEs.
#
# ## 6. Widget: Langevin with a step size and a noise level
#
# Plain Langevin (no annealing) on the exact score of the two-mode data blurred by noise $\sigma$,
# from the broad uniform start. Move $\sigma$ up: the chains mix between modes and the left weight
# approaches the *blurred* density's share; move it down: the weight freezes at the initial split.
# Move the step size up: the samples spread beyond $p_\sigma$ (the discretisation bias of unadjusted
# Langevin), until the chains blow up.

# %%
def draw_langevin(step_size=0.05, sigma=0.05, n_steps=200):
    t = math.log(sigma / ve.sigma_min) / math.log(ve.sigma_max / ve.sigma_min)   # sigma on the VE clock
    target = mix.marginal(t, ve)                                                   # p_sigma, exact
    g = torch.Generator().manual_seed(0)
    x = 12 * torch.rand(2000, 2, dtype=torch.float64, generator=g) - 6
    x = samplers.sample_langevin(lambda x: exact.score(x, t), x, step_size, int(n_steps), generator=g)
    var = std_mode ** 2 + sigma ** 2
    Phi = lambda u: 0.5 * (1 + math.erf(u / math.sqrt(2)))
    w_target = 0.8 * Phi(2 / math.sqrt(var)) + 0.2 * Phi(-2 / math.sqrt(var))    # p_sigma's mass at x1 < 0
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    plotting.plot_density(lambda p: target.log_prob(p), ax=axes[0], lim=6, cmap="Greys")
    plotting.plot_samples(x, ax=axes[0], lim=6, s=1, title=f"Langevin on $p_\\sigma$, $\\sigma$={sigma:.2f}, $\\eta$={step_size:.3f}")
    u = torch.linspace(-6, 6, 300, dtype=torch.float64)
    dens = (0.8 * torch.exp(-(u + 2) ** 2 / (2 * var)) + 0.2 * torch.exp(-(u - 2) ** 2 / (2 * var))) / math.sqrt(2 * math.pi * var)
    axes[1].hist(x[:, 0].clamp(-6, 6).numpy(), bins=80, range=(-6, 6), density=True, alpha=0.5, label="Langevin samples")
    axes[1].plot(u, dens, "k", label=r"exact $p_\sigma$ (first coordinate)")
    axes[1].set_title(f"left weight {left_weight(x):.3f} (target {w_target:.3f})"); axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig

widgets.explore(draw_langevin, {"step_size": (0.005, 0.5, 0.005, 0.05), "sigma": (0.05, 5.0, 0.05, 0.05),
                                "n_steps": (50, 1000, 50, 200)})

# %% [markdown]
# ## Exercises
#
# Each exercise has an answer cell (the student version leaves it empty) and a check cell after it:
# run the check to test your answer; a wrong one says what is off and gives a hint.
#
# **Exercise 1 (implicit SM on a Gaussian).** For $p = \mathcal N(0, \tau^2 I_2)$ with $\tau = 1.5$ and the one-parameter
# model $s_a(x) = -a x$, compute $J_{\rm ISM}(a)$ by hand and store its minimiser in `a_star` and its minimum value in
# `J_star` (numbers). Check numerically with `score_matching.implicit_score_matching` on 20,000 samples over a grid
# of $a$ in $[0.1, 1]$, and store the grid's argmin in `a_best`.

# %% tags=["solution"]
# J_ISM(a) = E[tr(-a I) + a^2 |x|^2 / 2] = -2a + a^2 tau^2 (D = 2), minimised at a = 1 / tau^2: the true score -x/tau^2.
tau = 1.5
a_star, J_star = 1 / tau ** 2, -1 / tau ** 2
xg = tau * torch.randn(20000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
a_grid = torch.linspace(0.1, 1.0, 91, dtype=torch.float64)
J = torch.tensor([score_matching.implicit_score_matching(lambda x, a=a: -a * x, xg).item() for a in a_grid])
a_best = float(a_grid[J.argmin()])
print(f"argmin over the grid: a = {a_best:.3f};  by hand 1/tau^2 = {a_star:.3f};  min J = {float(J.min()):.3f} vs {J_star:.3f}")

# %% tags=["check"]
# the minimiser of the Fisher divergence is the true score, -x / tau^2, whatever the normaliser
exercises.check_close("a_star", a_star, 1 / 1.5 ** 2, rtol=1e-9,
                      hint="E|x|^2 = D tau^2 with D = 2, and tr(grad s_a) = -a D: J(a) = -2a + a^2 tau^2")
exercises.check_close("J_star", J_star, -2 / 1.5 ** 2 + 0.5 * (1 / 1.5 ** 4) * 2 * 1.5 ** 2, rtol=1e-9,
                      hint="put a* back into J(a) = -2a + a^2 tau^2")
exercises.check_close("a_best", a_best, 1 / 1.5 ** 2, atol=0.03,
                      hint="a_grid[J.argmin()]: the value of a, not the index, where the Monte Carlo J_ISM is smallest")

# %% [markdown]
# **Exercise 2 (variance of sliced SM).** Compare the spread of single-projection sliced estimates of
# $J_{\rm ISM}$ for `net_b` on `x_data[:500]`, for Rademacher and Gaussian projections, with and without the
# variance-reduced form ($\tfrac12\|s\|^2$ in place of $\tfrac12(v^\top s)^2$): draw 200 estimates each (fresh
# projections every draw) and store the standard deviation of the 200 in the dict `spreads`, keyed
# `(projection, variance_reduced)`, e.g. `spreads[("rademacher", False)]`. Which projection is better, and why?
# Does the variance-reduced form always help?

# %% tags=["solution"]
spreads = {}
for proj in ("rademacher", "gaussian"):
    for vr in (False, True):
        draws = torch.tensor([score_matching.sliced_score_matching(net_b, x_data[:500], projection=proj, variance_reduced=vr,
                                                                   generator=g_v).item() for _ in range(200)])
        spreads[(proj, vr)] = float(draws.std())
        print(f"{proj:10s} variance_reduced={vr!s:5s}: std of the estimate {draws.std():.4f}")
# Rademacher v has v_i^2 = 1, so v^T J v = tr J + (off-diagonal terms): only those add noise, while a
# Gaussian v also weights the diagonal randomly, so Rademacher projections give the smaller spread.
# The variance-reduced form removes the noise of the (v^T s)^2 term, but that term can be correlated
# with v^T J v (they share v), so it is not guaranteed to help: here it can go either way.

# %% tags=["check"]
# The exact spread: per point the estimate is a quadratic form v^T M v, with M the symmetric part of
# grad_x s (+ s s^T / 2 without variance reduction). Var v^T M v = 2 ||M||_F^2 for Gaussian v and
# 2 sum_{i != j} M_ij^2 for Rademacher v; the 500 points' v are independent, so the variances add.
xc = x_data[:500].detach().double().requires_grad_(True)
sc = net_b(xc)
Jac = torch.stack([torch.autograd.grad(sc[:, i].sum(), xc, retain_graph=True)[0] for i in range(2)], 1).detach()  # (B, 2, 2)
sc = sc.detach()
for (proj, vr) in [("rademacher", False), ("rademacher", True), ("gaussian", False), ("gaussian", True)]:
    M = 0.5 * (Jac + Jac.transpose(1, 2)) + (0 if vr else 0.5 * sc[:, :, None] * sc[:, None, :])
    per_point = 2 * (M ** 2).sum((1, 2)) - (2 * (torch.diagonal(M, dim1=1, dim2=2) ** 2).sum(1) if proj == "rademacher" else 0)
    exercises.check_close(f"spreads[({proj!r}, {vr})]", spreads[(proj, vr)], per_point.sum().sqrt() / 500, rtol=0.25,
                          hint="the standard deviation over 200 draws of sliced_score_matching(net_b, x_data[:500], ...) "
                               "with one fresh projection per draw (not the standard error of their mean)")

# %% [markdown]
# **Exercise 3 (how many levels?).** Keep the total number of Langevin steps of Sec. 4 fixed at $10 \times 30$ but use
# only 2 levels ($\sigma = 5$ and $0.05$, i.e. VE times 1 and 0, 150 steps each) with the exact score `exact`, 4000
# chains from the VE prior and the step size `step_size`. Store the left weight (`left_weight`) of the 2-level run in
# `left_2` and of the 10-level run (`grid`, 30 steps each) in `left_10`. What do you get, and why?

# %% tags=["solution"]
total = 10 * 30
x2 = samplers.sample_annealed_langevin(exact, samplers.sample_prior(ve, (4000, 2), generator=gen, dtype=torch.float64),
                                       torch.tensor([1.0, 0.0], dtype=torch.float64), total // 2, step_size, generator=gen)
x10 = samplers.sample_annealed_langevin(exact, samplers.sample_prior(ve, (4000, 2), generator=gen, dtype=torch.float64),
                                        grid, total // 10, step_size, generator=gen)
left_2, left_10 = left_weight(x2), left_weight(x10)
print(f"2 levels: left weight {left_2:.3f};  10 levels: {left_10:.3f};  truth 0.8")
# With a jump from sigma = 5 straight to 0.05 the small-noise chains start from a broad cloud whose
# split between x1 < 0 and x1 > 0 is p_5's (about 0.6), and they cannot re-balance across the valley.

# %% tags=["check"]
exercises.check_close("left_10", left_10, float(mix.weights[0]), atol=0.06,
                      hint="annealed Langevin over the 10 levels of grid, 30 steps each, recovers the true weight")
# p_5 = the data convolved with N(0, 5^2 I): its mass at x1 < 0 is what the sigma = 0.05 chains inherit
s5 = math.sqrt(std_mode ** 2 + 5.0 ** 2)
Phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
exercises.check_close("left_2", left_2, 0.8 * Phi(2 / s5) + 0.2 * Phi(-2 / s5), atol=0.06,
                      hint="two levels, t = 1 (sigma 5) then t = 0 (sigma 0.05), 150 steps each: the chains keep "
                           "p_5's split between the modes")

# %% [markdown]
# ## Summary
#
# * An EBM's score $-\nabla E$ needs no normaliser, and Langevin dynamics samples from a score.
# * The score can be fitted from samples alone: implicit SM (integration by parts; same minimiser as
#   explicit SM, a model-independent constant apart), sliced SM (random projections, one backward
#   pass), and denoising SM (regress onto $-\varepsilon/\sigma$; minimiser $\nabla\log p_\sigma$, i.e.
#   Tweedie's formula $\mathbb E[x\mid\tilde x] = \tilde x + \sigma^2\nabla\log p_\sigma$). One derivative more gives the
#   posterior covariance, $\operatorname{Cov}[x_0\mid x_t]=(\sigma_t^2/\alpha_t^2)(I+\sigma_t^2\nabla^2\log p_t)$, checked against the exact
#   Gaussian-mixture posterior to rounding error and against Monte Carlo within 4 standard errors.
# * One noise level is not enough: Langevin with even the exact score keeps the initial split between
#   separated modes (measured: left weight $\approx 0.5$ instead of $0.8$), and learned scores are
#   poor in low-density regions.
# * NCSN trains one network across a geometric ladder of noise levels and samples by annealed Langevin,
#   which recovers the weights (from $\mathcal N(0,\sigma_{\max}^2I)$, the VE-SDE prior, or from NCSN's original uniform
#   start alike). DDPM is the same $\sigma^2$-weighted DSM on a variance-preserving kernel, with a cheaper
#   ancestral sampler; that sampler discretises the reverse SDE, while annealed Langevin is MCMC at fixed
#   noise levels (Ch. 4's corrector).
#
# **Where the monograph goes next.** Ch. 4 lets the number of noise levels go to infinity: NCSN and DDPM
# become the variance-exploding and variance-preserving forward SDEs, sampling becomes a reverse-time
# SDE or the probability-flow ODE, and annealed Langevin survives as the corrector of
# predictor–corrector sampling.
