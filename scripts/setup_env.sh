#!/usr/bin/env bash
# Set-up shared by scripts/test.sh and scripts/benchmark.sh, for a fresh
# machine: a virtual environment in .venv with the pinned requirements, then
# rnnfast built against that torch (no build isolation: an isolated build
# would fetch another, multi-GB torch). Idempotent; sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing pinned requirements"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
echo "== building rnnfast (pip install --no-build-isolation -e .)"
start=$(date +%s)
MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/pip" install --quiet --disable-pip-version-check \
  --no-build-isolation --no-deps -e "$ROOT"
echo "== build took $(( $(date +%s) - start )) s"
"$VENV/bin/python" -c "import rnnfast, json; print(json.dumps(rnnfast.backend()))"
export VENV ROOT
