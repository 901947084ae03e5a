#!/usr/bin/env bash
# All tests: unit and integration tests (real binary, real backend stand-in, real browser),
# the container image built from the real Dockerfile, and the benchmarks' smoke runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked
# deploy/: the Kubernetes manifests and compose.yaml against their schemas (validators from PyPI).
bash scripts/validate-deploy.sh
# The fuzz targets: build, replay the committed seeds and regressions, fuzz each briefly.
if [ -f fuzz/smoke.sh ] && [ "${WXEDGE_SKIP_FUZZ:-0}" != 1 ]; then
  bash fuzz/smoke.sh
fi
if [ -f scripts/container-test.sh ] && [ "${WXEDGE_SKIP_CONTAINER:-0}" != 1 ]; then
  bash scripts/container-test.sh
fi
# The benchmarks' smoke runs (seconds per case, no thresholds), so they cannot rot: plain HTTP,
# then HTTPS and HTTP/2. They use the debug binary the tests just built; the real numbers come
# from `bash bench/run.sh` and `bash bench/https.sh`.
if [ -f bench/run.sh ] && [ "${WXEDGE_SKIP_BENCH:-0}" != 1 ]; then
  WXEDGE_BIN="$PWD/target/debug/wxedge" bash bench/run.sh --smoke
  WXEDGE_BIN="$PWD/target/debug/wxedge" bash bench/https.sh --smoke
fi
