"""QMIX networks: the shared GRU agent and the monotonic mixer."""

from ovmse.networks.agent import RNNAgent, agent_inputs
from ovmse.networks.mixer import QMixer

__all__ = ["QMixer", "RNNAgent", "agent_inputs"]
