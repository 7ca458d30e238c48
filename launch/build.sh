#!/usr/bin/env bash
# Configures and builds morphkv (Release) in build/ (BUILD_DIR overrides). Extra arguments go to
# cmake's configure step, e.g. bash launch/build.sh -DMORPHKV_CUDA=OFF
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
export PATH="$HOME/.local/bin:$PATH" # a PyPI cmake from setup.sh, if it installed one
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "$@"
cmake --build "$BUILD_DIR" -j"$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
echo "build.sh: $BUILD_DIR/morphkv"
