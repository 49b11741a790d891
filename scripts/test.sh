#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, unit and end-to-end tests.
# The end-to-end tests build their handlers from source (tests/handlers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
scripts/validate-kubernetes.sh
cargo clippy --workspace --all-targets --exclude hello --exclude testkit --exclude echo --exclude versioned --exclude cgi-testkit --exclude streaming --exclude reach --exclude visits --exclude p3kit --exclude p3-hello -- -D warnings
cargo clippy --target wasm32-wasip2 -p wcluster-guest -p hello -p testkit -p echo -p versioned -p streaming -p reach -p visits -p p3kit -p p3-hello -- -D warnings
cargo clippy --target wasm32-wasip1 -p cgi-testkit -- -D warnings
# The README's flag table names exactly the flags `wcluster serve --help` does.
cargo build -q -p wcluster
scripts/check-flags.sh target/debug/wcluster
# One test at a time: several assert on timing (deadline + 1 s, a
# replacement within 1 s) and the load tests would skew each other on 2 cores.
cargo test --doc -p wcluster-guest
cargo test -p wcluster -- --test-threads=1
