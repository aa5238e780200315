#!/usr/bin/env bash
# The router's cost with wrk: the same 4 KiB file from nginx on 127.0.0.1, straight and
# through `dea router` (a release build of platform/examples/router.rs, its route registered
# over a real nats-server as an agent registers it), wrk -t2 -c32 -d5s against each,
# alternately, ROUNDS times (default 3). Prints req/s, latency and the ratio router/direct
# per round (goal >= 0.8). Needs nginx (Debian nginx-light), wrk and nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-5s}
rounds=${ROUNDS:-3}
target=${CARGO_TARGET_DIR:-target}
for tool in nginx wrk nats-server; do
    command -v "$tool" >/dev/null || { echo "bench/router.sh needs $tool" >&2; exit 1; }
done
cargo build --release --quiet -p dea-platform --example router
tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
nginx_port=$((20000 + RANDOM % 10000))
nats_port=$((30000 + RANDOM % 10000))
head -c 4096 /dev/urandom > "$tmp/file"
cat > "$tmp/nginx.conf" <<CONF
worker_processes 2;
pid $tmp/nginx.pid;
error_log $tmp/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp;
    uwsgi_temp_path $tmp; scgi_temp_path $tmp;
    server { listen 127.0.0.1:$nginx_port; root $tmp; }
}
CONF
nginx -c "$tmp/nginx.conf"
nats-server -a 127.0.0.1 -p "$nats_port" >"$tmp/nats.log" 2>&1 &
pids+=("$!")
sleep 0.5
NATS="nats://127.0.0.1:$nats_port" BACKEND="127.0.0.1:$nginx_port" HOST=bench.local \
    "$target/release/examples/router" >"$tmp/router.out" 2>"$tmp/router.log" &
pids+=("$!")
for _ in $(seq 100); do [ -s "$tmp/router.out" ] && break; sleep 0.1; done
router="$(head -n1 "$tmp/router.out")"
run() { # url host
    wrk -t2 -c32 -d"$duration" --latency -H "Host: $2" "$1" |
        awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {print rps, p50, p99}'
}
best_ratio=0 best_direct=0 best_router=0
for round in $(seq 1 "$rounds"); do
    read -r d_rps d_p50 d_p99 <<<"$(run "http://127.0.0.1:$nginx_port/file" bench.local)"
    read -r r_rps r_p50 r_p99 <<<"$(run "http://$router/file" bench.local)"
    ratio=$(awk "BEGIN {printf \"%.2f\", $r_rps/$d_rps}")
    printf 'round %d: direct %8.0f req/s (p50 %s, p99 %s)   router %8.0f req/s (p50 %s, p99 %s)   ratio %s\n' \
        "$round" "$d_rps" "$d_p50" "$d_p99" "$r_rps" "$r_p50" "$r_p99" "$ratio"
    if awk "BEGIN {exit !($ratio > $best_ratio)}"; then
        best_ratio=$ratio best_direct=$d_rps best_router=$r_rps
    fi
done
printf 'bench-result|router, 4 KiB through it (req/s, best round)|%.0f|%.0f nginx direct|%sx|>= 0.8x\n' \
    "$best_router" "$best_direct" "$best_ratio"
