#!/usr/bin/env bash
# Builds every example handler from source into OUT (default target/examples):
# rust-hello, rust-json, rust-visits, python, python-p3 (WASI 0.3), javascript, c,
# assemblyscript (.wasm) and wat.
# Installs the toolchains it needs: Debian's clang + wasi-libc (apt), Node
# packages (npm, per example), componentize-py (pip, in a venv under target/).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/examples}
mkdir -p "$out"
out=$(cd "$out" && pwd) # absolute: some steps below run in other directories
rm -f "$out"/*.wasm "$out"/*.wat # nothing stale may pass for built
scripts/setup.sh

say() { echo "build-examples: $*" >&2; }

# Rust
cargo build -q --release --target wasm32-wasip2 -p hello -p rust-json -p visits
cp target/wasm32-wasip2/release/hello.wasm "$out/rust-hello.wasm"
cp target/wasm32-wasip2/release/rust_json.wasm "$out/rust-json.wasm"
cp target/wasm32-wasip2/release/visits.wasm "$out/rust-visits.wasm"

# WAT: no toolchain
cp examples/wat/hello.wat "$out/wat.wat"

# C, with Debian's clang and wasi-libc
have_wasi_clang() {
  command -v clang >/dev/null && command -v wasm-ld >/dev/null &&
    [ -e /usr/lib/wasm32-wasi/libc.a ] &&
    compgen -G '/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a' >/dev/null
}
if ! have_wasi_clang; then
  say "installing clang, lld, wasi-libc (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang lld wasi-libc libclang-rt-dev-wasm32 >/dev/null
fi
clang --target=wasm32-wasi --sysroot=/usr -O2 -o "$out/c.wasm" examples/c/handler.c

# Node-based toolchains. A fresh install whenever package.json changed:
# npm without a lock file can leave a reused node_modules incomplete.
command -v npm >/dev/null || { say "npm is missing: install Node.js (Debian: apt-get install nodejs npm)"; exit 1; }
npm_install() { # dir
  local stamp="$1/node_modules/.wcluster-installed" want
  want=$(sha256sum "$1/package.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "npm install in $1"
    rm -rf "$1/node_modules"
    (cd "$1" && npm install --silent --no-audit --no-fund --no-package-lock)
    echo "$want" >"$stamp"
  fi
}
npm_install examples/assemblyscript
(cd examples/assemblyscript && npm run --silent build -- -o "$out/assemblyscript.wasm")
jswit=target/wit-js
rm -rf "$jswit" && mkdir -p "$jswit/deps"
for f in wit/deps/*.wit; do
  sed 's/@0\.2\.12/@0.2.10/g' "$f" >"$jswit/deps/$(basename "$f")"
done
sed -i '/@since(version = 0.2.12)/,+1d' "$jswit/deps/cli.wit"
printf 'package wcluster:js-handler;\n\nworld handler {\n  include wasi:http/proxy@0.2.10;\n}\n' >"$jswit/world.wit"
npm_install examples/javascript
(cd examples/javascript &&
  npx componentize-js handler.js -w "$OLDPWD/$jswit" -n handler -o "$out/javascript.wasm" >/dev/null)

# Python
scripts/python-example.sh "$out/python.wasm"
scripts/python-example.sh --p3 "$out/python-p3.wasm"
for f in rust-hello.wasm rust-json.wasm rust-visits.wasm wat.wat c.wasm assemblyscript.wasm javascript.wasm python.wasm python-p3.wasm; do
  [ -s "$out/$f" ] || { say "$f was not built"; exit 1; }
done
say "built: $(cd "$out" && ls | tr '\n' ' ')"
