"""Optional vLLM generation backend for methods that only generate (`noadapt`) on GPU machines.

vLLM is imported only when the backend is built, so everything else runs without it. The
translation from `AdaptConfig` generation fields to vLLM's `SamplingParams` is a pure
function, tested without vLLM installed.
"""

from __future__ import annotations

from typing import Any

from zs_llm.config import AdaptConfig
from zs_llm.model import sample_seed


def vllm_sampling_kwargs(cfg: AdaptConfig, n: int = 1, seed: int | None = None) -> dict[str, Any]:
    """`SamplingParams(**kwargs)` equivalent to the Hugging Face generation the harness does
    (`seed`: the request's sampling seed, default the config's)."""
    greedy = cfg.temperature == 0
    if greedy and n > 1:
        raise ValueError("n > 1 samples need temperature > 0")
    return {
        "n": n,
        "max_tokens": cfg.max_new_tokens,
        "temperature": 0.0 if greedy else cfg.temperature,
        "top_p": 1.0 if greedy else cfg.top_p,
        "seed": cfg.seed if seed is None else seed,
        "skip_special_tokens": True,
    }


def vllm_engine_kwargs(model: str, dtype: str, max_model_len: int | None = None) -> dict[str, Any]:
    """`LLM(**kwargs)` for a hub id or local folder; GGUF files go through vLLM's own loader."""
    kw: dict[str, Any] = {"model": model, "dtype": {"float32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                                                     "float16": "float16", "fp16": "float16"}.get(dtype, "auto")}
    if max_model_len:
        kw["max_model_len"] = max_model_len
    return kw


def vllm_requests(cfg: AdaptConfig, count: int, n: int = 1, first: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """(prompt index, `SamplingParams` kwargs) of each request that answers `count` prompts `n`
    times, the prompts at stream positions first, first + 1, ... Sampling: one request per
    sample, seeded as the Hugging Face path seeds it (`sample_seed`), so every sample has its
    own recorded seed. Greedy: one request per prompt (its n answers are that one text)."""
    if cfg.temperature == 0:
        return [(j, vllm_sampling_kwargs(cfg)) for j in range(count)]
    return [(j, vllm_sampling_kwargs(cfg, seed=sample_seed(cfg.seed, first + j, k)))
            for j in range(count) for k in range(n)]


class VLLMBackend:
    """Batched generation through vLLM over whole sets (prompts already rendered as text)."""

    def __init__(self, model: str, dtype: str = "bfloat16", tokenizer=None, **engine_kwargs):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise ImportError("the vllm backend needs vLLM on a CUDA machine: pip install 'zs_llm[vllm]', or use "
                              "--backend hf") from e
        self.llm = LLM(**vllm_engine_kwargs(model, dtype), **engine_kwargs)

    def generate(self, prompts: list[str], cfg: AdaptConfig, n: int = 1, first: int = 0) -> list[list[str]]:
        """`n` answers to each prompt (`first`: the first prompt's position in its stream, which
        the sampling seeds follow; see `vllm_requests`)."""
        from vllm import SamplingParams

        requests = vllm_requests(cfg, len(prompts), n, first)
        outs = self.llm.generate([prompts[j] for j, _ in requests], [SamplingParams(**kw) for _, kw in requests],
                                 use_tqdm=False)
        texts: list[list[str]] = [[] for _ in prompts]
        for (j, _), o in zip(requests, outs):
            texts[j].append(o.outputs[0].text)
        return [t * n if len(t) == 1 else t for t in texts]
