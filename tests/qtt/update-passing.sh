#!/usr/bin/env bash
# Regenerates the QTT ratchet lists, sorted: tests/qtt/passing.txt (every query-validation run
# that passes now) and tests/qtt/passing-rest.txt (the same for the REST cases, `--rest`).
# Run it from anywhere; add new passes in the same commit that makes them pass. It prints the
# per-category tables (for the README) and writes every result as JSON to
# $CARGO_TARGET_DIR/qtt-results.json and qtt-rest-results.json (or under target/).
#   RILL_BIN=path/to/rill  use this binary instead of building one
#   QTT_DIR=path           the test files (default: ../shared/ksql-qtt from the repo root)
#   QTT_REST=0             leave passing-rest.txt alone
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
qtt_dir="${QTT_DIR:-../shared/ksql-qtt}"
if [[ -z "${RILL_BIN:-}" ]]; then
  cargo build -q -p rill-server
  RILL_BIN="${CARGO_TARGET_DIR:-target}/debug/rill"
fi
results="${CARGO_TARGET_DIR:-target}"
mkdir -p "$results"
out="$(mktemp)"
err="$(mktemp)"
trap 'rm -f "$out" "$err"' EXIT

# update <list file> <json file> [rill qtt options...]
update() {
  local list="$1" json="$2"
  shift 2
  # The runner exits 1 when a run fails; that is expected here.
  "$RILL_BIN" qtt --summary --json "$json" "$@" "$qtt_dir" >"$out" 2>"$err" || true
  if ! tail -n 1 "$out" | grep -Eq '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$'; then
    echo "update-passing: the run did not finish; last lines:" >&2
    tail -n 5 "$out" >&2
    tail -n 20 "$err" >&2
    exit 2
  fi
  # Runs listed in tests/qtt/unstable.txt pass or fail depending on timing: never listed.
  grep '^PASS ' "$out" | sed 's/^PASS //' | LC_ALL=C sort -u \
    | LC_ALL=C comm -23 - <(grep -v '^[[:space:]]*#' tests/qtt/unstable.txt | LC_ALL=C sort -u) >"$list"
  sed -n '/^| Category /,/^| \*\*all\*\*/p' "$out"
  tail -n 1 "$out"
  echo "wrote $list ($(wc -l <"$list") runs)"
}

update tests/qtt/passing.txt "$results/qtt-results.json"
if [[ "${QTT_REST:-1}" != 0 ]]; then
  echo
  update tests/qtt/passing-rest.txt "$results/qtt-rest-results.json" --rest
fi
