# Shared by run.sh and test.sh: create/refresh .venv with Python 3.11 and install a requirements file, with progress.
# PYTHON=/path/to/python3.11 picks the interpreter (default: python3.11, else python3 if it is 3.11).
pick_python() {
  local cand
  for cand in "${PYTHON:-}" python3.11 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$cand"
      return 0
    fi
  done
  echo "segcore needs Python 3.11 (the pinned TensorFlow/Keras wheels are built for it)." >&2
  echo "Install it (e.g. apt-get install python3.11 python3.11-venv, or pyenv) or point PYTHON= at it:" >&2
  echo "  PYTHON=/usr/bin/python3.11 $0" >&2
  return 1
}

ensure_venv() {  # $1 = requirements file
  local req="$1" py stamp
  if [ ! -x .venv/bin/python ]; then
    py=$(pick_python) || exit 1
    echo "==> creating .venv with $("$py" --version 2>&1) ($py)"
    "$py" -m venv .venv
  fi
  if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo ".venv uses $(.venv/bin/python --version 2>&1); segcore needs 3.11. Remove .venv and run again." >&2
    exit 1
  fi
  stamp=".venv/.installed-$(basename "$req")-$(cat requirements*.txt | sha256sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "==> installing $req into .venv (first run: a few minutes; pip shows its progress)"
    .venv/bin/python -m pip install --upgrade --progress-bar on pip
    .venv/bin/python -m pip install --progress-bar on -r "$req"
    touch "$stamp"
    echo "==> dependencies installed"
  fi
}
