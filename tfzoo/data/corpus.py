"""Text corpora and the language-model `tf.data` pipeline."""

import ast
import os
import sysconfig

import numpy as np
import tensorflow as tf


def python_docstrings(max_characters=2_000_000):
    """The docstrings of the Python standard library: a corpus on every machine.

    Modules are read in sorted order and parsed with `ast` (nothing is imported), so
    the corpus is the same on every run of the same Python.

    Args:
        max_characters: stop once this many characters are collected.

    Returns:
        A list of docstrings.

    Example:
    >>> texts = python_docstrings(max_characters=10_000)
    >>> sum(len(text) for text in texts) >= 10_000
    True
    """
    standard_library = sysconfig.get_paths()["stdlib"]
    texts, total = [], 0
    for folder, subfolders, files in os.walk(standard_library):
        # Tests and vendored packages are noisy; skip them.
        subfolders[:] = sorted(d for d in subfolders if d not in ("test", "tests", "site-packages", "idlelib"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as file:
                    tree = ast.parse(file.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    docstring = ast.get_docstring(node)
                    if docstring and len(docstring) > 40:
                        texts.append(docstring)
                        total += len(docstring)
                        if total >= max_characters:
                            return texts
    return texts


def read_text_files(paths):
    """Reads UTF-8 text files, one document each.

    Raises:
        ValueError: naming a path that is missing, not a file, or empty.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("No corpus files were given.")
    texts = []
    for path in paths:
        if not os.path.exists(path):
            raise ValueError(f"Corpus file not found: {str(path)!r}")
        if not os.path.isfile(path):
            raise ValueError(f"Corpus path is not a file: {str(path)!r}")
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
        if not text.strip():
            raise ValueError(f"Corpus file is empty: {str(path)!r}")
        texts.append(text)
    return texts


def tokenize_corpus(texts, tokenizer, end_token_id=None, batch_size=256):
    """Tokenizes documents into one stream of ids, documents separated by `end_token_id`.

    The tokenizer runs in a `tf.data` map, batched, so it uses every core.
    """
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), dtype=tf.string))
    dataset = dataset.batch(batch_size).map(tokenizer, num_parallel_calls=tf.data.AUTOTUNE)
    pieces = []
    for ragged in dataset:
        for ids in ragged.to_list():
            pieces.append(np.asarray(ids, dtype="int32"))
            if end_token_id is not None:
                pieces.append(np.asarray([end_token_id], dtype="int32"))
    if not pieces:
        raise ValueError("The corpus produced no tokens.")
    return np.concatenate(pieces)


def language_model_dataset(
    token_ids, sequence_length, batch_size, shuffle=True, seed=0, drop_remainder=True, static_shapes=False
):
    """Fixed-length windows of a token stream as `(inputs, next_tokens)` batches.

    Each window holds `sequence_length + 1` tokens; the model reads the first
    `sequence_length` and predicts the last `sequence_length`. The result is
    shuffled, batched and prefetched. `drop_remainder` drops a last, smaller batch,
    except when there are fewer windows than one batch (then that is the only batch).
    `static_shapes=True` (what TPUs need) makes every batch exactly `batch_size`: the
    remainder is always dropped, and too few windows for one batch is a ValueError.

    Example:
    >>> dataset = language_model_dataset(np.arange(100), sequence_length=8, batch_size=2)
    >>> inputs, labels = next(iter(dataset))
    >>> inputs.shape, labels.shape
    (TensorShape([2, 8]), TensorShape([2, 8]))
    """
    token_ids = np.asarray(token_ids, dtype="int32")
    window = int(sequence_length) + 1
    num_windows = len(token_ids) // window
    if num_windows < 1:
        raise ValueError(
            f"The corpus has {len(token_ids)} tokens: too few for one window of "
            f"sequence_length={sequence_length} (+1). Give more text or a shorter sequence_length."
        )
    if static_shapes and num_windows < batch_size:
        raise ValueError(
            f"The corpus holds {num_windows} windows of {window} tokens: fewer than one batch of "
            f"{batch_size}, which static shapes (a TPU) need. Give more text, or a smaller batch or sequence."
        )
    windows = token_ids[: num_windows * window].reshape(num_windows, window)
    dataset = tf.data.Dataset.from_tensor_slices(windows)
    if shuffle:
        dataset = dataset.shuffle(num_windows, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=static_shapes or (drop_remainder and num_windows >= batch_size))
    dataset = dataset.map(lambda w: (w[:, :-1], w[:, 1:]), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
