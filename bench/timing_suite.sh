#!/usr/bin/env bash
# Every timing benchmark in one go, for a quiet machine (each prints its own figures).
#   bash bench/timing_suite.sh [LOG]        # default log: runs/bench/timing_<date>.log
set -euo pipefail
cd "$(dirname "$0")/.."
log=${1:-runs/bench/timing_$(date +%Y%m%d_%H%M).log}
mkdir -p "$(dirname "$log")"
py=.venv/bin/python
run() { echo "== $*"; date +%T; "$py" "$@" 2>&1 | grep -v -i -E "warn|Loading weights" || true; }
{
  run bench/step_cost.py --repeats 7
  run bench/harness_overhead.py
  run bench/generate_overhead.py
  run bench/method_cost.py --problems 3
  run bench/step_cost.py --llama8b --layers 1,2 --extrapolate 32 --prompt-tokens 32 --response-tokens 64 --repeats 3
  date +%T
} | tee "$log"
