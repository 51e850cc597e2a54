#!/usr/bin/env bash
# Set up ./.venv-vision for tests/test_vision_timm.py (idempotent: does nothing when it already
# imports timm). timm imports torchvision, and on these CPU machines torchvision imports only as
# the pair torch==2.14.1 + torchvision==0.29.1 (beside the main .venv's torch 2.13.0 it fails with
# "operator torchvision::nms does not exist"), so timm gets its own environment: about 1.5-2 min
# and 5.6 GB, most of it the CUDA libraries torch 2.14.1 depends on.
# zs_llm is not installed here: `python -m pytest` from the repo root puts it on the path.
# transformers is needed only because `import zs_llm` imports it (zs_llm.methods.eminf).
#
#   bash scripts/vision_env.sh && .venv-vision/bin/python -m pytest tests/test_vision_timm.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv-vision
if [ -x "$V/bin/python" ] && "$V/bin/python" -c "import timm, torchvision, transformers, pytest" 2>/dev/null; then
  echo "[vision_env] $V is up to date"
  exit 0
fi
echo "[vision_env] creating $V with torch 2.14.1, torchvision 0.29.1 and timm (about 2 minutes)"
[ -x "$V/bin/python" ] || "$PY" -m venv "$V"
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$V/constraints.txt"
"$V/bin/pip" install -q --disable-pip-version-check -c "$V/constraints.txt" \
  torch==2.14.1 torchvision==0.29.1 timm pytest numpy transformers
echo "[vision_env] done: $("$V/bin/python" -c 'import torch, torchvision, timm; print("torch", torch.__version__, "torchvision", torchvision.__version__, "timm", timm.__version__)')"
