#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to generated text: installs what is missing,
# builds, fetches the demo model, and asks it a question.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup.sh"
bash "$ROOT/launch/build.sh"
MODEL="$(bash "$ROOT/launch/fetch-model.sh")"
PROMPT="${1:-What is the capital of France?}"
# SmolLM2's own default system prompt ("You are a helpful AI assistant named SmolLM, trained by
# Hugging Face") sends the 135M model off track at temperature 0 (llama.cpp too); a plain one
# does not. configs/smollm2-135m.json sets the same.
SYSTEM="You are a helpful assistant."
echo "demo.sh: morphkv generate --model $MODEL --chat --system \"$SYSTEM\" --temperature 0 --prompt \"$PROMPT\"" >&2
"${BUILD_DIR:-$ROOT/build}/morphkv" generate --model "$MODEL" --chat --system "$SYSTEM" \
  --temperature 0 --max-new-tokens 128 --prompt "$PROMPT"
