# Developer shortcuts. The benchmarks compare tfzoo with keras-hub; see benchmarks/README.md.
PYTHON ?= .venv/bin/python

.PHONY: bench bench-quick bench-gpt bench-bert bench-serving

# Full runs, one after the other (about 15-20 minutes on 2 cores). Extra flags: make bench ARGS="--rounds 5"
bench: bench-gpt bench-bert bench-serving

bench-gpt:
	$(PYTHON) benchmarks/bench_gpt.py $(ARGS)

bench-bert:
	$(PYTHON) benchmarks/bench_bert.py $(ARGS)

bench-serving:
	$(PYTHON) benchmarks/bench_serving.py $(ARGS)

# Smoke tests with tiny sizes (about 2 minutes in all).
bench-quick:
	$(PYTHON) benchmarks/bench_gpt.py --quick
	$(PYTHON) benchmarks/bench_bert.py --quick
	$(PYTHON) benchmarks/bench_serving.py --quick
