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
