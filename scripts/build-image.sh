#!/usr/bin/env bash
# Builds the container image wcluster:VERSION (and wcluster:latest): a static
# musl build of wcluster and the hello handler, compiled here on the host,
# then COPYed onto an empty base by the Containerfile, so building the image
# needs no container registry.
#
# Environment: ENGINE=podman|docker (default: podman if installed),
# IMAGE=name (default: wcluster).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

target=x86_64-unknown-linux-musl
# A target dir of its own: the default one is shared with other builds,
# whose lock this would otherwise wait on (and whose artifacts it would evict).
export CARGO_TARGET_DIR="$root/target/musl"
image=${IMAGE:-wcluster}

if [[ -z ${ENGINE:-} ]]; then
  if command -v podman >/dev/null; then
    ENGINE=podman
  elif command -v docker >/dev/null; then
    ENGINE=docker
  else
    echo "build-image: neither podman nor docker is installed" >&2
    exit 1
  fi
fi

for t in "$target" wasm32-wasip2; do
  if ! rustup target list --installed | grep -qx "$t"; then
    echo "build-image: adding rustup target $t" >&2
    rustup target add "$t"
  fi
done

# C dependencies (mimalloc, ring's assembly, SQLite) must be compiled
# against musl's headers: glibc's would link but misbehave at run time.
if ! command -v musl-gcc >/dev/null; then
  echo "build-image: installing musl-tools (apt)" >&2
  # Another apt-get may hold the lock (the test setup installs packages too).
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq musl-tools >/dev/null
fi
export CC_x86_64_unknown_linux_musl=musl-gcc
if [[ ! -f /etc/ssl/certs/ca-certificates.crt ]]; then
  echo "build-image: installing ca-certificates (apt)" >&2
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq ca-certificates >/dev/null
fi
for tool in file strip; do
  command -v "$tool" >/dev/null || { echo "build-image: needs $tool (apt: file, binutils)" >&2; exit 1; }
done

# Niced: the machine is shared with other builds and tests.
start=$SECONDS
nice -n 10 cargo build --release --target "$target" -p wcluster
nice -n 10 cargo build --release --target wasm32-wasip2 -p hello
echo "build-image: cargo took $((SECONDS - start)) s" >&2

bin=$CARGO_TARGET_DIR/$target/release/wcluster
handler=$CARGO_TARGET_DIR/wasm32-wasip2/release/hello.wasm

# FROM scratch has no libc or loader: anything dynamic would fail to start.
if ! file -b "$bin" | grep -Eq 'static(-pie)? linked'; then
  echo "build-image: $bin is not statically linked: $(file -b "$bin")" >&2
  exit 1
fi
# ldd fails on a static binary ("not a dynamic executable"): its words count, not its status.
deps=$(ldd "$bin" 2>&1 || true)
if [[ $deps == *'=>'* ]]; then
  echo "build-image: ldd finds shared libraries in $bin:" >&2
  echo "$deps" >&2
  exit 1
fi
version=$("$bin" --version | awk '{print $2}')

# The context holds only what the image needs: the source tree stays out,
# so no ignore file is needed and the context is sent in a moment.
ctx=$root/target/image/context
rm -rf "$ctx"
# Modes set explicitly, not left to the caller's umask.
# /run and /home here, root's: else the --chown COPYs of their subdirectories
# would create them owned by 65532.
install -d -m 0755 "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/handlers" "$ctx/rootfs/etc/ssl/certs" \
  "$ctx/rootfs/run" "$ctx/rootfs/home"
install -d -m 1777 "$ctx/rootfs/tmp"
install -d -m 0755 "$ctx/writable/cache" "$ctx/writable/run/wcluster" "$ctx/writable/home/wcluster"
# Debug info off (4x smaller); symbols stay, so panics' backtraces name functions.
install -m 0755 "$bin" "$ctx/rootfs/usr/local/bin/wcluster"
strip --strip-debug "$ctx/rootfs/usr/local/bin/wcluster"
install -m 0644 "$handler" "$ctx/rootfs/handlers/handler.wasm"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
# A name for uid 65532, for tools that look it up (ps, podman top).
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'wcluster:x:65532:65532:wcluster:/home/wcluster:/sbin/nologin' >"$ctx/rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'wcluster:x:65532:' >"$ctx/rootfs/etc/group"
chmod 0644 "$ctx/rootfs/etc/passwd" "$ctx/rootfs/etc/group"

old_id=$("$ENGINE" image inspect -f '{{.Id}}' "$image:$version" 2>/dev/null || true)
"$ENGINE" build -f "$root/Containerfile" -t "$image:$version" -t "$image:latest" "$ctx"
# Each rebuild would otherwise leave the image it replaces behind, untagged.
new_id=$("$ENGINE" image inspect -f '{{.Id}}' "$image:$version")
if [[ -n $old_id && $old_id != "$new_id" ]]; then
  "$ENGINE" rmi "$old_id" >/dev/null 2>&1 || true
fi

echo "build-image: built $image:$version with $ENGINE"
"$ENGINE" images "$image:$version"
