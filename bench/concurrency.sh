#!/usr/bin/env bash
# How many requests one reused WASI 0.3 instance should serve at once
# (--max-instance-concurrency), from measurements: for each value in
# LEVELS, one worker on core 1 (wrk on core 0, keep-alive, CONNS
# connections, DURATION s) serving
#   compute   examples/p3-hello's GET /: a handler that only computes
#   wait      tests/handlers/p3kit's GET /slow?ms=WAIT_MS: a handler that
#             mostly waits (a timer, as an upstream call would)
# and prints req/s, p99 and the worker's RSS under load for each. Results
# go to bench/results/concurrency-*.json.
#
#   bench/concurrency.sh                 # LEVELS="1 4 16" DURATION=6 CONNS=32
set -euo pipefail
cd "$(dirname "$0")/.."
LEVELS=${LEVELS:-1 4 16}
DURATION=${DURATION:-6}
CONNS=${CONNS:-32}
WAIT_MS=${WAIT_MS:-10}
work=target/bench-concurrency
mkdir -p "$work" bench/results
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
scripts/setup.sh
cargo build --release -q -p wcluster
cargo build --release -q --target wasm32-wasip2 -p p3-hello -p p3kit
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { # the process and its children
  local total=0
  for p in $1 $(pgrep -P "$1" | tr '\n' ' '); do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo $total
}

rows=()
printf '%-8s %6s %10s %10s %12s\n' handler conc req/s p99 rss_kb
for handler in compute wait; do
  case $handler in
    compute) file=target/wasm32-wasip2/release/p3_hello.wasm path=/ ;;
    wait) file=target/wasm32-wasip2/release/p3kit.wasm path="/slow?ms=$WAIT_MS" ;;
  esac
  for c in $LEVELS; do
    port=$(free_port)
    taskset -c 1 target/release/wcluster serve "$file" --addr "127.0.0.1:$port" --workers 1 \
      --no-watch --cache-dir "$work/cache" --control "$work/ctl.sock" \
      --max-instance-concurrency "$c" >"$work/out" 2>"$work/err" &
    pid=$!
    until grep -q '^wcluster: listening' "$work/out"; do
      kill -0 $pid 2>/dev/null || { cat "$work/err" >&2; exit 1; }
      sleep 0.01
    done
    (sleep $((DURATION / 2)); rss_kb $pid >"$work/rss") &
    sampler=$!
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port$path" >"$work/wrk" 2>&1 || true
    wait $sampler
    rss=$(cat "$work/rss")
    kill -TERM $pid; wait $pid 2>/dev/null || true
    read -r rps p99 < <(awk '/Requests\/sec/ {r=$2} /^ +99%/ {p=$2} END {print r, p}' "$work/wrk")
    printf '%-8s %6s %10s %10s %12s\n' "$handler" "$c" "$rps" "$p99" "$rss"
    rows+=("{\"handler\":\"$handler\",\"concurrency\":$c,\"rps\":$rps,\"p99\":\"$p99\",\"rss_kb\":$rss}")
  done
done
file=bench/results/concurrency-$(date +%Y%m%d-%H%M%S).json
(IFS=,; echo "{\"date\":\"$(date -Iseconds)\",\"setup\":\"one worker taskset -c 1, wrk -t1 -c$CONNS -d${DURATION}s taskset -c 0, wait=${WAIT_MS}ms\",\"results\":[${rows[*]}]}") >"$file"
echo "written: $file"
