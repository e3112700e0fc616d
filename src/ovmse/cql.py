"""The conservative regulariser of the offline phase (paper eq. 9) and its calibrated form
(Cal-QL), on QMIX's factored joint action space.

Eq. 9: L_CQL = E_{tau~D, a~mu}[Q_tot(tau, a)] - E_{(tau, a)~D}[Q_tot(tau, a)]. As in CQL(H) and
CFCQL's MACQL, the push-down expectation is the soft maximum under mu, log E_{a~mu}[exp Q_tot],
the closed form of CQL's inner maximisation over mu with an entropy bonus. The joint action
space (A^N) is never enumerated; two estimators of the soft maximum, both over available
actions only:

  joint (the paper's form, default): mu = uniform over available joint actions. With K joint
    actions a^k drawn from it per (t, episode),
        push_down(tau) = log( (1/K) sum_k exp Q_tot(tau, a^k) ),
    Q_tot from the online mixer at the same state. CFCQL's MACQL takes the same logsumexp over
    100 uniform samples but lets unavailable actions in (at Q = 0); here they never are.
  counterfactual (CFCQL): each agent varies its own action with the others at their dataset
    actions, with uniform agent weights 1/N,
        push_down(tau) = (1/N) sum_i log( (1/|A_i|) sum_{a_i in A_i} exp Q_tot(tau, (a_i, a_-i^D)) ),
    A_i the available actions of agent i. Exact: no sampling.

Both are log-*mean*-exp, so when every Q_tot is equal the push-down equals the data action's
Q_tot and the regulariser is 0; the gradients are those of CFCQL's logsumexp (a constant apart).

Cal-QL calibrates the push-down: each Q_tot(tau, a) in it is replaced by max(Q_tot(tau, a),
V_mu(tau)), with V_mu the behaviour policy's value, estimated by the dataset's discounted
Monte-Carlo return-to-go (`returns_to_go`). Values already below it are not pushed further down.
Reference -inf gives CQL exactly.

Shapes: T steps, B episodes, N agents, A actions, K samples.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ovmse.networks.mixer import MixerWeights, mix_with


def returns_to_go(rewards: jax.Array, filled: jax.Array, gamma: float) -> jax.Array:
    """G_t = sum_{k >= t} gamma^(k-t) r_k over the real steps of each episode: [T, B] -> [T, B].

    An episode cut by the step limit has no reward after its cut: its return-to-go is that of
    the steps it has, not bootstrapped (Cal-QL's reference is the data's Monte-Carlo return,
    with no learned value in it). SMAX's rewards are non-negative, so near a cut this
    underestimates the behaviour policy's value: Cal-QL's floor max(Q, V_mu) is lower there and
    the term falls back towards CQL's, never pushing down less than the data supports.
    Padding steps get 0."""
    def backward(following, step):
        reward, is_filled = step
        value = jnp.where(is_filled, reward + gamma * following, 0.0)
        return value, value

    _, returns = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), (rewards, filled),
                              reverse=True)
    return returns


def sample_available_actions(key: jax.Array, avail: jax.Array, num_samples: int) -> jax.Array:
    """K joint actions per step, each agent's action uniform over its available ones:
    avail [..., N, A] -> int32 [K, ..., N]. An agent with no available action gets action 0.

    Agent i's action is its available action of rank floor(u * count_i), u ~ U[0, 1). The
    uniforms are drawn as one flat vector (the same numbers as a draw of shape [K, ..., N]:
    JAX's threefry is a function of the flat index, and a flat draw is 1.5x cheaper on CPU), and
    the action of rank r is found as the number of actions whose running count of available
    ones is at most r, in 8-bit integers (the arithmetic is exact; 2x cheaper than comparing
    ranks in 32 bits and taking the argmax)."""
    counts = jnp.sum(avail, axis=-1, dtype=jnp.int32)  # [..., N]
    shape = (num_samples,) + counts.shape
    u = jax.random.uniform(key, (math.prod(shape),)).reshape(shape)
    small = jnp.int8 if avail.shape[-1] < 128 else jnp.int32
    rank = jnp.minimum(jnp.floor(u * counts), jnp.maximum(counts - 1, 0)).astype(small)
    running = jnp.cumsum(avail, axis=-1, dtype=small)  # [..., N, A]: available ones up to a
    action = jnp.sum(running <= rank[..., None], axis=-1, dtype=jnp.int32)
    return jnp.where(counts > 0, action, 0)


def _log_mean_exp(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """log( mean over the masked entries of exp(x) ) along `axis`. A row with no entry (padding)
    gives a finite value with no gradient, not NaN."""
    any_entry = jnp.any(mask, axis=axis, keepdims=True)
    masked = jnp.where(mask, x, jnp.where(any_entry, -jnp.inf, 0.0))
    count = jnp.maximum(jnp.sum(mask, axis=axis), 1)
    return jax.nn.logsumexp(masked, axis=axis) - jnp.log(count.astype(x.dtype))


def joint_push_down(key: jax.Array, agent_q: jax.Array, avail: jax.Array,
                    weights: MixerWeights, reference: jax.Array, num_samples: int) -> jax.Array:
    """log (1/K) sum_k exp max(Q_tot(tau, a^k), reference), a^k uniform over available joint
    actions. agent_q, avail: [T, B, N, A]; weights for states [T, B]; reference [T, B] -> [T, B].

    The K mixed joint actions of a step make [B, K, E] hidden units; over all T steps they
    would be arrays far larger than a CPU's caches, and the term would be bound by memory
    traffic. So the term is computed one time step at a time (`lax.map`) and rematerialised
    in the backward pass (`jax.checkpoint`): the same arithmetic, in cache (value and gradient
    2.6x faster on CPU at T = 30, B = 128, K = 100 on 3m; docs/benchmarks.md).
    """
    actions = jnp.moveaxis(sample_available_actions(key, avail, num_samples), 0, -2)
    step = jax.checkpoint(_sampled_push_down)
    return jax.lax.map(lambda xs: step(*xs), (actions, agent_q, weights, reference))


def _sampled_push_down(actions: jax.Array, agent_q: jax.Array,
                       weights: MixerWeights, reference: jax.Array) -> jax.Array:
    """The push-down of `joint_push_down` at one time step, given its sampled joint actions:
    actions [B, K, N]; agent_q [B, N, A]; weights for states [B]; reference [B] -> [B]."""
    num_samples = actions.shape[-2]
    # samples on the last axes, [B, K, ...], so that the mixing contractions batch over B with
    # the weights as they are (2x faster on CPU than a leading sample axis)
    qs = jnp.take_along_axis(agent_q[..., None, :, :], actions[..., None],
                             axis=-1)[..., 0]  # [B, K, N]: each sample's Q_i(tau_i, a_i)
    hidden = jax.nn.elu(jnp.einsum("...kn,...ne->...ke", qs, weights.w1)
                        + weights.b1[..., None, :])
    q_tot = jnp.einsum("...ke,...e->...k", hidden, weights.w2) + weights.v[..., None]
    calibrated = jnp.maximum(q_tot, reference[..., None])  # [B, K]
    return jax.nn.logsumexp(calibrated, axis=-1) - math.log(num_samples)


def counterfactual_push_down(agent_q: jax.Array, avail: jax.Array, actions: jax.Array,
                             weights: MixerWeights, reference: jax.Array) -> jax.Array:
    """(1/N) sum_i log mean_{a_i available} exp max(Q_tot(tau, (a_i, a_-i^D)), reference).
    agent_q, avail: [T, B, N, A]; actions [T, B, N]; weights [T, B]; reference [T, B] -> [T, B].
    """
    n = agent_q.shape[-2]
    data_q = jnp.take_along_axis(agent_q, actions[..., None], axis=-1)[..., 0]  # [T, B, N]
    # qs[..., i, a, j] = Q_j(tau_j, a) if j == i else Q_j(tau_j, a_j^D): [T, B, N, A, N]
    own = jnp.swapaxes(agent_q, -1, -2)[..., None, :, :]  # [T, B, 1, A, N]
    others = data_q[..., None, None, :]  # [T, B, 1, 1, N]
    qs = jnp.where(jnp.eye(n, dtype=bool)[:, None, :], own, others)
    lead = reference.ndim
    q_tot = mix_with(jax.tree.map(lambda w: jnp.expand_dims(w, (lead, lead + 1)), weights),
                     qs)  # [T, B, N, A]
    calibrated = jnp.maximum(q_tot, reference[..., None, None])
    return jnp.mean(_log_mean_exp(calibrated, avail, axis=-1), axis=-1)


def cql_regulariser(push_down: jax.Array, q_tot_data: jax.Array, filled: jax.Array) -> jax.Array:
    """Eq. 9 as a masked mean over real transitions: mean(push_down - Q_tot(tau, a^D))."""
    gap = jnp.where(filled, push_down - q_tot_data, 0.0)
    return jnp.sum(gap) / jnp.maximum(jnp.sum(filled), 1)
