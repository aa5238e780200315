#!/bin/sh
# A shell-script app for the C buildpack: `dea stage examples/shell-app`.
cd "$(dirname "$0")/public" && exec python3 -m http.server "${PORT:-8080}" --bind 0.0.0.0
