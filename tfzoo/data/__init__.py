"""Corpora and `tf.data` pipelines."""

from tfzoo.data.corpus import language_model_dataset, python_docstrings, read_text_files, tokenize_corpus
from tfzoo.data.masking import masked_lm_dataset
from tfzoo.data.parallel import (
    bible_verse_pairs,
    django_translation_pairs,
    read_parallel_tsv,
    read_po_file,
    split_pairs,
    translation_dataset,
)
from tfzoo.data.reviews import movie_review_snippets

__all__ = [
    "bible_verse_pairs",
    "django_translation_pairs",
    "language_model_dataset",
    "masked_lm_dataset",
    "movie_review_snippets",
    "python_docstrings",
    "read_parallel_tsv",
    "read_po_file",
    "read_text_files",
    "split_pairs",
    "tokenize_corpus",
    "translation_dataset",
]
