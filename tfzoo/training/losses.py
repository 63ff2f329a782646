"""Cross-entropy over a vocabulary's logits, compiled with XLA even when the model is not.

A language model's loss reads a `(batch, sequence, vocabulary)` tensor of logits: 33.5M
floats for a batch of 16 x 256 over 8,192 tokens. TensorFlow's own softmax
cross-entropy kernel spends ~140 ms on that on 2 CPU cores (forward and gradient); the
same formula compiled with XLA, ~45 ms (benchmarks/profile_gpt.py measures the step
stage by stage). Keras compiles a training step without XLA by default on CPU, so the
loss here compiles itself: only its forward pass and its gradient, two small functions,
are handed to XLA; the rest of the step runs as before.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops


def token_cross_entropy(labels, logits):
    """Per-token `-log softmax(logits)[label]`, as `logsumexp(logits) - logits[label]`.

    `labels` `(...)` int32 and `logits` `(..., vocabulary)`; returns float32 `(...)`.
    Labels must lie in `[0, vocabulary)`: XLA's gather clamps others silently (the
    `SparseCrossEntropy` loss checks them first).

    Example:
    >>> import numpy as np
    >>> logits = np.log(np.array([[0.5, 0.25, 0.25]], "float32"))
    >>> round(float(token_cross_entropy(np.array([1], "int32"), logits)[0]), 4)  # -log 0.25
    1.3863
    """
    return _cross_entropy(labels, logits, 0.0)


def smoothed_token_cross_entropy(labels, logits, label_smoothing):
    """Per-token cross-entropy against targets with `label_smoothing` spread evenly over
    the vocabulary: `(1 - e) * -log p[label] + e * mean_v(-log p[v])`, float32 `(...)`.

    `label_smoothing` is a number or a scalar tensor (a bool is a `ValueError`)."""
    return _cross_entropy(labels, logits, label_smoothing)


def _cross_entropy(labels, logits, label_smoothing):
    # The forward pass and the gradient are two compiled functions joined here, outside
    # XLA: a compiled function's outputs are new buffers, so one function holding both
    # would hand its gradient a copy of the logits (the whole tensor, 134 MB for a batch
    # of 16 x 256 over 8,192 tokens). Here the gradient reads the logits the model made.
    labels = tf.convert_to_tensor(labels)
    logits = tf.convert_to_tensor(logits)
    if isinstance(label_smoothing, bool):
        raise ValueError(f"`label_smoothing` must be a number in [0, 1), got {label_smoothing!r}.")
    if not tf.is_tensor(label_smoothing) and np.ndim(label_smoothing) == 0 and label_smoothing == 0:
        # No smoothing is traced as a constant, so that the passes over the logits only
        # smoothing needs (their mean, the uniform target) are not built; any other value
        # is a tensor, one trace for all (a schedule would otherwise recompile every step).
        label_smoothing = 0.0
    else:
        label_smoothing = tf.convert_to_tensor(label_smoothing, tf.float32)

    @tf.custom_gradient
    def cross_entropy(logits):
        loss, log_normalizer = _cross_entropy_forward(labels, logits, label_smoothing)

        def gradient(upstream):
            return _cross_entropy_gradient(labels, logits, log_normalizer, label_smoothing, upstream)

        return loss, gradient

    return cross_entropy(logits)


@tf.function(jit_compile=True)
def _cross_entropy_forward(labels, logits, label_smoothing):
    logits = tf.cast(logits, tf.float32)  # also under mixed precision
    log_normalizer = tf.reduce_logsumexp(logits, axis=-1)
    chosen = tf.gather(logits, labels, batch_dims=len(labels.shape))
    loss = log_normalizer - (1.0 - label_smoothing) * chosen
    if not _no_smoothing(label_smoothing):
        loss -= label_smoothing * tf.reduce_mean(logits, axis=-1)
    return loss, log_normalizer


@tf.function(jit_compile=True)
def _cross_entropy_gradient(labels, logits, log_normalizer, label_smoothing, upstream):
    # Written out, as TensorFlow's fused kernel does: softmax minus the target
    # distribution, one pass over the logits. Left to autodiff, the label gather's
    # gradient is a scatter, and a training step compiled whole with XLA then took
    # minutes to compile and seconds a step.
    vocabulary_size = tf.shape(logits)[-1]
    targets = (1.0 - label_smoothing) * tf.one_hot(labels, vocabulary_size, dtype=tf.float32)
    if not _no_smoothing(label_smoothing):
        targets += label_smoothing / tf.cast(vocabulary_size, tf.float32)
    probabilities = tf.exp(tf.cast(logits, tf.float32) - log_normalizer[..., None])
    return tf.cast(upstream[..., None] * (probabilities - targets), logits.dtype)


def _no_smoothing(label_smoothing):
    return isinstance(label_smoothing, float) and label_smoothing == 0.0


def checked_labels(labels, logits):
    """`labels`, once they are known to lie in `[0, vocabulary)` (an InvalidArgumentError if not)."""
    checks = [
        tf.debugging.assert_non_negative(labels, message="A label is negative."),
        tf.debugging.assert_less(
            labels, tf.cast(tf.shape(logits)[-1], labels.dtype),
            message="A label is not below the vocabulary size (the logits' last dimension).",
        ),
    ]
    with tf.control_dependencies(checks):  # ordered before the work they guard
        return tf.identity(labels)


@keras.saving.register_keras_serializable(package="tfzoo")
class SparseCrossEntropy(keras.losses.Loss):
    """Sparse categorical cross-entropy from logits, the same value as Keras'
    `SparseCategoricalCrossentropy(from_logits=True)`, computed by `token_cross_entropy`.

    Sample weights and the reduction work as for any Keras loss. A label outside the
    vocabulary is an `InvalidArgumentError` naming the vocabulary size.

    Example:
    >>> import numpy as np
    >>> logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]], "float32"))
    >>> round(float(SparseCrossEntropy()(np.array([[0, 2]]), logits)), 4)  # mean of -log 0.5, -log 0.8
    0.4581
    """

    def __init__(self, reduction="sum_over_batch_size", name="sparse_cross_entropy", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        return token_cross_entropy(checked_labels(_sparse_labels(y_true, y_pred), y_pred), y_pred)

    def get_config(self):
        return {"reduction": self.reduction, "name": self.name, "dtype": self.dtype}


def _sparse_labels(y_true, y_pred):
    """Integer labels shaped like `y_pred` without its last axis; `(..., 1)` labels, as Keras also takes."""
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == len(y_pred.shape):
        labels = ops.squeeze(labels, axis=-1)
    return labels


@keras.saving.register_keras_serializable(package="tfzoo")
class Perplexity(keras.metrics.Metric):
    """`exp` of the mean next-token cross-entropy over the tokens seen (weighted), from logits.

    The same value as keras-hub's `Perplexity(from_logits=True)`, with the cross-entropy
    from `token_cross_entropy` (compiled with XLA) instead of a second pass of
    TensorFlow's kernel over the logits. Tokens equal to `mask_token_id` are left out.

    Example:
    >>> import numpy as np
    >>> metric = Perplexity()
    >>> metric.update_state(np.array([[0, 2]]), np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]], "float32")))
    >>> round(float(metric.result()), 4)  # exp(mean(-log 0.5, -log 0.8))
    1.5811
    """

    def __init__(self, mask_token_id=None, name="perplexity", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.mask_token_id = None if mask_token_id is None else int(mask_token_id)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = _sparse_labels(y_true, y_pred)
        weights = ops.ones_like(labels, dtype="float32")
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            if len(sample_weight.shape) == len(y_pred.shape):  # (..., 1), like the labels
                sample_weight = ops.squeeze(sample_weight, axis=-1)
            weights = weights * sample_weight
        if self.mask_token_id is not None:
            weights = weights * ops.cast(ops.not_equal(labels, self.mask_token_id), "float32")
        losses = token_cross_entropy(checked_labels(labels, y_pred), y_pred)
        self.total.assign_add(ops.sum(losses * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.exp(ops.divide_no_nan(self.total, self.count))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"mask_token_id": self.mask_token_id, "name": self.name, "dtype": self.dtype}
