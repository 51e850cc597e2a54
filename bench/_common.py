"""Helpers shared by the benchmark scripts: the model, prompts, fixed generation length, medians."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def load_smollm2(dtype: str = "float32", device: str = "cpu"):
    from zs_llm import load_model

    return load_model("smollm2-135m-instruct", dtype=dtype, device=device)


def arith_messages(n: int, seed: int = 0, style: str = "boxed") -> list[list[dict]]:
    """Chat messages of the first `n` problems of the seeded `arith` set."""
    from eval.datasets import load_problems
    from eval.prompting import build_messages

    return [build_messages(p.question, style) for p in load_problems("arith", limit=n, seed=seed)]


@contextlib.contextmanager
def fixed_length(*models, tokens: int):
    """Every `generate` of these models produces exactly `tokens` new tokens (EOS suppressed
    until then), so methods and backends are timed on the same amount of generation."""
    saved = [(m.generation_config.min_new_tokens, m.generation_config.max_new_tokens) for m in models]
    for m in models:
        m.generation_config.min_new_tokens = tokens
        m.generation_config.max_new_tokens = tokens
    try:
        yield
    finally:
        for m, (lo, hi) in zip(models, saved):
            m.generation_config.min_new_tokens, m.generation_config.max_new_tokens = lo, hi


def timed(fn, *args, **kw):
    """(result, seconds)."""
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def median_ms(xs) -> str:
    return f"{statistics.median(xs) * 1000:.0f} ms"


def ratio(a, b) -> float:
    return statistics.median(a) / statistics.median(b)
