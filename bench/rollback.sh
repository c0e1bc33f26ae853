#!/usr/bin/env bash
# How fast the sequential guard takes a bad canary back, and how often it takes a good one
# back. Two backends (`switchyard backend`, one process each), switchyard with the default
# guard (a look every 100 ms, α = 0.01 per hour, 5 points tolerated on 5xx, slow = over
# 1.5 × stable's p99), a canary at 10 %, and wrk's 16 connections on `/sleep/30`: each
# answer takes ~31 ms, so the load is ~500 req/s (printed at the end).
#
#   errors:  ROUNDS rounds (9): healthy at 10 % for 4–5 s (a random phase against the
#            guard's tick), then 30 % of the candidate's answers become 500s; the time from
#            that onset until the rollout reads aborted. Then a retry.
#   latency: LAT_ROUNDS rounds (5): the same, but the candidate's answers take twice as
#            long (31 → 61 ms) from the onset.
#   soak:    a healthy candidate with the same 1 % background 5xx as stable, SOAK_SECONDS
#            (30; the issue's figure is 600) at 10 %: every rollback is a false one, counted
#            (and retried).
#
#   bench/rollback.sh
#   ROUNDS=15 LAT_ROUNDS=9 SOAK_SECONDS=600 bench/rollback.sh
#   PHASES="soak" SOAK_SECONDS=600 bench/rollback.sh
#   SWITCHYARD_BIN=/tmp/switchyard-before PHASES=errors bench/rollback.sh
#   GUARD='max_error_rate = 0' PHASES=errors bench/rollback.sh   # [service.guard] settings
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-9}
LAT_ROUNDS=${LAT_ROUNDS:-5}
SOAK_SECONDS=${SOAK_SECONDS:-30}
PHASES=${PHASES:-errors latency soak}
command -v wrk >/dev/null || {
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
}
# SWITCHYARD_BIN: a binary already built (to compare builds), else this tree's, built.
BIN=${SWITCHYARD_BIN:-}
[ -n "$BIN" ] || { cargo build --release -q; BIN=target/release/switchyard; }
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
B1=$(port); B2=$(port); SY=$(port); ADMIN=$(port)
$BIN backend --workers 1 --bind 127.0.0.1:$B1 --name blue >/dev/null 2>&1 & pids+=($!)
$BIN backend --workers 1 --bind 127.0.0.1:$B2 --name green >/dev/null 2>&1 & pids+=($!)
cat > "$WORK/sy.toml" <<CONF
[admin]
bind = "127.0.0.1:$ADMIN"
token = "bench"
[store]
path = "$WORK/state.db"
[[listener]]
name = "web"
bind = "127.0.0.1:$SY"
[[route]]
name = "all"
priority = 1
forward = "shop"
[[service]]
name = "shop"
active = "blue"
[service.strategy]
kind = "canary"
steps = [{ weight = 10 }, { pause = "1h" }]
${GUARD:+[service.guard]
$GUARD}
[[service.group]]
name = "blue"
targets = ["127.0.0.1:$B1"]
[[service.group]]
name = "green"
targets = ["127.0.0.1:$B2"]
CONF
SWITCHYARD_LOG=error $BIN run -c "$WORK/sy.toml" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.1; done

wrk -t1 -c16 -d3600s "http://127.0.0.1:$SY/sleep/30" > "$WORK/wrk.txt" 2>&1 & WRK=$!; pids+=($WRK)

python3 - "$ADMIN" "$B1" "$B2" "$ROUNDS" "$LAT_ROUNDS" "$SOAK_SECONDS" "$PHASES" <<'PY'
import json, random, sys, time, urllib.request
admin, blue, green = sys.argv[1], sys.argv[2], sys.argv[3]
rounds, lat_rounds, soak_seconds, phases = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7].split()
def call(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{admin}" + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer bench", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
def faults(port, errors=0, delay=0):
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{port}/_faults?errors={errors}&delay={delay}", method="POST")).read()
def rollout():
    return call("GET", "/api/v1/services/shop/rollout")
def wait(pred, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        r = rollout()
        if pred(r):
            return r
        time.sleep(0.005)
    raise SystemExit("timed out waiting for the rollout")
started = False
def begin():
    global started
    if not started:
        call("POST", "/api/v1/rollouts", {"service": "shop", "candidate": "green"})
        started = True
    else:
        call("POST", "/api/v1/services/shop/rollout/retry", {})
    wait(lambda r: r["weight"] == 1000 and r["status"] == "progressing")
def summary(name, times, target):
    times = sorted(times)
    ms = [t * 1000 for t in times]
    print(f"{name}: {len(ms)} rounds: min {ms[0]:.0f} ms, median {ms[len(ms)//2]:.0f} ms, "
          f"max {ms[-1]:.0f} ms (target: {target})\n", flush=True)
def rounds_of(name, n, onset_faults, target):
    times = []
    for i in range(n):
        faults(green)
        begin()
        # Steady state at 10 %, with a random phase against the guard's tick.
        time.sleep(4 + random.random())
        r = rollout()
        if r["status"] != "progressing":
            raise SystemExit(f"{name} round {i+1}: stopped before the onset (a false rollback?): {r.get('reason')}")
        onset_faults()
        onset = time.monotonic()
        r = wait(lambda r: r["status"] == "aborted")
        took = time.monotonic() - onset
        times.append(took)
        print(f"{name} round {i+1}: rolled back {took*1000:.0f} ms after the onset — {r['reason']}", flush=True)
    faults(green)
    summary(name, times, target)
if "errors" in phases:
    rounds_of("30 % 5xx", rounds, lambda: faults(green, errors=300), "median ≤ 300 ms, max ≤ 600 ms")
if "latency" in phases:
    # /sleep/30 plus 30 ms more: twice the latency (p99 included).
    rounds_of("latency ×2", lat_rounds, lambda: faults(green, delay=30), "≤ 2000 ms")
if "soak" in phases:
    faults(blue, errors=10)
    faults(green, errors=10)
    begin()
    false_rollbacks, end = [], time.monotonic() + soak_seconds
    last = None
    while time.monotonic() < end:
        r = rollout()
        if r["status"] == "aborted":
            false_rollbacks.append(r["reason"])
            print(f"soak: FALSE ROLLBACK after {soak_seconds - (end - time.monotonic()):.0f} s — {r['reason']}", flush=True)
            begin()
        last = r
        time.sleep(0.25)
    g = (last or {}).get("guard") or {}
    print(f"soak: {soak_seconds} s of a healthy candidate (1 % 5xx on both) at 10 %: "
          f"{len(false_rollbacks)} false rollbacks (the defaults allow ≤ 0.01 per hour: "
          f"≤ {0.01 * soak_seconds / 3600:.4f} expected)\n  last look: {g.get('detail')}", flush=True)
    faults(blue)
    faults(green)
PY
kill -INT "$WRK" 2>/dev/null || true
wait "$WRK" 2>/dev/null || true
grep -E "Requests/sec|Non-2xx" "$WORK/wrk.txt" | sed 's/^/load: /' || true
