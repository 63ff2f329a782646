import keras
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def seed():
    """Seeds NumPy and Keras so that every test starts from the same weights."""
    np.random.seed(0)
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def trained_gpt():
    """A tiny GPT with a tokenizer, fitted on a repeating token pattern.

    Its greedy continuations are long and not degenerate, which is what the
    generation and export tests need.
    """
    from tests.helpers import tiny_tokenizer
    from tfzoo import GPT

    keras.utils.set_random_seed(1)
    model = GPT.from_preset("gpt_test", tokenizer=tiny_tokenizer())
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    stream = np.tile(np.arange(5, 45), 40)
    windows = stream[: 32 * 33].reshape(32, 33)
    model.fit(windows[:, :-1], windows[:, 1:], epochs=6, batch_size=8, verbose=0)
    return model
