"""The per-problem adaptation loop, written for a pool of streams (one stream is a pool of one).

Per problem: (episodic: reset) -> method hook -> draft from the target branch -> `steps`
optimizer steps on the loss over the draft's tokens (or the prompt's) -> the answer (the draft,
or a new generation after the update). Non-finite losses or gradients skip the step and leave
the state as it was before it.

`adapt_round` takes one problem for each of several streams (`ZeroSiamLM`s sharing one model,
`zs_llm.Streams`) and gives every stream what it would get alone:

- greedy drafts (and regenerated answers) of two or more streams come from one batched generation
  (`zs_llm.pool.generate_rows`: `zs_llm.decode`'s loop, or `generate`), every row through its own
  stream's LoRA, head hook and logits processors; a lone greedy row, and every sampled row (temperature > 0: the sampler draws from
  one RNG per call), generates on its own (`ZeroSiamLM.generate_ids`, which folds fp32 LoRA
  into the weights for speed); only a draft generated on its own keeps its logits as the first
  step's target branch (`draft_logits_mib`), since a batched row's logits round with the batch's
  padding, that is with the prompts of streams that share only the draft;
- the updates of two or more streams whose method computes the loss with `Method.loss` and steps
  as `Method.backward` does are one forward and one backward over their sequences
  (`zs_llm.pool.pooled_hidden`); then each stream's own finiteness check, clipping and optimizer
  step run (`end_step`), so momentum and Adam step counts are per stream. Other methods (SAR's
  two SAM passes and model recovery, ZeroSiam+EATA's no-step rule), and a lone stream, step on
  their own (`adapt_step`).

Rows of a pool match a stream run alone up to the rounding of batched matmuls and of the
unmerged LoRA path.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .config import AdaptConfig
from .methods import LossBatch, Method
from .pool import generate_rows, pooled_hidden


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


def trim_at_eos(ids: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """Cut a generated row (n,) after its first end-of-sequence token (kept)."""
    for i, t in enumerate(ids.tolist()):
        if t in eos:
            return ids[: i + 1]
    return ids


def eos_ids(lm) -> set[int]:
    """The token ids that end a generation: the tokenizer's and the generation config's."""
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
    before the head), and the logits fit `draft_logits_mib`. Only a draft generated alone gives
    them (`_generate`): in a batch of drafts they would depend on the other rows' padding."""
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


def joins_pooled_update(lm) -> bool:
    """Whether a stream's update can join a pool's one forward and backward: its method computes
    the loss with `Method.loss` and steps as `Method.backward` does."""
    m = type(lm.method)
    return m.backward is Method.backward and m.loss is Method.loss


def pooled_step(items: list[tuple]) -> list[dict]:
    """One optimizer step for each (stream, LossBatch, problem_id) of `items`, the streams'
    sequences in one forward and one backward (`pooled_hidden`). Returns each stream's step
    stats, as `adapt_step` would."""
    lms = [lm for lm, _, _ in items]
    t_start = time.perf_counter()
    prep = [begin_step(lm) for lm in lms]
    stats, losses = [], []
    with pooled_hidden(lms, [b.input_ids for _, b, _ in items]) as h:  # (S, T, H)
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


# --- the loop -------------------------------------------------------------------------------
class _Problem:
    """One stream's problem through a round."""

    def __init__(self, lm, prompt, problem_id, on_token=None):
        self.lm, self.problem_id, self.on_token = lm, problem_id, on_token
        c: AdaptConfig = lm.zs_config
        method = lm.method
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
        lm.activate()
        self.method_stats = method.on_problem_start(lm, self.prompt_ids)
        self.timings["method_s"] = time.perf_counter() - t
        self.adapts = method.adapts and method.loop_update and lm.adapt_enabled
        self.wants_draft = (self.adapts and c.signal == "response") or c.answer == "draft" or not self.adapts
        self.keep_logits = self.adapts and c.signal == "response" and _keep_draft_logits(lm)
        self.draft_ids = self.draft_logits = self.answer_ids = self.batch = None

    @property
    def answers_with_draft(self) -> bool:
        """Whether the draft is the answer (no regeneration after the update)."""
        return not (self.adapts and self.lm.zs_config.answer == "regenerate")

    def result(self) -> AdaptResult:
        """Count the problem, decode the answer, let the guard see it."""
        lm = self.lm
        answer_ids = self.answer_ids if self.answer_ids is not None else self.draft_ids
        lm.problems_seen += 1
        answer_text = lm.decode(answer_ids)
        if lm.guard is not None and self.adapts:
            event = lm.guard.observe(answer_text, self.steps, self.problem_id)
            if event:
                self.events.append(event)
                warnings.warn(f"problem {self.problem_id!r}: {event}", RuntimeWarning, stacklevel=3)
        self.timings["total_s"] = time.perf_counter() - self.t_start
        return AdaptResult(
            problem_id=self.problem_id, draft=None if self.draft_ids is None else lm.decode(self.draft_ids),
            answer=answer_text, steps=self.steps, method_stats=self.method_stats, timings=self.timings,
            events=self.events, prompt_tokens=int(self.prompt_ids.shape[1]),
            draft_tokens=0 if self.draft_ids is None else int(self.draft_ids.numel()),
            answer_tokens=int(answer_ids.numel()))


def _generate(problems: list[_Problem], logits: bool, streamed: list[bool] | None = None) -> list[tuple]:
    """(new token ids (n,) cut at the first end-of-sequence token, logits (n, V) or None) for each
    problem: greedy rows batched when there are several, a lone greedy row and sampled rows alone.
    Logits come only with rows generated alone (`logits` and the problem's `keep_logits`).
    `streamed[i]`: problem i's tokens go to its `on_token` as they are generated (it gets every
    token of the row, past the end token and its limit too: it cuts them itself)."""
    from .pool import RowStreamer

    out: list = [None] * len(problems)
    cbs = [p.on_token if streamed and streamed[i] else None for i, p in enumerate(problems)]
    greedy = [i for i, p in enumerate(problems) if p.lm.zs_config.temperature == 0]
    pooled = greedy if len(greedy) > 1 else []
    for i, p in enumerate(problems):
        if i in pooled:
            continue
        streamer = RowStreamer([cbs[i]]) if cbs[i] is not None else None
        if logits and p.keep_logits:
            ids, lg = p.lm.generate_ids(p.prompt_ids, return_logits=True, streamer=streamer)
            out[i] = (ids[0], lg[0])
        else:
            out[i] = (p.lm.generate_ids(p.prompt_ids, streamer=streamer)[0], None)
    if pooled:
        # no logits kept from a batch: a row's logits round with the batch's left padding, i.e. with
        # the other streams' prompts, so a target branch taken from them would make a stream's update
        # depend on streams that share only its draft (a rerun that resumes those elsewhere differs)
        rows = generate_rows([problems[i].lm for i in pooled], [problems[i].prompt_ids for i in pooled],
                             None, [cbs[i] for i in pooled])
        for i, r in zip(pooled, rows):
            out[i] = r
    for i, (ids, lg) in enumerate(out):
        ids = trim_at_eos(ids, eos_ids(problems[i].lm))
        out[i] = (ids, None if lg is None else lg[: ids.numel()])
    return out


def _timed(problems: list[_Problem], key: str, t: float) -> None:
    """Share the time since `t` equally among `problems` as timing `key`."""
    dt = (time.perf_counter() - t) / len(problems)
    for p in problems:
        p.timings[key] = dt


def _draft(problems: list[_Problem]) -> None:
    drafting = [p for p in problems if p.wants_draft]
    if not drafting:
        return
    t = time.perf_counter()
    streamed = [p.on_token is not None and p.answers_with_draft for p in drafting]
    for p, (ids, lg) in zip(drafting, _generate(drafting, logits=True, streamed=streamed)):
        p.draft_ids = ids
        if p.keep_logits:
            p.draft_logits = lg  # the first step's state is the draft's: its target logits
    _timed(drafting, "draft_s", t)


def _update(problems: list[_Problem]) -> None:
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
        joint = [p for p in live if joins_pooled_update(p.lm)]
        joint = joint if len(joint) > 1 else []
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
    _timed(problems, "adapt_s", t)


def _answer(problems: list[_Problem]) -> None:
    regen = [p for p in problems if p.adapts and p.lm.zs_config.answer == "regenerate"]
    if not regen:
        return
    t = time.perf_counter()
    for p, (ids, _) in zip(regen, _generate(regen, logits=False, streamed=[p.on_token is not None for p in regen])):
        p.answer_ids = ids
    _timed(regen, "answer_s", t)


def adapt_round(items: list[tuple], on_token: list | None = None) -> list[AdaptResult]:
    """Adapt each (stream, prompt, problem_id) of `items` on its problem and answer it: the loop.
    Several streams are pooled (see the module's docstring); they must be distinct and share one
    model. Returns one `AdaptResult` per item, in order.

    `on_token[i]` (a callable or None) receives item i's answer token ids one at a time while the
    generation that produces the answer runs (the draft, or the regeneration after the update when
    `answer="regenerate"`): every row's token including those after its end token and past its own
    `max_new_tokens` when it shares a batch, so the callback cuts at either (as `result().answer`
    is cut)."""
    lms = [lm for lm, _, _ in items]
    if len({id(lm) for lm in lms}) != len(lms):
        raise ValueError("a stream appears twice in one round: each stream answers its problems in order")
    if len({id(lm.shared) for lm in lms}) > 1:
        raise ValueError("the streams of a pool must share one model (make them with zs_llm.Streams(lm).stream)")
    cbs = on_token or [None] * len(items)
    problems = [_Problem(lm, prompt, pid, cb) for (lm, prompt, pid), cb in zip(items, cbs)]
    _draft(problems)
    _update(problems)
    _answer(problems)
    return [p.result() for p in problems]


def adapt_on_problem(lm, prompt, problem_id: str | None = None) -> AdaptResult:
    """Adapt `lm` (a `ZeroSiamLM`) on one problem and answer it: a round of one stream."""
    return adapt_round([(lm, prompt, problem_id)])[0]
