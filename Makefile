# Developer shortcuts. The benchmarks compare tfzoo with keras-hub, and with Hugging Face
# transformers on PyTorch when installed (make bench-deps); see benchmarks/README.md.
PYTHON ?= .venv/bin/python

.PHONY: bench bench-deps bench-quick bench-gpt bench-bert bench-seq2seq bench-serving bench-tflite bench-attention bench-fused-gelu bench-precision profile-gpt

# Full runs, one after the other (about 30-40 minutes on 2 cores). Extra flags: make bench ARGS="--rounds 5"
bench: bench-gpt bench-bert bench-seq2seq bench-serving bench-tflite bench-attention bench-fused-gelu

# The optional PyTorch peer: torch==2.13.0 (the CPU build) and transformers.
bench-deps:
	$(PYTHON) -m pip install -e '.[bench]'

bench-gpt:
	$(PYTHON) benchmarks/bench_gpt.py $(ARGS)

bench-bert:
	$(PYTHON) benchmarks/bench_bert.py $(ARGS)

bench-seq2seq:
	$(PYTHON) benchmarks/bench_seq2seq.py $(ARGS)

bench-serving:
	$(PYTHON) benchmarks/bench_serving.py $(ARGS)

# TFLite float32 and int8 against the Keras model: tokens/s, sizes, int8 agreement.
bench-tflite:
	$(PYTHON) benchmarks/bench_tflite.py $(ARGS)

# Causal self-attention under XLA: tfzoo's query blocks vs its one mask vs Keras' layer.
bench-attention:
	$(PYTHON) benchmarks/bench_attention.py $(ARGS)

# The fused GELU and layer norm in training (no XLA) against the plain ops: one GELU, and the tiny-GPT step.
bench-fused-gelu:
	$(PYTHON) benchmarks/bench_fused_gelu.py $(ARGS)

# tfzoo's training recipe in float32 and under mixed_bfloat16: step speed and validation
# perplexity (about 5 minutes; not part of `bench`, which compares peers).
bench-precision:
	$(PYTHON) benchmarks/bench_precision.py $(ARGS)

# Smoke tests with tiny sizes (about 2 minutes in all).
bench-quick:
	$(PYTHON) benchmarks/bench_gpt.py --quick
	$(PYTHON) benchmarks/bench_bert.py --quick
	$(PYTHON) benchmarks/bench_seq2seq.py --quick
	$(PYTHON) benchmarks/bench_serving.py --quick
	$(PYTHON) benchmarks/bench_tflite.py --quick
	$(PYTHON) benchmarks/bench_attention.py --quick
	$(PYTHON) benchmarks/bench_fused_gelu.py --quick
	$(PYTHON) benchmarks/bench_precision.py --quick

# Where a tiny-GPT training step and a decoding step spend their time (about 1 minute).
profile-gpt:
	$(PYTHON) benchmarks/profile_gpt.py $(ARGS)
