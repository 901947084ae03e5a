#!/usr/bin/env python3
"""Two wxedge binaries (A: before a change, B: after), the same requests, in instructions per
request under valgrind's callgrind: the whole edge process (every thread, the log writer
included) counted for N requests on one keep-alive connection after a warm-up, the access log on
as ops run it. Instruction counts repeat run after run whatever else the machine does, so a
refactor's cost shows even on 2 busy cores, where req/s and CPU time do not (bench/run.sh gives
those, against nginx). Prints one line per case:

    <case>: A <a> / B <b> instructions per request (B/A <ratio>)

The API cases go to a small keep-alive backend in this process (its work is not counted).
No thresholds.

    python3 bench/ab_instructions.py --a /tmp/wxedge-old --b target/release/wxedge
"""

import argparse
import os
import socket
import tempfile
import threading

import log_instructions as li

WECHAT = [f"User-Agent: {li.WECHAT_UA}", "Referer: https://bench.local/pages/index/index"]


def backend():
    """A keep-alive HTTP/1.1 backend answering every request with a small JSON body."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    body = b'{"code":0,"data":{"nickname":"bench"}}'
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)

    def serve(conn):
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                conn.sendall(answer)

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="the binary before")
    ap.add_argument("--b", required=True, help="the binary after")
    ap.add_argument("--dist", default=os.path.join(os.path.dirname(__file__), "..", "dist"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()
    port = backend()
    cases = [
        ("small static file", "/index.html", WECHAT),
        ("304 revalidation", "/index.html", WECHAT + ["If-None-Match: *"]),
        ("SPA navigation", "/pages/index/index", WECHAT + ["Accept: text/html"]),
        ("API call", "/api/user/info", WECHAT + ["Cookie: a=1; b=2"]),
    ]
    with tempfile.TemporaryDirectory(prefix="wxedge-ab-") as workdir:
        for name, path, extra in cases:
            req = li.request(path, "bench.local", extra)
            counts = []
            for binary in (args.a, args.b):
                run = argparse.Namespace(
                    bin=os.path.abspath(binary), dist=os.path.abspath(args.dist),
                    requests=args.requests, warmup=args.warmup,
                    env=[f"WXEDGE_BACKEND=http://127.0.0.1:{port}"],
                )
                counts.append(li.instructions(run, True, req, workdir))
            a, b = counts
            print(f"{name} ({path}): A {a:,.0f} / B {b:,.0f} instructions per request "
                  f"(B/A {b / a:.3f})", flush=True)


if __name__ == "__main__":
    main()
