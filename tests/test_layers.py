"""tfzoo.layers against independent references.

Every numerical test compares a layer with something that does not share its code:
a NumPy implementation written here from the formulas (using only the layer's
weights), or `keras.layers.MultiHeadAttention` loaded with the same weights.
"""

import contextlib
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfzoo.layers import (
    MultiHeadAttention,
    PositionalEncoding,
    TransformerBlock,
    cache_writes_in_place,
    causal_mask,
    on_tokens,
    pack_tokens,
    unpack_tokens,
)
from tfzoo.layers import activations, normalization
from tfzoo.layers.activations import fused_activation, get_activation
from tfzoo.layers.normalization import fused_layer_normalization
from tfzoo.layers.attention import causal_query_blocks, in_xla_function, write_to_cache

ATOL = 1e-5
RTOL = 1e-5


def assert_close(actual, expected, atol=ATOL, rtol=RTOL):
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, atol=atol, rtol=rtol)


def random(rng, *shape):
    return rng.standard_normal(shape).astype("float32")


# ----------------------------------------------------------------- NumPy references
def dense_np(layer, x):
    """`x @ kernel + bias` with the Dense layer's own weights, in float64."""
    weights = [np.asarray(w, dtype="float64") for w in layer.get_weights()]
    y = np.asarray(x, dtype="float64") @ weights[0]
    if len(weights) > 1:
        y = y + weights[1]
    return y


def softmax_np(scores):
    scores = scores - scores.max(axis=-1, keepdims=True)
    exps = np.exp(scores)
    return exps / exps.sum(axis=-1, keepdims=True)


def rotary_np(x, positions, base=10000.0):
    """Rotates feature pair (i, i + d/2) by `position * base ** (-2i / d)`, one at a time.

    x: (batch, sequence, heads, d); positions: (batch, sequence) integers.
    """
    x = np.asarray(x, dtype="float64")
    d = x.shape[-1]
    half = d // 2
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            for i in range(half):
                angle = positions[b][t] * base ** (-2.0 * i / d)
                rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
                pair = np.stack([x[b, t, :, i], x[b, t, :, i + half]])  # (2, heads)
                rotated = rotation @ pair
                out[b, t, :, i], out[b, t, :, i + half] = rotated[0], rotated[1]
    return out


def mha_np(layer, query, value=None, key=None, mask=None, query_positions=None, key_positions=None):
    """softmax(Q K^T / sqrt(d_k)) V per head, then the output projection.

    mask: boolean, broadcastable to (batch, query, key), True where allowed. Returns
    (output, probabilities (batch, heads, query, key)).
    """
    value = query if value is None else value
    key = value if key is None else key
    batch, query_length = query.shape[0], query.shape[1]
    key_length = key.shape[1]
    heads, key_dim, value_dim = layer.num_heads, layer.key_dim, layer.value_dim
    q = dense_np(layer.query_dense, query).reshape(batch, query_length, heads, key_dim)
    k = dense_np(layer.key_dense, key).reshape(batch, key_length, heads, key_dim)
    v = dense_np(layer.value_dense, value).reshape(batch, key_length, heads, value_dim)
    if query_positions is not None:
        q = rotary_np(q, query_positions)
        k = rotary_np(k, key_positions)
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, bool), (batch, query_length, key_length))
    context = np.zeros((batch, query_length, heads, value_dim))
    probabilities = np.zeros((batch, heads, query_length, key_length))
    for b in range(batch):
        for h in range(heads):
            scores = q[b, :, h, :] @ k[b, :, h, :].T / math.sqrt(key_dim)
            if mask is not None:
                assert mask[b].any(axis=-1).all(), "the reference needs at least one key per query"
                scores = np.where(mask[b], scores, -np.inf)
            probabilities[b, h] = softmax_np(scores)
            context[b, :, h, :] = probabilities[b, h] @ v[b, :, h, :]
    output = dense_np(layer.output_dense, context.reshape(batch, query_length, heads * value_dim))
    return output, probabilities


def layer_norm_np(norm, x):
    gamma, beta = (np.asarray(w, dtype="float64") for w in norm.get_weights())
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + norm.epsilon) * gamma + beta


_erf = np.vectorize(math.erf)


def gelu_np(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh_np(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS_NP = {"gelu": gelu_np, "gelu_approximate": gelu_tanh_np, "relu": lambda x: np.maximum(x, 0.0)}


def activation_np(block):
    name = block.activation if isinstance(block.activation, str) else block.activation.__name__
    return ACTIVATIONS_NP[name]


def block_np(block, x, padding_mask=None, encoder_outputs=None, encoder_padding_mask=None):
    """TransformerBlock by hand: residuals, layer norms, attention and FFN in NumPy."""
    x = np.asarray(x, dtype="float64")
    length = x.shape[1]
    self_mask = np.ones((1, length, length), bool)
    if block.causal:
        self_mask = self_mask & np.tril(np.ones((length, length), bool))[None]
    if padding_mask is not None:
        self_mask = self_mask & np.asarray(padding_mask, bool)[:, None, :]

    def self_attention(h):
        return mha_np(block.self_attention, h, mask=self_mask)[0]

    def cross_attention(h):
        mask = None if encoder_padding_mask is None else np.asarray(encoder_padding_mask, bool)[:, None, :]
        return mha_np(block.cross_attention_layer, h, value=encoder_outputs, mask=mask)[0]

    def feed_forward(h):
        return dense_np(block.output_dense, activation_np(block)(dense_np(block.intermediate_dense, h)))

    sublayers = [(self_attention, block.self_attention_norm)]
    if block.cross_attention:
        sublayers.append((cross_attention, block.cross_attention_norm))
    sublayers.append((feed_forward, block.feed_forward_norm))
    for sublayer, norm in sublayers:
        if block.normalize_first:
            x = x + sublayer(layer_norm_np(norm, x))
        else:
            x = layer_norm_np(norm, x + sublayer(x))
    return x


def randomize_norms(block, rng):
    """LayerNorm starts as the identity affine map; make gamma and beta matter."""
    for norm in (block.self_attention_norm, block.feed_forward_norm) + (
        (block.cross_attention_norm,) if block.cross_attention else ()
    ):
        gamma, beta = norm.get_weights()
        norm.set_weights([1.0 + 0.3 * random(rng, *gamma.shape), 0.3 * random(rng, *beta.shape)])


# ------------------------------------------------------------ MultiHeadAttention
@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_mha(**kwargs):
    arguments = dict(num_heads=2, key_dim=3, value_dim=5, output_dim=7)
    arguments.update(kwargs)
    return MultiHeadAttention(**arguments)


def test_mha_self_attention_matches_numpy(rng):
    layer = make_mha()
    x = random(rng, 2, 5, 6)
    output, scores = layer(x, return_attention_scores=True)
    expected, expected_scores = mha_np(layer, x)
    assert output.shape == (2, 5, 7)
    assert scores.shape == (2, 2, 5, 5)
    assert_close(output, expected)
    assert_close(scores, expected_scores)


def test_mha_cross_attention_matches_numpy(rng):
    layer = make_mha()
    query, value = random(rng, 2, 4, 6), random(rng, 2, 7, 9)
    output = layer(query, value=value)
    assert output.shape == (2, 4, 7)
    assert_close(output, mha_np(layer, query, value=value)[0])


def test_mha_separate_key_matches_numpy(rng):
    layer = make_mha()
    query, value, key = random(rng, 2, 4, 6), random(rng, 2, 7, 9), random(rng, 2, 7, 9)
    assert_close(layer(query, value=value, key=key), mha_np(layer, query, value=value, key=key)[0])
    # Keys really come from `key`: using the value instead changes the result.
    assert not np.allclose(layer(query, value=value, key=key), layer(query, value=value), atol=1e-3)


def test_mha_key_padding_mask_matches_numpy(rng):
    layer = make_mha()
    query, value = random(rng, 2, 4, 6), random(rng, 2, 7, 6)
    padding = np.array([[1, 1, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]], bool)
    output, scores = layer(query, value=value, key_padding_mask=padding, return_attention_scores=True)
    expected, expected_scores = mha_np(layer, query, value=value, mask=padding[:, None, :])
    assert_close(output, expected)
    assert_close(scores, expected_scores)
    # Masked keys get (numerically) zero probability.
    assert np.all(np.asarray(scores)[np.broadcast_to(~padding[:, None, None, :], scores.shape)] < 1e-12)
    # Masked keys' contents don't matter.
    changed = value.copy()
    changed[~padding] = random(rng, int((~padding).sum()), 6)
    assert_close(layer(query, value=changed, key_padding_mask=padding), expected)
    # ...and the mask does something.
    assert not np.allclose(layer(query, value=value), expected, atol=1e-3)


def test_mha_explicit_attention_mask_matches_numpy(rng):
    layer = make_mha()
    query, value = random(rng, 2, 4, 6), random(rng, 2, 7, 6)
    mask = rng.random((2, 4, 7)) < 0.5
    mask[:, :, 2] = True  # every query sees at least one key
    output, scores = layer(query, value=value, attention_mask=mask, return_attention_scores=True)
    expected, expected_scores = mha_np(layer, query, value=value, mask=mask)
    assert_close(output, expected)
    assert_close(scores, expected_scores)


def test_mha_causal_mask_matches_numpy(rng):
    layer = make_mha()
    x = random(rng, 2, 5, 6)
    output, scores = layer(x, use_causal_mask=True, return_attention_scores=True)
    expected, expected_scores = mha_np(layer, x, mask=np.tril(np.ones((5, 5), bool))[None])
    assert_close(output, expected)
    assert_close(scores, expected_scores)
    assert np.all(np.triu(np.asarray(scores), k=1) < 1e-12)


def test_mha_all_masks_combined_match_numpy(rng):
    layer = make_mha()
    x = random(rng, 2, 6, 6)
    padding = np.array([[1, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1]], bool)
    explicit = rng.random((2, 6, 6)) < 0.7
    explicit[:, :, 0] = True
    mask = np.tril(np.ones((6, 6), bool))[None] & padding[:, None, :] & explicit
    output = layer(x, key_padding_mask=padding, attention_mask=explicit, use_causal_mask=True)
    assert_close(output, mha_np(layer, x, mask=mask)[0])


def test_mha_rotary_matches_numpy(rng):
    layer = make_mha(key_dim=4, use_rotary_embedding=True)
    x = random(rng, 2, 5, 6)
    positions = np.tile(np.arange(5), (2, 1))
    output = layer(x, use_causal_mask=True)
    expected = mha_np(layer, x, mask=np.tril(np.ones((5, 5), bool))[None],
                      query_positions=positions, key_positions=positions)[0]
    assert_close(output, expected)
    # Rotary does change the result (so the test above could fail).
    plain = mha_np(layer, x, mask=np.tril(np.ones((5, 5), bool))[None])[0]
    assert not np.allclose(expected, plain, atol=1e-3)


def test_mha_without_bias(rng):
    layer = make_mha(use_bias=False)
    x = random(rng, 2, 5, 6)
    assert len(layer(x).shape) == 3
    assert all(len(dense.get_weights()) == 1 for dense in (layer.query_dense, layer.output_dense))
    assert_close(layer(x), mha_np(layer, x)[0])


def test_causal_mask_helper():
    expected = np.arange(6)[None, :] <= (np.arange(3)[:, None] + 2)
    np.testing.assert_array_equal(causal_mask(3, 6, 2), expected)
    np.testing.assert_array_equal(causal_mask(4, 4), np.tril(np.ones((4, 4), bool)))


# ------------------------------------------ MultiHeadAttention vs keras.layers.MultiHeadAttention
def keras_twin(layer, query, value):
    """keras.layers.MultiHeadAttention with `layer`'s weights."""
    heads, key_dim, value_dim = layer.num_heads, layer.key_dim, layer.value_dim
    twin = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim, value_dim=value_dim)
    twin(query, value)  # build
    for ours, theirs, head_dim in (
        (layer.query_dense, twin._query_dense, key_dim),
        (layer.key_dense, twin._key_dense, key_dim),
        (layer.value_dense, twin._value_dense, value_dim),
    ):
        kernel, bias = ours.get_weights()
        theirs.set_weights([kernel.reshape(kernel.shape[0], heads, head_dim), bias.reshape(heads, head_dim)])
    kernel, bias = layer.output_dense.get_weights()
    twin._output_dense.set_weights([kernel.reshape(heads, value_dim, kernel.shape[-1]), bias])
    return twin


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masks", ["none", "padding", "explicit", "both"])
@pytest.mark.parametrize("cross", [False, True])
def test_mha_matches_keras(rng, causal, masks, cross):
    layer = MultiHeadAttention(num_heads=3, key_dim=4, value_dim=2)
    query = random(rng, 2, 5, 8)
    value = random(rng, 2, 7, 8) if cross else query
    key_length = value.shape[1]
    padding = np.ones((2, key_length), bool)
    padding[0, 3] = padding[1, 1] = padding[1, 4] = False
    explicit = rng.random((2, 5, key_length)) < 0.6
    explicit[:, :, 0] = True  # no query loses every key (fully masked rows differ by convention)
    use_padding = masks in ("padding", "both")
    use_explicit = masks in ("explicit", "both")

    output = layer(
        query,
        value=value if cross else None,
        key_padding_mask=padding if use_padding else None,
        attention_mask=explicit if use_explicit else None,
        use_causal_mask=causal,
    )
    twin = keras_twin(layer, query, value)
    keras_mask = np.ones((2, 5, key_length), bool)
    if use_padding:
        keras_mask &= padding[:, None, :]
    if use_explicit:
        keras_mask &= explicit
    expected = twin(
        query, value, attention_mask=keras_mask if masks != "none" else None, use_causal_mask=causal
    )
    assert_close(output, np.asarray(expected, "float64"))


# -------------------------------------------------------------------- KV cache
def run_incremental(layer, x, chunks, cache_length, key_padding_mask=None):
    """Feeds `x` through `layer` in chunks with a cache; returns (outputs, final cache)."""
    batch = x.shape[0]
    empty = np.zeros((batch, layer.num_heads, cache_length, layer.key_dim), "float32")
    cache = (empty, empty)
    outputs, start = [], 0
    for size in chunks:
        output, cache = layer(
            x[:, start:start + size],
            key_padding_mask=key_padding_mask,
            use_causal_mask=True,
            cache=cache,
            cache_index=start,
        )
        assert output.shape == (batch, size, x.shape[-1])
        assert [tuple(part.shape) for part in cache] == [(batch, layer.num_heads, cache_length, layer.key_dim)] * 2
        outputs.append(np.asarray(output))
        start += size
    return np.concatenate(outputs, axis=1), np.stack(cache, axis=1)  # (batch, 2, heads, cache, head_dim)


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("chunks", [[1] * 6, [3, 1, 1, 1], [6]], ids=["steps", "prefill", "all"])
def test_mha_cache_matches_full_causal(rng, rotary, chunks):
    layer = MultiHeadAttention(num_heads=2, key_dim=4, use_rotary_embedding=rotary)
    x = random(rng, 2, 6, 8)
    cache_length = 9  # longer than the sequence: unwritten slots must stay masked
    full = layer(x, use_causal_mask=True)
    incremental, cache = run_incremental(layer, x, chunks, cache_length)
    assert_close(incremental, np.asarray(full, "float64"))

    # The cache holds the keys (rotated, for rotary) and values computed directly,
    # heads before positions: (batch, 2, heads, cache, head_dim).
    keys = dense_np(layer.key_dense, x).reshape(2, 6, 2, 4)
    values = dense_np(layer.value_dense, x).reshape(2, 6, 2, 4)
    if rotary:
        keys = rotary_np(keys, np.tile(np.arange(6), (2, 1)))
    assert_close(cache[:, 0, :, :6], keys.transpose(0, 2, 1, 3))
    assert_close(cache[:, 1, :, :6], values.transpose(0, 2, 1, 3))
    assert np.all(cache[:, :, :, 6:] == 0)


def test_mha_cache_with_key_padding_mask(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=4, use_rotary_embedding=True)
    x = random(rng, 2, 5, 8)
    padding = np.ones((2, 7), bool)  # covers the whole cache
    padding[0, 2] = padding[1, 1] = padding[1, 3] = False
    full = layer(x, key_padding_mask=padding[:, :5], use_causal_mask=True)
    incremental, _ = run_incremental(layer, x, [2, 1, 1, 1], 7, key_padding_mask=padding)
    assert_close(incremental, np.asarray(full, "float64"))
    # The padding mask is honoured (it changes the outputs).
    assert not np.allclose(full, layer(x, use_causal_mask=True), atol=1e-3)


def test_mha_cache_in_tf_function_with_tensor_index(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=4, use_rotary_embedding=True)
    x = random(rng, 1, 4, 8)
    full = np.asarray(layer(x, use_causal_mask=True))

    @tf.function
    def step(token, cache, index):
        return layer(token, use_causal_mask=True, cache=cache, cache_index=index)

    cache = (tf.zeros((1, 2, 4, 4)), tf.zeros((1, 2, 4, 4)))
    for index in range(4):
        output, cache = step(x[:, index:index + 1], cache, tf.constant(index, tf.int32))
        assert_close(output[:, 0], full[:, index])


@pytest.mark.parametrize("length", [1, 3])
@pytest.mark.parametrize("static_shapes", [True, False])
def test_write_to_cache_matches_numpy(rng, length, static_shapes):
    # One token takes the select-only path, several the gather + select path; both, with
    # the shapes known or unknown at trace time, equal a numpy slice assignment.
    cache = random(rng, 2, 3, 7, 4).astype("float32")
    update = random(rng, 2, 3, length, 4).astype("float32")
    signature = None if static_shapes else [
        tf.TensorSpec([None, 3, None, 4]), tf.TensorSpec([None, 3, length, 4]), tf.TensorSpec([], tf.int32)]
    write = tf.function(lambda cache, update, index: write_to_cache(cache, update, index), input_signature=signature)
    for index in (0, 2, 7 - length):
        expected = cache.copy()
        expected[:, :, index:index + length] = update
        np.testing.assert_array_equal(write(cache, update, tf.constant(index, tf.int32)), expected)


def test_on_tokens_equals_the_dense_layer_without_shape_ops_for_an_unknown_batch(rng):
    dense = keras.layers.Dense(3)
    x = random(rng, 2, 5, 4).astype("float32")
    expected = np.asarray(dense(x))
    signature = [tf.TensorSpec([None, 5, 4])]
    tokenwise = tf.function(lambda x: on_tokens(dense, x), input_signature=signature)
    plain = tf.function(lambda x: dense(x), input_signature=signature)
    np.testing.assert_allclose(tokenwise(x), expected, atol=1e-6)

    def shape_ops(function):
        return [op.type for op in function.get_concrete_function().graph.get_operations() if op.type == "Shape"]

    # Why on_tokens exists: Dense on 3-D with an unknown batch reads shapes at run time.
    assert shape_ops(plain) and not shape_ops(tokenwise)
    # Other shapes pass straight through to the function.
    assert_close(on_tokens(dense, x[0]), expected[0])


@pytest.mark.parametrize("with_padding", [False, True])
def test_mha_cache_with_unknown_batch_and_cache_length_matches_full_causal(rng, with_padding):
    # An export traces the decode step with the batch size and cache length unknown; the
    # cache length then comes from the key padding mask (or the cache).
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = random(rng, 2, 4, 8).astype("float32")
    padding = np.ones((2, 6), bool)
    if with_padding:
        padding[1, 1] = False
    full = np.asarray(layer(x, key_padding_mask=padding[:, :4] if with_padding else None, use_causal_mask=True))
    cache_spec = tf.TensorSpec([None, 2, None, 4])

    @tf.function(input_signature=[
        tf.TensorSpec([None, 1, 8]), cache_spec, cache_spec, tf.TensorSpec([], tf.int32), tf.TensorSpec([None, None], tf.bool)])
    def step(token, keys, values, index, padding):
        return layer(token, use_causal_mask=True, cache=(keys, values), cache_index=index,
                     key_padding_mask=padding if with_padding else None)

    cache = (tf.zeros((2, 2, 6, 4)), tf.zeros((2, 2, 6, 4)))
    for index in range(4):
        output, cache = step(x[:, index:index + 1], *cache, tf.constant(index, tf.int32), padding)
        assert_close(output[:, 0], full[:, index])


def test_in_place_cache_writes_under_xla_equal_the_default(rng):
    # cache_writes_in_place() swaps gather + select for XLA's dynamic_update_slice.
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = random(rng, 2, 5, 8)

    def decode(in_place):
        @tf.function(jit_compile=True)
        def step(tokens, cache, index):
            with cache_writes_in_place() if in_place else contextlib.nullcontext():
                return layer(tokens, use_causal_mask=True, cache=cache, cache_index=index)

        cache, outputs = (tf.zeros((2, 2, 6, 4)), tf.zeros((2, 2, 6, 4))), []
        for start, end in ((0, 2), (2, 3), (3, 5)):  # a prompt of 2, then one token at a time
            output, cache = step(x[:, start:end], cache, tf.constant(start, tf.int32))
            outputs.append(output)
        graph = step.get_concrete_function(x[:, :1], cache, tf.constant(0, tf.int32)).graph
        return np.concatenate(outputs, axis=1), np.stack(cache), {op.type for op in graph.get_operations()}

    default, default_cache, default_ops = decode(False)
    in_place, in_place_cache, in_place_ops = decode(True)
    assert "XlaDynamicUpdateSlice" in in_place_ops and "XlaDynamicUpdateSlice" not in default_ops
    np.testing.assert_allclose(in_place, default, atol=1e-6)
    np.testing.assert_array_equal(in_place_cache, default_cache)
    assert_close(default, np.asarray(layer(x, use_causal_mask=True)))


def test_causal_query_blocks_cover_the_sequence():
    assert causal_query_blocks(None) is None and causal_query_blocks(255) is None
    assert causal_query_blocks(256) == [(0, 128), (128, 256)]
    assert causal_query_blocks(400) == [(0, 134), (134, 268), (268, 400)]
    assert causal_query_blocks(4096) == [(start, start + 512) for start in range(0, 4096, 512)]
    for length in (256, 257, 300, 511, 512, 700, 1024):
        blocks = causal_query_blocks(length)
        assert 2 <= len(blocks) <= 8 and blocks[0][0] == 0 and blocks[-1][1] == length
        assert all(end == next_start for (_, end), (next_start, _) in zip(blocks, blocks[1:]))


@pytest.mark.parametrize("length, masks", [(256, False), (300, True)])
def test_block_causal_attention_under_xla_equals_the_full_mask(rng, length, masks):
    # Under XLA, causal self-attention splits its queries into blocks that skip the keys
    # after them; outputs and gradients must match the one-mask path and NumPy.
    layer = MultiHeadAttention(num_heads=2, key_dim=8)
    x = random(rng, 2, length, 16)
    padding = explicit = None
    mask = np.tril(np.ones((length, length), bool))[None]
    if masks:
        padding = np.ones((2, length), bool)
        padding[0, 150:] = False
        padding[1, 3] = False
        explicit = rng.random((2, length, length)) < 0.8
        explicit[:, :, 0] = True
        mask = mask & padding[:, None, :] & explicit
    layer(x)  # build outside the functions, which then trace once each
    attend_calls = []
    attend = layer._attend
    layer._attend = lambda *arguments: attend_calls.append(1) or attend(*arguments)

    def loss_and_gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            output = layer(x, key_padding_mask=padding, attention_mask=explicit, use_causal_mask=True)
            loss = tf.reduce_sum(output * tf.sin(tf.range(output.shape[-1], dtype=output.dtype)))
        return (output,) + tuple(tape.gradient(loss, [x] + layer.trainable_weights))

    x = tf.constant(x)
    blocked = tf.function(loss_and_gradients, jit_compile=True)(x)
    assert len(attend_calls) == len(causal_query_blocks(length))
    attend_calls.clear()
    full = tf.function(loss_and_gradients)(x)  # no XLA: one mask over all keys
    assert len(attend_calls) == 1
    assert_close(blocked[0], mha_np(layer, np.asarray(x), mask=mask)[0])
    for ours, reference in zip(blocked, full):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=2e-5, rtol=1e-4)


def test_in_xla_function():
    assert not in_xla_function()  # eager
    assert not tf.function(in_xla_function)()
    assert tf.function(in_xla_function, jit_compile=True)()


def test_mha_precomputed_cross_attention_cache(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    query, encoder = random(rng, 2, 3, 8), random(rng, 2, 5, 8)
    padding = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    expected = layer(query, value=encoder, key_padding_mask=padding)
    keys = dense_np(layer.key_dense, encoder).reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)
    values = dense_np(layer.value_dense, encoder).reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)
    cache = (keys.astype("float32"), values.astype("float32"))  # each (batch, heads, source, head_dim)
    computed = layer.key_value_cache(encoder)
    assert_close(computed[0], keys)
    assert_close(computed[1], values)
    output, returned = layer(query, key_padding_mask=padding, cache=cache)
    assert_close(output, np.asarray(expected, "float64"))
    np.testing.assert_array_equal(np.stack(returned), np.stack(cache))


# ------------------------------------------------------------- PositionalEncoding
def sinusoid_loop(num_positions, dim, base=10000.0):
    table = np.zeros((num_positions, dim))
    for pos in range(num_positions):
        for i in range(dim // 2):
            table[pos, 2 * i] = math.sin(pos / base ** (2 * i / dim))
            table[pos, 2 * i + 1] = math.cos(pos / base ** (2 * i / dim))
    return table


def test_sinusoidal_matches_formula(rng):
    layer = PositionalEncoding("sinusoidal", max_sequence_length=40)
    x = random(rng, 2, 30, 10)
    table = sinusoid_loop(40, 10)
    assert_close(layer(np.zeros((1, 30, 10), "float32"))[0], table[:30])
    assert_close(layer(x), x + table[None, :30])


def test_sinusoidal_max_wavelength(rng):
    layer = PositionalEncoding("sinusoidal", max_sequence_length=20, max_wavelength=100.0)
    assert_close(layer(np.zeros((1, 12, 6), "float32"))[0], sinusoid_loop(12, 6, base=100.0))


def test_sinusoidal_start_index(rng):
    layer = PositionalEncoding("sinusoidal", max_sequence_length=32)
    table = sinusoid_loop(32, 8)
    x = random(rng, 3, 4, 8)
    assert_close(layer(x, start_index=5), x + table[None, 5:9])
    assert_close(layer(x, start_index=tf.constant(7)), x + table[None, 7:11])
    # One start per example; negative positions (left padding) clip to 0.
    starts = np.array([0, 3, -2], "int32")
    expected = np.stack([x[b] + table[np.maximum(np.arange(4) + starts[b], 0)] for b in range(3)])
    assert_close(layer(x, start_index=starts), expected)


def test_learned_adds_table_rows(rng):
    layer = PositionalEncoding("learned", max_sequence_length=12)
    x = random(rng, 3, 4, 6)
    layer(x)  # build
    table = random(rng, 12, 6)
    layer.set_weights([table])
    assert_close(layer(x), x + table[None, :4])
    assert_close(layer(x, start_index=8), x + table[None, 8:12])
    starts = np.array([2, 0, -1], "int32")
    expected = np.stack([x[b] + table[np.maximum(np.arange(4) + starts[b], 0)] for b in range(3)])
    assert_close(layer(x, start_index=starts), expected)
    assert len(layer.trainable_weights) == 1


def test_rotary_matches_pairwise_rotation(rng):
    layer = PositionalEncoding("rotary")
    x = random(rng, 2, 5, 3, 8)  # (batch, sequence, heads, head_dim)
    positions = np.tile(np.arange(5), (2, 1))
    assert_close(layer(x), rotary_np(x, positions))
    assert_close(layer(x, start_index=11), rotary_np(x, positions + 11))
    starts = np.array([4, -2], "int32")
    expected = rotary_np(x, np.maximum(positions + starts[:, None], 0))
    assert_close(layer(x, start_index=starts), expected)
    # Position 0 is the identity; rotation preserves norms.
    assert_close(layer(x[:, :1]), x[:, :1])
    assert_close(np.linalg.norm(layer(x), axis=-1), np.linalg.norm(x, axis=-1))


def test_rotary_relative_position_property(rng):
    layer = PositionalEncoding("rotary")
    q, k = random(rng, 1, 1, 1, 16), random(rng, 1, 1, 1, 16)

    def score(m, n):
        rotated_q = np.asarray(layer(q, start_index=m), "float64")
        rotated_k = np.asarray(layer(k, start_index=n), "float64")
        return float((rotated_q * rotated_k).sum())

    for offset in (0, 1, 3, 9):
        reference = score(offset, 0)
        for shift in (1, 5, 20):
            assert score(offset + shift, shift) == pytest.approx(reference, abs=1e-4)
    # ...and it does depend on the difference.
    assert abs(score(3, 0) - score(0, 0)) > 1e-3


# --------------------------------------------------------------- TransformerBlock
@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_padding", [False, True])
def test_block_matches_numpy(rng, normalize_first, causal, with_padding):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, normalize_first=normalize_first, causal=causal)
    x = random(rng, 2, 5, 8)
    padding = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 1, 1]], bool) if with_padding else None
    block(x)  # build
    randomize_norms(block, rng)
    output = block(x, padding_mask=padding)
    assert_close(output, block_np(block, x, padding_mask=padding))


@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate", "relu"])
def test_block_activations_match_numpy(rng, activation):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, activation=activation)
    x = 2.0 * random(rng, 2, 5, 8)
    output = block(x)
    expected = block_np(block, x)
    assert_close(output, expected)
    if activation != "relu":
        # Exact and tanh GELU are told apart at this tolerance.
        other = "gelu" if activation == "gelu_approximate" else "gelu_approximate"
        twin = TransformerBlock(num_heads=2, intermediate_dim=12, activation=other)
        twin(x)
        twin.set_weights(block.get_weights())
        assert np.abs(np.asarray(twin(x), "float64") - expected).max() > 10 * ATOL


@pytest.mark.parametrize("name", ["gelu", "gelu_approximate"])
def test_fused_gelu_matches_numpy_and_finite_differences(rng, name):
    """The fused GELUs against the NumPy formulas, and their hand-written gradients
    against central differences of those formulas, in float64."""
    x = np.concatenate([np.linspace(-7.0, 7.0, 141), 3.0 * rng.standard_normal(59)])
    upstream = rng.standard_normal(x.shape)
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = fused_activation(name)(inputs)
    gradient = tape.gradient(outputs, inputs, output_gradients=tf.constant(upstream))
    formula, step = ACTIVATIONS_NP[name], 1e-6
    np.testing.assert_allclose(outputs.numpy(), formula(x), atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(
        gradient.numpy(), upstream * (formula(x + step) - formula(x - step)) / (2 * step), atol=1e-8, rtol=1e-7
    )


@pytest.mark.parametrize("name", ["gelu", "gelu_approximate"])
def test_fused_gelu_keeps_the_input_dtype_and_rounds_once_in_bfloat16(rng, name):
    x = 3.0 * random(rng, 64, 32)
    upstream = random(rng, 64, 32)
    expected = ACTIVATIONS_NP[name](x.astype("float64"))
    for dtype, tolerance in (("float32", 1e-6), ("bfloat16", 2.0**-8)):  # bfloat16: 8 bits of mantissa
        inputs = tf.cast(tf.constant(x), dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = fused_activation(name)(inputs)
        gradient = tape.gradient(outputs, inputs, output_gradients=tf.cast(upstream, dtype))
        assert outputs.dtype == dtype and gradient.dtype == dtype
        exact_inputs = np.asarray(tf.cast(inputs, "float64"))  # the bfloat16 inputs are rounded already
        np.testing.assert_allclose(
            np.asarray(tf.cast(outputs, "float64")), ACTIVATIONS_NP[name](exact_inputs), rtol=tolerance, atol=tolerance
        )
    assert np.abs(np.asarray(tf.cast(outputs, "float64")) - expected).max() > 1e-6  # bfloat16 does round


def test_exact_gelu_is_the_formula_and_keras_gelu_to_float_rounding():
    """tfzoo's "gelu" (erf) against the formula (math.erf) and Keras' erfc-based exact GELU,
    in float64, float32 and bfloat16; the tanh approximation is told apart."""
    x = np.concatenate([np.linspace(-10.0, 10.0, 2001), [-1e-3, 1e-3, 0.0]])
    # float64: TensorFlow's double erf kernel is good to about 1e-8 absolute, not to the last bit.
    np.testing.assert_allclose(activations.gelu(tf.constant(x)).numpy(), gelu_np(x), atol=1e-8, rtol=1e-6)
    ours = activations.gelu(tf.constant(x, "float32")).numpy()
    np.testing.assert_allclose(ours, gelu_np(x), atol=1e-6, rtol=1e-5)
    keras_exact = keras.activations.gelu(tf.constant(x, "float32"), approximate=False).numpy()
    assert np.abs(ours - keras_exact).max() < 1e-6
    assert np.abs(ours - gelu_tanh_np(x)).max() > 1e-4
    half = activations.gelu(tf.constant(x, "bfloat16"))
    assert half.dtype == tf.bfloat16
    np.testing.assert_allclose(np.asarray(tf.cast(half, "float64")), gelu_np(np.asarray(tf.cast(tf.constant(x, "bfloat16"), "float64"))),
                               atol=2.0**-7, rtol=2.0**-7)
    assert get_activation("gelu") is activations.gelu
    assert keras.activations.deserialize(keras.activations.serialize(activations.gelu)) is activations.gelu


def test_exact_gelu_converts_to_the_tflite_gelu_builtin():
    """The TFLite converter fuses this form of the exact GELU into one GELU op."""
    function = tf.function(activations.gelu, input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    assert [op["op_name"] for op in interpreter._get_ops_details()] == ["GELU"]
    x = np.linspace(-6.0, 6.0, 16, dtype="float32").reshape(2, 8)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), gelu_np(x), atol=1e-6)


def test_fused_activation_is_only_for_the_gelus():
    assert fused_activation("relu") is None and fused_activation(get_activation("gelu")) is None


def test_small_activations_keep_the_plain_ops_in_training(rng):
    """Under FUSED_MIN_ELEMENTS a fused pass costs more than it saves (bench_fused_gelu.py)."""
    assert not activations.worth_fusing(tf.zeros((2, 5, 12)))
    assert activations.worth_fusing(tf.zeros((64, activations.FUSED_MIN_ELEMENTS // 64)))
    assert activations.worth_fusing(tf.TensorSpec((None, 5, 12)))  # a shape not known while tracing
    block = TransformerBlock(num_heads=2, intermediate_dim=12, activation="gelu")
    x = random(rng, 2, 5, 8)
    block(x)
    fused, calls = block.fused_activation_function, []
    block.fused_activation_function = lambda hidden: calls.append(1) or fused(hidden)
    block(x, training=True)
    assert calls == []


@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate", "relu"])
def test_block_in_training_runs_the_fused_activation_with_the_same_values(rng, activation, monkeypatch):
    """With dropout 0, training=True (the fused GELU) and training=False (the plain ops,
    checked against NumPy above) give the same outputs and gradients."""
    monkeypatch.setattr(activations, "FUSED_MIN_ELEMENTS", 0)  # this block's activations are tiny
    block = TransformerBlock(num_heads=2, intermediate_dim=12, activation=activation, causal=True)
    x = tf.constant(2.0 * random(rng, 2, 5, 8))
    weights = tf.constant(random(rng, 2, 5, 8))
    block(x)
    randomize_norms(block, rng)
    fused, calls = block.fused_activation_function, []
    if fused is not None:
        block.fused_activation_function = lambda hidden: calls.append(1) or fused(hidden)
    results = {}
    for training in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(block(x, training=training) * weights)
        results[training] = [loss] + tape.gradient(loss, [x] + block.trainable_variables)
    assert len(calls) == (0 if fused is None else 1)  # once, in training
    for fused_value, plain_value in zip(results[True], results[False]):
        np.testing.assert_allclose(fused_value.numpy(), plain_value.numpy(), atol=1e-5, rtol=1e-5)


def test_fused_layer_normalization_matches_keras_values_and_gradients(rng):
    """The fused pass and its hand-written gradient against Keras' LayerNormalization
    (TensorFlow's own autodiff of its ops), in float64, on 3-D inputs."""
    norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype="float64")
    x = tf.constant(3.0 * rng.standard_normal((2, 5, 8)) + 1.0)
    norm(x)
    norm.gamma.assign(rng.standard_normal(8))
    norm.beta.assign(rng.standard_normal(8))
    upstream = tf.constant(rng.standard_normal((2, 5, 8)))
    results = []
    for function in (norm, lambda x: fused_layer_normalization(x, norm.gamma, norm.beta, norm.epsilon)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = function(x)
        results.append([outputs] + tape.gradient(outputs, [x, norm.gamma, norm.beta], output_gradients=upstream))
    for fused_value, keras_value in zip(results[1], results[0]):
        np.testing.assert_allclose(np.asarray(fused_value), np.asarray(keras_value), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("gamma_shape, beta_shape, name", [((7,), (8,), "gamma"), ((8,), (8, 1), "beta")])
def test_fused_layer_normalization_rejects_weights_of_the_wrong_shape(gamma_shape, beta_shape, name):
    with pytest.raises(ValueError, match=rf"`{name}` must have shape \(8,\)"):
        fused_layer_normalization(tf.ones((2, 8)), tf.ones(gamma_shape), tf.zeros(beta_shape), 1e-5)


def test_fused_layer_normalization_in_bfloat16_keeps_dtypes_and_rounds_once(rng):
    x32 = 2.0 * random(rng, 64, 32)
    gamma, beta = tf.constant(random(rng, 32)), tf.constant(random(rng, 32))
    x = tf.cast(x32, "bfloat16")
    upstream = tf.cast(random(rng, 64, 32), "bfloat16")
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        outputs = fused_layer_normalization(x, gamma, beta, 1e-5)
    x_gradient, gamma_gradient, beta_gradient = tape.gradient(outputs, [x, gamma, beta], output_gradients=upstream)
    assert outputs.dtype == x_gradient.dtype == "bfloat16"
    assert gamma_gradient.dtype == beta_gradient.dtype == "float32"  # the variables' dtype
    exact = layer_norm_formula(np.asarray(tf.cast(x, "float64")), gamma.numpy(), beta.numpy(), 1e-5)
    np.testing.assert_allclose(np.asarray(tf.cast(outputs, "float64")), exact, rtol=2.0**-8, atol=2.0**-7)


def layer_norm_formula(x, gamma, beta, epsilon):
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + epsilon) * gamma + beta


@pytest.mark.parametrize("case", ["inference", "no_scale", "no_center", "not_last_axis", "fused"])
def test_normalize_fuses_only_what_the_fused_pass_computes(rng, monkeypatch, case):
    monkeypatch.setattr(activations, "FUSED_MIN_ELEMENTS", 0)
    options = {"no_scale": {"scale": False}, "no_center": {"center": False},
               "not_last_axis": {"axis": 1}}.get(case, {})
    norm = keras.layers.LayerNormalization(**options)
    x = tf.constant(random(rng, 2, 5, 8))
    expected = np.asarray(norm(x))
    calls = []
    monkeypatch.setattr(normalization, "fused_layer_normalization",
                        lambda *arguments: calls.append(1) or fused_layer_normalization(*arguments))
    np.testing.assert_allclose(normalization.normalize(norm, x, training=case != "inference"), expected, atol=1e-5)
    assert len(calls) == (1 if case == "fused" else 0)


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
def test_block_residual_order_from_sublayers(rng, normalize_first):
    """Pre-norm and post-norm wiring, written with the block's own sublayers."""
    block = TransformerBlock(num_heads=2, intermediate_dim=12, normalize_first=normalize_first)
    x = random(rng, 2, 4, 8)
    block(x)
    randomize_norms(block, rng)

    def feed_forward(h):
        return block.output_dense(block.activation_function(block.intermediate_dense(h)))

    if normalize_first:
        h = x + block.self_attention(block.self_attention_norm(x))
        expected = h + feed_forward(block.feed_forward_norm(h))
    else:
        h = block.self_attention_norm(x + block.self_attention(x))
        expected = block.feed_forward_norm(h + feed_forward(h))
    assert_close(block(x), np.asarray(expected, "float64"))
    # The other wiring gives something else (so this test can tell them apart).
    other = TransformerBlock(num_heads=2, intermediate_dim=12, normalize_first=not normalize_first)
    other(x)
    other.set_weights(block.get_weights())
    assert not np.allclose(other(x), expected, atol=1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_block_causality(rng, causal):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, causal=causal, normalize_first=True)
    x = random(rng, 2, 6, 8)
    changed = x.copy()
    changed[:, 3:] = random(rng, 2, 3, 8)
    before, after = np.asarray(block(x)), np.asarray(block(changed))
    if causal:
        np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-6)
    else:
        assert not np.allclose(after[:, :3], before[:, :3], atol=1e-3)
    assert not np.allclose(after[:, 3:], before[:, 3:], atol=1e-3)


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
def test_cross_attention_block_matches_numpy(rng, normalize_first):
    block = TransformerBlock(
        num_heads=2, intermediate_dim=12, causal=True, cross_attention=True, normalize_first=normalize_first
    )
    x, encoder = random(rng, 2, 4, 8), random(rng, 2, 6, 8)
    encoder_padding = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    block(x, encoder_outputs=encoder)
    randomize_norms(block, rng)
    output = block(x, encoder_outputs=encoder, encoder_padding_mask=encoder_padding)
    expected = block_np(block, x, encoder_outputs=encoder, encoder_padding_mask=encoder_padding)
    assert_close(output, expected)


def test_cross_attention_block_requires_encoder_outputs(rng):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, cross_attention=True)
    x = random(rng, 1, 3, 8)
    with pytest.raises(ValueError, match="encoder_outputs"):
        block(x)
    block(x, encoder_outputs=random(rng, 1, 4, 8))  # built now; still required
    with pytest.raises(ValueError, match="encoder_outputs"):
        block(x)


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
def test_block_cache_matches_uncached(rng, rotary, normalize_first):
    block = TransformerBlock(
        num_heads=2, intermediate_dim=12, causal=True, normalize_first=normalize_first,
        use_rotary_embedding=rotary,
    )
    x = random(rng, 2, 5, 8)
    padding = np.ones((2, 7), bool)
    # Not position 0: a query with no visible key gets uniform attention over every
    # key, cache slots included, so such rows legitimately differ.
    padding[1, 2] = False
    full = np.asarray(block(x, padding_mask=padding[:, :5]))
    cache = (np.zeros((2, 2, 7, 4), "float32"),) * 2  # keys, values: (batch, heads, cache, head_dim)
    outputs, start = [], 0
    for size in (2, 1, 1, 1):
        output, cache = block(x[:, start:start + size], padding_mask=padding, cache=cache, cache_index=start)
        outputs.append(np.asarray(output))
        start += size
    assert_close(np.concatenate(outputs, axis=1), full)
    keys = dense_np(block.self_attention.key_dense, layer_norm_np(block.self_attention_norm, x)
                    if normalize_first else x).reshape(2, 5, 2, 4)
    if rotary:
        keys = rotary_np(keys, np.tile(np.arange(5), (2, 1)))
    assert_close(np.asarray(cache[0])[:, :, :5], keys.transpose(0, 2, 1, 3))


def test_cross_attention_block_self_cache_matches_uncached(rng):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, causal=True, cross_attention=True,
                             normalize_first=True)
    x, encoder = random(rng, 2, 4, 8), random(rng, 2, 6, 8)
    full = np.asarray(block(x, encoder_outputs=encoder))
    cache = (np.zeros((2, 2, 4, 4), "float32"),) * 2
    outputs = []
    for index in range(4):
        output, cache = block(x[:, index:index + 1], encoder_outputs=encoder, cache=cache, cache_index=index)
        outputs.append(np.asarray(output))
    assert_close(np.concatenate(outputs, axis=1), full)


def test_block_cross_attention_cache_matches_encoder_outputs(rng):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, causal=True, cross_attention=True,
                             normalize_first=True)
    x, encoder = random(rng, 2, 3, 8), random(rng, 2, 5, 8)
    full = np.asarray(block(x, encoder_outputs=encoder))
    attention = block.cross_attention_layer
    keys = dense_np(attention.key_dense, encoder).reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)
    values = dense_np(attention.value_dense, encoder).reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)
    cross_cache = (keys.astype("float32"), values.astype("float32"))  # each (batch, heads, source, head_dim)
    assert_close(block(x, cross_attention_cache=cross_cache), full)


# ------------------------------------------------------------- config round trips
def _mha_case(rng):
    layer = MultiHeadAttention(
        num_heads=2, key_dim=4, value_dim=6, output_dim=5, dropout=0.1, use_bias=False,
        use_rotary_embedding=True, max_sequence_length=64,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.1), name="attention",
    )
    query, value = random(rng, 2, 4, 8), random(rng, 2, 6, 7)
    return layer, lambda layer: layer(query, value=value, use_causal_mask=True, training=False)


def _positional_case(kind):
    def case(rng):
        layer = PositionalEncoding(kind, max_sequence_length=24, max_wavelength=500.0, name="positions")
        x = random(rng, 2, 5, 3, 6) if kind == "rotary" else random(rng, 2, 5, 6)
        return layer, lambda layer: layer(x, start_index=np.array([3, 7], "int32"))
    return case


def _block_case(rng):
    layer = TransformerBlock(
        num_heads=2, intermediate_dim=16, dropout=0.1, activation="relu", normalize_first=True,
        causal=True, cross_attention=True, layer_norm_epsilon=1e-6, use_rotary_embedding=True,
        max_sequence_length=64, kernel_initializer="he_normal", name="block",
    )
    x, encoder = random(rng, 2, 4, 8), random(rng, 2, 6, 8)
    return layer, lambda layer: layer(x, encoder_outputs=encoder, training=False)


def _encoder_block_case(rng):
    layer = TransformerBlock(num_heads=4, intermediate_dim=16, activation="gelu_approximate", name="encoder")
    x = random(rng, 2, 4, 8)
    return layer, lambda layer: layer(x, padding_mask=np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool))


CASES = {
    "mha": _mha_case,
    "encoder_block": _encoder_block_case,
    "sinusoidal": _positional_case("sinusoidal"),
    "learned": _positional_case("learned"),
    "rotary": _positional_case("rotary"),
    "block": _block_case,
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_round_trip(rng, case):
    layer, run = CASES[case](rng)
    expected = np.asarray(run(layer))
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    run(clone)  # build
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(run(clone), expected, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_serialize_deserialize(rng, case):
    layer, run = CASES[case](rng)
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"tfzoo>{type(layer).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def test_config_values_survive(rng):
    config = MultiHeadAttention(num_heads=3, key_dim=5, dropout=0.25).get_config()
    assert (config["num_heads"], config["key_dim"], config["value_dim"], config["dropout"]) == (3, 5, 5, 0.25)
    config = TransformerBlock(num_heads=4, intermediate_dim=7, activation="relu", causal=True).get_config()
    assert config["activation"] == "relu" and config["causal"] is True and config["intermediate_dim"] == 7
    assert PositionalEncoding("learned", 9).get_config()["kind"] == "learned"


def test_model_save_and_load(rng, tmp_path):
    inputs = keras.Input((5, 8))
    x = PositionalEncoding("learned", max_sequence_length=8)(inputs)
    x = TransformerBlock(num_heads=2, intermediate_dim=16, causal=True, use_rotary_embedding=True)(x)
    model = keras.Model(inputs, x)
    data = random(rng, 2, 5, 8)
    expected = model.predict(data, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored.predict(data, verbose=0), expected, atol=1e-6)


# -------------------------------------------------------------------- bad input
def test_unknown_positional_kind():
    with pytest.raises(ValueError, match="absolute"):
        PositionalEncoding("absolute")


def test_rotary_needs_even_width(rng):
    with pytest.raises(ValueError, match="even head_dim"):
        PositionalEncoding("rotary")(random(rng, 1, 3, 2, 7))


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_table_kinds_take_odd_widths(rng, kind):
    layer = PositionalEncoding(kind, max_sequence_length=8)
    inputs = np.zeros((1, 3, 7), "float32")
    outputs = np.asarray(layer(inputs))
    if kind == "sinusoidal":  # PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)
        position, pair = 2, 3  # feature 6, the unpaired last one
        np.testing.assert_allclose(outputs[0, position, 2 * pair], math.sin(position / 10000 ** (2 * pair / 7)), atol=1e-6)
        np.testing.assert_allclose(outputs[0, position, 1], math.cos(position / 10000 ** 0), atol=1e-6)
    assert outputs.shape == (1, 3, 7)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_positions_past_the_table_are_refused(rng, kind):
    layer = PositionalEncoding(kind, max_sequence_length=4)
    layer(random(rng, 1, 4, 6))  # exactly fits
    with pytest.raises(ValueError, match=r"Positions 0\.\.4 .*max_sequence_length=4"):
        layer(random(rng, 1, 5, 6))
    with pytest.raises(ValueError, match=r"Positions 2\.\.4"):
        layer(random(rng, 1, 3, 6), start_index=2)


def test_block_width_not_divisible_by_heads(rng):
    block = TransformerBlock(num_heads=3, intermediate_dim=12)
    with pytest.raises(ValueError, match=r"width 8 .*num_heads=3"):
        block(random(rng, 1, 4, 8))


@pytest.mark.parametrize("factory", [
    lambda: MultiHeadAttention(num_heads=0, key_dim=4),
    lambda: TransformerBlock(num_heads=0, intermediate_dim=4),
], ids=["mha", "block"])
def test_zero_heads(factory):
    with pytest.raises(ValueError, match="num_heads=0"):
        factory()


def test_zero_key_dim():
    with pytest.raises(ValueError, match="key_dim=0"):
        MultiHeadAttention(num_heads=2, key_dim=0)


@pytest.mark.parametrize("name", ["value_dim", "output_dim"])
def test_zero_value_or_output_dim_is_an_error_not_the_default(name):
    with pytest.raises(ValueError, match=f"{name}=0"):
        MultiHeadAttention(num_heads=2, key_dim=4, **{name: 0})


@pytest.mark.parametrize("rate", [1.5, -0.1, 1.0])
def test_bad_dropout_mha(rate):
    with pytest.raises(ValueError, match=re.escape(f"dropout={rate}")):
        MultiHeadAttention(num_heads=2, key_dim=4, dropout=rate)


def test_bad_dropout_block(rng):
    # At the latest when the block builds its attention.
    with pytest.raises(ValueError, match="1.5"):
        block = TransformerBlock(num_heads=2, intermediate_dim=8, dropout=1.5)
        block(random(rng, 1, 3, 8))


# ---------------------------------------------------------------------- dropout
def test_mha_dropout_only_in_training(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.5)
    x = random(rng, 2, 5, 8)
    inference = layer(x, training=False)
    assert_close(inference, mha_np(layer, x)[0])
    assert_close(layer(x), mha_np(layer, x)[0])  # training defaults to off
    assert not np.allclose(layer(x, training=True), inference, atol=1e-3)
    no_dropout = MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.0)
    assert_close(no_dropout(x, training=True), np.asarray(no_dropout(x, training=False), "float64"))


def test_block_dropout_only_in_training(rng):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, dropout=0.5, normalize_first=True)
    x = random(rng, 2, 5, 8)
    inference = block(x, training=False)
    assert_close(inference, block_np(block, x))
    assert not np.allclose(block(x, training=True), inference, atol=1e-3)


# ------------------------------------------------------------- packed tokens
def packed_case(rng):
    x = random(rng, 3, 6, 8)
    padding = np.ones((3, 6), bool)
    padding[0, 4:] = padding[2, 1:] = False
    positions = np.flatnonzero(padding.reshape(-1)).astype("int32")
    return x, padding, positions


def test_pack_and_unpack_tokens_are_inverse_on_real_positions(rng):
    x, padding, positions = packed_case(rng)
    packed = pack_tokens(x, positions)
    assert packed.shape == (padding.sum(), 8)
    assert_close(packed, x.reshape(-1, 8)[positions])
    grid = np.asarray(unpack_tokens(packed, positions, padding.shape))
    assert_close(grid[padding], x[padding])
    assert np.all(grid[~padding] == 0)


def test_mha_on_packed_tokens_equals_the_grid_at_real_tokens(rng):
    layer = make_mha(output_dim=None)
    x, padding, positions = packed_case(rng)
    expected = np.asarray(layer(x, key_padding_mask=padding))[padding]
    assert_close(layer(pack_tokens(x, positions), key_padding_mask=padding, packed_positions=positions), expected)
    with pytest.raises(ValueError, match="packed_positions"):
        layer(pack_tokens(x, positions), packed_positions=positions)  # no grid to unpack into


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
def test_block_on_packed_tokens_equals_the_grid_at_real_tokens(rng, normalize_first):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, normalize_first=normalize_first)
    x, padding, positions = packed_case(rng)
    block(x, padding_mask=padding)  # builds
    randomize_norms(block, rng)
    expected = np.asarray(block(x, padding_mask=padding))[padding]
    assert_close(block(pack_tokens(x, positions), padding_mask=padding, packed_positions=positions), expected)
    decoder = TransformerBlock(num_heads=2, intermediate_dim=12, causal=True, cross_attention=True)
    decoder(x, encoder_outputs=x)
    with pytest.raises(ValueError, match="packed_positions"):
        decoder(pack_tokens(x, positions), padding_mask=padding, encoder_outputs=x, packed_positions=positions)
