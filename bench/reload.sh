#!/usr/bin/env bash
# Measures redeploys: time from writing a new handler file to the line
# `wcluster: rolled to ...` (every worker on the new version), for the Rust
# hello component (~3 MB) and a Python component (~18 MB, componentize-py),
# first with a compile (cache miss) and then from the cache; and the
# readiness time of a restart with an unchanged module (compiles nothing).
#
#   bench/reload.sh            # prints a table and writes bench/results/reload-*.json
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p wcluster -q
cargo build --release --target wasm32-wasip2 -p hello -q
work=target/bench-reload
rm -rf "$work" && mkdir -p "$work" bench/results
scripts/python-example.sh "$work/python.wasm"

# A second version of the same code: the file with a custom section
# appended, so its hash (and version id) differs.
variant() {
  cp "$1" "$2"
  printf '\000\012\005bench\001\002\003\004' >>"$2"
}

now_ms() { date +%s%3N; }

wait_rolls() { # file n
  until [ "$(grep -c '^wcluster: rolled to' "$1")" -ge "$2" ]; do sleep 0.005; done
}

results=()
for name in hello python; do
  case $name in
    hello) src=target/wasm32-wasip2/release/hello.wasm ;;
    python) src=$work/python.wasm ;;
  esac
  size=$(stat -c %s "$src")
  cp "$src" "$work/a.wasm"
  variant "$src" "$work/b.wasm"
  cp "$work/a.wasm" "$work/$name.live.wasm"
  cache=$work/cache-$name
  out=$work/$name.out
  target/release/wcluster serve "$work/$name.live.wasm" --addr 127.0.0.1:0 --workers 2 \
    --cache-dir "$cache" --control "$work/$name.sock" >"$out" 2>"$work/$name.err" &
  pid=$!
  until grep -q '^wcluster: listening' "$out"; do sleep 0.01; done
  times=()
  n=0
  for v in b a b a; do
    n=$((n + 1))
    t0=$(now_ms)
    cp "$work/$v.wasm" "$work/$name.live.wasm.tmp" && mv "$work/$name.live.wasm.tmp" "$work/$name.live.wasm"
    wait_rolls "$out" $n
    times+=($(($(now_ms) - t0)))
  done
  kill -TERM $pid && wait $pid || true
  # Restart with the file unchanged: the artifact comes from the cache.
  t0=$(now_ms)
  target/release/wcluster serve "$work/$name.live.wasm" --addr 127.0.0.1:0 --workers 2 \
    --cache-dir "$cache" --control "$work/$name.sock" >"$out" 2>"$work/$name.err" &
  pid=$!
  until grep -q '^wcluster: listening' "$out"; do sleep 0.005; done
  restart=$(($(now_ms) - t0))
  compiled=$(grep -o 'compiled=[a-z]*' "$work/$name.err" | head -1)
  kill -TERM $pid && wait $pid || true
  printf '%-7s %9s bytes  roll with compile: %5s ms  cached rolls: %s %s %s ms  restart: %s ms (%s)\n' \
    "$name" "$size" "${times[0]}" "${times[1]}" "${times[2]}" "${times[3]}" "$restart" "$compiled"
  results+=("{\"handler\":\"$name\",\"bytes\":$size,\"roll_with_compile_ms\":${times[0]},\"cached_roll_ms\":[${times[1]},${times[2]},${times[3]}],\"restart_ms\":$restart,\"restart\":\"$compiled\"}")
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
file=bench/results/reload-$(date +%Y%m%d-%H%M%S).json
(IFS=,; echo "{\"date\":\"$(date -Iseconds)\",\"cpu\":\"$cpu\",\"note\":\"includes the 200 ms debounce\",\"results\":[${results[*]}]}") >"$file"
echo "written: $file"
