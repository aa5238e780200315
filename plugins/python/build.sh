#!/usr/bin/env bash
# Builds this Python buildpack into a component with componentize-py (PyPI), which bundles
# CPython and the app module, against the buildpack contract `dea buildpack wit` writes.
# Usage: build.sh OUTPUT.wasm   (DEA names the dea binary; COMPONENTIZE_PY the tool)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/buildpack.wasm}")"
dea="${DEA:-dea}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$dea" buildpack wit --out "$work/wit" >/dev/null
cd "$here"
"${COMPONENTIZE_PY:-componentize-py}" --quiet -d "$work/wit" -w dea:buildpack/buildpack@0.1.0 \
  componentize --python-path "$here" app -o "$out"
