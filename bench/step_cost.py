"""ZeroSiam's adaptation step time against Tent's, on the same tokens and model.

    .venv/bin/python bench/step_cost.py                       # SmolLM2-135M-Instruct, CPU
    .venv/bin/python bench/step_cost.py --llama8b --device cuda --dtype bfloat16   # random 8B-shaped Llama
    .venv/bin/python bench/step_cost.py --llama8b --layers 1,2 --extrapolate 32 --threads 1   # CPU estimate
    python bench/gpu_8b.py                                    # on a GPU: step ratios and peak memory, one run

One ZeroSiam wrapper; Tent's step runs on the same wrapper with Tent's method object, its own
LoRA-only optimizer and the predictor frozen (so the step's bookkeeping, snapshots, finite checks
and clipping, covers what a Tent wrapper's would), and both use one copy of the weights; steps alternate (Tent,
ZeroSiam, ZeroSiam with kept draft logits, Tent, ...) so machine load hits all alike; ratios of
medians are printed. Target (issue): <= 1.05.

Two ZeroSiam steps are timed: `zerosiam` computes the target branch with a second head matmul
(what any step after the first on a problem does, and the first when the draft's logits do not
fit `draft_logits_mib`); `zs_kept` receives the target logits that the draft's generation
already produced (the adaptation loop's first step per problem, the default whenever they fit).
Here they are computed once before timing, as generation would have.

`--layers 1,2 --extrapolate 32` measures an 8B-shaped model with 1 and then 2 decoder layers
(full vocabulary and hidden size) and fits step time = a + b x layers per method: the
backbone's per-layer cost b is shared, the head and loss cost sits in a, so the fit gives the
32-layer ratio on a machine that cannot hold 32 layers. It is an estimate from a linear model,
printed as such.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zs_llm import METHODS, AdaptConfig, ZeroSiamLM  # noqa: E402
from zs_llm.adapt import adapt_step  # noqa: E402
from zs_llm.methods import LossBatch  # noqa: E402

VARIANTS = ("tent", "zerosiam", "zs_kept")


def llama8b_shaped(dtype, device, layers: int | None = None, **overrides):
    """A randomly initialised model with Llama-3.1-8B's shapes (weights random: cost only),
    built directly in `dtype` on `device`; `overrides` change config fields (a smaller dry run)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers or 32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                 rope_theta=500000.0, tie_word_embeddings=False)
    cfg = LlamaConfig(**{**shape, **overrides})
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # no fp32 copy of 8B parameters on the way
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama8b", action="store_true", help="random Llama-3.1-8B-shaped model instead of SmolLM2")
    ap.add_argument("--layers", default=None, help="fewer layers for the 8B shape (memory); a comma list measures each")
    ap.add_argument("--extrapolate", type=int, default=None, help="with several --layers: fit and extrapolate to N layers")
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
    layer_counts = [int(x) for x in args.layers.split(",")] if args.layers else [None]
    if len(layer_counts) > 1 and not args.llama8b:
        raise SystemExit("--layers with several values needs --llama8b")
    meds = {}
    for layers in layer_counts:
        meds[layers] = measure(args, dtype, layers)
    if args.extrapolate and len(layer_counts) > 1:
        # step = a_method + b x layers with one slope b for both methods (the backbone is the same;
        # the head and the loss sit in a), least squares over the measured layer counts
        xs = layer_counts
        xbar = sum(xs) / len(xs)
        sxx = sum((x - xbar) ** 2 for x in xs)
        slopes = [sum((x - xbar) * (meds[x][m] - sum(meds[y][m] for y in xs) / len(xs)) for x in xs) / sxx
                  for m in VARIANTS]
        b = sum(slopes) / len(slopes)
        a = {m: sum(meds[x][m] - b * x for x in xs) / len(xs) for m in VARIANTS}
        n = args.extrapolate
        at = {m: a[m] + b * n for m in a}
        print(f"fit step = a + b x layers, shared b {b * 1000:.0f} ms/layer (per variant: "
              f"{', '.join(f'{s * 1000:.0f}' for s in slopes)}); a: "
              + ", ".join(f"{m} {a[m] * 1000:.0f} ms" for m in VARIANTS))
        print(f"ESTIMATE at {n} layers: " + ", ".join(f"{m} {at[m]:.1f} s" for m in VARIANTS)
              + "; ratios " + ", ".join(f"{m}/tent {at[m] / at['tent']:.3f}" for m in VARIANTS[1:])
              + "  (target <= 1.05)")


def measure(args, dtype, layers):
    if args.llama8b:
        model, tok = llama8b_shaped(dtype, args.device, layers), None
        name = f"random Llama-3.1-8B-shaped ({layers or 32} layers)"
    else:
        from zs_llm import load_model

        model, tok = load_model("smollm2-135m-instruct", dtype=args.dtype, device=args.device)
        name = "SmolLM2-135M-Instruct"
    common = dict(lr=1e-5, predictor_lr=1e-6, guard=False, gradient_checkpointing=args.gradient_checkpointing)
    lm = ZeroSiamLM(model, tok, AdaptConfig.from_dict({"method": "zerosiam", **common}), check=False)
    p, n = args.prompt_tokens, args.response_tokens
    print(f"model: {name}, {args.dtype} on {args.device}, {torch.get_num_threads()} threads; "
          f"{p} prompt + {n} response tokens; vocab {lm.head.weight.shape[0]}")
    med = time_variants(lm, p, n, args.repeats, args.device)
    if str(args.device).startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    del lm, model
    return med


def random_batch(lm, p: int, n: int, seed: int = 0) -> LossBatch:
    """p random prompt tokens and n random response tokens, the loss on the response."""
    vocab = lm.head.weight.shape[0]
    ids = torch.randint(10, vocab - 10, (1, p + n), generator=torch.Generator().manual_seed(seed)).to(lm.device)
    return LossBatch(ids, torch.arange(p - 1, p - 1 + n, device=lm.device), ids[0, p:])


def time_variants(lm, p: int, n: int, repeats: int, device) -> dict[str, float]:
    """Median step time of each of VARIANTS on one ZeroSiam wrapper (see the module docstring);
    prints the medians and the ratios to Tent's."""
    batch = random_batch(lm, p, n)
    with torch.no_grad():  # what the draft's generation hands the first step (fp32, as generate keeps them)
        logits = lm.head_logits(lm.features(batch.input_ids, batch.positions)).float()
    kept = LossBatch(batch.input_ids, batch.positions, batch.labels, target_logits=logits)
    cfg = lm.zs_config
    lm.predictor.requires_grad_(False)
    tent_opt = lm._build_optimizer()  # LoRA only, as a Tent wrapper's
    lm.predictor.requires_grad_(True)
    variants = {"tent": (METHODS["tent"](cfg.replace(method="tent")), batch, tent_opt, False),
                "zerosiam": (lm.method, batch, lm.optimizer, True), "zs_kept": (lm.method, kept, lm.optimizer, True)}
    times = {k: [] for k in variants}
    for r in range(repeats + 1):
        for name_m, (method, b, opt, pred) in variants.items():  # alternate, so machine load hits all alike
            lm.method, lm.optimizer = method, opt
            lm.predictor.requires_grad_(pred)
            sync(device)
            t = time.perf_counter()
            adapt_step(lm, b)
            sync(device)
            if r > 0:  # the first round warms up
                times[name_m].append(time.perf_counter() - t)
    lm.method, lm.optimizer = variants["zerosiam"][0], variants["zerosiam"][2]
    lm.predictor.requires_grad_(True)
    del kept, logits
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:9s} step: median {med[k] * 1000:.1f} ms  (runs: {', '.join(f'{x * 1000:.0f}' for x in v)})")
    # per round, each variant against the Tent step next to it: drifts in machine speed cancel
    paired = {k: statistics.median(a / b for a, b in zip(times[k], times["tent"])) for k in VARIANTS[1:]}
    print(f"ZeroSiam / Tent step time: {med['zerosiam'] / med['tent']:.3f} with the target recomputed, "
          f"{med['zs_kept'] / med['tent']:.3f} with the draft's logits kept (ratio of medians); median of "
          f"per-round ratios {paired['zerosiam']:.3f} / {paired['zs_kept']:.3f}  (target <= 1.05)", flush=True)
    return med


if __name__ == "__main__":
    main()
