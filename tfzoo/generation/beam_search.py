"""Beam search: keep the `beam_width` most likely partial sequences at every step.

Written with plain TensorFlow ops inside one `tf.while_loop`, like the sampling loop in
`decoding.py`, so that it runs compiled (XLA), in a SavedModel and under TF Serving.

Scores follow GNMT (Wu et al., 2016): a finished hypothesis of `length` tokens (its end
token included) scores `log P(tokens) / ((5 + length) / 6) ** length_penalty`;
`length_penalty=0` ranks by log-probability alone.

The search keeps two sets per example:

- alive: `beam_width` unfinished hypotheses and their log-probabilities;
- finished: the `beam_width` best hypotheses that produced the end token, with scores.

An end token counts only when it is among the `beam_width` best candidates of its step
(as in Hugging Face's implementation); this is what makes `beam_width=1` with
`length_penalty=0` exactly greedy decoding. The search stops early, for every example
at once, when no alive hypothesis can still beat the worst finished one: log-probabilities
only fall as a hypothesis grows, so `best alive log P / penalty(max length)` bounds
every score it can still reach (for `length_penalty >= 0`).
"""

import tensorflow as tf

from tfzoo.validation import is_integer

# A large negative log-probability for "no hypothesis here" (not -inf: inf - inf is NaN).
NEGATIVE = -1.0e9


def validate_beam_search(beam_width, length_penalty):
    """Raises a `ValueError` naming `beam_width` or `length_penalty` when out of range.

    Example:
    >>> validate_beam_search(beam_width=0, length_penalty=0.6)
    Traceback (most recent call last):
    ...
    ValueError: `beam_width` must be an integer >= 1. Received: beam_width=0
    """
    if not is_integer(beam_width) or beam_width < 1:
        raise ValueError(f"`beam_width` must be an integer >= 1. Received: beam_width={beam_width!r}")
    if length_penalty is None or not float(length_penalty) >= 0.0:
        raise ValueError(
            f"`length_penalty` must be >= 0 (0 ranks by log-probability alone). "
            f"Received: length_penalty={length_penalty!r}"
        )


def length_normalizer(length, length_penalty):
    """GNMT's `((5 + length) / 6) ** length_penalty`, as float32."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, tf.cast(length_penalty, tf.float32))


def tile_for_beams(tensor, beam_width):
    """`(batch, ...)` -> `(batch * beam_width, ...)`, each example repeated `beam_width` times in a row.

    Example:
    >>> tile_for_beams(tf.constant([[1], [2]]), 2).numpy().tolist()
    [[1], [1], [2], [2]]
    """
    return tf.repeat(tensor, beam_width, axis=0)


def _gather_beams(tensor, beam_indices, batch_size, beam_width):
    """Picks, per example, the rows `beam_indices` `(batch, k)` of a `(batch * beam, ...)` tensor.

    Returns `(batch * k, ...)`.
    """
    offsets = tf.range(batch_size)[:, None] * beam_width  # (batch, 1)
    flat = tf.reshape(beam_indices + offsets, [-1])  # (batch * k,)
    return tf.gather(tensor, flat, axis=0)


def beam_search(step, cache, start_token_ids, end_token_id, beam_width, max_new_tokens, capacity,
                length_penalty=0.0, early_stopping=True, pad_id=0):
    """Finds high-scoring continuations with a beam of `beam_width` hypotheses.

    Args:
        step: `step(token_ids (batch * beam,), index, cache) -> (logits (batch * beam, vocab), cache)`
            runs the decoder on one token per hypothesis, at sequence position `index`.
            Row `b * beam_width + j` is hypothesis `j` of example `b`.
        cache: a nest of tensors shaped `(batch * beam, ...)` that `step` reads and
            updates (decoder keys and values, or anything else); it is reordered along
            with the hypotheses.
        start_token_ids: `(batch,)` the first input token of each example.
        end_token_id: the token that finishes a hypothesis.
        beam_width: hypotheses kept per example (a Python int).
        max_new_tokens: the most tokens a hypothesis may have, end token included
            (int or scalar tensor, `<= capacity`).
        capacity: static width of the output buffers.
        length_penalty: GNMT's alpha (>= 0).
        early_stopping: stop as soon as no alive hypothesis can beat the finished ones
            (the result is the same; only the work differs). False runs all
            `max_new_tokens` steps.
        pad_id: what fills the outputs after a hypothesis ends.

    Returns:
        `(token_ids, lengths, scores)`: `(batch, beam, capacity)` int32 tokens without
        the end token, `(batch, beam)` their lengths, and `(batch, beam)` scores, best
        first. An example whose hypotheses all reached `max_new_tokens` without an end
        token returns them as they are, scored at that length.

    Example:
    >>> logits = tf.math.log([[0.1, 0.2, 0.7]])  # always: token 2 (70%), token 1 (20%), 0 (10%)
    >>> step = lambda tokens, index, cache: (tf.tile(logits, [tf.shape(tokens)[0], 1]), cache)
    >>> tokens, lengths, scores = beam_search(step, (), tf.constant([0]), end_token_id=2,
    ...                                        beam_width=2, max_new_tokens=3, capacity=3)
    >>> lengths.numpy().tolist()  # the end token at once is the most likely hypothesis
    [[0, 1]]
    """
    validate_beam_search(beam_width, length_penalty)
    start_token_ids = tf.convert_to_tensor(start_token_ids, tf.int32)
    batch_size = tf.shape(start_token_ids)[0]
    max_new_tokens = tf.minimum(tf.convert_to_tensor(max_new_tokens, tf.int32), capacity)
    columns = tf.range(capacity, dtype=tf.int32)[None, None, :]  # (1, 1, capacity)
    k = beam_width

    # Only hypothesis 0 of each example is real at first; the others would duplicate it.
    alive_log_probs = tf.tile(tf.constant([[0.0] + [NEGATIVE] * (k - 1)], tf.float32), [batch_size, 1])
    alive_tokens = tf.fill([batch_size, k, capacity], tf.constant(pad_id, tf.int32))
    finished_tokens = tf.fill([batch_size, k, capacity], tf.constant(pad_id, tf.int32))
    finished_scores = tf.fill([batch_size, k], tf.constant(NEGATIVE, tf.float32))
    finished_lengths = tf.zeros([batch_size, k], tf.int32)
    best_possible_normalizer = length_normalizer(max_new_tokens, length_penalty)

    def search_is_over(alive_log_probs, finished_scores):
        """Per example: k finished hypotheses, the worst better than any alive one can get."""
        best_alive = tf.reduce_max(alive_log_probs, axis=1) / best_possible_normalizer  # (batch,)
        worst_finished = tf.reduce_min(finished_scores, axis=1)
        has_all = tf.reduce_all(finished_scores > NEGATIVE / 2, axis=1)
        return tf.reduce_all(tf.logical_and(has_all, worst_finished >= best_alive))

    def condition(i, alive_tokens, alive_log_probs, cache, finished_tokens, finished_scores, finished_lengths):
        running = i < max_new_tokens
        if early_stopping:
            running = tf.logical_and(running, tf.logical_not(search_is_over(alive_log_probs, finished_scores)))
        return running

    def body(i, alive_tokens, alive_log_probs, cache, finished_tokens, finished_scores, finished_lengths):
        previous = tf.where(i == 0, tile_for_beams(start_token_ids, k),
                            tf.reshape(tf.gather(alive_tokens, tf.maximum(i - 1, 0), axis=2), [-1]))
        logits, cache = step(previous, i, cache)  # (batch * beam, vocab)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        vocabulary_size = tf.shape(log_probs)[-1]
        log_probs = tf.reshape(log_probs, [batch_size, k, vocabulary_size])
        candidates = tf.reshape(alive_log_probs[:, :, None] + log_probs, [batch_size, -1])  # (batch, beam * vocab)

        # 2k candidates: at most k of them end, so at least k stay alive.
        top_log_probs, top_indices = tf.math.top_k(candidates, k=2 * k)  # (batch, 2k)
        top_beams = top_indices // vocabulary_size
        top_tokens = top_indices % vocabulary_size
        top_sequences = tf.reshape(
            _gather_beams(tf.reshape(alive_tokens, [batch_size * k, capacity]), top_beams, batch_size, k),
            [batch_size, 2 * k, capacity],
        )
        top_sequences = tf.where(columns == i, top_tokens[:, :, None], top_sequences)
        is_end = tf.equal(top_tokens, end_token_id)

        # Alive: the k best candidates that did not end.
        alive_candidates = tf.where(is_end, NEGATIVE, top_log_probs)
        alive_log_probs, alive_choice = tf.math.top_k(alive_candidates, k=k)
        alive_tokens = tf.gather(top_sequences, alive_choice, batch_dims=1)
        alive_beams = tf.gather(top_beams, alive_choice, batch_dims=1)
        cache = tf.nest.map_structure(lambda t: _gather_beams(t, alive_beams, batch_size, k), cache)

        # Finished: ended candidates among the k best of the step, merged with the old ones.
        counts = tf.logical_and(is_end, tf.range(2 * k)[None, :] < k)
        counts = tf.logical_and(counts, top_log_probs > NEGATIVE / 2)
        new_scores = tf.where(counts, top_log_probs / length_normalizer(i + 1, length_penalty), NEGATIVE)
        merged_scores = tf.concat([finished_scores, new_scores], axis=1)  # (batch, 3k)
        merged_tokens = tf.concat([finished_tokens, top_sequences], axis=1)
        merged_lengths = tf.concat([finished_lengths, tf.fill([batch_size, 2 * k], i)], axis=1)
        finished_scores, finished_choice = tf.math.top_k(merged_scores, k=k)  # ties keep the older
        finished_tokens = tf.gather(merged_tokens, finished_choice, batch_dims=1)
        finished_lengths = tf.gather(merged_lengths, finished_choice, batch_dims=1)
        outputs = (i + 1, alive_tokens, alive_log_probs, cache, finished_tokens, finished_scores, finished_lengths)
        # Gathers lose the static batch size; the loop needs the shapes it started with.
        tf.nest.map_structure(lambda new, old: new.set_shape(old.shape), outputs, loop_vars)
        return outputs

    loop_vars = (tf.constant(0, tf.int32), alive_tokens, alive_log_probs, cache,
                 finished_tokens, finished_scores, finished_lengths)
    steps, alive_tokens, alive_log_probs, _, finished_tokens, finished_scores, finished_lengths = tf.while_loop(
        condition, body, loop_vars
    )

    # Hypotheses still alive at the end compete as they are (they ran out of room).
    alive_scores = tf.where(alive_log_probs > NEGATIVE / 2,
                            alive_log_probs / length_normalizer(steps, length_penalty), NEGATIVE)
    scores = tf.concat([finished_scores, alive_scores], axis=1)
    token_ids = tf.concat([finished_tokens, alive_tokens], axis=1)
    lengths = tf.concat([finished_lengths, tf.fill([batch_size, k], steps)], axis=1)
    scores, choice = tf.math.top_k(scores, k=k)  # finished first on ties
    token_ids = tf.gather(token_ids, choice, batch_dims=1)
    lengths = tf.gather(lengths, choice, batch_dims=1)
    # Blank the end token and anything after it.
    token_ids = tf.where(columns < lengths[:, :, None], token_ids, pad_id)
    return token_ids, lengths, scores
