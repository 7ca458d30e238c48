#!/usr/bin/env bash
# MorphKV against the full cache: decode speed (issue 3, item 7) and the memory check of the
# issue's "Done when" (KV bytes constant from token C on under MorphKV, growing under full).
#
#   tests/bench/bench_kv_speed.sh [BUILD_DIR]          (default: build)
#   env: MODEL (default: the demo model), THREADS (default 1), OUT (default BUILD_DIR/bench-kv),
#        C (default 1024), N (default 4000), GEN_C (default 256), MEASURE (default 256: steps
#        in the equal-length windows)
#
# 1. bench_kv_speed (tests/bench/bench_kv_speed.c; built by CMake when tests/bench is added to the
#    tree, otherwise here with a compiler line against BUILD_DIR/libmorphkv.a): full and
#    MorphKV(C, W=32) fed the same N tokens in alternation, every decode step timed (wall and
#    process CPU time). Figures: MorphKV's step at equal cache length against full's, and both
#    past 2C and over the whole output.
# 2. `morphkv generate --ignore-eos --stats-json` with --kv-policy morphkv (C = GEN_C) and full,
#    N tokens each: end-to-end decode tokens/s, and kv_bytes_by_step checked (MorphKV constant from
#    token GEN_C on, full strictly growing). Exit status 1 if the memory check fails.
#
# With THREADS=1 the process CPU time of a step is its work, whatever else runs on the machine;
# wall times are only meaningful on an idle machine. OMP_WAIT_POLICY defaults to passive (spinning
# OpenMP threads distort timings on a busy machine).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
MODEL=${MODEL:-$HOME/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-1}
OUT=${OUT:-$BUILD/bench-kv}
C=${C:-1024}
N=${N:-4000}
GEN_C=${GEN_C:-256}
MEASURE=${MEASURE:-256}
W=32
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$OUT"
[ -f "$MODEL" ] || { echo "model $MODEL not found (launch/fetch-model.sh)" >&2; exit 2; }
[ -x "$BUILD/morphkv" ] || { echo "$BUILD/morphkv not built" >&2; exit 2; }

BENCH=""
for b in "$BUILD/tests/bench/bench_kv_speed" "$BUILD/bench_kv_speed"; do
  [ -x "$b" ] && [ "$b" -nt "$BUILD/libmorphkv.a" ] && BENCH=$b && break
done
if [ -z "$BENCH" ]; then
  BENCH=$OUT/bench_kv_speed
  echo "building $BENCH against $BUILD/libmorphkv.a" >&2
  mpicc -std=c11 -O2 -D_GNU_SOURCE -fopenmp -I"$ROOT" -I"$BUILD/generated" \
    "$ROOT/tests/bench/bench_kv_speed.c" "$BUILD/libmorphkv.a" \
    $(pkg-config --libs libpcre2-8 jansson libprotobuf-c) -lm -o "$BENCH"
fi

PROMPTS=$ROOT/tests/golden/longwriter/longbench_write_en.jsonl
LINE=44 # "A Hong Kong Travel Guide, approximately 3000 words"
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== 1. per-step times: full vs morphkv C=$C W=$W, $N tokens, $THREADS thread(s)"
echo "   $BENCH --model $MODEL --capacity $C --window $W --new-tokens $N --threads $THREADS --measure $MEASURE --prompts $PROMPTS --prompt-line $LINE"
"$BENCH" --model "$MODEL" --capacity "$C" --window "$W" --new-tokens "$N" --threads "$THREADS" --measure "$MEASURE" \
  --prompts "$PROMPTS" --prompt-line "$LINE" --json "$OUT/steps_c$C.json" --csv "$OUT/steps_c$C.csv" > /dev/null
python3 - "$OUT/steps_c$C.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
C = d["capacity"]
for clock in ("cpu", "wall"):
    s = d[clock]
    print("   [%s time] equal length (~%d slots): full %.2f ms, morphkv %.2f ms -> overhead %+.1f%% (target <= 5%%)"
          % (clock, C + 1, s["equal_len_full_ms"], s["equal_len_morphkv_ms"], 100 * s["equal_len_overhead"]))
    print("   [%s time] before the first eviction (equal caches): overhead %+.1f%%; same positions %d..%d: ratio %.3f"
          % (clock, 100 * s["pre_eviction_overhead"], C + 1, C + d["measure_steps"], s["same_window_ratio"]))
    print("   [%s time] past 2C (positions >= %d): full %.2f ms, morphkv %.2f ms -> morphkv %.2fx faster (target > 1)"
          % (clock, 2 * C, s["past_2c_full_ms"], s["past_2c_morphkv_ms"], s["past_2c_speedup"]))
    print("   [%s time] whole output (%d steps): full %.1f tok/s, morphkv %.1f tok/s -> %.2fx"
          % (clock, d["decode_steps"], s["decode_tok_s_full"], s["decode_tok_s_morphkv"], s["whole_output_speedup"]))
print("   KV at the end: full %.1f MiB, morphkv %.1f MiB (+ %.1f MiB scoring state)"
      % (d["kv_live_bytes_full"] / 2**20, d["kv_live_bytes_morphkv"] / 2**20, d["policy_state_bytes_morphkv"] / 2**20))
EOF

echo "== 2. morphkv generate, $N tokens (--ignore-eos): morphkv C=$GEN_C W=$W vs full, $THREADS thread(s)"
PROMPT=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readlines()[int(sys.argv[2])])['prompt'])" "$PROMPTS" "$LINE")
for pol in morphkv full; do
  echo "   $BUILD/morphkv generate --model $MODEL --prompt '<line $LINE>' --chat --temperature 0 --max-new-tokens $N --ignore-eos --kv-policy $pol --kv-window $W --kv-capacity $GEN_C --threads $THREADS --stats-every 16 --stats-json $OUT/gen_$pol.json"
  "$BUILD/morphkv" generate --model "$MODEL" --prompt "$PROMPT" --chat --temperature 0 \
    --max-new-tokens "$N" --ignore-eos --kv-policy "$pol" --kv-window "$W" --kv-capacity "$GEN_C" \
    --threads "$THREADS" --stats-every 16 --stats-json "$OUT/gen_$pol.json" --quiet > "$OUT/gen_$pol.txt"
done
python3 - "$OUT/gen_morphkv.json" "$OUT/gen_full.json" "$GEN_C" <<'EOF'
import json, sys
m, f, C = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), int(sys.argv[3])
ok = True
for name, d in (("morphkv", m), ("full", f)):
    print("   %-8s %d tokens, decode %.1f tok/s, KV live at the end %.2f MiB, peak %.2f MiB, policy state %.2f MiB"
          % (name, d["generated_tokens"], d["decode_tok_s"], d["kv_live_bytes"] / 2**20, d["kv_peak_bytes"] / 2**20,
             d["policy_state_bytes"] / 2**20))
steps = [(n, b) for n, b in m["kv_bytes_by_step"] if n >= C]
vals = sorted({b for n, b in steps})
print("   morphkv kv_bytes_by_step from token %d on: %d samples, %d distinct value(s) %s"
      % (C, len(steps), len(vals), vals[:3]))
ok &= len(steps) > 0 and len(vals) == 1
fb = [b for n, b in f["kv_bytes_by_step"]]
grows = all(b2 > b1 for b1, b2 in zip(fb, fb[1:]))
print("   full kv_bytes_by_step: %d samples, %s, %.2f -> %.2f MiB"
      % (len(fb), "strictly growing" if grows else "NOT strictly growing", fb[0] / 2**20, fb[-1] / 2**20))
ok &= grows and m["generated_tokens"] == f["generated_tokens"]
print("   end to end: morphkv %.2fx the full cache's decode tok/s" % (m["decode_tok_s"] / f["decode_tok_s"]))
print("   memory check:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
