#!/usr/bin/env bash
# Directory server throughput against nginx: both serve the same 4 KiB file on 127.0.0.1,
# wrk -t2 -c32 -d5s against each (ours through a signed URL, so every request also checks the
# HMAC, the expiry and the path), then req/s and the ratio ours/nginx (target >= 0.8).
# The two are measured alternately, ROUNDS times (default 3), and the best run of each is
# kept: on a shared machine the best run is the least disturbed one.
#
# Needs nginx (Debian nginx-light) and wrk. Builds the example server in release mode.
# Usage: bench/files.sh [wrk duration, default 5s]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-5s}
target=${CARGO_TARGET_DIR:-target}

for tool in nginx wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "bench/files.sh needs $tool" >&2; exit 1; }
done

cargo build --release --quiet -p dea --example files_server
server_bin="$target/release/examples/files_server"

tmp=$(mktemp -d)
ours_pid=""
nginx_pid=""
# Stops exactly one process started here: TERM, then KILL if it is still there after 3 s.
stop() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$ours_pid"
    stop "$nginx_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT

# nginx workers may run as another user: the tree must be world-readable.
chmod 755 "$tmp"
mkdir -p "$tmp/www" "$tmp/nginx/logs"
head -c 3072 /dev/urandom | base64 -w0 | head -c 4096 > "$tmp/www/file.txt"
chmod 644 "$tmp/www/file.txt"

"$server_bin" "$tmp/www" file.txt > "$tmp/url" &
ours_pid=$!

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$tmp/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 2;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type text/plain;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    server {
        listen 127.0.0.1:$port;
        root $tmp/www;
    }
}
CONF
nginx -e "$tmp/nginx/logs/error.log" -p "$tmp/nginx" -c "$tmp/nginx.conf" &
nginx_pid=$!

for _ in $(seq 100); do
    [ -s "$tmp/url" ] && curl -sf -o /dev/null "http://127.0.0.1:$port/file.txt" && break
    sleep 0.1
done
ours_url=$(head -n1 "$tmp/url")
nginx_url="http://127.0.0.1:$port/file.txt"

# Both serve the same bytes.
if ! cmp -s <(curl -sf "$ours_url") "$tmp/www/file.txt" || ! cmp -s <(curl -sf "$nginx_url") "$tmp/www/file.txt"; then
    echo "a server does not return the file" >&2
    exit 1
fi

rps() {
    wrk -t2 -c32 -d"$duration" "$1" | awk '/^Requests\/sec:/ { print $2 }'
}
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b) ? a : b }'; }
wrk -t2 -c32 -d1s "$ours_url" >/dev/null   # warm-up
wrk -t2 -c32 -d1s "$nginx_url" >/dev/null
ours=0
theirs=0
for round in $(seq "${ROUNDS:-3}"); do
    run_ours=$(rps "$ours_url")
    run_theirs=$(rps "$nginx_url")
    echo "round $round: dea $run_ours req/s, nginx $run_theirs req/s"
    ours=$(best "$ours" "$run_ours")
    theirs=$(best "$theirs" "$run_theirs")
done

printf 'dea directory server: %10.0f req/s  (best run; signed URL, 4 KiB file)\n' "$ours"
printf 'nginx:                %10.0f req/s  (best run)\n' "$theirs"
awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "ratio ours/nginx:     %10.2f  (target >= 0.80)\n", a / b }'
