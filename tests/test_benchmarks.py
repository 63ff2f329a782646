"""The benchmark scripts still run: each one's quick mode, in a fresh process (slow)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_bench_bert_quick_mode_writes_ratios_and_targets(tmp_path):
    output = tmp_path / "bench_bert_quick.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "bench_bert.py"), "--quick", "--no-torch",
         "--output", str(output)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
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
    # The peak-memory children ran (their own processes) and reported a high-water mark.
    assert all(report["peak_memory"][system]["peak_bytes"] > 0 for system in ("tfzoo", "keras_hub"))


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
    # The XLA-compiled counterpart, in a fresh process: XLA emits its per-op events only
    # when the flag is set before TensorFlow starts. Same wide Dense step, compiled whole.
    code = f"""
import json, sys, time
sys.path.insert(0, {os.path.join(REPO, "benchmarks")!r})
import keras, numpy as np
import profile_gpt
model = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(2048)])
model.compile(optimizer="adam", loss="mse", jit_compile=True)
batch = (np.ones((2048, 2048), "float32"), np.zeros((2048, 2048), "float32"))
model.train_on_batch(*batch)  # compiles
start = time.perf_counter()
times = profile_gpt.traced_xla_op_times(model, batch, steps=2)
print(json.dumps({{"times": times, "elapsed_per_step": (time.perf_counter() - start) / 2 * 1e3}}))
"""
    from tests.helpers import run_python

    result = run_python(code, timeout=300, env={"XLA_FLAGS": "--xla_cpu_enable_xprof_traceme=true",
                                                "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    times = report["times"]
    # The two products (forward, kernel gradient; the input needs none): 34 GFLOP a step.
    assert times["dots (XLA's matrix products)"] > 0.5 * sum(times.values()), times
    assert 0 < sum(times.values()) < report["elapsed_per_step"] * 1.05, report
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import keras
    import numpy as np
    import profile_gpt

    assert profile_gpt.xla_op_kind("MatMul.180") == profile_gpt.XLA_DOTS == profile_gpt.xla_op_kind("dot.4")
    assert profile_gpt.xla_op_kind("subtract_exponential_fusion") != profile_gpt.XLA_DOTS
    assert profile_gpt.xla_op_kind("MatMul_fusion.3") != profile_gpt.XLA_DOTS
    # Without the flag (this process) there are no XLA op events: a clear error, not zeros.
    if profile_gpt.XLA_TRACE_FLAG not in os.environ.get("XLA_FLAGS", ""):
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8)])
        model.compile(optimizer="adam", loss="mse", jit_compile=True)
        with pytest.raises(RuntimeError, match="no XLA op events"):
            profile_gpt.traced_xla_op_times(model, (np.ones((4, 8), "float32"), np.zeros((4, 8), "float32")))
