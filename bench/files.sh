#!/usr/bin/env bash
# Directory server throughput against nginx, on a small and a large file.
#
# Both servers serve the same two files on 127.0.0.1: a 4 KiB text file and a 1 MiB binary
# file. wrk -t2 -c32 runs for DURATION against each (ours through a signed URL, so every
# request also checks the HMAC, the expiry and the path, opens the file beneath its root with
# openat2 and fstat's it). For each size the two servers are measured alternately, ROUNDS times
# (default 5), the order swapped every round so neither always runs on a warmer machine.
# Printed: every run, then per size the best and the median req/s of each and the ratio
# ours/nginx of both. Targets: >= 0.90 on 4 KiB, >= 1.00 on 1 MiB. On a shared machine the
# best run is the least disturbed one; the median says how steady that is. "paired" is the
# median of each round's own ratio (the two runs of a round are back to back, so load that
# drifts over minutes cancels out).
# Each run also reports the server's CPU time per request (user + system, from /proc, all
# threads of ours, all workers of nginx): what the machine's other load disturbs least, and
# what decides throughput when wrk and the server share the cores.
#
# nginx is configured to be as fast as it is in production and no slower than ours is asked
# to be (the config is written out below):
#   worker_processes 2      one per core, like our one runtime per core
#   sendfile on; tcp_nopush on   the kernel sends file bodies (headers and body in one go)
#   access_log off          ours logs nothing per request either
#   keepalive_requests 1000000   wrk's connections stay open for the whole run, as with ours
#   no open_file_cache      ours opens and fstat's the file on every request, so does nginx
#
# Needs nginx (Debian nginx-light), wrk, curl, python3. Builds the example server in release
# mode, unless FILES_SERVER names an already built one.
# Usage: bench/files.sh [wrk duration, default 5s]   (env: ROUNDS, FILES_SERVER)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-5s}
rounds=${ROUNDS:-5}
target=${CARGO_TARGET_DIR:-target}

for tool in nginx wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "bench/files.sh needs $tool" >&2; exit 1; }
done

if [ -n "${FILES_SERVER:-}" ]; then
    server_bin=$FILES_SERVER
else
    cargo build --release --quiet -p dea --example files_server
    server_bin="$target/release/examples/files_server"
fi

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
sizes=(4k 1m)
head -c 3072 /dev/urandom | base64 -w0 | head -c 4096 > "$tmp/www/4k.txt"
head -c 1048576 /dev/urandom > "$tmp/www/1m.bin"
chmod 644 "$tmp/www/4k.txt" "$tmp/www/1m.bin"
declare -A file=([4k]=4k.txt [1m]=1m.bin)
declare -A label=([4k]="4 KiB" [1m]="1 MiB")
declare -A goal=([4k]=0.90 [1m]=1.00)

"$server_bin" "$tmp/www" "${file[4k]}" "${file[1m]}" > "$tmp/url" &
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
    [ "$(wc -l < "$tmp/url")" -ge 2 ] && curl -sf -o /dev/null "http://127.0.0.1:$port/${file[4k]}" && break
    sleep 0.1
done
declare -A ours_url nginx_url
ours_url[4k]=$(sed -n 1p "$tmp/url")
ours_url[1m]=$(sed -n 2p "$tmp/url")
for size in "${sizes[@]}"; do
    nginx_url[$size]="http://127.0.0.1:$port/${file[$size]}"
    # Both serve the same bytes.
    if ! cmp -s <(curl -sf "${ours_url[$size]}") "$tmp/www/${file[$size]}" ||
        ! cmp -s <(curl -sf "${nginx_url[$size]}") "$tmp/www/${file[$size]}"; then
        echo "a server does not return ${file[$size]}" >&2
        exit 1
    fi
done

# CPU ticks (user + system) of the given processes, all their threads.
ticks() {
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    echo "$total"
}
# One wrk run against URL: prints "req/s µs-of-server-CPU-per-request".
run() {
    local url=$1 before after out
    shift
    before=$(ticks "$@")
    out=$(wrk -t2 -c32 -d"$duration" "$url")
    after=$(ticks "$@")
    echo "$out" | awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        /requests in/ { n = $1 } /^Requests\/sec:/ { r = $2 }
        END { printf "%s %.1f\n", r, (n > 0) ? t / hz * 1e6 / n : 0 }'
}
nginx_workers=$(pgrep -P "$nginx_pid" | tr '\n' ' ')
for size in "${sizes[@]}"; do   # warm-up
    wrk -t2 -c32 -d1s "${ours_url[$size]}" >/dev/null
    wrk -t2 -c32 -d1s "${nginx_url[$size]}" >/dev/null
done
for round in $(seq "$rounds"); do
    for size in "${sizes[@]}"; do
        if [ $((round % 2)) -eq 1 ]; then
            read -r run_ours cpu_ours < <(run "${ours_url[$size]}" "$ours_pid")
            # shellcheck disable=SC2086 # one argument per worker
            read -r run_nginx cpu_nginx < <(run "${nginx_url[$size]}" $nginx_workers)
        else
            # shellcheck disable=SC2086
            read -r run_nginx cpu_nginx < <(run "${nginx_url[$size]}" $nginx_workers)
            read -r run_ours cpu_ours < <(run "${ours_url[$size]}" "$ours_pid")
        fi
        echo "$run_ours" >> "$tmp/ours.$size"
        echo "$run_nginx" >> "$tmp/nginx.$size"
        echo "$cpu_ours" >> "$tmp/ours-cpu.$size"
        echo "$cpu_nginx" >> "$tmp/nginx-cpu.$size"
        awk -v a="$run_ours" -v b="$run_nginx" 'BEGIN { print a / b }' >> "$tmp/ratio.$size"
        printf 'round %d  %-6s  dea %8.0f req/s %7.1f us/req   nginx %8.0f req/s %7.1f us/req   ratio %.2f\n' \
            "$round" "${label[$size]}" "$run_ours" "$cpu_ours" "$run_nginx" "$cpu_nginx" \
            "$(awk -v a="$run_ours" -v b="$run_nginx" 'BEGIN { print a / b }')"
    done
done

best() { sort -g "$1" | tail -n1; }
least() { sort -g "$1" | head -n1; }
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "dea directory server (signed URL) vs nginx, wrk -t2 -c32 -d$duration, $rounds rounds"
echo "req/s (ratio = dea / nginx):"
printf '  %-6s  %10s %10s %6s   %10s %10s %6s   %6s   %s\n' size "dea best" "nginx best" ratio \
    "dea med" "nginx med" ratio paired target
for size in "${sizes[@]}"; do
    ob=$(best "$tmp/ours.$size"); nb=$(best "$tmp/nginx.$size")
    om=$(median "$tmp/ours.$size"); nm=$(median "$tmp/nginx.$size")
    pm=$(median "$tmp/ratio.$size")
    awk -v s="${label[$size]}" -v ob="$ob" -v nb="$nb" -v om="$om" -v nm="$nm" -v pm="$pm" \
        -v g="${goal[$size]}" \
        'BEGIN { printf "  %-6s  %10.0f %10.0f %6.2f   %10.0f %10.0f %6.2f   %6.2f   >= %.2f (best %s, paired %s)\n",
                 s, ob, nb, ob / nb, om, nm, om / nm, pm, g, (ob / nb >= g) ? "met" : "NOT met",
                 (pm >= g) ? "met" : "NOT met" }'
    # One line for bench/all's table: the median of each round's own ratio.
    echo "bench-result|directory server vs nginx, ${label[$size]} (req/s, median)|$om|$nm|$pm|>= ${goal[$size]}" >> "$tmp/results"
done
echo "server CPU per request, us (ratio = nginx / dea, so above 1 means dea needs less):"
printf '  %-6s  %10s %10s %6s   %10s %10s %6s\n' size "dea least" "nginx least" ratio \
    "dea med" "nginx med" ratio
for size in "${sizes[@]}"; do
    ol=$(least "$tmp/ours-cpu.$size"); nl=$(least "$tmp/nginx-cpu.$size")
    om=$(median "$tmp/ours-cpu.$size"); nm=$(median "$tmp/nginx-cpu.$size")
    awk -v s="${label[$size]}" -v ol="$ol" -v nl="$nl" -v om="$om" -v nm="$nm" \
        'BEGIN { printf "  %-6s  %10.1f %10.1f %6.2f   %10.1f %10.1f %6.2f\n",
                 s, ol, nl, nl / ol, om, nm, nm / om }'
done
[ -f "$tmp/results" ] && cat "$tmp/results"
