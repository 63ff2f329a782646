"""GPT: forward pass against keras-hub's GPT2 on the same weights, training, generation, saving."""

import json

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import copy_gpt_weights_to_keras_hub, random_prompts, tiny_tokenizer
from tfzoo import GPT
from tfzoo.models import GPT_PRESETS


@pytest.fixture
def trained_model(trained_gpt):
    return trained_gpt


def test_logits_equal_keras_hub_gpt2_on_the_same_weights():
    model = GPT(vocabulary_size=97, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
                max_sequence_length=24)
    model.build()
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=97, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=24, dropout=0.0,
    )
    copy_gpt_weights_to_keras_hub(model, backbone)
    reference = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    token_ids = np.random.randint(0, 97, size=(3, 24)).astype("int32")
    padding_mask = np.ones_like(token_ids, dtype=bool)
    expected = reference({"token_ids": token_ids, "padding_mask": padding_mask})
    np.testing.assert_allclose(model(token_ids), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(8, 1), (1, 1), (3, 5), None])
def test_few_token_logits_under_xla_equal_the_tied_head(shape):
    # The decoding steps' logits under XLA are `(E h^T)^T`: the same values as `h E^T`,
    # for static shapes and for a trace that knows neither the batch nor the length.
    model = GPT(vocabulary_size=97, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
                max_sequence_length=24)
    model.build()
    hidden = tf.random.stateless_normal((8, 1, 16) if shape is None else (*shape, 16), seed=[1, 2])
    expected = hidden.numpy() @ model.token_embedding.embeddings.numpy().T
    spec = tf.TensorSpec((None, None, 16)) if shape is None else tf.TensorSpec(hidden.shape)
    compiled = tf.function(lambda h: model._logits(h, few_tokens=True), jit_compile=True, input_signature=[spec])
    logits = compiled(hidden)
    assert logits.dtype == tf.float32 and tuple(logits.shape) == (*hidden.shape[:2], 97)
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_presets():
    model = GPT.from_preset("gpt_test", dropout=0.1)
    restored = GPT.from_config(model.get_config())
    assert restored.get_config() == model.get_config()
    assert set(GPT_PRESETS) >= {"gpt_test", "gpt_tiny", "gpt2_small"}
    small = GPT.from_preset("gpt2_small")
    assert (small.num_layers, small.hidden_dim, small.vocabulary_size) == (12, 768, 50257)


def test_gpt2_small_has_124m_parameters():
    model = GPT.from_preset("gpt2_small")
    model.build()
    assert round(model.count_params() / 1e6) == 124


def test_fit_lowers_loss_and_perplexity_is_exp_of_loss(trained_model):
    stream = np.tile(np.arange(5, 45), 10)
    windows = stream[: 8 * 33].reshape(8, 33)
    loss, perplexity = trained_model.evaluate(windows[:, :-1], windows[:, 1:], verbose=0)
    fresh = GPT.from_preset("gpt_test")
    fresh.compile()
    fresh_loss, _ = fresh.evaluate(windows[:, :-1], windows[:, 1:], verbose=0)
    assert loss < 0.5 * fresh_loss
    np.testing.assert_allclose(perplexity, np.exp(loss), rtol=1e-3)


def test_cached_equals_uncached_greedy_for_a_batch_of_different_lengths(trained_model):
    prompts = [[5, 6, 7], [20, 21, 22, 23, 24, 25, 26], random_prompts(300, [11])[0], [40]]
    cached = trained_model.generate(prompts, max_new_tokens=12, stop_token_ids=())
    cached_no_xla = trained_model.generate(prompts, max_new_tokens=12, stop_token_ids=(), jit_compile=False)
    uncached = trained_model.generate(prompts, max_new_tokens=12, stop_token_ids=(), use_cache=False)
    assert cached == uncached == cached_no_xla
    # Each prompt alone gives what it gave inside the padded batch.
    for prompt, tokens in zip(prompts, cached):
        assert trained_model.generate([prompt], max_new_tokens=12, stop_token_ids=()) == [tokens]
    # The model learned the pattern: 5, 6, 7 continues 8, 9, 10, ...
    assert cached[0][:5] == [8, 9, 10, 11, 12]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_calls_of_many_shapes_share_a_relaxed_trace_and_stay_right(jit_compile):
    # Prompts of 3 length buckets (16, 32, 48 after rounding) and 2 batch sizes: after a
    # few shapes the compiled function is retraced for any shape (reduce_retracing), and
    # must still size its cache from the prompt it gets.
    model = GPT.from_preset("gpt_test")
    for batch, length in [(1, 5), (2, 20), (1, 40), (3, 7), (2, 33)]:
        prompts = random_prompts(512, [length] * batch, seed=length)
        cached = model.generate(prompts, max_new_tokens=6, stop_token_ids=(), jit_compile=jit_compile)
        assert cached == model.generate(prompts, max_new_tokens=6, stop_token_ids=(), use_cache=False)


def test_stop_tokens_end_each_prompt_separately(trained_model):
    prompts = [[5, 6, 7], [20, 21]]
    full = trained_model.generate(prompts, max_new_tokens=10, stop_token_ids=())
    stop = full[0][3]  # the 4th token of the first continuation
    stopped = trained_model.generate(prompts, max_new_tokens=10, stop_token_ids=(stop,))
    assert stopped[0] == full[0][:3]
    expected_second = full[1][: full[1].index(stop)] if stop in full[1] else full[1]
    assert stopped[1] == expected_second


def test_sampling_is_reproducible_and_limits_reduce_to_greedy(trained_model):
    prompts = [[5, 6, 7], [30]]
    greedy = trained_model.generate(prompts, max_new_tokens=8, stop_token_ids=())
    first = trained_model.generate(prompts, max_new_tokens=8, temperature=1.5, seed=7, stop_token_ids=())
    second = trained_model.generate(prompts, max_new_tokens=8, temperature=1.5, seed=7, stop_token_ids=())
    assert first == second
    assert trained_model.generate(prompts, max_new_tokens=8, temperature=1.0, top_k=1, seed=3,
                                  stop_token_ids=()) == greedy
    assert trained_model.generate(prompts, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3,
                                  stop_token_ids=()) == greedy


def test_top_k_past_the_vocabulary_keeps_every_token(trained_model):
    prompts = [[5, 6, 7], [30]]
    settings = dict(max_new_tokens=6, temperature=1.5, seed=5, stop_token_ids=())
    unfiltered = trained_model.generate(prompts, **settings)
    assert trained_model.generate(prompts, top_k=trained_model.vocabulary_size + 50, **settings) == unfiltered
    # NumPy integers (as from a config or an array) count as integers.
    assert trained_model.generate(prompts, top_k=np.int64(10**6), **{**settings, "max_new_tokens": np.int64(6)}) \
        == unfiltered


def test_string_prompts_round_trip_through_the_tokenizer(trained_model):
    texts = trained_model.generate(["Return the", "If"], max_new_tokens=6, stop_token_ids=())
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
    ids = trained_model.generate([list(trained_model.tokenizer("Return the"))], max_new_tokens=6,
                                 stop_token_ids=())
    assert texts[0] == trained_model.tokenizer.detokenize([ids[0]])[0]


def test_keras_save_and_reload_reproduces_logits_and_tokenizer(trained_model, tmp_path):
    path = str(tmp_path / "gpt.keras")
    trained_model.save(path)
    restored = keras.models.load_model(path)
    token_ids = np.random.randint(0, 300, (2, 16))
    np.testing.assert_array_equal(restored(token_ids), trained_model(token_ids))
    text = "If the argument is a string"
    assert list(restored.tokenizer(text)) == list(trained_model.tokenizer(text))
    assert restored.generate([text], max_new_tokens=5) == trained_model.generate([text], max_new_tokens=5)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(prompts=[]), "empty"),
        (dict(prompts=[""]), "Prompt 0 is empty"),
        (dict(prompts=[[]]), "Prompt 0 has no tokens"),
        (dict(prompts="a string"), "list of prompts"),
        (dict(prompts=[[1] * 120], max_new_tokens=20), "max_sequence_length=128"),
        (dict(prompts=[[1, 2]], max_new_tokens=-1), "max_new_tokens=-1"),
        (dict(prompts=[[1, 2]], temperature=1.0, top_p=0.0), "top_p=0.0"),
        (dict(prompts=[[1, 2]], temperature=1.0, top_p=1.5), "top_p=1.5"),
        (dict(prompts=[[1, 2]], temperature=-1.0), "temperature=-1.0"),
        (dict(prompts=[[1, 2]], top_k=0), "top_k=0"),
        (dict(prompts=[[1, 999]]), "outside"),
    ],
)
def test_generate_rejects_bad_input(trained_model, arguments, message):
    arguments.setdefault("max_new_tokens", 4)
    with pytest.raises(ValueError, match=message):
        trained_model.generate(**arguments)


def test_zero_new_tokens_gives_empty_continuations(trained_model):
    assert trained_model.generate([[5, 6], [7]], max_new_tokens=0) == [[], []]


def test_constructor_rejects_bad_shapes():
    with pytest.raises(ValueError, match="Unknown GPT preset 'gpt_huge'"):
        GPT.from_preset("gpt_huge")
    with pytest.raises(ValueError, match="hidden_dim=30, num_heads=4"):
        GPT(vocabulary_size=10, num_layers=1, num_heads=4, hidden_dim=30, intermediate_dim=8)
    with pytest.raises(ValueError, match="num_layers=0"):
        GPT(vocabulary_size=10, num_layers=0, num_heads=1, hidden_dim=8, intermediate_dim=8)
    with pytest.raises(ValueError, match="tokenizer has 300 tokens"):
        GPT(vocabulary_size=100, num_layers=1, num_heads=1, hidden_dim=8, intermediate_dim=8,
            tokenizer=tiny_tokenizer())


def test_mixed_precision_logits_are_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = GPT.from_preset("gpt_test")
        logits = model(np.zeros((1, 8), "int32"))
        assert logits.dtype == tf.float32
        assert len(model.generate([[1, 2, 3]], max_new_tokens=3, stop_token_ids=())[0]) == 3
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_generate_on_a_fresh_model_leaves_it_usable():
    model = GPT.from_preset("gpt_test")
    model.generate([[1, 2, 3]], max_new_tokens=2, stop_token_ids=())
    assert model.built
    model.compile()
    model.fit(np.ones((2, 8), "int32"), np.ones((2, 8), "int32"), verbose=0)


@pytest.mark.parametrize("family", ["gpt", "bert", "seq2seq"])
def test_a_function_activation_survives_a_json_config(family):
    from tfzoo import BertEncoder
    from tfzoo.layers.activations import gelu_approximate
    from tfzoo.models import Seq2SeqTransformer

    cls, preset = {"gpt": (GPT, "gpt_test"), "bert": (BertEncoder, "bert_test"),
                   "seq2seq": (Seq2SeqTransformer, "seq2seq_test")}[family]
    for activation in (keras.activations.silu, gelu_approximate):  # a Keras built-in, a registered function
        model = cls.from_preset(preset, activation=activation)
        model.build()
        config = json.loads(json.dumps(model.get_config()))  # a function itself would not be JSON
        restored = cls.from_config(config)
        restored.build()
        restored.set_weights(model.get_weights())
        assert restored.activation is activation or restored.activation == activation.__name__
        if family == "bert":
            token_ids = np.arange(1, 9)[None, :]
            np.testing.assert_array_equal(restored(token_ids)["sequence_output"], model(token_ids)["sequence_output"])
        else:
            assert restored.generate([[5, 6, 7]], max_new_tokens=4) == model.generate([[5, 6, 7]], max_new_tokens=4)
