"""Corpora and `tf.data` pipelines."""

from tfzoo.data.corpus import language_model_dataset, python_docstrings, read_text_files, tokenize_corpus

__all__ = ["language_model_dataset", "python_docstrings", "read_text_files", "tokenize_corpus"]
