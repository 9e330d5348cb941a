"""Diffusion on discrete states (Ch. 12, §12.2): continuous-time Markov chains, the uniform and the
masked (absorbing) forward processes on token sequences, their exact marginals and denoisers on a
small enumerable state space, and sampling by ancestral (factorized) reverse steps.

Conventions. A rate matrix ``Q`` is (K, K) with Q[i, j] >= 0 the rate of a jump i -> j (i != j) and
rows summing to 0; distributions are row vectors and the master equation reads dp/dt = p Q, so
p_t = p_0 exp(t Q). Tokens take values 0..V-1; the masked process adds the mask token ``V``
(K = V + 1). Time runs from data (t = 0) to noise (t = 1), the keep probability is
alpha_t = 1 - t (the linear schedule of MDLM, Sahoo et al. 2024; Shi et al. 2024), so the per-token
jump rate is beta(t) = 1 / (1 - t). A sequence is a LongTensor (B, L).

Introduced by chapters/12_discrete_diffusion.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_choice, check_int


def uniform_rate_matrix(V: int) -> torch.Tensor:
    """§12.2, the uniform generator Q = (1/V) 1 1^T - I on V tokens: every token jumps at rate
    (V - 1)/V to each of the others equally, and exp(B Q) = e^{-B} I + (1 - e^{-B}) 1 1^T / V. (V, V)."""
    check_int("V", V, 2)
    return torch.full((V, V), 1.0 / V, dtype=torch.float64) - torch.eye(V, dtype=torch.float64)


def absorbing_rate_matrix(V: int) -> torch.Tensor:
    """§12.2, the masked (absorbing) generator on V tokens plus the mask V: each token jumps to the
    mask at rate 1, the mask never leaves; exp(B Q) keeps a token with probability e^{-B}. (V + 1, V + 1)."""
    check_int("V", V, 2)
    Q = torch.zeros(V + 1, V + 1, dtype=torch.float64)
    Q[:V, V] = 1.0
    Q[torch.arange(V), torch.arange(V)] = -1.0
    return Q


def check_rate_matrix(Q: torch.Tensor) -> None:
    """ValueError unless Q is a square rate matrix: off-diagonal entries >= 0, rows summing to 0."""
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"Q has shape {tuple(Q.shape)}; expected a square (K, K) rate matrix")
    off = Q - torch.diag(torch.diagonal(Q))
    if (off < 0).any() or Q.sum(1).abs().max() > 1e-9 * max(1.0, float(Q.abs().max())):
        raise ValueError("Q is not a rate matrix; expected off-diagonal entries >= 0 and rows summing to 0")


def transition_matrix(Q: torch.Tensor, t: float) -> torch.Tensor:
    """§12.2, the solution operator of the master equation dp/dt = p Q: P_t = exp(t Q), (K, K);
    row i is the law at time t of the chain started at i."""
    check_rate_matrix(Q)
    if t < 0:
        raise ValueError(f"t={t!r} is not valid; expected t >= 0")
    return torch.linalg.matrix_exp(t * Q)


def simulate_ctmc(Q: torch.Tensor, x0: torch.Tensor, t: float, generator=None) -> torch.Tensor:
    """§12.2, exact simulation of a time-homogeneous chain (Gillespie): wait an Exp(-Q[x, x]) time,
    jump to j with probability Q[x, j] / -Q[x, x]; repeat until time t. x0: (M,) long -> x_t: (M,)."""
    check_rate_matrix(Q)
    x = x0.clone()
    clock = torch.zeros(len(x), dtype=torch.float64)
    exit_rate = -torch.diagonal(Q)
    jump = (Q - torch.diag(torch.diagonal(Q))).clamp_min(0)
    active = exit_rate[x] > 0
    while active.any():
        idx = active.nonzero().squeeze(1)
        rate = exit_rate[x[idx]]
        u = torch.rand(len(idx), generator=generator, dtype=torch.float64)
        clock[idx] = clock[idx] - torch.log1p(-u) / rate               # Exp(rate) holding time
        jumps = idx[clock[idx] <= t]
        if len(jumps):
            x[jumps] = torch.multinomial(jump[x[jumps]], 1, generator=generator).squeeze(1)
        active = torch.zeros_like(active)
        active[jumps] = exit_rate[x[jumps]] > 0
    return x


def alpha(t: float) -> float:
    """The keep probability alpha_t = 1 - t of the linear schedule (t in [0, 1])."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t={t!r} is not valid; expected 0 <= t <= 1")
    return 1.0 - t


def token_kernel(process: str, V: int, s: float, t: float) -> torch.Tensor:
    """§12.2, the forward transition of one token from time s to time t >= s,
    exp((B(t) - B(s)) Q) with B(t) = -log alpha_t, in closed form: keep with probability
    alpha_t / alpha_s, else re-draw uniformly (``uniform``, (V, V)) or mask (``masked``, (V + 1, V + 1))."""
    check_choice("process", process, ("uniform", "masked"))
    check_int("V", V, 2)
    if not 0.0 <= s <= t <= 1.0:
        raise ValueError(f"s={s!r}, t={t!r} are not valid; expected 0 <= s <= t <= 1")
    keep = alpha(t) / alpha(s) if alpha(s) > 0 else 1.0
    if process == "uniform":
        return keep * torch.eye(V, dtype=torch.float64) + (1 - keep) / V
    K = torch.zeros(V + 1, V + 1, dtype=torch.float64)
    K[:V, :V] = keep * torch.eye(V, dtype=torch.float64)
    K[:V, V] = 1 - keep
    K[V, V] = 1.0
    return K


def forward_sample(process: str, x0: torch.Tensor, V: int, t: float, generator=None) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) token by token: keep with probability alpha_t, else a uniform token
    (``uniform``) or the mask V (``masked``). x0: (B, L) long -> (B, L) long."""
    check_choice("process", process, ("uniform", "masked"))
    keep = torch.rand(x0.shape, generator=generator) < alpha(t)
    if process == "uniform":
        noise = torch.randint(0, V, x0.shape, generator=generator)
    else:
        noise = torch.full_like(x0, V)
    return torch.where(keep, x0, noise)


def all_sequences(L: int, V: int) -> torch.Tensor:
    """Every sequence of length L over V tokens, (V^L, L), in the order of ``sequence_index``."""
    check_int("L", L)
    check_int("V", V, 2)
    n = torch.arange(V ** L)
    return torch.stack([(n // V ** i) % V for i in range(L)], 1)


def sequence_index(x: torch.Tensor, V: int) -> torch.Tensor:
    """The index of each sequence x: (B, L) among ``all_sequences(L, V)``: sum_i x_i V^i. (B,)."""
    return (x * V ** torch.arange(x.shape[1])).sum(1)


def empirical_distribution(x: torch.Tensor, V: int) -> torch.Tensor:
    """The histogram of sequences x: (B, L) over all V^L sequences, normalized, (V^L,)."""
    counts = torch.bincount(sequence_index(x, V), minlength=V ** x.shape[1]).double()
    return counts / counts.sum()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """TV(p, q) = (1/2) sum |p - q| for two distributions on the same finite set."""
    if p.shape != q.shape:
        raise ValueError(f"p has shape {tuple(p.shape)} and q {tuple(q.shape)}; expected the same")
    return 0.5 * float((p - q).abs().sum())


def marginal(p0: torch.Tensor, kernel: torch.Tensor, L: int) -> torch.Tensor:
    """§12.2, the exact law of x_t when each of the L tokens moves independently by ``kernel``
    (V, K): p_t = p_0 (kernel ⊗ ... ⊗ kernel), computed one axis at a time.
    p0: (V^L,) in the order of ``all_sequences``; returns (K^L,) in the same order over K tokens."""
    V, K = kernel.shape
    if p0.shape != (V ** L,):
        raise ValueError(f"p0 has shape {tuple(p0.shape)}; expected ({V ** L},) = V^L")
    p = p0.reshape((V,) * L)              # axis L - 1 - i is token i (index sum x_i V^i)
    for axis in range(L):
        p = torch.tensordot(p, kernel, dims=([axis], [0])).movedim(-1, axis)
    return p.reshape(-1)


def exact_denoiser(x_t: torch.Tensor, support: torch.Tensor, p_support: torch.Tensor,
                   kernel_0t: torch.Tensor) -> torch.Tensor:
    """§12.2, the exact per-token posterior p(x_0^i = v | x_t) for data on a finite ``support``
    (N, L) with probabilities ``p_support`` (N,), by enumeration: w(x_0) ∝ p(x_0) prod_i K[x_0^i, x_t^i].

    x_t: (B, L) long over the K noisy tokens; kernel_0t: (V, K) the token kernel from 0 to t.
    Returns (B, L, V), each row a distribution over the V clean tokens.
    """
    V = kernel_0t.shape[0]
    x_u, inverse = torch.unique(x_t, dim=0, return_inverse=True)         # each distinct x_t once
    log_k = kernel_0t.log()                                               # -inf where impossible
    log_w = p_support.log()[None, :].expand(len(x_u), -1).clone()         # (U, N)
    for i in range(support.shape[1]):
        log_w = log_w + log_k[support[:, i]][:, x_u[:, i]].T              # (U, N)
    w = torch.softmax(log_w, 1)
    onehot = torch.nn.functional.one_hot(support, V).double()             # (N, L, V)
    return torch.einsum("un,nlv->ulv", w, onehot)[inverse]


def ancestral_step(x0_probs: torch.Tensor, x_t: torch.Tensor, process: str, V: int, s: float, t: float,
                   generator=None) -> torch.Tensor:
    """§12.2, one reverse step t -> s < t, token by token (D3PM/MDLM x_0-parameterization):

    p(x_s^i = u | x_t) = sum_v p(x_0^i = v | x_t) q(x_s^i = u | x_t^i, x_0^i = v),
    q(u | x_t, v) = K_{0s}[v, u] K_{st}[u, x_t] / K_{0t}[v, x_t].

    Tokens are drawn independently given x_t (exact as the steps shrink). x0_probs: (B, L, V);
    x_t: (B, L) long. Returns x_s: (B, L) long.
    """
    K0s, Kst, K0t = (token_kernel(process, V, a, b) for a, b in ((0.0, s), (s, t), (0.0, t)))
    K0s, K0t = K0s[:V], K0t[:V]                                           # rows: clean tokens
    denom = K0t[:, x_t].permute(1, 2, 0)                                  # (B, L, V)
    ratio = torch.where(denom > 0, x0_probs.double() / denom.clamp_min(1e-300), torch.zeros_like(denom))
    probs = torch.einsum("blv,vu->blu", ratio, K0s) * Kst[:, x_t].permute(1, 2, 0)
    probs = probs.clamp_min(0)
    probs = probs / probs.sum(-1, keepdim=True)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, dtype=probs.dtype)
    return (probs.cumsum(-1)[..., :-1] < u).sum(-1)                     # inverse-CDF draw per token


def sample(denoiser, n: int, L: int, process: str, V: int, n_steps: int, generator=None) -> torch.Tensor:
    """§12.2, ancestral sampling on the uniform grid t = 1 -> 0 in ``n_steps`` steps, from the prior
    (all masks, or uniform tokens). denoiser: x_t (B, L), t -> (B, L, V) clean-token probabilities.
    For ``masked`` this is sampling by unmasking. Returns (n, L) long."""
    check_int("n", n)
    check_int("n_steps", n_steps)
    if process == "masked":
        x = torch.full((n, L), V, dtype=torch.long)
    else:
        check_choice("process", process, ("uniform", "masked"))
        x = torch.randint(0, V, (n, L), generator=generator)
    grid = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64).tolist()
    for t, s in zip(grid[:-1], grid[1:]):
        x = ancestral_step(denoiser(x, t), x, process, V, s, t, generator)
    return x


def masked_denoiser_loss(logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """§12.2, the masked-diffusion training loss (MDLM): cross-entropy of the clean tokens at the
    masked positions. logits: (B, L, V), x0, x_t: (B, L). Its minimizer is the exact denoiser; the
    ELBO weights it by -alpha_t' / (1 - alpha_t) = 1 / t, which changes the weighting, not the minimizer."""
    masked = x_t == mask_id
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x0.reshape(-1), reduction="none")
    return (ce * masked.reshape(-1)).sum() / masked.sum().clamp_min(1)


def tv_noise_floor(p: torch.Tensor, n: int, n_repeats: int = 20, generator=None) -> float:
    """The mean TV between p and the empirical law of n samples from p (what a perfect sampler scores)."""
    check_int("n", n)
    tvs = []
    for _ in range(n_repeats):
        idx = torch.multinomial(p, n, replacement=True, generator=generator)
        emp = torch.bincount(idx, minlength=len(p)).double() / n
        tvs.append(total_variation(emp, p))
    return sum(tvs) / len(tvs)


class MaskedDenoiserMLP(torch.nn.Module):
    """§12.2, a small masked-diffusion denoiser: the one-hot sequence over V tokens and the mask,
    (B, L) long -> an MLP -> clean-token logits (B, L, V). No time input: given x_t, the masked
    posterior p(x_0 | x_t) does not depend on t (the unmasked tokens are exact, the masks carry
    no information about which token they hide)."""

    def __init__(self, L: int, V: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        check_int("L", L)
        check_int("V", V, 2)
        check_int("hidden", hidden)
        check_int("depth", depth)
        self.L, self.V = L, V
        layers, width = [], L * (V + 1)
        for _ in range(depth):
            layers += [torch.nn.Linear(width, hidden), torch.nn.SiLU()]
            width = hidden
        layers.append(torch.nn.Linear(width, L * V))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        if x_t.ndim != 2 or x_t.shape[1] != self.L:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)}; expected (B, {self.L})")
        h = torch.nn.functional.one_hot(x_t, self.V + 1).float().flatten(1)
        return self.net(h).reshape(-1, self.L, self.V)
