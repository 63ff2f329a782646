"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

source ids -> token embedding * sqrt(hidden_dim) + sinusoidal positions -> encoder blocks
(self-attention over the source, padding masked) -> encoder outputs.

target ids (shifted right: start token first) -> the same embedding (shared vocabulary)
or its own -> decoder blocks (causal self-attention, cross-attention over the encoder
outputs, both padding-masked) -> logits through the decoder embedding (tied) or a
dense layer.

Training is teacher forcing with plain `fit`: the decoder reads `[start] + target` and
predicts `target + [end]`; `LabelSmoothedCrossEntropy` and `MaskedAccuracy` ignore
padding. Decoding (greedy, sampling, beam search) caches the decoder's self-attention
keys/values step by step, and computes each cross-attention layer's keys/values once
per source.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfzoo.generation import decode_loop, sampler, validate_sampling
from tfzoo.generation.beam_search import beam_search, tile_for_beams, validate_beam_search
from tfzoo.generation.decoding import detokenize_rows, round_up
from tfzoo.layers import PositionalEncoding, TransformerBlock, cache_writes_in_place
from tfzoo.layers.activations import deserialize_activation, serialize_activation
from tfzoo.layers.attention import empty_key_value_cache
from tfzoo.saving import deserialize_entries
from tfzoo.text.sentencepiece import END_ID, PAD_ID, START_ID  # the ids SentencePiece training reserves
from tfzoo.tracking import Untracked
from tfzoo.training.losses import checked_labels, smoothed_token_cross_entropy
from tfzoo.validation import dropout_rate, positive_int, token_id_lists

SEQ2SEQ_PRESETS = {
    # Small enough for unit tests: builds and trains in seconds.
    "seq2seq_test": dict(
        vocabulary_size=512, num_encoder_layers=2, num_decoder_layers=2, num_heads=2, hidden_dim=64,
        intermediate_dim=128, max_sequence_length=64, dropout=0.0, normalize_first=True,
    ),
    # Trains on a small parallel corpus on a CPU in minutes (the translation tutorial).
    "seq2seq_tiny": dict(
        vocabulary_size=8000, num_encoder_layers=3, num_decoder_layers=3, num_heads=4, hidden_dim=256,
        intermediate_dim=1024, max_sequence_length=128, dropout=0.1, normalize_first=True,
    ),
    # The paper's "base" model: 6 + 6 layers, d_model 512, 8 heads, d_ff 2048, a shared
    # ~37k-token vocabulary and tied embeddings (about 63M parameters), post-norm.
    "transformer_base": dict(
        vocabulary_size=37000, num_encoder_layers=6, num_decoder_layers=6, num_heads=8, hidden_dim=512,
        intermediate_dim=2048, max_sequence_length=256, dropout=0.1, normalize_first=False,
    ),
}


# ------------------------------------------------------------------------- loss and metric
@keras.saving.register_keras_serializable(package="tfzoo")
class LabelSmoothedCrossEntropy(keras.losses.Loss):
    """Cross-entropy against smoothed targets, averaged over the non-padding tokens.

    The target distribution puts `1 - label_smoothing` on the true token and spreads
    `label_smoothing` evenly over the whole vocabulary (the true token included), as
    Keras' `CategoricalCrossentropy(label_smoothing=...)` does:
    `loss = (1 - e) * -log p[y] + e * mean_v(-log p[v])`. Tokens equal to
    `pad_token_id` are ignored, also in the average.

    Example:
    >>> loss = LabelSmoothedCrossEntropy(label_smoothing=0.0)
    >>> logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]], "float32"))
    >>> round(float(loss(np.array([[1, 0]]), logits)), 4)  # the padded second token is ignored
    1.3863
    """

    def __init__(self, label_smoothing=0.1, pad_token_id=PAD_ID, name="label_smoothed_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(label_smoothing, bool) or not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.pad_token_id = int(pad_token_id)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")  # (batch, target)
        # Compiled with XLA, like tfzoo.training.losses.SparseCrossEntropy: ~3x faster on CPU.
        loss = smoothed_token_cross_entropy(checked_labels(y_true, y_pred), y_pred, self.label_smoothing)
        real = ops.cast(ops.not_equal(y_true, self.pad_token_id), "float32")
        # Scaled so that the default mean over all tokens is the mean over the real ones.
        total = ops.cast(ops.size(real), "float32")
        return loss * real * total / ops.maximum(ops.sum(real), 1.0)

    def get_config(self):
        config = super().get_config()
        config.update({"label_smoothing": self.label_smoothing, "pad_token_id": self.pad_token_id})
        return config


@keras.saving.register_keras_serializable(package="tfzoo")
class MaskedAccuracy(keras.metrics.Metric):
    """The fraction of non-padding tokens whose most likely prediction is right.

    Example:
    >>> metric = MaskedAccuracy()
    >>> metric.update_state(np.array([[1, 2, 0]]), np.eye(3)[None, [1, 0, 2]])
    >>> float(metric.result())  # token 1 right, token 2 wrong, the padding not counted
    0.5
    """

    def __init__(self, pad_token_id=PAD_ID, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_token_id = int(pad_token_id)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        real = ops.cast(ops.not_equal(y_true, self.pad_token_id), "float32")
        if sample_weight is not None:
            real = real * ops.cast(sample_weight, "float32")
        right = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")
        self.correct.assign_add(ops.sum(right * real))
        self.count.assign_add(ops.sum(real))

    def result(self):
        return ops.divide_no_nan(self.correct, self.count)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update({"pad_token_id": self.pad_token_id})
        return config


# ------------------------------------------------------------------------- the model
def _tokenizer_size(tokenizer):
    """The tokenizer's vocabulary size, or None while it waits for its assets (loading)."""
    try:
        return int(tokenizer.vocabulary_size())
    except (ValueError, AttributeError, TypeError):
        return None


def _check_tokenizer(tokenizer, side, vocabulary_size, special_ids):
    if tokenizer is None:
        return
    size = _tokenizer_size(tokenizer)
    if size is not None and size != vocabulary_size:
        raise ValueError(
            f"Mismatched vocabulary: the {side} tokenizer has {size} tokens but the model's {side} "
            f"vocabulary_size is {vocabulary_size}."
        )
    for name, expected in special_ids.items():
        received = getattr(tokenizer, name, expected)
        if received != expected:
            raise ValueError(f"The {side} tokenizer's {name} is {received}; the model uses {name}={expected}.")


@keras.saving.register_keras_serializable(package="tfzoo")
class Seq2SeqTransformer(keras.Model):
    """An encoder-decoder Transformer for translation and other sequence-to-sequence tasks.

    Args:
        vocabulary_size: source tokens; also the target's when `target_vocabulary_size`
            is None (one shared vocabulary, as in the paper).
        num_encoder_layers: encoder blocks.
        num_decoder_layers: decoder blocks.
        num_heads: attention heads; `hidden_dim` must be divisible by it.
        hidden_dim: width of every token's representation (the paper's d_model).
        intermediate_dim: hidden width of the feed-forward networks (d_ff).
        max_sequence_length: the longest source, and the longest target (start token
            included): the positions the sinusoidal table covers.
        target_vocabulary_size: target tokens, for separate vocabularies; None shares
            the source vocabulary.
        share_embeddings: one token embedding for encoder and decoder (needs a shared
            vocabulary). None means: share when the vocabulary is shared.
        tie_output_embeddings: the output layer is the decoder embedding, transposed
            (no extra weights); False gives it a dense layer of its own.
        dropout: dropout after embeddings and sublayers, and on attention.
        normalize_first: pre-norm blocks (with a final layer norm on each side; more
            forgiving on small data) or the paper's post-norm (False).
        activation: feed-forward activation (the paper: ReLU).
        layer_norm_epsilon: epsilon of every layer norm.
        pad_token_id, start_token_id, end_token_id: the special ids (tfzoo's
            SentencePiece tokenizers use 0, 2 and 3).
        source_tokenizer: optional in-graph tokenizer for the source (e.g.
            `tfzoo.text.SentencePieceTokenizer`); saved with the model, lets `generate`
            take strings.
        target_tokenizer: the target's; None uses `source_tokenizer` (shared).

    Call arguments:
        inputs: a dict with `encoder_token_ids` `(batch, source)` and
            `decoder_token_ids` `(batch, target)`, and optionally
            `encoder_padding_mask` and `decoder_padding_mask` (true for real tokens;
            by default every token that is not `pad_token_id`).

    Returns:
        float32 logits `(batch, target, target_vocabulary_size)` for the next target token.

    Example:
    >>> model = Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=40)
    >>> model.compile()
    >>> source = np.random.randint(4, 40, (8, 6))
    >>> target = np.concatenate([source[:, ::-1], np.full((8, 1), 3)], axis=1)  # reversed + end
    >>> inputs = {"encoder_token_ids": source, "decoder_token_ids": np.concatenate(
    ...     [np.full((8, 1), 2), target[:, :-1]], axis=1)}
    >>> history = model.fit(inputs, target, epochs=1, verbose=0)
    >>> len(model.generate([[5, 6, 7]], max_new_tokens=4)[0]) <= 4
    True
    """

    def __init__(
        self,
        vocabulary_size,
        num_encoder_layers,
        num_decoder_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        max_sequence_length=256,
        target_vocabulary_size=None,
        share_embeddings=None,
        tie_output_embeddings=True,
        dropout=0.1,
        normalize_first=False,
        activation="relu",
        layer_norm_epsilon=1e-6,
        pad_token_id=PAD_ID,
        start_token_id=START_ID,
        end_token_id=END_ID,
        source_tokenizer=None,
        target_tokenizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = positive_int("vocabulary_size", vocabulary_size)
        self.num_encoder_layers = positive_int("num_encoder_layers", num_encoder_layers)
        self.num_decoder_layers = positive_int("num_decoder_layers", num_decoder_layers)
        self.num_heads = positive_int("num_heads", num_heads)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.intermediate_dim = positive_int("intermediate_dim", intermediate_dim)
        self.max_sequence_length = positive_int("max_sequence_length", max_sequence_length)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` must be divisible by `num_heads`. Received: hidden_dim={hidden_dim}, "
                f"num_heads={num_heads}"
            )
        self.target_vocabulary_size = (
            None if target_vocabulary_size is None else positive_int("target_vocabulary_size", target_vocabulary_size)
        )
        shared_vocabulary = self.target_vocabulary_size is None
        if share_embeddings is None:
            share_embeddings = shared_vocabulary
        if share_embeddings and not shared_vocabulary and self.target_vocabulary_size != self.vocabulary_size:
            raise ValueError(
                "`share_embeddings=True` needs one vocabulary for both sides. Received: "
                f"vocabulary_size={vocabulary_size}, target_vocabulary_size={target_vocabulary_size}"
            )
        self.share_embeddings = bool(share_embeddings)
        self.tie_output_embeddings = bool(tie_output_embeddings)
        self.dropout = dropout_rate("dropout", dropout)
        self.normalize_first = bool(normalize_first)
        self.activation = deserialize_activation(activation)  # a function, once loaded from a config
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.pad_token_id = int(pad_token_id)
        self.start_token_id = int(start_token_id)
        self.end_token_id = int(end_token_id)
        for name in ("pad_token_id", "start_token_id", "end_token_id"):
            value = getattr(self, name)
            if not 0 <= value < min(self.vocabulary_size, self.output_vocabulary_size):
                raise ValueError(f"`{name}` must be a token of the vocabulary. Received: {name}={value}")
        special_ids = {"pad_token_id": self.pad_token_id, "start_token_id": self.start_token_id,
                       "end_token_id": self.end_token_id}
        _check_tokenizer(source_tokenizer, "source", self.vocabulary_size, special_ids)
        _check_tokenizer(target_tokenizer or source_tokenizer, "target", self.output_vocabulary_size, special_ids)
        self.source_tokenizer = source_tokenizer
        self._target_tokenizer = target_tokenizer

        initializer = keras.initializers.GlorotUniform()
        embedding_initializer = keras.initializers.RandomNormal(stddev=hidden_dim**-0.5)
        self.source_embedding = keras.layers.Embedding(
            self.vocabulary_size, hidden_dim, embeddings_initializer=embedding_initializer, name="source_embedding"
        )
        self.target_embedding = None
        if not self.share_embeddings:
            self.target_embedding = keras.layers.Embedding(
                self.output_vocabulary_size, hidden_dim, embeddings_initializer=embedding_initializer,
                name="target_embedding",
            )
        self.position_encoding = PositionalEncoding(
            "sinusoidal", max_sequence_length=max_sequence_length, name="position_encoding"
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")

        def block(name, decoder):
            return TransformerBlock(
                num_heads=num_heads, intermediate_dim=intermediate_dim, dropout=dropout, activation=activation,
                normalize_first=normalize_first, causal=decoder, cross_attention=decoder,
                layer_norm_epsilon=layer_norm_epsilon, kernel_initializer=initializer, name=name,
            )

        self.encoder_blocks = [block(f"encoder_block_{i}", False) for i in range(num_encoder_layers)]
        self.decoder_blocks = [block(f"decoder_block_{i}", True) for i in range(num_decoder_layers)]
        self.encoder_final_norm = self.decoder_final_norm = None
        if self.normalize_first:
            # Pre-norm leaves the residual stream unnormalized: normalize it once at the end.
            self.encoder_final_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, name="encoder_final_norm")
            self.decoder_final_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, name="decoder_final_norm")
        self.output_dense = None
        if not self.tie_output_embeddings:
            self.output_dense = keras.layers.Dense(
                self.output_vocabulary_size, kernel_initializer=initializer, name="output_dense"
            )
        # Compiled decode functions by setup: not model state to save.
        self._untracked = Untracked(decoders={})

    @property
    def output_vocabulary_size(self):
        """The target vocabulary's size (the source's when shared)."""
        return self.target_vocabulary_size or self.vocabulary_size

    @property
    def target_tokenizer(self):
        """The target side's tokenizer: its own, or the shared source tokenizer."""
        return self._target_tokenizer if self._target_tokenizer is not None else self.source_tokenizer

    @classmethod
    def from_preset(cls, name, **overrides):
        """Builds a model from a named shape in `SEQ2SEQ_PRESETS`.

        Example:
        >>> Seq2SeqTransformer.from_preset("transformer_base").num_encoder_layers
        6
        """
        from tfzoo.models.presets import preset_arguments

        arguments = preset_arguments(SEQ2SEQ_PRESETS, name, "seq2seq")
        arguments.update(overrides)
        return cls(**arguments)

    def build(self, inputs_shape=None):
        if self.built:
            return
        shape = (None, None, self.hidden_dim)
        self.source_embedding.build((None, None))
        if self.target_embedding is not None:
            self.target_embedding.build((None, None))
        self.position_encoding.build(shape)
        for block in self.encoder_blocks:
            block.build(shape)
        for block in self.decoder_blocks:
            block.build(shape, shape)
        if self.normalize_first:
            self.encoder_final_norm.build(shape)
            self.decoder_final_norm.build(shape)
        if self.output_dense is not None:
            self.output_dense.build(shape)
        self.built = True

    # ------------------------------------------------------------------ the forward pass
    def _embed(self, embedding, token_ids, position_start=0, training=None):
        x = embedding(token_ids)  # (batch, sequence, hidden)
        x = x * ops.cast(np.sqrt(self.hidden_dim), x.dtype)  # the paper's scaling
        x = self.position_encoding(x, start_index=position_start)
        return self.embedding_dropout(x, training=training)

    def _decoder_embedding(self):
        return self.target_embedding or self.source_embedding

    def encode(self, encoder_token_ids, encoder_padding_mask=None, training=None):
        """Source ids `(batch, source)` -> encoder outputs `(batch, source, hidden_dim)`."""
        if encoder_padding_mask is None:
            encoder_padding_mask = ops.not_equal(encoder_token_ids, self.pad_token_id)
        x = self._embed(self.source_embedding, encoder_token_ids, training=training)
        for block in self.encoder_blocks:
            x = block(x, padding_mask=encoder_padding_mask, training=training)
        return self.encoder_final_norm(x) if self.normalize_first else x

    def _decode(self, decoder_token_ids, encoder_outputs, encoder_padding_mask, decoder_padding_mask=None,
                caches=None, cross_attention_caches=None, index=None, training=None):
        """The decoder stack: the whole target (`caches=None`) or new tokens at `index`."""
        position_start = 0
        if index is not None:
            # The decode loop may run one step past the last position it needs (its output
            # is dropped); clip so that the position lookup stays inside the table.
            position_start = ops.minimum(index, self.max_sequence_length - 1)
        x = self._embed(self._decoder_embedding(), decoder_token_ids, position_start, training=training)
        new_caches = []
        for layer, block in enumerate(self.decoder_blocks):
            if caches is None:
                x = block(x, padding_mask=decoder_padding_mask, encoder_outputs=encoder_outputs,
                          encoder_padding_mask=encoder_padding_mask, training=training)
            else:
                x, cache = block(
                    x, padding_mask=decoder_padding_mask, encoder_padding_mask=encoder_padding_mask,
                    cache=caches[layer], cache_index=index, cross_attention_cache=cross_attention_caches[layer],
                    training=training,
                )
                new_caches.append(cache)
        if self.normalize_first:
            x = self.decoder_final_norm(x)
        return x, tuple(new_caches)

    def _logits(self, hidden):
        if self.output_dense is not None:
            return ops.cast(self.output_dense(hidden), "float32")
        # Tied: the decoder embedding, transposed.
        embeddings = ops.cast(self._decoder_embedding().embeddings, hidden.dtype)
        return ops.cast(ops.matmul(hidden, ops.transpose(embeddings)), "float32")

    def call(self, inputs, training=None):
        encoder_token_ids = inputs["encoder_token_ids"]
        encoder_padding_mask = inputs.get("encoder_padding_mask")
        if encoder_padding_mask is None:
            encoder_padding_mask = ops.not_equal(encoder_token_ids, self.pad_token_id)
        encoder_outputs = self.encode(encoder_token_ids, encoder_padding_mask, training=training)
        hidden, _ = self._decode(
            inputs["decoder_token_ids"], encoder_outputs, encoder_padding_mask,
            decoder_padding_mask=inputs.get("decoder_padding_mask"), training=training,
        )
        return self._logits(hidden)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", label_smoothing=0.1, **kwargs):
        """`compile` with translation defaults.

        "auto" means Adam (learning rate 5e-4, the paper's betas 0.9 / 0.98), cross-entropy
        with `label_smoothing` (the paper: 0.1) and token accuracy, both ignoring padding.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(learning_rate=5e-4, beta_1=0.9, beta_2=0.98, epsilon=1e-9)
        if loss == "auto":
            loss = LabelSmoothedCrossEntropy(label_smoothing, pad_token_id=self.pad_token_id)
        if metrics == "auto":
            metrics = [MaskedAccuracy(pad_token_id=self.pad_token_id)]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    # ------------------------------------------------------------------ decoding pieces
    def empty_cache(self, batch_size, length):
        """Zeroed decoder self-attention caches: one `(keys, values)` pair per block, each
        `(batch, heads, length, head_dim)`."""
        return empty_key_value_cache(len(self.decoder_blocks), batch_size, self.num_heads, length,
                                     self.hidden_dim // self.num_heads, self.compute_dtype)

    def cross_attention_caches(self, encoder_outputs):
        """Each decoder block's cross-attention keys and values, computed once per source.

        Returns one `(keys, values)` pair per decoder block, each `(batch, heads, source, head_dim)`.
        """
        return tuple(block.cross_attention_layer.key_value_cache(encoder_outputs) for block in self.decoder_blocks)

    def cached_step(self, encoder_padding_mask, cross_attention_caches):
        """`step(token_ids (batch,), index, caches) -> (logits, caches)` that reuses the caches."""

        def step(token_ids, index, caches):
            hidden, caches = self._decode(
                token_ids[:, None], None, encoder_padding_mask, caches=caches,
                cross_attention_caches=cross_attention_caches, index=index,
            )
            return self._logits(hidden)[:, 0, :], caches

        return step

    def uncached_step(self, encoder_token_ids, encoder_padding_mask):
        """A reference `step` with no cache: the whole model runs again at every step.

        Its "cache" is the target so far `(batch, length)`; the new token is written at
        `index` and the encoder and decoder rerun on everything.
        """

        def step(token_ids, index, target):
            length = tf.shape(target)[1]
            columns = tf.range(length)[None, :]
            target = tf.where(columns == index, token_ids[:, None], target)
            logits = self({"encoder_token_ids": encoder_token_ids, "encoder_padding_mask": encoder_padding_mask,
                           "decoder_token_ids": target}, training=False)
            # The decode loop's last, unused step may ask one past the end: clip.
            return tf.gather(logits, tf.minimum(index, length - 1), axis=1), target

        return step

    def generate_token_ids(self, encoder_token_ids, encoder_padding_mask, max_new_tokens, capacity,
                           beam_width=1, length_penalty=0.0, choose=None, seed=None, use_cache=True,
                           early_stopping=True):
        """The graph-friendly core of `generate`: padded source ids in, target ids out.

        Args:
            encoder_token_ids: `(batch, source)` right-padded; `encoder_padding_mask` likewise.
            max_new_tokens: the most target tokens, end token included (int or scalar tensor).
            capacity: static size of the output buffer, `>= max_new_tokens`.
            beam_width: 1 samples with `choose` (greedy by default); more runs beam search.
            length_penalty: beam search's GNMT alpha.
            choose, seed: see `tfzoo.generation.decode_loop`.
            use_cache: False recomputes everything at every step (a reference).
            early_stopping: see `tfzoo.generation.beam_search.beam_search`.

        Returns:
            `(tokens (batch, capacity), lengths (batch,))`, without the end token.
        """
        batch_size = tf.shape(encoder_token_ids)[0]
        starts = tf.fill([batch_size], tf.constant(self.start_token_id, tf.int32))
        # The sampling loop runs one step past its last token (its output unused).
        cache_length = capacity + 1
        target_length = min(cache_length, self.max_sequence_length)  # the uncached target buffer
        if beam_width > 1:
            sources = tile_for_beams(encoder_token_ids, beam_width)
            masks = tile_for_beams(encoder_padding_mask, beam_width)
            if use_cache:
                encoder_outputs = self.encode(sources, masks, training=False)
                step = self.cached_step(masks, self.cross_attention_caches(encoder_outputs))
                cache = self.empty_cache(batch_size * beam_width, cache_length)
            else:
                step = self.uncached_step(sources, masks)
                cache = tf.fill([batch_size * beam_width, target_length], tf.constant(self.pad_token_id, tf.int32))
            tokens, lengths, _ = beam_search(
                step, cache, starts, self.end_token_id, beam_width, max_new_tokens, capacity,
                length_penalty=length_penalty, early_stopping=early_stopping, pad_id=self.pad_token_id,
            )
            return tokens[:, 0], lengths[:, 0]
        if use_cache:
            encoder_outputs = self.encode(encoder_token_ids, encoder_padding_mask, training=False)
            step = self.cached_step(encoder_padding_mask, self.cross_attention_caches(encoder_outputs))
            cache = self.empty_cache(batch_size, cache_length)
        else:
            step = self.uncached_step(encoder_token_ids, encoder_padding_mask)
            cache = tf.fill([batch_size, target_length], tf.constant(self.pad_token_id, tf.int32))
        first_logits, cache = step(starts, 0, cache)
        return decode_loop(
            step, first_logits, cache, start_index=1, max_new_tokens=max_new_tokens, capacity=capacity,
            stop_token_ids=(self.end_token_id,), choose=choose, seed=seed, pad_id=self.pad_token_id,
        )

    # ------------------------------------------------------------------ the Python entry point
    def source_token_ids(self, sources, truncate=False):
        """Source strings or id lists -> id lists with the end token appended, checked.

        A source longer than `max_sequence_length - 1` tokens is a `ValueError`, or with
        `truncate` is cut to that length (as `tfzoo.data.translation_dataset` does).
        """
        token_lists, strings = token_id_lists(
            sources, self.source_tokenizer, self.vocabulary_size, "sources", "Source sentence", blank_is_empty=True
        )
        for position, ids in enumerate(token_lists):
            if len(ids) + 1 > self.max_sequence_length and truncate:
                token_lists[position] = ids = ids[: self.max_sequence_length - 1]
            if len(ids) + 1 > self.max_sequence_length:
                raise ValueError(
                    f"Source sentence {position} has {len(ids)} tokens (+1 end token), more than the model's "
                    f"max_sequence_length={self.max_sequence_length}. Shorten or split it."
                )
        return [ids + [self.end_token_id] for ids in token_lists], strings

    def _decoder(self, capacity, beam_width, length_penalty, temperature, top_k, top_p, use_cache, jit_compile):
        """A compiled decode function per setup, kept so that calls don't retrace."""
        key = (capacity, beam_width, length_penalty, temperature, top_k, top_p, use_cache, jit_compile)
        if key not in self._untracked.decoders:

            @tf.function(jit_compile=jit_compile, reduce_retracing=True)
            def decode(encoder_token_ids, encoder_padding_mask, max_new_tokens, seed):
                with cache_writes_in_place() if jit_compile else contextlib.nullcontext():
                    return self.generate_token_ids(
                        encoder_token_ids, encoder_padding_mask, max_new_tokens, capacity, beam_width=beam_width,
                        length_penalty=length_penalty, choose=sampler(temperature, top_k, top_p), seed=seed,
                        use_cache=use_cache,
                    )

            self._untracked.decoders[key] = decode
        return self._untracked.decoders[key]

    def generate(self, sources, max_new_tokens=None, beam_width=1, length_penalty=0.6, temperature=0.0,
                 top_k=None, top_p=None, seed=None, use_cache=True, jit_compile="auto", batch_size=64,
                 truncate=False):
        """Translates each source sentence.

        Args:
            sources: a list of strings (needs a source tokenizer) or of token-id lists.
            max_new_tokens: the most target tokens, end token included; default the
                model's `max_sequence_length` (decoding stops once every sentence ended).
            beam_width: 1 for greedy decoding or sampling; more for beam search.
            length_penalty: beam search's GNMT alpha (the paper: 0.6); >= 0.
            temperature, top_k, top_p, seed: sampling, as in `GPT.generate` (beam width 1).
            use_cache: cache keys and values (fast); False reruns the whole model at
                every step (slow; a reference for tests).
            jit_compile: compile the decode loop with XLA; "auto" is False (one
                compile per shape costs more than it saves on short runs).
            batch_size: sentences decoded together.
            truncate: cut sources longer than `max_sequence_length - 1` tokens instead
                of raising a `ValueError`.

        Returns:
            Strings when the sources were strings (needs a target tokenizer), otherwise
            lists of target token ids (without the end token).
        """
        if max_new_tokens is None:
            max_new_tokens = self.max_sequence_length
        max_new_tokens, temperature, top_k, top_p = validate_sampling(max_new_tokens, temperature, top_k, top_p)
        validate_beam_search(beam_width, length_penalty)
        batch_size = positive_int("batch_size", batch_size)
        if beam_width > 1 and float(temperature) != 0.0:
            raise ValueError(f"Beam search is deterministic: use temperature=0 with beam_width={beam_width}.")
        if max_new_tokens > self.max_sequence_length:
            raise ValueError(
                f"`max_new_tokens`={max_new_tokens} exceeds the model's max_sequence_length="
                f"{self.max_sequence_length}."
            )
        token_lists, strings = self.source_token_ids(sources, truncate)
        if strings and self.target_tokenizer is None:
            raise ValueError("This model has no target tokenizer: pass sources as lists of token ids.")
        if not self.built:
            self.build()
        if max_new_tokens == 0:
            outputs = [[] for _ in token_lists]
        else:
            jit_compile = False if jit_compile == "auto" else bool(jit_compile)
            capacity = min(round_up(max_new_tokens, 16), self.max_sequence_length)
            decode = self._decoder(capacity, beam_width, float(length_penalty), float(temperature), top_k, top_p,
                                   bool(use_cache), jit_compile)
            outputs = []
            for start in range(0, len(token_lists), batch_size):
                chunk = token_lists[start : start + batch_size]
                source_length = min(round_up(max(len(ids) for ids in chunk), 16), self.max_sequence_length)
                padded = np.full((len(chunk), source_length), self.pad_token_id, "int32")
                for row, ids in enumerate(chunk):
                    padded[row, : len(ids)] = ids
                seed_tensor = tf.constant([0 if seed is None else int(seed), 0], tf.int32)
                if seed is None and temperature > 0:
                    seed_tensor = tf.random.uniform([2], 0, 2**30, tf.int32)
                tokens, lengths = decode(tf.constant(padded), tf.constant(padded != self.pad_token_id),
                                         tf.constant(max_new_tokens, tf.int32), seed_tensor)
                tokens, lengths = tokens.numpy(), lengths.numpy()
                outputs += [tokens[row, : lengths[row]].tolist() for row in range(len(chunk))]
        if strings:
            return detokenize_rows(self.target_tokenizer, outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_encoder_layers": self.num_encoder_layers,
                "num_decoder_layers": self.num_decoder_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "max_sequence_length": self.max_sequence_length,
                "target_vocabulary_size": self.target_vocabulary_size,
                "share_embeddings": self.share_embeddings,
                "tie_output_embeddings": self.tie_output_embeddings,
                "dropout": self.dropout,
                "normalize_first": self.normalize_first,
                "activation": serialize_activation(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "pad_token_id": self.pad_token_id,
                "start_token_id": self.start_token_id,
                "end_token_id": self.end_token_id,
                "source_tokenizer": keras.saving.serialize_keras_object(self.source_tokenizer),
                "target_tokenizer": keras.saving.serialize_keras_object(self._target_tokenizer),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_entries(config, "source_tokenizer", "target_tokenizer"))
