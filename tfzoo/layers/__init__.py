"""tfzoo's building blocks: attention, positions, and the Transformer block."""

from tfzoo.layers.attention import (
    MultiHeadAttention,
    cache_writes_in_place,
    causal_mask,
    on_tokens,
    pack_tokens,
    unpack_tokens,
)
from tfzoo.layers.normalization import fused_layer_normalization
from tfzoo.layers.positional import PositionalEncoding, sinusoidal_encoding
from tfzoo.layers.transformer import TransformerBlock

__all__ = [
    "cache_writes_in_place",
    "MultiHeadAttention",
    "PositionalEncoding",
    "TransformerBlock",
    "causal_mask",
    "fused_layer_normalization",
    "on_tokens",
    "pack_tokens",
    "unpack_tokens",
    "sinusoidal_encoding",
]
