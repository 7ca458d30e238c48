#!/usr/bin/env bash
# `mpirun -np 2 morphkv generate --backend cuda ...` on a machine without a GPU (or a build
# without CUDA) must end with a clear message on every rank, never a crash or an abort:
#   no_gpu_test.sh MORPHKV MODEL MPIRUN... 
# Passes when the job exits 1 and both ranks print "morphkv generate (rank R): ..." naming the
# missing device (or the missing CUDA build), with no signal, no MPI_Abort banner. Where a GPU is
# present (the job exits 0) it prints PASS with a note: there is nothing to refuse.
set -u
bin=$1 model=$2
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout -k 5 60 "$@" "$bin" generate --backend cuda --model "$model" --prompt "hello" --max-new-tokens 2 \
  --quiet > "$out" 2>&1
rc=$?
cat "$out"
if [ "$rc" -eq 0 ]; then
  echo "PASS: no_gpu_test (a CUDA device is present here: nothing to refuse)"
  exit 0
fi
ok=1
[ "$rc" -eq 1 ] || { echo "FAIL: exit status $rc (expected 1)"; ok=0; }
for r in 0 1; do
  grep -Eq "morphkv generate \(rank $r\): .*(no CUDA device|built without CUDA)" "$out" ||
    { echo "FAIL: rank $r printed no clear message (\"morphkv generate (rank $r): ...\")"; ok=0; }
done
! grep -Eqi "MPI_ABORT|segmentation|core dumped|signal [0-9]|AddressSanitizer" "$out" ||
  { echo "FAIL: the job crashed or aborted"; ok=0; }
[ "$ok" -eq 1 ] && echo "PASS: no_gpu_test" && exit 0
exit 1
