"""What the SavedModel and TFLite exports share: checks and the classifier's outputs."""

import tensorflow as tf

# A batch of strings: prompts, texts, sentences.
STRINGS = tf.TensorSpec([None], tf.string)


def require_built(model):
    """Raises a `ValueError` for a model that has no weights yet (nothing to export)."""
    if not model.built:
        raise ValueError("The model is not built: train or call it once before exporting.")


def label_names_tensor(model, label_names):
    """A classifier's label strings in label-id order (default "0", "1", ...), checked against `num_classes`."""
    label_names = [str(name) for name in (label_names or range(model.num_classes))]
    if len(label_names) != model.num_classes:
        raise ValueError(
            f"{len(label_names)} label names for a classifier of num_classes={model.num_classes}: {label_names}"
        )
    return tf.constant(label_names)


def classifier_outputs(model, label_names, features):
    """`label`, `label_id` and `probabilities` of a classifier on packed `features`."""
    logits = model(features, training=False)
    label_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return {
        "label": tf.gather(label_names, label_id),
        "label_id": label_id,
        "probabilities": tf.nn.softmax(logits, axis=-1),
    }
