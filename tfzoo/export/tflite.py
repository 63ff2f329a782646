"""TFLite export: TFLite builtins and tensorflow-text's custom ops, nothing else.

No Python TFLite runtime here (nor most phones) runs Flex ops, so every model is
converted with `TFLITE_BUILTINS` only, plus `allow_custom_ops` for the tokenizer ops
that tensorflow-text ships TFLite kernels for (FastSentencepiece, FastWordpiece,
FastBertNormalize, RaggedTensorToTensor). `tfzoo.export.audit_tflite` checks that.

Signatures by family (input names as given; outputs in a dict):

- GPT: `logits` (`token_ids` `[batch, sequence]` -> `logits`); the on-device
  convention `prefill` (left-padded `token_ids` `[batch, prompt]`, `pad_counts`
  `[batch]` -> last-token `logits` `[batch, vocabulary]`, `cache`) and `decode`
  (`token_ids` `[batch]`, `index` (the cache slot to write), `cache`, `pad_counts` ->
  `logits`, `cache`); and, when the tokenizer has TFLite kernels (SentencePiece,
  WordPiece), `generate`: `prompts` (strings) and `max_new_tokens` -> `text`,
  `token_ids`, `lengths`, with tokenization, the greedy loop and detokenization
  in the graph. The key/value `cache` is one static-shape tensor
  `[num_layers, batch, 2, num_heads, max_sequence_length, head_dim]`
  (keys and values at index 0 and 1 of the third axis).
- BERT classifier: `classify` (`text`) -> `label`, `label_id`, `probabilities`; and
  `classify_token_ids` (`token_ids` packed to the preprocessor's `[batch, sequence_length]`) -> the same.
- BERT encoder: `embed` (`text`) -> `embedding` (mean-pooled, L2-normalized); and
  `embed_token_ids` (packed `token_ids`) -> the same.

`export_tflite` writes `model.tflite` (float32) and, with `quantize="int8"`, also
`model_int8.tflite` (dynamic-range: int8 weights, float activations) next to a
SavedModel of the same model in TF Serving's layout, `savedmodels/NAME/VERSION/`.

Run an export with `tflite_interpreter(path)`, which registers tensorflow-text's
kernels with `ai_edge_litert`'s interpreter.
"""

import os
import shutil

import numpy as np
import tensorflow as tf

from tfzoo.export.common import classifier_outputs, label_names_tensor, require_built
from tfzoo.export.layout import version_folder, write_models_config

TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
QUANTIZATIONS = (None, "int8")


def tflite_text_generation(tokenizer):
    """Whether a GPT with `tokenizer` can have a string-to-string TFLite signature.

    Only tfzoo's `SentencePieceTokenizer`: its tokenizer op has a TFLite kernel.
    keras-hub's byte-pair tokenizer (tfzoo's GPT-2 BPE) has none: its regex split and
    hash-table lookups exist only as TensorFlow ops.

    Example:
    >>> tflite_text_generation(None)
    False
    """
    from tfzoo.text import SentencePieceTokenizer

    return isinstance(tokenizer, SentencePieceTokenizer)


def sentencepiece_piece_texts(tokenizer, size):
    """Each id's text at the start of a detokenized string, and after other text.

    Returns a `(2 * size + 1,)` list of bytes: ids `0..size-1` as they read after
    other text, then the same ids as the first piece of a string (SentencePiece
    drops the first piece's leading space), then the empty string. Computed with the
    tokenizer's own detokenizer, so a lookup-and-join reproduces it exactly. Ids
    past the tokenizer's vocabulary (a model may have more) read as nothing.
    """
    vocabulary_size = tokenizer.vocabulary_size()
    ids = list(range(vocabulary_size))
    anchor = tokenizer.end_token_id + 1  # an ordinary piece, to read the others after
    anchor_text = tokenizer.detokenize([[anchor]]).numpy()[0]
    first = tokenizer.detokenize([[token] for token in ids]).numpy().tolist()
    after = [text[len(anchor_text):] for text in tokenizer.detokenize([[anchor, token] for token in ids]).numpy()]
    padding = [b""] * (size - vocabulary_size)
    return after + padding + first + padding + [b""]


def detokenize_sentencepiece(piece_texts, tokenizer, tokens, lengths):
    """The text of each row's first `lengths` tokens, as `tokenizer.detokenize` gives it.

    `piece_texts` is `sentencepiece_piece_texts(tokenizer, size)` as a constant, and
    `tokens` `(batch, width)` with a static width; builtin ops and tensorflow-text's
    `NgramsStringJoin` only.
    """
    import tensorflow_text as tf_text

    size = (piece_texts.shape[0] - 1) // 2
    width = tokens.shape[1]
    columns = tf.range(width)[None, :]
    # Padding, start and end ids decode to nothing (as in SentencePieceTokenizer.detokenize).
    kept = (columns < lengths[:, None]) & ((tokens == tokenizer.unk_token_id) | (tokens > tokenizer.end_token_id))
    first = tf.argmax(tf.cast(kept, tf.int32), axis=1, output_type=tf.int32)[:, None]  # first kept column
    index = tf.where(kept, tf.where(columns == first, tokens + size, tokens), 2 * size)
    pieces = tf.gather(piece_texts, index)  # (batch, width) strings
    joined = tf_text.ngrams(pieces, width, reduction_type=tf_text.Reduction.STRING_JOIN,
                            string_separator="")  # (batch, 1): one n-gram as wide as the row
    return tf.reshape(joined, [-1])


def stack_caches(caches):
    """The model's `(keys, values)` pair per layer as the one on-device cache tensor
    `(layers, batch, 2, heads, length, head_dim)`."""
    return tf.stack([tf.stack(pair, axis=1) for pair in caches])


def unstack_caches(cache):
    """The inverse of `stack_caches`: one `(keys, values)` pair per layer."""
    return tuple((layer[:, 0], layer[:, 1]) for layer in tf.unstack(cache))


class GPTLiteModule(tf.Module):
    """A GPT's TFLite signatures: `logits`, `prefill`, `decode` and (text) `generate`.

    Args:
        model: a built `GPT`.
        text_signature: "auto" adds `generate` when the tokenizer converts to TFLite;
            True requires it (ValueError otherwise); False leaves it out.
    """

    def __init__(self, model, text_signature="auto"):
        super().__init__()
        require_built(model)
        if text_signature not in ("auto", True, False):
            raise ValueError(f"`text_signature` must be 'auto', True or False. Received: text_signature={text_signature!r}")
        convertible = tflite_text_generation(model.tokenizer)
        if text_signature is True and not convertible:
            raise ValueError(
                "A string-to-string TFLite signature needs a tokenizer with TFLite kernels "
                "(tfzoo.text.SentencePieceTokenizer); this GPT has "
                f"{type(model.tokenizer).__name__ if model.tokenizer is not None else 'no tokenizer'}. "
                "The prefill and decode signatures work without one."
            )
        self.model = model
        self.with_text = convertible and text_signature is not False
        self.tokenizer = model.tokenizer if self.with_text else None
        self.cache_length = model.max_sequence_length
        end_token_id = getattr(model.tokenizer, "end_token_id", None)
        self.stop_token_ids = () if end_token_id is None else (int(end_token_id),)
        head_dim = model.hidden_dim // model.num_heads
        cache_spec = tf.TensorSpec(
            [model.num_layers, None, 2, model.num_heads, self.cache_length, head_dim], model.compute_dtype,
            name="cache",
        )
        batch_ints = tf.TensorSpec([None], tf.int32, name="pad_counts")
        self.logits = tf.function(
            self._logits, input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")]
        )
        self.prefill = tf.function(
            self._prefill, input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"), batch_ints]
        )
        self.decode = tf.function(self._decode, input_signature=[
            tf.TensorSpec([None], tf.int32, name="token_ids"), tf.TensorSpec([], tf.int32, name="index"),
            cache_spec, batch_ints,
        ])
        if self.with_text:
            # tensorflow-text's SentencePiece detokenizer kernel crashes in this TFLite
            # runtime: detokenize with a lookup table and NgramsStringJoin instead.
            self.piece_texts = tf.constant(sentencepiece_piece_texts(self.tokenizer, model.vocabulary_size))
            self.generate = tf.function(self._generate, input_signature=[
                tf.TensorSpec([None], tf.string, name="prompts"), tf.TensorSpec([], tf.int32, name="max_new_tokens"),
            ])

    def _logits(self, token_ids):
        return {"logits": self.model(token_ids, training=False)}

    def _prefill(self, token_ids, pad_counts):
        logits, caches, _ = self.model.prefill(token_ids, pad_counts, self.cache_length)
        return {"logits": logits, "cache": stack_caches(caches)}

    def _key_mask(self, pad_counts):
        return tf.range(self.cache_length)[None, :] >= pad_counts[:, None]  # (batch, cache): not padding

    def _decode(self, token_ids, index, cache, pad_counts):
        logits, caches = self.model.decode_step(
            token_ids, index, unstack_caches(cache), self._key_mask(pad_counts), pad_counts
        )
        return {"logits": logits, "cache": stack_caches(caches)}

    def _generate(self, prompts, max_new_tokens):
        model = self.model
        ragged = self.tokenizer(prompts)
        # Longer prompts keep their first max_sequence_length - 1 tokens (a TFLite
        # graph cannot raise a readable error). `to_tensor(shape=...)` truncates with
        # tensorflow-text's kernel; a ragged slice would need RaggedRange.
        limit = self.cache_length - 1
        dense = tf.cast(ragged.to_tensor(default_value=0, shape=[None, limit]), tf.int32)  # (batch, limit)
        lengths = tf.minimum(tf.cast(ragged.row_lengths(), tf.int32), limit)
        prompt_length = tf.maximum(tf.reduce_max(lengths), 1)
        # Left-pad: column j of row i holds token j - pad_counts[i] of the prompt.
        pad_counts = prompt_length - lengths
        source = tf.range(prompt_length)[None, :] - pad_counts[:, None]  # (batch, prompt)
        token_ids = tf.where(source >= 0, tf.gather(dense, tf.maximum(source, 0), batch_dims=1), 0)
        max_new_tokens = tf.clip_by_value(max_new_tokens, 0, self.cache_length - prompt_length)
        tokens, new_lengths = model.generate_token_ids(
            token_ids, pad_counts, max_new_tokens, capacity=self.cache_length, cache_length=self.cache_length,
            stop_token_ids=self.stop_token_ids,
        )
        text = detokenize_sentencepiece(self.piece_texts, self.tokenizer, tokens, new_lengths)
        return {"text": text, "token_ids": tokens, "lengths": new_lengths}

    def signature_functions(self):
        names = ["logits", "prefill", "decode"] + (["generate"] if self.with_text else [])
        return {name: getattr(self, name) for name in names}


def pack_one_segment(token_ids, sequence_length, cls_id, sep_id, pad_id):
    """`[CLS] tokens [SEP] [PAD]...` from ragged `token_ids`, with TFLite-friendly ops.

    The same packing as `BertPreprocessor` on one segment (truncation keeps each
    text's first `sequence_length - 2` tokens), without keras-hub's packer, whose
    ragged ops have no TFLite kernels.

    Example:
    >>> features = pack_one_segment(tf.ragged.constant([[7, 8], [9]]), 5, cls_id=2, sep_id=3, pad_id=0)
    >>> features["token_ids"].numpy().tolist()
    [[2, 7, 8, 3, 0], [2, 9, 3, 0, 0]]
    """
    width = sequence_length - 2
    ids = tf.cast(token_ids.to_tensor(default_value=pad_id, shape=[None, width]), tf.int32)  # (batch, width)
    lengths = tf.minimum(tf.cast(token_ids.row_lengths(), tf.int32), width)[:, None]  # (batch, 1)
    batch_size = tf.shape(ids)[0]
    packed = tf.concat(
        [tf.fill([batch_size, 1], cls_id), ids, tf.fill([batch_size, 1], pad_id)], axis=1
    )  # (batch, sequence)
    positions = tf.range(sequence_length)[None, :]
    packed = tf.where(positions == lengths + 1, sep_id, packed)
    return {
        "token_ids": packed,
        "segment_ids": tf.zeros_like(packed),
        "padding_mask": positions < lengths + 2,
    }


class _BertLiteModule(tf.Module):
    def __init__(self, model):
        super().__init__()
        if model.preprocessor is None:
            raise ValueError(f"This {type(model).__name__} has no preprocessor: a text-in TFLite export needs one.")
        require_built(model)
        self.model = model
        self.preprocessor = model.preprocessor

    def _features(self, text):
        tokenizer = self.preprocessor.tokenizer
        return pack_one_segment(
            tokenizer(text), self.preprocessor.sequence_length, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.pad_token_id,
        )

    def _token_features(self, token_ids):
        # Already packed by the app (`[CLS] ... [SEP]`, padded): the mask follows the padding.
        return {"token_ids": token_ids, "segment_ids": tf.zeros_like(token_ids),
                "padding_mask": token_ids != self.preprocessor.tokenizer.pad_token_id}

    def _token_ids_function(self, function):
        # The packed length is the preprocessor's: a static length also keeps every
        # new-axis slice in the model down to one unknown dimension, which TFLite needs.
        spec = tf.TensorSpec([None, self.preprocessor.sequence_length], tf.int32, name="token_ids")
        return tf.function(function, input_signature=[spec])


class ClassifierLiteModule(_BertLiteModule):
    """A BERT classifier's TFLite signatures: `classify` (text) and `classify_token_ids`
    (packed `token_ids`), each giving `label`, `label_id` and `probabilities`."""

    def __init__(self, model, label_names=None):
        super().__init__(model)
        self.label_names = label_names_tensor(model, label_names)
        self.classify = tf.function(self._classify, input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        self.classify_token_ids = self._token_ids_function(lambda token_ids: self._outputs(
            self._token_features(token_ids)))

    def _classify(self, text):
        return self._outputs(self._features(text))

    def _outputs(self, features):
        return classifier_outputs(self.model, self.label_names, features)

    def signature_functions(self):
        return {"classify": self.classify, "classify_token_ids": self.classify_token_ids}


class EncoderLiteModule(_BertLiteModule):
    """A BERT encoder's TFLite signatures: `embed` (text) and `embed_token_ids` (packed
    `token_ids`), each giving the sentence `embedding`."""

    def __init__(self, model):
        super().__init__(model)
        self.embed = tf.function(self._embed, input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        self.embed_token_ids = self._token_ids_function(
            lambda token_ids: {"embedding": self.model.embed_features(self._token_features(token_ids))})

    def _embed(self, text):
        return {"embedding": self.model.embed_features(self._features(text))}

    def signature_functions(self):
        return {"embed": self.embed, "embed_token_ids": self.embed_token_ids}


class TranslatorLiteModule(tf.Module):
    """A `Seq2SeqTransformer`'s TFLite signatures, greedy: `translate` (`sources`
    strings, `max_new_tokens`) and `translate_token_ids` (`encoder_token_ids` ending
    with the end token, padded to `[batch, max_sequence_length]`, and `max_new_tokens`),
    each giving `text`, `token_ids` and `lengths` (without the end token).

    The source is padded to `max_sequence_length` (static shapes); longer sources keep
    their first `max_sequence_length - 1` tokens. Needs SentencePiece tokenizers.
    """

    def __init__(self, model):
        from tfzoo.text import SentencePieceTokenizer

        super().__init__()
        require_built(model)
        for side, tokenizer in (("source", model.source_tokenizer), ("target", model.target_tokenizer)):
            if not isinstance(tokenizer, SentencePieceTokenizer):
                raise ValueError(
                    f"A TFLite translator needs SentencePiece tokenizers (their ops have TFLite kernels); the "
                    f"{side} tokenizer is {type(tokenizer).__name__ if tokenizer is not None else 'missing'}."
                )
        self.model = model
        self.source_tokenizer = model.source_tokenizer
        self.target_tokenizer = model.target_tokenizer
        self.length = model.max_sequence_length
        self.piece_texts = tf.constant(
            sentencepiece_piece_texts(self.target_tokenizer, model.output_vocabulary_size))
        count = tf.TensorSpec([], tf.int32, name="max_new_tokens")
        self.translate = tf.function(self._translate, input_signature=[
            tf.TensorSpec([None], tf.string, name="sources"), count])
        self.translate_token_ids = tf.function(self._decode, input_signature=[
            tf.TensorSpec([None, self.length], tf.int32, name="encoder_token_ids"), count])

    def _translate(self, sources, max_new_tokens):
        model = self.model
        ragged = self.source_tokenizer(sources)
        limit = self.length - 1
        ids = tf.cast(ragged.to_tensor(default_value=model.pad_token_id, shape=[None, limit]), tf.int32)
        lengths = tf.minimum(tf.cast(ragged.row_lengths(), tf.int32), limit)[:, None]  # (batch, 1)
        padded = tf.concat([ids, tf.fill([tf.shape(ids)[0], 1], model.pad_token_id)], axis=1)  # (batch, length)
        # The end token right after each source, as `Seq2SeqTransformer.generate` appends it.
        padded = tf.where(tf.range(self.length)[None, :] == lengths, model.end_token_id, padded)
        return self._decode(padded, max_new_tokens)

    def _decode(self, encoder_token_ids, max_new_tokens):
        model = self.model
        capacity = self.length - 1
        tokens, lengths = model.generate_token_ids(
            encoder_token_ids, encoder_token_ids != model.pad_token_id,
            tf.clip_by_value(max_new_tokens, 0, capacity), capacity,
        )
        text = detokenize_sentencepiece(self.piece_texts, self.target_tokenizer, tokens, lengths)
        return {"text": text, "token_ids": tokens, "lengths": lengths}

    def signature_functions(self):
        return {"translate": self.translate, "translate_token_ids": self.translate_token_ids}


def tflite_module(model, label_names=None, text_signature="auto"):
    """The TFLite module for `model`'s family, or a ValueError naming the type."""
    from tfzoo.export.saved_model import model_family

    family = model_family(model, "TFLite")
    if family == "gpt":
        return GPTLiteModule(model, text_signature)
    if family == "classifier":
        return ClassifierLiteModule(model, label_names)
    return {"seq2seq": TranslatorLiteModule, "encoder": EncoderLiteModule}[family](model)


def _frozen_signatures(module):
    """Each signature with its weights folded into constants, under its own name.

    The converter leaves weights read inside a `while_loop` body as variables that
    TFLite cannot read, so every function is frozen first. Freezing loses the
    signature's name and output names; a thin `tf.function` named after the
    signature restores both. (The converter stores weights shared by several
    signatures once. It names a lone signature `serving_default` whatever its
    function is called, so every module here has at least two.)
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    def named(name, frozen, structure):
        def run(*inputs):
            return tf.nest.pack_sequence_as(structure, frozen(*inputs))

        run.__name__ = name  # the converter names the signature after the Python function
        return run

    holder = tf.Module()
    functions = []
    for name, function in module.signature_functions().items():
        concrete = function.get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete)
        wrapped = tf.function(
            named(name, frozen, concrete.structured_outputs),
            input_signature=list(concrete.structured_input_signature[0]),
        )
        setattr(holder, name, wrapped)
        functions.append(wrapped.get_concrete_function())
    return holder, functions


def convert_to_tflite(model, quantize=None, label_names=None, text_signature="auto"):
    """Converts `model` to a TFLite flatbuffer (bytes): builtins + tensorflow-text ops.

    Args:
        model: a built `GPT`, `BertClassifier` or `BertEncoder`.
        quantize: None for float32, "int8" for dynamic-range quantization (int8
            weights, float32 activations and outputs).
        label_names: a classifier's label strings, in label-id order.
        text_signature: GPT only; see `GPTLiteModule`.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}")
    module = tflite_module(model, label_names, text_signature)
    holder, functions = _frozen_signatures(module)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex: nothing here runs it
    converter.allow_custom_ops = True  # tensorflow-text's tokenizer kernels
    if quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
    return converter.convert()


def export_tflite(model, export_root="savedmodels", name=None, version=None, overwrite=False, quantize=None,
                  label_names=None, text_signature="auto"):
    """Exports `model` to `export_root/name/version/`: a SavedModel and its TFLite files.

    The version folder holds what `export_saved_model` writes plus `model.tflite`
    (float32) and, with `quantize="int8"`, `model_int8.tflite`, so TF Serving keeps
    finding a SavedModel in every version. Like `export_saved_model`, an existing
    version is refused unless `overwrite`, and the folder appears only when complete.

    Returns the version folder's path.
    """
    from tfzoo.export.saved_model import serving_module

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}")
    serving = serving_module(model, label_names)  # checks the family and that it is built
    name = name or type(model).__name__.lower()
    path = version_folder(export_root, name, version, overwrite)
    files = {TFLITE_FILE: None}
    if quantize == "int8":
        files[TFLITE_INT8_FILE] = "int8"
    # Convert before writing anything, so that a conversion error leaves no folder behind.
    contents = {
        file_name: convert_to_tflite(model, variant, label_names, text_signature)
        for file_name, variant in files.items()
    }
    temporary = path + ".partial"
    shutil.rmtree(temporary, ignore_errors=True)
    tf.saved_model.save(serving, temporary, signatures=serving.signatures())
    for file_name, content in contents.items():
        with open(os.path.join(temporary, file_name), "wb") as file:
            file.write(content)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(temporary, path)
    write_models_config(export_root)
    return path


def tflite_interpreter(model_path=None, model_content=None, num_threads=None):
    """An `ai_edge_litert` interpreter with tensorflow-text's TFLite kernels registered.

    Give the `.tflite` file's path or its bytes. Call a signature with
    `interpreter.get_signature_runner("generate")(prompts=..., max_new_tokens=...)`.
    """
    import tensorflow_text as tf_text
    from ai_edge_litert.interpreter import InterpreterWithCustomOps

    if (model_path is None) == (model_content is None):
        raise ValueError("Give exactly one of `model_path` and `model_content`.")
    if model_path is not None and not os.path.isfile(model_path):
        raise ValueError(f"No TFLite model at {model_path!r}.")
    return InterpreterWithCustomOps(
        custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS,
        model_path=model_path, model_content=model_content, num_threads=num_threads,
    )


def tflite_greedy_generate(interpreter, token_lists, max_new_tokens, stop_token_ids=()):
    """Greedy continuation of token-id prompts with a GPT's `prefill` and `decode` signatures.

    The loop a device runs, in Python: left-pad the prompts, prefill once, then one
    `decode` call per new token, the cache going out of each call and into the next.

    Returns the new token ids of each prompt (without the stop token).
    """
    from tfzoo.generation import left_pad

    prefill = interpreter.get_signature_runner("prefill")
    decode = interpreter.get_signature_runner("decode")
    prompt_length = max(len(ids) for ids in token_lists)
    token_ids, pad_counts = left_pad(token_lists, prompt_length)
    outputs = prefill(token_ids=token_ids, pad_counts=pad_counts)
    new_tokens = [[] for _ in token_lists]
    done = [False] * len(token_lists)
    for step in range(max_new_tokens):
        tokens = np.argmax(outputs["logits"], axis=-1).astype("int32")
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                if token in stop_token_ids:
                    done[row] = True
                else:
                    new_tokens[row].append(token)
        if all(done) or step == max_new_tokens - 1:
            break
        outputs = decode(token_ids=tokens, index=np.array(prompt_length + step, "int32"),
                         cache=outputs["cache"], pad_counts=pad_counts)
    return new_tokens
