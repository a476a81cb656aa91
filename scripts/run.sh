#!/usr/bin/env bash
# One command: create/refresh .venv (Python 3.11) with the runtime dependencies and start the app on the shipped
# sample data and default model. Open http://localhost:${PORT:-8501}. PYTHON=... picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv requirements.txt
export TF_CPP_MIN_LOG_LEVEL=2
echo "==> starting segcore on http://localhost:${PORT:-8501} (Ctrl+C stops it)"
exec .venv/bin/python scripts/serve.py --server.port "${PORT:-8501}" --server.headless true \
  --browser.gatherUsageStats false --server.fileWatcherType none "$@"
