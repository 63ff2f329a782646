"""Config helpers shared by the models and preprocessing layers that hold other Keras objects."""

import keras


def deserialize_entries(config, *keys):
    """A copy of `config` with the Keras objects serialized under `keys` rebuilt (None stays None).

    Example:
    >>> from tfzoo.text import WordPieceTokenizer
    >>> config = {"tokenizer": keras.saving.serialize_keras_object(WordPieceTokenizer()), "size": 3}
    >>> type(deserialize_entries(config, "tokenizer")["tokenizer"]).__name__
    'WordPieceTokenizer'
    """
    config = dict(config)
    for key in keys:
        if config.get(key) is not None:
            config[key] = keras.saving.deserialize_keras_object(config[key])
    return config
