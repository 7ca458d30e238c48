#!/usr/bin/env bash
# A wedged or killed rank must take the whole job down quickly (the collective watchdog,
# parallel/watchdog.h).
#   wedge_test.sh stop RANK -- MPIRUN_COMMAND...   SIGSTOP rank RANK once decoding has started
#   wedge_test.sh self RANK -- MPIRUN_COMMAND...   the program stops itself (tests/mpi/wedge_test.c
#                                                  prints "wedge_test: rank R stops itself")
#   wedge_test.sh kill RANK -- MPIRUN_COMMAND...   SIGKILL rank RANK once decoding has started
# "Decoding has started" is the "[morphkv] prefill:" line of `generate --progress` (stop, kill)
# plus one second. Checks, from the signal on:
#   - exit status non-zero, and every rank process gone;
#   - stop/self: within 15 s, and the output has "did not arrive: ... rank RANK (no answer";
#     every healthy rank's "comm watchdog:" diagnosis names rank RANK as not answering (or, when
#     Open MPI's SIGCONT woke it in time to answer, as "did not run for S s") and blames
#     no other rank (another rank may only appear as "rank N (alive, ...: waiting in ...)"; right
#     under pipeline stages too: --pp runs); at least $MK_WEDGE_MIN_DIAG (default 1) of them;
#     self also needs a timed-out call of purpose $MK_WEDGE_PURPOSE (default "score sync":
#     wedge_test.c's peers wait in the score-sync all-reduce);
#   - kill: within 10 s.
# The ranks are found by an environment marker (mpirun hands its environment to local ranks)
# and OMPI_COMM_WORLD_RANK. Whatever happens, every rank process of the job is sent SIGCONT and
# SIGKILL at the end, so a stopped process is never left behind. Prints PASS or FAIL lines.
set -u
mode=$1
rank=$2
shift 2
[ "${1:-}" = "--" ] && shift
out=$(mktemp)
export MK_WEDGE_ID="wedge-$$-$RANDOM"

rank_pids() { # all processes of this job carrying the marker (and OMPI rank $1 when given)
  local p
  for p in /proc/[0-9]*; do
    [ -r "$p/environ" ] || continue
    local env
    env=$(tr "\\0" "\\n" 2>/dev/null <"$p/environ") || continue
    grep -qx "MK_WEDGE_ID=$MK_WEDGE_ID" <<<"$env" || continue
    grep -q '^OMPI_COMM_WORLD_RANK=' <<<"$env" || continue
    if [ -n "${1:-}" ] && ! grep -qx "OMPI_COMM_WORLD_RANK=$1" <<<"$env"; then continue; fi
    echo "${p#/proc/}"
  done
}

all_pids=""
cleanup() {
  local p
  for p in $all_pids $(rank_pids); do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  rm -f "$out"
}
trap cleanup EXIT

timeout -k 5 90 "$@" >"$out" 2>&1 &
job=$!
case "$mode" in
  stop | kill) marker='\[morphkv\] prefill:' ;;
  self) marker="wedge_test: rank $rank stops itself" ;;
  *) echo "FAIL: unknown mode $mode"; exit 1 ;;
esac
for _ in $(seq 1 600); do # up to 60 s for load + prefill
  grep -q "$marker" "$out" && break
  kill -0 "$job" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q "$marker" "$out"; then
  echo "FAIL: never saw '$marker'"; cat "$out"; exit 1
fi
all_pids=$(rank_pids)
target=$(rank_pids "$rank")
if [ "$mode" != self ]; then
  sleep 1
  if [ -z "$target" ]; then echo "FAIL: no process for rank $rank"; cat "$out"; exit 1; fi
  if [ "$mode" = stop ]; then kill -STOP $target; else kill -KILL $target; fi
fi
start=$(date +%s.%N)
wait "$job"
rc=$?
end=$(date +%s.%N)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
limit=15
[ "$mode" = kill ] && limit=10
ok=1
[ "$rc" -eq 0 ] && { echo "FAIL: the job exited 0 with rank $rank ${mode}ped"; ok=0; }
# (137 alone is also mpirun's own status after a rank died of SIGKILL)
if [ "$rc" -eq 124 ]; then echo "FAIL: the job hung (killed after 90 s)"; ok=0; fi
awk -v e="$elapsed" -v l="$limit" 'BEGIN { exit !(e < l) }' ||
  { echo "FAIL: the job took ${elapsed} s to go down (limit $limit s)"; ok=0; }
sleep 0.5
left=""
for p in $all_pids; do
  st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || continue
  [ "$st" = Z ] || left="$left $p($st)"
done
[ -n "$left" ] && { echo "FAIL: rank processes still there after the job ended:$left"; ok=0; }
if [ "$mode" != kill ]; then
  grep -q "did not arrive:.* rank $rank (no answer" "$out" ||
    { echo "FAIL: no message naming rank $rank as the one that did not arrive"; ok=0; }
  grep -q "morphkv: rank [0-9]*: .*comm watchdog:" "$out" ||
    { echo "FAIL: no 'morphkv: rank R: ... comm watchdog:' message"; ok=0; }
  # Every diagnosis by a healthy rank (the stopped one's own says "this rank itself did not run")
  # names rank RANK as not answering, and no other rank: under pipeline stages the ranks of other
  # stages run other collectives, and a healthy one must not be blamed.
  healthy=$(grep -o "comm watchdog:.*" "$out" | grep -v "this rank itself did not run")
  n_diag=$(grep -c . <<<"$healthy")
  n_named=$(grep -c "rank $rank (\(no answer\|did not run for\)" <<<"$healthy")
  [ "$n_diag" -ge "${MK_WEDGE_MIN_DIAG:-1}" ] && [ "$n_named" -eq "$n_diag" ] ||
    { echo "FAIL: $n_named of $n_diag healthy ranks' diagnoses name rank $rank as not answering or stopped"; ok=0; }
  # an entry "rank N (alive, ...: waiting in ...)" explains a healthy rank; any other "rank N (..."
  # ("no answer", "still at ...") blames N
  blamed=$(grep -o "rank [0-9]* ([a-z]*" <<<"$healthy" | grep -v "(alive$" | grep -v "^rank $rank (" |
    sort -u | tr '\n' ' ')
  [ -z "$blamed" ] || { echo "FAIL: a diagnosis blames a healthy rank: $blamed"; ok=0; }
fi
if [ "$mode" = self ]; then
  grep -q "comm watchdog: MPI_I[a-z]* (${MK_WEDGE_PURPOSE:-score sync}" "$out" ||
    { echo "FAIL: no timed-out call is a ${MK_WEDGE_PURPOSE:-score sync} one"; ok=0; }
fi
echo "---- job output (exit status $rc, ${elapsed} s after the signal) ----"
grep -v '^\s*$' "$out" | tail -c 6000
echo "----"
if [ "$ok" -eq 1 ]; then
  echo "PASS: rank $rank ${mode}: the job exited $rc after ${elapsed} s"
  exit 0
fi
exit 1
