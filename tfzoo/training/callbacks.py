"""Callbacks for training: text samples in TensorBoard, and atomic, resumable checkpoints."""

import glob
import os
import re

import keras
import tensorflow as tf

from tfzoo.validation import positive_int

CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.keras$")


class TextSamples(keras.callbacks.Callback):
    """Generates text from fixed prompts at each epoch end; logs it to TensorBoard's text tab.

    Args:
        prompts: a list of strings.
        log_dir: the TensorBoard log folder; samples go to `log_dir/samples`.
        max_new_tokens, temperature, top_k: how to sample.
        print_samples: also print them under the progress bar.
    """

    def __init__(self, prompts, log_dir, max_new_tokens=48, temperature=0.8, top_k=40, print_samples=True):
        super().__init__()
        self.prompts = list(prompts)
        self.log_dir = log_dir
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.print_samples = print_samples
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        room = self.model.max_sequence_length - self.max_new_tokens
        prompts = [p for p in self.prompts if len(self.model.tokenizer(p)) < room]
        if not prompts:
            return
        continuations = self.model.generate(
            prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            top_k=self.top_k, seed=epoch,
        )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "samples"))
        # Markdown: a quoted block per prompt, the generated part in bold.
        lines = [f"> {prompt}**{text}**".replace("\n", "  \n> ") for prompt, text in zip(prompts, continuations)]
        with self._writer.as_default():
            tf.summary.text("samples", "\n\n".join(lines), step=epoch + 1)
        self._writer.flush()
        if self.print_samples:
            print()  # below the progress bar
            for prompt, text in zip(prompts, continuations):
                print(f"  sample: {prompt!r} -> {text!r}")


def latest_checkpoint(checkpoint_dir):
    """`(path, step)` of the newest complete checkpoint in `checkpoint_dir`, or `(None, 0)`.

    `step` is the number of optimizer steps the checkpoint holds. Only complete files
    are ever visible under the `step_NNNNNNN.keras` name: they are written under a
    temporary name and then renamed (see `StepCheckpoint`).
    """
    best_path, best_step = None, 0
    for path in glob.glob(os.path.join(checkpoint_dir, "step_*.keras")):
        match = CHECKPOINT_PATTERN.search(os.path.basename(path))
        if match and int(match.group(1)) > best_step:
            best_path, best_step = path, int(match.group(1))
    return best_path, best_step


def restore_latest(model, checkpoint_dir):
    """Loads the newest checkpoint's weights and optimizer state into `model`.

    Returns the number of optimizer steps already done (0 without a checkpoint).
    """
    path, step = latest_checkpoint(checkpoint_dir)
    if path is None:
        return 0
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return step


class StepCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights, optimizer, tokenizer) as `step_NNNNNNN.keras`.

    It saves at the end of every epoch of `steps_per_epoch` steps and, with `every`,
    every `every` steps in between, counting optimizer steps so that a resumed run
    continues the same numbering. Each file is written under a temporary name and
    renamed into place (atomic on POSIX): a crash mid-write never leaves a
    half-written checkpoint where `restore_latest` looks. Only the newest `keep`
    checkpoints are kept.
    """

    def __init__(self, checkpoint_dir, steps_per_epoch, every=None, keep=3):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.steps_per_epoch = positive_int("steps_per_epoch", steps_per_epoch)
        self.every = None if every is None else positive_int("every", every)
        self.keep = positive_int("keep", keep)  # keep=0 would slice [:-0] and keep everything

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.steps_per_epoch == 0 or (self.every and step % self.every == 0):
            self.save(step)

    def save(self, step):
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        path = os.path.join(self.checkpoint_dir, f"step_{step:07d}.keras")
        temporary = os.path.join(self.checkpoint_dir, f".writing_{os.getpid()}.keras")
        self.model.save(temporary)
        os.replace(temporary, path)
        checkpoints = sorted(
            glob.glob(os.path.join(self.checkpoint_dir, "step_*.keras")),
            key=lambda p: int(CHECKPOINT_PATTERN.search(p).group(1)),
        )
        for old in checkpoints[: -self.keep]:
            os.remove(old)
