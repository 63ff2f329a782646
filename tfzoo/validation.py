"""Argument checks shared by layers and models: each raises a ValueError naming the value."""

import numpy as np


def is_integer(value):
    """Whether `value` is a Python or NumPy integer (not a bool, not a float)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def positive_int(name, value):
    """Returns `value` as an int, or raises if it is not an integer >= 1 (bools and floats included)."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def dropout_rate(name, value):
    """Returns `value` as a float, or raises if it is outside [0, 1)."""
    if isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
    return float(value)


def token_id_lists(items, tokenizer, vocabulary_size, argument, noun, blank_is_empty=False):
    """Checks a list of texts or of token-id lists and returns `(id lists, given_as_strings)`.

    Shared by the models' `generate` methods so that prompts and source sentences are
    refused with the same kind of message. `argument` is the parameter's name
    ("prompts"), `noun` names one item in messages ("Prompt"). With `blank_is_empty`, a
    text of only spaces counts as empty (a sentence needs a word; a GPT prompt of a
    space is a real prompt).

    Example:
    >>> token_id_lists([[5, 6], [7]], None, 10, "prompts", "Prompt")
    ([[5, 6], [7]], False)
    """
    if isinstance(items, str):
        raise ValueError(f"`{argument}` must be a list of {noun.lower()}s; wrap a single {noun.lower()} in a list.")
    items = list(items)
    if not items:
        raise ValueError(f"`{argument}` is empty: give at least one {noun.lower()}.")
    strings = all(isinstance(item, str) for item in items)
    if strings:
        if tokenizer is None:
            raise ValueError(f"This model has no tokenizer for `{argument}`: pass them as lists of token ids.")
        for position, text in enumerate(items):
            if not (text.strip() if blank_is_empty else text):
                raise ValueError(f"{noun} {position} is empty ({text!r}): give at least one word.")
        token_ids = tokenizer(items)
        # keras-hub tokenizers return Python lists when called eagerly; tfzoo's return ragged tensors.
        if hasattr(token_ids, "to_list"):
            token_ids = token_ids.to_list()
        token_lists = [[int(token) for token in ids] for ids in token_ids]
    else:
        token_lists = [np.asarray(item).reshape(-1).tolist() for item in items]
    for position, ids in enumerate(token_lists):
        if not ids:
            raise ValueError(f"{noun} {position} has no tokens: give at least one.")
        if min(ids) < 0 or max(ids) >= vocabulary_size:
            raise ValueError(f"{noun} {position} has token ids outside [0, {vocabulary_size}): {ids}")
    return token_lists, strings
