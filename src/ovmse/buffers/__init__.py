"""Episode storage: the replay buffer of whole, padded episodes."""

from ovmse.buffers.episode import EpisodeBatch, EpisodeBuffer, add_episodes, init_buffer, \
    sample_episodes

__all__ = ["EpisodeBatch", "EpisodeBuffer", "add_episodes", "init_buffer", "sample_episodes"]
