#!/usr/bin/env bash
# Regenerates tests/qtt/passing.txt: every QTT run that passes now, sorted.
# Run from anywhere; add new passes in the same commit that makes them pass.
# Also prints the per-category table (for the README) and writes every result as JSON to
# $CARGO_TARGET_DIR/qtt-results.json (or target/qtt-results.json).
#   RILL_BIN=path/to/rill  use this binary instead of building one
#   QTT_DIR=path           the test files (default: ../shared/ksql-qtt from the repo root)
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
trap 'rm -f "$out" "$err"' EXIT
# The runner exits 1 when a run fails; that is expected here.
json="${CARGO_TARGET_DIR:-target}/qtt-results.json"
mkdir -p "$(dirname "$json")"
"$RILL_BIN" qtt --summary --json "$json" "$qtt_dir" >"$out" 2>"$err" || true
tail -n 1 "$out" | grep -Eq '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' || {
  echo "update-passing: the run did not finish; last lines:" >&2
  tail -n 5 "$out" >&2
  tail -n 20 "$err" >&2
  exit 2
}
grep '^PASS ' "$out" | sed 's/^PASS //' | LC_ALL=C sort -u >tests/qtt/passing.txt
sed -n '/^| Category /,/^| \*\*all\*\*/p' "$out"
tail -n 1 "$out"
echo "wrote tests/qtt/passing.txt ($(wc -l <tests/qtt/passing.txt) runs)"
