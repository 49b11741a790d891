#!/usr/bin/env bash
# wcluster against its peers, in ONE run on this machine, same load for all:
#   wcluster            the Rust hello component (echo component for POST)
#   wcluster-reuse      the same with --reuse-instances 1000 (opt-in reuse)
#   wasmtime-serve      `wasmtime serve -S cli` on the same files (defaults)
#   wasmtime-pooling    the same with its pooling allocator
#   node-cluster        Node.js cluster + Express, one worker per core
#   native-hyper        hyper hello/echo: the ceiling for the HTTP layer
# WASI 0.3 rows (not run by default; name them in SERVERS), all serving
# examples/p3-hello (a wasi:http/service@0.3.0 component), GET scenarios only:
#   wcluster-p3         wcluster's default: reused instances (64-128
#                       requests each, one request at a time)
#   wcluster-p3-fresh   --reuse-instances 0: a fresh instance per request
#   wcluster-p3-c16     the default with --max-instance-concurrency 16
#                       (wasmtime serve's model: 16 at once per instance)
#   wasmtime-serve-p3   `wasmtime serve -Sp3 -Scli` (its defaults: an
#                       instance serves up to 128 requests, 16 at once)
#   SERVERS="wcluster-p3 wcluster-p3-fresh wcluster-p3-c16 wasmtime-serve-p3" SCENARIOS="keepalive close" bench/run.sh
# Application manifests (not run by default): the cost of the routing table,
#   wcluster-app        hello at `/...` as the only route of a manifest
#   wcluster-app50      the same hello with 50 other routes (exact, prefix,
#                       host) to a second handler in the manifest
#   SERVERS="wcluster wcluster-app wcluster-app50" SCENARIOS="keepalive close" bench/run.sh
# Scenarios: keep-alive GET, one request per connection (Connection: close,
# which exercises wcluster's hand-off), POST echo of 64 KiB, and `overload`:
# keep-alive GET from OVERLOAD_CONNS (1000) connections, far past the
# defaults, where good/s (responses that were 200) is what counts.
# `scraped` (not run by default): wcluster's keep-alive GET while its
# /metrics is scraped every 100 ms; its ratio to `keepalive` is the cost.
# `tls-keepalive` and `tls-close` (not run by default): the same two GET
# scenarios over HTTPS (--tls-cert; wrk speaks HTTP/1.1 over TLS), with a
# self-signed ECDSA P-256 pair made by openssl: wcluster (and
# wcluster-reuse) against native hyper + rustls (native-hello CERT KEY);
# the other servers have no row there.
#   SCENARIOS="keepalive overload" bench/run.sh       # only these scenarios
#
# CPU split: the server gets core 1 (taskset -c 1, so every server runs one
# worker), wrk gets core 0. Same connections and duration for every server.
#
#   bench/run.sh                 # DURATION=8 CONNS=32 by default
#   SERVERS="wcluster native-hyper" bench/run.sh      # only these rows
#   BASELINE=/path/to/old/wcluster bench/run.sh        # adds a wcluster-baseline
#       row (another build, e.g. the commit before a change) for before/after;
#       BASELINE2=/path adds wcluster-baseline2 (a second, older build). With
#       BASELINE, the rows wcluster-baseline-p3 (that build's defaults on
#       p3-hello) and wcluster-baseline-p3-reuse (--reuse-instances 128) can
#       be named in SERVERS too.
# Prints a table (with each peer's ratio to wcluster) and writes
# bench/results/run-*.json with the CPU model and date.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
OVERLOAD_CONNS=${OVERLOAD_CONNS:-1000}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
WASMTIME_VERSION=50.0.1
tools=target/tools
work=target/bench-run
mkdir -p "$work" bench/results

# --- install what it needs (cached after the first run) ---
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
tls_wanted() { [[ " ${SCENARIOS:-} " == *" tls-"* ]]; }
tls_wanted && { command -v openssl >/dev/null || need_apt+=(openssl); }
servers=(${SERVERS:-wcluster wcluster-reuse wasmtime-serve wasmtime-pooling node-cluster native-hyper})
[ -n "${BASELINE2:-}" ] && servers=(wcluster-baseline2 "${servers[@]}")
[ -n "${BASELINE:-}" ] && servers=(wcluster-baseline "${servers[@]}")
wants() { [[ " ${servers[*]} " == *" $1"* ]]; }
wants node-cluster && { command -v node >/dev/null || need_apt+=(nodejs npm); }
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if wants wasmtime && [ "$("$tools/bin/wasmtime" --version 2>/dev/null | awk '{print $2}')" != "$WASMTIME_VERSION" ]; then
  echo "bench: installing wasmtime-cli $WASMTIME_VERSION from crates.io (once; takes a while)" >&2
  cargo install -q --locked wasmtime-cli --version "$WASMTIME_VERSION" --root "$tools"
fi
if wants node-cluster && [ ! -d bench/node/node_modules/express ]; then
  (cd bench/node && npm install --silent --no-audit --no-fund --no-package-lock)
fi
scripts/setup.sh
cargo build --release -q -p wcluster -p native-hello
cargo build --release -q --target wasm32-wasip2 -p hello -p echo -p p3-hello
hello=target/wasm32-wasip2/release/hello.wasm
p3_hello=target/wasm32-wasip2/release/p3_hello.wasm
echo_wasm=target/wasm32-wasip2/release/echo.wasm
if tls_wanted; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$work/tls-key.pem" -out "$work/tls-cert.pem" 2>/dev/null
fi
# The manifests of the -app rows: hello alone, and with 50 other routes.
app_manifest() { # file extra-routes handler
  {
    printf 'spin_manifest_version = 2\n[[trigger.http]]\nroute = "/..."\ncomponent = "hello"\n'
    for i in $(seq 1 "$2"); do
      case $((i % 3)) in
        0) printf '[[trigger.http]]\nroute = "/r%d/..."\ncomponent = "other"\n' "$i" ;;
        1) printf '[[trigger.http]]\nroute = "/exact/%d"\ncomponent = "other"\n' "$i" ;;
        2) printf '[[trigger.http]]\nroute = "/h/..."\nhost = "h%d.example"\ncomponent = "other"\n' "$i" ;;
      esac
    done
    printf '[component.hello]\nsource = "%s"\n' "$(realpath "$3")"
    if [ "$2" -gt 0 ]; then printf '[component.other]\nsource = "%s"\n' "$(realpath "$echo_wasm")"; fi
  } >"$1"
}
printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' >"$work/post.lua"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url -> ms until the first 200
  local start=$(date +%s%3N)
  until [ "$(curl -sk -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 200 ]; do
    sleep 0.01
    [ $(($(date +%s%3N) - start)) -lt 120000 ] || { echo "server at $1 never answered" >&2; return 1; }
  done
  echo $(($(date +%s%3N) - start))
}

start_server() { # name port kind(get|post|tls|scraped) -> pid in $server_pid
  local name=$1 port=$2 kind=$3 file=$hello pair=() tls=()
  # `scraped`: wcluster with its admin endpoint, for the scraper below.
  [ "$kind" = scraped ] && tls=(--admin "127.0.0.1:$admin_port")
  [ "$kind" = post ] && file=$echo_wasm
  [[ $name == *-p3* ]] && file=$p3_hello
  if [[ $name == wcluster-app* ]]; then
    local routes=0
    [ "$name" = wcluster-app50 ] && routes=50
    app_manifest "$work/$name.toml" "$routes" "$file"
    file=$work/$name.toml
  fi
  if [ "$kind" = tls ]; then
    pair=("$work/tls-cert.pem" "$work/tls-key.pem")
    tls=(--tls-cert "${pair[0]}" --tls-key "${pair[1]}")
  fi
  case $name in
    wcluster) taskset -c "$SERVER_CPU" target/release/wcluster serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache" --control "$work/ctl.sock" --no-watch "${tls[@]}" >"$work/$name.log" 2>&1 & ;;
    wcluster-baseline) taskset -c "$SERVER_CPU" "$BASELINE" serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache-baseline" --control "$work/ctl.sock" --no-watch >"$work/$name.log" 2>&1 & ;;
    wcluster-baseline2) taskset -c "$SERVER_CPU" "$BASELINE2" serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache-baseline2" --control "$work/ctl.sock" --no-watch >"$work/$name.log" 2>&1 & ;;
    wcluster-baseline-p3) taskset -c "$SERVER_CPU" "$BASELINE" serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache-baseline" --control "$work/ctl.sock" --no-watch >"$work/$name.log" 2>&1 & ;;
    wcluster-baseline-p3-reuse) taskset -c "$SERVER_CPU" "$BASELINE" serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache-baseline" --control "$work/ctl.sock" --no-watch --reuse-instances 128 >"$work/$name.log" 2>&1 & ;;
    wcluster-app | wcluster-app50) taskset -c "$SERVER_CPU" target/release/wcluster serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache" --control "$work/ctl.sock" --no-watch >"$work/$name.log" 2>&1 & ;;
    wcluster-reuse) taskset -c "$SERVER_CPU" target/release/wcluster serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache" --control "$work/ctl.sock" --no-watch --reuse-instances 1000 "${tls[@]}" >"$work/$name.log" 2>&1 & ;;
    wcluster-p3) taskset -c "$SERVER_CPU" target/release/wcluster serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache" --control "$work/ctl.sock" --no-watch >"$work/$name.log" 2>&1 & ;;
    wcluster-p3-fresh) taskset -c "$SERVER_CPU" target/release/wcluster serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache" --control "$work/ctl.sock" --no-watch --reuse-instances 0 >"$work/$name.log" 2>&1 & ;;
    wcluster-p3-c16) taskset -c "$SERVER_CPU" target/release/wcluster serve "$file" --addr "127.0.0.1:$port" \
        --cache-dir "$work/cache" --control "$work/ctl.sock" --no-watch \
        --max-instance-concurrency 16 >"$work/$name.log" 2>&1 & ;;
    wasmtime-serve-p3) taskset -c "$SERVER_CPU" "$tools/bin/wasmtime" serve -Sp3 -Scli --addr "127.0.0.1:$port" "$file" >"$work/$name.log" 2>&1 & ;;
    wasmtime-serve) taskset -c "$SERVER_CPU" "$tools/bin/wasmtime" serve -S cli --addr "127.0.0.1:$port" "$file" >"$work/$name.log" 2>&1 & ;;
    wasmtime-pooling) taskset -c "$SERVER_CPU" "$tools/bin/wasmtime" serve -S cli -O pooling-allocator=y --addr "127.0.0.1:$port" "$file" >"$work/$name.log" 2>&1 & ;;
    node-cluster) taskset -c "$SERVER_CPU" node bench/node/server.js "$port" >"$work/$name.log" 2>&1 & ;;
    native-hyper) taskset -c "$SERVER_CPU" target/release/native-hello "127.0.0.1:$port" \
        "${pair[@]}" >"$work/$name.log" 2>&1 & ;;
  esac
  server_pid=$!
}

stop_server() {
  pkill -TERM -P "$server_pid" 2>/dev/null || true
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}

rss_kb() { # total RSS of a process tree
  local pids="$1 $(pgrep -P "$1" | tr '\n' ' ')" total=0
  for p in $pids; do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo $total
}

run_wrk() { # url scenario -> "rps p50 p99 errors"
  local conns=$CONNS
  [ "$2" = overload ] && conns=$OVERLOAD_CONNS
  local args=(-t1 -c"$conns" -d"${DURATION}s" --latency)
  case $2 in
    close | tls-close) args+=(-H "Connection: close") ;;
    post) args+=(-s "$work/post.lua") ;;
  esac
  taskset -c "$CLIENT_CPU" wrk "${args[@]}" "$1" >"$work/wrk.out" 2>&1 || true
  awk '
    /Requests\/sec/ {rps=$2}
    /^ +50%/ {p50=$2}
    /^ +99%/ {p99=$2}
    /Non-2xx/ {err+=$NF}
    /Socket errors/ {gsub(",", ""); err+=$4+$6+$8+$10}
    END {printf "%s %s %s %d\n", rps, p50, p99, err}
  ' "$work/wrk.out"
}

scenarios=(${SCENARIOS:-keepalive close post})
declare -A result cold rss_idle rss_load
for s in "${servers[@]}"; do
  for sc in "${scenarios[@]}"; do
    kind=get; [ "$sc" = post ] && kind=post
    # The 0.3 component has no echo route and no TLS rows.
    [[ $s == *-p3* && ($sc == post || $sc == tls-* || $sc == scraped) ]] && continue
    scheme=http
    scraper=
    if [ "$sc" = scraped ]; then
      # keep-alive GET while /metrics is scraped every 100 ms (what a
      # Prometheus with a short interval does): compare with `keepalive`.
      [ "$s" = wcluster ] || continue
      kind=scraped admin_port=$(free_port)
    fi
    if [[ $sc == tls-* ]]; then
      # Only wcluster and native hyper are run with TLS here.
      [[ $s == wcluster || $s == wcluster-reuse || $s == native-hyper ]] || continue
      kind=tls scheme=https
    fi
    port=$(free_port)
    start_server "$s" "$port" "$kind"
    ms=$(wait_http "$scheme://127.0.0.1:$port/")
    if [ "$sc" = keepalive ]; then
      cold[$s]=$ms
      rss_idle[$s]=$(rss_kb "$server_pid")
      (sleep $((DURATION / 2)); rss_kb "$server_pid" >"$work/rss") &
      sampler=$!
    fi
    if [ "$sc" = scraped ]; then
      # One curl, one keep-alive connection, 10 requests a second (a
      # process per scrape would steal wrk's core and skew the result).
      urls=(); for _ in $(seq $((DURATION * 10))); do urls+=("http://127.0.0.1:$admin_port/metrics"); done
      taskset -c "$CLIENT_CPU" curl -s --rate 10/s "${urls[@]}" >/dev/null &
      scraper=$!
    fi
    result[$s,$sc]=$(run_wrk "$scheme://127.0.0.1:$port/" "$sc")
    [ -n "$scraper" ] && wait "$scraper"
    [ "$sc" = keepalive ] && { wait "$sampler"; rss_load[$s]=$(cat "$work/rss"); }
    stop_server
    echo "bench: $s $sc: ${result[$s,$sc]}" >&2
  done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo "(the ratio column: against wcluster; for -p3 rows, against wasmtime-serve-p3)"
printf '\n%-22s %-13s %12s %12s %10s %10s %7s %9s\n' server scenario req/s good/s p50 p99 errors "ratio"
json_rows=()
for sc in "${scenarios[@]}"; do
  read -r base _ <<<"${result[wcluster,$sc]:-0}"
  for s in "${servers[@]}"; do
    [ -n "${result[$s,$sc]:-}" ] || continue # a server not run in this scenario (TLS)
    read -r rps p50 p99 err <<<"${result[$s,$sc]}"
    # Responses per second that were not errors (non-2xx, socket errors).
    good=$(awk -v r="$rps" -v e="$err" -v d="$DURATION" 'BEGIN { g = r - e / d; printf "%.2f", g < 0 ? 0 : g }')
    # WASI 0.3 rows are compared with `wasmtime serve -Sp3` on the same component.
    b=$base
    [[ $s == *-p3* ]] && read -r b _ <<<"${result[wasmtime-serve-p3,$sc]:-0}"
    printf '%-22s %-13s %12s %12s %10s %10s %7s %9s\n' "$s" "$sc" "$rps" "$good" "$p50" "$p99" "$err" "$(ratio "$rps" "$b")"
    json_rows+=("{\"server\":\"$s\",\"scenario\":\"$sc\",\"rps\":$rps,\"good_rps\":$good,\"p50\":\"$p50\",\"p99\":\"$p99\",\"errors\":$err,\"ratio_to_wcluster\":$(ratio "$rps" "$b")}")
  done
done
printf '\n%-22s %14s %14s %16s\n' server cold_start_ms rss_idle_kb rss_keepalive_kb
extra=()
for s in "${servers[@]}"; do
  # Measured in the keepalive scenario only (null when it was not run).
  printf '%-22s %14s %14s %16s\n' "$s" "${cold[$s]:--}" "${rss_idle[$s]:--}" "${rss_load[$s]:--}"
  extra+=("{\"server\":\"$s\",\"cold_start_ms\":${cold[$s]:-null},\"rss_idle_kb\":${rss_idle[$s]:-null},\"rss_keepalive_kb\":${rss_load[$s]:-null}}")
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
file=bench/results/run-$(date +%Y%m%d-%H%M%S).json
(IFS=,; echo "{\"date\":\"$(date -Iseconds)\",\"cpu\":\"$cpu\",\"setup\":\"server taskset -c $SERVER_CPU, wrk -t1 -c$CONNS -d${DURATION}s taskset -c $CLIENT_CPU\",\"results\":[${json_rows[*]}],\"process\":[${extra[*]}]}") >"$file"
echo "written: $file"
