"""What the peer benchmarks share: round order, logging with load averages, medians and
ratios, the Markdown table, machine info and the JSON file.

The benchmark scripts import this as `common` (their own folder is on `sys.path` when run
as `python benchmarks/bench_*.py`).
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
TFZOO, KERAS_HUB = "tfzoo", "keras_hub"


def benchmark_parser(description, name, full_rounds):
    """The flags every benchmark shares: --rounds, --quick, --output (JSON under results/)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds to take medians over (full: {full_rounds}, quick: 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few calls: a smoke test")
    parser.add_argument(
        "--output", default=None,
        help=f"JSON path (default benchmarks/results/{name}.json, or {name}_quick.json with --quick)",
    )
    return parser


def checked_args(parser, argv=None):
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def order_for_round(round_index):
    """tfzoo first in even rounds, keras-hub first in odd ones: load hits both alike."""
    return (TFZOO, KERAS_HUB) if round_index % 2 == 0 else (KERAS_HUB, TFZOO)


def load_average():
    return os.getloadavg() if hasattr(os, "getloadavg") else None


class Logger:
    """Prints `[elapsed load] message` and keeps every (seconds, 1-minute load) sample.

    The machine is shared, so each line notes how busy it was.
    """

    def __init__(self):
        self.started = time.perf_counter()
        self.load_samples = []

    def elapsed(self):
        return time.perf_counter() - self.started

    def __call__(self, message):
        elapsed = self.elapsed()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        self.load_samples.append((round(elapsed, 1), load))
        print(f"[{elapsed:6.0f}s load {load:4.1f}] {message}", flush=True)

    def load_summary(self):
        loads = [load for _, load in self.load_samples]
        return f"{min(loads):.1f}-{max(loads):.1f} (median {statistics.median(loads):.1f})"


def summarize(measures, rows):
    """Medians per system, the ratio tfzoo / keras-hub of the medians, and per-round ratios.

    `measures[key][system]` is a list with one value per round; `rows` is a list of
    `(key, label, better)` in table order. Keys missing from `measures` are skipped.
    """
    results = []
    for key, label, better in rows:
        if key not in measures:
            continue
        ours, theirs = measures[key][TFZOO], measures[key][KERAS_HUB]
        ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
        results.append(dict(
            measure=key, label=label, better=better,
            tfzoo=dict(median=ours_median, rounds=ours),
            keras_hub=dict(median=theirs_median, rounds=theirs),
            ratio=ours_median / theirs_median,
            round_ratios=[a / b for a, b in zip(ours, theirs)],
        ))
    return results


def format_number(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def format_table(results, rounds):
    lines = [
        f"| measure (median of {rounds} round{'s' if rounds > 1 else ''}) | tfzoo | keras-hub "
        "| tfzoo / keras-hub | per-round ratios |",
        "|---|---:|---:|---:|---|",
    ]
    for row in results:
        ratios = ", ".join(f"{ratio:.2f}" for ratio in row["round_ratios"])
        lines.append(
            f"| {row['label']} ({row['better']} is better) | {format_number(row['tfzoo']['median'])} "
            f"| {format_number(row['keras_hub']['median'])} | {row['ratio']:.2f} | {ratios} |"
        )
    return "\n".join(lines)


def machine_info():
    import keras
    import keras_hub
    import tensorflow as tf

    import tfzoo

    def git(*arguments):
        try:
            return subprocess.run(["git", *arguments], cwd=HERE, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), None)
    except OSError:
        pass
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        cpu_count=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        cpu_model=cpu_model,
        platform=platform.platform(),
        python=sys.version.split()[0],
        tensorflow=tf.__version__,
        keras=keras.__version__,
        keras_hub=keras_hub.__version__,
        tfzoo=getattr(tfzoo, "__version__", None),
        keras_backend=keras.config.backend(),
        git_commit=git("rev-parse", "HEAD"),
        git_dirty=bool(git("status", "--porcelain", "--", "tfzoo")),
        tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        tf_inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        load_average_start=load_average(),
    )


def print_report(title, table, info, log):
    """The title, the table, and one line on the machine and how busy it was."""
    print()
    print(title)
    print(table)
    print(f"\n{info['cpu_count']} CPUs, {info['platform']}, TF {info['tensorflow']}, Keras {info['keras']}, "
          f"keras-hub {info['keras_hub']}; 1-minute load average during the run "
          f"{log.load_summary()}; took {log.elapsed():.0f} s")


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
    print(f"wrote {path}")
