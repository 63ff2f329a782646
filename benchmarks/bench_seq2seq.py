"""Translation throughput of tfzoo's Seq2SeqTransformer: greedy and beam 4, cached against uncached.

One run measures every setup back to back, round after round (the order rotates), so
that the ratios compare like with like on a shared machine. The model has the
`seq2seq_tiny` shape with random weights and never emits the end token, so every setup
decodes exactly `--new-tokens` tokens per sentence: the work is fixed.

    python benchmarks/bench_seq2seq.py            # 3 rounds (about 10 minutes on 2 cores)
    python benchmarks/bench_seq2seq.py --quick    # a smoke test
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

SETUPS = {
    "greedy, cached": dict(beam_width=1, use_cache=True),
    "greedy, uncached": dict(beam_width=1, use_cache=False),
    "beam 4, cached": dict(beam_width=4, use_cache=True),
    "beam 4, uncached": dict(beam_width=4, use_cache=False),
    "greedy, cached, XLA": dict(beam_width=1, use_cache=True, jit_compile=True),
    "beam 4, cached, XLA": dict(beam_width=4, use_cache=True, jit_compile=True),
}


def main(argv=None):
    parser = common.benchmark_parser(__doc__.splitlines()[0], "seq2seq", full_rounds=3)
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per call (full 16, quick 4)")
    parser.add_argument("--source-length", type=int, default=None, help="source tokens (full 24, quick 8)")
    parser.add_argument("--new-tokens", type=int, default=None, help="target tokens (full 32, quick 8)")
    args = common.checked_args(parser, argv)
    rounds = args.rounds or (1 if args.quick else 3)
    batch_size = args.batch_size or (4 if args.quick else 16)
    source_length = args.source_length or (8 if args.quick else 24)
    new_tokens = args.new_tokens or (8 if args.quick else 32)
    log = common.Logger()
    info = common.machine_info()  # before the model: it reads the allocator and load the run starts with

    import keras
    import numpy as np
    import tensorflow as tf

    from tfzoo.models import Seq2SeqTransformer

    keras.utils.set_random_seed(0)
    preset = "seq2seq_test" if args.quick else "seq2seq_tiny"
    model = Seq2SeqTransformer.from_preset(preset, vocabulary_size=8000 if not args.quick else 512, dropout=0.0,
                                           max_sequence_length=max(64, new_tokens + 1, source_length + 1))
    model.build()
    generator = np.random.default_rng(0)
    sources = np.full((batch_size, source_length + 1), model.end_token_id, "int32")
    sources[:, :source_length] = generator.integers(4, model.vocabulary_size, (batch_size, source_length))
    log(f"{preset}: {model.count_params():,} parameters; batch {batch_size}, source {source_length} tokens, "
        f"{new_tokens} new tokens; {rounds} round(s)")
    # Never end (no token matches id -1), so that every setup decodes the same number of tokens.
    model.end_token_id = -1
    mask = tf.constant(sources != model.pad_token_id)
    sources = tf.constant(sources)

    def run(options):
        decode = model._decoder(new_tokens, options["beam_width"], 0.0, 0.0, None, None, options["use_cache"],
                                options.get("jit_compile", False))
        tokens, lengths = decode(sources, mask, tf.constant(new_tokens), tf.constant([0, 0]))
        lengths = lengths.numpy()
        return [row[:length] for row, length in zip(tokens.numpy().tolist(), lengths)]

    for name, options in SETUPS.items():  # warm-up: trace (and compile) every setup once
        started = time.perf_counter()
        run(options)
        log(f"warm-up {name}: {time.perf_counter() - started:.1f} s")

    seconds = {name: [] for name in SETUPS}
    names = list(SETUPS)
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            started = time.perf_counter()
            outputs = run(SETUPS[name])
            elapsed = time.perf_counter() - started
            assert all(len(tokens) == new_tokens for tokens in outputs), name
            seconds[name].append(elapsed)
            log(f"round {round_index + 1} {name}: {batch_size / elapsed:.2f} sentences/s")

    # Cached and uncached must agree token for token (greedy and beam) on these inputs.
    agree = {width: run(dict(beam_width=width, use_cache=True)) == run(dict(beam_width=width, use_cache=False))
             for width in (1, 4)}
    results = {name: batch_size / statistics.median(values) for name, values in seconds.items()}
    rows = ["| setup | sentences/s | new tokens/s | vs. uncached |", "|---|---:|---:|---:|"]
    for name, rate in results.items():
        uncached = results["beam 4, uncached" if name.startswith("beam") else "greedy, uncached"]
        rows.append(f"| {name} | {rate:.2f} | {rate * new_tokens:.0f} | {rate / uncached:.2f}x |")
    table = "\n".join(rows)
    common.print_report(f"Seq2seq translation, {preset} shapes ({model.count_params():,} parameters), batch "
                        f"{batch_size}, source {source_length} tokens, {new_tokens} new tokens", table, info, log)
    print(f"cached == uncached tokens: greedy {agree[1]}, beam 4 {agree[4]}")
    output = args.output or os.path.join(common.RESULTS, "seq2seq_quick.json" if args.quick else "seq2seq.json")
    common.write_json(output, {
        "preset": preset, "batch_size": batch_size, "source_length": source_length, "new_tokens": new_tokens,
        "rounds": rounds, "seconds": seconds, "sentences_per_second": results,
        "cached_equals_uncached": {str(k): v for k, v in agree.items()}, "machine": info,
        "load": log.load_summary(), "load_samples": log.load_samples, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
