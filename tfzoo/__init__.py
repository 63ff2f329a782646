"""tfzoo: readable Transformers for Keras 3 / TensorFlow.

The public API, in the order the architecture builds up:

- `tfzoo.layers`: `MultiHeadAttention`, `PositionalEncoding`, `TransformerBlock`.
- `tfzoo.models`: `GPT` (causal language model).
- `tfzoo.text`: in-graph tokenizers and vocabulary training.
- `tfzoo.data`: corpora and `tf.data` pipelines.
- `tfzoo.generation`: samplers and the cached decode loop.
"""

import os

# tfzoo is a TensorFlow zoo: pick Keras' TensorFlow backend unless the user chose.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfzoo import layers  # noqa: E402
from tfzoo.layers import MultiHeadAttention, PositionalEncoding, TransformerBlock  # noqa: E402
from tfzoo.models import GPT  # noqa: E402

__version__ = "0.1.0"

__all__ = ["GPT", "MultiHeadAttention", "PositionalEncoding", "TransformerBlock", "layers", "__version__"]
