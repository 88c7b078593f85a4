#!/usr/bin/env bash
# Longer exactly-once soak: the crash test with many more SIGKILLs (default 200), N rounds.
# Usage: scripts/soak-crash.sh [KILLS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rill-target}"
kills="${1:-200}"
rounds="${2:-1}"
for round in $(seq 1 "$rounds"); do
    echo "round $round: $kills kills"
    RILL_CRASH_KILLS="$kills" cargo nextest run -p rill-server --test crash --no-capture
done
