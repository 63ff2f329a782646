"""Training recipes: corpus -> tokenizer -> model -> fit, with logs, checkpoints and resume."""

import dataclasses
import json
import os
import shutil
import tempfile

import keras

from tfzoo.data import language_model_dataset, python_docstrings, read_text_files, tokenize_corpus
from tfzoo.models import GPT
from tfzoo.text import train_byte_pair_tokenizer
from tfzoo.training.callbacks import StepCheckpoint, TextSamples, latest_checkpoint, restore_latest
from tfzoo.training.distribute import (
    describe_strategy,
    get_strategy,
    global_batch_size,
    needs_static_shapes,
    read_tf_config,
    resolve_precision,
    set_precision,
)
from tfzoo.validation import positive_int

SAMPLE_PROMPTS = ["Return the", "If the", "This module"]


@dataclasses.dataclass
class GPTTrainingConfig:
    """Everything one GPT training run needs. The defaults train in a few minutes on 2 CPU cores."""

    corpus: list = dataclasses.field(default_factory=list)  # text files; empty = Python's docstrings
    max_corpus_characters: int = 2_000_000  # cap on the built-in corpus
    preset: str = "gpt_tiny"  # a name in tfzoo.models.presets.GPT_PRESETS
    vocabulary_size: int = 4096  # BPE vocabulary trained on the corpus
    sequence_length: int = 128  # tokens per training window
    batch_size: int = 16  # per replica: the global batch is this times the number of replicas
    epochs: int = 3
    steps_per_epoch: int = 100  # None = one pass over the corpus per epoch
    checkpoint_every: int = None  # also checkpoint every N steps (epoch ends always are)
    learning_rate: float = 1e-3  # peak, after warm-up; cosine decay to 10%
    warmup_steps: int = 30
    dropout: float = 0.0
    validation_fraction: float = 0.05
    run_dir: str = "runs/gpt"  # checkpoints/, logs/ and model.keras go here
    sample_prompts: list = dataclasses.field(default_factory=lambda: list(SAMPLE_PROMPTS))
    seed: int = 0
    strategy: str = "auto"  # a name for tfzoo.training.get_strategy: auto, cpu, mirrored, multi_worker, tpu
    devices: object = None  # for mirrored: replicas (GPUs, or logical CPUs); for tpu: its name
    precision: str = "float32"  # or mixed_bfloat16 (CPU, TPU), mixed_float16 (GPU, with loss scaling), auto


def _check(config):
    for name in ("vocabulary_size", "sequence_length", "batch_size", "epochs"):
        positive_int(name, getattr(config, name))
    for name in ("steps_per_epoch", "checkpoint_every"):  # None means "not set"
        if getattr(config, name) is not None:
            positive_int(name, getattr(config, name))
    if not 0.0 <= config.validation_fraction < 0.5:
        raise ValueError(f"`validation_fraction` must be in [0, 0.5). Received: {config.validation_fraction!r}")


def learning_rate_schedule(peak, warmup_steps, total_steps):
    """Linear warm-up to `peak`, then cosine decay to 10% of it."""
    decay_steps = max(total_steps - warmup_steps, 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=decay_steps, alpha=0.1,
        warmup_target=peak, warmup_steps=warmup_steps,
    )


def train_gpt(config, log=print, callbacks=()):
    """Trains a GPT as `config` says and returns `(model, history)`.

    `callbacks` are more Keras callbacks for `fit`, run after tfzoo's own (TensorBoard,
    text samples, checkpoints): e.g. `keras.callbacks.EarlyStopping` or a step timer.

    The run folder holds `config.json`, `checkpoints/` (`step_NNNNNNN.keras`, each a
    whole model with its tokenizer and optimizer state), `logs/` (TensorBoard) and the
    final `model.keras`. Running the same config again resumes from the newest
    checkpoint, mid-epoch included, and runs only the steps still planned
    (`epochs * steps_per_epoch` in all). The data order after a resume is a fresh
    shuffle, not the exact batches the interrupted run would have seen.
    """
    _check(config)
    # The strategy first: some configure the runtime, which must happen before any op.
    strategy = get_strategy(config.strategy, config.devices)
    precision = resolve_precision(config.precision, strategy)
    set_precision(precision)
    keras.utils.set_random_seed(config.seed)  # the same seed on every worker: the same shuffles
    checkpoint_dir = os.path.join(config.run_dir, "checkpoints")
    # Every worker reads the chief's checkpoints; only the chief writes into run_dir.
    run_dir = config.run_dir if _is_chief(config.strategy) else tempfile.mkdtemp(prefix="tfzoo_worker_")
    write_dir = os.path.join(run_dir, "checkpoints")
    os.makedirs(run_dir, exist_ok=True)
    chosen = " (chosen by auto)" if config.precision == "auto" else ""
    log(f"strategy: {describe_strategy(strategy)}; precision {precision}{chosen}")

    texts = read_text_files(config.corpus) if config.corpus else python_docstrings(config.max_corpus_characters)
    log(f"corpus: {len(texts)} documents, {sum(len(t) for t in texts):,} characters"
        + ("" if config.corpus else " (Python standard library docstrings)"))

    checkpoint_path, done_steps = latest_checkpoint(checkpoint_dir)
    with strategy.scope():
        if checkpoint_path:
            # Resume: the checkpoint holds the tokenizer, so token ids stay the same.
            model = keras.models.load_model(checkpoint_path, compile=False)
            tokenizer = model.tokenizer
            log(f"resuming from {checkpoint_path} (step {done_steps})")
        else:
            tokenizer = train_byte_pair_tokenizer(texts, config.vocabulary_size)
            model = GPT.from_preset(
                config.preset, vocabulary_size=tokenizer.vocabulary_size(), tokenizer=tokenizer,
                dropout=config.dropout,
            )
            log(f"tokenizer: byte-level BPE, {tokenizer.vocabulary_size()} tokens")
    if config.sequence_length > model.max_sequence_length:
        raise ValueError(
            f"`sequence_length`={config.sequence_length} exceeds the preset's "
            f"max_sequence_length={model.max_sequence_length}."
        )

    token_ids = tokenize_corpus(texts, tokenizer, tokenizer.end_token_id)
    split = int(len(token_ids) * (1 - config.validation_fraction))
    batch_size = global_batch_size(config.batch_size, strategy)
    static = needs_static_shapes(strategy)  # a TPU: every batch exactly batch_size
    train_data = language_model_dataset(token_ids[:split], config.sequence_length, batch_size, seed=config.seed,
                                        static_shapes=static)
    validation_data = None
    if config.validation_fraction > 0:
        validation_data = language_model_dataset(
            token_ids[split:], config.sequence_length, batch_size, shuffle=False, drop_remainder=False,
            static_shapes=static,
        )
    windows_per_epoch = split // (config.sequence_length + 1) // batch_size
    steps_per_epoch = config.steps_per_epoch or max(windows_per_epoch, 1)
    planned_steps = steps_per_epoch * config.epochs
    log(f"data: {len(token_ids):,} tokens; {config.epochs} epochs of {steps_per_epoch} steps of "
        f"{batch_size} x {config.sequence_length} tokens")
    train_data = train_data.repeat()  # epochs are counted in steps

    schedule = learning_rate_schedule(config.learning_rate, config.warmup_steps, planned_steps)
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.01, clipnorm=1.0))
        model.build()
        done_steps = restore_latest(model, checkpoint_dir)  # weights and optimizer state, when resuming
    if done_steps > planned_steps:
        raise ValueError(
            f"{run_dir} holds a checkpoint at step {done_steps}, beyond this plan's {planned_steps} steps "
            "(epochs x steps_per_epoch). Use a new --run-dir, or plan more steps."
        )

    with open(os.path.join(run_dir, "config.json"), "w") as file:
        json.dump(dataclasses.asdict(config), file, indent=2)
    log_dir = os.path.join(run_dir, "logs")
    fit_callbacks = [
        keras.callbacks.TensorBoard(log_dir=log_dir),
        TextSamples(config.sample_prompts, log_dir),
        StepCheckpoint(write_dir, steps_per_epoch, every=config.checkpoint_every),
        *(callbacks or ()),
    ]
    fit = dict(x=train_data, validation_data=validation_data, callbacks=fit_callbacks, shuffle=False,
               verbose=1 if log is print else 2)
    epoch, step_in_epoch = divmod(done_steps, steps_per_epoch)
    history = None
    if step_in_epoch:
        # Finish the interrupted epoch first: only the steps it still lacks.
        history = model.fit(
            epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=steps_per_epoch - step_in_epoch, **fit
        )
        epoch += 1
    if epoch < config.epochs:
        history = model.fit(epochs=config.epochs, initial_epoch=epoch, steps_per_epoch=steps_per_epoch, **fit)
    final_path = os.path.join(run_dir, "model.keras")
    model.save(final_path)
    if run_dir == config.run_dir:
        log(f"saved {final_path}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # a non-chief worker's scratch copy
    return model, history


def _is_chief(strategy_name):
    """Whether this process writes the run folder: always, except on multi-worker's other workers."""
    if strategy_name != "multi_worker":
        return True
    task = read_tf_config()["task"]
    return task["type"] == "chief" or (task["type"] == "worker" and task.get("index", 0) == 0
                                       and "chief" not in read_tf_config()["cluster"])


