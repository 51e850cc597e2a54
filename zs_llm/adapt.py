"""The per-problem adaptation loop and `adapt_generate`, the library call.

Per problem: (episodic: reset) -> method hook -> draft from the target branch -> `steps`
optimizer steps on the loss over the draft's tokens (or the prompt's) -> the answer (the draft,
or a new generation after the update). Non-finite losses or gradients skip the step and leave
the state as it was before it.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .config import AdaptConfig
from .methods import LossBatch


@dataclass
class AdaptResult:
    """What one problem produced: the texts, per-step stats and timings."""

    problem_id: str | None
    draft: str | None
    answer: str
    steps: list[dict] = field(default_factory=list)
    method_stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    draft_tokens: int = 0
    answer_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _trim(ids: torch.Tensor, eos_ids: set[int], pad_id: int | None) -> torch.Tensor:
    """Cut a generated row after its first end-of-sequence token (kept) and drop padding."""
    row = ids.tolist()
    for i, t in enumerate(row):
        if t in eos_ids:
            return ids[: i + 1]
    return ids


def _eos_ids(lm) -> set[int]:
    ids = set()
    for src in (lm.tokenizer.eos_token_id, getattr(lm.hf.generation_config, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids


def make_batch(prompt_ids: torch.Tensor, draft_ids: torch.Tensor | None, signal: str) -> LossBatch | None:
    """Positions whose next-token distributions enter the loss.

    response: the distributions that produced the draft's tokens (positions P-1 .. P+n-2);
    prompt: every prompt position's next-token prediction (0 .. P-2, labels the prompt itself).
    """
    p = prompt_ids.shape[1]
    if signal == "response":
        if draft_ids is None or draft_ids.numel() == 0:
            return None
        seq = torch.cat([prompt_ids, draft_ids.view(1, -1).to(prompt_ids.device)], 1)
        n = draft_ids.numel()
        pos = torch.arange(p - 1, p - 1 + n, device=prompt_ids.device)
        return LossBatch(seq, pos, seq[0, p:])
    if p < 2:
        return None
    return LossBatch(prompt_ids, torch.arange(p - 1, device=prompt_ids.device), prompt_ids[0, 1:])


def _all_finite(tensors) -> bool:
    """No NaN or infinity in any of `tensors` (None entries skipped). Read-only: min and max
    per tensor, which propagate NaN, checked at once (one host sync, no (H, H) temporaries:
    `isfinite(t).all()` costs ~30x more on a CPU for the 8B predictor)."""
    ext = [torch.stack(torch.aminmax(t.detach())) for t in tensors if t is not None and t.numel()]
    if not ext:
        return True
    return bool(torch.isfinite(torch.cat([e.to(ext[0].device) for e in ext])).all())


def _keep_draft_logits(lm) -> bool:
    """Whether the draft's logits serve as the first step's target branch: the method has one
    apart from its online branch (a predictor), generation is that branch unaltered (no hook
    before the head), and the logits fit `draft_logits_mib`."""
    c, m = lm.zs_config, lm.method
    if not m.uses_predictor or m.head_pre_hook(lm) is not None:
        return False
    return c.max_new_tokens * lm.head.weight.shape[0] * 4 <= c.draft_logits_mib * 2**20


def adapt_step(lm, batch: LossBatch, problem_id: str | None = None) -> dict:
    """One optimizer step of `lm.method` on `batch`. Returns the step's stats."""
    t0, before = begin_step(lm)
    stats = lm.method.backward(lm, batch)
    return end_step(lm, stats, before, t0, problem_id)


def begin_step(lm) -> tuple[float, dict]:
    """Before a step's backward: the time and the state to restore if the step goes non-finite."""
    t0 = time.perf_counter()
    before = lm.snapshot()
    lm.optimizer.zero_grad(set_to_none=True)
    return t0, before


def end_step(lm, stats: dict, before: dict, t0: float, problem_id: str | None = None) -> dict:
    """After a step's backward (gradients in `lm`'s parameters): check, clip, step the optimizer,
    or restore `before` when anything is non-finite. Returns the step's stats.

    The skip is ours for every method: no official code checks, so there a NaN loss or
    gradient would enter the weights and every later prediction (docs/protocol.md)."""
    params = lm.trainable_parameters()
    ok = math.isfinite(stats["loss"]) and _all_finite(p.grad for p in params)
    grad_norm = None
    if ok:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            if lm.zs_config.grad_clip is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, lm.zs_config.grad_clip))
            else:
                grad_norm = float(torch.sqrt(sum(g.float().pow(2).sum() for g in grads)))
        lm.optimizer.step()
        ok = _all_finite(params)
    lm.optimizer.zero_grad(set_to_none=True)
    if not ok:
        lm.restore(before)
        warnings.warn(f"non-finite loss or gradient on problem {problem_id!r}: step skipped, state restored",
                      RuntimeWarning, stacklevel=3)
    stats.update(skipped=not ok, grad_norm=grad_norm, time_s=time.perf_counter() - t0,
                 predictor_dev=lm.predictor.deviation() if lm.method.uses_predictor else None)
    return stats


def adapt_on_problem(lm, prompt, problem_id: str | None = None) -> AdaptResult:
    """Adapt `lm` (a `ZeroSiamLM`) on one problem and answer it."""
    c: AdaptConfig = lm.zs_config
    method = lm.method
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    events: list[str] = []
    prompt_ids = lm.encode(prompt)  # before the reset: a prompt that is refused changes nothing
    if c.schedule == "episodic":
        seen = lm.problems_seen
        lm.reset()
        lm.problems_seen = seen  # sampling seeds still follow the problem
    eos, pad = _eos_ids(lm), lm.tokenizer.pad_token_id

    t = time.perf_counter()
    method_stats = method.on_problem_start(lm, prompt_ids)
    timings["method_s"] = time.perf_counter() - t

    adapts = method.adapts and method.loop_update and lm.adapt_enabled
    draft_ids = draft_logits = None
    if (adapts and c.signal == "response") or c.answer == "draft" or not adapts:
        t = time.perf_counter()
        if adapts and c.signal == "response" and _keep_draft_logits(lm):
            new_ids, logits = lm.generate_ids(prompt_ids, return_logits=True)
            draft_ids = _trim(new_ids[0], eos, pad)
            draft_logits = logits[0, : draft_ids.numel()]
        else:
            draft_ids = _trim(lm.generate_ids(prompt_ids)[0], eos, pad)
        timings["draft_s"] = time.perf_counter() - t

    steps: list[dict] = []
    t = time.perf_counter()
    if adapts:
        batch = make_batch(prompt_ids, draft_ids, c.signal)
        if batch is None:
            events.append("no tokens to adapt on: update skipped")
        else:
            batch.target_logits = draft_logits  # the first step's state is the draft's: its target logits
            for _ in range(c.steps):
                steps.append(adapt_step(lm, batch, problem_id))
                batch.target_logits = None  # stale once the step moved the state
                if steps[-1]["skipped"]:
                    events.append("non-finite step skipped")
    timings["adapt_s"] = time.perf_counter() - t

    if adapts and c.answer == "regenerate":
        t = time.perf_counter()
        answer_ids = _trim(lm.generate_ids(prompt_ids)[0], eos, pad)
        timings["answer_s"] = time.perf_counter() - t
    else:
        answer_ids = draft_ids
    lm.problems_seen += 1
    answer_text = lm.decode(answer_ids)
    if lm.guard is not None and adapts:
        event = lm.guard.observe(answer_text, steps, problem_id)
        if event:
            events.append(event)
            warnings.warn(f"problem {problem_id!r}: {event}", RuntimeWarning, stacklevel=2)
    timings["total_s"] = time.perf_counter() - t_start
    return AdaptResult(
        problem_id=problem_id,
        draft=None if draft_ids is None else lm.decode(draft_ids),
        answer=answer_text,
        steps=steps,
        method_stats=method_stats,
        timings=timings,
        events=events,
        prompt_tokens=int(prompt_ids.shape[1]),
        draft_tokens=0 if draft_ids is None else int(draft_ids.numel()),
        answer_tokens=int(answer_ids.numel()),
    )
