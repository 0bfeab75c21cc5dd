#!/usr/bin/env bash
# The main job of the README: set-up, then the sequence-length scaling
# benchmark against torch.nn (results/seq_scaling.json and .png). Extra
# arguments go to benchmarks/seq_scaling.py (default: --quick).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--quick)
"$VENV/bin/python" benchmarks/seq_scaling.py "${args[@]}" --out "$ROOT/results"
