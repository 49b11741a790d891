#!/usr/bin/env bash
# Fuzzes the parsing wcluster writes itself, for a bounded time per target
# (not part of CI): the primary <-> worker message decoder and the CGI
# response head. Installs cargo-fuzz (crates.io) into target/tools.
# libFuzzer needs nightly-only flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them, as it is the only one this project can fetch.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      # default 60
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
tools=$PWD/target/tools
[ -x "$tools/bin/cargo-fuzz" ] || cargo install -q --locked cargo-fuzz --root "$tools"
export RUSTC_BOOTSTRAP=1
cd fuzz
for target in ipc_decode cgi_head; do
  echo "fuzz: $target for ${seconds}s" >&2
  "$tools/bin/cargo-fuzz" run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 |
    grep -E '^(#[0-9]+.*(DONE|pulse)|Done|==[0-9]+==|SUMMARY|artifact_prefix)' || true
  # cargo-fuzz exits non-zero when a crash was found; re-check to report it.
  if ls artifacts/"$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $target found crashes: fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzz: no crashes" >&2
