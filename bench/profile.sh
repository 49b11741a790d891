#!/usr/bin/env bash
# Where one worker's time goes under load: `perf record` (the cpu-clock
# software event, which works where hardware counters do not) on the worker
# of a one-worker server on core 1, while wrk (core 0, 32 keep-alive
# connections) loads it; prints req/s and the top symbols, and leaves
# perf.data in target/profile/NAME.
#
#   bench/profile.sh NAME BINARY HANDLER.wasm [wcluster flags...]
#   WRK_ARGS="-s target/bench-run/post.lua" bench/profile.sh post target/release/wcluster echo.wasm
# Compare two builds by running it once for each (e.g. a BASELINE build).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,10p "$0" >&2; exit 2; }
name=$1 bin=$2 wasm=$3
shift 3
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
out=target/profile/$name
rm -rf "$out" && mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 1 "$bin" serve "$wasm" --addr "127.0.0.1:$port" --workers 1 --no-watch \
  --cache-dir "$out/cache" --control "$out/ctl.sock" "$@" >"$out/log" 2>&1 &
pid=$!
until grep -q '^wcluster: listening' "$out/log"; do
  kill -0 $pid 2>/dev/null || { cat "$out/log" >&2; exit 1; }
  sleep 0.05
done
worker=$(pgrep -P $pid | head -1)
# shellcheck disable=SC2086
taskset -c 0 wrk -t1 -c32 -d10s ${WRK_ARGS:-} "http://127.0.0.1:$port/" >"$out/wrk" 2>&1 &
load=$!
sleep 2
perf record -F 1999 -g -o "$out/perf.data" -p "$worker" -- sleep 5 >/dev/null 2>&1
wait $load
kill -TERM $pid
wait $pid 2>/dev/null || true
grep Requests/sec "$out/wrk"
perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
  grep -v '^#' | grep -v '^ *[|-]' | grep '%' | sed 's/  */ /g' | head -30
