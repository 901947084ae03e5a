#!/usr/bin/env python3
"""Markdown report of a bench/https.sh run: machine, TLS settings, results, responses, target.

Usage (bench/https.sh calls it): report_https.py runs.tsv responses.tsv tls.tsv, with the run's
description in BENCH_* environment variables.
"""
import datetime
import os
import platform
import statistics
import sys

sys.dont_write_bytecode = True  # no bench/__pycache__ left in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import SERVERS, cpu_model, env, fmt_rps, mib, read_tsv, rounds_of, verdict_for  # noqa: E402

# What each tool's two latency columns are.
LATENCY = {"wrk": "p50 / p99", "wrk-close": "p50 / p99", "h2load": "mean / max"}


def main():
    runs = read_tsv(sys.argv[1])
    responses = read_tsv(sys.argv[2])
    tls = read_tsv(sys.argv[3])
    smoke = env("BENCH_MODE") == "smoke"
    production = env("BENCH_PROFILE") == "production"
    handshakes = env("BENCH_HANDSHAKE_CASE", "new TLS connection per request")

    cases = []
    for r in runs:
        if r["case"] not in cases:
            cases.append(r["case"])

    def rows(case, server):
        return [r for r in runs if r["case"] == case and r["server"] == server]

    def med(rr, key):
        return statistics.median(float(r[key]) for r in rr)

    stats = {}
    for case in cases:
        per = {}
        for s in SERVERS:
            rr = rows(case, s)
            per[s] = {
                "rps": med(rr, "rps"),
                "a": med(rr, "lat_a_ms"),
                "b": med(rr, "lat_b_ms"),
                "cpu": med(rr, "cpu_us_per_req"),
                "user": med(rr, "user_us_per_req"),
                "sys": med(rr, "sys_us_per_req"),
                "busy": med(rr, "machine_busy_us_per_req"),
                "idle": med(rr, "idle_pct"),
                "rss": max(int(r["rss_peak_kb"]) for r in rr),
                "tool": rr[0]["tool"],
            }
        # Per round (the two servers ran back to back), then the median over rounds.
        pairs = [v for v in rounds_of(runs, case) if float(v["nginx"]["rps"]) > 0]
        ratios = [float(v["wxedge"]["rps"]) / float(v["nginx"]["rps"]) for v in pairs]
        cpu_ratios = [float(v["wxedge"]["cpu_us_per_req"]) / float(v["nginx"]["cpu_us_per_req"]) for v in pairs
                      if float(v["nginx"]["cpu_us_per_req"]) > 0]
        per["ratio"] = statistics.median(ratios) if ratios else float("nan")
        per["ratios"] = ratios
        per["cpu_ratio"] = statistics.median(cpu_ratios) if cpu_ratios else float("nan")
        stats[case] = per

    out = []
    w = out.append
    w(f"# wxedge vs nginx over HTTPS and HTTP/2{', production profile (access logs on)' if production else ''}"
      f"{' (smoke run: informational only)' if smoke else ''}")
    w("")
    w("## Machine and run")
    w("")
    w(f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
    w(f"- CPU: {cpu_model()}, {os.cpu_count()} cores (nproc: {len(os.sched_getaffinity(0))})")
    w(f"- kernel: {platform.release()}")
    w(f"- nginx: {env('BENCH_NGINX_VERSION')} ({env('BENCH_NGINX_SSL')}); wxedge: {env('BENCH_WXEDGE_VERSION')} "
      f"(rustls with ring); wrk: {env('BENCH_WRK_VERSION')}; {env('BENCH_H2LOAD_VERSION')}")
    if "/debug/" in env("BENCH_BIN"):
        w(f"- **wxedge binary: {env('BENCH_BIN')}, a debug build: its numbers say nothing about wxedge's speed**")
    w(f"- command: `{env('BENCH_CMD')}`: {env('BENCH_ROUNDS_USED')} round(s) x {env('BENCH_DURATION_USED')} per case "
      f"and server, servers alternating (A B, then B A), {env('BENCH_ELAPSED')} s of measuring")
    w(f"- certificate: ECDSA P-256 for `{env('BENCH_TLS_NAME')}` (and 127.0.0.1), signed by a P-256 CA made for the "
      "run; both servers send the same chain of two (leaf + CA, as certbot's `fullchain.pem`)")
    w(f"- nginx: 2 workers, bench/nginx-site.conf.in plus `{env('BENCH_NGINX_LISTEN')}`, `ssl_protocols TLSv1.2 "
      "TLSv1.3`, everything else TLS at nginx's defaults: ciphers `HIGH:!aNULL:!MD5`, `ssl_session_cache none` "
      "(no server-side cache: a session id is never resumed), `ssl_session_tickets on` (a ticket key made at "
      "start; OpenSSL sends 2 TLS 1.3 tickets per full handshake), `ssl_session_timeout 5m`")
    w(f"- wxedge: WXEDGE_THREADS={env('BENCH_WX_THREADS')}, WXEDGE_TLS_LISTEN, WXEDGE_TLS_CERT, WXEDGE_TLS_KEY, "
      "HTTP/2 on (the default); rustls's defaults: TLS 1.2 (ECDHE with AES-GCM or ChaCha20-Poly1305) and 1.3, "
      "stateless tickets (2 per TLS 1.3 full handshake) and an in-memory cache of 256 sessions for TLS 1.2 ids")
    w("- " + ("access log on for both (nginx: `access_log` to a file, combined, one write per request; wxedge: its "
              "default combined log on stdout redirected to a file)" if production else "access log off on both")
      + "; same dist copy; same backend (nginx, 1 worker, `return 200`)")
    w(f"- {env('BENCH_NOTE_SHARED')}")
    w(f"- load average before / after: {env('BENCH_LOAD_BEFORE')} / {env('BENCH_LOAD_AFTER')}"
      + (f"; **other CPU-heavy processes were running at the start ({env('BENCH_BUSY')}): noisy**" if env("BENCH_BUSY") else ""))
    w("")
    w("What each server negotiates with an OpenSSL 3 client's defaults (`openssl s_client -alpn h2,http/1.1`, "
      "the library wrk and h2load use; h2load offers TLS_AES_128_GCM_SHA256 first):")
    w("")
    w("| server | client offer | protocol | cipher | key exchange | signature | ALPN |")
    w("|---|---|---|---|---|---|---|")
    for t in tls:
        w(f"| {t['server']} | {t['offer']} | {t['protocol']} | {t['cipher']} | {t['key_exchange']} | "
          f"{t['signature']} | {t['alpn']} |")
    w("")
    w("## Results")
    w("")
    w("Medians over rounds. ratio = wxedge/nginx req/s (handshakes/s in the first row), the median of the "
      "per-round ratios (> 1: wxedge faster). CPU = user + system CPU time of the server's processes per "
      "request (from /proc/PID/stat; for the first row, per handshake), and its ratio wxedge/nginx "
      "(< 1: wxedge cheaper). Latency: wrk's p50 / p99, or h2load's mean / max (h2load prints no "
      "percentiles). RSS = the peak of the summed VmRSS of the server's processes during the case.")
    w("")
    w("| case | nginx req/s | wxedge req/s | ratio | latency ms nginx / wxedge | CPU µs/req nginx / wxedge | CPU ratio | RSS MiB nginx / wxedge |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        n, x = stats[case]["nginx"], stats[case]["wxedge"]
        unit = " (handshakes/s)" if case == handshakes else ""
        w(f"| {case}{unit} | {fmt_rps(n['rps'])} | {fmt_rps(x['rps'])} | **{stats[case]['ratio']:.2f}×** | "
          f"{LATENCY[n['tool']]}: {n['a']:.2f} / {n['b']:.2f} vs {x['a']:.2f} / {x['b']:.2f} | "
          f"{n['cpu']:.1f} / {x['cpu']:.1f} | {stats[case]['cpu_ratio']:.2f}× | {mib(n['rss'])} / {mib(x['rss'])} |")
    w("")
    if not smoke and any(len(stats[c]["ratios"]) > 1 for c in cases):
        w("Per-round ratios (spread): " + "; ".join(
            f"{c}: {', '.join(f'{r:.2f}' for r in stats[c]['ratios'])}" for c in cases))
        w("")
    w("Where each request's CPU went: the server's own code (user), its system calls (system), and the whole "
      "machine per request (busy: the load tool, the backend, the kernel and the server; idle shows whether "
      "the machine was saturated). In the handshake case the client's half of every handshake (an ECDSA "
      "verification and an X25519 exchange in OpenSSL) is inside busy: on 2 shared cores it bounds "
      "handshakes/s as much as the server does, so CPU per handshake is the server's own figure.")
    w("")
    w("| case | user µs/req nginx / wxedge | system µs/req nginx / wxedge | machine busy µs/req nginx / wxedge | idle % |")
    w("|---|---:|---:|---:|---:|")
    for case in cases:
        n, x = stats[case]["nginx"], stats[case]["wxedge"]
        w(f"| {case} | {n['user']:.1f} / {x['user']:.1f} | {n['sys']:.1f} / {x['sys']:.1f} | "
          f"{n['busy']:.1f} / {x['busy']:.1f} | {n['idle']:.0f} / {x['idle']:.0f} |")
    w("")
    w("## How each case loads the servers")
    w("")
    w(f"- **{handshakes}**: `{env('BENCH_LOAD_HANDSHAKE')}`. Every request is a new TCP connection and a full "
      "handshake, answered and closed by the server. wrk reconnects with the SSL object of the closed "
      "connection, and OpenSSL's `SSL_clear` keeps its session, so wrk alone resumes (TLS 1.3 PSK from a "
      "ticket: no certificate, no signature); bench/no-resume.c, preloaded, makes `SSL_clear` drop the "
      "session, so the client offers none. Checked before measuring against a separate nginx with the same "
      f"TLS lines logging `$ssl_session_reused` and `$connection_requests`: {env('BENCH_RESUMPTION')}. "
      "A server cannot resume a session the client does not offer, so the same holds for wxedge. "
      "wrk's latency starts at the request's first write, after the handshake: it leaves the handshake out.")
    w(f"- **HTTP/1.1 keep-alive**: `{env('BENCH_LOAD_H1')}`: the connections' handshakes happen once, at the start.")
    w(f"- **HTTP/2**: `{env('BENCH_LOAD_H2')}` (64 connections, 10 concurrent streams each, ALPN h2 checked in "
      "h2load's output); **HTTP/2 proxy /api/ping**: the same to `/api/ping`, which both proxy to the backend "
      "over HTTP/1.1 keep-alive.")
    w("- wrk connects to `https://127.0.0.1:PORT` (OpenSSL sends \"127.0.0.1\" as SNI; both servers answer "
      "with their only certificate); h2load and curl ask for the certificate's name.")
    w("")
    w("## What each server answered (checked with curl over TLS before measuring)")
    w("")
    w("| case | nginx | wxedge |")
    w("|---|---|---|")
    by = {(r["case"], r["server"]): r for r in responses}
    for case in [r["case"] for r in responses if r["server"] == "nginx"]:
        cells = []
        for s in SERVERS:
            r = by[(case, s)]
            conn = f", `Connection: {r['connection_header']}`" if r["connection_header"] != "-" else ""
            cells.append(f"{r['status']} {r['http_version']}, {int(r['body_bytes']):,} B body + "
                         f"{r['header_bytes']} B head{conn}")
        w(f"| {case} | {cells[0]} | {cells[1]} |")
    w("")
    w("Every body was compared byte for byte with the dist file or the backend's own answer "
      "(`curl --cacert CA --resolve`, certificate chain and name verified).")
    w("")
    w("## Target of issue 12" + (" (smoke run: not judged)" if smoke else ""))
    w("")
    verdict = verdict_for(smoke)
    w("| target | case | result | verdict |")
    w("|---|---|---|---|")
    for case in cases:
        st = stats[case]
        what = "handshakes/s" if case == handshakes else "req/s"
        w(f"| {what} ≥ nginx's | {case} | {st['ratio']:.2f}× ({fmt_rps(st['wxedge']['rps'])} vs "
          f"{fmt_rps(st['nginx']['rps'])}; CPU per {'handshake' if case == handshakes else 'request'} "
          f"{st['cpu_ratio']:.2f}× nginx's) | {verdict(st['ratio'] >= 1.0)} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
