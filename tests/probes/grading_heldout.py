"""Held-out grading check: agreement of `eval.grading` with a human verdict on cases of the classes
issue 26 names, written for this project before the grader was changed for them and not used to
tune it (the tuning table is tests/test_grading_cases.py). Nothing here comes from another
project's tests.

    cd <repository root> && .venv/bin/python tests/probes/grading_heldout.py

Prints agreement per class and overall, then the cases the grader gets wrong. Measured 2026-12-02:
87 of 112 (77.7%) with the grader before issue 26's classes were handled, 112 of 112 after. `expected` is what a
careful human grader says given only the gold and the response, with the choices docs/protocol.md
states (a decimal gold states its precision; `\\mathcal{A}` is `A`; a clock time without a.m./p.m.
matches either half of the day only when the other side names it).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

FINAL = "Final Answer: The final answer is ${}$. I hope it is correct."

HELDOUT = [
    # ---- mixed numbers
    ("mixed", r"\frac{7}{2}", r"She needs $\boxed{3\frac{1}{2}}$ cups.", True),
    ("mixed", r"3\frac{1}{2}", r"\boxed{\frac{7}{2}}", True),
    ("mixed", r"3\frac{1}{2}", r"\boxed{3.5}", True),
    ("mixed", "7/2", "The answer is 3 1/2.", True),
    ("mixed", r"5\frac{3}{4}", FINAL.format(r"\frac{23}{4}"), True),
    ("mixed", r"5\frac{3}{4}", FINAL.format(r"\frac{15}{4}"), False),
    ("mixed", r"\frac{3}{2}", r"\boxed{3\frac{1}{2}}", False),
    ("mixed", r"2\frac{2}{3}", r"\boxed{2\dfrac{2}{3}}", True),
    ("mixed", r"2\frac{2}{3}", r"\boxed{\frac{4}{3}}", False),
    ("mixed", r"-1\frac{1}{4}", r"\boxed{-\frac{5}{4}}", True),
    ("mixed", r"-1\frac{1}{4}", r"\boxed{-\frac{3}{4}}", False),
    ("mixed", r"12\frac{1}{3}", r"\boxed{\frac{37}{3}}", True),
    ("mixed", r"\frac{2\pi}{3}", r"\boxed{2\frac{\pi}{3}}", True),
    ("mixed", r"\sqrt{3}", r"\boxed{2\frac{\sqrt{3}}{2}}", True),
    ("mixed", "4.25", "So the board is 4 1/4 feet long. The final answer is 4 1/4", True),
    ("mixed", "4.25", r"\boxed{4\frac{1}{2}}", False),
    # ---- several boxes against a set or list gold
    ("boxes", r"\{2, -3\}", r"The solutions are $\boxed{x=2}$ and $\boxed{x=-3}$.", True),
    ("boxes", r"\{2, -3\}", r"The solutions are $\boxed{x=2}$ and $\boxed{x=3}$.", False),
    ("boxes", "-3, 2", r"$\boxed{2}$ or $\boxed{-3}$", True),
    ("boxes", r"\{0, 1, 4\}", r"$\boxed{4}$, $\boxed{0}$, $\boxed{1}$", True),
    ("boxes", r"\{0, 1, 4\}", r"$\boxed{4}$, $\boxed{0}$, $\boxed{2}$", False),
    ("boxes", r"\pm 5", r"$x = \boxed{5}$ or $x = \boxed{-5}$", True),
    ("boxes", r"\pm 5", r"$x = \boxed{5}$", False),
    ("boxes", r"\frac{1}{2}, 3", r"\boxed{3} and \boxed{\frac12}", True),
    ("boxes", r"\frac{1}{2}, 3", r"\boxed{3} and \boxed{\frac13}", False),
    ("boxes", "1, 2", r"The answers are \boxed{1} and \boxed{2}; checking \boxed{2} again: it holds.", True),
    # ---- clock times
    ("clock", "9:30", r"She arrives at $\boxed{9:30}$.", True),
    ("clock", r"9:30 \text{ a.m.}", r"\boxed{9:30}", True),
    ("clock", "9:30", r"The train leaves at 9:30 a.m. The final answer is 9:30 a.m.", True),
    ("clock", "9:30", r"\boxed{10:30}", False),
    ("clock", "9:30", r"\boxed{9:03}", False),
    ("clock", r"\text{4:15 p.m.}", r"\boxed{4:15 \text{ PM}}", True),
    ("clock", r"\text{4:15 p.m.}", r"\boxed{16:15}", True),
    ("clock", r"\text{4:15 p.m.}", r"\boxed{4:15 \text{ a.m.}}", False),
    ("clock", "11:05", r"\boxed{11{:}05}", True),
    ("clock", "11:05", r"\boxed{11:50}", False),
    ("clock", "12:00", r"\boxed{12:00 \text{ noon}}", True),
    ("clock", "07:45", r"\boxed{7:45}", True),
    # ---- \! thousands separators
    ("bang", r"1,\!000", r"\boxed{1000}", True),
    ("bang", r"1,\!000", r"\boxed{100}", False),
    ("bang", "2500000", r"\boxed{2,\!500,\!000}", True),
    ("bang", "250000", r"\boxed{2,\!500,\!000}", False),
    ("bang", r"\$12,\!340", r"\boxed{\$12340}", True),
    ("bang", r"\$12,\!340", r"\boxed{\$12430}", False),
    ("bang", r"45,\!000.5", r"\boxed{45000.5}", True),
    ("bang", r"3,\!003", FINAL.format("3003"), True),
    ("bang", r"3,\!003", FINAL.format("3300"), False),
    ("bang", r"1,\!048,\!576", r"\boxed{2^{20}}", True),
    # ---- a trailing backslash
    ("backslash", "17", "\\boxed{17\\\\}", True),
    ("backslash", "17", "\\boxed{71\\\\}", False),
    ("backslash", "4", "\\boxed{4 \\}", True),
    ("backslash", "-8", "The final answer is $-8\\$", True),
    ("backslash", "-8", "The final answer is $8\\$", False),
    ("backslash", r"\frac{3}{5}", "\\boxed{\\frac{3}{5}\\\\}", True),
    ("backslash", r"\frac{3}{5}", "\\boxed{\\frac{5}{3}\\\\}", False),
    ("backslash", "x+1", "\\boxed{x+1\\,}", True),
    # ---- calligraphic and other font letters
    ("font", r"\mathcal{A}", r"\boxed{A}", True),
    ("font", "A", r"\boxed{\mathcal{A}}", True),
    ("font", r"\mathcal{A}", r"\boxed{B}", False),
    ("font", r"\mathcal{B}", r"\boxed{\mathcal{A}}", False),
    ("font", r"\mathbf{C}", r"\boxed{C}", True),
    ("font", r"\mathcal{P}", r"\boxed{\mathscr{P}}", True),
    ("font", r"\mathbb{R}", r"\boxed{(-\infty, \infty)}", True),
    ("font", r"\mathbb{R}", r"\boxed{R}", False),
    # ---- an equation or a function definition against its right-hand side
    ("definition", "2x", r"\boxed{f(x) = 2x}", True),
    ("definition", "f(x)=2x", r"\boxed{2x}", True),
    ("definition", "f(x)=2x", r"\boxed{3x}", False),
    ("definition", "y=2x+1", r"The line is $\boxed{2x+1}$.", True),
    ("definition", "2x+1", r"The line is $\boxed{y = 2x+1}$.", True),
    ("definition", "2x+1", r"The line is $\boxed{y = 2x-1}$.", False),
    ("definition", r"g(t) = t^2 - 1", r"\boxed{(t-1)(t+1)}", True),
    ("definition", r"g(t) = t^2 - 1", r"\boxed{(t-1)^2}", False),
    ("definition", r"x^2 + 3", r"\boxed{p(x) = x^2 + 3}", True),
    ("definition", r"x^2 + 3", r"\boxed{p(x) = x^2 - 3}", False),
    ("definition", "x + y = 5", r"\boxed{5}", False),
    # ---- complex numbers that need simplifying
    ("complex", "2i", r"\boxed{(1+i)^2}", True),
    ("complex", "(1+i)^2", r"\boxed{2i}", True),
    ("complex", "2i", r"\boxed{(1-i)^2}", False),
    ("complex", "-1", r"\boxed{i^2}", True),
    ("complex", "1", r"\boxed{i^2}", False),
    ("complex", "5", r"\boxed{(2+i)(2-i)}", True),
    ("complex", "3", r"\boxed{(2+i)(2-i)}", False),
    ("complex", r"\frac{1}{2} - \frac{1}{2}i", r"\boxed{\frac{1}{1+i}}", True),
    ("complex", r"\frac{1}{2} + \frac{1}{2}i", r"\boxed{\frac{1}{1+i}}", False),
    ("complex", "-i", r"\boxed{i^3}", True),
    ("complex", "i", r"\boxed{i^{5}}", True),
    ("complex", "-i", r"\boxed{i^{5}}", False),
    # ---- trigonometric identities
    ("trig", "1", r"\boxed{\sin^2 x + \cos^2 x}", True),
    ("trig", r"\sin^2 x + \cos^2 x", r"\boxed{1}", True),
    ("trig", "1", r"\boxed{\sin^2 x - \cos^2 x}", False),
    ("trig", r"\sin 2x", r"\boxed{2\sin x\cos x}", True),
    ("trig", r"\sin 2x", r"\boxed{\sin x\cos x}", False),
    ("trig", r"\cos 2\theta", r"\boxed{1 - 2\sin^2\theta}", True),
    ("trig", r"\cos 2\theta", r"\boxed{1 - \sin^2\theta}", False),
    ("trig", r"\sec^2 x", r"\boxed{1 + \tan^2 x}", True),
    ("trig", r"\sec^2 x", r"\boxed{1 - \tan^2 x}", False),
    ("trig", r"\tan x", r"\boxed{\frac{\sin x}{\cos x}}", True),
    # ---- a decimal gold states its precision; an exact gold does not
    ("precision", "0.33", r"\boxed{\frac{1}{3}}", True),
    ("precision", "0.33", r"\boxed{\frac{1}{4}}", False),
    ("precision", "0.67", r"\boxed{\frac{2}{3}}", True),
    ("precision", "0.67", r"\boxed{0.66}", False),
    ("precision", "3.14", r"\boxed{\pi}", True),
    ("precision", "3.14", r"\boxed{\frac{22}{7}}", True),
    ("precision", "3.14", r"\boxed{3.15}", False),
    ("precision", "1.41", r"\boxed{\sqrt{2}}", True),
    ("precision", "1.41", r"\boxed{\sqrt{3}}", False),
    ("precision", "0.143", r"\boxed{\frac{1}{7}}", True),
    ("precision", "0.143", r"\boxed{\frac{1}{6}}", False),
    ("precision", r"\frac{1}{3}", r"\boxed{0.33}", False),
    ("precision", r"\frac{2}{3}", r"\boxed{0.6667}", False),
    ("precision", "2.5", r"\boxed{\frac{5}{2}}", True),
    ("precision", "2.5", r"\boxed{2.54}", False),
]


def agreement(grade_fn, cases=HELDOUT) -> tuple[dict[str, tuple[int, int]], list[tuple]]:
    """Per class: (agreements, cases); and the cases where `grade_fn(response, gold)` differs."""
    table: dict[str, tuple[int, int]] = {}
    misses = []
    for cls, gold, response, expected in cases:
        got = grade_fn(response, gold)
        hit, n = table.get(cls, (0, 0))
        table[cls] = (hit + (got is expected), n + 1)
        if got is not expected:
            misses.append((cls, gold, response, expected, got))
    return table, misses


def main() -> None:
    from eval.grading import Grader

    grader = Grader()
    start = time.monotonic()
    try:
        table, misses = agreement(grader.grade)
    finally:
        grader.close()
    seconds = time.monotonic() - start
    total = [sum(v) for v in zip(*table.values())]
    for cls, (hit, n) in [*table.items(), ("all", tuple(total))]:
        print(f"{cls:12s} {hit:3d}/{n:<3d} {hit / n:6.1%}")
    print(f"{len(HELDOUT)} cases in {seconds:.1f} s; timeouts {grader.stats['timeouts']}")
    for cls, gold, response, expected, got in misses:
        print(f"miss {cls}: gold {gold!r} response {response!r} expected {expected} got {got}")


if __name__ == "__main__":
    main()
