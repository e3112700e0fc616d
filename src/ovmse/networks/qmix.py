"""The QMIX networks of one map and their values on a batch of episodes.

Shapes: T = episode limit, B episodes, N agents, A actions. Parameters are a dict
{"agent": ..., "mixer": ...}; the networks below are parameter-free module definitions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse.buffers.episode import EpisodeBatch
from ovmse.config import NetworkConfig
from ovmse.envs import EnvSpec
from ovmse.networks.agent import RNNAgent, agent_inputs
from ovmse.networks.mixer import QMixer


class QmixNetworks(NamedTuple):
    """The (parameter-free) module definitions; parameters live in LearnerState."""

    agent: RNNAgent
    mixer: QMixer
    spec: EnvSpec


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


def q_tot_taken(nets: QmixNetworks, params: dict, batch: EpisodeBatch) -> jax.Array:
    """Q_tot(tau_t, a_t) of a network at the batch's actions: [T, B] (padding included)."""
    q = agent_q_values(nets, params["agent"], batch)
    return nets.mixer.apply(params["mixer"], take(q[:-1], batch.actions), batch.state[:-1])
