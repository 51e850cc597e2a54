"""The library calls: `load` (a model, wrapped) and `adapt_generate` (wrap a model when needed, adapt
on one prompt, answer it)."""

from __future__ import annotations

import torch

from .config import AdaptConfig
from .loading import EMBEDDED, load_model
from .model import ZeroSiamLM, check_prompt


def adapt_generate(model, prompt, tokenizer=None, return_result: bool = False, problem_id: str | None = None,
                   **overrides):
    """Adapt on `prompt` and answer it: the library call.

    model: a `ZeroSiamLM`, or a plain Hugging Face causal LM together with `tokenizer=` (it is
    wrapped on the fly with `AdaptConfig(**overrides)`, adapted from scratch on this prompt alone,
    and unwrapped again; keep a `ZeroSiamLM` to adapt across prompts). A model that already
    carries peft adapters is refused (`ZeroSiamLM` says how to merge or drop them). prompt: a
    string or chat messages. overrides: `AdaptConfig` fields; on an existing `ZeroSiamLM` only
    generation fields may change per call.
    Returns the answer text, or an `AdaptResult` when `return_result=True`.
    """
    check_prompt(prompt)  # before a plain model is wrapped (in place)
    if not isinstance(model, ZeroSiamLM):
        if tokenizer is None:
            raise ValueError("adapt_generate needs tokenizer= to wrap a plain model (or pass a ZeroSiamLM)")
        lm = ZeroSiamLM(model, tokenizer, AdaptConfig().replace(**overrides))
        try:
            result = lm.adapt_generate(prompt, problem_id)
        finally:
            lm.unwrap()  # the one-off wrapper's LoRA goes with it: `model` is plain again
    else:
        live = {"max_new_tokens", "temperature", "top_p", "seed"}
        bad = sorted(set(overrides) - live)
        if bad:
            raise ValueError(f"{bad} cannot change on an existing ZeroSiamLM (only {sorted(live)}); build a new "
                             "ZeroSiamLM with AdaptConfig(...) instead")
        old = model.zs_config
        model.zs_config = old.replace(**overrides)
        model.method.config = model.zs_config
        try:
            result = model.adapt_generate(prompt, problem_id)
        finally:
            model.zs_config = old
            model.method.config = old
    return result if return_result else result.answer


def load(name_or_path: str = EMBEDDED, gguf_file: str | None = None, dtype: str | torch.dtype | None = None,
         device: str | None = None, **config):
    """Load a model and wrap it: `zs_llm.load("meta-llama/Llama-3.1-8B-Instruct", dtype="bf16", lr=1e-4)`.
    Keyword arguments other than the loading ones are `AdaptConfig` fields."""
    cfg = AdaptConfig().replace(**config)
    model, tokenizer = load_model(name_or_path, gguf_file=gguf_file, dtype=dtype, device=device)
    return ZeroSiamLM(model, tokenizer, cfg)
