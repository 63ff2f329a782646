"""`tfzoo serve` under load: latency percentiles and requests/s over real HTTP.

A tiny BERT classifier (the test suite's: 12-word WordPiece vocabulary, `bert_test`
preset, sequence length 16, random weights) is exported to a temporary root and served
by `tfzoo serve` in a subprocess (waitress, 8 request threads). Client threads (8 by
default; standard library `urllib`, a new connection per request, like the tests) send
TF Serving `:predict` requests to the `classify` signature:

- `row, 1 text`: `{"instances": [text]}`;
- `row, 8 texts`: `{"instances": [8 texts]}`;
- `columnar, 8 texts`: `{"inputs": {"text": [8 texts]}}`.

Each workload runs after a warm-up; every answer is checked (status 200, 1 or 8 labels).
The table reports medians over rounds of p50 / p99 latency and requests/s. The client
shares the machine's cores with the server, so this measures the whole loop, not the
server alone. Results go to benchmarks/results/.

    python benchmarks/bench_serving.py               # 1,000 requests x 3 rounds per workload (~1-2 min)
    python benchmarks/bench_serving.py --quick       # 200 requests, 1 round
    python benchmarks/bench_serving.py --requests 5000 --threads 16
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
from common import RESULTS, Logger, benchmark_parser, checked_args, machine_info, write_json  # noqa: E402

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "eating", "food", "bread", "."]
TEXTS = ["A man is eating food.", "bread", "a a a man", "food is bread.", "man", "eating . a", "a man is",
         "food food", "is a man eating bread ?", "."]


def export_classifier(root):
    from tfzoo.export import export_saved_model
    from tfzoo.models import BertClassifier, BertEncoder
    from tfzoo.text import BertPreprocessor, WordPieceTokenizer

    preprocessor = BertPreprocessor(WordPieceTokenizer(VOCABULARY), sequence_length=16)
    encoder = BertEncoder.from_preset("bert_test", vocabulary_size=len(VOCABULARY), preprocessor=preprocessor)
    classifier = BertClassifier(encoder, num_classes=3)
    classifier.predict_text(TEXTS[:1])
    return export_saved_model(classifier, root, "classifier", label_names=["x", "y", "z"])


def workloads(count):
    def texts(i, n):
        return [TEXTS[(i + k) % len(TEXTS)] for k in range(n)]

    return {
        "row, 1 text": ([{"signature_name": "classify", "instances": texts(i, 1)} for i in range(count)], 1),
        "row, 8 texts": ([{"signature_name": "classify", "instances": texts(i, 8)} for i in range(count)], 8),
        "columnar, 8 texts": ([{"signature_name": "classify", "inputs": {"text": texts(i, 8)}}
                               for i in range(count)], 8),
    }


def answered(result, size):
    status, body = result if result is not None else (None, None)
    if status != 200:
        return False
    labels = ([p["label"] for p in body["predictions"]] if "predictions" in body else body["outputs"]["label"])
    return len(labels) == size


def main(argv=None):
    from tfzoo.serving.client import ServerProcess, run_load

    parser = benchmark_parser(__doc__.splitlines()[0], "bench_serving", full_rounds=3)
    parser.add_argument("--requests", type=int, default=None, help="requests per workload and round "
                                                                   "(full: 1000, quick: 200)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--server-threads", type=int, default=8, help="the server's request threads (default 8)")
    args = checked_args(parser, argv)
    rounds = args.rounds or (1 if args.quick else 3)
    count = args.requests or (200 if args.quick else 1000)
    output = args.output or os.path.join(RESULTS, "bench_serving_quick.json" if args.quick else "bench_serving.json")
    log = Logger()
    info = machine_info()

    with tempfile.TemporaryDirectory() as root:
        log("exporting a tiny BERT classifier")
        export_classifier(root)
        log("starting tfzoo serve")
        started = time.perf_counter()
        with ServerProcess(root, os.path.join(root, "serve.log"),
                           extra_args=["--threads", str(args.server_threads)]) as server:
            startup = time.perf_counter() - started
            url = f"{server.url}/v1/models/classifier:predict"
            log(f"serving at {server.url} (start-up {startup:.1f} s)")
            measures = {}
            for name, (bodies, size) in workloads(count).items():
                run_load(url, bodies[: min(50, count)], threads=args.threads)  # warm-up
                for round_index in range(rounds):
                    results, latencies, seconds = run_load(url, bodies, threads=args.threads)
                    failed = sum(not answered(result, size) for result in results)
                    if failed:
                        raise SystemExit(f"{failed} of {count} requests failed: "
                                         f"{next(r for r in results if not answered(r, size))}")
                    row = dict(p50_ms=float(np.percentile(latencies, 50) * 1e3),
                               p99_ms=float(np.percentile(latencies, 99) * 1e3),
                               requests_per_second=count / seconds)
                    for key, value in row.items():
                        measures.setdefault(name, {}).setdefault(key, []).append(value)
                    log(f"{name} round {round_index + 1}/{rounds}: p50 {row['p50_ms']:.1f} ms, "
                        f"p99 {row['p99_ms']:.1f} ms, {row['requests_per_second']:.0f} requests/s")

    results = [dict(workload=name, **{key: dict(median=statistics.median(values), rounds=values)
                                      for key, values in row.items()}) for name, row in measures.items()]
    lines = [f"| workload ({count} requests, {args.threads} client threads, median of {rounds} "
             f"round{'s' if rounds > 1 else ''}) | p50 ms | p99 ms | requests/s |", "|---|---:|---:|---:|"]
    for row in results:
        lines.append(f"| {row['workload']} | {row['p50_ms']['median']:.1f} | {row['p99_ms']['median']:.1f} "
                     f"| {row['requests_per_second']['median']:.0f} |")
    print("\ntfzoo serve: a tiny BERT classifier's classify signature over HTTP")
    print("\n".join(lines))
    print(f"\n{info['cpu_count']} CPUs, {info['platform']}, TF {info['tensorflow']}; server start-up {startup:.1f} s; "
          f"1-minute load average during the run {log.load_summary()}; took {log.elapsed():.0f} s")
    write_json(output, dict(benchmark="bench_serving", requests=count, client_threads=args.threads,
                            server_threads=args.server_threads, rounds=rounds, startup_seconds=startup,
                            results=results, machine=info, load_samples=log.load_samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
