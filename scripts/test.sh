#!/usr/bin/env bash
# Runs every test. On a fresh machine it first installs what the tests need:
# Debian packages (C toolchain, Python venv), the third-party ksqlDB client from PyPI.
# The cargo target dir lives outside the clone ($HOME/.cache/rill-target) so it survives clones.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rill-target}"
VENV="${RILL_VENV:-$HOME/.cache/rill-venv}"

# 1. Debian packages.
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}"
fi

# 2. The unmodified third-party ksqlDB client that tests/e2e.rs drives.
#    (httpx < 0.28: ksql-python-ng 0.29 passes `cert=` to httpx.get, which 0.28 removed.)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check 'ksql-python-ng==0.29.0.1' 'h2>=4' 'httpx[http2]<0.28'
export RILL_PYTHON="$VENV/bin/python"

# 3. Lints and tests.
cargo clippy --workspace --all-targets -- -D warnings
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

# 4. Conformance ratchet: every run listed in tests/qtt/passing.txt must still pass.
if [ -x tests/qtt/check.sh ]; then
  tests/qtt/check.sh
fi
echo "all tests passed"
