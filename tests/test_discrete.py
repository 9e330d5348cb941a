"""utils.discrete: rate matrices, the master equation, token kernels, exact marginals and denoisers,
and ancestral sampling, checked against closed forms and enumeration (Ch. 12, §12.2)."""
import math

import pytest
import torch

from utils import discrete

V, L = 3, 3


def _markov_data():
    X = discrete.all_sequences(L, V)
    stay = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]], dtype=torch.float64)
    p = torch.full((len(X),), 1 / V, dtype=torch.float64)
    for i in range(1, L):
        p = p * stay[X[:, i - 1], X[:, i]]
    return X, p


def test_rate_matrices_and_closed_form_kernels():
    for process, Q in [("uniform", discrete.uniform_rate_matrix(V)), ("masked", discrete.absorbing_rate_matrix(V))]:
        discrete.check_rate_matrix(Q)
        B = math.log(0.8 / 0.3)                                    # alpha_s = 0.8, alpha_t = 0.3
        torch.testing.assert_close(discrete.transition_matrix(Q, B), discrete.token_kernel(process, V, 0.2, 0.7))
        K = discrete.token_kernel(process, V, 0.0, 1.0)
        torch.testing.assert_close(K.sum(1), torch.ones(len(K), dtype=torch.float64))
    assert discrete.token_kernel("masked", V, 0.0, 1.0)[:V, V].eq(1).all()       # all masked at t = 1
    with pytest.raises(ValueError):
        discrete.token_kernel("gaussian", V, 0.0, 0.5)
    with pytest.raises(ValueError):
        discrete.token_kernel("uniform", V, 0.6, 0.5)
    with pytest.raises(ValueError):
        discrete.check_rate_matrix(torch.ones(3, 3))


def test_gillespie_matches_matrix_exponential():
    Q = torch.tensor([[-1.0, 1.0, 0.0], [0.5, -1.0, 0.5], [0.0, 2.0, -2.0]], dtype=torch.float64)
    n = 40_000
    x = discrete.simulate_ctmc(Q, torch.zeros(n, dtype=torch.long), 0.7, torch.Generator().manual_seed(0))
    p = discrete.transition_matrix(Q, 0.7)[0]
    emp = torch.bincount(x, minlength=3).double() / n
    assert ((emp - p).abs() / torch.sqrt(p * (1 - p) / n)).max() < 5


def test_sequence_indexing_round_trip():
    X = discrete.all_sequences(L, V)
    torch.testing.assert_close(discrete.sequence_index(X, V), torch.arange(V ** L))
    torch.testing.assert_close(discrete.empirical_distribution(X, V), torch.full((V ** L,), 1 / V ** L, dtype=torch.float64))


def test_marginal_equals_enumeration():
    X, p = _markov_data()
    K = discrete.token_kernel("masked", V, 0.0, 0.4)[:V]
    Xk = discrete.all_sequences(L, V + 1)
    brute = torch.stack([(p * torch.stack([K[X[:, i], xk[i]] for i in range(L)]).prod(0)).sum() for xk in Xk])
    torch.testing.assert_close(discrete.marginal(p, K, L), brute)


def test_exact_denoiser_by_bayes_and_time_independence():
    X, p = _markov_data()
    x_t = torch.tensor([[0, V, V], [V, V, V], [2, 1, 0]])
    post = discrete.exact_denoiser(x_t, X, p, discrete.token_kernel("masked", V, 0.0, 0.5)[:V])
    torch.testing.assert_close(post.sum(-1), torch.ones(3, L, dtype=torch.float64))
    torch.testing.assert_close(post[2], torch.nn.functional.one_hot(x_t[2], V).double())     # nothing masked
    # all masked: the data's per-position marginals
    torch.testing.assert_close(post[1, 0], torch.bincount(X[:, 0], weights=p, minlength=V))
    # by Bayes on the first sequence: p(x_0 | x_0^0 = 0)
    cond = p * (X[:, 0] == 0)
    torch.testing.assert_close(post[0, 1], torch.bincount(X[:, 1], weights=cond / cond.sum(), minlength=V))
    post2 = discrete.exact_denoiser(x_t, X, p, discrete.token_kernel("masked", V, 0.0, 0.9)[:V])
    torch.testing.assert_close(post, post2)


def test_ancestral_step_to_zero_draws_from_the_denoiser_and_keeps_visible_tokens():
    g = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64).expand(20_000, L, V)
    x_t = torch.tensor([[V, 1, V]]).expand(20_000, L)
    x_s = discrete.ancestral_step(probs, x_t, "masked", V, 0.0, 0.6, g)
    assert (x_s[:, 1] == 1).all() and (x_s != V).all()
    emp = torch.bincount(x_s[:, 0], minlength=V).double() / len(x_s)
    assert (emp - probs[0, 0]).abs().max() < 0.015
    x_s = discrete.ancestral_step(probs, x_t, "masked", V, 0.3, 0.6, g)                 # half stay masked
    assert abs(float((x_s[:, 0] == V).double().mean()) - 0.5) < 0.015


def test_sampling_with_the_exact_denoiser_converges():
    X, p = _markov_data()
    g = torch.Generator().manual_seed(2)
    den = lambda x, t: discrete.exact_denoiser(x, X, p, discrete.token_kernel("masked", V, 0.0, t)[:V])
    n = 10_000
    floor = discrete.tv_noise_floor(p, n, generator=g)
    tv_many = discrete.total_variation(discrete.empirical_distribution(discrete.sample(den, n, L, "masked", V, 48, g), V), p)
    tv_one = discrete.total_variation(discrete.empirical_distribution(discrete.sample(den, n, L, "masked", V, 1, g), V), p)
    assert tv_many < 1.8 * floor and tv_one > 10 * floor          # one step: independent tokens


def test_masked_loss_and_net_shapes():
    net = discrete.MaskedDenoiserMLP(L, V, hidden=16, depth=2)
    x0 = torch.tensor([[0, 1, 2], [2, 2, 2]])
    x_t = torch.tensor([[V, 1, V], [2, V, 2]])
    logits = net(x_t)
    assert logits.shape == (2, L, V)
    perfect = torch.nn.functional.one_hot(x0, V).float() * 50
    assert float(discrete.masked_denoiser_loss(perfect, x0, x_t, V)) < 1e-6
    with pytest.raises(ValueError):
        net(torch.zeros(2, L + 1, dtype=torch.long))
