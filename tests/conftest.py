import keras
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def seed():
    """Seeds NumPy and Keras so that every test starts from the same weights."""
    np.random.seed(0)
    keras.utils.set_random_seed(0)
