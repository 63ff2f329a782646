"""tfzoo's building blocks: attention, positions, and the Transformer block."""

from tfzoo.layers.attention import MultiHeadAttention, causal_mask
from tfzoo.layers.positional import PositionalEncoding, sinusoidal_encoding
from tfzoo.layers.transformer import TransformerBlock

__all__ = [
    "MultiHeadAttention",
    "PositionalEncoding",
    "TransformerBlock",
    "causal_mask",
    "sinusoidal_encoding",
]
