#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-quantize for the benchmarks (`make bench`; never `make test`).
#
# The source is the llama.cpp that the llama-cpp-python sdist vendors (the same version the
# benchmark's llama-cpp-python bindings run). The build lands in $NPLLM_CACHE/llama.cpp-<version>
# (default ~/.cache/npllm) and is reused; it takes about 15 minutes on 2 cores. Prints the bin dir.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${NPLLM_CACHE:-$HOME/.cache/npllm}"
ROOT="$CACHE/llama.cpp-$VERSION"
BIN="$ROOT/build/bin"
PYTHON="${PYTHON:-python3}"
if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-quantize" ]; then
    echo "$BIN"; exit 0
fi
mkdir -p "$ROOT"
if [ ! -f "$ROOT/src/CMakeLists.txt" ]; then
    tmp="$(mktemp -d)"
    "$PYTHON" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$tmp" >&2
    tar xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp"
    rm -rf "$ROOT/src"
    mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$ROOT/src"
    rm -rf "$tmp"
fi
echo "building llama-server and llama-quantize (about 15 minutes on 2 cores) ..." >&2
cmake -S "$ROOT/src" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON >&2
cmake --build "$ROOT/build" -j"$(nproc)" --target llama-server llama-quantize >&2
echo "$BIN"
