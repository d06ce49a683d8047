#!/usr/bin/env bash
# Set up (or reuse) .venv with the dev extra, then lint and run the test suite on CPU.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k region  # pytest arguments pass through
set -euo pipefail
EXTRAS=dev source "$(dirname "$0")/setup_env.sh"
echo "[test] ruff"
ruff check src tests benchmarks
echo "[test] pytest"
python -m pytest -q "$@"
