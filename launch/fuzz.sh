#!/usr/bin/env bash
# Runs one libFuzzer target (tests/fuzz/) for SECONDS under ASan + UBSan.
#   launch/fuzz.sh TARGET SECONDS [libFuzzer flags...]     TARGET: gguf tokenizer config request safetensors
# Builds $FUZZ_DIR (default build-fuzz/: clang, -DMORPHKV_FUZZ=ON) when needed. The committed
# seeds (tests/fuzz/corpus/TARGET/) are read, never written: new inputs go to
# $FUZZ_DIR/fuzz-work/TARGET/corpus, crashes and property failures to .../artifacts/ (the script
# then fails). One process, one job: -jobs/-workers are left to the caller. Prints libFuzzer's
# final stats (stat::number_of_executed_units, cov:/ft: on the last status lines).
# Example: the campaign of docs/reliability.md
#   launch/fuzz.sh tokenizer 600 -runs=1000000
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="${FUZZ_DIR:-$ROOT/build-fuzz}"
TARGETS="gguf tokenizer config request safetensors"
if [ $# -lt 2 ] || ! grep -qw -- "$1" <<<"$TARGETS"; then
  echo "usage: launch/fuzz.sh TARGET SECONDS [libFuzzer flags...]  (TARGET: $TARGETS)" >&2
  exit 2
fi
target=$1
secs=$2
shift 2
CC_FUZZ="${CC_FUZZ:-$(command -v clang || true)}"
if [ -z "$CC_FUZZ" ]; then
  echo "launch/fuzz.sh: clang not found (launch/setup.sh installs it)" >&2
  exit 1
fi
MODEL="${MORPHKV_TEST_MODEL:-$HOME/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf}"
export PATH="$HOME/.local/bin:$PATH"
if [ ! -f "$FUZZ_DIR/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$FUZZ_DIR" -DCMAKE_C_COMPILER="$CC_FUZZ" -DMORPHKV_FUZZ=ON \
    -DMORPHKV_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMORPHKV_TEST_MODEL="$MODEL" >/dev/null
fi
cmake --build "$FUZZ_DIR" --target "fuzz_$target" -j"${FUZZ_BUILD_JOBS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}" >/dev/null
work="$FUZZ_DIR/fuzz-work/$target"
mkdir -p "$work/corpus" "$work/artifacts"
export MORPHKV_TEST_MODEL="$MODEL"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
echo "launch/fuzz.sh: fuzz_$target for ${secs} s (corpus $work/corpus + tests/fuzz/corpus/$target)"
"$FUZZ_DIR/tests/fuzz/fuzz_$target" -max_total_time="$secs" -print_final_stats=1 \
  -rss_limit_mb=4096 -timeout=25 -artifact_prefix="$work/artifacts/" "$@" \
  "$work/corpus" "$ROOT/tests/fuzz/corpus/$target"
