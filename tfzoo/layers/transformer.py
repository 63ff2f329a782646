"""The Transformer block: attention and a feed-forward network, each with a residual."""

import keras

from tfzoo.layers.activations import (
    deserialize_activation, fused_activation, get_activation, serialize_activation, worth_fusing,
)
from tfzoo.layers.attention import MultiHeadAttention, on_tokens
from tfzoo.layers.normalization import normalize
from tfzoo.validation import dropout_rate, positive_int


@keras.saving.register_keras_serializable(package="tfzoo")
class TransformerBlock(keras.layers.Layer):
    """Self-attention, optional cross-attention, and a feed-forward network.

    Each sublayer `f` is wrapped in a residual connection with layer normalization:
    post-norm `LayerNorm(x + f(x))` as in the original paper and BERT
    (`normalize_first=False`), or pre-norm `x + f(LayerNorm(x))` as in GPT-2
    (`normalize_first=True`).

    Args:
        num_heads: attention heads; the input width must be divisible by it.
        intermediate_dim: hidden width of the feed-forward network.
        dropout: dropout rate after each sublayer and on attention probabilities.
        activation: activation of the feed-forward network: a Keras name,
            "gelu_approximate" (GPT-2, BERT), or a callable. In training, "gelu" and
            "gelu_approximate" run fused (`tfzoo.layers.activations`): the same values.
        normalize_first: pre-norm (True) or post-norm (False).
        causal: whether self-attention is causal (decoders) or not (encoders).
        cross_attention: add a cross-attention sublayer over `encoder_outputs`
            (the decoder block of an encoder-decoder).
        layer_norm_epsilon: epsilon of the layer normalizations.
        use_rotary_embedding: rotary positions inside self-attention.
        max_sequence_length: longest sequence the rotary positions cover.
        kernel_initializer: initializer of every kernel.

    Call arguments:
        inputs: `(batch, sequence, hidden_dim)`.
        padding_mask: `(batch, sequence)` true for real tokens; with a cache it covers
            the whole cache length.
        encoder_outputs: `(batch, source, hidden_dim)`, for cross-attention.
        encoder_padding_mask: `(batch, source)`.
        cache: self-attention cache, a pair `(keys, values)` each `(batch, heads, cache_length, head_dim)`.
        cache_index: where `inputs` start within the cache.
        cross_attention_cache: precomputed cross-attention keys and values.
        packed_positions: `inputs` are packed tokens `(tokens, hidden_dim)` at these flat
            positions of `padding_mask`'s `(batch, sequence)` grid (see
            `tfzoo.layers.pack_tokens`): everything but the attention products runs on
            the tokens only. Self-attention blocks without a cache.

    Returns:
        The block output; with `cache`, a tuple `(output, updated_cache)`.

    Example:
    >>> block = TransformerBlock(num_heads=2, intermediate_dim=32, causal=True, normalize_first=True)
    >>> tuple(block(np.zeros((1, 5, 16), "float32")).shape)
    (1, 5, 16)
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="gelu",
        normalize_first=False,
        causal=False,
        cross_attention=False,
        layer_norm_epsilon=1e-5,
        use_rotary_embedding=False,
        max_sequence_length=2048,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = positive_int("num_heads", num_heads)
        self.intermediate_dim = positive_int("intermediate_dim", intermediate_dim)
        self.dropout = dropout_rate("dropout", dropout)
        self.activation = deserialize_activation(activation)
        self.normalize_first = normalize_first
        self.causal = causal
        self.cross_attention = cross_attention
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_rotary_embedding = use_rotary_embedding
        self.max_sequence_length = max_sequence_length
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _initializer(self):
        return keras.initializers.get(keras.initializers.serialize(self.kernel_initializer))

    def _norm(self, name, shape):
        layer = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )
        layer.build(shape)
        return layer

    def _attention(self, name, hidden_dim, rotary):
        return MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=hidden_dim // self.num_heads,
            dropout=self.dropout,
            use_rotary_embedding=rotary,
            max_sequence_length=self.max_sequence_length,
            kernel_initializer=self._initializer(),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, inputs_shape, encoder_outputs_shape=None):
        hidden_dim = inputs_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                f"The width {hidden_dim} is not divisible by num_heads={self.num_heads}."
            )
        self.self_attention = self._attention("self_attention", hidden_dim, self.use_rotary_embedding)
        self.self_attention.build(inputs_shape)
        self.self_attention_norm = self._norm("self_attention_norm", inputs_shape)
        if self.cross_attention:
            self.cross_attention_layer = self._attention("cross_attention", hidden_dim, False)
            self.cross_attention_layer.build(inputs_shape, encoder_outputs_shape or inputs_shape)
            self.cross_attention_norm = self._norm("cross_attention_norm", inputs_shape)
        # The activation is applied in `call`: in training, a GELU runs fused (see
        # tfzoo.layers.activations), the same values in one pass each way.
        self.activation_function = get_activation(self.activation)
        self.fused_activation_function = fused_activation(self.activation)
        self.intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            kernel_initializer=self._initializer(),
            dtype=self.dtype_policy,
            name="intermediate",
        )
        self.intermediate_dense.build(inputs_shape)
        self.output_dense = keras.layers.Dense(
            hidden_dim, kernel_initializer=self._initializer(), dtype=self.dtype_policy, name="output"
        )
        self.output_dense.build(tuple(inputs_shape[:-1]) + (self.intermediate_dim,))
        self.feed_forward_norm = self._norm("feed_forward_norm", inputs_shape)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def _residual(self, inputs, norm, sublayer, training):
        """Pre-norm: x + f(norm(x)). Post-norm: norm(x + f(x))."""
        if self.normalize_first:
            output, *extra = sublayer(normalize(norm, inputs, training))
            return (inputs + self.dropout_layer(output, training=training), *extra)
        output, *extra = sublayer(inputs)
        return (normalize(norm, inputs + self.dropout_layer(output, training=training), training), *extra)

    def call(
        self,
        inputs,
        padding_mask=None,
        encoder_outputs=None,
        encoder_padding_mask=None,
        cache=None,
        cache_index=None,
        cross_attention_cache=None,
        packed_positions=None,
        training=None,
    ):
        def self_attention(x):
            result = self.self_attention(
                x,
                key_padding_mask=padding_mask,
                use_causal_mask=self.causal,
                cache=cache,
                cache_index=cache_index,
                packed_positions=packed_positions,
                training=training,
            )
            return result if cache is not None else (result,)

        if packed_positions is not None and (self.cross_attention or cache is not None):
            raise ValueError("`packed_positions` is for self-attention blocks without a cache.")
        x, *new_cache = self._residual(inputs, self.self_attention_norm, self_attention, training)

        if self.cross_attention:
            if encoder_outputs is None and cross_attention_cache is None:
                raise ValueError("This block has cross-attention: pass `encoder_outputs`.")

            def cross_attention(x):
                result = self.cross_attention_layer(
                    x,
                    value=encoder_outputs,
                    key_padding_mask=encoder_padding_mask,
                    cache=cross_attention_cache,
                    training=training,
                )
                # With a (precomputed, read-only) cache the layer also returns it: drop it.
                return (result[0] if cross_attention_cache is not None else result,)

            x, = self._residual(x, self.cross_attention_norm, cross_attention, training)

        def feed_forward_on_tokens(x):
            hidden = self.intermediate_dense(x)
            if training and self.fused_activation_function is not None and worth_fusing(hidden):
                hidden = self.fused_activation_function(hidden)
            else:
                hidden = self.activation_function(hidden)
            return self.output_dense(hidden)

        def feed_forward(x):
            return (on_tokens(feed_forward_on_tokens, x),)

        x, = self._residual(x, self.feed_forward_norm, feed_forward, training)
        if cache is not None:
            return x, new_cache[0]
        return x

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "activation": serialize_activation(self.activation),
                "normalize_first": self.normalize_first,
                "causal": self.causal,
                "cross_attention": self.cross_attention,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "use_rotary_embedding": self.use_rotary_embedding,
                "max_sequence_length": self.max_sequence_length,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
