"""Seconds per problem of every registered method relative to `noadapt`, on SmolLM2-135M-Instruct.

    .venv/bin/python bench/method_cost.py [--problems 5] [--tokens 48] [--threads 1] [--methods a,b]

Each method gets its own copy of the model and its default `AdaptConfig` (online, answer=draft,
guard off); all answer the same arith problems one by one, methods taking turns on each problem
so machine load hits all alike; every generation is forced to exactly `--tokens` new tokens.
The first problem warms up and is not counted. Prints the median seconds per problem, the
ratio to noadapt and the split into the method's own pre-draft work (SLOT), draft and update.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _common import arith_messages, fixed_length, load_smollm2, set_threads

from zs_llm import METHODS, AdaptConfig, ZeroSiamLM
from zs_llm.adapt import adapt_on_problem


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all registered)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    names = ["noadapt"] + [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "noadapt"]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; registered: {', '.join(METHODS)}")
    model, tok = load_smollm2()
    lms = {m: ZeroSiamLM(copy.deepcopy(model), tok, AdaptConfig(method=m, guard=False, max_new_tokens=args.tokens))
           for m in names}
    totals = {m: [] for m in names}
    parts = {m: [] for m in names}
    with fixed_length(*(lm.hf for lm in lms.values()), tokens=args.tokens):
        for i, msg in enumerate(arith_messages(args.problems + 1)):
            for m, lm in lms.items():
                res = adapt_on_problem(lm, msg)
                if i > 0:
                    totals[m].append(res.timings["total_s"])
                    parts[m].append(res.timings)
    base = statistics.median(totals["noadapt"])
    print(f"SmolLM2-135M-Instruct fp32 CPU, {torch.get_num_threads()} threads; {args.problems} arith problems; "
          f"{args.tokens} new tokens per generation; defaults (online, answer=draft, 1 step)")
    print("| method | s/problem | x noadapt | pre-draft s | draft s | update s |")
    print("|---|---|---|---|---|---|")
    for m in names:
        med = statistics.median(totals[m])
        split = [statistics.median(t.get(k, 0.0) for t in parts[m]) for k in ("method_s", "draft_s", "adapt_s")]
        print(f"| {m} | {med:.2f} | {med / base:.2f} | " + " | ".join(f"{x:.2f}" for x in split) + " |")


if __name__ == "__main__":
    main()
