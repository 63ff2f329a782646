"""Distribution strategies, the MultiWorkerMirroredStrategy fix for Keras `fit`, and mixed precision.

The multi-process tests run tests/distributed_worker.py: every run trains the same tiny
GPT on the same data at the same global batch size, so they can be compared.
"""

import json
import os
import socket
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import REPO, run_python
from tfzoo import GPT
from tfzoo.training import distribute
from tfzoo.training.distribute import (
    cpu_flags, get_strategy, global_batch_size, read_tf_config, resolve_precision, set_precision,
)

WORKER = os.path.join(REPO, "tests", "distributed_worker.py")
PROCESS_TIMEOUT = 240  # seconds; a run takes 15-40 s on 2 busy cores


# ---------------------------------------------------------------------------- in-process
def test_unknown_strategy_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown strategy 'gpu'. Valid names: auto, cpu, mirrored, "
                                         r"multi_worker, tpu"):
        get_strategy("gpu")
    with pytest.raises(ValueError, match="`devices` applies to 'mirrored' and 'tpu' only"):
        get_strategy("cpu", devices=2)
    with pytest.raises(ValueError, match="`devices` must be None, a number of replicas, or a list"):
        get_strategy("mirrored", devices="two")


def test_cpu_and_auto_strategies_on_a_cpu_only_machine():
    assert not tf.config.list_physical_devices("GPU") and not tf.config.list_physical_devices("TPU")
    cpu = get_strategy("cpu")
    assert isinstance(cpu, tf.distribute.OneDeviceStrategy) and cpu.num_replicas_in_sync == 1
    assert "CPU:0" in cpu.extended.worker_devices[0]
    auto = get_strategy("auto")
    assert auto is tf.distribute.get_strategy()  # the default strategy
    assert distribute.describe_strategy(auto) == "default strategy: 1 replica in sync, on the default device"
    assert distribute.describe_strategy(cpu) == "OneDeviceStrategy: 1 replica in sync, on CPU:0"


def test_global_batch_size_is_per_replica_times_replicas():
    assert global_batch_size(8) == 8
    assert global_batch_size(8, types.SimpleNamespace(num_replicas_in_sync=4)) == 32
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            global_batch_size(bad)


def test_split_cpu_after_tensorflow_started_is_a_clear_error():
    tf.constant(1.0)  # the runtime is running now, with one logical CPU
    assert len(distribute.split_cpu(1)) == 1  # already so: fine
    with pytest.raises(RuntimeError, match=r"split_cpu\(2\) came too late: TensorFlow is already running"):
        distribute.split_cpu(2)
    with pytest.raises(ValueError, match="positive integer"):
        distribute.split_cpu(0)


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('["worker"]', "it must be a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', "'cluster' must map job names"),
        ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
        ('{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "needs a 'worker'"),
        ('{"cluster": {"worker": ["h:1", "h:2"]}}', "'task' must be an object"),
        ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}}', "not a job of"),
        ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}', "out of range"),
        ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": "0"}}', "integer"),
    ],
)
def test_multi_worker_needs_a_well_formed_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        get_strategy("multi_worker")  # fails before creating anything
    assert not distribute.multi_worker_fit_enabled()


def test_a_well_formed_tf_config_is_read(monkeypatch):
    config = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert read_tf_config() == config


def test_tpu_path_with_a_stand_in_tpu(monkeypatch):
    """Resolver, connect, initialize, TPUStrategy: the calls and their order, without a TPU."""
    calls = []

    class Resolver:
        def __init__(self, tpu=None):
            calls.append(("resolve", tpu))
            self.tpu = tpu

        def master(self):
            return "" if self.tpu == "local" else f"grpc://{self.tpu}"

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda r: calls.append(("connect", r.tpu)))
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", lambda r: calls.append(("initialize", r.tpu)))
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda r: ("TPUStrategy", r.tpu))

    assert get_strategy("tpu", devices="my-tpu") == ("TPUStrategy", "my-tpu")
    assert calls == [("resolve", "my-tpu"), ("connect", "my-tpu"), ("initialize", "my-tpu")]
    calls.clear()
    assert get_strategy("tpu", devices="local") == ("TPUStrategy", "local")
    assert calls == [("resolve", "local"), ("initialize", "local")]  # a TPU VM's own TPU: no connection
    calls.clear()
    monkeypatch.setenv("TPU_NAME", "pod-tpu")  # "auto" tries a TPU when one is advertised
    assert get_strategy("auto")[0] == "TPUStrategy" and calls[0] == ("resolve", None)


def test_the_multi_worker_fix_is_idempotent_and_undoable():
    from keras.src.backend.tensorflow import trainer

    original_build, original_reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    try:
        distribute.enable_multi_worker_fit()
        patched = trainer.reduce_per_replica
        assert patched is not original_reduce and distribute.multi_worker_fit_enabled()
        distribute.enable_multi_worker_fit()
        assert trainer.reduce_per_replica is patched
        # Other strategies go through Keras' own code.
        assert patched({"loss": tf.constant(2.0)}, tf.distribute.get_strategy(), "auto")["loss"] == 2.0
    finally:
        distribute.disable_multi_worker_fit()
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is original_build
    assert trainer.reduce_per_replica is original_reduce and not distribute.multi_worker_fit_enabled()


@pytest.fixture
def restore_precision():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def test_gpt_trains_under_mixed_bfloat16_with_float32_logits(restore_precision):
    windows = np.tile(np.arange(5, 45), 30)[: 32 * 33].reshape(32, 33)

    def train(precision):
        set_precision(precision)
        keras.utils.set_random_seed(0)
        model = GPT.from_preset("gpt_test")
        model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=[])
        model.build()
        history = model.fit(windows[:, :-1], windows[:, 1:], epochs=3, batch_size=8, shuffle=False, verbose=0)
        return model, history.history["loss"]

    _, reference = train("float32")
    assert keras.config.dtype_policy().name == "float32"
    model, losses = train("mixed_bfloat16")
    assert set_precision("float32") == "mixed_bfloat16"
    assert model.compute_dtype == "bfloat16" and model.variable_dtype == "float32"
    assert {w.dtype for w in model.weights} == {"float32"}
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 1.0, losses
    # The same start and batches: bfloat16 arithmetic ends where float32 does.
    np.testing.assert_allclose(losses, reference, rtol=0.01)  # measured: within 0.03%
    logits = model(windows[:2, :-1])
    assert logits.dtype == "float32" and logits.shape == (2, 32, 512)


@pytest.mark.parametrize("flags, policy", [
    ({"avx2", "fma"}, "float32"),
    ({"avx512f", "avx512_bf16"}, "mixed_bfloat16"),
    ({"amx_tile", "amx_bf16"}, "mixed_bfloat16"),
    (set(), "float32"),
])
def test_auto_precision_is_bfloat16_where_the_cpu_computes_it(restore_precision, flags, policy):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("with a GPU, auto is float32 whatever the CPU")
    assert resolve_precision("auto", flags=flags) == policy
    assert resolve_precision("mixed_float16", flags=flags) == "mixed_float16"  # a name is kept


def test_auto_precision_reads_the_cpu_flags(restore_precision, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 amx_bf16\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
    machine = cpu_flags()  # this machine's own /proc/cpuinfo
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("with a GPU, auto is float32 whatever the CPU")
    set_precision("auto")
    expected = "mixed_bfloat16" if machine & set(distribute.NATIVE_BFLOAT16_CPU_FLAGS) else "float32"
    assert keras.config.dtype_policy().name == expected
    with pytest.raises(ValueError, match="Unknown precision 'bf16'.*auto"):
        set_precision("bf16")


def test_mixed_float16_scales_the_loss_and_bad_names_fail(restore_precision):
    set_precision("mixed_float16")
    model = GPT.from_preset("gpt_test")
    model.compile(optimizer="adam", metrics=[])
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model(np.ones((1, 4), "int32")).dtype == "float32"
    assert model.compute_dtype == "float16" and {w.dtype for w in model.weights} == {"float32"}
    # It trains: float16 matmuls on the CPU are slow but fine for the test preset.
    windows = np.tile(np.arange(5, 45), 30)[: 16 * 33].reshape(16, 33)
    history = model.fit(windows[:, :-1], windows[:, 1:], epochs=4, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses
    with pytest.raises(ValueError, match="Unknown precision 'float16'. Valid precisions: float32, mixed_float16"):
        set_precision("float16")


def test_real_tpu_path_and_late_strategies_fail_clearly():
    """In a fresh process: no TPU here, and strategies that configure TensorFlow come too late."""
    result = run_python(
        """
import json, os
from tfzoo.training.distribute import get_strategy
errors = {}
for key, name, devices in [("tpu", "tpu", None), ("tpu_local", "tpu", "local")]:
    try:
        get_strategy(name, devices)
    except ValueError as error:
        errors[key] = str(error)
import tensorflow as tf
tf.constant(1.0)
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                      "task": {"type": "worker", "index": 0}})
for key, name, devices in [("late_multi_worker", "multi_worker", None), ("late_mirrored", "mirrored", 2)]:
    try:
        get_strategy(name, devices)
    except RuntimeError as error:
        errors[key] = str(error)
print(json.dumps(errors))
""",
        timeout=PROCESS_TIMEOUT, env={"TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert errors["tpu"].startswith("No TPU found: TPUClusterResolver(tpu=None) failed")
    # "local" gets as far as initializing the TPU system, which finds none.
    assert errors["tpu_local"].startswith("No TPU found: initializing the TPU system (tpu='local') failed")
    assert "Collective ops must be configured at program startup" in errors["late_multi_worker"]
    assert "create the 'multi_worker' strategy first thing" in errors["late_multi_worker"]
    assert "split_cpu(2) came too late" in errors["late_mirrored"]


# ---------------------------------------------------------------------------- processes
def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _run(commands, folder, timeout=PROCESS_TIMEOUT):
    """Runs `(name, argv, env)` processes at once; returns `{name: (returncode, log)}`.

    Every process is bounded by `timeout` and killed if still running at the end.
    """
    processes = {}
    try:
        for name, argv, env in commands:
            log = open(folder / f"{name}.log", "w")
            process = subprocess.Popen(
                [sys.executable, WORKER, *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
            )
            processes[name] = (process, log)
        deadline = time.time() + timeout
        for name, (process, _) in processes.items():
            try:
                process.wait(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for process, log in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
            log.close()
    return {name: (process.returncode, (folder / f"{name}.log").read_text())
            for name, (process, _) in processes.items()}


def _run_two_workers(folder, *extra):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    commands = [
        (f"worker{index}", ["--strategy", "multi_worker", "--out", str(folder), *extra],
         {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(2)
    ]
    return _run(commands, folder)


def _load(folder, name):
    with open(folder / f"{name}.json") as file:
        result = json.load(file)
    with np.load(folder / f"{name}.npz") as weights:
        result["weights"] = [weights[f"arr_{i}"] for i in range(len(weights.files))]
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, no strategy, the same data and global batch: what distributed runs should match."""
    folder = tmp_path_factory.mktemp("reference")
    outcome = _run([("reference", ["--strategy", "none", "--out", str(folder), "--name", "reference"], {})], folder)
    assert outcome["reference"][0] == 0, outcome["reference"][1][-3000:]
    return _load(folder, "reference")


def _assert_matches_reference(result, reference):
    assert result["initial_checksum"] == reference["initial_checksum"]  # the same starting weights
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(result["history"][key], reference["history"][key], rtol=1e-4)
    for ours, theirs in zip(result["weights"], reference["weights"], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.slow
def test_two_workers_fit_a_gpt_to_identical_weights(tmp_path, reference):
    outcome = _run_two_workers(tmp_path)
    for name, (returncode, log) in outcome.items():
        assert returncode == 0, f"{name} failed:\n{log[-4000:]}"
    first, second = _load(tmp_path, "worker0"), _load(tmp_path, "worker1")
    assert first["replicas"] == second["replicas"] == 2
    assert first["strategy"].startswith("MultiWorkerMirroredStrategy: 2 replicas in sync")
    # Gradients are all-reduced: both workers hold exactly the same weights, and log the same
    # (globally averaged) metrics.
    for ours, theirs in zip(first["weights"], second["weights"], strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert first["history"] == second["history"]
    losses = first["history"]["loss"]
    assert losses[-1] < losses[0] - 1.0, losses
    # Two workers with half a batch each train like one process with the whole batch.
    _assert_matches_reference(first, reference)


@pytest.mark.slow
@pytest.mark.parametrize(
    "undone, error",
    [
        ("build", "with an unsupported type (<class 'tensorflow.python.distribute.values.PerReplica'>)"),
        ("reduce", "Invalid reduction dimension 0 for input with 0 dimensions"),
    ],
)
def test_without_either_half_of_the_fix_keras_20585_comes_back(tmp_path, undone, error):
    """Each half of enable_multi_worker_fit is needed: Keras alone still fails (keras-team/keras#20585).

    If Keras fixes the bug upstream, this test fails: then the fix can go.
    """
    outcome = _run_two_workers(tmp_path, "--without-fix", undone)
    for name, (returncode, log) in outcome.items():
        assert returncode != 0, f"{name} trained without the fix:\n{log[-2000:]}"
        assert error in log, f"{name} failed otherwise:\n{log[-4000:]}"


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_trains_like_one_device(tmp_path, reference):
    outcome = _run([("mirrored", ["--strategy", "mirrored", "--devices", "2", "--out", str(tmp_path),
                                  "--name", "mirrored"], {})], tmp_path)
    assert outcome["mirrored"][0] == 0, outcome["mirrored"][1][-4000:]
    mirrored = _load(tmp_path, "mirrored")
    assert mirrored["replicas"] == 2
    assert mirrored["strategy"] == "MirroredStrategy: 2 replicas in sync, on CPU:0, CPU:1"
    _assert_matches_reference(mirrored, reference)


# ---------------------------------------------------------------------------- fault tolerance
def _start_cli_workers(folder, run_dir, attempt):
    """Starts `tfzoo train gpt --strategy multi_worker` as 2 worker processes; returns them."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        log = open(folder / f"attempt{attempt}_worker{index}.log", "w")
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        process = subprocess.Popen(
            [sys.executable, "-m", "tfzoo.cli", "train", "gpt", "--quick", "--strategy", "multi_worker",
             "--epochs", "2", "--steps-per-epoch", "60", "--checkpoint-every", "20", "--run-dir", run_dir,
             "--no-export"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": tf_config},
        )
        processes.append((process, log))
    return processes


def _stop(processes):
    for process, log in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_killed_two_worker_run_resumes_when_both_workers_restart(tmp_path):
    from tests.test_cli import optimizer_steps
    from tfzoo.training import latest_checkpoint

    run_dir = str(tmp_path / "run")
    checkpoints = os.path.join(run_dir, "checkpoints")
    first = _start_cli_workers(tmp_path, run_dir, 1)
    try:
        deadline = time.time() + PROCESS_TIMEOUT
        while not os.path.exists(os.path.join(checkpoints, "step_0000020.keras")):
            assert all(p.poll() is None for p, _ in first), "a worker ended before the first checkpoint"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        first[1][0].kill()  # worker 1 dies; worker 0 then waits on it forever, so it goes too
        time.sleep(1)
    finally:
        _stop(first)
    resumed_from = latest_checkpoint(checkpoints)[1]
    assert 20 <= resumed_from < 120 and not os.path.exists(os.path.join(run_dir, "model.keras"))

    second = _start_cli_workers(tmp_path, run_dir, 2)
    try:
        for process, _ in second:
            process.wait(timeout=PROCESS_TIMEOUT)
    finally:
        _stop(second)
    logs = [(tmp_path / f"attempt2_worker{index}.log").read_text() for index in range(2)]
    for (process, _), log in zip(second, logs):
        assert process.returncode == 0, log[-3000:]
        assert f"(step {resumed_from})" in log  # both workers resumed from the chief's checkpoint
    assert optimizer_steps(os.path.join(run_dir, "model.keras")) == 120  # the planned steps, no more
    assert latest_checkpoint(checkpoints)[1] == 120
