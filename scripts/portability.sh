#!/usr/bin/env bash
# Portability, both ways:
#  - handlers built with wcluster's guest SDK run unchanged under
#    `wasmtime serve -S cli` (checked here: examples/hello and rust-json;
#    examples/visits, which uses wasi:config and wasi:keyvalue, under
#    `-S cli,config,keyvalue` with a config value; examples/p3-hello and
#    examples/python-p3, WASI 0.3 components, under `-Sp3 -Scli`);
#  - handlers written against the plain `wasi` crate run unchanged on
#    wcluster (tests/handlers/echo is one; the end-to-end tests serve it).
# Installs the wasmtime CLI from crates.io at the version wcluster embeds
# (cached under target/tools; the first install takes a while).
set -euo pipefail
cd "$(dirname "$0")/.."
version=50.0.1
tools=target/tools
if [ "$("$tools/bin/wasmtime" --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  cargo install -q --locked wasmtime-cli --version "$version" --root "$tools"
fi
scripts/setup.sh
cargo build -q --release --target wasm32-wasip2 -p hello -p rust-json -p visits -p p3-hello
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
check() { # file path method expected [wasmtime serve options]
  "$tools/bin/wasmtime" serve -S cli "${@:5}" --addr "127.0.0.1:$port" "$1" >/dev/null 2>&1 &
  local pid=$!
  trap 'kill $pid 2>/dev/null' RETURN
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
  local got
  if [ "$3" = POST ]; then
    got=$(curl -s -d '{"name":"wasmtime"}' "http://127.0.0.1:$port$2")
  else
    got=$(curl -s "http://127.0.0.1:$port$2")
  fi
  if [[ "$got" == *"$4"* ]]; then
    echo "ok: wasmtime serve $(basename "$1") $3 $2 -> $got"
  else
    echo "FAILED: wasmtime serve $(basename "$1") $3 $2 -> $got (wanted $4)"; return 1
  fi
}
check target/wasm32-wasip2/release/hello.wasm "/?name=wasmtime" GET "Hello, wasmtime!"
check target/wasm32-wasip2/release/rust_json.wasm /greet POST '"message":"Hello, wasmtime!"'
check target/wasm32-wasip2/release/visits.wasm / GET "hi from wasmtime, visitor #1" \
  -S config -S config-var=greeting="hi from wasmtime" -S keyvalue
check target/wasm32-wasip2/release/p3_hello.wasm "/?name=wasmtime" GET "Hello, wasmtime, from WASI 0.3!" -Sp3
scripts/python-example.sh --p3 target/python-p3.wasm
check target/python-p3.wasm /greet POST "Hello from Python on WASI 0.3! path=/greet body=19" -Sp3
