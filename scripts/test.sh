#!/usr/bin/env bash
# All tests: unit and integration tests (real binary, real backend stand-in, real browser),
# then the container image built from the real Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked
if [ -f scripts/container-test.sh ] && [ "${WXEDGE_SKIP_CONTAINER:-0}" != 1 ]; then
  bash scripts/container-test.sh
fi
