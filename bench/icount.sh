#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind over a wrk
# run after a warm-up, for one or more switchyard builds and (PEERS=1) for nginx and HAProxy
# configured as in bench/run.sh. Unlike req/s or CPU time the count does not depend on how
# a noisy host shares its cores: it repeats to within a fraction of a percent, so it can
# tell a 1 % change in the data plane's own code. It says nothing about the kernel's share
# (about two thirds of a proxied request on loopback, the same for every proxy), nor about
# cache misses; bench/ab.sh and bench/run.sh measure those, as time.
#
#   bench/icount.sh /tmp/sy-before target/release/switchyard
#   PEERS=1 bench/icount.sh target/release/switchyard
#   TOP=25 bench/icount.sh target/release/switchyard     # and where the instructions go
#   H2=1 bench/icount.sh /tmp/sy-before target/release/switchyard   # h2c by h2load (-m 10)
#   CACHE=1 PEERS=1 bench/icount.sh target/release/switchyard  # and simulated cache misses and
#     branch mispredictions per request (valgrind's model of this CPU's caches: time per
#     instruction is not the same for every proxy, and this says where it differs)
#   KEEP=/tmp/cg bench/icount.sh target/release/switchyard  # keeps each callgrind file there
#     (callgrind_annotate --tree=caller /tmp/cg/NAME.cg: who calls memmove, and how often)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: [PEERS=1] [TOP=N] bench/icount.sh BUILD..."; exit 2; }
DURATION=${DURATION:-8}; CONNS=${CONNS:-16}; TOP=${TOP:-0}; PEERS=${PEERS:-0}
export PATH="$PATH:/usr/sbin"
H2=${H2:-0}
tools=(valgrind callgrind_control wrk); [ "$PEERS" = 1 ] && tools+=(nginx haproxy)
[ "$H2" = 1 ] && tools+=(h2load)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install -y valgrind wrk nginx haproxy)"; exit 1; }
done
WORK=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
. bench/lib.sh

# The backends run natively (the first build's `backend` subcommand); only the proxy is
# under valgrind.
B1=$(port); B2=$(port)
"$1" backend --workers 1 --bind 127.0.0.1:$B1 --name blue >/dev/null 2>&1 & pids+=($!)
"$1" backend --workers 1 --bind 127.0.0.1:$B2 --name green >/dev/null 2>&1 & pids+=($!)

# load PORT SECONDS: drives the proxy on PORT; prints the requests answered, then any errors
# (on a second line). HTTP/1.1 by wrk, or h2c by h2load with H2=1 (10 streams at a time
# per connection).
load() {
  if [ "$H2" = 1 ]; then
    local res; res=$(h2load -c"$CONNS" -m10 -D"$2" "http://127.0.0.1:$1/" 2>&1)
    awk '/^requests:/ {print $8; if ($8 != $6) print "failed:", $0}' <<<"$res"
  else
    local res; res=$(wrk -t1 -c"$CONNS" -d"$2s" "http://127.0.0.1:$1/")
    awk '/requests in/ {print $1}' <<<"$res"
    awk '/Non-2xx|Socket errors/' <<<"$res"
  fi
}

# count NAME PORT COMMAND...: runs COMMAND (a proxy listening on PORT) under callgrind.
count() {
  local name=$1 p=$2; shift 2
  local out="$WORK/cg"; rm -rf "$out"; mkdir "$out"
  local sim=(); [ "${CACHE:-0}" = 1 ] && sim=(--cache-sim=yes --branch-sim=yes)
  valgrind --tool=callgrind "${sim[@]}" --compress-strings=no --callgrind-out-file="$out/cg.%p" "$@" \
    >"$WORK/proxy.log" 2>&1 &
  local vg=$!
  for _ in $(seq 300); do curl -fs -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  load "$p" 3 >/dev/null
  callgrind_control -z "$vg" >/dev/null 2>&1
  local res; res=$(load "$p" "$DURATION")
  callgrind_control -d "$vg" >/dev/null 2>&1
  local reqs errors
  reqs=$(head -1 <<<"$res")
  errors=$(tail -n +2 <<<"$res")
  [ -z "$errors" ] || { echo "$name: the load saw errors: $errors"; exit 1; }
  python3 - "$(ls -S "$out"/cg.* | head -1)" "$reqs" "$name" "$TOP" <<'PY' | tee -a "$WORK/summary"
import collections, re, sys
path, reqs, name, top = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
own = collections.Counter()
events, sums = ["Ir"], collections.Counter()
fn, after_call = None, False
for line in open(path):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith("fn="):
        fn = re.sub(r"^\(\d+\) ?", "", line[3:].strip())
    elif line.startswith("calls="):
        after_call = True  # the next cost line is the callee's, not this function's
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if after_call:
            after_call = False
        elif len(parts) >= 2:
            own[fn] += int(parts[1])
            for e, v in zip(events, parts[1:]):
                sums[e] += int(v)
total = sum(own.values())
print(f"{name}: {total / reqs:,.0f} instructions per request ({reqs} requests)")
if "D1mr" in events:
    per = lambda *es: sum(sums[e] for e in es) / reqs
    print(f"  per request: L1 misses {per('I1mr', 'D1mr', 'D1mw'):,.0f} (instruction {per('I1mr'):,.0f}),"
          f" last-level misses {per('ILmr', 'DLmr', 'DLmw'):,.1f},"
          f" mispredicted branches {per('Bcm', 'Bim'):,.0f} of {per('Bc', 'Bi'):,.0f}")
for f, c in own.most_common(top):
    print(f"  {c / total * 100:5.1f}%  {c / reqs:7,.0f}  {f[:120]}")
PY
  kill "$vg" 2>/dev/null || true; wait "$vg" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$(ls -S "$out"/cg.* | head -1)" "$KEEP/$(basename "$name").cg"; fi
}

for bin in "$@"; do
  P=$(port); A=$(port)
  switchyard_config "$WORK/s.toml" "$P" "$A" "$B1" "$B2"
  SWITCHYARD_LOG=error count "$bin" "$P" "$bin" run --workers 1 -c "$WORK/s.toml"
done
if [ "$PEERS" = 1 ]; then
  P=$(port); nginx_config "$WORK" "$P" "$B1" "$B2"
  count nginx "$P" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" -g 'master_process off;'
  P=$(port); haproxy_config "$WORK/haproxy.cfg" "$P" "$B1" "$B2"
  count haproxy "$P" haproxy -f "$WORK/haproxy.cfg" -db
fi
echo
awk '/instructions per request/ {n[++k]=$1; sub(":$", "", n[k]); v[k]=$2; gsub(",", "", v[k])}
  END {for (i = 2; i <= k; i++) printf "%s / %s: %.2f\n", n[i], n[1], v[i] / v[1]}' "$WORK/summary"
