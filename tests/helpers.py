"""Shared test helpers: small models, tokenizers, and running the CLI in a fresh process."""

import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TEXTS = [
    "Return the number of items in the container.",
    "If the argument is a string, it is parsed as a path.",
    "This module provides functions for working with text.",
] * 20


def tiny_tokenizer(vocabulary_size=300):
    from tfzoo.text import train_byte_pair_tokenizer

    return train_byte_pair_tokenizer(TINY_TEXTS, vocabulary_size)


def run_python(code, timeout=300, env=None):
    """Runs `code` in a fresh Python process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def run_cli(*args, timeout=600, cwd=None):
    """Runs the `tfzoo` command in a fresh process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "tfzoo.cli", *args], capture_output=True, text=True, timeout=timeout,
        cwd=cwd or REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def copy_gpt_weights_to_keras_hub(model, backbone):
    """Loads a tfzoo GPT's weights into a keras-hub GPT2Backbone of the same shape.

    keras-hub keeps attention kernels per head, `(hidden, heads, head_dim)`; tfzoo keeps
    them as plain Dense kernels `(hidden, heads * head_dim)`: a reshape apart.
    """
    heads, head_dim = model.num_heads, model.hidden_dim // model.num_heads
    backbone.get_layer("token_embedding").set_weights([model.token_embedding.embeddings.numpy()])
    backbone.get_layer("position_embedding").set_weights([model.position_encoding.position_embeddings.numpy()])
    for index, block in enumerate(model.blocks):
        layer = backbone.get_layer(f"transformer_layer_{index}")
        attention = block.self_attention
        weights = []
        for dense in (attention.query_dense, attention.key_dense, attention.value_dense):
            kernel, bias = dense.get_weights()
            weights += [kernel.reshape(-1, heads, head_dim), bias.reshape(heads, head_dim)]
        kernel, bias = attention.output_dense.get_weights()
        weights += [kernel.reshape(heads, head_dim, -1), bias]
        weights += block.self_attention_norm.get_weights()
        weights += block.intermediate_dense.get_weights() + block.output_dense.get_weights()
        weights += block.feed_forward_norm.get_weights()
        layer.set_weights(weights)
    backbone.get_layer("layer_norm").set_weights(model.final_norm.get_weights())


def random_prompts(vocabulary_size, lengths, seed=0):
    generator = np.random.default_rng(seed)
    return [generator.integers(1, vocabulary_size, size=length).tolist() for length in lengths]


# ---------------------------------------------------------------- Hugging Face checkpoint folders
# Tiny randomly initialised checkpoints written the way `transformers` writes them
# (config.json, model.safetensors with Hugging Face tensor names, vocabulary files),
# so that converter tests need neither the network nor a large download.

TINY_BERT_WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "on", "in", "mat", "park", "big", "small", "red", "blue",
    "house", "tree", "and", "of", "is", "was", "##s", "##ed", "##ing", "!", ",", ".", "?", "0", "1", "2",
]


def write_tiny_bert_checkpoint(folder, prefix="", seed=0, hidden_act="gelu", hidden=32, layers=2, heads=4,
                               intermediate=64, positions=24, words=None):
    """Writes a random BERT in Hugging Face format into `folder`.

    Linear weights are PyTorch's `(out, in)`; names are `BertModel`'s, optionally under
    `prefix` (`BertForPreTraining` saves them under "bert."). Returns
    `(config, tensors, vocabulary)` with the float32 tensors as written (no prefix).
    """
    import json

    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words or TINY_BERT_WORDS)
    config = {
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(vocabulary),
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": intermediate, "max_position_embeddings": positions, "type_vocab_size": 2,
        "hidden_act": hidden_act, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "pad_token_id": 0,
    }
    generator = np.random.default_rng(seed)

    def normal(*shape, scale=0.2):
        return (generator.standard_normal(shape) * scale).astype("float32")

    def linear(name, inputs, outputs):
        return {f"{name}.weight": normal(outputs, inputs), f"{name}.bias": normal(outputs, scale=0.05)}

    def norm(name):
        return {f"{name}.weight": 1.0 + normal(hidden, scale=0.1), f"{name}.bias": normal(hidden, scale=0.05)}

    tensors = {
        "embeddings.word_embeddings.weight": normal(len(vocabulary), hidden, scale=0.5),
        "embeddings.position_embeddings.weight": normal(positions, hidden, scale=0.5),
        "embeddings.token_type_embeddings.weight": normal(2, hidden, scale=0.5),
        **norm("embeddings.LayerNorm"),
        **linear("pooler.dense", hidden, hidden),
    }
    for index in range(layers):
        layer = f"encoder.layer.{index}"
        for part in ("query", "key", "value"):
            tensors.update(linear(f"{layer}.attention.self.{part}", hidden, hidden))
        tensors.update(linear(f"{layer}.attention.output.dense", hidden, hidden))
        tensors.update(norm(f"{layer}.attention.output.LayerNorm"))
        tensors.update(linear(f"{layer}.intermediate.dense", hidden, intermediate))
        tensors.update(linear(f"{layer}.output.dense", intermediate, hidden))
        tensors.update(norm(f"{layer}.output.LayerNorm"))
    # transformers also saves this integer buffer; converters must skip it.
    stored = {prefix + name: value for name, value in tensors.items()}
    stored[prefix + "embeddings.position_ids"] = np.arange(positions, dtype="int64")[None, :]
    save_file(stored, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2)
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as file:
        file.write("".join(f"{token}\n" for token in vocabulary))
    return config, tensors, vocabulary


GPT2_TRAINING_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a tiny GPT-2 checkpoint written by a test",
    "numbers like 12345 and symbols such as !? are bytes too",
] * 10


def write_tiny_gpt2_checkpoint(folder, seed=0, vocabulary_size=300, hidden=32, layers=2, heads=4, positions=64,
                               prefix=""):
    """Writes a random GPT-2 in Hugging Face format into `folder`.

    The BPE vocabulary (`vocab.json`, `merges.txt`) is trained with Hugging Face
    `tokenizers` (byte-level, with `<|endoftext|>`). Weights use GPT-2's `Conv1D`
    layout `(in, out)`, and `c_attn` holds query, key and value side by side.
    Returns `(config, tensors, hf_tokenizer)` with the float32 tensors as written (no prefix).
    """
    import json

    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.makedirs(folder, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(GPT2_TRAINING_TEXTS, trainer)
    tokenizer.model.save(folder)  # vocab.json and merges.txt
    vocabulary_size = tokenizer.get_vocab_size()
    config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocabulary_size,
        "n_embd": hidden, "n_layer": layers, "n_head": heads, "n_positions": positions, "n_ctx": positions,
        "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
        "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
        "bos_token_id": tokenizer.token_to_id("<|endoftext|>"), "eos_token_id": tokenizer.token_to_id("<|endoftext|>"),
    }
    generator = np.random.default_rng(seed)

    def normal(*shape, scale=0.2):
        return (generator.standard_normal(shape) * scale).astype("float32")

    def norm(name):
        return {f"{name}.weight": 1.0 + normal(hidden, scale=0.1), f"{name}.bias": normal(hidden, scale=0.05)}

    tensors = {
        "wte.weight": normal(vocabulary_size, hidden, scale=0.5),
        "wpe.weight": normal(positions, hidden, scale=0.5),
        **norm("ln_f"),
    }
    for index in range(layers):
        block = f"h.{index}"
        tensors.update(norm(f"{block}.ln_1"))
        tensors.update(norm(f"{block}.ln_2"))
        tensors.update({
            f"{block}.attn.c_attn.weight": normal(hidden, 3 * hidden),
            f"{block}.attn.c_attn.bias": normal(3 * hidden, scale=0.05),
            f"{block}.attn.c_proj.weight": normal(hidden, hidden),
            f"{block}.attn.c_proj.bias": normal(hidden, scale=0.05),
            f"{block}.mlp.c_fc.weight": normal(hidden, 4 * hidden),
            f"{block}.mlp.c_fc.bias": normal(4 * hidden, scale=0.05),
            f"{block}.mlp.c_proj.weight": normal(4 * hidden, hidden),
            f"{block}.mlp.c_proj.bias": normal(hidden, scale=0.05),
        })
    save_file({prefix + name: value for name, value in tensors.items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2)
    return config, tensors, tokenizer


def assertions_guard_every_loop(concrete_function):
    """True if every while loop in a traced function runs only after all of its Assert ops.

    Inside a tf.function an assertion is not ordered before unrelated work; without an explicit
    control dependency a loop can fail first with a cryptic error instead of the assertion's message.
    """
    graph = concrete_function.graph
    asserts = {op.name for op in graph.get_operations() if op.type == "Assert"}
    loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    if not asserts or not loops:
        raise ValueError(f"nothing to check: {len(asserts)} Assert ops, {len(loops)} loops")

    def ancestors(op):
        seen, stack = set(), [op]
        while stack:
            current = stack.pop()
            for parent in [tensor.op for tensor in current.inputs] + list(current.control_inputs):
                if parent.name not in seen:
                    seen.add(parent.name)
                    stack.append(parent)
        return seen

    return all(asserts <= ancestors(loop) for loop in loops)
