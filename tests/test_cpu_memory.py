"""tfzoo asks TensorFlow for its pooling CPU allocator: checked in fresh processes, by the
page faults a step that frees and remakes a large buffer costs."""

import os
import subprocess
import sys

import pytest

# A function whose 128 MiB temporary (exp of the input) is freed at the end of each call.
# Each call after the first two is counted: minor page faults are the kernel mapping fresh
# zeroed pages in, one per 4 KiB page that is new to the process (huge pages are off).
FAULTS_PER_CALL = """
import ctypes, resource
# Without transparent huge pages, so that a fault maps one 4 KiB page (PR_SET_THP_DISABLE).
if ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_THP_DISABLE) failed")
import tensorflow as tf  # imported first, as users do: no op has run yet
{before_tfzoo}
import tfzoo

@tf.function
def step(values):
    return tf.reduce_sum(tf.exp(values * 0.5))

values = tf.random.normal([4096, 8192])
step(values).numpy()
step(values).numpy()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step(values).numpy()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) // 3
print("pooled", tfzoo.cpu_memory_is_pooled(), "faults", faults)
"""

PAGES_OF_THE_TEMPORARY = 4096 * 8192 * 4 // 4096


def faults_per_call(before_tfzoo="", env_value=None, onednn="0"):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPU_ALLOCATOR_USE_BFC"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # oneDNN off unless asked: TensorFlow turns it on by itself on CPUs with AVX512-VNNI,
    # -BF16 or AMX, and its oneDNN CPU allocator pools memory whatever the variable says.
    env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    if env_value is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = env_value
    script = FAULTS_PER_CALL.format(before_tfzoo=before_tfzoo)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    words = result.stdout.split()
    return words[words.index("pooled") + 1] == "True", int(words[words.index("faults") + 1])


@pytest.mark.slow
def test_importing_tfzoo_after_tensorflow_pools_cpu_memory_so_a_repeated_step_maps_no_new_pages():
    pooled, faults = faults_per_call()
    assert pooled
    assert faults < PAGES_OF_THE_TEMPORARY // 20, faults


@pytest.mark.slow
def test_tensorflows_default_allocator_maps_the_temporary_afresh_on_every_call():
    # The reference for the test above: the same script when the user keeps TensorFlow's
    # default allocator, which tfzoo leaves alone.
    pooled, faults = faults_per_call(env_value="false")
    assert not pooled
    assert faults > PAGES_OF_THE_TEMPORARY // 2, faults


@pytest.mark.slow
def test_an_op_run_before_tfzoo_is_imported_keeps_the_default_and_cpu_memory_is_pooled_says_so():
    pooled, faults = faults_per_call(before_tfzoo="tf.constant(1.0) + 1.0")
    assert not pooled
    assert faults > PAGES_OF_THE_TEMPORARY // 2, faults


@pytest.mark.slow
def test_with_onednn_cpu_memory_is_pooled_says_what_the_page_faults_show():
    # With oneDNN on, TensorFlow's own allocator pools too (seen on an AVX512-BF16 EPYC,
    # where oneDNN is on by default): whatever the answer, it must match the faults.
    pooled, faults = faults_per_call(env_value="false", onednn="1")
    assert pooled == (faults < PAGES_OF_THE_TEMPORARY // 20), (pooled, faults)


@pytest.mark.parametrize("users_value", ["false", "0", "TRUE"])
def test_a_users_own_allocator_setting_is_kept(monkeypatch, users_value):
    import tfzoo

    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", users_value)
    tfzoo._pool_cpu_memory()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == users_value
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC")
    tfzoo._pool_cpu_memory()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
