"""BERT's WordPiece tokenization in the TensorFlow graph, and packing into model inputs.

Normalization is tensorflow-text's `FastBertNormalizer` and tokenization its
`FastWordpieceTokenizer` (end-to-end: it also splits on whitespace and punctuation):
both have TFLite kernels, unlike `text.BertTokenizer`. Packing (`[CLS] a [SEP] b [SEP]`)
is keras-hub's `MultiSegmentPacker` with round-robin truncation.

The ids equal Hugging Face's BERT tokenizer on ordinary text (tested on MiniLM's
vocabulary), with three known differences that come from tensorflow-text: its case
folding is NFKC's (so "ß" becomes "ss" and "½", "²", "™", "ﬁ" are rewritten), control
characters become spaces where BERT deletes them, and its word-length limit for [UNK]
counts 100 bytes where BERT counts 100 characters.
"""

import os

import keras
import keras_hub
import tensorflow as tf
import tensorflow_text as tf_text

from tfzoo.saving import deserialize_entries
from tfzoo.text.strings import accept_strings
from tfzoo.tracking import Untracked
from tfzoo.validation import is_integer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCABULARY_FILE = "vocabulary.txt"


def read_vocabulary(path):
    """Tokens of a `vocab.txt` (one per line), in id order."""
    if not os.path.isfile(path):
        raise ValueError(f"Vocabulary file not found: {path!r}")
    with open(path, encoding="utf-8") as file:
        tokens = [line.rstrip("\n") for line in file]
    while tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise ValueError(f"Vocabulary file is empty: {path!r}")
    return tokens


def train_wordpiece_vocabulary(texts, vocabulary_size=8192, lowercase=True):
    """Learns a WordPiece vocabulary from `texts` (keras-hub's trainer, tensorflow-text inside).

    Returns a list of tokens starting with BERT's special tokens
    `[PAD] [UNK] [CLS] [SEP] [MASK]`.

    Example:
    >>> vocabulary = train_wordpiece_vocabulary(["the cat sat on the mat"] * 5, vocabulary_size=60)
    >>> vocabulary[:5]
    ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    """
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("Cannot train a vocabulary on an empty corpus: every text is empty.")
    if int(vocabulary_size) <= len(SPECIAL_TOKENS):
        raise ValueError(f"`vocabulary_size` must exceed the special tokens. Received: {vocabulary_size!r}")
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts).batch(1000),
        vocabulary_size=int(vocabulary_size),
        lowercase=lowercase,
        strip_accents=lowercase,
        reserved_tokens=list(SPECIAL_TOKENS),
    )


@keras.saving.register_keras_serializable(package="tfzoo")
class WordPieceTokenizer(keras.layers.Layer):
    """Strings to WordPiece ids (and back), in-graph.

    Args:
        vocabulary: a list of tokens or the path of a `vocab.txt`. It must contain
            `[PAD] [UNK] [CLS] [SEP] [MASK]`. Saved as an asset with the model.
        lowercase: lower-case, NFD-normalize and strip accents first (uncased BERT).

    Example:
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s"])
    >>> tokenizer(["The cats"]).to_list()
    [[5, 6, 7]]
    """

    def __init__(self, vocabulary=None, lowercase=True, **kwargs):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        accept_strings(self)
        self.lowercase = lowercase
        self.vocabulary = None
        self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary):
        if vocabulary is None:
            return
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = read_vocabulary(vocabulary)
        vocabulary = list(vocabulary)
        missing = [token for token in SPECIAL_TOKENS if token not in vocabulary]
        if missing:
            raise ValueError(f"The vocabulary lacks the special tokens {missing}.")
        self.vocabulary = vocabulary
        self._token_ids = {token: index for index, token in enumerate(vocabulary)}
        self._normalizer = tf_text.FastBertNormalizer(lower_case_nfd_strip_accents=self.lowercase)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=vocabulary, suffix_indicator="##", unknown_token="[UNK]",
            no_pretokenization=False, support_detokenization=True, token_out_type=tf.int32,
        )

    def _require_vocabulary(self):
        if self.vocabulary is None:
            raise ValueError("This WordPieceTokenizer has no vocabulary yet.")

    def vocabulary_size(self):
        self._require_vocabulary()
        return len(self.vocabulary)

    def token_to_id(self, token):
        self._require_vocabulary()
        if token not in self._token_ids:
            raise ValueError(f"Token {token!r} is not in the vocabulary.")
        return self._token_ids[token]

    def id_to_token(self, token_id):
        self._require_vocabulary()
        # Checked: a negative id would index from the end of the list.
        if not is_integer(token_id) or not 0 <= token_id < len(self.vocabulary):
            raise ValueError(f"Token id {token_id!r} is outside [0, {len(self.vocabulary)}).")
        return self.vocabulary[int(token_id)]

    @property
    def pad_token_id(self):
        return self.token_to_id("[PAD]")

    @property
    def cls_token_id(self):
        return self.token_to_id("[CLS]")

    @property
    def sep_token_id(self):
        return self.token_to_id("[SEP]")

    @property
    def mask_token_id(self):
        return self.token_to_id("[MASK]")

    def call(self, inputs):
        """`(batch,)` strings to a `(batch, None)` ragged tensor of ids."""
        self._require_vocabulary()
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        normalized = self._normalizer.normalize(inputs)
        return self._wordpiece.tokenize(normalized)

    def detokenize(self, token_ids):
        """Ids back to text (lower-cased for an uncased vocabulary)."""
        self._require_vocabulary()
        return self._wordpiece.detokenize(token_ids)

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, VOCABULARY_FILE), "w", encoding="utf-8") as file:
            file.write("".join(f"{token}\n" for token in self.vocabulary))

    def load_assets(self, dir_path):
        self.set_vocabulary(os.path.join(dir_path, VOCABULARY_FILE))

    def get_config(self):
        # The vocabulary is in the config too (a JSON list), so that `from_config` and
        # `keras.models.clone_model` give a working tokenizer; `.keras` files also carry
        # it as an asset, which `load_assets` reads.
        config = super().get_config()
        config.update({"vocabulary": self.vocabulary, "lowercase": self.lowercase})
        return config


@keras.saving.register_keras_serializable(package="tfzoo")
class BertPreprocessor(keras.layers.Layer):
    """Raw text (one or two segments) to BERT inputs.

    `[CLS] first [SEP]` or `[CLS] first [SEP] second [SEP]`, padded to
    `sequence_length`. Longer inputs are truncated: round-robin, one token at a time
    from each segment, so that a long segment cannot push out a short one.

    Args:
        tokenizer: a `WordPieceTokenizer`.
        sequence_length: length of every packed sequence.

    Call arguments:
        inputs: a `(batch,)` string tensor or list (one segment), or a tuple of two of
            them (two segments, e.g. question and passage).

    Returns:
        A dict of `token_ids`, `segment_ids` (0 for the first segment, 1 for the
        second) and `padding_mask` (true for real tokens), each `(batch, sequence_length)`.

    Example:
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "question", "passage"])
    >>> preprocessor = BertPreprocessor(tokenizer, sequence_length=8)
    >>> preprocessor((["a question"], ["a passage"]))["segment_ids"].numpy().tolist()
    [[0, 0, 0, 0, 1, 1, 1, 0]]
    """

    def __init__(self, tokenizer, sequence_length=128, **kwargs):
        super().__init__(**kwargs)
        accept_strings(self)
        if int(sequence_length) < 3:
            raise ValueError(f"`sequence_length` must be at least 3. Received: {sequence_length!r}")
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self._untracked = Untracked(packer=None)

    def _packer(self):
        # Made on first use and kept out of Keras' layer tracking (it has no weights):
        # it needs the vocabulary's special ids, which a model being loaded from a
        # .keras file only has once its vocabulary asset is read, after building.
        if self._untracked.packer is None:
            self._untracked.packer = keras_hub.layers.MultiSegmentPacker(
                sequence_length=self.sequence_length,
                start_value=self.tokenizer.cls_token_id,
                end_value=self.tokenizer.sep_token_id,
                pad_value=self.tokenizer.pad_token_id,
                truncate="round_robin",
                dtype="int32",
            )
        return self._untracked.packer

    def call(self, inputs):
        # A tuple is two segments; anything else (a list or tensor of strings) is one.
        segments = inputs if isinstance(inputs, tuple) else (inputs,)
        if len(segments) not in (1, 2):
            raise ValueError(f"BertPreprocessor packs one or two segments. Received {len(segments)}.")
        token_lists = tuple(self.tokenizer(segment) for segment in segments)
        token_ids, segment_ids = self._packer()(token_lists)
        return {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": token_ids != self.tokenizer.pad_token_id,
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {"tokenizer": keras.saving.serialize_keras_object(self.tokenizer), "sequence_length": self.sequence_length}
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_entries(config, "tokenizer"))
