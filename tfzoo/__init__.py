"""tfzoo: readable Transformers for Keras 3 / TensorFlow.

The public API, in the order the architecture builds up:

- `tfzoo.layers`: `MultiHeadAttention`, `PositionalEncoding`, `TransformerBlock`.
- `tfzoo.models`: `GPT` (causal language model).
- `tfzoo.text`: in-graph tokenizers and vocabulary training.
- `tfzoo.data`: corpora and `tf.data` pipelines.
- `tfzoo.generation`: samplers and the cached decode loop.
"""

import os
import sys

if os.path.basename(sys.argv[0]) == "tfzoo":
    # The command line: keep TensorFlow's C++ start-up messages from burying the output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# tfzoo is a TensorFlow zoo: pick Keras' TensorFlow backend unless the user chose.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfzoo import layers  # noqa: E402
from tfzoo.layers import MultiHeadAttention, PositionalEncoding, TransformerBlock  # noqa: E402
from tfzoo.models import GPT  # noqa: E402

__version__ = "0.1.0"

__all__ = ["GPT", "MultiHeadAttention", "PositionalEncoding", "TransformerBlock", "layers", "__version__"]
