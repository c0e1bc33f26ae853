#!/usr/bin/env bash
# System calls per proxied request of switchyard, nginx and HAProxy (configured as in
# bench/run.sh, one worker each), counted by `strace -c -f` attached to each proxy during a
# wrk run of DURATION (3) s on CONNS (64) connections; prints the calls per request, most
# frequent first. strace slows the proxy down many times: the counts per request hold, the
# rates do not. What it answers: whether a proxy's kernel time (about two thirds of a
# request on loopback, bench/icount.sh) comes from more calls or from dearer ones.
#
#   bench/syscalls.sh
#   BIN=/tmp/sy-before bench/syscalls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-3}; CONNS=${CONNS:-64}
. bench/lib.sh
need_tools nginx haproxy wrk
command -v strace >/dev/null || { echo "strace is missing (apt-get install -y strace)"; exit 1; }
BIN=${BIN:-target/release/switchyard}
[ "$BIN" != target/release/switchyard ] || cargo build --release -q
WORK=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

B1=$(port); B2=$(port)
"$BIN" backend --workers 1 --bind 127.0.0.1:$B1 --name blue >/dev/null 2>&1 & pids+=($!)
"$BIN" backend --workers 1 --bind 127.0.0.1:$B2 --name green >/dev/null 2>&1 & pids+=($!)
SY=$(port); SYA=$(port); NG=$(port); HA=$(port)
switchyard_config "$WORK/switchyard.toml" "$SY" "$SYA" "$B1" "$B2"
SWITCHYARD_LOG=error "$BIN" run --workers 1 -c "$WORK/switchyard.toml" >/dev/null 2>&1 & pids+=($!); SY_PID=$!
nginx_config "$WORK" "$NG" "$B1" "$B2"
# Without the master process: the traced PID is the worker.
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" -g 'master_process off;' >/dev/null 2>&1 & pids+=($!); NG_PID=$!
haproxy_config "$WORK/haproxy.cfg" "$HA" "$B1" "$B2"
haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!); HA_PID=$!
wait_up "$SY" "$NG" "$HA" || { echo "a proxy did not come up"; exit 1; }

for entry in "switchyard:$SY:$SY_PID" "nginx:$NG:$NG_PID" "haproxy:$HA:$HA_PID"; do
  IFS=: read -r name p pid <<<"$entry"
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$p/" >/dev/null   # warm: pools filled
  timeout -s INT $((DURATION + 1)) strace -c -f -p "$pid" -o "$WORK/$name.st" 2>/dev/null & st=$!
  sleep 0.5
  reqs=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$p/" | awk '/requests in/ {print $1}')
  wait "$st" || true
  echo "$name: $reqs requests while traced; calls per request:"
  # strace -c's table: calls in the fourth column (fifth when an errors column is filled).
  awk -v n="$reqs" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ { printf "  %-14s %6.2f\n", $NF, $4 / n }
    $NF == "total" { printf "  %-14s %6.2f\n", "all", $4 / n }' "$WORK/$name.st" | sort -k2 -rn | head -12
done
