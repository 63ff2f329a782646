"""
Title: Attention from scratch
Author: tfzoo contributors
Date created: 2026/11/23
Last modified: 2026/11/23
Description: Self-attention, masks and multi-head attention by hand in NumPy, then the tfzoo layers that implement them, up to a tiny GPT.
Accelerator: None
"""

"""
## Introduction

Every Transformer in tfzoo is built around one formula:

```
Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
```

This tutorial computes it by hand in NumPy, adds the two masks a real model needs,
splits it into several heads, and adds positions. Then it loads the same weights into
`tfzoo.layers.MultiHeadAttention` and checks that the layer gives the same numbers.
It ends with a tiny GPT that learns to continue a repeating pattern.

Run it with:

```
python tutorials/01_attention_from_scratch.py           # full run, about a minute
python tutorials/01_attention_from_scratch.py --quick   # fewer training steps
```

The positional-encoding plot is written to `--output-dir` (default `tutorials/output/`).
"""

"""
## Setup
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up messages

import matplotlib

matplotlib.use("Agg")  # write image files; no display needed
import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import tfzoo  # noqa: E402
from tfzoo.layers import MultiHeadAttention, PositionalEncoding, TransformerBlock, sinusoidal_encoding  # noqa: E402

"""
The hyperparameters, all in one place.
"""

SEED = 42
# The toy sentence and the width of its embeddings.
SENTENCE = ["the", "cat", "sat", "on", "the", "mat"]
SHORT_SENTENCE = ["a", "dog", "ran"]  # padded to the length of SENTENCE
EMBEDDING_DIM = 8  # d_model
KEY_DIM = 4  # d_k of the single-head example
NUM_HEADS = 2
HEAD_DIM = EMBEDDING_DIM // NUM_HEADS  # each head gets d_model / num_heads features
# The positional-encoding plot.
PLOT_POSITIONS = 128
PLOT_DIM = 128
# The tiny GPT.
PATTERN = [5, 17, 42, 17, 99, 3, 42, 8]  # repeated forever; 17 and 42 appear twice
SEQUENCE_LENGTH = 32
LEARNING_RATE = 1e-3
TRAIN_STEPS = 300
QUICK_TRAIN_STEPS = 100
NEW_TOKENS = 16

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--quick", action="store_true", help="train for fewer steps (a smoke test)")
parser.add_argument(
    "--output-dir",
    type=Path,
    default=Path(__file__).resolve().parent / "output",
    help="where to write the plot (default: tutorials/output/)",
)
args = parser.parse_args()
train_steps = QUICK_TRAIN_STEPS if args.quick else TRAIN_STEPS
args.output_dir.mkdir(parents=True, exist_ok=True)

np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(SEED)
keras.utils.set_random_seed(SEED)
start_time = time.time()


def print_matrix(matrix, row_labels, column_labels):
    """Prints a small matrix with a label on every row and column."""
    print("       " + " ".join(f"{label:>6}" for label in column_labels))
    for label, row in zip(row_labels, matrix):
        print(f"{label:>6} " + " ".join(f"{value:6.3f}" for value in row))


"""
## 1. Self-attention by hand

A model sees a sentence as a sequence of vectors, one per token. We make up a tiny
vocabulary and give each word a random embedding of size `EMBEDDING_DIM`. Index 0 is
a padding token, which we use in part 2.
"""

vocabulary = ["<pad>"] + sorted(set(SENTENCE + SHORT_SENTENCE))
word_index = {word: index for index, word in enumerate(vocabulary)}
embedding_table = rng.normal(size=(len(vocabulary), EMBEDDING_DIM))

token_ids = np.array([word_index[word] for word in SENTENCE])
x = embedding_table[token_ids]  # (sequence, EMBEDDING_DIM)
print("== 1. Self-attention by hand ==")
print("token ids:", token_ids, "embeddings:", x.shape)

"""
Each token asks a question (its **query**), advertises what it contains (its **key**)
and carries a payload (its **value**). All three are linear projections of the same
embedding, with weights the model learns. Here the weights are random.
"""

w_query = rng.normal(size=(EMBEDDING_DIM, KEY_DIM)) / np.sqrt(EMBEDDING_DIM)
w_key = rng.normal(size=(EMBEDDING_DIM, KEY_DIM)) / np.sqrt(EMBEDDING_DIM)
w_value = rng.normal(size=(EMBEDDING_DIM, KEY_DIM)) / np.sqrt(EMBEDDING_DIM)

q = x @ w_query  # (sequence, KEY_DIM)
k = x @ w_key
v = x @ w_value

"""
The score of query `i` against key `j` is their dot product, divided by `sqrt(d_k)`.
A softmax over each row turns the scores into weights that are positive and sum to 1.
The output for token `i` is the weighted average of all the values.
"""


def softmax(scores, axis=-1):
    # Subtracting the row maximum changes nothing mathematically and avoids overflow.
    exponentials = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


scores = q @ k.T / np.sqrt(KEY_DIM)  # (query, key)
weights = softmax(scores)
output = weights @ v  # (sequence, KEY_DIM)

print("\nattention weights (row: query, column: key):")
print_matrix(weights, SENTENCE, SENTENCE)
print("every row sums to 1:", np.allclose(weights.sum(axis=-1), 1.0))
print("output:", output.shape)

"""
Notice that the two rows for "the" are identical: the word has the same embedding in
both places, and nothing in the formula knows about order. Part 4 fixes that.

**Why divide by `sqrt(d_k)`?** If the entries of a query and a key are independent
with variance 1, their dot product is a sum of `d_k` such products, so its variance is
`d_k` and its standard deviation `sqrt(d_k)`. With wide heads the raw scores become
large, the softmax puts almost all of its weight on one key, and its gradients vanish.
Dividing by `sqrt(d_k)` brings the scores back to a standard deviation of about 1,
whatever the head size. A quick experiment:
"""

print("\nwhy sqrt(d_k): dot products of random vectors, 6 keys per query")
for dim in (4, 64, 1024):
    queries = rng.normal(size=(2000, dim))
    keys = rng.normal(size=(2000, 6, dim))
    raw = np.einsum("nd,nkd->nk", queries, keys)
    print(
        f"  d_k={dim:5d}: std of q.k = {raw.std():6.2f} (sqrt(d_k) = {np.sqrt(dim):5.2f}); "
        f"mean largest softmax weight: raw {softmax(raw).max(-1).mean():.2f}, "
        f"scaled {softmax(raw / np.sqrt(dim)).max(-1).mean():.2f}"
    )

"""
Without scaling, the largest weight approaches 1 as `d_k` grows: the softmax is
saturated. With scaling, it stays the same for every head size.

## 2. Masks

A **causal mask** stops a token from looking at the tokens after it. A language model
predicts the next token, so it must not see it. The mask is a lower-triangular
boolean matrix: query `i` may look at keys `j <= i`.

Masked scores are replaced by a large negative number before the softmax, so their
weights become 0. tfzoo uses -1e9 rather than -infinity: if every key of a row is
masked, the row becomes uniform instead of NaN.
"""

print("\n== 2. Masks ==")


def attention(q, k, v, mask=None):
    """Scaled dot-product attention. `mask` is boolean, True where attention is allowed."""
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])  # (..., query, key)
    if mask is not None:
        scores = np.where(mask, scores, -1e9)
    weights = softmax(scores)
    return weights @ v, weights


causal = np.tril(np.ones((len(SENTENCE), len(SENTENCE)), dtype=bool))  # (query, key)
_, causal_weights = attention(q, k, v, mask=causal)
print("causal mask:\n", causal.astype(int))
print("attention weights with the causal mask:")
print_matrix(causal_weights, SENTENCE, SENTENCE)

"""
A **padding mask** handles batches. Sentences have different lengths, so the short
ones are padded to a common length with a `<pad>` token. Padding carries no meaning,
so no query may attend to it: the mask is `True` for real tokens and is applied to the
keys. Masks combine with a logical AND.
"""

padded_short = SHORT_SENTENCE + ["<pad>"] * (len(SENTENCE) - len(SHORT_SENTENCE))
batch_words = [SENTENCE, padded_short]
batch_ids = np.array([[word_index[word] for word in words] for words in batch_words])  # (batch, sequence)
batch_x = embedding_table[batch_ids]  # (batch, sequence, EMBEDDING_DIM)
padding_mask = batch_ids != word_index["<pad>"]  # (batch, key)
print("\npadding mask (True = real token):\n", padding_mask)

combined_mask = causal[None, :, :] & padding_mask[:, None, :]  # (batch, query, key)
_, padded_weights = attention(batch_x @ w_query, batch_x @ w_key, batch_x @ w_value, combined_mask)
print("weights for the padded sentence, causal and padding masks:")
print_matrix(padded_weights[1], padded_short, padded_short)

"""
No query puts weight on a `<pad>` key. The `<pad>` *queries* still get an output (an
average of the real tokens), but it is never used: the loss ignores those positions.

## 3. Multi-head attention by hand

One softmax gives each token one way of mixing the others. Multi-head attention runs
several attentions side by side, each on its own slice of the features:

1. Project the input to queries, keys and values of width `num_heads * head_dim`.
2. Split the last axis into `num_heads` heads of `head_dim` features.
3. Attend within each head, with the same masks.
4. Concatenate the heads back to `num_heads * head_dim` features.
5. Mix them with an output projection.

Real layers also add a bias after each projection, so we do too.
"""

print("\n== 3. Multi-head attention by hand ==")


def random_projection(input_dim, output_dim):
    kernel = rng.normal(size=(input_dim, output_dim)) / np.sqrt(input_dim)
    bias = rng.normal(size=(output_dim,)) * 0.1
    return kernel, bias


projections = {
    "query": random_projection(EMBEDDING_DIM, NUM_HEADS * HEAD_DIM),
    "key": random_projection(EMBEDDING_DIM, NUM_HEADS * HEAD_DIM),
    "value": random_projection(EMBEDDING_DIM, NUM_HEADS * HEAD_DIM),
    "output": random_projection(NUM_HEADS * HEAD_DIM, EMBEDDING_DIM),
}


def multi_head_attention(x, projections, num_heads, mask=None):
    """x: (batch, sequence, dim); mask: (batch or 1, query, key). Returns output, weights."""
    batch, sequence, _ = x.shape

    def project(name, inputs):
        kernel, bias = projections[name]
        return inputs @ kernel + bias

    def split_heads(t):  # (batch, sequence, heads * head_dim) -> (batch, heads, sequence, head_dim)
        return t.reshape(batch, sequence, num_heads, -1).transpose(0, 2, 1, 3)

    q, k, v = (split_heads(project(name, x)) for name in ("query", "key", "value"))
    head_mask = None if mask is None else mask[:, None, :, :]  # the same mask for every head
    context, weights = attention(q, k, v, head_mask)  # (batch, heads, sequence, head_dim)
    concatenated = context.transpose(0, 2, 1, 3).reshape(batch, sequence, -1)
    return project("output", concatenated), weights


by_hand_output, by_hand_weights = multi_head_attention(batch_x, projections, NUM_HEADS, causal[None])
print("output:", by_hand_output.shape, "weights (batch, heads, query, key):", by_hand_weights.shape)
for head in range(NUM_HEADS):
    print(f"head {head}, first sentence:")
    print_matrix(by_hand_weights[0, head], SENTENCE, SENTENCE)

"""
The heads attend differently: each has its own projections, so each can learn to
look for something else (the previous word, the subject, a matching bracket...).
Splitting the width keeps the cost the same as one head of the full width.

## 4. Positional encoding

Attention treats its input as a set: shuffle the tokens and the outputs are shuffled
the same way. Word order has to be put into the embeddings. The original Transformer
adds a fixed sinusoidal matrix: the features come in pairs `(2i, 2i + 1)`, and pair `i`
is a sine and a cosine of the position at frequency `1 / 10000^(2i / d_model)`:

```
PE[pos, 2i]     = sin(pos / 10000^(2i / d_model))
PE[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))
```

The first pairs turn fast, the last ones slowly, so every position gets a distinct
pattern. We compute it from the formula, one pair at a time, and compare with
`tfzoo.layers.sinusoidal_encoding`.
"""

print("\n== 4. Positional encoding ==")


def sinusoidal_by_hand(num_positions, dim):
    positions = np.arange(num_positions)
    encoding = np.zeros((num_positions, dim))
    for i in range(dim // 2):
        frequency = 1.0 / 10000 ** (2 * i / dim)
        encoding[:, 2 * i] = np.sin(positions * frequency)
        encoding[:, 2 * i + 1] = np.cos(positions * frequency)
    return encoding


encoding = sinusoidal_encoding(PLOT_POSITIONS, PLOT_DIM)
np.testing.assert_allclose(encoding, sinusoidal_by_hand(PLOT_POSITIONS, PLOT_DIM), atol=1e-5)
print(f"OK: sinusoidal_encoding matches the formula ({PLOT_POSITIONS} positions x {PLOT_DIM} features)")

figure, axis = plt.subplots(figsize=(8, 6))
image = axis.imshow(encoding, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
axis.set_xlabel("feature (2i: sine, 2i + 1: cosine)")
axis.set_ylabel("position")
axis.set_title("Sinusoidal positional encoding")
figure.colorbar(image, ax=axis)
figure.tight_layout()
plot_path = args.output_dir / "positional_encoding.png"
figure.savefig(plot_path, dpi=100)
plt.close(figure)
print("plot saved to", plot_path)

"""
In the plot, each row is a position and each column a feature. The left columns
oscillate quickly down the positions; the right ones barely move.

A useful property: the dot product of two positions' encodings depends only on their
distance, because `sin(a)sin(b) + cos(a)cos(b) = cos(a - b)`. That makes relative
positions easy for attention to read.
"""

print(
    f"PE[10].PE[15] = {encoding[10] @ encoding[15]:.4f}, PE[60].PE[65] = {encoding[60] @ encoding[65]:.4f} "
    "(same distance, same dot product)"
)

with_positions = x + sinusoidal_by_hand(len(SENTENCE), EMBEDDING_DIM)
_, positioned_weights = attention(with_positions @ w_query, with_positions @ w_key, with_positions @ w_value)
print(
    'the two "the" rows are identical without positions:', np.allclose(weights[0], weights[4]),
    "| with positions:", np.allclose(positioned_weights[0], positioned_weights[4]),
)

"""
## 5. The tfzoo layers

### `MultiHeadAttention`

`tfzoo.layers.MultiHeadAttention` does exactly what `multi_head_attention` above does.
It holds four `Dense` projections (`query_dense`, `key_dense`, `value_dense`,
`output_dense`) whose kernels are laid out like ours: heads are consecutive slices of
`num_heads * key_dim` columns. We build the layer, copy our weights into it, and
compare. `assert_allclose` stops the tutorial if the two disagree.
"""

print("\n== 5. The tfzoo layers ==")
layer = MultiHeadAttention(num_heads=NUM_HEADS, key_dim=HEAD_DIM)
layer.build(batch_x.shape)
for name, dense in [
    ("query", layer.query_dense),
    ("key", layer.key_dense),
    ("value", layer.value_dense),
    ("output", layer.output_dense),
]:
    dense.set_weights(list(projections[name]))

inputs = batch_x.astype("float32")  # Keras layers compute in float32
layer_output, layer_weights = layer(inputs, use_causal_mask=True, return_attention_scores=True)
np.testing.assert_allclose(layer_output, by_hand_output, rtol=1e-4, atol=1e-5)
np.testing.assert_allclose(layer_weights, by_hand_weights, rtol=1e-4, atol=1e-5)
print(
    "OK: tfzoo MultiHeadAttention matches the by-hand version with the causal mask "
    f"(max difference {np.abs(np.asarray(layer_output) - by_hand_output).max():.1e})"
)

"""
Masks are boolean and `True` where attention is allowed, as in part 2. The padding
mask goes in `key_padding_mask` and combines with the causal mask:
"""

layer_output = layer(inputs, key_padding_mask=padding_mask, use_causal_mask=True)
by_hand_masked, _ = multi_head_attention(batch_x, projections, NUM_HEADS, combined_mask)
np.testing.assert_allclose(layer_output, by_hand_masked, rtol=1e-4, atol=1e-5)
print("OK: tfzoo MultiHeadAttention matches the by-hand version with causal and padding masks")

"""
### `PositionalEncoding`

`PositionalEncoding("sinusoidal")` adds the table of part 4 to its input. (It also
offers `"learned"` positions, which tfzoo's GPT uses, and `"rotary"`, which rotates
queries and keys inside attention.)
"""

positional = PositionalEncoding("sinusoidal", max_sequence_length=PLOT_POSITIONS)
added = np.asarray(positional(inputs)) - inputs
np.testing.assert_allclose(added[0], sinusoidal_by_hand(len(SENTENCE), EMBEDDING_DIM), atol=1e-5)
print("OK: PositionalEncoding adds the sinusoidal table to every sequence of the batch")

"""
### `TransformerBlock`

A Transformer block wraps attention and a two-layer feed-forward network, each in a
residual connection with layer normalization. GPT uses the *pre-norm* layout:

```
h   = x + Attention(LayerNorm(x))
out = h + FeedForward(LayerNorm(h))
```

We rebuild the block's output from its own sublayers, then check that it is causal:
changing the last token must not change the outputs at earlier positions.
"""

block = TransformerBlock(num_heads=NUM_HEADS, intermediate_dim=4 * EMBEDDING_DIM, normalize_first=True, causal=True)
block_inputs = np.asarray(positional(inputs))
block_output = np.asarray(block(block_inputs, padding_mask=padding_mask))

h = block_inputs + block.self_attention(
    block.self_attention_norm(block_inputs), key_padding_mask=padding_mask, use_causal_mask=True
)
feed_forward = block.output_dense(block.activation_function(block.intermediate_dense(block.feed_forward_norm(h))))
rebuilt = h + feed_forward
np.testing.assert_allclose(block_output, rebuilt, rtol=1e-4, atol=1e-5)
print("OK: TransformerBlock output = x + attention(norm(x)), then + feed_forward(norm(.))")

changed = block_inputs.copy()
changed[:, -1] = rng.normal(size=(2, EMBEDDING_DIM))
changed_output = np.asarray(block(changed, padding_mask=padding_mask))
np.testing.assert_allclose(changed_output[:, :-1], block_output[:, :-1], rtol=1e-4, atol=1e-5)
print("OK: the block is causal: changing the last token leaves earlier outputs unchanged")

"""
### A tiny GPT

`tfzoo.GPT` stacks these blocks between a token embedding (plus learned positions)
and an output layer that predicts the next token. The `"gpt_test"` preset is tiny:
2 blocks, 2 heads, width 64.

We train it on a repeating pattern of token ids. In the pattern, 17 is followed
sometimes by 42 and sometimes by 99, so looking at the current token is not enough:
the model has to attend to the tokens before it. The inputs are windows of the
repeated pattern, one per starting offset; the targets are the same windows shifted by
one token.
"""

stream = np.array(PATTERN * (SEQUENCE_LENGTH // len(PATTERN) + 2))
windows = np.stack([stream[offset : offset + SEQUENCE_LENGTH + 1] for offset in range(len(PATTERN))])
train_x, train_y = windows[:, :-1], windows[:, 1:]  # (offsets, SEQUENCE_LENGTH)
print(f"\ntraining windows: {train_x.shape}, first one starts {train_x[0, :10].tolist()}...")

model = tfzoo.GPT.from_preset("gpt_test")
model.compile(optimizer=keras.optimizers.AdamW(learning_rate=LEARNING_RATE, weight_decay=0.01))
logits = model(train_x[:1])  # one score per vocabulary entry, at every position
print("logits:", tuple(logits.shape), "(batch, sequence, vocabulary)")

"""
Before training, greedy generation gives noise:
"""

prompt = PATTERN[:3]
expected = (PATTERN * 4)[3 : 3 + NEW_TOKENS]
print("prompt:", prompt)
print("before training, greedy generation:", model.generate([prompt], max_new_tokens=NEW_TOKENS)[0])

"""
With all the windows in one batch, each epoch is one training step.
"""

history = model.fit(train_x, train_y, batch_size=len(train_x), epochs=train_steps, verbose=0)
losses = history.history["loss"]
for step in sorted({0, len(losses) // 4, len(losses) // 2, 3 * len(losses) // 4, len(losses) - 1}):
    print(f"  step {step + 1:4d}: loss {losses[step]:.3f}")
assert losses[-1] < losses[0], "the loss did not fall"
print(f"OK: the loss fell from {losses[0]:.3f} to {losses[-1]:.3f} in {train_steps} steps")

"""
Greedy decoding (`temperature=0`) picks the most likely token at every step. If the
model learned the pattern, it continues it exactly.
"""

generated = model.generate([prompt], max_new_tokens=NEW_TOKENS, temperature=0.0)[0]
print("after training, greedy generation: ", generated)
print("the pattern continues with:        ", expected)
print("continues the pattern:", "yes" if generated == expected else "not yet (train longer)")

"""
## Summary

- Attention is `softmax(Q K^T / sqrt(d_k)) V`; the `sqrt(d_k)` keeps the softmax out
  of saturation.
- Masks are boolean and combine with AND: causal for decoders, padding for batches.
- Multi-head attention splits the features into heads, attends in each, and mixes the
  heads with an output projection.
- Attention ignores order until positions are added to the embeddings.
- `tfzoo.layers` implements each of these steps, and `tfzoo.GPT` stacks them into a
  language model that trains with `fit` and decodes with `generate`.
"""

print(f"\ndone in {time.time() - start_time:.0f} s")
