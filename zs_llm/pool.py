"""Batching mechanics for a pool of streams on one model (the loop itself is `zs_llm.adapt`).

Each stream is a `ZeroSiamLM` sharing one model with the others (`ZeroSiamLM(..., share=)`,
`zs_llm.Streams`). Here:

- `route_lora`: inside it every row of a batch runs through its own stream's LoRA adapter;
- `generate_rows`: greedy drafts of one prompt per stream in one batched generation (left padding,
  KV cache), every row through its own stream's LoRA, head hook (SLOT) and logits processors
  (EM-INF);
- `pooled_hidden`: the final hidden states of one sequence per stream in one forward (right
  padding: each row keeps its own positions and needs no mask), every row through its own
  adapter, for a joint backward. The streams share no trained tensor, so a summed loss gives
  each stream's parameters exactly its own gradient.

Rows match a stream run alone up to the rounding of batched matmuls (and of the unmerged LoRA
path: rows generated here never fold LoRA into the weights, whatever their dtype).
"""

from __future__ import annotations

import contextlib

import torch

from .decode import greedy_decode


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
class RowStreamer:
    """A `transformers` streamer for a batch: each new token of row b goes to `callbacks[b]`
    (None: the row is not watched) as generate produces it. `generate` first hands over the
    prompt ids (B, T), which are skipped, then one (B,) tensor per decoding step; rows that have
    finished keep receiving padding, which the callback, knowing its own limit and end tokens,
    ignores."""

    def __init__(self, callbacks: list):
        self.callbacks = callbacks
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        tokens = value.view(-1).tolist()  # (B,)
        for cb, t in zip(self.callbacks, tokens):
            if cb is not None:
                cb(t)

    def end(self) -> None:
        pass


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


def _left_padded(lms: list, prompt_ids: list[torch.Tensor], pad: int):
    """The prompts left-padded into one batch (ids, attention mask) and each row's token budget:
    its stream's `max_new_tokens`, within its model's context (the padding counts against it)."""
    host = lms[0]
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
    return ids, mask, limits


@torch.no_grad()
def generate_rows(lms: list, prompt_ids: list[torch.Tensor], want_logits: list[bool] | None = None,
                  on_token: list | None = None):
    """Greedy drafts of one prompt (1, T) per stream in one batched generation (`zs_llm.decode`'s
    loop where `ZeroSiamLM.fast_greedy` allows: generate's tokens and logits; else `generate`).
    Returns per row (new token ids (n,), the raw logits that produced them (n, V) fp32 or None), each row
    cut at its own stream's `max_new_tokens` (greedy decoding is causal: a row's first n tokens
    do not depend on how many more the batch generates). `on_token[b]` (a callable or None) gets
    row b's token ids one by one as they are generated (`RowStreamer`)."""
    from transformers import LogitsProcessorList

    host = lms[0]
    hf, tok = host.hf, host.tokenizer
    want_logits = want_logits or [False] * len(lms)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, mask, limits = _left_padded(lms, prompt_ids, pad)
    width, max_new = ids.shape[1], max(limits)
    kw = {}
    groups = [(i, lm.method.logits_processors(lm)) for i, lm in enumerate(lms)]
    groups = [([i], procs) for i, procs in groups if procs]
    if groups:
        kw["logits_processor"] = LogitsProcessorList([_RowProcessors(groups)])
    if on_token is not None and any(cb is not None for cb in on_token):
        kw["streamer"] = RowStreamer(on_token)
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
            if not groups and host.fast_greedy(width + max_new):
                out = greedy_decode(hf, ids, mask, max_new, pad, logits, kw.get("streamer"))
                seqs, stacked = out if logits else (out, None)  # stacked: (B, n, V)
            else:
                out = hf.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, max_new_tokens=max_new,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  output_logits=logits, return_dict_in_generate=logits, **kw)
                seqs = out.sequences if logits else out
                stacked = torch.stack(out.logits, 1) if logits else None
    finally:
        if handle is not None:
            handle.remove()
        if was_training:
            hf.train()
    new = seqs[:, width:]
    return [(new[i, :limits[i]], stacked[i, :limits[i]] if want_logits[i] else None) for i in range(len(lms))]


# --- pooled forward -------------------------------------------------------------------------
@contextlib.contextmanager
def pooled_hidden(lms: list, sequences: list[torch.Tensor]):
    """Inside: the final hidden states (S, T, H) of one sequence (1, T_s) per stream of `lms` (all
    sharing one model), computed in one forward with every row through its own stream's adapter
    (right padding; row s is real up to T_s). Run the backward inside too: gradient checkpointing
    recomputes the forward then, and must route the rows the same way."""
    host = lms[0]
    width = max(q.shape[1] for q in sequences)
    pad = host.tokenizer.pad_token_id or 0
    # right padding: causal attention keeps every row's real tokens blind to the pad after them
    ids = torch.full((len(sequences), width), pad, dtype=torch.long, device=host.device)
    for i, q in enumerate(sequences):
        ids[i, : q.shape[1]] = q[0]
    with route_lora(host.hf, [lm.adapter_name for lm in lms]):
        yield host.backbone(input_ids=ids, use_cache=False).last_hidden_state  # (S, T, H)
