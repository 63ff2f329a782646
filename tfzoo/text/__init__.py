"""In-graph tokenizers, vocabulary training, and packing."""

from tfzoo.text.byte_pair import (
    END_OF_TEXT,
    gpt2_vocabulary_files,
    load_gpt2_tokenizer,
    train_byte_pair_tokenizer,
)
from tfzoo.text.sentencepiece import SentencePieceTokenizer, train_sentencepiece_tokenizer
from tfzoo.text.wordpiece import BertPreprocessor, WordPieceTokenizer, read_vocabulary, train_wordpiece_vocabulary

__all__ = [
    "END_OF_TEXT",
    "BertPreprocessor",
    "SentencePieceTokenizer",
    "WordPieceTokenizer",
    "gpt2_vocabulary_files",
    "load_gpt2_tokenizer",
    "read_vocabulary",
    "train_byte_pair_tokenizer",
    "train_sentencepiece_tokenizer",
    "train_wordpiece_vocabulary",
]
