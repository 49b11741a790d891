#!/usr/bin/env bash
# What the handler capabilities cost per request, in ONE run: the reach test
# handler (tests/handlers/reach) on wcluster, keep-alive GET, doing
#   baseline       /config?key=greeting   no I/O (a value held in the store)
#   kv-sqlite      /get?key=k             one wasi:keyvalue get, SQLite
#   kv-redis       /get?key=k             the same against redis-server
#   outbound       /fetch?url=UPSTREAM    one outbound call to a local upstream
#                                         (wcluster serving hello)
# and prints each row's ratio to the baseline.
#
# CPU split: the wcluster under test gets core 1 (one worker); wrk, the
# upstream and redis-server share core 0, so the client side is contested
# and the absolute numbers understate the server.
#
#   bench/capabilities.sh                 # DURATION=8 CONNS=32
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
work=target/bench-capabilities
mkdir -p "$work" bench/results
command -v wrk >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}
scripts/setup.sh
cargo build --release -q -p wcluster
cargo build --release -q --target wasm32-wasip2 -p reach -p hello
reach=target/wasm32-wasip2/release/reach.wasm
hello=target/wasm32-wasip2/release/hello.wasm
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

wait_http() {
  for _ in $(seq 1000); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = "$2" ] && return 0
    sleep 0.05
  done
  echo "bench: $1 never answered $2" >&2
  return 1
}

up_port=$(free_port) redis_port=$(free_port)
taskset -c 0 target/release/wcluster serve "$hello" --addr "127.0.0.1:$up_port" --workers 1 \
  --cache-dir "$work/cache" --control "$work/up.sock" --no-watch >"$work/upstream.log" 2>&1 &
pids+=($!)
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$up_port/" 200

run() { # name backend-flags path
  local name=$1 flags=$2 path=$3 port
  port=$(free_port)
  rm -rf "$work/state"
  # shellcheck disable=SC2086 # flags are words
  taskset -c 1 target/release/wcluster serve "$reach" --addr "127.0.0.1:$port" --workers 1 \
    --cache-dir "$work/cache" --control "$work/ctl.sock" --no-watch --state-dir "$work/state" \
    --config greeting=hello --allow-outbound "http://127.0.0.1:$up_port" $flags \
    >"$work/$name.log" 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$port/config?key=greeting" 200
  curl -s -X POST --data-binary "a value of some thirty bytes.." "http://127.0.0.1:$port/set?key=k" >/dev/null
  taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port$path" >"$work/wrk.out" 2>&1 || true
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  awk -v n="$name" '
    /Requests\/sec/ {rps=$2}
    /^ +50%/ {p50=$2}
    /^ +99%/ {p99=$2}
    /Non-2xx/ {err+=$NF}
    /Socket errors/ {gsub(",", ""); err+=$4+$6+$8+$10}
    END {printf "%s %s %s %s %d\n", n, rps, p50, p99, err}
  ' "$work/wrk.out"
}

upstream="http%3A%2F%2F127.0.0.1%3A$up_port%2F"
rows=()
rows+=("$(run baseline "" "/config?key=greeting")")
rows+=("$(run kv-sqlite "--keyvalue sqlite" "/get?key=k")")
rows+=("$(run kv-redis "--keyvalue redis://127.0.0.1:$redis_port" "/get?key=k")")
rows+=("$(run outbound "" "/fetch?url=$upstream")")

read -r _ base _ <<<"${rows[0]}"
printf '\n%-10s %12s %10s %10s %7s %12s\n' row req/s p50 p99 errors "vs baseline"
json=()
for r in "${rows[@]}"; do
  read -r name rps p50 p99 err <<<"$r"
  ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  printf '%-10s %12s %10s %10s %7s %12s\n' "$name" "$rps" "$p50" "$p99" "$err" "$ratio"
  json+=("{\"row\":\"$name\",\"rps\":$rps,\"p50\":\"$p50\",\"p99\":\"$p99\",\"errors\":$err,\"ratio_to_baseline\":$ratio}")
done
out="bench/results/capabilities-$(date +%Y%m%d-%H%M%S).json"
printf '{"date":"%s","cpu":"%s","duration_s":%s,"conns":%s,"rows":[%s]}\n' "$(date -Is)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$DURATION" "$CONNS" \
  "$(IFS=,; echo "${json[*]}")" >"$out"
echo "bench: wrote $out" >&2
