"""Corpora and `tf.data` pipelines."""

from tfzoo.data.corpus import language_model_dataset, python_docstrings, read_text_files, tokenize_corpus
from tfzoo.data.masking import masked_lm_dataset

__all__ = ["language_model_dataset", "masked_lm_dataset", "python_docstrings", "read_text_files", "tokenize_corpus"]
