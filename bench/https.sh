#!/usr/bin/env bash
# wxedge vs nginx over HTTPS and HTTP/2, side by side on the same machine, the same certificate,
# the same dist and the same backend (issue 12).
#
#   bash bench/https.sh            full run: 3 rounds x 8 s per case and server (about 4 minutes)
#   bash bench/https.sh --smoke    CI: 1 round x 2 s, no thresholds; fails only on a broken setup
#   bash bench/https.sh --out F    also write the Markdown report to F
#   bash bench/https.sh --profile benchmark
#                                  access logs off on both (default: production, as ops run
#                                  them: nginx `access_log` to a file, combined; wxedge its
#                                  combined log on stdout redirected to a file)
#
# The cases, each on both servers, alternating (A B / B A) per round:
#   1. new TLS connection per request: wrk -H 'Connection: close', so every request is a TCP
#      connection and a full handshake (wrk would resume sessions on reconnect: bench/no-resume.c,
#      preloaded, stops that, and a check before measuring proves no handshake was resumed);
#      reported as handshakes/s and CPU per handshake;
#   2. HTTPS keep-alive, HTTP/1.1: wrk over https, /index.html;
#   3. HTTP/2: h2load -c 64 -m 10 (64 connections, 10 streams each), /index.html;
#   4. HTTP/2 proxy: the same to /api/ping, proxied to the backend nginx.
#
# What it does:
#   1. installs nginx, wrk, curl, openssl and h2load (nghttp2-client) from apt when missing;
#      builds target/release/wxedge (WXEDGE_BIN=/path skips the build); builds the shim with cc;
#   2. makes an ECDSA P-256 certificate for bench.wxedge.test (and 127.0.0.1) signed by a CA made
#      here, served by both as a chain of two (leaf + CA, as certbot's fullchain.pem);
#   3. starts the backend nginx, nginx (bench/nginx-site.conf.in plus `listen ... ssl http2`,
#      `ssl_protocols TLSv1.2 TLSv1.3`, nginx's default session cache and tickets) and wxedge
#      (WXEDGE_TLS_LISTEN, WXEDGE_TLS_CERT, WXEDGE_TLS_KEY; HTTP/2 on by default);
#   4. checks each case on both servers with curl over TLS (--cacert, --resolve: status, HTTP
#      version, body bytes) and the TLS parameters each negotiates (openssl s_client), then that
#      the handshake case's client never resumes (against a separate nginx logging
#      $ssl_session_reused); then measures, sampling the servers' CPU (/proc/PID/stat) and RSS;
#   5. prints a Markdown report (bench/report_https.py): req/s (handshakes/s), latency, CPU per
#      request, peak RSS, the ratio wxedge/nginx and the verdict against issue 12's target
#      (>= nginx's in every case).
#
# Knobs (environment): BENCH_ROUNDS, BENCH_DURATION (wrk -d, h2load -D), BENCH_CONNECTIONS (wrk -c,
# h2load -c; default 64), BENCH_H2_STREAMS (h2load -m; default 10), BENCH_WRK_THREADS (wrk -t,
# h2load -t; default 2), BENCH_WXEDGE_THREADS (default 2 = nginx's worker_processes), BENCH_DIST,
# BENCH_KEEP=1 (keep the temp dir), BENCH_ENFORCE=1 (full run: exit 3 when the target is missed),
# WXEDGE_BIN.
set -euo pipefail

MODE=full
PROFILE=production
OUT_FILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --full) MODE=full ;;
    --out) OUT_FILE="${2:?--out needs a file}"; shift ;;
    --profile)
      PROFILE="${2:?--profile needs benchmark or production}"; shift
      case "$PROFILE" in benchmark|production) ;; *) echo "bench: --profile benchmark|production" >&2; exit 2 ;; esac ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(git -C "$BENCH_DIR" rev-parse --show-toplevel 2>/dev/null || (cd "$BENCH_DIR/.." && pwd))"
[ -n "$OUT_FILE" ] && case "$OUT_FILE" in /*) ;; *) OUT_FILE="$PWD/$OUT_FILE" ;; esac

if [ "$MODE" = smoke ]; then
  ROUNDS="${BENCH_ROUNDS:-1}"; DURATION="${BENCH_DURATION:-2s}"; WARMUP=""
else
  ROUNDS="${BENCH_ROUNDS:-3}"; DURATION="${BENCH_DURATION:-8s}"; WARMUP="1s"
fi
case "$DURATION" in *[0-9]s) ;; *) echo "bench: BENCH_DURATION must be seconds, like 8s" >&2; exit 2 ;; esac
CONNS="${BENCH_CONNECTIONS:-64}"
H2_STREAMS="${BENCH_H2_STREAMS:-10}"
WRK_THREADS="${BENCH_WRK_THREADS:-2}"
WX_THREADS="${BENCH_WXEDGE_THREADS:-2}"
DIST_SRC="${BENCH_DIST:-$ROOT/../shared/fixtures/uniapp-h5/dist}"
MP_TOKEN="Bench0123456789a"
NAME="bench.wxedge.test"   # the certificate's name; h2load and curl send it as SNI

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

# ---------------------------------------------------------------------------------------------
# 1. Tools, the binary, the shim
# ---------------------------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v gzip >/dev/null || missing+=(gzip)
command -v cc >/dev/null || missing+=(gcc)
if [ -z "${WXEDGE_BIN:-}" ] && ! command -v cmake >/dev/null; then missing+=(cmake); fi
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
command -v python3 >/dev/null || die "python3 is needed (report and free ports)"
build_wxedge

make_scratch
cc -shared -fPIC -O2 -o "$T/no-resume.so" "$BENCH_DIR/no-resume.c" -ldl \
  || die "could not build bench/no-resume.c (the handshake case's shim)"
prepare_dists "$DIST_SRC" "$MP_TOKEN"

# ---------------------------------------------------------------------------------------------
# 2. The certificate: ECDSA P-256, signed by a CA made here; both servers send leaf + CA
# ---------------------------------------------------------------------------------------------
mkdir -p "$T/tls"
(
  cd "$T/tls"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 2 \
    -subj "/CN=wxedge bench CA" -keyout ca.key -out ca.pem
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -subj "/CN=$NAME" -keyout leaf.key -out leaf.csr
  printf 'subjectAltName=DNS:%s,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$NAME" > leaf.ext
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 2 -sha256 \
    -extfile leaf.ext -out leaf.pem
  cat leaf.pem ca.pem > fullchain.pem
  chmod a+r ./*
) >"$T/tls/openssl.log" 2>&1 || { cat "$T/tls/openssl.log" >&2; die "openssl could not make the certificate"; }
CA="$T/tls/ca.pem"; CHAIN="$T/tls/fullchain.pem"; KEY="$T/tls/leaf.key"

# ---------------------------------------------------------------------------------------------
# 3. The servers
# ---------------------------------------------------------------------------------------------
read -r BACKEND_PORT NGINX_PORT NGINX_TLS_PORT WXEDGE_PORT WXEDGE_TLS_PORT CHECK_PORT CHECK_TLS_PORT \
  < <(free_ports 7)

if [ "$PROFILE" = production ]; then
  NGINX_ACCESS_LOG="access_log $T/nginx-access.log combined;"
  WX_ACCESS_LOG=combined
else
  NGINX_ACCESS_LOG="access_log off;"
  WX_ACCESS_LOG=off
fi

NGINX_VERSION="$("$NGINX" -v 2>&1 | sed 's#^nginx version: ##')"
NGINX_SSL="$("$NGINX" -V 2>&1 | sed -n 's#^built with ##p' | head -1)"
# `http2 on;` replaced `listen ... http2` in nginx 1.25.1 (Debian bookworm has 1.22).
if [ "$(printf '%s\n1.25.1\n' "${NGINX_VERSION#nginx/}" | sort -V | head -1)" = 1.25.1 ]; then
  HTTP2_LISTEN="ssl; http2 on;"
else
  HTTP2_LISTEN="ssl http2;"
fi
nginx_tls() {  # nginx_tls PORT: the HTTPS listener's lines (session cache and tickets: nginx's defaults)
  echo "listen 127.0.0.1:$1 $HTTP2_LISTEN ssl_certificate $CHAIN; ssl_certificate_key $KEY; ssl_protocols TLSv1.2 TLSv1.3;"
}

fill "$BENCH_DIR/nginx-backend.conf.in" "$T/nginx-backend.conf"
NGINX_TLS="$(nginx_tls "$NGINX_TLS_PORT")" fill "$BENCH_DIR/nginx-site.conf.in" "$T/nginx-site.conf"
"$NGINX" -t -q -p "$T" -c "$T/nginx-backend.conf" || die "backend nginx config does not load"
"$NGINX" -t -q -p "$T" -c "$T/nginx-site.conf" || die "nginx config does not load"

"$NGINX" -p "$T" -c "$T/nginx-backend.conf" -g 'daemon off;' >"$T/nginx-backend.out" 2>&1 &
BACKEND_PID=$!; STARTED_PIDS+=("$BACKEND_PID")
wait_http "http://127.0.0.1:$BACKEND_PORT/api/ping" "$BACKEND_PID" "backend nginx" "$T/nginx-backend.error.log"

"$NGINX" -p "$T" -c "$T/nginx-site.conf" -g 'daemon off;' >"$T/nginx-site.out" 2>&1 &
NGINX_PID=$!; STARTED_PIDS+=("$NGINX_PID")
wait_http "http://127.0.0.1:$NGINX_PORT/index.html" "$NGINX_PID" "nginx" "$T/nginx-site.error.log"

start_wxedge wxedge "$WXEDGE_PORT" \
  WXEDGE_TLS_LISTEN="127.0.0.1:$WXEDGE_TLS_PORT" WXEDGE_TLS_CERT="$CHAIN" WXEDGE_TLS_KEY="$KEY"
WXEDGE_PID="$STARTED_PID"

NGINX_PIDS="$NGINX_PID $(children_of "$NGINX_PID" | tr '\n' ' ')"
WXEDGE_PIDS="$WXEDGE_PID"
[ "$(wc -w <<< "$NGINX_PIDS")" -ge 3 ] || die "nginx should run a master and 2 workers, found pids: $NGINX_PIDS"

WXEDGE_VERSION="$("$BIN" --version 2>/dev/null | head -1 || true)"
WXEDGE_COMMIT="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
log "backend nginx :$BACKEND_PORT; nginx https :$NGINX_TLS_PORT (pids $NGINX_PIDS); wxedge https :$WXEDGE_TLS_PORT (pid $WXEDGE_PID)"

SERVERS=(nginx wxedge)
tls_port_of() { [ "$1" = nginx ] && echo "$NGINX_TLS_PORT" || echo "$WXEDGE_TLS_PORT"; }
pids_of() { [ "$1" = nginx ] && echo "$NGINX_PIDS" || echo "$WXEDGE_PIDS"; }

# ---------------------------------------------------------------------------------------------
# 4. The cases, and what each server must answer
# ---------------------------------------------------------------------------------------------
# name | tool | path | what the body must be
HANDSHAKES="new TLS connection per request"
CASES=(
  "$HANDSHAKES|wrk-close|/index.html|file:/index.html"
  "HTTP/1.1 keep-alive|wrk|/index.html|file:/index.html"
  "HTTP/2|h2load|/index.html|file:/index.html"
  "HTTP/2 proxy /api/ping|h2load|/api/ping|backend:/api/ping"
)

# The TLS each server negotiates with an OpenSSL client's defaults (wrk's and h2load's library).
printf 'server\toffer\tprotocol\tcipher\tkey_exchange\tsignature\talpn\n' > "$T/tls.tsv"
tls_params() {  # tls_params SERVER OFFER_NAME [s_client args]
  local s=$1 offer=$2; shift 2
  local out="$T/check/s_client-$s-$offer.txt"
  openssl s_client -connect "127.0.0.1:$(tls_port_of "$s")" -servername "$NAME" -CAfile "$CA" \
    -verify_hostname "$NAME" -verify_return_error -alpn h2,http/1.1 "$@" < /dev/null > "$out" 2>&1 \
    || { cat "$out" >&2; die "openssl s_client could not complete a handshake with $s ($offer)"; }
  grep -q 'Verify return code: 0 (ok)' "$out" || die "$s's certificate chain does not verify ($offer, see $out)"
  awk -v s="$s" -v o="$offer" '
    /^New, / { sub(/,$/, "", $2); proto = $2; cipher = $NF }
    /^Server Temp Key:/ { sub(/^Server Temp Key: /, ""); kx = $0 }
    /^Peer signature type:/ { sig = $NF }
    /^ALPN protocol:/ { alpn = $NF }
    END { printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s, o, proto, cipher, kx, sig, alpn ? alpn : "none" }' "$out" >> "$T/tls.tsv"
}
for s in "${SERVERS[@]}"; do
  tls_params "$s" default
  tls_params "$s" tls1.2 -tls1_2
done
for offer in default tls1.2; do
  n="$(awk -F'\t' -v o="$offer" '$1 == "nginx" && $2 == o {print $3, $4, $5, $6, $7}' "$T/tls.tsv")"
  x="$(awk -F'\t' -v o="$offer" '$1 == "wxedge" && $2 == o {print $3, $4, $5, $6, $7}' "$T/tls.tsv")"
  [ "$n" = "$x" ] || log "WARNING: nginx and wxedge negotiate different TLS ($offer offer): nginx: $n; wxedge: $x"
done
grep -q $'\tTLSv1.2\t' "$T/tls.tsv" || die "TLS 1.2 is not served"

# Fetch once from each server over TLS with curl; check status, HTTP version and body.
printf 'case\tserver\tstatus\thttp_version\tbody_bytes\theader_bytes\tconnection_header\n' > "$T/responses.tsv"
check_case() {  # check_case INDEX
  local name tool path what
  IFS='|' read -r name tool path what <<< "${CASES[$1]}"
  local expect="$T/check/$1.expected" s
  case "$what" in
    file:*) cp "$T/dist-wxedge/${what#file:}" "$expect" ;;
    backend:*) curl -fsS -o "$expect" "http://127.0.0.1:$BACKEND_PORT${what#backend:}" || die "$name: the backend did not answer" ;;
  esac
  for s in "${SERVERS[@]}"; do
    local port args=() want_version body="$T/check/$1-$s.body" head="$T/check/$1-$s.head" got
    port="$(tls_port_of "$s")"
    case "$tool" in
      wrk-close) args=(--http1.1 -H 'Connection: close'); want_version=1.1 ;;
      wrk) args=(--http1.1); want_version=1.1 ;;
      h2load) args=(--http2); want_version=2 ;;
    esac
    : > "$body"
    got="$(curl -sS --cacert "$CA" --resolve "$NAME:$port:127.0.0.1" -o "$body" -D "$head" \
           -w '%{http_code} %{http_version} %{size_download} %{size_header}' "${args[@]}" \
           "https://$NAME:$port$path")" || die "$name: $s did not answer over TLS"
    local code version size hsize conn
    read -r code version size hsize <<< "$got"
    [ "$code" = 200 ] || die "$name: $s answered $code, expected 200 (https://$NAME:$port$path)"
    [ "$version" = "$want_version" ] || die "$name: $s answered over HTTP/$version, expected HTTP/$want_version"
    grep -qi '^content-encoding:' "$head" && die "$name: $s sent an encoded body to a client that asked for none"
    cmp -s "$body" "$expect" || die "$name: $s's body ($size bytes) is not the expected $(wc -c < "$expect") bytes"
    conn="$(tr -d '\r' < "$head" | awk 'tolower($1)=="connection:" {print $2; exit}')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$s" "$code" "HTTP/$version" "$size" "$hsize" "${conn:--}" >> "$T/responses.tsv"
  done
}
log "checking every case on both servers over TLS (status, HTTP version, body) and the TLS they negotiate"
for i in "${!CASES[@]}"; do check_case "$i"; done

# The handshake case's client must never resume: measured against a separate nginx (same
# template, same TLS lines, nginx's default tickets) whose log says, per request, whether the
# session was reused and how many requests its connection carried. Without the shim, wrk must
# resume there, or this check could not see resumption at all.
resumption_check() {
  local conf="$T/tls-check.conf" pid
  NGINX_PORT="$CHECK_PORT" NGINX_TLS="$(nginx_tls "$CHECK_TLS_PORT")" \
    NGINX_ACCESS_LOG="log_format tlscheck '\$ssl_session_reused \$connection_requests \$ssl_protocol'; access_log $T/tls-check.log tlscheck;" \
    fill "$BENCH_DIR/nginx-site.conf.in" "$conf"
  sed -i -e "s#$T/nginx-site\.#$T/tls-check.#g" "$conf"   # its own pid and error log
  "$NGINX" -p "$T" -c "$conf" -g 'daemon off;' >"$T/tls-check.out" 2>&1 &
  pid=$!; STARTED_PIDS+=("$pid")
  wait_http "http://127.0.0.1:$CHECK_PORT/index.html" "$pid" "the resumption check's nginx" "$T/tls-check.error.log"
  local url="https://127.0.0.1:$CHECK_TLS_PORT/index.html" with without
  : > "$T/tls-check.log"
  LD_PRELOAD="$T/no-resume.so" timeout 30 wrk -t"$WRK_THREADS" -c8 -d1s -H 'Connection: close' "$url" >/dev/null 2>&1 \
    || die "wrk with the shim failed against the resumption check's nginx"
  sleep 0.2
  with="$(awk '{n++; if ($1 == "r") r++; if ($2 != 1) k++} END {printf "%d %d %d", n, r, k}' "$T/tls-check.log")"
  : > "$T/tls-check.log"
  timeout 30 wrk -t"$WRK_THREADS" -c8 -d1s -H 'Connection: close' "$url" >/dev/null 2>&1 \
    || die "wrk failed against the resumption check's nginx"
  sleep 0.2
  without="$(awk '{n++; if ($1 == "r") r++} END {printf "%d %d", n, r}' "$T/tls-check.log")"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local n r k n0 r0
  read -r n r k <<< "$with"; read -r n0 r0 <<< "$without"
  [ "$n" -gt 0 ] || die "resumption check: no request reached the check's nginx"
  [ "$r" = 0 ] || die "resumption check: $r of $n handshakes made by wrk with bench/no-resume.c were resumptions"
  [ "$k" = 0 ] || die "resumption check: $k of $n requests shared a connection despite Connection: close"
  [ "$r0" -gt 0 ] || log "WARNING: wrk without the shim did not resume either ($n0 handshakes): the check cannot tell resumption from none"
  RESUMPTION_NOTE="wrk with bench/no-resume.c: $n connections, one request each, $r resumed; without it: $n0 connections, $r0 resumed"
  log "resumption check: $RESUMPTION_NOTE"
}
resumption_check

# ---------------------------------------------------------------------------------------------
# 5. Measure: servers alternating, CPU and RSS of the server's processes during each run
# ---------------------------------------------------------------------------------------------
h2load_stats() {  # h2load_stats RAW -> "req/s mean_ms max_ms requests non2xx3xx failed"
  local rps mean max reqs non2 failed
  rps="$(awk '/^finished in/ {sub(/,$/, "", $4); print $4; exit}' "$1")"
  # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
  # (errored and timeout are failed ones); status codes: N 2xx, N 3xx, N 4xx, N 5xx
  read -r reqs failed < <(awk '/^requests:/ {print $6, $10; exit}' "$1") || true
  non2="$(awk '/^status codes:/ {print $7 + $9; exit}' "$1")"
  max="$(to_ms "$(awk '/^time for request:/ {print $5; exit}' "$1")")"
  mean="$(to_ms "$(awk '/^time for request:/ {print $6; exit}' "$1")")"
  echo "${rps:--} ${mean:-nan} ${max:-nan} ${reqs:-0} ${non2:-0} ${failed:-0}"
}

# The load for a case on a server, as a command line in LOAD (for the report: LOAD_DESC).
load_cmd() {  # load_cmd TOOL SERVER PATH DURATION
  local tool=$1 port; port="$(tls_port_of "$2")"
  case "$tool" in
    wrk-close) LOAD=(env LD_PRELOAD="$T/no-resume.so" wrk -t"$WRK_THREADS" -c"$CONNS" -d"$4" --latency
                     -H 'Connection: close' "https://127.0.0.1:$port$3") ;;
    wrk) LOAD=(wrk -t"$WRK_THREADS" -c"$CONNS" -d"$4" --latency "https://127.0.0.1:$port$3") ;;
    h2load) LOAD=(h2load -t"$WRK_THREADS" -c"$CONNS" -m"$H2_STREAMS" -D"$4" --connect-to "127.0.0.1:$port"
                  "https://$NAME:$port$3") ;;
  esac
}
DUR_S="${DURATION%s}"

printf 'round\tcase\tserver\ttool\trps\tlat_a_ms\tlat_b_ms\trss_peak_kb\trequests\tnon2xx3xx\tsocket_errors\tcpu_us_per_req\tuser_us_per_req\tsys_us_per_req\tmachine_busy_us_per_req\tidle_pct\tsteal_pct\n' > "$T/runs.tsv"
run_case() {  # run_case ROUND CASE_INDEX SERVER DURATION [warmup]
  local round=$1 ci=$2 s=$3 dur=$4 warm=${5:-}
  local name tool path what
  IFS='|' read -r name tool path what <<< "${CASES[$ci]}"
  local raw="$T/raw/r$round-$ci-$s.txt" limit=$(( ${dur%s} + 30 ))
  load_cmd "$tool" "$s" "$path" "$dur"
  if [ -n "$warm" ]; then
    timeout -k 5 "$limit" "${LOAD[@]}" >/dev/null 2>&1 || true
    return 0
  fi
  rm -f "$T/rss.peak"
  # shellcheck disable=SC2046
  sample_rss "$T/rss.peak" $(pids_of "$s") & SAMPLER_PID=$!
  local u0 s0 u1 s1 mb0 mi0 ms0 mb1 mi1 ms1
  # shellcheck disable=SC2046
  read -r u0 s0 < <(cpu_split $(pids_of "$s"))
  read -r mb0 mi0 ms0 < <(machine_ticks)
  timeout -k 5 "$limit" "${LOAD[@]}" > "$raw" 2>&1 || { cat "$raw" >&2; die "${LOAD[*]} failed or hung ($name, $s)"; }
  # shellcheck disable=SC2046
  read -r u1 s1 < <(cpu_split $(pids_of "$s"))
  read -r mb1 mi1 ms1 < <(machine_ticks)
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  local rps la lb reqs non2 serr rss cpu
  if [ "$tool" = h2load ]; then
    read -r rps la lb reqs non2 serr < <(h2load_stats "$raw")
    grep -q '^Application protocol: h2$' "$raw" || { cat "$raw" >&2; die "h2load did not speak HTTP/2 to $s ($name)"; }
  else
    read -r rps la lb reqs non2 serr < <(wrk_stats "$raw")
  fi
  rss="$(cat "$T/rss.peak" 2>/dev/null || echo 0)"
  [ "$rps" != - ] && [ "$reqs" -gt 0 ] || { cat "$raw" >&2; die "no req/s in the load tool's output ($name, $s)"; }
  cpu="$(per_req $((u1 + s1 - u0 - s0)) "$reqs")"
  local mtot=$(( (mb1 - mb0) + (mi1 - mi0) + (ms1 - ms0) ))
  [ "$mtot" -gt 0 ] || mtot=1
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$round" "$name" "$s" "$tool" "$rps" "$la" "$lb" "$rss" "$reqs" "$non2" "$serr" "$cpu" \
    "$(per_req $((u1 - u0)) "$reqs")" "$(per_req $((s1 - s0)) "$reqs")" "$(per_req $((mb1 - mb0)) "$reqs")" \
    "$(( (mi1 - mi0) * 100 / mtot ))" "$(( (ms1 - ms0) * 100 / mtot ))" >> "$T/runs.tsv"
  printf '[bench] round %s/%s  %-31s %-6s %10s req/s  CPU %7s us/req  RSS %5s MiB%s\n' \
    "$round" "$ROUNDS" "$name" "$s" "$rps" "$cpu" "$(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}')" \
    "$( [ "$non2" != 0 ] && echo "  NON-2xx/3xx: $non2"; [ "$serr" != 0 ] && echo "  errors: $serr")" >&2
}

busy="$(busy_processes)"
NOTE_SHARED="the load tools (-t$WRK_THREADS), the backend nginx and the server under test share the machine's $(nproc) cores; nothing is pinned."
log "$NOTE_SHARED"
[ -n "$busy" ] && log "WARNING: other CPU-heavy processes are running (${busy# }): numbers will be noisy"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

START_TS=$(date +%s)
if [ -n "$WARMUP" ]; then
  log "warm-up: $WARMUP per case and server"
  for i in "${!CASES[@]}"; do for s in "${SERVERS[@]}"; do run_case 0 "$i" "$s" "$WARMUP" warm; done; done
fi
log "measuring: $ROUNDS round(s) x ${#CASES[@]} cases x 2 servers x $DURATION"
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!CASES[@]}"; do
    if [ $(( (r + i) % 2 )) -eq 0 ]; then order=(nginx wxedge); else order=(wxedge nginx); fi
    for s in "${order[@]}"; do run_case "$r" "$i" "$s" "$DURATION"; done
  done
done
ELAPSED=$(( $(date +%s) - START_TS ))

for p in $NGINX_PIDS $WXEDGE_PIDS $BACKEND_PID; do
  kill -0 "$p" 2>/dev/null || die "process $p died during the run"
done

# ---------------------------------------------------------------------------------------------
# 6. Report
# ---------------------------------------------------------------------------------------------
cmd="bash bench/https.sh"; [ "$MODE" = smoke ] && cmd="$cmd --smoke"
[ "$PROFILE" = benchmark ] && cmd="$cmd --profile benchmark"
if [ "$PROFILE" = production ]; then
  for f in "$T/nginx-access.log" "$T/wxedge.access.log"; do
    [ -s "$f" ] || die "production profile: $f is empty"
  done
  log "access log lines: nginx $(wc -l < "$T/nginx-access.log"), wxedge $(wc -l < "$T/wxedge.access.log")"
fi
load_cmd wrk-close nginx /index.html "$DURATION"; LOAD_HANDSHAKE="${LOAD[*]:1}"
load_cmd wrk nginx /index.html "$DURATION"; LOAD_H1="${LOAD[*]}"
load_cmd h2load nginx /index.html "$DURATION"; LOAD_H2="${LOAD[*]}"
BENCH_PROFILE="$PROFILE" BENCH_MODE="$MODE" BENCH_CMD="$cmd" BENCH_ROUNDS_USED="$ROUNDS" BENCH_DURATION_USED="$DURATION" \
BENCH_WX_THREADS="$WX_THREADS" BENCH_NGINX_VERSION="$NGINX_VERSION" BENCH_NGINX_SSL="$NGINX_SSL" \
BENCH_NGINX_LISTEN="listen ... $HTTP2_LISTEN" \
BENCH_WXEDGE_VERSION="$WXEDGE_VERSION ($WXEDGE_COMMIT)" BENCH_BIN="$BIN" \
BENCH_WRK_VERSION="$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')" \
BENCH_H2LOAD_VERSION="$(h2load --version 2>&1 | head -1)" \
BENCH_LOAD_HANDSHAKE="${LOAD_HANDSHAKE//$T/\$T}" BENCH_LOAD_H1="${LOAD_H1//$T/\$T}" BENCH_LOAD_H2="${LOAD_H2//$T/\$T}" \
BENCH_RESUMPTION="$RESUMPTION_NOTE" BENCH_TLS_NAME="$NAME" \
BENCH_ELAPSED="$ELAPSED" BENCH_NOTE_SHARED="$NOTE_SHARED" BENCH_BUSY="${busy# }" \
BENCH_LOAD_BEFORE="$LOAD_BEFORE" BENCH_LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)" \
BENCH_HANDSHAKE_CASE="$HANDSHAKES" \
  python3 "$BENCH_DIR/report_https.py" "$T/runs.tsv" "$T/responses.tsv" "$T/tls.tsv" > "$T/report.md" \
  || die "report failed"
cat "$T/report.md"
[ -n "$OUT_FILE" ] && cp "$T/report.md" "$OUT_FILE" && log "report written to $OUT_FILE"

bad="$(awk -F'\t' 'NR > 1 && ($10 != 0 || $11 != 0) {print $2 " (" $3 ", round " $1 "): " $10 " non-2xx/3xx, " $11 " errors"}' "$T/runs.tsv")"
[ -z "$bad" ] || die "failed requests under load: $bad"
if [ "$MODE" = full ] && [ "${BENCH_ENFORCE:-0}" = 1 ] && grep -q '| missed |' "$T/report.md"; then
  log "target missed (BENCH_ENFORCE=1)"; exit 3
fi
log "done in $(( $(date +%s) - START_TS + 0 )) s of measuring"
