"""SentencePiece tokenization in the TensorFlow graph, with TFLite kernels.

Tokenizing and detokenizing run tensorflow-text's `FastSentencepieceTokenizer`, which
(unlike `text.SentencepieceTokenizer` and keras-hub's `SentencePieceTokenizer` built on
it) converts to TFLite. The model itself is trained with the `sentencepiece` library.

Every model trained here reserves the same four ids, so that models and tokenizers can
agree on them without looking: 0 is padding, 1 unknown, 2 start, 3 end of sequence.
"""

import io
import os

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from tfzoo.text.strings import accept_strings
from tfzoo.validation import positive_int

PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
MODEL_FILE = "sentencepiece.model"
MODEL_TYPES = ("unigram", "bpe", "char", "word")


def train_sentencepiece_tokenizer(texts, vocabulary_size=8000, model_type="unigram", lowercase=False, **kwargs):
    """Trains a SentencePiece model on `texts` and returns its `SentencePieceTokenizer`.

    Args:
        texts: an iterable of strings (sentences or lines).
        vocabulary_size: the number of pieces, special ids included. On a corpus too
            small to fill it, the vocabulary is smaller (check `vocabulary_size()`).
        model_type: "unigram" (the default), "bpe", "char" or "word".
        lowercase: lower-case the text before training and tokenizing.
        **kwargs: passed to the `sentencepiece` trainer (e.g. `character_coverage`).

    Example:
    >>> tokenizer = train_sentencepiece_tokenizer(["the cat sat on the mat"] * 20, vocabulary_size=30)
    >>> tokenizer.detokenize(tokenizer(["the cat"])).numpy().tolist()
    [b'the cat']
    """
    import sentencepiece

    if model_type not in MODEL_TYPES:
        raise ValueError(f"`model_type` must be one of {MODEL_TYPES}. Received: {model_type!r}")
    vocabulary_size = positive_int("vocabulary_size", vocabulary_size)
    if vocabulary_size <= END_ID + 1:
        raise ValueError(f"`vocabulary_size` must exceed the {END_ID + 1} special ids. Received: {vocabulary_size}")
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("Cannot train a SentencePiece model on an empty corpus: every text is empty.")

    model = io.BytesIO()
    options = dict(
        vocab_size=vocabulary_size,
        model_type=model_type,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=START_ID, eos_id=END_ID,
        # A soft limit: a small corpus gets a smaller vocabulary instead of an error.
        hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        num_threads=os.cpu_count() or 1,
        minloglevel=2,  # training logs only on errors
    )
    options.update(kwargs)
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, **options)
    return SentencePieceTokenizer(model.getvalue())


@keras.saving.register_keras_serializable(package="tfzoo")
class SentencePieceTokenizer(keras.layers.Layer):
    """Strings to SentencePiece ids (and back), in-graph and TFLite-convertible.

    Args:
        proto: the serialized SentencePiece model (bytes) or the path of a `.model`
            file. Saved as an asset with the model that holds the tokenizer.

    Call arguments:
        inputs: a `(batch,)` string tensor or list of strings.

    Returns:
        A `(batch, None)` ragged int32 tensor of ids, without start or end ids.

    Example:
    >>> tokenizer = train_sentencepiece_tokenizer(["a b c", "b c d"] * 10, vocabulary_size=12)
    >>> ids = tokenizer(["a b"])
    >>> tokenizer.detokenize(ids).numpy().tolist()
    [b'a b']
    >>> tokenizer.pad_token_id, tokenizer.end_token_id
    (0, 3)
    """

    pad_token_id = PAD_ID
    unk_token_id = UNK_ID
    start_token_id = START_ID
    end_token_id = END_ID

    def __init__(self, proto=None, **kwargs):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        accept_strings(self)
        self.proto = None
        self.set_proto(proto)

    def set_proto(self, proto):
        if proto is None:
            return
        if isinstance(proto, (str, os.PathLike)):
            if not os.path.isfile(proto):
                raise ValueError(f"SentencePiece model file not found: {proto!r}")
            with open(proto, "rb") as file:
                proto = file.read()
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(bytes(proto))
        except RuntimeError as error:
            raise ValueError(f"Not a valid SentencePiece model: {error}") from None
        expected = {"pad": PAD_ID, "unk": UNK_ID, "start": START_ID, "end": END_ID}
        received = {"pad": processor.pad_id(), "unk": processor.unk_id(),
                    "start": processor.bos_id(), "end": processor.eos_id()}
        if received != expected:
            raise ValueError(
                f"The SentencePiece model's special ids are {received}; tfzoo expects {expected} "
                "(train it with train_sentencepiece_tokenizer)."
            )
        self.proto = bytes(proto)
        self._processor = processor  # for id <-> piece lookups in Python
        self._sentencepiece = tf_text.FastSentencepieceTokenizer(self.proto)

    def _require_proto(self):
        if self.proto is None:
            raise ValueError(
                "This SentencePieceTokenizer has no model yet: call set_proto(). A config alone "
                "(from_config, clone_model) does not carry the model; a .keras file does."
            )

    def vocabulary_size(self):
        self._require_proto()
        return self._processor.get_piece_size()

    def id_to_token(self, token_id):
        self._require_proto()
        if not 0 <= int(token_id) < self.vocabulary_size():
            raise ValueError(f"Token id {token_id} is outside the vocabulary of {self.vocabulary_size()}.")
        return self._processor.id_to_piece(int(token_id))

    def token_to_id(self, token):
        self._require_proto()
        token_id = self._processor.piece_to_id(token)
        if token_id == UNK_ID and token != self._processor.id_to_piece(UNK_ID):
            raise ValueError(f"Token {token!r} is not in the vocabulary.")
        return token_id

    def call(self, inputs):
        self._require_proto()
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        return self._sentencepiece.tokenize(inputs)

    def detokenize(self, token_ids):
        """Ids (ragged, or dense and padded with 0) back to strings.

        Padding, start and end ids are dropped first: SentencePiece would decode them
        to nothing, but a word after them would keep its leading space.
        """
        self._require_proto()
        if not isinstance(token_ids, (tf.Tensor, tf.RaggedTensor)):
            token_ids = tf.ragged.constant(token_ids, dtype=tf.int32) if _is_nested(token_ids) \
                else tf.convert_to_tensor(token_ids, dtype=tf.int32)
        token_ids = tf.cast(token_ids, tf.int32)
        keep = (token_ids == UNK_ID) | (token_ids > END_ID)
        return self._sentencepiece.detokenize(tf.ragged.boolean_mask(token_ids, keep))

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, MODEL_FILE), "wb") as file:
            file.write(self.proto)

    def load_assets(self, dir_path):
        self.set_proto(os.path.join(dir_path, MODEL_FILE))

    def get_config(self):
        # The model (binary, up to megabytes) travels as an asset, not in the config: a
        # tokenizer made by from_config alone has no model until set_proto is called.
        return super().get_config()


def _is_nested(values):
    return isinstance(values, (list, tuple)) and any(isinstance(item, (list, tuple)) for item in values)
