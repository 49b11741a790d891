#!/usr/bin/env bash
# Installs what building wcluster and its handlers needs beyond Rust itself.
# Idempotent; the other scripts call it.
set -euo pipefail

for target in wasm32-wasip2 wasm32-wasip1; do
  if ! rustup target list --installed | grep -qx "$target"; then
    echo "setup: adding rustup target $target" >&2
    rustup target add "$target"
  fi
done

# curl: the HTTPS end-to-end tests check HTTP/1.1 and HTTP/2 with it.
if ! command -v curl >/dev/null; then
  echo "setup: installing curl (apt)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi

# Tools the end-to-end tests run for real: promtool (Debian's prometheus)
# checks the /metrics output; prlimit and setpriv come with util-linux.
if ! command -v promtool >/dev/null; then
  echo "setup: installing promtool (apt: prometheus)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

# HAProxy: the fleet test (host/tests/e2e/fleet.rs) puts three nodes behind
# a real one; `ip` (iproute2) makes their network namespaces; redis-server
# backs the shared key-value tests (host/tests/e2e/keyvalue.rs).
for pkg in haproxy:haproxy ip:iproute2 redis-server:redis-server; do
  if ! command -v "${pkg%%:*}" >/dev/null; then
    echo "setup: installing ${pkg#*:} (apt)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkg#*:}" >/dev/null
  fi
done
