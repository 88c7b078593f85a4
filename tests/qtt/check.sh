#!/usr/bin/env bash
# The QTT ratchet (CI): runs every query-validation case, and every REST case, and fails if a
# run listed in tests/qtt/passing.txt (resp. passing-rest.txt) did not pass. Runs that pass but
# are not listed are reported, to be added with tests/qtt/update-passing.sh in the same commit.
#   RILL_BIN=path/to/rill  use this binary instead of building one
#   QTT_DIR=path           the test files (default: ../shared/ksql-qtt from the repo root)
#   QTT_REST=0             skip the REST cases
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
qtt_dir="${QTT_DIR:-../shared/ksql-qtt}"
if [[ -z "${RILL_BIN:-}" ]]; then
  cargo build -q -p rill-server
  RILL_BIN="${CARGO_TARGET_DIR:-target}/debug/rill"
fi
out="$(mktemp)"
err="$(mktemp)"
passed="$(mktemp)"
listed="$(mktemp)"
trap 'rm -f "$out" "$err" "$passed" "$listed"' EXIT
status=0

# check <list file> [rill qtt options...]
check() {
  local list="$1"
  shift
  "$RILL_BIN" qtt --summary "$@" "$qtt_dir" >"$out" 2>"$err" || true
  if ! tail -n 1 "$out" | grep -Eq '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$'; then
    echo "qtt $*: the run did not finish; last lines:" >&2
    tail -n 5 "$out" >&2
    tail -n 20 "$err" >&2
    exit 2
  fi
  sed -n '/^| Category /,/^| \*\*all\*\*/p' "$out"
  tail -n 1 "$out"
  grep '^PASS ' "$out" | sed 's/^PASS //' | LC_ALL=C sort -u >"$passed"
  grep -v '^[[:space:]]*$' "$list" | LC_ALL=C sort -u >"$listed"
  local regressed new
  regressed="$(LC_ALL=C comm -23 "$listed" "$passed")"
  new="$(LC_ALL=C comm -13 "$listed" "$passed")"
  if [[ -n "$new" ]]; then
    echo
    echo "Newly passing (add them with tests/qtt/update-passing.sh):"
    printf '%s\n' "$new" | sed 's/^/  /'
  fi
  if [[ -n "$regressed" ]]; then
    echo
    echo "REGRESSIONS: listed in $list but not passing now:"
    while IFS= read -r name; do
      line="$(grep -F -m1 -e "FAIL $name: " -e "SKIP $name: " "$out" || true)"
      echo "  ${line:-$name (not run)}"
    done <<<"$regressed"
    status=1
  else
    echo "qtt ratchet: all $(wc -l <"$listed") runs listed in $list pass"
  fi
}

check tests/qtt/passing.txt
if [[ "${QTT_REST:-1}" != 0 ]]; then
  echo
  check tests/qtt/passing-rest.txt --rest
fi
exit "$status"
