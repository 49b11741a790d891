#!/usr/bin/env bash
# Builds examples/python (a wasi:http component) with componentize-py from
# PyPI, installed in a venv under target/. Usage: scripts/python-example.sh OUT.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-componentize
if [ ! -x "$venv/bin/componentize-py" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q componentize-py==0.25.1
fi
"$venv/bin/componentize-py" -d wit -w wasi:http/proxy@0.2.12 componentize -p examples/python app -o "$1" >/dev/null
