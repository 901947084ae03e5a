#!/usr/bin/env python3
"""The access log line's cost in instructions: the same wxedge with its log on and off under
valgrind's callgrind, N requests on one keep-alive connection after a warm-up, the instructions
of the whole process (every thread, the log writer included) counted for those N requests only.

Instruction counts repeat run after run whatever else the machine does, where a difference of
two CPU-time measurements on 2 shared cores does not (bench/run.sh's log-cost step, whose
per-round differences have ranged from -0.06 to 1.77 us). Prints one line per request shape:

    log line: <I> instructions (<on> per request with the log on, <off> off; <shape>)

and, when --user-us-per-request is given (user CPU per request of the same binary with the log
off, measured under load), the line's share of that in microseconds. No thresholds.
"""

import argparse
import glob
import os
import socket
import subprocess
import sys
import tempfile
import time

from readiness import wait_compressed

WECHAT_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.50(0x1800322e) NetType/WIFI Language/zh_CN"
)


def request(path, host, extra):
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"] + extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange(sock, req, n):
    """Send `req` n times, one at a time, reading each whole answer (a 200 with a Content-Length
    body, or a 304)."""
    buf = b""
    for _ in range(n):
        sock.sendall(req)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].decode("latin-1").lower().split("\r\n")
                not_modified = head[0].startswith("http/1.1 304")
                length = 0
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    if name.strip() == "content-length" and not not_modified:
                        length = int(value)
                if not (head[0].startswith("http/1.1 200") or not_modified):
                    sys.exit(f"log_instructions: unexpected answer: {head[0]}")
                if len(buf) >= end + 4 + length:
                    buf = buf[end + 4 + length:]
                    break
            data = sock.recv(65536)
            if not data:
                sys.exit("log_instructions: the edge closed the connection")
            buf += data


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def instructions(args, log_on, req, workdir):
    """Instructions of the whole wxedge process for args.requests requests."""
    port = free_port()
    out = os.path.join(workdir, f"cg-{'on' if log_on else 'off'}-{port}")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "WXEDGE_LISTEN": f"127.0.0.1:{port}",
        "WXEDGE_DIST": args.dist,
        "WXEDGE_THREADS": "1",
        "WXEDGE_ACCESS_LOG": "combined" if log_on else "off",
        "WXEDGE_PID_FILE": os.path.join(workdir, f"wxedge-{port}.pid"),
        "WXEDGE_UPGRADE_SOCK": os.path.join(workdir, f"wxedge-{port}.sock"),
    }
    env.update(dict(kv.split("=", 1) for kv in args.env))
    log = open(os.path.join(workdir, f"access-{port}.log"), "wb")
    err = open(os.path.join(workdir, f"wxedge-{port}.err"), "wb")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", args.bin],
        env=env, stdout=log, stderr=err, cwd=workdir,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err.flush()
                    tail = open(err.name, errors="replace").read()[-2000:]
                    sys.exit(f"log_instructions: wxedge under valgrind did not start:\n{tail}")
                time.sleep(0.5)
        wait_compressed(port, deadline, "log_instructions")
        exchange(sock, req, args.warmup)
        control = lambda flag: subprocess.run(
            ["callgrind_control", flag, str(proc.pid)], check=True, capture_output=True)
        control("-z")
        exchange(sock, req, args.requests)
        control("-d")
        sock.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        err.close()
    # The dump asked for (`-d`) is part 1; part 2 is what ran after it, until the end.
    dumps = glob.glob(f"{out}.{proc.pid}.1")
    if not dumps:
        sys.exit("log_instructions: callgrind wrote no dump")
    total = 0
    for line in open(dumps[0]):
        if line.startswith("totals:"):
            total += int(line.split()[1])
    return total / args.requests


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--dist", required=True)
    ap.add_argument("--path", default="/index.html")
    ap.add_argument("--host", default="bench.local")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--user-us-per-request", type=float, default=None,
                    help="user CPU per request (us) of the same binary, log off, under load")
    ap.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for wxedge")
    args = ap.parse_args()
    args.bin, args.dist = os.path.abspath(args.bin), os.path.abspath(args.dist)
    shapes = [
        ("wrk's request: no User-Agent, no Referer", []),
        ("a WeChat browser's request: its User-Agent and a Referer",
         [f"User-Agent: {WECHAT_UA}", f"Referer: https://{args.host}/pages/index/index?from=share"]),
    ]
    with tempfile.TemporaryDirectory(prefix="wxedge-logir-") as workdir:
        for shape, extra in shapes:
            req = request(args.path, args.host, extra)
            on = instructions(args, True, req, workdir)
            off = instructions(args, False, req, workdir)
            line = (f"log line: {on - off:,.0f} instructions ({on:,.0f} per request with the log on, "
                    f"{off:,.0f} off; {args.path}, {shape})")
            if args.user_us_per_request:
                us = (on - off) / off * args.user_us_per_request
                line += (f"; at the measured {args.user_us_per_request:.2f} us of user CPU per request "
                         f"(log off) that is ~{us:.2f} us")
            print(line, flush=True)


if __name__ == "__main__":
    main()
