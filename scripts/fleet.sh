#!/usr/bin/env bash
# A fleet of wcluster nodes on one machine: each node in a network namespace
# of its own (its own address, as on separate machines), joined by a bridge,
# behind HAProxy on 127.0.0.1. The end-to-end test host/tests/e2e/fleet.rs
# uses the net-up, net-down and haproxy-config steps; `demo` runs them all.
#
#   scripts/fleet.sh demo [N]                 N nodes (3) serving the hello
#                                             handler on http://127.0.0.1:8000
#   scripts/fleet.sh net-up NAME N PREFIX     namespaces NAME-1..N at
#                                             PREFIX.2..N+1, bridge at PREFIX.1
#   scripts/fleet.sh net-down NAME            removes them (idempotent)
#   scripts/fleet.sh haproxy-config NAME N PREFIX LISTEN STATS_SOCKET
#
# NAME must be short (at most 8 characters): interface names are capped at 15.
# Traffic only ever goes to addresses inside the namespaces this makes.
set -euo pipefail

NODE_PORT=8080
ADMIN_PORT=9090

net_up() {
  local name=$1 n=$2 prefix=$3
  ip link add "$name-br" type bridge
  ip addr add "$prefix.1/24" dev "$name-br"
  ip link set "$name-br" up
  for i in $(seq 1 "$n"); do
    ip netns add "$name-$i"
    ip link add "${name}v$i" type veth peer name "${name}p$i"
    ip link set "${name}p$i" netns "$name-$i"
    ip -n "$name-$i" link set "${name}p$i" name eth0
    ip -n "$name-$i" addr add "$prefix.$((i + 1))/24" dev eth0
    ip -n "$name-$i" link set eth0 up
    ip -n "$name-$i" link set lo up
    ip link set "${name}v$i" master "$name-br" up
  done
}

net_down() {
  local name=$1 ns
  # Deleting a namespace deletes its end of the veth pair, and so the pair.
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$name-[0-9]+$" || true); do
    ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns"
  done
  ip link del "$name-br" 2>/dev/null || true
}

# Health checks read /readyz, which turns 503 the moment a node gets SIGTERM
# (and stays so for --drain-delay while the node still serves): with
# inter 200ms and fall 2, HAProxy stops sending it new requests in about
# 0.4 s. retry-on + redispatch resend a request whose connection failed or
# was closed before any response (a node killed, or one closing an idle
# keep-alive connection as it drains) to another node; HAProxy keeps the
# request (body too, while it fits a buffer) until a response starts.
haproxy_config() {
  local name=$1 n=$2 prefix=$3 listen=$4 stats=$5
  cat <<EOF
global
    maxconn 4096
    stats socket $stats mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout queue 10s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    http-reuse safe

frontend fleet
    bind $listen
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server check port $ADMIN_PORT inter 200ms fastinter 100ms downinter 200ms fall 2 rise 2
EOF
  for i in $(seq 1 "$n"); do
    echo "    server ${name}-$i $prefix.$((i + 1)):$NODE_PORT"
  done
}

demo() {
  local n=${1:-3} name=wcfdemo prefix=10.213.250 here dir pids=()
  here=$(cd "$(dirname "$0")/.." && pwd)
  command -v haproxy >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  }
  (cd "$here" && cargo build -p wcluster && cargo build --release --target wasm32-wasip2 -p hello)
  dir=$(mktemp -d)
  trap 'kill "${pids[@]}" 2>/dev/null || true; net_down "$name"; rm -rf "$dir"' EXIT
  net_down "$name"
  net_up "$name" "$n" "$prefix"
  for i in $(seq 1 "$n"); do
    # One handler file per node, as each pod has its own ConfigMap volume.
    mkdir -p "$dir/node-$i"
    cp "$here/target/wasm32-wasip2/release/hello.wasm" "$dir/node-$i/handler.wasm"
    ip netns exec "$name-$i" "$here/target/debug/wcluster" serve "$dir/node-$i/handler.wasm" \
      --addr "0.0.0.0:$NODE_PORT" --admin "0.0.0.0:$ADMIN_PORT" --workers 1 \
      --drain-delay 1s --cache-dir "$dir/cache" --control "$dir/node-$i/control.sock" &
    pids+=($!)
  done
  haproxy_config "$name" "$n" "$prefix" 127.0.0.1:8000 "$dir/haproxy.sock" >"$dir/haproxy.cfg"
  echo "fleet: $n nodes behind http://127.0.0.1:8000/ (handlers in $dir/node-*/; Ctrl-C stops)" >&2
  haproxy -db -f "$dir/haproxy.cfg"
}

cmd=${1:-}
shift || true
case "$cmd" in
  net-up) net_up "$@" ;;
  net-down) net_down "$@" ;;
  haproxy-config) haproxy_config "$@" ;;
  demo) demo "$@" ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
