#!/usr/bin/env bash
# Builds the binary wheel: rnnfast on torch's stable ABI alone (RNNFAST_STABLE_ABI=1, setup.py),
# compiled against the torch of $RNNFAST_WHEEL_VENV (default .venv: torch 2.13.0, CPU; CI uses
# .venv-cuda's 2.14.1, CUDA 13.0), with every instruction-set build of the CPU kernels (rnnfast._C)
# and, where that torch is a CUDA build, the CUDA library (rnnfast._C_cuda: sm_80 and sm_90 with
# PTX; nvcc from CUDA_HOME, cuBLAS headers from the venv's nvidia/cu13/include), then repaired by
# auditwheel (manylinux tag; torch's libraries and the CUDA libraries torch brings excluded) into
# dist/rnnfast-<version>-<python tag>-<abi tag>-manylinux_*_x86_64.whl. Every library in the wheel
# is checked with nm (scripts/check_torch_symbols.sh). The wheel requires torch>=2.11; its CUDA
# library loads where torch is a CUDA 13 build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_VENV="${RNNFAST_WHEEL_VENV:-$ROOT/.venv}"
TOOLS="$ROOT/.venv-wheel"
WORK="$ROOT/build-wheel"
[ -x "$BUILD_VENV/bin/python" ] || { echo "build_wheel: no $BUILD_VENV (scripts/setup_env.sh makes .venv)" >&2; exit 2; }

if [ ! -x "$TOOLS/bin/python" ]; then
  echo "== wheel: tools venv $TOOLS"
  "${PYTHON:-python3}" -m venv "$TOOLS"
fi
"$TOOLS/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements-wheel.txt"

echo "== wheel: building against torch $("$BUILD_VENV/bin/python" -c 'import torch; print(torch.__version__)')"
start=$(date +%s)
CUDA_BUILD=0
if "$BUILD_VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
  CUDA_BUILD=1
  export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" RNNFAST_FORCE_CUDA=1
  # cuBLAS's headers from the pip wheels torch depends on (site-packages/nvidia/*/include).
  SITE="$("$BUILD_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  for include in "$SITE"/nvidia/*/include; do CPATH="$include${CPATH:+:$CPATH}"; done
  export CPATH
  echo "== wheel: with the CUDA library (nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1))"
else
  export RNNFAST_SKIP_CUDA=1
  echo "== wheel: WITHOUT CUDA kernels: $BUILD_VENV's torch is a CPU build"
fi
rm -rf "$WORK/src" "$WORK/raw" "$WORK/unpacked"  # (not the checks' folders beside them)
mkdir -p "$WORK/src" "$WORK/raw" "$ROOT/dist"
# A clean copy of the sources: no in-place build or cache of the working tree gets into the wheel.
(cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -cf - -T -) | tar -xf - -C "$WORK/src"
(cd "$WORK/src" && RNNFAST_STABLE_ABI=1 MAX_JOBS="${MAX_JOBS:-2}" "$BUILD_VENV/bin/python" -m pip wheel . \
  --no-build-isolation --no-deps --disable-pip-version-check -w "$WORK/raw" > "$WORK/build.log" 2>&1) \
  || { tail -40 "$WORK/build.log"; exit 1; }
RAW=$(ls "$WORK"/raw/rnnfast-*.whl)
echo "== wheel: built $(basename "$RAW") in $(( $(date +%s) - start )) s"

# torch's libraries are torch's: excluded from the repair (never copied into the wheel). So is
# libgomp: torch ships libgomp.so.1 and loads it first, and the kernels must share its OpenMP
# runtime (a second copy would run its own thread pool beside torch's). So are the CUDA runtime and
# cuBLAS, which a CUDA torch brings (its nvidia-* wheels) and loads before rnnfast's CUDA library:
# one copy of each in the process, the one torch runs on.
TORCH_LIB="$("$BUILD_VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
rm -f "$ROOT"/dist/rnnfast-*.whl
PATH="$TOOLS/bin:$PATH" LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$TOOLS/bin/auditwheel" repair "$RAW" \
  --exclude 'libtorch*.so*' --exclude 'libc10*.so*' --exclude 'libgomp*.so*' \
  --exclude 'libcudart*.so*' --exclude 'libcublas*.so*' -w "$ROOT/dist"
WHEEL=$(ls "$ROOT"/dist/rnnfast-*.whl)

# Every library in the wheel: no undefined symbol of libtorch's C++ API.
rm -rf "$WORK/unpacked"
"$BUILD_VENV/bin/python" -m zipfile -e "$WHEEL" "$WORK/unpacked"
mapfile -t LIBS < <(find "$WORK/unpacked" -name '*.so*' -type f | sort)
[ "${#LIBS[@]}" -gt 0 ] || { echo "build_wheel: no library in $WHEEL" >&2; exit 1; }
"$ROOT/scripts/check_torch_symbols.sh" "${LIBS[@]}"
# The libraries the build made, no more, no fewer (no vendored copy of anything: .libs is empty).
EXPECTED=1
[ "$CUDA_BUILD" = 1 ] && EXPECTED=2
[ "${#LIBS[@]}" -eq "$EXPECTED" ] || { echo "build_wheel: expected $EXPECTED libraries, found: ${LIBS[*]}" >&2; exit 1; }
if [ "$CUDA_BUILD" = 1 ]; then
  "$BUILD_VENV/bin/python" "$ROOT/scripts/check_device_code.py" "$(ls "$WORK"/unpacked/rnnfast/_C_cuda*.so)"
fi
echo "== wheel: $WHEEL"
