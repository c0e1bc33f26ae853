#!/usr/bin/env bash
# Many keep-alive clients at a moderate rate (issue 17 point 3): CONNS (9,900) connections to
# each of switchyard, nginx and HAProxy, each sending a GET every CONNS / RATE seconds (RATE
# 3000 req/s in all) for DURATION (20) seconds, in ROUNDS (3) alternating rounds; per run the
# p50 / p99 / p99.9 latency, the proxy's CPU per request and its peak RSS with the clients
# connected, then the medians and switchyard's per-round ratios to each peer. The client is
# bench/clients.py (Python asyncio, one core); a run straight to a backend (`direct`) gives
# the latency its own loop adds. The proxies are configured as in bench/run.sh (lib.sh), one
# worker each (WORKERS), with room for the connections: nginx's worker_connections and
# descriptors, HAProxy's maxconn (CONNS + 64: it counts client connections, and wants twice
# that many descriptors plus a few — under a hard `ulimit -n` of 20000, 9,993 at most, hence
# the default of 9,900 rather than 10,000). Pinned as run.sh pins (lib.sh's pin_setup). It
# reports and does not judge.
#
#   bench/clients.sh
#   CONNS=2000 RATE=2000 ROUNDS=1 bench/clients.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-9900}
RATE=${RATE:-3000}
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1}
. bench/lib.sh
need_tools nginx haproxy
BIN=${SWITCHYARD:-target/release/switchyard}
[ -x "$BIN" ] || cargo build --release -q

# The client holds CONNS, a proxy CONNS plus its upstream ones; HAProxy asks for twice its
# maxconn and 14 more.
NOFILE=$((2 * (CONNS + 64) + 14))
raise_nofile "$NOFILE"

WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM
pin_setup
start_backends "$BIN"
B1_PID=${pids[0]}
SY=$(port); NG=$(port); HA=$(port)

switchyard_config "$WORK/switchyard.toml" "$SY" "$(port)" "$B1" "$B2"
SWITCHYARD_LOG=error ${PROXY_CPU[@]} "$BIN" run --workers "$WORKERS" -c "$WORK/switchyard.toml" >"$WORK/switchyard.log" 2>&1 & pids+=($!)
SY_PID=$!
nginx_config "$WORK" "$NG" "$B1" "$B2"
nginx_room "$WORK/nginx.conf" "$(ulimit -n)"
${PROXY_CPU[@]} nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" >"$WORK/nginx.log" 2>&1 & pids+=($!)
NG_PID=$!
haproxy_config "$WORK/haproxy.cfg" "$HA" "$B1" "$B2"
haproxy_room "$WORK/haproxy.cfg" $((CONNS + 64))
${PROXY_CPU[@]} haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & pids+=($!)
HA_PID=$!
wait_up "$B1" "$SY" "$NG" "$HA" || {
  echo "a proxy did not come up (switchyard $SY, nginx $NG, haproxy $HA)"
  tail -n 5 "$WORK"/*.log "$WORK"/nginx/error.log 2>/dev/null
  exit 1
}

RESULTS="$WORK/results.jsonl"
echo "$CONNS keep-alive clients, $RATE req/s in all (one request every $(python3 -c "print(round($CONNS / $RATE, 2))") s each), ${DURATION}s per run, $WORKERS worker(s) per proxy"
python3 bench/clients.py --header
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  for entry in "direct:$B1:$B1_PID" "switchyard:$SY:$SY_PID" "nginx:$NG:$NG_PID" "haproxy:$HA:$HA_PID"; do
    ${LOAD_CPU[@]} python3 bench/clients.py --conns "$CONNS" --rate "$RATE" --duration "$DURATION" \
      --results "$RESULTS" "$entry"
    sleep 2 # the closed connections' sockets leave before the next run opens as many
  done
done
echo
python3 bench/clients.py --summary "$RESULTS"
echo "(direct: the client straight to one backend, the latency the client's own loop adds;"
echo " peak MB: the proxy's RSS with its children, read every second with the clients connected)"
