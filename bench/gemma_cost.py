"""Seconds per problem and peak memory of noadapt, tent and zerosiam on Gemma-3-270M (262,144-token
vocabulary), fp32 CPU, one thread by default.

    .venv/bin/python bench/gemma_cost.py [--problems 4] [--tokens 24] [--threads 1] [--methods noadapt,tent,zerosiam]

Needs gemma3-270m (`bash scripts/setup.sh --gemma`). Every method answers the same `arith`
problems in the testbed's prompt (`fewshot_answer_line`) at its defaults (online, answer=draft,
one update per problem, guard off), every generation forced to exactly `--tokens` new tokens.
Seconds: one process holds a copy of the model per method and the methods take turns on each
problem, so a machine's load hits all alike; the first problem warms up. Memory: each method
again in its own process, its resident peak reset after loading (`/proc/self/clear_refs`), so the
peak is the method's own on top of the loaded model.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys

from _common import REPO, fixed_length, set_threads


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _messages(n: int):
    from eval.datasets import load_problems
    from eval.prompting import build_messages

    return [build_messages(p.question, "fewshot_answer_line") for p in load_problems("arith", limit=n)]


def _lm(model, tok, method: str, tokens: int):
    from zs_llm import AdaptConfig, ZeroSiamLM

    return ZeroSiamLM(model, tok, AdaptConfig(method=method, guard=False, max_new_tokens=tokens))


def seconds(methods: list[str], problems: int, tokens: int) -> dict:
    """{method: {"s_per_problem", "draft_s", "update_s"}} (medians), methods taking turns."""
    from zs_llm import load_model
    from zs_llm.adapt import adapt_on_problem

    model, tok = load_model("gemma3-270m")
    lms = {m: _lm(copy.deepcopy(model), tok, m, tokens) for m in methods}
    del model
    got = {m: [] for m in methods}
    with fixed_length(*(lm.hf for lm in lms.values()), tokens=tokens):
        for i, msg in enumerate(_messages(problems + 1)):
            for m, lm in lms.items():
                res = adapt_on_problem(lm, msg)
                if i > 0:  # the first problem warms up
                    got[m].append(res.timings)
    return {m: {"s_per_problem": statistics.median(t["total_s"] for t in ts),
                "draft_s": statistics.median(t.get("draft_s", 0.0) for t in ts),
                "update_s": statistics.median(t.get("adapt_s", 0.0) for t in ts)} for m, ts in got.items()}


def memory(method: str, problems: int, tokens: int) -> dict:
    """This process's resident memory after loading `method`, and its peak over `problems` problems."""
    from zs_llm import load_model
    from zs_llm.adapt import adapt_on_problem

    model, tok = load_model("gemma3-270m")
    lm = _lm(model, tok, method, tokens)
    after_load = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    with fixed_length(lm.hf, tokens=tokens):
        for msg in _messages(problems):
            adapt_on_problem(lm, msg)
    return {"rss_after_load_mb": after_load, "peak_mb": _status_mb("VmHWM"), "vocab": lm.hf.config.vocab_size}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="noadapt,tent,zerosiam")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)  # the child process: print this method's memory
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.memory_of:
        print(json.dumps(memory(args.memory_of, args.problems, args.tokens)))
        return None
    from zs_llm.loading import GEMMA, cache_complete, model_cache, named_model

    try:
        named_model(GEMMA).sources()
    except FileNotFoundError as e:
        if not cache_complete(model_cache(GEMMA)):
            raise SystemExit(str(e)) from None
    import torch

    methods = [x.strip() for x in args.methods.split(",") if x.strip()]
    secs = seconds(methods, args.problems, args.tokens)
    mem = {}
    for m in methods:
        cmd = [sys.executable, __file__, "--memory-of", m, "--problems", "2", "--tokens", str(args.tokens),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{m} failed:\n{out.stderr[-2000:]}")
        mem[m] = json.loads(out.stdout.strip().splitlines()[-1])
    base = secs.get("noadapt", {}).get("s_per_problem")
    print(f"Gemma-3-270M fp32 CPU, {torch.get_num_threads()} thread(s), vocabulary {mem[methods[0]]['vocab']:,}; "
          f"{args.problems} arith problems after one warm-up, methods taking turns, {args.tokens} new tokens each; "
          "defaults (online, answer=draft, one update per problem, guard off); memory: each method in its own "
          "process over 2 problems")
    print("| method | s/problem | x noadapt | draft s | update s | RSS after load (MB) | peak RSS (MB) | peak - load (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        t, r = secs[m], mem[m]
        x = f"{t['s_per_problem'] / base:.2f}" if base else "-"
        print(f"| {m} | {t['s_per_problem']:.2f} | {x} | {t['draft_s']:.2f} | {t['update_s']:.2f} | "
              f"{r['rss_after_load_mb']:.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['rss_after_load_mb']:.0f} |")
    return secs, mem


if __name__ == "__main__":
    main()
