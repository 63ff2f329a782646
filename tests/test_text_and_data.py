"""Tokenizers and the language-model data pipeline."""

import json

import numpy as np
import pytest

from tests.helpers import TINY_TEXTS, tiny_tokenizer
from tfzoo.data import language_model_dataset, python_docstrings, read_text_files, tokenize_corpus
from tfzoo.text import gpt2_vocabulary_files, load_gpt2_tokenizer, train_byte_pair_tokenizer


def test_real_gpt2_vocabulary_encodes_hello_world():
    tokenizer = load_gpt2_tokenizer()
    assert list(tokenizer("Hello world")) == [15496, 995]
    assert tokenizer.vocabulary_size() == 50257
    assert tokenizer.end_token_id == 50256
    assert tokenizer.detokenize([[15496, 995]])[0] == "Hello world"


def test_gpt2_tokenizer_matches_the_vocabulary_file():
    vocabulary_path, _ = gpt2_vocabulary_files()
    with open(vocabulary_path, encoding="utf-8") as file:
        vocabulary = json.load(file)
    tokenizer = load_gpt2_tokenizer()
    # " the" is one token in GPT-2 (Ġ marks the leading space).
    assert list(tokenizer(" the")) == [vocabulary["Ġthe"]]


def test_gpt2_tokenizer_rejects_missing_files(tmp_path):
    with pytest.raises(ValueError, match="vocabulary_path"):
        load_gpt2_tokenizer(vocabulary_path=str(tmp_path / "missing.json"))


def test_trained_tokenizer_round_trips_any_text():
    tokenizer = tiny_tokenizer()
    assert tokenizer.vocabulary_size() == 300
    for text in ["Return the number.", "naïve café — 東京 🙂", "  spaces\n\ttabs"]:
        assert tokenizer.detokenize([list(tokenizer(text))])[0] == text
    # Merges learned from the corpus make common words shorter than their bytes.
    assert len(tokenizer("Return the number")) < len("Return the number")


def test_tokenizer_training_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocabulary_size=100"):
        train_byte_pair_tokenizer(TINY_TEXTS, vocabulary_size=100)
    with pytest.raises(ValueError, match="empty corpus"):
        train_byte_pair_tokenizer(["", "  "], vocabulary_size=300)


def test_language_model_windows_are_shifted_by_one():
    dataset = language_model_dataset(np.arange(200), sequence_length=9, batch_size=4, shuffle=False)
    inputs, labels = next(iter(dataset))
    np.testing.assert_array_equal(inputs.numpy()[0], np.arange(0, 9))
    np.testing.assert_array_equal(labels.numpy()[0], np.arange(1, 10))
    np.testing.assert_array_equal(inputs.numpy()[1], np.arange(10, 19))
    assert sum(1 for _ in dataset) == 200 // 10 // 4


def test_shuffled_windows_cover_the_stream_once():
    dataset = language_model_dataset(np.arange(110), sequence_length=10, batch_size=2, seed=3)
    starts = sorted(int(inputs[0]) for batch, _ in dataset for inputs in batch.numpy())
    assert starts == list(range(0, 110, 11))[: len(starts)] and len(starts) == 10


def test_static_shapes_make_every_batch_full():
    # 23 windows of 10 tokens in batches of 4: the last 3 windows are dropped under static
    # shapes (a TPU), kept as a smaller batch otherwise.
    tokens = np.arange(230)
    shapes = [inputs.shape[0] for inputs, _ in language_model_dataset(
        tokens, sequence_length=9, batch_size=4, shuffle=False, drop_remainder=False)]
    assert shapes == [4, 4, 4, 4, 4, 3]
    static = language_model_dataset(tokens, sequence_length=9, batch_size=4, drop_remainder=False,
                                    static_shapes=True)
    assert [inputs.shape[0] for inputs, _ in static] == [4] * 5
    assert static.element_spec[0].shape == (4, 9)  # known to the compiler, not (None, 9)
    # Fewer windows than a batch: one small batch normally, an error under static shapes.
    assert [inputs.shape[0] for inputs, _ in language_model_dataset(tokens[:30], 9, 4)] == [3]
    with pytest.raises(ValueError, match="fewer than one batch of 4, which static shapes"):
        language_model_dataset(tokens[:30], 9, 4, static_shapes=True)


def test_too_short_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="too few for one window"):
        language_model_dataset(np.arange(5), sequence_length=9, batch_size=1)


def test_tokenize_corpus_separates_documents_with_the_end_token():
    tokenizer = tiny_tokenizer()
    ids = tokenize_corpus(["Return the", "If the"], tokenizer, tokenizer.end_token_id)
    expected = list(tokenizer("Return the")) + [tokenizer.end_token_id] + list(tokenizer("If the"))
    assert ids.tolist() == expected + [tokenizer.end_token_id]


def test_python_docstrings_is_a_real_deterministic_corpus():
    texts = python_docstrings(max_characters=50_000)
    assert sum(len(text) for text in texts) >= 50_000
    assert texts == python_docstrings(max_characters=50_000)
    assert any("Return" in text for text in texts)


def test_read_text_files_names_the_bad_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Some text.", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    assert read_text_files([str(good)]) == ["Some text."]
    with pytest.raises(ValueError, match="not found: .*missing.txt"):
        read_text_files([str(good), str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="empty: .*empty.txt"):
        read_text_files([str(empty)])
    with pytest.raises(ValueError, match="No corpus files"):
        read_text_files([])


def test_wordpiece_vocabulary_trained_on_a_corpus_covers_it():
    from tfzoo.text import WordPieceTokenizer, train_wordpiece_vocabulary

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "park", "quickly", "jumping", "houses", "Über"]
    texts = [" ".join(rng.choice(words, 8)) + "." for _ in range(200)]
    vocabulary = train_wordpiece_vocabulary(texts, vocabulary_size=80)
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocabulary) <= 80 and len(set(vocabulary)) == len(vocabulary)
    assert {"the", "cat", "quickly", "uber", "."} <= set(vocabulary)  # frequent words stay whole, lowercased
    tokenizer = WordPieceTokenizer(vocabulary)
    ids = tokenizer(texts[:20]).to_list()  # ragged: one row of ids per text
    unknown = tokenizer.token_to_id("[UNK]")
    assert all(unknown not in row for row in ids)  # nothing in the corpus is out of vocabulary
    assert [tokenizer.id_to_token(i) for i in ids[0]] == [word.lower().replace("ü", "u") for word in
                                                          texts[0][:-1].split()] + ["."]
    # A word it never saw falls apart into pieces or [UNK], never an error.
    assert len(tokenizer(["zebra"]).to_list()[0]) >= 1
    assert tokenizer.id_to_token(np.int64(2)) == "[CLS]"
    for bad in (-1, len(vocabulary)):  # -1 would otherwise index from the end
        with pytest.raises(ValueError, match=f"Token id {bad} is outside"):
            tokenizer.id_to_token(bad)
    with pytest.raises(ValueError, match="no vocabulary yet"):
        WordPieceTokenizer().id_to_token(0)
