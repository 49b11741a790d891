#!/usr/bin/env bash
# Per-language numbers for the example handlers, loaded the way users load
# them: compile time (cache miss, from the server's log), then keep-alive
# GET throughput at 1 and at 32 connections (wrk -t1, DURATION s each) for
#   wcluster          its defaults: a fresh instance per request for WASI
#                     0.2 and CGI, reused instances for WASI 0.3
#   wcluster-reuse    --reuse-instances 1000, where the handler allows it
#                     (one that cannot serve twice is refused: "refused")
#   wasmtime-serve    `wasmtime serve -S cli` 50.0.1 on the same file
#                     (components only: it runs no CGI modules); for WASI
#                     0.3 ones (python-p3) `-Sp3 -Scli`, which reuses
#                     instances by default
# One worker; the server on core 1, wrk on core 0. Results are printed
# and written to bench/results/languages-*.json.
#
#   bench/languages.sh                  # DURATION=5
#   ONLY="javascript python" bench/languages.sh
#   WCLUSTER=/path/to/other/wcluster bench/languages.sh   # another build
#       (e.g. one linked against a patched wasmtime) in the wcluster rows
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
WASMTIME_VERSION=50.0.1
tools=target/tools
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
if [ "$("$tools/bin/wasmtime" --version 2>/dev/null | awk '{print $2}')" != "$WASMTIME_VERSION" ]; then
  echo "bench: installing wasmtime-cli $WASMTIME_VERSION from crates.io (once; takes a while)" >&2
  cargo install -q --locked wasmtime-cli --version "$WASMTIME_VERSION" --root "$tools"
fi
cargo build --release -q -p wcluster
wcluster=${WCLUSTER:-target/release/wcluster}
scripts/build-examples.sh target/examples
work=target/bench-languages
rm -rf "$work" && mkdir -p "$work" bench/results
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rps() { # url conns -> req/s (non-2xx counted out)
  taskset -c 0 wrk -t1 -c"$2" -d"${DURATION}s" "$1" >"$work/wrk" 2>&1 || true
  awk -v d="$DURATION" '/Requests\/sec/ {r=$2} /Non-2xx/ {e=$NF} END {g=r-e/d; printf "%.0f", g<0?0:g}' "$work/wrk"
}

# server name, file -> sets $pid and $url, or returns 1 when it refused to start
start() {
  local port
  port=$(free_port)
  case $1 in
    wcluster | wcluster-reuse)
      local reuse=()
      [ "$1" = wcluster-reuse ] && reuse=(--reuse-instances 1000)
      taskset -c 1 "$wcluster" serve "$2" --addr "127.0.0.1:$port" --workers 1 --no-watch \
        --cache-dir "$work/cache" --control "$work/c.sock" "${reuse[@]}" >"$work/out" 2>"$work/err" &
      pid=$!
      until grep -q '^wcluster: listening' "$work/out"; do
        kill -0 $pid 2>/dev/null || return 1
        sleep 0.01
      done
      ;;
    wasmtime-serve)
      local p3=()
      [[ $2 == *-p3.wasm ]] && p3=(-Sp3)
      taskset -c 1 "$tools/bin/wasmtime" serve -S cli "${p3[@]}" --addr "127.0.0.1:$port" "$2" >"$work/out" 2>"$work/err" &
      pid=$!
      for _ in $(seq 2000); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
      ;;
  esac
  url="http://127.0.0.1:$port/"
}

rows=()
printf '%-15s %10s %10s %-15s %10s %10s\n' handler bytes compile_ms server c1_rps c32_rps
for f in rust-hello.wasm rust-json.wasm javascript.wasm python.wasm python-p3.wasm c.wasm assemblyscript.wasm wat.wat; do
  name=${f%.*}
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && continue
  size=$(stat -c %s "target/examples/$f")
  compile=
  for server in wcluster wcluster-reuse wasmtime-serve; do
    if [ "$server" = wasmtime-serve ] && ! head -c 8 "target/examples/$f" | od -An -tx1 | grep -q '0d 00 01 00'; then
      continue # a core module (CGI) or text: not something wasmtime serve runs
    fi
    if ! start "$server" "target/examples/$f"; then
      printf '%-15s %10s %10s %-15s %10s %10s\n' "$name" "$size" "$compile" "$server" refused refused
      rows+=("{\"handler\":\"$name\",\"server\":\"$server\",\"refused\":true}")
      wait "$pid" 2>/dev/null || true
      continue
    fi
    [ -z "$compile" ] && compile=$(grep -o 'ms=[0-9]*' "$work/err" | head -1 | cut -d= -f2)
    c1=$(rps "$url" 1)
    c32=$(rps "$url" 32)
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    printf '%-15s %10s %10s %-15s %10s %10s\n' "$name" "$size" "$compile" "$server" "$c1" "$c32"
    rows+=("{\"handler\":\"$name\",\"bytes\":$size,\"compile_ms\":${compile:-null},\"server\":\"$server\",\"c1_rps\":$c1,\"c32_rps\":$c32}")
  done
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
file=bench/results/languages-$(date +%Y%m%d-%H%M%S).json
(IFS=,; echo "{\"date\":\"$(date -Iseconds)\",\"cpu\":\"$cpu\",\"setup\":\"1 worker on core 1, wrk -t1 on core 0, keep-alive GET, ${DURATION}s per row\",\"results\":[${rows[*]}]}") >"$file"
echo "written: $file"
