#!/usr/bin/env bash
# What the platform adds to a push, on one host: `dea ctl push` of examples/static-site to a
# routed HTTP 200 (upload to the object store, the controller, staging on the agent, the
# droplet through the object store, the start, the router) against the same binary's local
# path in the same run: `dea stage` and then `dea run` until the instance answers 200.
# Prints each round, the medians, the ratio, and push's own split (upload / staging / start
# / route). Run as root (the agent and dea run need runc, namespaces and nftables), with
# nats-server installed; DEA=path picks the binary (default target/release/dea).
set -euo pipefail
cd "$(dirname "$0")/.."
dea="$(realpath "${DEA:-target/release/dea}")"
rounds="${ROUNDS:-5}"
work="$(mktemp -d)"
nats_port=$((20000 + RANDOM % 10000))
router_port=$((30000 + RANDOM % 10000))
pids=()
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/dea.yml" <<EOF
base_dir: $work/agent
agent:
  nats_servers: [nats://127.0.0.1:$nats_port]
  advertise_interval_secs: 1
  heartbeat_interval_secs: 1
  router_register_interval_secs: 1
platform:
  controller:
    settle_secs: 1
    converge_interval_ms: 100
  router:
    listen: 127.0.0.1:$router_port
  ctl:
    router: 127.0.0.1:$router_port
EOF
nats-server -js -sd "$work/js" -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
pids+=("$!")
sleep 0.5
for role in router controller serve; do
  "$dea" --config "$work/dea.yml" "$role" >"$work/$role.log" 2>&1 &
  pids+=("$!")
done
sleep 3

ms() { date +%s%3N; }
wait_200() { # url [host]
  for _ in $(seq 1 400); do
    code="$(curl -s -o /dev/null -w '%{http_code}' ${2:+-H "Host: $2"} "$1" || true)"
    [ "$code" = 200 ] && return 0
    sleep 0.025
  done
  return 1
}
local_times=()
push_times=()
splits=()
for round in $(seq 1 "$rounds"); do
  start=$(ms)
  "$dea" --base-dir "$work/local" stage examples/static-site -o "$work/example.tgz" >/dev/null
  "$dea" --base-dir "$work/run" run "$work/example.tgz" >"$work/run.log" 2>&1 &
  run_pid=$!
  for _ in $(seq 1 400); do grep -q '^URL:' "$work/run.log" && break; sleep 0.025; done
  wait_200 "$(sed -n 's/^URL:  //p' "$work/run.log")"
  local_ms=$(($(ms) - start))
  kill -INT "$run_pid"
  wait "$run_pid" || true

  start=$(ms)
  out="$("$dea" --config "$work/dea.yml" ctl push "bench$round" examples/static-site \
    --route "bench$round.bench.local" -m 64)"
  wait_200 "http://127.0.0.1:$router_port/" "bench$round.bench.local"
  push_ms=$(($(ms) - start))
  split="$(grep '^Took' <<<"$out")"
  printf 'round %d: local stage + run -> 200: %5d ms   dea ctl push -> routed 200: %5d ms   (%s)\n' \
    "$round" "$local_ms" "$push_ms" "$split"
  local_times+=("$local_ms")
  push_times+=("$push_ms")
  splits+=("$split")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
lm="$(median "${local_times[@]}")"
pm="$(median "${push_times[@]}")"
echo "median: local $lm ms, push $pm ms; ratio push/local $(awk "BEGIN {printf \"%.2f\", $pm/$lm}"); platform overhead $((pm - lm)) ms"
