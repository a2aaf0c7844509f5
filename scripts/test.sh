#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every check and test.
# Works on a fresh machine with the Rust toolchain and Node.js; CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== browser test dependencies"
if ! command -v chromium >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo test --workspace --all-targets --locked

echo "== browser tests (Chromium headless)"
cargo build --locked --bin clickpulse
(cd tests/browser && npm test)
