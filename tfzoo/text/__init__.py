"""In-graph tokenizers and vocabulary training."""

from tfzoo.text.byte_pair import (
    END_OF_TEXT,
    gpt2_vocabulary_files,
    load_gpt2_tokenizer,
    train_byte_pair_tokenizer,
)

__all__ = ["END_OF_TEXT", "gpt2_vocabulary_files", "load_gpt2_tokenizer", "train_byte_pair_tokenizer"]
