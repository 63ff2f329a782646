"""Masked-language-model examples, made inside the `tf.data` pipeline."""

import keras_hub
import tensorflow as tf

from tfzoo.validation import positive_int


def masked_lm_dataset(texts, preprocessor, batch_size=32, mask_rate=0.15, max_masks=None, shuffle=True, seed=0):
    """Texts to `(inputs, labels, weights)` batches for `BertMaskedLM`.

    Each text is packed by `preprocessor`; then 15% of its real tokens (never
    `[CLS]`, `[SEP]` or padding) are chosen; of those, 80% become `[MASK]`, 10% a
    random token and 10% stay as they are (BERT's recipe, keras-hub's
    `MaskedLMMaskGenerator`). The labels are the original tokens at the chosen
    positions; weights are 0 for unused mask slots.

    Args:
        texts: a list of strings.
        preprocessor: a `tfzoo.text.BertPreprocessor`.
        batch_size: texts per batch.
        mask_rate: the fraction of tokens chosen.
        max_masks: mask slots per text (default: `mask_rate` of the sequence length, rounded
            down, plus one).
    """
    tokenizer = preprocessor.tokenizer
    if max_masks is None:  # one slot of slack: the selection is random, so some texts get more than the rate
        max_masks = int(preprocessor.sequence_length * mask_rate) + 1
    max_masks = positive_int("max_masks", max_masks)
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=tokenizer.vocabulary_size(),
        mask_selection_rate=mask_rate,
        mask_token_id=tokenizer.mask_token_id,
        mask_selection_length=max_masks,
        unselectable_token_ids=[tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id],
        mask_token_rate=0.8,
        random_token_rate=0.1,
    )

    def make_example(batch_of_texts):
        features = preprocessor(batch_of_texts)
        masked = masker(features["token_ids"])
        inputs = {
            "token_ids": masked["token_ids"],
            "segment_ids": features["segment_ids"],
            "padding_mask": features["padding_mask"],
            "mask_positions": masked["mask_positions"],
        }
        return inputs, masked["mask_ids"], masked["mask_weights"]

    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts)))
    if shuffle:
        dataset = dataset.shuffle(len(texts), seed=seed)
    return dataset.batch(batch_size).map(make_example, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
