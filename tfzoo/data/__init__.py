"""Corpora and `tf.data` pipelines."""

from tfzoo.data.corpus import language_model_dataset, python_docstrings, read_text_files, tokenize_corpus
from tfzoo.data.masking import masked_lm_dataset
from tfzoo.data.reviews import movie_review_snippets

__all__ = [
    "language_model_dataset",
    "masked_lm_dataset",
    "movie_review_snippets",
    "python_docstrings",
    "read_text_files",
    "tokenize_corpus",
]
