#!/usr/bin/env bash
# Once, outside CI (several GB per torch): the wheel of scripts/build_wheel.sh installed beside
# other torch releases, the CUDA builds pip installs by default, and the whole suite run against it
# in each (scripts/wheel_check.sh with RNNFAST_WHEEL_SUITE=all). Prints one line per release.
#
#   scripts/wheel_other_torches.sh [VERSION...]     default: 2.11.0 2.12.1
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS=("$@")
[ "${#VERSIONS[@]}" -gt 0 ] || VERSIONS=(2.11.0 2.12.1)
LOGS="$ROOT/build-wheel/other-torches"
mkdir -p "$LOGS"
summary=()
for v in "${VERSIONS[@]}"; do
  log="$LOGS/torch-$v.log"
  echo "== torch $v: $log"
  if RNNFAST_WHEEL_SUITE=all "$ROOT/scripts/wheel_check.sh" "torch==$v" > "$log" 2>&1; then
    result="passed"
  else
    result="FAILED"
  fi
  summary+=("torch $v: $result: $(grep -E '^[0-9]+ (passed|failed)' "$log" | tr '\n' ';' || echo "no pytest summary: see the log")")
  echo "${summary[-1]}"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
! printf '%s\n' "${summary[@]}" | grep -q FAILED
