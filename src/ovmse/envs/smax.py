"""SMAX (jaxmarl 0.2.0) with the heuristic enemy, seen as arrays instead of agent-keyed dicts.

Shapes: N allies, O per-agent observation size, S global-state size, A actions per agent.
  obs   [N, O] float32   per-agent observation (SMAX "unit_list")
  state [S]    float32   global state for the mixer: SMAX's `world_state`, with two features
                         put on the scale SMAX's own observations use (see _normalised_state)
  avail [N, A] bool      available actions; "stop" (index 4) is always available
Rewards are on the SMAC scale: SMAX's per-step reward (fraction of enemy health removed, plus 1 on
a win) times `reward_scale` (10 by default), so an episode return lies in [0, 20] as in SMAC and in
the paper's figures (shared/REFERENCE.md, "SMAX").
An episode ends when a team is wiped out (`terminated`) or at the episode limit (`truncated`);
`won` is true when every enemy is dead and at least one ally lives (SMAX's win-bonus rule).
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse.errors import UserError


def _import_smax_quietly():
    """Import SMAX without the notes jaxmarl prints on stdout when imported.

    jaxmarl 0.2.0 also resets sys.stdout/sys.stderr to the interpreter's originals while importing
    (its mabrax module), so the silencing is done on file descriptor 1 and the streams in use
    before the import are put back afterwards.
    """
    streams = sys.stdout, sys.stderr
    streams[0].flush()
    saved_fd = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            import jaxmarl.environments.smax as smax
            sys.stdout.flush()
    finally:
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout, sys.stderr = streams
    return smax


_smax = _import_smax_quietly()
HeuristicEnemySMAX = _smax.HeuristicEnemySMAX
map_name_to_scenario = _smax.map_name_to_scenario
MAP_NAME_TO_SCENARIO = _smax.smax_env.MAP_NAME_TO_SCENARIO

MAPS = tuple(MAP_NAME_TO_SCENARIO)
"""Every map name SMAX knows."""

SMAX_EPISODE_LIMIT = 100
"""SMAX's `max_steps` default, the same on every map (SC2's limits differ per map)."""


class EnvSpec(NamedTuple):
    """Sizes of one map and the settings that shape its numbers, fixed for its whole lifetime.
    Datasets and checkpoints store it; data is only used by runs whose spec equals it."""

    map_name: str
    num_agents: int
    obs_dim: int
    state_dim: int
    num_actions: int
    episode_limit: int
    reward_scale: float = 10.0
    """Factor on SMAX's reward. Files written before it was recorded were all made at 10, the
    project's only value then, hence the default."""


class StepResult(NamedTuple):
    """What the agents see after a reset or a step (rewards etc. are zero after a reset).

    obs [N, O], state [S], avail [N, A] bool, reward [] (SMAC scale), terminated [], truncated [],
    won [] (bool).
    """

    obs: jax.Array
    state: jax.Array
    avail: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    won: jax.Array


class SmaxEnv:
    """Array view of `HeuristicEnemySMAX`; `reset` and `step` are pure and vmap/jit-friendly."""

    def __init__(self, map_name: str, episode_limit: int = SMAX_EPISODE_LIMIT,
                 reward_scale: float = 10.0):
        if map_name not in MAP_NAME_TO_SCENARIO:
            raise UserError(
                f"unknown map {map_name!r}; known SMAX maps: {', '.join(MAPS)}")
        if episode_limit < 1:
            raise UserError(f"episode_limit must be >= 1, got {episode_limit}")
        self._env = HeuristicEnemySMAX(
            scenario=map_name_to_scenario(map_name), max_steps=episode_limit)
        self._agents = self._env.agents
        self._unit_features = len(self._env.own_features)
        self.reward_scale = reward_scale
        self.spec = EnvSpec(
            map_name=map_name,
            num_agents=self._env.num_allies,
            obs_dim=int(self._env.observation_spaces[self._agents[0]].shape[0]),
            state_dim=int(self._env.state_size),
            num_actions=int(self._env.action_spaces[self._agents[0]].n),
            episode_limit=episode_limit,
            reward_scale=float(reward_scale),
        )

    def _normalised_state(self, world_state: jax.Array, unit_types: jax.Array) -> jax.Array:
        """SMAX's world state is, per unit, [health, x, y, weapon cooldown, one-hot type], then the
        teams and types of all units. Two of those are raw: positions in [0, 32] (map units) and
        the weapon cooldown, which SMAX lowers by the elapsed time on every step without a shot,
        so it grows without bound below zero (about -50 after 100 steps of a unit that never
        fires). Unbounded mixer inputs make the hypernetworks' outputs, and with them Q_tot,
        diverge. As SMAX does for observations: x / map width, y / map height, and
        clip(cooldown / the unit type's cooldown, 0, 1). Dead units stay all-zero.
        """
        smax = self._env._env
        units = smax.num_agents
        per_unit = world_state[: units * self._unit_features].reshape(units, -1)
        scale = jnp.array([smax.map_width, smax.map_height], world_state.dtype)
        cooldown = jnp.clip(per_unit[:, 3] / smax.unit_type_weapon_cooldowns[unit_types], 0, 1)
        per_unit = per_unit.at[:, 1:3].divide(scale).at[:, 3].set(cooldown)
        return jnp.concatenate([per_unit.reshape(-1), world_state[units * self._unit_features:]])

    def _observe(self, obs_dict, env_state) -> tuple[jax.Array, jax.Array, jax.Array]:
        obs = jnp.stack([obs_dict[a] for a in self._agents])
        avail_dict = self._env.get_avail_actions(env_state)
        avail = jnp.stack([avail_dict[a] for a in self._agents]).astype(bool)
        state = self._normalised_state(obs_dict["world_state"], env_state.state.unit_types)
        return obs, state, avail

    def reset(self, key: jax.Array):
        """Start an episode. Returns (env_state, StepResult)."""
        obs_dict, env_state = self._env.reset(key)
        obs, state, avail = self._observe(obs_dict, env_state)
        false = jnp.zeros((), bool)
        return env_state, StepResult(obs, state, avail, jnp.zeros(()), false, false, false)

    def step(self, key: jax.Array, env_state, actions: jax.Array):
        """Apply joint action `actions` [N] (int). Returns (env_state, StepResult).

        No automatic reset: the caller decides what to do once the episode has ended.
        """
        action_dict = {a: actions[i] for i, a in enumerate(self._agents)}
        obs_dict, env_state, rewards, _, _ = self._env.step_env(key, env_state, action_dict)
        obs, state, avail = self._observe(obs_dict, env_state)
        alive = env_state.state.unit_alive
        n = self.spec.num_agents
        allies_dead = ~jnp.any(alive[:n])
        enemies_dead = ~jnp.any(alive[n:])
        terminated = allies_dead | enemies_dead
        # SMAX tests its step limit before counting the step (one step late); count it here.
        truncated = (env_state.state.step >= self.spec.episode_limit) & ~terminated
        won = enemies_dead & ~allies_dead
        reward = rewards[self._agents[0]] * self.reward_scale
        return env_state, StepResult(obs, state, avail, reward, terminated, truncated, won)


def make_env(map_name: str, episode_limit: int = SMAX_EPISODE_LIMIT,
             reward_scale: float = 10.0) -> SmaxEnv:
    """The SMAX adapter for `map_name`; raises UserError listing the known maps if unknown."""
    return SmaxEnv(map_name, episode_limit, reward_scale)
