"""The QMIX learner: Q-values over sampled episodes, the TD loss (eq. 8), optionally plus alpha
times the conservative regulariser (eq. 9-10, cql.py), and one Adam update.

Shapes: T = episode limit, B episodes, N agents, A actions. Parameters are a dict
{"agent": ..., "mixer": ...}; the target network is a second copy of that dict.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ovmse.buffers.episode import EpisodeBatch
from ovmse.config import LearnerConfig, NetworkConfig
from ovmse.envs import EnvSpec
from ovmse.exploration import greedy_actions
from ovmse.cql import (counterfactual_push_down, cql_regulariser, joint_push_down,
                       returns_to_go)
from ovmse.losses import masked_mse, ovm_loss, td_lambda_targets
from ovmse.networks import QMixer, RNNAgent, agent_inputs
from ovmse.networks.mixer import MixerWeights, mix_with


class QmixNetworks(NamedTuple):
    """The (parameter-free) module definitions; parameters live in LearnerState."""

    agent: RNNAgent
    mixer: QMixer
    spec: EnvSpec


class LearnerState(NamedTuple):
    params: dict
    target_params: dict
    opt_state: optax.OptState
    updates: jax.Array  # int32 [], gradient steps taken


class OfflineMemory(NamedTuple):
    """What the online phase keeps, frozen, from pre-training."""

    target_params: dict  # the offline target network {"agent", "mixer"}: OVM's Qbar_offline
    policy_agent: dict  # the offline online agent network: the action-proposal policy


class UpdateMetrics(NamedTuple):
    loss: jax.Array  # the minimised loss: TD (or OVM) loss + alpha * cql
    td_loss: jax.Array  # mean (Q_tot - y)^2
    cql: jax.Array  # the regulariser of eq. 9 (0 when off)
    memory_q: jax.Array  # mean Qbar_offline(tau, a) (0 without OVM)
    memory_wins: jax.Array  # share of transitions where Qbar_offline > y (0 without OVM)
    td_error_abs: jax.Array
    q_taken: jax.Array  # mean Q_tot(tau, a) over real transitions
    target: jax.Array
    grad_norm: jax.Array


def make_networks(spec: EnvSpec, cfg: NetworkConfig) -> QmixNetworks:
    return QmixNetworks(
        agent=RNNAgent(cfg.agent_hidden_dim, spec.num_actions),
        mixer=QMixer(spec.num_agents, cfg.mixer_embed_dim, cfg.hypernet_hidden_dim),
        spec=spec,
    )


def init_params(key: jax.Array, nets: QmixNetworks) -> dict:
    spec = nets.spec
    key_agent, key_mixer = jax.random.split(key)
    input_dim = spec.obs_dim + spec.num_actions + spec.num_agents
    agent_params = nets.agent.init(key_agent, nets.agent.initial_hidden(1),
                                   jnp.zeros((1, 1, input_dim)))
    mixer_params = nets.mixer.init(key_mixer, jnp.zeros((spec.num_agents,)),
                                   jnp.zeros((spec.state_dim,)))
    return {"agent": agent_params, "mixer": mixer_params}


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """Adam with global gradient-norm clipping (PyMARL2: lr 1e-3, clip 10)."""
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), optax.adam(cfg.lr))


def init_learner(key: jax.Array, nets: QmixNetworks, cfg: LearnerConfig) -> LearnerState:
    params = init_params(key, nets)
    return LearnerState(params, params, make_optimizer(cfg).init(params),
                        jnp.zeros((), jnp.int32))


def agent_q_values(nets: QmixNetworks, agent_params, batch: EpisodeBatch) -> jax.Array:
    """Q_i(tau_{i,t}, .) for every step of every episode: [T+1, B, N, A].

    The GRU starts from zeros at t = 0 and sees o_t, a_{t-1} (none at t = 0) and the agent id.
    """
    t1, b, n, _ = batch.obs.shape
    last_action = jnp.concatenate([jnp.full((1, b, n), -1, jnp.int32), batch.actions], axis=0)
    inputs = agent_inputs(batch.obs, last_action, nets.spec.num_actions)
    _, q = nets.agent.apply(agent_params, nets.agent.initial_hidden(b * n),
                            inputs.reshape(t1, b * n, -1))
    return q.reshape(t1, b, n, -1)


def take(q: jax.Array, actions: jax.Array) -> jax.Array:
    """Q_i(tau_i, a_i) for the given actions: q [..., N, A], actions [..., N] -> [..., N]."""
    return jnp.take_along_axis(q, actions[..., None], axis=-1)[..., 0]


def td_targets(nets: QmixNetworks, target_params: dict, q_online: jax.Array,
               q_target: jax.Array, batch: EpisodeBatch, cfg: LearnerConfig,
               q_proposal: jax.Array | None = None) -> jax.Array:
    """The TD(lambda) target of eq. 8 for every transition: [T, B] (not stopped).

    a*_{t+1} = argmax over available actions of the online Q (double Q) or the target Q, and
    Qbar_tot(tau_{t+1}, a*_{t+1}) = target mixer of the target agents' Q at a*, state s_{t+1}.
    With `q_proposal` (action proposal, IBRL), the frozen offline policy proposes its greedy
    action too, and the target bootstraps from whichever of the two Qbar_tot values is higher.
    q_online, q_target, q_proposal: [T+1, B, N, A].
    """
    chooser = q_online if cfg.double_q else q_target

    def value_of(q_choice):
        best = greedy_actions(jax.lax.stop_gradient(q_choice[1:]), batch.avail[1:])
        return nets.mixer.apply(target_params["mixer"], take(q_target[1:], best),
                                batch.state[1:])

    next_q = value_of(chooser)
    if q_proposal is not None:
        next_q = jnp.maximum(next_q, value_of(q_proposal))
    return td_lambda_targets(batch.rewards, batch.terminated, batch.filled, next_q,
                             cfg.gamma, cfg.td_lambda)


def cql_term(q_online: jax.Array, weights: MixerWeights, q_tot: jax.Array,
             batch: EpisodeBatch, cfg: LearnerConfig, key: jax.Array) -> jax.Array:
    """Eq. 9 (Cal-QL-calibrated when cfg.cql.calibrated) on a batch: a scalar.
    q_online [T+1, B, N, A]; weights of the online mixer at s_0..s_{T-1}; q_tot [T, B]."""
    c = cfg.cql
    if c.calibrated:
        reference = returns_to_go(batch.rewards, batch.filled, cfg.gamma)
    else:
        reference = jnp.full(q_tot.shape, -jnp.inf)
    avail = batch.avail[:-1]
    if c.estimator == "joint":
        push_down = joint_push_down(key, q_online[:-1], avail, weights, reference,
                                    c.num_samples)
    else:
        push_down = counterfactual_push_down(q_online[:-1], avail, batch.actions, weights,
                                             reference)
    return cql_regulariser(push_down, q_tot, batch.filled)


def qmix_loss(params: dict, target_params: dict, nets: QmixNetworks, batch: EpisodeBatch,
              cfg: LearnerConfig, key: jax.Array | None = None,
              memory: OfflineMemory | None = None,
              lam: jax.Array | float = 0.0) -> tuple[jax.Array, UpdateMetrics]:
    """The loss of one update, with the switches of `cfg`:
      TD loss (eq. 8): mean over real transitions of (Q_tot(tau_t, a_t) - y_t)^2, y the
        TD(lambda) target from the target network (td_lambda = 0 is eq. 8 exactly), with the
        action-proposal bootstrap when cfg.action_proposal;
      or, when cfg.memory.use_memory, the OVM loss of eq. 5 with weight `lam` (eq. 6), its memory
        Qbar_offline(tau, a) from memory.target_params (no gradient reaches it);
      plus cfg.cql.alpha times the regulariser of eq. 9 (eq. 10; `key` draws its samples).
    Returns (loss, metrics)."""
    q_online = agent_q_values(nets, params["agent"], batch)
    q_target = agent_q_values(nets, target_params["agent"], batch)
    weights = nets.mixer.apply(params["mixer"], batch.state[:-1], method="hypernet")
    q_tot = mix_with(weights, take(q_online[:-1], batch.actions))
    uses_memory = cfg.memory.use_memory or cfg.action_proposal
    if uses_memory and memory is None:
        raise ValueError("OVM and action proposal need the offline memory")
    q_proposal = (agent_q_values(nets, memory.policy_agent, batch) if cfg.action_proposal
                  else None)
    target = jax.lax.stop_gradient(td_targets(nets, target_params, q_online, q_target, batch,
                                              cfg, q_proposal))
    td_loss = masked_mse(q_tot, target, batch.filled)
    count = jnp.maximum(jnp.sum(batch.filled), 1)

    def masked_mean(x):
        return jnp.sum(jnp.where(batch.filled, x, 0.0)) / count

    if cfg.memory.use_memory:
        memory_agent_q = agent_q_values(nets, memory.target_params["agent"], batch)
        memory_q = jax.lax.stop_gradient(nets.mixer.apply(
            memory.target_params["mixer"], take(memory_agent_q[:-1], batch.actions),
            batch.state[:-1]))
        value_loss = ovm_loss(q_tot, target, memory_q, lam, batch.filled)
        memory_metrics = (masked_mean(memory_q), masked_mean((memory_q > target) * 1.0))
    else:
        value_loss = td_loss
        memory_metrics = (jnp.zeros(()), jnp.zeros(()))
    if cfg.cql.alpha > 0:
        if key is None and cfg.cql.estimator == "joint":
            raise ValueError("the joint CQL estimator samples actions: pass a key")
        cql = cql_term(q_online, weights, q_tot, batch, cfg, key)
    else:
        cql = jnp.zeros(())
    loss = value_loss + cfg.cql.alpha * cql
    metrics = UpdateMetrics(loss=loss, td_loss=td_loss, cql=cql, memory_q=memory_metrics[0],
                            memory_wins=memory_metrics[1],
                            td_error_abs=masked_mean(jnp.abs(q_tot - target)),
                            q_taken=masked_mean(q_tot), target=masked_mean(target),
                            grad_norm=jnp.zeros(()))
    return loss, metrics


def learner_update(state: LearnerState, batch: EpisodeBatch, nets: QmixNetworks,
                   cfg: LearnerConfig, key: jax.Array | None = None,
                   memory: OfflineMemory | None = None,
                   lam: jax.Array | float = 0.0) -> tuple[LearnerState, UpdateMetrics]:
    """One gradient step of `qmix_loss` on a batch of episodes."""
    grads, metrics = jax.grad(qmix_loss, has_aux=True)(
        state.params, state.target_params, nets, batch, cfg, key, memory, lam)
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metrics._replace(grad_norm=optax.tree.norm(grads))
    return LearnerState(params, state.target_params, opt_state, state.updates + 1), metrics


def update_target(state: LearnerState, enabled: jax.Array | bool = True) -> LearnerState:
    """Hard copy of the online parameters into the target network when `enabled`."""
    target = jax.tree.map(lambda online, old: jnp.where(enabled, online, old),
                          state.params, state.target_params)
    return state._replace(target_params=target)
