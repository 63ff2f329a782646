"""Multi-head scaled dot-product attention with explicit masks and a key/value cache."""

import contextlib
import contextvars

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from tensorflow.python.ops import control_flow_util  # no public "am I compiled by XLA?" yet

from tfzoo.layers.positional import PositionalEncoding
from tfzoo.validation import dropout_rate, positive_int


def causal_mask(query_length, key_length, query_start=0):
    """Boolean (query, key) mask: query at position `query_start + i` sees keys `<=` it.

    Built from `arange` comparisons on purpose: Keras' `use_causal_mask` emits a
    strided slice that TFLite cannot run without Flex ops.
    """
    query_positions = ops.arange(query_length, dtype="int32")[:, None] + query_start
    key_positions = ops.arange(key_length, dtype="int32")[None, :]
    return key_positions <= query_positions  # (query, key)


_WRITE_CACHE_IN_PLACE = contextvars.ContextVar("tfzoo_write_cache_in_place", default=False)


@contextlib.contextmanager
def cache_writes_in_place():
    """While tracing inside this block, cache writes are XLA's `dynamic_update_slice`.

    For functions compiled with XLA only: XLA updates the cache in place, where the
    default gather + select rewrites the whole cache at every step (measured on
    gpt_tiny: about 0.75 ms less per decoding step at batch 8, see
    benchmarks/RESULTS.md). The op (`XlaDynamicUpdateSlice`) is not among what TF
    Serving links or TFLite's builtins, so exports keep the default.

    Example:
    >>> import tensorflow as tf
    >>> layer = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> @tf.function(jit_compile=True)
    ... def decode_step(token, cache, index):
    ...     with cache_writes_in_place():  # takes effect while the function is traced
    ...         return layer(token, use_causal_mask=True, cache=cache, cache_index=index)
    >>> empty = (tf.zeros((1, 2, 5, 4)), tf.zeros((1, 2, 5, 4)))  # keys, values
    >>> output, (keys, values) = decode_step(tf.ones((1, 1, 8)), empty, tf.constant(0))
    >>> tuple(keys.shape)  # (batch, heads, cache length, head_dim)
    (1, 2, 5, 4)
    """
    token = _WRITE_CACHE_IN_PLACE.set(True)
    try:
        yield
    finally:
        _WRITE_CACHE_IN_PLACE.reset(token)


def causal_query_blocks(length):
    """`(start, end)` query blocks for causal attention over `length` tokens, or `None`.

    Query block `[start, end)` sees keys `[0, end)` only: the keys after it are all
    masked for it, so leaving them out gives the same result with fewer products and a
    smaller softmax. Blocks of about 128 queries, at most 8 of them; `None` under 256
    tokens, where the split saved nothing. Under XLA on 2 cores the whole layer, forward
    and backward, took 6-12% less time at 256 tokens and about 30% less at 512-1024 (see
    benchmarks/bench_attention.py and benchmarks/RESULTS.md).

    Example:
    >>> causal_query_blocks(512)
    [(0, 128), (128, 256), (256, 384), (384, 512)]
    >>> causal_query_blocks(100) is None
    True
    """
    if length is None or length < 256:
        return None
    count = min(8, length // 128)
    size = -(-length // count)  # ceil: the last block may be shorter
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def in_xla_function():
    """Whether the function being traced is compiled with XLA (`jit_compile=True`).

    Example:
    >>> import tensorflow as tf
    >>> bool(tf.function(in_xla_function, jit_compile=True)()), bool(in_xla_function())
    (True, False)
    """
    import tensorflow as tf

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def empty_key_value_cache(num_blocks, batch_size, num_heads, length, head_dim, dtype):
    """Zeroed caches for incremental decoding: one `(keys, values)` pair per block, each
    `(batch, heads, length, head_dim)` (`batch_size` may be a tensor)."""
    return tuple(
        tuple(tf.zeros([batch_size, num_heads, length, head_dim], dtype=dtype) for _ in range(2))
        for _ in range(num_blocks)
    )


def write_to_cache(cache, update, index, axis=2, cache_length=None):
    """Writes `update` into `cache` at `index` along `axis` (the sequence axis).

    `update` has `cache`'s shape except along `axis`. A gather and a select (a select
    alone for one token) rather than `dynamic_update_slice`: the same result, but only
    core ops that TF Serving, TFLite builtins and XLA all have; inside
    `cache_writes_in_place()`, `dynamic_update_slice`. `cache_length`, if given, is the
    cache's length along `axis` (see `MultiHeadAttention`'s use of it).

    Example:
    >>> cache = np.zeros((1, 1, 4, 2), "float32")
    >>> written = write_to_cache(cache, np.ones((1, 1, 1, 2), "float32"), 2)
    >>> keras.ops.convert_to_numpy(written)[0, 0, :, 0].tolist()
    [0.0, 0.0, 1.0, 0.0]
    """
    if _WRITE_CACHE_IN_PLACE.get():
        starts = [0] * len(cache.shape)
        starts[axis] = ops.cast(index, "int32")
        return ops.slice_update(cache, starts, ops.cast(update, cache.dtype))
    cache_length = ops.shape(cache)[axis] if cache_length is None else cache_length
    broadcast_shape = (1,) * axis + (-1,) + (1,) * (len(cache.shape) - axis - 1)
    if update.shape[axis] == 1:
        # One token (a decoding step): a select that broadcasts it, no gather.
        at_index = ops.arange(cache_length, dtype="int32") == ops.cast(index, "int32")
        return ops.where(ops.reshape(at_index, broadcast_shape), ops.cast(update, cache.dtype), cache)
    update_length = ops.shape(update)[axis]
    relative = ops.arange(cache_length, dtype="int32") - ops.cast(index, "int32")  # (length,)
    inside = ops.logical_and(relative >= 0, relative < update_length)
    gathered = ops.take(update, ops.clip(relative, 0, update_length - 1), axis=axis)
    return ops.where(ops.reshape(inside, broadcast_shape), ops.cast(gathered, cache.dtype), cache)


def on_tokens(function, x):
    """`function(x)` for a token-wise `function` (a `Dense` layer, say), run on `x`
    `(batch, sequence, width)` as `(batch * sequence, width)` when only the batch size is
    unknown.

    The same values. Why: a `Dense` on a 3-D input is a `tensordot`, which for an unknown
    batch size computes its reshapes at run time (about eight small ops per call). In an
    export's decode loop, where the batch size is unknown, that was ~200 ops per
    generated token; a 2-D input is a plain matmul, with static reshapes around it.

    Example:
    >>> dense = keras.layers.Dense(3)
    >>> tuple(on_tokens(dense, np.ones((2, 5, 4), "float32")).shape)
    (2, 5, 3)
    """
    shape = x.shape
    if len(shape) != 3 or shape[0] is not None or shape[1] is None or shape[2] is None:
        return function(x)
    output = function(ops.reshape(x, (-1, shape[2])))
    return ops.reshape(output, (-1, shape[1], output.shape[-1]))


def pack_tokens(grid, positions):
    """The rows of `grid` `(batch, sequence, width)` at flat `positions` `(tokens,)`.

    `positions` index `batch * sequence`; packing only a batch's real tokens lets the
    token-wise layers (projections, feed-forward, norms) skip its padding.
    """
    shape = ops.shape(grid)
    return ops.take(ops.reshape(grid, (shape[0] * shape[1], shape[2])), positions, axis=0)  # (tokens, width)


def grid_rows(positions, grid_shape):
    """For each position of a `(batch, sequence)` grid, the row of the packed tokens that
    holds it, or -1 (padding): the map `unpack_tokens` gathers with."""
    batch, length = grid_shape
    empty = ops.full((batch * length,), -1, dtype="int32")
    rows = ops.arange(ops.shape(positions)[0], dtype="int32")
    # A position listed twice (filler rows repeat a padding position, with identical values)
    # keeps one of its rows.
    return ops.scatter_update(empty, ops.expand_dims(positions, 1), rows)


def unpack_tokens(tokens, positions, grid_shape, rows=None):
    """The inverse of `pack_tokens`: `(tokens, width)` rows back into a `(batch, sequence,
    width)` grid, zeros at positions not listed; a position listed twice (filler rows,
    identical copies of one padding position) holds one of its rows. A gather (through
    `grid_rows`, computed here unless given), which XLA runs in parallel where a scatter of
    the rows would not be."""
    batch, length = grid_shape
    rows = grid_rows(positions, grid_shape) if rows is None else rows
    gathered = ops.take(tokens, ops.maximum(rows, 0), axis=0)  # (batch * sequence, width)
    grid = ops.where(ops.expand_dims(rows >= 0, 1), gathered, ops.zeros_like(gathered))
    return ops.reshape(grid, (batch, length, tokens.shape[-1]))


@keras.saving.register_keras_serializable(package="tfzoo")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention: `softmax(Q K^T / sqrt(d_k)) V` over several heads.

    Queries come from `query`; keys and values from `value` (cross-attention) or from
    `query` itself (self-attention, `value=None`: rotary positions and the cache index
    apply to keys only then). Masks are boolean, `True` where attention is
    allowed, and are combined: a key padding mask, an explicit attention mask, and a
    causal mask. Compiled with XLA, causal self-attention of 256 tokens or more (no
    cache, no scores returned) runs in query blocks that skip the keys after each block
    (`causal_query_blocks`): the same result, fewer products.

    Args:
        num_heads: number of attention heads.
        key_dim: size of each head's queries and keys.
        value_dim: size of each head's values; defaults to `key_dim`.
        output_dim: size of the output; defaults to the query's last dimension.
        dropout: dropout rate on the attention probabilities.
        use_bias: whether the projections have biases.
        use_rotary_embedding: rotate queries and keys by their positions (RoPE).
        max_sequence_length: longest sequence the rotary positions cover.
        kernel_initializer: initializer of the projection kernels.

    Call arguments:
        query: `(batch, query_length, dim)`.
        value: `(batch, key_length, dim)`; `None` for self-attention.
        key: `(batch, key_length, dim)`; defaults to `value`.
        key_padding_mask: `(batch, key_length)`, true for real keys. With a cache, it
            covers the whole cache length.
        attention_mask: `(batch, query_length, key_length)`, true where allowed.
        use_causal_mask: whether each query sees only keys at or before its position.
        cache: a pair `(keys, values)`, each `(batch, num_heads, cache_length,
            head_dim)`: two tensors, heads before positions, which is the layout the
            attention products read, so that no decoding step copies or transposes
            the cache. With `cache_index`, the new keys/values are written at
            `cache_index` and the query attends over the whole cache; without it,
            the cache is used as is (precomputed cross-attention keys and values,
            see `key_value_cache`).
        cache_index: where the first query token sits in the sequence.
        packed_positions: for self-attention over packed tokens: `query` is then
            `(tokens, dim)`, the rows of a `(batch, sequence)` grid at these flat
            positions (see `pack_tokens`), the grid's shape is `key_padding_mask`'s,
            and so is the output. The projections run on the tokens only; the
            attention products on the grid.
        return_attention_scores: also return the probabilities
            `(batch, heads, query, key)`.

    Returns:
        The attention output; then the updated cache if one was given; then the scores
        if asked for.

    Example:
    >>> layer = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = np.random.rand(1, 3, 8).astype("float32")
    >>> tuple(layer(x, use_causal_mask=True).shape)
    (1, 3, 8)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        output_dim=None,
        dropout=0.0,
        use_bias=True,
        use_rotary_embedding=False,
        max_sequence_length=2048,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = positive_int("num_heads", num_heads)
        self.key_dim = positive_int("key_dim", key_dim)
        # `is None`, not truthiness: value_dim=0 is an error, not "the default".
        self.value_dim = self.key_dim if value_dim is None else positive_int("value_dim", value_dim)
        self.output_dim = None if output_dim is None else positive_int("output_dim", output_dim)
        self.dropout = dropout_rate("dropout", dropout)
        self.use_bias = use_bias
        self.use_rotary_embedding = use_rotary_embedding
        self.max_sequence_length = max_sequence_length
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _dense(self, units, name):
        return keras.layers.Dense(
            units,
            use_bias=self.use_bias,
            # A fresh initializer per projection, so that seeded ones don't repeat.
            kernel_initializer=keras.initializers.get(keras.initializers.serialize(self.kernel_initializer)),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = value_shape or query_shape
        key_shape = key_shape or value_shape
        self.query_dense = self._dense(self.num_heads * self.key_dim, "query")
        self.query_dense.build(query_shape)
        self.key_dense = self._dense(self.num_heads * self.key_dim, "key")
        self.key_dense.build(key_shape)
        self.value_dense = self._dense(self.num_heads * self.value_dim, "value")
        self.value_dense.build(value_shape)
        self.output_dense = self._dense(self.output_dim or query_shape[-1], "attention_output")
        self.output_dense.build(tuple(query_shape[:-1]) + (self.num_heads * self.value_dim,))
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        if self.use_rotary_embedding:
            self.rotary = PositionalEncoding(
                "rotary", self.max_sequence_length, dtype=self.dtype_policy, name="rotary"
            )

    def _split_heads(self, x, head_dim):
        shape = ops.shape(x)
        # -1 for the batch size when the rest is static: no shape ops at run time.
        batch_size = -1 if isinstance(shape[1], int) else shape[0]
        return ops.reshape(x, (batch_size, shape[1], self.num_heads, head_dim))  # (batch, seq, heads, head_dim)

    def key_value_cache(self, value, key=None):
        """Keys and values of `value` (and `key`) once: `(keys, values)`, each
        `(batch, heads, length, head_dim)`.

        The cache a decoder passes as `cache` (without `cache_index`) to attend over an
        encoder's outputs at every step without projecting them again.
        """
        key = value if key is None else key
        keys = ops.transpose(self._split_heads(self.key_dense(key), self.key_dim), (0, 2, 1, 3))
        values = ops.transpose(self._split_heads(self.value_dense(value), self.value_dim), (0, 2, 1, 3))
        return keys, values

    def call(
        self,
        query,
        value=None,
        key=None,
        key_padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        return_attention_scores=False,
        packed_positions=None,
        training=None,
    ):
        self_attention = value is None
        value = query if value is None else value
        key = value if key is None else key
        query_start = 0 if cache_index is None else cache_index
        grid_shape = None
        if packed_positions is not None:
            if not self_attention or cache is not None or key_padding_mask is None:
                raise ValueError(
                    "`packed_positions` is for self-attention without a cache, with a `key_padding_mask` "
                    "whose shape is the (batch, sequence) grid of the packed tokens."
                )
            grid_shape = ops.shape(key_padding_mask)
            rows = grid_rows(packed_positions, grid_shape)  # once for queries, keys and values

        def heads(dense, x, head_dim):  # (batch, sequence, heads, head_dim)
            projected = on_tokens(dense, x)
            if grid_shape is not None:
                projected = unpack_tokens(projected, packed_positions, grid_shape, rows)
            return self._split_heads(projected, head_dim)

        queries = heads(self.query_dense, query, self.key_dim)  # (batch, query, heads, key_dim)
        if cache is not None and cache_index is None:
            # Precomputed keys and values (cross-attention during decoding).
            keys, values = cache  # (batch, heads, key, key_dim)
        else:
            keys = heads(self.key_dense, key, self.key_dim)  # (batch, key, heads, key_dim)
            values = heads(self.value_dense, value, self.value_dim)
            if self.use_rotary_embedding:
                queries = self.rotary(queries, start_index=query_start)
                keys = self.rotary(keys, start_index=query_start if self_attention else 0)
            keys = ops.transpose(keys, (0, 2, 1, 3))  # (batch, heads, key, key_dim)
            values = ops.transpose(values, (0, 2, 1, 3))
            if cache is not None:
                cache_length = cache[0].shape[2]
                if cache_length is None:
                    # Unknown until run time (an export's trace). Read off the key padding
                    # mask, one tensor for every layer, the cache length and the masks
                    # built from it are computed once per step, not once per layer.
                    if key_padding_mask is None:
                        cache_length = ops.shape(cache[0])[2]
                    else:
                        cache_length = ops.shape(key_padding_mask)[-1]
                # Under XLA both writes happen in place (see cache_writes_in_place).
                keys = write_to_cache(cache[0], keys, cache_index, 2, cache_length)  # (batch, heads, cache, key_dim)
                values = write_to_cache(cache[1], values, cache_index, 2, cache_length)
                cache = (keys, values)
        queries = ops.transpose(queries, (0, 2, 1, 3))  # (batch, heads, query, key_dim)

        padding = None if key_padding_mask is None else ops.cast(key_padding_mask, "bool")  # (batch, key)
        explicit = None if attention_mask is None else ops.cast(attention_mask, "bool")  # (batch, query, key)
        query_length = queries.shape[2]
        blocks = None
        if (use_causal_mask and self_attention and cache is None and not return_attention_scores
                and query_length is not None and query_length == keys.shape[2] and in_xla_function()):
            # Only under XLA: without it the slices and their gradients cost more than
            # the products they save (measured, see causal_query_blocks).
            blocks = causal_query_blocks(query_length)
        if blocks:
            contexts = []
            for start, end in blocks:
                block_mask = ops.expand_dims(causal_mask(end - start, end, start), 0)  # (1, block, end)
                if padding is not None:
                    block_mask = ops.logical_and(block_mask, ops.expand_dims(padding[:, :end], 1))
                if explicit is not None:
                    block_mask = ops.logical_and(block_mask, explicit[:, start:end, :end])
                block_context, _ = self._attend(
                    queries[:, :, start:end], keys[:, :, :end], values[:, :, :end], block_mask, training
                )
                contexts.append(block_context)
            context = ops.concatenate(contexts, axis=2)  # (batch, heads, query, value_dim)
        else:
            mask = None
            if use_causal_mask:
                key_length = cache_length if cache is not None and cache_index is not None else ops.shape(keys)[2]
                mask = ops.expand_dims(causal_mask(ops.shape(queries)[2], key_length, query_start), 0)
            if padding is not None:
                # expand_dims, not `padding[:, None]`: TFLite has no builtin for a new-axis
                # slice of a tensor with two unknown dimensions.
                padding = ops.expand_dims(padding, 1)  # (batch, 1, key)
                mask = padding if mask is None else ops.logical_and(mask, padding)
            if explicit is not None:
                mask = explicit if mask is None else ops.logical_and(mask, explicit)
            context, probabilities = self._attend(queries, keys, values, mask, training)
        context = ops.transpose(context, (0, 2, 1, 3))  # (batch, query, heads, value_dim)
        shape = ops.shape(context)
        batch_size = -1 if isinstance(shape[1], int) else shape[0]
        context = ops.reshape(context, (batch_size, shape[1], self.num_heads * self.value_dim))
        if grid_shape is not None:
            context = pack_tokens(context, packed_positions)  # (tokens, heads * value_dim)
        output = on_tokens(self.output_dense, context)

        results = (output,)
        if cache is not None:
            results += (cache,)
        if return_attention_scores:
            results += (probabilities,)
        return results[0] if len(results) == 1 else results

    def _attend(self, queries, keys, values, mask, training):
        """`softmax(Q K^T / sqrt(d_k)) V` on `(batch, heads, length, head_dim)` tensors, where
        `mask` `(batch or 1, query, key)` allows it: the context and the probabilities."""
        scale = 1.0 / np.sqrt(self.key_dim)
        scores = ops.einsum("bhqd,bhkd->bhqk", queries * ops.cast(scale, queries.dtype), keys)
        scores = ops.cast(scores, "float32")  # softmax in float32, also under mixed precision
        if mask is not None:
            scores = ops.where(ops.expand_dims(mask, 1), scores, -1e9)
        probabilities = ops.softmax(scores, axis=-1)  # (batch, heads, query, key)
        dropped = self.dropout_layer(ops.cast(probabilities, values.dtype), training=training)
        context = ops.einsum("bhqk,bhkd->bhqd", dropped, values)  # (batch, heads, query, value_dim)
        return context, probabilities

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "output_dim": self.output_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "use_rotary_embedding": self.use_rotary_embedding,
                "max_sequence_length": self.max_sequence_length,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
