#!/usr/bin/env bash
# Builds (release) and runs the Rill server on the embedded log: data in ./rill-data,
# REST API on http://127.0.0.1:8088. Extra arguments go to `rill server`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rill-target}"
if ! command -v cc >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq build-essential
fi
cargo build --release -p rill-server
exec "$CARGO_TARGET_DIR/release/rill" server "$@"
