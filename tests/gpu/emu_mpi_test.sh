#!/usr/bin/env bash
# The morphkv CLI on the emulated CUDA backend (morphkv_emu: tests/gpu/emu, the emulated NCCL)
# under mpirun, against the emulated single-rank run and the CPU path.
#   emu_mpi_test.sh synth|demo|refusals MORPHKV_EMU MORPHKV_CPU SYNTH_WRITE NP_FLAG MPIRUN...
# synth     the synthetic 8/2-head model, head_dim 64 (replicated KV heads at T = 3), MorphKV W 4 C 24 evicting,
#           8 greedy tokens, T = 1, 2, 3, with --comm mpi (staged) and --comm nccl (emulated):
#           tokens equal the emulated T = 1 run; all-reduce, score-sync and sampling-exchange bytes
#           equal the CPU path's (morphkv --backend cpu) at the same T; the communicator is the one
#           asked for. (Kept positions at every step: tp_synth_emu_test.)
# demo      the same on the demo model ($MORPHKV_TEST_MODEL), 8 greedy tokens (emulation is slow:
#           label emu-slow).
# refusals  --comm nccl with two ranks on one (emulated) GPU is refused on every rank before any
#           collective, naming the local ranks, CUDA_VISIBLE_DEVICES and --comm mpi; --comm nccl
#           on the CPU backend is refused on every rank.
# Prints "PASS: emu_mpi_test MODE" or FAIL lines.
set -u
mode=$1 emu=$2 cpu=$3 synth_write=$4 npflag=$5
shift 5
mpirun=("$@")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

run() { # run NAME NP BINARY ARGS... -> $work/NAME.json, $work/NAME.log; returns the exit status
  local name=$1 np=$2 bin=$3
  shift 3
  timeout -k 5 1800 "${mpirun[@]}" "$npflag" "$np" "$bin" generate "$@" --stats-json "$work/$name.json" \
    > "$work/$name.log" 2>&1
}

field() { # field NAME KEY -> the JSON value (lists joined by commas)
  python3 - "$work/$1.json" "$2" << 'PY'
import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
print(",".join(map(str, v)) if isinstance(v, list) else v)
PY
}

compare_runs() { # compare_runs MODEL_ARGS... (tokens vs emulated T=1, bytes vs CPU at the same T)
  for np in 1 2 3; do
    run cpu$np "$np" "$cpu" --backend cpu "$@" || { fail "CPU run T=$np: $(tail -3 "$work/cpu$np.log")"; continue; }
    for comm in mpi nccl; do
      local n=emu_${comm}_$np
      if ! run "$n" "$np" "$emu" --backend cuda --comm "$comm" "$@"; then
        fail "emulated run T=$np --comm $comm: $(tail -3 "$work/$n.log")"
        continue
      fi
      [ -f "$work/emu_mpi_1.json" ] || continue
      local ids ref
      ids=$(field "$n" output_ids) ref=$(field emu_mpi_1 output_ids)
      [ "$ids" = "$ref" ] || fail "T=$np --comm $comm: tokens [$ids] differ from the emulated T=1 run's [$ref]"
      local want=$comm
      [ "$np" -gt 1 ] && [ "$comm" = mpi ] && want=mpi-staged
      [ "$np" -eq 1 ] && [ "$comm" = mpi ] && want=mpi-staged
      [ "$(field "$n" comm)" = "$want" ] || fail "T=$np --comm $comm: communicator $(field "$n" comm), expected $want"
      for k in comm_model_bytes comm_score_bytes comm_sample_bytes; do
        local a b
        a=$(field "$n" $k) b=$(field cpu$np $k)
        [ "$a" = "$b" ] || fail "T=$np --comm $comm: $k $a, the CPU path reports $b"
      done
      echo "T=$np --comm $comm ($(field "$n" comm)): tokens [$ids]; bytes model $(field "$n" comm_model_bytes)" \
           "score $(field "$n" comm_score_bytes) sample $(field "$n" comm_sample_bytes) (CPU path equal)"
    done
  done
}

gen_args=(--temperature 0 --ignore-eos --quiet --threads 1)
case "$mode" in
  synth)
    "$synth_write" "$work/synth.gguf" 64 || { echo "FAIL: cannot write the synthetic model"; exit 1; }
    compare_runs --model "$work/synth.gguf" --prompt "the cat and the dog went to the park in the morning, then it ran home." \
      --max-new-tokens 8 --kv-policy morphkv --kv-window 4 --kv-capacity 24 "${gen_args[@]}"
    ;;
  demo)
    [ -f "${MORPHKV_TEST_MODEL:-}" ] || { echo "FAIL: MORPHKV_TEST_MODEL is not a file"; exit 1; }
    compare_runs --model "$MORPHKV_TEST_MODEL" --prompt "The capital of France is" --max-new-tokens 8 \
      --kv-policy morphkv --kv-window 4 --kv-capacity 8 "${gen_args[@]}"
    ;;
  refusals)
    "$synth_write" "$work/synth.gguf" 64 || { echo "FAIL: cannot write the synthetic model"; exit 1; }
    args=(--model "$work/synth.gguf" --prompt "hi" --max-new-tokens 1 "${gen_args[@]}")
    MK_EMU_GPU_ID=one-gpu run shared 2 "$emu" --backend cuda --comm nccl "${args[@]}"
    rc=$?
    log=$work/shared.log
    [ "$rc" -ne 0 ] || fail "--comm nccl with two ranks on one GPU exited 0"
    [ "$rc" -lt 128 ] || fail "--comm nccl with two ranks on one GPU crashed (exit $rc)"
    for r in 0 1; do
      grep -q "(rank $r): .*local ranks 0 and 1 .*CUDA_VISIBLE_DEVICES=.*--comm mpi" "$log" ||
        fail "rank $r did not report the shared GPU: $(cat "$log")"
    done
    ! grep -qi "MPI_ABORT\|segmentation\|core dumped" "$log" || fail "shared GPU: the job aborted: $(cat "$log")"
    echo "shared GPU refused: $(grep -m1 "(rank 0)" "$log")"
    MK_EMU_GPU_ID=one-gpu run shared_mpi 2 "$emu" --backend cuda --comm mpi "${args[@]}" ||
      fail "--comm mpi with two ranks on one GPU failed: $(tail -3 "$work/shared_mpi.log")"
    run cpu_nccl 2 "$cpu" --backend cpu --comm nccl "${args[@]}"
    rc=$?
    [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] || fail "--comm nccl on the CPU backend: exit $rc"
    for r in 0 1; do
      grep -q "(rank $r): .*--comm nccl needs the CUDA backend" "$work/cpu_nccl.log" ||
        fail "rank $r did not refuse --comm nccl on the CPU backend: $(cat "$work/cpu_nccl.log")"
    done
    ;;
  *) echo "FAIL: unknown mode $mode"; exit 2 ;;
esac
[ "$fails" -eq 0 ] && echo "PASS: emu_mpi_test $mode" && exit 0
echo "FAIL: emu_mpi_test $mode: $fails check(s) failed"
exit 1
