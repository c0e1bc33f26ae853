#!/usr/bin/env bash
# Throughput and p99 of switchyard against nginx and HAProxy, configured the same way:
# WORKERS (1) workers each (switchyard --workers, nginx worker_processes, HAProxy nbthread),
# upstream keep-alive, a 90/10 split over two backends, access logs off,
# bound to 127.0.0.1, and the same work per request: each passes the client's Host, adds
# X-Forwarded-For/-Proto/-Host/-Port and a request id (sent upstream and answered), as
# switchyard always does. wrk drives each in alternating rounds; results are ratios to
# nginx, with each proxy's CPU time per request (the figure least moved by a noisy host).
#
# With two or more cores the proxies share the last core and wrk and the backends get the
# others (PIN=0 lets the scheduler place everything; see pin_setup in lib.sh).
#
#   bench/run.sh                 # 10 rounds of 5 s per proxy
#   ROUNDS=5 DURATION=20 CONNS=64 PIN=0 bench/run.sh
#   WORKERS=2 bench/run.sh       # two workers each; on 2 cores nothing is pinned (lib.sh)
#   BARE=1 bench/run.sh          # also nginx-bare and haproxy-bare: the peers in their default
#                                # configuration (no forwarded headers, no request id) in the
#                                # same rounds, reported beside the peers doing the same work
#   TWIN=1 bench/run.sh          # also switchyard-twin, a second switchyard exactly like the
#                                # first: how often it wins a round is what the host's noise
#                                # alone decides (an A/A control for the round counts)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}


. bench/lib.sh
need_tools nginx haproxy wrk
cargo build --release -q
BIN=target/release/switchyard
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

pin_setup
# Backends: switchyard's built-in echo-name server, one thread each.
start_backends "$BIN"
start_proxies "$BIN"

ENTRIES=("switchyard:$SY:$SY_PID" "nginx:$NG:$NG_PID" "haproxy:$HA:$HA_PID")
UP=($SY $NG $HA)
if [ "${TWIN:-0}" = 1 ]; then
  SYT=$(port); SYTA=$(port)
  mkdir -p "$WORK/twin"  # its own state database, beside its file
  switchyard_config "$WORK/twin/switchyard.toml" "$SYT" "$SYTA" "$B1" "$B2"
  SWITCHYARD_LOG=error ${PROXY_CPU[@]} $BIN run --workers "$WORKERS" -c "$WORK/twin/switchyard.toml" >"$WORK/switchyard-twin.log" 2>&1 & pids+=($!)
  ENTRIES+=("switchyard-twin:$SYT:$!")
  UP+=($SYT)
fi
if [ "${BARE:-0}" = 1 ]; then
  NGB=$(port); HAB=$(port)
  nginx_config "$WORK/bare" "$NGB" "$B1" "$B2" bare
  ${PROXY_CPU[@]} nginx -c "$WORK/bare/nginx.conf" -e "$WORK/bare/nginx/error.log" >"$WORK/nginx-bare.log" 2>&1 & pids+=($!)
  ENTRIES+=("nginx-bare:$NGB:$!")
  haproxy_config "$WORK/haproxy-bare.cfg" "$HAB" "$B1" "$B2" bare
  ${PROXY_CPU[@]} haproxy -f "$WORK/haproxy-bare.cfg" -db >"$WORK/haproxy-bare.log" 2>&1 & pids+=($!)
  ENTRIES+=("haproxy-bare:$HAB:$!")
  UP+=($NGB $HAB)
fi

wait_up "${UP[@]}" || {
  echo "a proxy did not come up (${ENTRIES[*]})"
  tail -n 5 "$WORK"/*.log "$WORK"/nginx/error.log 2>/dev/null
  exit 1
}

# wrk's Requests/sec, its "99%" line in ms, and the proxy's CPU µs per request.
# (Its user and system parts apart, in the same unit, for the summary.)
run() {
  local u0 s0 u1 s1 rps p99 reqs
  read -r u0 s0 < <(cpu_split "$2")
  read -r rps p99 reqs < <(${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/" | wrk_figures)
  read -r u1 s1 < <(cpu_split "$2")
  python3 -c "t = 1e6 / $(getconf CLK_TCK) / $reqs; print($rps, $p99, ($u1 - $u0 + $s1 - $s0) * t, ($u1 - $u0) * t, ($s1 - $s0) * t)"
}

FIGURES="$WORK/figures"
echo "warming up"; for p in "${UP[@]}"; do ${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$p/" >/dev/null; done
for r in $(seq "$ROUNDS"); do
  for entry in "${ENTRIES[@]}"; do
    IFS=: read -r name p pid <<<"$entry"
    read -r rps p99 cpu usr sys < <(run "$p" "$pid")
    printf 'round %d  %-12s %10.0f req/s   p99 %7.2f ms   cpu %6.1f us/req (user %.1f, system %.1f)\n' "$r" "$name" "$rps" "$p99" "$cpu" "$usr" "$sys"
    echo "$name $rps $p99 $cpu $usr $sys" >>"$FIGURES"
  done
done

echo
echo "mean over $ROUNDS rounds of ${DURATION}s, $CONNS connections, $WORKERS worker(s) each:"
python3 - "$FIGURES" <<'PY'
import sys, statistics
rps, p99, cpu, usr, kern = {}, {}, {}, {}, {}
for line in open(sys.argv[1]):
    n, a, b, c, u, k = line.split()
    for d, v in ((rps, a), (p99, b), (cpu, c), (usr, u), (kern, k)):
        d.setdefault(n, []).append(float(v))
names = list(rps)
mean, med = statistics.mean, statistics.median
print(f"{'':14}{'req/s':>12}{'vs nginx':>10}{'p99 ms':>10}{'vs nginx':>10}{'cpu us/req':>12}{'vs nginx':>10}{'user':>8}{'system':>8}")
for n in names:
    print(f"{n:14}{mean(rps[n]):12.0f}{mean(rps[n])/mean(rps['nginx']):10.2f}{med(p99[n]):10.2f}"
          f"{med(p99[n])/med(p99['nginx']):10.2f}{med(cpu[n]):12.1f}{med(cpu[n])/med(cpu['nginx']):10.2f}"
          f"{med(usr[n]):8.1f}{med(kern[n]):8.1f}")
# Rounds of one proxy follow each other within seconds, so a per-round ratio cancels most of
# the host's drift; its median over rounds is the figure to quote.
def paired(d, peer):
    return med(a / b for a, b in zip(d["switchyard"], d[peer]))
def against(peers, label):
    print(f"-- against {label}:")
    best = max(peers, key=lambda n: mean(rps[n]))
    low = min(peers, key=lambda n: med(p99[n]))
    print(f"switchyard throughput vs best of {'/'.join(peers)} ({best}): {mean(rps['switchyard'])/mean(rps[best]):.2f}x"
          f" (median per-round ratio {paired(rps, best):.3f})")
    print(f"switchyard p99 vs lowest of {'/'.join(peers)} ({low}): {med(p99['switchyard'])/med(p99[low]):.2f}x"
          f" (median per-round ratio {paired(p99, low):.3f}; below 1 is better)")
    # Issue 17's tail target counts rounds: switchyard's p99 at or below the lower of the
    # peers' measured in the same round (each proxy's slot is seconds from the others').
    wins = sum(s <= min(r) for s, *r in zip(p99["switchyard"], *(p99[n] for n in peers)))
    print(f"rounds with switchyard's p99 at or below both peers': {wins} of {len(p99['switchyard'])}")
    lean = min(peers, key=lambda n: med(cpu[n]))
    print(f"switchyard CPU per request vs leanest of {'/'.join(peers)} ({lean}): {med(cpu['switchyard'])/med(cpu[lean]):.2f}x"
          f" (median per-round ratio {paired(cpu, lean):.3f}; below 1 is better)")
against(["nginx", "haproxy"], "the peers doing the same work")
if "switchyard-twin" in rps:
    # The same binary and configuration as switchyard, in its own slot of each round: what
    # separates the two is the host alone.
    t = "switchyard-twin"
    wins = sum(s <= min(a, b) for s, a, b in zip(p99[t], p99["nginx"], p99["haproxy"]))
    print(f"-- A/A control: {t}'s p99 at or below both peers' in {wins} of {len(p99[t])} rounds")
    r = sorted(a / b for a, b in zip(p99["switchyard"], p99[t]))
    print(f"switchyard / {t} p99 per round: min {r[0]:.2f}, median {med(r):.2f}, max {r[-1]:.2f}"
          f"; req/s median {paired(rps, t):.3f}, CPU median {paired(cpu, t):.3f}")
if "nginx-bare" in rps:
    against(["nginx-bare", "haproxy-bare"], "the peers in their default configuration")
PY
