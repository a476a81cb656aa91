#!/usr/bin/env bash
# One command: create/refresh .venv with the runtime dependencies and start the app
# on the shipped sample data and default model. Open http://localhost:${PORT:-8501}
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -r requirements.txt
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m streamlit run app.py --server.port "${PORT:-8501}" --server.headless true \
  --browser.gatherUsageStats false --server.fileWatcherType none "$@"
