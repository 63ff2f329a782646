"""tfzoo's GPT against keras-hub's GPT2, measured back to back in one run.

Both models are built from config with random weights (nothing is downloaded) on the
design brief's "tiny GPT": vocabulary 8192, 4 layers, width 256, 4 heads, FFN 1024,
sequence 256, float32. Measured:

1. training tokens/s, batch 16 x 256, next-token cross-entropy, Adam, `train_on_batch`
   on in-memory batches, with Keras' default (no XLA on CPU) and with XLA;
2. greedy generation, prompt 32 + 64 new tokens, new tokens/s at batch 1 and 8, with
   and without XLA (stop tokens disabled on both sides; the counts are checked);
3. the first `generate` call on a fresh model (tracing + compiling + one run).

Every measure is taken once per round for each system, tfzoo and keras-hub back to
back (their order alternates between rounds), and the table reports medians over
rounds with the ratio tfzoo / keras-hub. Results go to benchmarks/results/.

    python benchmarks/bench_gpt.py                  # full run (~15 min on 2 cores)
    python benchmarks/bench_gpt.py --quick          # smoke test, tiny sizes (< 2 min)
    python benchmarks/bench_gpt.py --only generate --rounds 5
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
SYSTEM_NAMES = {TFZOO: "tfzoo GPT", KERAS_HUB: "keras-hub GPT2"}

# Sizes per mode. "full" is the number the team quotes; "quick" only checks the script runs.
SETTINGS = {
    "full": dict(
        preset="gpt_tiny",
        train_batch_size=16,
        train_sequence_length=256,
        train_warmup_steps=3,  # the first one traces (and compiles with XLA)
        train_steps=8,  # timed steps per round
        prompt_length=32,
        new_tokens=64,
        generate_batch_sizes=(1, 8),
        generate_calls=7,  # timed calls per round, after the first (compiling) call
        rounds=3,
    ),
    "quick": dict(
        preset="gpt_test",
        train_batch_size=4,
        train_sequence_length=32,
        train_warmup_steps=1,
        train_steps=2,
        prompt_length=8,
        new_tokens=16,
        generate_batch_sizes=(1, 8),
        generate_calls=2,
        rounds=1,
    ),
}


def parse_args(argv=None):
    parser = benchmark_parser(__doc__.split("\n\n")[0], "bench_gpt", full_rounds=3)
    parser.add_argument("--only", choices=("train", "generate"), default=None, help="run one part only")
    return checked_args(parser, argv)


# ---------------------------------------------------------------------------- models
def model_arguments(preset):
    from tfzoo.models.presets import GPT_PRESETS

    return dict(GPT_PRESETS[preset])


def build_tfzoo(preset):
    from tfzoo.models import GPT

    model = GPT.from_preset(preset, dropout=0.0)
    model.build()
    return model


def build_keras_hub(preset):
    import keras_hub

    arguments = model_arguments(preset)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=arguments["vocabulary_size"],
        num_layers=arguments["num_layers"],
        num_heads=arguments["num_heads"],
        hidden_dim=arguments["hidden_dim"],
        intermediate_dim=arguments["intermediate_dim"],
        max_sequence_length=arguments["max_sequence_length"],
        dropout=0.0,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


BUILDERS = {TFZOO: build_tfzoo, KERAS_HUB: build_keras_hub}


def compile_model(system, model, jit_compile):
    """Same optimizer, same loss, no metrics; `jit_compile=None` keeps Keras' default."""
    import keras

    kwargs = {} if jit_compile is None else {"jit_compile": jit_compile}
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if system == TFZOO:
        model.compile(optimizer=optimizer, loss=loss, metrics=[], **kwargs)
    else:
        model.compile(optimizer=optimizer, loss=loss, weighted_metrics=[], sampler="greedy", **kwargs)
    return model


# ---------------------------------------------------------------------------- training
def training_batches(settings, vocabulary_size, count=4, seed=0):
    """A few in-memory batches of random tokens, as each model's `fit` input takes them."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    batches = {TFZOO: [], KERAS_HUB: []}
    shape = (settings["train_batch_size"], settings["train_sequence_length"] + 1)
    for _ in range(count):
        tokens = rng.integers(0, vocabulary_size, shape, dtype=np.int32)
        inputs = tf.constant(tokens[:, :-1])
        labels = tf.constant(tokens[:, 1:])
        # tfzoo takes plain token ids; keras-hub's GPT2 always needs a padding mask.
        batches[TFZOO].append((inputs, labels))
        padding_mask = tf.ones_like(inputs, dtype=tf.bool)
        batches[KERAS_HUB].append(({"token_ids": inputs, "padding_mask": padding_mask}, labels))
    return batches


def train_steps(model, batches, steps, start=0):
    """Runs `steps` train steps; returns the seconds taken and the last loss."""
    loss = None
    begin = time.perf_counter()
    for step in range(steps):
        x, y = batches[(start + step) % len(batches)]
        loss = model.train_on_batch(x, y)  # returns numpy: the step has finished
    seconds = time.perf_counter() - begin
    return seconds, None if loss is None else float(np.asarray(loss).reshape(-1)[0])


def run_training(settings, rounds, log):
    tokens_per_step = settings["train_batch_size"] * settings["train_sequence_length"]
    vocabulary_size = model_arguments(settings["preset"])["vocabulary_size"]
    batches = training_batches(settings, vocabulary_size)
    variants = (("default", None), ("xla", True))
    measures, checks = {}, {}
    models = {}
    for variant, jit_compile in variants:
        for system in (TFZOO, KERAS_HUB):
            model = compile_model(system, BUILDERS[system](settings["preset"]), jit_compile)
            first, first_loss = train_steps(model, batches[system], 1)
            rest, loss = train_steps(model, batches[system], settings["train_warmup_steps"] - 1, start=1)
            models[variant, system] = model
            checks[f"train_{variant}_{system}"] = dict(
                jit_compile=bool(model.jit_compile), parameters=int(model.count_params()),
                first_step_seconds=first, first_loss=first_loss, warmup_loss=loss,
            )
            log(f"  train warm-up {variant:7s} {system:9s}: first step {first:6.1f} s, "
                f"loss {first_loss:.3f}, jit_compile={model.jit_compile}")
            if not np.isfinite(first_loss):
                raise RuntimeError(f"{system} training loss is not finite: {first_loss}")
    for round_index in range(rounds):
        for variant, _ in variants:
            key = f"train_tokens_per_second_{variant}"
            for system in order_for_round(round_index):
                model = models[variant, system]
                train_steps(model, batches[system], 1)  # re-warm caches after the other model ran
                seconds, loss = train_steps(model, batches[system], settings["train_steps"], start=1)
                rate = tokens_per_step * settings["train_steps"] / seconds
                measures.setdefault(key, {}).setdefault(system, []).append(rate)
                if loss is None or not np.isfinite(loss):
                    raise RuntimeError(f"{system} training loss is not finite: {loss}")
                log(f"  round {round_index + 1}/{rounds} train {variant:7s} {system:9s}: "
                    f"{rate:8.0f} tokens/s ({seconds / settings['train_steps']:.3f} s/step)")
    del models
    gc.collect()
    return measures, checks


# ---------------------------------------------------------------------------- generation
def generation_prompts(settings, batch_size, vocabulary_size, seed):
    rng = np.random.default_rng(seed)
    # Avoid token 0: it is the padding value on both sides.
    return rng.integers(1, vocabulary_size, (batch_size, settings["prompt_length"]), dtype=np.int32)


def make_generate(system, model, prompts, new_tokens, jit_compile):
    """A no-argument function that generates once and returns the new tokens per row."""
    batch_size, prompt_length = prompts.shape
    if system == TFZOO:
        prompt_lists = prompts.tolist()

        def generate():
            return model.generate(
                prompt_lists, max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=(),
                jit_compile=jit_compile,
            )

        def new_token_counts(output):
            return [len(row) for row in output]

        def check_prompt(output):
            return True

    else:
        token_ids = np.zeros((batch_size, prompt_length + new_tokens), np.int32)
        token_ids[:, :prompt_length] = prompts
        padding_mask = np.zeros_like(token_ids, dtype=bool)
        padding_mask[:, :prompt_length] = True
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}

        def generate():
            # stop_token_ids=None: generate until the end of `token_ids`, like tfzoo's ().
            return model.generate(inputs, stop_token_ids=None)

        def new_token_counts(output):
            generated = np.logical_and(np.asarray(output["padding_mask"]), ~padding_mask)
            return generated.sum(axis=1).tolist()

        def check_prompt(output):
            return bool(np.array_equal(np.asarray(output["token_ids"])[:, :prompt_length], prompts))

    def checked(output):
        counts = new_token_counts(output)
        if counts != [new_tokens] * batch_size or not check_prompt(output):
            raise RuntimeError(f"{system} generated {counts} new tokens, expected {new_tokens} per row")
        return counts

    return generate, checked


def run_generation(settings, rounds, log):
    import keras

    vocabulary_size = model_arguments(settings["preset"])["vocabulary_size"]
    new_tokens = settings["new_tokens"]
    measures, checks = {}, {}
    for round_index in range(rounds):
        for variant, jit_compile in (("xla", True), ("default", False)):
            for batch_size in settings["generate_batch_sizes"]:
                prompts = generation_prompts(settings, batch_size, vocabulary_size, seed=round_index)
                for system in order_for_round(round_index):
                    # A fresh model per measure, so that the first call really traces and compiles.
                    keras.utils.set_random_seed(round_index)
                    model = BUILDERS[system](settings["preset"])
                    if system == KERAS_HUB:
                        # keras-hub takes jit_compile from compile(); Keras' default on CPU is False.
                        compile_model(system, model, True if jit_compile else None)
                        actual_jit = bool(model.jit_compile)
                    else:
                        actual_jit = jit_compile
                    generate, checked = make_generate(system, model, prompts, new_tokens, jit_compile)
                    begin = time.perf_counter()
                    output = generate()
                    first_call = time.perf_counter() - begin
                    counts = checked(output)
                    call_seconds = []
                    for _ in range(settings["generate_calls"]):
                        begin = time.perf_counter()
                        output = generate()
                        call_seconds.append(time.perf_counter() - begin)
                        checked(output)
                    call = statistics.median(call_seconds)
                    rate = batch_size * new_tokens / call
                    suffix = f"{variant}_batch{batch_size}"
                    measures.setdefault(f"generate_tokens_per_second_{suffix}", {}).setdefault(system, []).append(rate)
                    measures.setdefault(f"generate_first_call_seconds_{suffix}", {}).setdefault(system, []).append(first_call)
                    checks.setdefault(f"generate_{suffix}_{system}", []).append(
                        dict(jit_compile=actual_jit, new_tokens_per_row=counts, call_seconds=call_seconds,
                             first_call_seconds=first_call)
                    )
                    log(f"  round {round_index + 1}/{rounds} generate {variant:7s} batch {batch_size} "
                        f"{system:9s}: {rate:7.0f} new tokens/s, first call {first_call:5.1f} s "
                        f"(jit_compile={actual_jit}, {counts[0]} new tokens/row)")
                    del model, generate, checked, output
                    gc.collect()
    return measures, checks


# ---------------------------------------------------------------------------- report
MEASURE_ORDER = [
    ("train_tokens_per_second_default", "training tokens/s, batch {tb}x{tl}, Keras default (no XLA)", "higher"),
    ("train_tokens_per_second_xla", "training tokens/s, batch {tb}x{tl}, XLA", "higher"),
]


def describe_measures(settings):
    rows = [(key, label.format(tb=settings["train_batch_size"], tl=settings["train_sequence_length"]), better)
            for key, label, better in MEASURE_ORDER]
    prompt, new = settings["prompt_length"], settings["new_tokens"]
    for kind, label, better in (
        ("generate_tokens_per_second", "greedy new tokens/s, prompt {p} + {n}, batch {b}, {v}", "higher"),
        ("generate_first_call_seconds", "first generate call, s, batch {b}, {v}", "lower"),
    ):
        for variant, name in (("xla", "XLA"), ("default", "no XLA")):
            for batch_size in settings["generate_batch_sizes"]:
                rows.append((f"{kind}_{variant}_batch{batch_size}",
                             label.format(p=prompt, n=new, b=batch_size, v=name), better))
    return rows


def main(argv=None):
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = dict(SETTINGS[mode])
    rounds = args.rounds or settings["rounds"]
    output = args.output or os.path.join(RESULTS, "bench_gpt_quick.json" if args.quick else "bench_gpt.json")

    log = Logger()

    import keras

    keras.utils.set_random_seed(0)
    info = machine_info()
    log(f"bench_gpt ({mode}): TF {info['tensorflow']}, Keras {info['keras']}, keras-hub {info['keras_hub']}, "
        f"{info['cpu_count']} CPUs, preset {settings['preset']} {model_arguments(settings['preset'])}")

    measures, checks = {}, {}
    if args.only in (None, "train"):
        log("training")
        part, part_checks = run_training(settings, rounds, log)
        measures.update(part)
        checks.update(part_checks)
    if args.only in (None, "generate"):
        log("generation")
        part, part_checks = run_generation(settings, rounds, log)
        measures.update(part)
        checks.update(part_checks)

    results = summarize(measures, describe_measures(settings))
    info["load_average_end"] = load_average()
    info["load_average_samples"] = log.load_samples
    elapsed = log.elapsed()
    title = (f"tfzoo GPT vs keras-hub GPT2, preset {settings['preset']} "
             f"{model_arguments(settings['preset'])}, float32, random weights, {mode} mode")
    table = format_table(results, rounds)
    print_report(title, table, info, log)
    write_json(output, dict(
        benchmark="bench_gpt", mode=mode, rounds=rounds, only=args.only,
        model=model_arguments(settings["preset"]), settings=settings, machine=info,
        results=results, checks=checks, table=table, elapsed_seconds=elapsed,
    ))
    return results


if __name__ == "__main__":
    main()
