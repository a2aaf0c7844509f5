#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every check and test.
# Works on a fresh machine with the Rust toolchain; CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo test --workspace --all-targets --locked
