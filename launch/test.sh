#!/usr/bin/env bash
# Builds morphkv, fetches the demo model, and runs every test that can run on this machine:
# ctest labels unit, model and mpi (gpu tests skip themselves without a GPU), then the unit tests
# again under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/), then a short smoke of
# every fuzz target (clang, build-fuzz/).
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
JOBS="$(nproc)"
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

echo "== sanitizer build ($ASAN_DIR): ASan + UBSan, unit tests"
cmake -S "$ROOT" -B "$ASAN_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMORPHKV_SANITIZE=ON \
  -DMORPHKV_CUDA=OFF -DMORPHKV_TEST_MODEL="$MODEL"
cmake --build "$ASAN_DIR" -j"$JOBS"
stamp "sanitizer build done"
ASAN_OPTIONS="abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  ctest --test-dir "$ASAN_DIR" --output-on-failure -j"$JOBS" -L unit "${EXCLUDE[@]}" || status=1
stamp "sanitizer tests done"

# Fuzz smoke: every libFuzzer target of tests/fuzz for MORPHKV_FUZZ_SECONDS (default 20) under
# ASan + UBSan, from the committed seeds (clang build in build-fuzz/; launch/fuzz.sh).
FUZZ_SECONDS="${MORPHKV_FUZZ_SECONDS:-20}"
echo "== fuzz smoke (${FUZZ_SECONDS} s per target)"
mkdir -p "${FUZZ_DIR:-$ROOT/build-fuzz}"
for t in gguf tokenizer config request safetensors; do
  log="${FUZZ_DIR:-$ROOT/build-fuzz}/smoke-$t.log"
  if FUZZ_DIR="${FUZZ_DIR:-$ROOT/build-fuzz}" MORPHKV_TEST_MODEL="$MODEL" \
    bash "$ROOT/launch/fuzz.sh" "$t" "$FUZZ_SECONDS" >"$log" 2>&1; then
    echo "fuzz_$t: $(grep -E '^stat::number_of_executed_units' "$log" | tail -1) ($(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1))"
  else
    tail -n 60 "$log"
    echo "fuzz smoke: fuzz_$t FAILED (log $log)" >&2
    status=1
  fi
done
stamp "fuzz smoke done"

if [ "$status" -ne 0 ]; then
  echo "test.sh: FAILED (see the ctest output above)" >&2
  exit 1
fi
echo "test.sh: all tests passed in $((SECONDS - t0)) s"
