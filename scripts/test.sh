#!/usr/bin/env bash
# The test command of the README: set-up, the Python suite, the sanitizer job
# (scripts/sanitize.sh), then the CMake build of the same sources with its C++
# unit tests (ctest), a smoke test of the CMake-built module, (where nvcc
# exists) a device compile of the shared gate-math header and the CUDA build
# step (scripts/cuda_build_check.sh), and last the wheel: built on the stable
# ABI alone (scripts/build_wheel.sh), installed beside another torch and tested
# there (scripts/wheel_check.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"

echo "== python test suite"
start=$(date +%s)
RNNFAST_EXPECT_STABLE_ABI=0 "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider -n "$RNNFAST_TEST_WORKERS" --dist loadgroup
echo "== python tests took $(( $(date +%s) - start )) s"

# AddressSanitizer + UBSan build, a subset of the suite under it, LeakSanitizer over repeated calls.
"$ROOT/scripts/sanitize.sh"

echo "== CMake build + ctest"
start=$(date +%s)
BUILD="$ROOT/build-cmake"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$VENV/bin/python" \
  -DCMAKE_PREFIX_PATH="$("$VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
  > "$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j "${MAX_JOBS:-2}" >> "$BUILD.log" 2>&1 || { tail -50 "$BUILD.log"; exit 1; }
ctest --test-dir "$BUILD" --output-on-failure
# The parts already on torch's stable ABI (issue 16): the kernels library and the operators'
# schemas and CPU kernels (built with TORCH_TARGET_VERSION) and the bindings (built without
# torch's headers) use no libtorch C++ symbol.
"$ROOT/scripts/check_torch_symbols.sh" "$BUILD/librnnfast_cpu_kernels.a" \
  "$BUILD"/CMakeFiles/rnnfast_stable_ops.dir/csrc/*.o "$BUILD"/CMakeFiles/rnnfast_stable_ops.dir/csrc/cpu/*.o \
  "$BUILD"/CMakeFiles/rnnfast_stable_ops.dir/csrc/gpu/*.o \
  "$BUILD/CMakeFiles/rnnfast_bindings.dir/csrc/bindings.cpp.o"
# The CMake-built extension, imported from the build tree, against torch.nn.
(cd "$BUILD" && PYTHONPATH="$BUILD" "$VENV/bin/python" -c \
  "import rnnfast._C as c; assert c.__file__.startswith('$BUILD'), c.__file__; print('CMake-built module:', c.__file__)")
(cd "$BUILD" && PYTHONPATH="$BUILD" RNNFAST_EXPECT_STABLE_ABI=0 "$VENV/bin/python" -m pytest "$ROOT/tests/test_backend.py" \
  "$ROOT/tests/test_kernels.py" -q -p no:cacheprovider -k "backend or every_instruction_set" \
  --rootdir "$ROOT" -o pythonpath="$ROOT/tests")
echo "== CMake build and tests took $(( $(date +%s) - start )) s"

NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
if [ -x "$NVCC" ]; then
  echo "== nvcc: device compile of csrc/cell_math.h"
  "$NVCC" -std=c++17 -arch=sm_80 -I"$ROOT/csrc" -c "$ROOT/tests/cuda/cell_math_device.cu" \
    -o "$BUILD/cell_math_device.o"
  # The CUDA build step: torch 2.14.1 (CUDA 13.0), the extension with its CUDA kernels, device code
  # for every kernel, import without a GPU, the CPU suite and the emulated GPU algorithm against it.
  start=$(date +%s)
  "$ROOT/scripts/cuda_build_check.sh"
  echo "== CUDA build step took $(( $(date +%s) - start )) s"
elif [ "${RNNFAST_REQUIRE_CUDA_BUILD:-0}" = "1" ]; then
  echo "ERROR: nvcc not found at $NVCC and RNNFAST_REQUIRE_CUDA_BUILD=1"; exit 1
else
  echo "############################################################################"
  echo "## WARNING: nvcc not found at $NVCC: the CUDA build step did NOT run."
  echo "## The CUDA kernels were neither compiled nor checked on this machine."
  echo "############################################################################"
fi
# The wheel (issue 16): built on the stable ABI alone against the CUDA build of torch 2.14.1 that
# the CUDA step installed (else against .venv's torch, said below), with its CUDA library,
# nm-checked, then installed with pip into fresh venvs with no compiler reachable and tested there:
# beside torch 2.13.0 (CPU build: the CUDA library stays unloaded) and beside torch 2.14.1 (CUDA
# 13.0 build, no GPU: the CUDA library loads and registers its kernels).
start=$(date +%s)
if [ -x "$ROOT/.venv-cuda/bin/python" ]; then
  RNNFAST_WHEEL_VENV="$ROOT/.venv-cuda" "$ROOT/scripts/build_wheel.sh"
else
  echo "## WARNING: no .venv-cuda (no CUDA build step): the wheel is built against .venv's torch"
  RNNFAST_WHEEL_VENV="$VENV" "$ROOT/scripts/build_wheel.sh"
fi
"$ROOT/scripts/wheel_check.sh" torch==2.13.0
if [ -x "$ROOT/.venv-cuda/bin/python" ]; then
  RNNFAST_WHEEL_SUITE=dispatch "$ROOT/scripts/wheel_check.sh" torch==2.14.1
fi
echo "== wheel step took $(( $(date +%s) - start )) s"
echo "== all tests passed"
