"""ZeroSiam's adaptation step time against Tent's, on the same tokens and model.

    .venv/bin/python bench/step_cost.py                       # SmolLM2-135M-Instruct, CPU
    .venv/bin/python bench/step_cost.py --llama8b --device cuda --dtype bfloat16   # random 8B-shaped Llama

Both wrappers share one base model; steps alternate (Tent, ZeroSiam, Tent, ...) so machine
load hits both alike; the ratio of medians is printed. Target (issue): <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zs_llm import AdaptConfig, ZeroSiamLM  # noqa: E402
from zs_llm.adapt import adapt_step  # noqa: E402
from zs_llm.methods import LossBatch  # noqa: E402


def llama8b_shaped(dtype, device, layers: int | None = None):
    """A randomly initialised model with Llama-3.1-8B's shapes (weights random: cost only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers or 32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                      rope_theta=500000.0, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama8b", action="store_true", help="random Llama-3.1-8B-shaped model instead of SmolLM2")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for the 8B shape (memory)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--response-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.llama8b:
        model, tok = llama8b_shaped(dtype, args.device, args.layers), None
        name = f"random Llama-3.1-8B-shaped ({args.layers or 32} layers)"
    else:
        from zs_llm import load_model

        model, tok = load_model("smollm2-135m-instruct", dtype=args.dtype, device=args.device)
        name = "SmolLM2-135M-Instruct"
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    p, n = args.prompt_tokens, args.response_tokens
    ids = torch.randint(10, vocab - 10, (1, p + n), generator=g).to(args.device)
    batch = LossBatch(ids, torch.arange(p - 1, p - 1 + n, device=args.device), ids[0, p:])
    common = dict(lr=1e-5, predictor_lr=1e-6, guard=False, gradient_checkpointing=args.gradient_checkpointing)
    # two wrappers on two copies of the same weights (wrapping adds LoRA layers in place)
    lms = {"tent": ZeroSiamLM(copy.deepcopy(model), tok, AdaptConfig(method="tent", **common), check=False),
           "zerosiam": ZeroSiamLM(model, tok, AdaptConfig(method="zerosiam", **common), check=False)}
    times = {"tent": [], "zerosiam": []}
    for r in range(args.repeats + 1):
        for name_m, lm in lms.items():  # alternate, so machine load hits both alike
            sync(args.device)
            t = time.perf_counter()
            adapt_step(lm, batch)
            sync(args.device)
            if r > 0:  # the first round warms up
                times[name_m].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {name}, {args.dtype} on {args.device}; {p} prompt + {n} response tokens; vocab {vocab}")
    for k, v in times.items():
        print(f"  {k:9s} step: median {med[k] * 1000:.1f} ms  (runs: {', '.join(f'{x * 1000:.0f}' for x in v)})")
    print(f"ZeroSiam / Tent step time: {med['zerosiam'] / med['tent']:.3f}  (target <= 1.05)")
    if str(args.device).startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
