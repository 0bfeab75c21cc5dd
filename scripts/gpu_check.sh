#!/usr/bin/env bash
# One command for a fresh GPU machine with no network whose python3 already has a CUDA torch
# (seen: one H100 or H200, torch 2.11.0+cu130, cuDNN 9.19, nvcc 13.0, 16 cores):
#   1. build rnnfast._C and its CUDA library rnnfast._C_cuda in place (RNNFAST_FORCE_CUDA=1: no
#      silent CPU build), and check that the CUDA library loads (backend()["cuda_loaded"]);
#   2. check the device code in the CUDA library (cuobjdump);
#   3. run tests/cuda under both GPU paths of the forward, the per-step cuBLAS loop and the
#      persistent kernel (parity with cuDNN and with rnnfast on the CPU, gradcheck, bf16/fp16,
#      streams, CUDA graphs, bitwise repeat, opcheck, sync debug mode);
#   4. compute-sanitizer memcheck and racecheck over scripts/gpu_sanitize_case.py (both paths);
#   5. the GPU benchmarks, rnnfast and torch.nn (cuDNN) interleaved in one process, CUDA events:
#      benchmarks/targets.py --device cuda in float32 and bfloat16 (issue 8's table; columns for
#      torch's non-cuDNN CUDA path and rnnfast's persistent kernel), --table persistent (issue 9's
#      table) and benchmarks/seq_scaling.py --device cuda --quick (cuDNN, both rnnfast paths);
#   6. a short summary, printed last.
# Results go to $RNNFAST_GPU_RESULTS, else $OUT (the device tool's folder), else ./gpu_results:
# gpu_check.log (everything), targets_fp32.json, targets_bf16.json, targets_persistent.json,
# seq_scaling.json, seq_scaling_meta.json, seq_scaling.png, summary.txt (8 files, flat: the most
# the device tool brings back; add none).
# Budget: GPU_CHECK_BUDGET_S (default 480 s) for all steps together: each step's time limit is cut
# to what is left, a step with no time left is skipped (and counts as a failure), and the summary
# is always written. Order: what decides the issues first (build, tests, benchmarks), sanitizers last.
# Exit status: 0 only if the build, the tests, the sanitizers and every speed target pass.
#
# GPU_CHECK_DRY_RUN=1: the script's own flow on a machine without a GPU (python3 = a CUDA torch):
# tests/cuda's dry run and the benchmarks' (RNNFAST_BENCH_DRY_RUN) on small cases; no sanitizers.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
RES="${RNNFAST_GPU_RESULTS:-${OUT:-$ROOT/gpu_results}}"
mkdir -p "$RES"
LOG="$RES/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
DEADLINE=$(( T0 + ${GPU_CHECK_BUDGET_S:-480} ))
declare -a SUMMARY=()
FAILED=0
DRY="${GPU_CHECK_DRY_RUN:-0}"
ONLY=()
SEQ_SIZES=()
if [ "$DRY" = "1" ]; then
  export RNNFAST_TEST_DEVICE=cpu RNNFAST_BENCH_DRY_RUN=1
  ONLY=(--only "B1 H128")
  SEQ_SIZES=(--lengths 4,16 --batch 2 --input 8 --hidden 16)
fi

say() { echo "$*" | tee -a "$LOG"; }
# step NAME LIMIT_S CMD...: runs CMD with a time limit (cut to the budget left), output to the
# log, records the outcome.
step() {
  local name="$1" limit="$2"; shift 2
  local s=$(date +%s)
  local left=$(( DEADLINE - s ))
  if [ "$left" -lt 15 ]; then
    SUMMARY+=("$(printf '%-34s %-14s' "$name" "SKIPPED (budget)")")
    say "== $name: SKIPPED, the time budget is spent"
    FAILED=1
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - s ))
  local what="ok"
  [ $rc -ne 0 ] && what="FAILED rc=$rc" && FAILED=1
  [ $rc -eq 124 ] && what="TIMED OUT"
  SUMMARY+=("$(printf '%-34s %-14s %4ss' "$name" "$what" "$took")")
  say "== $name: $what in ${took}s"
  return $rc
}

say "== machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(),
'| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  nvcc --version | tail -1; nproc; } 2>&1 | tee -a "$LOG"

# 1. Build (the machine's torch; -std=c++20 is in setup.py's flags).
export RNNFAST_FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if ! step "build (setup.py build_ext)" 240 "$PY" setup.py build_ext --inplace; then
  tail -40 "$LOG"
  say "BUILD FAILED: nothing else runs"
  exit 1
fi
"$PY" -c "import rnnfast, json; print(json.dumps(rnnfast.backend()))" 2>&1 | tee -a "$LOG"

# 2. Device code: every kernel for every dtype, for each arch of TORCH_CUDA_ARCH_LIST (default
#    sm_80, sm_90 + PTX); cuobjdump from PATH, CUDA_HOME or triton's bundle.
if ! "$PY" -c "import rnnfast, sys; i = rnnfast.backend(); sys.exit(0 if i['cuda_loaded'] else i['cuda_error'])" >> "$LOG" 2>&1; then
  tail -5 "$LOG"
  say "THE CUDA LIBRARY DID NOT LOAD: the GPU tests below fail"
  SUMMARY+=("$(printf '%-34s %-14s' "CUDA library loads" "FAILED")")
  FAILED=1
fi
SO=$(ls rnnfast/_C_cuda*.so | head -1)
step "device code (check_device_code.py)" 60 "$PY" scripts/check_device_code.py "$SO"

# 3. The GPU tests.
step "tests/cuda (both GPU paths)" 180 "$PY" -m pytest tests/cuda -q -rs -p no:cacheprovider \
  --rootdir "$ROOT" -o pythonpath="$ROOT/tests"
TESTS_LINE=$(grep -E "^[0-9]+ (passed|failed)|^=+ .*(passed|failed)" "$LOG" | tail -1)

# 4. Benchmarks: rnnfast vs torch.nn (cuDNN) interleaved, CUDA events, medians.
step "targets.py --device cuda fp32" 90 "$PY" benchmarks/targets.py --device cuda --repeats 5 \
  --min-sample 0.05 "${ONLY[@]}" --json "$RES/targets_fp32.json"
step "targets.py --device cuda bf16" 75 "$PY" benchmarks/targets.py --device cuda --repeats 5 \
  --min-sample 0.05 --dtype bfloat16 "${ONLY[@]}" --json "$RES/targets_bf16.json"
step "targets.py --table persistent" 75 "$PY" benchmarks/targets.py --device cuda --table persistent \
  --repeats 5 --min-sample 0.05 "${ONLY[@]}" --json "$RES/targets_persistent.json"
step "seq_scaling.py --device cuda --quick" 100 "$PY" benchmarks/seq_scaling.py --device cuda --quick \
  "${SEQ_SIZES[@]}" --out "$RES/seq"
for f in seq_scaling.json seq_scaling.png; do
  [ -f "$RES/seq/$f" ] && mv "$RES/seq/$f" "$RES/$f"
done
[ -f "$RES/seq/seq_scaling_meta.json" ] && mv "$RES/seq/seq_scaling_meta.json" "$RES/seq_scaling_meta.json"
rmdir "$RES/seq" 2> /dev/null

# 5. compute-sanitizer over a small workload of every kernel (where the machine supports it), only
#    rnnfast's kernels instrumented where the tool can filter; racecheck (shared-memory hazards)
#    on the persistent path, the one kernel that shares memory between threads.
if [ "$DRY" = "1" ]; then
  step "sanitizer case (dry run, no sanitizer)" 60 "$PY" scripts/gpu_sanitize_case.py
elif command -v compute-sanitizer > /dev/null; then
  FILTER=()
  compute-sanitizer --help 2>&1 | grep -q -- "--kernel-name" && FILTER=(--kernel-name kns=rnnfast)
  step "compute-sanitizer memcheck" 120 compute-sanitizer --tool memcheck --error-exitcode 1 \
    --print-limit 20 "${FILTER[@]}" "$PY" scripts/gpu_sanitize_case.py
  step "compute-sanitizer racecheck" 90 env RNNFAST_SANITIZE_PATHS=persistent compute-sanitizer \
    --tool racecheck --error-exitcode 1 --print-limit 20 "${FILTER[@]}" "$PY" scripts/gpu_sanitize_case.py
else
  say "compute-sanitizer not found: sanitizer runs skipped"
  SUMMARY+=("compute-sanitizer                  NOT RUN (not on this machine)")
fi

# 6. Summary, last.
{
  echo
  echo "================ rnnfast gpu_check summary ($(( $(date +%s) - T0 )) s) ================"
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1
  printf '%s\n' "${SUMMARY[@]}"
  echo "tests/cuda: ${TESTS_LINE:-no pytest summary line}"
  "$PY" benchmarks/gpu_summary.py "$RES" 2>&1
  [ $? -ne 0 ] && FAILED=1
  echo "results: $RES"
  [ $FAILED -eq 0 ] && echo "GPU CHECK PASSED" || echo "GPU CHECK FAILED"
} 2>&1 | tee "$RES/summary.txt" | tee -a "$LOG"
grep -q "GPU CHECK PASSED" "$RES/summary.txt"
