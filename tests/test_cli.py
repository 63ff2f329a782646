"""The `tfzoo` command end to end: train, TensorBoard logs, resume after SIGKILL, generate, export, errors."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import h5py
import pytest

from tests.helpers import REPO, run_cli
from tfzoo.training import latest_checkpoint
from tfzoo.training.distribute import resolve_precision

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `tfzoo train gpt --quick` run, shared by the tests that read what it wrote."""
    folder = tmp_path_factory.mktemp("quick")
    run_dir, export_root = str(folder / "run"), str(folder / "savedmodels")
    # --precision auto: float32 here unless the CPU computes bfloat16 (then the whole path,
    # export included, runs under mixed_bfloat16; it was run so on an AVX2 machine too).
    result = run_cli("train", "gpt", "--quick", "--precision", "auto", "--run-dir", run_dir,
                     "--export-root", export_root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, export_root, result.stdout


def test_quick_training_checkpoints_exports_and_generates(quick_run):
    run_dir, export_root, stdout = quick_run
    assert "Python standard library docstrings" in stdout
    assert f"precision {resolve_precision('auto')} (chosen by auto)" in stdout
    # One checkpoint per epoch (5 steps each), named by optimizer step.
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["step_0000005.keras", "step_0000010.keras"]
    assert os.path.isfile(os.path.join(run_dir, "model.keras"))
    assert os.path.isfile(os.path.join(export_root, "gpt", "1", "saved_model.pb"))
    assert "Greedy continuations from the exported SavedModel" in stdout
    assert "Sampled from it (generate_sampled: temperature 0.8, top-p 0.95, seed 0)" in stdout
    assert stdout.count("[Return the]") == 2  # once greedy, once sampled


def test_generate_from_a_run_folder_a_checkpoint_and_a_saved_model(quick_run):
    run_dir, export_root, _ = quick_run
    from_run = run_cli("generate", "--model", run_dir, "If the", "--max-new-tokens", "10")
    from_checkpoint = run_cli("generate", "--model", os.path.join(run_dir, "checkpoints", "step_0000010.keras"),
                              "If the", "--max-new-tokens", "10")
    from_export = run_cli("generate", "--model", os.path.join(export_root, "gpt", "1"), "If the",
                          "--max-new-tokens", "10")
    for result in (from_run, from_checkpoint, from_export):
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.startswith("If the")
    # The final model is the epoch-2 checkpoint, and the export is that model: greedy text agrees.
    assert from_run.stdout == from_checkpoint.stdout == from_export.stdout
    sampling = ("--temperature", "0.9", "--top-k", "20", "--seed", "1")
    sampled = run_cli("generate", "--model", run_dir, "If the", "--max-new-tokens", "10", *sampling)
    # The export samples through its generate_sampled signature (test_export checks its
    # draws against the Keras model's): here, that the command line reaches it.
    sampled_export = run_cli("generate", "--model", os.path.join(export_root, "gpt", "1"), "If the",
                             "--max-new-tokens", "10", *sampling)
    for result in (sampled, sampled_export):
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.startswith("If the") and result.stdout != from_run.stdout


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(url, deadline):
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def test_a_real_tensorboard_serves_loss_perplexity_learning_rate_and_samples(quick_run):
    run_dir, _, _ = quick_run
    port = _free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [tensorboard, "--logdir", os.path.join(run_dir, "logs"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 90
        scalars = {}
        while time.time() < deadline:  # TensorBoard reads the logs in the background
            scalars = _get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", deadline)
            if "epoch_learning_rate" in scalars.get("train", {}):
                break
            time.sleep(1)
        assert {"epoch_loss", "epoch_perplexity", "epoch_learning_rate"} <= set(scalars["train"])
        assert {"epoch_loss", "epoch_perplexity"} <= set(scalars["validation"])
        texts = _get_json(f"http://127.0.0.1:{port}/data/plugin/text/tags", deadline)
        assert "samples" in texts.get("samples", [])
        samples = _get_json(f"http://127.0.0.1:{port}/data/plugin/text/text?run=samples&tag=samples", deadline)
        assert [entry["step"] for entry in samples] == [1, 2]
        assert "Return the" in samples[-1]["text"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def optimizer_steps(keras_file):
    """The optimizer's step counter stored in a .keras file (read without Keras)."""
    with zipfile.ZipFile(keras_file) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        return int(weights["optimizer/vars/0"][()])


def test_training_resumes_mid_epoch_after_sigkill_and_runs_only_the_planned_steps(tmp_path):
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "-m", "tfzoo.cli", "train", "gpt", "--quick", "--epochs", "2",
               "--steps-per-epoch", "200", "--checkpoint-every", "50", "--run-dir", run_dir, "--no-export"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(run_dir, "checkpoints", "step_0000050.keras")
    deadline = time.time() + 300
    try:
        while not os.path.exists(checkpoint):
            assert first.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # mid-epoch 1: no chance to clean up
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))
    _, resumed_from = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert 50 <= resumed_from < 400
    assert not [name for name in os.listdir(os.path.join(run_dir, "checkpoints")) if not name.startswith("step_")
                and not name.startswith(".writing")]

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"(step {resumed_from})" in second.stdout
    assert "Epoch 2/2" in second.stdout
    # Exactly the planned 2 x 200 optimizer steps, not a restart and not an extra partial epoch.
    assert optimizer_steps(os.path.join(run_dir, "model.keras")) == 400
    assert latest_checkpoint(os.path.join(run_dir, "checkpoints"))[1] == 400


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "gpt", "--quick", "--corpus", "/nonexistent/corpus.txt"], "Corpus file not found: '/nonexistent/corpus.txt'"),
        (["train", "gpt", "--quick", "--preset", "gpt_giant"], "Unknown GPT preset 'gpt_giant'"),
        (["train", "gpt", "--quick", "--batch-size", "0"], "must be a positive integer, got 0"),
        (["generate", "--model", "/nonexistent/model.keras", "Hi"], "No model found at '/nonexistent/model.keras'"),
    ],
)
def test_bad_command_lines_exit_non_zero_with_a_clear_message(arguments, message, tmp_path):
    result = run_cli(*arguments, "--run-dir", str(tmp_path)) if arguments[0] == "train" else run_cli(*arguments)
    assert result.returncode == 2  # argparse's status, and tfzoo's for a ValueError
    assert message in result.stderr


def test_empty_corpus_file_and_bad_sampling_arguments(quick_run, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    result = run_cli("train", "gpt", "--quick", "--corpus", str(empty), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and f"Corpus file is empty: '{empty}'" in result.stderr
    run_dir, export_root, _ = quick_run
    result = run_cli("generate", "--model", run_dir, "Hi", "--max-new-tokens", "-1")
    assert result.returncode == 2 and "max_new_tokens=-1" in result.stderr
    result = run_cli("generate", "--model", run_dir, "Hi", "--temperature", "1", "--top-p", "1.5")
    assert result.returncode == 2 and "top_p=1.5" in result.stderr
    result = run_cli("generate", "--model", os.path.join(export_root, "gpt", "1"), "Hi", "--temperature", "-0.5")
    assert result.returncode == 2 and "temperature=-0.5" in result.stderr
    result = run_cli("generate", "--model", os.path.join(export_root, "gpt", "1"), "Hi", "--temperature", "1",
                     "--seed", "-1")
    assert result.returncode == 2 and "seed=-1" in result.stderr  # the signature's seed is an int32 >= 0
