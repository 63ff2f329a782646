"""GPT: a decoder-only causal language model (GPT-2 layout) built from tfzoo's layers.

token ids -> token embedding + learned positions -> pre-norm causal blocks -> final
layer norm -> logits through the token embedding again (tied weights).
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfzoo.generation import decode_loop, left_pad, next_token, sampler, validate_sampling
from tfzoo.generation.decoding import detokenize_rows, round_up
from tfzoo.layers import PositionalEncoding, TransformerBlock, cache_writes_in_place, on_tokens
from tfzoo.layers.activations import deserialize_activation, serialize_activation
from tfzoo.layers.attention import empty_key_value_cache, in_xla_function
from tfzoo.layers.normalization import normalize
from tfzoo.models.presets import GPT_PRESETS, preset_arguments
from tfzoo.saving import deserialize_entries
from tfzoo.tracking import Untracked
from tfzoo.validation import dropout_rate, positive_int, token_id_lists


@keras.saving.register_keras_serializable(package="tfzoo")
class GPT(keras.Model):
    """A GPT-style causal language model.

    Args:
        vocabulary_size: number of tokens.
        num_layers: number of Transformer blocks.
        num_heads: attention heads per block; `hidden_dim` must be divisible by it.
        hidden_dim: width of the residual stream.
        intermediate_dim: hidden width of each feed-forward network.
        max_sequence_length: the longest sequence (prompt plus generated tokens).
        dropout: dropout rate in training.
        layer_norm_epsilon: epsilon of every layer norm.
        activation: feed-forward activation; GPT-2's tanh-approximated GELU by default.
        tokenizer: optional in-graph tokenizer (e.g. from `tfzoo.text`); it is saved
            with the model and lets `generate` take and return strings.

    Call arguments:
        inputs: `(batch, sequence)` token ids, or a dict with `token_ids` and
            `padding_mask` (true for real tokens).

    Returns:
        float32 logits `(batch, sequence, vocabulary_size)` for the next token.

    Example:
    >>> model = GPT.from_preset("gpt_test")
    >>> model.compile()
    >>> tokens = np.random.randint(0, 512, (4, 17))
    >>> history = model.fit(tokens[:, :-1], tokens[:, 1:], epochs=1, verbose=0)
    >>> len(model.generate([[1, 2, 3]], max_new_tokens=5)[0])
    5
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        max_sequence_length=1024,
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        activation="gelu_approximate",
        tokenizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("hidden_dim", hidden_dim),
            ("intermediate_dim", intermediate_dim),
            ("max_sequence_length", max_sequence_length),
        ):
            positive_int(name, value)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` must be divisible by `num_heads`. Received: hidden_dim={hidden_dim}, "
                f"num_heads={num_heads}"
            )
        # (A tokenizer being loaded from a .keras file gets its vocabulary later.)
        if getattr(tokenizer, "vocabulary", None) is not None and tokenizer.vocabulary_size() > vocabulary_size:
            raise ValueError(
                f"The tokenizer has {tokenizer.vocabulary_size()} tokens but the model only "
                f"vocabulary_size={vocabulary_size}."
            )
        self.vocabulary_size = int(vocabulary_size)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.hidden_dim = int(hidden_dim)
        self.intermediate_dim = int(intermediate_dim)
        self.max_sequence_length = int(max_sequence_length)
        self.dropout = dropout_rate("dropout", dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.activation = deserialize_activation(activation)  # a function, once loaded from a config
        self.tokenizer = tokenizer

        initializer = keras.initializers.RandomNormal(stddev=0.02)
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, embeddings_initializer=initializer, name="token_embedding"
        )
        self.position_encoding = PositionalEncoding(
            "learned", max_sequence_length=max_sequence_length, name="position_encoding"
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.blocks = [
            TransformerBlock(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                dropout=dropout,
                activation=activation,
                normalize_first=True,
                causal=True,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=initializer,
                name=f"block_{index}",
            )
            for index in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="final_norm")
        # Compiled generate functions by sampling setup: not model state to save.
        self._untracked = Untracked(generators={})

    @classmethod
    def from_preset(cls, name, **overrides):
        """Builds a model from a named shape in `tfzoo.models.presets.GPT_PRESETS`.

        Example:
        >>> GPT.from_preset("gpt_test", dropout=0.1).num_layers
        2
        """
        arguments = preset_arguments(GPT_PRESETS, name, "GPT")
        arguments.update(overrides)
        return cls(**arguments)

    def build(self, inputs_shape=None):
        if self.built:
            return
        shape = (None, None, self.hidden_dim)
        self.token_embedding.build((None, None))
        self.position_encoding.build(shape)
        for block in self.blocks:
            block.build(shape)
        self.final_norm.build(shape)
        self.built = True

    # The forward pass, written once and used by training, prefill and each decode step.
    def _hidden_states(self, token_ids, padding_mask=None, caches=None, cache_index=None,
                       position_start=0, training=None):
        x = self.token_embedding(token_ids)  # (batch, sequence, hidden)
        x = self.position_encoding(x, start_index=position_start)
        x = self.embedding_dropout(x, training=training)
        new_caches = []
        for layer_index, block in enumerate(self.blocks):
            if caches is None:
                x = block(x, padding_mask=padding_mask, training=training)
            else:
                x, cache = block(
                    x, padding_mask=padding_mask, cache=caches[layer_index], cache_index=cache_index,
                    training=training,
                )
                new_caches.append(cache)
        return normalize(self.final_norm, x, training), tuple(new_caches)

    def _logits(self, hidden, few_tokens=False):
        # The output head is the token embedding, transposed (weight tying).
        embeddings = ops.cast(self.token_embedding.embeddings, hidden.dtype)  # (vocabulary, hidden)
        if few_tokens and in_xla_function():
            # A decoding step's few rows, under XLA: `(E h^T)^T`, the embedding as the
            # left operand in its own layout. For `h E^T` XLA's CPU fused the transposed
            # embedding and the final norm into a loop; this form made the tiny GPT's
            # greedy decoding 1.04x faster at batch 1, 1.01x at batch 8 (interleaved A/B).
            shape = ops.shape(hidden)
            rows = ops.reshape(hidden, (-1, hidden.shape[-1]))  # (batch * length, hidden)
            logits = ops.transpose(ops.matmul(embeddings, ops.transpose(rows)))
            batch_size = -1 if isinstance(shape[1], int) else shape[0]  # no shape ops when static
            return ops.cast(ops.reshape(logits, (batch_size, shape[1], logits.shape[-1])), "float32")
        head = ops.transpose(embeddings)
        return ops.cast(on_tokens(lambda tokens: ops.matmul(tokens, head), hidden), "float32")

    def call(self, inputs, training=None):
        if isinstance(inputs, dict):
            token_ids, padding_mask = inputs["token_ids"], inputs.get("padding_mask")
        else:
            token_ids, padding_mask = inputs, None
        hidden, _ = self._hidden_states(token_ids, padding_mask=padding_mask, training=training)
        return self._logits(hidden)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """`compile` with language-model defaults.

        "auto" means AdamW (learning rate 3e-4), next-token cross-entropy on logits
        and perplexity, both from `tfzoo.training.losses`: the values of Keras' sparse
        cross-entropy and keras-hub's perplexity, computed with XLA (the loss and metric
        cost ~0.28 s of a 0.84 s step without it: benchmarks/profile_gpt.py).
        """
        from tfzoo.training.losses import Perplexity, SparseCrossEntropy  # tfzoo.training imports models

        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=3e-4, weight_decay=0.01)
        if loss == "auto":
            loss = SparseCrossEntropy()
        if metrics == "auto":
            metrics = [Perplexity(name="perplexity")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    # ------------------------------------------------------------------ generation
    def empty_cache(self, batch_size, length):
        """Zeroed key/value caches: one `(keys, values)` pair per block, each
        `(batch, heads, length, head_dim)`."""
        return empty_key_value_cache(len(self.blocks), batch_size, self.num_heads, length,
                                     self.hidden_dim // self.num_heads, self.compute_dtype)

    def prefill(self, token_ids, pad_counts, cache_length):
        """Runs left-padded prompts `(batch, prompt)` through the model, filling a new cache.

        Returns the logits of each prompt's last token `(batch, vocab)`, the caches, and
        the key padding mask over the whole cache.
        """
        batch_size = tf.shape(token_ids)[0]
        caches = self.empty_cache(batch_size, cache_length)
        key_mask = tf.range(cache_length)[None, :] >= pad_counts[:, None]  # (batch, cache)
        hidden, caches = self._hidden_states(
            token_ids, padding_mask=key_mask, caches=caches, cache_index=0, position_start=-pad_counts
        )
        return self._logits(hidden[:, -1:, :], few_tokens=True)[:, 0, :], caches, key_mask

    def decode_step(self, token_ids, index, caches, key_mask, pad_counts):
        """One token per example at cache `index`: returns `(logits (batch, vocab), caches)`."""
        hidden, caches = self._hidden_states(
            token_ids[:, None], padding_mask=key_mask, caches=caches, cache_index=index,
            position_start=index - pad_counts,
        )
        return self._logits(hidden, few_tokens=True)[:, 0, :], caches

    def generate_token_ids(self, token_ids, pad_counts, max_new_tokens, capacity, cache_length=None,
                           choose=None, stop_token_ids=(), seed=None):
        """The graph-friendly core of `generate`: left-padded ids in, new ids out.

        Args:
            token_ids: `(batch, prompt)` left-padded prompts; `pad_counts` `(batch,)`.
            max_new_tokens: how many tokens to add (int or scalar tensor).
            capacity: static size of the output buffer, `>= max_new_tokens`.
            cache_length: length of the key/value cache; at least prompt plus new
                tokens. Defaults to prompt length + `capacity` (static shapes, for XLA).
            choose: `choose(logits, seed) -> tokens` (`tfzoo.generation.sampler`);
                greedy by default.
            stop_token_ids, seed: see `tfzoo.generation.decode_loop`.

        Returns `(tokens (batch, capacity), lengths (batch,))`.
        """
        prompt_length = tf.shape(token_ids)[1]
        if cache_length is None:
            # Static when the trace knows the prompt length (XLA wants it); a traced
            # function relaxed to any length (reduce_retracing) gets it at run time.
            static_length = token_ids.shape[1]
            cache_length = (prompt_length if static_length is None else static_length) + capacity
        logits, caches, key_mask = self.prefill(token_ids, pad_counts, cache_length)

        def step(token, index, caches):
            return self.decode_step(token, index, caches, key_mask, pad_counts)

        return decode_loop(
            step, logits, caches, start_index=prompt_length, max_new_tokens=max_new_tokens,
            capacity=capacity, stop_token_ids=stop_token_ids, choose=choose, seed=seed,
        )

    def _generator(self, capacity, temperature, top_k, top_p, stop_token_ids, jit_compile):
        """A compiled generate function per sampling setup, kept so calls don't retrace."""
        key = (capacity, temperature, top_k, top_p, stop_token_ids, jit_compile)
        if key not in self._untracked.generators:

            @tf.function(jit_compile=jit_compile, reduce_retracing=True)
            def generate_compiled(token_ids, pad_counts, max_new_tokens, seed):
                with cache_writes_in_place() if jit_compile else contextlib.nullcontext():
                    return self.generate_token_ids(
                        token_ids, pad_counts, max_new_tokens, capacity, choose=sampler(temperature, top_k, top_p),
                        stop_token_ids=stop_token_ids, seed=seed,
                    )

            self._untracked.generators[key] = generate_compiled
        return self._untracked.generators[key]

    def generate(self, prompts, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None,
                 stop_token_ids="auto", seed=None, use_cache=True, jit_compile="auto"):
        """Continues each prompt.

        Args:
            prompts: a list of strings (needs a tokenizer) or of token-id lists. Prompts
                may have different lengths.
            max_new_tokens: the most tokens to add to each prompt.
            temperature: 0 for greedy decoding, otherwise the sampling temperature.
            top_k: sample among the `top_k` most likely tokens (more than the vocabulary keeps them all).
            top_p: sample among the most likely tokens whose probability reaches `top_p`.
            stop_token_ids: a prompt stops after one of these (not included in the
                output). "auto" is the tokenizer's end-of-text token, if any.
            seed: an int for reproducible sampling. With and without XLA the same seed
                draws different tokens (XLA has its own random-number kernel); the
                SavedModel's `generate_sampled` draws those of `jit_compile=False`.
            use_cache: cache keys and values (fast); False recomputes the whole
                sequence at every step (slow, a reference for tests).
            jit_compile: compile the decode loop with XLA. "auto" is True: XLA makes
                cached decoding faster on CPU (see benchmarks/).

        Returns:
            Strings (the generated continuations) when the prompts were strings,
            otherwise lists of new token ids.
        """
        max_new_tokens, temperature, top_k, top_p = validate_sampling(max_new_tokens, temperature, top_k, top_p)
        token_lists, strings = token_id_lists(prompts, self.tokenizer, self.vocabulary_size, "prompts", "Prompt")
        if not self.built:
            self.build()  # else the decode loop would build the sublayers but not the model
        longest = max(len(ids) for ids in token_lists)
        if longest + max_new_tokens > self.max_sequence_length:
            raise ValueError(
                f"A prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                f"model's max_sequence_length={self.max_sequence_length}."
            )
        if stop_token_ids == "auto":
            end_token_id = getattr(self.tokenizer, "end_token_id", None)
            stop_token_ids = () if end_token_id is None else (end_token_id,)
        stop_token_ids = tuple(int(token) for token in stop_token_ids or ())
        temperature = float(temperature)

        if max_new_tokens == 0:
            new_tokens = [[] for _ in token_lists]
        elif use_cache:
            new_tokens = self._generate_cached(
                token_lists, max_new_tokens, temperature, top_k, top_p, stop_token_ids, seed, jit_compile
            )
        else:
            new_tokens = self._generate_uncached(
                token_lists, max_new_tokens, temperature, top_k, top_p, stop_token_ids, seed
            )
        if strings:
            return detokenize_rows(self.tokenizer, new_tokens)
        return new_tokens

    def _generate_cached(self, token_lists, max_new_tokens, temperature, top_k, top_p,
                         stop_token_ids, seed, jit_compile):
        # Round the prompt and output lengths up, so that nearby sizes share one
        # compiled program instead of each compiling its own.
        longest = max(len(ids) for ids in token_lists)
        prompt_length = min(round_up(longest, 16), self.max_sequence_length - max_new_tokens)
        capacity = min(round_up(max_new_tokens, 16), self.max_sequence_length - prompt_length)
        token_ids, pad_counts = left_pad(token_lists, prompt_length)
        if jit_compile == "auto":
            jit_compile = True
        generator = self._generator(capacity, temperature, top_k, top_p, stop_token_ids, bool(jit_compile))
        seed_tensor = tf.constant([0 if seed is None else int(seed), 0], tf.int32)
        tokens, lengths = generator(
            tf.constant(token_ids), tf.constant(pad_counts), tf.constant(max_new_tokens, tf.int32),
            seed_tensor if (seed is not None or temperature == 0.0) else tf.random.uniform([2], 0, 2**30, tf.int32),
        )
        tokens, lengths = tokens.numpy(), lengths.numpy()
        return [tokens[row, : lengths[row]].tolist() for row in range(len(token_lists))]

    def _generate_uncached(self, token_lists, max_new_tokens, temperature, top_k, top_p,
                           stop_token_ids, seed):
        # One prompt at a time, the whole sequence through `call` at every step.
        results = []
        for ids in token_lists:
            sequence = list(ids)
            for step in range(max_new_tokens):
                logits = self(np.asarray([sequence], "int32"), training=False)[:, -1, :]
                step_seed = None if seed is None else tf.constant([int(seed), step], tf.int32)
                token = int(next_token(logits, temperature, top_k, top_p, step_seed)[0])
                if token in stop_token_ids:
                    break
                sequence.append(token)
            results.append(sequence[len(ids):])
        return results

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
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": serialize_activation(self.activation),
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_entries(config, "tokenizer"))
