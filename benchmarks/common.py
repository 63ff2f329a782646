"""What the peer benchmarks share: round order, logging with load averages, medians and
ratios against each peer, the Markdown tables, the matmul peak and model-FLOPs
utilisation, peak memory from fresh processes, machine info and the JSON file.

The benchmark scripts import this as `common` (their own folder is on `sys.path` when run
as `python benchmarks/bench_*.py`).
"""

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
TFZOO, KERAS_HUB, HF_TORCH = "tfzoo", "keras_hub", "hf_torch"
# Table order: tfzoo first, then the peers it is compared with.
SYSTEMS = (TFZOO, KERAS_HUB, HF_TORCH)
SYSTEM_LABELS = {TFZOO: "tfzoo", KERAS_HUB: "keras-hub", HF_TORCH: "HF transformers (PyTorch)"}
SHORT_LABELS = {TFZOO: "tfzoo", KERAS_HUB: "keras-hub", HF_TORCH: "HF"}
# The child process of a peak-memory measurement prints one line starting with this.
PEAK_MEMORY_MARKER = "PEAK_MEMORY_JSON "


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
    parser.add_argument(
        "--cpu-allocator", choices=sorted(CPU_ALLOCATORS), default=None,
        help="TensorFlow's CPU allocator for every system in the run, overriding TF_CPU_ALLOCATOR_USE_BFC: "
             "pooled (BFC) or default (TensorFlow's own, which maps each large buffer afresh). Unset: "
             "the environment's choice, else tfzoo's (pooled)",
    )
    return parser


# --cpu-allocator: the value of TF_CPU_ALLOCATOR_USE_BFC, set before TensorFlow starts its
# runtime. The variable is process-wide, so both TensorFlow systems of a run share it
# (tfzoo sets "true" on import unless told otherwise; keras-hub leaves TensorFlow's default).
CPU_ALLOCATORS = {"pooled": "true", "default": "false"}


def checked_args(parser, argv=None):
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if getattr(args, "cpu_allocator", None):
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = CPU_ALLOCATORS[args.cpu_allocator]
    return args


def add_peer_arguments(parser):
    """--no-torch, --no-memory, and the hidden flags with which a benchmark runs its own
    peak-memory child processes (--memory-child names what to measure, --memory-model
    holds the model's shapes as JSON)."""
    import argparse

    parser.add_argument("--no-torch", action="store_true", help="leave out Hugging Face transformers (PyTorch)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-model", default=None, help=argparse.SUPPRESS)
    return parser


def order_for_round(round_index, systems=(TFZOO, KERAS_HUB)):
    """The systems rotated by one place per round, so that load hits each position alike.

    With two systems this alternates: tfzoo first in even rounds, keras-hub in odd ones.
    """
    systems = tuple(systems)
    shift = round_index % len(systems)
    return systems[shift:] + systems[:shift]


def order_for_call(call_index, order):
    """`order` for even calls and reversed for odd ones (A B, B A, A B, ...): timed calls that
    take turns, so that no system always runs right after the same one."""
    return tuple(order) if call_index % 2 == 0 else tuple(order)[::-1]


# ---------------------------------------------------------------------------- PyTorch
def load_torch(log=print, wanted=True):
    """`torch` with its threads set like TensorFlow's, or None with a printed reason.

    Hugging Face transformers on PyTorch is an optional peer (`pip install -e .[bench]`).
    """
    if not wanted:
        log("HF transformers (PyTorch) skipped: --no-torch")
        return None
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as error:
        log(f"HF transformers (PyTorch) skipped: {error.name or error} is not installed "
            "(pip install -e '.[bench]' installs torch==2.13.0, the CPU build, and transformers)")
        return None
    threads = usable_cpus()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only allowed before PyTorch's first parallel work
        pass
    return torch


def seeded_build(system, seed, build_function, torch=None):
    """`build_function()` after seeding the system's framework, so each system's random
    weights are the same from round to round."""
    if system == HF_TORCH:
        torch.manual_seed(seed)
    else:
        import keras

        keras.utils.set_random_seed(seed)
    return build_function()


def parameter_count(model):
    """Parameters of a Keras model or a PyTorch module."""
    if hasattr(model, "count_params"):
        return int(model.count_params())
    return int(sum(parameter.numel() for parameter in model.parameters()))


def start_run(name, mode, description, no_torch, log):
    """Seeds Keras, logs the software stack, and loads the optional PyTorch peer.

    Returns `(machine info, torch or None)`.
    """
    import keras

    keras.utils.set_random_seed(0)
    info = machine_info()
    log(f"{name} ({mode}): TF {info['tensorflow']}, Keras {info['keras']}, keras-hub {info['keras_hub']}, "
        f"{info['cpu_count']} CPUs, {description}")
    torch = load_torch(log, wanted=not no_torch)
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        log(f"  PyTorch {info['torch']} ({torch.get_num_threads()} threads), transformers {info['transformers']}")
    return info, torch


def usable_cpus():
    """The cores TensorFlow's default thread pools use here (its intra-op setting 0 means all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def package_version(name):
    """An installed package's version, without importing it (None if not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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


def summarize(measures, rows, reference=TFZOO):
    """Medians per system, the ratio of tfzoo's median to each peer's, and per-round ratios.

    `measures[key][system]` is a list with one value per round; `rows` is a list of
    `(key, label, better)` in table order. Keys missing from `measures` are skipped, and
    a row holds only the systems measured for it.

    Each row has `systems[name] = {median, rounds}` and, per peer, `ratios[peer]` and
    `peer_round_ratios[peer]`. For the callers written for two systems it also keeps
    `row[name]` for each system and `ratio` / `round_ratios` against keras-hub.
    """
    results = []
    for key, label, better in rows:
        if key not in measures or reference not in measures[key]:
            continue
        present = [system for system in SYSTEMS if system in measures[key]]
        present += [system for system in measures[key] if system not in present]
        systems = {system: dict(median=statistics.median(measures[key][system]), rounds=measures[key][system])
                   for system in present}
        ours = systems[reference]
        ratios, round_ratios = {}, {}
        for peer in present:
            if peer == reference:
                continue
            ratios[peer] = ours["median"] / systems[peer]["median"]
            round_ratios[peer] = [a / b for a, b in zip(ours["rounds"], systems[peer]["rounds"])]
        row = dict(measure=key, label=label, better=better, reference=reference, systems=systems,
                   ratios=ratios, peer_round_ratios=round_ratios)
        row.update(systems)
        if KERAS_HUB in ratios:
            row.update(ratio=ratios[KERAS_HUB], round_ratios=round_ratios[KERAS_HUB])
        results.append(row)
    return results


def format_number(value):
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def format_table(results, rounds):
    """Medians per system, tfzoo / each peer, and each round's ratios, as Markdown."""
    reference = results[0]["reference"] if results else TFZOO
    systems = [system for system in SYSTEMS if any(system in row["systems"] for row in results)]
    for row in results:
        systems += [system for system in row["systems"] if system not in systems]
    peers = [system for system in systems if system != reference]
    label = SHORT_LABELS.get
    header = [f"measure (median of {rounds} round{'s' if rounds > 1 else ''})"]
    header += [label(system, system) for system in systems]
    header += [f"{label(reference, reference)} / {label(peer, peer)}" for peer in peers]
    header.append("per-round ratios" + (f" ({'; '.join(label(peer, peer) for peer in peers)})" if len(peers) > 1 else ""))
    lines = ["| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(systems) + len(peers)) + "---|"]
    for row in results:
        cells = [f"{row['label']} ({row['better']} is better)"]
        cells += [format_number(row["systems"][system]["median"]) if system in row["systems"] else "—"
                  for system in systems]
        cells += [f"{row['ratios'][peer]:.2f}" if peer in row["ratios"] else "—" for peer in peers]
        cells.append("; ".join(", ".join(f"{ratio:.2f}" for ratio in row["peer_round_ratios"][peer])
                               if peer in row["peer_round_ratios"] else "—" for peer in peers))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(results, targets):
    """Each target `(measure, peer, "at least" | "at most", threshold, description)` against
    the ratio of medians in `results`; a target whose measure or peer is missing is left out.
    """
    rows = {row["measure"]: row for row in results}
    checked = []
    for measure, peer, comparison, threshold, description in targets:
        ratio = rows.get(measure, {}).get("ratios", {}).get(peer)
        if ratio is None:
            continue
        met = ratio >= threshold if comparison == "at least" else ratio <= threshold
        checked.append(dict(measure=measure, peer=peer, description=description, comparison=comparison,
                            threshold=threshold, ratio=ratio, met=met))
    return checked


def format_targets(checked):
    lines = ["| target | ratio of medians | met |", "|---|---:|---|"]
    for target in checked:
        if target["met"]:
            verdict = "met"
        else:
            short = (target["threshold"] - target["ratio"] if target["comparison"] == "at least"
                     else target["ratio"] - target["threshold"])
            verdict = f"missed by {short:.2f}"
        lines.append(f"| {target['description']} ({target['comparison']} {target['threshold']:.2f}) "
                     f"| {target['ratio']:.2f} | {verdict} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- FLOPs
def measure_matmul_peak(log, sizes=(1024, 2048), calls=5, torch=None, min_seconds=0.5):
    """The best float32 square matmul rate this process reaches, in GFLOP/s.

    TensorFlow's `tf.matmul`, with XLA and without, at each size (and `torch.matmul` when
    PyTorch is given): the best of at least `calls` timed calls, and of at least
    `min_seconds` of calls, after one warm-up. A matmul of n x n by n x n counts 2 n^3
    floating-point operations. The peak is the best of all: the machine's, not one
    library's. The benchmarks measure it at their start and at their end and keep the
    better (`best_peak`): on these VMs a fresh process's first second can run at 70% of
    the speed it reaches a minute later.
    """
    import numpy as np
    import tensorflow as tf

    samples = []
    rng = np.random.default_rng(0)
    for size in sizes:
        left = rng.standard_normal((size, size), dtype=np.float32)
        right = rng.standard_normal((size, size), dtype=np.float32)
        flops = 2.0 * size ** 3
        runners = {}
        for jit_compile in (False, True):
            function = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=jit_compile)
            tensors = (tf.constant(left), tf.constant(right))
            runners[f"tf_matmul{'_xla' if jit_compile else ''}"] = (
                lambda function=function, tensors=tensors: function(*tensors).numpy())
        if torch is not None:
            torch_tensors = (torch.from_numpy(left), torch.from_numpy(right))
            runners["torch_matmul"] = lambda tensors=torch_tensors: torch.matmul(*tensors).numpy()
        for name, run in runners.items():
            run()  # traces / compiles
            best, count, start = float("inf"), 0, time.perf_counter()
            while count < calls or time.perf_counter() - start < min_seconds:
                begin = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - begin)
                count += 1
            samples.append(dict(kernel=name, size=size, seconds=best, gflops=flops / best / 1e9, calls=count))
            log(f"  matmul peak: {name:13s} {size}x{size}: {flops / best / 1e9:6.1f} GFLOP/s")
    best = max(samples, key=lambda sample: sample["gflops"])
    return dict(peak_gflops=best["gflops"], best=best, samples=samples,
                how=f"float32 square matmul, best of at least {calls} calls and {min_seconds} s, sizes {list(sizes)}")


def best_peak(*peaks):
    """The better of several `measure_matmul_peak` results, with every one kept in `measurements`."""
    best = max(peaks, key=lambda peak: peak["peak_gflops"])
    return dict(best, measurements=[
        {key: value for key, value in peak.items() if key != "measurements"} for peak in peaks])


def matmul_parameters(num_layers, hidden_dim, intermediate_dim, extra=0):
    """Weights that multiply every token: per block 4 d^2 (Q, K, V, output) + 2 d f (FFN).

    `extra` adds other per-token matmuls (a GPT's d x vocabulary output projection).
    Biases, layer norms and embedding lookups cost next to nothing and are left out.
    """
    return num_layers * (4 * hidden_dim * hidden_dim + 2 * hidden_dim * intermediate_dim) + extra


def forward_flops_per_token(num_layers, hidden_dim, intermediate_dim, context, extra=0):
    """2 x matmul weights, plus attention: Q K^T and attention x V, 2 x 2 x context x d per layer.

    The full context x context square is counted (no system here skips the masked half).
    """
    return (2 * matmul_parameters(num_layers, hidden_dim, intermediate_dim, extra)
            + 4 * num_layers * context * hidden_dim)


def format_mfu_table(rows, peak):
    """`rows`: (label, {system: utilisation}) in table order."""
    systems = [system for system in SYSTEMS if any(system in values for _, values in rows)]
    lines = [f"| model-FLOPs utilisation (peak {peak['peak_gflops']:.0f} GFLOP/s, {peak['best']['kernel']} "
             f"{peak['best']['size']}) | " + " | ".join(SHORT_LABELS[system] for system in systems) + " |",
             "|---|" + "---:|" * len(systems)]
    for label, values in rows:
        lines.append(f"| {label} | " + " | ".join(
            f"{values[system]:.0%}" if system in values else "—" for system in systems) + " |")
    if any(value > 1.0 for _, values in rows for value in values.values()):
        # A model cannot beat the machine's matmul rate: the peak was measured low.
        lines.append("\nAbove 100%: the measured matmul peak is below what the models reached, so these"
                     " utilisations overstate; compare the systems with each other, not with 100%.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- memory
def resident_bytes():
    """This process's resident set size now, from /proc (None where there is none)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_resident_bytes():
    """This process's high-water mark of resident memory: VmHWM in /proc/self/status.

    The kernel keeps it, so short peaks between samples are not missed. Not
    `getrusage().ru_maxrss`: a child keeps its parent's value across fork and exec, so a
    small child of a big benchmark process would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def report_peak_memory(baseline_bytes, **details):
    """In a child process: prints its peak resident memory and the growth over `baseline_bytes`."""
    peak = peak_resident_bytes()  # first: nothing below may count
    growth = None if peak is None or baseline_bytes is None else peak - baseline_bytes
    if "tfzoo" in sys.modules:  # a TensorFlow child (a PyTorch one imports none): the allocator it ran on
        details.setdefault("cpu_memory_pooled", sys.modules["tfzoo"].cpu_memory_is_pooled())
    payload = dict(peak_bytes=peak, baseline_bytes=baseline_bytes, growth_bytes=growth, **details)
    print(PEAK_MEMORY_MARKER + json.dumps(payload), flush=True)


def measure_peak_memory(script, arguments, log, timeout=900):
    """Runs `script arguments` in a fresh Python and returns what `report_peak_memory` printed."""
    command = [sys.executable, script, *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in completed.stdout.splitlines():
        if line.startswith(PEAK_MEMORY_MARKER):
            return json.loads(line[len(PEAK_MEMORY_MARKER):])
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
    raise RuntimeError(f"peak-memory child failed (exit {completed.returncode}): {' '.join(command)}\n"
                       + "\n".join(tail))


def import_for_memory_child(system, import_hf_model_code):
    """In a peak-memory child, before its baseline: the libraries `system` runs on.

    Both TensorFlow systems import the same libraries, so that their baselines match; a
    PyTorch child imports no TensorFlow (that would count ~500 MiB). Returns torch or None.
    """
    if system == HF_TORCH:
        torch = load_torch(wanted=True)
        # transformers loads its model code lazily: count that as import, not as the model.
        import_hf_model_code()
        return torch
    import keras  # noqa: F401
    import keras_hub  # noqa: F401
    import tensorflow  # noqa: F401

    import tfzoo  # noqa: F401

    return None


def current_cpu_allocator():
    """The `--cpu-allocator` choice this process's environment makes (a child is given it).

    As TensorFlow reads the variable: "true" or "1" in any case pools, anything else keeps
    its default allocator; unset, tfzoo's import sets "true"."""
    value = os.environ.get("TF_CPU_ALLOCATOR_USE_BFC")
    return "pooled" if value is None or value.lower() in ("true", "1") else "default"


def run_memory_children(script, children, model_arguments, quick, log):
    """Runs one peak-memory child per `(workload, system, --memory-child value)`.

    Returns `{workload: {system: report}}`.
    """
    reports = {}
    for workload, system, child in children:
        command = ["--memory-child", child, "--memory-model", json.dumps(model_arguments),
                   "--cpu-allocator", current_cpu_allocator()]
        report = measure_peak_memory(script, command + (["--quick"] if quick else []), log)
        reports.setdefault(workload, {})[system] = report
        log(f"  peak memory {workload:8s} {system:9s}: {report['peak_bytes'] / 2**20:6.0f} MiB "
            f"(+{report['growth_bytes'] / 2**20:.0f} MiB over the process after imports)")
    return reports


def format_memory_table(rows):
    """`rows`: (label, {system: report}) with reports from `measure_peak_memory`."""
    systems = [system for system in SYSTEMS if any(system in values for _, values in rows)]
    lines = ["| peak resident memory, MiB: whole process (growth over the process after imports) | "
             + " | ".join(SHORT_LABELS[system] for system in systems) + " |",
             "|---|" + "---:|" * len(systems)]
    mebibyte = 2 ** 20
    for label, values in rows:
        cells = []
        for system in systems:
            report = values.get(system)
            if report is None:
                cells.append("—")
            else:
                growth = report.get("growth_bytes")
                cells.append(f"{report['peak_bytes'] / mebibyte:,.0f}"
                             + ("" if growth is None else f" (+{growth / mebibyte:,.0f})"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
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

    cpu_model, cpu_flags = None, []
    try:
        with open("/proc/cpuinfo") as handle:
            lines = handle.read().splitlines()
        cpu_model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        # The vector and matrix extensions that decide float32 and bfloat16 matmul speed.
        cpu_flags = sorted(flag for flag in flags if flag in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"))
    except OSError:
        pass
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        cpu_count=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        cpu_model=cpu_model,
        cpu_flags=cpu_flags,
        platform=platform.platform(),
        python=sys.version.split()[0],
        tensorflow=tf.__version__,
        keras=keras.__version__,
        keras_hub=keras_hub.__version__,
        torch=package_version("torch"),
        transformers=package_version("transformers"),
        tfzoo=getattr(tfzoo, "__version__", None),
        keras_backend=keras.config.backend(),
        git_commit=git("rev-parse", "HEAD"),
        # ":/tfzoo" is the repository's tfzoo/: git runs in benchmarks/, where "tfzoo" matches nothing.
        git_dirty=bool(git("status", "--porcelain", "--", ":/tfzoo")),
        tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        tf_inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        cpu_memory_pooled=tfzoo.cpu_memory_is_pooled(),
        load_average_start=load_average(),
    )


def print_report(title, table, info, log):
    """The title, the table, and one line on the machine and how busy it was."""
    print()
    print(title)
    print(table)
    torch_versions = (f", PyTorch {info['torch']}, transformers {info['transformers']}"
                      if info.get("torch") and info.get("transformers") else "")
    cpu = f"{info.get('cpu_model') or 'unknown CPU'} ({' '.join(info.get('cpu_flags') or []) or 'flags unknown'}), "
    allocator = "pooled (BFC)" if info.get("cpu_memory_pooled") else "TensorFlow default"
    print(f"\n{info['cpu_count']} CPUs, {cpu}{info['platform']}, TF {info['tensorflow']}, Keras {info['keras']}, "
          f"keras-hub {info['keras_hub']}{torch_versions}; CPU allocator {allocator}; "
          f"1-minute load average during the run "
          f"{log.load_summary()}; took {log.elapsed():.0f} s")


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
    print(f"wrote {path}")
