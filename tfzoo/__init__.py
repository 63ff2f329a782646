"""tfzoo: readable Transformers for Keras 3 / TensorFlow.

The public API, in the order the architecture builds up:

- `tfzoo.layers`: `MultiHeadAttention`, `PositionalEncoding`, `TransformerBlock`.
- `tfzoo.models`: `GPT` (causal language model), `BertEncoder` and its heads.
- `tfzoo.convert`: Hugging Face checkpoints (safetensors) into tfzoo models.
- `tfzoo.text`: in-graph tokenizers and vocabulary training.
- `tfzoo.data`: corpora and `tf.data` pipelines.
- `tfzoo.generation`: samplers and the cached decode loop.
- `tfzoo.cpu_memory_is_pooled()`: whether TensorFlow pools CPU memory, as tfzoo asks on import.
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
    left out. For the training step, Eigen dots (the flag empty) and XNNPACK ones were
    no faster either (benchmarks/RESULTS.md, 2026-12-04). XLA reads the flag at its
    first compilation, so this works even after TensorFlow was imported.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_experimental_ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + YNN_FUSION_FLAG).strip()


_limit_ynn_fusions_to_dots()


POOLED_CPU_MEMORY_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"


def _pool_cpu_memory():
    """Asks TensorFlow for its pooling (BFC) CPU allocator, unless the user chose.

    TensorFlow's default CPU allocator gives each large buffer back to the operating
    system when it is freed, so every training step maps its activations afresh and the
    kernel zero-fills them page by page: for the tiny GPT (batch 16 x 256) about 170,000
    page faults and 0.6-0.9 s of system time a step on 2 cores. The BFC allocator keeps
    freed memory for the next step; training ran 17-19% faster with it, with or without
    XLA (benchmarks/RESULTS.md has the measurements).

    What changes besides: the process keeps its peak memory until it exits (a long-lived
    server too); TensorFlow caps the pool at 64 GiB unless `TF_CPU_BFC_MEM_LIMIT_IN_MB`
    says otherwise; and child processes inherit the variable. TensorFlow reads it when
    it starts its runtime (the first op or tensor, or a `tf.config` call that lists
    logical devices), so importing tfzoo after `import tensorflow` is fine, after an op
    is too late; `cpu_memory_is_pooled()` says whether it took. Set the variable to
    "false" to keep TensorFlow's default. Where TensorFlow turns oneDNN on (by default
    on CPUs with AVX512-VNNI, AVX512-BF16 or AMX, or with `TF_ENABLE_ONEDNN_OPTS=1`), its
    oneDNN CPU allocator pools memory already, whatever this variable says (measured on
    an AVX512-BF16 EPYC, tests/test_cpu_memory.py).
    """
    os.environ.setdefault(POOLED_CPU_MEMORY_VARIABLE, "true")


_pool_cpu_memory()


def cpu_memory_is_pooled():
    """Whether TensorFlow's CPU memory comes from its pooling (BFC) allocator.

    False when TensorFlow had started its runtime before tfzoo was imported, or when the
    user set `TF_CPU_ALLOCATOR_USE_BFC=false`, unless oneDNN's allocator, which pools as
    well, is in use (see `_pool_cpu_memory`). It tells by the allocator's statistics,
    which only the pool keeps (unless something turned on TensorFlow's CPU allocator
    statistics, as Grappler's peak-memory tools do: then it says True either way). It
    starts TensorFlow's runtime, as any op would: configure devices and threads first.

    Example:
    >>> import tfzoo
    >>> isinstance(tfzoo.cpu_memory_is_pooled(), bool)
    True
    """
    import tensorflow as tf

    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:  # "Allocator stats not available": TensorFlow's default allocator
        return False
    return True

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
    "cpu_memory_is_pooled",
    "layers",
    "__version__",
]
