"""Built-in simulator, real-task presets and the public dataset registry."""

from .simulate import SimulationConfig, simulate

__all__ = ["SimulationConfig", "simulate"]
