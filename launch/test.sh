#!/usr/bin/env bash
# Builds morphkv, fetches the demo model, and runs every test that can run on this machine:
# ctest labels unit, model and mpi (gpu tests skip themselves without a GPU), then the unit tests
# again under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
ASAN_DIR="${ASAN_DIR:-$ROOT/build-asan}"
export PATH="$HOME/.local/bin:$PATH"
# mpirun refuses to run as root unless told (containers, CI)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
JOBS="$(nproc)"

MODEL="$(bash "$ROOT/launch/fetch-model.sh")"
echo "== build ($BUILD_DIR)"
BUILD_DIR="$BUILD_DIR" bash "$ROOT/launch/build.sh" -DMORPHKV_TEST_MODEL="$MODEL"

echo "== ctest (labels unit, model, mpi, gpu)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$JOBS" -L 'unit|model|mpi|gpu'

echo "== sanitizer build ($ASAN_DIR): ASan + UBSan, unit tests"
cmake -S "$ROOT" -B "$ASAN_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMORPHKV_SANITIZE=ON -DMORPHKV_CUDA=OFF \
  -DMORPHKV_TEST_MODEL="$MODEL"
cmake --build "$ASAN_DIR" -j"$JOBS"
ASAN_OPTIONS="abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  ctest --test-dir "$ASAN_DIR" --output-on-failure -j"$JOBS" -L unit
echo "test.sh: all tests passed"
