"""tfzoo's fused GELU and layer norm in training (no XLA) against the same as plain TensorFlow ops.

Without XLA, `TransformerBlock` runs its GELU in training as `fused_activation` (forward
pass and hand-written gradient, each one XLA-compiled pass; see
`tfzoo.layers.activations`). This measures what that buys, twice:

1. one feed-forward GELU, its output and gradient in one `tf.function` (not XLA), plain
   ops against fused, at the tiny GPT's training size `(4096, 1024)` and at smaller ones:
   where the fused pass stops paying (`FUSED_MIN_ELEMENTS`, under which the block keeps
   the plain ops);
2. the whole tiny-GPT training step (`bench_gpt.py`'s model, batches and `compile`),
   two models with the same weights, one with the fused GELU turned off, steps taking
   turns; the last losses show that both trained alike;
3. the same step with the fused layer normalization (`tfzoo.layers.normalization`)
   turned off instead.

Both in float32 and under `mixed_bfloat16`. The ratios are fused over plain.

    python benchmarks/bench_fused_gelu.py            # 5 rounds (about 2 minutes on 2 cores)
    python benchmarks/bench_fused_gelu.py --quick    # a smoke test
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402

import common  # noqa: E402

FUSED, PLAIN = "fused", "plain ops"
POLICIES = ("float32", "mixed_bfloat16")


def gelu_seconds(policy, shape, rounds, calls):
    """Median seconds of one GELU's output and gradient, `{FUSED: s, PLAIN: s}`, and the
    largest difference between the two gradients."""
    import numpy as np
    import tensorflow as tf

    from tfzoo.layers.activations import fused_activation, get_activation

    dtype = "bfloat16" if policy == "mixed_bfloat16" else "float32"
    x = tf.cast(tf.random.stateless_normal(shape, seed=[0, 1]) * 2.0, dtype)
    functions = {FUSED: fused_activation("gelu_approximate"), PLAIN: get_activation("gelu_approximate")}

    def make_step(activation):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                output = activation(x)
            return output, tape.gradient(output, x, output_gradients=tf.ones_like(output))
        return step

    steps = {name: make_step(function) for name, function in functions.items()}
    gradients = {name: np.asarray(tf.cast(step()[1], "float32")) for name, step in steps.items()}
    samples = {name: [] for name in steps}
    for round_index in range(rounds):
        for name in (steps if round_index % 2 == 0 else reversed(list(steps))):
            started = time.perf_counter()
            for _ in range(calls):
                result = steps[name]()
            result[1].numpy()
            samples[name].append((time.perf_counter() - started) / calls)
    difference = float(np.abs(gradients[FUSED] - gradients[PLAIN]).max())
    return {name: statistics.median(values) for name, values in samples.items()}, samples, difference


@contextlib.contextmanager
def plain_layer_norm():
    """While a model's training step is traced, its layer norms stay Keras' plain ops."""
    from tfzoo.layers import normalization

    fusable = normalization._fusable  # `normalize` asks it on every trace
    normalization._fusable = lambda norm, x: False
    try:
        yield
    finally:
        normalization._fusable = fusable


def training_rates(policy, settings, rounds, steps, log, part="GELU"):
    """Tokens/s of the tiny GPT's training step with and without the fused `part`
    ("GELU" or "layer norm")."""
    import bench_gpt
    from common import TFZOO

    arguments = bench_gpt.model_arguments(settings["preset"])
    batches = bench_gpt.training_batches(settings, arguments["vocabulary_size"])[TFZOO]
    tokens_per_step = settings["train_batch_size"] * settings["train_sequence_length"]
    models = {}
    for name in (FUSED, PLAIN):
        with bench_gpt.dtype_policy(policy):
            model = bench_gpt.compile_model(TFZOO, bench_gpt.build(TFZOO, settings["preset"], seed=0), None)
        if name == PLAIN and part == "GELU":
            for block in model.blocks:
                block.fused_activation_function = None  # the block's plain GELU, as in inference
        with plain_layer_norm() if name == PLAIN and part == "layer norm" else contextlib.nullcontext():
            bench_gpt.train_steps(model, batches, 2)  # traces
        models[name] = model
    rates, losses = {name: [] for name in models}, {}
    for round_index in range(rounds):
        for name in (models if round_index % 2 == 0 else reversed(list(models))):
            bench_gpt.train_steps(models[name], batches, 1)
            seconds, losses[name] = bench_gpt.train_steps(models[name], batches, steps, start=1)
            rates[name].append(tokens_per_step * steps / seconds)
        log(f"  {part}, {policy} round {round_index + 1}: " + ", ".join(f"{name} {rates[name][-1]:.0f} tokens/s" for name in models))
    return rates, losses


def main(argv=None):
    parser = common.benchmark_parser(__doc__.splitlines()[0], "fused_gelu", full_rounds=5)
    args = common.checked_args(parser, argv)
    rounds = args.rounds or (1 if args.quick else 5)
    import bench_gpt

    settings = bench_gpt.SETTINGS["quick" if args.quick else "full"]
    shapes = ((64, 128), (256, 512)) if args.quick else ((64, 512), (128, 1024), (4096, 1024))
    calls, steps = (2, 1) if args.quick else (10, 4)
    log = common.Logger()
    info = common.machine_info()

    report = {"gelu_shapes": shapes, "rounds": rounds, "training": {}, "gelu": {}}
    rows = ["| measure | fused | plain ops | fused / plain (speed) | per round | check |",
            "|---|---:|---:|---:|---|---|"]
    for policy in POLICIES:
        for shape in shapes:
            median, samples, difference = gelu_seconds(policy, shape, rounds, calls)
            report["gelu"][f"{policy} {shape[0]}x{shape[1]}"] = {
                "median_seconds": median, "seconds": samples, "gradient_max_difference": difference}
            per_round = ", ".join(f"{plain / fused:.2f}" for fused, plain in zip(samples[FUSED], samples[PLAIN]))
            rows.append(f"| one GELU {shape[0]} x {shape[1]} ({shape[0] * shape[1]:,} elements), output + gradient, "
                        f"ms, {policy} | {median[FUSED] * 1e3:.2f} | {median[PLAIN] * 1e3:.2f} "
                        f"| {median[PLAIN] / median[FUSED]:.2f} | {per_round} "
                        f"| gradients differ by at most {difference:.1e} |")
            log(f"  GELU {policy} {shape}: fused {median[FUSED] * 1e3:.2f} ms, plain {median[PLAIN] * 1e3:.2f} ms")
    for part, key in (("GELU", "training"), ("layer norm", "training_layer_norm")):
        report[key] = {}
        for policy in POLICIES:
            rates, losses = training_rates(policy, settings, rounds, steps, log, part)
            median = {name: statistics.median(values) for name, values in rates.items()}
            report[key][policy] = {"tokens_per_second": rates, "median": median, "last_loss": losses}
            per_round = ", ".join(f"{fused / plain:.2f}" for fused, plain in zip(rates[FUSED], rates[PLAIN]))
            rows.append(f"| training tokens/s, batch {settings['train_batch_size']}x{settings['train_sequence_length']}, "
                        f"{policy}, no XLA, {part} fused or not | {median[FUSED]:,.0f} | {median[PLAIN]:,.0f} "
                        f"| {median[FUSED] / median[PLAIN]:.2f} | {per_round} "
                        f"| last loss {losses[FUSED]:.5f} vs {losses[PLAIN]:.5f} |")
    table = "\n".join(rows)
    common.print_report(f"Fused GELU and layer norm vs plain ops in training, preset {settings['preset']}, median of {rounds} "
                        "round(s)", table, info, log)
    output = args.output or os.path.join(common.RESULTS, "fused_gelu_quick.json" if args.quick else "fused_gelu.json")
    common.write_json(output, {**report, "machine": info, "load": log.load_summary(),
                               "load_samples": log.load_samples, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
