#!/usr/bin/env bash
# Builds wcluster and the handlers of examples/app, then serves its manifest
# (pass other `wcluster serve` flags as arguments; they override its [server]).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p wcluster
cargo build --release --target wasm32-wasip2 -p hello -p rust-json -p visits -p p3-hello
exec target/release/wcluster serve examples/app/app.toml "$@"
