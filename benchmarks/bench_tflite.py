"""tfzoo's GPT in TFLite (float32 and dynamic-range int8) against the in-process Keras model.

One GPT of the design brief's "tiny GPT" shape (4 layers, width 256, 4 heads, FFN 1024,
256 positions; random weights) with a SentencePiece tokenizer trained on Python's
docstrings, so that the TFLite export has its string-to-string `generate` signature.
Measured, greedy, batch 1 (the on-device case), prompt of about 32 tokens + 64 new:

1. new tokens/s of `GPT.generate` in Keras (XLA, its default, and without XLA);
2. new tokens/s of the TFLite `prefill` / `decode` signatures driven by a Python loop
   (`tfzoo.export.tflite.tflite_greedy_generate`), float32 and int8;
3. new tokens/s of the TFLite `generate` signature (string in, string out:
   tokenization, the loop and detokenization in the graph), float32 and int8;
4. file sizes, and how often int8 picks the same next token as float32.

Each round measures every system once (order rotating between rounds); the table has
medians over rounds and each system's ratio to Keras (XLA). The interpreters get as
many threads as TensorFlow uses (every usable CPU). Results go to benchmarks/results/.

    python benchmarks/bench_tflite.py              # full run (~10 min on 2 cores)
    python benchmarks/bench_tflite.py --quick      # smoke test, tiny sizes (~3 min)
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    RESULTS, Logger, benchmark_parser, checked_args, machine_info, print_report, write_json,
)

SETTINGS = {
    "full": dict(preset="gpt_tiny", vocabulary_size=8192, max_sequence_length=256, prompt_tokens=32,
                 new_tokens=64, calls=3, rounds=3, corpus_characters=1_500_000),
    "quick": dict(preset="gpt_test", vocabulary_size=512, max_sequence_length=64, prompt_tokens=8,
                  new_tokens=16, calls=1, rounds=1, corpus_characters=200_000),
}
KERAS_XLA, KERAS, LOOP_FLOAT, LOOP_INT8, TEXT_FLOAT, TEXT_INT8 = (
    "keras_xla", "keras", "tflite_loop_float32", "tflite_loop_int8", "tflite_text_float32", "tflite_text_int8")
LABELS = {
    KERAS_XLA: "Keras GPT.generate (XLA)",
    KERAS: "Keras GPT.generate (no XLA)",
    LOOP_FLOAT: "TFLite float32, prefill/decode loop",
    LOOP_INT8: "TFLite int8, prefill/decode loop",
    TEXT_FLOAT: "TFLite float32, string-to-string generate",
    TEXT_INT8: "TFLite int8, string-to-string generate",
}


def parse_args(argv=None):
    return checked_args(benchmark_parser(__doc__.split("\n\n")[0], "bench_tflite", full_rounds=3), argv)


def build_model(settings, log):
    import keras

    from tfzoo import GPT
    from tfzoo.data import python_docstrings
    from tfzoo.text import train_sentencepiece_tokenizer

    lines = [line for text in python_docstrings(max_characters=settings["corpus_characters"])
             for line in text.splitlines() if line.strip()]
    started = time.perf_counter()
    tokenizer = train_sentencepiece_tokenizer(lines, vocabulary_size=settings["vocabulary_size"])
    log(f"SentencePiece: {tokenizer.vocabulary_size()} pieces in {time.perf_counter() - started:.0f} s")
    keras.utils.set_random_seed(0)
    model = GPT.from_preset(settings["preset"], vocabulary_size=settings["vocabulary_size"],
                            max_sequence_length=settings["max_sequence_length"], tokenizer=tokenizer)
    model.build()
    return model, lines


def prompt_text(model, lines, prompt_tokens):
    """A docstring line of about `prompt_tokens` tokens (joined lines if need be)."""
    text = ""
    for line in lines:
        text = (text + " " + line).strip()
        if len(model.tokenizer([text]).to_list()[0]) >= prompt_tokens:
            break
    ids = model.tokenizer([text]).to_list()[0][:prompt_tokens]
    return model.tokenizer.detokenize([ids]).numpy()[0].decode("utf-8")


def main(argv=None):
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    rounds = args.rounds or settings["rounds"]
    log = Logger()
    info = machine_info()
    import tensorflow as tf

    from tfzoo.export.tflite import convert_to_tflite, tflite_greedy_generate, tflite_interpreter

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    log(f"mode {mode}: {settings}; {rounds} rounds; TFLite threads {threads}")
    model, lines = build_model(settings, log)
    text = prompt_text(model, lines, settings["prompt_tokens"])
    prompt_ids = [int(token) for token in model.tokenizer([text]).to_list()[0]]
    new_tokens = settings["new_tokens"]
    log(f"prompt: {len(prompt_ids)} tokens; {new_tokens} new tokens per call; model {model.count_params():,} parameters")

    contents, conversion_seconds = {}, {}
    for variant in ("float32", "int8"):
        started = time.perf_counter()
        contents[variant] = convert_to_tflite(model, quantize=None if variant == "float32" else "int8")
        conversion_seconds[variant] = time.perf_counter() - started
        log(f"converted {variant}: {len(contents[variant]):,} bytes in {conversion_seconds[variant]:.0f} s")
    folder = tempfile.mkdtemp(prefix="bench_tflite_")
    interpreters = {}
    for variant, content in contents.items():
        path = os.path.join(folder, f"{variant}.tflite")
        with open(path, "wb") as file:
            file.write(content)
        interpreters[variant] = tflite_interpreter(path, num_threads=threads)

    # How often int8 picks float32's next token, over random contexts and a greedy run.
    token_ids = np.random.default_rng(0).integers(4, model.vocabulary_size, (4, 64)).astype("int32")
    float_logits = interpreters["float32"].get_signature_runner("logits")(token_ids=token_ids)["logits"]
    int8_logits = interpreters["int8"].get_signature_runner("logits")(token_ids=token_ids)["logits"]
    keras_logits = np.asarray(model(token_ids))
    argmax_agreement = float(np.mean(int8_logits.argmax(-1) == float_logits.argmax(-1)))
    float_error = float(np.abs(float_logits - keras_logits).max())
    int8_error = float(np.abs(int8_logits - keras_logits).max())

    def keras_run(jit):
        def run():
            return len(model.generate([prompt_ids], max_new_tokens=new_tokens, stop_token_ids=None,
                                      jit_compile=jit)[0])
        return run

    def loop_run(variant):
        def run():
            return len(tflite_greedy_generate(interpreters[variant], [prompt_ids], new_tokens)[0])
        return run

    def text_run(variant):
        runner = interpreters[variant].get_signature_runner("generate")

        def run():
            outputs = runner(prompts=np.array([text], dtype=object), max_new_tokens=np.array(new_tokens, "int32"))
            return int(outputs["lengths"].sum())
        return run

    systems = {KERAS_XLA: keras_run(True), KERAS: keras_run(False), LOOP_FLOAT: loop_run("float32"),
               LOOP_INT8: loop_run("int8"), TEXT_FLOAT: text_run("float32"), TEXT_INT8: text_run("int8")}

    # Same tokens on both sides first: a speed comparison of different work means nothing.
    keras_tokens = model.generate([prompt_ids], max_new_tokens=new_tokens, stop_token_ids=None)[0]
    float_tokens = tflite_greedy_generate(interpreters["float32"], [prompt_ids], new_tokens)[0]
    int8_tokens = tflite_greedy_generate(interpreters["int8"], [prompt_ids], new_tokens)[0]
    tokens_equal = keras_tokens == float_tokens
    greedy_agreement = float(np.mean([a == b for a, b in zip(int8_tokens, keras_tokens)]))
    log(f"float32 greedy tokens equal Keras: {tokens_equal}; int8 greedy tokens equal Keras: "
        f"{greedy_agreement:.2f}; int8 next-token argmax agreement with float32: {argmax_agreement:.3f}")
    for name, run in systems.items():  # warm-up: tracing, XLA compiling, interpreter allocation
        run()
    log("warmed up")

    measures = {name: [] for name in systems}
    names = list(systems)
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            started = time.perf_counter()
            produced = sum(systems[name]() for _ in range(settings["calls"]))
            measures[name].append(produced / (time.perf_counter() - started))
        log(f"round {round_index + 1}: " + ", ".join(f"{name} {measures[name][-1]:.0f}" for name in names))

    medians = {name: statistics.median(values) for name, values in measures.items()}
    sizes = {variant: len(content) for variant, content in contents.items()}
    lines_out = [
        f"| greedy new tokens/s, batch 1, prompt {len(prompt_ids)} + {new_tokens} new (median of {rounds}) "
        "| tokens/s | × Keras (XLA) | × Keras (no XLA) | per-round tokens/s |",
        "|---|---:|---:|---:|---|",
    ]
    for name in names:
        lines_out.append(
            f"| {LABELS[name]} | {medians[name]:,.0f} | {medians[name] / medians[KERAS_XLA]:.2f} "
            f"| {medians[name] / medians[KERAS]:.2f} | {', '.join(f'{value:.0f}' for value in measures[name])} |"
        )
    lines_out += [
        "",
        "| TFLite file | bytes | × float32 |",
        "|---|---:|---:|",
        f"| float32 | {sizes['float32']:,} | 1.00 |",
        f"| int8 (dynamic range) | {sizes['int8']:,} | {sizes['int8'] / sizes['float32']:.2f} |",
        "",
        f"int8 next-token agreement with float32 (4 x 64 random contexts): {argmax_agreement:.3f}; "
        f"int8 greedy tokens equal to Keras: {greedy_agreement:.2f}; float32 greedy tokens equal to Keras: "
        f"{tokens_equal}; largest logit difference from Keras: float32 {float_error:.1e}, int8 {int8_error:.3f}",
    ]
    table = "\n".join(lines_out)
    print_report(f"TFLite vs Keras, {settings['preset']} shapes ({model.count_params():,} parameters), "
                 f"{threads} threads", table, info, log)
    output = args.output or os.path.join(RESULTS, f"bench_tflite{'_quick' if args.quick else ''}.json")
    write_json(output, dict(
        benchmark="bench_tflite", mode=mode, settings=settings, rounds=rounds, threads=threads,
        prompt_tokens=len(prompt_ids), new_tokens=new_tokens, parameters=model.count_params(),
        tokens_per_second={name: dict(median=medians[name], rounds=measures[name], label=LABELS[name],
                                      ratio_to_keras_xla=medians[name] / medians[KERAS_XLA],
                                      ratio_to_keras=medians[name] / medians[KERAS]) for name in names},
        sizes_bytes=sizes, int8_size_ratio=sizes["int8"] / sizes["float32"],
        conversion_seconds=conversion_seconds, int8_argmax_agreement=argmax_agreement,
        int8_greedy_agreement=greedy_agreement, float32_greedy_tokens_equal=tokens_equal,
        max_logit_difference=dict(float32=float_error, int8=int8_error),
        machine=info, load_samples=log.load_samples, tensorflow=tf.__version__, table=table,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
