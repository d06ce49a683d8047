#!/usr/bin/env bash
# Create or reuse .venv and install visionpilot (editable) with the given extras. Sourced by quickstart.sh/test.sh.
#   EXTRAS=dev source scripts/setup_env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last successful install (a stamp file in .venv).
STAMP=".venv/.visionpilot-install-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "[setup] installing visionpilot${EXTRAS:+[$EXTRAS]} and its dependencies (torch and torchvision come as a pair)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
