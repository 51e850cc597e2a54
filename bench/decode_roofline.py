"""Greedy decode speed against the memory roofline and the model's kernel floor, and what the
fast draft loop (zs_llm/decode.py) changes end to end.

    .venv/bin/python bench/decode_roofline.py [--dtype float32] [--tokens 64] [--repeats 5]
        [--threads 2] [--pools 3,8] [--problems 6] [--model smollm2|tiny|llama8b] [--device cpu]

One run prints, for SmolLM2-135M-Instruct (`--model tiny`, or `--tiny`: a tiny random Llama, a check
of the script; `--model llama8b`: random weights of Llama-3.1-8B's shapes, for a GPU):

1. the machine's read bandwidth (`tensor.sum()` over `--read-mib` MiB, median of 5) and the bytes
   a decode step must read (every weight matrix once, the head included; embeddings read one
   row): the read roofline, bandwidth / bytes tokens per second per row;
2. the kernel floor: one pass over every linear layer's product at the batch size, in model order,
   each on its own weights, with the kernel the fast loop calls (`F.linear`'s `mm`, `mv` for bf16
   rows) and nothing else: what these kernels allow;
3. tokens/s of plain `generate`, of the draft as it was (`ZeroSiamLM.generate_ids` with
   `fast_greedy_drafts = False`: LoRA folded, `generate`) and of the fast loop, at batch 1 and at
   the `--pools` sizes (pooled drafts, one LoRA adapter per row, `zs_llm.pool.generate_rows`), each
   as a ratio to the roofline and to the floor, with whether the tokens were equal. Every
   generation is forced to `--tokens` new tokens (no end-of-sequence stop);
4. end to end, problems/min before (generate) and after (fast loop) of one ZeroSiam stream and of
   the main command's pool (recipes/smollm2_135m_math.py: Tent, ZeroSiam and ZeroSiam+clip at lr
   3e-3 pooled, 24 new tokens, the `answer_line` prompt) over `--problems` arith problems, every
   stream reset before each variant so both see the same drafts.

Variants run interleaved, their order alternating between repeats, the first repeat a warm-up;
figures are medians of wall time, with the fast/old ratio of CPU time (`time.process_time`, all
threads) beside them, which machine load disturbs less.

On a GPU (prepared, not yet run: no GPU was lent to the session that wrote it), one run of about
5 minutes on an H200:

    python bench/decode_roofline.py --model llama8b --dtype bfloat16 --device cuda --tokens 128 \
        --repeats 3 --pools 4,8 --problems 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import arith_messages, set_threads

from zs_llm import AdaptConfig, Streams, ZeroSiamLM
from zs_llm.adapt import adapt_round
from zs_llm.decode import _dense, unsupported
from zs_llm.pool import generate_rows


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def read_bandwidth(mib: int, device="cpu", repeats: int = 5) -> float:
    """Bytes/s of `tensor.sum()` over `mib` MiB of fp32 (median)."""
    x = torch.ones(mib * 2**18, device=device)
    x.sum()
    ts = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        x.sum()
        sync(device)
        ts.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(ts)


def linears(model) -> list[torch.Tensor]:
    """Every weight matrix a decode step multiplies by, in model order, the head last."""
    head = model.get_output_embeddings().weight
    out = [m.weight for n, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and m.weight is not head and "lora_" not in n]
    return out + [head]


def step_bytes(model) -> int:
    """Bytes one decode step reads: each weight matrix once, norms and biases (an embedding lookup
    reads one row, so an untied input embedding does not count)."""
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (p is embed and p is not head):
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def kernel_floor(model, batch: int, repeats: int) -> float:
    """Seconds of one pass over every linear's product at `batch` rows (median), fast-loop kernels."""
    fns = [(_dense(w, None), torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device)) for w in linears(model)]
    device = fns[0][1].device
    ts = []
    for _ in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        for f, x in fns:
            f(x)
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts[1:])


class Timer:
    """Wall and CPU seconds per variant over interleaved repeats."""

    def __init__(self, device="cpu"):
        self.device = device
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def run(self, name, fn, keep: bool):
        sync(self.device)
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        sync(self.device)
        if keep:
            self.wall.setdefault(name, []).append(time.perf_counter() - w)
            self.cpu.setdefault(name, []).append(time.process_time() - c)
        return out

    def med(self, name, cpu=False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[name])


def no_eos(model):
    """Generation runs to max_new_tokens (a processor forcing the length would send the fast loop
    to generate: drop the end-of-sequence token instead)."""
    model.generation_config.eos_token_id = None


def plain_generate(lm, ids, tokens: int) -> torch.Tensor:
    """`generate` of the base model (peft's adapters disabled), greedy, `tokens` new tokens."""
    with lm.peft.disable_adapter():
        return lm.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                              do_sample=False, temperature=None, top_p=None, top_k=None,
                              pad_token_id=0)[:, ids.shape[1]:]


def streams_for(lm, specs: list[str], tokens: int) -> list[ZeroSiamLM]:
    s = Streams(lm)
    return [s.stream(f"s{i}", AdaptConfig.from_spec(spec, {"max_new_tokens": tokens, "seed": i}))
            for i, spec in enumerate(specs)]


def move_lora(lms, seed: int = 0):
    """Give every stream's LoRA a real update (B off zero), as after adaptation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lm in lms:
            for n, p in lm.named_trainable():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.01)


def decode_speed(model, tok_lm, args, bw: float, nbytes: int):
    """Section 3: tokens/s table."""
    prompts = [tok_lm.encode(m) for m in arith_messages(max(args.pools + [1]), style="answer_line")]
    timer, equal = Timer(model.device), {}
    cases = [1] + args.pools
    pools = {b: streams_for(tok_lm, ["zerosiam:lr=3e-3"] * b, args.tokens) for b in args.pools}
    move_lora([tok_lm] + [s for v in pools.values() for s in v])
    floors = {b: kernel_floor(model, b, 5) for b in cases}
    for r in range(args.repeats + 1):
        keep = r > 0
        for b in cases:
            order = ["generate", "draft", "fast"] if r % 2 else ["fast", "draft", "generate"]
            outs = {}
            for v in order:
                if b == 1:
                    ids = prompts[0]
                    if v == "generate":  # the model alone: its LoRA layers switched off
                        fn = lambda: plain_generate(tok_lm, ids, args.tokens)  # noqa: E731
                    else:
                        fn = lambda: tok_lm.generate_ids(ids, max_new_tokens=args.tokens)  # noqa: E731
                else:
                    lms = pools[b]
                    if v == "generate":  # plain batched generate: no per-row LoRA
                        continue
                    fn = lambda: torch.stack([t for t, _ in generate_rows(lms, prompts[:b])])  # noqa: E731
                ZeroSiamLM.fast_greedy_drafts = v == "fast"
                outs[v] = timer.run((b, v), fn, keep)
            ZeroSiamLM.fast_greedy_drafts = True
            equal[b] = equal.get(b, True) and torch.equal(outs["fast"], outs["draft"])
    roof = bw / nbytes
    print(f"\n## decode, {args.tokens} new tokens, {args.repeats} repeats "
          f"(roofline {roof:.1f} tokens/s per row; floor at batch 1 {1 / floors[1]:.1f} tokens/s)\n")
    print("| batch | path | tokens/s (rows x tokens) | of roofline | of kernel floor | fast vs draft (wall / CPU) "
          "| tokens equal |")
    print("|---|---|---|---|---|---|---|")
    for b in cases:
        for v in ("generate", "draft", "fast"):
            if (b, v) not in timer.wall:
                continue
            tps = b * args.tokens / timer.med((b, v))
            vs = ""
            if v == "fast":
                vs = (f"{timer.med((b, 'draft')) / timer.med((b, v)):.2f}x / "
                      f"{timer.med((b, 'draft'), True) / timer.med((b, v), True):.2f}x")
            name = v if b == 1 or v != "draft" else "draft (pool, generate)"
            print(f"| {b} | {name} | {tps:.1f} | {tps / (b * roof):.2f} | {tps * floors[b] / b:.2f} | {vs} "
                  f"| {equal[b] if v == 'fast' else ''} |")
    return equal


def end_to_end(lm, args):
    """Section 4: problems/min of one ZeroSiam stream and of the main command's pool."""
    msgs = arith_messages(args.problems, seed=1, style="answer_line")
    setups = {"one ZeroSiam stream": streams_for(lm, ["zerosiam:lr=3e-3"], 24),
              "main command's pool (3 streams)": streams_for(
                  lm, ["tent:lr=3e-3", "zerosiam:lr=3e-3", "zerosiam+clip:lr=3e-3"], 24)}
    timer, same = Timer(lm.device), {}
    for r in range(args.repeats // 2 + 2):
        for name, lms in setups.items():
            drafts = {}
            for v in (["fast", "generate"] if r % 2 else ["generate", "fast"]):
                ZeroSiamLM.fast_greedy_drafts = v == "fast"

                def run(lms=lms):
                    for s in lms:
                        s.reset()
                    return [[res.draft for res in adapt_round([(s, m, str(i)) for s in lms])]
                            for i, m in enumerate(msgs)]

                drafts[v] = timer.run((name, v), run, r > 0)
            ZeroSiamLM.fast_greedy_drafts = True
            same[name] = same.get(name, True) and drafts["fast"] == drafts["generate"]
    print(f"\n## end to end: {args.problems} problems, 24 new tokens, one update per problem\n")
    print("| setup | problems/min before (generate) | after (fast loop) | ratio wall / CPU | drafts equal |")
    print("|---|---|---|---|---|")
    for name, lms in setups.items():
        pm = {v: 60 * args.problems * len(lms) / timer.med((name, v)) for v in ("generate", "fast")}
        print(f"| {name} | {pm['generate']:.1f} | {pm['fast']:.1f} | {pm['fast'] / pm['generate']:.2f}x / "
              f"{timer.med((name, 'generate'), True) / timer.med((name, 'fast'), True):.2f}x | {same[name]} |")
    return same


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pools", default="3,8", help="pool sizes besides batch 1 (comma-separated; '' for none)")
    ap.add_argument("--problems", type=int, default=6, help="problems per stream end to end (0 skips it)")
    ap.add_argument("--read-mib", type=int, default=1024)
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny", "llama8b"],
                    help="tiny: a tiny random Llama (checks the script, not a figure); llama8b: random weights of "
                         "Llama-3.1-8B's shapes (a GPU's figure)")
    ap.add_argument("--tiny", action="store_true", help="the same as --model tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=None, help="llama8b: fewer layers (a dry run)")
    args = ap.parse_args(argv)
    args.pools = [int(x) for x in args.pools.split(",") if x]
    set_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    t = time.perf_counter()
    model_name = "tiny" if args.tiny else args.model
    if model_name == "smollm2":
        from _common import load_smollm2

        model, tok = load_smollm2(args.dtype, args.device)
    else:
        from zs_llm.testing import char_tokenizer, tiny_model

        tok = char_tokenizer()
        if model_name == "tiny":
            model = tiny_model("llama").to(device=args.device, dtype=dtype)
            args.read_mib = min(args.read_mib, 64)
        else:
            from step_cost import llama8b_shaped

            model = llama8b_shaped(dtype, args.device, args.layers)
    load_s = time.perf_counter() - t
    no_eos(model)
    why = unsupported(model, 4096)
    print(f"model {type(model).__name__} {args.dtype}, {torch.get_num_threads()} threads, loaded in {load_s:.1f} s; "
          f"fast loop: {'covers it' if why is None else 'not used: ' + why}")
    lm = ZeroSiamLM(model, tok, AdaptConfig(method="zerosiam", max_new_tokens=args.tokens))
    bw, nbytes = read_bandwidth(args.read_mib, args.device), step_bytes(model)
    floor1 = kernel_floor(model, 1, 5)
    print(f"read bandwidth {bw / 1e9:.1f} GB/s; weight bytes per step {nbytes / 1e6:.1f} MB "
          f"-> roofline {bw / nbytes:.1f} tokens/s; kernel floor {floor1 * 1e3:.2f} ms/token "
          f"({nbytes / floor1 / 1e9:.1f} GB/s, {1 / floor1:.1f} tokens/s)")
    equal = decode_speed(model, lm, args, bw, nbytes)
    same = end_to_end(lm, args) if args.problems else {}
    return equal, same


if __name__ == "__main__":
    main()
