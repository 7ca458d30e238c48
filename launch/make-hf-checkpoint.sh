#!/usr/bin/env bash
# Makes the demo model's Hugging Face checkpoint (tools/make_hf_checkpoint.py: bf16, 3 shards,
# tokenizer.json) in the cache ($MORPHKV_CACHE, default ~/.cache/morphkv), outside the repository,
# for the tests of `--model DIR` (test_hf_model, tp_engine_hf_np*). Needs the GGUF
# (launch/fetch-model.sh) and numpy + gguf + safetensors, installed here into $CACHE/venv-hf
# (PyPI; no torch). Skips the work when the checkpoint there was made by the same script version.
# About 30 s plus the pip install the first time. Prints the checkpoint's path on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MORPHKV_CACHE:-$HOME/.cache/morphkv}"
GGUF="${1:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
OUT="$CACHE/SmolLM2-135M-Instruct-hf"
VENV="$CACHE/venv-hf"
stamp="$(sha256sum "$ROOT/tools/make_hf_checkpoint.py" | awk '{print $1}')"
if [ -f "$OUT/.made-by" ] && [ "$(cat "$OUT/.made-by")" = "$stamp" ]; then
  echo "$OUT"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import numpy, gguf, safetensors" 2>/dev/null; then
  echo "make-hf-checkpoint.sh: installing numpy, gguf, safetensors into $VENV" >&2
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet numpy gguf safetensors >&2
fi
rm -rf "$OUT"
"$VENV/bin/python" "$ROOT/tools/make_hf_checkpoint.py" "$GGUF" "$OUT" >&2
echo "$stamp" > "$OUT/.made-by"
echo "$OUT"
