"""Where a tiny-GPT training step and a decoding step spend their time, tfzoo and keras-hub.

The profile behind issue 8's notes. Training (batch 16 x 256, float32, Keras' default:
no XLA) is split into cumulative stages, each a `tf.function` timed on its own:

1. the matrix multiplies alone, with the step's shapes (forward: every projection, the
   attention products and the tied output projection; backward: twice those), so the
   time the step would take if nothing but its matmuls ran;
2. the forward pass (logits); 3. plus the loss; 4. plus the gradients;
5. the whole `train_on_batch` step (plus the Adam update and Keras' bookkeeping).

Then two `train_on_batch` steps run under the TensorFlow profiler, and the trace's wall
time is split by kind of op (where ops run concurrently, each gets its share of the
slice): the step's real matmuls against everything else, with no synthetic shapes.

The same step compiled whole with XLA is traced too, from XLA's per-op events: its time
splits into XLA's dots, its other ops (fusions) and time with no XLA op running.

Greedy decoding (prompt 32 + 64 new, XLA) is set against a loop of the decoding step's
matrix-vector products alone (every weight read once per new token), the floor that
memory bandwidth sets at batch 1.

    python benchmarks/profile_gpt.py            # about 4 minutes on 2 cores
"""

import argparse
import os
import re
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_gpt  # noqa: E402
from common import KERAS_HUB, TFZOO, Logger, machine_info  # noqa: E402


def median_seconds(function, calls):
    function()  # traces (and compiles) outside the timing
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        result = function()
        np.asarray(result)  # waits for the work
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def matmul_floor(arguments, batch_size, length, backward):
    """A function running the step's matmuls (forward, and twice over for the backward)."""
    import tensorflow as tf

    d, f, v, heads = (arguments[name] for name in ("hidden_dim", "intermediate_dim", "vocabulary_size", "num_heads"))
    rng = np.random.default_rng(0)
    tokens = batch_size * length

    def tensor(*shape):
        # Variables, not constants: Grappler would fold a product of constants before timing.
        return tf.Variable(rng.standard_normal(shape).astype("float32") * 0.02)

    x, x_ffn = tensor(tokens, d), tensor(tokens, f)
    weights = {"attention": tensor(d, 4 * d), "up": tensor(d, f), "down": tensor(f, d), "head": tensor(d, v)}
    q = tensor(batch_size * heads, length, d // heads)
    repeats = 3 if backward else 1

    @tf.function
    def run():
        total = tf.constant(0.0)
        for _ in range(repeats):
            for _ in range(arguments["num_layers"]):
                # Q, K, V and the output projection as one (tokens, d) x (d, 4d) product of the same FLOPs.
                total += tf.reduce_sum(tf.matmul(x, weights["attention"])[:1])
                scores = tf.matmul(q, q, transpose_b=True)
                total += tf.reduce_sum(tf.matmul(scores, q)[:1])
                total += tf.reduce_sum(tf.matmul(x, weights["up"])[:1])
                total += tf.reduce_sum(tf.matmul(x_ffn, weights["down"])[:1])
            total += tf.reduce_sum(tf.matmul(x, weights["head"])[:1])
        return total

    return run


def training_stages(system, model, batch, calls):
    import tensorflow as tf

    inputs, labels = batch
    loss_function = model.loss  # each library's default: see bench_gpt.compile_model

    def logits_of(x):
        output = model(x, training=True)
        return output["logits"] if isinstance(output, dict) else output

    @tf.function
    def forward():
        return tf.reduce_sum(logits_of(inputs)[:, :1])

    @tf.function
    def forward_loss():
        return loss_function(labels, logits_of(inputs))

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            loss = loss_function(labels, logits_of(inputs))
        grads = tape.gradient(loss, model.trainable_variables)
        # A token embedding's gradient may come as IndexedSlices (the lookup's rows).
        return tf.add_n([tf.reduce_sum((g.values if isinstance(g, tf.IndexedSlices) else g)[:1]) for g in grads])

    return {
        "forward": median_seconds(forward, calls),
        "+ loss": median_seconds(forward_loss, calls),
        "+ gradients": median_seconds(gradients, calls),
        "train_on_batch": median_seconds(lambda: model.train_on_batch(inputs, labels), calls),
    }


def op_kind(name):
    """The row of the trace breakdown that a TensorFlow op event `node:OpType` counts in."""
    op = name.rsplit(":", 1)[1]
    if "MatMul" in op or "Einsum" in op:  # keras-hub's projections are einsums
        return "matmuls (MatMul, BatchMatMul, Einsum)"
    return "other TensorFlow ops (elementwise, reductions, transposes, Adam)"


def profiled_space(model, batch, steps):
    """The profiler's trace (an `XSpace`) of `steps` `train_on_batch` calls after one untraced."""
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    inputs, labels = batch
    model.train_on_batch(inputs, labels)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            model.train_on_batch(inputs, labels)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as file:
            space.ParseFromString(file.read())
    return space


def traced_op_times(model, batch, steps=2):
    """Wall milliseconds per step by `op_kind`, from a profiler trace of `train_on_batch`.

    The trace's op events are swept in time order; a slice where several ops run is shared
    among them, and a slice where none runs (XLA-compiled code, which has no per-op events,
    or the framework) counts as "no TensorFlow op".
    """
    space = profiled_space(model, batch, steps)
    events = []  # (start, end, kind) in ms
    for plane in space.planes:
        names = {key: value.name for key, value in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's op threads
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # Op events are "node:OpType"; the executor's own spans enclose them.
                if ":" in name and not name.startswith(("$", "ExecutorState", "CpuExecutable", "ThunkExecutor")):
                    start = (line.timestamp_ns * 1e3 + event.offset_ps) / 1e9
                    events.append((start, start + event.duration_ps / 1e9, op_kind(name)))
    return shared_wall_time(events, steps, "no TensorFlow op (the XLA-compiled loss, the framework)")


def shared_wall_time(events, steps, idle_kind):
    """Wall ms per step by kind, from `(start, end, kind)` events in ms.

    The events are swept in time order; a slice where several run is shared among them,
    and a slice where none runs counts as `idle_kind`, so the kinds add up to the trace.
    """
    events = sorted(events)
    times = {}
    boundaries = sorted({moment for event in events for moment in event[:2]})
    running, next_event = [], 0
    for begin, end in zip(boundaries, boundaries[1:]):
        while next_event < len(events) and events[next_event][0] <= begin:
            running.append(events[next_event])
            next_event += 1
        running = [event for event in running if event[1] > begin]
        for event in running or [(0, 0, idle_kind)]:
            times[event[2]] = times.get(event[2], 0.0) + (end - begin) / max(len(running), 1) / steps
    return times


# XLA's CPU runtime (TF 2.21's thunks) emits an event per compiled op while the profiler
# runs; older runtimes did so only with this flag in XLA_FLAGS, set before TensorFlow starts.
XLA_TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
XLA_DOTS = "dots (XLA's matrix products)"
XLA_IDLE = "no XLA op (between ops: the framework, waiting)"


def xla_op_kind(name):
    """The row an XLA CPU op event counts in: its dots, or the rest (fusions of elementwise
    work and reductions, copies, scatters).

    A dot is named after the TensorFlow op it came from (`MatMul.180`, `MatMul_1.114`) or
    plainly (`dot.4`), with numeric or `.clone` suffixes; a fusion's name says "fusion"
    even where XLA folded a dot into it (none does in these steps' dumped programs).
    """
    base = re.sub(r"(\.\d+|\.clone)+$", "", name)
    if "fusion" not in base and (base == "dot" or base.startswith(("MatMul", "BatchMatMul", "Einsum"))):
        return XLA_DOTS
    return "fusions and other XLA ops (elementwise, reductions, copies, Adam)"


def xla_op_spans(starts, ends):
    """`(start, end, name)` spans of XLA ops, in ms, from the trace's two kinds of events.

    `starts`: `(name, start, own_end, context)`; `ends`: `(end, context)`. XLA marks an op's
    start (an event with the `_p` stat) and its end (an `end: op` event whose `_c` stat is
    the same context id): a large dot runs asynchronously, so its end may come later, on
    another thread, than its start event's own end. A start whose end event is missing
    (the profiler can stop before the last one is recorded) keeps its own end; an end
    without its start means the events were misread, an error rather than a wrong table.
    """
    end_of = dict((context, end) for end, context in ends)
    if len(end_of) != len(ends):
        raise RuntimeError("Two XLA op end events share a context id.")
    spans = [(start, end_of.pop(context, own_end), name) for name, start, own_end, context in starts]
    if end_of:
        raise RuntimeError(f"{len(end_of)} XLA op end event(s) have no start.")
    return spans


def traced_xla_op_times(model, batch, steps=2):
    """Wall ms per step by `xla_op_kind`, from a profiler trace of an XLA-compiled
    `train_on_batch` (`model` compiled with `jit_compile=True`).

    The ops' spans (`xla_op_spans`) share the wall time as in `shared_wall_time`; the
    time between the first op and the last with none running counts as `XLA_IDLE`.
    """
    space = profiled_space(model, batch, steps)
    starts, ends = [], []
    for plane in space.planes:
        names = {key: value.name for key, value in plane.event_metadata.items()}
        stat_names = {key: value.name for key, value in plane.stat_metadata.items()}
        for line in plane.lines:  # XLA's ops run on the calling thread and on the pool's
            for event in line.events:
                stats = {stat_names.get(stat.metadata_id): stat.uint64_value or stat.int64_value
                         for stat in event.stats}
                start = (line.timestamp_ns * 1e3 + event.offset_ps) / 1e9
                name = names.get(event.metadata_id, "")
                if "hlo_op" in stats and "_p" in stats:
                    starts.append((name, start, start + event.duration_ps / 1e9, stats["_p"]))
                elif name.startswith("end: ") and "_c" in stats:
                    ends.append((start + event.duration_ps / 1e9, stats["_c"]))
    if not starts:
        raise RuntimeError(
            "The trace holds no XLA op events: is the model compiled with jit_compile=True? (Older "
            f"TensorFlow releases emit them only with XLA_FLAGS={XLA_TRACE_FLAG} set before TensorFlow starts.)"
        )
    spans = xla_op_spans(starts, ends)
    return shared_wall_time([(start, end, xla_op_kind(name)) for start, end, name in spans], steps, XLA_IDLE)


def print_breakdown(traced, total_row):
    """A markdown table of `{system: {kind: ms}}`, kinds by tfzoo's time, then their sum."""
    print("| kind of op | tfzoo | keras-hub |\n|---|---:|---:|")
    kinds = sorted({kind for times in traced.values() for kind in times}, key=lambda kind: -traced[TFZOO].get(kind, 0))
    for kind in kinds + [total_row]:
        cells = [sum(traced[system].values()) if kind == total_row else traced[system].get(kind, 0.0)
                 for system in (TFZOO, KERAS_HUB)]
        print(f"| {kind} | {cells[0]:.1f} | {cells[1]:.1f} |")


def decode_floor(arguments, batch_size, new_tokens):
    """A compiled loop of `new_tokens` steps of the decoding step's matrix-vector products."""
    import tensorflow as tf

    d, f, v = arguments["hidden_dim"], arguments["intermediate_dim"], arguments["vocabulary_size"]
    rng = np.random.default_rng(0)
    shapes = [(d, 3 * d), (d, d), (d, f), (f, d)] * arguments["num_layers"] + [(d, v)]
    weights = [tf.constant(rng.standard_normal(shape).astype("float32") * 0.02) for shape in shapes]

    @tf.function(jit_compile=True)
    def run(hidden):
        def step(index, hidden):
            for layer in range(arguments["num_layers"]):
                attention, output, up, down = weights[4 * layer:4 * layer + 4]
                hidden = hidden + tf.matmul(tf.matmul(hidden, attention)[:, :d], output)
                hidden = hidden + tf.matmul(tf.nn.gelu(tf.matmul(hidden, up)), down)
            logits = tf.matmul(hidden, weights[-1])
            # The argmax feeds the next step, so no product can be skipped.
            return index + 1, hidden * 0.5 + tf.cast(tf.argmax(logits, -1), tf.float32)[:, None] * 1e-6

        return tf.while_loop(lambda index, _: index < new_tokens, step, (0, hidden))[1]

    hidden = tf.ones((batch_size, d))
    return lambda: run(hidden)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5, help="timed calls per stage (median reported)")
    args = parser.parse_args(argv)
    log = Logger()
    info = machine_info()
    settings = bench_gpt.SETTINGS["full"]
    arguments = bench_gpt.model_arguments(settings["preset"])
    batch_size, length = settings["train_batch_size"], settings["train_sequence_length"]
    batches = bench_gpt.training_batches(settings, arguments["vocabulary_size"], count=1)

    traced = {}  # system -> {op kind: ms per step}
    rows = {}  # the matmul floors are the same work for both systems: one measure each
    for stage, backward in (("matmuls alone (forward)", False), ("matmuls alone (forward + backward)", True)):
        seconds = median_seconds(matmul_floor(arguments, batch_size, length, backward), args.calls)
        rows[stage] = dict.fromkeys((TFZOO, KERAS_HUB), seconds)
    for system in (TFZOO, KERAS_HUB):
        model = bench_gpt.compile_model(system, bench_gpt.build(system, settings["preset"], seed=0), None)
        for stage, seconds in training_stages(system, model, batches[system][0], args.calls).items():
            rows.setdefault(stage, {})[system] = seconds
            log(f"  {system:9s} {stage:16s} {seconds * 1e3:7.1f} ms")
        traced[system] = traced_op_times(model, batches[system][0])

    print(f"\nTraining step, batch {batch_size}x{length}, float32, no XLA: median ms of {args.calls} calls "
          "(each stage includes the ones above it)\n")
    print("| stage | tfzoo | keras-hub |\n|---|---:|---:|")
    for stage, values in rows.items():
        print(f"| {stage} | {values[TFZOO] * 1e3:.1f} | {values[KERAS_HUB] * 1e3:.1f} |")

    print("\nThe same step under the TensorFlow profiler (2 steps): wall ms per step by kind of op\n")
    print_breakdown(traced, "traced step")
    floor = rows["matmuls alone (forward + backward)"][TFZOO] * 1e3
    budget = rows["train_on_batch"][KERAS_HUB] * 1e3 / 1.3
    print(f"\n1.3x keras-hub's train_on_batch is a {budget:.0f} ms step; the step's matmuls alone take "
          f"{floor:.0f} ms, leaving {budget - floor:.0f} ms for the rest (tfzoo's other work, traced: "
          f"{sum(ms for kind, ms in traced[TFZOO].items() if 'matmul' not in kind):.0f} ms).")

    # The same step compiled whole with XLA: XLA's ops, which the trace above sees as one.
    xla_traced, steps_ms = {}, []
    for system in (TFZOO, KERAS_HUB):
        model = bench_gpt.compile_model(system, bench_gpt.build(system, settings["preset"], seed=0), True)
        batch = batches[system][0]
        steps_ms.append(median_seconds(lambda: model.train_on_batch(*batch), args.calls) * 1e3)  # compiles first
        xla_traced[system] = traced_xla_op_times(model, batch)
        log(f"  {system:9s} XLA train_on_batch {steps_ms[-1]:7.1f} ms")
    step_flops = bench_gpt.training_flops_per_token(settings) * batch_size * length
    print("\nThe same step compiled whole with XLA (`jit_compile=True`), traced (2 steps): wall ms per "
          "step by kind of XLA op (concurrent ops share a slice)\n")
    print_breakdown(xla_traced, "first op to last")
    print(f"| train_on_batch, median of {args.calls} calls, untraced | {steps_ms[0]:.1f} | {steps_ms[1]:.1f} |")
    dot_gflops = [step_flops / (xla_traced[system].get(XLA_DOTS, float("nan")) / 1e3) / 1e9
                  for system in (TFZOO, KERAS_HUB)]
    print(f"\nThe step's {step_flops / 1e9:.1f} GFLOP of model FLOPs over the wall time counted as dots: "
          f"tfzoo {dot_gflops[0]:.0f}, keras-hub {dot_gflops[1]:.0f} GFLOP/s. 1.3x keras-hub's step is "
          f"{steps_ms[1] / 1.3:.0f} ms.")

    new_tokens = settings["new_tokens"]
    print(f"\nGreedy decoding, prompt {settings['prompt_length']} + {new_tokens} new, XLA: ms per new-token step\n")
    print("| batch | matvecs alone (floor) | tfzoo | keras-hub |\n|---|---:|---:|---:|")
    for batch_size in settings["generate_batch_sizes"]:
        floor = median_seconds(decode_floor(arguments, batch_size, new_tokens), args.calls) / new_tokens
        prompts = bench_gpt.generation_prompts(settings, batch_size, arguments["vocabulary_size"], seed=0)
        steps = {}
        for system in (TFZOO, KERAS_HUB):
            model = bench_gpt.build(system, settings["preset"], seed=0)
            if system == KERAS_HUB:
                bench_gpt.compile_model(system, model, True)
            generate, _ = bench_gpt.make_generate(system, model, prompts, new_tokens, True)
            steps[system] = median_seconds(generate, args.calls) / new_tokens  # prefill included
        print(f"| {batch_size} | {floor * 1e3:.2f} | {steps[TFZOO] * 1e3:.2f} | {steps[KERAS_HUB] * 1e3:.2f} |")
    print(f"\n{info['cpu_model']} ({' '.join(info['cpu_flags'])}), TF {info['tensorflow']}, keras-hub "
          f"{info['keras_hub']}; load {log.load_summary()}; took {log.elapsed():.0f} s")


if __name__ == "__main__":
    main()
