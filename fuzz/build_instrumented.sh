#!/usr/bin/env bash
# Build a copy of pacs_engine, outside the work tree, whose native scanner is
# compiled with clang for libFuzzer coverage (-fsanitize=fuzzer-no-link) and,
# with SANITIZE=fuzzer-no-link,address, with AddressSanitizer too
# (SANITIZE=address: ASan alone; SANITIZE=none: a plain build).
#
#   fuzz/build_instrumented.sh [OUT_DIR]        (default /tmp/pacs-fuzz-build)
#   PACS_FUZZ_BUILD=OUT_DIR python fuzz/fuzz_scan.py ...
#
# Needs clang (Debian: apt-get install clang) and Cython in the Python used.
set -euo pipefail
OUT=${1:-/tmp/pacs-fuzz-build}
PY=${PYTHON:-python}
CC=${CC:-clang}
SANITIZE=${SANITIZE:-fuzzer-no-link}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

rm -rf "$OUT"
mkdir -p "$OUT"
cp -r "$ROOT/src/pacs_engine" "$OUT/"
find "$OUT" \( -name '*.so' -o -name '*.c' -o -name '__pycache__' \) -prune -exec rm -rf {} +
NATIVE="$OUT/pacs_engine/_native"
# The same compiler directives as setup.py, so the fuzzed code is the shipped code.
"$PY" -m cython -3 -X boundscheck=False -X wraparound=False -X cdivision=True \
    -X initializedcheck=False "$NATIVE/scanner.pyx" -o "$NATIVE/scanner.c"
INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
FLAGS=()
[ "$SANITIZE" != none ] && FLAGS+=("-fsanitize=$SANITIZE")
"$CC" -shared -fPIC -O1 -g -fno-omit-frame-pointer "${FLAGS[@]}" \
    -I"$INCLUDE" "$NATIVE/scanner.c" -o "$NATIVE/scanner$SUFFIX"
echo "built $NATIVE/scanner$SUFFIX (-fsanitize=$SANITIZE)"
