"""Several streams answered as one batch: the pooled form of `adapt_on_problem`.

Each stream is a `ZeroSiamLM` hosted on one shared model (`ZeroSiamLM.stream`). A round takes
one problem per stream and gives every stream what `adapt_on_problem` would give it alone:

- drafts (and regenerated answers) come from one `generate` call (left padding, KV cache) in
  which every row runs through its own stream's LoRA (`route_lora`), head hook (SLOT) and
  logits processors (EM-INF);
- updates are one forward and one backward over the pool's sequences (right padding: each
  row keeps its own positions and needs no mask), every row through its own adapter and
  predictor. The streams share no trained tensor, so the summed loss gives each stream's
  parameters exactly its own gradient; then each stream's own finiteness check, clipping and
  optimizer step run (`end_step`), so momentum and Adam step counts are per stream.

Rows match a stream run alone up to the rounding of batched matmuls (and of the unmerged LoRA
path: drafts in a pool never fold LoRA into the weights, whatever their dtype). Sequential
fallbacks, per stream, where a batch could not reproduce the lone run exactly: sampling
(temperature > 0: the sampler draws from one RNG per call) and methods that override
`Method.backward` or `Method.loss` (SAR's two SAM passes and model recovery, ZeroSiam+EATA's
no-step rule).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings

import torch

from .adapt import AdaptResult, _eos_ids, _keep_draft_logits, _trim, adapt_step, begin_step, end_step, make_batch
from .methods import Method


# --- per-row LoRA ---------------------------------------------------------------------------
def _stack_adapters(m, rows: list[str | None]):
    """(A^T (B, in, r), B^T (B, r, out), scale) of the peft layer `m` when every row has an
    adapter and all share one rank and scale: the whole batch then takes one pair of bmm. Else
    None (rows go one at a time)."""
    if any(a is None for a in rows) or len({m.lora_A[a].weight.shape[0] for a in rows}) != 1 \
            or len({m.scaling[a] for a in rows}) != 1:
        return None
    a = torch.stack([m.lora_A[n].weight for n in rows]).transpose(1, 2)
    b = torch.stack([m.lora_B[n].weight for n in rows]).transpose(1, 2)
    return a, b, m.scaling[rows[0]]


def _lora_delta(m, rows: list[str | None], x: torch.Tensor, stacked) -> torch.Tensor:
    """Row b of `x` (B, T, in) through adapter rows[b] of the peft layer `m`: (B, T, out).
    `stacked`: `_stack_adapters(m, rows)`."""
    names = [a for a in rows if a is not None]
    x = x.to(m.lora_A[names[0]].weight.dtype)
    if stacked is not None:
        a, b, scale = stacked
        return torch.bmm(torch.bmm(x, a), b) * scale  # (B, T, out)
    out_features = m.lora_B[names[0]].weight.shape[0]
    parts = []
    for i, n in enumerate(rows):
        if n is None:
            parts.append(x.new_zeros(x.shape[1], out_features))
        else:
            parts.append(m.lora_B[n](m.lora_A[n](x[i])) * m.scaling[n])  # (T, out)
    return torch.stack(parts)


@contextlib.contextmanager
def route_lora(model: torch.nn.Module, adapters: list[str | None]):
    """Inside: every peft LoRA layer of `model` runs row b of its input through adapter
    `adapters[b]` only (None, or an adapter the layer lacks: the base layer alone). Computed
    as peft computes one adapter (input cast to the adapter's dtype, result = base + B(A(x)) *
    scale, cast back), never folded into the base weight. Gradients reach each adapter from
    its own rows. Each layer's adapter weights are stacked once, on entry (every token of a
    generation reuses them): step no optimizer inside the context."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = []
    for m in model.modules():
        if not isinstance(m, LoraLinear):
            continue
        rows = [a if a is not None and a in m.lora_A else None for a in adapters]
        bad = [a for a in rows if a is not None and (a in m.lora_variant or m.lora_bias.get(a))]
        if bad:
            raise NotImplementedError(f"pooled streams support plain LoRA only; adapter(s) {bad} use a variant or a "
                                      "bias: run those streams one at a time")

        none = all(a is None for a in rows)  # the base layer alone (not the layer's active adapters)
        stacked = None if none else _stack_adapters(m, rows)

        def forward(x, *args, _m=m, _rows=rows, _none=none, _stacked=stacked, **kwargs):
            result = _m.base_layer(x, *args, **kwargs)
            if _none:
                return result
            if x.shape[0] != len(_rows):
                raise RuntimeError(f"route_lora: a batch of {x.shape[0]} rows through a pool of {len(_rows)} streams")
            return (result + _lora_delta(_m, _rows, x, _stacked)).to(result.dtype)

        m.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class's
        patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


# --- pooled generation ----------------------------------------------------------------------
class _RowProcessors:
    """Each stream's logits processors applied to its own rows only."""

    def __init__(self, groups: list[tuple[list[int], list]]):
        self.groups = groups

    def __call__(self, input_ids, scores):  # scores (B, V)
        for rows, procs in self.groups:
            idx = torch.tensor(rows, device=scores.device)
            s = scores[idx]
            for p in procs:
                s = p(input_ids[idx], s)
            scores = scores.index_copy(0, idx, s.to(scores.dtype))
        return scores


@torch.no_grad()
def generate_rows(lms: list, prompt_ids: list[torch.Tensor], want_logits: list[bool] | None = None):
    """Greedy drafts of one prompt (1, T) per stream in one batched `generate` call. Returns per
    row (new token ids (n,), the raw logits that produced them (n, V) fp32 or None), each row
    cut at its own stream's `max_new_tokens` (greedy decoding is causal: a row's first n tokens
    do not depend on how many more the batch generates)."""
    from transformers import LogitsProcessorList

    host = lms[0]
    hf, tok = host.hf, host.tokenizer
    want_logits = want_logits or [False] * len(lms)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(p.shape[1] for p in prompt_ids)
    ids = torch.full((len(lms), width), pad, dtype=torch.long, device=host.device)
    mask = torch.zeros_like(ids)
    limits = []
    for i, (lm, p) in enumerate(zip(lms, prompt_ids)):
        ids[i, width - p.shape[1]:] = p[0]
        mask[i, width - p.shape[1]:] = 1
        n = lm.zs_config.max_new_tokens
        if lm.context_length is not None:
            n = max(1, min(n, lm.context_length - p.shape[1]))
        limits.append(n)
    max_new = max(limits)
    if host.context_length is not None:
        max_new = max(1, min(max_new, host.context_length - width))  # left padding counts against the context
    if max_new < max(limits):
        raise ValueError("the padded pool does not fit the model's context; pool fewer or shorter prompts")
    kw = {}
    groups = [(i, lm.method.logits_processors(lm)) for i, lm in enumerate(lms)]
    groups = [([i], procs) for i, procs in groups if procs]
    if groups:
        kw["logits_processor"] = LogitsProcessorList([_RowProcessors(groups)])
    hooks = [lm.method.head_pre_hook(lm) for lm in lms]
    handle = None
    if any(hooks):
        def pre(module, args):
            h = args[0]  # (B, T, H)
            return (torch.cat([f(h[i:i + 1]) if f else h[i:i + 1] for i, f in enumerate(hooks)], 0),)

        handle = host.head.register_forward_pre_hook(pre)
    was_training = hf.training
    hf.eval()
    logits = any(want_logits)
    try:
        with route_lora(hf, [lm.adapter_name for lm in lms]):
            out = hf.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, max_new_tokens=max_new,
                              do_sample=False, temperature=None, top_p=None, top_k=None,
                              output_logits=logits, return_dict_in_generate=logits, **kw)
    finally:
        if handle is not None:
            handle.remove()
        if was_training:
            hf.train()
    seqs = out.sequences if logits else out
    stacked = torch.stack(out.logits, 1) if logits else None  # (B, n, V)
    new = seqs[:, width:]
    return [(new[i, :limits[i]], stacked[i, :limits[i]] if want_logits[i] else None) for i in range(len(lms))]


# --- pooled updates -------------------------------------------------------------------------
def pooled_update(lm) -> bool:
    """Whether a stream's update can join the pool's one forward and backward: its method
    computes the loss with `Method.loss` and steps as `Method.backward` does."""
    m = type(lm.method)
    return m.backward is Method.backward and m.loss is Method.loss


def pooled_step(items: list[tuple]) -> list[dict]:
    """One optimizer step for each (stream, LossBatch, problem_id) of `items`, the streams'
    sequences in one forward and one backward. Returns each stream's step stats, as
    `adapt_step` would."""
    lms = [lm for lm, _, _ in items]
    host = lms[0]
    t_start = time.perf_counter()
    prep = [begin_step(lm) for lm in lms]
    width = max(b.input_ids.shape[1] for _, b, _ in items)
    pad = host.tokenizer.pad_token_id or 0
    # right padding: causal attention keeps every row's real tokens blind to the pad after them
    ids = torch.full((len(items), width), pad, dtype=torch.long, device=host.device)
    for i, (_, b, _) in enumerate(items):
        ids[i, : b.input_ids.shape[1]] = b.input_ids[0]
    stats, losses = [], []
    with route_lora(host.hf, [lm.adapter_name for lm in lms]):
        h = host.backbone(input_ids=ids, use_cache=False).last_hidden_state  # (S, T, H)
        for i, (lm, b, _) in enumerate(items):
            st: dict = {}
            rows = dataclasses.replace(b, features=h[i, b.positions.to(h.device)])  # (N, H)
            losses.append(lm.method.loss(lm, rows, st))
            stats.append(st)
        total = [x for x in losses if x.requires_grad]
        if total:
            torch.stack([x.float() for x in total]).sum().backward()
    out = []
    for (lm, _, pid), st, loss, (t0, before) in zip(items, stats, losses, prep):
        st["loss"] = float(loss.detach())
        out.append(end_step(lm, st, before, t0, pid))
        out[-1]["time_s"] = (time.perf_counter() - t_start) / len(items)  # the pool's time, shared
    return out


# --- one round ------------------------------------------------------------------------------
class _Problem:
    """One stream's problem through a round: the state `adapt_on_problem` keeps in locals."""

    def __init__(self, lm, prompt, problem_id):
        self.lm, self.problem_id = lm, problem_id
        c, method = lm.zs_config, lm.method
        self.t_start = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.events: list[str] = []
        self.steps: list[dict] = []
        self.prompt_ids = lm.encode(prompt)  # before the reset: a prompt that is refused changes nothing
        if c.schedule == "episodic":
            seen = lm.problems_seen
            lm.reset()
            lm.problems_seen = seen  # sampling seeds still follow the problem
        t = time.perf_counter()
        lm._activate()
        self.method_stats = method.on_problem_start(lm, self.prompt_ids)
        self.timings["method_s"] = time.perf_counter() - t
        self.adapts = method.adapts and method.loop_update and lm.adapt_enabled
        self.wants_draft = (self.adapts and c.signal == "response") or c.answer == "draft" or not self.adapts
        self.keep_logits = self.adapts and c.signal == "response" and _keep_draft_logits(lm)
        self.draft_ids = self.draft_logits = self.answer_ids = self.batch = None

    def trim(self, ids):
        return _trim(ids, _eos_ids(self.lm), self.lm.tokenizer.pad_token_id)


def _generate(problems: list[_Problem], logits: bool) -> list[tuple]:
    """New tokens (and logits) for each problem: greedy rows pooled, sampling rows alone."""
    out: list = [None] * len(problems)
    pooled = [i for i, p in enumerate(problems) if p.lm.zs_config.temperature == 0]
    for i, p in enumerate(problems):
        if i not in pooled:
            lm = p.lm
            if logits and p.keep_logits:
                ids, lg = lm.generate_ids(p.prompt_ids, return_logits=True)
                out[i] = (ids[0], lg[0])
            else:
                out[i] = (lm.generate_ids(p.prompt_ids)[0], None)
    if pooled:
        rows = generate_rows([problems[i].lm for i in pooled], [problems[i].prompt_ids for i in pooled],
                             [logits and problems[i].keep_logits for i in pooled])
        for i, r in zip(pooled, rows):
            out[i] = r
    return out


def adapt_pool(items: list[tuple]) -> list[AdaptResult]:
    """Adapt each (stream, prompt, problem_id) of `items` on its problem and answer it, the
    streams pooled (see the module's docstring). Streams must be distinct and share one model."""
    lms = [lm for lm, _, _ in items]
    if len({id(lm) for lm in lms}) != len(lms):
        raise ValueError("a stream appears twice in one round: each stream answers its problems in order")
    if len({id(lm._hub) for lm in lms}) > 1:
        raise ValueError("the streams of a pool must share one model (make them with one ZeroSiamLM's stream())")
    problems = [_Problem(lm, prompt, pid) for lm, prompt, pid in items]

    drafting = [p for p in problems if p.wants_draft]
    if drafting:
        t = time.perf_counter()
        for p, (ids, lg) in zip(drafting, _generate(drafting, logits=True)):
            p.draft_ids = p.trim(ids)
            if p.keep_logits:
                p.draft_logits = lg[: p.draft_ids.numel()]
        dt = (time.perf_counter() - t) / len(drafting)
        for p in drafting:
            p.timings["draft_s"] = dt

    t = time.perf_counter()
    for p in problems:
        if p.adapts:
            p.batch = make_batch(p.prompt_ids, p.draft_ids, p.lm.zs_config.signal)
            if p.batch is None:
                p.events.append("no tokens to adapt on: update skipped")
            else:
                p.batch.target_logits = p.draft_logits
    for k in range(max((p.lm.zs_config.steps for p in problems if p.batch is not None), default=0)):
        live = [p for p in problems if p.batch is not None and k < p.lm.zs_config.steps]
        joint = [p for p in live if pooled_update(p.lm)]
        for p in live:
            if p not in joint:
                p.steps.append(adapt_step(p.lm, p.batch, p.problem_id))
        if joint:
            for p, st in zip(joint, pooled_step([(p.lm, p.batch, p.problem_id) for p in joint])):
                p.steps.append(st)
        for p in live:
            p.batch.target_logits = None  # stale once the step moved the state
            if p.steps[-1]["skipped"]:
                p.events.append("non-finite step skipped")
    dt = (time.perf_counter() - t) / len(problems)
    for p in problems:
        p.timings["adapt_s"] = dt

    regen = [p for p in problems if p.adapts and p.lm.zs_config.answer == "regenerate"]
    if regen:
        t = time.perf_counter()
        for p, (ids, _) in zip(regen, _generate(regen, logits=False)):
            p.answer_ids = p.trim(ids)
        dt = (time.perf_counter() - t) / len(regen)
        for p in regen:
            p.timings["answer_s"] = dt

    results = []
    for p in problems:
        lm = p.lm
        answer_ids = p.answer_ids if p.answer_ids is not None else p.draft_ids
        lm.problems_seen += 1
        answer_text = lm.decode(answer_ids)
        if lm.guard is not None and p.adapts:
            event = lm.guard.observe(answer_text, p.steps, p.problem_id)
            if event:
                p.events.append(event)
                warnings.warn(f"problem {p.problem_id!r}: {event}", RuntimeWarning, stacklevel=2)
        p.timings["total_s"] = time.perf_counter() - p.t_start
        results.append(AdaptResult(
            problem_id=p.problem_id, draft=None if p.draft_ids is None else lm.decode(p.draft_ids),
            answer=answer_text, steps=p.steps, method_stats=p.method_stats, timings=p.timings, events=p.events,
            prompt_tokens=int(p.prompt_ids.shape[1]),
            draft_tokens=0 if p.draft_ids is None else int(p.draft_ids.numel()),
            answer_tokens=int(answer_ids.numel())))
    return results
