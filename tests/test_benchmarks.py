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
