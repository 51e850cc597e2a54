"""bf16 draft speed on SmolLM2-135M-Instruct: LoRA folded into the bf16 weights (the old path,
which rounds small updates away) against peft's unmerged layers (the current path, the training
forward's own computation), at batch 1 and batch 8.

    .venv/bin/python bench/bf16_draft_speed.py [--tokens 48] [--repeats 5] [--batches 1,8] [--threads 2]

One wrapper (method tent, LoRA on peft's default modules, B moved off zero so the update is
real); `ZeroSiamLM.fold_lora_into_low_precision` picks the path. Each repeat times every batch
size with both variants back to back, their order alternating between repeats, so machine load
hits both alike; the first repeat warms up and is not counted. Every generation is forced to
exactly `--tokens` new tokens. Prints median tokens/s (batch x tokens / seconds) per variant,
with the range over repeats, and the unmerged / folded ratio of the medians. `--tiny` runs the
same logic on a tiny random Llama (a check of the script, not a figure).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import arith_messages, fixed_length, load_smollm2, set_threads, timed

from zs_llm import AdaptConfig, ZeroSiamLM

VARIANTS = {"folded": True, "unmerged": False}  # name -> fold_lora_into_low_precision


def left_padded(lm, messages) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, T), of the prompts left-padded as batched generation wants."""
    rows = [lm.encode(m)[0] for m in messages]
    width = max(len(r) for r in rows)
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def folded_layers(lm) -> int:
    """How many LoRA layers the generation context folds into their base weights."""
    with lm.lora_merged():
        return sum(1 for m in lm.hf.modules() if hasattr(m, "merged_adapters") and m.merged)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per generation (fixed)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2")
    args = ap.parse_args()
    set_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:
        from zs_llm.testing import char_tokenizer, tiny_model

        model, tok, name = tiny_model("llama"), char_tokenizer(), "tiny random Llama"
    else:
        model, tok = load_smollm2()
        name = "SmolLM2-135M-Instruct"
    lm = ZeroSiamLM(model.to(torch.bfloat16), tok, AdaptConfig(method="tent", guard=False, max_new_tokens=args.tokens))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an update the size a few steps give, so both paths carry a real one
        for n, p in lm.hf.named_parameters():
            if "lora_B" in n:
                p.copy_(1e-3 * torch.randn(p.shape, generator=gen))
    messages = arith_messages(max(batches))
    inputs = {b: left_padded(lm, messages[:b]) for b in batches}
    layers = {}
    for v, fold in VARIANTS.items():
        lm.fold_lora_into_low_precision = fold
        layers[v] = folded_layers(lm)
    seconds = {(b, v): [] for b in batches for v in VARIANTS}
    with fixed_length(lm.hf, tokens=args.tokens):
        for r in range(args.repeats + 1):
            for b in batches:
                order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
                for v in order:
                    lm.fold_lora_into_low_precision = VARIANTS[v]
                    new, t = timed(lm.generate_ids, *inputs[b])
                    assert new.shape == (b, args.tokens), new.shape
                    if r > 0:
                        seconds[b, v].append(t)
    print(f"{name} bfloat16 CPU, {torch.get_num_threads()} threads; {args.tokens} new tokens forced; "
          f"{args.repeats} repeats (medians), variants alternating; LoRA layers folded: "
          + ", ".join(f"{v} {n}" for v, n in layers.items()))
    for b in batches:
        rate = {v: b * args.tokens / statistics.median(seconds[b, v]) for v in VARIANTS}
        spread = {v: f"{b * args.tokens / max(seconds[b, v]):.1f}-{b * args.tokens / min(seconds[b, v]):.1f}"
                  for v in VARIANTS}
        print(f"  batch {b}: folded (old) {rate['folded']:.1f} tok/s ({spread['folded']}), unmerged (now) "
              f"{rate['unmerged']:.1f} tok/s ({spread['unmerged']}), unmerged / folded "
              f"{rate['unmerged'] / rate['folded']:.2f}")


if __name__ == "__main__":
    main()
