"""Shared test fixtures: toy-sized configs so that every test compiles and runs in seconds."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import jax
import pytest

from ovmse.config import EnvConfig, ExplorationConfig, LearnerConfig, NetworkConfig, TrainConfig

# The tests build the same toy programs many times (each trainer jits its own); JAX's persistent
# compilation cache compiles each once per machine and serves the repeats from disk (the same
# executable, so the same numbers).
jax.config.update("jax_compilation_cache_dir",
                  str(Path(tempfile.gettempdir()) / "ovmse-tests-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def tiny_train_config(**overrides) -> TrainConfig:
    """A QMIX run on 3m small enough for a unit test: 20-step episodes, tiny networks."""
    cfg = TrainConfig(
        env=EnvConfig(map="3m", episode_limit=20),
        network=NetworkConfig(agent_hidden_dim=16, mixer_embed_dim=8, hypernet_hidden_dim=16),
        learner=LearnerConfig(batch_size=8, buffer_size=32, target_update_interval=16,
                              length_buckets=2),
        explore=ExplorationConfig(eps_anneal_steps=500),
        steps=600, num_envs=4, num_seeds=1, test_interval=200, test_episodes=4,
        final_test_episodes=8, checkpoint_interval=200,
    )
    return dataclasses.replace(cfg, **overrides)


@pytest.fixture
def tiny_config() -> TrainConfig:
    return tiny_train_config()
