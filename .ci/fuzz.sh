#!/usr/bin/env bash
# Fuzzing in CI (docs/testing.md, "Fuzzing"). Runs every cargo-fuzz target of
# proto/fuzz and relay/fuzz for FUZZ_SECONDS each (default 15) on nightly,
# starting from the committed inputs, and fails on any crash, naming the
# crash file. Without a nightly toolchain it says so and runs the same checks
# on stable instead: the committed inputs plus random ones, as tests. It never
# skips silently. Run from anywhere: bash .ci/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-15}"
# The toolchain cargo-fuzz needs (-Z flags); only an installed one counts:
# CI can't fetch toolchains, so rustup must not try.
FUZZ_TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
export RUSTUP_AUTO_INSTALL=0
FUZZ_CRATES=(proto/fuzz relay/fuzz)
# Both fuzz crates build into one directory, so their common dependencies
# build once (their lock files start from the workspace's).
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target/fuzz}"

# The targets of a fuzz crate: one file per target in fuzz_targets/.
targets_of() {
    local crate=$1 f
    for f in "$crate"/fuzz_targets/*.rs; do
        basename "$f" .rs
    done
}

# The stable tests that replay each crate's targets (see docs/testing.md).
stable_test_of() {
    case "$1" in
        proto/fuzz) echo "proto/tests/fuzz_replay.rs" ;;
        relay/fuzz) echo "relay/tests/router_sequences.rs" ;;
        *) echo "no stable test known for $1" >&2; return 1 ;;
    esac
}

# Every target must have committed inputs and a stable test that runs its
# check, or the stable fallback would skip it without saying so.
for crate in "${FUZZ_CRATES[@]}"; do
    test_file=$(stable_test_of "$crate")
    for target in $(targets_of "$crate"); do
        if [ ! -d "$crate/regressions/$target" ]; then
            echo "fuzz target $target has no committed inputs: add $crate/regressions/$target/" >&2
            exit 1
        fi
        if ! grep -q "fuzz/checks/$target.rs" "$test_file"; then
            echo "fuzz target $target has no stable replay: include fuzz/checks/$target.rs in $test_file" >&2
            exit 1
        fi
    done
done

# libFuzzer flags per target, after the shared ones.
target_flags() {
    case "$1" in
        # 8 bytes of limits and 64 steps of 12 bytes; start at full length so
        # a short run reaches long sequences.
        router_sequences) echo "-max_len=776 -len_control=0" ;;
        *) echo "" ;;
    esac
}

if ! cargo "+$FUZZ_TOOLCHAIN" --version >/dev/null 2>&1; then
    echo "nightly toolchain not found: running the fuzz targets' inputs on stable instead"
    echo "(installed toolchains: $(rustup toolchain list 2>/dev/null | tr '\n' ' '))"
    # The committed inputs of every target, then random inputs from fixed seeds.
    cargo test -p lanrage-proto --test fuzz_replay
    # More random sequences than cargo test's default 300 (about 20 s).
    LANRAGE_FUZZ_CASES="${LANRAGE_FUZZ_CASES:-2000}" cargo test -p lanrage-relay --test router_sequences
    exit 0
fi

echo "== fuzz: $(cargo "+$FUZZ_TOOLCHAIN" --version), ${FUZZ_SECONDS} s per target"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

# No sanitizer: the code under test has no unsafe (the parsers and the
# router are safe Rust), so AddressSanitizer would only slow the build and
# the runs; overflow checks stay on (cargo fuzz builds with debug assertions).
fuzz=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
build_flags=(--sanitizer none --target-dir "$FUZZ_TARGET_DIR")

crashed=()
for crate in "${FUZZ_CRATES[@]}"; do
    echo "== fuzz: build $crate"
    (cd "$crate" && "${fuzz[@]}" build "${build_flags[@]}")
    for target in $(targets_of "$crate"); do
        echo "== fuzz: $crate $target"
        mkdir -p "$crate/corpus/$target"
        # New inputs go to corpus/ (git-ignored); regressions/ is read.
        # shellcheck disable=SC2046
        if ! (cd "$crate" && "${fuzz[@]}" run "${build_flags[@]}" "$target" \
            "corpus/$target" "regressions/$target" -- \
            -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1 \
            $(target_flags "$target")); then
            crashed+=("$crate $target")
            echo "!! $target failed; its crash input:" >&2
            ls -1 "$crate/artifacts/$target/" >&2 || true
        fi
    done
done

if [ "${#crashed[@]}" -gt 0 ]; then
    echo "fuzz: crashes in: ${crashed[*]}" >&2
    echo "inputs are in <crate>/fuzz/artifacts/<target>/; reproduce and commit one as" >&2
    echo "docs/testing.md (\"When the fuzzer finds a crash\") says" >&2
    exit 1
fi
echo "== fuzz: no crashes"
