#!/usr/bin/env bash
# Validates deploy/kubernetes/ against the Kubernetes API schemas, offline
# and strict (unknown fields are errors), with kubernetes-validate from PyPI
# in a venv under target/. The kustomization is kustomize's, not an API kind.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-k8s
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.37.0 \
  deploy/kubernetes/deployment.yaml deploy/kubernetes/service.yaml deploy/kubernetes/pdb.yaml
