"""Training: the paper's losses and the training loop with checkpoints and exact resume."""
from .losses import CEDiceLoss, DeepSupervisionLoss, SoftDiceLoss
from ..loading import load_trained_model, resolve_device
from .trainer import TrainConfig, Trainer, TrainingError

__all__ = [
    "CEDiceLoss",
    "DeepSupervisionLoss",
    "SoftDiceLoss",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "load_trained_model",
    "resolve_device",
]
