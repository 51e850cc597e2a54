"""The core's GPU figures in one run, on a randomly initialised Llama-3.1-8B-shaped model in bf16.

    python bench/gpu_8b.py            # one GPU; a few minutes on an H100 (budget: 15)
    python bench/gpu_8b.py --device cpu --dtype float32 --layers 1 --hidden 128 --vocab 4096 \\
        --tokens 64,128 --step-tokens 32 --repeats 1          # the same logic on a small model

1. ZeroSiam / Tent step time on the same tokens (512 prompt + 1024 response by default), the
   target branch recomputed and the draft's logits kept (bench/step_cost.py's variants).
2. Peak memory above what is already allocated (torch.cuda.max_memory_allocated), at 1k / 2k /
   4k response tokens: the chunked loss alone (hidden states through predictor, head and
   ZeroSiam's loss, and back), and one whole adaptation step (forward, loss, backward, SGD) with
   and without gradient checkpointing. The loss alone should stay flat beyond one chunk (512).
Random weights: cost and memory are what is measured. Each figure is printed as soon as it
exists; a measurement that runs out of memory prints OOM and the script goes on.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import REPO  # noqa: F401  (puts the repository on sys.path)
from step_cost import llama8b_shaped, random_batch, sync, time_variants

from zs_llm import AdaptConfig, ZeroSiamLM
from zs_llm.adapt import adapt_step
from zs_llm.objective import head_loss


def peak_mib(fn, device) -> str:
    """Run fn(); the peak memory it allocated above what was allocated before, in MiB."""
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    try:
        fn()
    except torch.OutOfMemoryError:
        return "OOM"
    finally:
        sync(device)
    if not cuda:
        return "n/a (cuda only)"
    return f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=None, help="dry runs: a smaller hidden size (and MLP 3.5x it)")
    ap.add_argument("--vocab", type=int, default=None, help="dry runs: a smaller vocabulary")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--step-tokens", type=int, default=1024, help="response tokens of the timed steps")
    ap.add_argument("--tokens", default="1024,2048,4096", help="response tokens of the memory measurements")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    overrides = {}
    if args.hidden:
        overrides.update(hidden_size=args.hidden, intermediate_size=args.hidden * 7 // 2)
    if args.vocab:
        overrides["vocab_size"] = args.vocab
    model = llama8b_shaped(dtype, args.device, args.layers, **overrides)
    cfg = AdaptConfig.from_dict({"method": "zerosiam", "lr": 1e-5, "predictor_lr": 1e-6})
    lm = ZeroSiamLM(model, None, cfg, check=False)
    vocab, hidden = lm.head.weight.shape[0], lm.hidden_size
    name = torch.cuda.get_device_name() if str(args.device).startswith("cuda") else "cpu"
    print(f"random Llama-3.1-8B-shaped: {args.layers} layers, hidden {hidden}, vocab {vocab}, {args.dtype} on "
          f"{name}; built in {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\n1. step time, {args.prompt_tokens} prompt + {args.step_tokens} response tokens, "
          f"{args.repeats} rounds after a warm-up", flush=True)
    time_variants(lm, args.prompt_tokens, args.step_tokens, args.repeats, args.device)

    print(f"\n2. peak memory above the loaded model, MiB (chunk {cfg.chunk_size}); the draft's logits, when kept, "
          "add tokens x vocab x 4 bytes", flush=True)
    print("| response tokens | loss alone | step | step, gradient checkpointing | kept draft logits |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.tokens.split(",")):
        def loss_alone(n=n):
            z = torch.randn(n, hidden, dtype=dtype, device=args.device, requires_grad=True)
            head_loss(lm.predictor(z), z.detach(), lm.head_logits, lm.method.token_loss,
                      chunk_size=cfg.chunk_size).backward()

        row = [peak_mib(loss_alone, args.device)]
        for ckpt in (False, True):
            lm.set_gradient_checkpointing(ckpt)
            batch = random_batch(lm, args.prompt_tokens, n, seed=n)
            row.append(peak_mib(lambda b=batch: adapt_step(lm, b), args.device))
            del batch
        lm.set_gradient_checkpointing(False)
        print(f"| {n} | {row[0]} | {row[1]} | {row[2]} | {n * vocab * 4 / 2**20:.0f} |", flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
