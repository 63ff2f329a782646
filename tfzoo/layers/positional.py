"""Positional information for Transformers: sinusoidal, learned, and rotary.

All three kinds take a `start_index`, so that cached (incremental) decoding, which
feeds one token at a time, still gives each token the position it really has.
"""


import keras
import numpy as np
from keras import ops

from tfzoo.validation import positive_int

KINDS = ("sinusoidal", "learned", "rotary")


def sinusoidal_encoding(num_positions, hidden_dim, max_wavelength=10000.0):
    """The sinusoidal matrix of "Attention Is All You Need", as NumPy.

    `PE[pos, 2i] = sin(pos / max_wavelength ** (2i / hidden_dim))` and
    `PE[pos, 2i + 1] = cos(pos / max_wavelength ** (2i / hidden_dim))`.

    Example:
    >>> sinusoidal_encoding(num_positions=4, hidden_dim=8).shape
    (4, 8)
    """
    positions = np.arange(num_positions, dtype="float64")[:, None]  # (positions, 1)
    pair_index = np.arange(0, hidden_dim, 2, dtype="float64")  # 2i
    angles = positions / np.power(max_wavelength, pair_index / hidden_dim)  # (positions, hidden_dim / 2)
    encoding = np.zeros((num_positions, hidden_dim))
    encoding[:, 0::2] = np.sin(angles)
    encoding[:, 1::2] = np.cos(angles[:, : hidden_dim // 2])
    return encoding.astype("float32")


def _positions(batch_size, sequence_length, start_index):
    """Integer positions, shape (batch, sequence).

    `start_index` is a Python int, a scalar tensor, or one start per example (batch,):
    the last is how left-padded prompts get positions that start at 0 on their first
    real token. Negative positions (padding) are clipped to 0; padding is masked anyway.
    """
    start_index = ops.convert_to_tensor(start_index, dtype="int32")
    steps = ops.arange(sequence_length, dtype="int32")[None, :]  # (1, sequence)
    if len(start_index.shape) == 0:
        positions = steps + start_index
        positions = ops.broadcast_to(positions, (batch_size, sequence_length))
    else:
        positions = start_index[:, None] + steps
    return ops.maximum(positions, 0)


@keras.saving.register_keras_serializable(package="tfzoo")
class PositionalEncoding(keras.layers.Layer):
    """Adds position information to a sequence.

    Args:
        kind: `"sinusoidal"` (fixed sin/cos, added to the inputs), `"learned"` (a
            trained embedding per position, added to the inputs) or `"rotary"` (RoPE:
            rotates pairs of features by a position-dependent angle; applied to the
            queries and keys of attention, inputs shaped (batch, sequence, heads, head_dim)).
        max_sequence_length: the number of positions a learned table holds, and the
            upper bound on positions for the other kinds.
        max_wavelength: the base of the sinusoidal and rotary frequencies.

    Call arguments:
        inputs: `(batch, sequence, hidden_dim)`, or `(batch, sequence, heads, head_dim)`
            for rotary.
        start_index: position of the first element of `inputs`: an int, a scalar
            tensor, or a `(batch,)` tensor with one start per example.

    Returns:
        A tensor shaped like `inputs`, with positions applied.

    Example:
    >>> layer = PositionalEncoding("sinusoidal", max_sequence_length=16)
    >>> tuple(layer(np.zeros((2, 5, 8), "float32")).shape)
    (2, 5, 8)
    """

    def __init__(self, kind="sinusoidal", max_sequence_length=512, max_wavelength=10000.0, **kwargs):
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
        self.kind = kind
        self.max_sequence_length = positive_int("max_sequence_length", max_sequence_length)
        self.max_wavelength = float(max_wavelength)

    def build(self, inputs_shape):
        feature_dim = inputs_shape[-1]
        if feature_dim is None:
            raise ValueError(f"PositionalEncoding needs a known last dimension. Received shape {inputs_shape}")
        if self.kind == "rotary" and feature_dim % 2:  # rotary turns features in pairs
            raise ValueError(f"Rotary encoding needs an even head_dim. Received shape {inputs_shape}")
        if self.kind == "rotary" and len(inputs_shape) != 4:
            raise ValueError(
                "Rotary encoding applies to queries or keys shaped (batch, sequence, heads, head_dim). "
                f"Received shape {inputs_shape}"
            )
        if self.kind == "learned":
            self.position_embeddings = self.add_weight(
                name="position_embeddings",
                shape=(self.max_sequence_length, feature_dim),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
            )
        elif self.kind == "sinusoidal":
            # A constant, not a weight: nothing to train or to save.
            self.encoding_table = sinusoidal_encoding(
                self.max_sequence_length, feature_dim, self.max_wavelength
            )

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        batch_size, sequence_length = shape[0], shape[1]
        static_length = inputs.shape[1]
        if self.kind != "rotary" and static_length is not None and isinstance(start_index, int):
            # A table lookup past its end would fail on CPU eagerly but be clamped under
            # XLA (silently wrong): refuse it while the shape is known.
            if start_index + static_length > self.max_sequence_length:
                raise ValueError(
                    f"Positions {start_index}..{start_index + static_length - 1} do not fit in "
                    f"max_sequence_length={self.max_sequence_length}."
                )
        positions = _positions(batch_size, sequence_length, start_index)  # (batch, sequence)
        if self.kind == "learned":
            table = self.position_embeddings
        elif self.kind == "sinusoidal":
            table = ops.convert_to_tensor(self.encoding_table)
        else:
            return self._rotate(inputs, positions)
        encoding = ops.take(table, positions, axis=0)  # (batch, sequence, hidden_dim)
        return inputs + ops.cast(encoding, inputs.dtype)

    def _rotate(self, inputs, positions):
        # RoPE in the "rotate half" layout: feature i is paired with i + head_dim / 2.
        head_dim = inputs.shape[-1]
        half = head_dim // 2
        inverse_frequency = 1.0 / (
            self.max_wavelength ** (np.arange(0, half, dtype="float32") * 2.0 / head_dim)
        )  # (half,)
        angles = ops.cast(positions, "float32")[..., None] * inverse_frequency  # (batch, sequence, half)
        angles = angles[:, :, None, :]  # (batch, sequence, 1, half): same angle for every head
        cos = ops.cast(ops.cos(angles), inputs.dtype)
        sin = ops.cast(ops.sin(angles), inputs.dtype)
        first, second = inputs[..., :half], inputs[..., half:]
        return ops.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kind": self.kind,
                "max_sequence_length": self.max_sequence_length,
                "max_wavelength": self.max_wavelength,
            }
        )
        return config
