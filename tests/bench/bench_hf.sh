#!/usr/bin/env bash
# bf16 Hugging Face checkpoint vs the GGUF it was made from (tools/make_hf_checkpoint.py), same
# engine, prompt and threads: prefill and decode tok/s (--stats-json), the two models alternating
# run by run so both see the same machine load; prints the median of REPS runs of each.
#   tests/bench/bench_hf.sh [BINARY] [REPS] [THREADS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-$ROOT/build/morphkv}"
REPS="${2:-3}"
THREADS="${3:-2}"
CACHE="${MORPHKV_CACHE:-$HOME/.cache/morphkv}"
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
HF="$CACHE/SmolLM2-135M-Instruct-hf"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# about 500 tokens of plain prose
for i in $(seq 1 40); do printf 'The quick brown fox jumps over the lazy dog near the river bank. '; done > "$TMP/prompt.txt"
run() { # model tag rep
  "$BIN" generate --model "$1" --prompt-file "$TMP/prompt.txt" --temperature 0 --max-new-tokens 128 \
    --ignore-eos --threads "$THREADS" --stats-json "$TMP/$2.$3.json" --quiet > /dev/null
}
for r in $(seq 1 "$REPS"); do
  run "$GGUF" gguf "$r"
  run "$HF" hf "$r"
done
python3 - "$TMP" "$REPS" <<'PY'
import json, statistics, sys
tmp, reps = sys.argv[1], int(sys.argv[2])
for tag, name in (("gguf", "GGUF Q4_1 (Q8_0 embeddings)"), ("hf", "HF bf16 (3 safetensors shards)")):
    s = [json.load(open("%s/%s.%d.json" % (tmp, tag, r))) for r in range(1, reps + 1)]
    print("%-32s prompt %d tokens: prefill %.1f tok/s, decode %.1f tok/s, weights %.1f MiB (runs: %s)" % (
        name, s[0]["prompt_tokens"], statistics.median(x["prefill_tok_s"] for x in s),
        statistics.median(x["decode_tok_s"] for x in s), s[0]["weight_bytes"] / 2**20,
        ", ".join("%.1f/%.1f" % (x["prefill_tok_s"], x["decode_tok_s"]) for x in s)))
PY
