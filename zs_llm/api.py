"""The library calls: `load` (a model, wrapped), `adapt_generate` (wrap a model when needed, adapt
on one prompt, answer it) and `Streams` (several adapting streams on one model, answered together).
They drive the loop of `zs_llm.adapt`."""

from __future__ import annotations

import torch

from .adapt import AdaptResult, adapt_round
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
            result = adapt_round([(lm, prompt, problem_id)])[0]
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
            result = adapt_round([(model, prompt, problem_id)])[0]
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


class Streams:
    """Several adapting streams hosted on one model, by name.

    A stream is a `ZeroSiamLM` of its own (its own LoRA adapter, predictor, optimizer, method
    state, guard and problem count) sharing `lm`'s base model, so
    `zs_llm.adapt_generate(streams.stream("math500/zerosiam"), prompt)` adapts that stream alone,
    and `streams.adapt_generate({name: prompt, ...})` answers one problem of several streams in
    one batch. A new stream starts exactly as a new `ZeroSiamLM` with its config would.
    """

    def __init__(self, lm: ZeroSiamLM):
        self.host = lm
        self._streams: dict[str, ZeroSiamLM] = {}

    def stream(self, name: str, config: AdaptConfig | dict | None = None) -> ZeroSiamLM:
        """The stream `name`, created on first use with `config` (default: the host's)."""
        if isinstance(config, dict):
            config = AdaptConfig.from_dict(config)
        if name in self._streams:
            s = self._streams[name]
            if config is not None and config.hash() != s.zs_config.hash():
                raise ValueError(f"stream {name!r} exists with another config; remove({name!r}) first")
            return s
        s = ZeroSiamLM(self.host.hf, self.host.tokenizer, config or self.host.zs_config, share=self.host)
        self._streams[name] = s
        return s

    @property
    def streams(self) -> dict[str, ZeroSiamLM]:
        """The streams hosted, by name."""
        return dict(self._streams)

    def remove(self, stream: str | ZeroSiamLM) -> None:
        """Drop a stream (by name, or the stream itself) and free its adapter, predictor and
        optimizer state."""
        name = stream if isinstance(stream, str) else next((n for n, s in self._streams.items() if s is stream), None)
        if name not in self._streams:
            raise KeyError(f"no stream {stream!r} here; the streams are {sorted(self._streams)}")
        s = self._streams.pop(name)
        s.drop_adapter()
        s.optimizer = None

    def adapt_generate(self, prompts: dict, problem_ids: dict | None = None) -> dict[str, AdaptResult]:
        """One problem for each of several streams, answered together: `{name: prompt}` ->
        `{name: AdaptResult}`. Each stream sees exactly what it would alone (drafts generated in
        one batch, each row through its own stream's adapter; updates one forward and backward
        over the pool, each stream's loss and optimizer its own). A name not yet hosted becomes a
        stream with the host's config: create streams with other configs first (`stream`)."""
        ids = problem_ids or {}
        items = [(self.stream(n), p, ids.get(n)) for n, p in prompts.items()]
        return dict(zip(prompts, adapt_round(items)))
