import threading
import time

import pytest

from eval.grading import Grader, extract_answer, extract_boxed, grade, grade_many

PMATRIX = r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"

# (response, gold, expected): expected None means the gold cannot be parsed (reported, not scored 0).
CASES = [
    # fractions and decimals
    (r"so the answer is $\boxed{\frac{1}{2}}$.", "0.5", True),
    (r"\boxed{0.5}", r"\frac12", True),
    (r"\boxed{\dfrac{3}{4}}", "0.75", True),
    (r"\boxed{\tfrac{3}{4}}", r"\frac{3}{4}", True),
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", True),
    (r"\boxed{0.33}", r"\frac13", False),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    # sets, tuples, intervals
    (r"\boxed{\{1,2\}}", r"\{2,1\}", True),
    (r"\boxed{(1,2)}", "(2,1)", False),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{2, 1}", "1, 2", True),
    (r"\boxed{[1,2)}", "[1,2)", True),
    (r"\boxed{(1,2)}", "[1,2)", False),
    (r"\boxed{(-\infty, -7)}", "x<-7", True),
    # text, units, degrees, percentages, money
    (r"\boxed{10 \text{ cm}}", "10", True),
    (r"\boxed{\text{(B)}}", r"\text{(B)}", True),
    (r"\boxed{30^\circ}", "30", True),
    (r"\boxed{30}", r"30^\circ", True),
    (r"\boxed{50\%}", "50", True),
    (r"\boxed{50}", r"50\%", True),
    (r"\boxed{\$18.90}", r"\$18.90", True),
    # AIME leading zeros
    (r"\boxed{025}", "025", True),
    (r"\boxed{25}", "025", True),
    ("The final answer is 25", "025", True),
    (r"\boxed{26}", "025", False),
    # matrices
    (rf"\boxed{{{PMATRIX}}}", PMATRIX, True),
    (r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}", PMATRIX, False),
    # several boxes: the last one counts
    (r"first \boxed{1}, then \boxed{2}", "2", True),
    (r"first \boxed{1}, then \boxed{2}", "1", False),
    (r"\boxed{\boxed{7}}", "7", True),
    (r"\fbox{7}", "7", True),
    (r"\boxed 7", "7", True),
    # no answer, empty box, unparseable gold
    ("I think it is 4", "4", True),  # no stated answer: math-verify's extraction reads the last number
    ("I think it is 5", "4", False),
    (r"\boxed{}", "0", False),
    (r"\boxed{5}", r"No solution : \oslash", None),
    (r"\boxed{5}", "", None),
    # negatives, roots, pi
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
    (r"\boxed{\frac{1}{\sqrt{3}}}", r"\frac{\sqrt{3}}{3}", True),
    (r"\boxed{2\pi}", r"2 \pi", True),
    (r"\boxed{6.28}", r"2\pi", False),
    (r"\boxed{\infty}", r"\infty", True),
    # equations and expressions
    (r"\boxed{x=3}", "3", True),
    (r"\boxed{3}", "x=3", True),
    (r"\boxed{y = 2x + 1}", "y=2x+1", True),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{10-4n}", "10-4 n", True),
    # scientific notation (minerva_math golds are written 4.5e33), thousands separators
    (r"\boxed{4.5\times10^{33}}", "4.5e33", True),
    (r"\boxed{4.6\times10^{33}}", "4.5e33", False),
    (r"\boxed{1,000}", "1000", True),
    # fallbacks without a box
    (r"The answer is $\frac{7}{2}$.", "3.5", True),
    ("Final answer: 12", "12", True),
    ("#### 18", "18", True),
]


@pytest.mark.parametrize("response, gold, expected", CASES)
def test_grade_table(response, gold, expected):
    assert grade(response, gold) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{\frac{a}{b}}", r"\frac{a}{b}"),
        (r"\boxed{ 1 } and \boxed{\{2\}}", r"\{2\}"),
        (r"\boxed{unclosed", None),
        (r"\boxed{1} and \boxed{2", "1"),
        (r"\boxed{}", ""),
        ("no box", None),
        (r"\boxed{1} then \boxed 2", "2"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_answer_fallbacks():
    assert extract_answer("So the answer is $42$.") == "42"
    assert extract_answer("The answer is 3.5.") == "3.5"
    assert extract_answer("Final Answer: x = 2\nmore text") == "x = 2"
    assert extract_answer("#### 1,234") == "1,234"
    assert extract_answer("nothing here") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Final Answer: The final answer is $(1,2)$. I hope it is correct.", "(1,2)"),
        ("Final Answer: The final answer is $14{,}916$. I hope it is correct.", "14{,}916"),
        ("The final answer is 2. I hope it is correct.", "2"),
        ("So it is 7.78 in all. The final answer is 7.78", "7.78"),
        ("The final answer is:\n\n$$\\frac{1}{2}$$", r"\frac{1}{2}"),
        # a later closing line beats an intermediate box; a later box beats an earlier line
        ("We get \\boxed{3}, then add 4.\nFinal Answer: The final answer is $7$. I hope it is correct.", "7"),
        ("The answer is 5.\nNo: the answer is \\boxed{8}.", "8"),
        # an empty box, or a phrase that states nothing, does not hide an earlier answer
        ("The final answer is 1.\n\nThe answer is within \\boxed{}.", "1"),
        ("The answer is \\boxed{5}. Checking: 2 + 3 = 5, so the answer is correct.", "5"),
        ("\\boxed{5}\n\nThe answer is 5 because 2 + 3 = 5.", "5"),
        ("The answer is 5 because 2 + 3 = 5.", "5"),
        ("The answer is within \\boxed{}.", ""),
    ],
)
def test_extract_answer_final_line(text, expected):
    assert extract_answer(text) == expected


def test_grade_result_reports_the_answer_used(grader):
    r = grader.check("Final Answer: The final answer is $10\\,000$. I hope it is correct.", "10000")
    assert (r.correct, r.pred, r.status, r.source) == (True, r"10\,000", "ok", "phrase")
    r = grader.check(r"The roots are $\boxed{-2}$ and $\boxed{1}$.", "1,-2")
    assert (r.correct, r.pred, r.source) == (True, "-2, 1", "boxes")
    r = grader.check("3 - 2 = 1, so one apple is left.", "1")
    assert (r.correct, r.source) == (True, "response")
    r = grader.check("I cannot tell.", "1")
    assert (r.correct, r.pred, r.status) == (False, None, "no_answer")


def test_prose_gold_is_reported_not_scored(grader):
    before = grader.stats["gold_free_text"]
    r = grader.check(r"\boxed{x=-1}", r"\min at x=-1, \max at x=1")
    assert (r.correct, r.pred, r.status) == (None, "x=-1", "gold_free_text")
    assert grader.stats["gold_free_text"] == before + 1


def test_grade_many_keeps_order():
    pairs = [(r"\boxed{1}", "1"), (r"\boxed{2}", "3"), (r"\boxed{1}", "")]
    assert grade_many(pairs) == [True, False, None]


def test_grade_from_worker_thread():
    # math-verify's own signal.alarm timeouts raise off the main thread; ours must not.
    results = []
    threads = [threading.Thread(target=lambda: results.append(grade(r"\boxed{\frac{1}{2}}", "0.5"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [True, True, True]


@pytest.fixture(scope="module")
def grader():
    g = Grader()
    assert g.grade(r"\boxed{\frac{1}{2}}", "0.5") is True  # start the worker outside the timed part
    yield g
    g.close()


@pytest.mark.parametrize(
    "response",
    [
        r"\boxed{9^{9^{9^{9}}}}",
        r"\boxed{9^9^9^9}",
        r"\boxed{10^{10^{10}}}",
        r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
        r"\boxed{" + "(" * 400 + "1" + ")" * 400 + "}",
        "\\boxed{" * 200_000,
        "x" * 1_000_000 + r"\boxed{2}",
        ("the answer is " + "\\( " * 1000 + "\n") * 500,
        ("Final answer: " + "$ x " * 1000 + "\n") * 500,
        "3" * 1_000_000,
    ],
    ids=[
        "power-tower",
        "power-tower-flat",
        "huge-power",
        "deep-braces",
        "deep-parens",
        "open-boxes",
        "megabyte",
        "open-math",
        "dollars",
        "digits",
    ],
)
def test_hostile_input_returns_in_time(grader, response):
    limit = 1.0
    start = time.monotonic()
    result = grader.grade(response, "1", timeout=limit)
    elapsed = time.monotonic() - start
    assert result is False
    assert elapsed < limit + 2.5  # the worker's kill grace is 1 s; the rest is slack for a busy machine


@pytest.mark.parametrize(
    "gold, response",
    [
        ("2i", r"\boxed{(1+i)^{10^{10}}}"),  # `i` read as the imaginary unit: a power sympy expands
        ("0.33", r"\boxed{9^{9^{9}}}"),  # a decimal gold: the exact answer is evaluated to its places
        ("3.14", r"\boxed{\sqrt{2}^{10^{12}}}"),
        ("y = 2x + 1", r"\boxed{" + "+".join(["x"] * 400) + "}"),
        ("9:30", r"\boxed{" + "9" * 900 + ":30}"),
        (r"\frac{7}{2}", r"\boxed{" + "3" * 400 + " " * 100 + "1" * 400 + "/2}"),
        (r"\mathcal{A}", r"\boxed{" + "\\" * 450 + "}"),
    ],
    ids=[
        "complex-power",
        "precision-tower",
        "precision-power",
        "definition-long",
        "clock-digits",
        "mixed-digits",
        "backslashes",
    ],
)
def test_new_grading_paths_return_in_time(grader, gold, response):
    limit = 1.0
    start = time.monotonic()
    assert grader.grade(response, gold, timeout=limit) is False
    assert time.monotonic() - start < limit + 2.5


def test_timeout_is_counted_and_worker_survives(grader):
    before = grader.stats["timeouts"]
    assert grader.grade(r"\boxed{100!!!!}", "1", timeout=0.5) is False
    assert grader.stats["timeouts"] == before + 1
    assert grader.grade(r"\boxed{\frac{1}{2}}", "0.5") is True


def test_stuck_worker_is_killed_and_replaced(grader):
    # A worker stuck where no signal reaches it (like sympy inside C code) is killed at limit + grace.
    restarts = grader.stats["restarts"]
    start = time.monotonic()
    assert grader._ask("1", "1", 0.5, stall=60)[0] == "timeout"
    assert time.monotonic() - start < 0.5 + 2.5
    assert grader.stats["restarts"] == restarts + 1
    assert grader.grade(r"\boxed{\sqrt{8}}", r"2\sqrt{2}") is True


def test_a_grader_left_at_exit_ends_quietly(tmp_path):
    """A Grader of the caller's own (not the shared one, which atexit closes), its worker running,
    still alive when the interpreter ends, after a forked child graded with it (and so started a
    worker of its own): no "Exception ignored" noise at exit, and the worker ends too."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "left.py"
    script.write_text("import multiprocessing as mp, sys\nsys.path.insert(0, sys.argv[1])\n"
                      "from eval.grading import Grader\ng = Grader()\n"
                      "def child():\n    assert g.grade('\\\\boxed{\\\\frac{1}{3}}', '1/3')\n"
                      "p = mp.get_context('fork').Process(target=child)\np.start()\np.join()\n"
                      "print(g.grade('so \\\\boxed{\\\\frac{1}{2}}', '0.5') and p.exitcode == 0, g._worker.proc.pid)\n")
    proc = subprocess.run([sys.executable, str(script), str(Path(__file__).resolve().parents[1])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    verdict, pid = proc.stdout.split()
    assert verdict == "True"
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), "the grading worker outlived its parent"


def _state(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
