"""`tfzoo serve`: TF Serving's REST API over an export root, tested over real HTTP."""

import base64
import json
import time

import numpy as np
import pytest

from tfzoo.serving.client import ServerProcess, request, run_load

PROMPTS = ["Return the number", "If", "This module provides functions"]
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "eating", "food", "bread", "."]
CLASSIFY_TEXTS = ["A man is eating food.", "bread", "a a a man", "food is bread.", "man", "eating . a"]


# ------------------------------------------------------------------ without a server


def test_json_to_tensor_checks_dtype_shape_and_b64():
    import tensorflow as tf

    from tfzoo.serving.server import RequestError, to_tensor

    strings, matrix = tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.int32)
    assert to_tensor(["a", {"b64": base64.b64encode(b"\xff").decode()}], strings, "s").numpy().tolist() == [
        b"a", b"\xff"]
    assert to_tensor([[1, 2], [3, 4]], matrix, "m").numpy().tolist() == [[1, 2], [3, 4]]
    assert to_tensor(5, tf.TensorSpec([], tf.int32), "n").numpy() == 5
    for value, spec, message in [
        (["a", 1], strings, "expects strings"), ("a", strings, "expects shape"), ([[1, 2], [3]], matrix, "ragged"),
        ([["1"]], matrix, "expects DT_INT32"), ([[2 ** 40]], matrix, "out of range"), ([[True]], matrix, "boolean"),
        ([{"b64": "!!"}], strings, "invalid base64"),
    ]:
        with pytest.raises(RequestError, match=message):
            to_tensor(value, spec, "x")


def test_outputs_as_predictions_or_outputs_with_text_or_b64():
    from tfzoo.serving.server import format_outputs

    outputs = {"text": np.array([b"ok", b"\xff\xfe"], dtype=object), "n": np.array([1, 2], np.int32)}
    assert format_outputs(outputs, row_format=True) == {
        "predictions": [{"n": 1, "text": "ok"}, {"n": 2, "text": {"b64": "//4="}}]}
    assert format_outputs(outputs, row_format=False) == {"outputs": {"n": [1, 2], "text": ["ok", {"b64": "//4="}]}}
    assert format_outputs({"n": np.array([1, 2])}, row_format=True) == {"predictions": [1, 2]}
    assert format_outputs({"n": np.array([1, 2])}, row_format=False) == {"outputs": [1, 2]}


# ------------------------------------------------------------------ a real server


def tiny_classifier():
    from tfzoo.models import BertClassifier, BertEncoder
    from tfzoo.text import BertPreprocessor, WordPieceTokenizer

    preprocessor = BertPreprocessor(WordPieceTokenizer(VOCABULARY), sequence_length=16)
    encoder = BertEncoder.from_preset("bert_test", vocabulary_size=len(VOCABULARY), preprocessor=preprocessor)
    classifier = BertClassifier(encoder, num_classes=3)
    classifier.predict_text(CLASSIFY_TEXTS[:1])  # builds it
    return classifier


@pytest.fixture(scope="module")
def server(trained_gpt, tmp_path_factory):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    from tfzoo.export import export_saved_model

    root = str(tmp_path_factory.mktemp("serving"))
    gpt_path = export_saved_model(trained_gpt, root, "gpt", xla=True)  # with the opt-in generate_xla
    classifier = tiny_classifier()
    first = export_saved_model(classifier, root, "classifier", label_names=["x", "y", "z"])
    latest = export_saved_model(classifier, root, "classifier", label_names=["p", "q", "r"])
    started = time.perf_counter()
    with ServerProcess(root, str(tmp_path_factory.mktemp("log") / "serve.log")) as process:
        process.startup_seconds = time.perf_counter() - started
        process.gpt = tf.saved_model.load(gpt_path)
        process.classifiers = {1: tf.saved_model.load(first), 2: tf.saved_model.load(latest)}
        yield process


def predict_url(server, name, version=None):
    return f"{server.url}/v1/models/{name}" + (f"/versions/{version}" if version else "") + ":predict"


@pytest.mark.slow
def test_status_metadata_and_startup(server):
    print(f"server start-up: {server.startup_seconds:.1f} s")
    status, body = request(f"{server.url}/v1/models/classifier")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for version in ("2", "1")]}
    status, body = request(f"{server.url}/v1/models/classifier/versions/1")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]

    status, body = request(f"{server.url}/v1/models/gpt/metadata")
    assert status == 200 and body["model_spec"] == {"name": "gpt", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "generate", "generate_sampled"} <= set(signatures)
    generate = signatures["generate"]
    assert generate["inputs"]["prompts"]["dtype"] == "DT_STRING"
    assert generate["inputs"]["prompts"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert generate["inputs"]["max_new_tokens"]["dtype"] == "DT_INT32"
    assert generate["inputs"]["max_new_tokens"]["tensor_shape"]["dim"] == []
    assert set(generate["outputs"]) == {"text", "token_ids", "lengths"}
    status, body = request(f"{server.url}/v1/models/classifier/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    assert body["metadata"]["signature_def"]["signature_def"]["classify"]["outputs"]["label"]["dtype"] == "DT_STRING"


@pytest.mark.slow
def test_generate_xla_over_http_matches_generate(server):
    # tfzoo serve runs in TensorFlow, which has XLA: the opt-in signature serves as it is.
    request_body = {"inputs": {"prompts": PROMPTS, "max_new_tokens": 12}}
    answers = {}
    for signature in ("generate", "generate_xla"):
        status, body = request(predict_url(server, "gpt"), {"signature_name": signature, **request_body})
        assert status == 200, body
        answers[signature] = body["outputs"]
    assert answers["generate_xla"] == answers["generate"]
    assert any(length > 3 for length in answers["generate"]["lengths"])  # not a trivially empty comparison
    status, body = request(predict_url(server, "gpt"), {
        "signature_name": "generate_xla", "inputs": {"prompts": ["a " * 200], "max_new_tokens": 2}})
    assert status == 400 and "longer than the model" in body["error"], body


@pytest.mark.slow
def test_generate_row_and_columnar_formats_match_the_saved_model(server):
    import tensorflow as tf

    expected = server.gpt.signatures["generate"](prompts=tf.constant(PROMPTS), max_new_tokens=tf.constant(12))
    texts = [text.decode("utf-8") for text in expected["text"].numpy()]
    token_ids, lengths = expected["token_ids"].numpy().tolist(), expected["lengths"].numpy().tolist()
    assert any(length > 3 for length in lengths)  # not a trivially empty comparison

    status, body = request(predict_url(server, "gpt"), {
        "signature_name": "generate", "inputs": {"prompts": PROMPTS, "max_new_tokens": 12}})
    assert status == 200, body
    assert body == {"outputs": {"text": texts, "token_ids": token_ids, "lengths": lengths}}

    # Row format; the scalar max_new_tokens repeats in every instance; a prompt as b64.
    instances = [{"prompts": prompt, "max_new_tokens": 12} for prompt in PROMPTS]
    instances[0]["prompts"] = {"b64": base64.b64encode(PROMPTS[0].encode()).decode()}
    status, body = request(predict_url(server, "gpt", 1), {"signature_name": "generate", "instances": instances})
    assert status == 200, body
    assert body == {"predictions": [{"text": t, "token_ids": i, "lengths": n}
                                    for t, i, n in zip(texts, token_ids, lengths)]}

    # serving_default: one input, one output, so bare values in and out.
    logits = server.gpt.signatures["serving_default"](token_ids=tf.constant([[5, 6, 7, 8]]))["logits"].numpy()
    status, body = request(predict_url(server, "gpt"), {"instances": [[5, 6, 7, 8]]})
    assert status == 200 and np.array_equal(np.array(body["predictions"], np.float32), logits)
    status, body = request(predict_url(server, "gpt"), {"inputs": [[5, 6, 7, 8]]})
    assert status == 200 and np.array_equal(np.array(body["outputs"], np.float32), logits)


def expected_classification(server, version, texts):
    import tensorflow as tf

    out = server.classifiers[version].signatures["classify"](text=tf.constant(texts))
    return [label.decode() for label in out["label"].numpy()], out["probabilities"].numpy()


@pytest.mark.slow
def test_classify_and_latest_version_routing(server):
    labels, probabilities = expected_classification(server, 2, CLASSIFY_TEXTS)
    assert set(labels) <= {"p", "q", "r"}
    for url in (predict_url(server, "classifier"), predict_url(server, "classifier", 2)):
        status, body = request(url, {"signature_name": "classify", "instances": CLASSIFY_TEXTS})
        assert status == 200, body
        assert [p["label"] for p in body["predictions"]] == labels
        assert np.array_equal(np.array([p["probabilities"] for p in body["predictions"]], np.float32), probabilities)
    # Version 1 has the same weights but other label names; serving_default = classify.
    labels_1, _ = expected_classification(server, 1, CLASSIFY_TEXTS)
    status, body = request(predict_url(server, "classifier", 1), {"inputs": {"text": CLASSIFY_TEXTS}})
    assert status == 200 and body["outputs"]["label"] == labels_1 and set(labels_1) <= {"x", "y", "z"}
    status, body = request(predict_url(server, "classifier"), {
        "signature_name": "classify_pair", "instances": [{"first": "a man", "second": "food"}]})
    assert status == 200 and body["predictions"][0]["label"] in {"p", "q", "r"}


BAD_REQUESTS = [
    # (path, body, status, part of the error)
    ("gpt:predict", b"{not json", 400, "JSON Parse error"),
    ("gpt:predict", b"\xff\xfe", 400, "JSON Parse error"),
    ("gpt:predict", [1, 2], 400, "must be a JSON object"),
    ("gpt:predict", {"signature_name": "generate"}, 400, "Missing 'inputs' or 'instances'"),
    ("gpt:predict", {"instances": [], "inputs": []}, 400, "not both"),
    ("gpt:predict", {"instances": []}, 400, "non-empty list"),
    ("nope:predict", {"instances": ["a"]}, 404, "Servable not found for request: Latest(nope)"),
    ("gpt/versions/7:predict", {"instances": ["a"]}, 404, "Specific(gpt, 7)"),
    ("gpt/versions/x:predict", {"instances": ["a"]}, 400, "Version must be a positive integer"),
    ("gpt:predict", {"signature_name": "nope", "instances": [[1]]}, 400, 'signature name: "nope" not found'),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": ["a"]}}, 400, "lacks input(s) max_new_tokens"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": ["a"], "max_new_tokens": 2, "top_k": 1}},
     400, "unknown input(s) top_k"),
    ("gpt:predict", {"signature_name": "generate", "inputs": ["a"]}, 400, "keyed by input name"),
    ("gpt:predict", {"signature_name": "generate", "instances": ["a"]}, 400, "keyed by input name"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": ["a"], "max_new_tokens": "ten"}},
     400, "'max_new_tokens' expects DT_INT32; got a string"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": [3], "max_new_tokens": 2}},
     400, "'prompts' expects strings"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": "a", "max_new_tokens": 2}},
     400, "'prompts' expects shape [-1]"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": ["a"], "max_new_tokens": [2]}},
     400, "'max_new_tokens' expects shape []"),
    ("gpt:predict", {"signature_name": "generate", "instances": [{"prompts": "a", "max_new_tokens": 2},
                                                                 {"prompts": "b", "max_new_tokens": 3}]},
     400, "same value"),
    ("gpt:predict", {"inputs": [1, 2, 3]}, 400, "'token_ids' expects shape [-1, -1]"),
    ("gpt:predict", {"inputs": [[1, 2], [3]]}, 400, "ragged"),
    ("gpt:predict", {"inputs": [[1, 2 ** 40]]}, 400, "out of range"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": [""], "max_new_tokens": 2}},
     400, "A prompt is empty"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": ["a " * 200], "max_new_tokens": 2}},
     400, "longer than the model's maximum length"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": [{"b64": "%%"}], "max_new_tokens": 2}},
     400, "invalid base64"),
    ("gpt:predict", {"instances": ["x" * (1 << 20)]}, 413, "larger than the server's limit"),
    ("gpt:predict", {"signature_name": "generate", "inputs": {"prompts": ["a"] * 65, "max_new_tokens": 2}},
     400, "batch of 65 rows: this server takes at most 64"),
    ("gpt:predict", {"instances": [[1, 2]] * 65}, 400, "Input 'token_ids' has a batch of 65 rows"),
    ("gpt:classify", {"instances": ["a"]}, 400, ":predict only"),
    ("gpt/labels/stable:predict", {"instances": ["a"]}, 404, "labels are not supported"),
    ("gpt/metadata", {"instances": ["a"]}, 405, "Use GET"),
    ("gpt:predict", None, 405, "Use POST"),
    ("nope", None, 404, "Latest(nope)"),
    ("gpt/versions/7", None, 404, "Specific(gpt, 7)"),
    ("gpt/versions/7/metadata", None, 404, "Specific(gpt, 7)"),
]


@pytest.mark.slow
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server):
    for path, body, expected_status, message in BAD_REQUESTS:
        status, answer = request(f"{server.url}/v1/models/{path}", body)
        assert (status, list(answer)) == (expected_status, ["error"]), (path, body, answer)
        assert message in answer["error"], (path, answer)
    status, answer = request(f"{server.url}/v2/whatever")
    assert status == 404 and "error" in answer
    status, answer = request(predict_url(server, "gpt"), {"signature_name": "generate",
                                                          "inputs": {"prompts": ["If"], "max_new_tokens": 3}})
    assert status == 200 and len(answer["outputs"]["text"]) == 1
    assert "Traceback" not in server.output()  # every bad request was handled, none crashed


@pytest.mark.slow
def test_a_thousand_concurrent_requests_are_all_answered_correctly(server):
    # 1,000 classify requests of one or two texts each, from 8 client threads.
    batches = [[a] for a in CLASSIFY_TEXTS] + [[a, b] for a in CLASSIFY_TEXTS for b in CLASSIFY_TEXTS if a != b]
    expected = {}
    for batch in batches:
        labels, probabilities = expected_classification(server, 2, batch)
        expected[json.dumps(batch)] = (labels, probabilities)
    chosen = [batches[i % len(batches)] for i in range(1000)]
    bodies = [{"signature_name": "classify", "instances": batch} for batch in chosen]
    results, latencies, seconds = run_load(predict_url(server, "classifier"), bodies, threads=8)
    print(f"1000 requests / 8 threads: {seconds:.1f} s, {1000 / seconds:.0f} requests/s, "
          f"p50 {np.percentile(latencies, 50) * 1e3:.1f} ms, p99 {np.percentile(latencies, 99) * 1e3:.1f} ms")
    assert all(result is not None and result[0] == 200 for result in results), [
        r for r in results if r is None or r[0] != 200][:3]
    for batch, (_, body) in zip(chosen, results):
        labels, probabilities = expected[json.dumps(batch)]
        assert [p["label"] for p in body["predictions"]] == labels
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], probabilities, atol=1e-6)
    assert seconds < 60


@pytest.mark.slow
def test_concurrent_generate_requests_each_get_their_own_continuation(server):
    # 96 generate requests (1-3 prompts each, different new-token counts) from 8 client
    # threads: every answer equals what the same SavedModel gives in this process.
    import tensorflow as tf

    prompts = ["Return the", "If the", "This module", "Build a", "the value"]
    requests = [(prompts[i % 5: i % 5 + 1 + i % 3], 4 + i % 7) for i in range(96)]
    expected = {}
    for batch, new_tokens in set((tuple(b), n) for b, n in requests):
        outputs = server.gpt.signatures["generate"](prompts=tf.constant(list(batch)),
                                                    max_new_tokens=tf.constant(new_tokens))
        expected[batch, new_tokens] = [text.decode() for text in outputs["text"].numpy()]
    bodies = [{"signature_name": "generate", "inputs": {"prompts": batch, "max_new_tokens": new_tokens}}
              for batch, new_tokens in requests]
    run_load(predict_url(server, "gpt"), bodies[:1], threads=1)  # the server's first call traces the signature
    results, latencies, seconds = run_load(predict_url(server, "gpt"), bodies, threads=8)
    print(f"96 generate requests / 8 threads: {seconds:.1f} s, p50 {np.percentile(latencies, 50) * 1e3:.0f} ms, "
          f"p99 {np.percentile(latencies, 99) * 1e3:.0f} ms")
    assert all(result is not None and result[0] == 200 for result in results), [
        r for r in results if r is None or r[0] != 200][:3]
    for (batch, new_tokens), (_, body) in zip(requests, results):
        assert body["outputs"]["text"] == expected[tuple(batch), new_tokens]
    assert seconds < 120
