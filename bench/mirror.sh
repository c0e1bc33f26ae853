#!/usr/bin/env bash
# What mirroring costs the real requests: every request copied to a slow target (it answers
# after DELAY ms), against the same proxy without a mirror, in one run. switchyard mirrors
# through its bounded queue (`[service.mirror]`, concurrency 32, queue 256: copies beyond
# that are dropped and counted); nginx through its mirror module (a subrequest per request,
# `mirror_request_body off`); HAProxy has no mirror of its own (it needs an external SPOE
# agent) and runs without one, as the reference. wrk drives each in alternating rounds; the
# figures are each proxy's p99 and req/s with the mirror as ratios to its own without.
# Target (issue 16): switchyard's p99 with 100 % mirrored to the slow target within 5 % of
# no mirroring.
#
#   bench/mirror.sh                       # 6 rounds of 5 s, mirror target 200 ms slow
#   ROUNDS=10 DURATION=10 CONNS=32 DELAY=500 bench/mirror.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
DELAY=${DELAY:-200}

. bench/lib.sh
need_tools nginx haproxy wrk

cargo build --release -q
BIN=target/release/switchyard
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

pin_setup
B1=$(port); B2=$(port); SY=$(port); SYA=$(port); SM=$(port); SMA=$(port); NG=$(port); NM=$(port); HA=$(port)

# blue answers at once; green (the mirror target) after DELAY ms.
${LOAD_CPU[@]} $BIN backend --workers 1 --bind 127.0.0.1:$B1 --name blue >/dev/null 2>&1 & pids+=($!)
${LOAD_CPU[@]} $BIN backend --workers 1 --bind 127.0.0.1:$B2 --name green >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$B2/healthz" && break; sleep 0.1; done
curl -fs -X POST -o /dev/null "http://127.0.0.1:$B2/_faults?delay=$DELAY"

# switchyard: all traffic on blue, without and with every request copied to green.
sy_config() {
  cat > "$1" <<CONF
[admin]
bind = "127.0.0.1:$3"
[store]
path = "$1.db"
[[listener]]
name = "bench"
bind = "127.0.0.1:$2"
[[route]]
name = "all"
priority = 1
forward = "app"
[[service]]
name = "app"
active = "blue"
$4
[[service.group]]
name = "blue"
targets = ["127.0.0.1:$B1"]
[[service.group]]
name = "green"
targets = ["127.0.0.1:$B2"]
CONF
}
sy_config "$WORK/plain.toml" "$SY" "$SYA" ""
sy_config "$WORK/mirror.toml" "$SM" "$SMA" $'[service.mirror]\ngroup = "green"'
SWITCHYARD_LOG=error ${PROXY_CPU[@]} $BIN run --workers 1 -c "$WORK/plain.toml" >"$WORK/sy.log" 2>&1 & pids+=($!)
SY_PID=$!
SWITCHYARD_LOG=error ${PROXY_CPU[@]} $BIN run --workers 1 -c "$WORK/mirror.toml" >"$WORK/sm.log" 2>&1 & pids+=($!)
SM_PID=$!

# nginx: the bench's usual work per request, all to blue; the second server mirrors.
{
  nginx_head "$WORK"
  nginx_forward
  cat <<CONF
  upstream blue { server 127.0.0.1:$B1; keepalive 128; }
  upstream green { server 127.0.0.1:$B2; keepalive 128; }
  server {
    listen 127.0.0.1:$NG;
    location / { proxy_pass http://blue; add_header X-Request-Id \$request_id always; }
  }
  server {
    listen 127.0.0.1:$NM;
    location / {
      mirror /_mirror;
      mirror_request_body off;
      proxy_pass http://blue;
      add_header X-Request-Id \$request_id always;
    }
    location = /_mirror { internal; proxy_pass http://green\$request_uri; }
  }
}
CONF
} > "$WORK/nginx.conf"
${PROXY_CPU[@]} nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" >"$WORK/nginx.log" 2>&1 & pids+=($!)
NG_PID=$!

haproxy_config "$WORK/haproxy.cfg" "$HA" "$B1" "$B1"
${PROXY_CPU[@]} haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & pids+=($!)
HA_PID=$!

for p in $SY $SM $NG $NM $HA; do
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  curl -fs -o /dev/null "http://127.0.0.1:$p/" || { echo "proxy on port $p did not come up"; tail -n 5 "$WORK"/*.log; exit 1; }
done

cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

run() {
  local before after out rps p99 reqs
  before=$(cpu_ticks "$2")
  out=$(${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/")
  after=$(cpu_ticks "$2")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}' <<<"$out")
  echo "$rps $p99 $(python3 -c "print(($after - $before) * 1e6 / $(getconf CLK_TCK) / $reqs)")"
}

names=(switchyard switchyard+mirror nginx nginx+mirror haproxy)
declare -A RPS P99 CPU
for n in "${names[@]}"; do RPS[$n]=""; P99[$n]=""; CPU[$n]=""; done
echo "warming up"; for p in $SY $SM $NG $NM $HA; do ${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$p/" >/dev/null; done
for r in $(seq "$ROUNDS"); do
  for entry in "switchyard:$SY:$SY_PID" "switchyard+mirror:$SM:$SM_PID" "nginx:$NG:$NG_PID" "nginx+mirror:$NM:$NG_PID" "haproxy:$HA:$HA_PID"; do
    IFS=: read -r name p pid <<<"$entry"
    read -r rps p99 cpu < <(run "$p" "$pid")
    printf 'round %d  %-18s %10.0f req/s   p99 %8.2f ms   cpu %6.1f us/req\n' "$r" "$name" "$rps" "$p99" "$cpu"
    RPS[$name]="${RPS[$name]} $rps"; P99[$name]="${P99[$name]} $p99"; CPU[$name]="${CPU[$name]} $cpu"
  done
done

echo
echo "switchyard's mirror over the run:"
curl -fs "http://127.0.0.1:$SMA/metrics" | grep -E '^switchyard_mirror_copies_total' || true
echo
echo "median over $ROUNDS rounds of ${DURATION}s, $CONNS connections, mirror target ${DELAY} ms slow:"
python3 - "${RPS[switchyard]}" "${RPS[switchyard+mirror]}" "${RPS[nginx]}" "${RPS[nginx+mirror]}" "${RPS[haproxy]}" \
  "${P99[switchyard]}" "${P99[switchyard+mirror]}" "${P99[nginx]}" "${P99[nginx+mirror]}" "${P99[haproxy]}" \
  "${CPU[switchyard]}" "${CPU[switchyard+mirror]}" "${CPU[nginx]}" "${CPU[nginx+mirror]}" "${CPU[haproxy]}" <<'PY'
import sys, statistics
names = ["switchyard", "switchyard+mirror", "nginx", "nginx+mirror", "haproxy"]
col = lambda k: {n: [float(x) for x in v.split()] for n, v in zip(names, sys.argv[1 + 5 * k:6 + 5 * k])}
rps, p99, cpu = col(0), col(1), col(2)
med = statistics.median
print(f"{'':20}{'req/s':>10}{'p99 ms':>10}{'cpu us/req':>12}")
for n in names:
    print(f"{n:20}{med(rps[n]):10.0f}{med(p99[n]):10.2f}{med(cpu[n]):12.1f}")
# Paired per round: each proxy's rounds with and without the mirror follow each other.
paired = lambda d, a, b: med(x / y for x, y in zip(d[a], d[b]))
for proxy in ["switchyard", "nginx"]:
    m = proxy + "+mirror"
    print(f"{proxy} with 100 % mirrored vs without: p99 {paired(p99, m, proxy):.3f}x, req/s {paired(rps, m, proxy):.3f}x, cpu/req {paired(cpu, m, proxy):.3f}x (median per-round ratios)")
print(f"switchyard+mirror vs haproxy (no mirror): p99 {paired(p99, 'switchyard+mirror', 'haproxy'):.3f}x, req/s {paired(rps, 'switchyard+mirror', 'haproxy'):.3f}x")
PY
