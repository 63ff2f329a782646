"""The cached decode loop shared by the generative models."""

import tensorflow as tf

from tfzoo.generation.sampling import sampler as make_sampler


def round_up(value, multiple):
    """`value` rounded up to a multiple of `multiple`: a Python int, or a tensor inside a graph."""
    return (value + multiple - 1) // multiple * multiple


def detokenize_rows(tokenizer, token_id_lists):
    """Each list of new token ids as a string, with one `detokenize` call for the batch.

    A call per row costs a few milliseconds each in eager mode: at batch 8 that was ~30
    ms of a 160 ms `GPT.generate` call (benchmarks/bench_gpt.py, SavedModel part).
    Empty rows give "".

    Example:
    >>> from tfzoo.text import WordPieceTokenizer
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat"])
    >>> detokenize_rows(tokenizer, [[5, 6], [], [6]])
    ['a cat', '', 'cat']
    """
    texts = [""] * len(token_id_lists)
    rows = [row for row, ids in enumerate(token_id_lists) if len(ids)]
    if rows:
        ragged = tf.ragged.constant([list(token_id_lists[row]) for row in rows], dtype=tf.int32, ragged_rank=1)
        decoded = tokenizer.detokenize(ragged)
        if hasattr(decoded, "numpy"):
            decoded = decoded.numpy()
        for row, text in zip(rows, decoded):
            texts[row] = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return texts


def left_pad(token_id_lists, length, pad_id=0):
    """Right-aligns prompts of different lengths in a `(batch, length)` int32 array.

    Returns the padded ids and, per prompt, how many pad tokens precede it. Left
    padding lets every prompt's next token sit at the same cache index, so a batch
    decodes in lockstep.
    """
    import numpy as np

    padded = np.full((len(token_id_lists), length), pad_id, dtype="int32")
    pad_counts = np.zeros((len(token_id_lists),), dtype="int32")
    for row, ids in enumerate(token_id_lists):
        pad_counts[row] = length - len(ids)
        padded[row, pad_counts[row] :] = ids
    return padded, pad_counts


def decode_loop(
    step,
    first_logits,
    cache,
    start_index,
    max_new_tokens,
    capacity,
    stop_token_ids=(),
    choose=None,
    seed=None,
    pad_id=0,
):
    """Samples up to `max_new_tokens` tokens, one model step per token.

    Args:
        step: `step(token_ids (batch,), index, cache) -> (logits (batch, vocab), cache)`
            runs the model on one new token written at `index` of the cache.
        first_logits: `(batch, vocab)` logits after the prompt.
        cache: any nest of tensors that `step` reads and updates.
        start_index: the cache index of the first new token.
        max_new_tokens: how many tokens to produce (a scalar tensor is fine: one
            compiled loop serves any count up to `capacity`).
        capacity: static size of the output buffer, `>= max_new_tokens`.
        stop_token_ids: a row stops after producing one of these.
        choose: `choose(logits, seed) -> tokens`, e.g. `sampling.sampler(...)`;
            greedy by default.
        seed: a `(2,)` int32 tensor; step `i` samples with `(seed[0], seed[1] + i)`.

    Returns:
        `(tokens, lengths)`: `(batch, capacity)` int32 tokens, `pad_id` after a row
        stopped, and `(batch,)` the number of tokens before the stop token (or all).
    """
    choose = choose or make_sampler()
    batch_size = tf.shape(first_logits)[0]
    tokens = tf.fill([batch_size, capacity], tf.constant(pad_id, tf.int32))
    lengths = tf.zeros([batch_size], tf.int32)
    done = tf.zeros([batch_size], tf.bool)
    stop_token_ids = tf.constant(list(stop_token_ids) or [-1], tf.int32)
    max_new_tokens = tf.convert_to_tensor(max_new_tokens, tf.int32)
    columns = tf.range(capacity, dtype=tf.int32)[None, :]  # (1, capacity)

    def condition(i, logits, cache, tokens, lengths, done):
        return tf.logical_and(i < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

    def body(i, logits, cache, tokens, lengths, done):
        step_seed = None if seed is None else tf.stack([seed[0], seed[1] + i])
        token = choose(logits, step_seed)  # (batch,)
        token = tf.where(done, pad_id, token)
        is_stop = tf.reduce_any(token[:, None] == stop_token_ids[None, :], axis=-1)
        lengths = lengths + tf.cast(tf.logical_not(tf.logical_or(done, is_stop)), tf.int32)
        done = tf.logical_or(done, is_stop)
        # Write column i with a select, which XLA and TFLite both handle well.
        tokens = tf.where(columns == i, token[:, None], tokens)
        logits, cache = step(token, start_index + i, cache)
        return i + 1, logits, cache, tokens, lengths, done

    loop_vars = (tf.constant(0, tf.int32), tf.cast(first_logits, tf.float32), cache, tokens, lengths, done)
    _, _, _, tokens, lengths, _ = tf.while_loop(condition, body, loop_vars)
    return tokens, lengths
