"""Training recipes and callbacks."""

from tfzoo.training.callbacks import StepCheckpoint, TextSamples, latest_checkpoint, restore_latest
from tfzoo.training.recipes import GPTTrainingConfig, train_gpt

__all__ = [
    "GPTTrainingConfig",
    "StepCheckpoint",
    "TextSamples",
    "latest_checkpoint",
    "restore_latest",
    "train_gpt",
]
