"""Final-answer extraction from model responses: the collapse guard's extractor, the one that
reads gold answers out of solutions, and the first place the harness's grader looks
(`eval.grading` falls back to math-verify on the whole response when it finds nothing here).

A response's final answer is the last answer it states: the last non-empty `\\boxed{}`, or a
later "final answer is X", "the answer is X" or "#### X", whichever comes last. So a
Minerva-style closing line beats an intermediate box, and "The final answer is 1. The answer is
within \\boxed{}." gives 1.

    >>> extract_answer("Final Answer: The final answer is $(1,2)$. I hope it is correct.")
    '(1,2)'

Model output is untrusted text: every function here runs in linear time and executes nothing.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass

MAX_RESPONSE_CHARS = 1_000_000  # longer responses keep only their tail, where the final answer is
MAX_PHRASE_CHARS = 2_000  # of the text after "the answer is": bounds the work per phrase on hostile text

_BOX_OR_BRACE = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
_BOX_TOKEN = re.compile(r"\\boxed\s+([^\s{}$]+)")  # `\boxed 5`: one token, no braces
_PHRASES = re.compile(
    r"(?:(?:final\s+answer\s*(?:is|:)|the\s+answer\s+is)[ \t]*:?|####)[ \t]*(?:\n\s*)?([^\n]*)",
    flags=re.IGNORECASE,
)
# "Final Answer: The final answer is $X$" restates the phrase inside the line it opens
_LEADING_PHRASE = re.compile(r"^\s*(?:(?:the\s+)?final\s+answer\s*(?:is|:)|the\s+answer\s+is|is\b|:)\s*", re.IGNORECASE)
# a math span opening the answer: `$X$`, `$$X$$`, `\(X\)`, `\[X\]` (matched at the start only: linear)
_MATH_SPAN = re.compile(r"[\s:*]*(?:\$\$(.+?)\$\$|\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\])")
# where a stated answer's sentence ends: "I hope it is correct", or a full stop before a space or
# the end (a decimal point is followed by a digit)
_SENTENCE_END = re.compile(r"\bI\s+hope\b|\.(?:\s|$)|,?\s+(?:since|because|as|which|so|where|when)\b", re.IGNORECASE)
_MATH_DOLLAR = re.compile(r"(?<!\\)\$")
# a phrase answer must look like one: math, a digit, or a token as short as "(B)"; "the answer is
# correct" or "the answer is within the box" state nothing
_LOOKS_LIKE_ANSWER = re.compile(r"[\d\\^_=+*/<>|(\[{-]")
# prose inside a phrase answer ("5 because 2 + 3 = 5"): after a box, the box is the cleaner answer;
# unit words at the end ("70 miles per hour") are not prose of that kind
_PROSE = re.compile(r"(?<![A-Za-z\\])[a-z]{3,}(?![A-Za-z])")
_LAST_MATH = re.compile(r"[\d=][^\d=]*$")
_NOT_PROSE = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log exp sqrt det max min mod".split()
)
_LATEX_ARG = re.compile(
    r"\\begin\s*\{array\}\s*\{[^{}]*\}|\\(?:text|mathrm|mbox|mathbf|mathbb|operatorname|begin|end)\s*\{[^{}]*\}"
)


@dataclass(frozen=True)
class Answer:
    """A stated answer: its text, where it starts in the response, and how it was stated."""

    text: str
    start: int
    source: str  # "boxed" | "phrase"


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (braces matched), or None.

    `\\boxed 5` (a single token, no braces) also counts. An empty box gives "". Runs in one linear
    pass, so nested or unbalanced braces in hostile text cost no more than plain text.
    """
    boxes = boxed_answers(text)
    return boxes[-1].text if boxes else None


def boxed_answers(text: str) -> list[Answer]:
    """Every outermost complete box in `text` (empty ones too), in order; one linear pass."""
    spans: list[tuple[int, int]] = []  # content spans, in the order the boxes close
    stack: list[int | None] = []  # content start for a box opener, None for a plain "{"
    for m in _BOX_OR_BRACE.finditer(text):
        if m.group() == "}":
            if stack and (start := stack.pop()) is not None:
                spans.append((start, m.start()))
        else:
            stack.append(m.end() if len(m.group()) > 1 else None)
    spans += [t.span(1) for t in _BOX_TOKEN.finditer(text)]
    spans.sort()
    boxes: list[Answer] = []
    end = -1
    for start, stop in spans:
        if start > end:  # not inside the previous outermost box
            boxes.append(Answer(text[start:stop].strip(), start, "boxed"))
            end = stop
    return boxes


def final_answer(response: str) -> Answer | None:
    """The last answer `response` states (see the module docstring), tidied; None if none.

    An empty box counts as an answer ("") only when nothing else is stated.
    """
    if len(response) > MAX_RESPONSE_CHARS:
        response = response[-MAX_RESPONSE_CHARS:]
    boxes = boxed_answers(response)
    box_starts = [b.start for b in boxes]
    stated = [b for b in boxes if b.text]
    last_box = stated[-1] if stated else None
    for m in reversed(list(_PHRASES.finditer(response))):
        if last_box is not None and m.start() < last_box.start:
            break
        if _has_box_within(box_starts, m.start(1), m.end(1)):
            continue  # "the answer is \boxed{5}" is the box; "the answer is within \boxed{}" is nothing
        text = _phrase_answer(m.group(1)[:MAX_PHRASE_CHARS])
        if not text or (len(text) > 3 and not _LOOKS_LIKE_ANSWER.search(text)):
            continue
        if last_box is not None and _has_prose(text):
            continue
        return Answer(text, m.start(1), "phrase")
    if last_box is not None:
        return Answer(_tidy(last_box.text), last_box.start, "boxed")
    if boxes:
        return Answer("", boxes[-1].start, "boxed")
    return None


def extract_answer(response: str) -> str | None:
    """The final answer in a response (`final_answer`'s text): the last boxed answer, or a later
    "final answer is X", "the answer is X" or "#### X". Dollar signs and a trailing period are
    dropped; an empty box with nothing else stated gives "".
    """
    answer = final_answer(response)
    return None if answer is None else answer.text


def _has_box_within(starts: list[int], lo: int, hi: int) -> bool:
    i = bisect_left(starts, lo)
    return i < len(starts) and starts[i] <= hi


def _has_prose(text: str) -> bool:
    """Whether a word of prose comes before a later digit or `=`."""
    text = _LATEX_ARG.sub("", text)
    last = _LAST_MATH.search(text)
    return last is not None and any(w not in _NOT_PROSE for w in _PROSE.findall(text, 0, last.start()))


def _phrase_answer(rest: str) -> str:
    """The answer in the rest of a phrase's line: its first math span, else the text up to the
    sentence's end."""
    for _ in range(3):
        rest, n = _LEADING_PHRASE.subn("", rest, count=1)
        if not n:
            break
    math = _MATH_SPAN.match(rest)
    if math is not None:
        return _tidy(next(g for g in math.groups() if g is not None))
    end = _SENTENCE_END.search(rest)
    return _tidy(rest if end is None else rest[: end.start()])


def _tidy(answer: str) -> str:
    answer = answer.strip()
    answer = _MATH_DOLLAR.sub("", answer).strip()  # math-mode `$`, not an escaped `\$` (money)
    answer = answer.strip("*").strip()  # markdown bold around "**5**"
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    return answer
