"""Checkpoint converters: Hugging Face (safetensors) -> tfzoo."""

from tfzoo.convert.huggingface import load_bert_checkpoint, load_gpt2_checkpoint

__all__ = ["load_bert_checkpoint", "load_gpt2_checkpoint"]
