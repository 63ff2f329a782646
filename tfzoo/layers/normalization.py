"""A fused layer normalization for training.

Without XLA (Keras' default on CPU), a `keras.layers.LayerNormalization` is about ten
TensorFlow ops forward and twenty for its gradient (means, a squared difference, tiles
of the broadcast gradients, sums for gamma and beta), each a pass over the
`(tokens, hidden_dim)` tensor. `fused_layer_normalization` computes the same function
with its forward pass and its hand-written gradient each compiled by XLA into one pass,
the way `tfzoo.layers.activations` fuses the GELU. The blocks use it in training only
(`normalize`); inference and exported models keep the Keras layer, which every runtime
has.
"""

import keras
import tensorflow as tf

from tfzoo.layers.activations import compute_dtype_of, worth_fusing


def _statistics(x, epsilon):
    # The normalized input and the inverse standard deviation, over the last axis.
    v = tf.cast(x, compute_dtype_of(x))
    centred = v - tf.reduce_mean(v, axis=-1, keepdims=True)
    inverse = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True) + epsilon)
    return centred * inverse, inverse


@tf.function(jit_compile=True)
def _forward(x, gamma, beta, epsilon):
    normalized, _ = _statistics(x, epsilon)
    return tf.cast(normalized * tf.cast(gamma, normalized.dtype) + tf.cast(beta, normalized.dtype), x.dtype)


@tf.function(jit_compile=True)
def _gradient(x, gamma, beta, upstream, epsilon):
    # Recomputes the statistics (cheap inside one fused pass) rather than keeping them.
    normalized, inverse = _statistics(x, epsilon)
    upstream = tf.cast(upstream, normalized.dtype)
    scaled = upstream * tf.cast(gamma, normalized.dtype)
    x_gradient = inverse * (
        scaled
        - tf.reduce_mean(scaled, axis=-1, keepdims=True)
        - normalized * tf.reduce_mean(scaled * normalized, axis=-1, keepdims=True)
    )
    rows = tf.range(tf.rank(upstream) - 1)  # every axis but the normalized one
    gamma_gradient = tf.reduce_sum(upstream * normalized, axis=rows)
    beta_gradient = tf.reduce_sum(upstream, axis=rows)
    return tf.cast(x_gradient, x.dtype), tf.cast(gamma_gradient, gamma.dtype), tf.cast(beta_gradient, beta.dtype)


def fused_layer_normalization(x, gamma, beta, epsilon):
    """Layer normalization over the last axis, `(x - mean) / sqrt(variance + epsilon) *
    gamma + beta`, its forward pass and gradient each one XLA-compiled pass.

    The same values as `keras.layers.LayerNormalization` to float rounding; half-precision
    inputs are computed in float32 and rounded once, and `gamma` and `beta` keep their
    own dtype (the float32 variables under mixed precision).

    Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0, 3.0, 6.0]], "float32")
    >>> layer = keras.layers.LayerNormalization(epsilon=1e-5)
    >>> expected = layer(x)
    >>> fused = fused_layer_normalization(x, layer.gamma, layer.beta, 1e-5)
    >>> bool(np.allclose(fused, expected, atol=1e-6))
    True
    """
    epsilon = float(epsilon)
    x, gamma, beta = tf.convert_to_tensor(x), tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
    width = x.shape[-1]
    for name, weight in (("gamma", gamma), ("beta", beta)):
        if weight.shape.rank != 1 or (width is not None and weight.shape[0] not in (None, width)):
            raise ValueError(
                f"`{name}` must have shape ({width},), one value per feature of x's last axis; got {tuple(weight.shape)}."
            )

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        def gradient(upstream):
            return _gradient(x, gamma, beta, upstream, epsilon)

        return _forward(x, gamma, beta, epsilon), gradient

    return normalize(x, gamma, beta)


def normalize(norm, x, training):
    """`norm(x)`; in training, on a large enough `x`, the fused pass with `norm`'s weights."""
    if training and worth_fusing(x) and _fusable(norm, x):
        return fused_layer_normalization(x, norm.gamma, norm.beta, norm.epsilon)
    return norm(x)


def _fusable(norm, x):
    # A Keras LayerNormalization over the last axis only, with gamma and beta, not RMS.
    if not isinstance(norm, keras.layers.LayerNormalization) or not norm.built:
        return False
    axes = norm.axis if isinstance(norm.axis, (list, tuple)) else [norm.axis]
    last = len(x.shape) - 1
    return (
        norm.center and norm.scale and not getattr(norm, "rms_scaling", False)
        and [axis % len(x.shape) for axis in axes] == [last]
    )
