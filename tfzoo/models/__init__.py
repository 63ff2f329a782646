"""Model families, one per file."""

from tfzoo.models.gpt import GPT
from tfzoo.models.presets import GPT_PRESETS

__all__ = ["GPT", "GPT_PRESETS"]
