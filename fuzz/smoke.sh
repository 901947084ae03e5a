#!/usr/bin/env bash
# CI smoke for the fuzz targets: build them, replay the committed seeds and regressions, then
# fuzz each target briefly. Exits non-zero on a build failure, a crash or an invariant violation.
#
#   bash fuzz/smoke.sh              # 15 s per target (~6 min with the build, 2 idle cores)
#   SMOKE_SECONDS=60 bash fuzz/smoke.sh
#
# Works on the stable toolchain: cargo-fuzz with `--sanitizer none` passes no nightly-only flag.
set -euo pipefail

cd "$(dirname "$0")"
FUZZ_DIR=$(pwd)
SECONDS_PER_TARGET=${SMOKE_SECONDS:-15}
TARGETS=(request_parse path_normalise chunked session_cookie static_range)
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
# libFuzzer (C++) is built by libfuzzer-sys.
if ! command -v c++ >/dev/null 2>&1; then
    echo "smoke: no C++ compiler (apt-get install g++)" >&2
    exit 1
fi

# A quicker build for a short run than the one for long runs (fuzz/README.md): 16 codegen units and
# opt-level 1 instead of 1 unit and opt-level 3; coverage instrumentation and debug assertions
# (overflow checks) are the same.
export CARGO_PROFILE_RELEASE_OPT_LEVEL=${SMOKE_OPT_LEVEL:-1}
cargo fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer none --codegen-units 16

BIN="$FUZZ_DIR/target/$TRIPLE/release"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# static_range writes its small dist tree under the temp dir: keep it in ours.
export TMPDIR="$WORK"

passed=0
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t/corpus" "$WORK/$t/artifacts"
    inputs=()
    for d in "corpus/$t" "regressions/$t"; do
        [ -d "$d" ] && [ -n "$(ls -A "$d")" ] && inputs+=("$d")
    done
    dict=()
    [ "$t" = request_parse ] && dict=(-dict="$FUZZ_DIR/dicts/http.dict")
    if [ ${#inputs[@]} -gt 0 ]; then
        echo "== $t: replaying ${inputs[*]}"
        if ! "$BIN/$t" -runs=0 -artifact_prefix="$WORK/$t/artifacts/" "${inputs[@]}" \
            >"$WORK/$t/replay.log" 2>&1; then
            tail -40 "$WORK/$t/replay.log"
            echo "smoke: $t FAILED on a committed input" >&2
            failed=$((failed + 1))
            continue
        fi
    fi
    echo "== $t: fuzzing ${SECONDS_PER_TARGET}s"
    if ! "$BIN/$t" "$WORK/$t/corpus" "${inputs[@]}" "${dict[@]}" \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -print_final_stats=1 \
        -artifact_prefix="$WORK/$t/artifacts/" >"$WORK/$t/fuzz.log" 2>&1; then
        tail -40 "$WORK/$t/fuzz.log"
        for a in "$WORK/$t/artifacts"/*; do
            [ -f "$a" ] && echo "smoke: input: $(od -An -c "$a" | head -20)" >&2
        done
        echo "smoke: $t FAILED" >&2
        failed=$((failed + 1))
        continue
    fi
    passed=$((passed + 1))
    grep -E "stat::number_of_executed_units|Done" "$WORK/$t/fuzz.log" | tail -2 || true
done

echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
