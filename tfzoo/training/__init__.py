"""Training recipes, callbacks and distribution."""

from tfzoo.training.callbacks import StepCheckpoint, TextSamples, latest_checkpoint, restore_latest
from tfzoo.training.distribute import (
    describe_strategy,
    enable_multi_worker_fit,
    get_strategy,
    global_batch_size,
    needs_static_shapes,
    resolve_precision,
    set_precision,
    split_cpu,
)
from tfzoo.training.recipes import GPTTrainingConfig, train_gpt

__all__ = [
    "GPTTrainingConfig",
    "StepCheckpoint",
    "TextSamples",
    "describe_strategy",
    "enable_multi_worker_fit",
    "get_strategy",
    "global_batch_size",
    "latest_checkpoint",
    "needs_static_shapes",
    "resolve_precision",
    "restore_latest",
    "set_precision",
    "split_cpu",
    "train_gpt",
]
