"""Generation from the target branch: what `ZeroSiamLM` does with text (prompts rendered and
encoded, greedy drafts through `zs_llm.decode` or `generate`, LoRA folded for generation, decoding).
A mixin of `ZeroSiamLM`, kept apart so the wrapper's class holds its state and adapters only; like
`model.py` it imports no loop or pool (tests/test_layers.py)."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import warnings
from typing import Any

import torch
from torch import nn

from .decode import greedy_decode, unsupported

#: the chat roles a prompt may use (every chat template we render knows these three)
CHAT_ROLES = ("system", "user", "assistant")


def prompt_ids(tokenizer, prompt: str | list[dict]) -> torch.Tensor:
    """Token ids (1, T) of a prompt rendered by `render_prompt`, on the CPU."""
    text = render_prompt(tokenizer, prompt)
    return tokenizer(text, add_special_tokens=not getattr(tokenizer, "chat_template", None),
                     return_tensors="pt").input_ids


def context_length(config) -> int | None:
    """The longest sequence a model's config allows, or None where it names none."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def sample_seed(seed: int, problem: int, sample: int = 0) -> int:
    """The sampling seed of sample `sample` of the `problem`-th problem (`problems_seen`) under
    `AdaptConfig.seed` `seed`. Sample 0 (the draft, and an answer regenerated after the update)
    keeps `seed + problem`, as it always had; each further sample takes 63 bits of a sha256 of
    all three, so no two samples of a stream share a generator state."""
    if sample == 0:
        return seed + problem
    digest = hashlib.sha256(f"{seed}:{problem}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Generation:
    """Encoding and generation for `ZeroSiamLM` (its attributes: `hf`, `tokenizer`, `zs_config`,
    `method`, `head`, `peft`, `problems_seen`, `activate`, `merge_lora_for_generation`)."""

    # --- text (the mixin of ZeroSiamLM: encoding, generation from the target branch, decoding) ---------------------------------------------------------------------------
    def encode(self, prompt: str | list[dict]) -> torch.Tensor:
        """Token ids (1, T) of a prompt rendered by `render_prompt`."""
        ids = prompt_ids(self.tokenizer, prompt)
        limit = self.context_length
        if limit is not None and ids.shape[1] >= limit:
            raise ValueError(f"prompt is {ids.shape[1]} tokens, the model's context is {limit}: shorten the prompt")
        return ids.to(self.device)

    @property
    def context_length(self) -> int | None:
        return context_length(self.hf.config)

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     max_new_tokens: int | None = None, return_logits: bool = False, seed: int | None = None,
                     streamer=None):
        """Generate from the target branch (LoRA active, no predictor) with the method's hooks.
        Returns only the new tokens, (B, n); with `return_logits`, also the model's raw logits
        (before any logits processor or sampling warper) that produced them, (B, n, V) fp32.
        Sampling (temperature > 0) seeds torch with `seed`, by default this problem's
        `sample_seed(config.seed, problems_seen)`: the same seed and state give the same text.
        `streamer`: a `transformers` streamer that gets the tokens as they are generated."""
        c = self.zs_config
        self.activate()
        max_new = max_new_tokens or c.max_new_tokens
        if self.context_length is not None:
            max_new = max(1, min(max_new, self.context_length - input_ids.shape[1]))
        tok = self.tokenizer
        kw: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": c.temperature > 0}
        if c.temperature > 0:
            kw.update(temperature=c.temperature, top_p=c.top_p)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        procs = self.method.logits_processors(self)
        if procs:
            from transformers import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList(procs)
        if streamer is not None:
            kw["streamer"] = streamer
        pre = self.method.head_pre_hook(self)
        handle = self.head.register_forward_pre_hook(lambda m, args: (pre(args[0]),)) if pre else None
        was_training = self.hf.training
        self.hf.eval()
        try:
            if c.temperature > 0:
                torch.manual_seed(sample_seed(c.seed, self.problems_seen) if seed is None else seed)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
            with self.lora_merged():
                if self.fast_greedy(ids.shape[1] + max_new, procs):
                    history = self.__dict__.setdefault("_lookup_history", collections.deque(maxlen=8))
                    if self.draft_lookup and self.head.weight.dtype != torch.float32:
                        self._warn_lookup_precision()
                    out = greedy_decode(self.hf, ids, mask, max_new, pad, return_logits, streamer,
                                        lookup=self.draft_lookup, history=history)
                    if self.draft_lookup and ids.shape[0] == 1:
                        history.append((out[0] if return_logits else out)[0].tolist())
                    return (out[0][:, ids.shape[1]:], out[1]) if return_logits else out[:, ids.shape[1]:]
                out = self.hf.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad,
                                       output_logits=return_logits, return_dict_in_generate=return_logits, **kw)
        finally:
            if handle is not None:
                handle.remove()
            if was_training:
                self.hf.train()
        if not return_logits:
            return out[:, input_ids.shape[1]:]
        return out.sequences[:, input_ids.shape[1]:], torch.stack(out.logits, 1)

    #: greedy drafts through `zs_llm.decode.greedy_decode` (generate's tokens and logits, bit for bit
    #: on the tested kernels, with less per-token overhead) where it covers the model; False: `generate`
    fast_greedy_drafts = True
    #: > 0: greedy drafts of one row verify up to this many prompt-lookup candidates a pass (tokens
    #: that followed the same last tokens in the prompt, the draft so far or this stream's last 8
    #: drafts; `zs_llm.decode.greedy_decode`'s `lookup`). Faster on repetitive text, the tokens
    #: are the model's greedy choices, but a pass of several rows rounds differently (about 1e-6 of
    #: a logit), so a near-tie can go the other way: 0 keeps drafts bit-equal to `generate`. 2 suits
    #: a CPU, whose matrix kernels stay bandwidth-bound up to 3 rows (docs/benchmarks.md).
    draft_lookup = 0

    def clear_draft_history(self) -> None:
        """Forget the drafts `draft_lookup` searches for candidates (`reset` does too)."""
        self.__dict__.pop("_lookup_history", None)

    def _warn_lookup_precision(self) -> None:
        """Once per wrapper: lookup with weights below fp32 changes drafts often, not at rare near-ties."""
        if not self.__dict__.get("_lookup_warned"):
            self._lookup_warned = True
            warnings.warn(f"draft_lookup={self.draft_lookup} with {self.head.weight.dtype} weights: logits this "
                          "coarse tie often, and a verifying pass rounds differently from a one-token step, so "
                          "drafts differ from generate's (SmolLM2 bf16: 5 of 12 drafts of 128 tokens). Set "
                          "draft_lookup = 0 for generate's drafts, or use fp32 weights.", stacklevel=3)

    def fast_greedy(self, total_length: int, processors=()) -> bool:
        """Whether a greedy generation of `total_length` tokens (prompt + new) takes the fast loop:
        `fast_greedy_drafts` on, greedy decoding, no logits processors, a model it covers."""
        return (self.fast_greedy_drafts and self.zs_config.temperature == 0 and not processors
                and unsupported(self.hf, total_length) is None)

    # Folding into a bf16 / fp16 weight rounds away every update entry below half an ulp of its
    # weight (4e-5 at |w| = 0.02), entries that the training forward keeps and that act together
    # along a row: on SmolLM2 bf16 after 8 problems the folded drafts' logits were 1.6 away from
    # the training forward's (its own KV-cache noise: 0.95). True folds anyway, for speed.
    fold_lora_into_low_precision = False

    @contextlib.contextmanager
    def lora_merged(self):
        """Inside: every LoRA layer whose base weight is fp32 runs as one matmul on a temporary
        copy of that weight with the update folded in (W + scale * B A), instead of three
        (generation is launch- and bandwidth-bound). The original weight tensors are put back
        untouched on exit, so nothing drifts. Layers with bf16 / fp16 base weights keep peft's
        unmerged path, the training forward's own computation (a fold would round small updates
        away; `fold_lora_into_low_precision = True` folds them too), as do layers whose base is
        not a plain Linear / Conv1D. `merge_lora_for_generation = False` on the wrapper turns
        folding off everywhere."""
        swapped = []
        try:
            if self.peft is not None and self.merge_lora_for_generation:
                with torch.no_grad():
                    for m, base in self._foldable():
                        w = base.weight
                        names = [a for a in m.active_adapters if a in m.lora_A]
                        merged = w.detach().clone()
                        for a in names:
                            merged += m.get_delta_weight(a).to(w.dtype)
                        swapped.append((m, base, w))
                        base.weight = nn.Parameter(merged, requires_grad=False)
                        m.merged_adapters = names
            yield
        finally:  # also when folding itself failed half way: no layer stays folded
            for m, base, w in swapped:
                base.weight = w
                m.merged_adapters = []

    def _foldable(self) -> list:
        """(peft LoRA layer, its base layer) for each layer `lora_merged` folds."""
        from peft.tuners.lora.layer import Linear as LoraLinear
        from transformers.pytorch_utils import Conv1D

        out = []
        for m in self.hf.modules():
            if not isinstance(m, LoraLinear) or m.merged or any(m.lora_bias.values()):
                continue
            base = m.get_base_layer()
            if type(base) not in (nn.Linear, Conv1D) or m.lora_variant:
                continue
            if base.weight.dtype.itemsize < 4 and not self.fold_lora_into_low_precision:
                continue
            out.append((m, base))
        return out

    def decode(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_texts(self, prompts: list, batch_size: int = 8, max_new_tokens: int | None = None) -> list[str]:
        """Plain batched generation (left padding, KV cache) of many prompts from the target
        branch. Used for methods that do not adapt (`noadapt`, `eminf`)."""
        return [self.decode(row) for row in self.generate_batches(prompts, batch_size, max_new_tokens)]

    def generate_batches(self, prompts: list, batch_size: int = 8, max_new_tokens: int | None = None) -> list:
        """The new token ids of each prompt (`generate_texts` before decoding), `batch_size` prompts
        at a time, left-padded."""
        tok = self.tokenizer
        outs: list = []
        for i in range(0, len(prompts), batch_size):
            encoded = [self.encode(p)[0] for p in prompts[i:i + batch_size]]
            width = max(len(e) for e in encoded)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            ids = torch.full((len(encoded), width), pad, dtype=torch.long, device=self.device)
            mask = torch.zeros_like(ids)
            for j, e in enumerate(encoded):
                ids[j, width - len(e):] = e
                mask[j, width - len(e):] = 1
            outs.extend(self.generate_ids(ids, mask, max_new_tokens))
        return outs


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The text a prompt becomes. Chat messages, or a plain string (as one user message), go
    through the tokenizer's chat template when it has one; without a template, messages are
    written as "role: content" lines ending in "assistant:" and a string is used as it is."""
    check_prompt(prompt)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant:"


def check_prompt(prompt) -> None:
    """Refuse, in one line that says what to fix, a prompt that is not text or chat messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("empty prompt: give adapt_generate a question to answer")
        texts = [("the prompt", prompt)]
    elif isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("empty chat: give adapt_generate at least one message")
        texts = []
        for i, m in enumerate(prompt):
            if not isinstance(m, dict):
                raise ValueError(f"chat message {i} is a {type(m).__name__}; each message is a dict "
                                 "{'role': ..., 'content': ...}")
            for key in ("role", "content"):
                if not isinstance(m.get(key), str):
                    what = "has no" if key not in m else f"has a {type(m[key]).__name__} as its"
                    raise ValueError(f"chat message {i} {what} {key!r}; each message is a dict with 'role' and "
                                     "'content' strings")
            if m["role"] not in CHAT_ROLES:
                raise ValueError(f"chat message {i} has role {m['role']!r}; the roles are {', '.join(CHAT_ROLES)}")
            texts.append((f"chat message {i}", m["content"]))
        if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
            raise ValueError("the chat has no user message with text: give adapt_generate a question to answer "
                             "(a {'role': 'user', 'content': ...} message that is not blank)")
    else:
        raise ValueError(f"the prompt is {type(prompt).__name__}; give a string or a list of chat messages "
                         "[{'role': 'user', 'content': ...}]")
    for where, text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{where} holds a lone surrogate {text[e.start]!r} at character {e.start}, which is not "
                             "text; repair it first, e.g. s.encode('utf-8', 'replace').decode('utf-8')") from None
