#!/usr/bin/env bash
# The main job of the README: set-up, then the sequence-length scaling
# benchmark against torch.nn (results/seq_scaling.json and .png); where torch
# sees a CUDA device and rnnfast was built with its CUDA kernels, the same
# benchmark on the GPU against cuDNN (results/cuda/). Extra arguments go to
# benchmarks/seq_scaling.py (default: --quick).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--quick)
"$VENV/bin/python" benchmarks/seq_scaling.py "${args[@]}" --out "$ROOT/results"
if "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$VENV/bin/python" -c "import rnnfast, sys; i = rnnfast.backend(); sys.exit(0 if i['cuda_loaded'] else 1)" || {
    echo "ERROR: a CUDA device is present but rnnfast's CUDA kernels are not loaded: $("$VENV/bin/python" -c \
         "import rnnfast; print(rnnfast.backend()['cuda_error'])") (see build.log; CUDA_HOME must point at nvcc)" >&2; exit 1; }
  "$VENV/bin/python" benchmarks/seq_scaling.py --device cuda "${args[@]}" --out "$ROOT/results/cuda"
else
  echo "== no CUDA device visible to torch: GPU benchmark not run (on a GPU machine: scripts/gpu_check.sh)"
fi
