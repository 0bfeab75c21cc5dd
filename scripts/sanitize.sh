#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of rnnfast._C (in build-sanitize/, apart from
# the in-place build), a meaningful subset of the Python suite under it, and a LeakSanitizer run over
# repeated calls at 1 and 2 threads (scripts/leak_check.py). Fails on any ASan/UBSan report and on
# any leak report with a frame of rnnfast. Run by scripts/test.sh; needs the set-up of setup_env.sh.
#
# The instrumented extension is loaded into an uninstrumented Python: libasan must come first, and
# libstdc++ with it (libasan alone aborts inside torch's own exception handling).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
BUILD="$ROOT/build-sanitize"
start=$(date +%s)
echo "== sanitize: ASan+UBSan build of rnnfast._C in $BUILD"
rm -rf "$BUILD/lib"
# Only the instruction-set builds this CPU can run: the others could never execute under the
# sanitizers here (the in-place build and CMake compile all of them).
MAX_ISA="$("$VENV/bin/python" -c 'import rnnfast; print(rnnfast.backend()["cpu_capabilities"][0])')"
echo "== sanitize: instruction sets up to $MAX_ISA (this CPU's best)"
RNNFAST_MAX_ISA="$MAX_ISA" RNNFAST_SANITIZE=address,undefined MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/python" setup.py --quiet \
  build_ext --build-lib "$BUILD/lib" --build-temp "$BUILD/tmp" > "$BUILD.log" 2>&1 \
  || { tail -40 "$BUILD.log"; exit 1; }
cp rnnfast/*.py "$BUILD/lib/rnnfast/"
echo "== sanitize: build took $(( $(date +%s) - start )) s"

ASAN_LIB="$(gcc -print-file-name=libasan.so)"
STDCXX_LIB="$(gcc -print-file-name=libstdc++.so)"
[ -f "$ASAN_LIB" ] || { echo "libasan not found (gcc -print-file-name=libasan.so)"; exit 1; }
run_instrumented() {
  # -P: do not put the working directory (the in-place, uninstrumented build) first on sys.path.
  (cd "$BUILD" && LD_PRELOAD="$ASAN_LIB $STDCXX_LIB" PYTHONPATH="$BUILD/lib" \
     UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$VENV/bin/python" -P "$@")
}

start=$(date +%s)
echo "== sanitize: Python tests under ASan+UBSan (leak detection off: the interpreter's own)"
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 run_instrumented -c \
  "import rnnfast, sys; assert rnnfast._C.__file__.startswith('$BUILD/lib'), rnnfast._C.__file__"
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 run_instrumented -m pytest -q -p no:cacheprovider -n "$RNNFAST_TEST_WORKERS" --dist loadgroup \
  --rootdir "$ROOT" "$ROOT/tests/test_parity.py" "$ROOT/tests/test_ops.py" "$ROOT/tests/test_errors.py" \
  "$ROOT/tests/test_kernels.py" "$ROOT/tests/test_gradcheck.py" "$ROOT/tests/test_numerics.py" \
  "$ROOT/tests/test_double_backward.py" "$ROOT/tests/test_low_precision.py" \
  "$ROOT/tests/test_reliability.py" "$ROOT/tests/test_state_dict.py" -k "not leak and not fork and not dataloader"
echo "== sanitize: tests took $(( $(date +%s) - start )) s"

start=$(date +%s)
echo "== sanitize: LeakSanitizer over repeated calls at 1 and 2 threads"
rm -rf "$BUILD/lsan" && mkdir -p "$BUILD/lsan"
ASAN_OPTIONS=detect_leaks=1:exitcode=0:log_path="$BUILD/lsan/report" run_instrumented "$ROOT/scripts/leak_check.py" "$BUILD/lib"
"$VENV/bin/python" - "$BUILD/lsan" <<'PY'
import glob, re, sys
reports = glob.glob(sys.argv[1] + "/report.*")
blocks = [b for path in reports for b in re.split(r"\n(?=(?:Direct|Indirect) leak of)", open(path).read())]
ours = [b for b in blocks if "leak of" in b and ("rnnfast" in b or "/csrc/" in b)]
print(f"LeakSanitizer: {sum('leak of' in b for b in blocks)} leak reports in all "
      f"(interpreter and torch), {len(ours)} with a frame of rnnfast")
for b in ours[:5]:
    print("\n".join(line[:200] for line in b.splitlines()[:12]))
sys.exit(1 if ours else 0)
PY
echo "== sanitize: leak check took $(( $(date +%s) - start )) s"
