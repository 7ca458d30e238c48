#!/usr/bin/env bash
# Builds morphkv, fetches the demo model, and runs every test that can run on this machine:
# ctest labels unit, model and mpi (gpu tests skip themselves without a GPU), then the unit tests
# again under AddressSanitizer + UndefinedBehaviorSanitizer, then a short smoke of every fuzz
# target (one clang build, build-asan/, serves both).
# Tests labelled `slow` are left out unless MORPHKV_TEST_SLOW=1. Both test passes always run;
# the script fails at the end if either failed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
ASAN_DIR="${ASAN_DIR:-$ROOT/build-asan}"
export PATH="$HOME/.local/bin:$PATH"
# mpirun refuses to run as root unless told (containers, CI)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# ctest runs $(nproc) tests at once: one OpenMP thread each, sleeping rather than spinning while
# idle, so concurrent tests (and oversubscribed MPI ranks) do not starve each other.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
# (GNU nproc obeys OMP_NUM_THREADS, exported just above: count the CPUs without it)
JOBS="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
EXCLUDE=(-LE slow)
[ "${MORPHKV_TEST_SLOW:-0}" = "1" ] && EXCLUDE=()
t0=$SECONDS
stamp() { echo "test.sh: $1 ($((SECONDS - t0)) s so far)"; }

MODEL="$(bash "$ROOT/launch/fetch-model.sh")"
# The HF checkpoint of the demo model (--model DIR tests); without it they skip, saying so.
HF_MODEL="$(bash "$ROOT/launch/make-hf-checkpoint.sh" "$MODEL")" ||
  { HF_MODEL="$HOME/.cache/morphkv/SmolLM2-135M-Instruct-hf"; echo "test.sh: no HF checkpoint: test_hf_model and tp_engine_hf_np* skip" >&2; }
stamp "models ready"
echo "== build ($BUILD_DIR)"
BUILD_DIR="$BUILD_DIR" bash "$ROOT/launch/build.sh" -DMORPHKV_TEST_MODEL="$MODEL" -DMORPHKV_TEST_HF_MODEL="$HF_MODEL"
stamp "built"

echo "== ctest (labels unit, model, mpi, gpu${EXCLUDE:+; not slow})"
status=0
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$JOBS" -L 'unit|model|mpi|gpu' "${EXCLUDE[@]}" ||
  status=1
stamp "tests done"

# One clang build serves the sanitizer tests and the fuzz smoke: MORPHKV_FUZZ=ON implies ASan +
# UBSan and adds libFuzzer coverage hooks, so the unit tests run under the sanitizers in the very
# build that the fuzz targets come from (one instrumented build instead of two).
echo "== sanitizer + fuzz build ($ASAN_DIR): clang, ASan + UBSan, unit tests"
cmake -S "$ROOT" -B "$ASAN_DIR" -DCMAKE_C_COMPILER="$(command -v clang)" -DMORPHKV_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMORPHKV_CUDA=OFF -DMORPHKV_TEST_MODEL="$MODEL"
cmake --build "$ASAN_DIR" -j"$JOBS"
stamp "sanitizer build done"
ASAN_OPTIONS="abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  ctest --test-dir "$ASAN_DIR" --output-on-failure -j"$JOBS" -L unit "${EXCLUDE[@]}" || status=1
stamp "sanitizer tests done"

FUZZ_SECONDS="${MORPHKV_FUZZ_SECONDS:-20}"
echo "== fuzz smoke (${FUZZ_SECONDS} s per target, $JOBS at a time)"
fuzz_one() {
  local t=$1 log="$ASAN_DIR/smoke-$1.log"
  if FUZZ_DIR="$ASAN_DIR" MORPHKV_TEST_MODEL="$MODEL" FUZZ_BUILD_JOBS=1 \
    bash "$ROOT/launch/fuzz.sh" "$t" "$FUZZ_SECONDS" >"$log" 2>&1; then
    echo "fuzz_$t: $(grep -E '^stat::number_of_executed_units' "$log" | tail -1) ($(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1))"
  else
    tail -n 60 "$log"
    echo "fuzz smoke: fuzz_$t FAILED (log $log)" >&2
    return 1
  fi
}
read -r -a targets <<<"$(sed -n 's/^TARGETS="\(.*\)"$/\1/p' "$ROOT/launch/fuzz.sh")"
for ((i = 0; i < ${#targets[@]}; i += JOBS)); do
  pids=()
  for t in "${targets[@]:i:JOBS}"; do
    fuzz_one "$t" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
done
stamp "fuzz smoke done"

if [ "$status" -ne 0 ]; then
  echo "test.sh: FAILED (see the ctest output above)" >&2
  exit 1
fi
echo "test.sh: all tests passed in $((SECONDS - t0)) s"
