#!/usr/bin/env bash
# Builds this C buildpack into a component: wit-bindgen's C bindings (from `dea`), clang for
# wasm32-wasi (a WASI preview 1 reactor module, Debian's clang + lld + wasi-libc), then
# `dea buildpack componentize`, which adds the preview 1 adapter.
# Usage: build.sh OUTPUT.wasm   (DEA names the dea binary; CC the compiler, default clang)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/buildpack.wasm}")"
dea="${DEA:-dea}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$dea" buildpack bindings --lang c --out "$work" >/dev/null
"${CC:-clang}" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror \
  -I "$work" -o "$work/core.wasm" \
  "$here/src/shell.c" "$work/buildpack.c" "$work/buildpack_component_type.o"
"$dea" buildpack componentize "$work/core.wasm" -o "$out" >/dev/null
