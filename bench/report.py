#!/usr/bin/env python3
"""Markdown report of a bench/run.sh run: machine, settings, results table, responses, targets.

Usage (bench/run.sh calls it): report.py runs.tsv responses.tsv memory.tsv [oauth.tsv], with the
run's description in BENCH_* environment variables.
"""
import csv
import datetime
import os
import platform
import statistics
import sys

SERVERS = ("nginx", "wxedge")
# Case name -> target class of issue 5 (ratios wxedge/nginx, same run, 2 cores).
SMALL_STATIC = {"index.html", "root /", "SPA route", "MP_verify", "304 revalidation"}
COMPRESSED = {"JS asset gzip", "JS asset br"}
PROXY = {"proxy /api/ping"}
# oauth.tsv (wxedge only): this case, and "OAuth callback, N loads sharing one code".
OAUTH_DISTINCT = "OAuth callback, distinct codes"


def env(name, default=""):
    return os.environ.get(name, default)


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mib(kb):
    return f"{kb / 1024:.1f}"


def fmt_rps(x):
    return f"{x:,.0f}"


def rounds_of(runs, case):
    """The case's rounds, in order, each as {server: row} with both servers present (they ran
    back to back, so per-round comparisons are fair where medians minutes apart are not)."""
    by_round = {}
    for r in runs:
        if r["case"] == case:
            by_round.setdefault(r["round"], {})[r["server"]] = r
    return [v for _, v in sorted(by_round.items(), key=lambda kv: int(kv[0])) if all(s in v for s in SERVERS)]


def ceiling(runs, case):
    """The ratio wxedge would reach in this case if its own code cost nothing, per round, median.

    Amdahl on a saturated machine: in wxedge's run every request cost `machine_busy` µs of CPU
    over the whole machine (wrk, backend, kernel, wxedge), of which `user` µs were wxedge's
    user-space code. With that part at zero and everything else unchanged (the same system
    calls, the same TCP work, the same wrk), req/s could grow by busy / (busy - user) at most.
    None when the run lacks the columns or the machine was not saturated (idle > 10 %).
    """
    bounds = []
    for v in rounds_of(runs, case):
        x, n = v["wxedge"], v["nginx"]
        if "machine_busy_us_per_req" not in x:
            continue
        try:
            busy, user = float(x["machine_busy_us_per_req"]), float(x["user_us_per_req"])
            idle = float(x["idle_pct"])
        except (TypeError, ValueError):
            continue
        if idle > 10 or busy <= user or float(n["rps"]) <= 0:
            continue
        bounds.append(float(x["rps"]) * busy / (busy - user) / float(n["rps"]))
    return statistics.median(bounds) if bounds else None


def cost_split(rows_of_server):
    """Medians of wxedge's user and system µs/req, machine busy µs/req and idle % (or None)."""
    try:
        return tuple(statistics.median(float(r[k]) for r in rows_of_server)
                     for k in ("user_us_per_req", "sys_us_per_req", "machine_busy_us_per_req", "idle_pct"))
    except (KeyError, TypeError, ValueError, statistics.StatisticsError):
        return None


def main():
    runs = read_tsv(sys.argv[1])
    responses = read_tsv(sys.argv[2])
    memory = {r["server"]: r for r in read_tsv(sys.argv[3])}
    oauth = read_tsv(sys.argv[4]) if len(sys.argv) > 4 and os.path.exists(sys.argv[4]) else []
    smoke = env("BENCH_MODE") == "smoke"
    latency_ms = float(env("BENCH_OAUTH_LATENCY_MS", "50"))
    distinct = [r for r in oauth if r["case"] == OAUTH_DISTINCT]
    shared = [r for r in oauth if r["case"] != OAUTH_DISTINCT]

    def med(rows, key):
        return statistics.median(float(r[key]) for r in rows)

    def total(rows, key):
        return sum(int(r[key]) for r in rows)

    cases = []
    for r in runs:
        if r["case"] not in cases:
            cases.append(r["case"])

    def rows(case, server):
        return [r for r in runs if r["case"] == case and r["server"] == server]

    stats = {}
    for case in cases:
        per = {}
        for s in SERVERS:
            rr = rows(case, s)
            per[s] = {
                "rps": statistics.median(float(r["rps"]) for r in rr),
                "p50": statistics.median(float(r["p50_ms"]) for r in rr),
                "p99": statistics.median(float(r["p99_ms"]) for r in rr),
                "rss": max(int(r["rss_peak_kb"]) for r in rr),
                "cpu": statistics.median(float(r["cpu_us_per_req"]) for r in rr),
                "rounds": len(rr),
                "all_rps": [float(r["rps"]) for r in rr],
            }
        # Ratio per round (the two servers ran back to back), then the median over rounds.
        ratios = [float(v["wxedge"]["rps"]) / float(v["nginx"]["rps"]) for v in rounds_of(runs, case)
                  if float(v["nginx"]["rps"]) > 0]
        per["ratio"] = statistics.median(ratios) if ratios else float("nan")
        per["ratios"] = ratios
        per["ceiling"] = ceiling(runs, case)
        stats[case] = per

    out = []
    w = out.append
    production = env("BENCH_PROFILE") == "production"
    w(f"# wxedge vs nginx{', production profile (access logs on)' if production else ''}"
      f"{' (smoke run: informational only)' if smoke else ''}")
    w("")
    w("## Machine and run")
    w("")
    w(f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
    w(f"- CPU: {cpu_model()}, {os.cpu_count()} cores (nproc: {len(os.sched_getaffinity(0))})")
    w(f"- kernel: {platform.release()}")
    w(f"- nginx: {env('BENCH_NGINX_VERSION')}; wxedge: {env('BENCH_WXEDGE_VERSION')}; wrk: {env('BENCH_WRK_VERSION')}")
    if "/debug/" in env("BENCH_BIN"):
        w(f"- **wxedge binary: {env('BENCH_BIN')}, a debug build: its numbers say nothing about wxedge's speed**")
    w(f"- command: `{env('BENCH_CMD')}`: {env('BENCH_ROUNDS_USED')} round(s) x {env('BENCH_DURATION_USED')} per case and server, "
      f"`wrk -t{env('BENCH_WRK_THREADS_USED')} -c{env('BENCH_CONNS')} --latency`, servers alternating (A B, then B A), "
      f"{env('BENCH_ELAPSED')} s of measuring")
    w(f"- nginx: 2 workers (bench/nginx-site.conf.in); wxedge: WXEDGE_THREADS={env('BENCH_WX_THREADS')}; "
      + ("access log on for both (nginx: `access_log` to a file, combined, one write per request; wxedge: "
         "its default combined log on stdout redirected to a file); " if production else "access log off on both; ")
      + "same dist copy with `gzip -9` twins of .js/.css/.html; same backend (nginx, 1 worker, `return 200`)")
    w(f"- {env('BENCH_NOTE_SHARED')}")
    if oauth:
        w(f"- OAuth callback (wxedge only, measured first): a second wxedge with the same settings plus "
          f"`WXEDGE_SANDBOX_LATENCY_MS={env('BENCH_OAUTH_LATENCY_MS', '50')}` and a `/metrics` listener, stopped "
          "before the other cases; its embedded sandbox WeChat is the WeChat it calls")
    w(f"- load average before / after: {env('BENCH_LOAD_BEFORE')} / {env('BENCH_LOAD_AFTER')}"
      + (f"; **other CPU-heavy processes were running at the start ({env('BENCH_BUSY')}): noisy**" if env("BENCH_BUSY") else ""))
    w("")
    w("## Results")
    w("")
    w("Medians over rounds. ratio = wxedge/nginx req/s, the median of the per-round ratios (> 1: wxedge faster). "
      "p50/p99 from wrk's latency distribution. CPU = user + system CPU time of the server's processes "
      "per request (from /proc/PID/stat; the backend's share is not included): the cost that does not "
      "depend on how the 2 cores were shared with wrk. RSS = the peak of the summed VmRSS of the server's "
      "processes (nginx: master + 2 workers; wxedge: its one process), sampled every 0.2 s during the case.")
    w("")
    w("| case | nginx req/s | wxedge req/s | ratio | p50 ms nginx / wxedge | p99 ms nginx / wxedge | CPU µs/req nginx / wxedge | RSS MiB nginx / wxedge |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        n, x = stats[case]["nginx"], stats[case]["wxedge"]
        w(f"| {case} | {fmt_rps(n['rps'])} | {fmt_rps(x['rps'])} | **{stats[case]['ratio']:.2f}×** | "
          f"{n['p50']:.2f} / {x['p50']:.2f} | {n['p99']:.2f} / {x['p99']:.2f} | {n['cpu']:.1f} / {x['cpu']:.1f} | "
          f"{mib(n['rss'])} / {mib(x['rss'])} |")
    if distinct:
        w(f"| {OAUTH_DISTINCT} | — | {fmt_rps(med(distinct, 'rps'))} | wxedge only | — / {med(distinct, 'p50_ms'):.2f} | "
          f"— / {med(distinct, 'p99_ms'):.2f} | — / {med(distinct, 'cpu_us_per_req'):.1f} | "
          f"— / {mib(max(int(r['rss_peak_kb']) for r in distinct))} |")
    if shared:
        w(f"| {shared[0]['case']} | — | — | wxedge only | — / {med(shared, 'p50_ms'):.2f} | "
          f"— / {med(shared, 'p99_ms'):.2f} | — | — |")
    if not oauth:
        w("| OAuth callback (distinct codes, shared code) | | | | | | | not measured |")
    w("")
    if oauth:
        w(f"OAuth callback rows: wxedge only (nginx has no equivalent). Each load is a page navigation "
          f"`GET /pages/index/index?code=…&state=STATE` with `Accept: text/html`: the edge exchanges the code with the "
          f"sandbox WeChat, which answers after {latency_ms:g} ms, then serves the page with a session cookie. "
          "CPU and RSS are the second wxedge's, sandbox WeChat included.")
        w("")
    if distinct:
        w(f"- Distinct codes: wrk with a Lua script giving every request a new self-minted sandbox code "
          f"(`auto-alice-…`); {total(distinct, 'sent'):,} codes sent, {total(distinct, 'requests'):,} loads answered "
          f"within the run, {total(distinct, 'exchanges'):,} WeChat exchanges counted by the edge "
          f"({total(distinct, 'wechat_calls'):,} answered by the sandbox), {total(distinct, 'exchange_errors')} failed, "
          f"{total(distinct, 'joins') + total(distinct, 'cache_hits')} shared. "
          f"With every code new, req/s is bounded by connections ÷ latency "
          f"({env('BENCH_CONNS')} ÷ {latency_ms:g} ms = {float(env('BENCH_CONNS', '0')) * 1000 / latency_ms:,.0f} req/s).")
    if shared:
        w(f"- Shared code: {env('BENCH_OAUTH_LOADS', '50')} loads of one fresh code (issued by the sandbox's authorize "
          "page) released together by one `curl --parallel`, each on its own connection; p50/p99 over those loads.")
    if distinct and med(distinct, "p50_ms") < latency_ms:
        w(f"- **The distinct-codes p50 is below the sandbox's {latency_ms:g} ms: this binary does not apply "
          "`WXEDGE_SANDBOX_LATENCY_MS`, so these rows measured an instant WeChat.**")
    if oauth:
        w("")
    if not smoke and any(len(stats[c]["ratios"]) > 1 for c in cases):
        w("Per-round ratios (spread): " + "; ".join(
            f"{c}: {', '.join(f'{r:.2f}' for r in stats[c]['ratios'])}" for c in cases))
        w("")
    splits = {c: (cost_split(rows(c, "nginx")), cost_split(rows(c, "wxedge"))) for c in cases}
    if all(a and b for a, b in splits.values()):
        w("### How much is left to win above the kernel")
        w("")
        w("Where each request's CPU went, over the whole machine (from /proc/stat and /proc/PID/stat): "
          "the server's own code (user), the system calls it makes (system; the TCP work its sends cause "
          "on loopback is partly here and partly softirq), and everything the machine did per request "
          "(busy: wrk, the backend, the kernel and the server; idle shows the machine was saturated). "
          "**Ceiling** = the ratio wxedge would reach if its own user-space code cost nothing and "
          "every other cost stayed the same (wxedge req/s × busy ÷ (busy − user), per round, over "
          "nginx's req/s): a target above the ceiling cannot be met by changing wxedge's code, only "
          "by doing less kernel work per request.")
        w("")
        w("| case | user µs/req nginx / wxedge | system µs/req nginx / wxedge | machine busy µs/req nginx / wxedge | idle % | ratio | ceiling |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for c in cases:
            (nu, ns, nb, ni), (xu, xs, xb, xi) = splits[c]
            ceil = stats[c]["ceiling"]
            w(f"| {c} | {nu:.2f} / {xu:.2f} | {ns:.2f} / {xs:.2f} | {nb:.1f} / {xb:.1f} | {ni:.0f} / {xi:.0f} | "
              f"{stats[c]['ratio']:.2f}× | {f'{ceil:.2f}×' if ceil else '—'} |")
        w("")
    w("Memory over the whole run (after the last case):")
    w("")
    w("| server | processes | sum of per-process peaks (VmHWM) MiB | RSS now MiB | of which anonymous / file-backed MiB | PSS now MiB |")
    w("|---|---:|---:|---:|---:|---:|")
    for s in SERVERS:
        m = memory[s]
        w(f"| {s} | {m['processes']} | {mib(int(m['hwm_sum_kb']))} | {mib(int(m['rss_now_kb']))} | "
          f"{mib(int(m['rss_anon_kb']))} / {mib(int(m['rss_file_kb']))} | {mib(int(m['pss_now_kb']))} |")
    w("")
    w("PSS divides pages shared between processes (nginx's master and workers share most of theirs); "
      "the target compares the plain RSS sum, which counts them once per process.")
    w("")
    w("## What each server answered (checked with curl before measuring)")
    w("")
    w("| case | nginx | wxedge |")
    w("|---|---|---|")
    by = {(r["case"], r["server"]): r for r in responses}
    for case in [r["case"] for r in responses if r["server"] == "nginx"]:
        cells = []
        for s in SERVERS:
            r = by[(case, s)]
            cells.append(f"{r['status']}, {r['encoding']}, {int(r['body_bytes']):,} B body + {r['header_bytes']} B head")
        w(f"| {case} | {cells[0]} | {cells[1]} |")
    w("")
    w("Every identity body was compared byte for byte with the dist file (or the token, or the backend's "
      "own answer), every encoded body after decoding. nginx has no brotli module: for `Accept-Encoding: br` "
      "it sends the identity file, wxedge sends br, so that row compares different amounts of work and bytes.")
    w("")
    if production:
        production_targets(w, cases, stats, smoke)
        print("\n".join(out))
        return
    w("## Targets of issue 5" + (" (smoke run: not judged)" if smoke else ""))
    w("")
    w("| target | cases | result | verdict |")
    w("|---|---|---|---|")

    verdict = verdict_for(smoke)

    def ratio_target(label, names, need):
        names = [c for c in cases if c in names]
        if not names:
            return
        def one(c):
            ceil = stats[c]["ceiling"]
            above = f" (ceiling {ceil:.2f}×)" if ceil and stats[c]["ratio"] < need else ""
            return f"{c} {stats[c]['ratio']:.2f}×{above}"

        got = ", ".join(one(c) for c in names)
        w(f"| {label} ≥ {need}× | {', '.join(names)} | {got} | {verdict(all(stats[c]['ratio'] >= need for c in names))} |")

    ratio_target("static, small files", SMALL_STATIC, 1.25)
    ratio_target("compressed asset", COMPRESSED, 1.1)
    ratio_target("proxy", PROXY, 1.2)
    worse = [c for c in cases if stats[c]["wxedge"]["p99"] > stats[c]["nginx"]["p99"]]
    def p99_rounds(case):
        """wxedge/nginx p99 per round, so a reader can tell a trend from the rounds' spread."""
        return ", ".join(f"{float(v['wxedge']['p99_ms']):.2f}/{float(v['nginx']['p99_ms']):.2f}"
                         for v in rounds_of(runs, case))

    worse_txt = ", ".join(
        "%s (%.2f vs %.2f ms; per round wxedge/nginx: %s)"
        % (c, stats[c]["wxedge"]["p99"], stats[c]["nginx"]["p99"], p99_rounds(c)) for c in worse)
    w("| p99 no worse than nginx | all | "
      + ("worse in: " + worse_txt if worse else "no worse in any case")
      + f" | {verdict(not worse)} |")
    n_rss = max(stats[c]["nginx"]["rss"] for c in cases)
    x_rss = max(stats[c]["wxedge"]["rss"] for c in cases)
    w(f"| RSS ≤ nginx master + workers | all (peak over cases) | wxedge {mib(x_rss)} MiB vs nginx {mib(n_rss)} MiB "
      f"(VmHWM sums: {mib(int(memory['wxedge']['hwm_sum_kb']))} vs {mib(int(memory['nginx']['hwm_sum_kb']))}) | {verdict(x_rss <= n_rss)} |")
    if "proxy + session" in stats and "proxy /api/ping" in stats:
        plain = stats["proxy /api/ping"]["wxedge"]["rps"]
        sess = stats["proxy + session"]["wxedge"]["rps"]
        # Per round: the two wxedge runs of a round are seconds apart, where the medians of the
        # two cases can be minutes apart on a machine whose speed drifts.
        per_round = {}
        for r in runs:
            if r["server"] == "wxedge" and r["case"] in ("proxy + session", "proxy /api/ping"):
                per_round.setdefault(r["round"], {})[r["case"]] = float(r["rps"])
        rels = [v["proxy + session"] / v["proxy /api/ping"] for v in per_round.values()
                if len(v) == 2 and v["proxy /api/ping"] > 0]
        rel = statistics.median(rels) if rels else float("nan")
        cpu_plain = stats["proxy /api/ping"]["wxedge"]["cpu"]
        cpu_sess = stats["proxy + session"]["wxedge"]["cpu"]
        w(f"| session-checked proxy within 5 % of plain proxy | wxedge: proxy + session vs proxy /api/ping | "
          f"{rel:.2f}× (median of per-round ratios {', '.join(f'{x:.2f}' for x in rels)}; medians "
          f"{fmt_rps(sess)} vs {fmt_rps(plain)} req/s; CPU {cpu_sess:.1f} vs {cpu_plain:.1f} µs/req) | {verdict(rel >= 0.95)} |")
    if shared:
        calls = [int(r["wechat_calls"]) for r in shared]
        ok = all(int(r["wechat_calls"]) == 1 and int(r["exchanges"]) == 1 and int(r["exchange_errors"]) == 0
                 and int(r["requests"]) == int(r["sent"]) for r in shared)
        w(f"| callback: N loads sharing one code = 1 WeChat call | wxedge: {shared[0]['sent']} concurrent loads of one "
          f"fresh sandbox code, {len(shared)} round(s) | WeChat calls per round: {', '.join(map(str, calls))} "
          f"(joined the call: {', '.join(r['joins'] for r in shared)}; from the cache: "
          f"{', '.join(r['cache_hits'] for r in shared)}); {total(shared, 'requests')} × 200 of {total(shared, 'sent')} | "
          f"{verdict(ok)} |")
    else:
        w("| callback: N loads sharing one code = 1 WeChat call | — | not measured; asserted by tests/oauth.rs | — |")
    print("\n".join(out))


def verdict_for(smoke):
    """How a target reads: not judged on a smoke run, else met or missed."""
    return lambda ok: "—" if smoke else ("met" if ok else "missed")


def production_targets(w, cases, stats, smoke):
    """Issue 11's targets, judged in the production profile (access logs on for both)."""
    w("## Targets of issue 11 (production profile)" + (" (smoke run: not judged)" if smoke else ""))
    w("")
    w("| target | cases | result | verdict |")
    w("|---|---|---|---|")

    verdict = verdict_for(smoke)

    def cpu_target(label, names, most):
        names = [c for c in cases if c in names]
        if not names:
            return
        ratios = {c: stats[c]["wxedge"]["cpu"] / stats[c]["nginx"]["cpu"] for c in names}
        got = ", ".join(f"{c} {ratios[c]:.2f}× ({stats[c]['wxedge']['cpu']:.1f} vs {stats[c]['nginx']['cpu']:.1f} µs)"
                        for c in names)
        w(f"| CPU per request ≤ {most}× nginx's: {label} | {', '.join(names)} | {got} | "
          f"{verdict(all(r <= most for r in ratios.values()))} |")

    cpu_target("small static files", SMALL_STATIC - {"304 revalidation"}, 0.8)
    cpu_target("304, gzip asset, proxy", {"304 revalidation", "JS asset gzip"} | PROXY, 1.0)
    slower = [c for c in cases if stats[c]["ratio"] < 1.0]
    w("| req/s ≥ nginx's in every case | all | "
      + (", ".join(f"{c} {stats[c]['ratio']:.2f}×" for c in slower) if slower else "no case slower")
      + f" | {verdict(not slower)} |")


if __name__ == "__main__":
    main()
