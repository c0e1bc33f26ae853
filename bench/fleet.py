"""The measuring half of bench/fleet.sh (Python 3, standard library only).

Starts the three instances from the files fleet.sh wrote (and kills them at exit), then:
- propagation: N switches, alternating green/blue, each through the next instance's admin
  API; from the API's answer, every instance's listener is polled with a GET about every
  millisecond on a keep-alive connection until its `x-backend` names the new group;
- failover: R rounds of a canary held in a timed pause, load through the two instances that
  do not lead, SIGKILL to the leader, and the time until the survivors agree on a new leader
  and until the rollout is driven again (its checkpointed pause time grows), whether the
  pause time was kept, and the failed requests; then abort, restart the killed instance.

A broken run (an instance that does not start, a switch never served, no leader) ends with
exit code 1 and the tail of the instances' logs; a slow figure is reported, not judged.
"""

import argparse
import ctypes
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

CANARY = {"kind": "canary", "steps": [{"weight": 10}, {"pause": "30s"}, {"weight": 100}]}
# How far into the pause the leader is killed: past two of the driver's 1 s checkpoints, so
# there is recorded pause time to keep.
KILL_AFTER_MS = 2500


def die_with_parent():
    """In the child before exec: SIGKILL when this script dies, however it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Broken(Exception):
    """The run cannot go on: reported with the instances' logs, exit code 1."""


def now():
    return time.perf_counter()


class Instance:
    def __init__(self, spec, binary, logs):
        self.name, self.path, web, admin = spec.split(":")
        self.web, self.admin = int(web), int(admin)
        self.binary, self.log = binary, os.path.join(logs, self.name + ".log")
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            env = dict(os.environ, SWITCHYARD_LOG=os.environ.get("SWITCHYARD_LOG", "warn"))
            self.proc = subprocess.Popen([self.binary, "run", "-c", self.path], stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL, env=env,
                                         preexec_fn=die_with_parent)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class Api:
    """One instance's admin API over one keep-alive connection (reopened after an error)."""

    def __init__(self, port, token):
        self.port, self.token, self.conn = port, token, None

    def call(self, method, path, body=None):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
                data = json.dumps(body).encode() if body is not None else None
                self.conn.request(method, path, body=data, headers={
                    "Authorization": "Bearer " + self.token, "Content-Type": "application/json"})
                r = self.conn.getresponse()
                text = r.read()
                if r.status >= 300:
                    raise Broken(f"{method} {path} on :{self.port}: {r.status} {text[:300]!r}")
                return json.loads(text or b"null")
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise

    def get(self, path):
        return self.call("GET", path)


class Web:
    """GETs through one instance's listener on a keep-alive connection: (status, backend)."""

    def __init__(self, port):
        self.port, self.conn = port, None

    def get(self):
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            self.conn.request("GET", "/")
            r = self.conn.getresponse()
            r.read()
            return r.status, r.getheader("x-backend")
        except (OSError, http.client.HTTPException):
            self.conn = None
            return None, None


def try_get(api, path):
    """A read that may fail (an instance starting or gone): None then."""
    try:
        return api.get(path)
    except (OSError, http.client.HTTPException, Broken, ValueError):
        return None


def wait_for(what, limit, probe, every=0.01):
    """probe() until it returns something truthy; Broken after `limit` seconds."""
    end = now() + limit
    while True:
        got = probe()
        if got:
            return got
        if now() > end:
            raise Broken(f"timed out after {limit} s waiting for {what}")
        time.sleep(every)


def running(instances):
    """Broken when an instance that should run has exited (a bad file, a port taken)."""
    for inst in instances:
        if inst.proc and inst.proc.poll() is not None:
            raise Broken(f"{inst.name} exited with {inst.proc.returncode}")
    return True


def agreed_leader(apis, not_=None):
    """The leader every one of `apis` names, when they agree on one other than `not_`."""
    names = set()
    for api in apis:
        st = try_get(api, "/api/v1/status")
        names.add(st and st.get("fleet", {}).get("leader"))
    if len(names) == 1:
        name = names.pop()
        if name and name != not_:
            return name
    return None


def percentile(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms) - 1, round((len(sorted_ms) - 1) * q))]


def distribution(ms):
    s = sorted(ms)
    return (f"n={len(s)} min {s[0]:.1f}  p50 {percentile(s, 0.5):.1f}  p90 {percentile(s, 0.9):.1f}"
            f"  p99 {percentile(s, 0.99):.1f}  max {s[-1]:.1f} ms")


def propagation(instances, apis, switches):
    """Per switch, the time from the API's answer until each instance serves the new group."""
    webs = [Web(i.web) for i in instances]
    wait_for("every instance serving blue", 10,
             lambda: all(w.get()[1] == "blue" for w in webs))
    every, per_instance, by_watch = [], [[] for _ in instances], []
    n = len(instances)
    for k in range(switches):
        to = "green" if k % 2 == 0 else "blue"
        via = k % n
        apis[via].call("POST", "/api/v1/services/shop/switch", {"group": to})
        answered = now()
        pending = set(range(n))
        passes = 0
        while pending:
            tick = now()
            # Each pass starts at another instance, so that none is always polled first.
            passes += 1
            for i in sorted(pending, key=lambda i: (i - k - passes) % n):
                if webs[i].get()[1] == to:
                    ms = (now() - answered) * 1000
                    per_instance[i].append(ms)
                    if i != via:
                        by_watch.append(ms)
                    pending.discard(i)
            if now() - answered > 5:
                raise Broken(f"switch {k + 1} to {to}: {sorted(pending)} never served it")
            time.sleep(max(0.0, 0.001 - (now() - tick)))
        every.append(max(per_instance[i][-1] for i in range(n)))
    return every, per_instance, by_watch


class Load:
    """Keep-alive clients through some instances, counting answers and failures."""

    def __init__(self, ports, per_instance=2):
        self.ok = self.failed = 0
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(p,), daemon=True)
                        for p in ports for _ in range(per_instance)]
        for t in self.threads:
            t.start()

    def client(self, port):
        web = Web(port)
        while not self.stopping.is_set():
            status, _ = web.get()
            with self.lock:
                if status == 200:
                    self.ok += 1
                else:
                    self.failed += 1

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join()
        return self.ok, self.failed


def rollout(api):
    return try_get(api, "/api/v1/services/shop/rollout") or {}


def failover_round(instances, apis, start_via):
    """One kill of the leader mid-pause; returns the round's figures."""
    apis[start_via].call("POST", "/api/v1/rollouts",
                         {"service": "shop", "candidate": "green", "strategy": CANARY})
    def in_pause():
        r = rollout(apis[start_via])
        return r.get("status") == "progressing" and (r.get("pause_elapsed_ms") or 0) >= KILL_AFTER_MS
    wait_for("the canary in its pause", 15, in_pause)
    leader = wait_for("an agreed leader", 10, lambda: agreed_leader(apis))
    dead = next(i for i, inst in enumerate(instances) if inst.name == leader)
    live = [i for i in range(len(instances)) if i != dead]
    watch = apis[live[0]]
    load = Load([instances[i].web for i in live])
    time.sleep(0.5)
    before = rollout(watch)
    instances[dead].kill()
    killed = now()

    # Until the survivors agree: the largest pause time seen so far, so that a checkpoint the
    # dead leader wrote just before it died is not taken for the new leader's.
    seen = before.get("pause_elapsed_ms") or 0

    def new_leader():
        nonlocal seen
        seen = max(seen, rollout(watch).get("pause_elapsed_ms") or 0)
        return agreed_leader([apis[i] for i in live], not_=leader)
    successor = wait_for("a new leader", 30, new_leader)
    handover = now() - killed
    # The new leader holds the rollout until its guard has judged one full window (as after
    # a restart); its view's `waiting_for` says so until then.
    lead_api = apis[next(i for i in live if instances[i].name == successor)]
    wait_for("the new leader's guard window", 30, lambda: "full window" not in str(
        rollout(lead_api).get("waiting_for")))
    released = now() - killed
    def driven_again():
        r = rollout(watch)
        moved = (r.get("pause_elapsed_ms") or 0) > seen or r.get("step") != before.get("step")
        return r if moved else None
    after = wait_for("the rollout driven again", 30, driven_again)
    driven = now() - killed
    ok, failed = load.stop()

    apis[live[0]].call("POST", "/api/v1/services/shop/rollout/abort", {"reason": "bench round over"})
    instances[dead].start()
    wait_for(f"{leader} back, agreeing on the leader", 30,
             lambda: running(instances) and agreed_leader(apis))
    return {
        "leader": leader, "successor": successor, "handover_ms": handover * 1000,
        "released_ms": released * 1000, "driven_ms": driven * 1000, "before_ms": before.get("pause_elapsed_ms") or 0,
        "after_ms": after.get("pause_elapsed_ms") or 0,
        "same_step": after.get("step") == before.get("step"),
        "requests": ok + failed, "failed": failed,
    }


def spread(values):
    s = sorted(values)
    return f"min {s[0]:.0f}  median {s[len(s) // 2]:.0f}  max {s[-1]:.0f} ms"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--switches", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ttl", default="2s")
    p.add_argument("--logs", required=True)
    p.add_argument("instances", nargs="+", help="NAME:FILE:WEB_PORT:ADMIN_PORT")
    args = p.parse_args()
    instances = [Instance(s, args.bin, args.logs) for s in args.instances]
    apis = [Api(i.admin, args.token) for i in instances]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for inst in instances:
            inst.start()
        leader = wait_for("a leader every instance names", 30,
                          lambda: running(instances) and agreed_leader(apis))
        print(f"{len(instances)} instances up, {leader} leads")

        every, per_instance, by_watch = propagation(instances, apis, args.switches)
        summary = [f"propagation, {args.switches} switches, each through the next instance "
                   "(API answer -> serving the new group; target p99 <= 100 ms):",
                   f"  every instance    {distribution(every)}"]
        summary += [f"  {inst.name:<16}  {distribution(ms)}"
                    for inst, ms in zip(instances, per_instance)]
        summary.append(f"  by watch only     {distribution(by_watch)}"
                       " (the instances a switch did not go through)")
        print("\n".join(summary))

        rounds = []
        for k in range(args.rounds):
            r = failover_round(instances, apis, start_via=k % len(instances))
            rounds.append(r)
            print(f"round {k + 1}: killed {r['leader']} with {r['before_ms']} ms of the pause recorded; "
                  f"{r['successor']} leads after {r['handover_ms']:.0f} ms, holds it until "
                  f"{r['released_ms']:.0f} ms, pause time grows again after "
                  f"{r['driven_ms']:.0f} ms, to {r['after_ms']} ms "
                  f"({'kept' if r['after_ms'] >= r['before_ms'] else 'LOST'}"
                  f"{'' if r['same_step'] else ', STEP CHANGED'}); "
                  f"{r['failed']} of {r['requests']} requests failed")
        if rounds:
            summary += [
                f"failover, {len(rounds)} rounds, SIGKILL to the leader 2.5 s+ into a 30 s pause, "
                f"lease_ttl {args.ttl} (target: new leader within TTL + 1 s):",
                f"  new leader agreed   {spread([r['handover_ms'] for r in rounds])}",
                f"  guard window judged {spread([r['released_ms'] for r in rounds])}"
                " (the new leader holds the rollout until then)",
                f"  pause time grows    {spread([r['driven_ms'] for r in rounds])}"
                " (checkpointed every 1 s)",
                f"  pause time kept     {sum(r['after_ms'] >= r['before_ms'] and r['same_step'] for r in rounds)}"
                f" of {len(rounds)} rounds",
                f"  failed requests     {sum(r['failed'] for r in rounds)} of "
                f"{sum(r['requests'] for r in rounds)} through the survivors"]
        print("\n---- summary " + "-" * 60)
        print("\n".join(summary))
        print("-" * 73)
    except Broken as e:
        print(f"broken run: {e}", file=sys.stderr)
        for inst in instances:
            with open(inst.log, errors="replace") as f:
                tail = f.readlines()[-15:]
            print(f"--- {inst.name} log (last lines) ---\n{''.join(tail)}", file=sys.stderr)
        sys.exit(1)
    finally:
        for inst in instances:
            inst.kill()


if __name__ == "__main__":
    main()
