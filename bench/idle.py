#!/usr/bin/env python3
"""Memory per idle keep-alive connection (issue 11): open N connections to a server, make one
request on each, keep them all open and quiet, and report how much the server's resident memory
grew per connection once it has settled.

    python3 bench/idle.py --port 8080 --pids 1234[,1235] [--conns 10000] [--settle 6]

Prints one line: `idle <label> conns=N before_kib=.. after_kib=.. per_conn_kib=..`.
"""
import argparse
import asyncio
import resource
import sys


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def one(port, path, host, conns, sem):
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if not head.startswith(b"HTTP/1.1 200") or b"connection: close" in head.lower():
            raise RuntimeError(f"not a kept-alive 200: {head[:80]!r}")
        await reader.readexactly(length)
        conns.append(writer)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pids", required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--settle", type=float, default=6.0)
    ap.add_argument("--path", default="/index.html")
    ap.add_argument("--host", default="bench.local")
    ap.add_argument("--label", default="server")
    args = ap.parse_args()
    pids = [int(p) for p in args.pids.split(",") if p]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(pids)
    conns = []
    sem = asyncio.Semaphore(256)
    await asyncio.gather(*(one(args.port, args.path, args.host, conns, sem) for _ in range(args.conns)))
    # Quiet long enough for the server to give idle buffers back (wxedge: after 1 s) and for
    # its memory trimmer (every 5 s) to hand freed pages to the kernel.
    await asyncio.sleep(args.settle)
    after = rss_kib(pids)
    for w in conns:
        w.close()
    per = (after - before) / max(1, len(conns))
    print(f"idle {args.label} conns={len(conns)} before_kib={before} after_kib={after} per_conn_kib={per:.2f}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # a refused or cut connection is a finding, not a traceback
        sys.exit(f"idle: {e}")
