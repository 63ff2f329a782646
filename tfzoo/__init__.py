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


YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"


def _limit_ynn_fusions_to_dots():
    """Keeps XLA:CPU's YNNPACK fusions to single matmuls, unless the user set them.

    TensorFlow 2.21's XLA also hands reductions to YNNPACK, and the builder of such a
    fusion is not thread-safe: two concurrent first runs of one compiled function (the
    XLA-compiled loss and perplexity of one Keras step, say) can crash the process with
    a segmentation fault (seen in a resumed training run; tests/test_losses.py
    reproduces it). Single matmuls use another builder and stay (they make greedy
    decoding at batch 8 faster). Matmul + bias fusions (`dot`) were measured too: no
    clear gain on this 2-core machine (-10% to +7% by batch size, within its noise), so
    left out. XLA reads the flag at its first compilation, so this works even after
    TensorFlow was imported.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_experimental_ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + YNN_FUSION_FLAG).strip()


_limit_ynn_fusions_to_dots()

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
