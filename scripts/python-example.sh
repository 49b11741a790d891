#!/usr/bin/env bash
# Builds examples/python (a wasi:http/proxy component, WASI 0.2) or, with
# --p3, examples/python-p3 (a wasi:http/service component, WASI 0.3) with
# componentize-py from PyPI, installed in a venv under target/.
# Usage: scripts/python-example.sh [--p3] OUT.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-componentize
if [ ! -x "$venv/bin/componentize-py" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q componentize-py==0.25.1
fi
if [ "${1:-}" = --p3 ]; then
  "$venv/bin/componentize-py" -d wit/p3 -w wasi:http/service@0.3.0 componentize -p examples/python-p3 app -o "$2" >/dev/null
else
  "$venv/bin/componentize-py" -d wit -w wasi:http/proxy@0.2.12 componentize -p examples/python app -o "$1" >/dev/null
fi
