"""tfzoo's GPT training recipe in float32 and under mixed_bfloat16: speed and validation perplexity.

`--precision auto` trains under `mixed_bfloat16` on a CPU with AMX or AVX512-BF16. The
peer benchmark (`bench_gpt.py`) shows how much faster a step is; this shows whether the
model trained that way is as good. It runs `tfzoo.training.train_gpt` with the demo's own
config (`scripts/demo.sh`: Python's docstrings, a 4096-token BPE, `gpt_tiny`, 3 epochs of
100 steps of 16 x 128 tokens, seed 0) once per precision, each in a fresh process, and
reports for each:

- the median seconds of a training step (timed by a callback around each `fit` step, the
  first epoch's first few steps left out: they trace the step) and the tokens/s that gives;
- the validation loss and perplexity after each epoch.

The seed, data order and initial weights are the same for both precisions (the variables
stay float32 under `mixed_bfloat16`), so any difference in perplexity comes from the
precision. The ratios are bfloat16 over float32. tfzoo only: there is no peer here.

    python benchmarks/bench_precision.py             # 1 round (about 5 minutes on 2 cores)
    python benchmarks/bench_precision.py --rounds 2  # the order of the precisions alternates
    python benchmarks/bench_precision.py --quick     # a smoke test (about a minute)
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")
CHILD_MARKER = "PRECISION_RUN_JSON "
WARMUP_STEPS = 5  # left out of the step times: the first steps trace and compile


def settings(quick):
    """The `GPTTrainingConfig` fields the run overrides: none (the demo's own) or a smoke test's."""
    if quick:
        return dict(max_corpus_characters=200_000, vocabulary_size=1024, sequence_length=64,
                    epochs=2, steps_per_epoch=12, warmup_steps=4)
    return {}


def run_child(precision, quick, run_dir):
    """In a fresh process: trains once under `precision`, prints one JSON line."""
    import keras

    from tfzoo.training import GPTTrainingConfig, train_gpt

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_train_batch_begin(self, batch, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self.begin)

    config = GPTTrainingConfig(run_dir=run_dir, precision=precision, **settings(quick))
    timer = StepTimer()
    began = time.perf_counter()
    model, history = train_gpt(config, log=lambda message: None, callbacks=[timer])
    total = time.perf_counter() - began
    # What actually ran: the model's policy and the dtype its matmuls computed in.
    result = dict(
        precision=precision,
        dtype_policy=model.dtype_policy.name,
        compute_dtype=model.blocks[0].compute_dtype,
        variable_dtype=model.trainable_weights[0].dtype,
        step_seconds=timer.seconds,
        total_seconds=total,
        tokens_per_step=config.batch_size * config.sequence_length,
        val_loss=[float(value) for value in history.history["val_loss"]],
        loss=[float(value) for value in history.history["loss"]],
        config=dict(epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                    batch_size=config.batch_size, sequence_length=config.sequence_length,
                    vocabulary_size=config.vocabulary_size, preset=config.preset, seed=config.seed),
    )
    print(CHILD_MARKER + json.dumps(result), flush=True)


def run_in_fresh_process(precision, quick, allocator, log):
    with tempfile.TemporaryDirectory(prefix="tfzoo_precision_") as run_dir:
        command = [sys.executable, os.path.abspath(__file__), "--child", precision, "--run-dir", run_dir]
        if quick:
            command.append("--quick")
        if allocator:
            command += ["--cpu-allocator", allocator]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(CHILD_MARKER)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"the {precision} training process failed (exit {completed.returncode}):\n"
                           f"{completed.stderr[-3000:]}")
    result = json.loads(lines[-1][len(CHILD_MARKER):])
    timed = result["step_seconds"][WARMUP_STEPS:]
    result["median_step_seconds"] = statistics.median(timed)
    result["tokens_per_second"] = result["tokens_per_step"] / result["median_step_seconds"]
    result["val_perplexity"] = [math.exp(loss) for loss in result["val_loss"]]
    log(f"  {precision:15s}: {result['tokens_per_second']:7.0f} tokens/s "
        f"(median step {result['median_step_seconds'] * 1000:.0f} ms of {len(timed)}), validation "
        f"perplexity per epoch {', '.join(f'{value:.1f}' for value in result['val_perplexity'])}, "
        f"{result['total_seconds']:.0f} s in all (policy {result['dtype_policy']}, computing in "
        f"{result['compute_dtype']})")
    return result


def format_table(runs, rounds):
    """One row per measure: each precision's median over rounds, and bfloat16 / float32."""
    def median_of(precision, key, index=None):
        values = [run[key] if index is None else run[key][index] for run in runs[precision]]
        return statistics.median(values)

    epochs = len(runs[PRECISIONS[0]][0]["val_loss"])
    rows = [("training tokens/s (median step)", "tokens_per_second", None, "{:,.0f}")]
    rows += [(f"validation perplexity after epoch {epoch + 1}", "val_perplexity", epoch, "{:.2f}")
             for epoch in range(epochs)]
    rows += [("validation loss after the last epoch", "val_loss", epochs - 1, "{:.4f}"),
             ("whole run, seconds (corpus, tokenizer, training, checkpoints)", "total_seconds", None, "{:.0f}")]
    lines = [f"| measure (median of {rounds}) | float32 | mixed_bfloat16 | bfloat16 / float32 |",
             "|---|---:|---:|---:|"]
    summary = {}
    for label, key, index, number in rows:
        float32, bfloat16 = (median_of(precision, key, index) for precision in PRECISIONS)
        ratio = bfloat16 / float32
        summary[label] = dict(float32=float32, mixed_bfloat16=bfloat16, ratio=ratio)
        lines.append(f"| {label} | {number.format(float32)} | {number.format(bfloat16)} | {ratio:.3f} |")
    return "\n".join(lines), summary


def main(argv=None):
    parser = common.benchmark_parser(__doc__.splitlines()[0], "precision", full_rounds=1)
    parser.add_argument("--child", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = common.checked_args(parser, argv)
    if args.child:
        run_child(args.child, args.quick, args.run_dir)
        return
    rounds = args.rounds or 1
    mode = "quick" if args.quick else "full"
    log = common.Logger()
    info = common.machine_info()
    log(f"bench_precision ({mode}): TF {info['tensorflow']}, Keras {info['keras']}, {info['cpu_count']} CPUs, "
        f"{info['cpu_model']} ({' '.join(info['cpu_flags'])}); {rounds} round(s), each precision in a fresh process")
    runs = {precision: [] for precision in PRECISIONS}
    for round_index in range(rounds):
        log(f"round {round_index + 1}/{rounds}")
        order = PRECISIONS if round_index % 2 == 0 else PRECISIONS[::-1]
        for precision in order:
            runs[precision].append(run_in_fresh_process(precision, args.quick, args.cpu_allocator, log))
    # Each run trained as labelled: its policy, 16-bit matmuls only under mixed_bfloat16,
    # and float32 variables both ways.
    expected_compute = {"float32": "float32", "mixed_bfloat16": "bfloat16"}
    for precision in PRECISIONS:
        for run in runs[precision]:
            ran = (run["dtype_policy"], run["compute_dtype"], run["variable_dtype"])
            if ran != (precision, expected_compute[precision], "float32"):
                raise RuntimeError(f"the {precision} run trained with (policy, compute, variables) = {ran}")
    table, summary = format_table(runs, rounds)
    common.print_report(f"GPT training recipe, float32 vs mixed_bfloat16 ({mode}, {rounds} round(s))",
                        table, info, log)
    output = args.output or os.path.join(common.RESULTS, "precision_quick.json" if args.quick else "precision.json")
    common.write_json(output, {"benchmark": "precision", "mode": mode, "rounds": rounds, "runs": runs,
                               "summary": summary, "table": table, "machine": info,
                               "load": log.load_summary(), "elapsed_seconds": log.elapsed()})


if __name__ == "__main__":
    main()
