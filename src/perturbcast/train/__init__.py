"""Training: a Lightning module around any set model's loss, and the trainer wiring."""

from .lightning import SetTrainingModule, TrainConfig, train_network

__all__ = ["SetTrainingModule", "TrainConfig", "train_network"]
