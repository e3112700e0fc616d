"""The conservative regulariser (eq. 9) and its calibrated form, against hand computations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovmse.buffers.episode import EpisodeBatch
from ovmse.config import CqlConfig, LearnerConfig, NetworkConfig
from ovmse.cql import (counterfactual_push_down, cql_regulariser, joint_push_down,
                       returns_to_go, sample_available_actions)
from ovmse.envs import EnvSpec
from ovmse.learner import init_learner, learner_update, qmix_loss
from ovmse.networks.qmix import make_networks
from ovmse.networks.mixer import MixerWeights

# Two agents, three actions, one step of one episode. Agent 0 cannot take action 2.
AGENT_Q = jnp.array([[[[1.0, 2.0, 5.0], [0.0, 3.0, 4.0]]]])  # [T=1, B=1, N=2, A=3]
AVAIL = jnp.array([[[[True, True, False], [True, True, True]]]])
DATA_ACTIONS = jnp.array([[[1, 2]]])  # Q_tot of the data = 2 + 4 = 6
NO_REFERENCE = jnp.full((1, 1), -jnp.inf)


def sum_mixer(num_agents: int, shape=(1, 1)) -> MixerWeights:
    """Weights making Q_tot = sum_i Q_i exactly (elu is the identity on positive inputs)."""
    bias = 100.0
    return MixerWeights(
        w1=jnp.broadcast_to(jnp.eye(num_agents), shape + (num_agents, num_agents)),
        b1=jnp.full(shape + (num_agents,), bias), w2=jnp.ones(shape + (num_agents,)),
        v=jnp.full(shape, -bias * num_agents))


def log_mean_exp(values):
    values = np.asarray(values, np.float64)
    return float(np.log(np.mean(np.exp(values))))


def test_returns_to_go_by_hand():
    rewards = jnp.array([[1.0], [2.0], [3.0], [7.0]])
    filled = jnp.array([[True], [True], [True], [False]])
    got = returns_to_go(rewards, filled, gamma=0.5)
    np.testing.assert_allclose(got[:, 0], [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0])


def test_sampled_joint_actions_are_uniform_over_available_ones():
    actions = sample_available_actions(jax.random.PRNGKey(0), AVAIL, 60_000)  # [K, 1, 1, 2]
    agent0 = np.bincount(np.asarray(actions[:, 0, 0, 0]), minlength=3) / 60_000
    agent1 = np.bincount(np.asarray(actions[:, 0, 0, 1]), minlength=3) / 60_000
    assert agent0[2] == 0  # unavailable: never sampled
    np.testing.assert_allclose(agent0[:2], [1 / 2, 1 / 2], atol=0.01)
    np.testing.assert_allclose(agent1, [1 / 3, 1 / 3, 1 / 3], atol=0.01)


def test_returns_to_go_of_an_episode_cut_by_the_time_limit_are_not_bootstrapped():
    """Episode 0 terminates at step 1; episode 1 runs all 3 steps and is cut (truncated): its
    last step's return is its own reward, nothing after the cut is added."""
    rewards = jnp.array([[1.0, 1.0], [2.0, 2.0], [0.0, 4.0]])
    filled = jnp.array([[True, True], [True, True], [False, True]])
    got = np.asarray(returns_to_go(rewards, filled, gamma=0.5))
    np.testing.assert_allclose(got[:, 0], [1 + 0.5 * 2, 2.0, 0.0])
    np.testing.assert_allclose(got[:, 1], [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0])


def _sample_as_before(key, avail, num_samples):
    """The sampler as it was before issue 15 (a draw of shape [K, ..., N], ranks compared in
    32 bits, argmax): the draws `sample_available_actions` must reproduce exactly."""
    counts = jnp.sum(avail, axis=-1)
    u = jax.random.uniform(key, (num_samples,) + counts.shape)
    rank = jnp.minimum(jnp.floor(u * counts), jnp.maximum(counts - 1, 0))
    position = jnp.cumsum(avail, axis=-1) - 1
    hit = avail & (position == rank[..., None].astype(position.dtype))
    return jnp.argmax(hit, axis=-1).astype(jnp.int32)


@pytest.mark.parametrize("num_actions", [6, 130])  # 8-bit ranks, and 32-bit past 127 actions
def test_sampled_joint_actions_are_the_same_draws_as_before(num_actions):
    keys = jax.random.split(jax.random.PRNGKey(11), 2)
    avail = jax.random.uniform(keys[0], (7, 4, 3, num_actions)) < 0.5
    avail = avail.at[0, 0, 0].set(False)  # an agent with no available action: action 0
    got = sample_available_actions(keys[1], avail, 50)
    want = _sample_as_before(keys[1], avail, 50)
    assert got.dtype == jnp.int32 and got.shape == (50, 7, 4, 3)
    np.testing.assert_array_equal(got, want)
    assert np.all(np.asarray(got[:, 0, 0, 0]) == 0)
    chosen = np.take_along_axis(np.asarray(avail)[None], np.asarray(got)[..., None], -1)[..., 0]
    assert chosen[:, 1:].all() and chosen[:, 0, 1:].all()  # every other draw is available


def test_counterfactual_push_down_by_hand():
    got = counterfactual_push_down(AGENT_Q, AVAIL, DATA_ACTIONS, sum_mixer(2), NO_REFERENCE)
    # agent 0 varies over its available actions {0, 1} with agent 1 at 2: Q_tot = {1, 2} + 4;
    # agent 1 varies over {0, 1, 2} with agent 0 at 1: Q_tot = 2 + {0, 3, 4}.
    expected = (log_mean_exp([5.0, 6.0]) + log_mean_exp([2.0, 5.0, 6.0])) / 2
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-5)
    reg = cql_regulariser(got, jnp.array([[6.0]]), jnp.array([[True]]))
    np.testing.assert_allclose(reg, expected - 6.0, rtol=1e-5)


def test_joint_push_down_estimates_the_uniform_soft_maximum():
    got = joint_push_down(jax.random.PRNGKey(1), AGENT_Q, AVAIL, sum_mixer(2), NO_REFERENCE,
                          num_samples=200_000)
    # all 2 x 3 available joint actions: Q_tot = {1, 2} + {0, 3, 4}
    exact = log_mean_exp([a + b for a in (1.0, 2.0) for b in (0.0, 3.0, 4.0)])
    np.testing.assert_allclose(got[0, 0], exact, atol=0.02)


@pytest.mark.parametrize("estimator", ["joint", "counterfactual"])
def test_unavailable_actions_do_not_enter(estimator):
    changed = AGENT_Q.at[0, 0, 0, 2].set(1000.0)  # agent 0's unavailable action
    values = [_push_down(estimator, q, NO_REFERENCE) for q in (AGENT_Q, changed)]
    np.testing.assert_allclose(values[0], values[1], rtol=1e-6)


def _push_down(estimator, agent_q, reference, weights=None, num_samples=64):
    weights = sum_mixer(2) if weights is None else weights
    if estimator == "joint":
        return joint_push_down(jax.random.PRNGKey(2), agent_q, AVAIL, weights, reference,
                               num_samples)
    return counterfactual_push_down(agent_q, AVAIL, DATA_ACTIONS, weights, reference)


def test_calibrated_counterfactual_by_hand():
    got = counterfactual_push_down(AGENT_Q, AVAIL, DATA_ACTIONS, sum_mixer(2),
                                   jnp.array([[5.5]]))
    expected = (log_mean_exp([5.5, 6.0]) + log_mean_exp([5.5, 5.5, 6.0])) / 2
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("estimator", ["joint", "counterfactual"])
def test_calibration_equals_cql_unless_the_reference_binds(estimator):
    cql = _push_down(estimator, AGENT_Q, NO_REFERENCE)
    below_every_value = _push_down(estimator, AGENT_Q, jnp.array([[-50.0]]))
    binding = _push_down(estimator, AGENT_Q, jnp.array([[5.5]]))
    np.testing.assert_allclose(below_every_value, cql, rtol=1e-6)
    assert float(binding[0, 0]) > float(cql[0, 0]) + 0.1


def test_counterfactual_gradient_by_hand_when_all_q_are_equal():
    """Sum mixer, every Q_i = c: the push-down is c_0 + c_1 whatever c, and d/dQ_i(a) of the
    regulariser is 1/(N |A_i|) - [a = a_i^D] / N on available actions, 0 on unavailable ones:
    the data action is pushed up, the others down, and a shift of all Q's changes nothing."""
    def regulariser(q):
        push = counterfactual_push_down(q, AVAIL, DATA_ACTIONS, sum_mixer(2), NO_REFERENCE)
        q_data = jnp.take_along_axis(q, DATA_ACTIONS[..., None], axis=-1)[..., 0].sum(-1)
        return cql_regulariser(push, q_data, jnp.array([[True]]))

    equal = jnp.full_like(AGENT_Q, 3.0)
    assert float(regulariser(equal)) == pytest.approx(0.0, abs=1e-6)
    grad = np.asarray(jax.grad(regulariser)(equal))[0, 0]
    n = 2
    expected = np.array([[1 / (n * 2), 1 / (n * 2) - 1 / n, 0.0],
                         [1 / (n * 3), 1 / (n * 3), 1 / (n * 3) - 1 / n]])
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-6)


def test_joint_gradient_by_hand_when_all_q_are_equal():
    """Sum mixer, every Q_i = c: each sample gets softmax weight 1/K, so d/dQ_i(a) of the
    regulariser is (share of samples where agent i took a) - [a = a_i^D]."""
    key, k = jax.random.PRNGKey(3), 16

    def regulariser(q):
        push = joint_push_down(key, q, AVAIL, sum_mixer(2), NO_REFERENCE, k)
        q_data = jnp.take_along_axis(q, DATA_ACTIONS[..., None], axis=-1)[..., 0].sum(-1)
        return cql_regulariser(push, q_data, jnp.array([[True]]))

    equal = jnp.full_like(AGENT_Q, 3.0)
    grad = np.asarray(jax.grad(regulariser)(equal))[0, 0]
    samples = np.asarray(sample_available_actions(key, AVAIL, k))[:, 0, 0]  # [K, N]
    share = np.stack([np.bincount(samples[:, i], minlength=3) / k for i in range(2)])
    expected = share - np.eye(3)[np.asarray(DATA_ACTIONS[0, 0])]
    np.testing.assert_allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("estimator", ["joint", "counterfactual"])
def test_regulariser_is_zero_with_the_real_mixer_when_each_agent_is_indifferent(estimator):
    """Each agent's Q equal over its actions: every joint action has the data's Q_tot."""
    from ovmse.networks import QMixer

    mixer = QMixer(2, 8, 16)
    state = jax.random.normal(jax.random.PRNGKey(4), (1, 1, 5))
    params = mixer.init(jax.random.PRNGKey(5), jnp.zeros((1, 1, 2)), state)
    weights = mixer.apply(params, state, method="hypernet")
    q = jnp.broadcast_to(jnp.array([0.7, -1.3])[:, None], AGENT_Q.shape)
    q_data = mixer.apply(params, jnp.array([[[0.7, -1.3]]]), state)
    push = _push_down(estimator, q, NO_REFERENCE, weights)
    np.testing.assert_allclose(push, q_data, atol=1e-5)


SPEC = EnvSpec("toy", num_agents=2, obs_dim=4, state_dim=3, num_actions=3, episode_limit=5)


def toy_batch(key, episodes=4):
    """Random episodes of 2-5 steps, padded to 5, with every agent's action 2 unavailable at odd
    steps; padding avail all False."""
    k = jax.random.split(key, 4)
    t, n, a = SPEC.episode_limit, SPEC.num_agents, SPEC.num_actions
    lengths = jnp.array([5, 2, 3, 4])[:episodes]
    filled = jnp.arange(t)[:, None] < lengths[None]
    alive = jnp.arange(t + 1)[:, None] <= lengths[None]
    avail = jnp.broadcast_to(jnp.array([True, True, False]) | (jnp.arange(t + 1) % 2 == 0)[
        :, None, None, None], (t + 1, episodes, n, a)) & alive[..., None, None]
    actions = jax.random.randint(k[0], (t, episodes, n), 0, 2) * filled[..., None]
    return EpisodeBatch(
        obs=jax.random.normal(k[1], (t + 1, episodes, n, SPEC.obs_dim)) * alive[..., None, None],
        state=jax.random.normal(k[2], (t + 1, episodes, SPEC.state_dim)) * alive[..., None],
        avail=avail, actions=actions.astype(jnp.int32),
        rewards=jax.random.uniform(k[3], (t, episodes)) * filled,
        terminated=(jnp.arange(t)[:, None] == lengths[None] - 1) & (lengths[None] < 5),
        truncated=(jnp.arange(t)[:, None] == lengths[None] - 1) & (lengths[None] == 5),
        won=jnp.zeros((t, episodes), bool), filled=filled)


@pytest.mark.parametrize("cql", [
    CqlConfig(alpha=2.0, estimator="joint", num_samples=8),
    CqlConfig(alpha=2.0, estimator="counterfactual"),
    CqlConfig(alpha=2.0, estimator="joint", num_samples=8, calibrated=True),
    CqlConfig(alpha=2.0, estimator="counterfactual", calibrated=True),
])
def test_loss_is_td_plus_alpha_cql_with_finite_gradients_over_padding(cql):
    nets = make_networks(SPEC, NetworkConfig(16, 8, 16))
    cfg = LearnerConfig(cql=cql)
    state = init_learner(jax.random.PRNGKey(0), nets, cfg)
    batch = toy_batch(jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(2)
    loss, m = qmix_loss(state.params, state.target_params, nets, batch, cfg, key)
    plain, m0 = qmix_loss(state.params, state.target_params, nets, batch,
                          dataclasses.replace(cfg, cql=CqlConfig()))
    np.testing.assert_allclose(m.td_loss, m0.td_loss, rtol=1e-6)
    np.testing.assert_allclose(loss, m0.td_loss + 2.0 * m.cql, rtol=1e-5)
    assert float(m0.cql) == 0.0 and float(plain) == float(m0.td_loss)
    updated, metrics = jax.jit(lambda s, b, k: learner_update(s, b, nets, cfg, k))(
        state, batch, key)
    assert np.isfinite(float(metrics.grad_norm)) and float(metrics.grad_norm) > 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(updated.params))


def test_padding_steps_do_not_change_the_regulariser():
    nets = make_networks(SPEC, NetworkConfig(16, 8, 16))
    cfg = LearnerConfig(cql=CqlConfig(alpha=1.0, estimator="counterfactual", calibrated=True))
    state = init_learner(jax.random.PRNGKey(0), nets, cfg)
    batch = toy_batch(jax.random.PRNGKey(1))
    noisy = batch._replace(rewards=jnp.where(batch.filled, batch.rewards, 99.0),
                           actions=jnp.where(batch.filled[..., None], batch.actions, 1))
    a = qmix_loss(state.params, state.target_params, nets, batch, cfg)[1].cql
    b = qmix_loss(state.params, state.target_params, nets, noisy, cfg)[1].cql
    np.testing.assert_allclose(a, b, rtol=1e-6)


def _whole_array_joint_push_down(key, agent_q, avail, weights, reference, num_samples):
    """joint_push_down as it was computed before the time-step blocking (all steps at once):
    the reference the blocked computation must reproduce."""
    actions = jnp.moveaxis(sample_available_actions(key, avail, num_samples), 0, -2)
    one_hot = jax.nn.one_hot(actions, agent_q.shape[-1], dtype=agent_q.dtype)
    qs = jnp.einsum("...kna,...na->...kn", one_hot, agent_q)
    hidden = jax.nn.elu(jnp.einsum("...kn,...ne->...ke", qs, weights.w1)
                        + weights.b1[..., None, :])
    q_tot = jnp.einsum("...ke,...e->...k", hidden, weights.w2) + weights.v[..., None]
    calibrated = jnp.maximum(q_tot, reference[..., None])
    return jax.nn.logsumexp(calibrated, axis=-1) - np.log(num_samples)


@pytest.mark.parametrize("calibrated", [False, True])
def test_joint_push_down_step_by_step_equals_the_whole_array_computation(calibrated):
    """Same arithmetic, checked in float64: in float32 the two forms sum the K samples' terms in
    different orders (one contraction per step vs one over all steps) and their gradients differ
    by float32 rounding, ~5e-6 relative on this machine's CPU; in float64 any difference beyond
    rounding (~1e-15) is a real one."""
    t, b, n, a, e, k = 6, 5, 3, 4, 8, 16
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(7), 8)
        agent_q = jax.random.normal(keys[0], (t, b, n, a), dtype=jnp.float64)
        avail = jax.random.uniform(keys[1], (t, b, n, a)) > 0.4
        weights = MixerWeights(
            w1=jnp.abs(jax.random.normal(keys[2], (t, b, n, e), dtype=jnp.float64)),
            b1=jax.random.normal(keys[3], (t, b, e), dtype=jnp.float64),
            w2=jnp.abs(jax.random.normal(keys[4], (t, b, e), dtype=jnp.float64)),
            v=jax.random.normal(keys[5], (t, b), dtype=jnp.float64))
        reference = (jax.random.normal(keys[6], (t, b), dtype=jnp.float64) if calibrated
                     else jnp.full((t, b), -jnp.inf, dtype=jnp.float64))

        def value_and_grad(fn):
            def total(agent_q, weights):
                return jnp.sum(jnp.sin(fn(keys[7], agent_q, avail, weights, reference, k)))
            return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(agent_q, weights)

        new, old = value_and_grad(joint_push_down), value_and_grad(_whole_array_joint_push_down)
    assert float(new[0]) != 0.0
    for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
