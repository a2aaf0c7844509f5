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
# Follows a worker's event count in Redis every 20 ms, from one Python process with one
# connection: the shell loop this replaces forked redis-cli, grep, tr, date and sleep 20 times a
# second, and perf put them at a tenth of both cores, taken from the worker being measured.
# Time from the first consumed record to the last (the group join and task opening excluded),
# and the CPU seconds the worker, the broker and Redis each used in that time. On 2 shared cores
# the wall-clock figure is what this machine does; events per CPU second of the worker is what
# one worker does with a core of its own (the broker and Redis on other machines).
# Prints "events_per_s worker_events_per_cpu_s broker_cpu_s redis_cpu_s".
watch() {
  python3 - "$REDIS" "$@" <<'PY'
import os, re, socket, sys, time
port, stage, total, worker, broker, redis = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:7]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):  # user + system seconds so far (fields 14 and 15 of /proc/PID/stat)
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / tick
conn = socket.create_connection(("127.0.0.1", int(port)))
reader = conn.makefile("rb")
key, field = f"clickpulse:metrics:{stage}".encode(), f"{stage}-1".encode()
request = b"*3\r\n$4\r\nHGET\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in (key, field))
# serde_json orders keys, so the stage's own count is the one followed by events_per_second.
count = re.compile(rb'"events":([0-9]+),"events_per_second"')
def events():
    conn.sendall(request)
    size = int(reader.readline()[1:])
    if size < 0:
        return 0
    m = count.search(reader.read(size + 2))
    return int(m.group(1)) if m else 0
start = None
while True:
    n, now = events(), time.monotonic()
    if start is None and n > 0:
        start, n0, w0, b0, r0 = now, n, cpu(worker), cpu(broker), cpu(redis)
    if n >= total:
        w1, b1, r1 = cpu(worker), cpu(broker), cpu(redis)
        break
    time.sleep(0.02)
done = total - n0
print(round(done / (now - start)), round(done / max(w1 - w0, 0.001)), round(b1 - b0, 2), round(r1 - r0, 2))
PY
}
# Prints watch's figures and the worker's split of its time into steps.
measure() {
  local stage=$1 total=$2 figures
  "$BIN" run --config "$DIR/c.toml" --stage "$stage" --worker-id "$stage-1" >"$DIR/$stage.log" 2>&1 &
  local pid=$!
  figures=$(watch "$stage" "$total" "$pid" "$BROKER_PID" "$REDIS_PID")
  kill -TERM $pid; wait $pid || true
  # Where the worker's time went, as poll/process/publish/commit seconds over its whole run.
  local steps
  steps=$(redis-cli -p "$REDIS" hget "clickpulse:metrics:$stage" "$stage-1" | python3 -c '
import json, sys
t = sys.stdin.read().strip()
s = json.loads(t) if t else {}
s = s.get("details", s).get("step_seconds", {})
print("/".join(str(s.get(k, "-")) for k in ("poll", "process", "publish", "commit")))')
  echo "$figures $steps"
}
read -r REPLAY REPLAY_CPU REPLAY_BROKER REPLAY_REDIS _ < <(measure replay $EVENTS)
read -r ENRICH ENRICH_CPU ENRICH_BROKER ENRICH_REDIS ENRICH_STEPS < <(measure enrich $EVENTS)
read -r DETECT DETECT_CPU DETECT_BROKER DETECT_REDIS DETECT_STEPS < <(measure detect $EVENTS)
echo "bench distributed: replay_events_per_s=$REPLAY enrich_events_per_s=$ENRICH detect_events_per_s=$DETECT" \
  "replay_events_per_cpu_s=$REPLAY_CPU enrich_events_per_cpu_s=$ENRICH_CPU detect_events_per_cpu_s=$DETECT_CPU" \
  "broker_cpu_s=$REPLAY_BROKER/$ENRICH_BROKER/$DETECT_BROKER redis_cpu_s=$REPLAY_REDIS/$ENRICH_REDIS/$DETECT_REDIS" \
  "enrich_poll_process_publish_commit_s=$ENRICH_STEPS detect_poll_process_publish_commit_s=$DETECT_STEPS" \
  "events=$EVENTS partitions=4 batch=${CLICKPULSE_BENCH_BATCH:-10000} broker=tansu-0.6.0-memory redis=local"
