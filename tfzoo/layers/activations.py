"""Feed-forward activations, and fused versions of the GELUs for training.

Without XLA (Keras' default on CPU), a GELU is a chain of TensorFlow ops (multiplies,
adds, a tanh or erf, and more for the gradient), each a pass over the
`(tokens, intermediate_dim)` tensor. `fused_activation` gives the same function with its
forward pass and its hand-written gradient each compiled with XLA into one pass (the
way `tfzoo.training.losses` compiles the loss). On the tiny GPT's `(4096, 1024)`
activations, the GELU's output and gradient took 14.5 ms as TensorFlow ops and 4.3 ms
fused in float32 (14.3 and 5.6 ms in bfloat16), and the whole training step ran 7%
faster (benchmarks/bench_fused_gelu.py, 2 cores). `TransformerBlock` uses the fused
version in training only: inference and exported models keep the plain ops, which every
runtime (TF Serving, TFLite) has.
"""

import math

import keras
import tensorflow as tf

# Under this many elements a fused pass is slower than the plain ops, each XLA call having
# a fixed cost (bench_fused_gelu.py, float32: 0.87x at 32,768 elements, 1.83x at 131,072).
FUSED_MIN_ELEMENTS = 65_536
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715  # the tanh approximation's coefficient (Hendrycks and Gimpel)


# Registered, so that a Keras layer holding one (BertMaskedLM's transform) serializes it.
@keras.saving.register_keras_serializable(package="tfzoo")
def gelu_approximate(x):
    """GELU with the tanh approximation, as GPT-2 and BERT's original code use."""
    return keras.activations.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="tfzoo")
def gelu(x):
    """The exact GELU, `x Phi(x) = x/2 (1 + erf(x / sqrt(2)))`, written as PyTorch computes it.

    Keras' "gelu" (`tf.nn.gelu`) takes `Phi` from `erfc`, whose XLA expansion computes two
    rational approximations and an exp for every element: on `(4096, 1024)` it cost
    3.76 ms against 2.40 ms for this form under XLA (the bias add alone: 2.09) and 8.27
    against 5.86 ms without XLA (2 cores, 2026-12-05). The two agree to 3e-7; `erf` only
    loses relative precision where `x Phi(x)` is below 1e-6 in size. The TFLite converter
    turns this form into its GELU builtin, as it does `tf.nn.gelu`.

    Example:
    >>> import numpy as np
    >>> x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0], "float32")
    >>> bool(np.allclose(gelu(x), keras.activations.gelu(x, approximate=False), atol=1e-6))
    True
    """
    x = tf.convert_to_tensor(x)
    return 0.5 * x * (1.0 + tf.math.erf(x * tf.cast(1.0 / math.sqrt(2.0), x.dtype)))


def get_activation(activation):
    """An activation function from a Keras name, "gelu_approximate", or a callable.

    "gelu" is `gelu` above: Keras' exact GELU, computed faster.
    """
    if activation == "gelu_approximate":
        return gelu_approximate
    if activation == "gelu":
        return gelu
    return keras.activations.get(activation)


def serialize_activation(activation):
    """A name as it is, a function as Keras serializes it: what `get_config` stores (JSON)."""
    return activation if isinstance(activation, str) else keras.activations.serialize(activation)


def deserialize_activation(activation):
    """The inverse of `serialize_activation`: a name, or the function a config dict names."""
    return keras.activations.get(activation) if isinstance(activation, dict) else activation


def compute_dtype_of(x):
    """The dtype a fused pass computes `x` in: float32 for half precision, else its own."""
    # Half-precision inputs (mixed precision) are computed in float32 inside the fused
    # pass and rounded once at the end; float32 and float64 keep their own precision.
    return tf.float32 if x.dtype in (tf.bfloat16, tf.float16) else x.dtype


@tf.function(jit_compile=True)
def _gelu_tanh_forward(x):
    v = tf.cast(x, compute_dtype_of(x))
    return tf.cast(0.5 * v * (1.0 + tf.tanh(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v))), x.dtype)


@tf.function(jit_compile=True)
def _gelu_tanh_gradient(x, upstream):
    # d/dv [v/2 (1 + tanh(u))] with u = c (v + a v^3): (1 + t)/2 + v/2 (1 - t^2) c (1 + 3 a v^2).
    v = tf.cast(x, compute_dtype_of(x))
    t = tf.tanh(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v))
    slope = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * v * v)
    return tf.cast(tf.cast(upstream, v.dtype) * slope, x.dtype)


@tf.function(jit_compile=True)
def _gelu_erf_forward(x):
    v = tf.cast(x, compute_dtype_of(x))
    return tf.cast(0.5 * v * (1.0 + tf.math.erf(v / math.sqrt(2.0))), x.dtype)


@tf.function(jit_compile=True)
def _gelu_erf_gradient(x, upstream):
    # d/dv [v Phi(v)] = Phi(v) + v phi(v), phi the standard normal density.
    v = tf.cast(x, compute_dtype_of(x))
    slope = 0.5 * (1.0 + tf.math.erf(v / math.sqrt(2.0))) + v * tf.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)
    return tf.cast(tf.cast(upstream, v.dtype) * slope, x.dtype)


def _fused(forward, gradient):
    @tf.custom_gradient
    def activation(x):
        x = tf.convert_to_tensor(x)
        return forward(x), lambda upstream: gradient(x, upstream)

    return activation


_FUSED = {
    "gelu_approximate": _fused(_gelu_tanh_forward, _gelu_tanh_gradient),
    "gelu": _fused(_gelu_erf_forward, _gelu_erf_gradient),
}


def worth_fusing(x):
    """Whether `x` is big enough for a fused pass to pay: at least `FUSED_MIN_ELEMENTS`
    elements, or a shape not known while tracing (training batches are usually large)."""
    if any(dimension is None for dimension in x.shape):
        return True
    return math.prod(x.shape) >= FUSED_MIN_ELEMENTS


def fused_activation(activation):
    """The fused (XLA-compiled) version of a GELU named "gelu" or "gelu_approximate", or
    `None` for any other activation (those stay as they are).

    The same values as `get_activation(activation)`, to float rounding; under mixed
    precision it computes in float32 and rounds once.

    Example:
    >>> import numpy as np
    >>> x = np.array([-1.0, 0.0, 2.0], "float32")
    >>> bool(np.allclose(fused_activation("gelu")(x), get_activation("gelu")(x), atol=1e-6))
    True
    >>> fused_activation("relu") is None
    True
    """
    return _FUSED.get(activation) if isinstance(activation, str) else None
