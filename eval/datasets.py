"""Math evaluation sets as lists of `Problem`s, in a fixed order.

Each set is one registry entry: its local folder, the Hugging Face Hub ids online users can load
instead, and a row -> Problem function that applies the set's gold-answer rule (see
`../shared/data/math/SOURCES.md`). `arith` is generated, not read.

    >>> problems = load_problems("math500", limit=2)
    >>> problems[0].id, problems[0].gold
    ('test/precalculus/807.json', '\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)')

Subsets: a run can take a named subset of any set, written `SET=FILE` (a text file of problem ids,
one per line) or `SET=sample:N:seedS` (N problems drawn with seed S). A subset streams in its set's
own order; run.json records its size and the sha256 of its ids (`Subset`, `subset_record`).
`python -m eval.datasets ids SET [--subset SPEC]` prints a set's ids, e.g. to save a sample as a file.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import math
import numbers
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zs_llm.answers import extract_boxed
from zs_llm.registry import Registry

ENV_DATA_DIR = "ZS_LLM_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIRS = (REPO_ROOT.parent / "shared" / "data" / "math", Path("data") / "math")
FOUR_SETS = ("math500", "college_math", "aime24", "minerva_math")


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    gold: str  # a finite number given here is kept as its text
    meta: dict = field(default_factory=dict, hash=False)  # subject, level, type, numeric, ...

    def __post_init__(self):
        try:
            gold = check_gold(self.gold)
        except ValueError as e:
            raise ValueError(f"problem {self.id!r}: {e}") from None
        if not isinstance(gold, str):
            object.__setattr__(self, "gold", str(gold))


def check_gold(value):
    """`value` if it can be a gold answer (text, or a finite number), else a ValueError saying what
    it is: str() would make null, NaN or an object into "None", "nan" or "{...}", graded as wrong."""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isfinite(value):
            return value
        what = f"{value!r}, not a finite number"
    elif value is None:
        what = "null (None)"
    elif isinstance(value, bool):
        what = f"a boolean ({value})"
    else:
        what = {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")
    raise ValueError(f"the gold answer is {what}; give the answer as text or a finite number")


@dataclass(frozen=True)
class HubSource:
    path: str
    split: str
    config: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One evaluation set: where it lives and how a row becomes a `Problem`."""

    name: str
    folder: str | None  # under the data dir; None for generated sets
    hub: tuple[HubSource, ...]  # tried in order when the local file is absent
    to_problem: Callable[[dict, int], Problem] | None  # (row, line index) -> Problem
    rows: int | None  # row count of the local file
    generate: Callable[..., list[Problem]] | None = None  # (seed, data_dir) -> problems
    reads: tuple[str, ...] = ()  # sets a generated stream draws problems from (needs the data dir)
    scales: bool = False  # a generated stream whose shape scales: `limit` N generates its N-problem version
    max_size: int | None = None  # the longest stream a scaling set generates (a larger `limit` is refused)
    load: Callable[[], list[Problem]] | None = None  # your own data (eval.userdata): reads its problems
    record: Callable[[], dict] | None = None  # and what run.json keeps of its source


DATASETS: Registry = Registry("dataset")


def dataset(name: str, rows: int, hub: tuple[HubSource, ...]):
    """Register a row -> Problem function as the set `name` (local folder of the same name)."""

    def deco(fn: Callable[[dict, int], Problem]):
        DATASETS[name] = DatasetSpec(name, name, hub, fn, rows)
        return fn

    return deco


# ---------------------------------------------------------------------------- row helpers


def _first(row: dict, *keys: str, default=None):
    """The first present, non-empty field among `keys`: hub copies name the same field differently."""
    for key in keys:
        value = row.get(key)
        if value is not None and value != "":
            return value
    return default


def _row_id(row: dict, index: int, *keys: str) -> str:
    return str(_first(row, *keys, default=index))


def _number_text(value) -> str:
    """27.0 -> "27", 2.5 -> "2.5", "27" -> "27"."""
    if isinstance(value, str):
        value = value.strip()
        try:
            number = float(value)
        except ValueError:
            return value
    else:
        number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


# ---------------------------------------------------------------------------- the sets


_QUESTION = ("problem", "question", "Problem", "Question")  # local and hub spellings


@dataset(
    "math500",
    rows=500,
    hub=(HubSource("HuggingFaceH4/MATH-500", "test"), HubSource("math-ai/math500", "test")),
)
def _math500(row: dict, index: int) -> Problem:
    return Problem(
        id=_row_id(row, index, "unique_id", "id"),
        question=_first(row, *_QUESTION),
        gold=str(check_gold(row["answer"])).strip(),
        meta={"subject": row.get("subject"), "level": row.get("level")},
    )


@dataset(
    "aime24",
    rows=30,
    hub=(HubSource("HuggingFaceH4/aime_2024", "train"), HubSource("math-ai/aime24", "test")),
)
def _aime24(row: dict, index: int) -> Problem:
    gold = _first(row, "answer", "Answer")
    if gold is None:  # some copies keep the answer only in the solution's box
        gold = extract_boxed(_first(row, "solution", "Solution", default=""))
    if gold is None:
        raise ValueError(f"aime24 row {index} has no answer (no 'answer' field, no \\boxed{{}} in its solution)")
    # Keep "025" as written: grading compares numbers, so it equals 25.
    return Problem(
        id=_row_id(row, index, "id", "ID"),
        question=_first(row, *_QUESTION),
        gold=str(check_gold(gold)).strip(),
        meta={"numeric": True, "url": row.get("url")},
    )


@dataset(
    "minerva_math",
    rows=272,
    hub=(HubSource("svc-huggingface/minerva-math", "test"), HubSource("math-ai/minervamath", "test")),
)
def _minerva_math(row: dict, index: int) -> Problem:
    # The local file has no answer field: the gold is the one \boxed{} of the solution.
    solution = row.get("solution")
    gold = extract_boxed(solution) if solution else _first(row, "answer")
    if gold is None:
        raise ValueError(f"minerva_math row {index} has no \\boxed{{}} answer in its solution")
    return Problem(
        id=_row_id(row, index, "idx", "id"),
        question=_first(row, *_QUESTION),
        gold=str(check_gold(gold)).strip(),
        meta={"type": row.get("type")},
    )


@dataset("college_math", rows=2818, hub=(HubSource("qq8933/College_Math_Test", "test"),))
def _college_math(row: dict, index: int) -> Problem:
    # question_number repeats across textbooks (2091 distinct in 2818 rows); with the source it is unique.
    number = row.get("question_number")
    source = str(row.get("data_source", "")).removeprefix("college_math.")
    row_id = f"{source}/{number}" if number is not None else str(index)
    return Problem(
        id=row_id,
        question=_first(row, *_QUESTION),
        gold=str(check_gold(row["answer"])).replace("$", "").strip(),
        meta={"topic": str(row.get("data_topic", "")).removeprefix("college_math.") or None},
    )


@dataset("gsm8k", rows=1319, hub=(HubSource("openai/gsm8k", "test", config="main"),))
def _gsm8k(row: dict, index: int) -> Problem:
    answer = str(check_gold(row["answer"]))
    if "####" not in answer:
        raise ValueError(f"gsm8k row {index} has no '####' final answer")
    return Problem(
        id=_row_id(row, index, "idx"),
        question=_first(row, *_QUESTION),
        gold=answer.split("####")[-1].replace(",", "").strip(),
        meta={"numeric": True},
    )


@dataset(
    "amc23",
    rows=40,
    hub=(HubSource("math-ai/amc23", "test"), HubSource("AI-MO/aimo-validation-amc", "train")),
)
def _amc23(row: dict, index: int) -> Problem:
    return Problem(
        id=_row_id(row, index, "id"),
        question=_first(row, *_QUESTION),
        gold=_number_text(check_gold(row["answer"])),
        meta={"numeric": True, "url": row.get("url")},
    )


def arith_problems(seed: int = 0, size: int = 500, data_dir=None) -> list[Problem]:
    """Small-integer arithmetic a 135M model can partly solve: `a + b`, `a - b` (a, b in 1..30,
    never negative) and `a * b` (a, b in 2..12). The same seed always gives the same list.

    >>> arith_problems(seed=0, size=1)[0].question  # doctest: +SKIP
    'What is 23 + 14?'
    """
    rng = random.Random(seed)
    problems = []
    for i in range(size):
        op = rng.choices(("+", "-", "*"), weights=(4, 3, 3))[0]
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            value = a * b
        else:
            a, b = rng.randint(1, 30), rng.randint(1, 30)
            if op == "-" and b > a:
                a, b = b, a
            value = a + b if op == "+" else a - b
        # The seed is part of the id, so the fingerprints of two seeds differ.
        problems.append(
            Problem(
                id=f"s{seed}-{i}",
                question=f"What is {a} {op} {b}?",
                gold=str(value),
                meta={"a": a, "b": b, "op": op, "numeric": True},
            )
        )
    return problems


DATASETS["arith"] = DatasetSpec("arith", None, (), None, None, generate=arith_problems)


def arith_dev_problems(seed: int = 0, size: int = 500, data_dir=None) -> list[Problem]:
    """The development stream for choosing settings (studies/select_lr.yaml): `arith` drawn with seed
    1000 + `seed`, without any question that the evaluation stream (`arith`, seed 0, 500
    problems) asks, so a setting is never chosen on the problems it is scored on."""
    held_out = {p.question for p in arith_problems(seed=0, size=500)}
    pool = arith_problems(seed=1000 + seed, size=4 * size)
    kept = [p for p in pool if p.question not in held_out][:size]
    return [Problem(f"dev{seed}-{i}", p.question, p.gold, p.meta) for i, p in enumerate(kept)]


DATASETS["arith_dev"] = DatasetSpec("arith_dev", None, (), None, None, generate=arith_dev_problems)


# ---------------------------------------------------------------------------- wild streams
# The text counterparts of the paper's wild test scenarios: one long stream, a stream whose
# difficulty and task change, a stream with long runs of one operation and of one answer (label
# shift), and a stream mixing everything at random. Each is seeded: the same seed, the same stream.
# A run's `limit` N generates the N-problem version of a wild stream (its phases and blocks scale
# with it), not the first N problems of the full one.

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
#: operand ranges per difficulty: (low, high) for + and -, and for *
_LEVELS = {"small": ((1, 10), (2, 5)), "medium": ((1, 30), (2, 12)), "large": ((10, 99), (6, 20))}


def _arith(rng: random.Random, op: str, level: str) -> tuple[int, int, int]:
    lo, hi = _LEVELS[level][op == "*"]
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if op == "-" and b > a:
        a, b = b, a
    return a, b, _OPS[op](a, b)


def _problem(stream: str, seed: int, i: int, a: int, op: str, b: int, value: int, **meta) -> Problem:
    return Problem(f"{stream}{seed}-{i}", f"What is {a} {op} {b}?", str(value),
                   {"a": a, "b": b, "op": op, "numeric": True, **meta})


def long_stream(seed: int = 0, size: int = 1000, data_dir=None) -> list[Problem]:
    """`long`: 1,000 `arith` problems (the `arith` mix of +, - and *), drawn with seed 2000 + `seed`."""
    return [Problem(f"long{seed}-{i}", p.question, p.gold, p.meta)
            for i, p in enumerate(arith_problems(seed=2000 + seed, size=size))]


def shift_stream(seed: int = 0, size: int = 300, data_dir=None) -> list[Problem]:
    """`shift`: difficulty and task change along the stream, in three equal phases: small additions
    (operands 1..10), then larger operands (10..99 for + and -) and multiplication (6..20), then
    GSM8K word problems (a seeded sample of the local `gsm8k` set)."""
    rng = random.Random(3000 + seed)
    third = size // 3
    out = []
    for i in range(third):
        a, b, v = _arith(rng, "+", "small")
        out.append(_problem("shift", seed, i, a, "+", b, v, phase="small_add"))
    for i in range(third, 2 * third):
        op = rng.choice(("+", "-", "*"))
        a, b, v = _arith(rng, op, "large")
        out.append(_problem("shift", seed, i, a, op, b, v, phase="large"))
    words = load_problems("gsm8k", data_dir=data_dir)
    for k, p in enumerate(rng.sample(words, size - 2 * third)):
        out.append(Problem(f"shift{seed}-{2 * third + k}", p.question, p.gold,
                           {**p.meta, "phase": "gsm8k", "source_id": p.id}))
    return out


def imbalanced_stream(seed: int = 0, size: int = 300, block: int | None = None, data_dir=None) -> list[Problem]:
    """`imbalanced`: the analogue of label shift. Blocks of `block` problems (default: a tenth of
    the stream, at least 5) alternate between a
    run with one answer (every problem of the block has the same result, reached by different
    operands) and a run of one operation with varied answers. A method that collapses onto one
    answer is rewarded inside a one-answer block and punished in the blocks that follow."""
    rng = random.Random(4000 + seed)
    block = block or max(5, size // 10)
    out: list[Problem] = []
    b_index = 0
    while len(out) < size:
        if b_index % 2 == 0:  # one answer: every a + b = v, a - b = v or a * b = v
            op = rng.choice(("+", "-", "*"))
            if op == "*":
                v = rng.choice((12, 18, 24, 30, 36))
                pairs = [(a, v // a) for a in range(2, v) if v % a == 0 and v // a >= 2]
            elif op == "+":
                v = rng.randint(12, 40)
                pairs = [(a, v - a) for a in range(1, v)]
            else:
                v = rng.randint(3, 25)
                pairs = [(v + b, b) for b in range(1, 31)]
            for _ in range(min(block, size - len(out))):
                a, b = rng.choice(pairs)
                out.append(_problem("imbalanced", seed, len(out), a, op, b, v, block=b_index, run="answer"))
        else:  # one operation, varied answers
            op = rng.choice(("+", "-", "*"))
            for _ in range(min(block, size - len(out))):
                a, b, v = _arith(rng, op, "medium")
                out.append(_problem("imbalanced", seed, len(out), a, op, b, v, block=b_index, run="operation"))
        b_index += 1
    return out


def mixed_stream(seed: int = 0, size: int = 300, data_dir=None) -> list[Problem]:
    """`mixed`: operations (+, -, *) and difficulties (small, medium, large operands) drawn
    independently for every problem."""
    rng = random.Random(5000 + seed)
    out = []
    for i in range(size):
        op, level = rng.choice(("+", "-", "*")), rng.choice(tuple(_LEVELS))
        a, b, v = _arith(rng, op, level)
        out.append(_problem("mixed", seed, i, a, op, b, v, level=level))
    return out


WILD_STREAMS = ("long", "shift", "imbalanced", "mixed")
#: the longest wild stream a run may ask for: about a day of online adaptation at a problem a second,
#: generated in under a second (a typo such as `--limit 1000000000` would otherwise fill the memory)
WILD_MAX_SIZE = 100_000
DATASETS["long"] = DatasetSpec("long", None, (), None, None, generate=long_stream, scales=True,
                               max_size=WILD_MAX_SIZE)
# shift's last third samples GSM8K without replacement: at most its 1,319 problems
DATASETS["shift"] = DatasetSpec("shift", None, (), None, None, generate=shift_stream, reads=("gsm8k",), scales=True,
                                max_size=3 * DATASETS["gsm8k"].rows)
DATASETS["imbalanced"] = DatasetSpec("imbalanced", None, (), None, None, generate=imbalanced_stream, scales=True,
                                     max_size=WILD_MAX_SIZE)
DATASETS["mixed"] = DatasetSpec("mixed", None, (), None, None, generate=mixed_stream, scales=True,
                                max_size=WILD_MAX_SIZE)


# ---------------------------------------------------------------------------- loading


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The folder holding `<set>/test.jsonl`: `data_dir`, else $ZS_LLM_DATA_DIR, else the first of
    `<repo>/../shared/data/math` and `./data/math` that exists."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"math data dir {str(path)!r} does not exist; pass --data-dir (or set {ENV_DATA_DIR}) "
                "to the folder that holds <set>/test.jsonl, or --source hub"
            )
        return path
    for path in DEFAULT_DATA_DIRS:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in DEFAULT_DATA_DIRS)
    raise FileNotFoundError(
        f"no math data dir found (tried {tried}); pass --data-dir or set {ENV_DATA_DIR} to the folder "
        "that holds <set>/test.jsonl, or pass --source hub to download the sets"
    )


def load_problems(
    name: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    source: str = "auto",
    subset: str | Subset | None = None,
) -> list[Problem]:
    """The problems of set `name`, in file order (generated order for `arith`); `subset` (a
    `Subset` or its spec: a file of ids, `sample:N:seedS`) keeps those problems, in the set's order;
    `limit` then keeps the first N. `source`: "local" (the data dir), "hub"
    (`datasets.load_dataset`), or "auto" (local if the file is there, else the hub). `seed` only
    changes generated sets.
    """
    spec = DATASETS[name]
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', not {source!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    check_limit(name, limit, subset is not None)

    if spec.load is not None:
        problems = spec.load()
    elif spec.generate is not None:
        sized = {"size": limit} if spec.scales and limit and subset is None else {}
        problems = spec.generate(seed, data_dir=data_dir, **sized)
    elif source == "hub":
        problems = _load_hub(spec)
    else:
        path = _local_file(spec, data_dir, required=source == "local")
        problems = _load_local(spec, path) if path is not None else _load_hub(spec)

    first: dict[str, int] = {}  # a local file's repeats are named by line as it is read
    for i, p in enumerate(problems):
        if p.id in first:
            raise ValueError(f"dataset {name!r} ({'generated' if spec.generate else 'from the hub'}) holds problem id "
                             f"{p.id!r} at rows {first[p.id]} and {i}; its row -> Problem function needs fixing")
        first[p.id] = i
    if subset is not None:
        problems = Subset.parse(subset).select(problems, name)
    return problems if limit is None else problems[:limit]


def check_limit(name: str, limit: int | None, subset: bool = False) -> None:
    """Refuse a `limit` longer than the longest stream set `name` generates (a scaling stream is
    built for the whole limit), before anything is built. A read set or a subset is cut to the
    limit and needs no bound."""
    spec = DATASETS[name]
    if limit and spec.scales and not subset and spec.max_size is not None and limit > spec.max_size:
        raise ValueError(f"limit {limit} is longer than the longest {name} stream ({spec.max_size} problems); give "
                         f"limit <= {spec.max_size}")


def ids_sha256(problems: list[Problem]) -> str:
    """sha256 (hex) of the problem ids in order, one per line: equal hashes, equal problem lists."""
    return hashlib.sha256("\n".join(p.id for p in problems).encode("utf-8")).hexdigest()


def dataset_fingerprint(problems: list[Problem]) -> str:
    """Short sha256 of the problem ids in order (the first 16 hex of `ids_sha256`): two runs with
    the same fingerprint saw the same list."""
    return ids_sha256(problems)[:16]


# ---------------------------------------------------------------------------- subsets

SUBSET_SYNTAX = ("SET=FILE (a text file of problem ids, one per line; blank lines and lines starting with # are "
                 "skipped) or SET=sample:N:seedS (N problems drawn with seed S; sample:N means seed 0)")
_SAMPLE = re.compile(r"sample:(?P<n>[^:]+)(?::seed(?P<seed>-?\d+))?")


@dataclass(frozen=True)
class Subset:
    """A named part of one set: the problems whose ids a file lists (`path`), or a seeded sample
    of `n` problems. The sample takes the n problems with the smallest sha256 of "<seed>:<id>", so
    it depends only on the ids (no RNG whose algorithm could change), and at one seed a smaller
    sample is part of a larger one. Either way the problems keep their set's order."""

    path: str | None = None
    n: int | None = None
    seed: int = 0

    @classmethod
    def parse(cls, spec: str | Subset) -> Subset:
        """`ids.txt` -> a file subset; `sample:240:seed0` (or `sample:240`) -> a sample."""
        if isinstance(spec, Subset):
            return spec
        spec = str(spec).strip()
        if not spec.startswith("sample:"):
            if not spec:
                raise ValueError(f"empty subset; write {SUBSET_SYNTAX}")
            return cls(path=spec)
        m = _SAMPLE.fullmatch(spec)
        if m is None or not m["n"].isdigit():
            raise ValueError(f"subset {spec!r}: write sample:N:seedS, e.g. sample:240:seed0 (or a file of ids: "
                             "./sample... for a file whose name starts with 'sample:')")
        n = int(m["n"])
        if n < 1:
            raise ValueError(f"subset {spec!r}: N must be >= 1")
        return cls(n=n, seed=int(m["seed"] or 0))

    @property
    def spec(self) -> str:
        return self.path if self.path is not None else f"sample:{self.n}:seed{self.seed}"

    def read_ids(self) -> list[str]:
        """The ids a file subset lists, in file order."""
        p = Path(self.path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"subset file {self.path} does not exist; give a text file of problem ids, one "
                                    "per line (python -m eval.datasets ids SET prints a set's ids)")
        ids = [line.strip() for line in _read_text(p).splitlines()]
        ids = [i for i in ids if i and not i.startswith("#")]
        if not ids:
            raise ValueError(f"subset file {self.path} lists no problem ids; write one id per line")
        return ids

    def select(self, problems: list[Problem], name: str = "dataset") -> list[Problem]:
        """The problems of this subset, in the order of `problems` (the set's own)."""
        if self.n is not None:
            if self.n > len(problems):
                raise ValueError(f"subset sample:{self.n} of {name}: {name} has {len(problems)} problems; choose "
                                 f"N <= {len(problems)}")
            ranked = sorted(problems, key=lambda p: hashlib.sha256(f"{self.seed}:{p.id}".encode()).digest())
            keep = {p.id for p in ranked[: self.n]}
            return [p for p in problems if p.id in keep]
        ids = self.read_ids()
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(f"subset file {self.path} lists {len(repeated)} id(s) more than once: "
                             f"{_few(repeated)}; list each id once")
        known = {p.id for p in problems}
        unknown = [i for i in ids if i not in known]
        if unknown:
            example = f"{name} ids look like {problems[0].id!r}; " if problems else ""
            raise ValueError(f"subset file {self.path}: {len(unknown)} of its {len(ids)} ids are not in {name}: "
                             f"{_few(unknown)}. {example}`python -m eval.datasets ids {name}` prints them all; fix or "
                             "remove those lines")
        wanted = set(ids)
        return [p for p in problems if p.id in wanted]

    def record(self, name: str, selected: list[Problem], total: int) -> dict:
        """What run.json keeps of this subset of set `name`: the spec, the exact count and the
        sha256 of the selected ids (and of the file, for a file subset)."""
        out = {"dataset": name, "spec": self.spec, "kind": "ids" if self.path is not None else "sample",
               "n": len(selected), "of": total, "ids_sha256": ids_sha256(selected)}
        if self.path is not None:
            p = Path(self.path).expanduser().resolve()
            out.update(file=str(p), file_sha256=hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out.update(sample=self.n, seed=self.seed)
        return out


def parse_subsets(items: list[str] | dict[str, str] | str | None) -> dict[str, Subset]:
    """`["college_math=ids.txt", "math500=sample:100:seed1"]` (or a dict, or one comma-separated
    string) -> {set: Subset}. Unknown sets, a set named twice and a bad spec are errors."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [x for x in items.split(",") if x.strip()]
    pairs = list(items.items()) if isinstance(items, dict) else []
    for item in items if not isinstance(items, dict) else []:
        name, eq, spec = str(item).partition("=")
        if not eq:
            raise ValueError(f"subset {item!r}: write {SUBSET_SYNTAX}")
        pairs.append((name.strip(), spec))
    out: dict[str, Subset] = {}
    for name, spec in pairs:
        DATASETS[name]  # KeyError listing the known sets
        if name in out:
            raise ValueError(f"subset names {name} twice; give one subset per set")
        out[name] = Subset.parse(spec)
    return out


def subset_record(name: str, subset: str | Subset, data_dir: str | Path | None = None, seed: int = 0,
                  source: str = "auto") -> dict:
    """Load set `name`, select `subset`, and return its run.json record (`Subset.record`)."""
    full = load_problems(name, data_dir=data_dir, seed=seed, source=source)
    sub = Subset.parse(subset)
    return sub.record(name, sub.select(full, name), len(full))


def source_record(name: str, source: str, data_dir: str | Path | None = None, seed: int = 0) -> dict:
    """Where set `name` is read from, for run.json: the local file and its sha256, the hub ids tried
    in order, or the generator's seed."""
    spec = DATASETS[name]
    if spec.record is not None:
        return spec.record()
    if spec.generate is not None:
        return {"source": "generated", "seed": seed}
    if source == "hub":
        return {"source": "hub", "hub": [f"{h.path}" + (f"[{h.config}]" if h.config else "") + f":{h.split}"
                                         for h in spec.hub]}
    path = _local_file(spec, data_dir, required=source == "local")
    if path is None:
        return source_record(name, "hub", data_dir, seed)
    return {"source": "local", "path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _few(items: list[str], k: int = 10) -> str:
    shown = ", ".join(repr(i) for i in items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


def _local_file(spec: DatasetSpec, data_dir: str | Path | None, required: bool) -> Path | None:
    explicit = data_dir is not None or os.environ.get(ENV_DATA_DIR)
    try:
        root = resolve_data_dir(data_dir)
    except FileNotFoundError:
        # An explicit dir that is missing is a typo, not a reason to go online.
        if required or explicit:
            raise
        return None
    path = root / spec.folder / "test.jsonl"
    if path.is_file():
        return path
    if required or explicit:
        raise FileNotFoundError(
            f"{path} not found; point --data-dir (or {ENV_DATA_DIR}) at a folder with {spec.folder}/test.jsonl, "
            "or pass --source hub"
        )
    return None


def _json_object(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object that names a key once (json's own reader keeps the last of a repeated key)."""
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise ValueError(f"the key {k!r} is given twice")
        seen.add(k)
    return dict(pairs)


def _read_text(path: Path) -> str:
    """A data file's text: UTF-8, after a byte-order mark if it starts with one (Windows editors
    write it); a byte that is not UTF-8 is an error naming the line."""
    raw = path.read_bytes()
    body = raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        column = e.start - body.rfind(b"\n", 0, e.start)
        raise ValueError(f"{path} line {line}: byte 0x{body[e.start]:02x} (column {column}) is not UTF-8; re-encode "
                         "the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _load_local(spec: DatasetSpec, path: Path) -> list[Problem]:
    """Problems of a local JSONL file; a line that is not JSON (a key given twice included), a
    row the set's rule cannot read, or an id given to two rows, is an error naming the file and
    the line."""
    problems = []
    lines = [(n, line) for n, line in enumerate(io.StringIO(_read_text(path)), 1) if line.strip()]
    first_line: dict[str, int] = {}
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line, object_pairs_hook=_json_object)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
            problem = spec.to_problem(row, i)
            if not isinstance(problem.question, str) or not problem.question.strip():
                raise ValueError("no question text")
        except (ValueError, KeyError, TypeError) as e:
            what = f"no {e} field" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"{path} line {n}: {what}; fix or remove that line") from None
        if problem.id in first_line:
            raise ValueError(f"{path} lines {first_line[problem.id]} and {n} both hold problem id {problem.id!r}; "
                             "give each its own id or remove the repeated row")
        first_line[problem.id] = n
        problems.append(problem)
    if not problems:
        raise ValueError(f"{path} holds no problems; point --data-dir at a folder with a filled {spec.folder}/test.jsonl")
    return problems


class HubLoadError(RuntimeError, OSError):
    """No hub mirror of a set could be loaded (the command line prints it as one line)."""


def _load_hub(spec: DatasetSpec) -> list[Problem]:
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise ImportError(
            f"dataset {spec.name!r} is not on disk and the `datasets` package is missing; "
            "`pip install datasets` or pass --data-dir"
        ) from e
    from zs_llm.loading import HubUnreachableError, hub_offline_reason

    why = hub_offline_reason()
    offline = why is not None and ("HF_HUB_OFFLINE" in why or os.environ.get("HF_DATASETS_OFFLINE") == "1")
    if why is not None and not offline:  # unreachable: `datasets` would retry it for a minute per mirror
        raise HubUnreachableError(f"{spec.name!r} is read from the hub (--source hub, or no local copy) but {why}; "
                                  "use local files: --source local --data-dir FOLDER (or $ZS_LLM_DATA_DIR), or "
                                  "HF_HUB_OFFLINE=1 to read sets already in the Hugging Face cache")
    errors = []
    for hub in spec.hub:
        try:
            rows = load_dataset(hub.path, hub.config, split=hub.split)
        except Exception as e:  # noqa: BLE001 - try the next mirror, report all failures below
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            errors.append(f"{hub.path}: {type(e).__name__}: {first}")
            continue
        problems = []
        for i, row in enumerate(rows):
            try:
                problems.append(spec.to_problem(dict(row), i))
            except (ValueError, KeyError, TypeError) as e:
                what = f"no {e} field" if isinstance(e, KeyError) else str(e)
                raise ValueError(f"{spec.name} from the hub ({hub.path}, split {hub.split}) row {i}: {what}; pass "
                                 "--data-dir to a local copy with that row fixed") from None
        return problems
    if offline:
        raise HubUnreachableError(f"{spec.name!r} is read from the hub (--source hub, or no local copy) but is not "
                                  f"in the Hugging Face cache and {why}; use local files: --source local --data-dir "
                                  "FOLDER (or $ZS_LLM_DATA_DIR)")
    raise HubLoadError(
        f"could not load {spec.name!r} from the hub ({'; '.join(errors)}); pass --data-dir to a local copy"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m eval.datasets ids SET [--subset SPEC]`: print a set's problem ids, one per line
    (a subset's, with --subset), e.g. to save a sample as a subset file."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m eval.datasets", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ids = sub.add_parser("ids", help="print a set's problem ids")
    ids.add_argument("set", choices=sorted(DATASETS))
    ids.add_argument("--subset", help="FILE or sample:N:seedS")
    ids.add_argument("--data-dir", dest="data_dir")
    ids.add_argument("--source", choices=("local", "hub"), default="local", help="the local data dir, or the hub")
    args = ap.parse_args(argv)
    try:
        problems = load_problems(args.set, data_dir=args.data_dir, subset=args.subset, source=args.source)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(p.id for p in problems))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
