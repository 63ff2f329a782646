"""SavedModel export: raw strings in, text, labels or embeddings out.

An export runs with TensorFlow and tensorflow-text alone (no tfzoo, no Keras):

    import tensorflow as tf, tensorflow_text  # registers the tokenizer ops
    loaded = tf.saved_model.load("savedmodels/gpt/1")
    loaded.signatures["generate"](prompts=tf.constant(["def "]), max_new_tokens=tf.constant(20))

Signatures by family (every input is required: TF Serving rejects a request that
lacks one, so optional settings get a signature of their own):

- GPT: `generate` (`prompts`, `max_new_tokens`; greedy) and `generate_sampled` (plus
  `temperature`, `top_k`, `top_p`, `seed`) -> `text`, `token_ids`, `lengths`;
  `serving_default`: `token_ids` -> `logits`. With `xla=True`, also `generate_xla`
  (`generate`'s inputs and outputs, its decode loop compiled with XLA).
- BERT classifier: `classify` = `serving_default` (`text`) -> `label`, `label_id`,
  `probabilities`; `classify_pair` (`first`, `second`) for two-segment inputs.
- BERT encoder: `embed` = `serving_default` (`text`) -> `embedding` (mean-pooled, L2-normalized).
- Seq2seq: `translate` = `serving_default` (`sentences`; greedy) and `translate_beam`
  (beam search) -> `translation`, `token_ids`, `lengths`.

Serving functions are traced without XLA: the stock TF Serving disables it. The opt-in
`generate_xla` is for servers that run XLA (`tfzoo serve`, a TensorFlow Python process, TF
Serving started with `--xla_cpu_compilation_enabled`): it decodes ~3x faster than
`generate` on CPU (benchmarks/RESULTS.md), and each new bucket of batch size (a power of
two), prompt and output length (multiples of 16) costs one XLA compilation (~2 s).
"""

import os
import shutil

import tensorflow as tf

from tfzoo.export.common import STRINGS, classifier_outputs, label_names_tensor, require_built
from tfzoo.export.layout import version_folder, write_models_config
from tfzoo.generation import tensor_sampler
from tfzoo.generation.decoding import round_up
from tfzoo.layers.attention import cache_writes_in_place

SCALAR_INT = tf.TensorSpec([], tf.int32)
SCALAR_FLOAT = tf.TensorSpec([], tf.float32)


class GPTServingModule(tf.Module):
    """A GPT, its tokenizer and the serving functions, as one trackable object.

    `xla=True` adds the `generate_xla` signature (see the module docstring).
    """

    def __init__(self, model, xla=False):
        super().__init__()
        if model.tokenizer is None:
            raise ValueError("This GPT has no tokenizer: a text-in, text-out export needs one.")
        require_built(model)
        self.model = model
        self.tokenizer = model.tokenizer
        self.xla = bool(xla)
        if self.xla:
            # Made here, not as decorated methods: a SavedModel keeps every tf.function with an
            # input signature that its module has, and an export without xla must carry no XLA.
            self._greedy_token_ids_xla = tf.function(self._greedy_token_ids, jit_compile=True)
            self.generate_xla = tf.function(self._generate_xla, input_signature=[STRINGS, SCALAR_INT])
        end_token_id = getattr(model.tokenizer, "end_token_id", None)
        self.stop_token_ids = () if end_token_id is None else (int(end_token_id),)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")])
    def logits(self, token_ids):
        return {"logits": self.model(token_ids, training=False)}

    def _prompt_ids(self, prompts, max_new_tokens):
        """Tokenized prompts: `(ragged ids, prompt lengths, longest, max_new_tokens clipped to the room left)`."""
        ragged = self.tokenizer(prompts)  # (batch, None) ragged
        lengths = tf.cast(ragged.row_lengths(), tf.int32)
        prompt_length = tf.reduce_max(lengths)
        room = self.model.max_sequence_length - prompt_length
        # The checks must run before the work they guard: inside a tf.function an assertion is
        # not otherwise ordered before the gathers, which then fail first with a cryptic index error.
        checks = [
            tf.debugging.assert_greater(tf.reduce_min(lengths), 0, message="A prompt is empty."),
            tf.debugging.assert_positive(room, message="A prompt is longer than the model's maximum length."),
        ]
        with tf.control_dependencies(checks):
            ragged = tf.identity(ragged)
            room = tf.identity(room)
        return ragged, lengths, prompt_length, tf.clip_by_value(max_new_tokens, 0, room)

    def _outputs(self, tokens, new_lengths):
        new_ids = tf.RaggedTensor.from_tensor(tokens, lengths=new_lengths)
        return {"text": self.tokenizer.detokenize(new_ids), "token_ids": new_ids.to_tensor(0), "lengths": new_lengths}

    @staticmethod
    def _left_pad(ragged, extra=None):
        # Reverse each row, pad on the right (`extra` more columns than the longest row), reverse back.
        reversed_rows = tf.reverse(ragged, axis=[1]).to_tensor(0)
        if extra is not None:
            reversed_rows = tf.pad(reversed_rows, [[0, 0], [0, extra]])
        return tf.cast(tf.reverse(reversed_rows, axis=[1]), tf.int32)

    def _generate(self, prompts, max_new_tokens, choose, seed):
        ragged, lengths, prompt_length, max_new_tokens = self._prompt_ids(prompts, max_new_tokens)
        padded = self._left_pad(ragged)
        tokens, new_lengths = self.model.generate_token_ids(
            padded, prompt_length - lengths, max_new_tokens, capacity=self.model.max_sequence_length,
            cache_length=prompt_length + max_new_tokens, choose=choose, stop_token_ids=self.stop_token_ids,
            seed=seed,
        )
        return self._outputs(tokens, new_lengths)

    @tf.function(input_signature=[STRINGS, SCALAR_INT])
    def generate(self, prompts, max_new_tokens):
        return self._generate(prompts, max_new_tokens, None, None)

    @tf.function(input_signature=[STRINGS, SCALAR_INT, SCALAR_FLOAT, SCALAR_INT, SCALAR_FLOAT, SCALAR_INT])
    def generate_sampled(self, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        choose = tensor_sampler(temperature, top_k, top_p)
        return self._generate(prompts, max_new_tokens, choose, tf.stack([seed, tf.constant(0, tf.int32)]))

    def _greedy_token_ids(self, token_ids, pad_counts, max_new_tokens, output_slots):
        # XLA needs static sizes: the output buffer's is `output_slots`' length and the
        # cache's the padded prompt plus that, both known when XLA compiles for these shapes.
        capacity = tf.shape(output_slots)[0]
        with cache_writes_in_place():  # in-place cache updates, as in-process generate under XLA
            return self.model.generate_token_ids(
                token_ids, pad_counts, max_new_tokens, capacity=capacity,
                cache_length=tf.shape(token_ids)[1] + capacity, stop_token_ids=self.stop_token_ids,
            )

    def _generate_xla(self, prompts, max_new_tokens):
        """`generate` with the decode loop compiled by XLA (tokenizing stays outside XLA).

        Prompt and output lengths are rounded up to multiples of 16, as in-process
        `GPT.generate` does, and the batch up to a power of two, so that nearby sizes
        share one compiled program (a server sees at most 7 batch sizes up to 64).
        The filler rows repeat the first prompt: they stop when it stops, and rows never
        see each other, so the real rows' tokens are unchanged.
        """
        ragged, lengths, prompt_length, max_new_tokens = self._prompt_ids(prompts, max_new_tokens)
        longest_allowed = self.model.max_sequence_length
        padded_length = tf.minimum(round_up(prompt_length, 16), longest_allowed - max_new_tokens)
        capacity = tf.minimum(round_up(max_new_tokens, 16), longest_allowed - padded_length)
        batch_size = tf.shape(lengths)[0]
        rows = tf.concat([tf.range(batch_size), tf.zeros([_next_power_of_two(batch_size) - batch_size], tf.int32)], 0)
        padded = self._left_pad(ragged, padded_length - prompt_length)
        tokens, new_lengths = self._greedy_token_ids_xla(
            tf.gather(padded, rows), tf.gather(padded_length - lengths, rows), max_new_tokens,
            tf.zeros([capacity], tf.int32),
        )
        return self._outputs(tokens[:batch_size], new_lengths[:batch_size])

    def signatures(self):
        signatures = {
            "serving_default": self.logits.get_concrete_function(),
            "generate": self.generate.get_concrete_function(),
            "generate_sampled": self.generate_sampled.get_concrete_function(),
        }
        if self.xla:
            signatures["generate_xla"] = self.generate_xla.get_concrete_function()
        return signatures


def _next_power_of_two(value):
    """The smallest power of two `>= value` (an int32 tensor, 1 to 2**30), with bit operations only."""
    smeared = value - 1
    for shift in (1, 2, 4, 8, 16):  # copy the highest set bit into every lower one
        smeared = tf.bitwise.bitwise_or(smeared, tf.bitwise.right_shift(smeared, shift))
    return tf.maximum(smeared + 1, 1)


class ClassifierServingModule(tf.Module):
    """A BERT classifier with its preprocessor: text in, label and probabilities out."""

    def __init__(self, model, label_names=None):
        super().__init__()
        if model.preprocessor is None:
            raise ValueError("This classifier's encoder has no preprocessor: a text-in export needs one.")
        require_built(model)
        self.model = model
        self.preprocessor = model.preprocessor
        self.label_names = label_names_tensor(model, label_names)

    def _classify(self, features):
        return classifier_outputs(self.model, self.label_names, features)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def classify(self, text):
        return self._classify(self.preprocessor(text))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="first"),
                                  tf.TensorSpec([None], tf.string, name="second")])
    def classify_pair(self, first, second):
        return self._classify(self.preprocessor((first, second)))

    def signatures(self):
        classify = self.classify.get_concrete_function()
        return {"serving_default": classify, "classify": classify,
                "classify_pair": self.classify_pair.get_concrete_function()}


class EncoderServingModule(tf.Module):
    """A BERT encoder with its preprocessor: text in, sentence embedding out."""

    def __init__(self, model):
        super().__init__()
        if model.preprocessor is None:
            raise ValueError("This encoder has no preprocessor: a text-in export needs one.")
        require_built(model)
        self.model = model
        self.preprocessor = model.preprocessor

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def embed(self, text):
        return {"embedding": self.model.embed_features(self.preprocessor(text))}

    def signatures(self):
        embed = self.embed.get_concrete_function()
        return {"serving_default": embed, "embed": embed}


class Seq2SeqServingModule(tf.Module):
    """A seq2seq translator with its tokenizers: sentences in, translations out.

    Signatures: `translate` (= `serving_default`; greedy) and `translate_beam` (beam
    search with the `beam_width` and `length_penalty` fixed at export), both
    `sentences` -> `translation`, `token_ids`, `lengths`. An empty sentence, or one
    longer than the model's maximum, fails the request with a message that says so.
    """

    def __init__(self, model, beam_width=4, length_penalty=0.6):
        super().__init__()
        if model.source_tokenizer is None or model.target_tokenizer is None:
            raise ValueError("This seq2seq model has no tokenizer: a text-in, text-out export needs one.")
        require_built(model)
        from tfzoo.generation import validate_beam_search

        validate_beam_search(beam_width, length_penalty)
        self.model = model
        self.source_tokenizer = model.source_tokenizer
        self.target_tokenizer = model.target_tokenizer
        self.beam_width = int(beam_width)
        self.length_penalty = float(length_penalty)

    def _translate(self, sentences, beam_width, length_penalty):
        model = self.model
        ragged = tf.cast(self.source_tokenizer(sentences), tf.int32)  # (batch, None)
        lengths = tf.cast(ragged.row_lengths(), tf.int32)
        checks = [  # ordered before the work they guard, as in GPTServingModule._generate
            tf.debugging.assert_greater(tf.reduce_min(tf.concat([lengths, [1]], 0)), 0,
                                        message="A sentence is empty: give at least one word."),
            tf.debugging.assert_less_equal(
                tf.reduce_max(tf.concat([lengths, [0]], 0)) + 1, model.max_sequence_length,
                message=f"A sentence is longer than the model's max_sequence_length={model.max_sequence_length} tokens."),
        ]
        with tf.control_dependencies(checks):
            ragged = tf.identity(ragged)
        ends = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(sentences)[0], 1], model.end_token_id))
        source = tf.concat([ragged.with_row_splits_dtype(tf.int64), ends], axis=1).to_tensor(model.pad_token_id)
        tokens, new_lengths = model.generate_token_ids(
            source, source != model.pad_token_id, model.max_sequence_length, model.max_sequence_length,
            beam_width=beam_width, length_penalty=length_penalty,
        )
        new_ids = tf.RaggedTensor.from_tensor(tokens, lengths=new_lengths)
        return {"translation": self.target_tokenizer.detokenize(new_ids), "token_ids": new_ids.to_tensor(0),
                "lengths": new_lengths}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
    def translate(self, sentences):
        return self._translate(sentences, 1, 0.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
    def translate_beam(self, sentences):
        return self._translate(sentences, self.beam_width, self.length_penalty)

    def signatures(self):
        translate = self.translate.get_concrete_function()
        return {"serving_default": translate, "translate": translate,
                "translate_beam": self.translate_beam.get_concrete_function()}


def model_family(model, target="SavedModel"):
    """"gpt", "seq2seq", "classifier" or "encoder": which kind of export `model` gets.

    Shared by the SavedModel and TFLite exports; anything else is a ValueError naming its type.
    """
    from tfzoo.models import GPT, BertClassifier, BertEncoder, Seq2SeqTransformer

    # A classifier is checked before the encoder family it belongs with.
    for family, model_class in (("gpt", GPT), ("seq2seq", Seq2SeqTransformer), ("classifier", BertClassifier),
                                ("encoder", BertEncoder)):
        if isinstance(model, model_class):
            return family
    raise ValueError(
        f"Cannot export a {type(model).__name__} to {target}: tfzoo exports GPT, BertClassifier, BertEncoder "
        "and Seq2SeqTransformer."
    )


def serving_module(model, label_names=None, xla=False):
    """The serving module for `model`'s family, or a ValueError naming the type.

    `xla=True` (GPT only) adds the `generate_xla` signature.
    """
    family = model_family(model)
    if xla and family != "gpt":
        raise ValueError(f"xla=True adds a GPT signature (generate_xla); a {type(model).__name__} has none.")
    if family == "gpt":
        return GPTServingModule(model, xla=xla)
    if family == "classifier":
        return ClassifierServingModule(model, label_names)
    return {"seq2seq": Seq2SeqServingModule, "encoder": EncoderServingModule}[family](model)


def export_saved_model(model, export_root="savedmodels", name=None, version=None, overwrite=False, label_names=None,
                       xla=False):
    """Writes `model` as a SavedModel at `export_root/name/version` and returns the path.

    Args:
        model: a `GPT`, `BertClassifier` or `BertEncoder`, built.
        export_root: the folder TF Serving's `--model_config_file` points into.
        name: the model's name (default: its family, e.g. "gpt").
        version: an integer; default the next free one. An existing version is refused
            unless `overwrite`.
        label_names: a classifier's label strings, in label-id order.
        xla: a GPT export gets a `generate_xla` signature too, for servers that run
            XLA (not the stock TF Serving, which disables it by default).

    `export_root/models.config` is rewritten to list every exported model.

    Example:
    >>> path = export_saved_model(model, "savedmodels", "gpt")  # doctest: +SKIP
    """
    module = serving_module(model, label_names, xla=xla)
    name = name or type(model).__name__.lower()
    path = version_folder(export_root, name, version, overwrite)
    temporary = path + ".partial"
    shutil.rmtree(temporary, ignore_errors=True)
    tf.saved_model.save(module, temporary, signatures=module.signatures())
    # Move into place only when complete, so TF Serving never loads half an export.
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(temporary, path)
    write_models_config(export_root)
    return path


def export_gpt(model, export_root="savedmodels", name="gpt", version=None, overwrite=False, xla=False):
    """`export_saved_model` for a GPT (kept for the GPT-only callers)."""
    from tfzoo.models import GPT

    if not isinstance(model, GPT):
        raise ValueError(f"export_gpt expects a GPT. Received: {type(model).__name__}")
    return export_saved_model(model, export_root, name, version, overwrite, xla=xla)
