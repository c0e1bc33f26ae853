#!/usr/bin/env bash
# A/B of two switchyard builds on the same backends: alternating wrk rounds, printing the
# medians of req/s, p99 and CPU µs per request for each. For telling whether a change to
# the data plane helped on a noisy machine (CPU per request is the steadiest figure).
#
#   git stash; cargo build --release; cp target/release/switchyard /tmp/sy-before; git stash pop
#   cargo build --release
#   bench/ab.sh /tmp/sy-before target/release/switchyard
#   ROUNDS=8 DURATION=5 CONNS=64 bench/ab.sh A B
#   WORKERS=2 bench/ab.sh A B              # each build with two workers (nothing pinned on 2 cores)
set -euo pipefail
A=$1; B=$2
ROUNDS=${ROUNDS:-6}; DURATION=${DURATION:-5}; CONNS=${CONNS:-64}
command -v wrk >/dev/null || { echo "wrk is missing (bench/run.sh installs it)"; exit 1; }
WORK=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"
pin_setup
B1=$(port); B2=$(port)
${LOAD_CPU[@]} "$B" backend --workers 1 --bind 127.0.0.1:$B1 --name blue >/dev/null 2>&1 & pids+=($!)
${LOAD_CPU[@]} "$B" backend --workers 1 --bind 127.0.0.1:$B2 --name green >/dev/null 2>&1 & pids+=($!)
declare -A PORT PID
for side in A B; do
  P=$(port); ADMIN=$(port); PORT[$side]=$P
  # A directory each: the state database sits beside the config, and one instance holds it.
  mkdir -p "$WORK/$side"
  switchyard_config "$WORK/$side/sy.toml" "$P" "$ADMIN" "$B1" "$B2"
  bin=$A; [ $side = B ] && bin=$B
  SWITCHYARD_LOG=error ${PROXY_CPU[@]} "$bin" run --workers "${WORKERS:-1}" -c "$WORK/$side/sy.toml" >/dev/null 2>&1 & pids+=($!); PID[$side]=$!
done
for side in A B; do
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:${PORT[$side]}/" && break; sleep 0.1; done
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$ROUNDS"); do
  for side in A B; do
    t0=$(ticks "${PID[$side]}")
    out=$(${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$side]}/")
    t1=$(ticks "${PID[$side]}")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)}; print v}' <<<"$out")
    echo "$side $rps $p99 $(python3 -c "print(($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / $reqs)")"
  done
done | tee "$WORK/rounds" | awk '{printf "round  %s %10.0f req/s  p99 %5.2f ms  cpu %5.1f us/req\n", $1, $2, $3, $4}'
python3 - "$WORK/rounds" <<'PY'
import sys, statistics, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, *v = line.split(); d[side].append([float(x) for x in v])
m = {s: [statistics.median(r[i] for r in v) for i in range(3)] for s, v in d.items()}
print(f"{'':4}{'req/s':>10}{'p99 ms':>9}{'cpu us/req':>12}")
for s in "AB":
    print(f"{s:4}{m[s][0]:10.0f}{m[s][1]:9.2f}{m[s][2]:12.2f}")
print(f"B/A: req/s {m['B'][0]/m['A'][0]:.3f}  p99 {m['B'][1]/m['A'][1]:.3f}  cpu {m['B'][2]/m['A'][2]:.3f}")
PY
