#!/usr/bin/env bash
# Runs the test suite once against an AddressSanitizer + UndefinedBehaviorSanitizer build of
# the C core, without touching the normal build.
#
#   scripts/sanitize-tests.sh [pytest args...]      (default: the whole tests/ folder)
#
# How: build.py compiles csrc/ with SHARDSCAN_SANITIZE=1 (and -Werror) into a temporary
# folder; a copy of src/shardscan with that _native module goes first on PYTHONPATH (the
# editable install's .pth entry comes after it); the sanitizer runtimes are preloaded because
# the python binary itself is not instrumented. Child processes (CLI subprocess tests) inherit
# all of it. Any ASan/UBSan report aborts the process, which fails the test run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"  # made by scripts/test's set-up
WORK="$(mktemp -d -t shardscan-asan.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# cffi compiles from inside its tmpdir with the source paths build.py gives (csrc/...), so the
# sources are copied there; the repo's csrc/ never receives object files.
mkdir -p "$WORK/build" "$WORK/pkg"
cp -r "$ROOT/csrc" "$WORK/build/"
(cd "$ROOT" && SHARDSCAN_SANITIZE=1 SHARDSCAN_WERROR=1 "$PYTHON" -c '
import runpy, sys
runpy.run_path("build.py")["ffibuilder"].compile(tmpdir=sys.argv[1], verbose=False)' "$WORK/build" >/dev/null)

cp -r "$ROOT/src/shardscan" "$WORK/pkg/"
rm -f "$WORK"/pkg/shardscan/_native*.so
cp "$WORK"/build/shardscan/_native*.so "$WORK/pkg/shardscan/"

ASAN_LIB="$(gcc -print-file-name=libasan.so)"
UBSAN_LIB="$(gcc -print-file-name=libubsan.so)"
# Make sure the import really picks the sanitized module (a wrong path would test nothing).
PYTHONPATH="$WORK/pkg" LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" ASAN_OPTIONS=detect_leaks=0 "$PYTHON" -c '
import sys, shardscan._native as n
assert n.__file__.startswith(sys.argv[1]), n.__file__' "$WORK/pkg"

cd "$ROOT"
# detect_leaks=0: CPython keeps interned objects and arenas until exit by design.
# handle_sigbus=0, allow_user_segv_handler=1: SIGBUS from a file shrinking under a mapping is
#   ours to catch (csrc/file.c's guard); ASan must not report it as a crash.
# halt_on_error / -fno-sanitize-recover: the first report ends the run with a failure.
export PYTHONPATH="$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
# log_path: pytest captures fd 2, and an abort would take the report with it; the logs are
#   printed after the run instead.
export ASAN_OPTIONS="detect_leaks=0:handle_sigbus=0:allow_user_segv_handler=1:halt_on_error=1:abort_on_error=1:log_path=$WORK/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/ubsan"
export SHARDSCAN_SANITIZED=1
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider "${@:-tests}" || status=$?
for log in "$WORK"/asan.* "$WORK"/ubsan.*; do
    [ -e "$log" ] || continue
    echo "==== sanitizer report $log" >&2
    cat "$log" >&2
    status=1
done
exit "$status"
