"""The tutorials run top to bottom, each in a fresh Python process."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def run_tutorial(name, output_dir):
    result = subprocess.run(
        [sys.executable, str(TUTORIALS / name), "--quick", "--output-dir", str(output_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{name} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}"
        f"\n--- stderr ---\n{result.stderr[-5000:]}"
    )
    return result.stdout


@pytest.mark.slow
def test_attention_from_scratch(tmp_path):
    import matplotlib.image

    stdout = run_tutorial("01_attention_from_scratch.py", tmp_path)

    # The tutorial asserts each agreement itself; these lines show the checks ran.
    for line in [
        "OK: sinusoidal_encoding matches the formula",
        "OK: tfzoo MultiHeadAttention matches the by-hand version with the causal mask",
        "OK: tfzoo MultiHeadAttention matches the by-hand version with causal and padding masks",
        "OK: PositionalEncoding adds the sinusoidal table",
        "OK: TransformerBlock output",
        "OK: the block is causal",
        "OK: the loss fell",
        "continues the pattern:",
    ]:
        assert line in stdout, f"missing {line!r} in the output:\n{stdout}"

    plot = tmp_path / "positional_encoding.png"
    assert plot.is_file()
    image = matplotlib.image.imread(plot)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 200 and image.shape[1] >= 200
    assert np.std(image[..., :3]) > 0.05  # not a blank canvas
