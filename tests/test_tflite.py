"""TFLite export, run by ai-edge-litert's interpreter and compared with the Keras models.

The references are independent of the export code: Keras' own forward pass and
`GPT.generate`, and a greedy loop over the `prefill` / `decode` signatures written
here from scratch.
"""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfzoo.export import audit_tflite, check_export, convert_to_tflite, export_tflite, tflite_interpreter
from tfzoo.export.tflite import TFLITE_FILE, TFLITE_INT8_FILE

PROMPTS = ["Return the number", "If", "This module provides functions"]
MAX_NEW_TOKENS = 20


@pytest.fixture(scope="module")
def sentencepiece_gpt():
    """A tiny GPT with a SentencePiece tokenizer, fitted on a repeating token pattern.

    The pattern makes greedy continuations long and varied (the model learns to
    count through the vocabulary), so that comparisons are not trivially equal.
    """
    from tfzoo import GPT
    from tfzoo.data import python_docstrings
    from tfzoo.text import train_sentencepiece_tokenizer

    lines = [line for text in python_docstrings()[:200] for line in text.splitlines() if line.strip()]
    tokenizer = train_sentencepiece_tokenizer(lines, vocabulary_size=300)
    keras.utils.set_random_seed(1)
    model = GPT.from_preset("gpt_test", vocabulary_size=tokenizer.vocabulary_size(), max_sequence_length=64,
                            tokenizer=tokenizer)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    stream = np.tile(np.arange(5, 65), 30)
    windows = stream[: 32 * 33].reshape(32, 33)
    model.fit(windows[:, :-1], windows[:, 1:], epochs=6, batch_size=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def gpt_export(sentencepiece_gpt, tmp_path_factory):
    """The GPT exported once, float32 and int8, into a TF Serving layout folder."""
    root = str(tmp_path_factory.mktemp("savedmodels"))
    path = export_tflite(sentencepiece_gpt, root, "gpt", quantize="int8")
    return root, path


@pytest.fixture(scope="module")
def interpreters(gpt_export):
    _, path = gpt_export
    return (tflite_interpreter(os.path.join(path, TFLITE_FILE)),
            tflite_interpreter(os.path.join(path, TFLITE_INT8_FILE)))


def token_lists(model, prompts):
    return [[int(token) for token in ids] for ids in model.tokenizer(prompts).to_list()]


def generated_ids(outputs):
    """A text signature's `token_ids` rows cut to their `lengths`: lists like `generate`'s."""
    return [row[:length].tolist() for row, length in zip(outputs["token_ids"], outputs["lengths"])]


def token_agreement(got, expected):
    """The fraction of positions (over each pair of rows' common length) where the tokens agree."""
    return float(np.mean([a == b for got_row, want in zip(got, expected) for a, b in zip(got_row, want)]))


@pytest.mark.slow
def test_export_layout_and_signatures(gpt_export, interpreters):
    root, path = gpt_export
    assert path == os.path.join(root, "gpt", "1")
    assert sorted(os.listdir(path)) == sorted(
        ["assets", "fingerprint.pb", "saved_model.pb", "variables", TFLITE_FILE, TFLITE_INT8_FILE]
    )
    signatures = interpreters[0].get_signature_list()
    assert signatures["prefill"] == {"inputs": ["pad_counts", "token_ids"], "outputs": ["cache", "logits"]}
    assert signatures["decode"] == {"inputs": ["cache", "index", "pad_counts", "token_ids"],
                                    "outputs": ["cache", "logits"]}
    assert signatures["generate"] == {"inputs": ["max_new_tokens", "prompts"],
                                      "outputs": ["lengths", "text", "token_ids"]}
    assert signatures["logits"] == {"inputs": ["token_ids"], "outputs": ["logits"]}


@pytest.mark.slow
def test_float32_logits_match_keras(sentencepiece_gpt, interpreters):
    model, interpreter = sentencepiece_gpt, interpreters[0]
    token_ids = np.random.default_rng(0).integers(4, model.vocabulary_size, (3, 17)).astype("int32")
    logits = interpreter.get_signature_runner("logits")(token_ids=token_ids)["logits"]
    np.testing.assert_allclose(logits, model(token_ids), atol=1e-4)

    # prefill and one decode step, against Keras' own prefill / decode_step.
    pad_counts = np.array([0, 5, 16], "int32")
    token_ids[1, :5] = token_ids[2, :16] = 0
    outputs = interpreter.get_signature_runner("prefill")(token_ids=token_ids, pad_counts=pad_counts)
    expected, caches, key_mask = model.prefill(tf.constant(token_ids), tf.constant(pad_counts),
                                               model.max_sequence_length)
    np.testing.assert_allclose(outputs["logits"], expected, atol=1e-4)
    next_ids = np.argmax(outputs["logits"], axis=-1).astype("int32")
    stepped = interpreter.get_signature_runner("decode")(
        token_ids=next_ids, index=np.array(17, "int32"), cache=outputs["cache"], pad_counts=pad_counts)
    expected, _ = model.decode_step(tf.constant(next_ids), 17, caches, key_mask, tf.constant(pad_counts))
    np.testing.assert_allclose(stepped["logits"], expected, atol=1e-4)


def greedy_with_prefill_and_decode(interpreter, prompts, max_new_tokens, stop_token_id):
    """The loop a phone app would run, written independently of tfzoo's helpers."""
    prefill = interpreter.get_signature_runner("prefill")
    decode = interpreter.get_signature_runner("decode")
    length = max(len(ids) for ids in prompts)
    token_ids = np.zeros((len(prompts), length), "int32")
    pad_counts = np.array([length - len(ids) for ids in prompts], "int32")
    for row, ids in enumerate(prompts):
        token_ids[row, pad_counts[row]:] = ids
    outputs = prefill(token_ids=token_ids, pad_counts=pad_counts)
    results, finished = [[] for _ in prompts], [False] * len(prompts)
    for step in range(max_new_tokens):
        next_ids = np.argmax(outputs["logits"], axis=-1).astype("int32")
        for row, token in enumerate(next_ids):
            finished[row] = finished[row] or token == stop_token_id
            if not finished[row]:
                results[row].append(int(token))
        outputs = decode(token_ids=next_ids, index=np.array(length + step, "int32"), cache=outputs["cache"],
                         pad_counts=pad_counts)
    return results


@pytest.mark.slow
def test_greedy_tokens_from_prefill_and_decode_equal_generate(sentencepiece_gpt, interpreters):
    model = sentencepiece_gpt
    prompts = token_lists(model, PROMPTS)
    expected = model.generate(prompts, max_new_tokens=MAX_NEW_TOKENS)
    assert greedy_with_prefill_and_decode(interpreters[0], prompts, MAX_NEW_TOKENS, 3) == expected
    assert sum(len(ids) for ids in expected) > 20 and len({tuple(ids) for ids in expected}) == 3  # not trivial

    from tfzoo.export.tflite import tflite_greedy_generate  # the library's own loop agrees too

    assert tflite_greedy_generate(interpreters[0], prompts, MAX_NEW_TOKENS, stop_token_ids=(3,)) == expected


@pytest.mark.slow
def test_string_to_string_signature_equals_generate(sentencepiece_gpt, interpreters):
    model = sentencepiece_gpt
    generate = interpreters[0].get_signature_runner("generate")
    outputs = generate(prompts=np.array(PROMPTS, dtype=object), max_new_tokens=np.array(MAX_NEW_TOKENS, "int32"))
    texts = [text.decode("utf-8") for text in outputs["text"]]
    assert texts == model.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS)
    assert generated_ids(outputs) == model.generate(token_lists(model, PROMPTS), max_new_tokens=MAX_NEW_TOKENS)
    assert all(len(text) > 5 for text in texts)

    # max_new_tokens is honoured, and 0 gives empty strings.
    short = generate(prompts=np.array(PROMPTS[:1], dtype=object), max_new_tokens=np.array(3, "int32"))
    assert short["lengths"].tolist() == [len(model.generate(token_lists(model, PROMPTS[:1]), max_new_tokens=3)[0])]
    none = generate(prompts=np.array(PROMPTS[:2], dtype=object), max_new_tokens=np.array(0, "int32"))
    assert none["lengths"].tolist() == [0, 0] and none["text"].tolist() == [b"", b""]


@pytest.mark.slow
def test_int8_agrees_with_float_and_is_smaller(sentencepiece_gpt, gpt_export, interpreters):
    model = sentencepiece_gpt
    _, path = gpt_export
    float_size = os.path.getsize(os.path.join(path, TFLITE_FILE))
    int8_size = os.path.getsize(os.path.join(path, TFLITE_INT8_FILE))
    token_ids = np.random.default_rng(1).integers(4, model.vocabulary_size, (8, 32)).astype("int32")
    keras_logits = np.asarray(model(token_ids))
    int8_logits = interpreters[1].get_signature_runner("logits")(token_ids=token_ids)["logits"]
    agreement = float(np.mean(int8_logits.argmax(-1) == keras_logits.argmax(-1)))
    weight_bytes = 4 * model.count_params()
    print(f"\nTFLite GPT: float32 {float_size:,} bytes, int8 {int8_size:,} bytes "
          f"(ratio {int8_size / float_size:.2f}; {weight_bytes:,} bytes of float32 weights); "
          f"int8 argmax agreement {agreement:.3f}, max logit difference {np.abs(int8_logits - keras_logits).max():.3f}")
    assert agreement > 0.8
    # A third of this tiny model's file is its SentencePiece model (~250 kB, not
    # quantizable) and another third the graph of four signatures: the weights shrink
    # 4x, the file less. (Without a tokenizer, see the byte-pair test: ratio < 0.5.)
    assert int8_size < float_size - 0.3 * weight_bytes
    outputs = interpreters[1].get_signature_runner("generate")(
        prompts=np.array(PROMPTS, dtype=object), max_new_tokens=np.array(8, "int32"))
    assert outputs["text"].shape == (3,) and outputs["lengths"].max() > 0


@pytest.mark.slow
def test_audit_lists_only_builtins_and_tensorflow_text_ops(gpt_export, tmp_path):
    _, path = gpt_export
    for name in (TFLITE_FILE, TFLITE_INT8_FILE):
        report = audit_tflite(os.path.join(path, name))
        assert report["ok"] and report["flex"] == [] and report["unknown"] == [], report
        assert report["text"] == ["RaggedTensorToTensor", "TFText>FastSentencepieceTokenize", "TFText>NgramsStringJoin"]
        assert {"WHILE", "FULLY_CONNECTED", "SOFTMAX"} <= set(report["builtin"])
    text, ok = check_export(path)
    assert ok and text.count("OK for TFLite") == 2 and "OK for TF Serving" in text

    # Rename a custom op to a Flex op, and another to an op nobody provides: both are caught.
    content = open(os.path.join(path, TFLITE_FILE), "rb").read()
    content = content.replace(b"TFText>NgramsStringJoin", b"FlexStringJoin_________")
    content = content.replace(b"RaggedTensorToTensor", b"FancyRaggedToTensor9")
    broken = str(tmp_path / "broken.tflite")
    open(broken, "wb").write(content)
    report = audit_tflite(broken)
    assert not report["ok"]
    assert report["flex"] == ["FlexStringJoin_________"] and report["unknown"] == ["FancyRaggedToTensor9"]
    text, ok = check_export(broken)
    assert not ok and "NOT runnable" in text


@pytest.mark.slow
def test_classifier_and_encoder_take_raw_text(tmp_path):
    from tfzoo.models import BertClassifier, BertEncoder
    from tfzoo.text import BertPreprocessor, WordPieceTokenizer

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "eating", "food", "bread", "."]
    preprocessor = BertPreprocessor(WordPieceTokenizer(vocabulary), sequence_length=12)
    encoder = BertEncoder.from_preset("bert_test", vocabulary_size=len(vocabulary), preprocessor=preprocessor)
    classifier = BertClassifier(encoder, num_classes=3)
    texts = ["A man is eating food.", "bread", "a a a man is eating a piece of bread . . . food"]  # last: truncated
    logits = classifier.predict_text(texts)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    path = export_tflite(classifier, str(tmp_path), "classifier", quantize="int8", label_names=["x", "y", "z"])
    interpreter = tflite_interpreter(os.path.join(path, TFLITE_FILE))
    outputs = interpreter.get_signature_runner("classify")(text=np.array(texts, dtype=object))
    np.testing.assert_allclose(outputs["probabilities"], probabilities, atol=1e-4)
    assert outputs["label"].tolist() == [["x", "y", "z"][i].encode() for i in probabilities.argmax(-1)]
    packed = preprocessor(tf.constant(texts))["token_ids"].numpy()  # tokenized outside, as an app might
    from_ids = interpreter.get_signature_runner("classify_token_ids")(token_ids=packed)
    np.testing.assert_allclose(from_ids["probabilities"], probabilities, atol=1e-4)
    int8 = tflite_interpreter(os.path.join(path, TFLITE_INT8_FILE)).get_signature_runner("classify")(
        text=np.array(texts, dtype=object))
    print(f"\nTFLite classifier int8: label agreement {np.mean(int8['label_id'] == outputs['label_id']):.2f}, "
          f"max probability difference {np.abs(int8['probabilities'] - probabilities).max():.4f}")
    assert np.abs(int8["probabilities"] - probabilities).max() < 0.1

    encoder_float = convert_to_tflite(encoder)
    encoder_interpreter = tflite_interpreter(model_content=encoder_float)
    embed = encoder_interpreter.get_signature_runner("embed")
    keras_embedding = encoder.embed(texts)
    np.testing.assert_allclose(embed(text=np.array(texts, dtype=object))["embedding"], keras_embedding, atol=1e-4)
    embed_ids = encoder_interpreter.get_signature_runner("embed_token_ids")
    np.testing.assert_allclose(embed_ids(token_ids=packed)["embedding"], keras_embedding, atol=1e-4)
    encoder_int8 = convert_to_tflite(encoder, quantize="int8")
    int8_embed = tflite_interpreter(model_content=encoder_int8).get_signature_runner("embed")(
        text=np.array(texts, dtype=object))["embedding"]
    cosines = np.sum(int8_embed * keras_embedding, axis=-1)  # both L2-normalized
    print(f"TFLite encoder: float32 {len(encoder_float):,} bytes, int8 {len(encoder_int8):,} bytes; int8 "
          f"embedding cosine to Keras {cosines.min():.6f} (lowest of {len(texts)})")
    assert len(encoder_int8) < len(encoder_float)
    assert cosines.min() > 0.99
    report = audit_tflite(os.path.join(path, TFLITE_FILE))
    assert report["ok"] and report["text"] == ["FastBertNormalize", "FastWordpieceTokenizeWithOffsets",
                                               "RaggedTensorToTensor"]


@pytest.mark.slow
def test_a_byte_pair_gpt_gets_prefill_and_decode_but_no_text_signature(trained_gpt):
    with pytest.raises(ValueError, match="needs a tokenizer with TFLite kernels.*this GPT has GPT2Tokenizer"):
        convert_to_tflite(trained_gpt, text_signature=True)
    float_model, int8_model = convert_to_tflite(trained_gpt), convert_to_tflite(trained_gpt, quantize="int8")
    interpreter = tflite_interpreter(model_content=float_model)
    assert sorted(interpreter.get_signature_list()) == ["decode", "logits", "prefill"]
    prompts = [[5, 6, 7], [20, 21, 22, 23, 24]]
    expected = trained_gpt.generate(prompts, max_new_tokens=10)
    end_token_id = trained_gpt.tokenizer.end_token_id
    assert greedy_with_prefill_and_decode(interpreter, prompts, 10, end_token_id) == expected
    # Without a tokenizer inside, the file is mostly weights (int8: a quarter) plus the graph.
    int8_tokens = greedy_with_prefill_and_decode(tflite_interpreter(model_content=int8_model), prompts, 10,
                                                 end_token_id)
    same = token_agreement(int8_tokens, expected)
    print(f"\nTFLite GPT without tokenizer: float32 {len(float_model):,} bytes, int8 {len(int8_model):,} bytes "
          f"(ratio {len(int8_model) / len(float_model):.2f}); int8 greedy tokens equal to Keras: {same:.2f}")
    assert len(int8_model) < 0.7 * len(float_model)  # 0.3 on gpt_tiny: see benchmarks/bench_tflite.py


def test_bad_exports_are_clear_errors(tmp_path):
    from tests.helpers import tiny_tokenizer
    from tfzoo import GPT
    from tfzoo.models import BertEncoder, BertMaskedLM

    unbuilt = GPT.from_preset("gpt_test", tokenizer=tiny_tokenizer())
    with pytest.raises(ValueError, match="not built"):
        export_tflite(unbuilt, str(tmp_path), "gpt")
    with pytest.raises(ValueError, match="not built"):
        convert_to_tflite(unbuilt)
    masked_lm = BertMaskedLM(BertEncoder.from_preset("bert_test"))
    with pytest.raises(ValueError, match="Cannot export a BertMaskedLM to TFLite"):
        convert_to_tflite(masked_lm)
    with pytest.raises(ValueError, match="Cannot export a Sequential"):
        export_tflite(keras.Sequential([keras.layers.Dense(2)]), str(tmp_path), "dense")
    unbuilt.build()
    with pytest.raises(ValueError, match="quantize=.int4."):
        export_tflite(unbuilt, str(tmp_path), "gpt", quantize="int4")
    with pytest.raises(ValueError, match="text_signature=.yes."):
        convert_to_tflite(unbuilt, text_signature="yes")
    os.makedirs(tmp_path / "gpt" / "3")
    with pytest.raises(ValueError, match="Version 3 of 'gpt' already exists"):
        export_tflite(unbuilt, str(tmp_path), "gpt", version=3)
    with pytest.raises(ValueError, match="No TFLite model at"):
        tflite_interpreter(str(tmp_path / "missing.tflite"))
    with pytest.raises(ValueError, match="No TFLite model at"):
        audit_tflite(str(tmp_path / "missing.tflite"))
    not_a_model = tmp_path / "text.tflite"
    not_a_model.write_bytes(b"hello, not a flatbuffer")
    with pytest.raises(ValueError, match="is not a TFLite model"):
        audit_tflite(str(not_a_model))


@pytest.mark.slow
def test_export_command_writes_tflite_and_checks_it(sentencepiece_gpt, tmp_path):
    from tests.helpers import run_cli

    model_path = str(tmp_path / "gpt.keras")
    sentencepiece_gpt.save(model_path)
    root = str(tmp_path / "savedmodels")
    result = run_cli("export", "--model", model_path, "--format", "tflite", "--export-root", root, "--name", "lm")
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(root, "lm", "1")
    assert os.path.isfile(os.path.join(path, TFLITE_FILE)) and not os.path.exists(os.path.join(path, TFLITE_INT8_FILE))
    assert "OK for TFLite" in result.stdout and "OK for TF Serving" in result.stdout
    check = run_cli("export", "--check", os.path.join(path, TFLITE_FILE))
    assert check.returncode == 0 and "OK for TFLite" in check.stdout
    again = run_cli("export", "--model", model_path, "--format", "tflite", "--export-root", root, "--name", "lm",
                    "--version", "1")
    assert again.returncode == 2 and "Version 1 of 'lm' already exists" in again.stderr
    wrong = run_cli("export", "--model", model_path, "--quantize", "int8", "--export-root", root)
    assert wrong.returncode == 2 and "--quantize int8 applies to --format tflite only" in wrong.stderr
    no_xla = run_cli("export", "--model", model_path, "--format", "tflite", "--xla", "--export-root", root)
    assert no_xla.returncode == 2 and "--xla applies to --format saved_model only" in no_xla.stderr
    shutil.rmtree(root)


@pytest.mark.slow
def test_translator_string_to_string_equals_generate(tmp_path):
    from tfzoo.data import python_docstrings
    from tfzoo.models import Seq2SeqTransformer
    from tfzoo.text import train_sentencepiece_tokenizer

    lines = [line for text in python_docstrings()[:200] for line in text.splitlines() if line.strip()]
    tokenizer = train_sentencepiece_tokenizer(lines, vocabulary_size=300)
    keras.utils.set_random_seed(1)
    model = Seq2SeqTransformer.from_preset("seq2seq_test", vocabulary_size=tokenizer.vocabulary_size(),
                                           max_sequence_length=32, source_tokenizer=tokenizer)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    # Taught to reverse id sequences, so that greedy outputs are long and varied.
    generator = np.random.default_rng(0)
    source = np.zeros((512, 9), "int32")
    decoder = np.zeros((512, 9), "int32")
    labels = np.zeros((512, 9), "int32")
    for row, length in enumerate(generator.integers(2, 9, 512)):
        words = generator.integers(4, 40, length)
        source[row, :length], source[row, length] = words, 3
        labels[row, : length + 1] = list(words[::-1]) + [3]
        decoder[row, 0], decoder[row, 1 : length + 1] = 2, words[::-1]
    model.fit({"encoder_token_ids": source, "decoder_token_ids": decoder}, labels, batch_size=64, epochs=4, verbose=0)

    sources = ["Return the number of items.", "If the argument is a string", "This module"]
    path = str(tmp_path / "translator.tflite")
    with open(path, "wb") as file:
        file.write(convert_to_tflite(model))
    assert audit_tflite(path)["ok"]
    interpreter = tflite_interpreter(path)
    outputs = interpreter.get_signature_runner("translate")(
        sources=np.array(sources, dtype=object), max_new_tokens=np.array(12, "int32"))
    expected_ids = model.generate([[int(t) for t in ids] for ids in tokenizer(sources).to_list()], max_new_tokens=12)
    assert generated_ids(outputs) == expected_ids
    assert [text.decode("utf-8") for text in outputs["text"]] == model.generate(sources, max_new_tokens=12)
    assert sum(len(ids) for ids in expected_ids) > 6

    # Dynamic-range int8: the same signature, smaller, and (on a model this small) mostly
    # the same greedy tokens.
    int8_model = convert_to_tflite(model, quantize="int8")
    int8_outputs = tflite_interpreter(model_content=int8_model).get_signature_runner("translate")(
        sources=np.array(sources, dtype=object), max_new_tokens=np.array(12, "int32"))
    same = token_agreement(generated_ids(int8_outputs), expected_ids)
    print(f"\nTFLite translator: float32 {os.path.getsize(path):,} bytes, int8 {len(int8_model):,} bytes; "
          f"int8 greedy tokens equal to Keras: {same:.2f}")
    assert len(int8_model) < 0.8 * os.path.getsize(path)
    assert same >= 0.6
