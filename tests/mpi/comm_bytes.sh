#!/usr/bin/env bash
# Per-token payload bytes of each collective, per rank, on the CPU path (docs/parallel.md table):
#   tests/mpi/comm_bytes.sh MORPHKV MODEL [T...]        (default T = 1 2 3 4)
# For each T and sampler (greedy; the defaults T 0.8, top-k 40, top-p 0.95, min-p 0.05) runs
# `morphkv generate` with MorphKV (W 32, C 64, so replicated KV heads are scored) for 16 and 32
# new tokens and prints (bytes after 32 - bytes after 16) / 16 / T for the model all-reduces,
# the score sync and the sampling exchange, and the full-vocabulary gather it replaces (T x the
# widest vocabulary slice x 4 bytes, what mk_engine_step's full logits cost per token).
set -eu
bin=$1 model=$2
shift 2
Ts=${*:-1 2 3 4}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf "| T | sampler | all-reduce | score sync | sampling exchange | full gather (before) |\n|---|---|---|---|---|---|\n"
for T in $Ts; do
  for s in greedy default; do
    extra=(); [ "$s" = greedy ] && extra=(--temperature 0)
    for n in 16 32; do
      mpirun --oversubscribe --allow-run-as-root -np "$T" "$bin" generate --model "$model" \
        --prompt "Write a story about a robot who learns to paint." --max-new-tokens $n --ignore-eos \
        --kv-policy morphkv --kv-window 32 --kv-capacity 64 --threads 1 --quiet "${extra[@]}" \
        --stats-json "$work/$T-$s-$n.json" > /dev/null 2>&1
    done
    python3 - "$work/$T-$s-16.json" "$work/$T-$s-32.json" "$T" "$s" << 'PY'
import json, sys
a, b, T, s = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), int(sys.argv[3]), sys.argv[4]
d = lambda k: (b[k] - a[k]) / 16 / T
V = 49152 if a.get("model_name", "").lower().startswith("smollm2") else None
full = "%d" % (4 * ((V + T - 1) // T) * T) if V and T > 1 else ("0" if T == 1 else "?")
print("| %d | %s | %.0f | %.0f | %.0f | %s |" % (T, s, d("comm_model_bytes"), d("comm_score_bytes"),
      d("comm_sample_bytes"), full))
PY
  done
done
