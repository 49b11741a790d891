#!/usr/bin/env bash
# Installs what building wcluster and its handlers needs beyond Rust itself.
# Idempotent; the other scripts call it.
set -euo pipefail

# The Rust that rust-toolchain.toml pins (wasmtime needs a newer one than
# a stock machine may have), with its components and targets. rustup does
# not install it on first use where RUSTUP_AUTO_INSTALL=0, so every cargo
# call in this project would fail before this.
root="$(cd "$(dirname "$0")/.." && pwd)"
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$root/rust-toolchain.toml")
if ! rustup toolchain list | grep -q "^$channel-"; then
  echo "setup: installing Rust $channel (rust-toolchain.toml)" >&2
  rustup toolchain install "$channel" --profile minimal --component clippy,rustfmt \
    --target wasm32-wasip1,wasm32-wasip2,x86_64-unknown-linux-musl
fi
for target in wasm32-wasip2 wasm32-wasip1; do
  if ! rustup +"$channel" target list --installed | grep -qx "$target"; then
    echo "setup: adding rustup target $target" >&2
    rustup +"$channel" target add "$target"
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
