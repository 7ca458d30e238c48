#!/usr/bin/env bash
# One rank fails, the whole job must go down quickly.
#   fail_test.sh EXPECT_RANK -- MPIRUN_COMMAND...
# Runs the command (which must make rank EXPECT_RANK call mk_ctx_abort while the others sit in a
# collective; see mpi_comm_test.c "fail" mode) under a hard 30 s cap and checks:
#   - exit status non-zero,
#   - finished within 10 s,
#   - stderr/stdout carry "morphkv: rank EXPECT_RANK: " with the failing rank's reason.
# Prints PASS or FAIL lines; exit status 0 only on PASS.
set -u
rank=$1
shift
[ "${1:-}" = "--" ] && shift
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s.%N)
timeout -k 5 30 "$@" >"$out" 2>&1
rc=$?
end=$(date +%s.%N)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
ok=1
if [ "$rc" -eq 0 ]; then
  echo "FAIL: the job exited 0 although rank $rank failed"; ok=0
fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "FAIL: the job hung (killed after 30 s)"; ok=0
fi
if ! awk -v e="$elapsed" 'BEGIN { exit !(e < 10) }'; then
  echo "FAIL: the job took ${elapsed} s to go down (limit 10 s)"; ok=0
fi
if ! grep -q "morphkv: rank $rank: bad config" "$out"; then
  echo "FAIL: no 'morphkv: rank $rank: bad config' message in the output"; ok=0
fi
echo "---- job output (exit status $rc, ${elapsed} s) ----"
cat "$out"
echo "----"
if [ "$ok" -eq 1 ]; then
  echo "PASS: rank $rank failed, the job exited $rc after ${elapsed} s with its message"
  exit 0
fi
exit 1
