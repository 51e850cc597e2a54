"""ZeroSiam and the baselines on Llama-3.1-8B-Instruct over Math-500, CollegeMath, AIME24 and Minerva.

One GPU:
    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/llama31_8b_math.py
Several GPUs (each rank takes whole online streams; generation-only methods split problems):
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 4 recipes/llama31_8b_math.py
CPU (a smoke run on a small model):
    accelerate launch --cpu --num_processes 2 recipes/llama31_8b_math.py --model path/to/small --limit 4

Defaults live in recipes/configs/llama31_8b_math.yaml; any field (harness or AdaptConfig)
can be overridden: `--lr 5e-5 --methods noadapt,zerosiam --limit 50 --out runs/x`. A rerun
with the same --out resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes._common import cli, log, run_distributed, split  # noqa: E402

CONFIG = Path(__file__).parent / "configs" / "llama31_8b_math.yaml"


def main(cfg: dict) -> Path:
    run_cfg, out, overwrite = split(cfg)
    log(f"model {run_cfg.model}; methods {run_cfg.methods}; datasets {run_cfg.datasets}; out {out}")
    return run_distributed(run_cfg, out, overwrite)


if __name__ == "__main__":
    cli(main, CONFIG)
