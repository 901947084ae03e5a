# Shell helpers shared by bench/run.sh (plain HTTP) and bench/https.sh (HTTPS, HTTP/2): sourced,
# not run. They read the caller's globals at call time: T (scratch dir), BIN, BACKEND_PORT,
# NGINX_PORT, WX_THREADS, WX_ACCESS_LOG, NGINX_ACCESS_LOG, NGINX_TLS, STARTED_PIDS, SAMPLER_PID.

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FAILED: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools and the binary
# ---------------------------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
CREATED_POLICY_RC=""

apt_install() {
  log "installing from apt: $*"
  # Debian's nginx package starts the system nginx on :80 after installing it; this run does
  # not want a stray server, so forbid service starts for the duration of the install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    CREATED_POLICY_RC=1
  fi
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
  fi
  if [ -n "$CREATED_POLICY_RC" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; CREATED_POLICY_RC=""; fi
}

build_wxedge() {  # sets BIN: WXEDGE_BIN as given, or target/release/wxedge built incrementally
  if [ -n "${WXEDGE_BIN:-}" ]; then
    BIN="$(realpath "$WXEDGE_BIN")"   # absolute: some steps run from another directory
    log "using WXEDGE_BIN=$BIN (no build)"
  else
    log "cargo build --release --locked (incremental)"
    (cd "$ROOT" && cargo build --release --locked --quiet) || die "cargo build --release failed"
    BIN="$ROOT/target/release/wxedge"
  fi
  [ -x "$BIN" ] || die "no wxedge binary at $BIN"
}

# ---------------------------------------------------------------------------------------------
# Scratch space, dist copies, ports; cleanup of everything started here
# ---------------------------------------------------------------------------------------------
make_scratch() {  # sets T, a temp dir removed at exit with every process started here
  T="$(mktemp -d /tmp/wxedge-bench.XXXXXX)"
  chmod 755 "$T"          # nginx workers run as an unprivileged user and read the dist from here
  mkdir -p "$T/raw" "$T/nginx-temp" "$T/check"
  STARTED_PIDS=()
  SAMPLER_PID=""
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  local p
  for p in "${STARTED_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${STARTED_PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  [ -n "$CREATED_POLICY_RC" ] && $SUDO rm -f /usr/sbin/policy-rc.d
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
  exit "$rc"
}

prepare_dists() {  # prepare_dists DIST_SRC MP_TOKEN: $T/dist-wxedge and $T/dist-nginx
  local src=$1 token=$2
  [ -f "$src/index.html" ] || die "no dist at $src (expected ../shared/fixtures/uniapp-h5/dist next to the repo)"
  cp -R "$src" "$T/dist-wxedge"
  chmod -R u+w,a+rX "$T/dist-wxedge"
  find "$T/dist-wxedge" -type f \( -name '*.js' -o -name '*.css' -o -name '*.html' \) \
    -exec gzip -9 -k -n {} \;
  rm -f "$T/dist-wxedge/MP_verify_$token.txt"
  cp -a "$T/dist-wxedge" "$T/dist-nginx"
  printf '%s' "$token" > "$T/dist-nginx/MP_verify_$token.txt"
  chmod a+r "$T/dist-nginx/MP_verify_$token.txt"
}

free_ports() {  # free_ports N: N free loopback ports, space-separated
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
}

fill() {  # fill TEMPLATE > OUT (@TLS@: NGINX_TLS, the HTTPS listener's lines; empty for plain HTTP)
  sed -e "s#@TMP@#$T#g" -e "s#@BACKEND_PORT@#$BACKEND_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
      -e "s#@NGINX_ROOT@#$T/dist-nginx#g" -e "s#@ACCESS_LOG@#$NGINX_ACCESS_LOG#g" \
      -e "s#@TLS@#${NGINX_TLS:-}#g" "$1" > "$2"
}

# ---------------------------------------------------------------------------------------------
# The servers
# ---------------------------------------------------------------------------------------------
wait_http() {  # wait_http URL PID NAME LOGFILE
  local i
  for i in $(seq 1 300); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { cat "$4" >&2 || true; die "$3 exited during start-up"; }
    sleep 0.1
  done
  cat "$4" >&2 || true
  die "$3 did not answer $1 within 30 s"
}

# start_wxedge NAME PORT [VAR=value ...]: wxedge with the bench's settings (plus VAR=value) in a
# clean environment, so a WX_APPID or WXEDGE_* of the caller's shell cannot change the run; its pid
# in STARTED_PID, its log in $T/NAME.log.
# The load comes from one address, as fast as it can: the per-client limits (limit_conn, the
# login's limit_req) and the bound on WeChat calls in flight would turn it away (nginx has none
# of them configured here either), so they are off.
start_wxedge() {
  local name="$1" port="$2"
  shift 2
  (cd "$T" && exec env -i PATH="$PATH" HOME="${HOME:-/root}" \
    WXEDGE_LISTEN="127.0.0.1:$port" \
    WXEDGE_DIST="$T/dist-wxedge" \
    WXEDGE_BACKEND="http://127.0.0.1:$BACKEND_PORT" \
    WXEDGE_THREADS="$WX_THREADS" \
    WXEDGE_ACCESS_LOG="$WX_ACCESS_LOG" \
    WXEDGE_PID_FILE="$T/$name.pid" \
    WXEDGE_UPGRADE_SOCK="$T/${name}_upgrade.sock" \
    WXEDGE_LIMIT_CONNECTIONS_PER_CLIENT=0 WXEDGE_LIMIT_LOGIN_RATE=0 WXEDGE_LIMIT_WECHAT_IN_FLIGHT=100000 \
    "$@" "$BIN") >"$T/$name.access.log" 2>"$T/$name.log" &
  STARTED_PID=$!; STARTED_PIDS+=("$STARTED_PID")
  wait_http "http://127.0.0.1:$port/_wxedge/healthz" "$STARTED_PID" "$name" "$T/$name.log"
}

children_of() {  # the direct children of PID, from /proc (no procps needed)
  local f ppid
  for f in /proc/[0-9]*/status; do
    ppid=""
    while read -r k v _; do [ "$k" = "PPid:" ] && { ppid=$v; break; }; done 2>/dev/null < "$f" || true
    if [ "$ppid" = "$1" ]; then f=${f#/proc/}; echo "${f%/status}"; fi
  done
  return 0
}

busy_processes() {  # compilers and linkers running now, "N name" comma-separated (noisy numbers)
  for f in /proc/[0-9]*/comm; do read -r c < "$f" 2>/dev/null && echo "$c"; done 2>/dev/null \
    | grep -E '^(rustc|cargo|cc1|cc1plus|ld|lld|mold|clang)$' | sort | uniq -c | tr -s ' ' | paste -sd, - || true
}

# ---------------------------------------------------------------------------------------------
# Measuring: memory, CPU, wrk's output
# ---------------------------------------------------------------------------------------------
sample_rss() {  # sample_rss OUTFILE PID... : writes the peak of sum(VmRSS) in kB, until killed
  local out=$1; shift
  local peak=0 sum k v p
  while :; do
    sum=0
    for p in "$@"; do
      while read -r k v _; do
        [ "$k" = "VmRSS:" ] && { sum=$((sum + v)); break; }
      done 2>/dev/null < "/proc/$p/status" || true
    done
    if [ "$sum" -gt "$peak" ]; then peak=$sum; echo "$peak" > "$out"; fi
    sleep 0.2
  done
}

sum_status_field() {  # sum_status_field FIELD PID... (kB)
  local field=$1 sum=0 k v p; shift
  for p in "$@"; do
    while read -r k v _; do
      [ "$k" = "$field:" ] && { sum=$((sum + v)); break; }
    done 2>/dev/null < "/proc/$p/status" || true
  done
  echo "$sum"
}
sum_pss() {  # sum of Pss (kB) from smaps_rollup: shared pages counted once across processes
  local sum=0 k v p; for p in "$@"; do
    while read -r k v _; do
      [ "$k" = "Pss:" ] && { sum=$((sum + v)); break; }
    done 2>/dev/null < "/proc/$p/smaps_rollup" || true
  done; echo "$sum"
}

cpu_ticks() {  # cpu_ticks PID... : user + system CPU of the processes, in clock ticks
  local u s
  read -r u s < <(cpu_split "$@")
  echo $((u + s))
}
cpu_split() {  # cpu_split PID... : "user system" CPU of the processes, in clock ticks
  local u=0 s=0 p a
  for p in "$@"; do
    read -r -a a 2>/dev/null < "/proc/$p/stat" || continue
    u=$((u + a[13])); s=$((s + a[14]))   # utime, stime (no spaces in these servers' comm field)
  done
  echo "$u $s"
}
machine_ticks() {  # machine_ticks : "busy idle steal" of all CPUs, in clock ticks (/proc/stat)
  # busy = user + nice + system + irq + softirq (guest time is already inside user);
  # idle = idle + iowait; steal = time the hypervisor ran someone else.
  awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6, $9; exit }' /proc/stat
}
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
per_req() {  # per_req TICKS REQUESTS : microseconds per request
  awk -v t="$1" -v hz="$CLK_TCK" -v n="${2:-0}" 'BEGIN { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "nan" }'
}

to_ms() {  # wrk latency (e.g. 512.00us, 1.20ms, 2.01s) -> milliseconds
  awk -v x="$1" 'BEGIN {
    if (x ~ /us$/) { sub(/us$/, "", x); printf "%.3f", x / 1000 }
    else if (x ~ /ms$/) { sub(/ms$/, "", x); printf "%.3f", x }
    else if (x ~ /m$/) { sub(/m$/, "", x); printf "%.3f", x * 60000 }
    else if (x ~ /s$/) { sub(/s$/, "", x); printf "%.3f", x * 1000 }
    else printf "nan" }'
}

wrk_stats() {  # wrk_stats RAW -> "req/s p50_ms p99_ms requests non2xx3xx socket_errors"
  local rps p50 p99 reqs non2 serr
  rps="$(awk '/^Requests\/sec:/ {print $2}' "$1")"
  p50="$(to_ms "$(awk '$1=="50%" {print $2; exit}' "$1")")"
  p99="$(to_ms "$(awk '$1=="99%" {print $2; exit}' "$1")")"
  reqs="$(awk '/requests in/ {print $1; exit}' "$1")"
  non2="$(awk '/Non-2xx or 3xx responses:/ {print $NF; exit}' "$1")"
  serr="$(awk '/Socket errors:/ {gsub(/,/, ""); print $4+$6+$8+$10; exit}' "$1")"
  echo "${rps:--} ${p50:-nan} ${p99:-nan} ${reqs:-0} ${non2:-0} ${serr:-0}"
}
