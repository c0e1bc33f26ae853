#!/usr/bin/env bash
# How fast a failing canary is rolled back. Two backends, switchyard with the default guard
# (every 1 s, 2 s window, 5 points over stable), steady load from wrk, a canary at 10 %.
# Each round turns 30 % of the candidate's answers into 500s and measures the time from that
# onset until the rollout is aborted (and traffic is back on stable), then retries.
#
#   bench/rollback.sh            # 5 rounds
#   ROUNDS=10 bench/rollback.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
command -v wrk >/dev/null || {
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
}
cargo build --release -q
BIN=target/release/switchyard
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
[[service.group]]
name = "blue"
targets = ["127.0.0.1:$B1"]
[[service.group]]
name = "green"
targets = ["127.0.0.1:$B2"]
CONF
SWITCHYARD_LOG=error $BIN run -c "$WORK/sy.toml" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.1; done

wrk -t1 -c16 -d$((ROUNDS * 12 + 10))s "http://127.0.0.1:$SY/" >/dev/null 2>&1 & pids+=($!)

python3 - "$ADMIN" "$B2" "$ROUNDS" <<'PY'
import json, sys, time, urllib.request
admin, green, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(method, path, body=None, base=f"http://127.0.0.1:{admin}"):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer bench", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
def faults(per_mille):
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{green}/_faults?errors={per_mille}", method="POST")).read()
def wait(pred, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        r = call("GET", "/api/v1/services/shop/rollout")
        if pred(r):
            return r
        time.sleep(0.005)
    raise SystemExit("timed out waiting for the rollout")
times = []
for i in range(rounds):
    faults(0)
    if i == 0:
        call("POST", "/api/v1/rollouts", {"service": "shop", "candidate": "green"})
    else:
        call("POST", "/api/v1/services/shop/rollout/retry", {})
    wait(lambda r: r["weight"] == 1000)
    # Steady state at 10 %, with a random phase against the guard's 1 s tick.
    time.sleep(4 + __import__("random").random())
    if call("GET", "/api/v1/services/shop/rollout")["status"] != "progressing":
        raise SystemExit(f"round {i+1}: the rollout was aborted before the onset: a false rollback")
    faults(300)
    onset = time.monotonic()
    r = wait(lambda r: r["status"] == "aborted")
    took = time.monotonic() - onset
    times.append(took)
    print(f"round {i+1}: rolled back {took*1000:.0f} ms after the onset — {r['reason']}")
if "--events" in sys.argv or __import__("os").environ.get("EVENTS"):
    for e in reversed(call("GET", "/api/v1/events?service=shop&limit=40")):
        print(f"  {e['at']} {e['actor']:<10} {e['kind']:<10} {e['reason']}")
times.sort()
print(f"\nrollback after onset over {rounds} rounds: min {times[0]*1000:.0f} ms, median {times[len(times)//2]*1000:.0f} ms, max {times[-1]*1000:.0f} ms (target: within 2000 ms)")
PY
