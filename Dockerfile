# wxedge: the Pingora edge of the uni-app H5 container (static dist/, WeChat OAuth, sessions, API proxy).
#
#   docker build -t wxedge .
#   docker run -p 80:80 -e WX_APPID=... -e WX_SECRET_FILE=/run/secrets/wx_secret \
#     -e WXEDGE_SESSION_KEY_FILE=/run/secrets/session_key -e WX_MP_VERIFY=<token> wxedge
#   (a trial without a WeChat app: -e WXEDGE_SANDBOX=true; no login at the edge: -e WXEDGE_WECHAT_LOGIN=false)
#
# On machines with no Docker engine (CI here): bash scripts/make-base-images.sh makes the two base images
# locally, then `buildah --storage-driver vfs build --format docker --isolation chroot --pull=never -t wxedge .`
# (scripts/container-test.sh does both and tests the result). Use --format docker with buildah: the OCI
# image format has no HEALTHCHECK.
#
# Images built FROM this one can keep their nginx-era `COPY dist/ /usr/share/nginx/html` lines. The
# image's own dist gets its gzip/br twins here, at build time (`wxedge compress`); a dist copied in later
# is compressed by the edge in the background after it starts (served uncompressed meanwhile, and kept
# in /var/cache/wxedge for the next start), unless the derived image runs the same step after its COPY:
#   COPY dist/ /usr/share/nginx/html/
#   USER root
#   RUN ["/usr/local/bin/wxedge", "compress", "/usr/share/nginx/html"]
#   USER 10001:10001
# (a twin this step wrote for a file the COPY replaced is never served: the edge checks each against
# the content hash recorded in /usr/share/nginx/html/.wxedge-compressed).
# Reload like `nginx -s reload`: docker exec <container> wxedge reload -c /etc/wxedge/wxedge.yaml
# No secrets are baked in: pass WeChat app secrets, cookie keys etc. as environment variables at run time.

# ---------------------------------------------------------------------------------------------- build
FROM rust:1-slim-bookworm AS build

# cmake: pingora's compression builds zlib-ng (libz-ng-sys) with cmake; gcc/make for ring, zstd-sys.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, so a source-only change reuses the downloaded crates from the layer cache
# (stub sources for every target Cargo.toml names: cargo reads them all).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > benches/log_line.rs \
 && echo 'fn main() {}' > benches/logins.rs \
 && cargo fetch --locked \
 && rm -rf src benches

COPY . .
RUN cargo build --release --locked \
 && install -m 0755 target/release/wxedge /wxedge

# -------------------------------------------------------------------------------------------- runtime
FROM debian:bookworm-slim

ARG WXEDGE_UID=10001
ARG WXEDGE_GID=10001

# ca-certificates: the edge calls WeChat's HTTPS API. libcap2-bin is only for the setcap further down
# (set here, in the final stage, because COPY --from does not keep file capabilities everywhere) and is
# purged there.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid "${WXEDGE_GID}" wxedge \
 && useradd --system --uid "${WXEDGE_UID}" --gid wxedge --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin wxedge

COPY --from=build /wxedge /usr/local/bin/wxedge
COPY dist/ /usr/share/nginx/html/
COPY conf/ /etc/wxedge/

# The dist's gzip and br twins, made now with the edge's own encoder (gzip 9, brotli 10), so the edge
# starts with every variant and nothing to compress. Port 80 as non-root: file capability
# cap_net_bind_service on the binary only. The pid file and the upgrade socket go to /tmp (see
# conf/wxedge.yaml), which stays world-writable. /var/cache/wxedge: variants the edge makes itself (of a
# dist copied or mounted later), kept by content hash for the next start; mount a volume there to keep
# them across container upgrades too.
RUN /usr/local/bin/wxedge compress -c /etc/wxedge/wxedge.yaml /usr/share/nginx/html \
 && setcap cap_net_bind_service=+ep /usr/local/bin/wxedge \
 && apt-get purge -y --auto-remove libcap2-bin \
 && chmod -R a+rX /usr/share/nginx/html /etc/wxedge \
 && install -d -o "${WXEDGE_UID}" -g "${WXEDGE_GID}" -m 0755 /var/cache/wxedge \
 && chmod 1777 /tmp

ENV WXEDGE_LISTEN=0.0.0.0:80 \
    WXEDGE_DIST=/usr/share/nginx/html \
    WXEDGE_COMPRESS_CACHE=/var/cache/wxedge

USER ${WXEDGE_UID}:${WXEDGE_GID}
# 443: with WXEDGE_TLS_LISTEN=0.0.0.0:443 and the certificate files mounted, e.g.
#   -v /etc/letsencrypt:/etc/letsencrypt:ro -e WXEDGE_TLS_CERT=/etc/letsencrypt/live/h5/fullchain.pem
#   -e WXEDGE_TLS_KEY=/etc/letsencrypt/live/h5/privkey.pem (renewed files: `wxedge reload` in the container).
EXPOSE 80 443
# SIGTERM: graceful shutdown; in-flight requests finish (up to grace_period_seconds in conf/wxedge.yaml)
# before the process exits. `docker stop` kills after 10 s by default: give long downloads or uploads more
# with --stop-timeout (Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# No curl in the image: the binary GETs http://127.0.0.1:<port of WXEDGE_LISTEN>/_wxedge/healthz itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/wxedge", "healthcheck"]
# PID 1 is the supervisor: it stays while `wxedge reload` (or SIGHUP) replaces the
# server under it with a new config, certificates and dist, and passes SIGTERM on to it.
CMD ["/usr/local/bin/wxedge", "supervise", "-c", "/etc/wxedge/wxedge.yaml"]
