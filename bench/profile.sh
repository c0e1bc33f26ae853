#!/usr/bin/env bash
# Where each proxy's CPU goes, per request: switchyard, nginx and HAProxy configured as in
# bench/run.sh (one worker each, the proxies on their own core), each sampled by `perf record`
# (cpu-clock every 100 µs of its CPU time, kernel included) during wrk runs of DURATION (5) s,
# in ROUNDS (3) alternating rounds summed (a shared host moves one run's figures by a third).
# Prints, per proxy, the µs per request spent in the kernel, in its own code and in each
# shared library, then its TOP (12) symbols with µs per request each.
#
# What it answers: whether a proxy's CPU per request differs from a peer's in the kernel (the
# same system calls cost the same: loopback TCP, epoll) or in its own code. On loopback the
# kernel is about two thirds of a request for each of the three. With `nstat` (iproute2) it
# also prints the TCP segments the host sent per request (4.00 for each proxy when no segment
# is wasted: request and answer on each side, every ACK riding on data).
#
#   bench/profile.sh
#   DURATION=10 TOP=25 bench/profile.sh
#   CALLERS=_raw_spin_unlock_irqrestore bench/profile.sh   # and who calls that symbol: the
#     kernel call chains above it (DEPTH (8) frames, and the system call they began in),
#     µs per request each — which lock and which wake-up one proxy pays for more than another
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}; CONNS=${CONNS:-64}; TOP=${TOP:-12}; ROUNDS=${ROUNDS:-3}
CALLERS=${CALLERS:-}; DEPTH=${DEPTH:-8}
# Call chains only when asked: unwinding every sample costs the proxy under test a little.
GRAPH=(); [ -z "$CALLERS" ] || GRAPH=(-g)
. bench/lib.sh
need_tools nginx haproxy wrk
command -v perf >/dev/null || { echo "perf is missing (apt-get install -y linux-perf)"; exit 1; }
# Without this a user's `perf record` samples user space only, and quietly.
if [ "$(id -u)" != 0 ] && [ "$(cat /proc/sys/kernel/perf_event_paranoid)" -gt 1 ]; then
  echo "perf sees no kernel time for a user here (kernel.perf_event_paranoid > 1): run as root or lower it"
  exit 1
fi
cargo build --release -q
BIN=target/release/switchyard
WORK=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

pin_setup
start_backends "$BIN"
start_proxies "$BIN"
wait_up "$SY" "$NG" "$HA" || { echo "a proxy did not come up"; exit 1; }

PERIOD_NS=100000
for p in "$SY" "$NG" "$HA"; do ${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$p/" >/dev/null; done  # warm up
for r in $(seq "$ROUNDS"); do
for entry in "switchyard:$SY:$SY_PID" "nginx:$NG:$NG_PID" "haproxy:$HA:$HA_PID"; do
  IFS=: read -r name p pid <<<"$entry"
  # nginx's master does nothing under load: its workers are the ones sampled.
  targets=$(family "$pid" | paste -sd,)
  nstat -n >/dev/null 2>&1 || true
  perf record -q "${GRAPH[@]}" -e cpu-clock -c "$PERIOD_NS" -p "$targets" -o "$WORK/$name.$r.data" -- sleep "$((DURATION + 1))" 2>/dev/null &
  rec=$!
  sleep 0.5
  read -r _ _ reqs < <(${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$p/" | wrk_figures)
  wait "$rec" || true
  [ -s "$WORK/$name.$r.data" ] || { echo "perf recorded nothing for $name (pids $targets)"; exit 1; }
  [ "${reqs:-0}" -gt 0 ] || { echo "wrk made no requests to $name"; exit 1; }
  echo "$reqs" >>"$WORK/$name.reqs"
  # The host's TCP segments sent and pure ACKs in the same span (every socket on it: the
  # client's, the proxy's and the backends'), for the packets per request.
  nstat 2>/dev/null | awk '$1 == "TcpOutSegs" {s = $2} $1 == "TcpExtTCPPureAcks" {a = $2} END {print s + 0, a + 0}' >>"$WORK/$name.segs" || true
  perf report -i "$WORK/$name.$r.data" --stdio --no-children -n --sort dso,sym -q >>"$WORK/$name.txt" 2>/dev/null
  [ -z "$CALLERS" ] || perf script -i "$WORK/$name.$r.data" -F ip,sym 2>/dev/null >>"$WORK/$name.stacks"
done
done

for name in switchyard nginx haproxy; do
  reqs=$(awk '{s += $1} END {print s}' "$WORK/$name.reqs")
  [ ! -s "$WORK/$name.segs" ] || awk -v r="$reqs" -v n="$name" '{s += $1; a += $2}
    END {printf "%s: %.2f TCP segments sent a request on the host, %.3f of them pure ACKs\n", n, s / r, a / r}' "$WORK/$name.segs"
  python3 - "$WORK/$name.txt" "$name" "$reqs" "$PERIOD_NS" "$TOP" <<'PY'
import sys, collections
report, name, reqs, period_ns, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
# perf's lines: overhead, samples, dso, [k] or [.], symbol. Samples are taken over the whole
# recording (a moment longer than wrk's run), so the rate per request is slightly high for
# every proxy alike.
per_req = lambda n: n * period_ns / 1000 / reqs
by_dso, syms = collections.Counter(), collections.Counter()
for line in open(report):
    f = line.split()
    if len(f) < 5 or not f[1].isdigit():
        continue
    n, dso, kind, sym = int(f[1]), f[2], f[3], " ".join(f[4:])
    dso = "kernel" if kind == "[k]" else dso
    by_dso[dso] += n
    syms[(dso, sym)] += n
total = sum(by_dso.values())
if not by_dso["kernel"]:
    sys.exit(f"{name}: no kernel samples — perf could not see the kernel's part")
print(f"{name}: {per_req(total):.2f} µs/request in all ({reqs} requests)")
for dso, n in by_dso.most_common(6):
    print(f"  {dso:28} {per_req(n):6.2f} µs/req  {100 * n / total:5.1f} %")
print(f"  top symbols:")
for (dso, sym), n in syms.most_common(top):
    print(f"    {per_req(n):6.3f} µs/req  {dso[:20]:20} {sym[:70]}")
print()
PY
  [ -z "$CALLERS" ] || python3 - "$WORK/$name.stacks" "$CALLERS" "$DEPTH" "$reqs" "$PERIOD_NS" "$TOP" <<'PY'
import sys, collections
path, want, depth, reqs, period_ns, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
# `perf script -F ip,sym`: one frame a line (address, symbol), a blank line between samples;
# the first frame is where the sample landed.
chains, total, stack = collections.Counter(), 0, []
# A call's own entry is often inlined into the syscall table; these frames name it anyway.
ENTRIES = ("__x64_sys_", "__sys_", "do_writev", "do_readv", "ksys_", "do_epoll_wait", "do_sys_")
def done(stack):
    global total
    if stack and stack[0] == want:
        total += 1
        callers = [f for f in stack[1:] if f != "[unknown]"]
        # The system call the chain began in (a write to the target or to the client, a
        # read, epoll), however deep: which side of the proxy paid.
        entry = next((f for f in callers if f.startswith(ENTRIES)), "no system call")
        chains[" < ".join(callers[:depth]) + f" … {entry}"] += 1
for line in open(path, errors="replace"):
    f = line.split()
    if not f:
        done(stack); stack = []
    elif len(f) >= 2:
        stack.append(f[1].split("+")[0])
done(stack)
per_req = lambda n: n * period_ns / 1000 / reqs
print(f"  {want}: {per_req(total):.3f} µs/req; its callers ({depth} frames up):")
for chain, n in chains.most_common(top):
    print(f"    {per_req(n):6.3f} µs/req  {chain}")
print()
PY
done
