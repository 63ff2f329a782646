"""Callbacks for training: text samples in TensorBoard, and atomic, resumable checkpoints."""

import glob
import os
import re

import keras
import tensorflow as tf

CHECKPOINT_PATTERN = re.compile(r"epoch_(\d+)\.keras$")


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
    """`(path, epoch)` of the newest complete checkpoint in `checkpoint_dir`, or `(None, 0)`.

    Only complete files are ever visible under the `epoch_NNN.keras` name: they are
    written to a temporary name and then renamed (see `EpochCheckpoint`).
    """
    best_path, best_epoch = None, 0
    for path in glob.glob(os.path.join(checkpoint_dir, "epoch_*.keras")):
        match = CHECKPOINT_PATTERN.search(os.path.basename(path))
        if match and int(match.group(1)) > best_epoch:
            best_path, best_epoch = path, int(match.group(1))
    return best_path, best_epoch


def restore_latest(model, checkpoint_dir):
    """Loads the newest checkpoint's weights and optimizer state into `model`.

    Returns the number of epochs already done (0 when there is no checkpoint), to pass
    to `fit(initial_epoch=...)`.
    """
    path, epoch = latest_checkpoint(checkpoint_dir)
    if path is None:
        return 0
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return epoch


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights, optimizer, tokenizer) as `epoch_NNN.keras` each epoch.

    The file is written under a temporary name and renamed into place, so a crash
    mid-write never leaves a half-written checkpoint where `restore_latest` looks.
    Older checkpoints beyond `keep` are removed.
    """

    def __init__(self, checkpoint_dir, keep=3):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        path = os.path.join(self.checkpoint_dir, f"epoch_{epoch + 1:03d}.keras")
        temporary = os.path.join(self.checkpoint_dir, f".writing_{os.getpid()}.keras")
        self.model.save(temporary)
        os.replace(temporary, path)  # atomic on POSIX
        checkpoints = sorted(
            glob.glob(os.path.join(self.checkpoint_dir, "epoch_*.keras")),
            key=lambda p: int(CHECKPOINT_PATTERN.search(p).group(1)),
        )
        for old in checkpoints[: -self.keep]:
            os.remove(old)
