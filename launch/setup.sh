#!/usr/bin/env bash
# Installs what morphkv needs to build and test on Debian/Ubuntu (only the packages that are
# missing; uses sudo when not root). Safe to run again.
set -euo pipefail

PKGS=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libpcre2-dev libcmocka-dev
      libprotobuf-c-dev protobuf-c-compiler libjansson-dev python3-pip python3-venv unzip clang)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup.sh: not root and no sudo; install these packages yourself: ${PKGS[*]}" >&2
    exit 1
  fi
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: apt-get not found (Debian/Ubuntu only); install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup.sh: all packages present"
fi

# CMake >= 3.24 is required (Ubuntu 22.04 ships 3.22): fall back to the PyPI build of CMake.
need="3.24"
have="$(cmake --version 2>/dev/null | head -n1 | awk '{print $3}')"
if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
  echo "setup.sh: cmake ${have:-missing} is older than $need; installing cmake from PyPI into ~/.local"
  python3 -m pip install --user --quiet 'cmake>=3.24' 2>/dev/null ||
    python3 -m pip install --user --quiet --break-system-packages 'cmake>=3.24'
  echo "setup.sh: add ~/.local/bin to PATH (export PATH=\$HOME/.local/bin:\$PATH)"
fi

# libFuzzer's runtime (tests/fuzz, launch/fuzz.sh): Debian 12 ships it in libclang-rt-N-dev, which
# a --no-install-recommends install of clang leaves out; Ubuntu 22.04 has it in
# libclang-common-N-dev (a dependency of clang).
if command -v clang >/dev/null 2>&1 &&
   ! find / -path /proc -prune -o -name 'libclang_rt.fuzzer-x86_64.a' -print -quit 2>/dev/null | grep -q .; then
  major="$(clang -dumpversion | cut -d. -f1)"
  if apt-cache show "libclang-rt-$major-dev" >/dev/null 2>&1; then
    echo "setup.sh: installing libclang-rt-$major-dev (libFuzzer runtime)"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "libclang-rt-$major-dev"
  else
    echo "setup.sh: clang $major has no libFuzzer runtime and no libclang-rt-$major-dev package" >&2
  fi
fi
