#!/usr/bin/env bash
# Fails when an object, archive or library given references a symbol of
# libtorch's C++ API: an undefined symbol in the namespaces at::, c10::,
# torch:: or caffe2:: (issue 16: the stable-ABI parts may use torch only
# through the C shim and the header-only headers, whose code is inlined).
# Instantiations of rnnfast's own templates over c10::BFloat16 are rnnfast's
# symbols, not torch's.
#
#   scripts/check_torch_symbols.sh FILE...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 FILE..." >&2; exit 2; }
status=0
for f in "$@"; do
  [ -e "$f" ] || { echo "check_torch_symbols: $f does not exist" >&2; exit 2; }
  case "$f" in *.so*) undefined=$(nm -D -C --undefined-only "$f") ;; *) undefined=$(nm -C --undefined-only "$f") ;; esac
  bad=$(printf '%s\n' "$undefined" | grep -E '^ +U (at|c10|torch|caffe2)::' || true)
  if [ -n "$bad" ]; then
    echo "check_torch_symbols: $f references libtorch's C++ API:" >&2
    printf '%s\n' "$bad" | sort -u | head -20 >&2
    status=1
  else
    echo "check_torch_symbols: $f: $(printf '%s\n' "$undefined" | grep -c ' U ' || true) undefined symbols, none of libtorch's C++ API"
  fi
done
exit $status
