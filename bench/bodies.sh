#!/usr/bin/env bash
# Big bodies (issue 17 point 4): a SIZE_MB (100) MB download (`/bytes/N` on the backend, one
# static buffer streamed) and a SIZE_MB upload (curl -T from a file, Content-Length; the
# backend reads it to its end and answers its size) through switchyard, nginx and HAProxy,
# and straight to the backend (`direct`, the client's and backend's own limit), ROUNDS (5)
# alternating rounds. Per transfer: MB/s, the proxy's CPU per MB (its threads' and its
# children's time on a CPU, from /proc/PID/task/*/schedstat: lib.sh's cpu_ns) and its peak
# RSS while the body moves (read every 50 ms) against its RSS before — a proxy that buffered
# a whole body would grow by SIZE_MB. The proxies are
# configured as in bench/run.sh (lib.sh); all three stream both ways: nginx with
# `proxy_request_buffering off` and `proxy_buffering off` (its defaults would write the upload
# to a temporary file before sending it, and buffer the answer) and `client_max_body_size 0`.
# Pinned as run.sh pins (lib.sh's pin_setup). It reports and does not judge.
#
#   bench/bodies.sh
#   SIZE_MB=1000 ROUNDS=3 bench/bodies.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-100}
ROUNDS=${ROUNDS:-5}
WORKERS=${WORKERS:-1}
. bench/lib.sh
need_tools nginx haproxy curl
BIN=${SWITCHYARD:-target/release/switchyard}
[ -x "$BIN" ] || cargo build --release -q

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
BYTES=$((SIZE_MB * 1024 * 1024))
head -c "$BYTES" /dev/zero >"$WORK/upload"

switchyard_config "$WORK/switchyard.toml" "$SY" "$(port)" "$B1" "$B2"
SWITCHYARD_LOG=error ${PROXY_CPU[@]} "$BIN" run --workers "$WORKERS" -c "$WORK/switchyard.toml" >"$WORK/switchyard.log" 2>&1 & pids+=($!)
SY_PID=$!
nginx_config "$WORK" "$NG" "$B1" "$B2"
sed -i 's|^      proxy_pass http://app;|&\n      proxy_request_buffering off;\n      proxy_buffering off;\n      client_max_body_size 0;|' "$WORK/nginx.conf"
grep -q proxy_request_buffering "$WORK/nginx.conf" || { echo "nginx config: proxy_pass line not found"; exit 1; }
${PROXY_CPU[@]} nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" >"$WORK/nginx.log" 2>&1 & pids+=($!)
NG_PID=$!
haproxy_config "$WORK/haproxy.cfg" "$HA" "$B1" "$B2"
${PROXY_CPU[@]} haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & pids+=($!)
HA_PID=$!
wait_up "$B1" "$SY" "$NG" "$HA" || {
  echo "a proxy did not come up (switchyard $SY, nginx $NG, haproxy $HA)"
  tail -n 5 "$WORK"/*.log "$WORK"/nginx/error.log 2>/dev/null
  exit 1
}

# transfer KIND PORT PID: one body through; prints "MB/S CPU_MS_PER_MB RSS_BEFORE_MB PEAK_MB".
transfer() {
  local kind=$1 p=$2 pid=$3 t0 t1 before peak secs out
  before=$(rss_kb "$pid")
  # The sampler stops by itself when the transfer's marker file goes (bounded anyway: 10 min).
  touch "$WORK/moving"
  (peak=0; for _ in $(seq 12000); do
     [ -e "$WORK/moving" ] || break
     v=$(rss_kb "$pid"); [ "$v" -gt "$peak" ] && peak=$v
     sleep 0.05
   done; echo "$peak" >"$WORK/peak") &
  local sampler=$!
  t0=$(cpu_ns "$pid")
  case $kind in
    download) out=$(${LOAD_CPU[@]} curl -fsS --max-time 600 -o /dev/null -w '%{size_download} %{time_total}' "http://127.0.0.1:$p/bytes/$BYTES") ;;
    upload) out=$(${LOAD_CPU[@]} curl -fsS --max-time 600 -o "$WORK/answer" -w '%{size_upload} %{time_total}' -X POST -T "$WORK/upload" "http://127.0.0.1:$p/upload") ;;
  esac
  t1=$(cpu_ns "$pid")
  rm -f "$WORK/moving"; wait "$sampler"; peak=$(cat "$WORK/peak")
  read -r size secs <<<"$out"
  [ "$size" = "$BYTES" ] || { echo "$kind through port $p moved $size of $BYTES bytes" >&2; exit 1; }
  if [ "$kind" = upload ] && ! grep -q "received $BYTES" "$WORK/answer"; then
    echo "upload through port $p: the backend answered $(cat "$WORK/answer")" >&2; exit 1
  fi
  python3 -c "print(f'{$SIZE_MB / $secs:.0f} {($t1 - $t0) / 1e6 / $SIZE_MB:.3f} {$before / 1024:.1f} {$peak / 1024:.1f}')"
}

echo "$SIZE_MB MB per transfer, $ROUNDS rounds, $WORKERS worker(s) per proxy"
printf '%-6s %-9s %-11s %8s %11s %10s %9s\n' round kind proxy 'MB/s' 'cpu ms/MB' 'MB before' 'MB peak'
: >"$WORK/rows"
for kind in download upload; do
  # One transfer each first: pools, lazily built state and the allocator's first growth
  # are in "before", not in the peak.
  for p in "$B1" "$SY" "$NG" "$HA"; do transfer "$kind" "$p" "$B1_PID" >/dev/null; done
done
for r in $(seq "$ROUNDS"); do
  for kind in download upload; do
    for entry in "direct:$B1:$B1_PID" "switchyard:$SY:$SY_PID" "nginx:$NG:$NG_PID" "haproxy:$HA:$HA_PID"; do
      IFS=: read -r name p pid <<<"$entry"
      read -r mbs cpu before peak < <(transfer "$kind" "$p" "$pid")
      printf '%-6s %-9s %-11s %8s %11s %10s %9s\n' "$r" "$kind" "$name" "$mbs" "$cpu" "$before" "$peak"
      echo "$r $kind $name $mbs $cpu $before $peak" >>"$WORK/rows"
    done
  done
done

echo
python3 - "$WORK/rows" "$SIZE_MB" <<'PY'
import collections, statistics, sys
med = statistics.median
rows = [l.split() for l in open(sys.argv[1])]
d = collections.defaultdict(list)
for r, kind, name, mbs, cpu, before, peak in rows:
    d[kind, name].append((int(r), float(mbs), float(cpu), float(before), float(peak)))
print(f"medians over rounds ({sys.argv[2]} MB; direct's CPU is the backend's):")
print(f"{'kind':9}{'proxy':12}{'MB/s':>8}{'cpu ms/MB':>11}{'MB before':>11}{'MB peak':>9}{'growth':>8}")
for (kind, name), v in d.items():
    print(f"{kind:9}{name:12}{med(x[1] for x in v):8.0f}{med(x[2] for x in v):11.2f}"
          f"{med(x[3] for x in v):11.1f}{max(x[4] for x in v):9.1f}{max(x[4] - x[3] for x in v):8.1f}")
for kind in ("download", "upload"):
    sy = d[kind, "switchyard"]
    for peer in ("nginx", "haproxy"):
        pairs = list(zip(sy, d[kind, peer]))
        print(f"{kind} switchyard / {peer} (median of per-round ratios): MB/s {med(a[1] / b[1] for a, b in pairs):.2f}x, "
              f"CPU per MB {med(a[2] / b[2] for a, b in pairs if b[2]):.2f}x")
print("(growth: the largest peak minus before over the rounds, MB; a whole body held would be the size)")
PY
