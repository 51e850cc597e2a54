"""Grading cases by class: (class, gold, response, expected), written for this project.

`expected` is what a careful human grader would say; None means the gold is not graded (prose or
unparseable) and must be reported, not scored. Each class holds cases that must be equal and cases
that must not, written by hand and generated (random values per class, seeded; see GENERATORS).
The choices behind the debatable verdicts are in docs/protocol.md, Grading.

Agreement per class, for whichever `eval.grading` is importable (run from the repository root;
run it from an older checkout to measure that one):

    python -m tests.test_grading_cases
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

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
    # ---- mixed numbers: a whole number and a fraction of integers; `4\frac{\pi}{5}` stays a product
    ("mixed", r"\frac{9}{4}", "The final answer is 2 1/4", True),
    ("mixed", r"\frac{9}{4}", r"\boxed{2\frac{1}{4}}", True),
    ("mixed", r"\frac{1}{2}", r"\boxed{2\frac{1}{4}}", False),
    ("mixed", r"6\frac{1}{4}", r"\boxed{6.25}", True),
    ("mixed", r"6\frac{1}{4}", r"\boxed{1.5}", False),
    ("mixed", "-2.5", r"\boxed{-2 1/2}", True),
    ("mixed", "2.5", r"\boxed{-2 1/2}", False),
    ("mixed", r"\frac{4\pi}{5}", r"\boxed{4\frac{\pi}{5}}", True),
    # ---- \pm against several boxes
    ("several_boxes", r"\pm 3", r"$y = \boxed{-3}$ or $y = \boxed{3}$", True),
    ("several_boxes", r"\pm 3", r"$y = \boxed{-3}$ or $y = \boxed{-3}$", False),
    ("several_boxes", r"2 \pm \sqrt{3}", r"\boxed{2+\sqrt{3}} and \boxed{2-\sqrt{3}}", True),
    ("several_boxes", r"2 \pm \sqrt{3}", r"\boxed{2+\sqrt{3}}", False),
    ("several_boxes", r"\pm 3", r"\boxed{\pm 3}", True),
    # ---- clock times: a.m./p.m. or a 24-hour time name the half of the day; a bare `h:mm` fits both
    ("clock", "6:45", r"The bus leaves at $\boxed{6:45}$.", True),
    ("clock", "6:45", r"The bus leaves at $\boxed{6:54}$.", False),
    ("clock", r"6:45\text{ p.m.}", r"\boxed{18:45}", True),
    ("clock", r"6:45\text{ p.m.}", r"\boxed{6:45\text{ a.m.}}", False),
    ("clock", r"6:45\text{ p.m.}", r"\boxed{6:45}", True),
    ("clock", "18:45", r"\boxed{6:45\text{ AM}}", False),
    ("clock", r"\text{12:10 a.m.}", r"\boxed{0:10}", True),
    ("clock", r"\text{12:10 a.m.}", r"\boxed{12:10 \text{ p.m.}}", False),
    ("clock", "1:20", r"\boxed{2:40}", False),
    ("clock", "3:4", r"\boxed{6:8}", True),
    # ---- a trailing backslash, line break or \$ says nothing
    ("backslash", "25", "\\boxed{25 \\\\}", True),
    ("backslash", "25", "\\boxed{52 \\\\}", False),
    ("backslash", "25", "The final answer is $25\\$", True),
    ("backslash", r"\{1,2\}", r"\boxed{\{1,2\}}", True),
    ("backslash", r"\{1,2\}", r"\boxed{\{1,3\}}", False),
    ("backslash", r"\frac{2}{9}", "\\boxed{\\frac{2}{9} \\;}", True),
    # ---- a letter in another font is the letter; \mathbb{R} is the reals
    ("font", r"\mathcal{F}", r"\boxed{F}", True),
    ("font", r"\mathcal{F}", r"\boxed{G}", False),
    ("font", r"\mathbf{v}", r"\boxed{\boldsymbol{v}}", True),
    ("font", r"\mathbf{v}", r"\boxed{\mathbf{w}}", False),
    ("font", r"\mathbb{R}", r"\boxed{\mathcal{R}}", False),
    ("font", r"\mathbf{i} - \mathbf{j}", r"\boxed{\mathbf{i}-\mathbf{j}}", True),  # unit vectors stay vectors
    ("font", r"\mathbf{i} - \mathbf{j}", r"\boxed{\mathbf{i}+\mathbf{j}}", False),
    ("font", r"2\mathbf{e}", r"\boxed{2e}", False),
    # ---- an equation gold: its right-hand side answers it only when its left names what it defines
    ("definition", "y = 3x - 4", r"\boxed{3x-4}", True),
    ("definition", "y = 3x - 4", r"\boxed{3x+4}", False),
    ("definition", r"h(s) = \frac{1}{s}", r"\boxed{\frac{1}{s}}", True),
    ("definition", r"h(s) = \frac{1}{s}", r"\boxed{s}", False),
    ("definition", "2x - y = 7", r"\boxed{7}", False),
    ("definition", "2x - y = 7", r"\boxed{y = 2x - 7}", True),
    ("definition", "7", r"\boxed{2x - y = 7}", True),
    ("definition", "a + b = 12", r"\boxed{12}", False),
    ("definition", "a + b = 12", r"\boxed{b + a = 12}", True),
    ("definition", r"\tan\theta = \frac{3}{4}", r"\boxed{0.75}", True),
    ("definition", r"\sin x + \cos x = 1", r"\boxed{1}", False),
    # ---- complex numbers: a free `i` is the imaginary unit
    ("complex", "-4", r"\boxed{(1+i)^4}", True),
    ("complex", "4", r"\boxed{(1+i)^4}", False),
    ("complex", "3-4i", r"\boxed{(2-i)^2}", True),
    ("complex", "3+4i", r"\boxed{(2-i)^2}", False),
    ("complex", "-1", r"\boxed{e^{i\pi}}", True),
    ("complex", r"\frac{3}{5}+\frac{4}{5}i", r"\boxed{\frac{2+i}{2-i}}", True),
    ("complex", r"\frac{3}{5}-\frac{4}{5}i", r"\boxed{\frac{2+i}{2-i}}", False),
    # ---- trigonometric identities
    ("trig", r"\sin^2 x", r"\boxed{\frac{1 - \cos 2x}{2}}", True),
    ("trig", r"\sin^2 x", r"\boxed{\frac{1 + \cos 2x}{2}}", False),
    ("trig", r"\cos x", r"\boxed{\frac{\sin 2x}{2\sin x}}", True),
    ("trig", r"\cos x", r"\boxed{\frac{\sin 2x}{\sin x}}", False),
    ("trig", r"\csc^2 \theta", r"\boxed{1 + \cot^2\theta}", True),
    ("trig", r"\csc^2 \theta", r"\boxed{1 + \tan^2\theta}", False),
    # ---- a decimal gold states its precision for an exact answer; an exact gold wants the value
    ("precision", "0.17", r"\boxed{\frac{1}{6}}", True),
    ("precision", "0.17", r"\boxed{\frac{1}{5}}", False),
    ("precision", "2.718", r"\boxed{e}", True),
    ("precision", "2.718", r"\boxed{2.7}", False),
    ("precision", "1.73", r"\boxed{\sqrt{3}}", True),
    ("precision", "1.73", r"\boxed{1.7320}", False),
    ("precision", r"\frac{1}{6}", r"\boxed{0.17}", False),
    ("precision", r"\frac{1}{6}", r"\boxed{0.1666667}", True),
    ("precision", "0.8", r"\boxed{\frac{4}{5}}", True),
    ("precision", "0.8", r"\boxed{\frac{5}{6}}", True),
    ("precision", "0.8", r"\boxed{\frac{6}{7}}", False),
]


# ---------------------------------------------------------------------------- generated cases
# One generator per class: random values, each written the ways an answer or a gold writes them, and
# near misses that must not be equal.


def _boxed(answer: str) -> str:
    return rf"The answer is $\boxed{{{answer}}}$."


def _mixed(rng):
    whole, den = rng.randint(1, 40), rng.randint(2, 12)
    num, sign = rng.randint(1, den - 1), rng.choice(["", "-"])
    value = rf"{sign}\frac{{{whole * den + num}}}{{{den}}}"
    yield "mixed", value, f"The final answer is {sign}{whole} {num}/{den}", True
    yield "mixed", value, _boxed(rf"{sign}{whole}\frac{{{num}}}{{{den}}}"), True
    yield "mixed", rf"{sign}\frac{{{whole * num}}}{{{den}}}", _boxed(f"{sign}{whole} {num}/{den}"), False  # a product
    yield "mixed", value, _boxed(f"{sign}{whole} {num}/{den + 1}"), False


def _thousands(rng):
    value = rng.randint(1_000, 10**9)
    grouped = f"{value:,}"
    yield "thousands", str(value), _boxed(grouped.replace(",", r",\!")), True
    yield "thousands", grouped.replace(",", r",\!"), _boxed(str(value)), True
    yield "thousands", grouped.replace(",", r",\!"), _boxed(grouped.replace(",", "{,}")), True
    yield "thousands", str(value + rng.choice([1, 10, 1000])), _boxed(grouped.replace(",", r",\!")), False


def _clock(rng):
    hour, minute, half = rng.randint(1, 12), rng.randint(0, 59), rng.choice(["a.m.", "p.m."])
    other = "p.m." if half == "a.m." else "a.m."
    hour24 = hour % 12 + (12 if half == "p.m." else 0)
    gold = rf"{hour}:{minute:02d}\text{{ {half}}}"
    yield "clock", gold, _boxed(f"{hour}:{minute:02d}"), True
    yield "clock", gold, f"The final answer is {hour}:{minute:02d} {half.replace('.', '').upper()}", True
    yield "clock", gold, _boxed(f"{hour24:02d}:{minute:02d}"), True
    yield "clock", gold, _boxed(rf"{hour}:{minute:02d}\text{{ {other}}}"), False
    yield "clock", gold, _boxed(f"{hour}:{(minute + rng.randint(1, 59)) % 60:02d}"), False
    yield "clock", gold, _boxed(f"{hour % 12 + 1}:{minute:02d}"), False


def _complex(rng):
    a, b, c, d = (rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]) for _ in range(4))
    re_, im = a * c - b * d, a * d + b * c
    product = f"({a}{b:+d}i)({c}{d:+d}i)"
    yield "complex", f"{re_}{im:+d}i", _boxed(product), True
    yield "complex", product, _boxed(f"{re_}{im:+d}i"), True
    if im != 0:
        yield "complex", f"{re_}{-im:+d}i", _boxed(product), False
    yield "complex", f"{re_ + 1}{im:+d}i", _boxed(product), False


def _precision(rng):
    den = rng.choice([3, 7, 11, 13, 17, 19])  # a prime other than 2 and 5: no exact decimal
    num = rng.choice([n for n in range(1, 4 * den) if n % den])
    places = rng.choice([2, 3])
    gold = str((Decimal(num) / Decimal(den)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
    yield "precision", gold, _boxed(rf"\frac{{{num}}}{{{den}}}"), True
    yield "precision", gold, _boxed(rf"\frac{{{num + 1}}}{{{den}}}"), False
    yield "precision", rf"\frac{{{num}}}{{{den}}}", _boxed(gold), False


def _trig(rng):
    k, var = rng.randint(1, 5), rng.choice(["x", "t", r"\theta"])
    arg, double = (var, f"2{var}") if k == 1 else (f"{k}{var}", f"{2 * k}{var}")
    yield "trig", "1", _boxed(rf"\sin^2({arg}) + \cos^2({arg})"), True
    yield "trig", "1", _boxed(rf"\sin^2({arg}) - \cos^2({arg})"), False
    yield "trig", rf"\sin({double})", _boxed(rf"2\sin({arg})\cos({arg})"), True
    yield "trig", rf"\sin({double})", _boxed(rf"\sin({arg})\cos({arg})"), False


def _definition(rng):
    a, b, c = (rng.choice([-7, -3, -2, 2, 3, 5, 9]) for _ in range(3))
    name = rng.choice(["y", "f(x)", "g(x)", "p(x)"])
    yield "definition", f"{name} = {a}x{b:+d}", _boxed(f"{a}x{b:+d}"), True
    yield "definition", f"{a}x{b:+d}", _boxed(f"{name} = {a}x{b:+d}"), True
    yield "definition", f"{name} = {a}x{b:+d}", _boxed(f"{a}x{-b:+d}"), False
    lhs = rng.choice([f"{a}x{c:+d}y", "x+y", "x-y", "a+b", "xy"])  # math-verify takes `x+y = 5` for 5
    yield "definition", f"{lhs} = {b}", _boxed(str(b)), False
    yield "definition", f"{lhs} = {b}", _boxed(f"{lhs} = {b}"), True


def _font(rng):
    letter, other = rng.sample("ABCDFGHJKLMNPQRSTUVWXYZ", 2)
    command = rng.choice(["mathcal", "mathscr", "mathbf", "boldsymbol"])
    yield "font", rf"\{command}{{{letter}}}", _boxed(letter), True
    yield "font", letter, _boxed(rf"\{command}{{{letter}}}"), True
    yield "font", rf"\{command}{{{letter}}}", _boxed(rf"\{command}{{{other}}}"), False


def _backslash(rng):
    value, trail = rng.randint(2, 999), rng.choice(["\\\\", "\\", "\\,", "\\;", "\\!", "\\ ", "\\$"])
    yield "backslash", str(value), _boxed(f"{value}{trail}"), True
    yield "backslash", str(value + 1), _boxed(f"{value}{trail}"), False
    yield "backslash", rf"\frac{{1}}{{{value}}}", _boxed(rf"\frac{{1}}{{{value}}}{trail}"), True
    yield "backslash", rf"\frac{{1}}{{{value}}}", _boxed(rf"\frac{{1}}{{{value + 1}}}{trail}"), False


def _several_boxes(rng):
    values = rng.sample(range(-20, 21), rng.randint(2, 3))
    stray = rng.choice([v for v in range(-20, 21) if v not in values])
    gold = r"\{" + ", ".join(map(str, values)) + r"\}"
    shuffled = rng.sample(values, len(values))
    yield "several_boxes", gold, " or ".join(rf"$x = \boxed{{{v}}}$" for v in shuffled), True
    yield "several_boxes", gold, " or ".join(rf"$x = \boxed{{{v}}}$" for v in [*shuffled[:-1], stray]), False
    magnitude = rng.randint(1, 30)
    yield "several_boxes", rf"\pm {magnitude}", rf"$\boxed{{{magnitude}}}$ and $\boxed{{-{magnitude}}}$", True
    yield "several_boxes", rf"\pm {magnitude}", rf"$\boxed{{{magnitude}}}$ and $\boxed{{{magnitude}}}$", False


GENERATORS = (_mixed, _thousands, _clock, _complex, _precision, _trig, _definition, _font, _backslash, _several_boxes)
GENERATED = [case for seed in range(4) for gen in GENERATORS for case in gen(random.Random(f"{gen.__name__}{seed}"))]
CLASSES = tuple(dict.fromkeys(c for c, *_ in CASES + GENERATED))


@pytest.mark.parametrize("cls, gold, response, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_case_table(cls, gold, response, expected):
    from eval.grading import grade

    assert grade(response, gold) is expected


@pytest.mark.parametrize(
    "cls, gold, response, expected", GENERATED, ids=[f"{c[0]}-gen{i}" for i, c in enumerate(GENERATED)]
)
def test_generated_cases(cls, gold, response, expected):
    from eval.grading import grade

    assert grade(response, gold) is expected


def test_every_class_has_equal_and_unequal_cases():
    for cls in CLASSES:
        for table in (CASES, GENERATED):
            verdicts = {expected for c, _, _, expected in table if c == cls}
            assert not verdicts or {True, False} <= verdicts, cls


def agreement(grade_fn) -> dict[str, tuple[int, int]]:
    """Per class: (cases where `grade_fn(response, gold)` equals the expected verdict, cases)."""
    out: dict[str, tuple[int, int]] = {}
    for cls, gold, response, expected in CASES + GENERATED:
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


def test_heldout_check_fails_a_constant_grader():
    # tests/probes/grading_heldout.py is run by hand and not used to tune the grader; this checks only its
    # logic: a grader that says True (or False) to everything scores below 1 in every class
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "probes" / "grading_heldout.py"
    spec = importlib.util.spec_from_file_location("grading_heldout", path)
    heldout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heldout)
    for constant in (True, False):
        table, misses = heldout.agreement(lambda response, gold, c=constant: c)
        assert all(hit < n for hit, n in table.values()), constant
        assert len(misses) == sum(n - hit for hit, n in table.values())
