"""The seeds' updates one after the other (the CPU default) against vmapped (bucketing.py):
the same losses, gradients and metrics on the same inputs, a seed that does not learn left as
it was, and each seed unrolled only as far as its own batch needs.

The joint CQL term draws its sampled actions for the steps it unrolls, so its samples (not its
distribution) depend on the unroll length: with CQL the two loops agree where every seed's
batch falls in the same length bucket."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovmse.buffers.episode import empty_batch
from ovmse.config import CqlConfig, LearnerConfig, MemoryConfig, NetworkConfig
from ovmse.envs import EnvSpec
from ovmse.learner import OfflineMemory, init_learner, learner_update, qmix_loss
from ovmse.networks.qmix import make_networks
from ovmse.schedules import Schedules
from ovmse.train.bucketing import update_all_seeds

SPEC = EnvSpec("toy", num_agents=2, obs_dim=3, state_dim=4, num_actions=3, episode_limit=9)
NETS = make_networks(SPEC, NetworkConfig(agent_hidden_dim=8, mixer_embed_dim=4,
                                         hypernet_hidden_dim=8))
LENGTHS = (3, 9)
CFG = LearnerConfig(batch_size=4, memory=MemoryConfig(use_memory=True))
CQL = LearnerConfig(batch_size=4, cql=CqlConfig(alpha=2.0, num_samples=8),
                    memory=MemoryConfig(use_memory=True))


def _batch(key, longest):
    batch = empty_batch(SPEC, 4)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    lengths = jnp.minimum(jax.random.randint(k4, (4,), 1, longest + 1).at[0].set(longest),
                          longest)
    steps = jnp.arange(SPEC.episode_limit)[:, None]
    filled = steps < lengths[None]
    return batch._replace(
        obs=jax.random.normal(k1, batch.obs.shape), state=jax.random.uniform(k2, batch.state.shape),
        avail=jnp.ones_like(batch.avail), actions=jax.random.randint(k3, batch.actions.shape, 0, 3),
        rewards=jnp.where(filled, 1.0, 0.0), filled=filled, terminated=steps == lengths[None] - 1)


def _inputs(longest_per_seed):
    seeds = len(longest_per_seed)
    keys = jax.random.split(jax.random.PRNGKey(3), seeds)
    learners = jax.vmap(lambda k: init_learner(k, NETS, CQL))(keys)
    batches = jax.tree.map(lambda *x: jnp.stack(x), *[
        _batch(jax.random.fold_in(keys[i], 1), n) for i, n in enumerate(longest_per_seed)])
    memory = OfflineMemory(learners.target_params, learners.params["agent"])
    schedules = Schedules(epsilon=jnp.zeros((seeds,)), lam=jnp.full((seeds,), 0.5),
                          learn=jnp.ones((seeds,), bool))
    return learners, batches, keys, memory, schedules


def _update(learner, batch, key, memory, schedules, cfg=CFG):
    return learner_update(learner, batch, NETS, cfg, key, memory, schedules)


def _gradient(learner, batch, key, memory, schedules, cfg=CFG):
    """An "update" that returns the loss and its gradient as metrics (Adam's first step,
    about lr * sign(gradient), would turn rounding in a near-zero gradient into +-lr)."""
    grads, metrics = jax.grad(qmix_loss, has_aux=True)(
        learner.params, learner.target_params, NETS, batch, cfg, key, memory, schedules)
    return learner, (metrics.loss, metrics.cql, grads)


def _cql_gradient(learner, batch, key, memory, schedules):
    return _gradient(learner, batch, key, memory, schedules, CQL)


@functools.cache
def _program(seed_loop, update):
    return jax.jit(lambda *args: update_all_seeds(update, *args[:3], LENGTHS, *args[3:5],
                                                  learning=args[5], seed_loop=seed_loop))


def _run(seed_loop, learning, update=_update, longest=(2, 7, 4)):
    learners, batches, keys, memory, schedules = _inputs(longest)
    return learners, _program(seed_loop, update)(learners, batches, keys, memory, schedules,
                                                 jnp.asarray(learning))


@pytest.mark.parametrize("learning", [(True, True, True), (True, False, True)])
def test_sequential_seeds_give_the_vmapped_losses_and_gradients(learning):
    _, (_, vmapped, _) = _run("vmap", learning, _gradient)
    _, (_, sequential, _) = _run("sequential", learning, _gradient)
    assert float(jnp.sum(jnp.abs(sequential[0]))) > 0
    for got, want in zip(jax.tree.leaves(sequential), jax.tree.leaves(vmapped)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("learning", [(True, True, True), (True, False, True)])
def test_sequential_seeds_give_the_vmapped_updates(learning):
    before, (vmapped, m_vmapped, len_vmapped) = _run("vmap", learning)
    _, (sequential, m_sequential, len_sequential) = _run("sequential", learning)
    for got, want in zip(m_sequential, m_vmapped):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(sequential), jax.tree.leaves(vmapped)):
        # equal gradients; Adam's first step moves each weight by about lr * sign(gradient)
        np.testing.assert_allclose(got, want, rtol=0, atol=2.01 * CFG.lr)
    assert float(jnp.sum(jnp.abs(m_sequential.loss))) > 0
    # vmapped: every learning seed at the length of the longest batch of any seed (7 -> 9);
    # sequential: each at its own (2 -> 3, 7 -> 9, 4 -> 9); a seed that does not learn: 0
    assert list(len_vmapped) == [9.0 if on else 0.0 for on in learning]
    assert list(len_sequential) == [n if on else 0.0 for n, on in zip((3.0, 9.0, 9.0), learning)]
    for i, on in enumerate(learning):
        if not on:
            for got, old in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], sequential)),
                                jax.tree.leaves(jax.tree.map(lambda x: x[i], before))):
                np.testing.assert_array_equal(got, old)
            assert all(float(m[i]) == 0.0 for m in m_sequential)


def test_an_update_changes_the_learner():
    before, (after, _, _) = _run("sequential", (True, True, True))
    assert int(after.updates[0]) == 1
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(after.params),
                                                      jax.tree.leaves(before.params))]
    assert all(changed)


def test_with_cql_the_loops_agree_when_the_seeds_share_a_length():
    # longest episodes 6, 8, 9: every seed unrolls 9 steps in both loops
    _, (_, vmapped, _) = _run("vmap", (True, True, True), _cql_gradient, (6, 8, 9))
    _, (_, sequential, _) = _run("sequential", (True, True, True), _cql_gradient, (6, 8, 9))
    assert float(jnp.min(jnp.abs(sequential[1]))) > 0   # the CQL term is on
    for got, want in zip(jax.tree.leaves(sequential), jax.tree.leaves(vmapped)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
