"""Optional vLLM generation backend for methods that only generate (`noadapt`) on GPU machines.

vLLM is imported only when the backend is built, so everything else runs without it. The
translation from `AdaptConfig` generation fields to vLLM's `SamplingParams` is a pure
function, tested without vLLM installed.
"""

from __future__ import annotations

from typing import Any

from zs_llm.config import AdaptConfig


def vllm_sampling_kwargs(cfg: AdaptConfig, n: int = 1) -> dict[str, Any]:
    """`SamplingParams(**kwargs)` equivalent to the Hugging Face generation the harness does."""
    greedy = cfg.temperature == 0
    if greedy and n > 1:
        raise ValueError("n > 1 samples need temperature > 0")
    return {
        "n": n,
        "max_tokens": cfg.max_new_tokens,
        "temperature": 0.0 if greedy else cfg.temperature,
        "top_p": 1.0 if greedy else cfg.top_p,
        "seed": cfg.seed,
        "skip_special_tokens": True,
    }


def vllm_engine_kwargs(model: str, dtype: str, max_model_len: int | None = None) -> dict[str, Any]:
    """`LLM(**kwargs)` for a hub id or local folder; GGUF files go through vLLM's own loader."""
    kw: dict[str, Any] = {"model": model, "dtype": {"float32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                                                     "float16": "float16", "fp16": "float16"}.get(dtype, "auto")}
    if max_model_len:
        kw["max_model_len"] = max_model_len
    return kw


class VLLMBackend:
    """Batched generation through vLLM over whole sets (prompts already rendered as text)."""

    def __init__(self, model: str, dtype: str = "bfloat16", tokenizer=None, **engine_kwargs):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise ImportError("the vllm backend needs vLLM on a CUDA machine: pip install 'zs_llm[vllm]', or use "
                              "--backend hf") from e
        self.llm = LLM(**vllm_engine_kwargs(model, dtype), **engine_kwargs)

    def generate(self, prompts: list[str], cfg: AdaptConfig, n: int = 1) -> list[list[str]]:
        from vllm import SamplingParams

        outs = self.llm.generate(prompts, SamplingParams(**vllm_sampling_kwargs(cfg, n)), use_tqdm=False)
        return [[c.text for c in o.outputs] for o in outs]
