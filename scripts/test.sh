#!/usr/bin/env bash
# One command: create/refresh .venv (Python 3.11) with the dev dependencies and run the whole test suite.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -m "not e2e" or ./scripts/test.sh tests/test_io.py
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv requirements-dev.txt
export TF_CPP_MIN_LOG_LEVEL=2
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
