"""Harness overhead for `noadapt` on SmolLM2-135M-Instruct (HF backend).

    .venv/bin/python bench/harness_overhead.py [--problems 16] [--batch 8] [--tokens 48] [--threads 1]

On the same arith problems, every generation forced to exactly `--tokens` new tokens:
- problems per minute of the harness (`eval.runner.Runner`: prompts, generation, grading in
  its worker, rows written and fsynced) batched (`--batch`) and unbatched (batch 1);
- tokens per second of `model.generate` called directly on the same left-padded batches,
  against the harness's tokens per second at the same batch size. Target (issue): the
  harness costs < 5% over raw generation.
Raw and harness passes alternate (`--repeats` each) so machine load hits both alike, after
one warm-up pass of each: the steady state of a long run. The one-time costs of a run (the
grading worker's start, which overlaps model loading in a real run) are printed apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from _common import fixed_length, load_smollm2, set_threads

from eval.runner import RunConfig, Runner
from zs_llm.model import render_prompt


def harness_pass(model, tok, n, batch, tokens, seed) -> float:
    cfg = RunConfig(methods=["noadapt"], datasets=["arith"], limit=n, batch_size=batch, seed=seed,
                    adapt={"max_new_tokens": tokens})
    with tempfile.TemporaryDirectory() as out:
        runner = Runner(cfg, out, progress=False)
        runner.model, runner.tokenizer = model, tok
        t = time.perf_counter()
        runner.run()
        return time.perf_counter() - t


def raw_pass(model, tok, n, batch, tokens, seed) -> float:
    from eval.datasets import load_problems
    from eval.prompting import build_messages

    texts = [render_prompt(tok, build_messages(p.question)) for p in load_problems("arith", limit=n, seed=seed)]
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    t = time.perf_counter()
    for i in range(0, n, batch):
        enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            model.generate(**enc, do_sample=False, max_new_tokens=tokens, pad_token_id=pad,
                           temperature=None, top_p=None, top_k=None)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    model, tok = load_smollm2()
    n, b, k = args.problems, args.batch, args.tokens
    res = {"raw": [], "harness": [], "harness_b1": []}
    from eval.grading import default_grader

    t = time.perf_counter()
    default_grader().start()
    default_grader().grade("\\boxed{\\frac{1}{2}}", "0.5")  # waits for the worker's imports
    worker_start = time.perf_counter() - t
    with fixed_length(model, tokens=k):
        raw_pass(model, tok, b, b, 4, seed=1)  # warm-up
        harness_pass(model, tok, b, b, 4, seed=1)
        for _ in range(args.repeats):
            res["raw"].append(raw_pass(model, tok, n, b, k, 0))
            res["harness"].append(harness_pass(model, tok, n, b, k, 0))
            res["harness_b1"].append(harness_pass(model, tok, n, 1, k, 0))
    med = {key: statistics.median(v) for key, v in res.items()}
    print(f"SmolLM2-135M-Instruct fp32 CPU, {torch.get_num_threads()} threads; noadapt, {n} arith problems, "
          f"{k} new tokens each; medians of {args.repeats} passes")
    print(f"  harness batch {b}: {n / med['harness'] * 60:.1f} problems/min, {n * k / med['harness']:.1f} tok/s")
    print(f"  harness batch 1: {n / med['harness_b1'] * 60:.1f} problems/min, {n * k / med['harness_b1']:.1f} tok/s"
          f"  (batched speed-up {med['harness_b1'] / med['harness']:.2f}x)")
    print(f"  raw model.generate batch {b}: {n * k / med['raw']:.1f} tok/s")
    print(f"  harness overhead over raw generation at batch {b}: {(med['harness'] / med['raw'] - 1) * 100:+.1f}%"
          f"  (target < 5%)")
    print(f"  one-time per run, not in the figures above: grading worker start {worker_start:.2f} s")


if __name__ == "__main__":
    main()
