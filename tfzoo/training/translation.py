"""The translation recipe: parallel corpus -> SentencePiece -> Seq2SeqTransformer -> fit -> BLEU.

Logs to TensorBoard: loss and token accuracy (training and held-out), the learning
rate, and at each epoch end the BLEU of a held-out sample and its translations as text.
"""

import dataclasses
import json
import os
import time

import keras
import tensorflow as tf

from tfzoo.training.callbacks import StepCheckpoint, latest_checkpoint, restore_latest
from tfzoo.validation import positive_int

CORPORA = ("auto", "bible", "django")


@dataclasses.dataclass
class TranslationTrainingConfig:
    """Everything one translation run needs. The defaults train on Bible verses (or Django's strings)."""

    corpus: str = "auto"  # "bible" (diatheke verses), "django" (UI strings), "auto" (bible if installed), or a TSV file
    max_pairs: int = None  # use at most this many pairs (before the held-out split); None = all
    max_words: int = 40  # drop pairs with a side longer than this many words
    test_size: int = 500  # held-out pairs for the final BLEU
    preset: str = "seq2seq_tiny"  # a name in tfzoo.models.seq2seq.SEQ2SEQ_PRESETS
    vocabulary_size: int = 8000  # SentencePiece pieces (per side when not shared)
    shared_vocabulary: bool = True  # one tokenizer for both languages (else one per side)
    max_sequence_length: int = 96  # tokens per side, longer ones are truncated
    batch_size: int = 32
    epochs: int = 5
    steps_per_epoch: int = None  # None = one pass over the training pairs
    learning_rate: float = 1e-3  # peak, after warm-up; cosine decay to 10%
    warmup_steps: int = 200
    label_smoothing: float = 0.1
    dropout: float = None  # None = the preset's
    bleu_sample_size: int = 64  # held-out pairs translated (greedy) at each epoch end for TensorBoard
    beam_width: int = 4  # the final evaluation also runs beam search with this width
    length_penalty: float = 0.6
    run_dir: str = "runs/seq2seq"  # checkpoints/, logs/, model.keras and results.json go here
    seed: int = 0


def corpus_bleu(hypotheses, references):
    """Corpus BLEU (sacrebleu, its default 13a tokenization) of translations against one reference each.

    Example:
    >>> round(corpus_bleu(["el gato duerme en la casa"], ["el gato duerme en la casa"]), 1)
    100.0
    """
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def load_pairs(corpus, log=print):
    """`(pairs, description)` for a corpus name or a TSV path (see `TranslationTrainingConfig.corpus`)."""
    from tfzoo.data import bible_verse_pairs, django_translation_pairs, read_parallel_tsv

    if corpus not in CORPORA:
        return read_parallel_tsv(corpus), f"{corpus} (TSV)"
    if corpus in ("auto", "bible"):
        try:
            return bible_verse_pairs(), "Bible verses: World English Bible -> Reina-Valera 1909 (diatheke)"
        except ValueError as error:
            if corpus == "bible":
                raise
            log(f"Bible verses unavailable ({error}); using Django's message catalogs instead")
    return django_translation_pairs(), "Django's English -> Spanish message catalogs"


def _check(config):
    for name in ("vocabulary_size", "max_sequence_length", "batch_size", "epochs", "test_size", "max_words",
                 "beam_width"):
        positive_int(name, getattr(config, name))
    if config.steps_per_epoch is not None:  # None means "the whole dataset"
        positive_int("steps_per_epoch", config.steps_per_epoch)
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1). Received: {config.label_smoothing!r}")


class TranslationSamples(keras.callbacks.Callback):
    """At each epoch end: BLEU of greedy translations of held-out pairs, and some of them as text.

    BLEU goes to TensorBoard as the scalar `bleu`, the first `num_shown` translations
    (source, reference, output) as the text `translations`, both under `log_dir/translations`.
    """

    def __init__(self, pairs, log_dir, num_shown=5, max_new_tokens=None, print_samples=True):
        super().__init__()
        self.pairs = list(pairs)
        self.log_dir = log_dir
        self.num_shown = num_shown
        self.max_new_tokens = max_new_tokens
        self.print_samples = print_samples
        self.history = []
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        sources = [source for source, _ in self.pairs]
        references = [target for _, target in self.pairs]
        outputs = self.model.generate(sources, max_new_tokens=self.max_new_tokens, truncate=True)
        bleu = corpus_bleu(outputs, references)
        self.history.append(bleu)
        if logs is not None:
            logs["sample_bleu"] = bleu
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "translations"))
        rows = [f"| {s} | {r} | {o} |" for (s, r), o in list(zip(self.pairs, outputs))[: self.num_shown]]
        table = "| source | reference | translation |\n|---|---|---|\n" + "\n".join(r.replace("\n", " ") for r in rows)
        with self._writer.as_default():
            tf.summary.scalar("bleu", bleu, step=epoch + 1)
            tf.summary.text("translations", table, step=epoch + 1)
        self._writer.flush()
        if self.print_samples:
            print(f"\n  held-out sample BLEU {bleu:.2f} ({len(self.pairs)} pairs, greedy)")
            for (source, reference), output in list(zip(self.pairs, outputs))[:3]:
                print(f"  {source!r} -> {output!r} (reference {reference!r})")


def train_translation(config, log=print):
    """Trains an English -> Spanish (or any TSV pair) translator; returns `(model, results)`.

    The run folder gets `checkpoints/` (whole models, tokenizers included, at each epoch
    end; a rerun resumes from the newest), `logs/` (TensorBoard), `model.keras` and
    `results.json` (corpus, sizes, held-out BLEU greedy and with beam search, timings).
    """
    from tfzoo.data import split_pairs, translation_dataset
    from tfzoo.models import Seq2SeqTransformer
    from tfzoo.text import train_sentencepiece_tokenizer
    from tfzoo.training.recipes import learning_rate_schedule

    _check(config)
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    os.makedirs(config.run_dir, exist_ok=True)
    pairs, description = load_pairs(config.corpus, log)
    total = len(pairs)
    pairs = [(s, t) for s, t in pairs if len(s.split()) <= config.max_words and len(t.split()) <= config.max_words]
    if config.max_pairs:
        import random

        pairs = random.Random(config.seed).sample(pairs, min(config.max_pairs, len(pairs)))
    train_pairs, test_pairs = split_pairs(pairs, config.test_size, seed=config.seed)
    log(f"corpus: {description}: {total:,} pairs, {len(pairs):,} with <= {config.max_words} words a side; "
        f"{len(train_pairs):,} to train, {len(test_pairs):,} held out")

    checkpoint_dir = os.path.join(config.run_dir, "checkpoints")
    checkpoint_path, done_steps = latest_checkpoint(checkpoint_dir)
    if checkpoint_path:
        model = keras.models.load_model(checkpoint_path, compile=False)
        log(f"resuming from {checkpoint_path} (step {done_steps})")
    else:
        if config.shared_vocabulary:
            source_tokenizer = train_sentencepiece_tokenizer(
                [s for s, _ in train_pairs] + [t for _, t in train_pairs], config.vocabulary_size)
            target_tokenizer = None
        else:
            source_tokenizer = train_sentencepiece_tokenizer([s for s, _ in train_pairs], config.vocabulary_size)
            target_tokenizer = train_sentencepiece_tokenizer([t for _, t in train_pairs], config.vocabulary_size)
        overrides = dict(
            vocabulary_size=source_tokenizer.vocabulary_size(), max_sequence_length=config.max_sequence_length,
            source_tokenizer=source_tokenizer, target_tokenizer=target_tokenizer,
        )
        if target_tokenizer is not None:
            overrides["target_vocabulary_size"] = target_tokenizer.vocabulary_size()
        if config.dropout is not None:
            overrides["dropout"] = config.dropout
        model = Seq2SeqTransformer.from_preset(config.preset, **overrides)
        sizes = f"{source_tokenizer.vocabulary_size()}" + (
            "" if target_tokenizer is None else f" + {target_tokenizer.vocabulary_size()}")
        log(f"tokenizer: SentencePiece unigram, {sizes} pieces ({'shared' if target_tokenizer is None else 'one per side'})")

    source_tokenizer, target_tokenizer = model.source_tokenizer, model.target_tokenizer
    train_data = translation_dataset(train_pairs, source_tokenizer, target_tokenizer, config.batch_size,
                                     model.max_sequence_length, seed=config.seed, drop_remainder=True)
    validation_data = translation_dataset(test_pairs, source_tokenizer, target_tokenizer, config.batch_size,
                                          model.max_sequence_length, shuffle=False)
    steps_per_epoch = config.steps_per_epoch or max(len(train_pairs) // config.batch_size, 1)
    planned_steps = steps_per_epoch * config.epochs
    schedule = learning_rate_schedule(config.learning_rate, config.warmup_steps, planned_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9, clipnorm=1.0),
                  label_smoothing=config.label_smoothing)
    model.build()
    done_steps = restore_latest(model, checkpoint_dir)
    log(f"model: {config.preset}, {model.count_params():,} parameters; {config.epochs} epochs of "
        f"{steps_per_epoch} steps of {config.batch_size} pairs")
    with open(os.path.join(config.run_dir, "config.json"), "w") as file:
        json.dump(dataclasses.asdict(config), file, indent=2)

    log_dir = os.path.join(config.run_dir, "logs")
    samples = TranslationSamples(test_pairs[: config.bleu_sample_size], log_dir, print_samples=log is print)
    callbacks = [samples, keras.callbacks.TensorBoard(log_dir=log_dir),
                 StepCheckpoint(checkpoint_dir, steps_per_epoch)]
    epoch = done_steps // steps_per_epoch
    fit_started = time.perf_counter()
    if epoch < config.epochs:
        model.fit(train_data.repeat(), validation_data=validation_data, epochs=config.epochs, initial_epoch=epoch,
                  steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=1 if log is print else 2)
    fit_seconds = time.perf_counter() - fit_started
    final_path = os.path.join(config.run_dir, "model.keras")
    model.save(final_path)
    log(f"saved {final_path}")

    results = evaluate_translation(model, test_pairs, config.beam_width, config.length_penalty, log)
    results.update(corpus=description, pairs=len(pairs), train_pairs=len(train_pairs), test_pairs=len(test_pairs),
                   epochs=config.epochs, steps=planned_steps, fit_seconds=round(fit_seconds, 1),
                   total_seconds=round(time.perf_counter() - started, 1), sample_bleu_by_epoch=samples.history,
                   parameters=model.count_params())
    with open(os.path.join(config.run_dir, "results.json"), "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2, ensure_ascii=False)
    return model, results


def evaluate_translation(model, pairs, beam_width=4, length_penalty=0.6, log=print):
    """Held-out BLEU with greedy decoding and with beam search, plus a few examples and timings."""
    sources = [source for source, _ in pairs]
    references = [target for _, target in pairs]
    results = {}
    for name, options in (("greedy", dict()), (f"beam{beam_width}", dict(beam_width=beam_width,
                                                                            length_penalty=length_penalty))):
        started = time.perf_counter()
        outputs = model.generate(sources, truncate=True, **options)
        seconds = time.perf_counter() - started
        bleu = corpus_bleu(outputs, references)
        results[f"bleu_{name}"] = round(bleu, 2)
        results[f"seconds_{name}"] = round(seconds, 1)
        results[f"examples_{name}"] = [
            {"source": s, "reference": r, "translation": o} for s, r, o in list(zip(sources, references, outputs))[:5]
        ]
        log(f"held-out BLEU ({name}, {len(pairs)} pairs): {bleu:.2f} in {seconds:.1f} s")
    return results
