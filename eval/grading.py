"""Answer extraction and grading for math sets.

`grade(response, gold)` pulls the final answer out of a model response (the last `\\boxed{}`, else a
"the answer is ..." phrase) and checks it against the gold answer with math-verify.

Why a worker process: math-verify's own timeouts use `signal.alarm`, which only works on the main
thread, and sympy can spend minutes (or gigabytes) inside C code on inputs such as `9^9^9^9`, where
no signal reaches it. So parsing and verification run in one persistent child process. Inside it a
soft timer interrupts slow Python code; if the child has not answered shortly after the limit, it
is killed and a fresh one is started. A timed-out grade is False and is counted in `stats`. Model
text is only ever parsed, never executed.

    >>> grade("... so the total is $\\boxed{\\frac{1}{2}}$.", "0.5")
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
    from zs_llm.answers import extract_answer, extract_boxed  # noqa: F401 (extract_boxed re-exported)

MAX_ANSWER_CHARS = 1_000  # longest gold in the local sets is 988 characters (college_math)
WORKER_GRACE_S = 1.0  # how long past the limit we wait before killing the worker
WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a busy 2-core machine can take several seconds
WORKER_MEMORY_BYTES = 4 << 30  # address-space cap inside the worker: `9^9^9` must not eat the host

_PLAIN_INT = re.compile(r"[+-]?\d+")
# math-verify reads `4.5e33` as 4.5*E*33; minerva_math has 58 gold answers written that way.
_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d*)?|\.\d+)[eE]([-+]?\d+)(?![\w.])")


# ---------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class GradeResult:
    """One graded response. `correct` is None when the gold answer could not be parsed."""

    correct: bool | None
    pred: str | None  # the extracted answer, None if there was none
    status: str  # ok | no_answer | too_long | gold_unparseable | timeout


class Grader:
    """Grades responses in a persistent worker process; safe to call from any thread.

    `stats` counts calls, timeouts, worker restarts, unparseable golds and answers too long to parse.
    Use one `Grader` per run to get per-run counts, or the module-level `grade` functions.
    """

    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        self.stats = {"calls": 0, "timeouts": 0, "restarts": 0, "gold_unparseable": 0, "too_long": 0}
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._next_id = 0

    def check(self, response: str, gold: str, timeout: float | None = None) -> GradeResult:
        """Extract the answer from `response` and compare it with `gold`, within `timeout` seconds."""
        limit = self.timeout if timeout is None else timeout
        gold = "" if gold is None else str(gold).strip()
        with self._lock:
            self.stats["calls"] += 1
            if not gold or len(gold) > MAX_ANSWER_CHARS:
                self.stats["gold_unparseable"] += 1
                return GradeResult(None, None, "gold_unparseable")
            pred = extract_answer(response or "")
            if not pred:  # no answer, or an empty box
                return GradeResult(False, pred, "no_answer")
            if len(pred) > MAX_ANSWER_CHARS:
                self.stats["too_long"] += 1
                return GradeResult(False, pred, "too_long")
            gold, pred = (
                _SCIENTIFIC.sub(r"\1\\times10^{\2}", gold),
                _SCIENTIFIC.sub(r"\1\\times10^{\2}", pred),
            )
            if _PLAIN_INT.fullmatch(gold) and _PLAIN_INT.fullmatch(pred):
                # The common case for arithmetic and AIME ("025" vs "25") needs no sympy.
                return GradeResult(int(gold) == int(pred), pred, "ok")
            status = self._ask(gold, pred, limit)
            if status == "gold_unparseable":
                self.stats["gold_unparseable"] += 1
                return GradeResult(None, pred, status)
            if status == "timeout":
                self.stats["timeouts"] += 1
                return GradeResult(False, pred, status)
            return GradeResult(status == "true", pred, "ok")

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

    def _ask(self, gold: str, pred: str, limit: float, **extra) -> str:
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
                return "timeout"
            if reply.get("id") == job_id:
                return reply["status"]

    def __del__(self):
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.kill()


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
    """Is the final answer in `response` equal to `gold`? None if `gold` cannot be parsed.

    No extracted answer, an empty box, or a grade that runs past `timeout` seconds give False.
    """
    return default_grader().grade(response, gold, timeout)


def grade_many(pairs: Iterable[tuple[str, str]], timeout: float = 5.0) -> list[bool | None]:
    """`grade` over `(response, gold)` pairs, in order."""
    return default_grader().grade_many(pairs, timeout)


def grading_stats() -> dict[str, int]:
    """Counts from the shared grader: calls, timeouts, restarts, gold_unparseable, too_long."""
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


def _worker_main() -> None:
    import signal

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

    from math_verify import parse, verify

    def on_alarm(signum, frame):
        raise _SoftTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    gold_cache: dict[str, list] = {}

    def parse_boxed(answer: str) -> list:
        # A \boxed{} wrapper makes math-verify read the whole string as one LaTeX answer.
        return parse("\\boxed{" + answer + "}", parsing_timeout=None)

    def judge(gold: str, pred: str) -> str:
        if gold not in gold_cache:
            parsed = parse_boxed(gold)
            # Only a string fallback (no sympy object) means the gold is not math we can compare.
            ok = any(not isinstance(p, str) for p in parsed)
            if len(gold_cache) > 10_000:
                gold_cache.clear()
            gold_cache[gold] = parsed if ok else []
        gold_parsed = gold_cache[gold]
        if not gold_parsed:
            return "gold_unparseable"
        pred_parsed = parse_boxed(pred)
        if not pred_parsed:
            return "false"
        return "true" if verify(gold_parsed, pred_parsed, timeout_seconds=None) else "false"

    judge("\\frac{1}{2}", "0.5")  # the first verify imports and builds sympy internals: do it before timing
    gold_cache.clear()
    out.write(json.dumps({"status": "ready"}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        try:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, float(job["timeout"])))
            try:
                if "stall" in job:  # tests: behave like C code that no signal can interrupt
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                    time.sleep(job["stall"])
                status = judge(job["gold"], job["pred"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:  # also if the timer fires between judge() returning and the reset
            status = "timeout"
        except Exception:  # RecursionError, MemoryError, sympy's own errors
            status = "false"
        out.write(json.dumps({"id": job["id"], "status": status}) + "\n")
