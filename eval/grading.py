"""Grading math answers: is the final answer in a model response equal to the gold answer?

`grade(response, gold)` reads the answer the response states last (`zs_llm.answers.final_answer`:
the last `\\boxed{}` or a later "final answer is X" line), normalises what math-verify misreads,
and compares it with the gold answer using math-verify. When the response states no answer (or
its answer does not parse), math-verify's own extraction reads the response's tail, the way
lighteval and open-r1 grade (LaTeX and plain expressions, boxed answers first).

Normalisation applied before math-verify sees either side:
- thousands separators: `10\\,000`, `10{,}000`, `10,\\!000`, `10\\ 000`, thin spaces, and in an answer `1 000`;
- units: trailing unit words or `\\text{}` units after a number (`10 weeks`, `5\\text{ dollars}`);
- primes: `f'(x)` becomes `f^{\\prime}(x)` (math-verify drops the prime and equates it with `f(x)`);
- `\\mathrm{e}` and `\\mathrm{i}` become the constants `e` and `i`; `4.5e33` becomes `4.5\\times10^{33}`;
- several boxes against a gold of several answers: `\\boxed{-2}` and `\\boxed{1}` answer `1,-2`
  (a `\\pm` counts as two: `\\boxed{5}` and `\\boxed{-5}` answer `\\pm 5`);
- a mixed number `3 1/2` becomes `\\frac{7}{2}` (math-verify itself reads `3\\frac{1}{2}` as 7/2);
- a letter in another font is the letter: `\\mathcal{A}`, `\\mathbf{v}` (not `\\mathbb{R}`);
- what an answer ends with that says nothing: a trailing `\\\\`, `\\`, LaTeX spacing or `\\$`.

Compared outside math-verify or after it says no (choices stated in docs/protocol.md, Grading):
- clock times (`9:30`, `9:30 a.m.`, `21:30`, `\\text{4:15 PM}`) are compared as times of day;
- a free `i` is the imaginary unit: `(1+i)^2` equals `2i`;
- a decimal gold states its precision: an exact answer that rounds to it (`\\frac{1}{3}` for 0.33)
  is right; a decimal answer keeps math-verify's comparison, and an exact gold wants the value;
- an equation gold (`x + y = 5`) is answered by its right-hand side alone only when its left side
  names what it defines (`y = 2x+1`, `f(x) = 2x`).

A gold answer that is prose ("min at x=-1, max at x=1") is not graded: status `gold_free_text`,
correct None, like a gold that does not parse (`gold_unparseable`); both are counted in `stats` and
excluded from accuracy, never scored 0.

Why a worker process: math-verify's own timeouts use `signal.alarm`, which only works on the main
thread, and sympy can spend minutes (or gigabytes) inside C code on inputs such as `9^9^9^9`, where
no signal reaches it. So parsing and verification run in one persistent child process. Inside it a
soft timer interrupts slow Python code; if the child has not answered shortly after the limit, it
is killed and a fresh one is started. A timed-out grade is False and is counted in `stats`. Model
text is only ever parsed, never executed.

    >>> grade("... so the total is $\\boxed{\\frac{1}{2}}$.", "0.5")
    True
    >>> grade("Final Answer: The final answer is $10\\,000$. I hope it is correct.", "10000")
    True
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

_WORKER_MODULE = "_zs_llm_grading_worker"
if __name__ != _WORKER_MODULE:
    # the worker process loads this file by path and needs only math-verify: importing the
    # zs_llm package there would pull in torch (seconds of start-up, past its memory cap)
    from zs_llm.answers import Answer, boxed_answers, extract_answer, extract_boxed, final_answer  # noqa: F401

MAX_ANSWER_CHARS = 1_000  # longest gold in the local sets is 988 characters (college_math)
# math-verify's own extraction reads only this tail of a response: its patterns cost more than
# linear time on hostile text, and a response's final answer is at its end
MAX_TEXT_CHARS = 10_000
WORKER_GRACE_S = 1.0  # how long past the limit we wait before killing the worker
WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a busy 2-core machine can take several seconds
WORKER_MEMORY_BYTES = 4 << 30  # address-space cap inside the worker: `9^9^9` must not eat the host

_PLAIN_INT = re.compile(r"[+-]?\d+")
# math-verify reads `4.5e33` as 4.5*E*33; minerva_math has 58 gold answers written that way.
_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d*)?|\.\d+)[eE]([-+]?\d+)(?![\w.])")
_CONSTANT = re.compile(r"\\(?:mathrm|mathit|textrm|text|operatorname|rm)\s*\{\s*([ei])\s*\}")
_NUMPY = re.compile(r"\bnp\.([a-z]+)\b")  # one minerva gold is `np.arcsin(10/13)`
# `f'(x)`, `y''`: a single letter and its primes, not an apostrophe inside a word ("it's")
_PRIME = re.compile(r"(?<![A-Za-z\\])([A-Za-z])('+)(?![A-Za-z'])")
# thousands groups: 10\,000, 10{,}000, 10,\!000, 10\ 000, 10~000 and Unicode thin or no-break spaces;
# a first group never starts with 0, so the decimal comma of `0{,}125` is left alone
_THOUSANDS = re.compile(
    r"(?<![\d.])[1-9]\d{0,2}(?:(?:,\\!|\\[,;:! ]|\\thinspace\b|\{,\}|~|[\u2009\u202f\u00a0])\s?\d{3})+(?!\d)"
)
# `\mathcal{A}`, `\mathbf{v}`: a letter in another font is the letter (math-verify reads `\mathcal{A}`
# as a symbol named `math{a}`); `\mathbb{R}` and `\mathfrak{g}` name other objects and are kept, and
# so are `\mathbf{e}` and `\mathbf{i}` (unit vectors, not the constants e and i)
_FONT_LETTER = re.compile(r"\\(?:mathcal|mathscr|mathbf|boldsymbol|bm|mathsf|mathit)\s*\{\s*((?![ei])[A-Za-z])\s*\}")
# what an answer may end with that says nothing: spaces, `\\`, a lone `\`, LaTeX spacing, a `\$` sign
_TRAILING = re.compile(r"(?:\s|\\[\\,;:!$ ]?)+$")
# `3 1/2`: a whole number and a proper fraction (math-verify reads `3 1/2` as 2)
_MIXED_PLAIN = re.compile(r"([+-]?)(\d+)\s+(\d+)\s*/\s*(\d+)")
# a clock time once `\\text{}`, `$` and LaTeX spacing are gone: `9:30`, `09:30 a.m.`, `4:15 PM`, `12:00 noon`
_CLOCK = re.compile(r"(\d{1,2})\s*:\s*(\d{2})\s*(?:(a|p)\.?\s*m\b\.?|(noon)|(midnight)|o'?clock)?\s*\.?", re.IGNORECASE)
_CLOCK_TEXT = re.compile(r"\\(?:text|textrm|mathrm|mbox|rm)\s*\{([^{}]*)\}")
_CLOCK_COLON = re.compile(r"\{:\}|\\colon\b")
_CLOCK_SPACE = re.compile(r"\$|\\[,;! ]|~")
_DECIMAL = re.compile(r"[+-]?\d*\.\d+")  # a gold written to stated decimal places
_SPACE_THOUSANDS = re.compile(r"(?<![\d.,])[1-9]\d{0,2}(?: \d{3})+(?![\d]|[.,]\d)")  # `1 000`: in an answer only
_ANSWER_IS = re.compile(
    r"^\s*(?:the\s+)?(?:solution|answer)s?\s*(?:(?:is|are)\s*:?|:)\s*", re.IGNORECASE
)  # "Solution is: k=4"
_PERCENT_WORD = re.compile(r"\s*\bper\s?cent\b", re.IGNORECASE)
_TEXT_WRAPPER = re.compile(r"\\(?:textrm|text|mathrm|mbox|rm|mathit|operatorname)\s*\{([^{}]*)\}")
# unit words at the end of an answer: words (whole runs of letters, not LaTeX commands), each with
# an optional power, joined by spaces, `/`, `\cdot` or LaTeX spacing
_UNIT_TAIL = re.compile(
    r"(?:(?:\s|~|\\[,;:! ]|/|\\cdot|\*|\.)*(?<![A-Za-z\\])[A-Za-z]+(?:\s*\^\s*(?:\{\s*-?\d+\s*\}|-?\d))?)+[\s.]*$"
)
_SI_LETTERS = frozenset("m s g h L N J W V K".split())  # one-letter units; other single letters are variables
_LETTER_IN_VALUE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]")  # a letter that is not part of a LaTeX command
# words that are maths, not units or prose
_MATH_WORDS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp pi sqrt det max min mod and or".split()
)
# a word as prose writes it ("at", "Solution"), not an acronym (MR), a LaTeX command or `dM`
_PROSE_WORD = re.compile(r"(?<![A-Za-z\\])(?:[A-Z]?[a-z]{2,}|[A-Z][a-z])(?![A-Za-z])")
_TWO_LETTER_WORDS = frozenset("at is in of to so be by an no on up it we if as do or".split())  # not `dt`
# names, not words: subscripts (`\lambda_{\text{red}}`) and the arguments of `\begin{pmatrix}`,
# `\mathbb{R}`, `\mathrm{gb}`
_NAMES = re.compile(
    r"_\s*\{(?:[^{}]|\{[^{}]*\})*\}|\\begin\s*\{array\}\s*\{[^{}]*\}"
    r"|\\(?:begin|end|operatorname|mathbb|mathcal|mathfrak|mathrm|mathbf|vec|hat)\s*\{[^{}]*\}"
)


# ---------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class GradeResult:
    """One graded response. `correct` is None when the gold answer is not graded (it does not parse,
    or it is prose).

    `pred` is the answer string the grade used (None if there was none); `source` says where it
    came from: "boxed", "phrase" (a "final answer is" line), "boxes" (several boxes read as one
    answer) or "response" (math-verify's extraction from the whole response).
    """

    correct: bool | None
    pred: str | None
    status: str  # ok | no_answer | too_long | gold_unparseable | gold_free_text | timeout
    source: str | None = None


def normalise(text: str, answer: bool = True) -> str:
    """`text` rewritten where math-verify misreads it (see the module docstring). `answer=False`
    (a whole response) skips the rewrites that only make sense for a bare answer: spaces between
    digit groups and unit words."""
    text = _SCIENTIFIC.sub(r"\1\\times10^{\2}", text)
    text = _CONSTANT.sub(r"\1", text)
    text = _NUMPY.sub(r"\\\1", text)
    text = _THOUSANDS.sub(_digits_only, text)
    text = _PRIME.sub(lambda m: m.group(1) + "^{" + "\\prime" * len(m.group(2)) + "}", text)
    text = _FONT_LETTER.sub(r"\1", text)
    if answer:
        text = _ANSWER_IS.sub("", text)
        text = _TRAILING.sub("", text)
        text = _SPACE_THOUSANDS.sub(_digits_only, text)
        text = _PERCENT_WORD.sub(r"\\%", text)
        text = strip_units(text)
        text = _mixed_number(text)
    return text.strip()


def _mixed_number(answer: str) -> str:
    """`3 1/2` -> `\\frac{7}{2}`, `-1 1/4` -> `-\\frac{5}{4}`; anything else unchanged. Only a whole
    answer, and only a proper fraction: `2 3/2` is left as written. (`3\\frac{1}{2}` needs nothing:
    math-verify reads it as 7/2.)"""
    m = _MIXED_PLAIN.fullmatch(answer.strip())
    if m is None:
        return answer
    sign, whole, num, den = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    if not 0 < num < den:
        return answer
    return f"{'-' if sign == '-' else ''}\\frac{{{whole * den + num}}}{{{den}}}"


def strip_units(answer: str) -> str:
    """`answer` without unit words after a number: "10 cm^2" -> "10", "5\\text{ dollars}" -> "5".

    Only when what precedes the units is a number (digits and LaTeX commands, after an optional
    `x =`), so "2 x" and "\\text{(B)}" are kept.
    """
    plain = _TEXT_WRAPPER.sub(r" \1 ", answer)
    m = _UNIT_TAIL.search(plain)
    if m is None:
        return answer
    words = re.findall(r"[A-Za-z]+", m.group())
    if any(w.lower() in _MATH_WORDS or (len(w) == 1 and w not in _SI_LETTERS) for w in words):
        return answer
    value = plain[: m.start()].rstrip()
    number = value.rsplit("=", 1)[-1]
    if not re.search(r"\d", number) or _LETTER_IN_VALUE.search(number):
        return answer
    return value


def is_free_text(gold: str) -> bool:
    """Whether a gold answer is prose rather than maths: two or more words ("all real numbers",
    "min at x=-1, max at x=1"), or one word beside numbers ("\\max at x=7"). A lone word such as
    `\\text{Evelyn}` is an answer math-verify compares as text."""
    words = [
        w
        for w in _PROSE_WORD.findall(_NAMES.sub(" ", gold))
        if w.lower() not in _MATH_WORDS and (len(w) > 2 or w.lower() in _TWO_LETTER_WORDS)
    ]
    return len(words) >= 2 or (len(words) == 1 and re.search(r"[\d=<>]", gold) is not None)


def clock_time(answer: str) -> tuple[int, str | None] | None:
    """`answer` as a clock time: (minutes after midnight or after noon, "am" | "pm" | None), or None
    when it is not one. `9:30` -> (570, None), `9:30 p.m.` -> (1290, "pm"), `21:30` -> (1290, "pm"),
    `12:00 noon` -> (720, "pm"); an hour past 23 or a minute past 59 is not a time."""
    text = _CLOCK_SPACE.sub(" ", _CLOCK_COLON.sub(":", _CLOCK_TEXT.sub(r" \1 ", answer)))
    m = _CLOCK.fullmatch(text.strip())
    if m is None:
        return None
    hour, minute = int(m.group(1)), int(m.group(2))
    if m.group(5):
        half = "am"  # midnight
    elif m.group(4):
        half = "pm"  # noon
    else:
        half = m.group(3).lower() + "m" if m.group(3) else None
    if minute > 59 or hour > 23 or (half is not None and not 1 <= hour <= 12):
        return None
    if half is not None:
        return (hour % 12 + (12 if half == "pm" else 0)) * 60 + minute, half
    if hour == 0 or hour > 12:  # a 24-hour time says which half of the day it is
        return hour * 60 + minute, "am" if hour < 12 else "pm"
    return hour * 60 + minute, None


def same_clock_time(gold: str, pred: str) -> bool | None:
    """Whether two clock times are the same time, or None unless both are clock times. A time
    without a.m./p.m. (`9:30`) matches the same time in either half of the day (`9:30 p.m.`,
    `21:30`); two times that name their halves must name the same one. Two `h:mm` answers are read
    as times, not ratios: `1:20` and `2:40` differ."""
    g, p = clock_time(gold), clock_time(pred)
    if g is None or p is None:
        return None
    if g[1] is not None and p[1] is not None:
        return g[0] == p[0]
    return (g[0] - p[0]) % 720 == 0


def count_answers(answer: str) -> int:
    """How many answers a comma list holds: "1,-2" -> 2, "\\{1, 2, 3\\}" -> 3, "\\pm 5" -> 2; a tuple
    or interval "(1,2)" and a number "1,000" are one."""
    s = answer.strip()
    for left, right in (("\\left\\{", "\\right\\}"), ("\\{", "\\}")):
        if s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)]
            break
    thousands = {m.start() for m in re.finditer(r"(?<=\d),(?=\d{3}(?!\d))", s)}
    depth, n = 0, 1
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0 and i not in thousands:
            n += 1
    return n * 2 ** len(re.findall(r"\\(?:pm|mp)\b", s))


def _compact(answer: str) -> str:
    return re.sub(r"\s+|\\left\b|\\right\b|\\[,;:!]", "", answer)


def _digits_only(m: re.Match) -> str:
    return re.sub(r"\D", "", m.group())


def _several_boxes(response: str, k: int, pred: str, source: str) -> tuple[str, str]:
    """For a gold of `k` answers: the last `k` distinct boxed answers joined as one list
    ("\\boxed{-2} ... \\boxed{1}" -> "-2, 1"), or the last box alone when there are fewer."""
    seen: list[str] = []
    for box in reversed(boxed_answers(response[-MAX_TEXT_CHARS:])):
        text = box.text.strip().strip("$").strip()
        if text and text not in seen:
            seen.append(text)
            if len(seen) == k:
                return ", ".join(reversed(seen)), "boxes"
    return pred, source


class Grader:
    """Grades responses in a persistent worker process; safe to call from any thread.

    `stats` counts calls, timeouts, worker restarts, unparseable and prose golds, answers too long to
    parse, and answers found only by math-verify's reading of the whole response.
    Use one `Grader` per run to get per-run counts, or the module-level `grade` functions.
    """

    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        self.stats = {
            "calls": 0,
            "timeouts": 0,
            "restarts": 0,
            "gold_unparseable": 0,
            "gold_free_text": 0,
            "too_long": 0,
            "from_response": 0,  # answers found by math-verify's extraction, not by `final_answer`
        }
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._next_id = 0

    def check(self, response: str, gold: str, timeout: float | None = None) -> GradeResult:
        """Find the final answer in `response` and compare it with `gold`, within `timeout` seconds."""
        limit = self.timeout if timeout is None else timeout
        gold = "" if gold is None else str(gold).strip()
        response = response or ""
        with self._lock:
            self.stats["calls"] += 1
            if not gold or len(gold) > MAX_ANSWER_CHARS:
                self.stats["gold_unparseable"] += 1
                return GradeResult(None, None, "gold_unparseable")
            raw_gold, gold = gold, normalise(gold)
            answer = final_answer(response)
            pred, source = (answer.text, answer.source) if answer is not None and answer.text else (None, None)
            if is_free_text(gold):
                self.stats["gold_free_text"] += 1
                return GradeResult(None, pred, "gold_free_text", source)
            if pred is not None and source == "boxed" and (k := count_answers(gold)) > count_answers(pred):
                pred, source = _several_boxes(response, k, pred, source)
            if pred is not None and len(pred) > MAX_ANSWER_CHARS:
                self.stats["too_long"] += 1
                return GradeResult(False, pred, "too_long", source)
            if pred is not None and (same := same_clock_time(raw_gold, pred)) is not None:
                return GradeResult(same, pred, "ok", source)  # read before normalise drops `PM` as a unit
            pred_n = None if pred is None else normalise(pred)
            if pred_n is not None and _PLAIN_INT.fullmatch(gold) and _PLAIN_INT.fullmatch(pred_n):
                # The common case for arithmetic and AIME ("025" vs "25") needs no sympy.
                return GradeResult(int(gold) == int(pred_n), pred, "ok", source)
            text = normalise(response[-MAX_TEXT_CHARS:], answer=False)
            status, used = self._ask(gold, pred_n, limit, text=text)
            if used is not None and used != pred_n:  # the answer came from math-verify's extraction
                pred, source = used, "response"
                self.stats["from_response"] += 1
            if status == "gold_unparseable":
                self.stats["gold_unparseable"] += 1
                return GradeResult(None, pred, status, source)
            if status == "timeout":
                self.stats["timeouts"] += 1
                return GradeResult(False, pred, status, source)
            if status == "no_answer":
                return GradeResult(False, None, status)
            return GradeResult(status == "true", pred, "ok", source)

    def grade(self, response: str, gold: str, timeout: float | None = None) -> bool | None:
        """True/False, or None when the gold answer cannot be parsed (callers report and skip it)."""
        return self.check(response, gold, timeout).correct

    def grade_many(self, pairs: Iterable[tuple[str, str]], timeout: float | None = None) -> list[bool | None]:
        """`grade` over `(response, gold)` pairs, in order."""
        return [self.grade(response, gold, timeout) for response, gold in pairs]

    def start(self) -> None:
        """Start the worker now (it imports math-verify, ~1 s) so that the first grade needing it
        does not wait; a no-op when it is running."""
        with self._lock:
            self._live_worker()

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.kill()
                self._worker = None

    def _live_worker(self) -> _Worker:
        """The running worker, started anew when there is none or it died (call under the lock)."""
        if self._worker is None or self._worker.proc.poll() is not None:
            self._worker = _Worker()
        return self._worker

    def _ask(self, gold: str, pred: str | None, limit: float, **extra) -> tuple[str, str | None]:
        """The worker's verdict ("true", "false", "no_answer", "gold_unparseable" or "timeout") and
        the answer it graded."""
        self._live_worker()
        self._next_id += 1
        job_id = self._next_id
        self._worker.send({"id": job_id, "gold": gold, "pred": pred, "timeout": limit, **extra})
        deadline = time.monotonic() + limit + WORKER_GRACE_S
        while True:
            reply = self._worker.receive(deadline)
            if reply is None:  # stuck in C code (or dead): replace it; the new one warms up meanwhile
                self._worker.kill()
                self._worker = _Worker()
                self.stats["restarts"] += 1
                return "timeout", pred
            if reply.get("id") == job_id:
                return reply["status"], reply.get("pred", pred)

    def __del__(self):
        worker = getattr(self, "_worker", None)
        if worker is None:
            return
        try:
            worker.kill()
        except Exception:  # noqa: BLE001  at interpreter exit `subprocess`'s globals may be gone; the
            pass  # worker ends anyway when its stdin closes with this process


_DEFAULT: Grader | None = None
_DEFAULT_LOCK = threading.Lock()


def default_grader() -> Grader:
    """The shared grader used by the module-level functions (started on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Grader()
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def grade(response: str, gold: str, timeout: float = 5.0) -> bool | None:
    """Is the final answer in `response` equal to `gold`? None if `gold` cannot be parsed or is prose.

    No answer anywhere in the response, or a grade that runs past `timeout` seconds, give False.
    """
    return default_grader().grade(response, gold, timeout)


def grade_many(pairs: Iterable[tuple[str, str]], timeout: float = 5.0) -> list[bool | None]:
    """`grade` over `(response, gold)` pairs, in order."""
    return default_grader().grade_many(pairs, timeout)


def check(response: str, gold: str, timeout: float = 5.0) -> GradeResult:
    """`grade` with its reasons: the answer used, where it came from, and a status."""
    return default_grader().check(response, gold, timeout)


def grading_stats() -> dict[str, int]:
    """Counts from the shared grader: calls, timeouts, restarts, gold_unparseable, gold_free_text,
    too_long, from_response."""
    return dict(default_grader().stats)


# ---------------------------------------------------------------------------- worker process


class _Worker:
    """A child Python running `_worker_main`, spoken to in JSON lines over its stdin/stdout."""

    def __init__(self):
        # Load this file by path (not as `eval.grading`) so the child needs no sys.path set-up;
        # -P keeps the working directory off sys.path, where a local `eval/` or `datasets/` would shadow.
        code = (
            "import importlib.util as u;"
            f"s=u.spec_from_file_location({_WORKER_MODULE!r}, {os.path.abspath(__file__)!r});"
            "m=u.module_from_spec(s);import sys;sys.modules[s.name]=m;s.loader.exec_module(m);m._worker_main()"
        )
        flags = ["-P"] if sys.version_info >= (3, 11) else []
        self.proc = subprocess.Popen(
            [sys.executable, *flags, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # stderr is inherited so a crash in the worker shows its traceback; its logging is off.
            text=True,
            encoding="utf-8",
            bufsize=1,
            # its own session: a Ctrl-C at the terminal (SIGINT to the process group) reaches the
            # parent only, which stops the run; the worker ends when its stdin closes
            start_new_session=True,
        )
        self.replies: queue.Queue[dict | None] = queue.Queue()
        self.ready = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.replies.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.replies.put(None)

    def send(self, job: dict) -> None:
        if not self.ready:
            reply = self.receive(time.monotonic() + WORKER_START_TIMEOUT_S)
            if reply is None or reply.get("status") != "ready":
                raise RuntimeError("the grading worker did not start; is math-verify installed?")
            self.ready = True
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def receive(self, deadline: float) -> dict | None:
        try:
            return self.replies.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def kill(self) -> None:
        # stdout is left to the reader thread, which sees EOF and ends; closing it here can deadlock
        # with that thread at interpreter shutdown.
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except OSError:
            pass


class _SoftTimeout(BaseException):
    """Raised by the worker's timer; a BaseException so library `except Exception` blocks let it pass."""


def _equation_against_value(g, p) -> bool:
    """math-verify reads `x + y = 5` against `5` as its right-hand side; only a gold that names what
    it defines (`y = 2x + 1`, `f(x) = 2x`, `\\tan\\theta = 3/4`) may be answered by the right-hand side alone."""
    from sympy import Eq, Function, Symbol
    from sympy.core.relational import Relational

    if not isinstance(g, Eq) or isinstance(p, Relational):
        return False
    lhs = g.lhs
    named = isinstance(lhs, Symbol) or (isinstance(lhs, Function) and all(isinstance(a, Symbol) for a in lhs.args))
    return not named


def _rounds_to(gold: str, p) -> bool:
    """A decimal gold states its precision: an exact answer (1/3, pi, sqrt 2; no decimal of its own)
    that rounds to it is right; a decimal answer keeps math-verify's 6-place comparison."""
    from sympy import Expr, Float, Rational

    if not _DECIMAL.fullmatch(gold) or not isinstance(p, Expr) or p.atoms(Float) or not p.is_number:
        return False
    places = len(gold.split(".")[1])
    value = p.evalf(places + 15)
    if value.is_real is not True:
        return False
    return abs(value - Rational(gold)) <= Rational(1, 2 * 10**places) * (1 + Rational(1, 10**12))


def _with_unit_i(expr):
    """math-verify keeps `i` a symbol, so `(1+i)^2` and `2i` differ; a free `i` in a final answer is
    the imaginary unit (an index `i` is bound inside its sum and is not touched). None: no free `i`."""
    from sympy import I, Symbol

    free = [s for s in getattr(expr, "free_symbols", ()) if isinstance(s, Symbol) and s.name == "i"]
    return expr.subs({s: I for s in free}) if free else None


class _Judge:
    """The worker's grading: math-verify's parse and verify, and our rules around them (the
    equation, decimal-precision and imaginary-unit readings). Built inside the worker, which alone
    imports math-verify and sympy."""

    def __init__(self):
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

        self.parse, self.verify = parse, verify
        self.gold_cache: dict[str, list] = {}
        # lighteval's and open-r1's reading of a whole response: boxed answers first, then LaTeX
        # after "final answer is" / "answer:", then any LaTeX or plain expression, rightmost first
        self.whole_response = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    def parse_boxed(self, answer: str) -> list:
        # A \boxed{} wrapper makes math-verify read the whole string as one LaTeX answer.
        return self.parse("\\boxed{" + answer + "}", parsing_timeout=None)

    @staticmethod
    def is_math(parsed: list) -> bool:
        # Only a string fallback (no sympy object) means nothing we can compare.
        return any(not isinstance(p, str) for p in parsed)

    @staticmethod
    def first_expr(parsed: list):
        return next((p for p in parsed if not isinstance(p, str)), None)

    def agree(self, gold: str, gold_parsed: list, pred_parsed: list) -> bool:
        g, p = self.first_expr(gold_parsed), self.first_expr(pred_parsed)
        if _equation_against_value(g, p):
            return False
        if self.verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return True
        if _rounds_to(gold, p):
            return True
        g_i, p_i = _with_unit_i(g), _with_unit_i(p)
        if g_i is None and p_i is None:
            return False
        return self.verify([g if g_i is None else g_i], [p if p_i is None else p_i], timeout_seconds=None)

    def __call__(self, gold: str, pred: str | None, text: str | None) -> tuple[str, str | None]:
        if gold not in self.gold_cache:
            parsed = self.parse_boxed(gold)
            if len(self.gold_cache) > 10_000:
                self.gold_cache.clear()
            self.gold_cache[gold] = parsed if self.is_math(parsed) else []
        gold_parsed = self.gold_cache[gold]
        if not gold_parsed:
            return "gold_unparseable", pred
        if pred and _compact(pred) == _compact(gold):  # the same text: sympy can take seconds to agree
            return "true", pred
        if pred:
            pred_parsed = self.parse_boxed(pred)
            if self.is_math(pred_parsed):
                return ("true" if self.agree(gold, gold_parsed, pred_parsed) else "false"), pred
        if text:
            found = self.parse(text, self.whole_response, parsing_timeout=None)
            if self.is_math(found):
                used = next((p for p in found if isinstance(p, str)), None) or str(found[0])
                return ("true" if self.agree(gold, gold_parsed, found) else "false"), used
        return ("false", pred) if pred else ("no_answer", None)


def _worker_main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C, and closes our stdin
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    import logging

    logging.disable(logging.CRITICAL)  # math-verify logs every parse failure

    # Replies go to the real stdout; anything a library prints goes to stderr (discarded).
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr

    def on_alarm(signum, frame):
        raise _SoftTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    judge = _Judge()
    judge("\\frac{1}{2}", "0.5", None)  # the first verify imports and builds sympy internals: do it before timing
    judge("1", None, "The answer is $1$.")
    judge.gold_cache.clear()
    out.write(json.dumps({"status": "ready"}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        try:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, float(job["timeout"])))
            try:
                if "stall" in job:  # tests: behave like C code that no signal can interrupt
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                    time.sleep(job["stall"])
                status, used = judge(job["gold"], job["pred"], job.get("text"))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:  # also if the timer fires between judge() returning and the reset
            status, used = "timeout", job["pred"]
        except Exception:  # RecursionError, MemoryError, sympy's own errors
            status, used = "false", job["pred"]
        out.write(json.dumps({"id": job["id"], "status": status, "pred": used}) + "\n")
