"""Seq2seq: masks, loss, cached against uncached decoding, beam search against brute force, data, saving."""

import itertools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_cli, run_python
from tfzoo.generation.beam_search import beam_search, length_normalizer
from tfzoo.models import SEQ2SEQ_PRESETS, LabelSmoothedCrossEntropy, MaskedAccuracy, Seq2SeqTransformer

VOCABULARY = 24  # 0 pad, 1 unknown, 2 start, 3 end, 4..23 "words"
ENGLISH = ["the cat sleeps", "the dog runs", "a red house", "the big tree", "my small dog", "a blue car",
           "the cat runs", "my red car", "a big house", "the small cat"]
SPANISH = ["el gato duerme", "el perro corre", "una casa roja", "el árbol grande", "mi perro pequeño",
           "un coche azul", "el gato corre", "mi coche rojo", "una casa grande", "el gato pequeño"]


def reversal_batch(count, seed=0, max_length=8):
    """Random "sentences" of ids 4..23 and their reversal, as model inputs and labels."""
    generator = np.random.default_rng(seed)
    width = max_length + 1
    source = np.zeros((count, width), "int32")
    decoder = np.zeros((count, width), "int32")
    labels = np.zeros((count, width), "int32")
    for row, length in enumerate(generator.integers(2, max_length + 1, count)):
        words = generator.integers(4, VOCABULARY, length)
        source[row, :length], source[row, length] = words, 3
        target = list(words[::-1]) + [3]
        labels[row, : length + 1] = target
        decoder[row, 0], decoder[row, 1 : length + 1] = 2, target[:-1]
    return {"encoder_token_ids": source, "decoder_token_ids": decoder}, labels


@pytest.fixture(scope="module")
def trained_model():
    """A tiny model taught to reverse sequences: good, not perfect, so decoding choices matter."""
    keras.utils.set_random_seed(1)
    model = Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=VOCABULARY, max_sequence_length=32)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    inputs, labels = reversal_batch(1024)
    model.fit(inputs, labels, batch_size=64, epochs=8, verbose=0)
    return model


def sources(lengths, seed=3):
    generator = np.random.default_rng(seed)
    return [generator.integers(4, VOCABULARY, n).tolist() for n in lengths]


# --------------------------------------------------------------------------- the model
def test_presets_config_round_trip_and_the_base_model_size():
    model = Seq2SeqTransformer.from_preset("seq2seq_test", target_vocabulary_size=300, tie_output_embeddings=False)
    restored = Seq2SeqTransformer.from_config(model.get_config())
    assert restored.get_config() == model.get_config()
    assert set(SEQ2SEQ_PRESETS) >= {"seq2seq_test", "seq2seq_tiny", "transformer_base"}
    base = Seq2SeqTransformer.from_preset("transformer_base")
    base.build()
    # The paper's base model: 65M parameters with its 37k shared vocabulary (we count 63M:
    # sinusoidal positions have no weights, embeddings are shared and tied).
    assert 60e6 < base.count_params() < 66e6
    with pytest.raises(ValueError, match="Unknown seq2seq preset 'huge'"):
        Seq2SeqTransformer.from_preset("huge")


def test_shared_and_separate_vocabularies_and_tied_embeddings():
    def embedding_shapes(model):
        model.build()
        return sorted(tuple(w.shape) for w in model.weights if "embedding" in w.path or "output_dense" in w.path)

    shared = Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=50)
    assert embedding_shapes(shared) == [(50, 64)]  # one table: source, target and output
    separate = Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=50, target_vocabulary_size=70)
    assert embedding_shapes(separate) == [(50, 64), (70, 64)]
    untied = Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=50, target_vocabulary_size=70,
                                            tie_output_embeddings=False)
    assert embedding_shapes(untied) == [(50, 64), (64, 70), (70,), (70, 64)]
    inputs = {"encoder_token_ids": np.ones((2, 5), "int32"), "decoder_token_ids": np.ones((2, 4), "int32")}
    for model, size in ((shared, 50), (separate, 70), (untied, 70)):
        assert tuple(model(inputs).shape) == (2, 4, size)
    with pytest.raises(ValueError, match="vocabulary_size=50, target_vocabulary_size=70"):
        Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=50, target_vocabulary_size=70,
                                       share_embeddings=True)


@pytest.mark.parametrize("normalize_first", [True, False])
def test_padding_is_ignored_on_both_sides_and_the_decoder_is_causal(normalize_first):
    model = Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=VOCABULARY,
                                           normalize_first=normalize_first)
    generator = np.random.default_rng(0)
    encoder_ids = generator.integers(4, VOCABULARY, (3, 9)).astype("int32")
    decoder_ids = generator.integers(4, VOCABULARY, (3, 7)).astype("int32")
    encoder_mask = np.arange(9)[None, :] < np.array([[9], [5], [2]])
    decoder_mask = np.arange(7)[None, :] < np.array([[7], [4], [1]])
    inputs = {"encoder_token_ids": encoder_ids, "encoder_padding_mask": encoder_mask,
              "decoder_token_ids": decoder_ids, "decoder_padding_mask": decoder_mask}
    reference = model(inputs).numpy()

    # Other tokens under the padding, on either side: the real positions see no change.
    changed = dict(inputs)
    changed["encoder_token_ids"] = np.where(encoder_mask, encoder_ids, 17)
    changed["decoder_token_ids"] = np.where(decoder_mask, decoder_ids, 11)
    outputs = model(changed).numpy()
    np.testing.assert_allclose(outputs[decoder_mask], reference[decoder_mask], atol=1e-5)
    # ... while a real source token does change them.
    changed["encoder_token_ids"] = encoder_ids.copy()
    changed["encoder_token_ids"][0, 0] = (encoder_ids[0, 0] + 1 - 4) % (VOCABULARY - 4) + 4
    assert np.abs(model(changed).numpy()[0] - reference[0]).max() > 1e-4

    # Causal: a later target token never changes an earlier position's logits.
    future = dict(inputs, decoder_padding_mask=np.ones_like(decoder_mask))
    base = model(future).numpy()
    future["decoder_token_ids"] = decoder_ids.copy()
    future["decoder_token_ids"][:, 4:] = 5
    np.testing.assert_allclose(model(future).numpy()[:, :4], base[:, :4], atol=1e-5)


def test_label_smoothed_loss_matches_the_formula_and_ignores_padding():
    generator = np.random.default_rng(0)
    logits = generator.normal(size=(2, 5, 7)).astype("float32")
    labels = np.array([[4, 5, 6, 3, 0], [1, 3, 0, 0, 0]])
    smoothing = 0.1
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    true = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    per_token = -(1 - smoothing) * true - smoothing * log_probs.mean(-1)
    real = labels != 0
    expected = per_token[real].mean()
    loss = LabelSmoothedCrossEntropy(smoothing)
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    # Without smoothing: Keras' cross-entropy over the real tokens only.
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels[real], logits[real])
    np.testing.assert_allclose(float(LabelSmoothedCrossEntropy(0.0)(labels, logits)), float(plain), rtol=1e-5)
    # And the same as Keras' smoothed categorical cross-entropy on one-hot labels.
    one_hot = np.eye(7)[labels[real]]
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)(one_hot, logits[real])
    np.testing.assert_allclose(float(loss(labels, logits)), float(smoothed), rtol=1e-5)
    # Padding logits do not matter.
    noisy = logits.copy()
    noisy[~real] = 100.0
    np.testing.assert_allclose(float(loss(labels, noisy)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        LabelSmoothedCrossEntropy(1.0)


def test_token_accuracy_ignores_padding():
    metric = MaskedAccuracy()
    labels = np.array([[4, 5, 3, 0, 0]])
    predictions = np.eye(6)[[[4, 1, 3, 0, 0]]]  # 2 of 3 real tokens right; padding "right" too
    metric.update_state(labels, predictions)
    assert float(metric.result()) == pytest.approx(2 / 3)


def test_fit_learns_to_reverse(trained_model):
    inputs, labels = reversal_batch(256, seed=9)
    loss, accuracy = trained_model.evaluate(inputs, labels, verbose=0)
    assert accuracy > 0.75, accuracy  # a fresh model: 1 / 20
    batch = sources([3, 4, 3, 5])
    generated = trained_model.generate(batch, max_new_tokens=12)
    assert sum(tokens == source[::-1] for tokens, source in zip(generated, batch)) >= 2


# --------------------------------------------------------------------------- decoding
def test_cached_equals_uncached_greedy_and_beam_for_a_batch_of_different_lengths(trained_model):
    batch = sources([2, 7, 4, 8, 5])
    for options in (dict(), dict(beam_width=4, length_penalty=1.0)):
        cached = trained_model.generate(batch, max_new_tokens=12, **options)
        uncached = trained_model.generate(batch, max_new_tokens=12, use_cache=False, **options)
        assert cached == uncached, options
        assert any(len(tokens) > 4 for tokens in cached)  # not a trivially short comparison
    # Each source alone gives what it gave in the padded batch.
    assert [trained_model.generate([s], max_new_tokens=12, **options)[0] for s in batch] == cached


@pytest.mark.slow
def test_xla_compiled_decoding_gives_the_same_tokens(trained_model):
    batch = sources([3, 6])
    for options in (dict(), dict(beam_width=2)):
        assert (trained_model.generate(batch, max_new_tokens=10, jit_compile=True, **options)
                == trained_model.generate(batch, max_new_tokens=10, **options))


def test_beam_width_one_is_greedy(trained_model):
    batch = sources([2, 5, 8, 6], seed=5)
    greedy = trained_model.generate(batch, max_new_tokens=12)
    assert trained_model.generate(batch, max_new_tokens=12, beam_width=1, length_penalty=0.0) == greedy
    # Through beam_search itself (the path beam_width > 1 takes), with one beam.
    padded = np.zeros((len(batch), 9), "int32")
    for row, ids in enumerate(batch):
        padded[row, : len(ids) + 1] = ids + [3]
    mask = padded != 0
    step = trained_model.cached_step(mask, trained_model.cross_attention_caches(trained_model.encode(padded, mask)))
    tokens, lengths, _ = beam_search(step, trained_model.empty_cache(len(batch), 16), tf.fill([len(batch)], 2),
                                     end_token_id=3, beam_width=1, max_new_tokens=12, capacity=16)
    assert [tokens[row, 0, : lengths[row, 0]].numpy().tolist() for row in range(len(batch))] == greedy


def sequence_log_probabilities(model, source, targets):
    """Sum of log P(target[i] | source, target[:i]) per target, from one teacher-forced forward pass."""
    width = max(len(target) for target in targets)
    decoder = np.zeros((len(targets), width), "int32")
    for row, target in enumerate(targets):
        decoder[row, : len(target)] = [2] + list(target[:-1])
    logits = model({"encoder_token_ids": np.array([source] * len(targets), "int32"),
                    "decoder_token_ids": decoder}).numpy()
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # (targets, width, vocab)
    return [sum(log_probs[row, i, token] for i, token in enumerate(target)) for row, target in enumerate(targets)]


@pytest.mark.parametrize("length_penalty", [0.0, 0.6])
def test_a_wide_beam_finds_the_brute_force_best_sequence(length_penalty):
    # A random 5-token model, targets of at most 3 tokens: 85 candidates in all.
    keras.utils.set_random_seed(4)
    model = Seq2SeqTransformer(vocabulary_size=5, num_encoder_layers=1, num_decoder_layers=2, num_heads=2,
                               hidden_dim=16, intermediate_dim=32, max_sequence_length=8, dropout=0.0)
    source = [4, 1, 4, 3]
    max_new_tokens, end = 3, 3
    candidates = []
    for length in range(1, max_new_tokens + 1):
        for words in itertools.product([t for t in range(5) if t != end], repeat=length - 1):
            candidates.append(list(words) + [end])  # ends with the end token
    candidates += [list(words) for words in itertools.product([t for t in range(5) if t != end], repeat=3)]
    log_probabilities = sequence_log_probabilities(model, source, candidates)
    scores = [p / float(length_normalizer(len(c), length_penalty)) for p, c in zip(log_probabilities, candidates)]
    best = candidates[int(np.argmax(scores))]

    encoder_ids = np.array([source], "int32")
    mask = np.ones_like(encoder_ids, bool)
    width = 100  # more than the 16 x 5 candidates of the last step: the search is exhaustive
    encoded = model.encode(np.repeat(encoder_ids, width, 0), np.repeat(mask, width, 0))
    step = model.cached_step(np.repeat(mask, width, 0), model.cross_attention_caches(encoded))
    tokens, lengths, beam_scores = beam_search(step, model.empty_cache(width, 8), tf.constant([2]), end_token_id=end,
                                               beam_width=width, max_new_tokens=3, capacity=4,
                                               length_penalty=length_penalty)
    found = tokens[0, 0, : lengths[0, 0]].numpy().tolist()
    assert found == [t for t in best if t != end]
    np.testing.assert_allclose(float(beam_scores[0, 0]), max(scores), rtol=1e-5)
    # The k best of the beam are the k best of the brute force, in order.
    np.testing.assert_allclose(beam_scores[0, :10].numpy(), sorted(scores, reverse=True)[:10], rtol=1e-5)
    # A narrow beam finds a real candidate, never a better one than the exhaustive search.
    narrow_step = model.cached_step(mask, model.cross_attention_caches(model.encode(encoder_ids, mask)))
    tokens, lengths, narrow = beam_search(narrow_step, model.empty_cache(2, 8), tf.constant([2]), end_token_id=end,
                                          beam_width=2, max_new_tokens=3, capacity=4, length_penalty=length_penalty)
    assert float(narrow[0, 0]) <= max(scores) + 1e-5
    assert min(abs(float(narrow[0, 0]) - score) for score in scores) < 1e-5


def test_early_stopping_changes_the_work_not_the_result(trained_model):
    batch = sources([3, 6, 8])
    padded = np.zeros((3, 9), "int32")
    for row, ids in enumerate(batch):
        padded[row, : len(ids) + 1] = ids + [3]
    mask = padded != 0
    results = []
    for early_stopping in (True, False):
        tokens, lengths = trained_model.generate_token_ids(padded, mask, 20, 32, beam_width=3, length_penalty=0.6,
                                                          early_stopping=early_stopping)
        results.append((tokens.numpy().tolist(), lengths.numpy().tolist()))
    assert results[0] == results[1]


def test_early_stopping_runs_fewer_steps_when_the_end_token_wins():
    # A decoder that always puts 70% on the end token: every hypothesis that ends at once
    # beats any longer one, so the search is decided after a few steps of the 12 allowed.
    logits = tf.math.log([[0.05, 0.1, 0.15, 0.7]])
    calls = []

    def step(tokens, index, cache):
        calls.append(index)  # eager: the loop body runs in Python, once a step
        return tf.tile(logits, [tf.shape(tokens)[0], 1]), cache

    outputs = {}
    for early_stopping in (True, False):
        calls.clear()
        tokens, lengths, scores = beam_search(step, (), tf.constant([0, 0]), end_token_id=3, beam_width=2,
                                              max_new_tokens=12, capacity=12, early_stopping=early_stopping)
        outputs[early_stopping] = (len(calls), tokens.numpy().tolist(), lengths.numpy().tolist(), scores.numpy())
    (early_steps, *early), (full_steps, *full) = outputs[True], outputs[False]
    assert full_steps == 12 and early_steps < 5, (early_steps, full_steps)
    assert early[:2] == full[:2]
    np.testing.assert_allclose(early[2], full[2])


def test_sampling_is_reproducible_and_top_k_one_is_greedy(trained_model):
    batch = sources([4, 6])
    greedy = trained_model.generate(batch, max_new_tokens=10)
    first = trained_model.generate(batch, max_new_tokens=10, temperature=1.5, seed=3)
    assert first == trained_model.generate(batch, max_new_tokens=10, temperature=1.5, seed=3)
    assert trained_model.generate(batch, max_new_tokens=10, temperature=1.0, top_k=1, seed=1) == greedy


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(sources=[]), "empty"),
        (dict(sources="a string"), "list of source sentences"),
        (dict(sources=[[]]), "Source sentence 0 has no tokens"),
        (dict(sources=[[5] * 40]), "40 tokens .* max_sequence_length=32"),
        (dict(sources=[[5, 99]]), "outside"),
        (dict(sources=[[5, 6]], beam_width=0), "beam_width=0"),
        (dict(sources=[[5, 6]], beam_width=2.5), "beam_width=2.5"),
        (dict(sources=[[5, 6]], beam_width=2, length_penalty=-1.0), "length_penalty=-1.0"),
        (dict(sources=[[5, 6]], beam_width=2, temperature=0.5), "beam_width=2"),
        (dict(sources=[[5, 6]], max_new_tokens=40), "max_new_tokens`=40"),
        (dict(sources=["a sentence"]), "no tokenizer for `sources`"),
        (dict(sources=[[5, 6]], batch_size=0), "batch_size=0"),
    ],
)
def test_generate_rejects_bad_input(trained_model, arguments, message):
    with pytest.raises(ValueError, match=message):
        trained_model.generate(**arguments)


# --------------------------------------------------------------------------- tokenizers and saving
@pytest.fixture(scope="module")
def tokenizers():
    from tfzoo.text import train_sentencepiece_tokenizer

    shared = train_sentencepiece_tokenizer(ENGLISH * 5 + SPANISH * 5, vocabulary_size=60)
    english = train_sentencepiece_tokenizer(ENGLISH * 5, vocabulary_size=40)
    spanish = train_sentencepiece_tokenizer(SPANISH * 5, vocabulary_size=45)
    return shared, english, spanish


@pytest.fixture(scope="module")
def translator(tokenizers):
    """A tiny English -> Spanish model with its own tokenizer per side, that memorized ten pairs."""
    from tfzoo.data import translation_dataset

    _, english, spanish = tokenizers
    keras.utils.set_random_seed(2)
    model = Seq2SeqTransformer.from_preset(
        "seq2seq_test", vocabulary_size=english.vocabulary_size(), target_vocabulary_size=spanish.vocabulary_size(),
        source_tokenizer=english, target_tokenizer=spanish,
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), label_smoothing=0.0)
    data = translation_dataset(list(zip(ENGLISH, SPANISH)), english, spanish, batch_size=5, max_sequence_length=64)
    history = model.fit(data.repeat(), steps_per_epoch=30, epochs=2, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
    return model


def test_string_inputs_save_and_reload_with_separate_tokenizers(translator, tokenizers, tmp_path):
    _, english, spanish = tokenizers
    model = translator
    translations = model.generate(ENGLISH[:4], max_new_tokens=16, beam_width=2)
    assert translations == SPANISH[:4]  # memorized: the strings made it through both tokenizers
    path = str(tmp_path / "translator.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.target_tokenizer.vocabulary_size() == spanish.vocabulary_size()
    assert restored.generate(ENGLISH[:4], max_new_tokens=16, beam_width=2) == translations
    with pytest.raises(ValueError, match="Source sentence 1 is empty"):
        model.generate(["the cat", "  "])


def test_a_tokenizer_that_does_not_match_the_vocabulary_is_refused(tokenizers):
    shared, english, spanish = tokenizers
    with pytest.raises(ValueError, match=f"source tokenizer has {english.vocabulary_size()} tokens .* is 512"):
        Seq2SeqTransformer.from_preset("seq2seq_test", source_tokenizer=english)
    with pytest.raises(ValueError, match=f"target tokenizer has {english.vocabulary_size()} tokens"):
        Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=english.vocabulary_size(),
                                       target_vocabulary_size=spanish.vocabulary_size(), source_tokenizer=english)
    model = Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=shared.vocabulary_size(),
                                           source_tokenizer=shared)
    assert model.target_tokenizer is shared


# --------------------------------------------------------------------------- data
def test_translation_dataset_shifts_targets_and_pads(tokenizers):
    from tfzoo.data import translation_dataset

    shared, _, _ = tokenizers
    data = translation_dataset([("the cat sleeps", "el gato duerme"), ("a red house and a big tree " * 3, "una casa")],
                               shared, batch_size=2, shuffle=False, max_sequence_length=16)
    inputs, labels = next(iter(data))
    source_ids = shared(["the cat sleeps"])[0].numpy().tolist()
    target_ids = shared(["el gato duerme"])[0].numpy().tolist()
    encoder = inputs["encoder_token_ids"].numpy()
    assert encoder[0, : len(source_ids) + 1].tolist() == source_ids + [3]
    assert encoder.shape[1] == 16 and encoder[1, -1] == 3  # truncated, still ends with the end token
    assert inputs["decoder_token_ids"].numpy()[0, : len(target_ids) + 1].tolist() == [2] + target_ids
    assert labels.numpy()[0, : len(target_ids) + 1].tolist() == target_ids + [3]
    np.testing.assert_array_equal(inputs["encoder_padding_mask"].numpy(), encoder != 0)
    with pytest.raises(ValueError, match="Pair 1 has an empty sentence"):
        translation_dataset([("a", "b"), ("", "c")], shared)


def test_po_catalog_parsing(tmp_path):
    from tfzoo.data import read_po_file

    path = tmp_path / "django.po"
    path.write_text(
        'msgid ""\nmsgstr ""\n"Language: es\\n"\n\n'
        '#: views.py:1\nmsgid "Save"\nmsgstr "Guardar"\n\n'
        '#, fuzzy\nmsgid "Delete"\nmsgstr "Borrar"\n\n'
        'msgid "%(count)s item"\nmsgid_plural "%(count)s items"\nmsgstr[0] "%(count)s elemento"\n'
        'msgstr[1] "%(count)s elementos"\n\n'
        'msgid ""\n"Say \\"hi\\" "\n"twice"\nmsgstr "Di \\"hola\\" dos veces"\n\n'
        'msgid "Untranslated"\nmsgstr ""\n\n'
        '#~ msgid "Old"\n#~ msgstr "Viejo"\n',
        encoding="utf-8",
    )
    assert read_po_file(str(path)) == [("Save", "Guardar"), ('Say "hi" twice', 'Di "hola" dos veces')]


def test_django_catalogs_give_hundreds_of_real_pairs():
    from tfzoo.data import django_translation_pairs, split_pairs

    pytest.importorskip("django")
    pairs = django_translation_pairs()
    assert len(pairs) > 500
    assert ("Save", "Guardar") in pairs
    train, test = split_pairs(pairs, test_size=100, seed=0)
    assert len(test) == 100 and not set(train) & set(test)
    assert split_pairs(pairs, test_size=100, seed=0) == (train, test)


def test_diatheke_verse_parsing():
    from tfzoo.data.parallel import parse_diatheke_verses

    text = (
        "Genesis 1:1: <w>In</w> <w>the</w> <w>beginning</w>, <w>God</w><w>created</w> it.<milestone type=\"line\"/>\n"
        "A Psalm by David.  Psalms 3:1: <w>Yahweh</w>, how!<milestone type=\"line\"/>\n"
        "1 Kings 2:3: <w>Keep</w> it.\n(engWEB2015eb)\n"
    )
    assert parse_diatheke_verses(text) == {
        "Genesis 1:1": "In the beginning, God created it.",
        "Psalms 3:1": "Yahweh, how!",
        "1 Kings 2:3": "Keep it.",
    }


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_saved_model_translates_in_a_fresh_process(translator, tmp_path):
    from tfzoo.export import audit_saved_model, export_saved_model

    path = export_saved_model(translator, str(tmp_path), "translator")
    code = f"""
import json, sys
import tensorflow as tf
import tensorflow_text  # the tokenizer's ops
loaded = tf.saved_model.load({path!r})
sentences = tf.constant({ENGLISH[:4]!r})
greedy = loaded.signatures["translate"](sentences=sentences)
beam = loaded.signatures["translate_beam"](sentences=sentences)
errors = []
for bad in ([""], ["the cat " * 40]):
    try:
        loaded.signatures["translate"](sentences=tf.constant(bad))
    except tf.errors.InvalidArgumentError as error:
        errors.append(error.message)
print(json.dumps({{"greedy": [t.decode() for t in greedy["translation"].numpy()],
                  "beam": [t.decode() for t in beam["translation"].numpy()], "errors": errors,
                  "foreign": sorted(m for m in sys.modules if m.split(".")[0] in ("tfzoo", "keras_hub"))}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    assert outputs["foreign"] == []
    assert outputs["greedy"] == translator.generate(ENGLISH[:4]) == SPANISH[:4]
    assert outputs["beam"] == translator.generate(ENGLISH[:4], beam_width=4, length_penalty=0.6)
    assert "A sentence is empty" in outputs["errors"][0]
    assert "max_sequence_length=64" in outputs["errors"][1]
    report = audit_saved_model(path)
    assert report["ok"], report
    # The command line on the export: greedy works; the options the export fixed are refused, by name.
    result = run_cli("translate", "--model", path, ENGLISH[0])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{ENGLISH[0]}\t{SPANISH[0]}"
    for option, value in (("--max-new-tokens", "5"), ("--length-penalty", "1.0")):
        result = run_cli("translate", "--model", path, ENGLISH[0], option, value)
        assert result.returncode == 2 and f"{option} does not apply to a SavedModel" in result.stderr, result.stderr


def test_sentence_checks_run_before_the_translation_loop(translator):
    from tests.helpers import assertions_guard_every_loop
    from tfzoo.export.saved_model import Seq2SeqServingModule

    module = Seq2SeqServingModule(translator)
    assert assertions_guard_every_loop(module.translate.get_concrete_function())
    assert assertions_guard_every_loop(module.translate_beam.get_concrete_function())


@pytest.mark.slow
def test_cli_trains_and_translates(tmp_path):
    pytest.importorskip("django")
    run_dir = str(tmp_path / "run")
    result = run_cli("train", "seq2seq", "--quick", "--epochs", "1", "--steps-per-epoch", "10", "--test-size", "16",
                     "--max-sequence-length", "32", "--run-dir", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out BLEU: greedy" in result.stdout
    results = json.loads(open(os.path.join(run_dir, "results.json"), encoding="utf-8").read())
    assert results["test_pairs"] == 16 and "bleu_beam4" in results
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run_dir, "logs", "translations"))
    events.Reload()
    assert {"bleu", "translations"} <= set(events.Tags()["tensors"])
    bleu = [float(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors("bleu")]
    assert bleu and all(0.0 <= value <= 100.0 for value in bleu), bleu
    training = EventAccumulator(os.path.join(run_dir, "logs", "train"))
    training.Reload()
    tags = set(training.Tags()["tensors"])
    assert "epoch_loss" in tags and any("accuracy" in tag for tag in tags), tags
    loss = float(tf.make_ndarray(training.Tensors("epoch_loss")[0].tensor_proto))
    assert np.isfinite(loss) and loss > 0

    result = run_cli("translate", "--model", run_dir, "Save", "Log out", "--beam-width", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split("\t")[0] for line in result.stdout.strip().splitlines()] == ["Save", "Log out"]
    result = run_cli("translate", "--model", run_dir, "Save", "--beam-width", "0")
    assert result.returncode == 2 and "beam_width=0" in result.stderr
    result = run_cli("translate", "--model", run_dir, " ")
    assert result.returncode == 2 and "Source sentence 0 is empty" in result.stderr


@pytest.mark.slow
def test_translation_tutorial_quick_mode(tmp_path):
    import re
    import subprocess
    import sys

    pytest.importorskip("django")
    tutorial = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tutorials",
                            "03_translation_en_es.py")
    result = subprocess.run([sys.executable, tutorial, "--quick", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: cached and uncached greedy decoding give the same translations" in result.stdout
    match = re.search(r"held-out BLEU: greedy ([0-9.]+), beam 4 ([0-9.]+)", result.stdout)
    assert match, result.stdout[-3000:]
    summary = json.loads((tmp_path / "translation_en_es_quick.json").read_text(encoding="utf-8"))
    assert summary["bleu_greedy"] == pytest.approx(float(match.group(1)), abs=0.01)
