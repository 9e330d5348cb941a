"""Tests of utils.guidance: the CFG identities on the oracle, classifier guidance with the exact
noisy classifier, the tilted density, grid sampling, and the exact linear-inverse-problem posterior."""
import math

import pytest
import torch

from core_helpers import ALL_SCHEDULES, SCHEDULE_IDS, full_cov_mixture
from utils import guidance, nets, schedules
from utils.targets import NULL_LABEL, TARGETS

MIXTURES = {"full_cov": full_cov_mixture(), "three_class": guidance.three_class_mixture()}


def _points(mix, t, schedule, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mix.sample(n, g, t=t, schedule=schedule)[0] + 0.3 * torch.randn(n, 2, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("mix_name", list(MIXTURES))
@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=SCHEDULE_IDS)
def test_cfg_identities_with_the_oracle(schedule, mix_name):
    """w = 1 is the conditional oracle and w = 0 the unconditional one (y=None), every target."""
    mix = MIXTURES[mix_name]
    oracle = mix.denoiser(schedule)
    for t in (0.1, 0.5, 0.9):
        x = _points(mix, t, schedule)
        y = torch.arange(64) % mix.num_classes
        for target in TARGETS:
            cond, uncond = oracle(x, t, y, target=target), oracle(x, t, None, target=target)
            torch.testing.assert_close(guidance.ClassifierFreeGuidance(oracle, 1.0)(x, t, y, target=target),
                                       cond, rtol=0, atol=1e-10)
            torch.testing.assert_close(guidance.ClassifierFreeGuidance(oracle, 0.0)(x, t, y, target=target),
                                       uncond, rtol=0, atol=1e-10)
            w = 3.0
            torch.testing.assert_close(guidance.ClassifierFreeGuidance(oracle, w)(x, t, y, target=target),
                                       w * cond + (1 - w) * uncond, rtol=1e-10, atol=1e-10)


def test_ho_salimans_conversion():
    mix = MIXTURES["three_class"]
    oracle = mix.denoiser(schedules.VPLinear())
    x, y, t = _points(mix, 0.4, oracle.schedule), torch.zeros(64, dtype=torch.long), 0.4
    w_prime = 2.5
    ho = (1 + w_prime) * oracle.eps(x, t, y) - w_prime * oracle.eps(x, t, None)
    torch.testing.assert_close(guidance.ClassifierFreeGuidance(oracle, guidance.from_ho_salimans(w_prime)).eps(x, t, y),
                               ho, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mix_name", list(MIXTURES))
def test_exact_noisy_classifier(mix_name):
    mix, sched = MIXTURES[mix_name], schedules.VPLinear()
    x = _points(mix, 0.3, sched)
    logp = guidance.noisy_class_log_probs(mix, x, 0.3, sched)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(64, dtype=torch.float64))
    # Bayes by hand: p(c) p_t(x | c) / p_t(x)
    c = 0
    by_hand = guidance.class_log_prior(mix)[c] + mix.log_prob(x, 0.3, sched, y=torch.full((64,), c)) \
        - mix.log_prob(x, 0.3, sched)
    torch.testing.assert_close(logp[:, c], by_hand)
    # at the end of a VP path (alpha_1 = 0.0066) the classes are nearly indistinguishable: p_t(c | x) -> p(c)
    far = guidance.noisy_class_log_probs(mix, x, 1.0, sched)
    torch.testing.assert_close(far, guidance.class_log_prior(mix).expand(64, -1), rtol=0, atol=0.05)
    assert float((far - guidance.class_log_prior(mix)).abs().max()) < 0.1 * float((logp - guidance.class_log_prior(mix)).abs().max())


@pytest.mark.parametrize("schedule", [schedules.VPLinear(), schedules.LinearPath(), schedules.EDM()],
                         ids=["vp_linear", "linear", "edm"])
def test_classifier_guidance_with_exact_classifier_is_cfg(schedule):
    """s(x) + w grad log p_t(c | x) = w s(x | c) + (1 - w) s(x): CG with the exact classifier is
    CFG with the oracle, for every w and target (Eq. 8.1.1)."""
    mix = MIXTURES["three_class"]
    oracle = mix.denoiser(schedule)
    clf = guidance.ExactNoisyClassifier(mix, schedule)
    for t in (0.2, 0.6):
        x = _points(mix, t, schedule)
        y = torch.arange(64) % 3
        for w in (0.0, 1.0, 4.0):
            cg, cfg = guidance.ClassifierGuidance(oracle, clf, w), guidance.ClassifierFreeGuidance(oracle, w)
            for target in TARGETS:
                torch.testing.assert_close(cg(x, t, y, target=target), cfg(x, t, y, target=target),
                                           rtol=1e-8, atol=1e-8)


def test_classifier_guidance_runs_a_net_classifier():
    """A logits net (B, C) is accepted; the guidance term is the autograd gradient of its log-softmax."""
    torch.manual_seed(0)
    mix, sched = MIXTURES["three_class"], schedules.VPLinear()
    oracle = mix.denoiser(sched)
    net = nets.MLP(2, 16, 1, out_dim=3).double()
    x, y, t = _points(mix, 0.5, sched, n=8), torch.zeros(8, dtype=torch.long), 0.5
    xg = x.clone().requires_grad_(True)
    g = torch.autograd.grad(torch.log_softmax(net(xg, torch.full((8,), t, dtype=torch.float64)), 1)[:, 0].sum(), xg)[0]
    torch.testing.assert_close(guidance.ClassifierGuidance(oracle, net, 2.0).score(x, t, y),
                               oracle.score(x, t) + 2.0 * g)
    with torch.no_grad():  # samplers call models under no_grad
        guidance.ClassifierGuidance(oracle, net, 2.0).velocity(x, t, y)


def test_noisy_classifier_loss_is_cross_entropy_of_the_exact_classifier():
    """The exact classifier's loss is the conditional entropy, below a constant-prior classifier's."""
    mix, sched = MIXTURES["three_class"], schedules.VPLinear()
    x0, c = mix.sample(4000, torch.Generator().manual_seed(1))
    loss = guidance.noisy_classifier_loss(sched)
    exact = loss(guidance.ExactNoisyClassifier(mix, sched), x0, c, torch.Generator().manual_seed(2))
    prior = loss(lambda x, t: guidance.class_log_prior(mix).expand(x.shape[0], -1), x0, c,
                 torch.Generator().manual_seed(2))
    torch.testing.assert_close(prior, torch.tensor(math.log(3), dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert float(exact) < float(prior) - 0.1


def test_tilted_density():
    mix = MIXTURES["three_class"]
    g = torch.Generator().manual_seed(3)
    x = mix.sample(200, g)[0]
    c = 1
    # w = 0: p; w = 1: p(x | c) p(c)
    torch.testing.assert_close(guidance.tilted_log_density(mix, x, c, 0.0), mix.log_prob(x))
    torch.testing.assert_close(guidance.tilted_log_density(mix, x, c, 1.0),
                               mix.log_prob(x, y=torch.full((200,), c)) + guidance.class_log_prior(mix)[c])
    # at t -> 0 the noisy version agrees with the t = 0 one
    sched = schedules.VPLinear()
    torch.testing.assert_close(guidance.tilted_log_density(mix, x, c, 3.0, t=0.0, schedule=sched),
                               guidance.tilted_log_density(mix, x, c, 3.0))
    with pytest.raises(ValueError, match="c=5"):
        guidance.tilted_log_density(mix, x, 5, 1.0)


def test_grid_sample_moments():
    mix = MIXTURES["full_cov"]
    g = torch.Generator().manual_seed(4)
    n = 40_000
    xs = guidance.grid_sample(mix.log_prob, n, lim=4.0, n=300, generator=g)
    mean, cov = mix.mean(), mix.covariance()
    se = (cov.diagonal() / n).sqrt()
    assert ((xs.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(xs.T), cov, rtol=0, atol=0.03)


def test_linear_gaussian_posterior_is_bayes_rule():
    mix = MIXTURES["full_cov"]
    A, y, sigma_y = torch.tensor([[1.0, 0.5]], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64), 0.4
    post = guidance.linear_gaussian_posterior(mix, A, y, sigma_y)
    x = _points(mix, 0.0, schedules.VPLinear(), n=100)
    log_joint = mix.log_prob(x) - 0.5 * ((x @ A.T - y) ** 2).sum(1) / sigma_y ** 2 \
        - 0.5 * math.log(2 * math.pi * sigma_y ** 2)
    diff = post.log_prob(x) - log_joint                           # log p(x | y) - log p(x) p(y | x) = -log p(y)
    torch.testing.assert_close(diff, diff[0].expand(100), rtol=0, atol=1e-10)
    # the constant is -log p(y), with p(y) by quadrature on a fine grid
    u = torch.linspace(-6, 6, 601, dtype=torch.float64)
    P = torch.cartesian_prod(u, u)
    log_py = math.log(float((mix.log_prob(P) - 0.5 * ((P @ A.T - y) ** 2).sum(1) / sigma_y ** 2).exp().sum())
                      * float(u[1] - u[0]) ** 2 / math.sqrt(2 * math.pi * sigma_y ** 2))
    assert abs(float(diff[0]) + log_py) < 1e-8


def test_linear_gaussian_posterior_one_gaussian_is_kalman():
    from utils.gmm import GaussianMixture

    S = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    m = torch.tensor([0.2, -0.4], dtype=torch.float64)
    prior = GaussianMixture(m[None], S[None])
    A, y, sy = torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64), 0.2
    post = guidance.linear_gaussian_posterior(prior, A, y, sy)
    K = S @ A.T @ torch.linalg.inv(A @ S @ A.T + sy ** 2)
    torch.testing.assert_close(post.means[0], m + (K @ (y - A @ m)))
    torch.testing.assert_close(post.covs[0], S - K @ A @ S)
    with pytest.raises(ValueError, match="A has shape"):
        guidance.linear_gaussian_posterior(prior, torch.ones(1, 3), y, sy)


def test_dps_term_by_hand_for_one_gaussian():
    """For a Gaussian prior x0_hat is affine in x_t with Jacobian alpha S C^-1, C = alpha^2 S + sigma^2 I."""
    from utils.gmm import GaussianMixture

    S = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    prior = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), S[None])
    sched = schedules.VPLinear()
    oracle = prior.denoiser(sched)
    A, y, sy = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64), 0.3
    dps = guidance.DPS(oracle, A, y, sy, zeta=0.5)
    t = 0.4
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    x = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    J = a * S @ torch.linalg.inv(a ** 2 * S + s ** 2 * torch.eye(2, dtype=torch.float64))
    x0 = oracle.x0(x, t)
    by_hand = -0.5 * ((x0 @ A.T - y) @ A @ J) / sy ** 2                  # rows: (J^T A^T r)^T = r^T A J
    torch.testing.assert_close(dps.score(x, t), oracle.score(x, t) + by_hand)
    nm = guidance.NoisyMeasurementGuidance(oracle, A, y, sy, zeta=1.0)
    torch.testing.assert_close(nm.score(x, t), oracle.score(x, t) + ((a * y - x @ A.T) @ A) / (a ** 2 * sy ** 2 + s ** 2))


def test_bad_input():
    mix = MIXTURES["three_class"]
    oracle = mix.denoiser(schedules.VPLinear())
    with pytest.raises(ValueError, match="w="):
        guidance.ClassifierGuidance(oracle, guidance.ExactNoisyClassifier(mix, oracle.schedule), "big")
    with pytest.raises(ValueError, match="y is None"):
        guidance.ClassifierGuidance(oracle, guidance.ExactNoisyClassifier(mix, oracle.schedule), 1.0).eps(
            torch.zeros(2, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="sigma_y"):
        guidance.DPS(oracle, torch.eye(2), torch.zeros(2), -1.0)
    with pytest.raises(ValueError, match="minor_weight"):
        guidance.three_class_mixture(minor_weight=1.5)
    with pytest.raises(ValueError, match="n_samples"):
        guidance.grid_sample(mix.log_prob, 0)


def test_linear_reward_optimum_is_the_tilt():
    """log pi*(x) - log pi_ref(x) - a.x / beta is one constant (-log Z), Eq. 8.5.5."""
    mix, a, beta = MIXTURES["full_cov"], torch.tensor([1.0, -0.5], dtype=torch.float64), 0.7
    opt = guidance.linear_reward_optimum(mix, a, beta)
    x = _points(mix, 0.0, schedules.VPLinear(), n=100)
    diff = opt.log_prob(x) - mix.log_prob(x) - x @ a / beta
    torch.testing.assert_close(diff, diff[0].expand(100), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="beta"):
        guidance.linear_reward_optimum(mix, a, 0.0)


def test_preference_pairs_follow_bradley_terry():
    xa = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(20_000, 2)
    xb = torch.tensor([[0.0, 0.0]], dtype=torch.float64).expand(20_000, 2)
    reward = lambda x: 0.8 * x[:, 0]
    pairs = guidance.preference_pairs(xa, xb, reward, torch.Generator().manual_seed(6))
    assert pairs.shape == (20_000, 2, 2)
    wins = float((pairs[:, 0, 0] == 1.0).double().mean())
    p = float(torch.sigmoid(torch.tensor(0.8)))
    assert abs(wins - p) < 5 * math.sqrt(p * (1 - p) / 20_000)
    torch.testing.assert_close(guidance.bradley_terry_prob(torch.tensor(0.3), torch.tensor(-0.2)) +
                               guidance.bradley_terry_prob(torch.tensor(-0.2), torch.tensor(0.3)), torch.tensor(1.0))


def test_diffusion_dpo_loss():
    """At theta = ref the margin is 0 and the loss is log 2; lowering the winner's error lowers it."""
    import copy

    torch.manual_seed(0)
    sched = schedules.VPLinear()
    ref = nets.MLP(2, 16, 1)
    loss = guidance.diffusion_dpo_loss(ref, sched, beta=0.5)
    pairs = torch.randn(64, 2, 2)
    same = copy.deepcopy(ref)
    torch.testing.assert_close(loss(same, pairs, None, torch.Generator().manual_seed(0)), torch.tensor(math.log(2)))
    assert not any(p.requires_grad for p in ref.parameters())            # the reference is frozen
    for p in same.parameters():
        p.requires_grad_(True)
    value = loss(same, pairs, None, torch.Generator().manual_seed(0))
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in same.parameters())
    with pytest.raises(ValueError, match="pairs has shape"):
        loss(same, torch.randn(64, 2), None, None)


def test_diffusion_dpo_loss_several_draws():
    """n_t draws per pair: still log 2 at theta = ref; n_t must be a positive int."""
    import copy

    torch.manual_seed(1)
    sched = schedules.VPLinear()
    ref = nets.MLP(2, 16, 1)
    same = copy.deepcopy(ref)
    loss8 = guidance.diffusion_dpo_loss(copy.deepcopy(ref), sched, beta=1.0, n_t=8)
    torch.testing.assert_close(loss8(same, torch.randn(32, 2, 2), None, torch.Generator().manual_seed(0)),
                               torch.tensor(math.log(2)))
    with pytest.raises(ValueError, match="n_t"):
        guidance.diffusion_dpo_loss(ref, sched, beta=1.0, n_t=0)
