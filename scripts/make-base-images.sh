#!/usr/bin/env bash
# Make, locally, the two base images the Dockerfile names, for machines with no Docker engine and no
# image registry (see docs in the Dockerfile's header):
#
#   docker.io/library/debian:bookworm-slim  debootstrap --variant=minbase bookworm, docs/man stripped
#   docker.io/library/rust:1-slim-bookworm  the same plus ca-certificates gcc libc6-dev build-essential
#                                           pkg-config and this machine's Rust toolchain (rustc, cargo)
#
# Each image is made only if it is missing, so running this twice is cheap. Force a rebuild with
# `FORCE=1 bash scripts/make-base-images.sh`.
#
# The Debian mirror is read at run time from this machine's apt sources (/etc/apt/sources.list.d/*.sources,
# *.list, /etc/apt/sources.list); no mirror host name is written in this file. Override with
# DEBIAN_MIRROR=... if needed.
#
# Needs root. Installs buildah and debootstrap with apt-get if missing. Uses buildah's vfs storage driver
# (works everywhere, no overlay/fuse needed).
set -euo pipefail

DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
RUST_IMAGE=docker.io/library/rust:1-slim-bookworm
SUITE=bookworm
FORCE=${FORCE:-0}

log() { printf '[make-base-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
bh() { buildah --storage-driver vfs "$@"; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, buildah mount)"

need_pkgs=()
command -v buildah >/dev/null 2>&1 || need_pkgs+=(buildah)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing ${need_pkgs[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# An image is up to date when it exists and carries the label this run would give it: a hash of this
# script (and, for the rust image, of the debian image it starts from, the toolchain version and the
# machine's local CA certificates).
image_label() { bh inspect --type image --format '{{index .Docker.Config.Labels "wxedge.base-recipe"}}' "$1" 2>/dev/null; }
local_cas() { find /usr/local/share/ca-certificates -name '*.crt' -type f 2>/dev/null | sort; }
SCRIPT_HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
DEBIAN_RECIPE=$SCRIPT_HASH

# --- read the Debian mirror(s) from the machine's apt sources ----------------------------------------
# Prints "URI SUITE" for every active deb source (deb822 .sources and one-line .list formats).
apt_source_pairs() {
    local f
    shopt -s nullglob
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [opts] URI SUITE COMPONENTS...
        awk '$1 == "deb" {
                 i = 2
                 if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
                 print $i, $(i+1)
             }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822 stanzas separated by blank lines; skip Enabled: no and non-"deb" types
        awk 'function flush() {
                 if (types ~ /(^| )deb( |$)/ && enabled != "no") {
                     nu = split(uris, U, " "); ns = split(suites, S, " ")
                     for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++) print U[a], S[b]
                 }
                 types = ""; uris = ""; suites = ""; enabled = ""
             }
             /^[ \t]*#/ { next }
             /^[ \t]*$/ { flush(); next }
             {
                 key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^[ \t]+/, "")
                 if (key == "types") types = $0
                 else if (key == "uris") uris = $0
                 else if (key == "suites") suites = $0
                 else if (key == "enabled") enabled = tolower($0)
             }
             END { flush() }' "$f"
    done
    shopt -u nullglob
}

# The main archive: a URI serving suite "bookworm" (or "stable") that is not a security archive.
find_mirror() {
    apt_source_pairs | awk -v s="$SUITE" '($2 == s || $2 == "stable") && $1 !~ /security/ { print $1; exit }'
}
find_security_mirror() {
    apt_source_pairs | awk -v s="$SUITE-security" '$2 == s { print $1; exit }'
}

# --- debian:bookworm-slim ---------------------------------------------------------------------------
make_debian() {
    local mirror sec rootfs c m t0 old
    t0=$(date +%s)
    mirror=${DEBIAN_MIRROR:-$(find_mirror)}
    [ -n "$mirror" ] || die "no Debian '$SUITE' mirror found in /etc/apt/sources.list{,.d/*}; set DEBIAN_MIRROR"
    sec=${DEBIAN_SECURITY_MIRROR:-$(find_security_mirror)}
    log "debootstrap $SUITE (minbase) from the machine's apt mirror"

    ROOTFS=$(mktemp -d /var/tmp/wxedge-rootfs.XXXXXX)
    rootfs=$ROOTFS
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >/var/tmp/wxedge-debootstrap.log 2>&1 \
        || { tail -20 /var/tmp/wxedge-debootstrap.log >&2; die "debootstrap failed (log: /var/tmp/wxedge-debootstrap.log)"; }

    # apt sources inside the image: same mirror, plus -updates and -security when the machine has them.
    {
        echo "deb $mirror $SUITE main"
        echo "deb $mirror $SUITE-updates main"
        [ -n "$sec" ] && echo "deb $sec $SUITE-security main"
    } >"$rootfs/etc/apt/sources.list"

    # Slim it the way the official -slim images do: no docs, man pages or translations from later
    # installs; no apt cache or lists left in the image.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
        "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    : >"$rootfs/etc/resolv.conf"
    echo wxedge-base >"$rootfs/etc/hostname"
    chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"

    c=$(bh from --name wxedge-mkbase-debian scratch)
    m=$(bh mount "$c")
    cp -a "$rootfs/." "$m/"
    bh umount "$c" >/dev/null
    bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash \
        --label "wxedge.base-recipe=$DEBIAN_RECIPE" "$c"
    old=$(bh inspect --type image --format '{{.FromImageID}}' "$DEBIAN_IMAGE" 2>/dev/null || true)
    bh commit --quiet --rm "$c" "$DEBIAN_IMAGE" >/dev/null
    [ -z "$old" ] || bh rmi "$old" >/dev/null 2>&1 || true # the superseded image, if nothing uses it
    rm -rf "$rootfs"
    log "made $DEBIAN_IMAGE in $(( $(date +%s) - t0 ))s"
}

# --- rust:1-slim-bookworm ----------------------------------------------------------------------------
make_rust() {
    local sysroot cargo_bin c m t0 old
    t0=$(date +%s)
    command -v rustc >/dev/null 2>&1 || die "rustc not found on this machine"
    sysroot=$(rustc --print sysroot)
    [ -x "$sysroot/bin/rustc" ] || die "no rustc under sysroot $sysroot"
    cargo_bin="$sysroot/bin/cargo"
    if [ ! -x "$cargo_bin" ]; then
        cargo_bin=$(rustup which cargo 2>/dev/null || true)
        [ -x "$cargo_bin" ] || die "no cargo next to rustc in $sysroot"
    fi
    log "rust image: toolchain $(rustc --version) from $sysroot"

    c=$(bh from --pull=never --name wxedge-mkbase-rust "$DEBIAN_IMAGE")
    # The machine's own CA additions (a TLS-inspecting egress proxy, an internal registry), so that
    # `cargo fetch` in the Dockerfile's build stage trusts what the machine trusts. Build stage only: the
    # runtime stage starts from debian:bookworm-slim, which does not get them.
    m=$(bh mount "$c")
    if [ -n "$(local_cas)" ]; then
        mkdir -p "$m/usr/local/share/ca-certificates"
        cp -a /usr/local/share/ca-certificates/. "$m/usr/local/share/ca-certificates/"
        log "added the machine's local CA certificates: $(local_cas | tr '\n' ' ')"
    fi
    bh run --isolation chroot "$c" -- sh -c '
        set -e
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends ca-certificates gcc libc6-dev build-essential pkg-config >/dev/null
        rm -rf /var/lib/apt/lists/*'

    mkdir -p "$m/usr/local/rust" "$m/usr/local/cargo/bin"
    # bin + lib + libexec of the toolchain; leave out docs (share/) and the std sources (rust-src).
    tar -C "$sysroot" --exclude=./share --exclude=./lib/rustlib/src --exclude=./lib/rustlib/rustc-src \
        -cf - . | tar -C "$m/usr/local/rust" -xf -
    if [ "$cargo_bin" != "$sysroot/bin/cargo" ]; then
        install -m 0755 "$cargo_bin" "$m/usr/local/rust/bin/cargo"
    fi
    chmod -R a+rX "$m/usr/local/rust"
    chmod 0777 "$m/usr/local/cargo"
    bh umount "$c" >/dev/null

    bh config \
        --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env RUST_VERSION="$(rustc --version | awk '{print $2}')" \
        --label "wxedge.base-recipe=$RUST_RECIPE" \
        --cmd bash "$c"
    # smoke test: the toolchain runs inside the image
    bh run --isolation chroot "$c" -- sh -c 'rustc --version && cargo --version' >&2
    old=$(bh inspect --type image --format '{{.FromImageID}}' "$RUST_IMAGE" 2>/dev/null || true)
    bh commit --quiet --rm "$c" "$RUST_IMAGE" >/dev/null
    [ -z "$old" ] || bh rmi "$old" >/dev/null 2>&1 || true
    log "made $RUST_IMAGE in $(( $(date +%s) - t0 ))s"
}

# Working containers and the debootstrap tree are removed on exit, also after a failure or an interrupt
# (and leftovers of an interrupted earlier run are removed first).
ROOTFS=
cleanup() {
    local name
    for name in wxedge-mkbase-debian wxedge-mkbase-rust; do
        bh umount "$name" >/dev/null 2>&1 || true
        bh rm "$name" >/dev/null 2>&1 || true
    done
    if [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ]; then
        umount -R "$ROOTFS/proc" "$ROOTFS/sys" >/dev/null 2>&1 || true
        rm -rf --one-file-system "$ROOTFS"
    fi
}
cleanup
trap cleanup EXIT

if [ "$FORCE" = 1 ] || [ "$(image_label "$DEBIAN_IMAGE")" != "$DEBIAN_RECIPE" ]; then
    make_debian
else
    log "$DEBIAN_IMAGE exists and is up to date"
fi
RUST_RECIPE=$( {
    echo "$SCRIPT_HASH"
    bh inspect --type image --format '{{.FromImageID}}' "$DEBIAN_IMAGE"
    rustc --version 2>/dev/null
    local_cas | xargs -r cat
} | sha256sum | cut -c1-16)
if [ "$FORCE" = 1 ] || [ "$(image_label "$RUST_IMAGE")" != "$RUST_RECIPE" ]; then
    make_rust
else
    log "$RUST_IMAGE exists and is up to date"
fi
bh images --filter reference='docker.io/library/*' >&2
