"""The collapse guard: watches an online stream and rolls back when it starts to collapse.

After every problem it records the extracted answer, whether the response loops, and the
adaptation step's entropy. Every `guard_every` healthy problems it keeps an in-memory
snapshot of the adapted state. When the last `guard_window` problems show a collapse sign
(one answer everywhere, looping responses, entropy far below or above the stream's first
window), or the responses of the last `FORMAT_WINDOWS` x `guard_window` problems stop giving
an answer (under `FORMAT_RATIO` of the share in the stream's first such span, the failure in
which text turns incoherent without looping), it restores the last healthy snapshot bitwise
and then, per `guard_action`, keeps going, halves the learning rates, or stops adapting.
Snapshots are taken only while every check can judge (its window is full), so after a
rollback the next snapshot waits until the state has been judged again. On a healthy
stream it changes nothing.
"""

from __future__ import annotations

import math
from collections import deque

from .answers import extract_answer
from .diagnostics import VERDICT_THRESHOLDS, is_degenerate, top_answer_share

#: the answered-share check spans this many guard windows ...
FORMAT_WINDOWS = 4
#: ... and triggers below this ratio of the stream's first span (the verdict's threshold) ...
FORMAT_RATIO = VERDICT_THRESHOLDS["format_ratio"]
#: ... when that first span holds at least this many answers
FORMAT_MIN_ANSWERS = VERDICT_THRESHOLDS["format_min_answers"]


class CollapseGuard:
    def __init__(self, lm):
        self.lm = lm
        c = lm.zs_config
        self.window: deque = deque(maxlen=c.guard_window)
        self.answered: deque = deque(maxlen=FORMAT_WINDOWS * c.guard_window)
        self.reference_answered: float | None = None
        self._first_answered: list[bool] = []
        self.reference_entropy: float | None = None
        self._first: list[float] = []
        self.healthy = lm.snapshot()
        self.healthy_at = 0
        self.seen = 0
        self.events: list[dict] = []

    def judging(self) -> bool:
        """Whether every check has a full window (snapshots are taken only then)."""
        return len(self.window) == self.window.maxlen and (
            self.reference_answered is None or len(self.answered) == self.answered.maxlen)

    def check(self) -> str | None:
        """The reason the current window looks collapsed, or None."""
        c = self.lm.zs_config
        if self.reference_answered and len(self.answered) == self.answered.maxlen:
            share = sum(self.answered) / len(self.answered)
            if share < FORMAT_RATIO * self.reference_answered:
                return (f"answers in {share:.0%} of the last {len(self.answered)} responses "
                        f"({self.reference_answered:.0%} in the stream's first {len(self.answered)})")
        if len(self.window) < self.window.maxlen:
            return None
        answers = [o["answer"] for o in self.window]
        if sum(a is not None for a in answers) >= len(answers) / 2:
            share = top_answer_share(answers)
            if share > c.guard_max_answer_share:
                return f"one answer in {share:.0%} of the last {len(answers)} problems"
        deg = sum(o["degenerate"] for o in self.window) / len(self.window)
        if deg > c.guard_max_degenerate:
            return f"{deg:.0%} of the last {len(self.window)} responses loop"
        ents = [o["entropy"] for o in self.window if o["entropy"] is not None and math.isfinite(o["entropy"])]
        if ents and self.reference_entropy:
            ratio = sum(ents) / len(ents) / self.reference_entropy
            if ratio < c.guard_min_entropy_ratio:
                return f"entropy fell to {ratio:.2f}x the stream's first window"
            if ratio > c.guard_max_entropy_ratio:
                return f"entropy rose to {ratio:.2f}x the stream's first window"
        return None

    def observe(self, answer: str, steps: list[dict], problem_id: str | None = None) -> str | None:
        """Record one finished problem; returns an event string when the guard acted."""
        c = self.lm.zs_config
        self.seen += 1
        ent = steps[-1].get("entropy") if steps else None
        extracted = extract_answer(answer) or None  # the harness's extractor; an empty box is no answer
        self.window.append({"answer": extracted, "degenerate": is_degenerate(answer), "entropy": ent})
        self.answered.append(extracted is not None)
        if self.reference_answered is None and len(self._first_answered) < self.answered.maxlen:
            self._first_answered.append(extracted is not None)
            if len(self._first_answered) == self.answered.maxlen:
                n_ans = sum(self._first_answered)
                # too few answers to judge a fall: the check stays off (0.0) for this stream
                self.reference_answered = n_ans / len(self._first_answered) if n_ans >= FORMAT_MIN_ANSWERS else 0.0
        if self.reference_entropy is None and ent is not None:
            self._first.append(ent)
            if len(self._first) >= c.guard_window:
                self.reference_entropy = sum(self._first) / len(self._first)
        reason = self.check()
        if reason is None:
            if self.judging() and self.seen - self.healthy_at >= c.guard_every:
                self.healthy, self.healthy_at = self.lm.snapshot(), self.seen
            return None
        if self.events and self.events[-1]["restored_to"] == self.healthy_at:
            # triggered again from the same checkpoint: it was not healthy after all
            self.healthy, self.healthy_at = self.lm._initial, 0
        self.lm.restore(self.healthy)
        action = c.guard_action
        if action == "rollback_lower_lr":
            self.lm.set_lr_scale(0.5)
        elif action == "rollback_stop":
            self.lm.adapt_enabled = False
        self.window.clear()
        self.answered.clear()
        event = (f"guard: {reason}; restored the state after problem {self.healthy_at}"
                 + {"rollback": "", "rollback_lower_lr": ", learning rates halved",
                    "rollback_stop": ", adaptation stopped"}[action])
        self.events.append({"problem": self.seen, "problem_id": problem_id, "reason": reason, "action": action,
                            "restored_to": self.healthy_at})
        return event

    def state_dict(self) -> dict:
        return {"window": list(self.window), "reference_entropy": self.reference_entropy, "first": self._first,
                "seen": self.seen, "events": self.events, "answered": list(self.answered),
                "reference_answered": self.reference_answered, "first_answered": self._first_answered}

    def load_state_dict(self, d: dict) -> None:
        self.window.clear()
        self.window.extend(d["window"])
        self.reference_entropy, self._first = d["reference_entropy"], d["first"]
        self.seen, self.events = d["seen"], d["events"]
        self.answered.clear()
        self.answered.extend(d.get("answered", []))
        self.reference_answered = d.get("reference_answered")
        self._first_answered = d.get("first_answered", [])
        self.healthy, self.healthy_at = self.lm.snapshot(), self.seen  # the resumed state is the newest healthy one
