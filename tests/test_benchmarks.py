"""The benchmark scripts still run: each one's quick mode, in a fresh process (slow)."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def run_quick(script, output):
    """`benchmarks/<script> --quick --output <output>` in a fresh process; its finished run."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), "--quick", "--output", str(output)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_bench_bert_quick_mode_writes_ratios_and_targets(tmp_path):
    output = tmp_path / "bench_bert_quick.json"
    result = subprocess.run(
        # TensorFlow's own allocator here (tfzoo's default, pooled, runs everywhere else), and
        # oneDNN off: its allocator, on by default on AVX512-VNNI/BF16 CPUs, pools as well.
        [sys.executable, os.path.join(REPO, "benchmarks", "bench_bert.py"), "--quick", "--no-torch",
         "--cpu-allocator", "default", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    rows = {row["measure"]: row for row in report["results"]}
    xla = rows["function_xla_sequences_per_second"]
    assert set(xla["systems"]) == {"tfzoo", "keras_hub"}  # --no-torch
    assert all(system["median"] > 0 for system in xla["systems"].values())
    ratio = xla["systems"]["tfzoo"]["median"] / xla["systems"]["keras_hub"]["median"]
    assert abs(xla["ratios"]["keras_hub"] - ratio) < 1e-9
    assert [target["measure"] for target in report["targets"]] == [
        "function_xla_sequences_per_second", "encode_xla_sequences_per_second"]
    assert report["targets"][0]["met"] == (ratio >= 1.2)
    encode = rows["encode_xla_sequences_per_second"]
    assert set(encode["systems"]) == {"tfzoo", "keras_hub"} and encode["systems"]["tfzoo"]["median"] > 0
    padded = rows["encode_padded_xla_sequences_per_second"]  # the same batch padded further
    assert set(padded["systems"]) == {"tfzoo", "keras_hub"} and padded["systems"]["tfzoo"]["median"] > 0
    # The matmul peak was measured at the start and at the end; the better one is used.
    peak = report["matmul_peak"]
    assert len(peak["measurements"]) == 2
    assert peak["peak_gflops"] == max(measured["peak_gflops"] for measured in peak["measurements"]) > 0
    # The peak-memory children ran (their own processes) and reported a high-water mark.
    assert all(report["peak_memory"][system]["peak_bytes"] > 0 for system in ("tfzoo", "keras_hub"))
    # --cpu-allocator reached TensorFlow in the run and was handed to its memory children.
    assert report["machine"]["cpu_memory_pooled"] is False
    assert all(report["peak_memory"][system]["cpu_memory_pooled"] is False for system in ("tfzoo", "keras_hub"))


def test_bench_gpt_quick_mode_measures_training_and_generation_and_checks_the_targets(tmp_path):
    output = tmp_path / "bench_gpt_quick.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "bench_gpt.py"), "--quick", "--no-torch", "--no-memory",
         "--output", str(output)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    rows = {row["measure"]: row for row in report["results"]}
    for variant in ("default", "xla", "bf16"):
        row = rows[f"train_tokens_per_second_{variant}"]
        assert set(row["systems"]) == {"tfzoo", "keras_hub"}  # --no-torch
        assert all(system["median"] > 0 for system in row["systems"].values())
        # Each model was compiled as the row says: XLA or not, float32 or mixed_bfloat16.
        for system in ("tfzoo", "keras_hub"):
            check = report["checks"][f"train_{variant}_{system}"]
            assert check["jit_compile"] == (variant == "xla")
            assert check["dtype_policy"] == ("mixed_bfloat16" if variant == "bf16" else "float32")
    for batch_size in (1, 8):
        assert rows[f"generate_tokens_per_second_xla_batch{batch_size}"]["systems"]["tfzoo"]["median"] > 0
        # The timed calls took turns (A B, then B A), round 1 starting with tfzoo.
        assert report["checks"][f"generate_xla_batch{batch_size}_turns"] == [
            ["tfzoo", "keras_hub", "keras_hub", "tfzoo"]]
        for system in ("tfzoo", "keras_hub"):
            assert len(report["checks"][f"generate_xla_batch{batch_size}_{system}"][0]["call_seconds"]) == 2
    # Every target the issue sets is checked against the ratio of the medians it names.
    targets = {target["measure"]: target for target in report["targets"]}
    assert {"train_tokens_per_second_default", "train_tokens_per_second_xla", "train_tokens_per_second_bf16",
            "generate_tokens_per_second_xla_batch1", "generate_tokens_per_second_xla_batch8",
            "savedmodel_tokens_per_second_batch1"} <= set(targets)
    bf16 = rows["train_tokens_per_second_bf16"]["systems"]
    ratio = bf16["tfzoo"]["median"] / bf16["keras_hub"]["median"]
    assert abs(targets["train_tokens_per_second_bf16"]["ratio"] - ratio) < 1e-9
    assert targets["train_tokens_per_second_bf16"]["met"] == (ratio >= 1.3)
    assert "both mixed_bfloat16, no XLA (at least 1.30)" in result.stdout


def test_bench_precision_quick_mode_trains_both_precisions_and_reports_perplexity(tmp_path):
    output = tmp_path / "precision_quick.json"
    result = run_quick("bench_precision.py", output)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    for precision, compute_dtype in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
        (run,) = report["runs"][precision]
        assert (run["dtype_policy"], run["compute_dtype"], run["variable_dtype"]) == (precision, compute_dtype, "float32")
        epochs, steps = run["config"]["epochs"], run["config"]["steps_per_epoch"]
        # The step timer, passed through train_gpt's callbacks, saw every planned step.
        assert len(run["step_seconds"]) == epochs * steps
        assert len(run["val_loss"]) == epochs
        assert run["val_perplexity"] == pytest.approx([math.exp(loss) for loss in run["val_loss"]])
        # It learned: better than guessing uniformly over the vocabulary.
        assert run["val_loss"][-1] < math.log(run["config"]["vocabulary_size"])
    speed = report["summary"]["training tokens/s (median step)"]
    assert speed["ratio"] == pytest.approx(
        report["runs"]["mixed_bfloat16"][0]["tokens_per_second"] / report["runs"]["float32"][0]["tokens_per_second"]
    )
    assert "| validation perplexity after epoch 2 |" in result.stdout


def test_bench_seq2seq_quick_mode_measures_every_setup_and_records_the_machine(tmp_path):
    output = tmp_path / "seq2seq_quick.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "bench_seq2seq.py"), "--quick", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
        # No allocator choice in the environment: tfzoo's import picks (pooled).
        env={**{key: value for key, value in os.environ.items() if key != "TF_CPU_ALLOCATOR_USE_BFC"},
             "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    setups = {"greedy, cached", "greedy, uncached", "beam 4, cached", "beam 4, uncached",
              "greedy, cached, XLA", "beam 4, cached, XLA"}
    assert set(report["sentences_per_second"]) == setups
    for name in setups:  # one timing per round, and the rate is the batch over their median
        assert len(report["seconds"][name]) == report["rounds"]
        median = sorted(report["seconds"][name])[len(report["seconds"][name]) // 2]
        assert abs(report["sentences_per_second"][name] - report["batch_size"] / median) < 1e-6
    # The cache must not change a token, greedy or beam.
    assert report["cached_equals_uncached"] == {"1": True, "4": True}
    # The machine is recorded, with the allocator the run had (tfzoo pools by default).
    assert report["machine"]["cpu_memory_pooled"] is True
    assert report["machine"]["tensorflow"] and report["machine"]["cpu_count"] >= 1
    assert "CPU allocator pooled (BFC)" in result.stdout


def test_bench_attention_quick_mode_splits_the_queries_and_changes_nothing(tmp_path):
    output = tmp_path / "attention_quick.json"
    result = run_quick("bench_attention.py", output)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    setups = {"tfzoo, query blocks", "tfzoo, one mask", "keras.layers.MultiHeadAttention"}
    for length in ("256", "512"):
        # The XLA function traced one product per query block, the other one in all.
        assert report["attention_products_traced"][length] == {"tfzoo, query blocks": int(length) // 128,
                                                               "tfzoo, one mask": 1}
        assert report["relative_difference"][length] < 1e-5  # output and gradients, blocks vs one mask
        assert set(report["seconds_per_call"][length]) == setups
        assert all(len(values) == report["rounds"] for values in report["seconds_per_call"][length].values())
    assert "| 4 x 256 | 2 |" in result.stdout and report["machine"]["cpu_count"] >= 1


def test_bench_fused_gelu_quick_mode_compares_the_two_and_they_agree(tmp_path):
    output = tmp_path / "fused_gelu_quick.json"
    result = run_quick("bench_fused_gelu.py", output)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report["gelu"]) == {f"{policy} {shape}" for policy in ("float32", "mixed_bfloat16")
                                   for shape in ("64x128", "256x512")}
    for policy, tolerance in (("float32", 1e-5), ("mixed_bfloat16", 0.05)):
        assert report["gelu"][f"{policy} 256x512"]["gradient_max_difference"] < tolerance
        training = report["training"][policy]
        assert all(len(rates) == report["rounds"] and min(rates) > 0 for rates in training["tokens_per_second"].values())
        losses = training["last_loss"]
        assert abs(losses["fused"] - losses["plain ops"]) < 1e-3 * abs(losses["plain ops"])  # the same training
        layer_norm = report["training_layer_norm"][policy]
        assert all(len(rates) == report["rounds"] and min(rates) > 0 for rates in layer_norm["tokens_per_second"].values())
        layer_norm_losses = layer_norm["last_loss"]
        assert abs(layer_norm_losses["fused"] - layer_norm_losses["plain ops"]) < 1e-3 * abs(layer_norm_losses["plain ops"])
    for part in ("GELU", "layer norm"):
        assert f"| training tokens/s, batch 4x32, float32, no XLA, {part} fused or not |" in result.stdout


def test_benchmarks_cpu_allocator_flag_sets_tensorflows_variable(monkeypatch):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import common

    parser = common.benchmark_parser("test", "test", full_rounds=1)
    for choice, value in (("default", "false"), ("pooled", "true")):
        monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "unchanged")
        common.checked_args(parser, ["--cpu-allocator", choice])
        assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == value
        assert common.current_cpu_allocator() == choice
    for value, choice in (("TRUE", "pooled"), ("1", "pooled"), ("False", "default"), ("", "default")):
        monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", value)  # as TensorFlow parses it
        assert common.current_cpu_allocator() == choice, value
    common.checked_args(parser, [])  # no flag: the environment's choice stays
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == ""
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC")
    assert common.current_cpu_allocator() == "pooled"  # what tfzoo's import will set


def test_matmul_peak_keeps_the_better_measurement_and_flags_utilisation_above_it():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import common

    def peak(gflops):
        return dict(peak_gflops=gflops, best=dict(kernel="tf_matmul", size=2048, gflops=gflops), samples=[])

    combined = common.best_peak(peak(155.0), peak(211.0))
    assert combined["peak_gflops"] == 211.0 and combined["best"]["gflops"] == 211.0
    assert [measured["peak_gflops"] for measured in combined["measurements"]] == [155.0, 211.0]
    rows = [("training tokens/s", {common.TFZOO: 0.75, common.KERAS_HUB: 0.68})]
    table = common.format_mfu_table(rows, combined)
    assert "| training tokens/s | 75% | 68% |" in table and "Above 100%" not in table
    rows = [("training tokens/s", {common.TFZOO: 1.01, common.KERAS_HUB: 0.93})]  # the run with a low peak
    assert "Above 100%" in common.format_mfu_table(rows, peak(155.0))


def test_profile_trace_breakdown_attributes_a_matmul_heavy_step_to_matmuls():
    # profile_gpt's trace breakdown on a step it can be checked against: one wide Dense
    # layer on a tall batch, whose two products (34 GFLOP a step) dwarf its bias, loss and
    # Adam update (4M parameters).
    import time

    import keras
    import numpy as np

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import profile_gpt

    model = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(2048)])
    model.compile(optimizer="adam", loss="mse")
    batch = (np.ones((2048, 2048), "float32"), np.zeros((2048, 2048), "float32"))
    start = time.perf_counter()
    times = profile_gpt.traced_op_times(model, batch, steps=2)
    elapsed_per_step = (time.perf_counter() - start) / 2 * 1e3  # ms; includes an untraced warm-up step
    matmuls = times["matmuls (MatMul, BatchMatMul, Einsum)"]
    assert matmuls > 0.5 * sum(times.values()), times
    # The breakdown is wall time: a traced step cannot add up to more than the call took.
    assert 0 < sum(times.values()) < elapsed_per_step * 1.05, (times, elapsed_per_step)
    assert profile_gpt.op_kind("model/dense/MatMul:_MklMatMul") == "matmuls (MatMul, BatchMatMul, Einsum)"
    assert profile_gpt.op_kind("model/dense/BiasAdd:BiasAdd").startswith("other")


def test_profile_xla_trace_breakdown_attributes_a_matmul_heavy_step_to_dots():
    # The XLA-compiled counterpart on the same wide Dense step, compiled whole.
    import time

    import keras
    import numpy as np

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import profile_gpt

    batch = (np.ones((2048, 2048), "float32"), np.zeros((2048, 2048), "float32"))
    model = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(2048)])
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    model.train_on_batch(*batch)  # compiles outside the timing below
    start = time.perf_counter()
    times = profile_gpt.traced_xla_op_times(model, batch, steps=2)
    elapsed_per_step = (time.perf_counter() - start) / 2 * 1e3  # ms; includes an untraced step
    # The two products (forward, kernel gradient; the input needs none): 34 GFLOP a step.
    assert times[profile_gpt.XLA_DOTS] > 0.5 * sum(times.values()), times
    assert 0 < sum(times.values()) < elapsed_per_step * 1.05, (times, elapsed_per_step)
    # A step XLA did not compile has no XLA op events: a clear error, not a table of zeros.
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8)])
    model.compile(optimizer="adam", loss="mse", jit_compile=False)
    with pytest.raises(RuntimeError, match="no XLA op events"):
        profile_gpt.traced_xla_op_times(model, (np.ones((4, 8), "float32"), np.zeros((4, 8), "float32")))


def test_profile_xla_op_kinds_and_spans():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import profile_gpt

    for dot in ("MatMul.180", "MatMul_1.114", "dot.4", "dot.4.clone", "BatchMatMulV2.3"):
        assert profile_gpt.xla_op_kind(dot) == profile_gpt.XLA_DOTS, dot
    for other in ("subtract_exponential_fusion", "MatMul_fusion.3", "wrapped_reduce-window.30", "copy.213"):
        assert profile_gpt.xla_op_kind(other) != profile_gpt.XLA_DOTS, other
    # One op name in two steps, the second run's end on another thread after a later op's
    # start (asynchronous): each start takes the end of its own context id.
    starts = [("MatMul.1", 0.0, 0.4, 11), ("add_fusion", 1.0, 2.0, 12), ("MatMul.1", 10.0, 10.1, 21),
              ("add_fusion", 11.0, 11.5, 22)]
    ends = [(0.5, 11), (2.0, 12), (11.5, 22), (14.0, 21)]
    assert sorted(profile_gpt.xla_op_spans(starts, ends)) == [
        (0.0, 0.5, "MatMul.1"), (1.0, 2.0, "add_fusion"), (10.0, 14.0, "MatMul.1"), (11.0, 11.5, "add_fusion")]
    # The last end event missing (the profiler stopped first): that op keeps its own event's end.
    assert (10.0, 10.1, "MatMul.1") in profile_gpt.xla_op_spans(starts, ends[:-1])
    with pytest.raises(RuntimeError, match="have no start"):
        profile_gpt.xla_op_spans(starts[:-1], ends)  # an end without its start
    # The sweep shares overlapping slices and counts the gaps as idle: 10 ms of wall time
    # over 2 steps; 3 ms of A alone, 2 shared with B (1 each), 2 of B alone, 3 idle.
    times = profile_gpt.shared_wall_time([(0, 5, "A"), (3, 7, "B"), (10, 10, "A")], steps=2, idle_kind="idle")
    assert times == pytest.approx({"A": 2.0, "B": 1.5, "idle": 1.5})
