"""BERT: a bidirectional Transformer encoder, and the heads that fine-tune it.

token + segment + learned position embeddings -> layer norm -> post-norm blocks
(non-causal) -> per-token outputs, and a pooler (dense + tanh) over `[CLS]`.

Heads: `BertMaskedLM` (pretraining), `BertClassifier` (one label per text),
`BertTokenClassifier` (one label per token), `BertSpanQA` (answer start and end).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfzoo.generation.decoding import round_up
from tfzoo.layers import PositionalEncoding, TransformerBlock
from tfzoo.layers.attention import pack_tokens, unpack_tokens
from tfzoo.layers.activations import deserialize_activation, get_activation, serialize_activation
from tfzoo.models.presets import BERT_PRESETS, preset_arguments
from tfzoo.saving import deserialize_entries
from tfzoo.tracking import Untracked
from tfzoo.validation import dropout_rate, positive_int

# `encode` cuts the grid after its last real token, rounded up to a multiple of this, so
# that batches of similar lengths share one compiled function.
GRID_LENGTH_MULTIPLE = 32


def _features(inputs):
    """`(token_ids, segment_ids, padding_mask)` from a dict, or from bare token ids."""
    if not isinstance(inputs, dict):
        inputs = {"token_ids": inputs}
    token_ids = inputs["token_ids"]
    segment_ids = inputs.get("segment_ids")
    if segment_ids is None:
        segment_ids = ops.zeros_like(token_ids)
    padding_mask = inputs.get("padding_mask")
    if padding_mask is None:
        padding_mask = ops.ones_like(token_ids, dtype="bool")
    return token_ids, segment_ids, padding_mask


@keras.saving.register_keras_serializable(package="tfzoo")
class BertEncoder(keras.Model):
    """A BERT-style encoder.

    Args:
        vocabulary_size: number of tokens.
        num_layers: number of Transformer blocks.
        num_heads: attention heads; `hidden_dim` must be divisible by it.
        hidden_dim: width of every token's representation.
        intermediate_dim: hidden width of the feed-forward networks.
        max_sequence_length: number of learned positions.
        num_segments: number of segment (token type) embeddings.
        dropout: dropout rate in training.
        layer_norm_epsilon: epsilon of every layer norm (BERT uses 1e-12).
        activation: feed-forward activation (BERT: exact GELU).
        preprocessor: optional `tfzoo.text.BertPreprocessor`, saved with the model;
            lets `embed` and the heads' `predict_text` take raw strings.

    Call arguments:
        inputs: a dict with `token_ids`, and optionally `segment_ids` and
            `padding_mask` (true for real tokens), each `(batch, sequence)`; or bare
            `token_ids`.

    Returns:
        A dict: `sequence_output` `(batch, sequence, hidden_dim)` and `pooled_output`
        `(batch, hidden_dim)`.

    Example:
    >>> encoder = BertEncoder.from_preset("bert_test")
    >>> outputs = encoder({"token_ids": np.ones((2, 10), "int32")})
    >>> outputs["sequence_output"].shape, outputs["pooled_output"].shape
    (TensorShape([2, 10, 64]), TensorShape([2, 64]))
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        max_sequence_length=512,
        num_segments=2,
        dropout=0.1,
        layer_norm_epsilon=1e-12,
        activation="gelu",
        preprocessor=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = positive_int("vocabulary_size", vocabulary_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.num_heads = positive_int("num_heads", num_heads)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.intermediate_dim = positive_int("intermediate_dim", intermediate_dim)
        self.max_sequence_length = positive_int("max_sequence_length", max_sequence_length)
        self.num_segments = positive_int("num_segments", num_segments)
        self.dropout = dropout_rate("dropout", dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.activation = deserialize_activation(activation)  # a function, once loaded from a config
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` must be divisible by `num_heads`. Received: hidden_dim={hidden_dim}, "
                f"num_heads={num_heads}"
            )
        self.preprocessor = preprocessor
        if preprocessor is not None:
            self._check_preprocessor(preprocessor)

        initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, embeddings_initializer=initializer, name="token_embedding"
        )
        self.segment_embedding = keras.layers.Embedding(
            num_segments, hidden_dim, embeddings_initializer=initializer, name="segment_embedding"
        )
        self.position_encoding = PositionalEncoding(
            "learned", max_sequence_length=max_sequence_length, name="position_encoding"
        )
        self.embedding_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="embedding_norm")
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.blocks = [
            TransformerBlock(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                dropout=dropout,
                activation=activation,
                normalize_first=False,  # post-norm, as in BERT
                causal=False,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=initializer,
                name=f"block_{index}",
            )
            for index in range(num_layers)
        ]
        self.pooler = keras.layers.Dense(
            hidden_dim, activation="tanh", kernel_initializer=initializer, name="pooler"
        )
        # Compiled padding-free forward passes, by jit_compile: not model state to save.
        self._untracked = Untracked(packed_forward={})

    def _check_preprocessor(self, preprocessor):
        tokenizer = preprocessor.tokenizer
        if tokenizer.vocabulary is not None and tokenizer.vocabulary_size() != self.vocabulary_size:
            raise ValueError(
                f"The vocabulary has {tokenizer.vocabulary_size()} tokens but the model's embedding "
                f"has vocabulary_size={self.vocabulary_size}."
            )
        if preprocessor.sequence_length > self.max_sequence_length:
            raise ValueError(
                f"The preprocessor packs {preprocessor.sequence_length} tokens but the model has only "
                f"max_sequence_length={self.max_sequence_length} positions."
            )

    @classmethod
    def from_preset(cls, name, **overrides):
        """Builds an encoder from a named shape in `tfzoo.models.presets.BERT_PRESETS`."""
        arguments = preset_arguments(BERT_PRESETS, name, "BERT")
        arguments.update(overrides)
        return cls(**arguments)

    def build(self, inputs_shape=None):
        if self.built:
            return
        shape = (None, None, self.hidden_dim)
        self.token_embedding.build((None, None))
        self.segment_embedding.build((None, None))
        self.position_encoding.build(shape)
        self.embedding_norm.build(shape)
        for block in self.blocks:
            block.build(shape)
        self.pooler.build((None, self.hidden_dim))
        self.built = True

    def _embeddings(self, token_ids, segment_ids):
        x = self.token_embedding(token_ids) + self.segment_embedding(segment_ids)  # (batch, sequence, hidden)
        return self.position_encoding(x)

    def call(self, inputs, training=None):
        token_ids, segment_ids, padding_mask = _features(inputs)
        x = self.embedding_dropout(self.embedding_norm(self._embeddings(token_ids, segment_ids)), training=training)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        return {"sequence_output": x, "pooled_output": self.pooler(x[:, 0, :])}

    def encode(self, inputs, jit_compile=True, bucket=128):
        """The encoder's outputs for inference, computed on the real tokens only.

        `call` computes every position of the `(batch, sequence)` grid, padding
        included. Here the real tokens are packed into one `(tokens, hidden_dim)` matrix
        first, so the projections, feed-forward networks and norms (most of the work)
        skip the padding; only the attention products run on the grid. The grid is cut
        after the last column that holds a real token (rounded up to a multiple of 32),
        so a batch padded to 512 by its preprocessor costs about what the same texts
        padded to their own length do. The token count is rounded up to a multiple of
        `bucket` (filler rows repeat a padding position), so that batches of similar
        fill share one compiled function.

        Args:
            inputs: as for `call` (NumPy arrays or eager tensors: the packing is
                planned in Python, outside the compiled function).
            jit_compile: compile the forward pass with XLA.
            bucket: the token counts that get their own compiled function.

        Returns:
            `call`'s dict, with `sequence_output` zero at padding positions (where
            `call` returns values that no real token depends on).

        Example:
        >>> encoder = BertEncoder.from_preset("bert_test")
        >>> features = {"token_ids": np.ones((2, 6), "int32"),
        ...             "padding_mask": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)}
        >>> packed, full = encoder.encode(features), encoder(features)
        >>> bool(np.allclose(packed["sequence_output"][0, :4], full["sequence_output"][0, :4], atol=1e-5))
        True
        """
        token_ids, segment_ids, padding_mask = (np.asarray(part) for part in _features(inputs))
        if not self.built:
            self.build()
        # Checked here: under XLA an out-of-range position id would be clamped silently.
        if token_ids.ndim != 2:
            raise ValueError(f"token_ids must be (batch, sequence); got shape {token_ids.shape}.")
        if token_ids.shape[1] > self.max_sequence_length:
            raise ValueError(
                f"The sequence has {token_ids.shape[1]} tokens, more than this encoder's "
                f"max_sequence_length={self.max_sequence_length}; truncate it in preprocessing."
            )
        # The columns after the last real token are padding in every row: the attention
        # products, the only work on the grid, leave them out (3x faster for the tiny BERT
        # on texts of 64-128 tokens padded to 512, measured).
        padding_mask = padding_mask.astype(bool)
        full_length = padding_mask.shape[1]
        real_columns = np.flatnonzero(padding_mask.any(axis=0))
        length = min(round_up(int(real_columns[-1]) + 1 if len(real_columns) else 1, GRID_LENGTH_MULTIPLE),
                     full_length)
        token_ids, segment_ids, padding_mask = (part[:, :length] for part in (token_ids, segment_ids, padding_mask))
        real = padding_mask.reshape(-1)
        positions = np.flatnonzero(real)
        size = min(round_up(max(len(positions), 1), positive_int("bucket", bucket)), real.size)
        filler = np.flatnonzero(~real)[:1]  # not empty whenever size > len(positions)
        positions = np.concatenate([positions, np.repeat(filler, size - len(positions))]).astype("int32")
        if bool(jit_compile) not in self._untracked.packed_forward:
            self._untracked.packed_forward[bool(jit_compile)] = tf.function(
                self._packed_forward, jit_compile=bool(jit_compile), reduce_retracing=True
            )
        outputs = self._untracked.packed_forward[bool(jit_compile)](
            tf.constant(token_ids, tf.int32), tf.constant(segment_ids, tf.int32),
            tf.constant(padding_mask), tf.constant(positions),
        )
        if length < full_length:  # back to the caller's grid, zero at the cut columns
            outputs["sequence_output"] = tf.pad(outputs["sequence_output"], [[0, 0], [0, full_length - length], [0, 0]])
        return outputs

    def _packed_forward(self, token_ids, segment_ids, padding_mask, positions):
        x = pack_tokens(self._embeddings(token_ids, segment_ids), positions)  # (tokens, hidden)
        x = self.embedding_norm(x)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, packed_positions=positions)
        sequence = unpack_tokens(x, positions, ops.shape(padding_mask))
        sequence = sequence * ops.cast(padding_mask, sequence.dtype)[:, :, None]  # zero where filler rows landed
        return {"sequence_output": sequence, "pooled_output": self.pooler(sequence[:, 0, :])}

    def embed(self, texts, batch_size=32, normalize=True):
        """Sentence embeddings: the mean of the token outputs over real tokens, L2-normalized.

        This is how sentence-transformers models such as all-MiniLM-L6-v2 pool.

        Args:
            texts: a list of strings (needs a preprocessor).
            batch_size: texts per forward pass.
            normalize: divide each embedding by its L2 norm.

        Returns:
            A NumPy array `(len(texts), hidden_dim)`.
        """
        if self.preprocessor is None:
            raise ValueError("This encoder has no preprocessor: it cannot embed raw text.")
        texts = _text_list(texts)
        batch_size = positive_int("batch_size", batch_size)
        batches = []
        for start in range(0, len(texts), batch_size):
            features = self.preprocessor(tf.constant(texts[start : start + batch_size]))
            # encode skips the padding, most of a batch of short sentences.
            sequence = self.encode(features)["sequence_output"]
            batches.append(_mean_pool(sequence, features["padding_mask"], normalize).numpy())
        return np.concatenate(batches)

    def embed_features(self, features, normalize=True):
        """`embed` on already-packed features (graph-friendly; used by exports)."""
        sequence = self(features, training=False)["sequence_output"]
        return _mean_pool(sequence, features["padding_mask"], normalize)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "max_sequence_length": self.max_sequence_length,
                "num_segments": self.num_segments,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": serialize_activation(self.activation),
                "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_entries(config, "preprocessor"))


def _mean_pool(sequence, padding_mask, normalize):
    """The mean of `sequence` `(batch, length, width)` over real tokens, L2-normalized or not."""
    # In float32 even under mixed precision: a bfloat16 sum miscounts long sequences
    # (301 tokens add up to 300) and the embeddings would come out bfloat16.
    sequence = ops.cast(sequence, "float32")
    mask = ops.cast(padding_mask, "float32")[:, :, None]
    pooled = ops.sum(sequence * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)
    if normalize:
        pooled = pooled / ops.maximum(ops.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


def _weighted_cross_entropy():
    # With sample weights (padding, unused mask slots), average over the weighted
    # slots only: the default would also count the zero-weight ones.
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")


def _text_list(texts):
    if isinstance(texts, str):
        raise ValueError("Expected a list of texts; wrap a single text in a list.")
    texts = list(texts)
    if not texts:
        raise ValueError("The list of texts is empty.")
    return texts


class _BertHead(keras.Model):
    """What the heads share: an encoder, dropout, config handling, raw-text prediction."""

    def __init__(self, encoder, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.dropout = dropout_rate("dropout", dropout)
        self.output_dropout = keras.layers.Dropout(dropout, name="output_dropout")

    @property
    def preprocessor(self):
        return self.encoder.preprocessor

    def predict_text(self, texts, batch_size=32):
        """Runs the head on raw text (one segment, or a `(first, second)` pair of lists)."""
        if self.preprocessor is None:
            raise ValueError("The encoder has no preprocessor: it cannot read raw text.")
        if isinstance(texts, tuple):
            features = self.preprocessor(tuple(tf.constant(_text_list(part)) for part in texts))
        else:
            features = self.preprocessor(tf.constant(_text_list(texts)))
        return self.predict(features, batch_size=batch_size, verbose=0)

    def get_config(self):
        config = super().get_config()
        config.update({"encoder": keras.saving.serialize_keras_object(self.encoder), "dropout": self.dropout})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_entries(config, "encoder"))


@keras.saving.register_keras_serializable(package="tfzoo")
class BertClassifier(_BertHead):
    """One label per text: a dense layer on the pooled `[CLS]` output.

    Args:
        encoder: a `BertEncoder`.
        num_classes: number of labels.
        dropout: dropout before the output layer.

    Returns:
        Logits `(batch, num_classes)`.

    Example:
    >>> classifier = BertClassifier(BertEncoder.from_preset("bert_test"), num_classes=2)
    >>> classifier.compile()
    >>> classifier({"token_ids": np.ones((3, 8), "int32")}).shape
    TensorShape([3, 2])
    """

    def __init__(self, encoder, num_classes, dropout=0.1, **kwargs):
        super().__init__(encoder, dropout, **kwargs)
        self.num_classes = positive_int("num_classes", num_classes)
        self.output_dense = keras.layers.Dense(num_classes, name="logits")

    def call(self, inputs, training=None):
        pooled = self.encoder(inputs, training=training)["pooled_output"]
        return ops.cast(self.output_dense(self.output_dropout(pooled, training=training)), "float32")

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Defaults: AdamW (2e-5, as BERT fine-tuning), cross-entropy on logits, accuracy."""
        super().compile(
            optimizer=keras.optimizers.AdamW(2e-5) if optimizer == "auto" else optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) if loss == "auto" else loss,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")] if metrics == "auto" else metrics,
            **kwargs,
        )

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="tfzoo")
class BertTokenClassifier(_BertHead):
    """One label per token (named entities, parts of speech): a dense layer on each token.

    Returns:
        Logits `(batch, sequence, num_classes)`. Train with `sample_weight` set to the
        padding mask so that padding does not count.

    Example:
    >>> tagger = BertTokenClassifier(BertEncoder.from_preset("bert_test"), num_classes=5)
    >>> tagger({"token_ids": np.ones((2, 7), "int32")}).shape
    TensorShape([2, 7, 5])
    """

    def __init__(self, encoder, num_classes, dropout=0.1, **kwargs):
        super().__init__(encoder, dropout, **kwargs)
        self.num_classes = positive_int("num_classes", num_classes)
        self.output_dense = keras.layers.Dense(num_classes, name="logits")

    def call(self, inputs, training=None):
        sequence = self.encoder(inputs, training=training)["sequence_output"]
        return ops.cast(self.output_dense(self.output_dropout(sequence, training=training)), "float32")

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Defaults: AdamW (5e-5), cross-entropy averaged over weighted tokens, accuracy."""
        super().compile(
            optimizer=keras.optimizers.AdamW(5e-5) if optimizer == "auto" else optimizer,
            loss=_weighted_cross_entropy() if loss == "auto" else loss,
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
            if metrics == "auto" else metrics,
            **kwargs,
        )

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="tfzoo")
class BertSpanQA(_BertHead):
    """Extractive question answering: where the answer starts and ends in the passage.

    Inputs are `[CLS] question [SEP] passage [SEP]`. A dense layer gives each token a
    start and an end logit; padding gets a very negative logit.

    Returns:
        A dict of `start_logits` and `end_logits`, each `(batch, sequence)`. Labels are
        `{"start_logits": start_index, "end_logits": end_index}`.

    Example:
    >>> reader = BertSpanQA(BertEncoder.from_preset("bert_test"))
    >>> spans = reader({"token_ids": np.ones((2, 9), "int32")})
    >>> spans["start_logits"].shape, spans["end_logits"].shape
    (TensorShape([2, 9]), TensorShape([2, 9]))
    """

    def __init__(self, encoder, dropout=0.1, **kwargs):
        super().__init__(encoder, dropout, **kwargs)
        self.output_dense = keras.layers.Dense(2, name="span_logits")

    def call(self, inputs, training=None):
        _, _, padding_mask = _features(inputs)
        sequence = self.encoder(inputs, training=training)["sequence_output"]
        logits = ops.cast(self.output_dense(self.output_dropout(sequence, training=training)), "float32")
        logits = ops.where(ops.cast(padding_mask, "bool")[:, :, None], logits, -1e9)
        return {"start_logits": logits[:, :, 0], "end_logits": logits[:, :, 1]}

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        accuracy = lambda name: keras.metrics.SparseCategoricalAccuracy(name=name)  # noqa: E731
        super().compile(
            optimizer=keras.optimizers.AdamW(5e-5) if optimizer == "auto" else optimizer,
            loss={"start_logits": cross_entropy, "end_logits": cross_entropy} if loss == "auto" else loss,
            metrics={"start_logits": [accuracy("start_accuracy")], "end_logits": [accuracy("end_accuracy")]}
            if metrics == "auto" else metrics,
            **kwargs,
        )


@keras.saving.register_keras_serializable(package="tfzoo")
class BertMaskedLM(_BertHead):
    """Masked-language-model pretraining: predict the original token at masked positions.

    The prediction head is BERT's: dense + activation + layer norm, then the token
    embedding transposed (tied) plus a bias.

    Call arguments:
        inputs: the encoder's inputs plus `mask_positions` `(batch, num_masks)`.

    Returns:
        Logits `(batch, num_masks, vocabulary_size)`. Use `tfzoo.data.masked_lm_dataset`
        to make inputs, labels and weights.

    Example:
    >>> encoder = BertEncoder.from_preset("bert_test")
    >>> masked_lm = BertMaskedLM(encoder)
    >>> logits = masked_lm({"token_ids": np.ones((2, 8), "int32"),
    ...                     "mask_positions": np.array([[1, 4], [2, 3]], "int32")})
    >>> logits.shape[:2], logits.shape[2] == encoder.vocabulary_size
    (TensorShape([2, 2]), True)
    """

    def __init__(self, encoder, dropout=0.0, **kwargs):
        super().__init__(encoder, dropout, **kwargs)
        self.transform_dense = keras.layers.Dense(
            encoder.hidden_dim, activation=get_activation(encoder.activation), name="transform",
        )
        self.transform_norm = keras.layers.LayerNormalization(epsilon=encoder.layer_norm_epsilon, name="transform_norm")

    def build(self, inputs_shape=None):
        if self.built:
            return
        self.encoder.build()
        self.transform_dense.build((None, None, self.encoder.hidden_dim))
        self.transform_norm.build((None, None, self.encoder.hidden_dim))
        self.output_bias = self.add_weight(name="output_bias", shape=(self.encoder.vocabulary_size,),
                                           initializer="zeros")
        self.built = True

    def call(self, inputs, training=None):
        sequence = self.encoder(inputs, training=training)["sequence_output"]
        masked = ops.take_along_axis(sequence, ops.cast(inputs["mask_positions"], "int32")[:, :, None], axis=1)
        masked = self.output_dropout(masked, training=training)
        hidden = self.transform_norm(self.transform_dense(masked))  # (batch, masks, hidden)
        embeddings = ops.cast(self.encoder.token_embedding.embeddings, hidden.dtype)
        logits = ops.matmul(hidden, ops.transpose(embeddings)) + ops.cast(self.output_bias, hidden.dtype)
        return ops.cast(logits, "float32")

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        super().compile(
            optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01) if optimizer == "auto" else optimizer,
            loss=_weighted_cross_entropy() if loss == "auto" else loss,
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
            if metrics == "auto" else metrics,
            **kwargs,
        )
