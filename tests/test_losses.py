"""tfzoo's XLA-compiled losses and perplexity against Keras', keras-hub's and the formula."""

import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_python
from tfzoo.training.losses import Perplexity, SparseCrossEntropy, smoothed_token_cross_entropy, token_cross_entropy


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, (4, 7)).astype("int32")
    logits = (3 * rng.standard_normal((4, 7, 50))).astype("float32")
    weights = rng.random((4, 7)).astype("float32")
    return labels, logits, weights


def log_softmax_np(logits):
    logits = logits.astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_token_cross_entropy_is_the_formula(batch):
    labels, logits, _ = batch
    expected = -np.take_along_axis(log_softmax_np(logits), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(token_cross_entropy(labels, logits), expected, rtol=1e-5)


# Zero given as a number is traced as a constant (no passes for smoothing); other numbers
# and tensors take the tensor path: both must give the formula.
@pytest.mark.parametrize("as_tensor", [False, True], ids=["python", "tensor"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_smoothed_cross_entropy_is_the_formula(batch, smoothing, as_tensor):
    labels, logits, _ = batch
    log_probs = log_softmax_np(logits)
    chosen = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    expected = -(1 - smoothing) * chosen - smoothing * log_probs.mean(-1)
    given = tf.constant(smoothing) if as_tensor else smoothing
    np.testing.assert_allclose(smoothed_token_cross_entropy(labels, logits, given), expected, rtol=1e-5)


def test_sparse_cross_entropy_equals_keras_with_weights_and_its_gradient(batch):
    labels, logits, weights = batch
    ours, theirs = SparseCrossEntropy(), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(ours(labels, logits), theirs(labels, logits), rtol=1e-6)
    np.testing.assert_allclose(ours(labels, logits, weights), theirs(labels, logits, weights), rtol=1e-6)
    np.testing.assert_allclose(ours(labels[..., None], logits), theirs(labels, logits), rtol=1e-6)
    variable = tf.Variable(logits)
    gradients = []
    for loss in (ours, theirs):
        with tf.GradientTape() as tape:
            value = loss(labels, variable, weights)
        gradients.append(tape.gradient(value, variable))
    np.testing.assert_allclose(gradients[0], gradients[1], atol=1e-7)
    assert SparseCrossEntropy.from_config(ours.get_config()).get_config() == ours.get_config()


@pytest.mark.parametrize("bad_label, message", [(50, "not below the vocabulary size"), (-1, "negative")])
def test_labels_outside_the_vocabulary_are_refused(batch, bad_label, message):
    labels, logits, _ = batch
    labels = labels.copy()
    labels[1, 2] = bad_label  # XLA's gather would clamp it silently
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        SparseCrossEntropy()(labels, logits)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        Perplexity().update_state(labels, logits)


@pytest.mark.parametrize("mask_token_id", [None, 3])
def test_perplexity_equals_keras_hub(batch, mask_token_id):
    labels, logits, weights = batch
    labels = labels.copy()
    labels[0, :3] = 3  # some masked tokens
    ours = Perplexity(mask_token_id=mask_token_id)
    theirs = keras_hub.metrics.Perplexity(from_logits=True, mask_token_id=mask_token_id)
    for metric in (ours, theirs):  # two updates: the running mean must weigh tokens, not batches
        metric.update_state(labels[:1], logits[:1], weights[:1])
        metric.update_state(labels[1:], logits[1:], weights[1:])
    np.testing.assert_allclose(float(ours.result()), float(theirs.result()), rtol=1e-5)
    ours.reset_state()
    ours.update_state(labels, logits)
    theirs.reset_state()
    theirs.update_state(labels, logits)
    np.testing.assert_allclose(float(ours.result()), float(theirs.result()), rtol=1e-5)
    assert Perplexity.from_config(ours.get_config()).get_config() == ours.get_config()


def test_perplexity_takes_trailing_one_labels_and_weights_like_the_loss(batch):
    labels, logits, weights = batch
    flat, trailing = Perplexity(), Perplexity()
    flat.update_state(labels, logits, weights)
    trailing.update_state(labels[..., None], logits, weights[..., None])
    np.testing.assert_allclose(float(trailing.result()), float(flat.result()), rtol=1e-6)
    expected = np.exp(float(SparseCrossEntropy(reduction="sum")(labels, logits, weights)) / weights.sum())
    np.testing.assert_allclose(float(flat.result()), expected, rtol=1e-5)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["python", "tensor"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_the_written_out_gradient_equals_autodiff_of_the_formula(batch, smoothing, as_tensor):
    labels, logits, weights = batch
    variable = tf.Variable(logits)
    given = tf.constant(smoothing) if as_tensor else smoothing
    with tf.GradientTape() as tape:
        ours = tf.reduce_sum(smoothed_token_cross_entropy(labels, variable, given) * weights)
    with tf.GradientTape() as reference_tape:
        log_probs = tf.nn.log_softmax(variable, axis=-1)
        chosen = tf.gather(log_probs, labels, batch_dims=2)
        reference = -(1 - smoothing) * chosen - smoothing * tf.reduce_mean(log_probs, axis=-1)
        reference = tf.reduce_sum(reference * weights)
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours, variable), reference_tape.gradient(reference, variable), atol=1e-6)


def test_without_smoothing_the_loss_skips_the_passes_only_smoothing_needs():
    from tfzoo.training import losses

    labels, logits = tf.zeros((2, 3), tf.int32), tf.zeros((2, 3, 5))

    def op_types(label_smoothing):
        graph = losses._cross_entropy_forward.get_concrete_function(labels, logits, label_smoothing).graph
        return {op.type for op in graph.get_operations()}

    assert "Mean" not in op_types(0.0)  # what `smoothed_token_cross_entropy(..., 0)` traces
    assert "Mean" in op_types(tf.constant(0.0))
    # Zero in any numeric form gives the unsmoothed loss, log(5) on zero logits; a bool is refused.
    for zero in (0, 0.0, np.float32(0.0), np.int64(0)):
        np.testing.assert_allclose(smoothed_token_cross_entropy(labels, logits, zero), np.log(5.0), rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        smoothed_token_cross_entropy(labels, logits, True)


def test_the_gradient_has_no_scatter():
    # Left to autodiff, the label gather's gradient is a segment sum (a scatter): inside a
    # training step compiled whole with XLA it took minutes to compile and seconds a step.
    labels = tf.zeros((2, 3), tf.int32)

    @tf.function
    def gradient(logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = tf.reduce_sum(token_cross_entropy(labels, logits))
        return tape.gradient(loss, logits)

    graph_def = gradient.get_concrete_function(tf.TensorSpec((2, 3, 5), tf.float32)).graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    assert "Exp" in ops  # the written-out gradient is there
    assert not ops & {"UnsortedSegmentSum", "ScatterNd", "TensorScatterAdd"}, sorted(ops)


def test_a_training_step_compiled_with_xla_reports_keras_loss_and_learns():
    from tfzoo import GPT

    model = GPT.from_preset("gpt_test", dropout=0.0)
    model.compile(loss=SparseCrossEntropy(), metrics=[Perplexity()], jit_compile=True)
    tokens = np.random.default_rng(0).integers(0, 512, (4, 33)).astype("int32")
    before = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(tokens[:, 1:], model(tokens[:, :-1]))
    first = model.train_on_batch(tokens[:, :-1], tokens[:, 1:], return_dict=True)  # on the weights before
    np.testing.assert_allclose(first["loss"], float(before), rtol=1e-5)
    np.testing.assert_allclose(first["perplexity"], np.exp(float(before)), rtol=1e-4)
    for _ in range(3):
        last = model.train_on_batch(tokens[:, :-1], tokens[:, 1:], return_dict=True)
    assert last["loss"] < first["loss"]


# Eight copies of the compiled loss run concurrently in one graph, on 40 fresh shapes:
# each shape is a new XLA executable whose first concurrent runs build their YNNPACK
# fusions at the same time. TensorFlow 2.21's builder of a reduction fusion is not
# thread-safe: with TensorFlow's default fusions (XLA_FLAGS=
# --xla_cpu_experimental_ynn_fusion_type=+individual_dot keeps them) this script
# crashed with SIGSEGV in 2 of 3 runs here, as a resumed `tfzoo train gpt` once did in
# its evaluation. With tfzoo's flag it passed 7 runs of 7.
CONCURRENT_LOSSES = """
import tensorflow as tf
from tfzoo.training.losses import token_cross_entropy

@tf.function
def parallel(labels, logits):
    return tf.add_n([tf.reduce_sum(token_cross_entropy(labels, logits * (1.0 + i))) for i in range(8)])

for length in range(64, 104):
    logits = tf.random.normal((8, length, 4096))
    labels = tf.random.uniform((8, length), 0, 4096, tf.int32)
    parallel(labels, logits).numpy()

# The same with a matmul, which tfzoo leaves to YNNPACK.
weights, bias = tf.random.normal((256, 1024)), tf.random.normal((1024,))

@tf.function(jit_compile=True)
def feed_forward(x):
    return tf.nn.gelu(tf.matmul(x, weights) + bias, approximate=True)

@tf.function
def parallel_feed_forward(x):
    return tf.add_n([tf.reduce_sum(feed_forward(x * (1.0 + i))) for i in range(8)])

for rows in range(8, 48):
    parallel_feed_forward(tf.random.normal((rows, 256))).numpy()
print("all shapes ran")
"""


@pytest.mark.slow
def test_concurrent_first_runs_of_the_compiled_loss_do_not_crash():
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", CONCURRENT_LOSSES], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "all shapes ran" in result.stdout


def test_tfzoo_limits_ynn_fusions_but_keeps_a_users_own_setting(monkeypatch):
    import tfzoo

    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/somewhere")
    tfzoo._limit_ynn_fusions_to_dots()
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/somewhere " + tfzoo.YNN_FUSION_FLAG
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    tfzoo._limit_ynn_fusions_to_dots()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    monkeypatch.delenv("XLA_FLAGS")
    tfzoo._limit_ynn_fusions_to_dots()
    assert os.environ["XLA_FLAGS"] == tfzoo.YNN_FUSION_FLAG


# A training step's peak memory over the logits, TensorFlow's fused kernel against
# tfzoo's compiled loss, in one fresh process. Writing 5 to /proc/self/clear_refs resets
# the kernel's high-water mark (VmHWM), so each loss's peak is read over its own steps
# after it has compiled.
LOSS_MEMORY = """
import numpy as np, tensorflow as tf
from tfzoo.training.losses import token_cross_entropy

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

rng = np.random.default_rng(0)
labels = tf.constant(rng.integers(0, 8192, (8, 256)).astype("int32"))
logits = tf.Variable(rng.standard_normal((8, 256, 8192)).astype("float32"))  # 64 MiB

def gradient_sum(loss_function):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_function(labels, logits * 1.0))
        return tf.reduce_sum(tape.gradient(loss, logits))
    return step

for name, loss_function in [("tensorflow", tf.nn.sparse_softmax_cross_entropy_with_logits),
                            ("tfzoo", token_cross_entropy)]:
    step = gradient_sum(loss_function)
    step().numpy()
    open("/proc/self/clear_refs", "w").write("5")
    before = kib("VmRSS")
    for _ in range(3):
        step().numpy()
    print(name, (kib("VmHWM") - before) / 1024)
"""


@pytest.mark.slow
def test_the_compiled_loss_holds_no_extra_copy_of_the_logits():
    # When one compiled function held the loss and its gradient, its outputs handed the
    # gradient new copies of the logits: ~3 logits-sized buffers more than TensorFlow's
    # kernel at the step's peak (+260 MiB for 128 MiB of logits, measured).
    # TensorFlow's default allocator, which maps each step's buffers afresh, so that the
    # high-water mark sees them; tfzoo's pool would keep them resident from the first step.
    # oneDNN off: its CPU allocator (on by default on AVX512-VNNI/BF16 CPUs) pools as well.
    result = run_python(LOSS_MEMORY, env={"TF_CPP_MIN_LOG_LEVEL": "3", "TF_CPU_ALLOCATOR_USE_BFC": "false",
                                          "TF_ENABLE_ONEDNN_OPTS": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    peaks = {name: float(value) for name, value in (line.split() for line in result.stdout.splitlines())}
    logits_mib = 8 * 256 * 8192 * 4 / 2**20
    assert peaks["tensorflow"] > logits_mib / 2, peaks  # the measure sees the step's buffers
    assert peaks["tfzoo"] < peaks["tensorflow"] + logits_mib / 2, peaks
