#!/usr/bin/env bash
# Set-up shared by scripts/test.sh and scripts/benchmark.sh, for a fresh
# machine: a virtual environment in .venv with the pinned requirements, then
# rnnfast._C built in place against that torch (never in an isolated build
# environment, which would fetch another, multi-GB torch). Idempotent;
# sourced, not run.
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
echo "== building rnnfast._C in place (setup.py build_ext --inplace)"
start=$(date +%s)
(cd "$ROOT" && MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/python" setup.py --quiet build_ext --inplace \
  > "$ROOT/build.log" 2>&1) || { tail -40 "$ROOT/build.log"; exit 1; }
echo "== build took $(( $(date +%s) - start )) s"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$VENV/bin/python" -c "import rnnfast, json; print(json.dumps(rnnfast.backend()))"
# pytest-xdist worker processes for the suites of scripts/test.sh and the scripts it runs (not the
# CMake build's short smoke test; 0: none, all in the pytest process). Two, for the 2-core machines
# CI runs on: the suites are mostly small calls bound by one core's Python, and a second worker
# cut their time by a third or more on the Xeon VM (the Python suite 188 -> 114 s).
export RNNFAST_TEST_WORKERS="${RNNFAST_TEST_WORKERS:-2}"
export VENV ROOT
