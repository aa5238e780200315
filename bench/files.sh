#!/usr/bin/env bash
# Directory server throughput against nginx: both serve the same 4 KiB file on 127.0.0.1,
# wrk -t2 -c32 -d5s against each (ours through a signed URL, so every request also checks the
# HMAC, the expiry and the path), then req/s and the ratio ours/nginx (target >= 0.8).
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
cleanup() {
    # Exactly the processes started here.
    [ -n "$ours_pid" ] && kill "$ours_pid" 2>/dev/null || true
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
    wait 2>/dev/null || true
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
wrk -t2 -c32 -d1s "$ours_url" >/dev/null   # warm-up
ours=$(rps "$ours_url")
wrk -t2 -c32 -d1s "$nginx_url" >/dev/null
theirs=$(rps "$nginx_url")

printf 'dea directory server: %10.0f req/s  (signed URL, 4 KiB file)\n' "$ours"
printf 'nginx:                %10.0f req/s\n' "$theirs"
awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "ratio ours/nginx:     %10.2f  (target >= 0.80)\n", a / b }'
