#!/usr/bin/env bash
# Per-language numbers for the example handlers: compile time (cache miss,
# from the server's log) and per-request latency / throughput with one
# keep-alive connection (wrk -c1, 3 s), one worker. Results are printed and
# written to bench/results/languages-*.json.
#
#   bench/languages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p wcluster
scripts/build-examples.sh target/examples
work=target/bench-languages
rm -rf "$work" && mkdir -p "$work" bench/results
rows=()
printf '%-15s %10s %12s %12s %10s\n' handler bytes compile_ms latency_avg req_per_s
for f in rust-hello.wasm rust-json.wasm javascript.wasm python.wasm c.wasm assemblyscript.wasm wat.wat; do
  name=${f%.*}
  target/release/wcluster serve "target/examples/$f" --addr 127.0.0.1:0 --workers 1 --no-watch \
    --cache-dir "$work/cache" --control "$work/c.sock" >"$work/out" 2>"$work/err" &
  pid=$!
  until grep -q '^wcluster: listening' "$work/out"; do sleep 0.01; done
  addr=$(grep -o 'http://[0-9.:]*' "$work/out")
  compile=$(grep -o 'ms=[0-9]*' "$work/err" | head -1 | cut -d= -f2)
  wrk -t1 -c1 -d3s "$addr/" >"$work/wrk" 2>&1
  kill -TERM $pid; wait $pid || true
  lat=$(awk '/Latency/ {print $2}' "$work/wrk")
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk")
  size=$(stat -c %s "target/examples/$f")
  printf '%-15s %10s %12s %12s %10s\n' "$name" "$size" "$compile" "$lat" "$rps"
  rows+=("{\"handler\":\"$name\",\"bytes\":$size,\"compile_ms\":$compile,\"latency_avg\":\"$lat\",\"req_per_s\":$rps}")
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
file=bench/results/languages-$(date +%Y%m%d-%H%M%S).json
(IFS=,; echo "{\"date\":\"$(date -Iseconds)\",\"cpu\":\"$cpu\",\"setup\":\"1 worker, wrk -t1 -c1 -d3s, keep-alive, fresh instance per request\",\"results\":[${rows[*]}]}") >"$file"
echo "written: $file"
