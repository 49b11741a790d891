#!/usr/bin/env bash
# Builds the container image (scripts/build-image.sh) and checks that it
# serves: once as a plain `podman run`, once as the Kubernetes Deployment
# runs it (its args, read-only root, tmpfs volumes, no capabilities). Each
# run: /readyz turns 200, the hello handler answers a real request, every
# process runs as uid 65532, `wcluster status` reaches the control socket,
# and `podman stop` ends it cleanly.
#
# Not part of scripts/test.sh: it needs root, podman and runc, and minutes.
# Usage: scripts/test-container.sh [--no-build]   (--no-build: test the image as built)
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
case ${1:-} in
  --no-build) build=0 ;;
  "") ;;
  *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac

# podman 4.3 from Debian runs containers with runc here (see containers.conf below).
for pkg in podman:podman runc:runc curl:curl; do
  if ! command -v "${pkg%%:*}" >/dev/null; then
    echo "test-container: installing ${pkg#*:} (apt)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkg#*:}" >/dev/null
  fi
done

tmp=$(mktemp -d)
containers=()
results=()
failures=0

finish() {
  local status=$1
  for c in "${containers[@]}"; do
    podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
  done
  rm -rf "$tmp"
  echo
  echo "== test-container summary"
  printf '%s\n' "${results[@]}"
  if ((status != 0 || failures > 0)); then
    ((status != 0 && failures == 0)) && echo "FAIL aborted (exit $status) before the checks finished"
    echo "test-container: FAIL"
    exit $((status != 0 ? status : 1))
  fi
  echo "test-container: PASS"
}
trap 'finish $?' EXIT

pass() { results+=("PASS $1"); echo "PASS $1"; }
fail() { results+=("FAIL $1"); echo "FAIL $1" >&2; failures=$((failures + 1)); }

if ((build)); then
  scripts/build-image.sh
fi
bin=target/musl/x86_64-unknown-linux-musl/release/wcluster
version=$("$bin" --version | awk '{print $2}')
image=wcluster:$version
podman image exists "$image" || { echo "test-container: no image $image (run without --no-build)" >&2; exit 1; }

# Debian's podman 4.3 defaults to crun (not installed) and to ulimits runc
# may not raise here (EPERM on RLIMIT_NPROC); a private config, so the host's
# stays untouched.
cat >"$tmp/containers.conf" <<'EOF'
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
EOF
export CONTAINERS_CONF=$tmp/containers.conf

# The Deployment's container args and image, read from the manifest itself
# so that this test breaks when the two drift apart.
manifest=deploy/kubernetes/deployment.yaml
mapfile -t k8s_args < <(awk '
  /^ *args:/ { on = 1; next }
  on && /^ *#/ { next }
  on && /^ *- / { sub(/^ *- /, ""); gsub(/"/, ""); print; next }
  on { exit }' "$manifest")
k8s_image=$(awk '/^ *image:/ { print $2; exit }' "$manifest")
if [[ $k8s_image == "$image" ]]; then
  pass "manifest image $k8s_image is the tag built"
else
  fail "manifest image $k8s_image is not the tag built ($image)"
fi
if ((${#k8s_args[@]} == 0)); then
  fail "no container args found in $manifest"
fi

# host address of a published container port
host_port() { podman port "$1" "$2/tcp" | head -n1; }

# Runs one container and checks it. $1: label; the rest: `podman run`
# options, then `--`, then arguments for the image (none: its CMD).
check_run() {
  local label=$1
  shift
  local opts=()
  while (($#)) && [[ $1 != -- ]]; do
    opts+=("$1")
    shift
  done
  shift
  local name=wcluster-test-$$-$label
  containers+=("$name")
  echo "== $label: podman run ${opts[*]} $image $*"
  # Loopback only: nothing outside this machine should reach the test.
  if ! podman run -d --name "$name" -p 127.0.0.1::8080 -p 127.0.0.1::9000 "${opts[@]}" "$image" "$@" >/dev/null; then
    fail "$label: container starts"
    return
  fi
  local http admin
  http=$(host_port "$name" 8080)
  admin=$(host_port "$name" 9000)

  local ready=0
  for _ in $(seq 300); do
    if curl -sf -o /dev/null "http://$admin/readyz"; then
      ready=1
      break
    fi
    [[ $(podman inspect -f '{{.State.Running}}' "$name") == true ]] || break
    sleep 0.2
  done
  if ((ready)); then
    pass "$label: /readyz is 200"
  else
    fail "$label: /readyz never turned 200; the log:"
    podman logs "$name" 2>&1 | tail -n 30 >&2
    return
  fi

  local body
  body=$(curl -sS --max-time 10 "http://$http/?name=container" || true)
  if [[ $body == "Hello, container!" ]]; then
    pass "$label: the hello handler answers \"$body\""
  else
    fail "$label: expected \"Hello, container!\", got \"$body\""
  fi

  # Every process (the primary and its workers), seen from the host: this
  # is rootful podman without user namespaces, so host uid = container uid.
  local users
  users=$(podman top "$name" huser hgroup | tail -n +2 | sort -u | tr -s ' ' | tr '\n' ';')
  local pid uid_line
  pid=$(podman inspect -f '{{.State.Pid}}' "$name")
  uid_line=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
  if [[ $users == "65532 65532;" && $uid_line == "65532 65532 65532 65532" ]]; then
    pass "$label: every process runs as 65532:65532"
  else
    fail "$label: processes run as [$users], primary's Uid: $uid_line"
  fi

  if podman exec "$name" /usr/local/bin/wcluster status | grep -q "ready"; then
    pass "$label: wcluster status answers over the control socket"
  else
    fail "$label: wcluster status failed"
  fi

  # PID 1 gets SIGTERM: it must drain and exit 0 well within the timeout.
  local code
  if podman stop -t 40 "$name" >/dev/null; then
    code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
  else
    code="(stop failed)"
  fi
  if [[ $code == 0 ]]; then
    pass "$label: stops cleanly on SIGTERM"
  else
    fail "$label: exit code after podman stop: $code; the log:"
    podman logs "$name" 2>&1 | tail -n 20 >&2
  fi
}

check_run default --

# As deploy/kubernetes/deployment.yaml runs it: the handler on a read-only
# volume (the ConfigMap), /cache and /run/wcluster on writable tmpfs volumes
# (the emptyDirs), nothing else writable, every capability dropped.
# U: runc gives a tmpfs over an existing directory that directory's mode
# (0755) but root's ownership, which 65532 could not write; a kubelet's
# emptyDir is 0777 instead. exec: workers map compiled code from the cache
# (podman's --tmpfs default, noexec, makes every worker fail to load it).
mkdir -p "$tmp/handlers"
cp target/musl/wasm32-wasip2/release/hello.wasm "$tmp/handlers/handler.wasm"
chmod -R a+rX "$tmp/handlers"
check_run kubernetes \
  --read-only --read-only-tmpfs=false \
  --tmpfs /cache:rw,exec,nosuid,nodev,size=1g,U \
  --tmpfs /run/wcluster:rw,noexec,nosuid,nodev,size=1m,U \
  -v "$tmp/handlers:/handlers:ro" \
  --env XDG_RUNTIME_DIR=/run/wcluster \
  --user 65532:65532 --cap-drop=ALL --security-opt=no-new-privileges \
  -- "${k8s_args[@]}"
