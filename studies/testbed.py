"""Choose the language testbed by measuring NoAdapt alone: the prompt style and `max_new_tokens`
under which SmolLM2 states an answer (a box or a final-answer line, `zs_llm.diagnostics.has_answer`)
in at least `--target` of its responses. Choosing on NoAdapt favours no adapting method.

    .venv/bin/python studies/testbed.py --limit 60 --budgets 32,48,64,96

One greedy generation per style at the largest budget; each smaller budget is read as that
generation's prefix (greedy decoding at a smaller budget produces exactly the prefix), so the
table costs one generation per style. Measured on `--sets` (default `arith`: the
issue's criterion is NoAdapt's share on `arith`, and measuring NoAdapt alone favours no adapting
method) and chosen on `--choose-on`: the cheapest setting meeting `--target`, else the one with
the highest share. Prints a markdown table (stated share,
accuracy with its Wilson interval) and writes it to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.datasets import load_problems  # noqa: E402
from eval.grading import check  # noqa: E402
from eval.prompting import build_messages  # noqa: E402
from eval.stats import wilson_interval  # noqa: E402
from zs_llm.diagnostics import has_answer  # noqa: E402

CANDIDATES = ("boxed", "answer_line", "fewshot_answer_line", "plain", "llama31_paraphrase")


def generate(lm, problems, style: str, budget: int, batch: int) -> list[list[int]]:
    """New token ids per problem (greedy, up to `budget`, stopping at EOS)."""
    prompts = [build_messages(p.question, style) for p in problems]
    return [[int(t) for t in row] for row in lm.generate_batches(prompts, batch, budget)]


def score(tokenizer, problems, new_ids: list[list[int]], budget: int) -> dict:
    """Stated-answer share and accuracy of the responses cut at `budget` tokens."""
    stated = correct = graded = 0
    for p, ids in zip(problems, new_ids):
        text = tokenizer.decode(ids[:budget], skip_special_tokens=True)
        g = check(text, p.gold)
        stated += has_answer({"response": text, "extracted": g.pred, "answer_source": g.source})
        graded += g.correct is not None
        correct += bool(g.correct)
    lo, hi = wilson_interval(correct, graded)
    n = len(problems)
    return {"n": n, "stated": stated, "stated_share": stated / n, "correct": correct, "graded": graded,
            "accuracy": correct / max(1, graded), "acc_lo": lo, "acc_hi": hi}


def table(results: dict, target: float) -> str:
    lines = ["| problems | style | max_new_tokens | stated answer | accuracy [95% CI] |", "|---|---|---|---|---|"]
    for key, r in results.items():
        set_name, style, budget = key.split("|")
        mark = " **>= target**" if r["stated_share"] >= target else ""
        lines.append(f"| {set_name} | {style} | {budget} | {r['stated']}/{r['n']} ({r['stated_share']:.0%}){mark} | "
                     f"{100 * r['accuracy']:.1f} [{100 * r['acc_lo']:.1f}, {100 * r['acc_hi']:.1f}] |")
    return "\n".join(lines) + "\n"


def choose(results: dict, target: float, on: str = "arith") -> tuple[str, int] | None:
    """On set `on`: the cheapest (style, budget) whose stated-answer share meets the target (ties
    by accuracy, then name); if none does, the highest share (ties to the cheaper budget)."""
    rows = [(s, int(b), r) for k, r in results.items() for d, s, b in [k.split("|")] if d == on]
    if not rows:
        return None
    ok = [(b, -r["accuracy"], s) for s, b, r in rows if r["stated_share"] >= target]
    if ok:
        budget, _, style = min(ok)
        return style, budget
    _, budget, style = min((-r["stated_share"], b, s) for s, b, r in rows)
    return style, budget


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--styles", default=",".join(CANDIDATES))
    ap.add_argument("--budgets", default="32,48,64,96")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sets", default="arith", help="comma-separated sets to measure on")
    ap.add_argument("--choose-on", default="arith", help="the set whose stated-answer share decides")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/testbed.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import zs_llm

    lm = zs_llm.load(args.model, dtype=args.dtype, device=args.device, method="noadapt")
    budgets = sorted(int(b) for b in args.budgets.split(","))
    results: dict = {}
    t0 = time.perf_counter()
    for set_name in [x for x in args.sets.split(",") if x]:
        problems = load_problems(set_name, limit=args.limit)
        for style in [s for s in args.styles.split(",") if s]:
            ids = generate(lm, problems, style, budgets[-1], args.batch)
            for b in budgets:
                results[f"{set_name}|{style}|{b}"] = score(lm.tokenizer, problems, ids, b)
            print(f"{set_name} {style}: {time.perf_counter() - t0:.0f} s", flush=True)
    chosen = choose(results, args.target, args.choose_on)
    md = table(results, args.target)
    print(md)
    print(f"chosen: {chosen}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"results": results, "chosen": chosen, "target": args.target,
                                          "limit": args.limit, "model": args.model}, indent=2))
    return results, chosen


if __name__ == "__main__":
    main()
