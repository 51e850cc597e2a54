"""Greedy decoding without `generate`'s per-token machinery, with the same tokens.

At batch 1 a small model's decode step is dispatch-bound, not memory-bound: SmolLM2-135M spent
about 30 of 41 ms per token in `generate` outside the weight reads (module calls, hooks, mask and
cache bookkeeping, the dynamic cache's concatenation). `greedy_decode` runs the prompt through
`generate` itself (one token, so the prefill and the first token are generate's own) and then
decodes token by token in a flat loop over the model's own modules' weights:

- the model's linears as plain `F.linear` on their (possibly LoRA-folded) weights, or, for a peft
  layer that is not folded (bf16 base, a pool's per-row routing), that layer's own forward;
- its norms' and activations' own `forward` (no `nn.Module.__call__`);
- a preallocated KV cache written in place, attention through transformers' own sdpa function
  with the mask generate would build (none without padding, a boolean padding mask with it);
- RoPE's cos/sin for every position computed once, by the model's rotary module.

Every step computes what the model's forward computes, op for op, so the logits equal
`generate`'s bit for bit on the kernels tested (tests/test_fast_decode.py). Architectures and
settings outside what the loop reproduces (`unsupported` names why) go through `generate`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: decoder-only families whose layer is Llama's (pre-norm attention + gated MLP, RoPE); Qwen3
#: adds per-head q/k norms, Gemma a scaled embedding and (1 + w) norms (their own forwards run)
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma")
#: RoPE variants whose cos/sin depend on the position only (not on the sequence length so far)
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
#: generation-config fields that add a logits processor to greedy decoding, with their no-op values
_PROCESSOR_FIELDS = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
                     "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
                     "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
                     "sequence_bias": (None,), "stop_strings": (None,), "num_beams": (None, 1),
                     "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False)}


def unsupported(model: nn.Module, total_length: int | None = None) -> str | None:
    """Why `greedy_decode` cannot reproduce `model.generate` here (None: it can). `total_length`:
    prompt plus new tokens, checked against a sliding window."""
    c = model.config
    mt = getattr(c, "model_type", "")
    if mt not in FAMILIES:
        return f"architecture {mt or type(model).__name__} (the fast loop covers {', '.join(FAMILIES)})"
    if getattr(c, "_attn_implementation", None) != "sdpa":
        return f"attention implementation {getattr(c, '_attn_implementation', None)!r} (the fast loop uses sdpa)"
    rope = (getattr(c, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"rope_type {rope!r} (its cos/sin change with the sequence length)"
    window = getattr(c, "sliding_window", None)
    types = set(getattr(c, "layer_types", None) or ["full_attention"])
    if window is not None and (mt == "mistral" or types != {"full_attention"}):
        if total_length is None or total_length > window:
            return f"a sliding window of {window} tokens shorter than the sequence"
    if getattr(c, "use_bidirectional_attention", False):
        return "bidirectional attention"
    g = model.generation_config
    if g.use_cache is False or getattr(g, "cache_implementation", None) is not None:
        return f"generation_config asks for use_cache={g.use_cache}, cache_implementation={g.cache_implementation!r}"
    for name, defaults in _PROCESSOR_FIELDS.items():
        if getattr(g, name, None) not in defaults:
            return f"generation_config.{name}={getattr(g, name)!r} (a logits processor the fast loop lacks)"
    backbone = model.base_model
    if not hasattr(backbone, "layers") or not hasattr(backbone, "rotary_emb") or not hasattr(backbone, "norm"):
        return f"{type(backbone).__name__} has no layers / rotary_emb / norm"
    embed = backbone.embed_tokens
    if not isinstance(embed, nn.Embedding) or embed._forward_hooks or embed._forward_pre_hooks:
        return f"the input embedding is a {type(embed).__name__} with hooks, or not an nn.Embedding"
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "global module forward hooks"
    if any(m._forward_hooks or m._forward_pre_hooks for m in [model, *backbone.modules()]
           if not isinstance(m, nn.Linear) and type(m).__name__ != "Linear"):
        return "forward hooks on the model's modules (other than its linear layers)"
    return None


def _dense(w: torch.Tensor, b: torch.Tensor | None):
    """`F.linear(x, w, b)` for x (B, in) as a callable, calling the kernel `F.linear` reaches for
    a 2-D input directly (`mm` / `addmm` on the transposed view). A bf16 weight on the CPU with no
    bias takes `torch.mv` for a single row: the same values (tests/test_fast_decode.py checks the
    logits bit for bit) from a kernel that streams bf16 weights several times faster at batch 1."""
    wt = w.t()
    if b is not None:
        return lambda x: torch.addmm(b, x, wt)
    if w.dtype == torch.bfloat16 and w.device.type == "cpu":
        return lambda x: torch.mv(w, x[0])[None] if x.shape[0] == 1 else torch.mm(x, wt)
    return lambda x: torch.mm(x, wt)


def _plain(m: nn.Module) -> bool:
    return type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks


def _as_module(f):
    """`f` (a module or a layer's forward, for (B, T, in)) applied to x (B, in) as one token."""
    return lambda x: f(x[:, None])[:, 0]


def _linear_fn(m: nn.Module):
    """A callable computing `m(x)` for x (B, in), a linear layer of the model, with as little
    Python as computes the same thing: `_dense` on a plain (or LoRA-folded) layer's weight; an
    unfolded peft LoRA layer as peft computes it (base, input cast to the adapter's dtype,
    + B(A(x)) * scale, cast back); a pool's routed layer through its routing; the module itself
    otherwise (hooks, variants, quantised layers)."""
    if _plain(m):
        return _dense(m.weight, m.bias)
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(m, LoraLinear) or m._forward_hooks or m._forward_pre_hooks:
        return _as_module(m)
    if "forward" in m.__dict__:  # a pool's per-row routing (zs_llm.pool.route_lora)
        return _as_module(m.__dict__["forward"])
    base = m.get_base_layer()
    live = [a for a in m.active_adapters if a in m.lora_A]
    if not _plain(base):
        return _as_module(m.forward)
    if m.disable_adapters or not live or m.merged:
        return _dense(base.weight, base.bias)
    if any(a in m.lora_variant or not _plain(m.lora_A[a]) or not _plain(m.lora_B[a])
           or not isinstance(m.lora_dropout[a], nn.Identity) for a in live):
        return _as_module(m.forward)
    run = _dense(base.weight, base.bias)
    cast = getattr(m, "cast_input_dtype_enabled", True)
    adapters = [(m.lora_A[a].weight.t(), m.lora_B[a].weight.t(), m.scaling[a]) for a in live]

    def lora(x):
        result = run(x)
        dtype = result.dtype
        for a_t, b_t, scale in adapters:
            if cast:
                x = x.to(a_t.dtype)
            result = result + torch.mm(torch.mm(x, a_t), b_t) * scale
        return result.to(dtype)

    return lora


class _Layer:
    """One decoder layer's callables and KV buffers."""

    def __init__(self, layer: nn.Module, cache_shape: tuple, dtype, device):
        a, mlp = layer.self_attn, layer.mlp
        self.groups, self.scale = getattr(a, "num_key_value_groups", 1), a.scaling
        self.ln1, self.ln2 = layer.input_layernorm.forward, layer.post_attention_layernorm.forward
        self.q, self.k, self.v, self.o = (_linear_fn(getattr(a, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.q_norm = a.q_norm.forward if hasattr(a, "q_norm") else None
        self.k_norm = a.k_norm.forward if hasattr(a, "k_norm") else None
        self.gate, self.up, self.down = (_linear_fn(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj"))
        self.act = mlp.act_fn.forward
        self.keys = torch.empty(cache_shape, dtype=dtype, device=device)  # (B, H_kv, S, D)
        self.values = torch.empty(cache_shape, dtype=dtype, device=device)


def _attention(q, k, v, mask, groups: int, scale: float):
    """transformers' sdpa attention for one query token (integrations/sdpa_attention.py), without
    its Python: grouped-query heads through `enable_gqa` when there is no mask, else packed as
    (B, H_kv, groups, D) queries against the shared mask. Returns (B, H_q * D)."""
    bsz, heads, _, dim = q.shape
    kw = {}
    if groups > 1:
        if mask is None and dim <= 256:
            kw["enable_gqa"] = True
        else:
            q = q.reshape(bsz, heads // groups, groups, dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=scale, **kw)
    return out.reshape(bsz, heads * dim)


def _cached_layers(layers_hf, cache, total: int) -> list:
    """A `_Layer` per decoder layer, its key/value buffers sized for `total` positions and holding
    the prompt's keys and values from `generate`'s cache."""
    k0 = cache.layers[0].keys  # (B, H_kv, T, D)
    width = k0.shape[2]
    shape = (k0.shape[0], k0.shape[1], total, k0.shape[3])
    layers = []
    for i, layer in enumerate(layers_hf):
        lay = _Layer(layer, shape, k0.dtype, k0.device)
        lay.keys[:, :, :width] = cache.layers[i].keys
        lay.values[:, :, :width] = cache.layers[i].values
        layers.append(lay)
    return layers


def _rope_tables(backbone, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary cos and sin of positions 0..n-1 (n, D), sin with its first half negated:
    rotate_half(x) * sin == roll(x, half) * sin then (negation is exact)."""
    cos_t, sin_t = backbone.rotary_emb(backbone.embed_tokens.weight[:1],
                                       position_ids=torch.arange(n, device=device)[None])  # (1, P, D)
    half = cos_t.shape[-1] // 2
    return cos_t[0], torch.cat([-sin_t[0, :, :half], sin_t[0, :, half:]], -1)


def _mlp_residual(lay, x: torch.Tensor) -> torch.Tensor:
    """x plus the layer's gated MLP on its post-attention norm, row by row (both steps' tail)."""
    h = lay.ln2(x)
    return x + lay.down(lay.act(lay.gate(h)) * lay.up(h))


def _layer_step(lay, x: torch.Tensor, cos, sin, half: int, at: int, m, head_dim: int) -> torch.Tensor:
    """One decoder layer on one token per row (x: (B, H)), its key and value written at column `at`."""
    bsz = x.shape[0]
    h = lay.ln1(x)
    q = lay.q(h).view(bsz, -1, 1, head_dim)  # (B, H_q, 1, D)
    k = lay.k(h).view(bsz, -1, 1, head_dim)  # (B, H_kv, 1, D)
    if lay.q_norm is not None:
        q, k = lay.q_norm(q), lay.k_norm(k)
    q = q * cos + q.roll(half, -1) * sin
    k = k * cos + k.roll(half, -1) * sin
    lay.keys[:, :, at: at + 1] = k
    lay.values[:, :, at: at + 1] = lay.v(h).view(bsz, -1, 1, head_dim)
    a = _attention(q, lay.keys[:, :, : at + 1], lay.values[:, :, : at + 1], m, lay.groups, lay.scale)
    x = x + lay.o(a)
    return _mlp_residual(lay, x)


def _chunk_step(lay, x: torch.Tensor, cos, sin, half: int, at: int, causal, head_dim: int) -> torch.Tensor:
    """One decoder layer on T consecutive tokens of one sequence (x: (T, H), the rows its positions
    at..at+T-1), keys and values written at columns at..at+T-1; `causal`: the additive mask
    (groups x T, at+T), 0 where a row's token sees a column, -inf after it, its T rows repeated for
    each of a key head's `groups` query heads."""
    t = x.shape[0]
    h = lay.ln1(x)
    q = lay.q(h).view(t, -1, head_dim).transpose(0, 1)[None]  # (1, H_q, T, D)
    k = lay.k(h).view(t, -1, head_dim).transpose(0, 1)[None]  # (1, H_kv, T, D)
    if lay.q_norm is not None:
        q, k = lay.q_norm(q), lay.k_norm(k)
    q = q * cos + q.roll(half, -1) * sin
    k = k * cos + k.roll(half, -1) * sin
    lay.keys[:, :, at: at + t] = k
    lay.values[:, :, at: at + t] = lay.v(h).view(t, -1, head_dim).transpose(0, 1)[None]
    heads, groups = q.shape[1], lay.groups
    if groups > 1:  # query rows (kv head, group, token) against the shared keys (the mask: tiled per group)
        q = q.reshape(1, heads // groups, groups * t, head_dim)
    a = F.scaled_dot_product_attention(q, lay.keys[:, :, : at + t], lay.values[:, :, : at + t], attn_mask=causal,
                                       dropout_p=0.0, scale=lay.scale)
    x = x + lay.o(a.reshape(heads, t, head_dim).transpose(0, 1).reshape(t, heads * head_dim))
    return _mlp_residual(lay, x)


class _Lookup:
    """Prompt-lookup candidates: the tokens that followed the latest earlier occurrence of the
    sequence's last n tokens (n from `longest` down to 1), from an index kept as tokens arrive.
    `history`: earlier sequences (a stream's previous drafts), searched too, the sequence's own
    tokens and then the latest sequences first; a candidate never runs past a sequence's end."""

    END = -1  # between sequences: no token id, so no n-gram across it matches

    def __init__(self, ids: list[int], longest: int = 3, history=(), vocab: int | None = None):
        self.ids, self.longest, self.seen = [], longest, {}
        for seq in history:  # a token the model does not have (another tokenizer's) ends a sequence there
            for t in seq:
                t = int(t)
                self.add(t if 0 <= t and (vocab is None or t < vocab) else self.END)
            self.add(self.END)
        for t in ids:
            self.add(t)

    def add(self, tok: int) -> None:
        i = len(self.ids)  # `tok` continues every n-gram ending just before it (a sequence's end does not)
        for n in range(1, min(self.longest, i) + 1) if tok != self.END else ():
            self.seen[tuple(self.ids[i - n: i])] = i
        self.ids.append(tok)

    def candidates(self, k: int) -> list[int]:
        for n in range(min(self.longest, len(self.ids)), 0, -1):
            at = self.seen.get(tuple(self.ids[-n:]))
            if at is not None:
                out = self.ids[at: at + k]
                return out[: out.index(self.END)] if self.END in out else out
        return []


class _Net:
    """The model as the loop runs it: each layer's callables and KV buffers (holding the prompt's
    keys and values from `generate`'s cache, sized for `total` columns), the embedding, the final
    norm, the head (a module: its hooks run), RoPE tables and generate's padding mask."""

    def __init__(self, model: nn.Module, cache, total: int, attention_mask: torch.Tensor):
        backbone = model.base_model
        self.layers = _cached_layers(backbone.layers[: model.config.num_hidden_layers], cache, total)
        self.head_dim, self.groups = self.layers[0].keys.shape[3], self.layers[0].groups
        bsz, width = attention_mask.shape
        new = total - width
        self.mask = None if bool(attention_mask.bool().all()) else torch.cat(  # (B, 1, 1, S) as generate's
            [attention_mask.bool(), attention_mask.new_ones(bsz, new, dtype=torch.bool)], 1)[:, None, None, :]
        self.embed = backbone.embed_tokens.forward  # Gemma's scales its rows
        self.pos0 = attention_mask.long().sum(-1)  # (B,) the position of the first decoded token
        self.cos_t, self.sin_t = _rope_tables(backbone, int(self.pos0.max()) + new, attention_mask.device)
        self.half = self.cos_t.shape[-1] // 2
        self.norm, self.head = backbone.norm.forward, model.get_output_embeddings()

    def decode(self, tok: torch.Tensor, at: int, pos: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) fp32 after one token per row (tok (B,), at positions `pos` (B,)), its keys
        and values written at column `at`."""
        cos, sin = self.cos_t[pos][:, None, None, :], self.sin_t[pos][:, None, None, :]  # (B, 1, 1, D)
        x = self.embed(tok)  # (B, H): one token per row, kept 2-D (the same values as (B, 1, H))
        m = None if self.mask is None else self.mask[..., : at + 1]
        for lay in self.layers:
            x = _layer_step(lay, x, cos, sin, self.half, at, m, self.head_dim)
        out = self.head(self.norm(x)[:, None])[:, -1]  # (B, V): the head as a module, its hooks included
        return out.to(copy=True, dtype=torch.float32)

    def verify(self, rows: torch.Tensor, at: int, pos: int) -> torch.Tensor:
        """Logits (T, V) fp32 after each of T consecutive tokens of one unpadded row (rows (T,),
        the first at position `pos` and column `at`)."""
        t = rows.shape[0]
        at_pos = pos + torch.arange(t, device=rows.device)
        cos, sin = self.cos_t[at_pos][None, None], self.sin_t[at_pos][None, None]  # (1, 1, T, D)
        dtype = self.layers[0].keys.dtype
        causal = torch.full((t, at + t), float("-inf"), dtype=dtype, device=rows.device).triu(at + 1)
        causal = causal.repeat(self.groups, 1)
        x = self.embed(rows)
        for lay in self.layers:
            x = _chunk_step(lay, x, cos, sin, self.half, at, causal, self.head_dim)
        return self.head(self.norm(x)[None])[0].to(copy=True, dtype=torch.float32)


def _kept(cand: list[int], scores: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(token (1,), its logits (1, V)) for each greedy choice a verifying pass keeps (scores (T, V)
    after the token and `cand`): every choice up to and including the first that is not the next
    candidate (the model's own token there)."""
    chosen = torch.argmax(scores, dim=-1)
    kept = 0
    while kept < len(cand) and cand[kept] == int(chosen[kept]):
        kept += 1
    return [(chosen[j: j + 1], scores[j: j + 1]) for j in range(kept + 1)]


@torch.no_grad()
def greedy_decode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  pad_token_id: int, return_logits: bool = False, streamer=None, lookup: int = 0,
                  history=()):
    """`model.generate(input_ids, attention_mask=..., do_sample=False, max_new_tokens=...,
    pad_token_id=...)`'s sequences (B, T + n), and with `return_logits` also its raw logits
    (B, n, V) fp32, for a model `unsupported` accepts. Forward pre-hooks on the head (a method's
    hook before the head) run as in `generate`; logits processors are not supported (check first).
    `streamer` gets what generate's would: the prompt ids, each step's tokens (B,), then `end()`.

    `lookup` > 0 (one unpadded row only): prompt-lookup speculation. Where the sequence's last
    tokens occurred before, up to `lookup` tokens that followed them are verified in one pass of T
    rows and every prefix the model itself would have chosen is kept, so a pass can yield several
    tokens for one read of the weights. The kept tokens are the model's greedy choices, but a pass
    of T rows rounds differently from T passes of one (a different matrix kernel, about 1e-6 of a
    logit's size on the tested models): the tokens can differ from `generate`'s where two logits
    tie that closely (tests/test_fast_decode.py bounds the logits' distance and checks the tokens
    wherever the margin exceeds it). 0: every step one token, generate's logits bit for bit.
    `history`: earlier token sequences to look up candidates in as well (a stream's last drafts:
    they change which tokens are tried, never which are kept)."""
    if isinstance(lookup, bool) or not isinstance(lookup, int) or lookup < 0:
        raise ValueError(f"lookup={lookup!r}: give a whole number of candidate tokens a pass, 0 or more "
                         "(ZeroSiamLM.draft_lookup; 0 turns speculation off)")
    bsz, width = input_ids.shape
    first = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=1, do_sample=False,
                           temperature=None, top_p=None, top_k=None, pad_token_id=pad_token_id,
                           return_dict_in_generate=True, output_logits=return_logits)
    seqs = [input_ids, first.sequences[:, width:]]
    logits = [first.logits[0]] if return_logits else []
    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=input_ids.device)
    tok = first.sequences[:, -1]  # (B,)
    if streamer is not None:
        streamer.put(input_ids.cpu())
        streamer.put(tok.cpu())
    unfinished = ~torch.isin(tok, eos) if eos.numel() else torch.ones_like(tok, dtype=torch.bool)
    steps = max_new_tokens - 1
    if steps <= 0 or not bool(unfinished.any()):
        if streamer is not None:
            streamer.end()
        return (torch.cat(seqs, 1), torch.stack(logits, 1)) if return_logits else torch.cat(seqs, 1)

    net = _Net(model, first.cache, width + max_new_tokens, attention_mask)
    del first
    done = torch.full_like(tok, pad_token_id)
    index = (_Lookup(input_ids[0].tolist() + tok.tolist(), history=history, vocab=net.head.weight.shape[0])
             if lookup > 0 and bsz == 1 and net.mask is None else None)
    step = 0
    while step < steps:
        at = width + step  # this token's column in the cache
        cand = index.candidates(min(lookup, steps - step - 1)) if index is not None else []
        if cand:  # verify tok + cand in one pass; keep the model's choices up to the first miss
            scores = net.verify(torch.tensor([int(tok[0]), *cand], device=tok.device), at, int(net.pos0[0]) + step)
            made = _kept(cand, scores)
        else:
            scores = net.decode(tok, at, net.pos0 + step)
            made = [(torch.argmax(scores, dim=-1), scores)]
        for nxt, row_scores in made:
            if return_logits:
                logits.append(row_scores)
            tok = torch.where(unfinished, nxt, done)
            seqs.append(tok[:, None])
            if index is not None:
                index.add(int(tok[0]))
            if streamer is not None:
                streamer.put(tok.cpu())
            step += 1
            if eos.numel():
                unfinished &= ~torch.isin(tok, eos)
                if not bool(unfinished.any()):
                    break
        if eos.numel() and not bool(unfinished.any()):
            break
    if streamer is not None:
        streamer.end()
    ids = torch.cat(seqs, 1)
    return (ids, torch.stack(logits, 1)) if return_logits else ids
