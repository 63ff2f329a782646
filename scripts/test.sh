#!/usr/bin/env bash
# Command 2: set up, then run every test, slow end-to-end ones included.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast ones only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
# setup.sh installed every data package: a test that skips for want of one fails here.
export TFZOO_REQUIRE_DATA="${TFZOO_REQUIRE_DATA:-1}"
# pytest exits 5 when it collects no test: that is a failure here, never a pass.
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests" >&2
fi
exit "$status"
