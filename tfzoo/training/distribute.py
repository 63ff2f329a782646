"""Distribution strategies and mixed precision for Keras 3 `fit` on TensorFlow.

    split_cpu(2)                              # first thing: 2 logical CPUs (to try `mirrored`)
    strategy = get_strategy("mirrored")       # or "auto", "cpu", "multi_worker", "tpu"
    batch_size = global_batch_size(8, strategy)   # 8 per replica
    set_precision("mixed_bfloat16")
    with strategy.scope():
        model = GPT.from_preset("gpt_test")
        model.compile()
    model.fit(dataset.batch(batch_size), ...)

Create the model *and* compile it inside `strategy.scope()`; batch the data with the
global batch size (each replica gets `global / num_replicas_in_sync` examples).

`get_strategy("multi_worker")` also applies `enable_multi_worker_fit()`, a small fix
that lets Keras 3 `model.fit` run under `tf.distribute.MultiWorkerMirroredStrategy`
(keras-team/keras#20585); see that function for the root cause.
"""

import json
import os
import warnings

import keras
import tensorflow as tf

STRATEGIES = ("auto", "cpu", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
# CPU features (as Linux names them in /proc/cpuinfo) that compute bfloat16 matmuls in
# hardware. Without them bfloat16 is emulated and mixed_bfloat16 gains nothing on a CPU
# (benchmarks/RESULTS.md: tfzoo's training step 1.4-1.5x faster with AMX or AVX512-BF16,
# 0.97x with AVX2 only).
NATIVE_BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


# ---------------------------------------------------------------------------- devices
def split_cpu(n):
    """Splits the host CPU into `n` logical devices, to run `mirrored` without GPUs.

    Must run before TensorFlow runs any op (it configures the runtime). Calling it
    again with the same `n` is harmless; a different `n` once TensorFlow is running
    raises a RuntimeError that says so. Returns the logical CPU device names.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer. Received: n={n!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        # Too late to change; fine only if the CPU already has the wanted split.
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) != n:
            raise RuntimeError(
                f"split_cpu({n}) came too late: TensorFlow is already running with {len(existing)} logical "
                f"CPU device(s), and devices cannot be changed after it starts. Call split_cpu({n}) (or "
                f"get_strategy('mirrored', devices={n})) first thing in the program, before any "
                "TensorFlow op, model or dataset is created."
            ) from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _local_tpus():
    return tf.config.list_physical_devices("TPU")


def _tpu_resolver(tpu=None):
    """A TPUClusterResolver for `tpu` (a name, a grpc:// address or "local"), or a ValueError."""
    if tpu is None:
        tpu = "local" if _local_tpus() else None  # a TPU VM; else TPU_NAME, Colab or GCE metadata
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    except (ValueError, RuntimeError, OSError) as error:
        raise ValueError(
            f"No TPU found: TPUClusterResolver(tpu={tpu!r}) failed ({error}). On a TPU VM use "
            "devices='local'; elsewhere give the TPU's name or grpc:// address as `devices`, or set TPU_NAME."
        ) from None


def _tpu_strategy(tpu=None):
    resolver = _tpu_resolver(tpu)
    try:
        if resolver.master():  # a remote TPU; a local one ("local") needs no connection
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.OpError, ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0][:300]
        raise ValueError(
            f"No TPU found: initializing the TPU system (tpu={tpu!r}) failed: {message}"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def needs_static_shapes(strategy):
    """Whether `strategy` compiles for a TPU, where every batch must have the same shape.

    Example:
    >>> needs_static_shapes(tf.distribute.get_strategy())
    False
    """
    return isinstance(strategy, tf.distribute.TPUStrategy)


def _mirrored_devices(devices):
    """Device names for MirroredStrategy: every GPU, N GPUs, N logical CPUs, or a given list."""
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")] if tf.config.list_physical_devices(
        "GPU") else []
    if devices is None:
        return gpus or [device.name for device in tf.config.list_logical_devices("CPU")]
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices < 1:
            raise ValueError(f"`devices` must be a positive integer. Received: devices={devices}")
        if not gpus:
            return split_cpu(devices)  # no GPU: N replicas on N logical CPUs
        if len(gpus) < devices:
            raise ValueError(f"devices={devices} asks for {devices} GPUs, but there are only {len(gpus)}.")
        return gpus[:devices]
    if isinstance(devices, (list, tuple)) and devices and all(isinstance(d, str) for d in devices):
        return list(devices)
    raise ValueError(
        "`devices` must be None, a number of replicas, or a list of device names such as "
        f"['/gpu:0', '/gpu:1']. Received: devices={devices!r}"
    )


# ---------------------------------------------------------------------------- TF_CONFIG
def read_tf_config():
    """The parsed and checked TF_CONFIG environment variable (for `multi_worker`), or a ValueError.

    Example TF_CONFIG for worker 0 of 2:
    {"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}
    """
    text = os.environ.get("TF_CONFIG")
    example = ('{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not text:
        raise ValueError(
            "The 'multi_worker' strategy needs the TF_CONFIG environment variable, e.g. "
            f"TF_CONFIG='{example}' (one per worker, with its own task index)."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text!r}") from None

    def bad(reason):
        return ValueError(f"TF_CONFIG is malformed: {reason}. Expected e.g. {example}. Received: {text}")

    if not isinstance(config, dict):
        raise bad("it must be a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise bad("'cluster' must map job names to lists of 'host:port' addresses")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(
            isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses
        ):
            raise bad(f"cluster job {job!r} must be a non-empty list of 'host:port' addresses")
    if "worker" not in cluster and "chief" not in cluster:
        raise bad("the cluster needs a 'worker' (or 'chief') job")
    if not isinstance(task, dict) or "type" not in task:
        raise bad("'task' must be an object with a 'type' and an 'index'")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int):
        raise bad(f"task index must be an integer, got {index!r}")
    if task["type"] != "evaluator":
        if task["type"] not in cluster:
            raise bad(f"task type {task['type']!r} is not a job of the cluster {sorted(cluster)}")
        if not 0 <= index < len(cluster[task["type"]]):
            raise bad(f"task index {index} is out of range for the {len(cluster[task['type']])} "
                      f"{task['type']!r} address(es)")
    return config


def _multi_worker_strategy():
    read_tf_config()
    enable_multi_worker_fit()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise RuntimeError(
            f"{error}: create the 'multi_worker' strategy first thing in the program, before any "
            "TensorFlow op, model or dataset is created."
        ) from None


# ---------------------------------------------------------------------------- strategies
def get_strategy(name="auto", devices=None):
    """A `tf.distribute.Strategy` by name.

    Args:
        name: one of
            - "auto": a TPU if one is found, else MirroredStrategy over every GPU when
              there are at least two, else the default strategy (on the one GPU, or the CPU).
            - "cpu": OneDeviceStrategy on the CPU, even when there are GPUs.
            - "mirrored": MirroredStrategy (one machine, synchronous data parallel) over
              every GPU, or over the logical CPUs when there is no GPU (see `devices`).
            - "multi_worker": MultiWorkerMirroredStrategy, the cluster read from the
              TF_CONFIG environment variable (one process per worker). Also applies
              `enable_multi_worker_fit()` so that Keras `fit` works with it.
            - "tpu": TPUStrategy, after TPUClusterResolver and initialize_tpu_system.
              A ValueError says so when there is no TPU.
        devices: for "mirrored", a number of replicas N (N GPUs; without GPUs, the CPU
            is split into N logical devices, see `split_cpu`) or a list of device names.
            For "tpu", the TPU's name, grpc:// address or "local". Unused otherwise.

    Strategies that configure the runtime ("multi_worker", "mirrored" with a CPU split)
    must be created before TensorFlow runs any op.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}. Valid names: {', '.join(STRATEGIES)}.")
    if devices is not None and name in ("auto", "cpu", "multi_worker"):
        raise ValueError(f"`devices` applies to 'mirrored' and 'tpu' only, not to {name!r}. "
                         f"Received: devices={devices!r}")
    if name == "auto":
        if _local_tpus() or os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
            return _tpu_strategy()
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) >= 2:
            return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("GPU")])
        return tf.distribute.get_strategy()  # the default strategy: the one GPU if any, else the CPU
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(_mirrored_devices(devices))
    if name == "multi_worker":
        return _multi_worker_strategy()
    return _tpu_strategy(devices)


def global_batch_size(per_replica_batch_size, strategy=None):
    """Per-replica batch size x replicas in sync (in the current strategy by default).

    Batch the dataset with this: each replica then gets `per_replica_batch_size` examples.

    Example:
    >>> global_batch_size(8)  # the default strategy: one replica
    8
    """
    if isinstance(per_replica_batch_size, bool) or not isinstance(per_replica_batch_size, int) \
            or per_replica_batch_size < 1:
        raise ValueError(f"`per_replica_batch_size` must be a positive integer. "
                         f"Received: {per_replica_batch_size!r}")
    strategy = strategy or tf.distribute.get_strategy()
    return per_replica_batch_size * strategy.num_replicas_in_sync


def describe_strategy(strategy):
    """A one-line summary for logs, e.g. 'MirroredStrategy: 2 replicas in sync, on CPU:0, CPU:1'."""
    replicas = strategy.num_replicas_in_sync
    try:
        devices = ", ".join(d.split("device:")[-1] for d in strategy.extended.worker_devices)
    except (RuntimeError, AttributeError, NotImplementedError):
        devices = "the default device"
    kind = type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        kind = "MultiWorkerMirroredStrategy"  # its class is CollectiveAllReduceStrategy
        devices = f"this worker's {devices}"
    elif kind.startswith("_Default"):
        kind = "default strategy"
    return f"{kind}: {replicas} replica{'s' if replicas != 1 else ''} in sync, on {devices}"


# ---------------------------------------------------------------------------- precision
def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags as Linux lists them in `cpuinfo`; an empty set where there is none.

    Example:
    >>> isinstance(cpu_flags(), set)
    True
    """
    try:
        with open(cpuinfo) as file:
            for line in file:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def resolve_precision(precision, strategy=None, flags=None):
    """The dtype policy that `precision` names here: "auto" becomes one of the others.

    "auto" is "mixed_bfloat16" under a TPU strategy, and on a machine without GPUs whose
    CPU computes bfloat16 in hardware (`NATIVE_BFLOAT16_CPU_FLAGS`, read from `flags` or
    /proc/cpuinfo); "float32" otherwise (GPUs included: not measured here). Other names
    are returned as they are.

    Example:
    >>> resolve_precision("auto", flags={"avx2", "fma"})
    'float32'
    >>> resolve_precision("auto", flags={"avx512f", "avx512_bf16"})
    'mixed_bfloat16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}. Valid precisions: {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    if tf.config.list_physical_devices("GPU"):
        return "float32"
    flags = cpu_flags() if flags is None else set(flags)
    return "mixed_bfloat16" if flags & set(NATIVE_BFLOAT16_CPU_FLAGS) else "float32"


def set_precision(precision, strategy=None):
    """Sets Keras' global dtype policy; returns the previous policy's name (to restore it).

    "mixed_bfloat16" (TPUs, recent CPUs and GPUs) and "mixed_float16" (GPUs; `compile`
    then wraps the optimizer in a LossScaleOptimizer) compute in 16 bits and keep the
    variables in float32; "float32" is the default; "auto" picks one for this machine
    and `strategy` (see `resolve_precision`). Call it before creating the model. tfzoo
    models return float32 logits under every policy.
    """
    policy = resolve_precision(precision, strategy)
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    return previous


# ---------------------------------------------------------------------------- #20585
# Keras 3 `model.fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585, also
# tensorflow/tensorflow#72388) fails twice in keras/src/backend/tensorflow/trainer.py:
#
# 1. `TensorFlowTrainer._maybe_symbolic_build` takes one batch from the distributed
#    iterator only to learn its shapes and dtypes, and turns the per-replica batch into
#    one with `strategy.reduce("MEAN", batch, axis=None)`. `Strategy.reduce` is meant for
#    a single value, not a nest. MirroredStrategy copes, but with more than one worker
#    MultiWorkerMirroredStrategy hands the whole (x, y) tuple of PerReplica values to its
#    collective ops, which try to make one tensor of it: "Attempt to convert a value
#    (PerReplica: ...) with an unsupported type". (Averaging token ids across workers
#    would be meaningless anyway, and it would be an eager collective outside `fit`'s
#    train function.)
#    Fix: keep the first local replica's part of each value; it has the right shape and
#    dtype, and nothing crosses workers.
#
# 2. `reduce_per_replica` reduces the step's outputs (the metric results, scalars) for
#    multi-worker with `strategy.reduce("MEAN", v, axis=0)`: `axis=0` means "also average
#    over each value's batch dimension", and scalars have none: "Invalid reduction
#    dimension 0 for input with 0 dimensions". Fix: `axis=None`, which averages across
#    all replicas of all workers, exactly what the single-machine "mean" branch does
#    with `tf.reduce_mean(local_results, axis=0)`. Every worker so logs the same
#    global metrics (callbacks such as EarlyStopping stay in step across workers).
#
# Both wrappers change nothing for other strategies: they hand over to Keras' own code.
_ORIGINALS = {}


def _first_local_replica(strategy, batch):
    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(local, batch, expand_composites=False)


def enable_multi_worker_fit():
    """Lets Keras 3 `model.fit`/`evaluate` run under MultiWorkerMirroredStrategy (keras#20585).

    Idempotent; `get_strategy("multi_worker")` calls it. `disable_multi_worker_fit()`
    undoes it. See the comment above this function for the root cause.
    """
    if _ORIGINALS:
        return
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer

        original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
        original_reduce = tf_trainer.reduce_per_replica
        is_multi_worker = tf_trainer._collective_all_reduce_multi_worker
    except (ImportError, AttributeError) as error:
        warnings.warn(f"tfzoo: cannot apply the MultiWorkerMirroredStrategy fix for keras#20585 to "
                      f"Keras {keras.__version__} ({error}); `fit` may fail under 'multi_worker'.")
        return

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:  # as Keras does: one batch, for its shapes and dtypes
            data_batch = _first_local_replica(strategy, next(batches))
            break
        return original_build(self, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return original_reduce(values, strategy, reduction)

    _ORIGINALS.update(module=tf_trainer, build=original_build, reduce=original_reduce)
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica  # looked up when the train function is traced


def disable_multi_worker_fit():
    """Restores Keras' own code (undoes `enable_multi_worker_fit`)."""
    if not _ORIGINALS:
        return
    module = _ORIGINALS["module"]
    module.TensorFlowTrainer._maybe_symbolic_build = _ORIGINALS["build"]
    module.reduce_per_replica = _ORIGINALS["reduce"]
    _ORIGINALS.clear()


def multi_worker_fit_enabled():
    return bool(_ORIGINALS)
