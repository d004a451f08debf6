#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 12 s each; about 75 s in all with the builds).
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#   fuzz/run.sh --build-only    (compile the C targets, warnings as errors, and stop)
#
# C targets (fuzz_*.c) are libFuzzer programs built with clang, ASan and UBSan over the
# csrc/ parsers; Python targets (fuzz_*.py) run under atheris. Seeds come from fuzz/corpus
# (python fuzz/make_corpus.py regenerates them); new inputs go to a temporary folder, so the
# repository is not touched unless something crashes: the reproducer is then kept in
# fuzz/crashes/<target>/ and the script exits 1. Move it into fuzz/regressions/<target>/ with
# the fix; tests/test_fuzz_regressions.py replays that folder on every test run.
set -euo pipefail

BUILD_ONLY=0
if [ "${1:-}" = --build-only ]; then BUILD_ONLY=1; shift; fi
SECONDS_EACH="${1:-12}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"  # made by scripts/test's set-up, with clang and atheris
WORK="$(mktemp -d -t shardscan-fuzz.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
failed=0

run_target() { # name, command...: one bounded run; a crash leaves its input in fuzz/crashes/name/
    local name="$1"; shift
    mkdir -p "$WORK/corpus-$name" "$HERE/crashes/$name"
    local started=$SECONDS
    if "$@" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
            -artifact_prefix="$HERE/crashes/$name/" "$WORK/corpus-$name" "$HERE/corpus/$name" \
            >"$WORK/$name.log" 2>&1; then
        echo "fuzz $name: ok ($((SECONDS - started)) s, $(grep -c . "$WORK/$name.log" || true) log lines)"
        rmdir "$HERE/crashes/$name" 2>/dev/null || true
    else
        echo "fuzz $name: FAILED, reproducer in fuzz/crashes/$name/" >&2
        tail -40 "$WORK/$name.log" >&2
        failed=1
    fi
}

for target in "$HERE"/fuzz_*.c; do
    name="$(basename "$target" .c)"; name="${name#fuzz_}"
    # Each source defines _GNU_SOURCE itself (a -D here would redefine it); -Werror keeps the
    # build as warning-free as the core's.
    clang -std=c11 -g -O1 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -I"$ROOT/csrc" "$target" "$ROOT"/csrc/*.c -pthread -lxxhash -lisal -lcrypto -lm -o "$WORK/fuzz_$name"
    ((BUILD_ONLY)) && continue
    ASAN_OPTIONS=detect_leaks=1 run_target "$name" "$WORK/fuzz_$name"
done

((BUILD_ONLY)) && exit 0

for target in "$HERE"/fuzz_*.py; do
    name="$(basename "$target" .py)"; name="${name#fuzz_}"
    # The package's own C core is not instrumented here: atheris guides on Python coverage.
    run_target "$name" "$PYTHON" "$target"
done

exit "$failed"
