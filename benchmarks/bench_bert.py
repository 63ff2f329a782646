"""tfzoo's BertEncoder against keras-hub's BertBackbone: encoder inference, back to back.

Both models are built from config with random weights (nothing is downloaded) on the
design brief's "tiny BERT": vocabulary 8192, 4 layers, width 256, 4 heads, FFN 1024,
512 positions, float32, dropout 0. Inputs are a batch of 32 x 128 tokens with
`token_ids`, `segment_ids` (a sentence pair per row) and a `padding_mask` whose real
lengths are uniform in 64..128. Measured:

1. sequences/s of the forward pass, wrapped the same way for both models in
   `tf.function(jit_compile=True)` (XLA) and `tf.function(jit_compile=False)`;
2. the first call of that function on a freshly built model (tracing, compiling with
   XLA, and one run);
3. sequences/s and first call of `model.predict`, what users of either library get
   (Keras' default `jit_compile`, which is False on CPU, and `compile(jit_compile=True)`).

Every measure is taken once per round for both systems: fresh models, their first calls
back to back, then timed calls interleaved between tfzoo and keras-hub (the order
alternates). The table reports medians over rounds of each round's median call, with the
ratio tfzoo / keras-hub. Results go to benchmarks/results/.

    python benchmarks/bench_bert.py                 # full run, 5 rounds (~5 min on 2 quiet cores, ~8 under load)
    python benchmarks/bench_bert.py --quick         # smoke test, tiny sizes (< 1 min)
    python benchmarks/bench_bert.py --rounds 3 --no-predict
"""

import gc
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    KERAS_HUB, RESULTS, TFZOO, Logger, benchmark_parser, checked_args, format_table, load_average, machine_info,
    order_for_round,
    print_report, summarize, write_json,
)

# Sizes per mode. "full" is the number the team quotes; "quick" only checks the script runs.
SETTINGS = {
    "full": dict(
        preset="bert_tiny",
        batch_size=32,
        sequence_length=128,
        min_length=64,  # real lengths are uniform in min_length..sequence_length
        warmup_calls=1,  # after the first (tracing/compiling) call
        calls=12,  # timed calls per system per round, interleaved; the median call is reported
        predict_variants=("default", "xla"),
        rounds=5,  # cheap enough (~1 min a round), and the machine is noisy
    ),
    "quick": dict(
        preset="bert_test",
        batch_size=4,
        sequence_length=32,
        min_length=16,
        warmup_calls=1,
        calls=2,
        predict_variants=("default", "xla"),
        rounds=1,
    ),
}
JIT = {"xla": True, "default": False}


def parse_args(argv=None):
    parser = benchmark_parser(__doc__.split("\n\n")[0], "bench_bert", full_rounds=5)
    parser.add_argument("--no-predict", action="store_true", help="skip the `model.predict` measures")
    return checked_args(parser, argv)


# ---------------------------------------------------------------------------- models
def model_arguments(preset):
    from tfzoo.models.presets import BERT_PRESETS

    return dict(BERT_PRESETS[preset])


def build_tfzoo(preset):
    from tfzoo.models import BertEncoder

    model = BertEncoder.from_preset(preset, dropout=0.0)
    model.build()
    return model


def build_keras_hub(preset):
    import keras_hub

    arguments = model_arguments(preset)
    return keras_hub.models.BertBackbone(
        vocabulary_size=arguments["vocabulary_size"],
        num_layers=arguments["num_layers"],
        num_heads=arguments["num_heads"],
        hidden_dim=arguments["hidden_dim"],
        intermediate_dim=arguments["intermediate_dim"],
        max_sequence_length=arguments["max_sequence_length"],
        dropout=0.0,
    )


BUILDERS = {TFZOO: build_tfzoo, KERAS_HUB: build_keras_hub}


def build(system, preset, seed):
    import keras

    keras.utils.set_random_seed(seed)
    return BUILDERS[system](preset)


# ---------------------------------------------------------------------------- inputs
def make_inputs(settings, vocabulary_size, seed=0):
    """One batch as each model takes it, and the real lengths.

    Each row is a sentence pair: `[CLS]`-like first token, segment 0 up to a random split,
    segment 1 to the row's length, then padding (token 0, segment 0, mask false).
    The padding mask is boolean for tfzoo ("true for real tokens") and int32 for keras-hub
    (its `padding_mask` input is declared int32); the values are the same.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    batch_size, sequence_length = settings["batch_size"], settings["sequence_length"]
    lengths = rng.integers(settings["min_length"], sequence_length + 1, batch_size)
    token_ids = np.zeros((batch_size, sequence_length), np.int32)
    segment_ids = np.zeros((batch_size, sequence_length), np.int32)
    padding_mask = np.zeros((batch_size, sequence_length), bool)
    for row, length in enumerate(lengths):
        token_ids[row, :length] = rng.integers(1, vocabulary_size, length)
        split = rng.integers(1, length)
        segment_ids[row, split:length] = 1
        padding_mask[row, :length] = True
    numpy_inputs = {
        TFZOO: {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
        KERAS_HUB: {"token_ids": token_ids, "segment_ids": segment_ids,
                    "padding_mask": padding_mask.astype(np.int32)},
    }
    tensor_inputs = {system: {key: tf.constant(value) for key, value in inputs.items()}
                     for system, inputs in numpy_inputs.items()}
    return numpy_inputs, tensor_inputs, lengths


def check_outputs(system, outputs, settings, hidden_dim):
    sequence = np.asarray(outputs["sequence_output"])
    pooled = np.asarray(outputs["pooled_output"])
    expected = (settings["batch_size"], settings["sequence_length"], hidden_dim)
    if sequence.shape != expected or pooled.shape != (settings["batch_size"], hidden_dim):
        raise RuntimeError(f"{system}: unexpected output shapes {sequence.shape}, {pooled.shape}")
    if not (np.isfinite(sequence).all() and np.isfinite(pooled).all()):
        raise RuntimeError(f"{system}: outputs are not finite")


# ---------------------------------------------------------------------------- measuring
def make_forward(model, jit_compile):
    """The forward pass, wrapped identically for both models."""
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def forward(inputs):
        return model(inputs, training=False)

    return forward


def make_call(kind, variant, model, inputs, settings):
    """A no-argument function that runs one batch through `model` and returns its outputs."""
    if kind == "function":
        function = make_forward(model, JIT[variant])

        def call():
            outputs = function(inputs)
            outputs["pooled_output"].numpy()  # make sure the work has finished
            return outputs

        return call, JIT[variant]
    if variant == "xla":
        model.compile(jit_compile=True)  # no optimizer or loss is needed to predict

    def call():
        return model.predict(inputs, batch_size=settings["batch_size"], verbose=0)

    return call, bool(model.jit_compile)


def timed(call):
    begin = time.perf_counter()
    outputs = call()
    return time.perf_counter() - begin, outputs


def measure_pair(kind, variant, round_index, settings, tensor_inputs, numpy_inputs, hidden_dim):
    """Both systems on one measure: first calls back to back, then interleaved timed calls.

    Each system gets a freshly built model (so that its first call really traces and
    compiles) and its first call; then both warm up, then the timed calls alternate
    A, B, B, A, A, B, ... so that load from other jobs hits both alike.
    """
    order = order_for_round(round_index)
    models, calls, jits, first = {}, {}, {}, {}
    for system in order:
        models[system] = build(system, settings["preset"], seed=round_index)
        inputs = tensor_inputs[system] if kind == "function" else numpy_inputs[system]
        calls[system], jits[system] = make_call(kind, variant, models[system], inputs, settings)
        first[system], outputs = timed(calls[system])
        check_outputs(system, outputs, settings, hidden_dim)
    for system in order:
        for _ in range(settings["warmup_calls"]):
            calls[system]()
    seconds = {system: [] for system in order}
    for index in range(settings["calls"]):
        for system in (order if index % 2 == 0 else order[::-1]):
            seconds[system].append(timed(calls[system])[0])
    parameters = {system: int(model.count_params()) for system, model in models.items()}
    del models, calls
    gc.collect()
    return order, first, seconds, jits, parameters


def run(settings, rounds, log, with_predict=True):
    arguments = model_arguments(settings["preset"])
    numpy_inputs, tensor_inputs, lengths = make_inputs(settings, arguments["vocabulary_size"])
    real = lengths.sum() / lengths.size / settings["sequence_length"]
    log(f"  inputs: batch {settings['batch_size']} x {settings['sequence_length']}, real lengths "
        f"{lengths.min()}..{lengths.max()} (mean {lengths.mean():.1f}, {real:.0%} real tokens)")
    parts = [("function", variant) for variant in ("xla", "default")]
    if with_predict:
        parts += [("predict", variant) for variant in settings["predict_variants"]]
    measures, checks = {}, dict(lengths=lengths.tolist())
    for round_index in range(rounds):
        for kind, variant in parts:
            order, first, seconds, jits, parameters = measure_pair(
                kind, variant, round_index, settings, tensor_inputs, numpy_inputs, arguments["hidden_dim"]
            )
            if parameters[TFZOO] != parameters[KERAS_HUB]:
                raise RuntimeError(f"parameter counts differ: {parameters}")
            key = f"{kind}_{variant}"
            for system in order:
                call = statistics.median(seconds[system])
                rate = settings["batch_size"] / call
                measures.setdefault(f"{key}_sequences_per_second", {}).setdefault(system, []).append(rate)
                measures.setdefault(f"{key}_first_call_seconds", {}).setdefault(system, []).append(first[system])
                checks.setdefault(f"{key}_{system}", []).append(dict(
                    jit_compile=jits[system], parameters=parameters[system],
                    first_call_seconds=first[system], call_seconds=seconds[system],
                ))
                log(f"  round {round_index + 1}/{rounds} {kind:8s} {variant:7s} {system:9s}: "
                    f"{rate:7.1f} sequences/s (median {call * 1000:6.1f} ms/batch, best "
                    f"{min(seconds[system]) * 1000:6.1f}), first call {first[system]:5.2f} s "
                    f"(jit_compile={jits[system]})")
    return measures, checks


# ---------------------------------------------------------------------------- report
def describe_measures(settings):
    shape = f"batch {settings['batch_size']}x{settings['sequence_length']}"
    rows = []
    for kind, what in (("function", "tf.function(model)"), ("predict", "model.predict")):
        for variant in ("xla", "default"):
            name = {"xla": "XLA", "default": "no XLA"}[variant]
            if kind == "predict" and variant == "default":
                name = "Keras default (no XLA on CPU)"
            rows.append((f"{kind}_{variant}_sequences_per_second", f"{what} sequences/s, {shape}, {name}", "higher"))
    for kind, what in (("function", "tf.function(model)"), ("predict", "model.predict")):
        for variant in ("xla", "default"):
            name = {"xla": "XLA", "default": "no XLA"}[variant]
            rows.append((f"{kind}_{variant}_first_call_seconds", f"first {what} call, s, {name}", "lower"))
    return rows


def main(argv=None):
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = dict(SETTINGS[mode])
    rounds = args.rounds or settings["rounds"]
    output = args.output or os.path.join(RESULTS, "bench_bert_quick.json" if args.quick else "bench_bert.json")

    log = Logger()

    import keras

    keras.utils.set_random_seed(0)
    info = machine_info()
    log(f"bench_bert ({mode}): TF {info['tensorflow']}, Keras {info['keras']}, keras-hub {info['keras_hub']}, "
        f"{info['cpu_count']} CPUs, preset {settings['preset']} {model_arguments(settings['preset'])}")

    measures, checks = run(settings, rounds, log, with_predict=not args.no_predict)

    results = summarize(measures, describe_measures(settings))
    info["load_average_end"] = load_average()
    info["load_average_samples"] = log.load_samples
    elapsed = log.elapsed()
    title = (f"tfzoo BertEncoder vs keras-hub BertBackbone, preset {settings['preset']} "
             f"{model_arguments(settings['preset'])}, float32, random weights, {mode} mode")
    table = format_table(results, rounds)
    print_report(title, table, info, log)
    write_json(output, dict(
        benchmark="bench_bert", mode=mode, rounds=rounds, predict=not args.no_predict,
        model=model_arguments(settings["preset"]), settings=settings, machine=info,
        results=results, checks=checks, table=table, elapsed_seconds=elapsed,
    ))
    return results


if __name__ == "__main__":
    main()
