#!/usr/bin/env python3
"""What an idle keep-alive client connection costs a proxy: bench/idle.sh's client.

For each proxy given (name:port:pid), one after the other: RSS before; N connections opened
(at most CONCURRENCY at a time), each sending one request and reading the whole answer, then
left open and idle; RSS with them held; all closed; RSS right after and AFTER seconds later.
RSS is /proc/PID/status VmRSS summed over the process and its children (nginx's worker).

Modes: h1 (HTTP/1.1), h2 (h2c, prior knowledge), tls (HTTP/1.1 over TLS, ALPN http/1.1),
tls-h2 (h2 by ALPN). Standard library only; 127.0.0.1 only; every loop bounded.

  idle.py --mode h1 --conns 10000 --results FILE switchyard:PORT:PID nginx:PORT:PID ...
  idle.py --summary FILE
"""
import argparse
import asyncio
import json
import os
import ssl
import struct
import sys
import time


def rss_kb(pid):
    """VmRSS of pid and of its children, in KB."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The field after the command's closing parenthesis: state, then ppid.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            pids.append(int(entry))
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---- HTTP/1.1 -------------------------------------------------------------------------------

async def h1_exchange(reader, writer):
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            fields[k.strip().lower()] = v.strip()
    status = int(head.split(b" ", 2)[1])
    if b"content-length" in fields:
        await reader.readexactly(int(fields[b"content-length"]))
    elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        for _ in range(10_000):
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


# ---- HTTP/2 (just enough: one GET on stream 1) ---------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, GOAWAY = 0x0, 0x1, 0x4, 0x7
END_STREAM, ACK = 0x1, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_request(scheme):
    # HPACK: :method GET (2), :scheme http (6) / https (7), :path / (4), :authority literal
    # with incremental indexing on static name 1.
    block = bytes([0x82, 0x86 if scheme == "http" else 0x87, 0x84, 0x41, 9]) + b"localhost"
    return PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x4 | END_STREAM, 1, block)


async def h2_exchange(reader, writer, scheme):
    writer.write(h2_request(scheme))
    await writer.drain()
    status = None
    for _ in range(1000):
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == SETTINGS and not flags & ACK:
            writer.write(frame(SETTINGS, ACK, 0))
            await writer.drain()
        elif kind == GOAWAY:
            raise ConnectionError("GOAWAY")
        elif stream == 1 and kind == HEADERS and status is None:
            # The first header of an answer is :status, nearly always an indexed static
            # entry (8: 200 … 14: 500); anything else counts as "some answer".
            b = payload[0]
            status = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}.get(b, 0)
        if stream == 1 and kind in (DATA, HEADERS) and flags & END_STREAM:
            return status
    raise ConnectionError("no end of stream 1")


# ---- one connection ---------------------------------------------------------------------------

def tls_context(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


async def open_one(port, mode, contexts):
    ctx = contexts.get(mode)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None, limit=1 << 16
    )
    if mode in ("h1", "tls"):
        status = await h1_exchange(reader, writer)
    else:
        status = await h2_exchange(reader, writer, "https" if ctx else "http")
    return reader, writer, status


async def hold(name, port, pid, mode, conns, concurrency, settle, after):
    contexts = {"tls": tls_context("http/1.1"), "tls-h2": tls_context("h2")}
    # A few connections first, so that "before" includes what the first requests set up
    # (upstream pools, lazily built state), not only the idle process.
    for _ in range(20):
        r, w, _ = await open_one(port, mode, contexts)
        w.close()
    await asyncio.sleep(settle)
    before = rss_kb(pid)

    held, failures, statuses = [], 0, {}
    gate = asyncio.Semaphore(concurrency)

    async def one():
        nonlocal failures
        async with gate:
            try:
                r, w, status = await asyncio.wait_for(open_one(port, mode, contexts), 30)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                failures += 1
                return
            statuses[status] = statuses.get(status, 0) + 1
            held.append((r, w))

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(conns)))
    opened = time.monotonic() - t0
    await asyncio.sleep(settle)
    during = rss_kb(pid)
    # The proxy closed none of them while they were idle (an EOF would have been read).
    dropped = sum(1 for r, _ in held if r.at_eof())

    for _, w in held:
        w.close()
    for _, w in held:
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
    await asyncio.sleep(0.5)
    closed = rss_kb(pid)
    await asyncio.sleep(after)
    later = rss_kb(pid)
    n = len(held)
    return {
        "mode": mode,
        "proxy": name,
        "conns": n,
        "failures": failures,
        "dropped": dropped,
        "statuses": {str(k): v for k, v in statuses.items()},
        "open_s": round(opened, 2),
        "before_kb": before,
        "held_kb": during,
        "per_conn_kb": round((during - before) / n, 2) if n else None,
        "closed_kb": closed,
        "after_kb": later,
        "after_s": after,
    }


def row(r):
    return (f"{r['mode']:7}{r['proxy']:12}{r['conns']:>7}{r['per_conn_kb']:>10.2f}"
            f"{r['before_kb'] / 1024:>10.1f}{r['held_kb'] / 1024:>10.1f}"
            f"{r['closed_kb'] / 1024:>10.1f}{r['after_kb'] / 1024:>10.1f}"
            f"{r['failures'] + r['dropped']:>6}{r['open_s']:>8.1f}")


HEADER = (f"{'mode':7}{'proxy':12}{'conns':>7}{'KB/conn':>10}{'MB before':>10}{'MB held':>10}"
          f"{'MB closed':>10}{'MB later':>10}{'fail':>6}{'open s':>8}")


def summary(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    if not rows:
        print("no results")
        return
    print(HEADER)
    for r in rows:
        print(row(r))
    print(f"(MB later: {rows[0]['after_s']} s after closing; fail: connections refused, cut or closed while idle)")
    for mode in dict.fromkeys(r["mode"] for r in rows):
        by = {r["proxy"]: r for r in rows if r["mode"] == mode}
        sy = by.get("switchyard")
        peers = [p for p in ("nginx", "haproxy") if p in by and by[p]["per_conn_kb"]]
        if sy and sy["per_conn_kb"] and peers:
            ratios = ", ".join(f"{sy['per_conn_kb'] / by[p]['per_conn_kb']:.1f}x {p}" for p in peers)
            print(f"{mode}: switchyard {sy['per_conn_kb']:.2f} KB per idle connection ({ratios})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["h1", "h2", "tls", "tls-h2"], default="h1")
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--after", type=float, default=5.0)
    ap.add_argument("--results")
    ap.add_argument("--summary")
    ap.add_argument("targets", nargs="*", help="name:port:pid")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary)
        return
    print(HEADER, flush=True)
    for t in a.targets:
        name, port, pid = t.split(":")
        r = asyncio.run(hold(name, int(port), int(pid), a.mode, a.conns, a.concurrency, a.settle, a.after))
        print(row(r), flush=True)
        if a.results:
            with open(a.results, "a") as f:
                f.write(json.dumps(r) + "\n")
        bad = {k: v for k, v in r["statuses"].items() if k != "200"}
        if bad:
            print(f"  {name}: answers other than 200: {bad}", file=sys.stderr)


if __name__ == "__main__":
    main()
