"""SavedModel export: runs in a fresh process with TensorFlow and tensorflow-text only."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.helpers import assertions_guard_every_loop, run_python
from tfzoo.export import audit_saved_model, existing_versions, export_gpt, export_saved_model, version_folder

pytestmark = pytest.mark.slow

PROMPTS = ["Return the number", "If", "This module provides functions"]


@pytest.fixture(scope="module")
def exported(trained_gpt, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("savedmodels"))
    return trained_gpt, root, export_gpt(trained_gpt, root, "gpt")


def test_fresh_process_generates_the_same_greedy_tokens(exported):
    model, _, path = exported
    code = f"""
import json, sys
import tensorflow as tf
import tensorflow_text  # the tokenizer's ops
loaded = tf.saved_model.load({path!r})
outputs = loaded.signatures["generate"](prompts=tf.constant({PROMPTS!r}), max_new_tokens=tf.constant(12))
lengths = outputs["lengths"].numpy().tolist()
ids = [row[:n] for row, n in zip(outputs["token_ids"].numpy().tolist(), lengths)]
texts = [t.decode("utf-8") for t in outputs["text"].numpy()]
logits = loaded.signatures["serving_default"](token_ids=tf.constant([[5, 6, 7, 8]]))["logits"]
print(json.dumps({{"ids": ids, "texts": texts, "logits": logits.numpy().tolist(),
                  "foreign": sorted(m for m in sys.modules if m.split(".")[0] in ("tfzoo", "keras_hub"))}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    assert outputs["foreign"] == []  # nothing of ours, nor keras-hub, was imported
    expected_ids = model.generate(PROMPTS, max_new_tokens=12) and [
        model.generate([list(model.tokenizer(p))], max_new_tokens=12)[0] for p in PROMPTS
    ]
    assert outputs["ids"] == expected_ids
    assert outputs["texts"] == model.generate(PROMPTS, max_new_tokens=12)
    assert any(len(ids) > 3 for ids in expected_ids)  # not a trivially empty comparison
    np.testing.assert_allclose(outputs["logits"], model(np.array([[5, 6, 7, 8]])), atol=1e-5)


def test_export_still_serves_after_its_folder_is_moved(exported, tmp_path):
    # A SavedModel is shipped by copying its folder: nothing in it may point back at the
    # place it was written (a tokenizer file, an asset path). The original folder is moved
    # away while the copy is loaded, so that a stale path would fail rather than still work.
    model, root, path = exported
    moved = str(tmp_path / "moved" / "gpt")
    shutil.copytree(os.path.dirname(path), moved)
    moved_version = os.path.join(moved, os.path.basename(path))
    away = root + "_away"
    os.rename(root, away)
    try:
        result = run_python(f"""
import json
import tensorflow as tf
import tensorflow_text  # the tokenizer's ops
loaded = tf.saved_model.load({moved_version!r})
outputs = loaded.signatures["generate"](prompts=tf.constant({PROMPTS!r}), max_new_tokens=tf.constant(12))
print(json.dumps([t.decode("utf-8") for t in outputs["text"].numpy()]))
""")
    finally:
        os.rename(away, root)
    assert result.returncode == 0, result.stderr[-3000:]
    texts = json.loads(result.stdout.strip().splitlines()[-1])
    assert texts == model.generate(PROMPTS, max_new_tokens=12)
    assert all(texts)  # every prompt got text back: not a comparison of empty outputs


def test_prompt_checks_run_before_the_generation_loop(exported):
    # Without the ordering, an over-long prompt sometimes fails in a gather instead ("indices[0,128]
    # = 128 is not in [0, 128)"): the server then answers with that instead of a helpful message.
    from tfzoo.export.saved_model import GPTServingModule

    module = GPTServingModule(exported[0])
    assert assertions_guard_every_loop(module.generate.get_concrete_function())
    assert assertions_guard_every_loop(module.generate_sampled.get_concrete_function())


def test_saved_model_cli_lists_the_signatures(exported):
    _, _, path = exported
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(os.sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    for expected in ("signature_def['generate']", "signature_def['serving_default']", "prompts", "max_new_tokens"):
        assert expected in result.stdout


def test_versions_increment_and_existing_versions_are_never_clobbered(exported, tmp_path):
    model, root, path = exported
    assert path.endswith(os.path.join("gpt", "1"))
    assert existing_versions(root, "gpt") == [1]
    assert version_folder(root, "gpt").endswith(os.path.join("gpt", "2"))
    with pytest.raises(ValueError, match="Version 1 of 'gpt' already exists"):
        export_gpt(model, root, "gpt", version=1)
    marker = os.path.join(path, "marker")
    open(marker, "w").close()
    export_gpt(model, root, "gpt", version=1, overwrite=True)
    assert not os.path.exists(marker)  # replaced as a whole
    with pytest.raises(ValueError, match="version=0"):
        version_folder(root, "gpt", version=0)


def test_export_refuses_a_model_without_tokenizer_or_unbuilt(tmp_path):
    from tests.helpers import tiny_tokenizer
    from tfzoo import GPT

    with pytest.raises(ValueError, match="no tokenizer"):
        export_gpt(GPT.from_preset("gpt_test"), str(tmp_path), "gpt")
    with pytest.raises(ValueError, match="not built"):
        export_gpt(GPT.from_preset("gpt_test", tokenizer=tiny_tokenizer()), str(tmp_path), "gpt")


def test_op_audit_passes_the_gpt_export_and_flags_foreign_and_xla_ops(exported, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    from tfzoo.export import audit_saved_model

    _, _, path = exported
    report = audit_saved_model(path)
    assert report["ok"], report
    assert "RegexSplitWithOffsets" in report["text"] and "While" in report["core"]

    # Rename one op of a copy to something no runtime registers: the audit must catch it.
    broken = str(tmp_path / "broken")
    shutil.copytree(path, broken)
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(broken, "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    function = next(f for f in saved_model.meta_graphs[0].graph_def.library.function
                    if any(node.op == "Softmax" for node in f.node_def))
    next(node for node in function.node_def if node.op == "Softmax").op = "FancySoftmaxV9"
    function.node_def.add(name="xla_node", op="XlaDynamicUpdateSlice")
    with open(os.path.join(broken, "saved_model.pb"), "wb") as file:
        file.write(saved_model.SerializeToString())
    report = audit_saved_model(broken)
    assert not report["ok"]
    assert report["unknown"] == ["FancySoftmaxV9"]
    assert report["xla"] == ["XlaDynamicUpdateSlice"]
    assert report["xla_functions"] == []


def test_op_audit_flags_a_signature_compiled_with_xla(tmp_path):
    # jit_compile=True leaves no Xla* op in the SavedModel, only a function attribute.
    import tensorflow as tf

    from tfzoo.export import audit_saved_model

    for name, jit_compile in (("compiled", True), ("plain", False)):
        module = tf.Module()
        module.softmax = tf.function(lambda x: {"y": tf.nn.softmax(x)}, jit_compile=jit_compile,
                                     input_signature=[tf.TensorSpec([None], tf.float32)])
        tf.saved_model.save(module, str(tmp_path / name), signatures={"serving_default": module.softmax})
    plain, compiled = audit_saved_model(str(tmp_path / "plain")), audit_saved_model(str(tmp_path / "compiled"))
    assert plain["ok"] and plain["xla_functions"] == [] and plain["xla"] == []
    assert not compiled["ok"] and compiled["xla"] == []
    assert compiled["xla_functions"], compiled


def test_export_check_command_exit_codes(exported):
    from tests.helpers import run_cli

    _, _, path = exported
    result = run_cli("export", "--check", path)
    assert result.returncode == 0 and "OK for TF Serving" in result.stdout
    missing = run_cli("export", "--check", "/nonexistent/export")
    assert missing.returncode == 2 and "No SavedModel at '/nonexistent/export'" in missing.stderr


@pytest.fixture(scope="module")
def exported_with_xla(trained_gpt, tmp_path_factory):
    # Through the command line, which also audits the export and must accept the opt-in XLA.
    from tests.helpers import run_cli

    folder = tmp_path_factory.mktemp("xla_export")
    model_path = str(folder / "gpt.keras")
    trained_gpt.save(model_path)
    root = str(folder / "savedmodels")
    result = run_cli("export", "--model", model_path, "--xla", "--export-root", root, "--name", "gpt")
    return trained_gpt, os.path.join(root, "gpt", "1"), result


def test_xla_signature_generates_the_same_tokens_in_a_fresh_process(exported_with_xla):
    model, path, export_run = exported_with_xla
    assert export_run.returncode == 0, export_run.stdout[-2000:] + export_run.stderr[-2000:]
    assert "OK for TF Serving but for generate_xla" in export_run.stdout
    # Two output buckets (12 -> 16 slots, 40 -> 48) and prompts of several lengths, each
    # checked against the non-XLA signature of the same export and against Keras.
    code = f"""
import json
import tensorflow as tf
import tensorflow_text
loaded = tf.saved_model.load({path!r})
results = {{}}
for signature in ("generate", "generate_xla"):
    for new_tokens in (12, 40):
        out = loaded.signatures[signature](prompts=tf.constant({PROMPTS!r}), max_new_tokens=tf.constant(new_tokens))
        lengths = out["lengths"].numpy().tolist()
        results[f"{{signature}} {{new_tokens}}"] = {{
            "ids": [row[:n] for row, n in zip(out["token_ids"].numpy().tolist(), lengths)],
            "texts": [t.decode("utf-8") for t in out["text"].numpy()]}}
try:
    loaded.signatures["generate_xla"](prompts=tf.constant(["word " * 400]), max_new_tokens=tf.constant(4))
    results["too long"] = "no error"
except tf.errors.InvalidArgumentError as error:
    results["too long"] = error.message
print(json.dumps(results))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for new_tokens in (12, 40):
        assert results[f"generate_xla {new_tokens}"] == results[f"generate {new_tokens}"]
        expected = [model.generate([list(model.tokenizer(p))], max_new_tokens=new_tokens)[0] for p in PROMPTS]
        assert results[f"generate_xla {new_tokens}"]["ids"] == expected
    assert any(len(ids) > 3 for ids in results["generate_xla 40"]["ids"])  # not a trivially empty comparison
    assert "A prompt is longer than the model" in results["too long"]  # the export's own check, not a gather's error


def test_op_audit_names_the_xla_signature_and_only_it(exported, exported_with_xla):
    from tests.helpers import run_cli
    from tfzoo.export.audit import only_opt_in_xla

    plain = audit_saved_model(exported[2])
    assert plain["xla_signatures"] == [] and not only_opt_in_xla(plain)
    with_xla = audit_saved_model(exported_with_xla[1])
    assert with_xla["xla_signatures"] == ["generate_xla"], with_xla
    assert with_xla["xla_functions"] and not with_xla["ok"] and only_opt_in_xla(with_xla)
    # `--check` stays strict: an export that needs XLA anywhere is not servable as it is.
    check = run_cli("export", "--check", exported_with_xla[1])
    assert check.returncode == 1 and "OK for TF Serving but for generate_xla" in check.stdout
    with pytest.raises(ValueError, match="xla=True adds a GPT signature"):
        from tfzoo.models import BertEncoder

        export_saved_model(BertEncoder.from_preset("bert_test"), str(exported_with_xla[1]) + "_no", xla=True)


def test_sampled_generate_signature_follows_its_settings(exported):
    model, _, path = exported
    code = f"""
import json
import tensorflow as tf
import tensorflow_text
sampled = tf.saved_model.load({path!r}).signatures["generate_sampled"]
def run(temperature, top_k, top_p, seed):
    out = sampled(prompts=tf.constant({PROMPTS!r}), max_new_tokens=tf.constant(10), temperature=tf.constant(temperature),
                  top_k=tf.constant(top_k), top_p=tf.constant(top_p), seed=tf.constant(seed))
    return [row[:n] for row, n in zip(out["token_ids"].numpy().tolist(), out["lengths"].numpy().tolist())]
print(json.dumps({{"greedy": run(0.0, 0, 1.0, 1), "top1": run(1.0, 1, 1.0, 5), "a": run(2.0, 0, 1.0, 3),
                  "b": run(2.0, 0, 1.0, 3), "c": run(2.0, 0, 1.0, 4)}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    greedy = [model.generate([list(model.tokenizer(p))], max_new_tokens=10)[0] for p in PROMPTS]
    assert runs["greedy"] == greedy  # temperature 0 is greedy
    assert runs["top1"] == greedy  # top-k 1 leaves only the argmax
    assert runs["a"] == runs["b"]  # the same seed gives the same sample
    assert runs["a"] != runs["c"] and runs["a"] != greedy  # a hot temperature really samples
    # The signature's draws are the Keras model's without XLA, whose stateless sampler is
    # TensorFlow's own kernel (under XLA the same seed draws other numbers).
    keras_sampled = model.generate([list(model.tokenizer(p)) for p in PROMPTS], max_new_tokens=10,
                                   temperature=2.0, seed=3, jit_compile=False)
    assert runs["a"] == keras_sampled


def test_bert_encoder_and_classifier_exports_match_keras(tmp_path):
    from tests.helpers import run_python
    from tfzoo.models import BertClassifier, BertEncoder
    from tfzoo.text import BertPreprocessor, WordPieceTokenizer

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "eating", "food", "bread", "."]
    preprocessor = BertPreprocessor(WordPieceTokenizer(vocabulary), sequence_length=16)
    encoder = BertEncoder.from_preset("bert_test", vocabulary_size=len(vocabulary), preprocessor=preprocessor)
    classifier = BertClassifier(encoder, num_classes=3)
    texts = ["A man is eating food.", "bread", "a a a man"]
    embeddings, logits = encoder.embed(texts), classifier.predict_text(texts)
    root = str(tmp_path)
    embed_path = export_saved_model(encoder, root, "encoder")
    classify_path = export_saved_model(classifier, root, "classifier", label_names=["x", "y", "z"])
    with pytest.raises(ValueError, match="2 label names for a classifier of num_classes=3"):
        export_saved_model(classifier, root, "classifier", label_names=["x", "y"])
    code = f"""
import json
import tensorflow as tf
import tensorflow_text
embed = tf.saved_model.load({embed_path!r}).signatures["serving_default"]
classify = tf.saved_model.load({classify_path!r}).signatures["classify"]
out = classify(text=tf.constant({texts!r}))
print(json.dumps({{"embedding": embed(text=tf.constant({texts!r}))["embedding"].numpy().tolist(),
                  "probabilities": out["probabilities"].numpy().tolist(),
                  "label": [label.decode() for label in out["label"].numpy()]}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(outputs["embedding"], embeddings, atol=1e-5)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(outputs["probabilities"], probabilities, atol=1e-5)
    assert outputs["label"] == [["x", "y", "z"][i] for i in probabilities.argmax(-1)]
    assert audit_saved_model(embed_path)["ok"] and audit_saved_model(classify_path)["ok"]


def test_models_config_lists_every_exported_model(exported, tmp_path):
    from tfzoo.export import write_models_config

    _, root, _ = exported
    with open(os.path.join(root, "models.config"), encoding="utf-8") as file:
        text = file.read()
    assert text.startswith(f"# base_path: {os.path.abspath(root)}\nmodel_config_list {{")
    assert f'name: "gpt"\n    base_path: "{os.path.abspath(root)}/gpt"\n    model_platform: "tensorflow"' in text
    os.makedirs(os.path.join(root, "empty_model"))  # no version inside: not servable, not listed
    os.makedirs(os.path.join(root, "other", "3"))
    text = open(write_models_config(root, base_path="/models/")).read()
    assert text.startswith("# base_path: /models\nmodel_config_list {")  # a text-format comment
    assert 'base_path: "/models/gpt"' in text and 'base_path: "/models/other"' in text
    assert "empty_model" not in text and text.count("config {") == 2
    assert open(write_models_config(root)).read() == text  # the next export keeps /models
    shutil.rmtree(os.path.join(root, "other"))
    os.rmdir(os.path.join(root, "empty_model"))
    # The command line sets it (alone here, or with an export).
    from tests.helpers import run_cli

    result = run_cli("export", "--export-root", root, "--serving-base-path", "/srv/models")
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'base_path: "/srv/models/gpt"' in open(os.path.join(root, "models.config")).read()
    write_models_config(root, base_path=os.path.abspath(root))  # as the other tests expect it
