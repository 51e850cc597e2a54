"""Problems per minute of S pooled ZeroSiam streams against the same streams one after another.

    .venv/bin/python bench/pooled_streams.py                          # SmolLM2 fp32, 48 tokens, 1 2 4 8 streams
    .venv/bin/python bench/pooled_streams.py --dtype bfloat16 --tokens 256
    python bench/pooled_streams.py --model llama8b --dtype bfloat16 --device cuda --streams 8 28 \\
        --tokens 256 --problems 2 --sequential-streams 2             # random Llama-3.1-8B shapes, a few minutes

End to end, as the harness runs a stream: the draft, the update (one step), grading of the
response (math-verify). Stream s answers its own arith problems in order, so pooled and
sequential runs see the same problems. Every draft has exactly `--tokens` new tokens (EOS
suppressed until then), so both sides generate the same amount.

Sequential throughput does not depend on how many streams follow one another, so it is timed
once, on `--sequential-streams` streams (default: the largest pool), and every pool is set
beside it. The pooled drafts are compared with the sequential ones, row by row: the number of
rows whose draft differs (a greedy token flipped by the rounding of batched matmuls) and
where the first differing token sits. `--model tiny` runs the logic on a tiny random model.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import REPO, arith_messages, fixed_length  # noqa: F401  (REPO puts the repository on sys.path)

from zs_llm import AdaptConfig, Streams, ZeroSiamLM
from zs_llm.adapt import adapt_on_problem


def build(model: str, dtype: str, device: str, layers: int | None):
    """(model, tokenizer) of the benchmark."""
    torch_dtype = getattr(torch, dtype)
    if model == "smollm2":
        from _common import load_smollm2

        return load_smollm2(dtype, device)
    from zs_llm.testing import char_tokenizer

    tok = char_tokenizer()
    if model == "tiny":
        from zs_llm.testing import tiny_model

        return tiny_model("llama").to(device=device, dtype=torch_dtype), tok
    if model == "llama8b":  # random weights, Llama-3.1-8B's shapes, built in place: cost only, no download
        from step_cost import llama8b_shaped

        return llama8b_shaped(torch_dtype, device, layers), tok
    raise ValueError(f"unknown --model {model!r}; choose smollm2, tiny or llama8b")


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def grade(results, golds):
    from eval.grading import check

    return [check(r.answer, g).correct for r, g in zip(results, golds)]


def run_sequential(host, cfg, prompts, golds, device):
    """Each stream alone, one after another: {stream: [AdaptResult]}, seconds."""
    out = {}
    sync(device)
    t = time.perf_counter()
    for s, ps in prompts.items():
        lm = host.stream(f"seq{s}", cfg)
        out[s] = [adapt_on_problem(lm, p) for p in ps]
        grade(out[s], golds[s])
        host.remove(f"seq{s}")
    sync(device)
    return out, time.perf_counter() - t


def run_pooled(host, cfg, prompts, golds, device):
    """All streams together, one problem each per round: {stream: [AdaptResult]}, seconds."""
    names = {s: f"pool{s}" for s in prompts}
    for s in prompts:
        host.stream(names[s], cfg)
    out = {s: [] for s in prompts}
    sync(device)
    t = time.perf_counter()
    for i in range(len(next(iter(prompts.values())))):
        res = host.adapt_generate({names[s]: ps[i] for s, ps in prompts.items()})
        for s in prompts:
            out[s].append(res[names[s]])
        grade([res[names[s]] for s in prompts], [golds[s][i] for s in prompts])
    sync(device)
    dt = time.perf_counter() - t
    for s in prompts:
        host.remove(names[s])
    return out, dt


def flips(a, b, tok) -> tuple[int, int, list[int]]:
    """(rows compared, rows whose draft differs, the first differing token's position in each)."""
    n, where = 0, []
    for s in a:
        if s not in b:
            continue
        for ra, rb in zip(a[s], b[s]):
            n += 1
            if ra.draft != rb.draft:
                ta, tb = tok(ra.draft).input_ids, tok(rb.draft).input_ids
                where.append(next((k for k, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb))))
    return n, len(where), where


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (the embedded model), llama8b (random, 8B shapes), "
                    "tiny (a tiny random Llama: the logic only)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--sequential-streams", type=int, default=None, help="streams timed one after another "
                    "(default: the largest pool)")
    ap.add_argument("--problems", type=int, default=2, help="problems per stream")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per draft (48 or 256)")
    ap.add_argument("--layers", type=int, default=None, help="llama8b: fewer layers (a dry run)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = build(args.model, args.dtype, args.device, args.layers)
    cfg = AdaptConfig(method="zerosiam", max_new_tokens=args.tokens, lr=1e-4, predictor_lr=1e-4)
    host = Streams(ZeroSiamLM(model, tok, AdaptConfig(method="noadapt"), check=False))
    n_seq = args.sequential_streams or max(args.streams)
    most = max(max(args.streams), n_seq)
    from eval.datasets import load_problems

    problems = load_problems("arith", limit=most * args.problems, seed=0)
    msgs = arith_messages(most * args.problems)
    prompts = {s: msgs[s * args.problems:(s + 1) * args.problems] for s in range(most)}
    golds = {s: [p.gold for p in problems[s * args.problems:(s + 1) * args.problems]] for s in range(most)}
    dev = torch.cuda.get_device_name() if str(args.device).startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.model} {args.dtype} on {dev}; ZeroSiam, {args.tokens} new tokens per draft, {args.problems} problems "
          f"per stream; built in {time.perf_counter() - t0:.0f} s", flush=True)
    report = {"pools": {}}
    with fixed_length(model, tokens=args.tokens):
        # warm-up: the first generate and backward pay for allocation and kernel selection
        run_pooled(host, cfg, {0: prompts[0][:1], 1: prompts[1 % most][:1]}, {0: golds[0], 1: golds[1 % most]},
                   args.device)
        seq, t_seq = run_sequential(host, cfg, {s: prompts[s] for s in range(n_seq)}, golds, args.device)
        ppm_seq = n_seq * args.problems / t_seq * 60
        report["sequential_ppm"] = ppm_seq
        print(f"one after another ({n_seq} streams): {ppm_seq:.1f} problems/min ({t_seq:.1f} s)", flush=True)
        print("| streams | pooled problems/min | sequential problems/min | speed-up | drafts differing |")
        print("|---|---|---|---|---|")
        for n in args.streams:
            pooled, t_pool = run_pooled(host, cfg, {s: prompts[s] for s in range(n)}, golds, args.device)
            ppm = n * args.problems / t_pool * 60
            rows, bad, where = flips(seq, pooled, tok)
            report["pools"][n] = {"ppm": ppm, "speedup": ppm / ppm_seq, "rows": rows, "differ": bad, "at": where}
            differ = f"{bad} of {rows}" + (f" (first at token {sorted(where)})" if bad else "") if rows else "-"
            print(f"| {n} | {ppm:.1f} | {ppm_seq:.1f} | {ppm / ppm_seq:.2f}x | {differ} |", flush=True)
    if str(args.device).startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return report


if __name__ == "__main__":
    main()
