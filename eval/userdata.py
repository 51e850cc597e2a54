"""Your own evaluation data, named in `--datasets` beside the built-in sets and graded as they are.

An entry of `--datasets` that is not a built-in name is read as your own data:

    qa.jsonl, qa.json, qa.csv, qa.parquet    a file of rows (the set's name: the file's stem, `qa`)
    hub:ORG/NAME:SPLIT                       a hub dataset's split (name: NAME); also
                                             hub:ORG/NAME:CONFIG:SPLIT and a trailing @REVISION
    tasks/qa.yaml                            a task file (name: its `task:`)
    task:qa                                  the task `qa` of a task file in --include_path DIR
    mine=SOURCE                              any of the above under the name `mine`

A row becomes a problem through four fields: `problem` (the question text), `answer` (the gold
answer; without one, the last \\boxed{} of `solution`), and optional `id` (default: the row's
number) and `solution`. Each is read from the column of its own name or a usual spelling
(`question`, `final_answer`, ...), or from the column `--fields problem=question,answer=final`
names. A task file is a small YAML mapping that carries its own mapping:

    task: myqa                  # the set's name in rows and reports (default: the file's stem)
    path: myqa.jsonl            # relative to this file; or hub: ORG/NAME with split: (and config:, revision:)
    fields: {problem: question, answer: final}

`--fields` applies to the files and hub ids given in `--datasets`; a task file's `fields:` to its
task. run.json records each set's file and sha256 (or its hub id, split and revision), and the
run identity the sha256 of its problems, so a resume on a changed file is refused. A bad file is
one line naming the file, the row and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from zs_llm.answers import extract_boxed

from .datasets import DATASETS, DatasetSpec, HubLoadError, Problem, _json_object, _number_text, _read_text, check_gold

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TASK_SUFFIXES = (".yaml", ".yml")
FIELDS = ("problem", "answer", "id", "solution")
#: the columns each field is read from when no mapping names one, first present wins
USUAL_COLUMNS = {
    "problem": ("problem", "question", "Problem", "Question", "prompt", "input"),
    "answer": ("answer", "Answer", "final_answer", "target", "label", "output"),
    "id": ("id", "unique_id", "idx", "ID", "qid"),
    "solution": ("solution", "Solution", "rationale"),
}
TASK_KEYS = ("task", "path", "hub", "config", "split", "revision", "fields")
FORMS = ("FILE.jsonl|.json|.csv|.parquet", "hub:ORG/NAME:SPLIT", "TASK.yaml", "task:NAME (of --include_path)",
         "NAME=SOURCE")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_HUB = re.compile(r"hub:(?P<path>[^:@\s]+/[^:@\s]+)(?::(?P<config>[^:@\s]+))?:(?P<split>[^:@\s]+)"
                  r"(?:@(?P<revision>\S+))?")


@dataclass(frozen=True)
class UserSet:
    """One set of your own data: where its rows are and how a row becomes a `Problem`."""

    name: str
    entry: str  # as given in --datasets
    path: Path | None = None  # a file
    hub: str | None = None  # or a hub dataset
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    fields: dict = field(default_factory=dict)  # field -> column
    task_file: Path | None = None  # where the set and its mapping were read, if from a task file

    def fix(self, what: str) -> str:
        """How to name column `what` for this set's field mapping."""
        if self.task_file is not None:
            return f"set fields: {{{what}: COLUMN}} in {self.task_file}"
        return f"name its column with --fields {what}=COLUMN"

    @property
    def where(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"hub dataset {self.hub}" + (f" ({self.config})" if self.config else "") + f" split {self.split}"

    def load(self) -> list[Problem]:
        rows = _file_rows(self.path) if self.path is not None else _hub_rows(self)
        problems, first = [], {}
        for i, (where, row) in enumerate(rows):
            p = _to_problem(self, row, i, where)
            if p.id in first:
                raise ValueError(f"{self.where}: {first[p.id]} and {where} both hold problem id {p.id!r}; give each "
                                 "row its own id (or map another column: " + self.fix("id") + ")")
            first[p.id] = where
            problems.append(p)
        if not problems:
            raise ValueError(f"{self.where} holds no rows; give one problem per row, with a problem and an answer")
        return problems

    def record(self) -> dict:
        """What run.json keeps of this set's source."""
        out: dict = {"source": "file" if self.path is not None else "hub", "name": self.name, "entry": self.entry}
        if self.path is not None:
            p = self.path.resolve()
            out.update(path=str(p), sha256=hashlib.sha256(p.read_bytes()).hexdigest(), format=p.suffix[1:])
        else:
            out.update(hub=self.hub, config=self.config, split=self.split, revision=self.revision,
                       commit=_hub_commit(self.hub, self.revision))
        if self.fields:
            out["fields"] = dict(self.fields)
        if self.task_file is not None:
            out["task_file"] = str(self.task_file.resolve())
        return out


# ---------------------------------------------------------------------------- the entries


def is_builtin(entry: str) -> bool:
    spec = DATASETS.get(entry) if isinstance(entry, str) else None
    return spec is not None and spec.load is None


class DatasetChoices:
    """What `--datasets` takes, for the option check: a built-in set, or an entry written as your own
    data (a file, hub:, task:, NAME=), which the run's configuration then resolves. A bare name is
    a built-in set's: a typo is refused by every entry point alike."""

    def __contains__(self, entry) -> bool:
        return isinstance(entry, str) and (is_builtin(entry) or _looks_own(entry))

    def __iter__(self):
        yield from (n for n in DATASETS if is_builtin(n))
        yield from FORMS


def _looks_own(entry: str) -> bool:
    return entry.startswith(("hub:", "task:")) or "=" in entry or entry.endswith(DATA_SUFFIXES + TASK_SUFFIXES)


def set_name(entry: str) -> str:
    """The name an entry of `--datasets` streams under (in rows, file names and reports)."""
    if is_builtin(entry):
        return entry
    name, eq, _ = entry.partition("=")
    if eq and _NAME.fullmatch(name):
        return name
    m = _HUB.fullmatch(entry)
    if m:
        return _safe(m["path"].rsplit("/", 1)[1])
    if entry.startswith("task:"):
        return entry[5:]
    p = Path(entry)
    if entry.endswith(TASK_SUFFIXES) and p.is_file():
        try:
            task = _task_mapping(p).get("task")
        except (OSError, ValueError):
            task = None
        return str(task) if task else _safe(p.stem)
    return _safe(p.stem) if entry.endswith(DATA_SUFFIXES + TASK_SUFFIXES) else entry


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text).strip("_.") or "data"


def parse_fields(items, where: str = "--fields") -> dict[str, str]:
    """`["problem=question", "answer=final"]` (or one comma-separated string, or a mapping) ->
    {field: column}; an unknown field or one named twice is an error naming the fix."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [x for x in items.split(",") if x.strip()]
    pairs = list(items.items()) if isinstance(items, dict) else []
    for item in [] if isinstance(items, dict) else items:
        key, eq, column = str(item).partition("=")
        if not eq or not column.strip():
            raise ValueError(f"{where} {item!r}: write FIELD=COLUMN, e.g. problem=question,answer=final")
        pairs.append((key, column))
    out: dict[str, str] = {}
    for key, column in pairs:
        key, column = str(key).strip(), str(column).strip()
        if key not in FIELDS:
            raise ValueError(f"{where}: {key!r} is not a field; map {', '.join(FIELDS)} (e.g. problem=question)")
        if key in out:
            raise ValueError(f"{where} maps {key} twice; map each field once")
        out[key] = column
    return out


def resolve(entry: str, fields: dict[str, str], include_path: str | None) -> UserSet:
    """The `UserSet` an entry of `--datasets` names (not a built-in name), or a one-line error
    listing what an entry may be."""
    name, eq, source = entry.partition("=")
    if eq:
        if not _NAME.fullmatch(name):
            raise ValueError(f"datasets entry {entry!r}: the name before '=' must be letters, digits, _ . + -")
        return _with_name(resolve(source, fields, include_path), name, entry)
    m = _HUB.fullmatch(entry)
    if m:
        return UserSet(set_name(entry), entry, hub=m["path"], config=m["config"], split=m["split"],
                       revision=m["revision"], fields=dict(fields))
    if entry.startswith("hub:"):
        raise ValueError(f"datasets entry {entry!r}: write hub:ORG/NAME:SPLIT (or hub:ORG/NAME:CONFIG:SPLIT, "
                         "optionally @REVISION), e.g. hub:openai/gsm8k:main:test")
    p = Path(entry).expanduser()
    if entry.endswith(DATA_SUFFIXES + TASK_SUFFIXES):
        if not p.is_file():
            raise FileNotFoundError(f"datasets entry {entry!r}: no such file; give the path of a "
                                    f"{', '.join(DATA_SUFFIXES)} file or a task file (.yaml)")
        if entry.endswith(TASK_SUFFIXES):
            return _from_task(p, entry)
        return UserSet(set_name(entry), entry, path=p, fields=dict(fields))
    if entry.startswith("task:"):
        if not include_path:
            raise ValueError(f"datasets entry {entry!r} names a task of --include_path, which is not given; add "
                             "--include_path DIR (a folder of task files)")
        tasks = find_tasks(include_path)
        if entry[5:] not in tasks:
            raise ValueError(f"datasets entry {entry!r}: no task {entry[5:]!r} in {include_path} (it has: "
                             f"{', '.join(sorted(tasks)) or 'none'}); check the task: line of its file")
        return _with_name(_from_task(tasks[entry[5:]], entry), entry[5:], entry)
    builtin = ", ".join(n for n in DATASETS if is_builtin(n))
    raise ValueError(f"datasets={entry!r} is not valid; choose one of {builtin}, {', '.join(FORMS)}")


def _with_name(us: UserSet, name: str, entry: str) -> UserSet:
    return UserSet(name, entry, us.path, us.hub, us.config, us.split, us.revision, us.fields, us.task_file)


def find_tasks(include_path: str) -> dict[str, Path]:
    """{task name: task file} of every .yaml/.yml file under `include_path` (its subfolders too)."""
    root = Path(include_path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--include_path {include_path} is not a folder; give a folder of task files (.yaml)")
    found: dict[str, Path] = {}
    for f in sorted(q for q in root.rglob("*") if q.suffix in TASK_SUFFIXES and q.is_file()):
        task = str(_task_mapping(f).get("task") or f.stem)
        if task in found:
            raise ValueError(f"task {task!r} is defined by both {found[task]} and {f}; give each task its own name")
        found[task] = f
    return found


def _task_mapping(path: Path) -> dict:
    from .options import read_yaml  # lazily: options imports the runner, which imports this module

    data = read_yaml(path)
    unknown = sorted(map(str, set(data) - set(TASK_KEYS)))
    if unknown:
        raise ValueError(f"task file {path}: unknown key(s) {unknown}; a task file holds {', '.join(TASK_KEYS)}")
    return data


def _from_task(path: Path, entry: str) -> UserSet:
    t = _task_mapping(path)
    name = str(t.get("task") or _safe(path.stem))
    if not _NAME.fullmatch(name):
        raise ValueError(f"task file {path}: task {name!r} must be letters, digits, _ . + -")
    fields = parse_fields(t.get("fields"), where=f"task file {path}: fields")
    if bool(t.get("path")) == bool(t.get("hub")):
        raise ValueError(f"task file {path}: give either path: FILE (relative to the task file) or hub: ORG/NAME "
                         "with split:")
    if t.get("hub"):
        if not t.get("split"):
            raise ValueError(f"task file {path}: hub: {t['hub']} needs split: (e.g. split: test)")
        return UserSet(name, entry, hub=str(t["hub"]), config=t.get("config"), split=str(t["split"]),
                       revision=t.get("revision"), fields=fields, task_file=path)
    data = (path.parent / str(t["path"])).expanduser()
    if not data.is_file() or not data.name.endswith(DATA_SUFFIXES):
        raise FileNotFoundError(f"task file {path}: path {t['path']} is not a {'/'.join(DATA_SUFFIXES)} file "
                                f"(looked for {data}); give the data file's path relative to the task file")
    return UserSet(name, entry, path=data, fields=fields, task_file=path)


def register(entries: list[str], fields, include_path: str | None) -> list[str]:
    """Register the own-data entries of `entries` as sets (a user set of the same name registered
    before is replaced: the latest configuration's wins) and return every entry's set name."""
    mapping = parse_fields(fields)
    names, seen = [], {}
    for entry in entries:
        if is_builtin(entry):
            name = entry
        else:
            us = resolve(entry, mapping, include_path)
            name = us.name
            if is_builtin(name):
                raise ValueError(f"datasets entry {entry!r} is named {name!r}, as a built-in set is; name it: "
                                 f"my{name}={entry}")
            dict.__setitem__(DATASETS, name, DatasetSpec(name, None, (), None, None, load=us.load, record=us.record))
        if name in seen:
            raise ValueError(f"datasets entries {seen[name]!r} and {entry!r} are both named {name!r}; name one: "
                             f"NAME={entry}")
        seen[name] = entry
        names.append(name)
    return names


# ---------------------------------------------------------------------------- reading rows


def _file_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) of each row of a data file, `where` naming its line or row for errors."""
    kind = path.suffix.lower()
    if kind == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        except ImportError:
            raise ImportError(f"{path}: reading .parquet needs pyarrow; pip install pyarrow, or save it as .jsonl") \
                from None
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise ValueError(f"{path} is not a readable Parquet file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); write it again, or save it as .jsonl") \
                from None
        return [(f"row {i}", r) for i, r in enumerate(rows, 1)]
    text = _read_text(path)
    if kind == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        out = []
        try:
            for row in reader:
                if None in row:
                    raise ValueError(f"{path} line {reader.line_num}: more cells than the header's "
                                     f"{len(reader.fieldnames)} columns; quote cells that hold commas")
                if any(v not in (None, "") for v in row.values()):
                    out.append((f"line {reader.line_num}", {k: v for k, v in row.items() if v != ""}))
        except csv.Error as e:
            raise ValueError(f"{path} line {reader.line_num}: not CSV ({e}); fix that line") from None
        return out
    if kind == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
        except ValueError as e:
            line = getattr(e, "lineno", None)
            raise ValueError(f"{path}{f' line {line}' if line else ''}: not JSON ({str(e).split(':')[0]}); fix it, "
                             "or write one JSON object per line as .jsonl") from None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else data
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json data file holds a list of objects (or one key holding it, e.g. "
                             '{"data": [...]}); write it so')
        return [(f"item {i}", r) for i, r in enumerate(data, 1)]
    out = []
    for n, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line, object_pairs_hook=_json_object)))
        except ValueError as e:
            raise ValueError(f"{path} line {n}: not a JSON object ({str(e).split(':')[0]}); fix or remove that line") \
                from None
    return out


def _column(us: UserSet, row: dict, key: str):
    """The value of field `key` in `row`: the mapped column, else the first usual one present."""
    if key in us.fields:
        return row.get(us.fields[key])
    for column in USUAL_COLUMNS[key]:
        if row.get(column) not in (None, ""):
            return row[column]
    return None


def _to_problem(us: UserSet, row, index: int, where: str) -> Problem:
    here = f"{us.where} {where}"
    if not isinstance(row, dict):
        raise ValueError(f"{here}: a JSON {type(row).__name__}, not an object; write each row as an object of fields")
    has = f" (it has {', '.join(map(str, row))})" if row else " (it is empty)"
    question = _column(us, row, "problem")
    if not isinstance(question, str) or not question.strip():
        column = us.fields.get("problem") or "/".join(USUAL_COLUMNS["problem"][:2])
        raise ValueError(f"{here}: no problem text in column {column!r}{has}; {us.fix('problem')}")
    gold = _column(us, row, "answer")
    solution = _column(us, row, "solution")
    if gold in (None, "") and isinstance(solution, str):
        gold = extract_boxed(solution)  # as the built-in sets whose answer is the solution's box
    if gold in (None, ""):
        column = us.fields.get("answer") or "/".join(USUAL_COLUMNS["answer"][:3])
        raise ValueError(f"{here}: no answer in column {column!r} (nor a \\boxed{{}} in a solution){has}; "
                         f"{us.fix('answer')}")
    try:
        gold = check_gold(gold)
    except ValueError as e:
        raise ValueError(f"{here}: {e}") from None
    pid = _column(us, row, "id")
    if us.fields.get("id") and pid in (None, ""):
        raise ValueError(f"{here}: no id in column {us.fields['id']!r}{has}; {us.fix('id')}")
    meta = {"source": us.name}
    if isinstance(solution, str):
        meta["solution"] = solution
    return Problem(id=str(pid) if pid not in (None, "") else str(index), question=question,
                   gold=gold.strip() if isinstance(gold, str) else _number_text(gold), meta=meta)


# ---------------------------------------------------------------------------- the hub


def _hub_rows(us: UserSet) -> list[tuple[str, dict]]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise ImportError(f"{us.entry}: loading a hub dataset needs the `datasets` package; pip install datasets, "
                          "or give a file") from None
    from zs_llm.loading import HubUnreachableError, hub_offline_reason

    why = hub_offline_reason()
    offline = why is not None and ("HF_HUB_OFFLINE" in why or os.environ.get("HF_DATASETS_OFFLINE") == "1")
    if why is not None and not offline:  # `datasets` would retry for a minute before failing
        raise HubUnreachableError(f"{us.entry}: {us.where} cannot be loaded: {why}; save it as a .jsonl/.csv/"
                                  ".parquet file where the hub is reachable and give that path, or set "
                                  "HF_HUB_OFFLINE=1 to read it from the Hugging Face cache")
    try:
        rows = load_dataset(us.hub, us.config, split=us.split, revision=us.revision)
    except Exception as e:  # noqa: BLE001 - datasets raises many types, with multi-line messages
        first = next((s for s in str(e).splitlines() if s.strip()), "")
        if offline:
            raise HubUnreachableError(f"{us.entry}: {us.where} is not in the Hugging Face cache and {why}; give a "
                                      "file saved from it instead") from None
        raise HubLoadError(f"{us.entry}: could not load {us.where} ({type(e).__name__}: {first}); check the id, "
                           "config and split, or give a file saved from it") from None
    return [(f"row {i}", dict(r)) for i, r in enumerate(rows, 1)]


def _hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit of the hub dataset's snapshot in the local cache, if one is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "README.md", revision=revision, repo_type="dataset")
    except (ImportError, ValueError):
        return None
    parts = Path(found).parts if isinstance(found, str) else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
