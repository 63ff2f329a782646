"""The samplers against NumPy: which tokens top-k and top-p keep, and the distribution
that temperature sampling draws from."""

import numpy as np
import pytest
import tensorflow as tf

from tfzoo.generation.sampling import filter_top_k, filter_top_p, next_token, sampler, tensor_sampler


def softmax_np(logits):
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def top_k_kept_np(logits, k):
    kth = np.sort(logits, axis=-1)[:, ::-1][:, k - 1 : k]
    return logits >= kth


def top_p_kept_np(logits, p):
    """The smallest set of most likely tokens whose probability reaches p, row by row."""
    kept = np.zeros(logits.shape, bool)
    for row, values in enumerate(logits):
        order = np.argsort(-values, kind="stable")
        probabilities = softmax_np(values[order])
        mass_before = np.cumsum(probabilities) - probabilities
        kept[row, order[mass_before < p]] = True
    return kept


@pytest.fixture
def logits():
    return np.random.default_rng(3).normal(0, 2, (6, 40)).astype("float32")


@pytest.mark.parametrize("k", [41, 1000, tf.constant(1000)])
def test_top_k_past_the_vocabulary_keeps_everything(logits, k):
    np.testing.assert_array_equal(filter_top_k(tf.constant(logits), k).numpy(), logits)


@pytest.mark.parametrize("k", [1, 2, 7, 40])
def test_top_k_keeps_exactly_the_k_largest_logits(logits, k):
    filtered = filter_top_k(tf.constant(logits), k).numpy()
    kept = np.isfinite(filtered)
    np.testing.assert_array_equal(kept, top_k_kept_np(logits, k))
    assert (kept.sum(-1) == k).all()
    np.testing.assert_array_equal(filtered[kept], logits[kept])


@pytest.mark.parametrize("p", [1e-6, 0.3, 0.8, 0.95, 1.0])
def test_top_p_keeps_the_smallest_set_reaching_p(logits, p):
    filtered = filter_top_p(tf.constant(logits), p).numpy()
    kept = np.isfinite(filtered)
    np.testing.assert_array_equal(kept, top_p_kept_np(logits, p))
    probabilities = softmax_np(logits.astype("float64"))
    mass = (probabilities * kept).sum(-1)
    assert (mass >= min(p, 1.0) - 1e-6).all()
    # Dropping the least likely kept token would fall short of p (unless one is left).
    least = np.where(kept, probabilities, np.inf).min(-1)
    assert ((mass - least < p) | (kept.sum(-1) == 1)).all()


def test_a_small_example_by_hand():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], "float32"))
    assert np.isfinite(filter_top_k(tf.constant(logits), 2).numpy()).tolist() == [[True, True, False, False]]
    # 0.5 is below 0.75, 0.5 + 0.3 reaches it: the first two.
    assert np.isfinite(filter_top_p(tf.constant(logits), 0.75).numpy()).tolist() == [[True, True, False, False]]
    assert np.isfinite(filter_top_p(tf.constant(logits), 0.81).numpy()).tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, 3, None), (1.5, None, 0.8),
                                                        (1.0, 4, 0.9)])
def test_sampling_draws_from_the_filtered_tempered_softmax(temperature, top_k, top_p):
    logits = np.log(np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05], "float32"))
    scaled = logits / temperature
    kept = np.ones(scaled.shape, bool)
    if top_k is not None:
        kept &= top_k_kept_np(scaled[None], top_k)[0]
    if top_p is not None:
        kept &= top_p_kept_np(np.where(kept, scaled, -np.inf)[None], top_p)[0]
    expected = softmax_np(np.where(kept, scaled, -np.inf).astype("float64"))
    draws = 6000
    batch = tf.constant(np.tile(logits, (draws, 1)))
    tokens = next_token(batch, temperature, top_k, top_p, seed=tf.constant([7, 0])).numpy()
    frequencies = np.bincount(tokens, minlength=logits.size) / draws
    assert (frequencies[~kept] == 0).all()  # filtered tokens are never drawn
    # Binomial standard error at 6,000 draws is below 0.0065: 4 of them.
    np.testing.assert_allclose(frequencies, expected, atol=0.026)


def test_greedy_is_the_argmax_and_seeds_repeat(logits):
    np.testing.assert_array_equal(next_token(tf.constant(logits)).numpy(), logits.argmax(-1))
    seed = tf.constant([1, 2])
    first = next_token(tf.constant(logits), 1.0, 5, 0.9, seed).numpy()
    np.testing.assert_array_equal(next_token(tf.constant(logits), 1.0, 5, 0.9, seed).numpy(), first)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, 0, 1.0), (0.8, 5, 1.0), (1.2, 0, 0.7), (1.0, 3, 0.9)])
def test_the_exported_tensor_sampler_equals_the_python_one(logits, temperature, top_k, top_p):
    # Exports take the settings as tensors (top_k 0 and top_p 1 switch those filters off).
    seed = tf.constant([5, 9])
    from_tensors = tensor_sampler(tf.constant(temperature), tf.constant(top_k), tf.constant(top_p))
    from_python = sampler(temperature, top_k or None, top_p if top_p < 1.0 else None)
    np.testing.assert_array_equal(from_tensors(tf.constant(logits), seed).numpy(),
                                  from_python(tf.constant(logits), seed).numpy())
