"""Collapse measures along a stream of problems, each defined once here.

Used by the collapse guard (`zs_llm.guard`), the harness report and the stability study.
A stream is a list of per-problem records (harness rows or guard observations) holding at
least `response`, and optionally `extracted`, `correct` and per-step stats.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def is_degenerate(text: str, min_repeats: int = 4, max_unit: int = 40) -> bool:
    """True when a response loops: its tail is one unit of 1..max_unit characters repeated at
    least `min_repeats` times, or a line repeats 3+ times in a row, or it has no visible
    content at all. Catches "the the the", "1+1+1+1+..." and pasted paragraphs."""
    t = text.strip()
    if not t:
        return True
    tail = t[-max_unit * min_repeats * 2 :]
    for unit in range(1, max_unit + 1):
        if len(tail) < unit * min_repeats:
            break
        piece = tail[-unit:]
        if piece * min_repeats == tail[-unit * min_repeats :] and (unit > 1 or not piece.isspace()):
            # short units need many repeats before they count as a loop ("100000" is fine)
            if unit * min_repeats >= 12:
                return True
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    run = 1
    for a, b in zip(lines, lines[1:]):
        run = run + 1 if a == b else 1
        if run >= 3:
            return True
    return False


def top_answer_share(answers: Sequence[str | None]) -> float:
    """Share of the most common extracted answer among the non-missing ones (0 if none)."""
    vals = [a for a in answers if a not in (None, "")]
    if not vals:
        return 0.0
    return Counter(vals).most_common(1)[0][1] / len(vals)


def rolling(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over `window` (shorter at the start); NaN entries are ignored."""
    x = np.asarray(values, dtype=float)
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        w = x[max(0, i - window + 1) : i + 1]
        w = w[~np.isnan(w)]
        if len(w):
            out[i] = w.mean()
    return out


def rolling_top_share(answers: Sequence[str | None], window: int) -> np.ndarray:
    return np.array([top_answer_share(answers[max(0, i - window + 1) : i + 1]) for i in range(len(answers))])


def trend(values: Sequence[float]) -> float:
    """Mean of the last quarter over the mean of the first quarter (NaN-safe); 1 = flat."""
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if len(x) < 4:
        return float("nan")
    q = max(1, len(x) // 4)
    first, last = x[:q].mean(), x[-q:].mean()
    return float(last / first) if first else float("nan")


def step_stat(row: dict, key: str) -> float:
    """The last adaptation step's `key` in a harness row, NaN when absent."""
    steps = row.get("steps") or []
    v = steps[-1].get(key) if steps else row.get(key)
    return float("nan") if v is None else float(v)


# Thresholds of the per-run verdict, stated once.
VERDICT_THRESHOLDS = {
    "constant_share": 0.5,  # collapsed-constant: one answer in more than half of the last half ...
    "constant_min_answers": 10,  # ... counted only when the last half has at least this many answers
    "degenerate_share": 0.3,  # degenerate: more than 30% of the last half's responses loop
    "sharpening_entropy_trend": 0.5,  # sharpening: entropy in the last quarter below half the first's
    "drift_entropy_trend": 1.25,  # degenerate (drift): entropy in the last quarter 25% above the first's
    "format_ratio": 0.25,  # degenerate (format lost): answers extracted from the last window's responses
    #                        below a quarter of the first window's share ...
    "format_min_answers": 5,  # ... counted only when the first window has at least this many answers
}


#: where a stated answer comes from (`eval.grading.GradeResult.source`); "response" is math-verify's
#: fallback extraction from the whole text, which finds a number in almost any response
STATED_SOURCES = ("boxed", "phrase", "boxes")


def has_answer(row: dict) -> bool:
    """Whether a row's response states a final answer: a box or a "final answer is" line, not a
    number the grader's fallback found somewhere in the text. Rows written before the
    `answer_source` field are read from their response."""
    if "answer_source" in row:
        return row["answer_source"] in STATED_SOURCES and row.get("extracted") not in (None, "")
    if "response" not in row:
        return row.get("extracted") not in (None, "")
    from .answers import final_answer

    answer = final_answer(row["response"] or "")
    return answer is not None and answer.text != ""


def format_window(n: int) -> int:
    """Problems in the first and last window of the answered-share measure: n/4, within 10..40."""
    return max(10, min(40, n // 4))


def collapse_measures(rows: Sequence[dict]) -> dict:
    """All collapse measures of one stream (one method on one dataset, in stream order)."""
    n = len(rows)
    half = rows[n // 2 :]
    correct = [r.get("correct") for r in rows]
    graded = [c for c in correct if c is not None]
    graded_half = [r.get("correct") for r in half if r.get("correct") is not None]
    ent = [step_stat(r, "entropy") for r in rows]
    norm_c = [step_stat(r, "logit_norm_centered") for r in rows]
    dev = [step_stat(r, "predictor_dev") for r in rows]
    deg = [is_degenerate(r.get("response") or "") for r in rows]
    answered = [has_answer(r) for r in rows]
    m = {
        "problems": n,
        "accuracy": float(np.mean(graded)) if graded else float("nan"),
        "accuracy_last_half": float(np.mean(graded_half)) if graded_half else float("nan"),
        "entropy_first": float(np.nanmean(ent[: max(1, n // 4)])) if n and not np.all(np.isnan(ent)) else float("nan"),
        "entropy_trend": trend(ent),
        "logit_norm_centered_trend": trend(norm_c),
        "top_answer_share": top_answer_share([r.get("extracted") for r in rows]),
        "top_answer_share_last_half": top_answer_share([r.get("extracted") for r in half]),
        "answers_last_half": sum(answered[n // 2 :]),
        "degenerate_share": float(np.mean(deg)) if deg else float("nan"),
        "degenerate_share_last_half": float(np.mean(deg[n // 2 :])) if n else float("nan"),
        "predictor_dev_final": next((d for d in reversed(dev) if not np.isnan(d)), float("nan")),
        "steps": sum(len(r.get("steps") or []) for r in rows),
        "steps_skipped": sum(bool(s.get("skipped")) for r in rows for s in r.get("steps") or []),
    }
    # the share of responses with an extracted answer, first vs last window: text that turns
    # incoherent without looping or sharpening stops answering (seen on 300-problem streams)
    w = format_window(n)
    if n >= 2 * w:
        m["answered_first"], m["answered_last"] = float(np.mean(answered[:w])), float(np.mean(answered[-w:]))
        m["answered_first_count"] = int(sum(answered[:w]))
    else:
        m["answered_first"] = m["answered_last"] = float("nan")
        m["answered_first_count"] = 0
    m["verdict"], m["verdict_rule"] = verdict_rule(m)
    return m


def verdict(m: dict) -> str:
    """stable | sharpening | collapsed-constant | degenerate | no-update, from `collapse_measures`
    (see VERDICT_THRESHOLDS and `verdict_rule`)."""
    return verdict_rule(m)[0]


def verdict_rule(m: dict) -> tuple[str, str]:
    """(verdict, the rule that gave it with its values), e.g. ("degenerate", "entropy trend 1.40 >
    1.25"). A stream whose every step was skipped (non-finite loss or gradients) never adapted:
    `no-update`, whatever its answers look like. Collapse outranks sharpening: a stream that both
    sharpens and answers one thing is collapsed. Entropy drifting up (the predictor-driven failure,
    text turning incoherent) counts as degenerate, and so does a stream whose responses stop giving
    an answer (format lost: the last window's answered share under a quarter of the first window's)."""
    t = VERDICT_THRESHOLDS
    if m.get("steps", 0) and m.get("steps_skipped", 0) == m["steps"]:
        return "no-update", f"all {m['steps']} steps skipped"
    answers = m.get("answers_last_half", t["constant_min_answers"])
    top = m.get("top_answer_share_last_half", 0)
    if answers >= t["constant_min_answers"] and top > t["constant_share"]:
        return "collapsed-constant", (f"one answer in {100 * top:.0f}% of the last half's {answers} answers "
                                      f"> {100 * t['constant_share']:.0f}%")
    loops = m.get("degenerate_share_last_half", 0)
    if loops > t["degenerate_share"]:
        return "degenerate", f"{100 * loops:.0f}% of last-half responses loop > {100 * t['degenerate_share']:.0f}%"
    if (m.get("answered_first_count", 0) >= t["format_min_answers"]
            and m["answered_last"] < t["format_ratio"] * m["answered_first"]):
        return "degenerate", (f"format lost: answered {100 * m['answered_last']:.0f}% in the last window < "
                              f"{t['format_ratio']:g} x {100 * m['answered_first']:.0f}% in the first")
    et = m.get("entropy_trend", float("nan"))
    if not np.isnan(et) and et > t["drift_entropy_trend"]:
        return "degenerate", f"entropy drift: trend {et:.2f} > {t['drift_entropy_trend']:g}"
    if not np.isnan(et) and et < t["sharpening_entropy_trend"]:
        return "sharpening", f"entropy trend {et:.2f} < {t['sharpening_entropy_trend']:g}"
    return "stable", "no rule fired"
