"""Shared test fixtures: toy-sized configs so that every test compiles and runs in seconds."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest

from ovmse import compilation_cache
from ovmse.config import EnvConfig, ExplorationConfig, LearnerConfig, NetworkConfig, TrainConfig

# The tests build the same toy programs many times (each trainer jits its own); JAX's persistent
# compilation cache compiles each once per machine and serves the repeats from disk (the same
# executable, so the same numbers). The CLI's own cache setting is pointed at the same folder.
os.environ[compilation_cache.ENV_VAR] = str(Path(tempfile.gettempdir()) / "ovmse-tests-jax-cache")
compilation_cache.enable()


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


def read_tensorboard(folder: Path) -> dict:
    """Every event file under `folder`, decoded (TFRecord framing, tensorboardX's protos):
    {"scalars": {tag: [(step, value), ...]}, "purge_steps": [step, ...]} in file order."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    scalars, purges = {}, []
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                purges.append(event.step)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return dict(scalars=scalars, purge_steps=purges)
