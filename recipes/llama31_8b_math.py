"""ZeroSiam and every baseline on Llama-3.1-8B-Instruct over Math-500, CollegeMath, AIME24 and Minerva.

Protocol `paper` (the AdaptConfig defaults): each method as its authors' code runs it, with no
collapse guard, no gradient clipping and its own default_lr. The methods are noadapt, tent, come,
sar, eata, deyo, slot, eminf, zerosiam, zerosiam+sar, zerosiam+eata, zerosiam+deyo, plus tent+guard and zerosiam+guard as
separate rows labelled with the add-on. Each set is run whole unless a subset is given
(`--subset college_math=ids.txt` or `--subset college_math=sample:240:seed0`; README, "CollegeMath").

One GPU:
    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/llama31_8b_math.py
Several GPUs (each rank takes whole online streams; generation-only methods split problems):
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 4 recipes/llama31_8b_math.py
CPU (a smoke run on a small model; `accelerate launch --cpu --num_processes 2` would start one process,
and is refused saying so):
    torchrun --nproc_per_node 2 recipes/llama31_8b_math.py --model path/to/small --limit 4

Defaults live in recipes/configs/llama31_8b_math.yaml; any field (harness or AdaptConfig)
can be overridden: `--lr 5e-5 --methods noadapt,zerosiam --limit 50 --out runs/x`. A rerun
with the same --out resumes. tests/test_recipe_llama31_path.py runs this file's path on a CPU with
a small random model of Llama-3.1's shape (vocabulary, GQA, RoPE scaling, chat tokens, bf16).

The prompt is Meta's own Llama 3.1 math evaluation prompt (style `meta_llama31_math`), so the
numbers sit beside Meta's published ones. The project carries no copy of it: the run reads it
when it starts, before the model loads.
Online: from the hub dataset meta-llama/Llama-3.1-8B-Instruct-evals (config
    Llama-3.1-8B-Instruct-evals__math__details, split latest, field input_final_prompts). The
    dataset is gated: accept its terms on the hub, `pip install datasets`, `hf auth login`.
Offline: save it once where the hub is reachable, copy the file, pass it:
    python -m eval.prompting meta_llama31_math meta_math_prompt.txt
    accelerate launch ... recipes/llama31_8b_math.py --prompt_template meta_math_prompt.txt
Either way run.json records the template's origin and sha256 (the same for both). The published
text is already in Llama 3 header tokens, and Meta's llama-cookbook feeds it to the model as is;
here its turns go through the model's chat template, which for Llama-3.1-Instruct writes its own
"Cutting Knowledge Date" system block, so compare a row's `prompt` with the published text before
claiming token-for-token equality. Our earlier paraphrase of Meta's instruction is
`--prompt_style llama31_paraphrase`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes._common import cli, launch_options, log, run_distributed, split  # noqa: E402

CONFIG = Path(__file__).parent / "configs" / "llama31_8b_math.yaml"


def main(cfg: dict) -> Path:
    run_cfg, out, overwrite = split(cfg)
    log(f"model {run_cfg.model}; methods {run_cfg.methods}; datasets {run_cfg.datasets}; out {out}")
    launch = launch_options(cfg)
    return run_distributed(run_cfg, out, overwrite, progress=launch.progress, report=launch.report,
                           report_to=launch.report_to,
                           draft_lookup=launch.draft_lookup)


if __name__ == "__main__":
    cli(main, CONFIG)
