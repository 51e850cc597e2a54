"""Final-answer extraction from model responses: one extractor for the harness's grading,
its `extracted` column, gold answers inside solutions, and the collapse guard.

Model output is untrusted text: every function here runs in linear time and executes nothing.
"""

from __future__ import annotations

import re
from collections import deque

MAX_RESPONSE_CHARS = 1_000_000  # longer responses keep only their tail, where the final answer is

_BOX_OR_BRACE = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
_BOX_TOKEN = re.compile(r"\\boxed\s+([^\s{}$]+)")  # `\boxed 5`: one token, no braces
_PHRASES = re.compile(
    r"(?:final\s+answer\s*(?:is|:)|the\s+answer\s+is\s*:?|####)[ \t]*([^\n]+)",
    flags=re.IGNORECASE,
)
_MATH_DOLLAR = re.compile(r"(?<!\\)\$")


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (braces matched), or None.

    `\\boxed 5` (a single token, no braces) also counts. An empty box gives "". Runs in one linear
    pass, so nested or unbalanced braces in hostile text cost no more than plain text.
    """
    best: tuple[int, int] | None = None  # content span of the box that closed last
    stack: list[int | None] = []  # content start for a box opener, None for a plain "{"
    for m in _BOX_OR_BRACE.finditer(text):
        if m.group() == "}":
            if stack and (start := stack.pop()) is not None:
                best = (start, m.start())
        else:
            stack.append(m.end() if len(m.group()) > 1 else None)
    last_token = _last_match(_BOX_TOKEN, text)
    if last_token is not None and (best is None or last_token.start() > best[1]):
        return last_token.group(1).strip()
    return None if best is None else text[best[0] : best[1]].strip()


def extract_answer(response: str) -> str | None:
    """The final answer in a response: the last boxed answer, else the last "the answer is X",
    "final answer: X" or "#### X" (rest of that line). Dollar signs and a trailing period are dropped.
    """
    if len(response) > MAX_RESPONSE_CHARS:
        response = response[-MAX_RESPONSE_CHARS:]
    answer = extract_boxed(response)
    if answer is None:
        last = _last_match(_PHRASES, response)
        if last is None:
            return None
        answer = last.group(1)
    return _tidy(answer)


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def _tidy(answer: str) -> str:
    answer = answer.strip()
    answer = _MATH_DOLLAR.sub("", answer).strip()  # math-mode `$`, not an escaped `\$` (money)
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    return answer
