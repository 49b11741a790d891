#!/usr/bin/env bash
# Builds wcluster and the example handler, then serves it on :8080
# (pass other `wcluster serve` flags as arguments, e.g. --addr 127.0.0.1:3000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p wcluster
cargo build --release --target wasm32-wasip2 -p hello
exec target/release/wcluster serve target/wasm32-wasip2/release/hello.wasm "$@"
