"""The collapse guard: watches an online stream and rolls back when it starts to collapse.

After every problem it records the extracted answer, whether the response loops, and the
adaptation step's entropy. Every `guard_every` healthy problems it keeps an in-memory
snapshot of the adapted state. When the last `guard_window` problems show a collapse sign
(one answer everywhere, looping responses, entropy far below or above the stream's first
window), it restores the last healthy snapshot bitwise and then, per `guard_action`, keeps
going, halves the learning rates, or stops adapting. On a healthy stream it changes nothing.
"""

from __future__ import annotations

import math
from collections import deque

from .diagnostics import is_degenerate, last_boxed, top_answer_share


class CollapseGuard:
    def __init__(self, lm):
        self.lm = lm
        c = lm.zs_config
        self.window: deque = deque(maxlen=c.guard_window)
        self.reference_entropy: float | None = None
        self._first: list[float] = []
        self.healthy = lm.snapshot()
        self.healthy_at = 0
        self.seen = 0
        self.events: list[dict] = []

    def check(self) -> str | None:
        """The reason the current window looks collapsed, or None."""
        c = self.lm.zs_config
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
        self.window.append({"answer": last_boxed(answer), "degenerate": is_degenerate(answer), "entropy": ent})
        if self.reference_entropy is None and ent is not None:
            self._first.append(ent)
            if len(self._first) >= c.guard_window:
                self.reference_entropy = sum(self._first) / len(self._first)
        reason = self.check()
        if reason is None:
            if self.seen - self.healthy_at >= c.guard_every:
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
        event = (f"guard: {reason}; restored the state after problem {self.healthy_at}"
                 + {"rollback": "", "rollback_lower_lr": ", learning rates halved",
                    "rollback_stop": ", adaptation stopped"}[action])
        self.events.append({"problem": self.seen, "problem_id": problem_id, "reason": reason, "action": action,
                            "restored_to": self.healthy_at})
        return event

    def state_dict(self) -> dict:
        return {"window": list(self.window), "reference_entropy": self.reference_entropy, "first": self._first,
                "seen": self.seen, "events": self.events}

    def load_state_dict(self, d: dict) -> None:
        self.window.clear()
        self.window.extend(d["window"])
        self.reference_entropy, self._first = d["reference_entropy"], d["first"]
        self.seen, self.events = d["seen"], d["events"]
        self.healthy, self.healthy_at = self.lm.snapshot(), self.seen  # the resumed state is the newest healthy one
