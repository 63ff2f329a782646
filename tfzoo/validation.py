"""Argument checks shared by layers and models: each raises a ValueError naming the value."""

import numpy as np


def positive_int(name, value):
    """Returns `value` as an int, or raises if it is not an integer >= 1 (bools and floats included)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def dropout_rate(name, value):
    """Returns `value` as a float, or raises if it is outside [0, 1)."""
    if isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
    return float(value)
