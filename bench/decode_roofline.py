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
   stream reset before each variant so both see the same drafts;
5. with `--lookup K` (2 by default; 0 skips): prompt-lookup speculation (`ZeroSiamLM.draft_lookup`)
   as a batch-1 row of 3, as a third variant of the one stream of 4, and over a stream of
   `--stream` drafts (boxed arith prompts, each to its end or `--stream-tokens`, one after another,
   the stream's earlier drafts searched too) beside the draft path as it was and the fast loop:
   tokens/s, tokens kept a pass, and whether the drafts were equal.

Variants run interleaved, their order alternating between repeats, the first repeat a warm-up;
figures are medians of wall time, with the fast/old ratio of CPU time (`time.process_time`, all
threads) beside them, which machine load disturbs less.

On a GPU (prepared, not yet run: no GPU was lent to the session that wrote it), one run of about
5 minutes on an H200:

    python bench/decode_roofline.py --model llama8b --dtype bfloat16 --device cuda --tokens 128 \
        --repeats 3 --pools 4,8 --problems 2 --stream 2 --stream-tokens 64

(random weights draft no text worth looking up: the lookup rows there time the verifying passes,
not a gain; `--stream 2 --stream-tokens 64` keeps the run inside one 10-minute device call.)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from _common import arith_messages, set_threads

import zs_llm.decode as dec
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


class Passes:
    """Passes of the fast loop over the layers (its per-token and verifying steps, each layer's call
    counted while `count` is on) and the tokens they kept."""

    def __init__(self):
        self.calls, self.layers, self.tokens = 0, 1, 0

    def per_pass(self) -> float:
        return self.tokens * self.layers / max(self.calls, 1)

    @contextlib.contextmanager
    def count(self, layers: int):
        self.layers = layers
        real = dec._layer_step, dec._chunk_step

        def spy(fn):
            def counted(*a, **kw):
                self.calls += 1
                return fn(*a, **kw)
            return counted

        dec._layer_step, dec._chunk_step = (spy(f) for f in real)
        try:
            yield
        finally:
            dec._layer_step, dec._chunk_step = real


def lookup_draft(lm, ids, tokens: int, lookup: int, passes: Passes | None = None, history: bool = False):
    """`lm.generate_ids` with prompt-lookup speculation (`ZeroSiamLM.draft_lookup`), the stream's
    draft history cleared first unless `history`; `passes` counts its passes and kept tokens (the
    first token is generate's own, with the prompt: not counted)."""
    lm.draft_lookup = lookup
    if not history:
        lm.clear_draft_history()
    try:
        with passes.count(lm.hf.config.num_hidden_layers) if passes else contextlib.nullcontext():
            out = lm.generate_ids(ids, max_new_tokens=tokens)
    finally:
        lm.draft_lookup = 0
    if passes is not None:
        passes.tokens += out.shape[1] - 1
    return out


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
    timer, equal, passes = Timer(model.device), {}, Passes()
    cases = [1] + args.pools
    pools = {b: streams_for(tok_lm, ["zerosiam:lr=3e-3"] * b, args.tokens) for b in args.pools}
    move_lora([tok_lm] + [s for v in pools.values() for s in v])
    floors = {b: kernel_floor(model, b, 5) for b in cases}
    for r in range(args.repeats + 1):
        keep = r > 0
        for b in cases:
            order = ["generate", "draft", "fast", "lookup"] if r % 2 else ["lookup", "fast", "draft", "generate"]
            outs = {}
            for v in order:
                if b == 1:
                    ids = prompts[0]
                    if v == "generate":  # the model alone: its LoRA layers switched off
                        fn = lambda: plain_generate(tok_lm, ids, args.tokens)  # noqa: E731
                    elif v == "lookup":
                        if not args.lookup:
                            continue
                        fn = lambda: lookup_draft(tok_lm, ids, args.tokens, args.lookup, passes)  # noqa: E731
                    else:
                        fn = lambda: tok_lm.generate_ids(ids, max_new_tokens=args.tokens)  # noqa: E731
                else:
                    lms = pools[b]
                    if v in ("generate", "lookup"):  # plain batched generate: no per-row LoRA; lookup: one row
                        continue
                    fn = lambda: torch.stack([t for t, _ in generate_rows(lms, prompts[:b])])  # noqa: E731
                ZeroSiamLM.fast_greedy_drafts = v in ("fast", "lookup")
                outs[v] = timer.run((b, v), fn, keep)
            ZeroSiamLM.fast_greedy_drafts = True
            equal[b] = equal.get(b, True) and torch.equal(outs["fast"], outs["draft"])
            if "lookup" in outs:
                equal["lookup"] = equal.get("lookup", True) and torch.equal(outs["lookup"], outs["draft"])
    roof = bw / nbytes
    print(f"\n## decode, {args.tokens} new tokens, {args.repeats} repeats "
          f"(roofline {roof:.1f} tokens/s per row; floor at batch 1 {1 / floors[1]:.1f} tokens/s)\n")
    print("| batch | path | tokens/s (rows x tokens) | of roofline | of kernel floor | fast vs draft (wall / CPU) "
          "| tokens equal |")
    print("|---|---|---|---|---|---|---|")
    for b in cases:
        for v in ("generate", "draft", "fast", "lookup"):
            if (b, v) not in timer.wall:
                continue
            tps = b * args.tokens / timer.med((b, v))
            vs = ""
            if v in ("fast", "lookup"):
                vs = (f"{timer.med((b, 'draft')) / timer.med((b, v)):.2f}x / "
                      f"{timer.med((b, 'draft'), True) / timer.med((b, v), True):.2f}x")
            name = {"draft": "draft" if b == 1 else "draft (pool, generate)",
                    "lookup": f"fast + lookup {args.lookup} ({passes.per_pass():.2f} tokens a pass)"}.get(v, v)
            same = equal["lookup"] if v == "lookup" else equal[b] if v == "fast" else ""
            print(f"| {b} | {name} | {tps:.1f} | {tps / (b * roof):.2f} | {tps * floors[b] / b:.2f} | {vs} | {same} |")
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
            variants = ["generate", "fast"] + (["lookup"] if len(lms) == 1 and args.lookup else [])
            for v in (variants[::-1] if r % 2 else variants):
                ZeroSiamLM.fast_greedy_drafts = v != "generate"

                def run(lms=lms, k=args.lookup if v == "lookup" else 0):
                    for s in lms:
                        s.reset()  # LoRA, optimizer and the lookup's draft history
                        s.draft_lookup = k
                    try:
                        return [[res.draft for res in adapt_round([(s, m, str(i)) for s in lms])]
                                for i, m in enumerate(msgs)]
                    finally:
                        for s in lms:
                            s.draft_lookup = 0

                drafts[v] = timer.run((name, v), run, r > 0)
            ZeroSiamLM.fast_greedy_drafts = True
            same[name] = same.get(name, True) and drafts["fast"] == drafts["generate"]
            if "lookup" in drafts:
                same[name + " lookup"] = same.get(name + " lookup", True) and drafts["lookup"] == drafts["generate"]
    print(f"\n## end to end: {args.problems} problems, 24 new tokens, one update per problem\n")
    print("| setup | problems/min before (generate) | after (fast loop) | ratio wall / CPU | drafts equal |")
    print("|---|---|---|---|---|")
    for name, lms in setups.items():
        for v, label in (("fast", name), ("lookup", f"{name}, + lookup {args.lookup}")):
            if (name, v) not in timer.wall:
                continue
            before, after = (60 * args.problems * len(lms) / timer.med((name, x)) for x in ("generate", v))
            key = name if v == "fast" else name + " lookup"
            print(f"| {label} | {before:.1f} | {after:.1f} | {after / before:.2f}x / "
                  f"{timer.med((name, 'generate'), True) / timer.med((name, v), True):.2f}x | {same[key]} |")
    return same


def lookup_stream(lm, args, eos, floor1: float, roof: float):
    """Section 5: a stream of drafts, each to its end (EOS) or `--stream-tokens`, one after another
    as a stream drafts them: the draft path as it was (`generate`), the fast loop, and the fast loop
    with prompt lookup over the stream's own last drafts; tokens/s over all the drafts, the prompts'
    passes included."""
    msgs = arith_messages(args.stream, seed=2, style="boxed")
    prompts = [lm.encode(m) for m in msgs]
    timer, passes, drafts = Timer(lm.device), Passes(), {}
    saved = lm.hf.generation_config.eos_token_id
    lm.hf.generation_config.eos_token_id = eos
    variants = ["draft", "fast", "lookup"]
    try:
        for r in range(3):
            for v in (variants[::-1] if r % 2 else variants):
                lm.clear_draft_history()
                k = args.lookup if v == "lookup" else 0
                ZeroSiamLM.fast_greedy_drafts = v != "draft"

                def run(k=k):
                    return [lookup_draft(lm, ids, args.stream_tokens, k, passes if k and r == 2 else None,
                                         history=True) for ids in prompts]

                out = [o.tolist() for o in timer.run(v, run, r > 0)]
                if drafts.setdefault(v, out) != out:
                    raise RuntimeError(f"the {v} drafts changed between repeats")
    finally:
        lm.hf.generation_config.eos_token_id = saved
        ZeroSiamLM.fast_greedy_drafts = True
    new = sum(len(o[0]) for o in drafts["draft"])
    print(f"\n## a stream of {args.stream} drafts (boxed arith prompts, each to its end or {args.stream_tokens} tokens, "
          f"{new} new tokens), batch 1, the prompts' passes included\n")
    print("| path | tokens/s | of roofline | of kernel floor | vs draft (wall / CPU) | tokens a pass | drafts equal |")
    print("|---|---|---|---|---|---|---|")
    names = {"draft": "draft (generate)", "fast": "fast",
             "lookup": f"fast + lookup {args.lookup} (the stream's last drafts)"}
    for v in variants:
        tps = new / timer.med(v)
        vs = f"{timer.med('draft') / timer.med(v):.2f}x / {timer.med('draft', True) / timer.med(v, True):.2f}x"
        per_pass = f"{passes.per_pass():.2f}" if v == "lookup" else "1.00" if v == "fast" else ""
        same = "" if v == "draft" else drafts[v] == drafts["draft"]
        print(f"| {names[v]} | {tps:.1f} | {tps / roof:.2f} | {tps * floor1:.2f} | {vs} | {per_pass} | {same} |")
    return drafts["lookup"] == drafts["draft"] and drafts["fast"] == drafts["draft"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pools", default="3,8", help="pool sizes besides batch 1 (comma-separated; '' for none)")
    ap.add_argument("--problems", type=int, default=6, help="problems per stream end to end (0 skips it)")
    ap.add_argument("--lookup", type=int, default=2, help="prompt-lookup candidates a pass for the lookup rows "
                    "(ZeroSiamLM.draft_lookup; 0 skips them)")
    ap.add_argument("--stream", type=int, default=8, help="drafts in the stream of section 5 (0 skips it)")
    ap.add_argument("--stream-tokens", type=int, default=128, help="most new tokens a draft of section 5 makes")
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
    eos = model.generation_config.eos_token_id
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
    if args.stream and args.lookup:
        same["lookup stream"] = lookup_stream(lm, args, eos, floor1, bw / nbytes)
    return equal, same


if __name__ == "__main__":
    main()
