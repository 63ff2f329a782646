"""tfzoo's BertEncoder against keras-hub's BertBackbone and Hugging Face's BertModel on
PyTorch: encoder inference, back to back.

All models are built from config with random weights (nothing is downloaded) on the
design brief's "tiny BERT": vocabulary 8192, 4 layers, width 256, 4 heads, FFN 1024,
512 positions, float32, dropout 0. Hugging Face transformers on PyTorch (CPU) is
measured when installed (`pip install -e '.[bench]'`), eagerly under
`torch.inference_mode()`, in the `tf.function` rows; it is skipped with a note
otherwise. Inputs are a batch of 32 x 128 tokens with
`token_ids`, `segment_ids` (a sentence pair per row) and a `padding_mask` whose real
lengths are uniform in 64..128. Measured:

1. sequences/s of the forward pass, wrapped the same way for both models in
   `tf.function(jit_compile=True)` (XLA) and `tf.function(jit_compile=False)`;
2. the first call of that function on a freshly built model (tracing, compiling with
   XLA, and one run);
3. sequences/s and first call of `model.predict`, what users of either library get
   (Keras' default `jit_compile`, which is False on CPU, and `compile(jit_compile=True)`);
4. model-FLOPs utilisation of the forward pass against a matmul peak measured here;
5. peak resident memory of each system's encoder inference, each in a fresh process;
6. tfzoo's `BertEncoder.encode` (the real tokens packed, so that projections, FFNs and
   norms skip the padding; outputs equal the forward pass's at real tokens) against
   keras-hub's XLA forward pass on the same batch: what each library offers for
   inference on padded batches. Its MFU is left out: it skips part of the FLOPs counted.

Every measure is taken once per round for every system: fresh models, their first calls
back to back, then timed calls interleaved between the systems (the order rotates).
The table reports medians over rounds of each round's median call, with the ratio of
tfzoo to each peer. Results go to benchmarks/results/.

    python benchmarks/bench_bert.py                 # full run, 5 rounds (~5 min on 2 quiet cores, ~8 under load)
    python benchmarks/bench_bert.py --quick         # smoke test, tiny sizes (< 1 min)
    python benchmarks/bench_bert.py --rounds 3 --no-predict
"""

import gc
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    HF_TORCH, KERAS_HUB, RESULTS, TFZOO, Logger, add_peer_arguments, benchmark_parser, best_peak, check_targets,
    checked_args, format_memory_table, format_mfu_table, format_table, format_targets, forward_flops_per_token,
    import_for_memory_child, load_average, measure_matmul_peak, order_for_call, order_for_round, parameter_count,
    print_report, report_peak_memory, resident_bytes, run_memory_children, seeded_build, start_run, summarize,
    write_json,
)

# Set by main() when PyTorch and transformers are installed (and not --no-torch).
TORCH = None

# Sizes per mode. "full" is the number the team quotes; "quick" only checks the script runs.
SETTINGS = {
    "full": dict(
        preset="bert_tiny",
        batch_size=32,
        sequence_length=128,
        min_length=64,  # real lengths are uniform in min_length..sequence_length
        padded_length=512,  # the encode_padded row: the same batch padded to this, as preprocessors do
        warmup_calls=1,  # after the first (tracing/compiling) call
        calls=12,  # timed calls per system per round, interleaved; the median call is reported
        predict_variants=("default", "xla"),
        matmul_sizes=(1024, 2048),
        rounds=5,  # cheap enough (~1 min a round), and the machine is noisy
    ),
    "quick": dict(
        preset="bert_test",
        batch_size=4,
        sequence_length=32,
        min_length=16,
        padded_length=64,
        warmup_calls=1,
        calls=2,
        predict_variants=("default", "xla"),
        matmul_sizes=(256, 512),
        rounds=1,
    ),
}
JIT = {"xla": True, "default": False}
ENCODE_KINDS = ("encode", "encode_padded")  # tfzoo's encode against keras-hub's forward pass


def parse_args(argv=None):
    parser = benchmark_parser(__doc__.split("\n\n")[0], "bench_bert", full_rounds=5)
    parser.add_argument("--no-predict", action="store_true", help="skip the `model.predict` measures")
    add_peer_arguments(parser)  # --no-torch, --no-memory, and the peak-memory child's flags
    return checked_args(parser, argv)


def systems(kind="function"):
    """PyTorch has no `model.predict`: it takes part in the forward-pass rows only. The
    `encode` row is tfzoo's padding-free `BertEncoder.encode` against keras-hub's forward
    pass (a peer with no such mode), both with XLA; so is `encode_padded`, on the same
    batch padded to `padded_length`."""
    with_torch = TORCH is not None and kind == "function"
    return (TFZOO, KERAS_HUB) + ((HF_TORCH,) if with_torch else ())


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


def build_hf(preset, arguments=None):
    """BertModel with the same shapes: exact GELU, two segments, dropout 0, with the pooler."""
    from transformers import BertConfig, BertModel

    arguments = arguments or model_arguments(preset)
    config = BertConfig(
        vocab_size=arguments["vocabulary_size"],
        hidden_size=arguments["hidden_dim"],
        num_hidden_layers=arguments["num_layers"],
        num_attention_heads=arguments["num_heads"],
        intermediate_size=arguments["intermediate_dim"],
        max_position_embeddings=arguments["max_sequence_length"],
        type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertModel(config).eval()


BUILDERS = {TFZOO: build_tfzoo, KERAS_HUB: build_keras_hub, HF_TORCH: build_hf}


def build(system, preset, seed, arguments=None):
    if system == HF_TORCH:
        return seeded_build(system, seed, lambda: build_hf(preset, arguments), TORCH)
    return seeded_build(system, seed, lambda: BUILDERS[system](preset))


# ---------------------------------------------------------------------------- inputs
def make_inputs(settings, vocabulary_size, seed=0, tensorflow=True):
    """One batch as each model takes it, and the real lengths.

    Each row is a sentence pair: `[CLS]`-like first token, segment 0 up to a random split,
    segment 1 to the row's length, then padding (token 0, segment 0, mask false).
    The padding mask is boolean for tfzoo ("true for real tokens") and int32 for keras-hub
    (its `padding_mask` input is declared int32); the values are the same. Hugging Face
    takes its own names and int64 tensors. `tensorflow=False` skips TensorFlow's tensors
    (a PyTorch memory child never imports TensorFlow).
    """
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
    tensor_inputs = {}
    if tensorflow:
        tensor_inputs = as_tensors(numpy_inputs)
    if TORCH is not None:
        tensor_inputs[HF_TORCH] = {
            "input_ids": TORCH.from_numpy(token_ids.astype(np.int64)),
            "token_type_ids": TORCH.from_numpy(segment_ids.astype(np.int64)),
            "attention_mask": TORCH.from_numpy(padding_mask.astype(np.int64)),
        }
    return numpy_inputs, tensor_inputs, lengths


def as_tensors(numpy_inputs):
    """Each system's NumPy inputs as TensorFlow constants."""
    import tensorflow as tf

    return {system: {key: tf.constant(value) for key, value in inputs.items()}
            for system, inputs in numpy_inputs.items()}


def pad_inputs(numpy_inputs, length):
    """The TensorFlow systems' inputs padded with more padding columns, up to `length`:
    as NumPy arrays and as tensors."""
    padded = {system: {key: np.pad(value, ((0, 0), (0, length - value.shape[1])))
                       for key, value in numpy_inputs[system].items()} for system in (TFZOO, KERAS_HUB)}
    return padded, as_tensors(padded)


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


def make_call(kind, variant, model, inputs, settings, system=TFZOO):
    """A no-argument function that runs one batch through `model` and returns its outputs."""
    if system == HF_TORCH:
        # Eager PyTorch in both the XLA and the no-XLA row: there is nothing to compile.
        def call():
            with TORCH.inference_mode():
                outputs = model(**inputs)
            return {"sequence_output": outputs.last_hidden_state.numpy(),
                    "pooled_output": outputs.pooler_output.numpy()}

        return call, False
    if kind in ENCODE_KINDS and system == TFZOO:
        # The packing is planned from the NumPy padding mask, then one compiled call.
        def call():
            outputs = model.encode(inputs, jit_compile=JIT[variant])
            outputs["pooled_output"].numpy()
            return outputs

        return call, JIT[variant]
    if kind == "function" or kind in ENCODE_KINDS:
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
    order = order_for_round(round_index, systems(kind))
    models, calls, jits, first = {}, {}, {}, {}
    if kind == "encode_padded":  # the batch padded to padded_length: the outputs have that length
        settings = dict(settings, sequence_length=settings["padded_length"])
    for system in order:
        models[system] = build(system, settings["preset"], seed=round_index)
        # tfzoo's encode plans its packing from NumPy arrays.
        numpy = kind == "predict" or (kind in ENCODE_KINDS and system == TFZOO)
        inputs = numpy_inputs[system] if numpy else tensor_inputs[system]
        calls[system], jits[system] = make_call(kind, variant, models[system], inputs, settings, system)
        first[system], outputs = timed(calls[system])
        check_outputs(system, outputs, settings, hidden_dim)
    for system in order:
        for _ in range(settings["warmup_calls"]):
            calls[system]()
    seconds = {system: [] for system in order}
    for index in range(settings["calls"]):
        for system in order_for_call(index, order):
            seconds[system].append(timed(calls[system])[0])
    parameters = {system: parameter_count(model) for system, model in models.items()}
    del models, calls
    gc.collect()
    return order, first, seconds, jits, parameters


def run(settings, rounds, log, with_predict=True):
    arguments = model_arguments(settings["preset"])
    numpy_inputs, tensor_inputs, lengths = make_inputs(settings, arguments["vocabulary_size"])
    real = lengths.sum() / lengths.size / settings["sequence_length"]
    log(f"  inputs: batch {settings['batch_size']} x {settings['sequence_length']}, real lengths "
        f"{lengths.min()}..{lengths.max()} (mean {lengths.mean():.1f}, {real:.0%} real tokens)")
    parts = [("function", variant) for variant in ("xla", "default")] + [("encode", "xla"), ("encode_padded", "xla")]
    padded_numpy, padded_tensors = pad_inputs(numpy_inputs, settings["padded_length"])
    if with_predict:
        parts += [("predict", variant) for variant in settings["predict_variants"]]
    measures, checks = {}, dict(lengths=lengths.tolist())
    for round_index in range(rounds):
        for kind, variant in parts:
            padded = kind == "encode_padded"
            order, first, seconds, jits, parameters = measure_pair(
                kind, variant, round_index, settings, padded_tensors if padded else tensor_inputs,
                padded_numpy if padded else numpy_inputs, arguments["hidden_dim"]
            )
            if len(set(parameters.values())) != 1:
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
    rows.append(("encode_xla_sequences_per_second",
                 f"tfzoo encode (padding skipped) vs keras-hub tf.function(model), sequences/s, {shape}, XLA", "higher"))
    rows.append(("encode_padded_xla_sequences_per_second",
                 f"the same batch padded to {settings['padded_length']}: tfzoo encode vs keras-hub "
                 "tf.function(model), sequences/s, XLA", "higher"))
    for kind, what in (("function", "tf.function(model)"), ("predict", "model.predict")):
        for variant in ("xla", "default"):
            name = {"xla": "XLA", "default": "no XLA"}[variant]
            rows.append((f"{kind}_{variant}_first_call_seconds", f"first {what} call, s, {name}", "lower"))
    return rows


def sequence_flops(settings):
    """One sequence's forward pass: every padded position is computed, so all of them count.

    2 x the matmul weights per token plus attention over the whole sequence (see
    common.forward_flops_per_token), and the pooler's d x d matmul once per sequence.
    """
    arguments = model_arguments(settings["preset"])
    length, width = settings["sequence_length"], arguments["hidden_dim"]
    per_token = forward_flops_per_token(arguments["num_layers"], width, arguments["intermediate_dim"], context=length)
    return per_token * length + 2 * width * width


def utilisation_rows(results, settings, peak):
    flops = sequence_flops(settings)
    rows = []
    for row in results:
        if row["measure"].endswith("_sequences_per_second") and not row["measure"].startswith("encode_"):
            rows.append((row["label"], {system: value["median"] * flops / (peak["peak_gflops"] * 1e9)
                                        for system, value in row["systems"].items()}))
    return rows, flops


# ---------------------------------------------------------------------------- peak memory
def import_hf_model_code():
    from transformers import BertConfig, BertModel  # noqa: F401


def memory_child(args, settings):
    """In a fresh process: one system's encoder inference (XLA for TensorFlow), then its peak RSS."""
    global TORCH
    system = args.memory_child
    TORCH = import_for_memory_child(system, import_hf_model_code)
    arguments = json.loads(args.memory_model) if system == HF_TORCH else model_arguments(settings["preset"])
    baseline = resident_bytes()
    _, tensor_inputs, _ = make_inputs(settings, arguments["vocabulary_size"], tensorflow=system != HF_TORCH)
    model = build(system, settings["preset"], seed=0, arguments=arguments)
    call, _ = make_call("function", "xla", model, tensor_inputs[system], settings, system)
    for _ in range(3):
        call()
    report_peak_memory(baseline, system=system, tensorflow_loaded="tensorflow" in sys.modules, workload="encode")


def run_memory(settings, quick, log):
    children = [("encode", system, system) for system in systems()]
    reports = run_memory_children(os.path.abspath(__file__), children, model_arguments(settings["preset"]), quick, log)
    return reports.get("encode", {})


def main(argv=None):
    global TORCH
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = dict(SETTINGS[mode])
    if args.memory_child:
        return memory_child(args, settings)
    rounds = args.rounds or settings["rounds"]
    output = args.output or os.path.join(RESULTS, "bench_bert_quick.json" if args.quick else "bench_bert.json")

    log = Logger()

    info, TORCH = start_run("bench_bert", mode, f"preset {settings['preset']} {model_arguments(settings['preset'])}",
                            args.no_torch, log)

    log("matmul peak, at the start")
    peak_at_start = measure_matmul_peak(log, sizes=settings["matmul_sizes"], torch=TORCH)
    measures, checks = run(settings, rounds, log, with_predict=not args.no_predict)
    memory = {}
    if not args.no_memory:
        log("peak memory, one fresh process per system")
        memory = run_memory(settings, args.quick, log)

    log("matmul peak, at the end")
    peak = best_peak(peak_at_start, measure_matmul_peak(log, sizes=settings["matmul_sizes"], torch=TORCH))
    results = summarize(measures, describe_measures(settings))
    info["load_average_end"] = load_average()
    info["load_average_samples"] = log.load_samples
    elapsed = log.elapsed()
    peers = "keras-hub BertBackbone" + (" and HF BertModel (PyTorch)" if TORCH is not None else "")
    title = (f"tfzoo BertEncoder vs {peers}, preset {settings['preset']} "
             f"{model_arguments(settings['preset'])}, float32, random weights, {mode} mode")
    mfu_rows, flops = utilisation_rows(results, settings, peak)
    tables = [format_table(results, rounds),
              format_mfu_table(mfu_rows, peak) + f"\n\nForward FLOPs per sequence: {flops / 1e6:.0f} M (see README)."]
    shape = f"{settings['batch_size']}x{settings['sequence_length']}"
    if memory:
        tables.append(format_memory_table([(f"encoder inference, batch {shape}, XLA / PyTorch eager", memory)]))
    # Issue 8's target: encoder inference at least 1.2x keras-hub's BertBackbone with XLA.
    targets = check_targets(results, [
        ("function_xla_sequences_per_second", KERAS_HUB, "at least", 1.2,
         "encoder inference vs keras-hub BertBackbone, both with XLA, the same forward pass"),
        ("encode_xla_sequences_per_second", KERAS_HUB, "at least", 1.2,
         "encoder inference vs keras-hub BertBackbone, both with XLA, tfzoo's encode (padding skipped)"),
    ])
    tables.append(format_targets(targets))
    table = "\n\n".join(tables)
    print_report(title, table, info, log)
    write_json(output, dict(
        benchmark="bench_bert", mode=mode, rounds=rounds, predict=not args.no_predict,
        model=model_arguments(settings["preset"]), settings=settings, machine=info,
        results=results, matmul_peak=peak, forward_flops_per_sequence=flops,
        utilisation={label: values for label, values in mfu_rows}, peak_memory=memory, targets=targets,
        checks=checks, table=table, elapsed_seconds=elapsed,
    ))
    return results


if __name__ == "__main__":
    main()
