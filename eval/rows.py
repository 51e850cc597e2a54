"""The rows store of a run folder: one JSONL file of rows per stream, and the lock on the folder.

    rows/<method>__<dataset>[.shardRofW].jsonl   one JSON object per line, one line per problem
    quarantine/                                  lines that were not valid rows, kept, never deleted
    .lock, .lock.rankR                           who holds the folder (`RunLock` flocks the folder itself)

Rows are the truth of a run: a reader takes every valid line and reports the others (a torn
last line from a killed write, a corrupted line anywhere) instead of stopping at the first.
Each row line is appended and fsynced; a whole file is only ever replaced atomically. Run folders
do not nest (`check_not_nested`): a run's --overwrite must never reach another run's rows.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from zs_llm.checkpoint import atomic_write_text, fsync_dir

#: keys every row has, with their types; a line without them is not a row
REQUIRED = {"id": str, "index": int, "method": str, "dataset": str}


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", s.replace(":", "@"))


def stream_path(out: Path, method: str, dataset: str, shard: str = "") -> Path:
    return Path(out) / "rows" / f"{safe_name(method)}__{dataset}{shard}.jsonl"


# --- reading ------------------------------------------------------------------------------
@dataclass
class BadLine:
    lineno: int  # 1-based
    text: str
    reason: str


@dataclass
class RowsFile:
    """What a rows file holds: its valid rows (file order) with their exact line text, and the
    lines that are not rows."""

    path: Path
    rows: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    torn_tail: bool = False  # the last line is cut short: a killed write (or one in progress)
    ends_clean: bool = True  # empty, or ends with a newline (safe to append to)

    @property
    def damaged(self) -> list[BadLine]:
        """Bad lines other than a torn last line: corruption, not an interrupted write."""
        return self.bad[:-1] if self.torn_tail else self.bad

    def describe_bad(self) -> str:
        return "; ".join(f"line {b.lineno}: {b.reason}" for b in self.bad[:5]) + (
            f"; and {len(self.bad) - 5} more" if len(self.bad) > 5 else "")


def _why_not_a_row(obj, require: dict[str, type]) -> str | None:
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object"
    for key, kind in require.items():
        if key not in obj:
            return f"no {key!r} field"
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            return f"{key!r} is not a {kind.__name__}"
    if isinstance(obj.get("index"), int) and obj["index"] < 0:
        return "negative 'index'"
    return None


def scan_rows(path: str | os.PathLike, require: dict[str, type] = REQUIRED) -> RowsFile:
    """Every line of a rows file sorted into valid rows (JSON objects with the `require`d fields)
    and bad lines (never raises on content)."""
    path = Path(path)
    out = RowsFile(path)
    if not path.exists():
        return out
    data = path.read_bytes()
    out.ends_clean = not data or data.endswith(b"\n")
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    elif pieces:
        out.torn_tail = True
    seen: dict[int, int] = {}
    for n, raw in enumerate(pieces, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.bad.append(BadLine(n, raw.decode("utf-8", "replace"), f"not UTF-8 text ({e.reason})"))
            continue
        last_torn = out.torn_tail and n == len(pieces)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            why = "torn last line (no newline: a write cut short)" if last_torn else (
                f"not JSON ({e.msg}, column {e.colno})" if text.strip() else "blank line")
            out.bad.append(BadLine(n, text, why))
            continue
        why = _why_not_a_row(obj, require)
        if why is None and "index" in obj and obj["index"] in seen:
            why = f"repeats index {obj['index']} of line {seen[obj['index']]}"
        if why is not None:
            out.bad.append(BadLine(n, text, why))
            continue
        if "index" in obj:
            seen[obj["index"]] = n
        out.rows.append(obj)
        out.lines.append(text)
    if out.torn_tail and (not out.bad or out.bad[-1].lineno != len(pieces)):
        out.torn_tail = False  # the last line is a whole row that lacks only its newline: it counts
    return out


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSONL file, in file order; other lines are skipped (see `scan_rows`
    for the strict reading the harness and the report use)."""
    return scan_rows(path, require={}).rows


class DamagedRows(ValueError):
    """A rows file holds lines that are not rows (beyond a torn last line)."""


def read_rows_strict(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Rows of a file for a report: (rows, notes). A corrupted line raises `DamagedRows` naming the
    file, line and fix; a torn last line (a killed or running write) is a note, as are missing indices."""
    f = scan_rows(path)
    if f.damaged:
        raise DamagedRows(f"{path} is damaged ({f.describe_bad()}); no report from it. Resume the run "
                          "(`python -m eval run` with the same --out) to quarantine the bad lines and recompute "
                          "those rows")
    notes = []
    if f.torn_tail:
        notes.append(f"{Path(path).name}: last line cut short (a killed or still running write), not counted")
    idx = sorted(r["index"] for r in f.rows)
    if idx and idx != list(range(len(idx))):
        gaps = sorted(set(range(idx[-1] + 1)) - set(idx))
        notes.append(f"{Path(path).name}: rows {gaps[:10]} missing (resume the run to compute them)")
    return f.rows, notes


# --- writing ------------------------------------------------------------------------------
def row_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Replace a rows file with `lines` atomically."""
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    write_lines(path, [row_line(r) for r in rows])


class RowsAppender:
    """Append row lines to a file, each flushed and fsynced before `append` returns. The file is
    opened at the first row: a stream that fails before one leaves no empty rows file behind."""

    def __init__(self, path: Path):
        self.path = path
        self._f = None

    @property
    def f(self):
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        return self._f

    def append(self, line: str) -> None:
        self.f.write(line + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def chain_hash(prev: str, line: str) -> str:
    """The rows hash after one more row: sha256 over the previous hash and the row's exact line."""
    return hashlib.sha256((prev + "\n" + line).encode("utf-8")).hexdigest()


EMPTY_HASH = hashlib.sha256(b"").hexdigest()


def prefix_hashes(lines_in_order: list[str]) -> list[str]:
    """hashes[n] = the rows hash of the first n rows."""
    out = [EMPTY_HASH]
    for line in lines_in_order:
        out.append(chain_hash(out[-1], line))
    return out


def quarantine(out: Path, source: Path, items: list[tuple[int | None, str, str]]) -> Path:
    """Keep `items` ((line number or None, text, reason)) taken out of `source` in a new file under
    out/quarantine/; returns its path. Nothing there is ever deleted by a run."""
    q = Path(out) / "quarantine"
    q.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = q / f"{source.name}.{stamp}.{os.getpid()}.jsonl"
    k = 1
    while path.exists():
        k += 1
        path = q / f"{source.name}.{stamp}.{os.getpid()}.{k}.jsonl"
    recs = [json.dumps({"file": str(source), "line": n, "reason": why, "text": text}, ensure_ascii=False)
            for n, text, why in items]
    atomic_write_text(path, "".join(r + "\n" for r in recs))
    return path


# --- shards -------------------------------------------------------------------------------
def merge_shards(out: str | os.PathLike) -> list[Path]:
    """Combine per-rank shard files of a unit into one rows file ordered by dataset order."""
    out = Path(out)
    merged = []
    groups: dict[str, list[Path]] = {}
    for p in sorted((out / "rows").glob("*.shard*of*.jsonl")):
        groups.setdefault(re.sub(r"\.shard\d+of\d+\.jsonl$", ".jsonl", p.name), []).append(p)
    for name, parts in groups.items():
        m = re.search(r"of(\d+)\.jsonl$", parts[0].name)
        world = int(m.group(1)) if m else len(parts)
        rows = []
        for part in parts:
            f = scan_rows(part)
            if f.bad:
                raise DamagedRows(f"{part} holds lines that are not rows ({f.describe_bad()}); resume that rank's "
                                  "run to quarantine and recompute them before merging")
            r = int(re.search(r"\.shard(\d+)of", part.name).group(1))
            for row in f.rows:
                row["index"] = row["index"] * world + r  # back to the position in the dataset order
                rows.append(row)
        rows.sort(key=lambda r: r["index"])
        write_rows(out / "rows" / name, rows)
        for part in parts:
            part.unlink()
        fsync_dir(out / "rows")
        merged.append(out / "rows" / name)
    return merged


# --- the lock -----------------------------------------------------------------------------
class RunFolderBusy(FileExistsError):
    """Another live process holds the run folder."""


def make_run_folder(out: Path) -> None:
    """Create the run folder, turning the ways that fails into one-line errors that name it."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"--out {out} is a file, not a folder; choose another --out") from None
    except NotADirectoryError:
        parent = next((p for p in out.parents if p.exists() and not p.is_dir()), out.parent)
        raise NotADirectoryError(f"--out {out}: {parent} is a file, so no folder can be made under it; "
                                 "choose another --out") from None
    except OSError as e:
        if isinstance(e, PermissionError) or e.errno == errno.EROFS:
            raise PermissionError(f"--out {out} is not writable ({e.strerror}); choose a writable --out") from None
        raise OSError(f"--out {out}: cannot create it ({e.strerror}); choose another --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out} is not writable (read-only?); choose a writable --out")


class RunLock:
    """One writer per run folder: an exclusive `flock` on the run folder itself (an fd of the
    directory), which the OS releases when the process dies and which deleting a file cannot undo;
    out/.lock holds the holder's PID and command (and is flocked too, as runs before the folder
    lock did). The ranks of one multi-process run share the folder lock and each takes its own
    out/.lock.rankR exclusively, so a second run on the folder, of any size, is refused. Where the
    filesystem refuses a lock on a directory (some NFS mounts), the .lock file alone holds it and
    each lock file taken is checked to be the one on disk (a file deleted while being taken)."""

    def __init__(self, out: str | os.PathLike, rank: int = 0, world: int = 1):
        self.out, self.rank, self.world = Path(out), rank, world
        self.fds: list[int] = []

    @property
    def held(self) -> bool:
        return bool(self.fds)

    def _busy(self) -> RunFolderBusy:
        return RunFolderBusy(f"{self.out} is in use by {self.holders()}; wait for it to finish (or stop it), or "
                             "choose another --out")

    def _take_folder(self, mode: int) -> None:
        try:
            fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise PermissionError(f"--out {self.out} cannot be opened ({e.strerror}); choose another --out") from None
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise self._busy() from None
            return  # no directory locks here: the lock files below hold the folder
        self.fds.append(fd)

    def _take(self, path: Path, mode: int) -> None:
        for _ in range(5):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise PermissionError(f"--out {self.out} is not writable ({e.strerror}); choose a writable --out") \
                    from None
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise self._busy() from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # deleted or replaced between open and flock: lock the file that is there now
        else:
            raise RunFolderBusy(f"{path} keeps being replaced while it is locked; stop whatever rewrites it, or "
                                "choose another --out")
        if mode == fcntl.LOCK_EX:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {' '.join(sys.argv)[:300]}\n".encode())
            os.fsync(fd)
        self.fds.append(fd)

    def holders(self) -> str:
        who = []
        for p in [self.out / ".lock", *sorted(self.out.glob(".lock.rank*"))]:
            try:
                text = p.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                pid, _, cmd = text.partition(" ")
                who.append(f"PID {pid}" + (f" ({cmd[:120]})" if cmd else ""))
        if not who and not (self.out / ".lock").exists():
            return "another process (its .lock file, which names it, was deleted)"
        return ", ".join(who) or "another process"

    def acquire(self) -> RunLock:
        if self.held:
            return self
        make_run_folder(self.out)
        try:
            self._take_folder(fcntl.LOCK_EX if self.world == 1 else fcntl.LOCK_SH)
            if self.world == 1:
                self._take(self.out / ".lock", fcntl.LOCK_EX)
            else:
                self._take(self.out / ".lock", fcntl.LOCK_SH)
                self._take(self.out / f".lock.rank{self.rank}", fcntl.LOCK_EX)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        for fd in self.fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self.fds = []

    def __del__(self):
        self.release()


def lock_holder(out: str | os.PathLike) -> str | None:
    """Who holds run folder `out` now (a live run writing it), or None. A non-blocking probe: it
    takes a shared lock for an instant and drops it, so a run that starts in that instant is told
    the folder is busy and can simply be started again."""
    out = Path(out)
    held = False
    targets = [(out, os.O_RDONLY | os.O_DIRECTORY), *((p, os.O_RDONLY) for p in [out / ".lock",
                                                                                  *sorted(out.glob(".lock.rank*"))])]
    for path, flags in targets:
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as e:
            held = held or e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
        finally:
            os.close(fd)
        if held:
            break
    return RunLock(out).holders() if held else None


# --- run folders do not nest --------------------------------------------------------------
#: folders visited when looking for a run folder under an --out (a huge tree is not searched whole)
NEST_SEARCH_LIMIT = 20000


def is_run_folder(path: Path) -> bool:
    return (path / "run.json").is_file()


def enclosing_run(out: Path) -> Path | None:
    """The run folder `out` lies inside, if any."""
    return next((p for p in Path(out).resolve().parents if is_run_folder(p)), None)


def contained_run(out: Path, limit: int = NEST_SEARCH_LIMIT) -> Path | None:
    """A run folder somewhere under `out` (not `out` itself), if any. A link to a folder counts
    when that folder is a run; links are not searched through (a loop, or a whole disk)."""
    todo, seen = [Path(out)], 0
    while todo and seen < limit:
        folder = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            if e.is_symlink() and e.is_dir() and is_run_folder(Path(e.path)):
                return Path(e.path)
            if e.is_dir(follow_symlinks=False):
                seen += 1
                if is_run_folder(Path(e.path)):
                    return Path(e.path)
                todo.append(Path(e.path))
    return None


def check_not_nested(out: str | os.PathLike) -> None:
    """Refuse an --out inside another run's folder, or holding one: a run would write into the
    other's folder, and an --overwrite of the outer one would delete the inner one's results."""
    out = Path(out)
    outer = enclosing_run(out)
    if outer is not None:
        raise ValueError(f"--out {out} is inside the run folder {outer}; run folders do not nest (an --overwrite "
                         f"of {outer} would delete it): choose an --out outside {outer}")
    inner = contained_run(out) if out.is_dir() else None
    if inner is not None:
        raise ValueError(f"--out {out} holds the run folder {inner}; run folders do not nest (an --overwrite of "
                         f"{out} could delete it): choose an --out that neither holds nor lies inside a run folder")
