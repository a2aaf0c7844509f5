#!/usr/bin/env bash
# Fuzzes the log readers, the collector's JSON, the Snowplow and Segment endpoints' parsers, the PostgreSQL
# source's pgoutput decoder and mapping, and the pattern parser with cargo fuzz
# (libFuzzer), each for the given number of seconds (default 60), one after the other.
#
#   scripts/fuzz.sh [seconds]
#
# Needs only the stable toolchain: RUSTC_BOOTSTRAP=1 lets it accept the nightly flags cargo fuzz
# passes (-Z sanitizer=address). Inputs libFuzzer finds interesting grow fuzz/work/<target>/
# (ignored by git), starting from the committed seeds in fuzz/corpus/<target>/. A crash is saved
# under fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ with a meaningful name
# and fix it; `cargo test` then replays it for ever (crates/*/tests/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
targets=(tsv_reader collector_json pattern_parser snowplow_tp2 segment pgoutput)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
# -a: debug assertions (integer overflow checks) on, as in `cargo test`.
cargo fuzz build -a

failed=0
summaries=()
for target in "${targets[@]}"; do
  echo "== fuzz $target for $seconds s"
  mkdir -p "work/$target" "artifacts/$target"
  log="work/$target.log"
  marker="work/$target.start"
  touch "$marker"
  status=0
  # -jobs=1: one fuzzing process; libFuzzer writes its output to fuzz-0.log.
  rm -f fuzz-0.log
  cargo fuzz run -a "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -jobs=1 -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1 || status=$?
  if [ -f fuzz-0.log ]; then
    cat fuzz-0.log >>"$log"
    rm -f fuzz-0.log
  fi
  # "Done 1234567 runs in 300 second(s)"; after a crash, the last "#N ..." status line.
  runs=$(sed -nE 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1/p' "$log" | tail -n1)
  secs=$(sed -nE 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\2/p' "$log" | tail -n1)
  if [ -z "$runs" ]; then
    runs=$(sed -nE 's/^#([0-9]+)[[:space:]].*/\1/p' "$log" | tail -n1)
    secs="?"
  fi
  found=$(find "artifacts/$target" -type f -newer "$marker")
  crashes=$(printf '%s' "$found" | grep -c . || true)
  rm -f "$marker"
  if [ "$crashes" -gt 0 ] || [ "$status" -ne 0 ]; then
    failed=1
    grep -m1 -A3 -E "panicked|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" || tail -n 20 "$log"
    printf 'saved: %s\n' $found
    echo "full output: fuzz/$log"
  fi
  summaries+=("fuzz $target: ${runs:-0} runs in $secs s, $crashes crashes")
  echo "${summaries[-1]}"
done

echo "== summary"
printf '%s\n' "${summaries[@]}"
exit "$failed"
