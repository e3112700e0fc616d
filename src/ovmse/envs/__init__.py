"""Environment adapters."""

from ovmse.envs.smax import MAPS, EnvSpec, SmaxEnv, StepResult, make_env

__all__ = ["MAPS", "EnvSpec", "SmaxEnv", "StepResult", "make_env"]
