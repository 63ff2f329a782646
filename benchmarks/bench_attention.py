"""Causal self-attention forward and backward under XLA: tfzoo's query blocks, its one mask, and Keras'.

Under `jit_compile=True` tfzoo's `MultiHeadAttention` splits causal self-attention into
query blocks that leave out the keys after each block (see
`tfzoo.layers.attention.causal_query_blocks`). This measures what that saves on one
attention layer of the tiny GPT's width (256, 4 heads of 64) at 4,096 tokens a batch,
against the same layer with one mask over all keys (the split turned off while tracing)
and against `keras.layers.MultiHeadAttention(use_causal_mask=True)`. Each call computes
the layer's output and the gradients of a scalar loss with respect to its input and
weights, all in one XLA function. Setups take turns within each round.

    python benchmarks/bench_attention.py            # 3 rounds (about 3 minutes on 2 cores)
    python benchmarks/bench_attention.py --quick    # a smoke test
"""

import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

BLOCKS, ONE_MASK, KERAS = "tfzoo, query blocks", "tfzoo, one mask", "keras.layers.MultiHeadAttention"
SETUPS = (BLOCKS, ONE_MASK, KERAS)


def main(argv=None):
    parser = common.benchmark_parser(__doc__.splitlines()[0], "attention", full_rounds=3)
    parser.add_argument("--calls", type=int, default=None, help="calls per setup and round (full 5, quick 2)")
    args = common.checked_args(parser, argv)
    rounds = args.rounds or (1 if args.quick else 3)
    calls = args.calls or (2 if args.quick else 5)
    # (batch, length): the same 4,096 tokens a batch, longer and longer sequences.
    shapes = ((4, 256), (2, 512)) if args.quick else ((32, 128), (16, 256), (8, 512), (4, 1024))
    width, heads = 256, 4
    log = common.Logger()
    info = common.machine_info()

    import keras
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # each shape has its own functions: tf.function's retracing warning is noise here
    import tfzoo.layers.attention as attention
    from tfzoo.layers import MultiHeadAttention

    def make_step(layer, causal_arguments):
        @tf.function(jit_compile=True)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                output = layer(x, x, **causal_arguments) if isinstance(layer, keras.layers.MultiHeadAttention) \
                    else layer(x, **causal_arguments)
                loss = tf.reduce_sum(tf.square(output))
            return (output,) + tuple(tape.gradient(loss, [x] + layer.trainable_weights))
        return step

    seconds = {f"{length}": {setup: [] for setup in SETUPS} for _, length in shapes}
    agreement = {}
    products = {f"{length}": {} for _, length in shapes}  # attention products traced, per tfzoo setup
    for batch, length in shapes:
        keras.utils.set_random_seed(0)
        x = tf.random.normal((batch, length, width))
        ours = MultiHeadAttention(num_heads=heads, key_dim=width // heads)
        theirs = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=width // heads)
        ours(x), theirs(x, x)  # build outside the XLA functions
        steps = {BLOCKS: make_step(ours, dict(use_causal_mask=True)),
                 ONE_MASK: make_step(ours, dict(use_causal_mask=True)),
                 KERAS: make_step(theirs, dict(use_causal_mask=True))}
        outputs = {}
        for setup, step in steps.items():  # trace and compile; the split is chosen while tracing
            started = time.perf_counter()
            # Count the softmax(Q K^T) V products tfzoo's layer traces: one per query block.
            with mock.patch.object(ours, "_attend", wraps=ours._attend) as attend:
                if setup == ONE_MASK:
                    with mock.patch.object(attention, "causal_query_blocks", lambda length: None):
                        outputs[setup] = [value.numpy() for value in step(x)]
                else:
                    outputs[setup] = [value.numpy() for value in step(x)]
            if setup != KERAS:
                products[f"{length}"][setup] = attend.call_count
            log(f"length {length}: compiled {setup} in {time.perf_counter() - started:.1f} s")
        # The split must not change the result: output and every gradient, blocks vs one mask,
        # as a relative (Frobenius) difference. The key bias's gradient is left out: it is zero
        # in exact arithmetic (a shift shared by all keys leaves the softmax as it is).
        norms = [float(np.linalg.norm(b)) for b in outputs[ONE_MASK]]
        agreement[f"{length}"] = max(float(np.linalg.norm(a - b)) / norm
                                     for a, b, norm in zip(outputs[BLOCKS], outputs[ONE_MASK], norms)
                                     if norm > 1e-4 * max(norms))
        for round_index in range(rounds):
            order = SETUPS[round_index % 3:] + SETUPS[: round_index % 3]
            for setup in order:
                step = steps[setup]
                started = time.perf_counter()
                for _ in range(calls):
                    result = step(x)
                result[0].numpy()  # wait for the last call
                seconds[f"{length}"][setup].append((time.perf_counter() - started) / calls)
            log(f"length {length} round {round_index + 1}: " + ", ".join(
                f"{setup} {seconds[f'{length}'][setup][-1] * 1e3:.1f} ms" for setup in SETUPS))

    rows = ["| batch x length | query blocks | query blocks (ms) | one mask (ms) | Keras MHA (ms) "
            "| one mask / blocks | Keras / blocks | relative difference, blocks vs one mask |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    medians = {}
    for batch, length in shapes:
        median = {setup: statistics.median(values) for setup, values in seconds[f"{length}"].items()}
        medians[f"{length}"] = median
        rows.append(f"| {batch} x {length} | {products[f'{length}'][BLOCKS]} | {median[BLOCKS] * 1e3:.1f} "
                    f"| {median[ONE_MASK] * 1e3:.1f} "
                    f"| {median[KERAS] * 1e3:.1f} | {median[ONE_MASK] / median[BLOCKS]:.2f} "
                    f"| {median[KERAS] / median[BLOCKS]:.2f} | {agreement[f'{length}']:.1e} |")
    table = "\n".join(rows)
    common.print_report(f"Causal self-attention (width {width}, {heads} heads), forward + backward under XLA, "
                        f"median of {rounds} round(s) of {calls} calls", table, info, log)
    output = args.output or os.path.join(common.RESULTS, "attention_quick.json" if args.quick else "attention.json")
    common.write_json(output, {
        "shapes": shapes, "width": width, "heads": heads, "rounds": rounds, "calls": calls,
        "seconds_per_call": seconds, "median_seconds": medians, "relative_difference": agreement,
        "attention_products_traced": products,
        "machine": info, "load": log.load_summary(), "load_samples": log.load_samples, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
