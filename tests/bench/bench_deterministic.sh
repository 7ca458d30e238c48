#!/usr/bin/env bash
# Cost of the deterministic numerics (issue 10): decode tok/s at batch 1, prefill tok/s and
# collective bytes per decode token, --deterministic on vs off, for T ranks (1 thread each, or
# THREADS at T = 1). Runs alternate on/off REPS times; the table keeps each setting's best run
# (the machine is shared: the best run is the least disturbed one).
#   tests/bench/bench_deterministic.sh [BUILD_DIR] [T...]      (default build, T = 1 2)
# Environment: MODEL (the demo model), REPS (3), NEW (128 decode tokens), THREADS (1).
set -euo pipefail
B=${1:-build}
shift || true
TS=${*:-1 2}
MODEL=${MODEL:-$HOME/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf}
REPS=${REPS:-3}
NEW=${NEW:-128}
THREADS=${THREADS:-1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# a ~500-token prompt for the prefill figure
for i in $(seq 1 12); do
  echo "The bicycle gear system transfers the rider's pedalling force from the chainring to the rear cog, and the ratio between their teeth sets how far the wheel turns per stroke."
done > "$TMP/prompt.txt"
run() { # T det rep [new]
  local t=$1 det=$2 rep=$3 n=${4:-$NEW} th=$THREADS
  [ "$t" -gt 1 ] && th=1
  mpirun --oversubscribe -np "$t" "$B/morphkv" generate --model "$MODEL" --prompt-file "$TMP/prompt.txt" \
    --temperature 0 --max-new-tokens "$n" --ignore-eos --threads "$th" --quiet --deterministic "$det" \
    --stats-json "$TMP/s_${t}_${det}_${rep}.json" > /dev/null
}
for t in $TS; do
  run "$t" on p 1 # prefill-only runs: their bytes are subtracted to get the decode bytes per token
  run "$t" off p 1
  for rep in $(seq 1 "$REPS"); do
    run "$t" on "$rep"
    run "$t" off "$rep"
  done
done
python3 - "$TMP" "$TS" "$NEW" <<'EOF'
import glob, json, sys
tmp, ts, new = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
print("| T | deterministic | decode tok/s (batch 1) | prefill tok/s | model bytes / decode token | score bytes / decode token |")
print("| --- | --- | --- | --- | --- | --- |")
rows = {}
for t in ts:
    for det in ("on", "off"):
        runs = [json.load(open(f)) for f in sorted(glob.glob(f"{tmp}/s_{t}_{det}_[0-9]*.json"))]
        pre_only = json.load(open(f"{tmp}/s_{t}_{det}_p.json"))
        dec = max(r["decode_tok_s"] for r in runs)
        pre = max(r["prefill_tok_s"] for r in runs)
        r = runs[0]
        steps = r["decode_steps"]
        mb = (r.get("comm_model_bytes", 0) - pre_only.get("comm_model_bytes", 0)) / steps
        sb = (r.get("comm_score_bytes", 0) - pre_only.get("comm_score_bytes", 0)) / steps
        rows[(t, det)] = (dec, pre)
        print(f"| {t} | {det} | {dec:.1f} | {pre:.1f} | {mb:,.0f} | {sb:,.0f} |")
for t in ts:
    on, off = rows[(t, "on")], rows[(t, "off")]
    print(f"T={t}: decode cost {100 * (1 - on[0] / off[0]):+.1f}%, prefill cost {100 * (1 - on[1] / off[1]):+.1f}% (positive = slower with invariance)")
EOF
