"""SavedModel export of a GPT: raw strings in, generated text out.

The export runs with TensorFlow and tensorflow-text alone (no tfzoo, no Keras):

    import tensorflow as tf, tensorflow_text  # registers the tokenizer ops
    loaded = tf.saved_model.load("savedmodels/gpt/1")
    loaded.signatures["generate"](prompts=tf.constant(["def "]), max_new_tokens=tf.constant(20))

Signatures:
- `generate`: `prompts` (string [batch]), `max_new_tokens` (int32 scalar) ->
  `text` (string [batch], the continuation), `token_ids` (int32 [batch, n]),
  `lengths` (int32 [batch]). Greedy decoding.
- `serving_default`: `token_ids` (int32 [batch, sequence]) -> `logits`.

Serving functions are traced without XLA: the stock TF Serving disables it.
"""

import os
import shutil

import tensorflow as tf

from tfzoo.export.layout import version_folder


class GPTServingModule(tf.Module):
    """The model, its tokenizer and the serving functions, as one trackable object."""

    def __init__(self, model):
        super().__init__()
        if model.tokenizer is None:
            raise ValueError("This GPT has no tokenizer: a text-in, text-out export needs one.")
        if not model.built:
            raise ValueError("The model is not built: train or call it once before exporting.")
        self.model = model
        self.tokenizer = model.tokenizer
        end_token_id = getattr(model.tokenizer, "end_token_id", None)
        self.stop_token_ids = () if end_token_id is None else (int(end_token_id),)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")])
    def logits(self, token_ids):
        return {"logits": self.model(token_ids, training=False)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="prompts"),
            tf.TensorSpec([], tf.int32, name="max_new_tokens"),
        ]
    )
    def generate(self, prompts, max_new_tokens):
        model = self.model
        ragged = self.tokenizer(prompts)  # (batch, None) ragged
        lengths = tf.cast(ragged.row_lengths(), tf.int32)
        prompt_length = tf.reduce_max(lengths)
        tf.debugging.assert_greater(tf.reduce_min(lengths), 0, message="A prompt is empty.")
        room = model.max_sequence_length - prompt_length
        tf.debugging.assert_positive(room, message="A prompt is longer than the model's maximum length.")
        max_new_tokens = tf.clip_by_value(max_new_tokens, 0, room)
        # Left-pad: reverse each row, pad on the right, reverse back.
        padded = tf.reverse(tf.reverse(ragged, axis=[1]).to_tensor(0), axis=[1])
        padded = tf.cast(padded, tf.int32)
        pad_counts = prompt_length - lengths
        tokens, new_lengths = model.generate_token_ids(
            padded, pad_counts, max_new_tokens, capacity=model.max_sequence_length,
            cache_length=prompt_length + max_new_tokens, stop_token_ids=self.stop_token_ids,
        )
        new_ids = tf.RaggedTensor.from_tensor(tokens, lengths=new_lengths)
        text = self.tokenizer.detokenize(new_ids)
        return {"text": text, "token_ids": new_ids.to_tensor(0), "lengths": new_lengths}


def export_gpt(model, export_root="savedmodels", name="gpt", version=None, overwrite=False):
    """Writes `model` as a SavedModel at `export_root/name/version` and returns the path.

    Example:
    >>> path = export_gpt(model, "savedmodels", "gpt")  # doctest: +SKIP
    """
    path = version_folder(export_root, name, version, overwrite)
    module = GPTServingModule(model)
    temporary = path + ".partial"
    shutil.rmtree(temporary, ignore_errors=True)
    tf.saved_model.save(
        module,
        temporary,
        signatures={
            "serving_default": module.logits.get_concrete_function(),
            "generate": module.generate.get_concrete_function(),
        },
    )
    # Move into place only when complete, so TF Serving never loads half an export.
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(temporary, path)
    return path
