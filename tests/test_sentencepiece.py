"""The in-graph SentencePiece tokenizer, against the `sentencepiece` library itself."""

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from tfzoo.data import python_docstrings
from tfzoo.models import GPT
from tfzoo.text import SentencePieceTokenizer, train_sentencepiece_tokenizer


@pytest.fixture(scope="module")
def docstring_tokenizer():
    texts = [line for text in python_docstrings()[:400] for line in text.splitlines() if line.strip()]
    return train_sentencepiece_tokenizer(texts, vocabulary_size=500), texts


def _reference(tokenizer):
    processor = sentencepiece.SentencePieceProcessor()
    processor.LoadFromSerializedProto(tokenizer.proto)
    return processor


def test_ids_equal_the_sentencepiece_library(docstring_tokenizer):
    tokenizer, texts = docstring_tokenizer
    reference = _reference(tokenizer)
    samples = texts[:200] + ["naïve café — 東京", "ＦＵＬＬＷＩＤＴＨ ﬁ", "", "   ", "x" * 300]
    ours = tokenizer(samples).to_list()
    assert ours == reference.encode(samples)
    assert sum(len(ids) for ids in ours) > 1000
    assert [text.decode() for text in tokenizer.detokenize(ours).numpy()] == reference.decode(ours)


def test_special_ids_are_fixed_and_decode_to_nothing(docstring_tokenizer):
    tokenizer, _ = docstring_tokenizer
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.start_token_id, tokenizer.end_token_id) == (0, 1, 2, 3)
    assert tokenizer.id_to_token(1) == "<unk>"
    assert tokenizer.vocabulary_size() == 500
    ids = tokenizer(["Return the value."]).to_list()[0]
    padded = tf.constant([[2] + ids + [3, 0, 0]])  # dense, with start, end and padding
    assert tokenizer.detokenize(padded).numpy().tolist() == [b"Return the value."]
    assert tokenizer.token_to_id(tokenizer.id_to_token(ids[0])) == ids[0]


def test_tokenizer_works_inside_a_tf_function(docstring_tokenizer):
    tokenizer, _ = docstring_tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(texts):
        return tokenizer.detokenize(tokenizer(texts))

    assert round_trip(tf.constant(["Return the value.", "a b"])).numpy().tolist() == [b"Return the value.", b"a b"]


def test_gpt_with_a_sentencepiece_tokenizer_generates_and_survives_a_save(docstring_tokenizer, tmp_path):
    tokenizer, _ = docstring_tokenizer
    model = GPT.from_preset("gpt_test", vocabulary_size=tokenizer.vocabulary_size(), tokenizer=tokenizer)
    before = model.generate(["Return the"], max_new_tokens=5, stop_token_ids=None)
    assert isinstance(before[0], str) and before[0]
    path = str(tmp_path / "gpt.keras")
    model.save(path)
    import keras

    reloaded = keras.saving.load_model(path)
    assert reloaded.tokenizer.proto == tokenizer.proto
    assert reloaded.generate(["Return the"], max_new_tokens=5, stop_token_ids=None) == before
    token_ids = tokenizer(["Return the"]).to_list()
    np.testing.assert_allclose(
        reloaded.predict(np.array(token_ids), verbose=0), model.predict(np.array(token_ids), verbose=0), atol=1e-6
    )


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        train_sentencepiece_tokenizer(["", "  "], vocabulary_size=100)
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece_tokenizer(["a b"], model_type="wordpiece")
    with pytest.raises(ValueError, match="vocabulary_size"):
        train_sentencepiece_tokenizer(["a b"], vocabulary_size=4)
    with pytest.raises(ValueError, match="not found"):
        SentencePieceTokenizer(str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="Not a valid SentencePiece model"):
        SentencePieceTokenizer(b"not a model")
    with pytest.raises(ValueError, match="no model yet"):
        SentencePieceTokenizer()(["a"])


def test_a_model_with_other_special_ids_is_refused(tmp_path):
    prefix = str(tmp_path / "default_ids")
    # The library's defaults: unk 0, bos 1, eos 2, no padding.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the cat sat on the mat"] * 20), model_prefix=prefix, vocab_size=20,
        hard_vocab_limit=False, minloglevel=2,
    )
    with pytest.raises(ValueError, match="special ids"):
        SentencePieceTokenizer(prefix + ".model")
