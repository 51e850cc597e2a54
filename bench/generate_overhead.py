"""`adapt_generate` against plain `generate` on SmolLM2-135M-Instruct: wall time per problem.

    .venv/bin/python bench/generate_overhead.py [--problems 8] [--tokens 48] [--threads 1]

Three copies of the model answer the same arith prompts, each problem in turn (so machine
load hits all alike): plain `model.generate` on an unwrapped copy, and ZeroSiam's
`adapt_generate` with `answer=draft` (one generation, then one step) and with
`answer=regenerate` (draft, step, second generation). Every generation is forced to exactly
`--tokens` new tokens. Prints medians and the ratios to plain generation, with the
draft / step / answer split of adapt_generate.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _common import arith_messages, fixed_length, load_smollm2, median_ms, ratio, set_threads, timed

from zs_llm import AdaptConfig, ZeroSiamLM
from zs_llm.adapt import adapt_on_problem


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per generation (fixed)")
    ap.add_argument("--method", default="zerosiam")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    model, tok = load_smollm2()
    raw = copy.deepcopy(model)
    lms = {a: ZeroSiamLM(copy.deepcopy(model) if a == "draft" else model, tok,
                         AdaptConfig(method=args.method, answer=a, guard=False, max_new_tokens=args.tokens))
           for a in ("draft", "regenerate")}
    messages = arith_messages(args.problems + 1)
    times = {"generate": [], "draft": [], "regenerate": []}
    split = {"draft": [], "regenerate": []}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with fixed_length(raw, *(lm.hf for lm in lms.values()), tokens=args.tokens):
        for i, msg in enumerate(messages):
            ids = lms["draft"].encode(msg)
            _, t = timed(lambda: raw.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                              pad_token_id=pad, temperature=None, top_p=None, top_k=None))
            runs = {"generate": t}
            for a, lm in lms.items():
                res, runs[a] = timed(adapt_on_problem, lm, msg)
                if i > 0:
                    split[a].append(res.timings)
            if i > 0:  # the first problem warms up
                for k, v in runs.items():
                    times[k].append(v)
    n = len(times["generate"])
    print(f"SmolLM2-135M-Instruct fp32 CPU, {torch.get_num_threads()} threads; {n} arith problems; "
          f"{args.tokens} new tokens per generation; method {args.method}")
    print(f"  plain generate            median {median_ms(times['generate'])}")
    for a in ("draft", "regenerate"):
        parts = {k: statistics.median(d.get(k, 0.0) for d in split[a]) for k in split[a][0] if k.endswith("_s")}
        desc = ", ".join(f"{k[:-2]} {v * 1000:.0f} ms" for k, v in parts.items())
        print(f"  adapt_generate answer={a:10s} median {median_ms(times[a])}  "
              f"ratio to generate {ratio(times[a], times['generate']):.2f}  ({desc})")


if __name__ == "__main__":
    main()
