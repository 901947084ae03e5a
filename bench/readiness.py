"""Waiting for a wxedge under test, shared by the bench scripts."""

import json
import socket
import sys
import time


def readyz(port, timeout=2):
    """The edge's `/_wxedge/readyz` as a dict; `{}` when it cannot be had (not listening yet,
    not JSON)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /_wxedge/readyz HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        return json.loads(answer.partition(b"\r\n\r\n")[2])
    except (OSError, ValueError):
        return {}


def wait_compressed(port, deadline, who):
    """Wait until the edge's background compression of the dist is done (`/_wxedge/readyz`
    counts it): it runs at low priority but would share the cores with, and land in the CPU of,
    whatever is measured next. `deadline` is a `time.monotonic()` value; past it, exit naming
    `who`."""
    while True:
        ready = readyz(port, timeout=60)
        if ready and ready.get("compressed_files") == ready.get("files_to_compress"):
            return
        if time.monotonic() > deadline:
            sys.exit(f"{who}: the dist's background compression did not finish in time")
        time.sleep(0.2)
