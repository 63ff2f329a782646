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
