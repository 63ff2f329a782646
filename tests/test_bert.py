"""BERT: encoder config and saving, presets, padding, packing, masked-LM data, the four
heads training on small learnable tasks, raw-text prediction and embedding."""

import math
import zipfile

import keras
import numpy as np
import pytest

from tfzoo import BertClassifier, BertEncoder, BertMaskedLM, BertSpanQA, BertTokenClassifier
from tfzoo.data import masked_lm_dataset
from tfzoo.models import BERT_PRESETS
from tfzoo.text import BertPreprocessor, WordPieceTokenizer

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(5)
WORDS = (
    "the a cat dog bird fish sat ran flew swam on in over under mat park sky sea big small red blue "
    "old young house tree book we she he they eat read see and of is was today very good bad"
).split()
VOCABULARY = SPECIAL + WORDS


def word_ids(text):
    """Token ids of a text of vocabulary words, looked up by hand (no tokenizer)."""
    return [VOCABULARY.index(word) for word in text.split()]


def packed(first, second=None, length=16):
    """`[CLS] first [SEP] (second [SEP])` padded to `length`, built by hand as NumPy."""
    ids = [CLS] + word_ids(first) + [SEP]
    segments = [0] * len(ids)
    if second is not None:
        ids += word_ids(second) + [SEP]
        segments += [1] * (len(word_ids(second)) + 1)
    padding = length - len(ids)
    mask = [True] * len(ids) + [False] * padding
    return np.array(ids + [PAD] * padding), np.array(segments + [0] * padding), np.array(mask)


def packed_batch(texts, length=16):
    rows = [packed(*text, length=length) if isinstance(text, tuple) else packed(text, length=length) for text in texts]
    return {name: np.stack([row[index] for row in rows]) for index, name in
            enumerate(["token_ids", "segment_ids", "padding_mask"])}


def preprocessor(sequence_length=16):
    return BertPreprocessor(WordPieceTokenizer(VOCABULARY), sequence_length=sequence_length)


def small_encoder(with_preprocessor=False, sequence_length=16, **overrides):
    arguments = dict(vocabulary_size=len(VOCABULARY), max_sequence_length=sequence_length, dropout=0.0)
    arguments.update(overrides)
    if with_preprocessor:
        arguments["preprocessor"] = preprocessor(sequence_length)
    return BertEncoder.from_preset("bert_test", **arguments)


def numpy_outputs(outputs):
    return {name: keras.ops.convert_to_numpy(value) for name, value in outputs.items()}


# ---------------------------------------------------------------- config, saving, presets
def test_config_round_trip_with_and_without_preprocessor():
    for encoder in (BertEncoder.from_preset("bert_test", dropout=0.2), small_encoder(with_preprocessor=True)):
        restored = BertEncoder.from_config(encoder.get_config())
        assert restored.get_config() == encoder.get_config()
    config = small_encoder(with_preprocessor=True).get_config()
    assert config["preprocessor"]["config"]["sequence_length"] == 16
    classifier = BertClassifier(small_encoder(), num_classes=3, dropout=0.2)
    restored = BertClassifier.from_config(classifier.get_config())
    assert restored.get_config() == classifier.get_config()
    assert (restored.num_classes, restored.dropout, restored.encoder.vocabulary_size) == (3, 0.2, len(VOCABULARY))


def test_a_config_or_a_clone_carries_the_wordpiece_vocabulary():
    import json

    encoder = small_encoder(with_preprocessor=True)
    texts = ["the cat sat on the mat", "we eat"]
    expected = encoder.embed(texts)
    restored = BertEncoder.from_config(json.loads(json.dumps(encoder.get_config())))
    clone = keras.models.clone_model(encoder)
    for copy in (restored, clone):
        assert copy.preprocessor.tokenizer.vocabulary == VOCABULARY
        copy.build()
        copy.set_weights(encoder.get_weights())
        np.testing.assert_allclose(copy.embed(texts), expected, atol=1e-6)


def test_keras_save_and_reload_reproduces_outputs_and_vocabulary(tmp_path):
    encoder = small_encoder(with_preprocessor=True)
    encoder.build()
    features = packed_batch(["the cat sat on the mat", ("we see a dog", "he ran in the park")])
    expected = numpy_outputs(encoder(features))
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    assert any(name.endswith("vocabulary.txt") for name in zipfile.ZipFile(path).namelist())
    restored = keras.models.load_model(path)
    outputs = numpy_outputs(restored(features))
    np.testing.assert_array_equal(outputs["sequence_output"], expected["sequence_output"])
    np.testing.assert_array_equal(outputs["pooled_output"], expected["pooled_output"])
    # The vocabulary came back from the asset: the restored preprocessor tokenizes and embeds.
    assert restored.preprocessor.tokenizer.vocabulary == VOCABULARY
    texts = ["the cat sat on the mat", "a big red house"]
    np.testing.assert_array_equal(restored.embed(texts), encoder.embed(texts))


def test_keras_save_and_reload_of_a_head(tmp_path):
    classifier = BertClassifier(small_encoder(with_preprocessor=True), num_classes=3)
    features = packed_batch(["the cat sat on the mat", "we eat"])
    expected = keras.ops.convert_to_numpy(classifier(features))
    path = str(tmp_path / "classifier.keras")
    classifier.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, BertClassifier) and isinstance(restored.encoder, BertEncoder)
    np.testing.assert_array_equal(restored(features), expected)
    np.testing.assert_allclose(restored.predict_text(["the cat sat on the mat", "we eat"]), expected, atol=1e-6)


def test_keras_save_and_reload_after_the_preprocessor_has_run(tmp_path):
    encoder = small_encoder(with_preprocessor=True)
    expected = encoder.embed(["the cat sat on the mat"])  # builds the preprocessor
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored.embed(["the cat sat on the mat"]), expected)


def bert_parameter_count(vocabulary_size, num_layers, hidden_dim, intermediate_dim, max_sequence_length,
                         num_heads=None, num_segments=2):
    """BERT's parameters by hand: embeddings, blocks, pooler."""
    embeddings = (vocabulary_size + max_sequence_length + num_segments) * hidden_dim + 2 * hidden_dim
    attention = 4 * (hidden_dim * hidden_dim + hidden_dim)
    feed_forward = hidden_dim * intermediate_dim + intermediate_dim + intermediate_dim * hidden_dim + hidden_dim
    block = attention + feed_forward + 2 * 2 * hidden_dim
    pooler = hidden_dim * hidden_dim + hidden_dim
    return embeddings + num_layers * block + pooler


def test_presets_exist_and_have_the_published_sizes():
    assert set(BERT_PRESETS) >= {"bert_test", "bert_tiny", "minilm_l6", "bert_base"}
    counts = {}
    for name in ("bert_test", "minilm_l6", "bert_base"):
        encoder = BertEncoder.from_preset(name)
        encoder.build()
        counts[name] = encoder.count_params()
        assert counts[name] == bert_parameter_count(**BERT_PRESETS[name]), name
    assert round(counts["bert_base"] / 1e6, 1) == 109.5  # bert-base-uncased: 109,482,240
    assert round(counts["minilm_l6"] / 1e6, 1) == 22.7  # all-MiniLM-L6-v2: 22,713,216
    base = BertEncoder.from_preset("bert_base")
    assert (base.num_layers, base.num_heads, base.hidden_dim, base.vocabulary_size) == (12, 12, 768, 30522)


def test_constructor_and_presets_reject_bad_values():
    with pytest.raises(ValueError, match="Unknown BERT preset 'bert_huge'"):
        BertEncoder.from_preset("bert_huge")
    with pytest.raises(ValueError, match="hidden_dim=30, num_heads=4"):
        BertEncoder(vocabulary_size=10, num_layers=1, num_heads=4, hidden_dim=30, intermediate_dim=8)
    with pytest.raises(ValueError, match="num_layers=0"):
        BertEncoder(vocabulary_size=10, num_layers=0, num_heads=1, hidden_dim=8, intermediate_dim=8)
    with pytest.raises(ValueError, match=f"vocabulary has {len(VOCABULARY)} tokens.*vocabulary_size=100"):
        small_encoder(vocabulary_size=100, with_preprocessor=True)
    with pytest.raises(ValueError, match="packs 32 tokens.*max_sequence_length=16"):
        BertEncoder.from_preset("bert_test", vocabulary_size=len(VOCABULARY), max_sequence_length=16,
                                preprocessor=preprocessor(32))
    with pytest.raises(ValueError, match="num_classes=0"):
        BertClassifier(small_encoder(), num_classes=0)


# ---------------------------------------------------------------- padding
def test_outputs_at_real_tokens_do_not_depend_on_padding():
    encoder = small_encoder(sequence_length=32)
    short = packed_batch(["the cat sat on the mat", ("we see a dog", "he ran in the park")], length=12)
    long = packed_batch(["the cat sat on the mat", ("we see a dog", "he ran in the park")], length=32)
    # Padding positions hold arbitrary (non-pad) ids: only the padding mask may hide them.
    long["token_ids"] = np.where(long["padding_mask"], long["token_ids"],
                                 np.random.default_rng(0).integers(5, len(VOCABULARY), long["token_ids"].shape))
    short_outputs, long_outputs = numpy_outputs(encoder(short)), numpy_outputs(encoder(long))
    mask = short["padding_mask"]
    np.testing.assert_allclose(long_outputs["sequence_output"][:, :12][mask], short_outputs["sequence_output"][mask],
                               atol=1e-5)
    np.testing.assert_allclose(long_outputs["pooled_output"], short_outputs["pooled_output"], atol=1e-5)
    # Without the mask the extra tokens are attended to and the outputs change.
    unmasked = numpy_outputs(encoder({"token_ids": long["token_ids"], "segment_ids": long["segment_ids"]}))
    assert np.abs(unmasked["sequence_output"][:, :12][mask] - short_outputs["sequence_output"][mask]).max() > 1e-2


# ---------------------------------------------------------------- packing
def test_one_segment_is_cls_text_sep_then_padding():
    features = numpy_outputs(preprocessor(10)(["the cat sat", "a dog"]))
    assert features["token_ids"].tolist() == [
        [CLS] + word_ids("the cat sat") + [SEP] + [PAD] * 5,
        [CLS] + word_ids("a dog") + [SEP] + [PAD] * 6,
    ]
    assert features["segment_ids"].tolist() == [[0] * 10] * 2
    assert features["padding_mask"].tolist() == [[True] * 5 + [False] * 5, [True] * 4 + [False] * 6]


def test_two_segments_have_segment_ids_and_padding_mask():
    features = numpy_outputs(preprocessor(12)((["the cat", "we"], ["sat on the mat", "eat"])))
    assert features["token_ids"][0].tolist() == (
        [CLS] + word_ids("the cat") + [SEP] + word_ids("sat on the mat") + [SEP] + [PAD] * 3
    )
    assert features["segment_ids"][0].tolist() == [0] * 4 + [1] * 5 + [0] * 3
    assert features["padding_mask"][0].tolist() == [True] * 9 + [False] * 3
    assert features["token_ids"][1].tolist() == [CLS, *word_ids("we"), SEP, *word_ids("eat"), SEP] + [PAD] * 7
    assert features["segment_ids"][1].tolist() == [0, 0, 0, 1, 1] + [0] * 7
    # Same as the hand-built packing.
    expected = packed_batch([("the cat", "sat on the mat"), ("we", "eat")], length=12)
    for name in expected:
        np.testing.assert_array_equal(features[name], expected[name])


def _segment_lengths(features, row):
    ids, segments = features["token_ids"][row], features["segment_ids"][row]
    first = int(((segments == 0) & (ids != PAD)).sum()) - 2  # minus [CLS] and [SEP]
    second = int((segments == 1).sum()) - 1  # minus the last [SEP]
    return first, second


def test_round_robin_truncation_keeps_both_segments():
    long_text = " ".join(WORDS[i % len(WORDS)] for i in range(60))
    features = numpy_outputs(preprocessor(16)((["the cat", long_text, long_text], [long_text, "we eat", long_text])))
    assert features["padding_mask"].all()  # every row filled exactly: 13 text tokens + 3 specials
    assert _segment_lengths(features, 0) == (2, 11)  # the short first segment is kept whole
    assert _segment_lengths(features, 1) == (11, 2)  # the short second segment is kept whole
    first, second = _segment_lengths(features, 2)
    assert first + second == 13 and abs(first - second) <= 1  # two long segments share the room
    # What is kept is the start of each segment.
    ids = features["token_ids"][0].tolist()
    assert ids[4:15] == word_ids(long_text)[:11] and ids[15] == SEP
    for row in range(3):
        assert features["token_ids"][row][0] == CLS and features["token_ids"][row][-1] == SEP


def test_sequence_length_below_three_is_an_error():
    with pytest.raises(ValueError, match="at least 3. Received: 2"):
        BertPreprocessor(WordPieceTokenizer(VOCABULARY), sequence_length=2)
    BertPreprocessor(WordPieceTokenizer(VOCABULARY), sequence_length=3)


def test_long_text_is_truncated_to_exactly_sequence_length_and_ends_with_sep():
    encoder = small_encoder(with_preprocessor=True)
    words = [WORDS[(7 * i) % len(WORDS)] for i in range(40)]
    long_text, kept_text = " ".join(words), " ".join(words[:14])
    features = numpy_outputs(encoder.preprocessor([long_text]))
    assert features["token_ids"].shape == (1, 16)
    assert features["token_ids"][0].tolist() == [CLS] + word_ids(kept_text) + [SEP]
    assert features["padding_mask"].all()
    # Truncation is all that happens: the long text embeds like its first 14 words.
    np.testing.assert_allclose(encoder.embed([long_text]), encoder.embed([kept_text]), atol=1e-6)


# ---------------------------------------------------------------- masked-LM data
def test_masked_lm_pipeline_follows_bert_recipe():
    generator = np.random.default_rng(0)
    texts = [" ".join(generator.choice(WORDS, generator.integers(3, 90))) for _ in range(800)]
    packer = preprocessor(64)
    original = numpy_outputs(packer(texts))["token_ids"]
    dataset = masked_lm_dataset(texts, packer, batch_size=200, shuffle=False)
    selected = selectable = masked = random = unchanged = row = 0
    for inputs, labels, weights in dataset:
        inputs, labels, weights = numpy_outputs(inputs), labels.numpy(), weights.numpy()
        for token_ids, positions, label, weight in zip(inputs["token_ids"], inputs["mask_positions"], labels, weights):
            before = original[row]
            row += 1
            chosen = positions[weight > 0]
            assert len(set(chosen.tolist())) == len(chosen)
            assert (before[chosen] >= len(SPECIAL)).all()  # never [CLS], [SEP] or [PAD]
            np.testing.assert_array_equal(label[weight > 0], before[chosen])  # labels: the original tokens
            changed = np.flatnonzero(token_ids != before)
            assert set(changed.tolist()) <= set(chosen.tolist())  # only chosen tokens change
            selectable += int((before >= len(SPECIAL)).sum())
            selected += len(chosen)
            now = token_ids[chosen]
            masked += int((now == MASK).sum())
            unchanged += int((now == before[chosen]).sum())
            random += int(((now != MASK) & (now != before[chosen])).sum())
    assert row == len(texts)
    assert selected > 3000, selected
    # Bounds of 4 percentage points: many standard deviations at these counts.
    assert abs(selected / selectable - 0.15) < 0.04, selected / selectable  # measured 0.162
    assert abs(masked / selected - 0.8) < 0.04, masked / selected
    assert abs(random / selected - 0.1) < 0.04, random / selected
    assert abs(unchanged / selected - 0.1) < 0.04, unchanged / selected


# ---------------------------------------------------------------- heads learn small tasks
def random_sequences(count, length=16, seed=0, lowest=len(SPECIAL)):
    """`[CLS] random words [SEP] padding` with lengths between 6 and `length`."""
    generator = np.random.default_rng(seed)
    token_ids = np.zeros((count, length), "int32")
    for row, size in enumerate(generator.integers(6, length + 1, count)):
        token_ids[row, :size] = generator.integers(lowest, len(VOCABULARY), size)
        token_ids[row, 0], token_ids[row, size - 1] = CLS, SEP
    return token_ids, token_ids != PAD, generator


def cross_entropy(labels, logits, weights=None):
    """Mean cross-entropy (over the weighted items), computed in NumPy from the logits."""
    logits = np.asarray(logits, np.float64)
    log_probabilities = logits - logits.max(-1, keepdims=True)
    log_probabilities -= np.log(np.exp(log_probabilities).sum(-1, keepdims=True))
    losses = -np.take_along_axis(log_probabilities, np.asarray(labels)[..., None], axis=-1)[..., 0]
    weights = np.ones_like(losses) if weights is None else np.asarray(weights, np.float64)
    return float((losses * weights).sum() / weights.sum())


def test_classifier_learns_whether_a_token_appears():
    token_ids, padding_mask, generator = random_sequences(256)
    marker = VOCABULARY.index("cat")
    for row in range(len(token_ids)):
        ids = token_ids[row]
        ids[ids == marker] = VOCABULARY.index("dog")
        if row % 2:
            ids[generator.integers(1, padding_mask[row].sum() - 1)] = marker
    labels = (token_ids == marker).any(axis=1).astype("int32")
    assert labels.mean() == 0.5
    features = {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": padding_mask}
    classifier = BertClassifier(small_encoder(), num_classes=2, dropout=0.0)
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    loss_before = cross_entropy(labels, classifier(features))
    classifier.fit(features, labels, epochs=5, batch_size=32, verbose=0)
    logits = keras.ops.convert_to_numpy(classifier(features))
    loss_after = cross_entropy(labels, logits)
    assert loss_after < 0.2 * loss_before, (loss_before, loss_after)
    assert (logits.argmax(-1) == labels).mean() > 0.9


def test_token_classifier_learns_token_parity_with_padding_weighted_out():
    token_ids, padding_mask, _ = random_sequences(256, seed=1)
    labels = token_ids % 2
    # Padding ([PAD] = 0) would be "even": give it the other label, so only the weights keep it out.
    labels[~padding_mask] = 1
    weights = padding_mask.astype("float32")
    features = {"token_ids": token_ids, "padding_mask": padding_mask}
    tagger = BertTokenClassifier(small_encoder(), num_classes=2, dropout=0.0)
    tagger.compile(optimizer=keras.optimizers.Adam(1e-3))
    loss_before = cross_entropy(labels, tagger(features), weights)
    tagger.fit(features, labels, sample_weight=weights, epochs=3, batch_size=32, verbose=0)
    logits = keras.ops.convert_to_numpy(tagger(features))
    loss_after = cross_entropy(labels, logits, weights)
    assert loss_after < 0.2 * loss_before, (loss_before, loss_after)
    assert (logits.argmax(-1) == labels)[padding_mask].mean() > 0.95


def test_span_qa_learns_the_position_of_marker_tokens():
    token_ids, padding_mask, generator = random_sequences(256, seed=2)
    start_marker, end_marker = VOCABULARY.index("book"), VOCABULARY.index("tree")
    token_ids[np.isin(token_ids, [start_marker, end_marker])] = VOCABULARY.index("the")
    starts, ends = np.zeros(len(token_ids), "int32"), np.zeros(len(token_ids), "int32")
    for row in range(len(token_ids)):
        size = padding_mask[row].sum()
        starts[row] = generator.integers(1, size - 2)
        ends[row] = generator.integers(starts[row] + 1, size - 1)
        token_ids[row, starts[row]], token_ids[row, ends[row]] = start_marker, end_marker
    features = {"token_ids": token_ids, "padding_mask": padding_mask}
    reader = BertSpanQA(small_encoder(), dropout=0.0)
    reader.compile(optimizer=keras.optimizers.Adam(1e-3))

    def loss():
        outputs = numpy_outputs(reader(features))
        return cross_entropy(starts, outputs["start_logits"]) + cross_entropy(ends, outputs["end_logits"]), outputs

    loss_before, _ = loss()
    reader.fit(features, {"start_logits": starts, "end_logits": ends}, epochs=4, batch_size=32, verbose=0)
    loss_after, outputs = loss()
    assert loss_after < 0.2 * loss_before, (loss_before, loss_after)
    assert (outputs["start_logits"].argmax(-1) == starts).mean() > 0.95
    assert (outputs["end_logits"].argmax(-1) == ends).mean() > 0.95
    assert (outputs["start_logits"][~padding_mask] <= -1e8).all()  # padding can never be the answer


def test_masked_lm_loss_falls_on_a_small_repeated_corpus():
    corpus = ["the cat sat on the mat", "a dog ran in the park", "we see a bird in the sky",
              "she read a good book today", "the old fish swam in the sea", "they eat and read"]
    keras.utils.set_random_seed(1)
    encoder = small_encoder(with_preprocessor=True, sequence_length=12)
    model = BertMaskedLM(encoder)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    dataset = masked_lm_dataset(corpus * 32, encoder.preprocessor, batch_size=32, seed=1)
    held_out = list(dataset.take(3))  # masks drawn now, kept fixed for both measurements

    def loss():  # cross-entropy per masked token (unused mask slots have weight 0)
        return np.mean([cross_entropy(labels, model(inputs), weights) for inputs, labels, weights in held_out])

    loss_before = loss()
    model.fit(dataset, epochs=5, verbose=0)
    loss_after = loss()
    assert loss_before > 0.8 * np.log(len(VOCABULARY))  # near chance before training
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)


def _numpy_gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


@pytest.mark.parametrize("activation", [
    "gelu",
    "gelu_approximate",
])
def test_masked_lm_head_equals_numpy_reference(activation):
    encoder = small_encoder(activation=activation)
    model = BertMaskedLM(encoder)
    model.build()
    for weight in model.transform_norm.weights + [model.output_bias]:  # non-trivial norm and bias
        weight.assign(np.random.default_rng(0).normal(1.0, 0.3, weight.shape))
    features = packed_batch(["the cat sat on the mat", "we see a dog"])
    features["mask_positions"] = np.array([[2, 5], [1, 3]])
    logits = keras.ops.convert_to_numpy(model(features))
    sequence = keras.ops.convert_to_numpy(encoder(features)["sequence_output"]).astype("float64")
    kernel, bias = (w.astype("float64") for w in model.transform_dense.get_weights())
    gamma, beta = (w.astype("float64") for w in model.transform_norm.get_weights())
    masked = np.take_along_axis(sequence, features["mask_positions"][:, :, None], axis=1)
    hidden = _numpy_gelu(masked @ kernel + bias, approximate=activation == "gelu_approximate")
    mean, variance = hidden.mean(-1, keepdims=True), hidden.var(-1, keepdims=True)
    hidden = (hidden - mean) / np.sqrt(variance + 1e-12) * gamma + beta
    expected = hidden @ encoder.token_embedding.embeddings.numpy().T + model.output_bias.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


# ---------------------------------------------------------------- raw text
def test_predict_text_and_embed_on_raw_text():
    encoder = small_encoder(with_preprocessor=True)
    classifier = BertClassifier(encoder, num_classes=3)
    texts = ["the cat sat on the mat", "we eat", "a big red house in the park", "she read a book", "they ran"]
    # Raw text gives what hand-packed ids give.
    expected = keras.ops.convert_to_numpy(classifier(packed_batch(texts)))
    np.testing.assert_allclose(classifier.predict_text(texts), expected, atol=1e-5)
    pairs = (["the cat", "we"], ["sat on the mat", "eat"])
    expected_pairs = keras.ops.convert_to_numpy(classifier(packed_batch(list(zip(*pairs)))))
    np.testing.assert_allclose(classifier.predict_text(pairs), expected_pairs, atol=1e-5)
    # embed: mean of the sequence output over real tokens, L2-normalized, whatever the batching.
    features = packed_batch(texts)
    sequence = keras.ops.convert_to_numpy(encoder(features)["sequence_output"])
    mask = features["padding_mask"][:, :, None]
    mean = (sequence * mask).sum(1) / mask.sum(1)
    embeddings = encoder.embed(texts, batch_size=2)
    assert embeddings.shape == (5, 64)
    np.testing.assert_allclose(embeddings, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(encoder.embed(texts, normalize=False), mean, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(texts), embeddings, atol=1e-5)


def test_raw_text_errors():
    encoder = small_encoder(with_preprocessor=True)
    with pytest.raises(ValueError, match="no preprocessor"):
        small_encoder().embed(["the cat"])
    with pytest.raises(ValueError, match="no preprocessor"):
        BertClassifier(small_encoder(), num_classes=2).predict_text(["the cat"])
    with pytest.raises(ValueError, match="empty"):
        encoder.embed([])
    with pytest.raises(ValueError, match="wrap a single text in a list"):
        encoder.embed("the cat sat")
    classifier = BertClassifier(encoder, num_classes=2)
    with pytest.raises(ValueError, match="empty"):
        classifier.predict_text([])
    with pytest.raises(ValueError, match="wrap a single text in a list"):
        classifier.predict_text("the cat sat")


# ---------------------------------------------------------------- padding-free inference
@pytest.mark.parametrize("jit_compile", [True, False])
def test_encode_skips_padding_and_equals_the_forward_pass_at_real_tokens(jit_compile):
    encoder = small_encoder(sequence_length=16)
    texts = ["the cat sat on the mat", ("we see a dog", "he ran in the park"), "we eat", "a big red house"]
    features = packed_batch(texts, length=16)
    mask = features["padding_mask"]
    # Padding holds arbitrary ids: only the mask may hide them.
    features["token_ids"] = np.where(mask, features["token_ids"],
                                     np.random.default_rng(0).integers(5, len(VOCABULARY), mask.shape))
    full = numpy_outputs(encoder(features))
    for bucket in (1, 8, 128):  # no filler rows; some; the whole grid
        packed = numpy_outputs(encoder.encode(features, jit_compile=jit_compile, bucket=bucket))
        np.testing.assert_allclose(packed["sequence_output"][mask], full["sequence_output"][mask], atol=1e-5)
        assert np.all(packed["sequence_output"][~mask] == 0)
        np.testing.assert_allclose(packed["pooled_output"], full["pooled_output"], atol=1e-5)
    # A batch without padding is the forward pass everywhere.
    no_padding = {key: value[:, :4] for key, value in features.items()}
    assert no_padding["padding_mask"].all()
    np.testing.assert_allclose(numpy_outputs(encoder.encode(no_padding))["sequence_output"],
                               numpy_outputs(encoder(no_padding))["sequence_output"], atol=1e-5)
    with pytest.raises(ValueError, match="bucket"):
        encoder.encode(features, bucket=0)


def test_encode_cuts_the_grid_after_the_last_real_token(monkeypatch):
    encoder = small_encoder(sequence_length=80)
    texts = ["the cat sat on the mat", "we eat", "a big red house"]
    features = packed_batch(texts, length=80)  # at most 8 real tokens a row, padded to 80
    mask = features["padding_mask"]
    full = numpy_outputs(encoder(features))
    grids = []
    forward = encoder._packed_forward
    monkeypatch.setattr(encoder, "_packed_forward",
                        lambda token_ids, *rest: grids.append(tuple(token_ids.shape)) or forward(token_ids, *rest))
    packed = numpy_outputs(encoder.encode(features, jit_compile=False))
    assert grids == [(3, 32)]  # the last real column is under 32: the attention ran on 3 x 32
    assert packed["sequence_output"].shape == full["sequence_output"].shape
    np.testing.assert_allclose(packed["sequence_output"][mask], full["sequence_output"][mask], atol=1e-5)
    assert np.all(packed["sequence_output"][~mask] == 0)
    np.testing.assert_allclose(packed["pooled_output"], full["pooled_output"], atol=1e-5)
    # A real token in the last column keeps the whole grid.
    features["padding_mask"][0, -1] = True
    encoder._untracked.packed_forward.clear()  # a fresh function traces the concrete shape
    encoder.encode(features, jit_compile=False)
    assert grids[-1] == (3, 80)


def test_encode_refuses_sequences_longer_than_the_position_table():
    encoder = small_encoder(sequence_length=16)
    features = {"token_ids": np.full((2, 20), CLS), "padding_mask": np.ones((2, 20), bool)}
    # Under XLA the position lookup would be clamped silently: the check comes first.
    for jit_compile in (True, False):
        with pytest.raises(ValueError, match="20 tokens, more than this encoder's max_sequence_length=16"):
            encoder.encode(features, jit_compile=jit_compile)
    with pytest.raises(ValueError, match="max_sequence_length=16"):
        encoder(features)


def test_embeddings_are_float32_means_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        encoder = small_encoder(with_preprocessor=True, sequence_length=512, max_sequence_length=512)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # 301 real tokens: a bfloat16 sum of the mask counts them as 300.
    length = 301
    features = {"token_ids": np.full((1, 512), word_ids("cat")[0]),
                "padding_mask": np.arange(512)[None, :] < length}
    sequence = keras.ops.convert_to_numpy(encoder(features)["sequence_output"]).astype("float64")
    expected = sequence[0, :length].mean(0)
    pooled = keras.ops.convert_to_numpy(encoder.embed_features(features, normalize=False))
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(pooled[0], expected, rtol=1e-5, atol=1e-6)
    assert encoder.embed(["the cat sat"]).dtype == np.float32


def test_masked_lm_applies_its_dropout_in_training_only():
    encoder = small_encoder()
    inputs = {**packed_batch(["the cat sat on the mat", "we eat"]), "mask_positions": np.array([[1, 2], [1, 2]])}
    without = BertMaskedLM(encoder, dropout=0.0)
    with_dropout = BertMaskedLM(encoder, dropout=0.5)
    without.build()
    with_dropout.build()
    with_dropout.set_weights(without.get_weights())  # the same encoder; the same head weights too
    inference = keras.ops.convert_to_numpy(with_dropout(inputs, training=False))
    np.testing.assert_allclose(inference, keras.ops.convert_to_numpy(without(inputs, training=False)), atol=1e-6)
    # In training, dropout changes the logits; dropout=0 leaves them as at inference.
    assert not np.allclose(keras.ops.convert_to_numpy(with_dropout(inputs, training=True)), inference, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(without(inputs, training=True)),
                               keras.ops.convert_to_numpy(without(inputs, training=False)), atol=1e-6)


def test_embed_rejects_a_zero_batch_size():
    with pytest.raises(ValueError, match="batch_size=0"):
        small_encoder(with_preprocessor=True).embed(["the cat"], batch_size=0)
