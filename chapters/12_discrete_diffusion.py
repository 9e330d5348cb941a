# %% [markdown]
# # Chapter 12 — Diffusion on discrete states (the Epilogue)
#
# *Companion to Ch. 12 (§12.2) of* The Principles of Diffusion Models *(Lai, Song, Kim, Mitsufuji, Ermon, 2025).*
#
# The Epilogue's point (§12.1) is that every diffusion model transports a density along a fixed forward
# process and learns to run it backwards. §12.2 takes the idea to **discrete states** (text, tokens),
# where the forward process is a **continuous-time Markov chain** and the Fokker–Planck equation becomes
# the **master equation**. After this notebook you can
#
# * simulate a continuous-time Markov chain and solve its master equation $\dot p = pQ$ by the matrix
#   exponential;
# * run the **uniform** and the **masked (absorbing)** forward processes on token sequences, with
#   **exact** marginals on a state space small enough to enumerate;
# * compute the **exact denoiser** $p(x_0^i\mid x_t)$ by enumeration, see the **ratio ("concrete") score**
#   $p_t(y)/p_t(x)$ follow from it, and sample by **unmasking**;
# * train a small **masked denoiser** (MDLM-style cross-entropy) and measure it, and its samples,
#   against the exact ones.
#
# **Prerequisites:** Ch. 2 (the DDPM ELBO) and Ch. 4 (forward/reverse processes); App. B for the
# continuous analogue (Fokker–Planck). Time runs from data ($t=0$) to noise ($t=1$).

# %%
import sys, pathlib
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "utils").is_dir())
sys.path.insert(0, str(ROOT))
import math, torch, matplotlib.pyplot as plt
from utils import config, discrete, exercises, samplers, training, widgets
profile, device, gen = config.setup(seed=0, threads=1)
S = config.pick({
    "test": dict(n_ctmc=50_000, n_samples=20_000, step_counts=(1, 4, 16, 64), hidden=128, depth=3,
                 train_steps=1500, batch=512, lr=2e-3),
    "cpu": dict(n_ctmc=200_000, n_samples=40_000, step_counts=(1, 4, 16, 64, 128), hidden=128, depth=3,
                train_steps=3000, batch=512, lr=2e-3),
})
S

# %% [markdown]
# ## 1. A continuous-time Markov chain and its master equation (§12.2)
#
# A chain on $K$ states jumps from $i$ to $j$ at **rate** $Q_{ij} \ge 0$; the diagonal $Q_{ii} = -\sum_{j\ne i}Q_{ij}$
# makes rows sum to 0. The law $p_t$ (a row vector) obeys the **master equation**
#
# $$\frac{d}{dt}p_t = p_t\,Q, \qquad\text{so}\qquad p_t = p_0\,e^{tQ},$$
#
# the discrete-state Fokker–Planck equation. Three answers for a 4-state chain: the matrix exponential,
# RK4 on the master equation (`samplers.rk4_step`, the same step as the PF-ODE samplers), and Gillespie's
# exact simulation of many chains (hold an $\mathrm{Exp}(-Q_{ii})$ time, jump to $j$ with probability
# $Q_{ij}/(-Q_{ii})$).

# %%
Q = torch.tensor([[-1.0, 0.6, 0.3, 0.1],
                  [0.2, -0.7, 0.5, 0.0],
                  [0.0, 0.4, -1.2, 0.8],
                  [0.9, 0.0, 0.3, -1.2]], dtype=torch.float64)
p0 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
t_end = 0.9
p_expm = p0 @ discrete.transition_matrix(Q, t_end)

field = lambda p, t: (p @ Q, None)                       # the master equation's right-hand side
p_rk4 = p0.clone()
for i in range(40):
    p_rk4, _ = samplers.rk4_step(field, p_rk4, i * t_end / 40, (i + 1) * t_end / 40)
torch.testing.assert_close(p_rk4, p_expm, atol=1e-8, rtol=0)
print("RK4 on the master equation == p0 exp(tQ):", [round(v, 4) for v in p_expm.tolist()])

x_chain = discrete.simulate_ctmc(Q, torch.zeros(S["n_ctmc"], dtype=torch.long), t_end, gen)
p_sim = torch.bincount(x_chain, minlength=4).double() / S["n_ctmc"]
z = (p_sim - p_expm) / torch.sqrt(p_expm * (1 - p_expm) / S["n_ctmc"])
print(f"Gillespie, {S['n_ctmc']} chains:", [round(v, 4) for v in p_sim.tolist()], f" max |z| = {z.abs().max():.2f}")
assert z.abs().max() < 5
ts_plot = torch.linspace(0, 4, 81, dtype=torch.float64)
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.plot(ts_plot, torch.stack([p0 @ discrete.transition_matrix(Q, float(t)) for t in ts_plot]))
ax.plot([t_end] * 4, p_sim, "ko", label="Gillespie")
ax.set(xlabel="t", ylabel="$p_t(i)$", title="master equation, 4 states"); ax.legend();

# %% [markdown]
# ## 2. Two forward processes on tokens (§12.2)
#
# Diffusion on sequences noises each token independently with a chain on the token alphabet.
# Two choices dominate:
#
# * **uniform**: $Q = \tfrac1V\mathbf 1\mathbf 1^\top - I$ (re-draw the token uniformly), prior uniform;
# * **masked / absorbing**: each token jumps to an extra **mask** token $[M]$ at rate 1 and stays there; prior all-mask.
#
# With a time-dependent rate $\beta(t)$ the kernel from $s$ to $t$ is $e^{(B(t)-B(s))Q}$, $B = \int\beta$. We use the
# linear **keep probability** $\alpha_t = e^{-B(t)} = 1 - t$ (MDLM; Sahoo et al. 2024, Shi et al. 2024), so
# $\beta(t) = 1/(1-t)$ and in closed form a token is kept with probability $\alpha_t/\alpha_s$, else re-drawn
# (uniform) or masked. First the closed form written out, against the matrix exponential and `discrete.token_kernel`:

# %%
V = 3


def kernel_closed_form(process, s, t):
    keep = (1 - t) / (1 - s)
    if process == "uniform":
        return keep * torch.eye(V, dtype=torch.float64) + (1 - keep) / V
    K = torch.zeros(V + 1, V + 1, dtype=torch.float64)
    K[:V, :V], K[:V, V], K[V, V] = keep * torch.eye(V, dtype=torch.float64), 1 - keep, 1.0
    return K


generators = {"uniform": discrete.uniform_rate_matrix(V), "masked": discrete.absorbing_rate_matrix(V)}
for process, Qp in generators.items():
    for s, t in [(0.0, 0.3), (0.2, 0.7), (0.5, 0.95)]:
        B = math.log((1 - s) / (1 - t))                                  # B(t) - B(s)
        torch.testing.assert_close(kernel_closed_form(process, s, t), discrete.transition_matrix(Qp, B))
        torch.testing.assert_close(kernel_closed_form(process, s, t), discrete.token_kernel(process, V, s, t))
print("closed-form token kernels == exp((B(t) - B(s)) Q) == discrete.token_kernel, both processes")

# %% [markdown]
# **A toy data set with exact probabilities.** Sequences of length $L = 5$ over $V = 3$ tokens from a sticky Markov
# chain (a token tends to repeat), so $3^5 = 243$ sequences, each with a known probability. The tokens are strongly
# dependent: the product of the per-position marginals, which is what a model that draws every token
# independently can reach at best, is far from the data in total variation.

# %%
L = 5
X_all = discrete.all_sequences(L, V)                                      # (243, 5)
init = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
stay = torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]], dtype=torch.float64)
p_data = init[X_all[:, 0]]
for i in range(1, L):
    p_data = p_data * stay[X_all[:, i - 1], X_all[:, i]]
assert abs(float(p_data.sum()) - 1) < 1e-12


def product_of_marginals(p):
    out = torch.ones_like(p)
    for i in range(L):
        out = out * torch.bincount(X_all[:, i], weights=p, minlength=V)[X_all[:, i]]
    return out


tv_independent = discrete.total_variation(p_data, product_of_marginals(p_data))
tv_floor = discrete.tv_noise_floor(p_data, S["n_samples"], generator=gen)
print(f"TV(data, product of its marginals) = {tv_independent:.3f};  "
      f"noise floor TV(data, {S['n_samples']} data samples) = {tv_floor:.4f}")
draw_data = lambda n, g: X_all[torch.multinomial(p_data, n, replacement=True, generator=g)]
print("five data sequences:", draw_data(5, gen).tolist())

# %% [markdown]
# **Exact marginals.** Each token moves independently, so $p_t = p_0\,(K_t\otimes\cdots\otimes K_t)$, one axis at a time
# (`discrete.marginal`): over $3^5$ sequences for the uniform process and $4^5$ for the masked one. We check it against
# forward samples (TV within a small multiple of the sample-vs-truth floor) and watch $p_t$ reach the prior.

# %%
x0_fwd = draw_data(S["n_samples"], gen)
for process, K_all in [("uniform", V), ("masked", V + 1)]:
    t = 0.5
    p_t = discrete.marginal(p_data, discrete.token_kernel(process, V, 0.0, t)[:V], L)
    x_t = discrete.forward_sample(process, x0_fwd, V, t, gen)
    tv_fwd = discrete.total_variation(discrete.empirical_distribution(x_t, K_all), p_t)
    floor_t = discrete.tv_noise_floor(p_t, S["n_samples"], n_repeats=5, generator=gen)
    print(f"{process:8s} t = {t}: TV(forward samples, exact p_t) = {tv_fwd:.4f}  (floor {floor_t:.4f})")
    assert tv_fwd < 1.5 * floor_t

t_grid = torch.linspace(0, 1, 21).tolist()
prior = {"uniform": torch.full((V ** L,), 1 / V ** L, dtype=torch.float64),
         "masked": torch.nn.functional.one_hot(torch.tensor((V + 1) ** L - 1), (V + 1) ** L).double()}
tv_to_prior = {proc: [discrete.total_variation(discrete.marginal(p_data, discrete.token_kernel(proc, V, 0.0, t)[:V], L),
                                               prior[proc]) for t in t_grid] for proc in prior}
assert tv_to_prior["uniform"][-1] < 1e-12 and tv_to_prior["masked"][-1] < 1e-12
fig, ax = plt.subplots(figsize=(5, 3.4))
for proc, tv in tv_to_prior.items():
    ax.plot(t_grid, tv, "o-", ms=3, label=proc)
ax.set(xlabel="t", ylabel="TV($p_t$, prior)", title="forward processes reach their priors at t = 1"); ax.legend();

# %% [markdown]
# ## 3. The exact denoiser and the ratio score (§12.2)
#
# On a finite data set the posterior over clean sequences is a reweighting,
# $p(x_0\mid x_t) \propto p_{\rm data}(x_0)\prod_i K_t[x_0^i, x_t^i]$, and its per-position marginals
# $p(x_0^i = v\mid x_t)$ are the **exact denoiser** (`discrete.exact_denoiser`, enumeration over the 243 sequences).
# Two facts to check:
#
# * for the **masked** process the posterior **does not depend on t**: visible tokens are exact and the masks say
#   nothing about which token they hide (so masked denoisers need no time input; Ou et al. 2024);
# * the discrete analogue of the score is the **ratio** $p_t(y)/p_t(x)$ for $y$ a neighbour of $x$ (one token changed),
#   the "concrete score" SEDD learns (Lou, Meng, Ermon 2024); the reverse chain jumps $x\to y$ at rate
#   $R_t(y\to x)\,p_t(y)/p_t(x)$. It follows from the denoiser:
#   $\frac{p_t(y)}{p_t(x)} = \sum_v p(x_0^i = v\mid x_t=x)\,\frac{K_t[v, y^i]}{K_t[v, x^i]}$.

# %%
def exact_denoiser(process):
    return lambda x, t: discrete.exact_denoiser(x, X_all, p_data, discrete.token_kernel(process, V, 0.0, t)[:V])


den_masked, den_uniform = exact_denoiser("masked"), exact_denoiser("uniform")
x_t = discrete.forward_sample("masked", x0_fwd[:2000], V, 0.6, gen)
torch.testing.assert_close(den_masked(x_t, 0.3), den_masked(x_t, 0.9))
print("masked posterior: identical at t = 0.3 and t = 0.9")

# the ratio score, two ways, for the uniform process at t = 0.4 and every one-token change
t = 0.4
K_t = discrete.token_kernel("uniform", V, 0.0, t)
p_t = discrete.marginal(p_data, K_t, L)
x_t = discrete.forward_sample("uniform", x0_fwd[:500], V, t, gen)
post = den_uniform(x_t, t)                                              # (B, L, V)
for i in range(L):
    for u in range(V):
        y = x_t.clone(); y[:, i] = u
        ratio_marginal = p_t[discrete.sequence_index(y, V)] / p_t[discrete.sequence_index(x_t, V)]
        ratio_denoiser = (post[:, i, :] * K_t[:, u][None] / K_t[:, x_t[:, i]].T).sum(1)
        torch.testing.assert_close(ratio_denoiser, ratio_marginal)
print("ratio score p_t(y)/p_t(x) from the exact marginal == from the exact denoiser, all one-token changes")

# %% [markdown]
# ## 4. Sampling by unmasking, with the exact denoiser (§12.2)
#
# The reverse step $t\to s$ draws each token from $p(x_s^i\mid x_t) = \sum_v p(x_0^i = v\mid x_t)\,q(x_s^i\mid x_t^i, x_0^i = v)$
# (D3PM / MDLM's $x_0$-parameterization, `discrete.ancestral_step`). For the masked process it reads: a masked token
# stays masked with probability $s/t$, else it is **unmasked** to a token drawn from the denoiser; visible tokens never
# change. Tokens unmasked in the *same* step are drawn independently, so one step from $t=1$ gives the product of the
# marginals, and the sampler becomes exact only as steps shrink (one token per step). With the exact denoiser,
# the only error left is this one.

# %%
def unmask_step(probs, x_t, s, t, g):
    """One masked reverse step, written out: unmask each [M] with probability (t - s)/t."""
    unmask = (x_t == V) & (torch.rand(x_t.shape, generator=g) < (t - s) / t)
    draw = torch.multinomial(probs.reshape(-1, V), 1, generator=g).reshape(x_t.shape)
    return torch.where(unmask, draw, x_t)


# in distribution: one x_t with three masks, 40k draws of x_s from each step, against the exact law of x_s
t, s = 0.8, 0.5
x_one = draw_data(1, gen)
x_one[0, [0, 2, 3]] = V
probs = den_masked(x_one, t)[0]                                           # (L, V)
per_token = torch.stack([torch.cat([(t - s) / t * probs[i], torch.tensor([s / t], dtype=torch.float64)])
                         if x_one[0, i] == V else torch.nn.functional.one_hot(x_one[0, i], V + 1).double()
                         for i in range(L)])                              # (L, V + 1)
X_all_masked = discrete.all_sequences(L, V + 1)
law_s = torch.stack([per_token[i][X_all_masked[:, i]] for i in range(L)]).prod(0)
x_t = x_one.expand(40_000, L)
floor_s = discrete.tv_noise_floor(law_s, 40_000, generator=gen)
for name, x_s in [("inline", unmask_step(probs.expand(40_000, L, V), x_t, s, t, gen)),
                  ("discrete.ancestral_step", discrete.ancestral_step(probs.expand(40_000, L, V), x_t, "masked", V, s, t, gen))]:
    tv_s = discrete.total_variation(discrete.empirical_distribution(x_s, V + 1), law_s)
    print(f"{name:24s} step: TV to the exact law of x_s {tv_s:.4f} (floor {floor_s:.4f})")
    assert tv_s < 2 * floor_s

tv_exact = {proc: {} for proc in ("masked", "uniform")}
for proc, den in [("masked", den_masked), ("uniform", den_uniform)]:
    for n_steps in S["step_counts"]:
        xs = discrete.sample(den, S["n_samples"], L, proc, V, n_steps, gen)
        tv_exact[proc][n_steps] = discrete.total_variation(discrete.empirical_distribution(xs, V), p_data)
    print(f"exact {proc:8s} denoiser, TV to data by steps:",
          ", ".join(f"{n}: {v:.3f}" for n, v in tv_exact[proc].items()), f"(floor {tv_floor:.3f})")
    steps = S["step_counts"]
    assert abs(tv_exact[proc][1] - tv_independent) < 3 * tv_floor     # one step = independent tokens
    assert all(tv_exact[proc][b] < tv_exact[proc][a] or tv_exact[proc][a] < 1.5 * tv_floor   # falls until the floor
               for a, b in zip(steps[:-1], steps[1:]))
    assert tv_exact[proc][steps[-1]] < 1.5 * tv_floor

# %% [markdown]
# ## 5. A learned masked denoiser beside the exact one
#
# A small MLP reads the one-hot sequence (3 tokens + mask) and outputs clean-token logits at every position
# (`discrete.MaskedDenoiserMLP`, no time input). The loss is the cross-entropy of the clean tokens at the masked
# positions (`discrete.masked_denoiser_loss`; MDLM's ELBO weights it by $1/t$, which changes the weighting, not the
# minimizer: the exact denoiser). Trained with `utils.training.train`, then measured against the exact denoiser and
# through its samples.

# %%
def masked_loss(net, x0, y, g):
    t = torch.rand(len(x0), 1, generator=g)                              # one t per sequence
    x_t = torch.where(torch.rand(x0.shape, generator=g) < 1 - t, x0, torch.full_like(x0, V))
    return discrete.masked_denoiser_loss(net(x_t), x0, x_t, V)


net = discrete.MaskedDenoiserMLP(L, V, S["hidden"], S["depth"])
learned, history = training.train(net, masked_loss, draw_data, steps=S["train_steps"], batch_size=S["batch"],
                                  lr=S["lr"], desc="masked denoiser")
learned.eval()
den_learned = lambda x, t: torch.softmax(learned(x), -1).double()

with torch.no_grad():
    x_t = discrete.forward_sample("masked", draw_data(20_000, gen), V, 0.6, gen)
    masked_pos = x_t == V
    tv_tokens = 0.5 * (den_learned(x_t, 0.6) - den_masked(x_t, 0.6)).abs().sum(-1)[masked_pos]
    n_last = S["step_counts"][-1]
    xs_learned = {n: discrete.sample(den_learned, S["n_samples"], L, "masked", V, n, gen) for n in (1, n_last)}
    tv_learned = {n: discrete.total_variation(discrete.empirical_distribution(x, V), p_data) for n, x in xs_learned.items()}
print(f"learned vs exact posterior at masked tokens (t = 0.6): mean TV {tv_tokens.mean():.3f}")
print(f"learned denoiser samples, TV to data: 1 step {tv_learned[1]:.3f}, {n_last} steps {tv_learned[n_last]:.3f} "
      f"(exact denoiser {tv_exact['masked'][n_last]:.3f}, floor {tv_floor:.3f}, independent tokens {tv_independent:.3f})")
assert tv_tokens.mean() < 0.1
assert tv_learned[n_last] < 3 * tv_floor and tv_learned[n_last] < 0.2 * tv_independent
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].plot(history.losses, lw=0.8)
axes[0].set(xlabel="step", ylabel="cross-entropy at masks", title="training")
order = torch.argsort(p_data, descending=True)[:40]
axes[1].bar(range(40), p_data[order], color="lightgray", label="data (exact)")
axes[1].plot(range(40), discrete.empirical_distribution(xs_learned[n_last], V)[order], "o", ms=3, label=f"learned, {n_last} steps")
axes[1].set(xlabel="the 40 likeliest sequences", ylabel="probability", title="samples by unmasking"); axes[1].legend()
fig.tight_layout()
config.record(ch12_tv_independent=tv_independent, ch12_tv_floor=tv_floor,
              ch12_tv_exact_masked=tv_exact["masked"][n_last], ch12_tv_exact_uniform=tv_exact["uniform"][n_last],
              ch12_tv_learned_masked=tv_learned[n_last], ch12_learned_token_tv=float(tv_tokens.mean()))

# %% [markdown]
# Turn the number of unmasking steps and the denoiser: with few steps, tokens unmasked together are drawn
# independently and the sticky structure is lost; with many, both denoisers recover the data.

# %%
def draw_unmasking(n_steps=4, denoiser="exact"):
    den = den_masked if denoiser == "exact" else den_learned
    with torch.no_grad():
        xs = discrete.sample(den, 5000, L, "masked", V, int(n_steps), torch.Generator().manual_seed(3))
    emp = discrete.empirical_distribution(xs, V)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(range(40), p_data[order], color="lightgray", label="data")
    ax.plot(range(40), emp[order], "o", ms=3, label=f"{denoiser}, {int(n_steps)} steps")
    ax.set(title=f"TV to data {discrete.total_variation(emp, p_data):.3f}", xlabel="the 40 likeliest sequences"); ax.legend()
    return fig


widgets.explore(draw_unmasking, {"n_steps": (1, 64, 1, 4), "denoiser": ["exact", "learned"]})

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (how many masks).** Under the masked forward process at time $t$, the number of masks in a sequence
# is Binomial$(L, t)$. Check it on forward samples at $t = 0.35$.

# %% tags=["solution"]
t = 0.35
n_masks = (discrete.forward_sample("masked", x0_fwd, V, t, gen) == V).sum(1)
expected = torch.tensor([math.comb(L, k) * t ** k * (1 - t) ** (L - k) for k in range(L + 1)], dtype=torch.float64)
observed = torch.bincount(n_masks, minlength=L + 1).double() / len(n_masks)
print("P(#masks = k):", [round(v, 3) for v in observed.tolist()], " Binomial:", [round(v, 3) for v in expected.tolist()])

# %% tags=["check"]
binomial = torch.tensor([math.comb(L, k) * 0.35 ** k * 0.65 ** (L - k) for k in range(L + 1)], dtype=torch.float64)
exercises.check_close("observed", observed, binomial, rtol=0, atol=5 * math.sqrt(0.25 / len(x0_fwd)),
                      hint="the frequencies of k = 0..L masks among forward samples at t = 0.35")

# %% [markdown]
# **Exercise 2 (one step is independent tokens).** Show that one unmasking step from $t = 1$ to $0$ draws each token from
# $p(x_0^i\mid \text{all masks})$, the data's $i$-th marginal, so the sampler's law is exactly the product of marginals.
# Check it against `product_of_marginals(p_data)` in TV.

# %% tags=["solution"]
all_masks = torch.full((1, L), V)
marg = den_masked(all_masks, 1.0)[0]                                     # (L, V): the data's marginals
law_one_step = torch.ones(V ** L, dtype=torch.float64)
for i in range(L):
    law_one_step = law_one_step * marg[i][X_all[:, i]]
print(f"TV(one-step law, product of marginals) = {discrete.total_variation(law_one_step, product_of_marginals(p_data)):.1e}")

# %% tags=["check"]
exercises.check_close("law_one_step", law_one_step, product_of_marginals(p_data), rtol=1e-9, atol=1e-12,
                      hint="from all masks, every token is drawn from p(x_0^i | all masks), the i-th data marginal")

# %% [markdown]
# **Exercise 3 (the reverse rate).** In continuous time the masked reverse chain unmasks a token at rate
# $-\alpha_t'/(1-\alpha_t) = 1/t$. Check that `discrete.ancestral_step` from $t = 0.5$ to $s = 0.49$ unmasks a fraction
# $\approx (t-s)/t = 0.02$ of the masks (the rate times the step).

# %% tags=["solution"]
x_t = torch.full((50_000, L), V)
x_s = discrete.ancestral_step(den_masked(x_t[:1], 0.5).expand(50_000, L, V), x_t, "masked", V, 0.49, 0.5, gen)
frac = float((x_s != V).double().mean())
se = math.sqrt(0.02 * 0.98 / x_t.numel())
print(f"unmasked fraction {frac:.4f}  (rate x step = {0.01 / 0.5:.4f})")

# %% tags=["check"]
exercises.check_close("frac", frac, 0.02, rtol=0, atol=5 * math.sqrt(0.02 * 0.98 / (50_000 * L)),
                      hint="(t - s)/t = 0.01/0.5 of the masks are unmasked in the step")

# %% [markdown]
# ## Summary
#
# * On discrete states the forward process is a continuous-time Markov chain and the density moves by the master
#   equation $\dot p = pQ$, solved by $e^{tQ}$ (checked against RK4 and Gillespie's exact simulation).
# * The uniform and masked processes noise tokens independently; their marginals on sequences are exact
#   tensor products, and both reach their priors at $t = 1$.
# * The exact denoiser (enumeration) is time-independent for the masked process, and gives the ratio score
#   $p_t(y)/p_t(x)$ that SEDD learns.
# * Sampling by unmasking is exact only as steps shrink: one step yields independent tokens (TV to data as large as the
#   product of marginals), many steps reach the sample-vs-truth floor. A learned MLP denoiser trained with the masked
#   cross-entropy comes within a small factor of that floor.
#
# **Where the monograph goes next.** §12.3 closes the book: one principle — transport a density along a fixed
# forward process and learn to reverse it — across continuous and discrete states.
