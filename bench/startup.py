#!/usr/bin/env python3
"""Start-up on a big dist (issue 11): how long from exec until the listener serves, nginx and
wxedge side by side, and how much memory wxedge's background compression takes meanwhile.

    python3 bench/startup.py --bin target/release/wxedge [--nginx /usr/sbin/nginx]
        --dist-src ../shared/fixtures/uniapp-h5/dist [--size-mb 100] [--rounds 3] [--watch-s 20]

1. Builds a dist of about --size-mb: the fixture, plus half of the size in JS bundles of 512 KiB
   (the fixture's own JS, each file shifted so no two are alike: text the edge must compress) and
   half in images (random bytes: served as they are, as a uni-app `static/` folder's are).
2. Each round starts nginx (master and 2 workers, sendfile, the dist as root) and wxedge (a fresh
   compression cache each time: the first start of a new version, the worst case), in alternating
   order, and times exec → the first 200 on /index.html and on the last bundle (polling every
   2 ms), and the resident memory then. Each server is stopped before the next starts.
3. One more wxedge with a memory budget (`memory_max_bytes`, --budget-mb) smaller than the dist
   runs its background compression while its RSS is sampled every 20 ms for --watch-s seconds (or
   until it is done): the peak above the RSS of the same edge on an empty dist must stay inside the
   budget plus the bound docs/static-files.md states for one file's encoding (24 MiB + 2 x the file).

Prints lines prefixed with [startup]; the verdicts say "met" or "missed" (exit status 0 either way:
bench/run.sh judges nothing on its own in a smoke run).
"""
import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from readiness import readyz

CHUNK = 512 * 1024
TARGET_S = 0.5
RUNNING = []  # servers started and not stopped yet, stopped on the way out whatever happens


def out(line):
    print(f"[startup] {line}", flush=True)


def build_dist(src, dest, size_mb):
    """The fixture plus bundles and images up to size_mb; returns (path of the last bundle,
    size in bytes of the largest compressible file)."""
    shutil.copytree(src, dest)
    js = b"".join(
        open(os.path.join(src, "assets", n), "rb").read()
        for n in sorted(os.listdir(os.path.join(src, "assets")))
        if n.endswith(".js")
    )
    while len(js) < 2 * CHUNK:
        js += js
    rng = random.Random(11)
    total = size_mb * 1024 * 1024
    n = max(1, total // (2 * CHUNK))
    os.makedirs(os.path.join(dest, "static", "big"), exist_ok=True)
    last = None
    for i in range(n):
        start = rng.randrange(len(js) - CHUNK)
        body = f"/* bundle {i} */\n".encode() + js[start:start + CHUNK]
        last = f"/assets/big-{i:04d}.js"
        with open(dest + last, "wb") as f:
            f.write(body[:CHUNK])
        with open(os.path.join(dest, "static", "big", f"img-{i:04d}.png"), "wb") as f:
            f.write(os.urandom(CHUNK))
    return last, CHUNK


def dist_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_200(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n".encode())
            return s.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def children(pid):
    kids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


class Server:
    def __init__(self, name, argv, env, port, log):
        self.name, self.port = name, port
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        RUNNING.append(self)

    def wait_200(self, path, limit_s=60):
        while not answers_200(self.port, path):
            if self.proc.poll() is not None:
                sys.exit(f"[startup] {self.name} exited during start-up (status {self.proc.returncode})")
            if time.perf_counter() - self.t0 > limit_s:
                sys.exit(f"[startup] {self.name} did not answer {path} within {limit_s} s")
            time.sleep(0.002)
        return time.perf_counter() - self.t0

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        if self in RUNNING:
            RUNNING.remove(self)
        self.proc.send_signal(signal.SIGTERM if self.name == "wxedge" else signal.SIGQUIT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_nginx(nginx, tmp, dist, log):
    port = free_port()
    conf = os.path.join(tmp, "nginx-startup.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2;
pid {tmp}/nginx-startup.pid;
error_log {tmp}/nginx-startup.error.log warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    client_body_temp_path {tmp}/nginx-body; proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi; uwsgi_temp_path {tmp}/nginx-uwsgi; scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {dist};
        location / {{ try_files $uri $uri/ /index.html; }}
    }}
}}
""")
    return Server("nginx", [nginx, "-p", tmp, "-c", conf, "-g", "daemon off;"],
                  dict(os.environ), port, log)


def start_wxedge(binary, tmp, dist, log, tag, extra=None):
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "WXEDGE_LISTEN": f"127.0.0.1:{port}",
        "WXEDGE_DIST": dist,
        "WXEDGE_THREADS": "2",
        "WXEDGE_ACCESS_LOG": "off",
        "WXEDGE_COMPRESS_CACHE": os.path.join(tmp, f"cache-{tag}"),
        "WXEDGE_PID_FILE": os.path.join(tmp, f"wxedge-{tag}.pid"),
        "WXEDGE_UPGRADE_SOCK": os.path.join(tmp, f"wxedge-{tag}.sock"),
        "RUST_LOG": "warn",
    }
    env.update(extra or {})
    return Server("wxedge", [binary], env, port, log)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--dist-src", required=True)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--watch-s", type=float, default=20.0)
    ap.add_argument("--budget-mb", type=int, default=64)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="wxedge-startup-")
    os.chmod(tmp, 0o755)  # nginx's workers run as another user
    try:
        run(args, tmp)
    finally:
        for s in list(RUNNING):
            s.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp):
    dist = os.path.join(tmp, "dist")
    t = time.perf_counter()
    last, largest = build_dist(args.dist_src, dist, args.size_mb)
    size = dist_bytes(dist)
    files = sum(len(fs) for _, _, fs in os.walk(dist))
    out(f"dist: {size / 1048576:.1f} MiB in {files} files (half JS bundles of 512 KiB, half images), "
        f"made in {time.perf_counter() - t:.1f} s; page cache warm for both servers")
    log = open(os.path.join(tmp, "servers.log"), "ab")

    times = {"nginx": [], "wxedge": []}
    for r in range(1, args.rounds + 1):
        order = ["nginx", "wxedge"] if r % 2 else ["wxedge", "nginx"]
        for name in order:
            s = (start_nginx(args.nginx, tmp, dist, log) if name == "nginx"
                 else start_wxedge(args.bin, tmp, dist, log, f"r{r}"))
            first = s.wait_200("/index.html")
            big = s.wait_200(last)
            rss = rss_kib(s.pids())
            s.stop()
            times[name].append(first)
            out(f"round {r}/{args.rounds}  {name:6}  first 200 (/index.html) after {first * 1000:6.0f} ms, "
                f"{last} after {big * 1000:6.0f} ms, RSS then {rss / 1024:6.1f} MiB")
    med = {k: statistics.median(v) for k, v in times.items()}
    out(f"exec -> first 200, median of {args.rounds}: nginx {med['nginx'] * 1000:.0f} ms, "
        f"wxedge {med['wxedge'] * 1000:.0f} ms")
    out(f"target: wxedge serves within {TARGET_S} s on a {size / 1048576:.0f} MiB dist: "
        f"{'met' if med['wxedge'] <= TARGET_S else 'missed'} (worst round {max(times['wxedge']) * 1000:.0f} ms)")

    # Memory while compressing in the background, under a budget smaller than the dist.
    empty = os.path.join(tmp, "empty")
    os.makedirs(empty)
    with open(os.path.join(empty, "index.html"), "w") as f:
        f.write("<!doctype html><title>empty</title>\n")
    s = start_wxedge(args.bin, tmp, empty, log, "empty")
    s.wait_200("/index.html")
    time.sleep(1)
    base = rss_kib(s.pids())
    s.stop()
    budget = args.budget_mb * 1024 * 1024
    s = start_wxedge(args.bin, tmp, dist, log, "budget", {"WXEDGE_MEMORY_MAX_BYTES": str(budget)})
    s.wait_200("/index.html")
    ready = rss_kib(s.pids())
    peak, t0, state, asked = ready, time.perf_counter(), {}, 0.0
    while time.perf_counter() - t0 < args.watch_s:
        peak = max(peak, rss_kib(s.pids()))
        time.sleep(0.02)
        if time.perf_counter() - asked >= 0.5:
            asked = time.perf_counter()
            state = readyz(s.port) or state
            if state and state.get("compressed_files") == state.get("files_to_compress"):
                break
    state = readyz(s.port) or state
    s.stop()
    bound_kib = (budget + 24 * 1048576 + 2 * largest) // 1024
    over = peak - base
    out(f"background compression, memory_max_bytes {args.budget_mb} MiB: "
        f"{state.get('compressed_files', '?')} of {state.get('files_to_compress', '?')} files compressed "
        f"in {time.perf_counter() - t0:.0f} s watched; RSS on an empty dist {base / 1024:.1f} MiB, "
        f"at ready {ready / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
    out(f"target: peak - empty-dist RSS ({over / 1024:.1f} MiB) within the budget + 24 MiB + 2 x "
        f"{largest // 1024} KiB ({bound_kib / 1024:.1f} MiB): {'met' if over <= bound_kib else 'missed'}")


if __name__ == "__main__":
    main()
