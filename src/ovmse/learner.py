"""The QMIX learner: Q-values over sampled episodes, the TD loss (eq. 8), optionally plus alpha
times the conservative regulariser (eq. 9-10, cql.py), and one Adam update.

Shapes: T = episode limit, B episodes, N agents, A actions. Parameters are a dict
{"agent": ..., "mixer": ...}; the target network is a second copy of that dict.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ovmse.buffers.episode import EpisodeBatch
from ovmse.config import LearnerConfig
from ovmse.cql import (counterfactual_push_down, cql_regulariser, joint_push_down,
                       returns_to_go)
from ovmse.exploration import greedy_actions
from ovmse.losses import masked_mean, masked_mse, td_lambda_targets
from ovmse.networks.mixer import MixerWeights, mix_with
from ovmse.networks.qmix import QmixNetworks, agent_q_values, init_params, take
from ovmse.ovm import memory_values, ovm_term
from ovmse.schedules import Schedules


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


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """Adam with global gradient-norm clipping (PyMARL2: lr 1e-3, clip 10)."""
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), optax.adam(cfg.lr))


def init_learner(key: jax.Array, nets: QmixNetworks, cfg: LearnerConfig) -> LearnerState:
    params = init_params(key, nets)
    return LearnerState(params, params, make_optimizer(cfg).init(params),
                        jnp.zeros((), jnp.int32))


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


class BatchValues(NamedTuple):
    """Every network's values on one batch, computed once per update (`batch_values`); the loss
    terms read them. T steps, B episodes, N agents, A actions."""

    q_online: jax.Array  # [T+1, B, N, A] Q_i of the online agents
    weights: MixerWeights  # the online mixer's weights at s_0 .. s_{T-1}
    q_tot: jax.Array  # [T, B] Q_tot(tau_t, a_t), online
    target: jax.Array  # [T, B] the TD(lambda) target y of eq. 8, gradient stopped
    memory_q: jax.Array | None  # [T, B] Qbar_offline(tau_t, a_t) of the frozen memory (OVM)


LossTerm = Callable[[BatchValues, EpisodeBatch, LearnerConfig, "jax.Array | None", Schedules],
                    tuple[jax.Array, dict]]
"""One summand of the loss: (values, batch, cfg, key, schedules) -> (its contribution to the
loss, metrics it sets by UpdateMetrics field name)."""


def batch_values(params: dict, target_params: dict, nets: QmixNetworks, batch: EpisodeBatch,
                 cfg: LearnerConfig, memory: OfflineMemory | None = None) -> BatchValues:
    """The online, target and (with OVM or action proposal) frozen offline networks on a
    batch, each unrolled once. ValueError if OVM or action proposal has no memory."""
    q_online = agent_q_values(nets, params["agent"], batch)
    q_target = agent_q_values(nets, target_params["agent"], batch)
    weights = nets.mixer.apply(params["mixer"], batch.state[:-1], method="hypernet")
    q_tot = mix_with(weights, take(q_online[:-1], batch.actions))
    if (cfg.memory.use_memory or cfg.action_proposal) and memory is None:
        raise ValueError("OVM and action proposal need the offline memory")
    q_proposal = (agent_q_values(nets, memory.policy_agent, batch) if cfg.action_proposal
                  else None)
    target = jax.lax.stop_gradient(td_targets(nets, target_params, q_online, q_target, batch,
                                              cfg, q_proposal))
    memory_q = (memory_values(nets, memory.target_params, batch) if cfg.memory.use_memory
                else None)
    return BatchValues(q_online, weights, q_tot, target, memory_q)


def td_term(values: BatchValues, batch: EpisodeBatch, cfg: LearnerConfig, key,
            schedules: Schedules) -> tuple[jax.Array, dict]:
    """Eq. 8: mean over real transitions of (Q_tot(tau_t, a_t) - y_t)^2."""
    td_loss = masked_mse(values.q_tot, values.target, batch.filled)
    return td_loss, dict(td_loss=td_loss)


def conservative_term(values: BatchValues, batch: EpisodeBatch, cfg: LearnerConfig, key,
                      schedules: Schedules) -> tuple[jax.Array, dict]:
    """alpha times the regulariser of eq. 9 (eq. 10; Cal-QL's when calibrated). `key` draws
    the joint estimator's samples: ValueError without one."""
    if key is None and cfg.cql.estimator == "joint":
        raise ValueError("the joint CQL estimator samples actions: pass a key")
    cql = cql_term(values.q_online, values.weights, values.q_tot, batch, cfg, key)
    return cfg.cql.alpha * cql, dict(cql=cql)


def loss_terms(cfg: LearnerConfig) -> tuple[LossTerm, ...]:
    """The summands of the loss, in the order they are added: the value term (TD, eq. 8, or
    OVM, eq. 5, which contains it), then CQL when cfg.cql.alpha > 0."""
    value = ovm_term if cfg.memory.use_memory else td_term
    return (value, conservative_term) if cfg.cql.alpha > 0 else (value,)


NO_SCHEDULES = Schedules(epsilon=jnp.zeros(()), lam=jnp.zeros(()), learn=jnp.ones((), bool))
"""The settings of an update without schedules (offline pre-training): lam = 0."""


def qmix_loss(params: dict, target_params: dict, nets: QmixNetworks, batch: EpisodeBatch,
              cfg: LearnerConfig, key: jax.Array | None = None,
              memory: OfflineMemory | None = None, schedules: Schedules | None = None,
              terms: tuple[LossTerm, ...] | None = None) -> tuple[jax.Array, UpdateMetrics]:
    """The loss of one update: the sum of `terms` (default `loss_terms(cfg)`) on the batch's
    values:
      TD loss (eq. 8): mean over real transitions of (Q_tot(tau_t, a_t) - y_t)^2, y the
        TD(lambda) target from the target network (td_lambda = 0 is eq. 8 exactly), with the
        action-proposal bootstrap when cfg.action_proposal;
      or, when cfg.memory.use_memory, the OVM loss of eq. 5 with weight schedules.lam (eq. 6),
        its memory Qbar_offline(tau, a) from memory.target_params (no gradient reaches it);
      plus cfg.cql.alpha times the regulariser of eq. 9 (eq. 10; `key` draws its samples).
    A method's own terms (methods.Method.terms) set metrics by UpdateMetrics field name.
    Returns (loss, metrics)."""
    values = batch_values(params, target_params, nets, batch, cfg, memory)
    schedules = NO_SCHEDULES if schedules is None else schedules
    zero = jnp.zeros(())
    metrics = dict(cql=zero, memory_q=zero, memory_wins=zero)
    loss = None
    for term in loss_terms(cfg) if terms is None else terms:
        part, term_metrics = term(values, batch, cfg, key, schedules)
        loss = part if loss is None else loss + part
        metrics.update(term_metrics)
    mask = batch.filled
    return loss, UpdateMetrics(
        loss=loss, td_error_abs=masked_mean(jnp.abs(values.q_tot - values.target), mask),
        q_taken=masked_mean(values.q_tot, mask), target=masked_mean(values.target, mask),
        grad_norm=zero, **metrics)


def learner_update(state: LearnerState, batch: EpisodeBatch, nets: QmixNetworks,
                   cfg: LearnerConfig, key: jax.Array | None = None,
                   memory: OfflineMemory | None = None, schedules: Schedules | None = None,
                   terms: tuple[LossTerm, ...] | None = None
                   ) -> tuple[LearnerState, UpdateMetrics]:
    """One gradient step of `qmix_loss` on a batch of episodes."""
    grads, metrics = jax.grad(qmix_loss, has_aux=True)(
        state.params, state.target_params, nets, batch, cfg, key, memory, schedules, terms)
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metrics._replace(grad_norm=optax.tree.norm(grads))
    return LearnerState(params, state.target_params, opt_state, state.updates + 1), metrics


def update_target(state: LearnerState, enabled: jax.Array | bool = True) -> LearnerState:
    """Hard copy of the online parameters into the target network when `enabled`."""
    target = jax.tree.map(lambda online, old: jnp.where(enabled, online, old),
                          state.params, state.target_params)
    return state._replace(target_params=target)
