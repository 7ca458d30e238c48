#!/usr/bin/env bash
# Device check for the CUDA backend, on a machine with an NVIDIA GPU (sized for one H200, < 8 min
# with the build):
#   1. configure + build with -DMORPHKV_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 (sm_90 only: faster)
#   2. ctest -L gpu            per-op parity, engine parity (needs the demo model), init, dequant
#   3. bench_decode            Llama-3.1-8B-shaped decode: batch 1/16, full vs MorphKV (W 32,
#                              C 2048), 512/8K/32K context; tokens/s, KV bytes, roofline fraction
# If the project does not configure there (MPI, PCRE2, jansson, protobuf-c or cmocka missing), step
# 2 is reported as not run and the benchmark is built alone with nvcc (it needs only CUDA).
#
# Environment: BUILD_DIR (default build-device), JOBS (default nproc), MORPHKV_TEST_MODEL (the demo
# model for test_cuda_e2e, which skips without it), BENCH_ARGS (extra arguments, e.g. --quick).
# Exit status: 0 when the tests passed (or skipped) and the benchmark ran; 77 without a device;
# 1 otherwise.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${BUILD_DIR:-$ROOT/build-device}"
JOBS="${JOBS:-$(nproc)}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
t0=$(date +%s)
stamp() { echo "[device-check +$(( $(date +%s) - t0 ))s] $*"; }

stamp "start $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
"$NVCC" --version | tail -2

tests_rc=0
tests_note="passed"
bench="$BUILD/tests/gpu/bench_decode"
stamp "configure + build ($BUILD, -j$JOBS)"
if cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMORPHKV_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
     -DCMAKE_CUDA_COMPILER="$NVCC" -DMORPHKV_CUDA_EMU_TEST=OFF ${MORPHKV_TEST_MODEL:+-DMORPHKV_TEST_MODEL="$MORPHKV_TEST_MODEL"} \
     > "$BUILD.configure.log" 2>&1 &&
   cmake --build "$BUILD" -j"$JOBS" > "$BUILD.build.log" 2>&1; then
  stamp "build done"
  stamp "ctest -L gpu"
  if ! timeout 420 ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout 300; then
    tests_rc=1
    tests_note="FAILED (see above)"
  fi
else
  stamp "project build failed; last lines of the logs:"
  tail -5 "$BUILD.configure.log" 2>/dev/null
  tail -15 "$BUILD.build.log" 2>/dev/null
  tests_rc=2
  tests_note="NOT RUN (project did not build here)"
  mkdir -p "$BUILD"
  bench="$BUILD/bench_decode_standalone"
  stamp "building the benchmark alone with nvcc"
  if ! "$NVCC" -O3 -std=c++17 -arch=sm_90 -I"$ROOT" -o "$bench" "$ROOT/tests/gpu/bench_decode.cu" \
       "$ROOT"/cuda/attention.cu "$ROOT"/cuda/dequant.cu "$ROOT"/cuda/elementwise.cu "$ROOT"/cuda/matmul.cu \
       "$ROOT"/cuda/morphkv.cu "$ROOT"/cuda/norm.cu "$ROOT"/cuda/rope.cu -lcublas; then
    stamp "benchmark build failed"
    exit 1
  fi
fi

stamp "bench_decode ${BENCH_ARGS:-}"
bench_rc=0
timeout 300 "$bench" ${BENCH_ARGS:-} || bench_rc=$?
[ "$bench_rc" -eq 0 ] || stamp "bench_decode exited with $bench_rc"
if [ "$bench_rc" -eq 77 ]; then
  stamp "summary: no CUDA device here (gpu tests $tests_note, benchmark skipped); total $(( $(date +%s) - t0 )) s"
  exit 77
fi

stamp "summary: gpu tests $tests_note; benchmark exit $bench_rc; total $(( $(date +%s) - t0 )) s"
[ "$tests_rc" -eq 1 ] && exit 1
[ "$bench_rc" -ne 0 ] && exit 1
exit 0
