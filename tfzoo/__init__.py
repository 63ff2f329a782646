"""tfzoo: readable Transformers for Keras 3 / TensorFlow.

The public API, in the order the architecture builds up:

- `tfzoo.layers`: `MultiHeadAttention`, `PositionalEncoding`, `TransformerBlock`.
- `tfzoo.models`: `GPT` (causal language model), `BertEncoder` and its heads.
- `tfzoo.convert`: Hugging Face checkpoints (safetensors) into tfzoo models.
- `tfzoo.text`: in-graph tokenizers and vocabulary training.
- `tfzoo.data`: corpora and `tf.data` pipelines.
- `tfzoo.generation`: samplers and the cached decode loop.
"""

import os

# tfzoo is a TensorFlow zoo: pick Keras' TensorFlow backend unless the user chose.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfzoo import layers  # noqa: E402
from tfzoo.layers import MultiHeadAttention, PositionalEncoding, TransformerBlock  # noqa: E402
from tfzoo.models import (  # noqa: E402
    GPT,
    BertClassifier,
    BertEncoder,
    BertMaskedLM,
    BertSpanQA,
    BertTokenClassifier,
)

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "BertClassifier",
    "BertEncoder",
    "BertMaskedLM",
    "BertSpanQA",
    "BertTokenClassifier",
    "MultiHeadAttention",
    "PositionalEncoding",
    "TransformerBlock",
    "layers",
    "__version__",
]
