#!/usr/bin/env bash
# Decode cost of the collective watchdog (docs/reliability.md): the same greedy generation under
# `mpirun -np 2`, --comm-timeout 0 (plain blocking MPI collectives) and --comm-timeout 300
# (non-blocking + bounded sleeping wait), interleaved PAIRS times; prints each run's decode tok/s
# and the mean of each side.
#   tests/bench/bench_watchdog.sh BUILD_DIR MODEL [PAIRS] [TOKENS]
set -euo pipefail
B=$1 M=$2 PAIRS=${3:-3} N=${4:-128}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
run() {
  mpirun --oversubscribe -np 2 "$B/morphkv" generate --model "$M" --prompt "Write a story about a lighthouse." \
    --max-new-tokens "$N" --ignore-eos --temperature 0 --threads 1 --comm-timeout "$1" 2>&1 >/dev/null |
    sed -n 's/^decode: .* = \([0-9.]*\) tok\/s.*/\1/p'
}
off=() on=()
for i in $(seq 1 "$PAIRS"); do
  a=$(run 0); b=$(run 300)
  off+=("$a"); on+=("$b")
  echo "pair $i: --comm-timeout 0: $a tok/s   --comm-timeout 300: $b tok/s"
done
printf '%s\n' "${off[@]}" | awk '{s+=$1} END {printf "mean, watchdog off: %.2f tok/s\n", s/NR}'
printf '%s\n' "${on[@]}" | awk '{s+=$1} END {printf "mean, watchdog on:  %.2f tok/s\n", s/NR}'
