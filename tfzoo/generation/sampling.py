"""Choosing the next token from logits: greedy, temperature, top-k and top-p.

Written with plain TensorFlow ops so that they run inside a compiled (XLA) decode
loop, in a SavedModel and in TFLite.
"""

import tensorflow as tf

from tfzoo.validation import is_integer


def validate_sampling(max_new_tokens, temperature, top_k, top_p):
    """Raises a `ValueError` naming the first sampling argument that is out of range.

    Returns `(max_new_tokens, temperature, top_k, top_p)` as Python numbers (NumPy
    integers become ints), so that they key compiled functions the same way.
    """
    if not is_integer(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"`max_new_tokens` must be an integer >= 0. Received: max_new_tokens={max_new_tokens!r}")
    if temperature is None or not float(temperature) >= 0.0:
        raise ValueError(
            f"`temperature` must be >= 0 (0 means greedy). Received: temperature={temperature!r}"
        )
    if top_k is not None and (not is_integer(top_k) or top_k < 1):
        raise ValueError(f"`top_k` must be an integer >= 1 or None. Received: top_k={top_k!r}")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1]. Received: top_p={top_p!r}")
    return (int(max_new_tokens), float(temperature), None if top_k is None else int(top_k),
            None if top_p is None else float(top_p))


def filter_top_k(logits, top_k):
    """Keeps the `top_k` largest logits of each row; the rest become -inf.

    A `top_k` larger than the vocabulary keeps every token (as `tensor_sampler` does).
    """
    vocabulary_size = logits.shape[-1]
    if is_integer(top_k) and vocabulary_size is not None:
        top_k = min(int(top_k), vocabulary_size)  # a Python int: XLA needs k known when compiling
    else:
        top_k = tf.minimum(top_k, tf.shape(logits)[-1])
    kth_largest = tf.math.top_k(logits, k=top_k).values[:, -1:]  # (batch, 1)
    return tf.where(logits < kth_largest, tf.constant(-float("inf"), logits.dtype), logits)


def filter_top_p(logits, top_p):
    """Nucleus filtering: keeps the smallest set of tokens whose probability reaches `top_p`."""
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
    probabilities = tf.nn.softmax(sorted_logits, axis=-1)
    # Probability mass strictly before each sorted token; a token is kept while the
    # mass before it is below top_p, so the most likely token is always kept.
    mass_before = tf.cumsum(probabilities, axis=-1, exclusive=True)
    kept = tf.cast(mass_before < top_p, tf.int32)
    num_kept = tf.maximum(tf.reduce_sum(kept, axis=-1, keepdims=True), 1)  # (batch, 1)
    threshold = tf.gather(sorted_logits, num_kept - 1, batch_dims=1)  # smallest kept logit
    return tf.where(logits < threshold, tf.constant(-float("inf"), logits.dtype), logits)


def next_token(logits, temperature=0.0, top_k=None, top_p=None, seed=None):
    """Picks one token per row of `logits` (batch, vocabulary).

    `temperature == 0` is greedy (argmax); otherwise the logits are divided by the
    temperature, filtered by `top_k` and `top_p` when given, and sampled. `seed` is a
    `(2,)` int tensor for reproducible (stateless) sampling.
    """
    logits = tf.cast(logits, tf.float32)
    if temperature == 0.0:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    logits = logits / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    if seed is None:
        samples = tf.random.categorical(logits, 1, dtype=tf.int32)
    else:
        samples = tf.random.stateless_categorical(logits, 1, seed=seed, dtype=tf.int32)
    return samples[:, 0]


def sampler(temperature=0.0, top_k=None, top_p=None):
    """`choose(logits, seed) -> tokens` with fixed (Python) settings: see `next_token`."""
    return lambda logits, seed: next_token(logits, temperature, top_k, top_p, seed)


def tensor_sampler(temperature, top_k, top_p):
    """`choose(logits, seed) -> tokens` whose settings are tensors, decided at run time.

    For exported signatures, where the caller sends the settings with each request:
    `temperature <= 0` is greedy, `top_k <= 0` and `top_p >= 1` switch those filters off.
    The filters always run (a tensor cannot skip Python branches), so each step pays
    for a sort of the vocabulary.
    """

    def choose(logits, seed):
        logits = tf.cast(logits, tf.float32)
        vocabulary_size = tf.shape(logits)[-1]
        greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
        scaled = logits / tf.maximum(tf.cast(temperature, tf.float32), 1e-6)
        k = tf.where(top_k > 0, tf.minimum(top_k, vocabulary_size), vocabulary_size)
        filtered = filter_top_p(filter_top_k(scaled, k), tf.cast(top_p, tf.float32))
        sampled = tf.random.stateless_categorical(filtered, 1, seed=seed, dtype=tf.int32)[:, 0]
        return tf.where(temperature > 0, sampled, greedy)

    return choose
