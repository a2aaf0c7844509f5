#!/usr/bin/env bash
# Distributed-mode throughput per worker: one enrich and one detect worker over a local tansu
# broker and a private redis-server, on a generated log of 1M clicks (real users and products).
#   1. the replay fills click-data at max speed (alone);
#   2. one enrich worker consumes it all (alone): enrich events/s;
#   3. one detect worker consumes enriched-click-data (alone): detect events/s.
# Prints one summary line a script can read. Needs the tansu binary (scripts/test.sh caches it)
# and redis-server. Usage: [CLICKPULSE_BENCH_BATCH=N] scripts/bench-distributed.sh [path/to/clickpulse]
# (CLICKPULSE_BENCH_BATCH: the workers' batch_size, default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/clickpulse}"
[ -x "$BIN" ] || cargo build --release --locked --bin clickpulse
TANSU="${CLICKPULSE_TANSU:-${XDG_CACHE_HOME:-$HOME/.cache}/clickpulse/tansu-0.6.0}"
DIR="$(mktemp -d)"
BROKER=$((20000 + RANDOM % 10000)); REDIS=$((30000 + RANDOM % 10000))
# CLICKPULSE_BENCH_LOGS=DIR keeps the workers' logs there (RUST_LOG=clickpulse_connectors=debug
# adds each batch's poll/process/publish/commit times).
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  redis-cli -p "$REDIS" shutdown nosave >/dev/null 2>&1 || true
  if [ -n "${CLICKPULSE_BENCH_LOGS:-}" ]; then mkdir -p "$CLICKPULSE_BENCH_LOGS"; cp "$DIR"/*.log "$CLICKPULSE_BENCH_LOGS"/; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
"$TANSU" broker --listener-url "tcp://127.0.0.1:$BROKER" --advertised-listener-url "tcp://127.0.0.1:$BROKER" \
  --storage-engine memory://tansu/ >"$DIR/broker.log" 2>&1 &
BROKER_PID=$!
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$DIR" --logfile "$DIR/redis.log"
sleep 1
cat >"$DIR/c.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$BROKER"
group_prefix = "bench$BROKER"
partitions = 4
session_timeout_ms = 6000
[redis]
url = "redis://127.0.0.1:$REDIS/0"
[pipeline]
batch_size = ${CLICKPULSE_BENCH_BATCH:-10000}
patterns = "$DIR/patterns"
[replay]
speed = "max"
original_time = true
logs = ["$DIR/log.tsv.gz"]
TOML
EVENTS=1000000
"$BIN" generate --visitors 200000 --days 7 --events $EVENTS --seed 7 --out "$DIR/log.tsv.gz" >/dev/null 2>&1
"$BIN" lookups load --redis "redis://127.0.0.1:$REDIS/0" >/dev/null
REDIS_PID=$(redis-cli -p "$REDIS" info server | tr -d '\r' | sed -n 's/^process_id://p')
TICK=$(getconf CLK_TCK)
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$TICK" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
# Events a worker has counted. Polled every 50 ms, so it must be cheap: starting a Python for each
# poll took a good part of a core away from the worker being measured on this 2-core machine.
# (serde_json orders keys, so the stage's own count is the one followed by events_per_second.)
events() {
  local n
  n=$(redis-cli -p "$REDIS" hget "clickpulse:metrics:$1" "$1-1" | grep -o '"events":[0-9]*,"events_per_second"' | tr -dc '0-9')
  echo "${n:-0}"
}
# Time from the first consumed record to the last (the group join and task opening excluded),
# and the CPU seconds the worker, the broker and Redis each used in that time. On 2 shared cores
# the wall-clock figure is what this machine does; events per CPU second of the worker is what
# one worker does with a core of its own (the broker and Redis on other machines).
# Prints "events_per_s worker_events_per_cpu_s broker_cpu_s redis_cpu_s steps".
measure() {
  local stage=$1 total=$2 start="" t1 n w0 b0 r0 w1 b1 r1
  "$BIN" run --config "$DIR/c.toml" --stage "$stage" --worker-id "$stage-1" >"$DIR/$stage.log" 2>&1 &
  local pid=$!
  while :; do
    n=$(events "$stage"); now=$(date +%s.%N)
    if [ -z "$start" ] && [ "$n" -gt 0 ]; then
      start=$now; n0=$n; w0=$(cpu $pid); b0=$(cpu $BROKER_PID); r0=$(cpu $REDIS_PID)
    fi
    if [ "$n" -ge "$total" ]; then
      t1=$now; w1=$(cpu $pid); b1=$(cpu $BROKER_PID); r1=$(cpu $REDIS_PID); break
    fi
    sleep 0.05
  done
  kill -TERM $pid; wait $pid || true
  # Where the worker's time went, as poll/process/publish/commit seconds over its whole run.
  local steps
  steps=$(redis-cli -p "$REDIS" hget "clickpulse:metrics:$stage" "$stage-1" | python3 -c '
import json, sys
t = sys.stdin.read().strip()
s = json.loads(t) if t else {}
s = s.get("details", s).get("step_seconds", {})
print("/".join(str(s.get(k, "-")) for k in ("poll", "process", "publish", "commit")))')
  python3 -c "n=$total-$n0; print(round(n/($t1-$start)), round(n/max($w1-$w0, 0.001)), round($b1-$b0, 2), round($r1-$r0, 2), '$steps')"
}
read -r REPLAY REPLAY_CPU REPLAY_BROKER REPLAY_REDIS _ < <(measure replay $EVENTS)
read -r ENRICH ENRICH_CPU ENRICH_BROKER ENRICH_REDIS ENRICH_STEPS < <(measure enrich $EVENTS)
read -r DETECT DETECT_CPU DETECT_BROKER DETECT_REDIS DETECT_STEPS < <(measure detect $EVENTS)
echo "bench distributed: replay_events_per_s=$REPLAY enrich_events_per_s=$ENRICH detect_events_per_s=$DETECT" \
  "replay_events_per_cpu_s=$REPLAY_CPU enrich_events_per_cpu_s=$ENRICH_CPU detect_events_per_cpu_s=$DETECT_CPU" \
  "broker_cpu_s=$REPLAY_BROKER/$ENRICH_BROKER/$DETECT_BROKER redis_cpu_s=$REPLAY_REDIS/$ENRICH_REDIS/$DETECT_REDIS" \
  "enrich_poll_process_publish_commit_s=$ENRICH_STEPS detect_poll_process_publish_commit_s=$DETECT_STEPS" \
  "events=$EVENTS partitions=4 batch=${CLICKPULSE_BENCH_BATCH:-10000} broker=tansu-0.6.0-memory redis=local"
