import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovmse.buffers.episode import empty_batch
from ovmse.config import LearnerConfig, NetworkConfig
from ovmse.envs import EnvSpec
from ovmse.learner import init_learner, learner_update, qmix_loss, update_target
from ovmse.networks.qmix import agent_q_values, make_networks, take

SPEC = EnvSpec("toy", num_agents=2, obs_dim=3, state_dim=4, num_actions=3, episode_limit=5)
NETS = make_networks(SPEC, NetworkConfig(agent_hidden_dim=8, mixer_embed_dim=4,
                                         hypernet_hidden_dim=8))


def _batch(key, episodes=4):
    batch = empty_batch(SPEC, episodes)
    k1, k2, k3 = jax.random.split(key, 3)
    lengths = jnp.array([5, 3, 2, 4])[:episodes]
    filled = jnp.arange(5)[:, None] < lengths[None]
    return batch._replace(
        obs=jax.random.normal(k1, batch.obs.shape), state=jax.random.uniform(k2, batch.state.shape),
        avail=jnp.ones_like(batch.avail), actions=jax.random.randint(k3, batch.actions.shape, 0, 3),
        rewards=jnp.where(filled, 1.0, 0.0), filled=filled,
        terminated=jnp.arange(5)[:, None] == lengths[None] - 1)


def test_td_loss_is_the_mean_squared_error_against_hand_built_targets():
    cfg = LearnerConfig(td_lambda=0.0, gamma=0.9)
    state = init_learner(jax.random.PRNGKey(0), NETS, cfg)
    batch = _batch(jax.random.PRNGKey(1))
    loss, metrics = qmix_loss(state.params, state.target_params, NETS, batch, cfg)
    # rebuild the one-step double-Q target by hand, transition by transition
    q = np.asarray(agent_q_values(NETS, state.params["agent"], batch))
    errors = []
    for t in range(5):
        for b in range(4):
            if not batch.filled[t, b]:
                continue
            q_tot = NETS.mixer.apply(state.params["mixer"],
                                     jnp.asarray(q[t, b, np.arange(2), batch.actions[t, b]]),
                                     batch.state[t, b])
            a_next = q[t + 1, b].argmax(-1)  # all actions available; online = target here
            q_next = NETS.mixer.apply(state.target_params["mixer"],
                                      jnp.asarray(q[t + 1, b, np.arange(2), a_next]),
                                      batch.state[t + 1, b])
            target = 1.0 + 0.9 * (1 - float(batch.terminated[t, b])) * float(q_next)
            errors.append((float(q_tot) - target) ** 2)
    assert float(loss) == pytest.approx(np.mean(errors), rel=1e-5)
    assert float(metrics.loss) == float(loss)


def test_padding_does_not_change_the_loss():
    cfg = LearnerConfig()
    state = init_learner(jax.random.PRNGKey(0), NETS, cfg)
    batch = _batch(jax.random.PRNGKey(2))
    noisy = batch._replace(rewards=jnp.where(batch.filled, batch.rewards, 1e6),
                           actions=jnp.where(batch.filled[..., None], batch.actions, 2))
    a = qmix_loss(state.params, state.target_params, NETS, batch, cfg)[0]
    b = qmix_loss(state.params, state.target_params, NETS, noisy, cfg)[0]
    assert float(a) == pytest.approx(float(b))


def test_updates_fit_a_fixed_batch_and_target_copy_is_exact():
    cfg = LearnerConfig(lr=3e-3)
    state = init_learner(jax.random.PRNGKey(0), NETS, cfg)
    batch = _batch(jax.random.PRNGKey(3))
    update = jax.jit(lambda s: learner_update(s, batch, NETS, cfg))
    first = None
    for _ in range(150):
        state, metrics = update(state)
        first = float(metrics.loss) if first is None else first
    assert float(metrics.loss) < 0.2 * first
    assert int(state.updates) == 150
    copied = update_target(state)
    for a, b in zip(jax.tree.leaves(copied.params), jax.tree.leaves(copied.target_params)):
        np.testing.assert_array_equal(a, b)
    kept = update_target(state, jnp.array(False))
    for a, b in zip(jax.tree.leaves(state.target_params), jax.tree.leaves(kept.target_params)):
        np.testing.assert_array_equal(a, b)


def test_q_values_depend_on_history_not_only_on_the_current_observation():
    state = init_learner(jax.random.PRNGKey(0), NETS, LearnerConfig())
    batch = _batch(jax.random.PRNGKey(4))
    changed = batch._replace(obs=batch.obs.at[0].add(1.0))  # only t = 0 differs
    q_a = agent_q_values(NETS, state.params["agent"], batch)
    q_b = agent_q_values(NETS, state.params["agent"], changed)
    assert not np.allclose(q_a[2], q_b[2])  # the GRU carries t = 0 forward
    assert take(q_a, jnp.zeros(q_a.shape[:-1], jnp.int32)).shape == q_a.shape[:-1]


def test_unrolling_only_the_longest_episode_gives_the_same_loss_and_gradient():
    # _batch's longest episode has 5 steps = the limit; cut a 3-step batch to first_steps(3)
    cfg = LearnerConfig()
    state = init_learner(jax.random.PRNGKey(0), NETS, cfg)
    batch = _batch(jax.random.PRNGKey(5))
    short = batch._replace(filled=batch.filled & (jnp.arange(5)[:, None] < 3),
                           terminated=batch.terminated & (jnp.arange(5)[:, None] < 3))
    cut = short.first_steps(3)
    assert cut.obs.shape[0] == 4 and cut.actions.shape[0] == 3
    grad_fn = jax.grad(qmix_loss, has_aux=True)
    g_full, m_full = grad_fn(state.params, state.target_params, NETS, short, cfg)
    g_cut, m_cut = grad_fn(state.params, state.target_params, NETS, cut, cfg)
    assert float(m_cut.loss) == pytest.approx(float(m_full.loss), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_cut)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)



def _l2_term(values, batch, cfg, key, schedules):
    """A method's own summand: half the mean squared Q_tot taken (a stand-in regulariser)."""
    return 0.5 * jnp.mean(values.q_tot ** 2), {}


def _l2_term_added(cfg):
    """A method record's `terms` function: the standard summands, then `_l2_term`."""
    from ovmse.learner import loss_terms

    return loss_terms(cfg) + (_l2_term,)


def test_a_method_s_own_term_is_added_to_the_standard_ones():
    from ovmse.learner import batch_values, loss_terms

    cfg = LearnerConfig()
    state = init_learner(jax.random.PRNGKey(0), NETS, cfg)
    batch = _batch(jax.random.PRNGKey(3))
    terms = _l2_term_added(cfg)
    assert terms == loss_terms(cfg) + (_l2_term,)
    standard, _ = qmix_loss(state.params, state.target_params, NETS, batch, cfg)
    extended, metrics = qmix_loss(state.params, state.target_params, NETS, batch, cfg,
                                  terms=terms)
    values = batch_values(state.params, state.target_params, NETS, batch, cfg)
    extra = 0.5 * float(jnp.mean(values.q_tot ** 2))
    assert extra > 1e-6
    assert float(extended) == pytest.approx(float(standard) + extra, rel=1e-6)
    assert float(metrics.td_loss) == pytest.approx(float(standard), rel=1e-6)
    plain = jax.tree.leaves(learner_update(state, batch, NETS, cfg)[0].params)
    added = jax.tree.leaves(learner_update(state, batch, NETS, cfg, terms=terms)[0].params)
    assert any(not jnp.allclose(a, b) for a, b in zip(plain, added))
