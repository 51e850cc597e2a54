"""Grading cases by class: (class, gold, response, expected), written for this project.

`expected` is what a careful human grader would say; None means the gold is not graded (prose or
unparseable) and must be reported, not scored. Each class holds cases that must be equal and cases
that must not.

Agreement per class, for whichever `eval.grading` is importable (run from the repository root;
run it from an older checkout to measure that one):

    python -m tests.test_grading_cases
"""

from __future__ import annotations

import pytest

FINAL_LINE = "Final Answer: The final answer is ${}$. I hope it is correct."

CASES = [
    # ---- the Minerva / Llama closing line, and "The final answer is X" without it
    ("final_line", "(1,2)", FINAL_LINE.format("(1,2)"), True),
    ("final_line", "(2,1)", FINAL_LINE.format("(1,2)"), False),
    ("final_line", r"3\sqrt{13}", FINAL_LINE.format(r"3\sqrt{13}"), True),
    ("final_line", r"\sqrt{13}", FINAL_LINE.format(r"3\sqrt{13}"), False),
    ("final_line", r"\frac{5\sqrt{42}}{27}", FINAL_LINE.format(r"\frac{5\sqrt{42}}{27}"), True),
    ("final_line", r"\frac{5\sqrt{42}}{28}", FINAL_LINE.format(r"\frac{5\sqrt{42}}{27}"), False),
    ("final_line", "14916", FINAL_LINE.format("14{,}916"), True),
    ("final_line", "14917", FINAL_LINE.format("14{,}916"), False),
    ("final_line", "7.78", "Rounding to two places.\nThe final answer is 7.78", True),
    ("final_line", "7.79", "Rounding to two places.\nThe final answer is 7.78", False),
    ("final_line", "x^2+1", FINAL_LINE.format("x^2 + 1"), True),
    ("final_line", "x^2-1", FINAL_LINE.format("x^2 + 1"), False),
    ("final_line", r"\left( 3, \frac{\pi}{2} \right)", FINAL_LINE.format(r"(3, \frac{\pi}{2})"), True),
    ("final_line", "-0.5", "Final Answer: The final answer is $-\\frac12$.", True),
    ("final_line", "0.75", "The final answer is: $\\dfrac{3}{4}$", True),
    ("final_line", "12", "**Final Answer**\n\\[\n\\boxed{12}\n\\]", True),
    ("final_line", "2", "The final answer is 2. I hope it is correct.", True),
    ("final_line", "3", "The final answer is 2. I hope it is correct.", False),
    ("final_line", r"(-\infty, 2]", FINAL_LINE.format(r"(-\infty, 2]"), True),
    ("final_line", r"(-\infty, 2)", FINAL_LINE.format(r"(-\infty, 2]"), False),
    # ---- several boxes against a gold of several answers
    ("several_boxes", "1,-2", r"The roots are $x = \boxed{-2}$ and $x = \boxed{1}$.", True),
    ("several_boxes", "1,-2", r"The roots are $x = \boxed{-2}$ and $x = \boxed{2}$.", False),
    ("several_boxes", "1,-2", "First root: $\\boxed{-2}$.\n\nSecond root: $\\boxed{1}$.", True),
    ("several_boxes", "-2,1", r"\boxed{1} and \boxed{-2}", True),
    ("several_boxes", "-2,1", r"\boxed{1} and \boxed{-1}", False),
    ("several_boxes", "3, 5, 7", r"$\boxed{3}$, $\boxed{5}$, $\boxed{7}$", True),
    ("several_boxes", "3, 5, 7", r"$\boxed{3}$, $\boxed{5}$", False),
    ("several_boxes", "x=1, x=-2", r"So $\boxed{x=1}$ or $\boxed{x=-2}$.", True),
    ("several_boxes", r"\{1,-2\}", r"\boxed{-2}, \boxed{1}", True),
    ("several_boxes", "1,-2", r"The roots are \boxed{-2} and, again, \boxed{-2}", False),
    ("several_boxes", "2", r"first \boxed{1}, then \boxed{2}", True),
    ("several_boxes", "1", r"first \boxed{1}, then \boxed{2}", False),
    # ---- the last stated answer wins over an intermediate box, and the other way round
    ("last_wins", "7", "The inner sum is $\\boxed{3}$. Adding 4 gives 7.\n" + FINAL_LINE.format("7"), True),
    ("last_wins", "3", "The inner sum is $\\boxed{3}$. Adding 4 gives 7.\n" + FINAL_LINE.format("7"), False),
    ("last_wins", "12", "Each gets $\\boxed{6}$ apples, two children.\nThe final answer is 12.", True),
    ("last_wins", "6", "Each gets $\\boxed{6}$ apples, two children.\nThe final answer is 12.", False),
    ("last_wins", r"\frac{1}{2}", r"I wrote \boxed{0.4} by mistake. The final answer is $\frac{1}{2}$.", True),
    ("last_wins", "0.4", r"I wrote \boxed{0.4} by mistake. The final answer is $\frac{1}{2}$.", False),
    ("last_wins", "8", "The answer is 5.\n\nWait, I made an error: 3 + 5 = 8. The answer is $\\boxed{8}$.", True),
    ("last_wins", "5", "The answer is 5.\n\nWait, I made an error: 3 + 5 = 8. The answer is $\\boxed{8}$.", False),
    ("last_wins", "5", r"The answer is $\boxed{5}$. Checking: 2 + 3 = 5, so the answer is correct.", True),
    ("last_wins", "4", r"The answer is $\boxed{5}$. Checking: 2 + 3 = 5, so the answer is correct.", False),
    # ---- stated without a box, an empty box, or not stated at all (math-verify reads the response)
    ("stated", "1", "3 - 2 = 1. The final answer is 1.\n\nThe answer is within \\boxed{}.", True),
    ("stated", "2", "3 - 2 = 1. The final answer is 1.\n\nThe answer is within \\boxed{}.", False),
    ("stated", "9", "The answer is $\\boxed{}$.\nThe sum is 9.", True),
    ("stated", "8", "The answer is $\\boxed{}$.\nThe sum is 9.", False),
    ("stated", "42", "So the answer is $42$.", True),
    ("stated", "24", "So the answer is $42$.", False),
    ("stated", "18", "16 - 3 - 4 = 9 eggs, sold at $2 each.\n#### 18", True),
    ("stated", "4", "I do not know how to solve this.", False),
    ("stated", "4", "I think it is 4", True),
    ("stated", "5", "I think it is 4", False),
    ("stated", "4", "Answer: 4", True),
    ("stated", "7", "3 + 4 = 7", True),
    ("stated", "4", "The answer is: **4**", True),
    ("stated", r"\text{(C)}", "The answer is (C).", True),
    ("stated", r"\text{(C)}", "The answer is (D).", False),
    # ---- thousands separators: comma, space, thin space, {,}, ,\!
    ("thousands", "10000", r"\boxed{10\,000}", True),
    ("thousands", "100", r"\boxed{10\,000}", False),
    ("thousands", "10000", "The answer is 10 000.", True),
    ("thousands", "1000", "The answer is 10 000.", False),
    ("thousands", "1000000", r"\boxed{1\,000\,000}", True),
    ("thousands", "12345", "\\boxed{12\u2009345}", True),
    ("thousands", "345", "\\boxed{12\u2009345}", False),
    ("thousands", "1234567", r"\boxed{1,234,567}", True),
    ("thousands", "1234", r"\boxed{1,234,567}", False),
    ("thousands", r"10,\!080", r"\boxed{10080}", True),
    ("thousands", r"10,\!080", r"\boxed{10800}", False),
    ("thousands", r"\$32,\!348", r"\boxed{\$32{,}348}", True),
    ("thousands", "10000", r"\boxed{10\ 000}", True),
    ("thousands", "1000000", r"\boxed{1 000 000}", True),
    ("thousands", "10000", "The answer is 10,000 dollars.", True),
    ("thousands", "2,3", r"\boxed{2,3}", True),
    ("thousands", "23", r"\boxed{2,3}", False),
    # ---- units as words or \text{}, on either side
    ("units", "10", "The answer is 10 weeks.", True),
    ("units", "12", "The answer is 10 weeks.", False),
    ("units", "5", r"She has $\boxed{5\text{ dollars}}$ left.", True),
    ("units", "5", r"She has $\boxed{5 \text{ dollars}}$ left.", True),
    ("units", "10", r"\boxed{10 cm^2}", True),
    ("units", "100", r"\boxed{10 cm^2}", False),
    ("units", r"864 \mbox{ inches}^2", r"\boxed{864}", True),
    ("units", r"864 \mbox{ inches}^2", r"\boxed{846}", False),
    ("units", "70 miles per hour", r"\boxed{70}", True),
    ("units", "70 miles per hour", r"\boxed{60 \text{ mph}}", False),
    ("units", "3.6 hours", r"\boxed{3.6\text{ h}}", True),
    ("units", "30", r"The angle is $\boxed{30 \text{ degrees}}$.", True),
    ("units", "2", r"\boxed{2 x}", False),
    ("units", "2x", r"\boxed{2 x}", True),
    ("units", "9.8", r"\boxed{9.8 m/s^2}", True),
    ("units", "8", r"\boxed{8 square units}", True),
    ("units", "25", "Therefore, the final answer is 25 dollars.", True),
    # ---- primes are kept
    ("primes", "f'(x)", r"\boxed{f'(x)}", True),
    ("primes", "f(x)", r"\boxed{f'(x)}", False),
    ("primes", "f'(x)", r"\boxed{f(x)}", False),
    ("primes", "y''", r"\boxed{y''}", True),
    ("primes", "y'", r"\boxed{y''}", False),
    ("primes", "2x", r"\boxed{f'(x) = 2x}", True),
    ("primes", "f'(x)=2x", r"\boxed{f(x) = 2x}", False),
    ("primes", r"f^{\prime}(x)", r"\boxed{f'(x)}", True),
    ("primes", "f''(2)", r"\boxed{f'(2)}", False),
    ("primes", "3x^2", r"\boxed{y' = 3x^2}", True),
    # ---- \mathrm{e} and \mathrm{i} are the constants
    ("constants", r"\mathrm{e}", r"\boxed{e}", True),
    ("constants", r"\mathrm{e}^{2}", r"\boxed{e^2}", True),
    ("constants", r"\mathrm{e}^{2}", r"\boxed{e^3}", False),
    ("constants", "e^{2}", r"\boxed{\mathrm{e}^{2}}", True),
    ("constants", r"\mathrm{e}^{-1}", r"\boxed{\frac{1}{e}}", True),
    ("constants", r"\mathrm{e}^{-1}", r"\boxed{e}", False),
    ("constants", r"1+2\mathrm{i}", r"\boxed{1+2i}", True),
    ("constants", r"1+2\mathrm{i}", r"\boxed{1-2i}", False),
    ("constants", r"\mathrm{i}", r"\boxed{i}", True),
    ("constants", r"\mathrm{i}", r"\boxed{-i}", False),
    ("constants", r"\mathrm{e}^{x}", r"\boxed{\exp(x)}", True),
    ("constants", "e", r"\boxed{\text{e}}", True),
    # ---- prose golds are reported, not scored; short text and math golds still are
    ("free_text", r"\min at x=-1, \max at x=1", r"\boxed{x=-1}", None),
    ("free_text", "all real numbers", r"\boxed{\mathbb{R}}", None),
    ("free_text", "converges absolutely", r"The series \boxed{\text{converges absolutely}}.", None),
    ("free_text", "No solution", r"\boxed{\text{No solution}}", None),
    ("free_text", "The steady state current is 2 amps.", r"\boxed{2}", None),
    ("free_text", r"concave up on (0, \infty)", r"\boxed{(0, \infty)}", None),
    ("free_text", r"\max at x=7", r"\boxed{7}", None),
    ("free_text", r"\text{Evelyn}", r"\boxed{\text{Evelyn}}", True),
    ("free_text", r"\text{Evelyn}", r"\boxed{\text{Navin}}", False),
    ("free_text", "50 gallons", r"\boxed{50}", True),
    ("free_text", r"x=-1 \text{ or } x=1", r"\boxed{x = 1, x = -1}", True),
    ("free_text", r"x=-1 \text{ or } x=1", r"\boxed{x = 1}", False),
]

CLASSES = tuple(dict.fromkeys(c for c, *_ in CASES))


@pytest.mark.parametrize("cls, gold, response, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_case_table(cls, gold, response, expected):
    from eval.grading import grade

    assert grade(response, gold) is expected


def test_every_class_has_equal_and_unequal_cases():
    for cls in CLASSES:
        verdicts = {expected for c, _, _, expected in CASES if c == cls}
        assert {True, False} <= verdicts, cls


def agreement(grade_fn) -> dict[str, tuple[int, int]]:
    """Per class: (cases where `grade_fn(response, gold)` equals the expected verdict, cases)."""
    out: dict[str, tuple[int, int]] = {}
    for cls, gold, response, expected in CASES:
        hit, n = out.get(cls, (0, 0))
        out[cls] = (hit + (grade_fn(response, gold) is expected), n + 1)
    return out


def main() -> None:
    from eval.grading import Grader

    grader = Grader()
    try:
        table = agreement(grader.grade)
    finally:
        grader.close()
    total = [sum(v) for v in zip(*table.values())]
    for cls, (hit, n) in [*table.items(), ("all", tuple(total))]:
        print(f"{cls:14s} {hit:3d}/{n:<3d} {hit / n:6.1%}")


if __name__ == "__main__":
    main()
