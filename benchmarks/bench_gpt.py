"""tfzoo's GPT against keras-hub's GPT2 and Hugging Face's GPT2 on PyTorch, in one run.

All models are built from config with random weights (nothing is downloaded) on the
design brief's "tiny GPT": vocabulary 8192, 4 layers, width 256, 4 heads, FFN 1024,
sequence 256, float32. Hugging Face transformers on PyTorch (CPU) is measured when
installed (`pip install -e '.[bench]'`) and skipped with a note otherwise. Measured:

1. training tokens/s, batch 16 x 256, next-token cross-entropy, Adam, on in-memory
   batches, with Keras' default (no XLA on CPU) and with XLA (PyTorch runs eagerly in both
   rows), and the model-FLOPs utilisation against a matmul peak measured here;
2. greedy generation, prompt 32 + 64 new tokens, new tokens/s at batch 1 and 8, with
   and without XLA (stop tokens disabled on every side; the counts are checked);
3. the first `generate` call on a fresh model (tracing + compiling + one run);
4. tfzoo's exported SavedModel: its `generate` signature against in-process `generate`;
5. peak resident memory of each system's training and generation, each in a fresh process.

Every measure is taken once per round for each system, back to back (their order
rotates between rounds; generation's timed calls take turns between systems within a
round), and the table reports medians over rounds with the ratio of tfzoo to each peer.
Results go to benchmarks/results/.

    python benchmarks/bench_gpt.py                  # full run (~20 min on 2 cores)
    python benchmarks/bench_gpt.py --quick          # smoke test, tiny sizes (a few minutes)
    python benchmarks/bench_gpt.py --only generate --rounds 5
"""

import contextlib
import gc
import glob
import json
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
    HF_TORCH, KERAS_HUB, RESULTS, SHORT_LABELS, TFZOO, Logger, add_peer_arguments, benchmark_parser, best_peak,
    check_targets, checked_args, format_memory_table, format_mfu_table, format_table, format_targets,
    forward_flops_per_token, import_for_memory_child, load_average, measure_matmul_peak, order_for_call,
    order_for_round, parameter_count, print_report, report_peak_memory, resident_bytes, run_memory_children,
    seeded_build, start_run, summarize, write_json,
)
SYSTEM_NAMES = {TFZOO: "tfzoo GPT", KERAS_HUB: "keras-hub GPT2", HF_TORCH: "HF GPT2LMHeadModel"}
# Set by main() when PyTorch and transformers are installed (and not --no-torch).
TORCH = None
# The SavedModel comparison's three ways to generate, the export first (the reference).
# `generate_xla` (the opt-in signature compiled with XLA) is compared with in-process XLA.
SAVEDMODEL, IN_PROCESS, IN_PROCESS_XLA = "savedmodel", "in_process", "in_process_xla"
SAVEDMODEL_XLA = "savedmodel_xla"
SHORT_LABELS.update({SAVEDMODEL: "SavedModel", IN_PROCESS: "in-process, no XLA", IN_PROCESS_XLA: "in-process, XLA",
                     SAVEDMODEL_XLA: "SavedModel generate_xla"})

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
        # The export's tokenizer must cover every id a random model can emit, or
        # detokenizing fails: its vocabulary is the model's.
        savedmodel_calls=7,  # timed calls per way per round, interleaved
        matmul_sizes=(1024, 2048),
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
        savedmodel_calls=2,
        matmul_sizes=(256, 512),
        rounds=1,
    ),
}


def parse_args(argv=None):
    parser = benchmark_parser(__doc__.split("\n\n")[0], "bench_gpt", full_rounds=3)
    parser.add_argument("--only", choices=("train", "generate", "savedmodel", "memory"), default=None,
                        help="run one part only")
    add_peer_arguments(parser)  # --no-torch, --no-memory, and the peak-memory child's flags
    return checked_args(parser, argv)


def systems():
    return (TFZOO, KERAS_HUB) + ((HF_TORCH,) if TORCH is not None else ())


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


def build_hf(preset, arguments=None):
    """GPT2LMHeadModel with the same shapes: tied head, tanh GELU, dropout 0, no end token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    arguments = arguments or model_arguments(preset)
    config = GPT2Config(
        vocab_size=arguments["vocabulary_size"],
        n_positions=arguments["max_sequence_length"],
        n_embd=arguments["hidden_dim"],
        n_layer=arguments["num_layers"],
        n_head=arguments["num_heads"],
        n_inner=arguments["intermediate_dim"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        # GPT-2's own ids (50256) lie outside this vocabulary; no end token, like the others.
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


BUILDERS = {TFZOO: build_tfzoo, KERAS_HUB: build_keras_hub, HF_TORCH: build_hf}


def build(system, preset, seed, arguments=None):
    if system == HF_TORCH:
        return seeded_build(system, seed, lambda: build_hf(preset, arguments), TORCH)
    return seeded_build(system, seed, lambda: BUILDERS[system](preset))


class TorchTrainer:
    """PyTorch's training step with the Keras side's settings, behind `train_on_batch`.

    Adam with learning rate 1e-4 and Keras' epsilon 1e-7, mean next-token cross-entropy
    from logits; `loss.item()` waits for the step, as Keras' numpy result does.
    """

    jit_compile = False

    def __init__(self, model):
        self.model = model.train()
        self.optimizer = TORCH.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)

    def train_on_batch(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(input_ids=x).logits
        loss = TORCH.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def count_params(self):
        return parameter_count(self.model)


def compile_model(system, model, jit_compile):
    """Same optimizer, no metrics, each library's own default loss (`"auto"`): next-token
    sparse cross-entropy from logits for both, Keras' for keras-hub and tfzoo's
    XLA-compiled one for tfzoo. `jit_compile=None` keeps Keras' default."""
    if system == HF_TORCH:
        return TorchTrainer(model)  # eager PyTorch: there is no jit_compile to set
    import keras

    kwargs = {} if jit_compile is None else {"jit_compile": jit_compile}
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    if system == TFZOO:
        model.compile(optimizer=optimizer, loss="auto", metrics=[], **kwargs)
    else:
        model.compile(optimizer=optimizer, loss="auto", weighted_metrics=[], sampler="greedy", **kwargs)
    return model


# ---------------------------------------------------------------------------- training
def training_batches(settings, vocabulary_size, count=4, seed=0, tensorflow=True):
    """A few in-memory batches of random tokens, as each model's `fit` input takes them.

    `tensorflow=False` makes only PyTorch's (a PyTorch memory child never imports TensorFlow).
    """
    rng = np.random.default_rng(seed)
    batches = {TFZOO: [], KERAS_HUB: [], HF_TORCH: []}
    shape = (settings["train_batch_size"], settings["train_sequence_length"] + 1)
    for _ in range(count):
        tokens = rng.integers(0, vocabulary_size, shape, dtype=np.int32)
        if TORCH is not None:
            # PyTorch's embedding and cross-entropy take int64 ids.
            batches[HF_TORCH].append((TORCH.from_numpy(tokens[:, :-1].astype(np.int64)),
                                      TORCH.from_numpy(tokens[:, 1:].astype(np.int64))))
        if not tensorflow:
            continue
        import tensorflow as tf

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


def variant_systems(variant):
    return (TFZOO, KERAS_HUB) if variant == "bf16" else systems()


@contextlib.contextmanager
def dtype_policy(policy):
    """Keras' global dtype policy set to `policy` while models are built and compiled."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def run_training(settings, rounds, log):
    tokens_per_step = settings["train_batch_size"] * settings["train_sequence_length"]
    vocabulary_size = model_arguments(settings["preset"])["vocabulary_size"]
    batches = training_batches(settings, vocabulary_size)
    # (name, jit_compile, Keras dtype policy). The mixed_bfloat16 row is the Keras systems
    # only: bfloat16 matmuls pay off where the CPU has AMX / AVX512-BF16 (machine_info lists
    # the CPU flags); this is the row that says whether they do here.
    variants = (("default", None, "float32"), ("xla", True, "float32"), ("bf16", None, "mixed_bfloat16"))
    measures, checks = {}, {}
    models = {}
    for variant, jit_compile, policy in variants:
        for system in variant_systems(variant):
            # PyTorch has no XLA switch here: it is measured eagerly again in the XLA row,
            # back to back with the others like every measure.
            with dtype_policy(policy):
                model = compile_model(system, build(system, settings["preset"], seed=0), jit_compile)
            first, first_loss = train_steps(model, batches[system], 1)
            rest, loss = train_steps(model, batches[system], settings["train_warmup_steps"] - 1, start=1)
            models[variant, system] = model
            checks[f"train_{variant}_{system}"] = dict(
                jit_compile=bool(model.jit_compile), parameters=int(model.count_params()),
                dtype_policy=getattr(getattr(model, "dtype_policy", None), "name", None),  # None: PyTorch
                first_step_seconds=first, first_loss=first_loss, warmup_loss=loss,
            )
            log(f"  train warm-up {variant:7s} {system:9s}: first step {first:6.1f} s, "
                f"loss {first_loss:.3f}, jit_compile={model.jit_compile}")
            if not np.isfinite(first_loss):
                raise RuntimeError(f"{system} training loss is not finite: {first_loss}")
    for round_index in range(rounds):
        for variant, _, _ in variants:
            key = f"train_tokens_per_second_{variant}"
            for system in order_for_round(round_index, variant_systems(variant)):
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

    elif system == HF_TORCH:
        input_ids = TORCH.from_numpy(prompts.astype(np.int64))
        attention_mask = TORCH.ones_like(input_ids)

        def generate():
            # min_new_tokens = max_new_tokens and no end token: exactly `new_tokens` per row.
            with TORCH.inference_mode():
                return model.generate(
                    input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
                    eos_token_id=None,
                ).numpy()

        def new_token_counts(output):
            return [output.shape[1] - prompt_length] * output.shape[0]

        def check_prompt(output):
            return bool(np.array_equal(output[:, :prompt_length], prompts))

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
    """Each (variant, batch size) of a round: every system's first call, then their timed calls in turns.

    The timed calls alternate between systems (A B, B A, A B, ...) rather than running one
    system's calls and then the next's: at batch 1 a call takes ~50 ms and the host's load
    on the shared cache changes on a scale of seconds, so taking turns puts both systems
    under the same conditions and the ratio is steadier than either rate.
    """
    vocabulary_size = model_arguments(settings["preset"])["vocabulary_size"]
    new_tokens = settings["new_tokens"]
    measures, checks = {}, {}
    for round_index in range(rounds):
        for variant, jit_compile in (("xla", True), ("default", False)):
            for batch_size in settings["generate_batch_sizes"]:
                prompts = generation_prompts(settings, batch_size, vocabulary_size, seed=round_index)
                order = order_for_round(round_index, systems())
                runs = {}
                for system in order:
                    # A fresh model per measure, so that the first call really traces and compiles.
                    model = build(system, settings["preset"], seed=round_index)
                    if system == HF_TORCH:
                        model.eval()
                        actual_jit = False  # eager PyTorch in both rows
                    elif system == KERAS_HUB:
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
                    runs[system] = dict(model=model, generate=generate, checked=checked, jit=actual_jit,
                                        counts=counts, first_call=first_call, call_seconds=[])
                turns = []
                for call_index in range(settings["generate_calls"]):
                    for system in order_for_call(call_index, order):
                        turns.append(system)
                        run = runs[system]
                        begin = time.perf_counter()
                        output = run["generate"]()
                        run["call_seconds"].append(time.perf_counter() - begin)
                        run["checked"](output)
                suffix = f"{variant}_batch{batch_size}"
                checks.setdefault(f"generate_{suffix}_turns", []).append(turns)
                for system in order:
                    run = runs[system]
                    rate = batch_size * new_tokens / statistics.median(run["call_seconds"])
                    measures.setdefault(f"generate_tokens_per_second_{suffix}", {}).setdefault(system, []).append(rate)
                    measures.setdefault(f"generate_first_call_seconds_{suffix}", {}).setdefault(system, []).append(
                        run["first_call"])
                    checks.setdefault(f"generate_{suffix}_{system}", []).append(
                        dict(jit_compile=run["jit"], new_tokens_per_row=run["counts"],
                             call_seconds=run["call_seconds"], first_call_seconds=run["first_call"])
                    )
                    log(f"  round {round_index + 1}/{rounds} generate {variant:7s} batch {batch_size} "
                        f"{system:9s}: {rate:7.0f} new tokens/s, first call {run['first_call']:5.1f} s "
                        f"(jit_compile={run['jit']}, {run['counts'][0]} new tokens/row)")
                del runs, model, generate, checked, output
                gc.collect()
    return measures, checks


# ---------------------------------------------------------------------------- report
MEASURE_ORDER = [
    ("train_tokens_per_second_default", "training tokens/s, batch {tb}x{tl}, Keras default (no XLA)", "higher"),
    ("train_tokens_per_second_xla", "training tokens/s, batch {tb}x{tl}, XLA", "higher"),
    ("train_tokens_per_second_bf16", "training tokens/s, batch {tb}x{tl}, mixed_bfloat16, no XLA", "higher"),
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


def training_flops_per_token(settings):
    """3 x the forward pass (forward, and backward at twice its cost), per trained token.

    The forward counts 2 x the matmul weights (blocks and the tied d x vocabulary output
    projection) plus attention over the training context; see common.forward_flops_per_token.
    """
    arguments = model_arguments(settings["preset"])
    return 3 * forward_flops_per_token(
        arguments["num_layers"], arguments["hidden_dim"], arguments["intermediate_dim"],
        context=settings["train_sequence_length"], extra=arguments["hidden_dim"] * arguments["vocabulary_size"],
    )


def utilisation_rows(results, settings, peak):
    flops = training_flops_per_token(settings)
    rows = []
    for row in results:
        # Against the float32 matmul peak: the float32 rows only.
        if row["measure"].startswith("train_tokens_per_second") and not row["measure"].endswith("bf16"):
            rows.append((row["label"], {system: value["median"] * flops / (peak["peak_gflops"] * 1e9)
                                        for system, value in row["systems"].items()}))
    return rows, flops


# ---------------------------------------------------------------------------- SavedModel
def tokenizer_corpus(with_keras_hub=True):
    """Lines of text and code on this machine: this repository's and keras-hub's model sources.

    About 80,000 lines, enough for SentencePiece to fill the tiny GPT's 8,192 pieces
    (this repository's 5,000 alone give about 3,700). Nothing is downloaded.
    """
    import keras_hub

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = [(root, "*.md"), (root, "docs/**/*.md"), (root, "tfzoo/**/*.py"), (root, "benchmarks/*.py")]
    if with_keras_hub:
        sources.append((os.path.join(os.path.dirname(keras_hub.__file__), "src", "models"), "**/*.py"))
    lines = []
    for folder, pattern in sources:
        for path in sorted(glob.glob(os.path.join(folder, pattern), recursive=True)):
            with open(path, encoding="utf-8") as handle:
                lines += [line.strip() for line in handle if len(line.strip()) > 20]
    return lines


def savedmodel_prompts(tokenizer, corpus, batch_size, prompt_length, seed):
    """`batch_size` strings cut from the corpus to about `prompt_length` tokens each."""
    rng = np.random.default_rng(seed)
    text = " ".join(corpus)
    prompts = []
    while len(prompts) < batch_size:
        start = int(rng.integers(0, len(text) - 20 * prompt_length))
        ids = tokenizer([text[start:start + 20 * prompt_length]]).to_list()[0][:prompt_length]
        prompt = tokenizer.detokenize([ids]).numpy()[0].decode("utf-8").strip()
        if prompt:
            prompts.append(prompt)
    return prompts


def run_savedmodel(settings, rounds, log):
    """The exported `generate` signatures against in-process `GPT.generate`, same prompts.

    Both sides take strings and return strings, stop at the tokenizer's end token (the
    export's fixed setting) and decode greedily; every call must add exactly `new_tokens`
    per row. `generate` is traced without XLA (what a stock TF Serving runs), so its
    like-for-like comparison is in-process `jit_compile=False` (in-process XLA, the
    default, is reported too); the opt-in `generate_xla` is compared with in-process XLA.
    """
    import keras
    import tensorflow as tf

    from tfzoo.export import export_gpt
    from tfzoo.models import GPT
    from tfzoo.text import train_sentencepiece_tokenizer

    new_tokens = settings["new_tokens"]
    vocabulary_size = model_arguments(settings["preset"])["vocabulary_size"]
    corpus = tokenizer_corpus(with_keras_hub=vocabulary_size > 2000)
    begin = time.perf_counter()
    tokenizer = train_sentencepiece_tokenizer(corpus, vocabulary_size=vocabulary_size)
    log(f"  SentencePiece tokenizer: {tokenizer.vocabulary_size()} pieces from {len(corpus)} lines of local "
        f"sources, {time.perf_counter() - begin:.1f} s")
    measures, checks = {}, dict(tokenizer_pieces=tokenizer.vocabulary_size())
    if tokenizer.vocabulary_size() != vocabulary_size:
        log(f"  the model's vocabulary shrinks to the tokenizer's {tokenizer.vocabulary_size()}")
    keras.utils.set_random_seed(0)
    model = GPT.from_preset(settings["preset"], dropout=0.0, tokenizer=tokenizer,
                            vocabulary_size=tokenizer.vocabulary_size())
    model.build()
    with tempfile.TemporaryDirectory() as root:
        begin = time.perf_counter()
        path = export_gpt(model, root, "gpt", xla=True)
        exported = time.perf_counter() - begin
        begin = time.perf_counter()
        signatures = tf.saved_model.load(path).signatures
        signature, signature_xla = signatures["generate"], signatures["generate_xla"]
        loaded = time.perf_counter() - begin
        log(f"  exported in {exported:.1f} s, loaded in {loaded:.1f} s")
        checks["export_seconds"], checks["load_seconds"] = exported, loaded
        for batch_size in settings["generate_batch_sizes"]:
            for attempt in range(10):
                # Random weights may emit the end token early; take prompts that run 64 tokens.
                prompts = savedmodel_prompts(tokenizer, corpus, batch_size, settings["prompt_length"],
                                             seed=100 * batch_size + attempt)
                exported_output = signature(prompts=tf.constant(prompts), max_new_tokens=tf.constant(new_tokens))
                if (exported_output["lengths"].numpy() == new_tokens).all():
                    break
            token_lists = tokenizer(prompts).to_list()
            in_process_ids = model.generate(token_lists, max_new_tokens=new_tokens, jit_compile=False)
            same = in_process_ids == [row[:new_tokens] for row in exported_output["token_ids"].numpy().tolist()]
            xla_output = signature_xla(prompts=tf.constant(prompts), max_new_tokens=tf.constant(new_tokens))
            same_xla = bool((xla_output["token_ids"].numpy() == exported_output["token_ids"].numpy()).all())
            counts = exported_output["lengths"].numpy().tolist()
            checks[f"batch{batch_size}"] = dict(
                prompts=prompts, prompt_tokens=[len(ids) for ids in token_lists], new_tokens_per_row=counts,
                in_process_same_tokens=bool(same), generate_xla_same_tokens=same_xla, attempts=attempt + 1,
            )
            log(f"  batch {batch_size}: prompts of {min(map(len, token_lists))}-{max(map(len, token_lists))} "
                f"tokens, {counts} new tokens, in-process tokens equal: {same}, generate_xla's equal: {same_xla}")
            if counts != [new_tokens] * batch_size:
                raise RuntimeError(f"the export generated {counts} tokens, expected {new_tokens} per row")

            def check(texts):
                if len(texts) != batch_size:
                    raise RuntimeError(f"expected {batch_size} texts, got {len(texts)}")

            calls = {
                SAVEDMODEL: lambda prompts=prompts: signature(
                    prompts=tf.constant(prompts), max_new_tokens=tf.constant(new_tokens))["text"].numpy(),
                SAVEDMODEL_XLA: lambda prompts=prompts: signature_xla(
                    prompts=tf.constant(prompts), max_new_tokens=tf.constant(new_tokens))["text"].numpy(),
                IN_PROCESS: lambda prompts=prompts: model.generate(prompts, max_new_tokens=new_tokens,
                                                                   jit_compile=False),
                IN_PROCESS_XLA: lambda prompts=prompts: model.generate(prompts, max_new_tokens=new_tokens,
                                                                       jit_compile=True),
            }
            for round_index in range(rounds):
                order = order_for_round(round_index, (SAVEDMODEL, IN_PROCESS, IN_PROCESS_XLA, SAVEDMODEL_XLA))
                for way in order:
                    check(calls[way]())  # the first in-process XLA call compiles
                seconds = {way: [] for way in order}
                for index in range(settings["savedmodel_calls"]):
                    for way in order_for_call(index, order):
                        begin = time.perf_counter()
                        texts = calls[way]()
                        seconds[way].append(time.perf_counter() - begin)
                        check(texts)
                for way in order:
                    rate = batch_size * new_tokens / statistics.median(seconds[way])
                    for measure, ways in ((f"savedmodel_tokens_per_second_batch{batch_size}",
                                           (SAVEDMODEL, IN_PROCESS, IN_PROCESS_XLA)),
                                          (f"savedmodel_xla_tokens_per_second_batch{batch_size}",
                                           (SAVEDMODEL_XLA, IN_PROCESS_XLA))):
                        if way in ways:
                            measures.setdefault(measure, {}).setdefault(way, []).append(rate)
                    checks.setdefault(f"batch{batch_size}_{way}_call_seconds", []).append(seconds[way])
                    log(f"  round {round_index + 1}/{rounds} batch {batch_size} {way:14s}: {rate:7.0f} new tokens/s")
    return measures, checks


def describe_savedmodel(settings, xla=False):
    prompt, new = settings["prompt_length"], settings["new_tokens"]
    prefix, signature = ("savedmodel_xla", "generate_xla") if xla else ("savedmodel", "generate")
    return [(f"{prefix}_tokens_per_second_batch{batch_size}",
             f"`{signature}` greedy new tokens/s, text in and out, prompt ~{prompt} + {new}, batch {batch_size}",
             "higher")
            for batch_size in settings["generate_batch_sizes"]]


# ---------------------------------------------------------------------------- peak memory
MEMORY_WORKLOADS = {
    "train": "training, batch {tb}x{tl}, Keras default (no XLA) / PyTorch eager",
    "generate": "greedy generation, batch {b}, XLA / PyTorch eager",
}


def import_hf_model_code():
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: F401


def memory_child(args, settings):
    """In a fresh process: one system's workload, then its peak RSS on one line of stdout."""
    system, workload = args.memory_child.split(":")
    global TORCH
    TORCH = import_for_memory_child(system, import_hf_model_code)
    arguments = json.loads(args.memory_model) if system == HF_TORCH else model_arguments(settings["preset"])
    baseline = resident_bytes()
    model = build(system, settings["preset"], seed=0, arguments=arguments)
    if workload == "train":
        batches = training_batches(settings, arguments["vocabulary_size"], tensorflow=system != HF_TORCH)[system]
        model = compile_model(system, model, None)
        train_steps(model, batches, settings["train_warmup_steps"] + 2)
    else:
        batch_size = max(settings["generate_batch_sizes"])
        prompts = generation_prompts(settings, batch_size, arguments["vocabulary_size"], seed=0)
        if system == KERAS_HUB:
            compile_model(system, model, True)
        elif system == HF_TORCH:
            model.eval()
        generate, checked = make_generate(system, model, prompts, settings["new_tokens"], True)
        for _ in range(3):
            checked(generate())
    report_peak_memory(baseline, system=system, tensorflow_loaded="tensorflow" in sys.modules, workload=workload)


def run_memory(settings, quick, log):
    children = [(workload, system, f"{system}:{workload}") for workload in MEMORY_WORKLOADS for system in systems()]
    return run_memory_children(os.path.abspath(__file__), children, model_arguments(settings["preset"]), quick, log)


def memory_rows(reports, settings):
    labels = {workload: label.format(tb=settings["train_batch_size"], tl=settings["train_sequence_length"],
                                     b=max(settings["generate_batch_sizes"]))
              for workload, label in MEMORY_WORKLOADS.items()}
    return [(labels[workload], values) for workload, values in reports.items()]


# Issue 8's targets: (measure, peer, comparison, threshold, description).
TARGETS = [
    ("train_tokens_per_second_default", KERAS_HUB, "at least", 1.3,
     "training tokens/s vs keras-hub GPT2, Keras default (no XLA)"),
    ("train_tokens_per_second_xla", KERAS_HUB, "at least", 1.3, "training tokens/s vs keras-hub GPT2, XLA"),
    # Both models built and trained under the mixed_bfloat16 policy: the same precision on
    # both sides, the "bfloat16 where it helps on this CPU".
    ("train_tokens_per_second_bf16", KERAS_HUB, "at least", 1.3,
     "training tokens/s vs keras-hub GPT2, both mixed_bfloat16, no XLA"),
    ("generate_tokens_per_second_xla_batch1", KERAS_HUB, "at least", 2.0,
     "greedy generation batch 1 vs keras-hub `generate` with jit_compile=True"),
    ("generate_tokens_per_second_xla_batch8", KERAS_HUB, "at least", 1.5,
     "greedy generation batch 8 vs keras-hub `generate` with jit_compile=True"),
    ("generate_first_call_seconds_xla_batch1", KERAS_HUB, "at most", 1.0,
     "first `generate` call, batch 1, XLA, no slower than keras-hub's"),
    ("generate_first_call_seconds_xla_batch8", KERAS_HUB, "at most", 1.0,
     "first `generate` call, batch 8, XLA, no slower than keras-hub's"),
]
SAVEDMODEL_TARGETS = [
    (f"savedmodel_tokens_per_second_batch{batch_size}", peer, "at least", 0.9,
     f"SavedModel `generate` within 10% of in-process {what}, batch {batch_size}")
    for batch_size in (1, 8)
    for peer, what in ((IN_PROCESS, "`generate(jit_compile=False)`"), (IN_PROCESS_XLA, "`generate` with XLA (the default)"))
] + [
    (f"savedmodel_xla_tokens_per_second_batch{batch_size}", IN_PROCESS_XLA, "at least", 0.9,
     f"SavedModel `generate_xla` within 10% of in-process `generate` with XLA, batch {batch_size}")
    for batch_size in (1, 8)
]


def main(argv=None):
    global TORCH
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = dict(SETTINGS[mode])
    if args.memory_child:
        return memory_child(args, settings)
    rounds = args.rounds or settings["rounds"]
    output = args.output or os.path.join(RESULTS, "bench_gpt_quick.json" if args.quick else "bench_gpt.json")

    log = Logger()

    info, TORCH = start_run("bench_gpt", mode, f"preset {settings['preset']} {model_arguments(settings['preset'])}",
                            args.no_torch, log)

    log("matmul peak, at the start")
    peak_at_start = measure_matmul_peak(log, sizes=settings["matmul_sizes"], torch=TORCH)

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

    savedmodel_results = savedmodel_xla_results = []
    if args.only in (None, "savedmodel"):
        log("SavedModel generate vs in-process")
        part, part_checks = run_savedmodel(settings, rounds, log)
        savedmodel_results = summarize(part, describe_savedmodel(settings), reference=SAVEDMODEL)
        savedmodel_xla_results = summarize(part, describe_savedmodel(settings, xla=True), reference=SAVEDMODEL_XLA)
        checks["savedmodel"] = part_checks
    memory = {}
    if args.only in (None, "memory") and not args.no_memory:
        log("peak memory, one fresh process per system and workload")
        memory = run_memory(settings, args.quick, log)

    log("matmul peak, at the end")
    peak = best_peak(peak_at_start, measure_matmul_peak(log, sizes=settings["matmul_sizes"], torch=TORCH))
    results = summarize(measures, describe_measures(settings))
    info["load_average_end"] = load_average()
    info["load_average_samples"] = log.load_samples
    elapsed = log.elapsed()
    peers = "keras-hub GPT2" + (" and HF GPT2LMHeadModel (PyTorch)" if TORCH is not None else "")
    title = (f"tfzoo GPT vs {peers}, preset {settings['preset']} "
             f"{model_arguments(settings['preset'])}, float32, random weights, {mode} mode")
    tables = [format_table(results, rounds)] if results else []
    mfu_rows, flops = utilisation_rows(results, settings, peak)
    if mfu_rows:
        tables.append(format_mfu_table(mfu_rows, peak)
                      + f"\n\nTraining FLOPs per token: {flops / 1e6:.1f} M (3 x forward; see README).")
    if savedmodel_results:
        tables.append("SavedModel `generate` signature (the reference) vs in-process `GPT.generate`:\n\n"
                      + format_table(savedmodel_results, rounds))
    if savedmodel_xla_results:
        tables.append("SavedModel `generate_xla` signature (the reference) vs in-process `GPT.generate` with XLA:\n\n"
                      + format_table(savedmodel_xla_results, rounds))
    if memory:
        tables.append(format_memory_table(memory_rows(memory, settings)))
    targets = check_targets(results, TARGETS) + check_targets(savedmodel_results + savedmodel_xla_results,
                                                              SAVEDMODEL_TARGETS)
    if targets:
        tables.append(format_targets(targets))
    table = "\n\n".join(tables)
    print_report(title, table, info, log)
    write_json(output, dict(
        benchmark="bench_gpt", mode=mode, rounds=rounds, only=args.only,
        model=model_arguments(settings["preset"]), settings=settings, machine=info,
        results=results, matmul_peak=peak, training_flops_per_token=flops,
        utilisation={label: values for label, values in mfu_rows},
        savedmodel=savedmodel_results, savedmodel_xla=savedmodel_xla_results, peak_memory=memory, targets=targets,
        checks=checks, table=table, elapsed_seconds=elapsed,
    ))
    return results


if __name__ == "__main__":
    main()
