#!/usr/bin/env python3
"""Many keep-alive clients at a moderate rate: bench/clients.sh's client (issue 17 point 3).

For one target (name:port:pid): CONNS connections opened (CONCURRENCY at a time, each with one
request), then for DURATION seconds each sends a GET every CONNS / RATE seconds on its own
connection (the first at a random offset, so the total is an even RATE per second) and times
it from the write to the answer's last byte. The schedule is fixed (a late answer does not
push the next request back), so a stall shows in the latencies instead of lowering the rate.
Meanwhile the proxy's RSS (with its children) is read every second; its CPU time is read
before and after the timed part. One JSON line per run is appended to --results.

The client is Python asyncio on one core: its own event loop adds to every latency. The
same run straight to a backend (name `direct`, pid the backend's) measures that floor.

Standard library only; 127.0.0.1 only; every loop bounded.

  clients.py --conns 10000 --rate 3000 --duration 20 --results FILE switchyard:PORT:PID
  clients.py --summary FILE
"""
import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idle import h1_exchange  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """User + system clock ticks of pid and its children (nginx's workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state (0), ppid (1), ... utime (11), stime (12).
        if int(entry) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total


def family(pid):
    """pid and its children (nginx's workers), found once: a scan of /proc takes long
    enough to delay the event loop's timers."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def rss_of(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(name, port, pid, conns, rate, duration, concurrency):
    gate = asyncio.Semaphore(concurrency)
    held, failures = [], 0

    async def open_one():
        nonlocal failures
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 16), 30)
                await asyncio.wait_for(h1_exchange(r, w), 30)
                held.append((r, w))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                failures += 1

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(conns)))
    open_s = time.monotonic() - t0
    pids = family(pid)
    rss_open = rss_of(pids)
    # The connections' objects will live through the run: out of the collector's sight, and
    # no collection while timing (a full one over 10,000 connections is a pause).
    gc.collect()
    gc.freeze()
    gc.disable()

    interval = len(held) / rate if held else 1.0
    latencies, errors, statuses = [], 0, {}
    start = time.monotonic() + 0.5
    end = start + duration

    async def client(r, w):
        nonlocal errors
        due = start + random.random() * interval
        for _ in range(int(duration / interval) + 2):
            if due >= end:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sent = time.monotonic()
            try:
                status = await asyncio.wait_for(h1_exchange(r, w), 10)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                return
            latencies.append(time.monotonic() - sent)
            statuses[status] = statuses.get(status, 0) + 1
            due += interval

    rss = []

    async def sample():
        while time.monotonic() < end:
            rss.append(rss_of(pids))
            await asyncio.sleep(1.0)

    cpu0 = cpu_ticks(pid)
    await asyncio.gather(sample(), *(client(r, w) for r, w in held))
    cpu1 = cpu_ticks(pid)
    gc.enable()
    gc.unfreeze()
    for _, w in held:
        w.close()
    n = len(latencies)
    ms = lambda v: round(v * 1000, 2) if v is not None else None  # noqa: E731
    return {
        "proxy": name,
        "conns": len(held),
        "failures": failures + errors,
        "statuses": {str(k): v for k, v in statuses.items()},
        "open_s": round(open_s, 1),
        "requests": n,
        "rps": round(n / duration),
        "p50_ms": ms(pct(latencies, 0.50)),
        "p99_ms": ms(pct(latencies, 0.99)),
        "p999_ms": ms(pct(latencies, 0.999)),
        "max_ms": ms(max(latencies) if latencies else None),
        "cpu_us_per_req": round((cpu1 - cpu0) * 1e6 / TICK / n, 1) if n else None,
        "rss_open_mb": round(rss_open / 1024, 1),
        "rss_peak_mb": round(max(rss + [rss_open]) / 1024, 1),
    }


COLS = [("proxy", "12"), ("conns", ">7"), ("rps", ">7"), ("p50_ms", ">8"), ("p99_ms", ">8"),
        ("p999_ms", ">9"), ("cpu_us_per_req", ">8"), ("rss_peak_mb", ">9"), ("failures", ">6")]
NAMES = ["proxy", "conns", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "cpu us", "peak MB", "fail"]


def header():
    return "".join(f"{n:{w}}" for n, (_, w) in zip(NAMES, COLS))


def row(r):
    return "".join(f"{'-' if r[k] is None else r[k]:{w}}" for k, w in COLS)


def summary(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["proxy"], []).append(r)
    med = statistics.median
    print(f"medians over {max(len(v) for v in by.values())} round(s):")
    print(header())
    for name, rs in by.items():
        m = {k: med(r[k] for r in rs) if isinstance(rs[0][k], (int, float)) else rs[0][k] for k, _ in COLS}
        m["proxy"], m["failures"] = name, sum(r["failures"] for r in rs)
        print(row({k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()}))
    sy = by.get("switchyard")
    if not sy:
        return
    # Paired by round: the runs of one round follow each other within a minute.
    for peer in ("nginx", "haproxy"):
        if peer not in by:
            continue
        pairs = list(zip(sy, by[peer]))
        ratio = lambda k: med(a[k] / b[k] for a, b in pairs if a[k] and b[k])  # noqa: E731
        print(f"switchyard / {peer} (median of per-round ratios): p99 {ratio('p99_ms'):.2f}x, "
              f"p99.9 {ratio('p999_ms'):.2f}x, CPU per request {ratio('cpu_us_per_req'):.2f}x, "
              f"peak RSS {ratio('rss_peak_mb'):.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=3000)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--results")
    ap.add_argument("--summary")
    ap.add_argument("--header", action="store_true")
    ap.add_argument("target", nargs="?", help="name:port:pid")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary)
        return
    if a.header:
        print(header(), flush=True)
        return
    name, port, pid = a.target.split(":")
    r = asyncio.run(run(name, int(port), int(pid), a.conns, a.rate, a.duration, a.concurrency))
    print(row(r), flush=True)
    if a.results:
        with open(a.results, "a") as f:
            f.write(json.dumps(r) + "\n")
    bad = {k: v for k, v in r["statuses"].items() if k != "200"}
    if bad:
        print(f"  {name}: answers other than 200: {bad}", file=sys.stderr)


if __name__ == "__main__":
    main()
